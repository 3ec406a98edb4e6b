//! [`RmState`]: the [`Scheduler`] behind a mutex, its clock, and its durable copy.
//!
//! Every change that matters (registration, drain, resume, deregistration, grant, renewal,
//! release, and the expiries and deaths a tick finds) bumps a generation number and wakes the
//! persister task, which writes a [`Snapshot`] of the whole state to the state file atomically:
//! a temporary file in the same directory (mode 0600: it holds lease tokens), `fsync`, rename
//! over the old one, `fsync` of the directory. A handler answers only once a snapshot at least
//! as new as its change is on disk ([`RmState::durable`]), so what a client was told survives a
//! `kill -9`; concurrent changes share one write (group commit). Heartbeats are not saved: a
//! restored scheduler gives every node a full heartbeat timeout anyway.
//!
//! The scheduler's clock reads wall-clock milliseconds since the Unix epoch (anchored once at
//! start, then advanced by the monotonic clock), so every time in the state file is a
//! wall-clock time. At start the file is loaded with [`Scheduler::from_snapshot`]: nodes and
//! live leases are known again, and a lease keeps its deadline: the time the resource manager
//! was down counts, and a lease whose deadline passed meanwhile expires at the first tick.
//! Lease ids continue after the highest ever used, and never start below the wall-clock time
//! in microseconds, so no id is granted twice, even after the state file is lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::atomic_write::Durability;

use crate::scheduler::{Config, Event, Millis, SchedError, Scheduler, Snapshot, TokenSource};

/// Version of the state file format: 2 stores wall-clock times (1 stored times relative to the
/// writing process's start; still read, with the time left kept as it was).
pub const STATE_VERSION: u32 = 2;

/// The state file.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateFile {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Wall-clock time of the write, for people.
    pub saved_at_unix_ms: u64,
    /// The scheduler.
    pub snapshot: Snapshot,
}

/// The state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file of this version, or inconsistent.
    #[error("state file {path} is unusable ({message}); move it away to start empty")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// How the state was obtained at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// No state file configured: memory only.
    Volatile,
    /// The state file did not exist: empty.
    Fresh,
    /// Restored from the state file.
    Restored {
        /// Nodes known.
        nodes: usize,
        /// Live leases.
        leases: usize,
    },
}

/// The last write of the state file.
#[derive(Debug, Clone, Default)]
struct Persisted {
    generation: u64,
    error: Option<String>,
}

struct Inner {
    sched: Scheduler,
    generation: u64,
}

/// The scheduler, its clock, and its durable copy.
pub struct RmState {
    inner: Mutex<Inner>,
    origin: Instant,
    origin_unix_ms: u64,
    path: Option<PathBuf>,
    write_lock: tokio::sync::Mutex<()>,
    wake: Notify,
    persisted: watch::Sender<Persisted>,
    snapshots_written: AtomicU64,
    snapshot_errors: AtomicU64,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RmState {
    /// Loads `path` if it exists (an unreadable or inconsistent file is an error, never
    /// silently replaced), or starts empty.
    pub fn open(config: Config, path: Option<PathBuf>) -> Result<(RmState, Loaded), StateError> {
        let origin = Instant::now();
        let origin_unix_ms = unix_ms_now();
        let now = Millis(origin_unix_ms);
        // Ids are never reused, even when the state file is gone.
        let config = Config {
            first_lease_id: config
                .first_lease_id
                .max(crate::control::ids::first_id_now()),
            ..config
        };
        if let Some(p) = &path {
            remove_leftover_temporaries(p);
        }
        let (sched, loaded) = match &path {
            None => (Scheduler::new(config), Loaded::Volatile),
            Some(p) => match std::fs::read(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (Scheduler::new(config), Loaded::Fresh)
                }
                Err(source) => {
                    return Err(StateError::Io {
                        path: p.clone(),
                        source,
                    })
                }
                Ok(bytes) => {
                    let corrupt = |message: String| StateError::Corrupt {
                        path: p.clone(),
                        message,
                    };
                    let file: StateFile =
                        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                    let mut snapshot = file.snapshot;
                    match file.version {
                        // Wall-clock times: taken "now", so nothing is shifted and deadlines
                        // stay where they were. A clock that went back gives no lease more
                        // than its TTL from now.
                        2 => {
                            snapshot.taken_at = now;
                            for l in &mut snapshot.leases {
                                l.expires_at = l.expires_at.min(now.plus_ms(l.ttl_ms));
                            }
                        }
                        // Times relative to the old process: rebased, keeping the time left.
                        1 => {}
                        v => {
                            return Err(corrupt(format!(
                                "version {v}, this build reads 1 and {STATE_VERSION}"
                            )))
                        }
                    }
                    let s = Scheduler::from_snapshot(config, TokenSource::Random, snapshot, now)
                        .map_err(|e| corrupt(e.to_string()))?;
                    s.check_invariants().map_err(corrupt)?;
                    let loaded = Loaded::Restored {
                        nodes: s.nodes().len(),
                        leases: s.live_leases(),
                    };
                    (s, loaded)
                }
            },
        };
        let state = RmState {
            inner: Mutex::new(Inner {
                sched,
                generation: 1,
            }),
            origin,
            origin_unix_ms,
            path,
            write_lock: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            persisted: watch::Sender::new(Persisted::default()),
            snapshots_written: AtomicU64::new(0),
            snapshot_errors: AtomicU64::new(0),
        };
        Ok((state, loaded))
    }

    /// The scheduler's clock now: wall-clock milliseconds since the Unix epoch, as read at
    /// start and advanced by the monotonic clock since (a wall clock stepped meanwhile does
    /// not move it).
    pub fn now(&self) -> Millis {
        Millis(self.origin_unix_ms).plus(Instant::now().saturating_duration_since(self.origin))
    }

    /// Wall-clock milliseconds since the Unix epoch of a time on the scheduler's clock (the
    /// same number: the scheduler's clock is the wall clock).
    pub fn unix_ms(&self, t: Millis) -> u64 {
        t.0
    }

    /// Since this process started.
    pub fn uptime_ms(&self) -> u64 {
        self.now().0.saturating_sub(self.origin_unix_ms)
    }

    /// The state file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// (state-file writes that succeeded, that failed).
    pub fn snapshot_counts(&self) -> (u64, u64) {
        (
            self.snapshots_written.load(Ordering::Relaxed),
            self.snapshot_errors.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the scheduler half changed in a way we
        // could repair; keep serving what is there.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads or changes the scheduler without saving (queries, heartbeats).
    pub fn with<R>(&self, f: impl FnOnce(&mut Scheduler, Millis) -> R) -> R {
        let now = self.now();
        f(&mut self.lock().sched, now)
    }

    /// Changes the scheduler; when `f` succeeds the change is to be saved: the answer comes
    /// with its generation, for [`RmState::durable`].
    pub fn change<R>(
        &self,
        f: impl FnOnce(&mut Scheduler, Millis) -> Result<R, SchedError>,
    ) -> Result<(R, u64), SchedError> {
        let now = self.now();
        let mut inner = self.lock();
        let r = f(&mut inner.sched, now)?;
        inner.generation += 1;
        let generation = inner.generation;
        drop(inner);
        self.wake.notify_one();
        Ok((r, generation))
    }

    /// Lets time pass (expiries, missed heartbeats); what happened is saved.
    pub fn tick(&self) -> Vec<Event> {
        let now = self.now();
        let mut inner = self.lock();
        let events = inner.sched.tick(now);
        if !events.is_empty() {
            inner.generation += 1;
        }
        drop(inner);
        if !events.is_empty() {
            self.wake.notify_one();
        }
        events
    }

    /// Waits until change `generation` is in the state file (at once without one); the
    /// write's error otherwise.
    pub async fn durable(&self, generation: u64) -> Result<(), String> {
        if self.path.is_none() {
            return Ok(());
        }
        let mut rx = self.persisted.subscribe();
        let p = rx
            .wait_for(|p| p.generation >= generation)
            .await
            .map_err(|_| "the persister stopped".to_string())?
            .clone();
        match p.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Writes the state file if something changed since the last successful write (or the
    /// last one failed). Returns the write's error, if any.
    pub async fn persist(&self) -> Result<(), String> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let _writer = self.write_lock.lock().await;
        let (generation, snapshot) = {
            let inner = self.lock();
            let last = self.persisted.borrow();
            if inner.generation == last.generation && last.error.is_none() {
                return Ok(());
            }
            drop(last);
            let now = self.now();
            (inner.generation, inner.sched.snapshot(now))
        };
        let file = StateFile {
            version: STATE_VERSION,
            saved_at_unix_ms: unix_ms_now(),
            snapshot,
        };
        let result = tokio::task::spawn_blocking(move || write_atomic(&path, &file))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match &result {
            Ok(()) => {
                self.snapshots_written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.snapshot_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("cannot save the state: {e}");
            }
        }
        self.persisted.send_replace(Persisted {
            generation,
            error: result.as_ref().err().cloned(),
        });
        result
    }

    /// The persister: saves after every change, until the process ends.
    pub async fn run_persister(&self) {
        loop {
            self.wake.notified().await;
            let _ = self.persist().await;
        }
    }
}

/// Writes `value` as JSON to `path` atomically and durably (mode 0600; see
/// [`crate::atomic_write`]).
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec(value).map_err(|e| io(std::io::Error::other(e)))?;
    crate::atomic_write::write_atomic(path, &json, 0o600, Durability::Synced).map_err(io)
}

/// Removes the temporary files (`NAME.tmp.PID`) that writers of `path` killed mid-write left
/// behind, unless their process still runs.
pub fn remove_leftover_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.tmp.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && crate::cluster::procs::alive(pid) {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => tracing::info!(
                "removed {}, left by an interrupted write",
                e.path().display()
            ),
            Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{LeaseRequest, NodeInfo};

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            address: format!("{name}:1"),
            cores: 4,
            memory: 0,
            hosted: vec![],
        }
    }

    #[test]
    fn temporaries_of_killed_writers_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // Pids above the kernel's maximum (4194304) belong to no process.
        for f in ["state.json.tmp.999999998", "state.json.tmp.999999999"] {
            std::fs::write(dir.path().join(f), b"{").unwrap();
        }
        let alive = format!("state.json.tmp.{}", std::os::unix::process::parent_id());
        std::fs::write(dir.path().join(&alive), b"{").unwrap();
        std::fs::write(dir.path().join("other.json.tmp.1"), b"{").unwrap();
        let (_state, loaded) = RmState::open(Config::default(), Some(path)).unwrap();
        assert_eq!(loaded, Loaded::Fresh);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["other.json.tmp.1".to_string(), alive]);
    }

    #[tokio::test]
    async fn saves_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (st, loaded) = RmState::open(Config::default(), Some(path.clone())).unwrap();
        assert_eq!(loaded, Loaded::Fresh);
        st.change(|s, now| s.register(node("a"), now)).unwrap();
        let (g, generation) = st
            .change(|s, now| s.grant(LeaseRequest::cores(3), now))
            .unwrap();
        let persister = async { st.persist().await.unwrap() };
        let ((), r) = tokio::join!(persister, st.durable(generation));
        r.unwrap();
        drop(st);
        let (st, loaded) = RmState::open(Config::default(), Some(path.clone())).unwrap();
        assert_eq!(
            loaded,
            Loaded::Restored {
                nodes: 1,
                leases: 1
            }
        );
        st.with(|s, _| {
            assert_eq!(s.metrics().cores_free, 1);
            assert!(s.lease(g.lease).is_some());
        });
        let next = st
            .change(|s, now| s.grant(LeaseRequest::cores(1), now))
            .unwrap()
            .0;
        assert!(next.lease > g.lease);
        std::fs::write(&path, b"{").unwrap();
        let e = RmState::open(Config::default(), Some(path))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unusable"), "{e}");
    }
}
