"""Black-Scholes from an mpi4py application, half offloaded to rfaas workers.

Every rank prices a batch of European options: half of them remotely (batches posted with
``offload_async``, several in flight, while the rank prices the other half itself), and checks
every price against a purely local computation (closed form with ``math.erf``, written here,
independent of the Rust kernel).

    target/release/rfaas local-cluster start --run-dir /tmp/rfaas --provider shm
    mpirun -n 2 --bind-to none .venv/bin/python examples/python/offload_mpi.py \
        --cluster /tmp/rfaas/cluster.json --library target/release/libfunctions.so

Exits non-zero unless every rank's results are right.
"""

import argparse
import math
import sys
import time

import numpy as np
from mpi4py import MPI

import rfaas
import rfaas.mpi

RECORD = 5  # f64 per option: spot, strike, rate, volatility, time
PRICES = 2  # f64 per result: call, put


def price_locally(options: np.ndarray) -> np.ndarray:
    """Closed-form Black-Scholes, one option at a time, with math.erf."""
    out = np.empty((len(options), PRICES))
    for i, (s, k, r, v, t) in enumerate(options):
        sq = v * math.sqrt(t)
        d1 = (math.log(s / k) + (r + 0.5 * v * v) * t) / sq
        d2 = d1 - sq
        phi = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
        disc = k * math.exp(-r * t)
        out[i] = (s * phi(d1) - disc * phi(d2), disc * phi(-d2) - s * phi(-d1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", help="cluster.json (default: $RFAAS_CLUSTER)")
    ap.add_argument("--library", required=True, help="the function library (libfunctions.so)")
    ap.add_argument("--options", type=int, default=20000, help="options per rank")
    ap.add_argument("--batch", type=int, default=100, help="options per offload")
    ap.add_argument("--in-flight", type=int, default=4, help="offloads in flight per rank")
    args = ap.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(1000 + rank)
    n = args.options
    options = np.column_stack(
        [
            rng.uniform(50, 150, n),
            rng.uniform(50, 150, n),
            rng.uniform(0.0, 0.1, n),
            rng.uniform(0.05, 0.6, n),
            rng.uniform(0.1, 3.0, n),
        ]
    )
    expected = price_locally(options)

    capacity = args.batch * RECORD * 8
    prices = np.empty((n, PRICES))
    remote = n // 2
    t0 = time.perf_counter()
    with rfaas.mpi.Session(
        comm,
        args.library,
        ["black_scholes"],
        cluster=args.cluster,
        slots=max(args.in_flight, 1),
        input_capacity=capacity,
        output_capacity=args.batch * PRICES * 8,
    ) as session:
        in_flight = []
        offloads = 0
        for start in range(0, remote, args.batch):
            stop = min(start + args.batch, remote)
            # A slice of a C-contiguous array is contiguous: passed without a copy.
            in_flight.append((start, stop, session.offload_async("black_scholes", options[start:stop])))
            offloads += 1
            if len(in_flight) >= args.in_flight:
                a, b, o = in_flight.pop(0)
                prices[a:b] = np.frombuffer(session.wait(o), dtype="<f8").reshape(b - a, PRICES)
        prices[remote:] = price_locally(options[remote:])  # meanwhile, the local half
        for a, b, o in in_flight:
            prices[a:b] = np.frombuffer(session.wait(o), dtype="<f8").reshape(b - a, PRICES)
        # And one blocking offload of the first batch again, into a caller's buffer.
        out = np.empty((min(args.batch, n), PRICES))
        written = session.offload("black_scholes", options[: len(out)], out=out)
        offloads += 1
    report = session.report
    elapsed = time.perf_counter() - t0

    error = max(float(np.max(np.abs(prices - expected))), float(np.max(np.abs(out - expected[: len(out)]))))
    ok = error < 1e-9 and written == out.nbytes
    print(
        f"rank {rank}: {n} options, {remote} remote in {offloads} offloads, {elapsed:.3f} s, "
        f"max |error| {error:.2e}: {'ok' if ok else 'WRONG'}",
        flush=True,
    )
    all_ok = comm.allreduce(1 if ok else 0, op=MPI.SUM) == size
    if rank == 0:
        print(
            f"{size} ranks, {report['invocations']} offloads, p50 {report['p50_ns'] / 1000:.1f} us, "
            f"{'result correct on every rank' if all_ok else 'WRONG RESULTS'}",
            flush=True,
        )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
