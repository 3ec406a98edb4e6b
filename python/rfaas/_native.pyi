"""Type stubs of ``rfaas._native``, the compiled core of the ``rfaas`` package."""

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .futures import Future

VERSION: str
HAS_MPI: bool

# Anything with the buffer protocol: bytes, bytearray, memoryview, C-contiguous NumPy arrays.
BytesLike = Any
PathLike = Union[str, "os.PathLike[str]"]

class Cluster:
    """A cluster file (``cluster.json``) and its secret: where allocations come from."""

    def __init__(self, path: Optional[PathLike] = None) -> None:
        """Opens ``path`` (default ``$RFAAS_CLUSTER``); ``ConfigError`` if unusable."""
    @property
    def provider(self) -> str:
        """The executors' fabric provider: ``"shm"``, ``"tcp"`` or ``"verbs"``."""
    def allocate(
        self,
        library: Union[PathLike, BytesLike],
        functions: Sequence[str],
        *,
        cores: int = 1,
        input_capacity: int = 4096,
        output_capacity: int = 4096,
        slots: int = 4,
        hot_timeout_ms: int = 100,
        timeout: float = 10.0,
        assets: Optional[Mapping[str, BytesLike]] = None,
    ) -> Executor:
        """Leases (when the cluster has a resource manager) and allocates ``cores`` workers
        running ``functions`` of ``library`` (a path, or the shared object's bytes), and
        connects to them. ``ClusterError`` when refused (no capacity, ...). ``assets`` (name to
        bytes) go once per executor to the library's init function; ``InitFailedError`` when
        it refuses."""

class Executor:
    """Workers of one allocation. Thread-safe; a context manager that closes it."""

    @property
    def functions(self) -> List[str]:
        """Function names in index order."""
    @property
    def workers(self) -> int:
        """Number of workers (cores)."""
    @property
    def input_capacity(self) -> int:
        """Largest input of one call, bytes."""
    @property
    def output_capacity(self) -> int:
        """Largest output of one call, bytes."""
    @property
    def allocation(self) -> int:
        """The allocation's id on its executor manager."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def invoke(
        self, function: Union[str, int], data: BytesLike, out: Optional[BytesLike] = None
    ) -> Union[bytes, int]:
        """Runs ``function`` on ``data`` and waits (GIL released). New ``bytes``, or with
        ``out`` (writable) the number of bytes written into it."""
    def submit(
        self,
        function: Union[str, int],
        data: BytesLike,
        out: Optional[BytesLike] = None,
        output_size: Optional[int] = None,
    ) -> Future:
        """Posts the call and returns an ``rfaas.Future`` (``concurrent.futures.Future``)."""
    def close(self) -> None:
        """Releases the workers (and the lease). Idempotent."""
    def __enter__(self) -> Executor: ...
    def __exit__(self, *args: Any) -> bool: ...

class Pending:
    """An invocation in flight (inside ``rfaas.Future``)."""

    def wait(self) -> Union[bytes, int]:
        """Waits for the result (GIL released)."""
    def poll(self) -> Optional[Union[bytes, int]]:
        """The result if it is there, else None."""

class MpiOffload:
    """An offload in flight, from ``rfaas.mpi.Session.offload_async``."""

    @property
    def collected(self) -> bool:
        """Whether its result was collected."""

class MpiSession:
    """The native MPI session behind ``rfaas.mpi.Session``."""

    def __init__(
        self,
        comm: int,
        library: str,
        functions: List[str],
        *,
        cluster: Optional[str] = None,
        cores_per_rank: int = 1,
        input_capacity: int = 4096,
        output_capacity: int = 4096,
        slots: int = 4,
        hot_timeout_ms: int = 100,
        timeout: float = 10.0,
    ) -> None: ...
    @property
    def rank(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def workers(self) -> List[Dict[str, Any]]: ...
    @property
    def finished(self) -> bool: ...
    def offload(self, function: str, data: BytesLike, out: Optional[BytesLike] = None) -> Union[bytes, int]: ...
    def offload_async(self, function: str, data: BytesLike, output_size: Optional[int] = None) -> MpiOffload: ...
    def wait(self, offload: MpiOffload) -> bytes: ...
    def finish(self) -> Optional[Dict[str, Any]]: ...
    def abandon(self) -> None: ...
