//! Errors of the fabric layer.
//!
//! Synchronous failures (a queue is full, a connection is refused, a provider is missing) are
//! [`FabricError`]s; failures of posted work arrive later as completions with a
//! [`crate::rdma::WcStatus`] other than `Success`.

use std::io;

/// Result alias of the fabric layer.
pub type Result<T> = std::result::Result<T, FabricError>;

/// What can go wrong in the fabric layer, synchronously.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// The provider exists but cannot run on this machine (e.g. no RDMA device).
    #[error("provider {provider} is unavailable: {reason}")]
    Unavailable {
        /// Provider name.
        provider: &'static str,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// The provider is not compiled into this binary.
    #[error("provider {provider} is not compiled in: rebuild with `--features {feature}`")]
    NotCompiled {
        /// Provider name.
        provider: &'static str,
        /// Cargo feature that enables it.
        feature: &'static str,
    },
    /// A provider name that does not exist.
    #[error("unknown provider {0:?}: expected one of shm, tcp, verbs, ofi")]
    UnknownProvider(String),
    /// An address that the provider cannot use.
    #[error("invalid address {addr:?}: {reason}")]
    BadAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request that the API refuses before it reaches the fabric (bad argument).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The send or receive queue has no room; poll completions and retry.
    #[error("queue full")]
    QueueFull,
    /// The queue pair is not connected (never was, disconnected, or the peer died).
    #[error("queue pair disconnected")]
    Disconnected,
    /// The peer refused the connection; carries the reason it gave.
    #[error("connection rejected by peer: {0}")]
    Rejected(String),
    /// The peer did not speak the handshake correctly.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A wait ran out.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// An operating-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl FabricError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        FabricError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}

impl From<nix::Error> for FabricError {
    fn from(e: nix::Error) -> Self {
        FabricError::io("system call", io::Error::from(e))
    }
}
