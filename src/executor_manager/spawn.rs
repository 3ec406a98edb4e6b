//! Spawning executor processes and reaping them.
//!
//! * The executor is the manager's own executable (`std::env::current_exe()`, resolved once at
//!   start) run as `rfaas executor`: never looked up on `PATH`, and no argument but that word.
//! * Its [`ExecutorConfig`] (with the allocation token) goes to its standard input, so nothing
//!   secret is visible in `ps`; its first line of standard output is an [`ExecutorEvent`], read
//!   with a timeout; later lines are drained into the manager's log; its standard error goes to
//!   a log file of its own (`RUN_DIR/logs/executor-<id>.log`, removed when empty).
//! * A supervisor task per child owns the process: it alone waits for it and signals it, so a
//!   pid is never signalled after it was reaped (and possibly reused). When the process is gone
//!   it calls back at once (the service frees the cores there), then tells waiters.
//! * Spawning happens on a runtime worker thread, never on a short-lived blocking thread: the
//!   executor's `PR_SET_PDEATHSIG` fires when the *thread* that forked it exits.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, watch};

use crate::control::executor_manager_api::{ExecutorConfig, ExecutorEvent};

/// Longest first line an executor may print.
const MAX_EVENT_LINE: u64 = 64 << 10;

/// Why an executor did not report.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process could not be started.
    #[error("cannot start the executor {exe}: {source}")]
    Spawn {
        /// The executable.
        exe: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing its configuration failed (it exited at once?).
    #[error("cannot send the executor its configuration: {0}")]
    Config(String),
    /// It said nothing within the timeout.
    #[error("the executor did not report ready within {0:?}")]
    Timeout(Duration),
    /// It closed its standard output without a word (it died).
    #[error("the executor exited without reporting ready")]
    Silent,
    /// Its first line was not an event.
    #[error("the executor printed {line:?} instead of a ready event: {error}")]
    Malformed {
        /// What it printed (shortened).
        line: String,
        /// The parse error.
        error: String,
    },
}

/// Starts `exe executor` with its standard error appended to `log`; the child is killed if
/// it is dropped unreaped. It opens the fabric of `provider` and listens on `listen` before it
/// reads its configuration (see [`crate::executor::EARLY_PROVIDER_ENV`] and
/// [`crate::executor::EARLY_LISTEN_ENV`]). With `standby` (the pool's processes: the rentable
/// cores) it prints [`ExecutorEvent::Standby`] once it listens
/// ([`crate::executor::EARLY_STANDBY_ENV`]), and waits for its configuration on those cores.
/// `cpuset` is the node's (the manager's own at its start): the executor pins itself within it
/// ([`crate::executor::CPUSET_ENV`]), whatever binding it inherits from the manager.
pub fn spawn_executor(
    exe: &Path,
    log: &Path,
    cwd: &Path,
    provider: crate::rdma::Provider,
    listen: &str,
    standby: Option<&[u32]>,
    cpuset: &[u32],
) -> Result<Child, StartError> {
    let exe_s = exe.display().to_string();
    let err = |source| StartError::Spawn {
        exe: exe_s.clone(),
        source,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(err)?;
    let mut cmd = Command::new(exe);
    cmd.arg("executor")
        .env(crate::executor::EARLY_PROVIDER_ENV, provider.name())
        .env(crate::executor::EARLY_LISTEN_ENV, listen)
        .env(
            crate::executor::CPUSET_ENV,
            super::config::format_cpulist(cpuset),
        );
    if let Some(cores) = standby {
        cmd.env(
            crate::executor::EARLY_STANDBY_ENV,
            super::config::format_cpulist(cores),
        );
    } else {
        // Inherited from the manager's own environment it would make a fresh executor report
        // standby first, which its allocation would take for a failure.
        cmd.env_remove(crate::executor::EARLY_STANDBY_ENV);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .current_dir(cwd)
        .kill_on_drop(true)
        .spawn()
        .map_err(err)
}

/// Writes `cfg` to the child's standard input and closes it.
pub async fn send_config(
    mut stdin: ChildStdin,
    cfg: &ExecutorConfig,
    timeout: Duration,
) -> Result<(), StartError> {
    let doc = serde_json::to_vec(cfg).map_err(|e| StartError::Config(e.to_string()))?;
    let write = async {
        stdin.write_all(&doc).await?;
        stdin.shutdown().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StartError::Config(e.to_string())),
        Err(_) => Err(StartError::Timeout(timeout)),
    }
}

/// Reads the executor's first line as an event, within `timeout`; returns the rest of its
/// standard output too (to drain).
/// `since` is when the configuration went out (the executor cannot answer before that): the
/// answer counts as in time only if it came within `timeout` of it.
pub async fn first_event(
    stdout: ChildStdout,
    timeout: Duration,
    since: std::time::Instant,
) -> Result<(ExecutorEvent, BufReader<ChildStdout>), StartError> {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let read = async {
        let mut limited = (&mut reader).take(MAX_EVENT_LINE);
        limited.read_line(&mut line).await
    };
    let left = timeout.saturating_sub(since.elapsed());
    let r = tokio::time::timeout(left, read).await;
    // The line may have been waiting already when this task got to run late (a loaded node):
    // "ready within the timeout" is judged by the clock, not by who was polled first.
    if r.is_ok() && since.elapsed() > timeout {
        return Err(StartError::Timeout(timeout));
    }
    match r {
        Err(_) => Err(StartError::Timeout(timeout)),
        Ok(Err(_)) | Ok(Ok(0)) => Err(StartError::Silent),
        Ok(Ok(_)) => match serde_json::from_str::<ExecutorEvent>(line.trim()) {
            Ok(ev) => Ok((ev, reader)),
            Err(e) => Err(StartError::Malformed {
                line: line.trim().chars().take(200).collect(),
                error: e.to_string(),
            }),
        },
    }
}

/// Reads whatever else the executor of allocation `id` prints on standard output, until it
/// closes: a later [`ExecutorEvent::Failed`] goes to `on_failure`, [`ExecutorEvent::Serving`]
/// calls `on_serving` (once), anything else goes to the log.
/// `open` is dropped when the output closes (see [`supervise`]).
pub fn drain_stdout(
    id: u64,
    reader: BufReader<ChildStdout>,
    open: StdoutOpen,
    on_failure: impl Fn(String) + Send + 'static,
    on_serving: impl FnOnce() + Send + 'static,
) {
    tokio::spawn(async move {
        let _open = open;
        let mut on_serving = Some(on_serving);
        let mut lines = reader.lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<ExecutorEvent>(line.trim()) {
                Ok(ExecutorEvent::Failed { error }) => on_failure(error),
                Ok(ExecutorEvent::Serving) => {
                    if let Some(f) = on_serving.take() {
                        f();
                    }
                }
                _ => tracing::info!(
                    allocation = id,
                    "executor stdout: {}",
                    line.chars().take(1000).collect::<String>()
                ),
            }
        }
    });
}

/// "exited with status N" or "killed by signal 11 (SIGSEGV)".
pub fn exit_reason(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("unknown signal");
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            format!("killed by signal {sig} ({name}){core}")
        }
        None => format!("ended ({status})"),
    }
}

/// Held while an executor's standard output is being read; dropped when it closes.
pub type StdoutOpen = watch::Sender<()>;

/// Longest wait, after an executor exited, for its standard output to be read to the end.
pub const STDOUT_GRACE: Duration = Duration::from_millis(100);

/// A [`StdoutOpen`] and the receiver [`supervise`] watches.
pub fn stdout_open() -> (StdoutOpen, watch::Receiver<()>) {
    watch::channel(())
}

/// How to stop an executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// SIGTERM, then SIGKILL after the grace period.
    Graceful(Duration),
    /// SIGKILL now.
    Kill,
}

/// The manager's hold on a running executor process.
#[derive(Debug, Clone)]
pub struct ExecutorHandle {
    /// Its pid.
    pub pid: u32,
    stop: mpsc::UnboundedSender<StopRequest>,
    exited: watch::Receiver<Option<String>>,
}

impl ExecutorHandle {
    /// Asks the supervisor to stop the process (no effect once it is gone).
    pub fn request_stop(&self, how: StopRequest) {
        let _ = self.stop.send(how);
    }

    /// Waits up to `timeout` for the process to be gone; its exit reason, or `None` on timeout.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let mut rx = self.exited.clone();
        let wait = async {
            loop {
                if let Some(reason) = rx.borrow_and_update().clone() {
                    return Some(reason);
                }
                if rx.changed().await.is_err() {
                    return rx.borrow().clone();
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Whether the process is gone.
    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }
}

/// Hands `child` to a supervisor task, which reaps it (and removes the libfabric `shm` regions
/// it left, feature `libfabric`), applies stop requests, and calls
/// `on_exit(reason)` as soon as it is gone (before waiters of [`ExecutorHandle::wait_exit`]
/// wake).
///
/// Before calling back it waits (at most [`STDOUT_GRACE`]) until whoever holds the
/// [`StdoutOpen`] paired with `stdout_open` drops it, so that a last report the executor printed
/// before exiting (why it gave up) is read first.
pub fn supervise(
    mut child: Child,
    mut stdout_open: watch::Receiver<()>,
    on_exit: impl FnOnce(String) + Send + 'static,
) -> ExecutorHandle {
    let pid = child.id().unwrap_or(0);
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<StopRequest>();
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        // A closed stop channel disables its branch; the wait goes on.
        let status = tokio::select! {
            status = child.wait() => status,
            Some(how) = stop_rx.recv() => {
                if let StopRequest::Graceful(grace) = how {
                    if let Some(pid) = child.id() {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    }
                    match tokio::time::timeout(grace, child.wait()).await {
                        Ok(status) => status,
                        Err(_) => {
                            tracing::warn!(pid, "executor ignored SIGTERM for {grace:?}; killing it");
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    }
                } else {
                    let _ = child.start_kill();
                    child.wait().await
                }
            }
        };
        let reason = match status {
            Ok(status) => exit_reason(status),
            Err(e) => format!("could not be waited for: {e}"),
        };
        forget_shm_regions(pid);
        let _ = tokio::time::timeout(STDOUT_GRACE, async {
            while stdout_open.changed().await.is_ok() {}
        })
        .await;
        on_exit(reason.clone());
        let _ = exit_tx.send(Some(reason));
    });
    ExecutorHandle {
        pid,
        stop: stop_tx,
        exited: exit_rx,
    }
}

/// Removes the libfabric `shm` regions of executor `pid`, which the manager has just reaped: one
/// killed by a signal never unlinks them, and they would stay in `/dev/shm` until reboot.
pub(super) fn forget_shm_regions(pid: u32) {
    #[cfg(feature = "libfabric")]
    crate::rdma::ofi::remove_shm_regions_of_dead(pid);
    #[cfg(not(feature = "libfabric"))]
    let _ = pid;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_reasons_read_well() {
        assert_eq!(exit_reason(ExitStatus::from_raw(0)), "exited with status 0");
        assert_eq!(
            exit_reason(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            exit_reason(ExitStatus::from_raw(11)),
            "killed by signal 11 (SIGSEGV)"
        );
        assert_eq!(
            exit_reason(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            exit_reason(ExitStatus::from_raw(11 | 0x80)),
            "killed by signal 11 (SIGSEGV), core dumped"
        );
    }

    #[test]
    fn supervisor_reaps_and_stops() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // A process that ignores SIGTERM is killed after the grace period.
            let child = Command::new("sh")
                .args(["-c", "trap '' TERM; sleep 30"])
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            // Asked to stop once the shell ignores SIGTERM (bit 15 of SigIgn in /proc).
            let status = format!("/proc/{}/status", child.id().unwrap());
            let ignores_term = || {
                std::fs::read_to_string(&status).is_ok_and(|st| {
                    st.lines()
                        .find_map(|l| l.strip_prefix("SigIgn:"))
                        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                        .is_some_and(|m| m & (1 << (15 - 1)) != 0)
                })
            };
            let (tx, rx) = std::sync::mpsc::channel();
            let h = supervise(child, stdout_open().1, move |r| tx.send(r).unwrap());
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !ignores_term() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "sh never ignored SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            h.request_stop(StopRequest::Graceful(Duration::from_millis(200)));
            let reason = h.wait_exit(Duration::from_secs(5)).await.unwrap();
            assert_eq!(reason, "killed by signal 9 (SIGKILL)");
            assert_eq!(
                rx.recv().unwrap(),
                reason,
                "on_exit ran before waiters woke"
            );
            assert!(h.has_exited());
            // One that exits on its own is reaped without being asked.
            let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
            let h = supervise(child, stdout_open().1, |_| {});
            assert_eq!(
                h.wait_exit(Duration::from_secs(60)).await.unwrap(),
                "exited with status 7"
            );
        });
    }
}
