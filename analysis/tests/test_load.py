"""File kinds and the loader's parsing, in process."""

from __future__ import annotations

import pytest

import csvgen
from rfaas_analysis.errors import InputError
from rfaas_analysis.load import FABRIC, RAW, classify, load_file


def test_classify_exact_fabric_columns_only():
    assert classify(list(csvgen.FABRIC_COLUMNS)) == FABRIC
    assert classify(list(reversed(csvgen.FABRIC_COLUMNS))) == FABRIC
    assert classify(list(csvgen.FABRIC_COLUMNS) + ["extra"]) == RAW
    assert classify(list(csvgen.FABRIC_COLUMNS[:-1])) == RAW
    assert classify(list(csvgen.RAW_COLUMNS)) == RAW


def test_fabric_with_extra_column_is_treated_as_raw_and_rejected(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text(",".join(csvgen.FABRIC_COLUMNS) + ",note\nshm,64,10,1,2,3,x\n")
    with pytest.raises(InputError, match="missing required columns 'benchmark', 'mode'"):
        load_file(str(p))


def test_types_and_extra_columns_kept(tmp_path):
    p = csvgen.cold_csv(tmp_path / "c.csv", reps=4)
    kind, df = load_file(str(p))
    assert kind == RAW
    assert df["latency_ns"].dtype == "int64" and df["payload_bytes"].dtype == "int64"
    assert df["spawn_ns"].dtype == "int64"
    assert list(df.columns) == csvgen.RAW_COLUMNS + csvgen.PHASES


def test_whitespace_bom_and_crlf_are_tolerated(tmp_path):
    p = tmp_path / "w.csv"
    header = ", ".join(csvgen.RAW_COLUMNS)
    p.write_bytes(("\ufeff" + header + "\r\nwarm_benchmark, hot, shm, 64, 0, 1, n, 0, 0, 900\r\n").encode())
    kind, df = load_file(str(p))
    assert kind == RAW and df["mode"].tolist() == ["hot"] and df["latency_ns"].tolist() == [900]


def test_duplicate_header_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text(",".join(csvgen.RAW_COLUMNS) + ",mode\n" + "a,b,c,1,0,1,n,0,0,5,d\n")
    with pytest.raises(InputError, match="duplicate column 'mode'"):
        load_file(str(p))


def test_fabric_duplicate_rows_rejected(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text(",".join(csvgen.FABRIC_COLUMNS) + "\nshm,64,10,1,2,3\nshm,64,10,1,2,3\n")
    with pytest.raises(InputError, match="line 3"):
        load_file(str(p))
