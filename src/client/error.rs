//! Errors of the client library.

use std::time::Duration;

use crate::protocol::Status;

/// What can go wrong talking to executor managers and executors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A control-plane service (an executor manager or the resource manager) answered with an
    /// error.
    #[error("{manager}: {status}: {message}")]
    Manager {
        /// What it is and its address ("executor manager http://...").
        manager: String,
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The function library's init function (`rfaas_init`) refused to start the allocation;
    /// `message` is what it said. The allocation was released (its cores are free again).
    #[error("function library init failed: {message}")]
    InitFailed {
        /// The executor manager that ran it ("executor manager http://...").
        manager: String,
        /// The init function's message.
        message: String,
    },
    /// A control-plane service could not be reached.
    #[error("{manager}: {message}")]
    Http {
        /// What it is and its address.
        manager: String,
        /// What failed.
        message: String,
    },
    /// The fabric failed (connecting to workers).
    #[error("fabric: {0}")]
    Fabric(#[from] crate::rdma::FabricError),
    /// A name the allocation did not resolve.
    #[error("function {0:?} is not part of this allocation")]
    UnknownFunction(String),
    /// Bad argument (sizes, worker index).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An invocation failed (the function's status, a timeout, a dead executor).
    #[error("invocation failed: {0}")]
    Invocation(#[from] InvokeError),
    /// An I/O error (reading a library file).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The cluster file or secret could not be used.
    #[error("{0}")]
    Config(String),
}

/// Why one invocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The executor answered with a status other than Ok.
    #[error("executor answered {0:?}")]
    Status(Status),
    /// No answer within the timeout.
    #[error("no result within {0:?}")]
    Timeout(Duration),
    /// The executor (or its connection) died; the call may or may not have run.
    #[error("the executor is gone: {0}")]
    ExecutorGone(String),
    /// The input does not fit the allocation's input capacity.
    #[error("input of {len} bytes exceeds the allocation's input capacity of {capacity} bytes")]
    InputTooLarge {
        /// Bytes given.
        len: usize,
        /// Capacity.
        capacity: usize,
    },
    /// The output buffer is larger than the allocation's output capacity, or a worker index does
    /// not exist.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Every slot is busy (only from `submit`).
    #[error("every input slot is busy; wait for a result first")]
    Busy,
}
