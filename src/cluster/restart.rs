//! Restarting one daemon of a local cluster (`rfaas local-cluster restart --run-dir DIR NAME`),
//! as an operator or a supervisor would after a crash.
//!
//! The daemon (`rm`, or `em-N`) is started again with the arguments `start` recorded in
//! `DIR/daemons.json`, on the address it had: the resource manager with the same state file
//! (its nodes and leases come back, and the executor managers' heartbeats reach it again), an
//! executor manager under the same node name (it registers again, reporting the leases it
//! hosts, and new leases point at the same address). One still running is stopped first:
//! SIGTERM, then, after the timeout (a frozen one does not act on SIGTERM), SIGKILL to its
//! process group. Executors left in the old daemon's process group are killed before the new
//! one starts, so no core is served twice.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::daemons::Daemons;
use super::local::{io, is_executor, is_our_manager, launch, read_pids, wait_one, RunDir};
use super::{procs, ClusterError};

/// `rfaas local-cluster restart`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestartArgs {
    /// Run directory given to `start`.
    #[arg(long, value_name = "DIR")]
    pub run_dir: PathBuf,
    /// The daemon: `rm` (the resource manager) or `em-N` (executor manager N).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Seconds a daemon still running gets to stop on SIGTERM before it is killed, and the new
    /// one gets to be ready.
    #[arg(long, default_value_t = 15, value_name = "S")]
    pub timeout_s: u64,
}

/// What `restart` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// The daemon's process id now.
    pub pid: u32,
    /// The address it serves on (the one it had).
    pub address: String,
    /// Whether the old one was still running (and was stopped).
    pub was_running: bool,
}

/// Times a daemon that exits before it is ready is started again (its address can be briefly
/// held by a socket of the old one).
const ATTEMPTS: u32 = 3;

/// Restarts daemon `args.name` of the local cluster in `args.run_dir` on its address.
pub fn restart(args: &RestartArgs) -> Result<Restarted, ClusterError> {
    let dir = RunDir::new(&args.run_dir);
    let daemons = Daemons::load(&dir.daemons())?;
    let argv = daemons.get(&args.name)?.to_vec();
    let address = daemons.listen(&args.name)?.to_string();
    let pids = read_pids(&dir.pids())?.ok_or_else(|| {
        ClusterError::Invalid(format!(
            "no local cluster running in {}",
            args.run_dir.display()
        ))
    })?;
    let old = pids
        .iter()
        .find(|(_, n)| *n == args.name)
        .map(|(pid, _)| *pid)
        .ok_or_else(|| {
            ClusterError::Invalid(format!(
                "{}: no line for {}",
                dir.pids().display(),
                args.name
            ))
        })?;
    let timeout = Duration::from_secs(args.timeout_s);
    let was_running = is_our_manager(old);
    if was_running {
        stop_old(old, timeout);
    }
    // Executors of the old executor manager die with it (PR_SET_PDEATHSIG); any still in its
    // process group go now.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<i32> = procs::members(old)
            .into_iter()
            .map(|p| p.pid)
            .filter(|p| is_executor(*p) || (*p == old && is_our_manager(old)))
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Survivors(left));
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let _ = crate::atomic_write::remove_stale_temporaries(&args.run_dir);
    let exe = std::env::current_exe().map_err(io("find this executable"))?;
    let mut attempt = 1;
    let (child, http) = loop {
        let mut child = launch(&dir, &exe, &args.name, &argv)?;
        match wait_one(&dir, &args.name, &mut child, timeout) {
            Ok(http) => break (child, http),
            Err(ClusterError::ManagerDied { .. }) if attempt < ATTEMPTS => {
                tracing::warn!(
                    name = args.name,
                    attempt,
                    "exited before it was ready; starting it again"
                );
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    };
    if http != address {
        return Err(ClusterError::Invalid(format!(
            "{} came back on {http}, not on its address {address}",
            args.name
        )));
    }
    let pid = child.id();
    let text: String = pids
        .iter()
        .map(|(p, n)| {
            let p = if *n == args.name { pid as i32 } else { *p };
            format!("{p} {n}\n")
        })
        .collect();
    crate::atomic_write::write_atomic(
        &dir.pids(),
        text.as_bytes(),
        0o600,
        crate::atomic_write::Durability::Atomic,
    )
    .map_err(io(format!("write {}", dir.pids().display())))?;
    Ok(Restarted {
        pid,
        address,
        was_running,
    })
}

/// SIGTERM to a daemon, then SIGKILL to its process group once `timeout` has passed.
fn stop_old(pid: i32, timeout: Duration) {
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while procs::alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if procs::alive(pid) {
        tracing::warn!(
            pid,
            "still running after {timeout:?}; killing its process group"
        );
        let _ = killpg(p, Signal::SIGKILL);
        let _ = kill(p, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_directory_without_a_cluster_or_an_unknown_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = RestartArgs {
            run_dir: dir.path().to_path_buf(),
            name: "rm".into(),
            timeout_s: 1,
        };
        let e = restart(&args).unwrap_err().to_string();
        assert!(e.contains("daemons.json"), "{e}");
        let mut d = Daemons::default();
        d.daemons.insert(
            "rm".into(),
            vec![
                "resource-manager".into(),
                "--listen".into(),
                "127.0.0.1:1".into(),
            ],
        );
        d.write(&RunDir::new(dir.path()).daemons()).unwrap();
        args.name = "em-3".into();
        let e = restart(&args).unwrap_err().to_string();
        assert!(e.contains("em-3"), "{e}");
        args.name = "rm".into();
        let e = restart(&args).unwrap_err().to_string();
        assert!(e.contains("no local cluster running"), "{e}");
    }
}
