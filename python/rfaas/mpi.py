"""rfaas from MPI applications on mpi4py: the ranks share one lease, and offload from any rank
with no MPI traffic per call.

::

    from mpi4py import MPI
    import rfaas.mpi

    with rfaas.mpi.Session(MPI.COMM_WORLD, "target/release/libfunctions.so",
                           ["black_scholes"], cores_per_rank=1) as session:   # collective
        prices = session.offload("black_scholes", options)    # bytes-like in, bytes out
        pending = session.offload_async("black_scholes", more)
        ...                                                    # compute locally meanwhile
        prices2 = session.wait(pending)
    # leaving the block calls session.finish() (collective); rank 0 gets session.report

``Session(comm, ...)`` is collective over ``comm`` (an ``mpi4py.MPI.Intracomm``; rfaas works
on its own duplicate): rank 0 reads the cluster file (``cluster=`` or ``$RFAAS_CLUSTER``),
leases ``size * cores_per_rank`` cores, allocates them per rank and hands them out; every rank
connects to its own workers. If any rank fails, every rank raises ``rfaas.SessionError`` (or the
error rank 0 met), and nothing stays allocated. ``finish()`` is collective too; a session
left unfinished is abandoned at interpreter exit (rank 0 still releases the lease).

A session belongs to the thread that created it. MPI must be initialised by mpi4py (import
``mpi4py.MPI`` first) with the same MPI library rfaas was built against (OpenMPI).
"""

import atexit
import weakref
from typing import Any, Dict, List, Optional, Sequence, Union
import os

from . import _native
from .errors import SessionError

if not _native.HAS_MPI:  # pragma: no cover - built without the `mpi` feature
    raise ImportError("this build of rfaas has no MPI support (feature `mpi`)")

__all__ = ["Session", "Offload"]

Offload = _native.MpiOffload

_live: "weakref.WeakSet[Session]" = weakref.WeakSet()


def _comm_handle(comm: Any) -> int:
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover
        raise SessionError("rfaas.mpi needs mpi4py") from e
    if not isinstance(comm, MPI.Intracomm):
        raise SessionError(
            f"comm must be an mpi4py.MPI.Intracomm (such as MPI.COMM_WORLD), not {type(comm).__name__}"
        )
    if comm == MPI.COMM_NULL:
        raise SessionError("comm is MPI.COMM_NULL")
    if not MPI.Is_initialized() or MPI.Is_finalized():
        raise SessionError("MPI is not initialised, or already finalised")
    return MPI._handleof(comm)


class Session:
    """The ranks of ``comm`` sharing one lease; see the module documentation.

    Arguments (the same on every rank): ``library`` (path of the function library, read by
    rank 0), ``functions`` (names), ``cluster`` (cluster file; default ``$RFAAS_CLUSTER``),
    ``cores_per_rank``, ``input_capacity`` / ``output_capacity`` (bytes per call), ``slots``
    (calls in flight per worker), ``hot_timeout_ms`` (-1 always hot, 0 always warm),
    ``timeout`` (seconds per call).
    """

    def __init__(
        self,
        comm: Any,
        library: Union[str, "os.PathLike[str]"],
        functions: Sequence[str],
        *,
        cluster: Optional[Union[str, "os.PathLike[str]"]] = None,
        cores_per_rank: int = 1,
        input_capacity: int = 4096,
        output_capacity: int = 4096,
        slots: int = 4,
        hot_timeout_ms: int = 100,
        timeout: float = 10.0,
    ) -> None:
        self.report: Optional[Dict[str, Any]] = None
        self._s = _native.MpiSession(
            _comm_handle(comm),
            os.fspath(library),
            list(functions),
            cluster=None if cluster is None else os.fspath(cluster),
            cores_per_rank=cores_per_rank,
            input_capacity=input_capacity,
            output_capacity=output_capacity,
            slots=slots,
            hot_timeout_ms=hot_timeout_ms,
            timeout=timeout,
        )
        _live.add(self)

    @property
    def rank(self) -> int:
        """This rank in the session's communicator."""
        return self._s.rank

    @property
    def size(self) -> int:
        """Number of ranks."""
        return self._s.size

    @property
    def workers(self) -> List[Dict[str, Any]]:
        """This rank's workers: node, address, allocation, worker, core."""
        return self._s.workers

    @property
    def finished(self) -> bool:
        """Whether ``finish()`` was called."""
        return self._s.finished

    def offload(self, function: str, data: Any, out: Any = None) -> Union[bytes, int]:
        """Runs ``function`` on ``data`` (bytes-like) on one of this rank's workers and waits
        (GIL released, no MPI call): new ``bytes``, or the length written into ``out``."""
        return self._s.offload(function, data, out)

    def offload_async(self, function: str, data: Any, output_size: Optional[int] = None) -> Offload:
        """Posts ``function`` on ``data`` and returns at once (``data`` is copied before it
        returns); collect it with ``wait``. Every offload must be collected."""
        return self._s.offload_async(function, data, output_size)

    def wait(self, offload: Offload) -> bytes:
        """The result of an ``offload_async`` (GIL released while waiting)."""
        return self._s.wait(offload)

    def finish(self) -> Optional[Dict[str, Any]]:
        """Ends the session on every rank (collective). Rank 0 gets the report (also kept as
        ``self.report``): invocations, errors, p50_ns, p99_ns, lease, failed_ranks, ranks;
        the other ranks None."""
        self.report = self._s.finish()
        _live.discard(self)
        return self.report

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            self.finish()
        else:
            # Another rank may not reach a collective finish: end this rank's part alone.
            self._s.abandon()
            _live.discard(self)
        return False


@atexit.register
def _abandon_all() -> None:
    # Runs before mpi4py finalises MPI: end what is left without collectives.
    for s in list(_live):
        s._s.abandon()
