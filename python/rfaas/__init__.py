"""rfaas: serverless functions for supercomputers, invoked in microseconds over RDMA.

The Python client of rfaas. It calls the Rust client library (through PyO3), so an
invocation is the same one write each way as from Rust, with the GIL released while it waits.

Quick start (a running cluster: ``rfaas local-cluster start --run-dir /tmp/rfaas``)::

    import rfaas

    cluster = rfaas.Cluster("/tmp/rfaas/cluster.json")    # or $RFAAS_CLUSTER
    with cluster.allocate("target/release/libfunctions.so", ["echo"], cores=2) as ex:
        ex.invoke("echo", b"hello")                      # -> b'hello' (new bytes)
        out = bytearray(4096)
        n = ex.invoke("echo", memoryview(b"hi"), out=out) # -> 2, result in out[:2]
        fut = ex.submit("echo", b"async")                  # a concurrent.futures.Future
        fut.result()                                       # -> b'async'

Inputs are any bytes-like objects (``bytes``, ``bytearray``, ``memoryview``, C-contiguous NumPy
arrays), read in place and copied only into the worker's registered memory. Results come back
as new ``bytes`` or into a writable buffer given as ``out=``.

MPI applications on mpi4py share one lease between their ranks: see ``rfaas.mpi``.

Classes:
    Cluster   a cluster file (``cluster.json``): ``allocate(...)`` returns an Executor
    Executor  workers of one allocation: ``invoke``, ``submit``, ``close`` (thread-safe)
    Future    an invocation in flight (``concurrent.futures.Future``)

Errors are ``rfaas.Error`` subclasses: see ``rfaas.errors``.
"""

from ._native import VERSION as __version__
from ._native import Cluster, Executor, HAS_MPI
from .errors import (
    BusyError,
    ClosedError,
    ClusterError,
    ConfigError,
    Error,
    ExecutorGoneError,
    FunctionFailedError,
    InitFailedError,
    InputTooLargeError,
    InvalidArgumentError,
    InvocationError,
    OutputTooLargeError,
    SessionError,
    TimeoutError,
    UnknownFunctionError,
)
from .futures import Future

__all__ = [
    "Cluster",
    "Executor",
    "Future",
    "HAS_MPI",
    "Error",
    "ConfigError",
    "ClusterError",
    "InitFailedError",
    "InvalidArgumentError",
    "InputTooLargeError",
    "UnknownFunctionError",
    "InvocationError",
    "OutputTooLargeError",
    "FunctionFailedError",
    "TimeoutError",
    "ExecutorGoneError",
    "BusyError",
    "ClosedError",
    "SessionError",
    "__version__",
]
