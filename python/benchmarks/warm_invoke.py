"""Warm-invocation latency from Python, against the Rust client and mpi4py.futures, in one run.

Three clients invoke a function that does nothing (rfaas's ``empty``; for mpi4py a Python
function that returns its argument) with a 64-byte payload (``--sizes``), one call at a time,
each call timed on its own:

- ``rust``: ``warm_benchmark --modes hot`` (the Rust client), run as a child process;
- ``python``: ``rfaas.Executor.invoke`` returning new bytes, in this process;
- ``python-out``: ``rfaas.Executor.invoke(..., out=buffer)``, in this process;
- ``mpi4py.futures``: ``MPICommExecutor`` submit + result with one worker rank, under
  ``mpirun -n 2`` on this machine.

The rfaas clients use a hot executor (busy-polling worker) of the same cluster and pin
themselves to the last core of their cpuset. Output: one CSV with the columns of the other
benchmarks plus ``client`` (one row per call), and a summary (p50/p99 per client, the Python
overhead over Rust, the mpi4py.futures / Python ratio) on stderr, with the issue's targets
(Python p50 under 3 us, at least 50x faster than mpi4py.futures).

    target/release/rfaas local-cluster start --run-dir /tmp/rfaas --provider shm
    .venv/bin/python python/benchmarks/warm_invoke.py --cluster /tmp/rfaas/cluster.json \
        --bin-dir target/release --repetitions 20000 --output results/python-warm.csv
"""

import argparse
import csv
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

COLUMNS = [
    "benchmark", "mode", "provider", "payload_bytes", "rank", "world_size", "node", "worker",
    "repetition", "latency_ns", "client",
]
HANG_S = 600


def percentile(sorted_ns, q):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_ns:
        return float("nan")
    i = min(len(sorted_ns) - 1, max(0, int(round(q * len(sorted_ns) + 0.5)) - 1))
    return sorted_ns[i]


def pin_last_core():
    """Pins this process to the last core of its cpuset, as warm_benchmark pins its client;
    returns the cpuset to restore (children such as mpirun must not inherit the pinning)."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cores)})
    return cores


def payload(size):
    return bytes((i * 31 + size) & 0xFF for i in range(size))


def python_rows(args, provider):
    cpuset = pin_last_core()
    try:
        return _python_rows(args, provider)
    finally:
        os.sched_setaffinity(0, cpuset)


def _python_rows(args, provider):
    import rfaas

    rows = []
    cluster = rfaas.Cluster(args.cluster)
    with cluster.allocate(args.library, ["empty"], cores=1, hot_timeout_ms=-1) as ex:
        out = bytearray(ex.output_capacity)
        clock = time.perf_counter_ns
        for client in ("python", "python-out"):
            for size in args.sizes:
                data = payload(size)
                lat = []
                if client == "python":
                    for _ in range(args.warmup):
                        ex.invoke("empty", data)
                    for _ in range(args.repetitions):
                        t = clock()
                        ex.invoke("empty", data)
                        lat.append(clock() - t)
                else:
                    for _ in range(args.warmup):
                        ex.invoke("empty", data, out=out)
                    for _ in range(args.repetitions):
                        t = clock()
                        ex.invoke("empty", data, out=out)
                        lat.append(clock() - t)
                rows += [
                    ["python_warm", "hot", provider, size, 0, 1, "", 0, i, ns, client]
                    for i, ns in enumerate(lat)
                ]
    return rows


def rust_rows(args, tmp):
    exe = pathlib.Path(args.bin_dir) / "warm_benchmark"
    csv_path = pathlib.Path(tmp) / "rust.csv"
    cmd = [
        str(exe), "--cluster", str(args.cluster), "--library", str(args.library),
        "--function", "empty", "--modes", "hot", "--sizes", ",".join(map(str, args.sizes)),
        "--repetitions", str(args.repetitions), "--warmup", str(args.warmup),
        "--output", str(csv_path),
    ]
    subprocess.run(cmd, check=True, timeout=HANG_S, stdout=subprocess.DEVNULL)
    with open(csv_path) as f:
        return [[r[c] for c in COLUMNS[:-1]] + ["rust"] for r in csv.DictReader(f)]


def _echo(x):
    return x


def mpi4py_worker(args):
    """Under mpirun -n 2: rank 0 submits, rank 1 serves; rank 0 writes the rows."""
    from mpi4py import MPI
    from mpi4py.futures import MPICommExecutor

    rows = []
    with MPICommExecutor(MPI.COMM_WORLD, root=0) as pool:
        if pool is not None:
            clock = time.perf_counter_ns
            for size in args.sizes:
                data = payload(size)
                for _ in range(args.warmup):
                    pool.submit(_echo, data).result()
                for i in range(args.mpi4py_repetitions):
                    t = clock()
                    pool.submit(_echo, data).result()
                    rows.append(["python_warm", "mpi4py", "mpi", size, 0, 2, "", 1, i, clock() - t, "mpi4py.futures"])
    if MPI.COMM_WORLD.Get_rank() == 0:
        with open(args.mpi4py_output, "w", newline="") as f:
            csv.writer(f).writerows(rows)


def mpi4py_rows(args, tmp):
    out = pathlib.Path(tmp) / "mpi4py.csv"
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise SystemExit("mpirun not found")
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    cmd = [
        mpirun, "--bind-to", "none", "--oversubscribe", "-n", "2", sys.executable, __file__,
        "--mpi4py-worker", "--mpi4py-output", str(out), "--sizes", ",".join(map(str, args.sizes)),
        "--warmup", str(min(args.warmup, 100)), "--mpi4py-repetitions", str(args.mpi4py_repetitions),
    ]
    subprocess.run(cmd, check=True, timeout=HANG_S, env=env, stdin=subprocess.DEVNULL)
    with open(out) as f:
        return list(csv.reader(f))


def summarize(rows, sizes):
    by = {}
    for r in rows:
        by.setdefault((r[10], int(r[3])), []).append(int(r[9]))
    stats = {}
    print("client,payload_bytes,count,p50_ns,p99_ns", file=sys.stderr)
    for (client, size), lat in sorted(by.items()):
        lat.sort()
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        stats[(client, size)] = (p50, p99)
        print(f"{client},{size},{len(lat)},{p50},{p99}", file=sys.stderr)
    for size in sizes:
        py = stats.get(("python", size))
        rust = stats.get(("rust", size))
        mp = stats.get(("mpi4py.futures", size))
        if py and rust:
            print(f"summary,{size},python_minus_rust_p50_ns,{py[0] - rust[0]}", file=sys.stderr)
        if py:
            print(f"target,{size},python_p50_under_3us,{'met' if py[0] < 3000 else 'missed'},{py[0]}", file=sys.stderr)
        if py and mp:
            ratio = mp[0] / py[0]
            print(f"summary,{size},mpi4py_over_python_p50,{ratio:.1f}", file=sys.stderr)
            print(f"target,{size},at_least_50x_mpi4py,{'met' if ratio >= 50 else 'missed'},{ratio:.1f}", file=sys.stderr)
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", help="cluster.json (default: $RFAAS_CLUSTER)")
    ap.add_argument("--library", help="libfunctions.so (default: in --bin-dir)")
    ap.add_argument("--bin-dir", default="target/release", help="where warm_benchmark is")
    ap.add_argument("--sizes", default="64", help="payload sizes in bytes, comma separated")
    ap.add_argument("--repetitions", type=int, default=20000, help="measured calls per rfaas client and size")
    ap.add_argument("--mpi4py-repetitions", type=int, default=2000, help="measured calls of mpi4py.futures per size")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4, help="turns of the rfaas clients")
    ap.add_argument("--clients", default="rust,python,mpi4py.futures", help="which clients to run")
    ap.add_argument("--output", help="CSV file (default: stdout)")
    ap.add_argument("--mpi4py-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mpi4py-output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.mpi4py_worker:
        mpi4py_worker(args)
        return 0
    args.cluster = args.cluster or os.environ.get("RFAAS_CLUSTER")
    if not args.cluster:
        raise SystemExit("--cluster or RFAAS_CLUSTER is required")
    args.library = args.library or str(pathlib.Path(args.bin_dir) / "libfunctions.so")
    import json

    provider = json.load(open(args.cluster)).get("provider", "")
    clients = args.clients.split(",")
    rows = []
    # The rfaas clients take turns, `--rounds` times, so that a slow phase of this noisy
    # machine hits both alike; each round runs repetitions / rounds calls.
    total = args.repetitions
    with tempfile.TemporaryDirectory(prefix="rfaas-pybench-") as tmp:
        for r in range(args.rounds):
            args.repetitions = total // args.rounds + (1 if r < total % args.rounds else 0)
            if "rust" in clients:
                rows += rust_rows(args, tmp)
            if "python" in clients:
                    rows += python_rows(args, provider)
        if "mpi4py.futures" in clients:
            rows += mpi4py_rows(args, tmp)
    f = open(args.output, "w", newline="") if args.output else sys.stdout
    w = csv.writer(f)
    w.writerow(COLUMNS)
    w.writerows(rows)
    if args.output:
        f.close()
    summarize(rows, args.sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
