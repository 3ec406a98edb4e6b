//! [`RmState`]: the [`Scheduler`] behind a mutex, its clock, and its durable copy.
//!
//! The durable copy is a [`Store`]: a snapshot file plus a write-ahead log of the changes.
//! Every change that matters (registration, drain, resume, deregistration, grant, renewal,
//! release, and the expiries and deaths a tick finds) becomes one [`LogRecord`] of what it
//! touched, appended under the scheduler's lock (so the log has the changes' order) with the
//! next sequence number. A handler answers only once its record is on disk
//! ([`RmState::durable`]), so what a client was told survives a `kill -9`; concurrent changes
//! share one write and one fsync (group commit). Heartbeats are not saved: a restored
//! scheduler gives every node a full heartbeat timeout anyway.
//!
//! Renewals wait for the disk only when they must ([`RmState::renew`]): a renewal's handler
//! waits only when it moves the lease's deadline more than half a TTL beyond the last
//! deadline a handler waited for, and only such a renewal is logged (one that is not waited
//! for would be taken back by a crash before its record was synced anyway). A crash can
//! therefore take back at most half a TTL of a lease's life, and a client renewing every third
//! of its TTL (as [`crate::client`] does) still renews in time. A clean stop writes a snapshot
//! when renewals were not logged, so every lease has its last deadline back after it.
//!
//! The scheduler's clock reads wall-clock milliseconds since the Unix epoch (anchored once at
//! start, then advanced by the monotonic clock), so every time in the state file is a
//! wall-clock time. At start the snapshot and the log are replayed and loaded with
//! [`Scheduler::from_snapshot`]: nodes and live leases are known again, and a lease keeps its
//! deadline: the time the resource manager was down counts, and a lease whose deadline passed
//! meanwhile expires at the first tick. Lease ids continue after the highest ever used, and
//! never start below the wall-clock time in microseconds, so no id is granted twice, even
//! after the state is lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::atomic_write::Durability;

use super::store::{LogRecord, Store};
use crate::scheduler::{
    Change, Config, Event, LeaseId, Millis, SchedError, Scheduler, Snapshot, TokenSource,
};

/// Version of the state file format: 4 is binary (`postcard` behind a checksummed header,
/// [`super::store::snapshot_file`]; earlier versions are JSON, still read), 3 adds the log's sequence number the snapshot covers
/// (`log_seq`), 2 stores wall-clock times, 1 stored times relative to the writing process's
/// start (still read, with the time left kept as it was). 1 and 2 are read as snapshots
/// covering no record: that is the migration from the whole-file state of earlier versions.
pub const STATE_VERSION: u32 = 4;

/// Log size from which the log is compacted into a new snapshot (and it is larger than the
/// snapshot), unless configured otherwise. It bounds what a restart replays, and how often the
/// scheduler's lock is held to encode the state (25-60 ms and about 65 ms of CPU at 100,000
/// leases, on two cores taken from the requests): on the project's 2-core VM, a 59 MB log
/// (415,000 records) was read and replayed in 0.38 s of a 0.55 s restart, and compacting every
/// 24 MB instead of every 8 lowered the grant p99 of `rm_load_benchmark` from 5.5-5.9 to 5.4 ms.
pub const DEFAULT_COMPACT_BYTES: u64 = 32 << 20;

/// The state file (the snapshot; written from a borrowed [`crate::scheduler::SnapshotView`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct StateFile<S = Snapshot> {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Wall-clock time of the write, for people.
    pub saved_at_unix_ms: u64,
    /// The last log record this snapshot reflects (records up to it are skipped at replay).
    #[serde(default)]
    pub log_seq: u64,
    /// The scheduler.
    pub snapshot: S,
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
    /// Restored from the state file and its log.
    Restored {
        /// Nodes known.
        nodes: usize,
        /// Live leases.
        leases: usize,
        /// Log records replayed after the snapshot.
        replayed: usize,
    },
}

struct Inner {
    sched: Scheduler,
    /// The last record's sequence number.
    seq: u64,
    /// Per live lease, the deadline a handler last waited to be durable, and its record.
    promised: HashMap<LeaseId, (Millis, u64)>,
    /// Renewals not logged since the last snapshot (see [`RmState::renew`]).
    unlogged: u64,
}

/// The scheduler, its clock, and its durable copy.
pub struct RmState {
    inner: Mutex<Inner>,
    origin: Instant,
    origin_unix_ms: u64,
    store: Option<Store>,
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RmState {
    /// Loads `path` and its log if they exist (an unreadable or inconsistent state is an
    /// error, never silently replaced), or starts empty; compacts at the default size.
    pub fn open(config: Config, path: Option<PathBuf>) -> Result<(RmState, Loaded), StateError> {
        Self::open_with(config, path, DEFAULT_COMPACT_BYTES)
    }

    /// [`RmState::open`], compacting once the log holds `compact_bytes` (and more than the
    /// snapshot).
    pub fn open_with(
        config: Config,
        path: Option<PathBuf>,
        compact_bytes: u64,
    ) -> Result<(RmState, Loaded), StateError> {
        let origin = Instant::now();
        let origin_unix_ms = unix_ms_now();
        let started = Instant::now();
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
        let (mut sched, loaded, seq, store) = match &path {
            None => (Scheduler::new(config), Loaded::Volatile, 0, None),
            Some(p) => {
                let (store, rec) = Store::open(p, config.keep_ended, compact_bytes)?;
                match rec.snapshot {
                    None => (
                        Scheduler::new(config),
                        Loaded::Fresh,
                        rec.last_seq,
                        Some(store),
                    ),
                    Some(mut snapshot) => {
                        let corrupt = |message: String| StateError::Corrupt {
                            path: p.clone(),
                            message,
                        };
                        // Wall-clock times (version 2 on): taken "now", so nothing is shifted
                        // and deadlines stay where they were. A clock that went back gives no
                        // lease more than its TTL from now. Version 1: times relative to the
                        // old process, rebased keeping the time left.
                        if rec.version >= 2 {
                            snapshot.taken_at = now;
                            for l in &mut snapshot.leases {
                                l.expires_at = l.expires_at.min(now.plus_ms(l.ttl_ms));
                            }
                        }
                        let s =
                            Scheduler::from_snapshot(config, TokenSource::Random, snapshot, now)
                                .map_err(|e| corrupt(e.to_string()))?;
                        // The data was validated by `from_snapshot` (unknown or dead nodes,
                        // duplicates); the scheduler's own indexes are checked in debug builds
                        // only: O(leases) with an allocation each, a second of a 100,000-lease
                        // restart on the 2-core machines.
                        if cfg!(debug_assertions) {
                            s.check_invariants().map_err(corrupt)?;
                        }
                        tracing::info!(
                            ms = started.elapsed().as_millis(),
                            "state restored into the scheduler"
                        );
                        let loaded = Loaded::Restored {
                            nodes: s.nodes().len(),
                            leases: s.live_leases(),
                            replayed: rec.replayed,
                        };
                        (s, loaded, rec.last_seq, Some(store))
                    }
                }
            }
        };
        sched.journal(store.is_some());
        let promised = sched.deadlines().map(|(id, t)| (id, (t, seq))).collect();
        let state = RmState {
            inner: Mutex::new(Inner {
                sched,
                seq,
                promised,
                unlogged: 0,
            }),
            origin,
            origin_unix_ms,
            store,
        };
        if loaded == Loaded::Fresh {
            // A snapshot at once: an unwritable path fails at start, and the state file exists.
            state.compact()?;
        }
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
        self.store.as_ref().map(Store::path)
    }

    /// The durable store, if any.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// (state writes that succeeded: group commits and snapshots, writes that failed).
    pub fn snapshot_counts(&self) -> (u64, u64) {
        self.store.as_ref().map_or((0, 0), |s| {
            let st = s.stats();
            (
                st.commits.load(Ordering::Relaxed) + st.snapshots.load(Ordering::Relaxed),
                st.errors.load(Ordering::Relaxed),
            )
        })
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

    /// Changes the scheduler; when `f` succeeds the change is logged: the answer comes with
    /// its sequence number, for [`RmState::durable`].
    pub fn change<R>(
        &self,
        f: impl FnOnce(&mut Scheduler, Millis) -> Result<R, SchedError>,
    ) -> Result<(R, u64), SchedError> {
        let now = self.now();
        let mut inner = self.lock();
        let r = f(&mut inner.sched, now);
        // Even a refusal may have changed counters; only successes need the disk.
        let seq = self.log(&mut inner, false);
        Ok((r?, seq))
    }

    /// Renews a lease: `(new deadline, now, TTL, record to wait for)`. When an earlier record
    /// already holds a deadline at most half a TTL before the new one, that is the record to
    /// wait for and the renewal is not logged (see the module's documentation); else the
    /// renewal is logged and its own record is the one.
    pub fn renew(
        &self,
        lease: LeaseId,
        token: &str,
    ) -> Result<(Millis, Millis, u64, u64), SchedError> {
        let now = self.now();
        let mut inner = self.lock();
        let r = inner.sched.renew(lease, token, now);
        let seq = self.log(&mut inner, true);
        let to = r?;
        let ttl = inner.sched.lease(lease).map_or(0, |l| l.ttl_ms);
        Ok((to, now, ttl, seq))
    }

    /// Logs what the last command changed; the record its handler must wait for.
    fn log(&self, inner: &mut Inner, renewal: bool) -> u64 {
        let (changes, meta) = inner.sched.take_changes();
        let Some(store) = &self.store else {
            return 0;
        };
        if changes.is_empty() {
            return inner.seq;
        }
        // A renewal that its handler need not wait for is not logged at all: what a crash
        // would restore is the same whether its record was written or not.
        let lazy = match changes.as_slice() {
            [Change::Lease(l)] if renewal => inner
                .promised
                .get(&l.id)
                .filter(|(d, _)| l.expires_at.0.saturating_sub(d.0) <= l.ttl_ms / 2)
                .map(|&(_, seq)| seq),
            _ => None,
        };
        if let Some(seq) = lazy {
            inner.unlogged += 1;
            return seq;
        }
        inner.seq += 1;
        let seq = inner.seq;
        for c in &changes {
            match c {
                Change::Lease(l) => {
                    inner.promised.insert(l.id, (l.expires_at, seq));
                }
                Change::Ended(e) => {
                    inner.promised.remove(&e.view.id);
                }
                Change::Forget(id) => {
                    inner.promised.remove(id);
                }
                Change::Node(_) | Change::NodeGone(_) => {}
            }
        }
        store.append(LogRecord { seq, meta, changes });
        seq
    }

    /// Lets time pass (expiries, missed heartbeats); what happened is logged.
    pub fn tick(&self) -> Vec<Event> {
        let now = self.now();
        let mut inner = self.lock();
        let events = inner.sched.tick(now);
        self.log(&mut inner, false);
        events
    }

    /// Waits until record `seq` is on disk (at once without a state file); the write's
    /// error otherwise.
    pub async fn durable(&self, seq: u64) -> Result<(), String> {
        match &self.store {
            None => Ok(()),
            Some(s) => s.wait(seq).await,
        }
    }

    /// Whether the log has grown enough to be compacted.
    pub fn wants_compaction(&self) -> bool {
        self.store.as_ref().is_some_and(Store::wants_compaction)
    }

    /// Writes a snapshot of the state and drops the log it covers (blocking: the snapshot is
    /// encoded under the scheduler's lock, then written). Nothing without a state file; `false`
    /// when another compaction was running (this one did nothing).
    pub fn compact(&self) -> Result<bool, StateError> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        // Encoded under the lock straight from the scheduler (no copy of it first); the
        // checksum and the write come after the lock is released.
        let started = Instant::now();
        let mut locked = std::time::Duration::ZERO;
        let mut covered = 0;
        let done = store.compact(|| {
            let t = Instant::now();
            let inner = self.lock();
            let view = inner.sched.snapshot_view(self.now());
            let encoded = (
                super::store::snapshot_file::encode_payload(&view, inner.seq),
                inner.seq,
            );
            // The renewals not logged so far are in this snapshot once it is written.
            covered = inner.unlogged;
            drop(inner);
            locked = t.elapsed();
            encoded
        })?;
        let Some(c) = done else {
            return Ok(false);
        };
        {
            let mut inner = self.lock();
            inner.unlogged = inner.unlogged.saturating_sub(covered);
        }
        tracing::info!(
            seq = c.seq,
            bytes = c.snapshot_bytes,
            segments_removed = c.segments_removed,
            locked_ms = locked.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "state compacted into a snapshot"
        );
        Ok(true)
    }

    /// Writes what is pending and stops the log (at shutdown); the first error. With renewals
    /// that were not logged, a snapshot is written first (after a compaction that may still
    /// run, at most [`CLOSE_COMPACTION_WAIT`]): after a clean stop every lease has its last
    /// deadline back.
    pub fn close(&self) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let until = Instant::now() + CLOSE_COMPACTION_WAIT;
        let mut snapshot = Ok(());
        while self.lock().unlogged > 0 {
            match self.compact() {
                Ok(true) => {}
                Ok(false) if Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Ok(false) => {
                    snapshot = Err("a compaction did not end in time: renewals since the last \
                                    snapshot were not saved"
                        .to_string());
                    break;
                }
                Err(e) => {
                    snapshot = Err(e.to_string());
                    break;
                }
            }
        }
        let closed = store.close();
        snapshot.and(closed)
    }
}

/// Longest [`RmState::close`] waits for a running compaction before its own.
pub const CLOSE_COMPACTION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes `value` as JSON to `path` atomically and durably (mode 0600; see
/// [`crate::atomic_write`]).
/// Returns the size written.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<u64, StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec(value).map_err(|e| io(std::io::Error::other(e)))?;
    crate::atomic_write::write_atomic(path, &json, 0o600, Durability::Synced).map_err(io)?;
    Ok(json.len() as u64)
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
            .filter(|f| f.contains(".tmp."))
            .collect();
        left.sort();
        assert_eq!(left, ["other.json.tmp.1".to_string(), alive]);
    }

    #[tokio::test]
    async fn a_renewal_waits_for_the_disk_only_when_it_moves_the_deadline_by_over_half_a_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (st, _) = RmState::open(Config::default(), Some(path.clone())).unwrap();
        st.change(|s, now| s.register(node("a"), now)).unwrap();
        let req = LeaseRequest {
            ttl: Some(std::time::Duration::from_millis(2_000)),
            ..LeaseRequest::cores(1)
        };
        let (g, granted) = st.change(|s, now| s.grant(req, now)).unwrap();
        st.durable(granted).await.unwrap();
        // At once: the deadline moves by far less than half the TTL, the grant's record holds.
        let (_, _, ttl, wait) = st.renew(g.lease, &g.token).unwrap();
        assert_eq!((ttl, wait), (2_000, granted));
        // Later than half the TTL: this renewal's own record must be on disk.
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        let (to, _, _, wait) = st.renew(g.lease, &g.token).unwrap();
        // Its own record, the next after the grant's: the lazy renewal before logged none.
        assert_eq!(wait, granted + 1);
        st.durable(wait).await.unwrap();
        let (again, _, _, lazy) = st.renew(g.lease, &g.token).unwrap();
        assert_eq!(lazy, wait);
        // Lazy renewals are not logged, but a clean stop writes a snapshot: the last deadline
        // is back.
        st.close().unwrap();
        drop(st);
        let (st, _) = RmState::open(Config::default(), Some(path)).unwrap();
        let on_disk = st.with(|s, _| s.lease(g.lease).unwrap().expires_at);
        assert!(
            on_disk >= to && on_disk == again,
            "{on_disk:?} {to:?} {again:?}"
        );
    }

    #[tokio::test]
    async fn a_whole_file_state_of_version_2_is_migrated_as_the_first_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rm-state");
        // What the previous release wrote: the whole state, no log, no `log_seq`.
        let now = Millis(unix_ms_now());
        let mut old = Scheduler::new(Config::default());
        old.register(node("a"), now).unwrap();
        let g = old.grant(LeaseRequest::cores(3), now).unwrap();
        let v2 = serde_json::json!({"version": 2, "saved_at_unix_ms": now.0,
                                    "snapshot": old.snapshot(now)});
        std::fs::write(&path, v2.to_string()).unwrap();

        let (st, loaded) = RmState::open(Config::default(), Some(path.clone())).unwrap();
        assert_eq!(
            loaded,
            Loaded::Restored {
                nodes: 1,
                leases: 1,
                replayed: 0
            }
        );
        let (_, seq) = st.change(|s, _| s.release(g.lease, &g.token)).unwrap();
        assert_eq!(
            seq, 1,
            "the log starts at record 1 after a migrated snapshot"
        );
        st.durable(seq).await.unwrap();
        drop(st);
        let (st, loaded) = RmState::open(Config::default(), Some(path)).unwrap();
        assert_eq!(
            loaded,
            Loaded::Restored {
                nodes: 1,
                leases: 0,
                replayed: 1
            }
        );
        st.with(|s, _| assert_eq!(s.metrics().cores_free, 4));
    }

    #[tokio::test]
    async fn saves_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (st, loaded) = RmState::open(Config::default(), Some(path.clone())).unwrap();
        assert_eq!(loaded, Loaded::Fresh);
        st.change(|s, now| s.register(node("a"), now)).unwrap();
        let (g, seq) = st
            .change(|s, now| s.grant(LeaseRequest::cores(3), now))
            .unwrap();
        st.durable(seq).await.unwrap();
        drop(st);
        let (st, loaded) = RmState::open(Config::default(), Some(path.clone())).unwrap();
        assert_eq!(
            loaded,
            Loaded::Restored {
                nodes: 1,
                leases: 1,
                replayed: 2
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
