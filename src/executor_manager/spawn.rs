//! Starting executor processes, and supervising them.
//!
//! * The executor is the manager's own executable (`std::env::current_exe()`, resolved once at
//!   start, or `rfaas-executor` beside it) run as `rfaas executor`: never looked up on `PATH`,
//!   and no argument but that word. By default ([`StartMethod::Fork`]) the manager runs it once
//!   as its zygote and forks every executor from that ([`super::zygote`]: about 1.3 ms less per
//!   fresh start on a VM); with `executor_start = "exec"` each executor is that executable,
//!   spawned ([`Launcher`]).
//! * Its [`ExecutorConfig`] (with the allocation token) goes to its standard input, so nothing
//!   secret is visible in `ps`; its first line of standard output is an [`ExecutorEvent`], read
//!   with a timeout; later lines are drained into the manager's log; its standard error goes to
//!   a log file of its own (`RUN_DIR/logs/executor-<id>.log`, removed when empty).
//! * A supervisor task per child owns the process ([`ExecutorChild`]): it alone waits for it
//!   and signals it, so a pid is never signalled after it was reaped (and possibly reused): a
//!   spawned child is the manager's, signalled by pid until tokio reaps it; a forked one is
//!   signalled through its pidfd, and its zygote reaps it and reports how it ended. When the
//!   process is gone the supervisor calls back at once (the service frees the cores there),
//!   then tells waiters.
//! * Starting happens on a runtime worker thread, never on a short-lived blocking thread: the
//!   executor's (or the zygote's) `PR_SET_PDEATHSIG` fires when the *thread* that started it
//!   exits.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use crate::control::executor_manager_api::{ExecutorConfig, ExecutorEvent};

use super::zygote::{ForkedChild, Zygote};

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

/// The manager's end of an executor's standard input.
pub type ExecutorStdin = tokio::net::unix::pipe::Sender;
/// The manager's end of an executor's standard output.
pub type ExecutorStdout = tokio::net::unix::pipe::Receiver;

/// How executors are started (`executor_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum StartMethod {
    /// Forked from the manager's zygote ([`super::zygote`]), `exec` while it is not up.
    #[default]
    Fork,
    /// `exec` of the executor executable, every time.
    Exec,
}

impl std::str::FromStr for StartMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<StartMethod, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fork" => Ok(StartMethod::Fork),
            "exec" => Ok(StartMethod::Exec),
            other => Err(format!(
                "executor_start must be fork or exec, not {other:?}"
            )),
        }
    }
}

impl TryFrom<String> for StartMethod {
    type Error = String;
    fn try_from(s: String) -> Result<StartMethod, String> {
        s.parse()
    }
}

impl std::fmt::Display for StartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StartMethod::Fork => "fork",
            StartMethod::Exec => "exec",
        })
    }
}

/// An executor process as the manager holds it, forked or spawned: killed if it is dropped
/// before it ended.
#[derive(Debug)]
pub struct ExecutorChild {
    /// Its standard input (its configuration goes there).
    pub stdin: Option<ExecutorStdin>,
    /// Its standard output (its events come from there).
    pub stdout: Option<ExecutorStdout>,
    pid: u32,
    process: Process,
}

#[derive(Debug)]
enum Process {
    Spawned(Child),
    Forked(ForkedChild),
}

impl ExecutorChild {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Sends it `signal`, unless it was reaped already.
    pub fn signal(&mut self, signal: Signal) {
        match &mut self.process {
            Process::Spawned(child) => {
                if let Some(pid) = child.id() {
                    let _ = kill(Pid::from_raw(pid as i32), signal);
                }
            }
            Process::Forked(child) => child.signal(signal),
        }
    }

    /// Sends it SIGKILL, unless it was reaped already.
    pub fn start_kill(&mut self) {
        self.signal(Signal::SIGKILL);
    }

    /// Whether it ended (or was killed and is about to be seen ended).
    pub fn has_exited(&mut self) -> bool {
        match &mut self.process {
            Process::Spawned(child) => !matches!(child.try_wait(), Ok(None)),
            Process::Forked(child) => child.has_exited(),
        }
    }

    /// Waits until it ended.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match &mut self.process {
            Process::Spawned(child) => child.wait().await,
            Process::Forked(child) => {
                child.wait().await.map(ExitStatus::from_raw).ok_or_else(|| {
                    std::io::Error::other("it ended, but its zygote did not report how")
                })
            }
        }
    }
}

/// What every executor of a manager is started from, forked or spawned.
#[derive(Debug, Clone)]
pub struct ExecutorImage {
    /// The executor executable (`rfaas executor`'s).
    pub exe: PathBuf,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Its environment: the early fabric, listen address and cpuset
    /// ([`crate::executor::EARLY_PROVIDER_ENV`], [`crate::executor::EARLY_LISTEN_ENV`],
    /// [`crate::executor::CPUSET_ENV`]).
    pub env: Vec<(&'static str, String)>,
}

impl ExecutorImage {
    /// `exe executor` in `cwd` with `env`, its standard error to `stderr`; killed if it is
    /// dropped unreaped. Neither the zygote's variable nor a standby list comes from the
    /// manager's own environment.
    pub(super) fn command(&self, stderr: impl Into<Stdio>) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("executor")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove(crate::executor::zygote::ZYGOTE_ENV)
            .env_remove(crate::executor::EARLY_STANDBY_ENV)
            .stderr(stderr)
            .current_dir(&self.cwd)
            .kill_on_drop(true);
        cmd
    }
}

/// Opens a new executor's standard streams: two pipes (close-on-exec) and its log `log`
/// (appended to, mode 0600). The child's ends (standard input, output, error), and the
/// manager's.
pub(super) fn open_streams(log: &Path) -> std::io::Result<([OwnedFd; 3], ManagerEnds)> {
    let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
    let ((stdin_r, stdin_w), (stdout_r, stdout_w)) = (pipe()?, pipe()?);
    let log = open_log(log)?;
    let ours = ManagerEnds {
        stdin: stdin_w,
        stdout: stdout_r,
    };
    Ok(([stdin_r, stdout_w, log.into()], ours))
}

/// Opens a log an executor (or the zygote) writes its standard error to: appended to, created
/// with mode 0600.
pub(super) fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The manager's ends of an executor's standard input and output.
pub(super) struct ManagerEnds {
    stdin: OwnedFd,
    stdout: OwnedFd,
}

impl ManagerEnds {
    /// Registered with the runtime.
    pub(super) fn into_pipes(self) -> std::io::Result<(ExecutorStdin, ExecutorStdout)> {
        Ok((
            ExecutorStdin::from_owned_fd(self.stdin)?,
            ExecutorStdout::from_owned_fd(self.stdout)?,
        ))
    }
}

/// Starts executors: forked from the zygote, or spawned with `exec`.
#[derive(Debug)]
pub struct Launcher {
    image: ExecutorImage,
    zygote: Option<Zygote>,
}

impl Launcher {
    /// Executors of `exe`, run in `cwd` (the zygote logs to `logs/zygote.log`), their fabric
    /// `provider` open early and listening on `listen`, pinned within `cpuset` (the node's: the
    /// manager's own at its start, see [`crate::executor::CPUSET_ENV`]), started as `method`
    /// says.
    pub fn new(
        exe: &Path,
        cwd: &Path,
        logs: &Path,
        provider: crate::rdma::Provider,
        listen: &str,
        cpuset: &[u32],
        method: StartMethod,
    ) -> Launcher {
        let image = ExecutorImage {
            exe: exe.to_path_buf(),
            cwd: cwd.to_path_buf(),
            env: vec![
                (
                    crate::executor::EARLY_PROVIDER_ENV,
                    provider.name().to_string(),
                ),
                (crate::executor::EARLY_LISTEN_ENV, listen.to_string()),
                (
                    crate::executor::CPUSET_ENV,
                    super::config::format_cpulist(cpuset),
                ),
            ],
        };
        let zygote = (method == StartMethod::Fork)
            .then(|| Zygote::new(image.clone(), logs.join("zygote.log")));
        Launcher { image, zygote }
    }

    /// How executors start.
    pub fn method(&self) -> StartMethod {
        match self.zygote {
            Some(_) => StartMethod::Fork,
            None => StartMethod::Exec,
        }
    }

    /// Starts the zygote (if executors are forked) unless it runs. Call it from a runtime
    /// worker thread, as [`Launcher::start`].
    pub fn prepare(&self) {
        if let Some(z) = &self.zygote {
            z.prepare();
        }
    }

    /// The running zygote's pid, if executors are forked and it runs.
    pub fn zygote_pid(&self) -> Option<u32> {
        self.zygote.as_ref().and_then(Zygote::pid)
    }

    /// Starts an executor with its standard error appended to `log`. It opens its fabric and
    /// listens before it reads its configuration (see [`crate::executor::EARLY_PROVIDER_ENV`]
    /// and [`crate::executor::EARLY_LISTEN_ENV`]). With `standby` (a pooled process: the
    /// rentable cores; a fresh one answered early: its allocation's) it prints
    /// [`ExecutorEvent::Standby`] once it listens ([`crate::executor::EARLY_STANDBY_ENV`]), and
    /// waits for its configuration on those cores; `pooled`: for the pool (forked, it makes the
    /// memory it shares with the zygote its own while it waits). Forked from the zygote when
    /// there is one (its children are not the manager's: the zygote reaps them), else spawned;
    /// call it on a runtime worker thread, never on a short-lived blocking thread: an
    /// executor's (and the zygote's) `PR_SET_PDEATHSIG` fires when the *thread* that started it
    /// exits.
    pub async fn start(
        &self,
        log: &Path,
        standby: Option<&[u32]>,
        pooled: bool,
    ) -> Result<ExecutorChild, StartError> {
        if let Some(zygote) = &self.zygote {
            match zygote.fork(log, standby, pooled).await {
                Ok((child, stdin, stdout)) => {
                    return Ok(ExecutorChild {
                        stdin: Some(stdin),
                        stdout: Some(stdout),
                        pid: child.pid,
                        process: Process::Forked(child),
                    })
                }
                Err(e) => tracing::debug!("executor started with exec: {e}"),
            }
        }
        self.spawn(log, standby)
    }

    /// Starts `exe executor` with `exec`.
    fn spawn(&self, log: &Path, standby: Option<&[u32]>) -> Result<ExecutorChild, StartError> {
        let err = |source| StartError::Spawn {
            exe: self.image.exe.display().to_string(),
            source,
        };
        let ([stdin, stdout, stderr], ours) = open_streams(log).map_err(err)?;
        let mut cmd = self.image.command(stderr);
        if let Some(cores) = standby {
            cmd.env(
                crate::executor::EARLY_STANDBY_ENV,
                super::config::format_cpulist(cores),
            );
        }
        let child = cmd.stdin(stdin).stdout(stdout).spawn().map_err(err)?;
        let (stdin, stdout) = ours.into_pipes().map_err(err)?;
        Ok(ExecutorChild {
            stdin: Some(stdin),
            stdout: Some(stdout),
            pid: child.id().unwrap_or(0),
            process: Process::Spawned(child),
        })
    }
}

/// Writes `cfg` to the child's standard input and closes it.
pub async fn send_config(
    mut stdin: ExecutorStdin,
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
    stdout: ExecutorStdout,
    timeout: Duration,
    since: std::time::Instant,
) -> Result<(ExecutorEvent, BufReader<ExecutorStdout>), StartError> {
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
    reader: BufReader<ExecutorStdout>,
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
    mut child: ExecutorChild,
    mut stdout_open: watch::Receiver<()>,
    on_exit: impl FnOnce(String) + Send + 'static,
) -> ExecutorHandle {
    let pid = child.id();
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<StopRequest>();
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        // A closed stop channel disables its branch; the wait goes on.
        let status = tokio::select! {
            status = child.wait() => status,
            Some(how) = stop_rx.recv() => {
                if let StopRequest::Graceful(grace) = how {
                    child.signal(Signal::SIGTERM);
                    match tokio::time::timeout(grace, child.wait()).await {
                        Ok(status) => status,
                        Err(_) => {
                            tracing::warn!(pid, "executor ignored SIGTERM for {grace:?}; killing it");
                            child.start_kill();
                            child.wait().await
                        }
                    }
                } else {
                    child.start_kill();
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

    fn spawned(child: Child) -> ExecutorChild {
        ExecutorChild {
            stdin: None,
            stdout: None,
            pid: child.id().unwrap(),
            process: Process::Spawned(child),
        }
    }

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
            let h = supervise(spawned(child), stdout_open().1, move |r| {
                tx.send(r).unwrap()
            });
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
            let h = supervise(spawned(child), stdout_open().1, |_| {});
            assert_eq!(
                h.wait_exit(Duration::from_secs(60)).await.unwrap(),
                "exited with status 7"
            );
        });
    }
}
