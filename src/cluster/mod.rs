//! Clusters of executor managers as clients see them: the cluster file (`cluster.json`), a
//! local cluster for one machine (`rfaas local-cluster start|stop|restart`), and `rfaas status`.
//!
//! | file | concept |
//! |---|---|
//! | [`daemons`] | `DIR/daemons.json`: how each daemon of a local cluster was started, on which address |
//! | [`file`](mod@file) | `cluster.json`: provider, secret file, executor managers |
//! | [`local`] | starting and stopping N executor managers on 127.0.0.1 |
//! | [`procs`] | `/proc`: live processes, process-group members |
//! | [`restart`] | restarting one daemon of a local cluster on its address |
//! | [`status`] | the status table |

pub mod daemons;
pub mod file;
pub mod local;
pub mod procs;
pub mod restart;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

pub use file::{ClusterFile, ManagerEntry};

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Neither `--cluster` nor `RFAAS_CLUSTER` was given.
    #[error("no cluster file: give --cluster FILE or set RFAAS_CLUSTER (rfaas local-cluster start writes DIR/cluster.json)")]
    NoClusterFile,
    /// The cluster file is unusable.
    #[error("cluster file {path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The secret file is unusable.
    #[error(transparent)]
    Secret(#[from] crate::control::secret::SecretError),
    /// An argument or file content is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A local cluster already runs in that directory.
    #[error("a local cluster is already running in {0}; stop it first with `rfaas local-cluster stop --run-dir {0}`")]
    AlreadyRunning(PathBuf),
    /// A manager exited before it was ready.
    #[error("executor manager {name} {status} before it was ready; its log {log} ends:\n{tail}")]
    ManagerDied {
        /// Which.
        name: String,
        /// How it ended.
        status: String,
        /// Its log.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// A manager was not ready in time.
    #[error("executor manager {name} was not ready within {timeout:?}; see its log {log}")]
    NotReady {
        /// Which.
        name: String,
        /// The timeout.
        timeout: Duration,
        /// Its log.
        log: PathBuf,
    },
    /// Processes of the cluster survived SIGKILL.
    #[error("processes {0:?} of the local cluster are still running after SIGKILL")]
    Survivors(Vec<i32>),
    /// A system call failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}
