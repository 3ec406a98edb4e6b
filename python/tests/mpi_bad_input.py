"""Run under mpirun by test_mpi.py: bad input to rfaas.mpi gets rfaas errors on every rank.

Usage: mpi_bad_input.py CLUSTER LIBRARY. Prints "rank R: bad input ok" when every check holds.
"""

import sys

from mpi4py import MPI

import rfaas
import rfaas.mpi


def expect(exc, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc as e:
        return e
    raise AssertionError(f"{fn.__name__}{args} did not raise {exc.__name__}")


def main() -> None:
    cluster, library = sys.argv[1], sys.argv[2]
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()

    # Not a communicator, and MPI_COMM_NULL: refused before anything collective.
    expect(rfaas.SessionError, rfaas.mpi.Session, "COMM_WORLD", library, ["echo"], cluster=cluster)
    expect(rfaas.SessionError, rfaas.mpi.Session, MPI.COMM_NULL, library, ["echo"], cluster=cluster)

    # A library rank 0 cannot read: every rank gets the error (collective set-up).
    e = expect(rfaas.Error, rfaas.mpi.Session, comm, "/nonexistent/lib.so", ["echo"], cluster=cluster)
    assert "nonexistent" in str(e), e

    # A session on a sub-communicator (each rank alone): works, then bad calls.
    solo = comm.Split(color=rank, key=0)
    s = rfaas.mpi.Session(solo, library, ["echo"], cluster=cluster, input_capacity=64, output_capacity=64)
    assert s.size == 1 and s.rank == 0 and len(s.workers) == 1
    assert s.offload("echo", b"hello") == b"hello"
    expect(rfaas.UnknownFunctionError, s.offload, "nope", b"")
    expect(rfaas.InputTooLargeError, s.offload, "echo", bytes(65))
    expect(rfaas.InvalidArgumentError, s.offload, "echo", 3.14)
    expect(rfaas.InvalidArgumentError, s.offload_async, "echo", b"", 4096)
    o = s.offload_async("echo", b"async")
    assert s.wait(o) == b"async" and o.collected
    expect(rfaas.InvalidArgumentError, s.wait, o)
    report = s.finish()
    assert report is not None and report["invocations"] >= 2, report
    expect(rfaas.ClosedError, s.offload, "echo", b"after finish")
    expect(rfaas.ClosedError, s.finish)
    solo.Free()
    comm.Barrier()
    print(f"rank {rank}: bad input ok", flush=True)


if __name__ == "__main__":
    main()
