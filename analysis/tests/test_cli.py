"""The command line as a user runs it: tables, CSV, every PNG, skip notes, --help, clear errors."""

from __future__ import annotations

import csv

import pytest

import csvgen
from conftest import assert_valid_png, run_script

ALL_PLOTS = [
    "cdf_hot.png", "cdf_warm.png", "cdf_cold.png", "cdf_throughput.png",
    "latency_vs_payload.png", "scalable_latency_vs_ranks.png", "scalable_throughput_vs_ranks.png",
    "cold_start_phases.png", "cold_start_phase_distribution.png", "hot_vs_warm.png", "fabric_floor.png",
]


@pytest.fixture
def inputs(tmp_path):
    return [
        csvgen.warm_csv(tmp_path / "warm.csv"),
        csvgen.cold_csv(tmp_path / "cold.csv"),
        csvgen.scalable_csv(tmp_path / "scalable.csv"),
        csvgen.fabric_csv(tmp_path / "fabric.csv"),
    ]


def test_full_report_writes_every_plot_and_table(tmp_path, inputs):
    out = tmp_path / "report"
    r = run_script(*inputs, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "note: skipped" not in r.stdout
    for name in ALL_PLOTS:
        assert_valid_png(out / name)
        assert str(out / name) in r.stdout  # the path is shown
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(ALL_PLOTS)
    for name in ("percentiles.csv", "throughput.csv", "cold_phases.csv", "cold_median_row.csv",
                 "fabric_floor.csv"):
        assert (out / name).stat().st_size > 0

    # the printed table and the CSV agree, and the CSV has every group
    with open(out / "percentiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["benchmark", "mode", "provider", "payload_bytes", "world_size", "count",
                             "min_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"]
    # warm: 2 modes x 3 sizes; cold: 1; scalable: 2 modes x 3 world sizes
    assert len(rows) == 6 + 1 + 6
    section = r.stdout.split("== latency percentiles")[1].split("\n==")[0]
    for row in rows:
        line = [x for x in section.splitlines() if x.split()[:5] == [row["benchmark"], row["mode"], row["provider"],
                                                                      row["payload_bytes"], row["world_size"]]]
        assert len(line) == 1, row
        assert line[0].split()[5:] == [row[c] for c in ("count", "min_ns", "p50_ns", "p90_ns", "p99_ns",
                                                        "p999_ns", "max_ns")]
    assert "fabric floor" in r.stdout and "throughput" in r.stdout


def test_plots_without_data_are_skipped_with_a_note(tmp_path):
    path = csvgen.write_csv(tmp_path / "hot.csv", csvgen.RAW_COLUMNS,
                            csvgen.raw_rows("warm_benchmark", "hot", "tcp", [64, 1024], 20, 7))
    out = tmp_path / "out"
    r = run_script(path, "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["cdf_hot.png", "latency_vs_payload.png"]
    notes = [line for line in r.stdout.splitlines() if line.startswith("note: skipped")]
    skipped = {n.split()[2].rstrip(":") for n in notes}
    assert skipped == {"scalable_latency_vs_ranks.png", "scalable_throughput_vs_ranks.png",
                       "cold_start_phases.png", "cold_start_phase_distribution.png", "hot_vs_warm.png",
                       "fabric_floor.png"}
    assert all(len(n) < 120 for n in notes)


def test_fabric_floor_only(tmp_path):
    path = csvgen.fabric_csv(tmp_path / "fabric.csv")
    out = tmp_path / "out"
    r = run_script(path, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "fabric floor" in r.stdout and "9256" in r.stdout  # tcp 4096 B p50 printed
    assert_valid_png(out / "fabric_floor.png")
    assert sorted(p.name for p in out.glob("*.png")) == ["fabric_floor.png"]


def test_fabric_rows_without_samples_are_listed_not_plotted(tmp_path):
    # fabric_pingpong writes iterations 0 and zeros for a provider that could not run (e.g. verbs)
    path = tmp_path / "fabric.csv"
    path.write_text("provider,payload_bytes,iterations,p50_ns,p99_ns,p999_ns\n"
                    "verbs,64,0,0,0,0\nshm,64,1000,310,700,900\nshm,4096,1000,520,900,1500\n")
    out = tmp_path / "out"
    r = run_script(path, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "verbs" in r.stdout and "Warning" not in r.stderr
    assert_valid_png(out / "fabric_floor.png")

    only_zero = tmp_path / "zero.csv"
    only_zero.write_text("provider,payload_bytes,iterations,p50_ns,p99_ns,p999_ns\nverbs,64,0,0,0,0\n")
    r = run_script(only_zero, "--out", tmp_path / "out2")
    assert r.returncode == 0, r.stderr
    assert "note: skipped fabric_floor.png: the fabric floor CSV has no measured rows" in r.stdout
    assert not list((tmp_path / "out2").glob("*.png"))


def test_without_out_nothing_is_written(tmp_path):
    path = csvgen.warm_csv(tmp_path / "warm.csv", reps=5)
    r = run_script(path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "p50_ns" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["warm.csv"]


def test_help_explains_definitions():
    r = run_script("--help")
    assert r.returncode == 0
    for needle in ("nearest rank", "ceil(p/100*n)", "--compare", "--out", "latency_ns", "littles_law",
                   "duration_ns", "in_flight", "p999", "exit status", "Agg", "cdf_<mode>.png",
                   "provider,payload_bytes,iterations,p50_ns,p99_ns,p999_ns"):
        assert needle in r.stdout, needle


# ----------------------------------------------------------------------------- bad input

RAW_HEADER = ",".join(csvgen.RAW_COLUMNS)


def _bad(tmp_path, name, content: bytes | str):
    p = tmp_path / name
    if isinstance(content, str):
        p.write_text(content)
    else:
        p.write_bytes(content)
    return p


# (file name, content, expected text in the message).  The first five -- the kinds the issue
# names -- run the script as a subprocess; the rest call the same main() in process (faster).
CORE_CASES = [
    ("empty.csv", "", "file is empty"),
    ("image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "not a CSV file (binary content)"),
    ("prose.txt", "This is a note about the run.\nNothing tabular here.\n", "not a CSV file"),
    ("missing.csv", RAW_HEADER.replace(",latency_ns", "") + "\nwarm_benchmark,hot,shm,64,0,1,n,0,0\n",
     "missing required column 'latency_ns'"),
    ("header_only.csv", RAW_HEADER + "\n", "no data rows"),
]
MORE_CASES = [
    ("blank.csv", "\n\n  \n", "file is empty"),
    ("latin1.csv", "benchmark,mode\n\xe9\xe8\n".encode("latin-1") + b"\xff\xfe", "not a CSV file (not UTF-8 text)"),
    ("json.csv", '{"benchmark": "warm", "latency_ns": 5}\n', "not a results CSV"),
    ("ragged.csv", RAW_HEADER + "\nwarm_benchmark,hot,shm,64,0,1,n,0,0,900\n"
                   "warm_benchmark,hot,shm,64,0,1,n,0,1,900,7,8\n", "not a valid CSV"),
    ("missing2.csv", "benchmark,mode,latency_ns\nwarm_benchmark,hot,5\n",
     "missing required columns 'provider', 'payload_bytes'"),
    ("nan.csv", RAW_HEADER + "\nwarm_benchmark,hot,shm,64,0,1,n,0,0,900\nwarm_benchmark,hot,shm,64,0,1,n,0,1,fast\n",
     "line 3: column 'latency_ns' holds 'fast', not a number"),
    ("emptycell.csv", RAW_HEADER + "\nwarm_benchmark,hot,,64,0,1,n,0,0,900\n", "line 2: column 'provider' is empty"),
    ("negative.csv", RAW_HEADER + "\nwarm_benchmark,hot,shm,64,0,1,n,0,0,-5\n", "negative"),
    ("fraction.csv", RAW_HEADER + "\nwarm_benchmark,hot,shm,64.5,0,1,n,0,0,5\n", "not an integer"),
    ("fabric_bad.csv", "provider,payload_bytes,iterations,p50_ns,p99_ns,p999_ns\nshm,64,100,x,2,3\n",
     "column 'p50_ns' holds 'x'"),
]


@pytest.mark.parametrize("name,content,expected", CORE_CASES, ids=[c[0] for c in CORE_CASES])
def test_bad_input_subprocess_one_clear_line_exit_2(tmp_path, name, content, expected):
    p = _bad(tmp_path, name, content)
    r = run_script(p, "--out", tmp_path / "out")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"error: {p}: ")
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out").exists()  # nothing written on bad input


@pytest.mark.parametrize("name,content,expected", MORE_CASES, ids=[c[0] for c in MORE_CASES])
def test_bad_input_in_process_one_clear_line_exit_2(tmp_path, capsys, name, content, expected):
    from rfaas_analysis.cli import main

    p = _bad(tmp_path, name, content)
    assert main([str(p), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {p}: ") and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_nonexistent_file_and_directory(tmp_path):
    good = csvgen.warm_csv(tmp_path / "warm.csv", reps=3)
    for bad, expected in ((tmp_path / "nope.csv", "no such file"), (tmp_path, "is a directory")):
        r = run_script(good, bad)
        assert r.returncode == 2
        assert r.stderr == f"error: {bad}: {expected}" + ("\n" if expected == "no such file" else
                                                          ", not a CSV file\n")


def test_bad_compare_file_is_also_a_clear_error(tmp_path):
    good = csvgen.warm_csv(tmp_path / "warm.csv", reps=3)
    r = run_script(good, "--compare", tmp_path / "old.csv")
    assert r.returncode == 2
    assert r.stderr == f"error: {tmp_path / 'old.csv'}: no such file\n"


def test_missing_arguments_is_usage_error():
    r = run_script()
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr
