//! [`ClusterFile`]: `cluster.json`, what every client and benchmark reads to find the executor
//! managers (`--cluster FILE`, or the `RFAAS_CLUSTER` environment variable).
//!
//! ```json
//! {
//!   "version": 1,
//!   "provider": "shm",
//!   "secret_file": "/tmp/rfaas/secret",
//!   "executor_managers": [
//!     { "name": "em-0", "http": "127.0.0.1:40123", "node": "host-1" }
//!   ],
//!   "resource_manager": "127.0.0.1:40100"
//! }
//! ```
//!
//! `resource_manager` (optional; version 1 files without it still read) is the resource
//! manager's HTTP address: with it, clients lease cores there before allocating
//! ([`crate::client::Cluster::lease`]), and the executor managers take only leased
//! allocations.
//!
//! `executor_managers` may be empty, or left out, when `resource_manager` is set: a lease names
//! the executor managers that hold its cores, so clients learn their addresses from the
//! resource manager. That is the file `slurm/rfaas-cluster.sh` writes:
//!
//! ```json
//! { "version": 1, "provider": "tcp", "secret_file": "/scratch/rfaas/secret",
//!   "resource_manager": "10.0.0.1:40100" }
//! ```
//!
//! A file that names neither a resource manager nor an executor manager is refused.
//!
//! `secret_file` names the cluster secret (mode 0600); a relative path is relative to the
//! cluster file. The secret itself is never in this file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClusterError;
use crate::atomic_write::Durability;
use crate::rdma::Provider;

/// One executor manager of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerEntry {
    /// Unique name within the cluster (e.g. `em-0`).
    pub name: String,
    /// Its HTTP API, `host:port`.
    pub http: String,
    /// The node it runs on.
    pub node: String,
}

/// The contents of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Format version ([`ClusterFile::VERSION`]).
    pub version: u32,
    /// Fabric provider of the cluster's executors.
    pub provider: Provider,
    /// The cluster secret file.
    pub secret_file: PathBuf,
    /// The executor managers (may be empty when `resource_manager` is set: leases name them).
    #[serde(default)]
    pub executor_managers: Vec<ManagerEntry>,
    /// The resource manager's HTTP address, `host:port`, if the cluster has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_manager: Option<String>,
}

impl ClusterFile {
    /// The format version this build writes and reads.
    pub const VERSION: u32 = 1;

    /// The cluster file to use: `explicit` (a `--cluster` flag), else `$RFAAS_CLUSTER`.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ClusterError> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        match std::env::var_os(crate::env::CLUSTER) {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(ClusterError::NoClusterFile),
        }
    }

    /// Reads the cluster file `explicit`, or the one `$RFAAS_CLUSTER` names.
    pub fn from_args(explicit: Option<&Path>) -> Result<(PathBuf, ClusterFile), ClusterError> {
        let path = Self::locate(explicit)?;
        let file = Self::load(&path)?;
        Ok((path, file))
    }

    /// Reads and checks a cluster file; a relative `secret_file` becomes relative to it. A file
    /// must name a resource manager, or at least one executor manager.
    pub fn load(path: &Path) -> Result<ClusterFile, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Io {
            context: format!("read cluster file {}", path.display()),
            source,
        })?;
        let mut file: ClusterFile =
            serde_json::from_str(&text).map_err(|e| ClusterError::BadFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if file.version != Self::VERSION {
            return Err(ClusterError::BadFile {
                path: path.to_path_buf(),
                reason: format!(
                    "version {} (this build reads version {})",
                    file.version,
                    Self::VERSION
                ),
            });
        }
        if file
            .resource_manager
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(ClusterError::BadFile {
                path: path.to_path_buf(),
                reason: "resource_manager is empty (leave it out, or give host:port)".into(),
            });
        }
        if file.resource_manager.is_none() && file.executor_managers.is_empty() {
            return Err(ClusterError::BadFile {
                path: path.to_path_buf(),
                reason: "it names neither a resource manager nor an executor manager".into(),
            });
        }
        if file.secret_file.is_relative() {
            if let Some(dir) = path.parent() {
                file.secret_file = dir.join(&file.secret_file);
            }
        }
        Ok(file)
    }

    /// Writes the file atomically.
    pub fn write(&self, path: &Path) -> Result<(), ClusterError> {
        crate::atomic_write::write_json_atomic(path, self, 0o644, Durability::Atomic).map_err(
            |source| ClusterError::Io {
                context: format!("write {}", path.display()),
                source,
            },
        )
    }

    /// Reads the cluster secret.
    pub fn secret(&self) -> Result<String, ClusterError> {
        Ok(crate::control::secret::read_secret_file(&self.secret_file)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_relative_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        let f = ClusterFile {
            version: 1,
            provider: Provider::Tcp,
            secret_file: "secret".into(),
            executor_managers: vec![ManagerEntry {
                name: "em-0".into(),
                http: "127.0.0.1:1".into(),
                node: "n".into(),
            }],
            resource_manager: None,
        };
        f.write(&path).unwrap();
        let back = ClusterFile::load(&path).unwrap();
        assert_eq!(back.secret_file, dir.path().join("secret"));
        assert_eq!(back.executor_managers, f.executor_managers);
        assert_eq!(ClusterFile::locate(Some(&path)).unwrap(), path);
        std::fs::write(
            &path,
            r#"{"version":2,"provider":"shm","secret_file":"s","executor_managers":[]}"#,
        )
        .unwrap();
        assert!(ClusterFile::load(&path)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
    }

    #[test]
    fn resource_manager_alone_is_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        // Written by a launcher (slurm/rfaas-cluster.sh): no executor_managers key at all.
        std::fs::write(
            &path,
            r#"{"version":1,"provider":"tcp","secret_file":"secret","resource_manager":"10.0.0.1:5000"}"#,
        )
        .unwrap();
        let f = ClusterFile::load(&path).unwrap();
        assert!(f.executor_managers.is_empty());
        assert_eq!(f.resource_manager.as_deref(), Some("10.0.0.1:5000"));
        assert_eq!(f.provider, Provider::Tcp);
        assert_eq!(f.secret_file, dir.path().join("secret"));
        // An empty list reads the same, and written back it round-trips.
        std::fs::write(
            &path,
            r#"{"version":1,"provider":"shm","secret_file":"/s","executor_managers":[],"resource_manager":"h:1"}"#,
        )
        .unwrap();
        let f = ClusterFile::load(&path).unwrap();
        f.write(&path).unwrap();
        assert_eq!(ClusterFile::load(&path).unwrap(), f);
    }

    #[test]
    fn refuses_a_file_without_managers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        for text in [
            r#"{"version":1,"provider":"tcp","secret_file":"s","executor_managers":[]}"#,
            r#"{"version":1,"provider":"tcp","secret_file":"s"}"#,
        ] {
            std::fs::write(&path, text).unwrap();
            let e = ClusterFile::load(&path).unwrap_err().to_string();
            assert!(
                e.contains("neither a resource manager nor an executor manager"),
                "{e}"
            );
        }
        std::fs::write(
            &path,
            r#"{"version":1,"provider":"tcp","secret_file":"s","resource_manager":" "}"#,
        )
        .unwrap();
        let e = ClusterFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("resource_manager is empty"), "{e}");
    }
}
