"""PNG plots (matplotlib, headless Agg backend).

Every plot function takes the tables it needs and an output directory, writes
one PNG and returns its path -- or raises ``Skip`` with a one-line reason when
its data is absent.  ``write_all`` runs them all and collects paths and notes.

Latency axes are in microseconds (us); tables stay in integer nanoseconds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: no display needed, ever

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import schema  # noqa: E402
from .throughput import THROUGHPUT_MODE  # noqa: E402

CDF_POINTS = 2000  # at most this many points per CDF line
DPI = 100


class Skip(Exception):
    """This plot has no data; the message says what is missing."""


@dataclass
class PlotResult:
    name: str
    path: str | None
    note: str | None = None


def human_bytes(n) -> str:
    n = int(n)
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def _labeler(keys: list[tuple], names: list[str]):
    """Labels that show only the key fields that differ between lines."""
    varying = [i for i in range(len(names)) if len({k[i] for k in keys}) > 1] or list(range(len(names)))

    def fmt(name, value):
        if name == "payload_bytes":
            return human_bytes(value)
        if name == "world_size":
            return f"{value} rank" + ("s" if int(value) != 1 else "")
        return str(value)

    return lambda key: " ".join(fmt(names[i], key[i]) for i in varying)


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _legend(ax, n_lines: int):
    """Legend outside the axes, on the right, so it never hides data."""
    ax.legend(fontsize="small" if n_lines <= 12 else "x-small", ncol=1 if n_lines <= 24 else 2,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


def _plain_log_labels(axis, values):
    """Tick labels like 0.5, 2, 300 on a log axis; minor ticks labelled when the data span < 1 decade."""
    axis.set_major_formatter(_PLAIN)
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0], dtype="float64")
    narrow = v.size > 0 and v.max() / v.min() < 10
    axis.set_minor_formatter(_PLAIN if narrow else NullFormatter())


def _p50_p99_lines(ax, series, x):
    """Per ``(name, rows)`` of ``series``, in one colour: p50 solid with dots and p99 dashed with
    crosses, in microseconds against column ``x``. Returns the values drawn (for
    :func:`_plain_log_labels`)."""
    values = []
    for i, (name, rows) in enumerate(series):
        rows = rows.sort_values(x)
        c = f"C{i % 10}"
        for stat, style in (("p50", "o-"), ("p99", "x--")):
            us = rows[f"{stat}_ns"] / 1e3
            ax.plot(rows[x], us, style, color=c, label=f"{name} {stat}")
            values += list(us)
    return values


def _log_latency_axis(ax, values, ylabel, title):
    """A log latency axis labelled for ``values`` (see :func:`_plain_log_labels`), with its
    label, the plot's title and a grid."""
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis, values)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def _payload_axis(ax, payloads):
    payloads = sorted(set(int(p) for p in payloads))
    ax.set_xscale("symlog", linthresh=1)  # symlog: payload 0 B is allowed
    ax.set_xticks(payloads)
    ax.set_xticklabels([human_bytes(p) for p in payloads], rotation=45, ha="right", fontsize="small")
    ax.minorticks_off()
    ax.set_xlabel("payload size")


def _ranks_axis(ax, world_sizes):
    ranks = sorted(set(int(w) for w in world_sizes))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks)
    ax.xaxis.set_major_formatter(_PLAIN)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.minorticks_off()
    if len(ranks) == 1:
        ax.set_xlim(ranks[0] / 1.5, ranks[0] * 1.5)
    ax.set_xlabel("MPI ranks (world_size)")


def _measured(fabric: pd.DataFrame) -> pd.DataFrame:
    """Fabric floor rows with samples (a provider that could not run has iterations 0)."""
    return fabric[fabric["iterations"] > 0] if not fabric.empty else fabric


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)) or "_"


# --------------------------------------------------------------------------- plots


def plot_cdf(raw: pd.DataFrame, mode: str, out_dir: str) -> str:
    """Empirical CDF of latency_ns for one mode: one line per group of the percentile table."""
    rows = raw[raw["mode"] == mode]
    if rows.empty:
        raise Skip(f"no rows with mode {mode!r}")
    keys = [k for k in schema.GROUP_KEYS if k != "mode"]
    groups = list(rows.groupby(keys, sort=True))
    label = _labeler([k for k, _ in groups], keys)
    fig, ax = plt.subplots(figsize=(11, 5))
    positive = True
    for key, g in groups:
        v = np.sort(g["latency_ns"].to_numpy()) / 1e3
        n = v.size
        idx = np.unique(np.linspace(0, n - 1, min(n, CDF_POINTS)).round().astype(int))
        ax.plot(v[idx], (idx + 1) / n, drawstyle="steps-post", label=f"{label(key)} (n={n})")
        positive &= bool(v[0] > 0)
    if positive:
        ax.set_xscale("log")
        _plain_log_labels(ax.xaxis, rows["latency_ns"].to_numpy() / 1e3)
    ax.set_ylim(0, 1.005)
    ax.set_xlabel("latency (us)")
    ax.set_ylabel("fraction of invocations at or below")
    ax.set_title(f"latency CDF, mode {mode}")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, len(groups))
    return _save(fig, out_dir, f"cdf_{safe_name(mode)}.png")


def plot_latency_vs_payload(table: pd.DataFrame, fabric: pd.DataFrame, out_dir: str) -> str:
    """p50 (solid) and p99 (dashed) against payload size, one colour per line; fabric floor dotted.

    scalable_benchmark groups are left out (they have the ranks plots) unless
    they are the only ones.
    """
    if table.empty:
        raise Skip("no raw result rows")
    rows = table[table["benchmark"] != "scalable_benchmark"]
    if rows.empty:
        rows = table
    keys = ["benchmark", "mode", "provider", "world_size"]
    groups = list(rows.groupby(keys, sort=True))
    label = _labeler([k for k, _ in groups], keys)
    fig, ax = plt.subplots(figsize=(11, 5))
    payloads = list(rows["payload_bytes"])
    values = _p50_p99_lines(ax, [(label(k), g) for k, g in groups], "payload_bytes")
    fabric = _measured(fabric)
    for provider, f in fabric.groupby("provider", sort=True):
        f = f.sort_values("payload_bytes")
        ax.plot(f["payload_bytes"], f["p50_ns"] / 1e3, "s:", color="black", alpha=0.6,
                label=f"fabric floor {provider} p50")
        payloads += list(f["payload_bytes"])
        values += list(f["p50_ns"] / 1e3)
    _payload_axis(ax, payloads)
    _log_latency_axis(ax, values, "latency (us)", "latency against payload size (solid p50, dashed p99)")
    _legend(ax, 2 * len(groups) + fabric["provider"].nunique())
    return _save(fig, out_dir, "latency_vs_payload.png")


def plot_scalable_latency(table: pd.DataFrame, out_dir: str) -> str:
    """scalable_benchmark p50/p99 against the number of ranks (world_size)."""
    rows = table[table["benchmark"] == "scalable_benchmark"] if not table.empty else table
    if rows.empty:
        raise Skip("no scalable_benchmark rows")
    keys = ["mode", "provider", "payload_bytes"]
    groups = list(rows.groupby(keys, sort=True))
    label = _labeler([k for k, _ in groups], keys)
    fig, ax = plt.subplots(figsize=(11, 5))
    values = _p50_p99_lines(ax, [(label(k), g) for k, g in groups], "world_size")
    _ranks_axis(ax, rows["world_size"])
    _log_latency_axis(ax, values, "latency (us)", "scalable_benchmark latency against ranks (solid p50, dashed p99)")
    _legend(ax, 2 * len(groups))
    return _save(fig, out_dir, "scalable_latency_vs_ranks.png")


def plot_scalable_throughput(tput: pd.DataFrame, out_dir: str) -> str:
    """Throughput (sum over ranks) against world_size, for mode=throughput rows."""
    if tput.empty:
        raise Skip(f"no rows with mode {THROUGHPUT_MODE!r}")
    keys = ["benchmark", "provider", "payload_bytes"]
    groups = list(tput.groupby(keys, sort=True))
    label = _labeler([k for k, _ in groups], keys)
    fig, ax = plt.subplots(figsize=(11, 5))
    for key, g in groups:
        g = g.sort_values("world_size")
        methods = ",".join(sorted(set(g["method"])))
        ax.plot(g["world_size"], g["throughput_per_s"] / 1e3, "o-", label=f"{label(key)} [{methods}]")
    _ranks_axis(ax, tput["world_size"])
    ax.set_ylabel("throughput (thousand invocations/s, all ranks)")
    ax.set_ylim(bottom=0)
    ax.set_title("throughput against ranks")
    ax.grid(True, alpha=0.3)
    _legend(ax, len(groups))
    return _save(fig, out_dir, "scalable_throughput_vs_ranks.png")


def plot_cold_phases(median_rows: pd.DataFrame, phases: list[str], out_dir: str) -> str:
    """Stacked bars: the phases of each group's median row, which add up to that row's latency
    (the group's p50, marked by a diamond on top of the stack)."""
    if median_rows.empty:
        raise Skip("no rows with cold-start phase columns (*_ns other than latency_ns)")
    keys = list(schema.GROUP_KEYS)
    tuples = [tuple(r) for r in median_rows[keys].itertuples(index=False)]
    label = _labeler(tuples, keys)
    x = np.arange(len(median_rows))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(x) + 5), 5))
    bottom = np.zeros(len(x))
    parts = phases + (["other_ns"] if median_rows["other_ns"].astype("float64").gt(0).any() else [])
    for i, c in enumerate(parts):
        h = median_rows[c].astype("float64").fillna(0).to_numpy() / 1e3
        name = "not in a phase" if c == "other_ns" else c.removesuffix("_ns").replace("_", " ")
        ax.bar(x, h, 0.6, bottom=bottom, color=f"C{i % 10}", label=name)
        bottom += h
    ax.plot(x, median_rows["latency_ns"].astype("float64") / 1e3, "kD", label="latency of that row (p50)")
    ax.set_xticks(x)
    ax.set_xticklabels([label(t) for t in tuples], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("time (us)")
    ax.set_xlim(-0.75, len(x) - 0.25)
    ax.set_title("cold start phases of the median row (they add up to its latency)")
    ax.grid(True, axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    # top of the stack first, like the bars
    ax.legend(handles[::-1], labels[::-1], fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out_dir, "cold_start_phases.png")


def plot_cold_phase_distribution(raw: pd.DataFrame, phases: list[str], out_dir: str) -> str:
    """One panel per phase (and the total): each group's distribution as a box (p25-p75, the
    median as a line) with whiskers at p5 and p95, log scale."""
    rows = raw[raw[phases].notna().all(axis=1)] if phases else raw.iloc[0:0]
    if rows.empty:
        raise Skip("no rows with cold-start phase columns (*_ns other than latency_ns)")
    keys = list(schema.GROUP_KEYS)
    groups = list(rows.groupby(keys, sort=True))
    tuples = [k for k, _ in groups]
    label = _labeler(tuples, keys)
    panels = phases + ["latency_ns"]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols + 1, 3.4 * nrows + 1), squeeze=False)
    for ax, c in zip(axes.flat, panels):
        # a phase of 0 ns cannot go on a log axis: drawn at 1 ns
        data = [np.maximum(g[c].astype("float64").to_numpy(), 1.0) / 1e3 for _, g in groups]
        ax.boxplot(data, whis=(5, 95), showfliers=False, widths=0.6)
        ax.set_yscale("log")
        ax.set_title("total (latency)" if c == "latency_ns" else c.removesuffix("_ns").replace("_", " "),
                     fontsize="medium")
        ax.set_xticks(np.arange(1, len(groups) + 1))
        ax.set_xticklabels([label(t) for t in tuples], rotation=30, ha="right", fontsize="x-small")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("time (us)")
    fig.suptitle("cold start phases: distribution per group (box p25-p75, line p50, whiskers p5-p95)")
    return _save(fig, out_dir, "cold_start_phase_distribution.png")


def hot_warm_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """Groups that have both a ``hot`` and a ``warm`` row: p50/p99 of each side by side."""
    keys = ["benchmark", "provider", "payload_bytes", "world_size"]
    if table.empty:
        return pd.DataFrame()
    hot = table[table["mode"] == "hot"][keys + ["p50_ns", "p99_ns"]]
    warm = table[table["mode"] == "warm"][keys + ["p50_ns", "p99_ns"]]
    return pd.merge(hot, warm, on=keys, suffixes=("_hot", "_warm")).sort_values(keys).reset_index(drop=True)


def plot_hot_vs_warm(table: pd.DataFrame, out_dir: str) -> str:
    """Grouped bars, hot beside warm, for p50 (left) and p99 (right)."""
    pairs = hot_warm_pairs(table)
    if pairs.empty:
        raise Skip("no group has both mode 'hot' and mode 'warm' rows")
    keys = ["benchmark", "provider", "payload_bytes", "world_size"]
    tuples = [tuple(r) for r in pairs[keys].itertuples(index=False)]
    label = _labeler(tuples, keys)
    x = np.arange(len(pairs))
    w = 0.4
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(x) + 4), 5), sharey=True)
    for ax, stat in zip(axes, ("p50", "p99")):
        ax.bar(x - w / 2, pairs[f"{stat}_ns_hot"] / 1e3, w, label="hot", color="C3")
        ax.bar(x + w / 2, pairs[f"{stat}_ns_warm"] / 1e3, w, label="warm", color="C0")
        ax.set_xticks(x)
        ax.set_xticklabels([label(t) for t in tuples], rotation=30, ha="right", fontsize="small")
        ax.set_yscale("log")
        _plain_log_labels(ax.yaxis, list(pairs[f"{stat}_ns_hot"] / 1e3) + list(pairs[f"{stat}_ns_warm"] / 1e3))
        ax.set_title(f"{stat}")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("latency (us)")
    axes[0].legend()
    fig.suptitle("hot against warm")
    return _save(fig, out_dir, "hot_vs_warm.png")


def plot_fabric_floor(fabric: pd.DataFrame, out_dir: str) -> str:
    """Fabric floor: p50 (solid) and p99 (dashed) against payload per provider."""
    if fabric.empty:
        raise Skip("no fabric floor CSV given")
    fabric = _measured(fabric)
    if fabric.empty:
        raise Skip("the fabric floor CSV has no measured rows (all iterations 0)")
    fig, ax = plt.subplots(figsize=(8, 5))
    values = _p50_p99_lines(ax, fabric.groupby("provider", sort=True), "payload_bytes")
    _payload_axis(ax, fabric["payload_bytes"])
    _log_latency_axis(ax, values, "round trip (us)", "fabric floor (solid p50, dashed p99)")
    _legend(ax, 2 * fabric["provider"].nunique())
    return _save(fig, out_dir, "fabric_floor.png")


# --------------------------------------------------------------------------- all


def _skip(reason: str):
    raise Skip(reason)


def write_all(raw, table, tput, median_rows, phases, fabric, out_dir: str) -> list[PlotResult]:
    """Write every plot that has data; the others come back with a note."""
    os.makedirs(out_dir, exist_ok=True)
    jobs = []
    modes = sorted(set(raw["mode"])) if not raw.empty else []
    if modes:
        for m in modes:
            jobs.append((f"cdf_{safe_name(m)}.png", lambda m=m: plot_cdf(raw, m, out_dir)))
    else:
        jobs.append(("cdf_<mode>.png", lambda: _skip("no raw result rows")))
    jobs += [
        ("latency_vs_payload.png", lambda: plot_latency_vs_payload(table, fabric, out_dir)),
        ("scalable_latency_vs_ranks.png", lambda: plot_scalable_latency(table, out_dir)),
        ("scalable_throughput_vs_ranks.png", lambda: plot_scalable_throughput(tput, out_dir)),
        ("cold_start_phases.png", lambda: plot_cold_phases(median_rows, phases, out_dir)),
        ("cold_start_phase_distribution.png", lambda: plot_cold_phase_distribution(raw, phases, out_dir)),
        ("hot_vs_warm.png", lambda: plot_hot_vs_warm(table, out_dir)),
        ("fabric_floor.png", lambda: plot_fabric_floor(fabric, out_dir)),
    ]
    results = []
    for name, fn in jobs:
        try:
            results.append(PlotResult(name, fn()))
        except Skip as s:
            results.append(PlotResult(name, None, str(s)))
    return results
