//! The executor pool: executor processes started ahead of allocations.
//!
//! * A pooled process is `rfaas executor` already exec'd, dynamically linked, its runtime
//!   started, `PR_SET_PDEATHSIG` set, its fabric domain open and listening, blocked reading its
//!   [`ExecutorConfig`] from standard input. Nothing in it depends on an allocation: it holds
//!   no token, no library, no core. It counts as ready only once it printed
//!   [`ExecutorEvent::Standby`] (within the start timeout, else it is killed): until then it is
//!   *starting*.
//! * An allocation that finds no ready process but one starting that no other allocation waits
//!   for waits for it (bounded by twice the recent start-to-standby time): it started earlier,
//!   so it is ready sooner than a fresh spawn would be. Otherwise it spawns a fresh process.
//! * An allocation [`Pool::take`]s one (then sends its configuration: the executor pins itself,
//!   loads the library and reports ready, as a fresh one does). Its replacement starts once that
//!   executor reports that it served its first invocation, or ends ([`Pool::refill`], called by
//!   the service): started earlier, the replacement's exec and start-up would compete for the
//!   cores with the very cold start that took the pooled one. An empty pool refills at once.
//!   A pooled process serves exactly one allocation: once taken it leaves the pool for good
//!   and exits with its allocation, so no tenant ever sees another's state.
//! * A watcher task per pooled process owns it until it is taken: if the process dies in the
//!   pool (killed, crashed) it is reaped, dropped from the pool and replaced. An empty pool
//!   makes the caller spawn a fresh process.
//! * Pooled processes die with the manager: [`Pool::shutdown`] kills them, and their
//!   `PR_SET_PDEATHSIG` covers a manager killed by SIGKILL. Like every executor they are forked
//!   on a runtime worker thread (the death signal fires when the forking thread exits).
//!
//! [`ExecutorConfig`]: crate::control::executor_manager_api::ExecutorConfig
//! [`ExecutorEvent::Standby`]: crate::control::executor_manager_api::ExecutorEvent::Standby

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, watch, Notify};

use crate::control::executor_manager_api::{ExecutorEvent, PoolStatus};

use super::spawn::{self, ExecutorChild, ExecutorStdout, Launcher};

/// Shortest time between a nudge that no allocation used and the next ([`Pool::nudge`]): five
/// times [`NUDGE_SPIN`](crate::executor::config_input::NUDGE_SPIN).
pub const NUDGE_INTERVAL: Duration = Duration::from_millis(10);

/// Longest wait for a pooled process's watcher to hand it over.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest standby line a pooled process may print.
const MAX_STANDBY_LINE: usize = 4096;

/// Start-to-standby time assumed before the first one was measured.
const FIRST_STANDBY_GUESS: Duration = Duration::from_millis(20);

/// An allocation waits for a starting process at least this long (a start measured on a quiet
/// node must not make a busy one spawn duplicates).
const MIN_STARTING_WAIT: Duration = Duration::from_millis(5);

/// A pooled process taken for an allocation.
#[derive(Debug)]
pub struct Pooled {
    /// The process, with its standard input and output pipes.
    pub child: ExecutorChild,
    /// The log its standard error goes to (rename it to the allocation's).
    pub log: PathBuf,
    /// The fabric address it listens on, as its standby report said.
    pub address: Option<String>,
}

/// A ready pooled process, as the pool holds it: its watcher owns the process.
struct Entry {
    pid: u32,
    claim: oneshot::Sender<oneshot::Sender<Pooled>>,
    /// A duplicate of its standard input's write end, for [`Pool::nudge`] (closed when the
    /// entry leaves the pool).
    nudge: Option<OwnedFd>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Entry>,
    /// Being forked now, or forked and not yet on standby (their pids, 0 while forked): counted
    /// so that concurrent refills do not overshoot, and waited for by allocations.
    starting: Vec<u32>,
    /// Allocations waiting for a starting process (at most one each).
    waiting: usize,
    /// Moving average of start-to-standby times, ns (0: none measured yet).
    standby_ns: u64,
    closed: bool,
    /// When [`Pool::nudge`] last wrote.
    nudged_at: Option<Instant>,
    seq: u64,
    taken: u64,
    empty: u64,
    died: u64,
}

/// The executor pool of one manager.
pub struct Pool {
    size: usize,
    launcher: Arc<Launcher>,
    logs: PathBuf,
    /// The cores allocations are rented from: its processes wait for their allocation on
    /// those (see [`Launcher::start`]).
    standby: Vec<u32>,
    /// Longest start-to-standby time before a starting process is killed.
    start_timeout: Duration,
    /// How long an allocation waits for a starting process (`None`: adaptive).
    wait: Option<Duration>,
    state: Mutex<State>,
    /// Woken when a starting process goes on standby or dies.
    changed: Notify,
    /// `true` once the pool shuts down (starting processes are killed then).
    closed: watch::Sender<bool>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The pool's time limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolTiming {
    /// Longest start-to-standby time before a starting process is killed.
    pub start_timeout: Duration,
    /// How long an allocation waits for a starting process (`None`: twice the recent start
    /// time, at least 5 ms).
    pub wait: Option<Duration>,
}

impl Pool {
    /// A pool of `size` processes (0: no pool) started by `launcher`, logging to `logs`,
    /// waiting for their allocation on the `standby` cores (the rentable ones); one that is not
    /// on standby within `timing.start_timeout` is killed; an allocation waits `timing.wait`
    /// for a starting one (`None`: see [`Pool::take`]). Nothing starts before [`Pool::refill`].
    pub fn new(
        size: usize,
        launcher: Arc<Launcher>,
        logs: &Path,
        standby: Vec<u32>,
        timing: PoolTiming,
    ) -> Arc<Pool> {
        let PoolTiming {
            start_timeout,
            wait,
        } = timing;
        Arc::new(Pool {
            size,
            launcher,
            logs: logs.to_path_buf(),
            standby,
            start_timeout,
            wait,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            closed: watch::channel(false).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts processes until the pool holds its size. Call it from within the manager's
    /// runtime: the processes are forked by a task on a runtime worker thread. They count as
    /// starting from this call on (an allocation that comes next waits for one of them).
    pub fn refill(self: &Arc<Self>) {
        if self.size == 0 {
            return;
        }
        let n = {
            let mut st = self.state();
            if st.closed {
                return;
            }
            let n = self.size.saturating_sub(st.ready.len() + st.starting.len());
            let len = st.starting.len() + n;
            st.starting.resize(len, 0);
            n
        };
        if n > 0 {
            let me = self.clone();
            tokio::spawn(async move { me.fork(n).await });
        }
    }

    /// Forks `n` processes counted as starting (with pid 0) by [`Pool::refill`].
    async fn fork(self: &Arc<Self>, n: usize) {
        for _ in 0..n {
            let seq = {
                let mut st = self.state();
                if st.closed {
                    forget_starting(&mut st, 0);
                    continue;
                }
                st.seq += 1;
                st.seq
            };
            let log = self.logs.join(format!("executor-pool-{seq}.log"));
            let t0 = Instant::now();
            let spawned = self.launcher.start(&log, Some(&self.standby), true).await;
            let child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    forget_starting(&mut self.state(), 0);
                    self.changed.notify_waiters();
                    // Allocations fall back to fresh spawns (which will report the error).
                    tracing::error!("executor pool: {e}");
                    continue;
                }
            };
            let pid = child.id();
            {
                let mut st = self.state();
                if let Some(p) = st.starting.iter_mut().find(|p| **p == 0) {
                    *p = pid;
                }
            }
            self.watch(child, log, t0);
            tracing::debug!(pid, "pooled executor forked");
        }
    }

    /// The watcher of a pooled process: waits for its standby line (then it is ready), hands
    /// it over when claimed, kills it when the pool drops its entry or shuts down, reaps and
    /// replaces it when it dies in the pool.
    fn watch(self: &Arc<Self>, mut child: ExecutorChild, log: PathBuf, forked: Instant) {
        let me = Arc::downgrade(self);
        // Out of the child while it waits (handed over with it when it is claimed).
        let (stdin, mut stdout) = (child.stdin.take(), child.stdout.take());
        let mut closed = self.closed.subscribe();
        let timeout = self.start_timeout;
        tokio::spawn(async move {
            let pid = child.id();
            // Starting: until it is on standby (or dies, or times out, or the pool closes).
            let standby = tokio::select! {
                r = tokio::time::timeout(timeout, read_standby(stdout.as_mut())) => match r {
                    Ok(Ok(address)) => Ok(address),
                    Ok(Err(why)) => Err(why.to_string()),
                    Err(_) => Err(format!("was not on standby within {timeout:?}")),
                },
                status = child.wait() => Err(status.map_or_else(|e| e.to_string(), spawn::exit_reason)),
                _ = closed.wait_for(|c| *c) => Err(String::new()),
            };
            let Some(pool) = me.upgrade() else {
                return; // the manager is gone: dropping the child kills it
            };
            let (claim, claimed) = oneshot::channel();
            let refused = {
                let mut st = pool.state();
                forget_starting(&mut st, pid);
                match &standby {
                    Ok(_) if !st.closed => {
                        let ns = forked.elapsed().as_nanos() as u64;
                        st.standby_ns = match st.standby_ns {
                            0 => ns,
                            avg => (avg * 7 + ns) / 8,
                        };
                        let nudge = stdin
                            .as_ref()
                            .and_then(|s| s.as_fd().try_clone_to_owned().ok());
                        st.ready.push_back(Entry { pid, claim, nudge });
                        tracing::debug!(
                            pid,
                            ready = st.ready.len(),
                            standby_us = ns / 1000,
                            "pooled executor on standby"
                        );
                        None
                    }
                    Ok(_) => Some(String::new()),
                    Err(why) => {
                        if !st.closed {
                            st.died += 1;
                        }
                        Some(why.clone())
                    }
                }
            };
            pool.changed.notify_waiters();
            if let Some(why) = refused {
                if !why.is_empty() {
                    // Not replaced at once: a process that cannot start would start again and
                    // again. The next allocation that finds the pool empty refills it.
                    tracing::error!(pid, "pooled executor {why} (log: {})", log.display());
                }
                child.start_kill();
                let _ = child.wait().await;
                spawn::forget_shm_regions(pid);
                if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
                    let _ = std::fs::remove_file(&log);
                }
                return;
            }
            drop(pool);
            tokio::select! {
                status = child.wait() => {
                    let how = status.map_or_else(|e| e.to_string(), spawn::exit_reason);
                    spawn::forget_shm_regions(pid);
                    tracing::warn!(pid, "pooled executor {how} before it was used; replacing it (log: {})", log.display());
                    if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
                        let _ = std::fs::remove_file(&log);
                    }
                    if let Some(pool) = me.upgrade() {
                        let closed = {
                            let mut st = pool.state();
                            st.ready.retain(|e| e.pid != pid);
                            st.died += 1;
                            st.closed
                        };
                        if !closed {
                            pool.refill();
                        }
                    }
                }
                claim = claimed => match claim {
                    // A send that fails gives the process back; dropping it kills it.
                    Ok(reply) => {
                        child.stdin = stdin;
                        child.stdout = stdout;
                        let address = standby.ok().flatten();
                        let _ = reply.send(Pooled { child, log, address });
                    }
                    Err(_) => {
                        child.start_kill();
                        let _ = child.wait().await;
                        spawn::forget_shm_regions(pid);
                        let _ = std::fs::remove_file(&log);
                    }
                },
            }
        });
    }

    /// How long an allocation waits for a starting process: `pool_wait_ms` if configured, else
    /// twice the recent start-to-standby time, at least [`MIN_STARTING_WAIT`]; at most the
    /// start timeout.
    fn starting_wait(&self) -> Duration {
        if let Some(wait) = self.wait {
            return wait.min(self.start_timeout);
        }
        let ns = match self.state().standby_ns {
            0 => FIRST_STANDBY_GUESS.as_nanos() as u64,
            ns => ns,
        };
        Duration::from_nanos(ns.saturating_mul(2))
            .max(MIN_STARTING_WAIT)
            .min(self.start_timeout)
    }

    /// Tells the ready process that [`Pool::take`] would take next that its configuration is
    /// coming: one whitespace byte on its standard input
    /// ([`NUDGE`](crate::executor::config_input::NUDGE)), on which it wakes and then polls for
    /// the configuration without sleeping (for at most
    /// [`NUDGE_SPIN`](crate::executor::config_input::NUDGE_SPIN)). Call it as an allocation
    /// request arrives: the process wakes while the request is checked and its cores reserved,
    /// not after its configuration was written. Harmless when no configuration follows.
    ///
    /// After a nudge that no allocation followed (the request was refused: the node is full,
    /// the library unknown), the next one waits [`NUDGE_INTERVAL`]: a stream of refused
    /// requests keeps a pooled process polling for at most a fifth of a rentable core's time,
    /// where tenants' executors run. A nudge that a taken process used allows the next at once.
    pub fn nudge(&self) {
        let mut st = self.state();
        let now = Instant::now();
        if !st.may_nudge(now) {
            return;
        }
        if let Some(fd) = st.ready.front().and_then(|e| e.nudge.as_ref()) {
            // Non-blocking pipe, empty but for earlier nudges: a full one needs no more.
            let _ = nix::unistd::write(fd, crate::executor::config_input::NUDGE);
            st.nudged_at = Some(now);
        }
    }

    /// Takes a live pooled process (the caller refills the pool once its cold start is done);
    /// `None` when the pool is empty (it starts refilling then) or off: spawn a fresh one.
    /// With no process ready but one starting that no other caller waits for, it waits for
    /// that one (bounded: `pool_wait_ms`, else twice the recent start-to-standby time, at least
    /// 5 ms).
    pub async fn take(self: &Arc<Self>) -> Option<Pooled> {
        if self.size == 0 {
            return None;
        }
        let mut wait: Option<Waiting<'_>> = None;
        let mut deadline = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the state is read: a change after the read still wakes us.
            changed.as_mut().enable();
            let entry = {
                let mut st = self.state();
                match st.ready.pop_front() {
                    Some(e) => {
                        // The nudge served its purpose: the next request may nudge at once.
                        st.nudged_at = None;
                        Some(e)
                    }
                    // Each starting process is waited for by one allocation at most.
                    None if wait.is_none() && st.starting.len() > st.waiting && !st.closed => {
                        st.waiting += 1;
                        wait = Some(Waiting(self));
                        None
                    }
                    None if wait.is_some() && st.starting.len() >= st.waiting && !st.closed => None,
                    None => {
                        st.empty += 1;
                        drop(st);
                        self.refill();
                        return None;
                    }
                }
            };
            let Some(entry) = entry else {
                let until = *deadline.get_or_insert_with(|| Instant::now() + self.starting_wait());
                let left = until.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, changed).await.is_err() {
                    self.state().empty += 1;
                    tracing::debug!(
                        "no pooled executor on standby within {left:?}: spawning a fresh one"
                    );
                    return None;
                }
                continue;
            };
            let Entry { claim, nudge, .. } = entry;
            drop(nudge);
            let (reply, got) = oneshot::channel();
            if claim.send(reply).is_err() {
                continue; // its watcher saw it die
            }
            let Ok(Ok(mut p)) = tokio::time::timeout(CLAIM_TIMEOUT, got).await else {
                continue;
            };
            // Killed but not yet seen by its watcher: not worth an allocation.
            if p.child.has_exited() {
                self.state().died += 1;
                continue;
            }
            self.state().taken += 1;
            // No refill here: its start would compete for the cores with the cold start that
            // took this one. The caller refills once its executor serves (or has ended).
            return Some(p);
        }
    }

    /// Kills every pooled process (and starts no more); returns once they are gone (bounded).
    pub async fn shutdown(&self) {
        let pids: Vec<u32> = {
            let mut st = self.state();
            st.closed = true;
            let starting = st.starting.clone();
            st.ready.drain(..).map(|e| e.pid).chain(starting).collect()
        };
        // Starting processes are killed by their watchers too.
        self.closed.send_replace(true);
        self.changed.notify_waiters();
        // The watchers kill and reap them; wait until the pids are gone.
        let pids: Vec<u32> = pids.into_iter().filter(|&p| p != 0).collect();
        let gone = async {
            for &pid in &pids {
                while crate::cluster::procs::alive(pid as i32) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), gone).await;
        // Their watchers remove their shm regions once they have reaped them, but the manager
        // may exit first: do it here too (a zombie counts as dead; a live pid is left alone).
        for pid in pids {
            spawn::forget_shm_regions(pid);
        }
    }

    /// What `rfaas status` shows of the pool.
    pub fn status(&self) -> PoolStatus {
        let st = self.state();
        let pids: Vec<u32> = st.ready.iter().map(|e| e.pid).collect();
        let starting = st.starting.iter().filter(|&&p| p != 0);
        PoolStatus {
            size: self.size as u32,
            memory: pids
                .iter()
                .chain(starting)
                .map(|&p| resident_bytes(p))
                .sum(),
            ready: pids,
            taken: st.taken,
            empty: st.empty,
            died: st.died,
            nudge_ready: st.may_nudge(Instant::now()),
            executor_start: self.launcher.method().to_string(),
            zygote: self.launcher.zygote_pid(),
        }
    }
}

impl State {
    /// Whether a nudge may go out at `now`: none went out unused in the last
    /// [`NUDGE_INTERVAL`].
    fn may_nudge(&self, now: Instant) -> bool {
        !self
            .nudged_at
            .is_some_and(|t| now.duration_since(t) < NUDGE_INTERVAL)
    }
}

/// An allocation waiting for a starting process: counted in [`State::waiting`] while it lives.
struct Waiting<'a>(&'a Pool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state().waiting -= 1;
    }
}

/// Drops one `pid` (0: one being forked) from the starting processes.
fn forget_starting(st: &mut State, pid: u32) {
    if let Some(i) = st.starting.iter().position(|&p| p == pid) {
        st.starting.swap_remove(i);
    }
}

/// Why an executor's first line was not [`ExecutorEvent::Standby`].
#[derive(Debug)]
pub(crate) enum NotStandby {
    /// It reported another event (a failure to start, most likely).
    Said(ExecutorEvent),
    /// Anything else: what it did.
    Other(String),
}

impl std::fmt::Display for NotStandby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStandby::Said(ev) => write!(f, "reported {ev:?} instead of standby"),
            NotStandby::Other(what) => f.write_str(what),
        }
    }
}

/// Reads an executor's first line, byte by byte (what follows stays in the pipe for the
/// allocation), and checks that it is [`ExecutorEvent::Standby`]; the address it listens on.
pub(crate) async fn read_standby(
    stdout: Option<&mut ExecutorStdout>,
) -> Result<Option<String>, NotStandby> {
    let other = |what: &str| Err(NotStandby::Other(what.to_string()));
    let Some(out) = stdout else {
        return other("has no standard output");
    };
    let mut line = Vec::new();
    loop {
        match out.read_u8().await {
            Ok(b'\n') => break,
            Ok(b) if line.len() < MAX_STANDBY_LINE => line.push(b),
            Ok(_) => return other("printed an overlong first line"),
            Err(_) => return other("closed its standard output before standby"),
        }
    }
    let text = String::from_utf8_lossy(&line);
    match serde_json::from_str::<ExecutorEvent>(text.trim()) {
        Ok(ExecutorEvent::Standby { address }) => Ok(address),
        Ok(ev) => Err(NotStandby::Said(ev)),
        Err(_) => Err(NotStandby::Other(format!(
            "printed {text:?} instead of standby"
        ))),
    }
}

/// Resident memory of `pid`, bytes (0 if it is gone).
fn resident_bytes(pid: u32) -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}
