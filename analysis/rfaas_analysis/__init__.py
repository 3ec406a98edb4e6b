"""rfaas_analysis: turn the tidy CSVs written by the rFaaS benchmarks into
percentile tables, throughput tables, comparisons and PNG plots.

One concept per module:

* ``schema``      -- column names, group keys, how phase columns are recognised
* ``errors``      -- ``InputError``: the one exception the CLI turns into exit code 2
* ``load``        -- reading and validating CSV files (raw rows or fabric-floor aggregates)
* ``percentiles`` -- the nearest-rank percentile and the per-group percentile table
* ``throughput``  -- invocations per second for ``mode=throughput`` rows
* ``phases``      -- the cold-start phase table (median per phase)
* ``compare``     -- new/old ratios between two runs
* ``plots``       -- the PNG plots (matplotlib, Agg backend)
* ``cli``         -- the ``latency.py`` command line
"""

__version__ = "0.1.0"
