//! The resource manager's durable store: a snapshot file plus an append-only write-ahead log
//! of typed change records, so that a change costs its own size, not the state's.
//!
//! | file | concept |
//! |---|---|
//! | [`frame`] | a record on disk: length, CRC-32, [`LogRecord`] in `postcard` (JSON read) |
//! | [`snapshot_file`] | the snapshot on disk: header, CRC-32, `postcard` (JSON read) |
//! | [`segments`] | the log's files `STATE.log.SEQ` beside the snapshot `STATE` |
//! | [`committer`] | group commit: all pending records in one write; overlapping fsyncs |
//! | [`waiters`] | the handlers waiting for their records, woken when those are durable |
//! | [`compaction`] | a new snapshot, then the segments it covers go |
//! | [`recovery`] | snapshot + log → state at start; torn tail dropped, corruption refused |
//!
//! A handler changes the scheduler, appends the change's record ([`Store::append`], under the
//! scheduler's lock, so the log's order is the order of the changes), and answers once
//! [`Store::wait`] says its record is on disk. Records carry sequence numbers 1, 2, ...; the
//! snapshot says up to which one it covers, so recovery skips older records and a crash at any
//! moment of a compaction leaves a state that recovers (old snapshot + all segments, or new
//! snapshot + segments some of whose records it already covers).

pub mod committer;
pub mod compaction;
pub mod frame;
pub mod recovery;
pub mod segments;
pub mod snapshot_file;
pub mod waiters;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

pub use committer::{Durable, Failed};
pub use frame::LogRecord;
pub use recovery::Recovered;

use super::state::StateError;
use committer::Writer;

/// Counters of the store, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// `fdatasync` calls that succeeded (each covers every record written before it).
    pub commits: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Failed writes (log or snapshot).
    pub errors: AtomicU64,
    /// Snapshots written.
    pub snapshots: AtomicU64,
}

/// The records appended and not yet taken by a log thread.
struct Queue {
    records: Vec<LogRecord>,
    /// A batch whose write failed, to be written again (before `records`) at `retry_at`.
    retry: Vec<LogRecord>,
    retry_at: Instant,
    /// Log threads waiting for records: an append wakes one only when one waits.
    idle: usize,
    closed: bool,
    /// A write failed while closing: nothing more is written.
    abandoned: bool,
}

/// What the handlers, the log threads and compaction share.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    writer: Mutex<Writer>,
    sync: Mutex<committer::SyncState>,
    waiters: waiters::Waiters,
    stats: Stats,
    /// Bytes of log since the last snapshot.
    log_bytes: AtomicU64,
    /// Size of the last snapshot.
    snapshot_bytes: AtomicU64,
    compacting: AtomicBool,
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The snapshot file, its log, and the committer thread.
pub struct Store {
    state: PathBuf,
    compact_after: u64,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Recovers the state of snapshot file `state` and its log ([`recovery::recover`]), then
    /// opens a new segment for the records after it and starts the committer. The log is
    /// compacted once it holds more than `compact_after` bytes and more than the snapshot.
    pub fn open(
        state: &Path,
        keep_ended: usize,
        compact_after: u64,
    ) -> Result<(Store, Recovered), StateError> {
        let recovered = recovery::recover(state, keep_ended)?;
        let writer =
            Writer::open(state, recovered.last_seq + 1).map_err(|source| StateError::Io {
                path: segments::path(state, recovered.last_seq + 1),
                source,
            })?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                records: Vec::new(),
                retry: Vec::new(),
                retry_at: Instant::now(),
                idle: 0,
                closed: false,
                abandoned: false,
            }),
            wake: Condvar::new(),
            writer: Mutex::new(writer),
            sync: Mutex::new(committer::SyncState::default()),
            waiters: waiters::Waiters::new(recovered.last_seq),
            stats: Stats::default(),
            log_bytes: AtomicU64::new(recovered.log_bytes),
            snapshot_bytes: AtomicU64::new(recovered.snapshot_bytes),
            compacting: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("rfaas-rm-log".into())
                .spawn(move || committer::run(shared))
                .map_err(|source| StateError::Io {
                    path: state.to_path_buf(),
                    source,
                })?
        };
        Ok((
            Store {
                state: state.to_path_buf(),
                compact_after,
                shared,
                thread: Mutex::new(Some(thread)),
            },
            recovered,
        ))
    }

    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.state
    }

    /// Queues a record for the committer. Records must be appended in sequence order (the
    /// caller holds the lock that orders the changes).
    pub fn append(&self, record: LogRecord) {
        let mut q = self.shared.lock_queue();
        q.records.push(record);
        let idle = q.idle > 0;
        drop(q);
        if idle {
            self.shared.wake.notify_one();
        }
    }

    /// Waits until record `seq` is on disk; the write's error if it failed.
    pub async fn wait(&self, seq: u64) -> Result<(), String> {
        self.shared.waiters.wait(seq).await
    }

    /// How far the log is durable.
    pub fn durable(&self) -> Durable {
        self.shared.waiters.durable()
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// (bytes of log since the last snapshot, bytes of the last snapshot).
    pub fn sizes(&self) -> (u64, u64) {
        (
            self.shared.log_bytes.load(Ordering::Relaxed),
            self.shared.snapshot_bytes.load(Ordering::Relaxed),
        )
    }

    /// Whether the log has grown enough to be compacted (and no compaction runs).
    pub fn wants_compaction(&self) -> bool {
        let (log, snap) = self.sizes();
        log > self.compact_after.max(snap) && !self.shared.compacting.load(Ordering::Relaxed)
    }

    /// Writes what is queued and stops the committer (at shutdown); the last write's error.
    pub fn close(&self) -> Result<(), String> {
        self.shared.lock_queue().closed = true;
        self.shared.wake.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        let d = self.durable();
        self.shared.waiters.close();
        match d.failed {
            Some(f) if f.last > d.seq => Err(f.error),
            _ => Ok(()),
        }
    }
}

/// Removes the state at `state`: the snapshot file and its log segments (for a new cluster
/// that must not inherit an old one's leases). Missing files are no error.
pub fn remove_state(state: &Path) -> std::io::Result<()> {
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    gone(std::fs::remove_file(state))?;
    match segments::list(state) {
        Ok(segs) => {
            for (_, p) in segs {
                gone(std::fs::remove_file(p))?;
            }
            Ok(())
        }
        Err(e) => gone(Err(e)),
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests;
