//! How each daemon of a local cluster was started (`DIR/daemons.json`), so that
//! `rfaas local-cluster restart` starts it again the same way, on the same address.
//!
//! `start` launches the resource manager and the executor managers on port 0 (the kernel picks
//! a free port, so two clusters never collide), then records each one's arguments with the
//! address it actually bound in place of port 0. From then on a daemon's address is fixed: a
//! restarted daemon binds the recorded address again, so the executor managers, the clients and
//! `cluster.json` keep reaching it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ClusterError;

/// The arguments (after the executable) each daemon was started with, by name (`rm`, `em-N`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Daemons {
    /// Name → arguments, `--listen` holding the address it bound.
    pub daemons: BTreeMap<String, Vec<String>>,
}

impl Daemons {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Daemons, ClusterError> {
        let bytes = std::fs::read(path).map_err(|source| ClusterError::Io {
            context: format!(
                "read {} (written by `rfaas local-cluster start`)",
                path.display()
            ),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ClusterError::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes `path` atomically.
    pub fn write(&self, path: &Path) -> Result<(), ClusterError> {
        use crate::atomic_write::{write_json_atomic, Durability};
        write_json_atomic(path, self, 0o600, Durability::Atomic).map_err(|source| {
            ClusterError::Io {
                context: format!("write {}", path.display()),
                source,
            }
        })
    }

    /// The arguments of daemon `name`.
    pub fn get(&self, name: &str) -> Result<&[String], ClusterError> {
        self.daemons.get(name).map(Vec::as_slice).ok_or_else(|| {
            ClusterError::Invalid(format!(
                "no daemon named {name:?} in this cluster (it has: {})",
                self.daemons.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The address daemon `name` listens on (its `--listen` argument).
    pub fn listen(&self, name: &str) -> Result<&str, ClusterError> {
        let args = self.get(name)?;
        args.iter()
            .position(|a| a == "--listen")
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
            .ok_or_else(|| ClusterError::Invalid(format!("daemon {name} has no --listen")))
    }
}

/// `args` with the value of `--listen` replaced by `addr`.
pub fn with_listen(args: &[String], addr: &str) -> Vec<String> {
    let mut out = args.to_vec();
    if let Some(i) = out.iter().position(|a| a == "--listen") {
        if let Some(v) = out.get_mut(i + 1) {
            *v = addr.to_string();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_bound_address_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemons.json");
        let args: Vec<String> = ["resource-manager", "--listen", "127.0.0.1:0", "--x"]
            .map(String::from)
            .to_vec();
        let mut d = Daemons::default();
        d.daemons
            .insert("rm".into(), with_listen(&args, "127.0.0.1:4321"));
        d.write(&path).unwrap();
        let back = Daemons::load(&path).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.listen("rm").unwrap(), "127.0.0.1:4321");
        assert_eq!(back.get("rm").unwrap()[3], "--x");
        let e = back.get("em-7").unwrap_err().to_string();
        assert!(e.contains("em-7") && e.contains("rm"), "{e}");
        std::fs::write(&path, b"{\"daemons\":{},\"extra\":1}").unwrap();
        assert!(Daemons::load(&path).is_err());
    }
}
