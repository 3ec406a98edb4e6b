#!/usr/bin/env python3
"""Latency report for rFaaS benchmark CSVs: percentile tables, comparisons and PNG plots.

    python analysis/latency.py RESULTS.csv... [--out DIR] [--compare OLD.csv]

Run with --help for the definitions.  The logic lives in the rfaas_analysis
package next to this file; this script only puts that package on the path.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    from rfaas_analysis.cli import main
except ImportError as e:  # pandas / numpy / matplotlib not installed
    print(
        f"error: {e}\n"
        "latency.py needs numpy, pandas and matplotlib, which live in the checkout's virtual\n"
        "environment, not in the system's Python. Either:\n"
        "  scripts/setup.sh                      # creates .venv with everything, then\n"
        "  .venv/bin/rfaas-analysis RESULTS.csv  # (or .venv/bin/python analysis/latency.py ...)\n"
        "or, in a virtual environment of your own:\n"
        "  python3 -m venv ENV && ENV/bin/pip install ./analysis && ENV/bin/rfaas-analysis RESULTS.csv",
        file=sys.stderr,
    )
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
