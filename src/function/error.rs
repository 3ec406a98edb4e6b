//! Errors of function libraries: caching, loading, resolving names.

use std::io;
use std::path::PathBuf;

use super::ContentHash;

/// Result alias of the function module.
pub type Result<T> = std::result::Result<T, FunctionError>;

/// What can go wrong while caching, loading or resolving a function library.
///
/// Failures of a *call* are not errors but [`FunctionStatus`](super::FunctionStatus) values.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// Reading or writing the library cache failed.
    #[error("function library cache: {op} {path}: {source}")]
    Io {
        /// What was being done ("create", "write", "rename", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// The cache directory could be written by someone else, so its files cannot be trusted.
    #[error("function library cache directory {path} is not safe to use: {reason}")]
    UnsafeCacheDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No library with this content hash is in the cache (or its cached file was corrupt and has
    /// been removed).
    #[error("function library {hash} is not in the cache at {dir}: send the library itself")]
    NotCached {
        /// The requested content hash.
        hash: ContentHash,
        /// The cache directory.
        dir: PathBuf,
    },
    /// The dynamic loader refused the library (not an ELF shared object for this machine, a
    /// missing dependency, an unresolved symbol, ...).
    #[error("cannot load function library {path}: {source}")]
    Load {
        /// The cached file.
        path: PathBuf,
        /// The loader's message.
        #[source]
        source: libloading::Error,
    },
    /// A requested function is not defined by the library.
    #[error("the function library defines no function named {name:?}")]
    UnknownFunction {
        /// The name as requested.
        name: String,
    },
    /// An asset could not be used (bad name, missing file, wrong size).
    #[error("function asset {name:?}: {reason}")]
    Asset {
        /// The asset's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The library's init function (`rfaas_init`) returned an error status.
    #[error("function library init failed: {message}")]
    InitFailed {
        /// The status it returned (not 0).
        status: i32,
        /// The message it wrote into its error buffer (or a note that it wrote none).
        message: String,
    },
    /// A requested function name that can never be a symbol.
    #[error("invalid function name {name:?}: {reason}")]
    InvalidName {
        /// The name as requested.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

impl FunctionError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FunctionError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
