//! A local cluster (`rfaas local-cluster`) in a temporary directory, stopped on drop.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::{functions_library, rfaas_bin};

/// A local shm cluster under a temporary directory (`dir/run`), stopped when dropped.
pub struct LocalCluster {
    /// The temporary directory: config files, the library copy, benchmark output.
    pub dir: tempfile::TempDir,
    /// Its run directory.
    pub run: PathBuf,
}

impl LocalCluster {
    /// `rfaas local-cluster start --provider shm --run-dir RUN ARGS`, after writing `files`
    /// (`(name, contents)`) into the temporary directory, where `ARGS` may name them through
    /// `{dir}`; panics with the command's output if it fails.
    pub fn start(files: &[(&str, &str)], args: &[&str]) -> LocalCluster {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        let base = dir.path().to_str().unwrap().to_string();
        let out = Command::new(rfaas_bin())
            .args(["local-cluster", "start", "--provider", "shm"])
            .args(args.iter().map(|a| a.replace("{dir}", &base)))
            .arg("--run-dir")
            .arg(&run)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "local-cluster start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        LocalCluster { dir, run }
    }

    /// `RUN/cluster.json`.
    pub fn cluster_file(&self) -> PathBuf {
        self.run.join("cluster.json")
    }

    /// The function library, copied into the temporary directory once.
    pub fn library(&self) -> PathBuf {
        let path = self.dir.path().join("libfunctions.so");
        if !path.exists() {
            std::fs::write(&path, functions_library()).unwrap();
        }
        path
    }

    /// `rfaas local-cluster stop --run-dir RUN` (dropping the cluster does it too).
    pub fn stop(&self) -> Output {
        self.run_stop().unwrap()
    }

    fn run_stop(&self) -> std::io::Result<Output> {
        Command::new(rfaas_bin())
            .args(["local-cluster", "stop", "--run-dir"])
            .arg(&self.run)
            .output()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.run_stop();
    }
}
