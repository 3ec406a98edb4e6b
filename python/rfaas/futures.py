"""``rfaas.Future``: the result of ``Executor.submit``, a ``concurrent.futures.Future``."""

import concurrent.futures
import threading
import time
from typing import Any, Optional

from ._native import Pending

__all__ = ["Future"]


class _DrivingWaiters(list):
    """``Future._waiters``: ``concurrent.futures.wait`` and ``as_completed`` install a waiter
    here; that starts a thread which collects the result, so they work as with any future."""

    def __init__(self, future: "Future") -> None:
        super().__init__()
        self._future = future

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        self._future._collect_in_background()


class Future(concurrent.futures.Future):
    """An invocation in flight (from ``Executor.submit``).

    The call is running from the start (``cancel()`` returns False). ``result()``,
    ``exception()`` and ``done()`` collect the result in the calling thread (the GIL is
    released while waiting); ``add_done_callback``, ``concurrent.futures.wait`` and
    ``as_completed`` collect it in a background thread. ``result(timeout)`` raises
    ``concurrent.futures.TimeoutError`` if it does not arrive in time (the call goes on; ask
    again later); without a timeout, the executor's own call timeout applies
    (``rfaas.TimeoutError``). The result is new ``bytes``, or the number of bytes written into
    the ``out`` buffer given to ``submit``; failures are ``rfaas.Error`` exceptions.
    """

    def __init__(self, pending: Pending) -> None:
        super().__init__()
        self._pending: Optional[Pending] = pending
        self._collect_lock = threading.Lock()
        self._waiters = _DrivingWaiters(self)
        self.set_running_or_notify_cancel()

    # -- collecting ------------------------------------------------------------------------

    def _settle(self, value: Any = None, error: Optional[BaseException] = None) -> None:
        self._pending = None
        if error is None:
            self.set_result(value)
        else:
            self.set_exception(error)

    def _collect(self) -> None:
        """Waits for the result (bounded by the executor's timeout) and settles."""
        with self._collect_lock:
            p = self._pending
            if p is None:
                return
            try:
                value = p.wait()
            except BaseException as e:  # an rfaas.Error, or KeyboardInterrupt in the wait
                self._settle(error=e)
            else:
                self._settle(value)

    def _try_collect(self) -> None:
        """Settles if the result has arrived; never blocks."""
        if not self._collect_lock.acquire(blocking=False):
            return
        try:
            p = self._pending
            if p is None:
                return
            try:
                value = p.poll()
            except BaseException as e:
                self._settle(error=e)
            else:
                if value is not None:
                    self._settle(value)
        finally:
            self._collect_lock.release()

    def _collect_in_background(self) -> None:
        if self._pending is not None:
            threading.Thread(target=self._collect, name="rfaas-future", daemon=True).start()

    def _collect_within(self, timeout: Optional[float]) -> None:
        if timeout is None:
            self._collect()
            return
        deadline = time.monotonic() + timeout
        delay = 0.0
        while self._pending is not None and not super().done():
            self._try_collect()
            if self._pending is None or super().done():
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(delay)
            delay = min(max(delay * 2, 1e-5), 1e-3)

    # -- concurrent.futures.Future ---------------------------------------------------------

    def done(self) -> bool:
        """Whether the result (or error) is there; checks for it without blocking."""
        if not super().done():
            self._try_collect()
        return super().done()

    def result(self, timeout: Optional[float] = None) -> Any:
        """The result: new ``bytes``, or the length written into ``out``."""
        if not super().done():
            self._collect_within(timeout)
        return super().result(timeout=0 if timeout is not None else None)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """The call's exception, or None."""
        if not super().done():
            self._collect_within(timeout)
        return super().exception(timeout=0 if timeout is not None else None)

    def add_done_callback(self, fn: Any) -> None:
        """Calls ``fn(future)`` once the result is there (from a background thread)."""
        super().add_done_callback(fn)
        if not super().done():
            self._collect_in_background()
