"""Reading and validating the benchmark CSVs.

A file is one of two kinds, decided by its header:

* **fabric floor**: its columns are exactly ``schema.FABRIC_COLUMNS`` (any order);
  rows are already aggregated (one per provider and payload size).
* **raw results**: anything else; it must then have every column of
  ``schema.RAW_REQUIRED`` (more columns are kept).

Every problem raises ``InputError`` with the file name and what is wrong.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field

import pandas as pd

from . import schema
from .errors import InputError

RAW = "raw"
FABRIC = "fabric"

_SNIFF_BYTES = 64 * 1024


@dataclass
class Results:
    """Everything read from a set of files: raw rows pooled, fabric rows pooled."""

    raw: pd.DataFrame = field(default_factory=pd.DataFrame)
    fabric: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: list[tuple[str, str, int]] = field(default_factory=list)  # (path, kind, rows)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a CSV file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")


def _read_header(path: str) -> list[str]:
    """Return the stripped header fields, or raise for empty/binary/non-CSV files."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head.strip():
        raise InputError(f"{path}: file is empty")
    if b"\x00" in head:
        raise InputError(f"{path}: not a CSV file (binary content)")
    if len(head) == _SNIFF_BYTES and b"\n" in head:
        head = head[: head.rindex(b"\n")]  # do not cut a multi-byte character in two
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a CSV file (not UTF-8 text)") from None
    first_line = text.lstrip("\r\n").splitlines()[0] if text.strip() else ""
    try:
        header = next(csv.reader(io.StringIO(first_line)))
    except (csv.Error, StopIteration):
        raise InputError(f"{path}: not a CSV file (cannot parse the header line)") from None
    header = [h.strip() for h in header]
    shown = first_line if len(first_line) <= 60 else first_line[:57] + "..."
    if len(header) < 2:
        raise InputError(f"{path}: not a CSV file (first line {shown!r} has no comma-separated columns)")
    if not any(h in schema.KNOWN_COLUMNS for h in header):
        raise InputError(
            f"{path}: not a results CSV (first line {shown!r} has none of the expected columns, "
            f"e.g. {','.join(schema.RAW_REQUIRED)})"
        )
    empty = [i + 1 for i, h in enumerate(header) if not h]
    if empty:
        raise InputError(f"{path}: header column {empty[0]} has no name")
    dups = sorted({h for h in header if header.count(h) > 1})
    if dups:
        raise InputError(f"{path}: duplicate column {dups[0]!r} in the header")
    return header


def classify(header: list[str]) -> str:
    """``FABRIC`` if the header is exactly the fabric floor columns, else ``RAW``."""
    return FABRIC if set(header) == set(schema.FABRIC_COLUMNS) and len(header) == len(schema.FABRIC_COLUMNS) else RAW


def _read_frame(path: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_values=[],
            skipinitialspace=True,
            encoding="utf-8-sig",
            skip_blank_lines=True,
        )
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except pd.errors.ParserError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "parse error"
        raise InputError(f"{path}: not a valid CSV file ({first})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a CSV file (not UTF-8 text)") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise InputError(f"{path}: has a header but no data rows")
    # Rows shorter than the header come back as NaN; treat them like empty fields.
    return df.fillna("").apply(lambda s: s.str.strip())


def _to_numbers(path: str, df: pd.DataFrame, col: str, required: bool, integer: bool) -> pd.Series:
    """Parse one column as numbers; empty fields become NaN unless ``required``."""
    s = df[col]
    empty = s == ""
    if required and empty.any():
        line = int(empty.to_numpy().nonzero()[0][0]) + 2  # header is line 1
        raise InputError(f"{path}: line {line}: column {col!r} is empty")
    num = pd.to_numeric(s.where(~empty, None), errors="coerce")
    bad = num.isna() & ~empty
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise InputError(f"{path}: line {i + 2}: column {col!r} holds {s.iloc[i]!r}, not a number")
    if integer:
        finite = num.dropna()
        if not (finite == finite.round()).all():
            i = int(((num != num.round()) & num.notna()).to_numpy().nonzero()[0][0])
            raise InputError(f"{path}: line {i + 2}: column {col!r} holds {s.iloc[i]!r}, not an integer")
    if (num.dropna() < 0).any():
        i = int((num < 0).to_numpy().nonzero()[0][0])
        raise InputError(f"{path}: line {i + 2}: column {col!r} holds {s.iloc[i]!r}, a negative value")
    whole = (num.dropna() == num.dropna().round()).all()
    if whole and not num.isna().any():
        return num.astype("int64")
    if integer:
        return num.astype("Int64")  # whole numbers with empty fields
    return num.astype("float64")


def _validate_raw(path: str, df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in schema.RAW_REQUIRED if c not in df.columns]
    if missing:
        which = "column" if len(missing) == 1 else "columns"
        raise InputError(
            f"{path}: missing required {which} {', '.join(repr(m) for m in missing)} "
            f"(a results CSV needs {','.join(schema.RAW_REQUIRED)})"
        )
    for col in schema.RAW_NONEMPTY:
        if col not in schema.RAW_INTEGER:
            empty = df[col] == ""
            if empty.any():
                line = int(empty.to_numpy().nonzero()[0][0]) + 2
                raise InputError(f"{path}: line {line}: column {col!r} is empty")
    for col in schema.RAW_INTEGER:
        df[col] = _to_numbers(path, df, col, required=col in schema.RAW_NONEMPTY, integer=True)
    for col in schema.phase_columns(df.columns) + [c for c in schema.OPTIONAL_NUMERIC if c in df.columns]:
        df[col] = _to_numbers(path, df, col, required=False, integer=False)
    return df


def _validate_fabric(path: str, df: pd.DataFrame) -> pd.DataFrame:
    if (df["provider"] == "").any():
        line = int((df["provider"] == "").to_numpy().nonzero()[0][0]) + 2
        raise InputError(f"{path}: line {line}: column 'provider' is empty")
    for col in schema.FABRIC_COLUMNS[1:]:
        df[col] = _to_numbers(path, df, col, required=True, integer=col in ("payload_bytes", "iterations"))
    df = df[list(schema.FABRIC_COLUMNS)]
    dup = df.duplicated(subset=list(schema.FABRIC_KEYS))
    if dup.any():
        line = int(dup.to_numpy().nonzero()[0][0]) + 2
        raise InputError(f"{path}: line {line}: a second row for the same provider and payload_bytes")
    return df


def load_file(path: str) -> tuple[str, pd.DataFrame]:
    """Read one CSV; return ``(kind, frame)`` with numeric columns parsed."""
    _check_file(path)
    header = _read_header(path)
    kind = classify(header)
    df = _read_frame(path)
    if kind == FABRIC:
        return kind, _validate_fabric(path, df)
    return kind, _validate_raw(path, df)


def load_files(paths: list[str]) -> Results:
    """Read several CSVs; raw rows are pooled into one frame, fabric rows into another."""
    raws, fabrics, files = [], [], []
    for p in paths:
        kind, df = load_file(p)
        files.append((p, kind, len(df)))
        (fabrics if kind == FABRIC else raws).append(df)
    raw = pd.concat(raws, ignore_index=True, sort=False) if raws else pd.DataFrame(columns=list(schema.RAW_REQUIRED))
    fabric = (
        pd.concat(fabrics, ignore_index=True) if fabrics else pd.DataFrame(columns=list(schema.FABRIC_COLUMNS))
    )
    dup = fabric.duplicated(subset=list(schema.FABRIC_KEYS))
    if dup.any():
        row = fabric[dup].iloc[0]
        raise InputError(
            f"provider {row['provider']!r} payload_bytes {row['payload_bytes']} appears in two fabric floor files "
            "(compare runs with --compare instead)"
        )
    return Results(raw=raw, fabric=fabric, files=files)
