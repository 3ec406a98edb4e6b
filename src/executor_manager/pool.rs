//! The executor pool: executor processes started ahead of allocations.
//!
//! * A pooled process is `rfaas executor` already exec'd, dynamically linked, its runtime
//!   started, `PR_SET_PDEATHSIG` set, its fabric domain open and listening, blocked reading its
//!   [`ExecutorConfig`] from standard input. Nothing in it depends on an allocation: it holds
//!   no token, no library, no core.
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

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::oneshot;

use crate::control::executor_manager_api::PoolStatus;

use super::spawn;

/// Longest wait for a pooled process's watcher to hand it over.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(1);

/// A pooled process taken for an allocation.
#[derive(Debug)]
pub struct Pooled {
    /// The process, with its standard input and output pipes.
    pub child: Child,
    /// The log its standard error goes to (rename it to the allocation's).
    pub log: PathBuf,
}

/// A ready pooled process, as the pool holds it: its watcher owns the process.
struct Entry {
    pid: u32,
    claim: oneshot::Sender<oneshot::Sender<Pooled>>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Entry>,
    /// Being forked now (counted so that concurrent refills do not overshoot).
    starting: usize,
    closed: bool,
    seq: u64,
    taken: u64,
    empty: u64,
    died: u64,
}

/// The executor pool of one manager.
pub struct Pool {
    size: usize,
    exe: PathBuf,
    logs: PathBuf,
    cwd: PathBuf,
    provider: crate::rdma::Provider,
    /// The fabric address executors listen on (`fabric_host:0`), before their allocation.
    listen: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of `size` processes of `exe` (0: no pool), logging to `logs`, run in `cwd`, their
    /// fabric `provider` open and listening on `listen`. Nothing starts before [`Pool::refill`].
    pub fn new(
        size: usize,
        exe: &Path,
        logs: &Path,
        cwd: &Path,
        provider: crate::rdma::Provider,
        listen: String,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            size,
            exe: exe.to_path_buf(),
            logs: logs.to_path_buf(),
            cwd: cwd.to_path_buf(),
            provider,
            listen,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts processes until the pool holds its size. Call it from within the manager's
    /// runtime: the processes are forked by a task on a runtime worker thread.
    pub fn refill(self: &Arc<Self>) {
        if self.size == 0 {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move { me.fill_now() });
    }

    fn fill_now(self: &Arc<Self>) {
        loop {
            let seq = {
                let mut st = self.state();
                if st.closed || st.ready.len() + st.starting >= self.size {
                    return;
                }
                st.starting += 1;
                st.seq += 1;
                st.seq
            };
            let log = self.logs.join(format!("executor-pool-{seq}.log"));
            let spawned =
                spawn::spawn_executor(&self.exe, &log, &self.cwd, self.provider, &self.listen);
            self.state().starting -= 1;
            let child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    // Allocations fall back to fresh spawns (which will report the error).
                    tracing::error!("executor pool: {e}");
                    return;
                }
            };
            let pid = child.id().unwrap_or(0);
            let (claim, claimed) = oneshot::channel();
            self.watch(child, log, claimed);
            let mut st = self.state();
            st.ready.push_back(Entry { pid, claim });
            if st.closed {
                // Shutdown began while it was forked: dropping the entry kills it.
                st.ready.clear();
                return;
            }
            tracing::debug!(pid, ready = st.ready.len(), "pooled executor started");
        }
    }

    /// The watcher of a pooled process: hands it over when claimed, kills it when the pool
    /// drops its entry, reaps and replaces it when it dies in the pool.
    fn watch(
        self: &Arc<Self>,
        mut child: Child,
        log: PathBuf,
        claimed: oneshot::Receiver<oneshot::Sender<Pooled>>,
    ) {
        let me = Arc::downgrade(self);
        // Out of the child while it waits: tokio's `Child::wait` closes standard input.
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        tokio::spawn(async move {
            let pid = child.id().unwrap_or(0);
            tokio::select! {
                status = child.wait() => {
                    let how = status.map_or_else(|e| e.to_string(), spawn::exit_reason);
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
                        let _ = reply.send(Pooled { child, log });
                    }
                    Err(_) => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        let _ = std::fs::remove_file(&log);
                    }
                },
            }
        });
    }

    /// Takes a live pooled process (the caller refills the pool once its cold start is done);
    /// `None` when the pool is empty (it starts refilling then) or off: spawn a fresh one.
    pub async fn take(self: &Arc<Self>) -> Option<Pooled> {
        if self.size == 0 {
            return None;
        }
        loop {
            let Some(entry) = self.state().ready.pop_front() else {
                self.state().empty += 1;
                self.refill();
                return None;
            };
            let (reply, got) = oneshot::channel();
            if entry.claim.send(reply).is_err() {
                continue; // its watcher saw it die
            }
            let Ok(Ok(mut p)) = tokio::time::timeout(CLAIM_TIMEOUT, got).await else {
                continue;
            };
            // Killed but not yet seen by its watcher: not worth an allocation.
            if !matches!(p.child.try_wait(), Ok(None)) {
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
            st.ready.drain(..).map(|e| e.pid).collect()
        };
        // The watchers kill and reap them; wait until the pids are gone.
        let gone = async {
            for pid in pids {
                while std::path::Path::new(&format!("/proc/{pid}/stat")).exists() && !is_zombie(pid)
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), gone).await;
    }

    /// What `rfaas status` shows of the pool.
    pub fn status(&self) -> PoolStatus {
        let st = self.state();
        let pids: Vec<u32> = st.ready.iter().map(|e| e.pid).collect();
        PoolStatus {
            size: self.size as u32,
            memory: pids.iter().map(|&p| resident_bytes(p)).sum(),
            ready: pids,
            taken: st.taken,
            empty: st.empty,
            died: st.died,
        }
    }
}

/// Whether `pid` is a zombie (dead, not yet reaped).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
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
