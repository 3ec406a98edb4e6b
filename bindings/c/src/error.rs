//! Status codes, the thread-local last error message, and the guard that every exported function
//! runs its body in (no panic crosses the C boundary).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use rfaas_core::client::{ClientError, InvokeError};
use rfaas_core::mpi_glue::SessionError;
use rfaas_core::protocol::Status;

/// What every `int`-returning function of the C API returns: `RFAAS_STATUS_OK` (0) or the kind
/// of error; `rfaas_last_error()` then says what exactly went wrong.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum rfaas_status {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullPointer = 1,
    /// An argument is malformed or out of range (not UTF-8, zero cores, a worker that does not
    /// exist, a communicator that is not usable).
    InvalidArgument = 2,
    /// The function name is not one the allocation or session was made with.
    UnknownFunction = 3,
    /// The input is longer than the allocation's input capacity.
    InputTooLarge = 4,
    /// The function produced more bytes than the output capacity given (nothing was written).
    OutputTooSmall = 5,
    /// No result within the per-call timeout.
    Timeout = 6,
    /// The executor (or its connection) died; the call may or may not have run.
    ExecutorGone = 7,
    /// Every in-flight slot of the worker is busy: wait for a call first (submit only).
    Busy = 8,
    /// The function failed on the executor (it panicked, or the request was refused).
    FunctionFailed = 9,
    /// The cluster could not be used: cluster file, secret, resource or executor manager,
    /// library file, fabric.
    Cluster = 10,
    /// MPI failed, or a collective step of the session failed on some rank.
    Mpi = 11,
    /// The session was finished: only `rfaas_session_free` is allowed now.
    Finished = 12,
    /// A bug in rfaas: a Rust panic was caught at the boundary (the message says where).
    Internal = 13,
    /// The function library's init function (`rfaas_init`) refused to start the allocation;
    /// `rfaas_last_error()` says "function library init failed: " and its message.
    InitFailed = 14,
}

/// An error on its way to the C caller: the code and the message for `rfaas_last_error()`.
#[derive(Debug)]
pub struct Error {
    /// The code returned.
    pub code: rfaas_status,
    /// The message kept for `rfaas_last_error()`.
    pub message: String,
}

impl Error {
    /// An error of kind `code`.
    pub fn new(code: rfaas_status, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// A NULL pointer where `what` was required.
    pub fn null(what: &str) -> Error {
        Error::new(rfaas_status::NullPointer, format!("{what} is NULL"))
    }

    /// An invalid argument.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(rfaas_status::InvalidArgument, message)
    }
}

impl From<InvokeError> for Error {
    fn from(e: InvokeError) -> Error {
        let code = match &e {
            InvokeError::Status(Status::UnknownFunction) => rfaas_status::UnknownFunction,
            InvokeError::Status(Status::OutputTooLarge) => rfaas_status::OutputTooSmall,
            InvokeError::Status(Status::ShuttingDown) => rfaas_status::ExecutorGone,
            InvokeError::Status(_) => rfaas_status::FunctionFailed,
            InvokeError::Timeout(_) => rfaas_status::Timeout,
            InvokeError::ExecutorGone(_) => rfaas_status::ExecutorGone,
            InvokeError::InputTooLarge { .. } => rfaas_status::InputTooLarge,
            InvokeError::Invalid(_) => rfaas_status::InvalidArgument,
            InvokeError::Busy => rfaas_status::Busy,
        };
        let message = match &e {
            InvokeError::Status(Status::OutputTooLarge) => {
                "the function's output is larger than the output capacity given \
                 (executor answered OutputTooLarge; nothing was written)"
                    .to_string()
            }
            _ => e.to_string(),
        };
        Error { code, message }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        let e = match e {
            // An invocation that failed inside a client call: the invocation's own code.
            ClientError::Invocation(inner) => return Error::from(inner),
            other => other,
        };
        let code = match &e {
            ClientError::UnknownFunction(_) => rfaas_status::UnknownFunction,
            ClientError::Invalid(_) => rfaas_status::InvalidArgument,
            ClientError::InitFailed { .. } => rfaas_status::InitFailed,
            _ => rfaas_status::Cluster,
        };
        Error::new(code, e.to_string())
    }
}

impl From<SessionError> for Error {
    fn from(e: SessionError) -> Error {
        match e {
            SessionError::Client(c) => c.into(),
            SessionError::Invoke(i) => i.into(),
            SessionError::Mpi(_) => Error::new(rfaas_status::Mpi, e.to_string()),
            _ => Error::new(rfaas_status::Cluster, e.to_string()),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Keeps `message` as this thread's last error (interior NUL bytes become spaces).
pub fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

fn clear_last_error() {
    LAST_ERROR.with(|l| {
        let mut l = l.borrow_mut();
        if !l.as_bytes().is_empty() {
            *l = CString::default();
        }
    });
}

/// Pointer to this thread's last error message (valid until the next call of the API on this
/// thread).
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// Runs `body`, turning its error into a code (message kept for `rfaas_last_error()`) and a
/// panic into `Internal`; success clears the last error.
pub fn guard(body: impl FnOnce() -> Result<(), Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            clear_last_error();
            rfaas_status::Ok as c_int
        }
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.code as c_int
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error in rfaas (caught panic): {what}"));
            rfaas_status::Internal as c_int
        }
    }
}
