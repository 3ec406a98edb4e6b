"""The exceptions rfaas raises: every one is an ``rfaas.Error``.

::

    Error
    ├── ConfigError            cluster file, secret or function library unusable
    ├── ClusterError           a manager refused or could not be reached; connecting failed
    │   └── InitFailedError        the function library's init function refused to start
    ├── InvalidArgumentError   bad argument (also ValueError and TypeError)
    │   ├── InputTooLargeError     input larger than the allocation's input capacity
    │   └── UnknownFunctionError   name or index not part of the allocation (also KeyError)
    ├── InvocationError        the executor answered with a failure status
    │   ├── OutputTooLargeError    the result did not fit the output buffer
    │   └── FunctionFailedError    the function panicked
    ├── TimeoutError           no result within the timeout (also builtins.TimeoutError)
    ├── ExecutorGoneError      the executor or its connection died
    ├── BusyError              every slot of the worker holds a call (submit)
    ├── ClosedError            the executor is closed / the session is finished
    └── SessionError           MPI session: set-up failed on some rank, bad communicator
"""

import builtins

__all__ = [
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
]


class Error(Exception):
    """Base class of every exception raised by rfaas."""


class ConfigError(Error):
    """The cluster file, the cluster secret or the function library cannot be used."""


class ClusterError(Error):
    """A resource manager or executor manager refused a request (no capacity, bad secret,
    ...) or could not be reached, or connecting to the workers failed."""


class InitFailedError(ClusterError):
    """The function library's init function (``rfaas_init``) refused to start the allocation;
    the message is "function library init failed: " and its own. The cores were given back."""


class InvalidArgumentError(Error, ValueError, TypeError):
    """An argument is invalid: not a bytes-like object, a read-only or non-contiguous buffer
    where a writable contiguous one is needed, a size out of range, ..."""


class InputTooLargeError(InvalidArgumentError):
    """The input is larger than the allocation's input capacity."""


class UnknownFunctionError(InvalidArgumentError, KeyError):
    """The function name (or index) is not one the allocation or session was made with."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvocationError(Error):
    """The executor ran the call and answered with a failure status."""


class OutputTooLargeError(InvocationError):
    """The function's result is larger than the output buffer (nothing was written)."""


class FunctionFailedError(InvocationError):
    """The function panicked; the executor caught it and goes on serving."""


class TimeoutError(Error, builtins.TimeoutError):
    """No result within the call's timeout (``timeout=`` at allocation, 10 s by default)."""


class ExecutorGoneError(Error):
    """The executor process or its connection died; the call may or may not have run."""


class BusyError(Error):
    """Every input slot of the chosen worker holds a call in flight: collect results first."""


class ClosedError(Error):
    """The executor was closed, or the MPI session finished."""


class SessionError(Error):
    """An MPI session could not be set up or finished (on any rank: every rank gets it), the
    communicator is not valid, or MPI is not initialised."""
