//! The committer: one thread that appends every record pending at the moment to the newest
//! segment in one write (group commit), and [`SYNCERS`] threads that make what was written
//! durable with `fdatasync`, then tell the waiting handlers ([`Durable`]).
//!
//! The syncs overlap: a sync covers every record written before it started, so a record
//! written while another sync is in flight does not wait for that one to end before its own
//! starts (with one sync at a time a change waited 1.5 syncs on average, and the disk's cache
//! flushes were not shared). The kernel joins overlapping `fdatasync` calls of one file into
//! one journal commit where it can.
//!
//! A failed write is cut back off the segment and retried with the next batch; the handlers of
//! the failed batch get its error. A failed `fdatasync` leaves the written data in an unknown
//! state (the kernel reports such an error once and may drop the dirty pages), so the log is
//! poisoned, as PostgreSQL does since 2018: this and every later change fails until the
//! manager is restarted and recovers what is on disk. Each syncer syncs through its own open
//! file description of the segment (the kernel reports a writeback error once per
//! description), so no syncer can report records durable whose loss another one was told of.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::frame::{self, LogRecord};
use super::{segments, Shared};

/// How long a failed batch waits before it is retried (unless new records come first).
const RETRY: Duration = Duration::from_millis(100);

/// Threads that call `fdatasync`: at most this many syncs are in flight at once.
pub const SYNCERS: usize = 4;

/// What the committer wrote and what the syncers made durable (under [`Shared`]'s `sync`).
#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// The last record written to the segment.
    written: u64,
    /// The last record a sync started (or finished) covers.
    started: u64,
    /// A sync failed: nothing is durable any more.
    poisoned: Option<String>,
    /// The committer has written everything and stopped.
    closed: bool,
}

/// How far the log is durable.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Every record up to this one is on disk.
    pub seq: u64,
    /// The last failure: the records `first..=last` could not be written (yet), and why
    /// (`0..=u64::MAX` once the log is poisoned: nothing more becomes durable).
    pub failed: Option<Failed>,
}

/// Records that failed: `first..=last`, and why.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The first record of the failed range.
    pub first: u64,
    /// The last record of the failed range.
    pub last: u64,
    /// Why.
    pub error: String,
}

impl Failed {
    /// Whether record `seq` is one of the failed.
    pub fn covers(&self, seq: u64) -> bool {
        (self.first..=self.last).contains(&seq)
    }
}

/// The newest segment, open for appending.
pub(super) struct Writer {
    pub(super) file: File,
    /// The sequence number it is named after.
    pub(super) start: u64,
    /// Its length (up to the last complete write).
    pub(super) len: u64,
    /// The next record to be written.
    pub(super) next_seq: u64,
    /// One descriptor of the segment per syncer, opened before anything was written to it:
    /// the kernel reports a writeback error once per open file description, so a syncer whose
    /// `fdatasync` succeeds on its own description knows that nothing written before it
    /// started was lost (with shared descriptions another syncer could have taken the error).
    sync_files: Vec<File>,
}

impl Writer {
    /// Opens (or creates) the segment of `state` starting at `seq`, durably listed; mode
    /// 0600 like the snapshot (records hold lease tokens).
    pub(super) fn open(state: &Path, seq: u64) -> std::io::Result<Writer> {
        use std::os::unix::fs::OpenOptionsExt;
        let path: PathBuf = segments::path(state, seq);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let len = file.metadata()?.len();
        file.sync_all()?;
        segments::sync_dir(state)?;
        let sync_files = (0..SYNCERS)
            .map(|_| File::open(&path))
            .collect::<std::io::Result<_>>()?;
        Ok(Writer {
            file,
            start: seq,
            len,
            next_seq: seq,
            sync_files,
        })
    }

    /// Appends `bytes` (not yet durable: the syncers make it so); on failure the segment is
    /// cut back to where it was, so that the next write follows the last good record.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.file.set_len(self.len) {
                    tracing::error!("cannot cut back a failed write of the log: {cut}");
                }
                Err(e)
            }
        }
    }
}

/// The committer thread's loop, with its syncers, until the store is closed and everything is
/// written and synced (or writing fails at close).
pub(super) fn run(shared: Arc<Shared>) {
    std::thread::scope(|scope| {
        for i in 0..SYNCERS {
            let shared = &shared;
            std::thread::Builder::new()
                .name(format!("rfaas-rm-sync{i}"))
                .spawn_scoped(scope, move || sync(shared, i))
                .expect("a thread for the log's syncs");
        }
        write(&shared);
        shared.lock_sync().closed = true;
        shared.sync_wake.notify_all();
    });
}

impl Shared {
    pub(super) fn lock_sync(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the log is poisoned, if it is.
    pub(super) fn poisoned(&self) -> Option<String> {
        self.lock_sync().poisoned.clone()
    }
}

/// Takes the pending records and writes them, batch after batch.
fn write(shared: &Shared) {
    let mut retry: Vec<LogRecord> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let (mut batch, closed) = {
            let mut q = shared.lock_queue();
            while q.records.is_empty() && !q.closed {
                if retry.is_empty() {
                    q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                } else {
                    q = shared
                        .wake
                        .wait_timeout(q, RETRY)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    break;
                }
            }
            (std::mem::take(&mut q.records), q.closed)
        };
        if !retry.is_empty() {
            retry.append(&mut batch);
            batch = std::mem::take(&mut retry);
        }
        let first = batch.first().map_or(0, |r| r.seq);
        let Some(last) = batch.last().map(|r| r.seq) else {
            if closed {
                return;
            }
            continue;
        };
        if shared.lock_sync().poisoned.is_some() {
            // Their handlers already know: every record fails once the log is poisoned.
            if closed {
                return;
            }
            continue;
        }
        buf.clear();
        for r in &batch {
            frame::encode(r, &mut buf);
        }
        let result = {
            let mut w = shared.lock_writer();
            let r = w.append(&buf);
            if r.is_ok() {
                w.next_seq = last + 1;
                // Under the writer's lock, so that a sync that sees it finds the data written.
                shared.lock_sync().written = last;
            }
            r
        };
        match result {
            Ok(()) => {
                shared.sync_wake.notify_one();
                shared
                    .stats
                    .records
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                shared
                    .log_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("cannot append to the state log: {e}");
                shared.durable.send_modify(|d| {
                    // Only this batch fails: earlier ones may still be syncing. A poisoned
                    // log's failure stays.
                    if !d.failed.as_ref().is_some_and(|f| f.last == u64::MAX) {
                        d.failed = Some(Failed {
                            first,
                            last,
                            error: e.to_string(),
                        });
                    }
                });
                if closed {
                    return;
                }
                retry = batch;
            }
        }
        if buf.capacity() > 16 << 20 {
            buf = Vec::new();
        }
    }
}

/// Syncer `index`: makes what was written durable, overlapping with the other syncers, until
/// the committer has stopped and everything written is synced.
fn sync(shared: &Shared, index: usize) {
    loop {
        let covers = {
            let mut s = shared.lock_sync();
            loop {
                if s.poisoned.is_some() {
                    return;
                }
                if s.written > s.started {
                    break;
                }
                if s.closed {
                    return;
                }
                s = shared.sync_wake.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.started = s.written;
            s.written
        };
        // The segment being written now; data of an older segment was synced when the
        // compaction rotated it away ([`super::compaction`]).
        let file = shared.lock_writer().sync_files[index].try_clone();
        let r = file.and_then(|f| f.sync_data());
        match r {
            Ok(()) => {
                shared.stats.commits.fetch_add(1, Ordering::Relaxed);
                // Under the sync lock, which poisoning takes: once poisoned, nothing more is
                // reported durable.
                let s = shared.lock_sync();
                if s.poisoned.is_some() {
                    return;
                }
                shared.durable.send_modify(|d| d.seq = d.seq.max(covers));
                drop(s);
            }
            Err(e) => {
                poison(shared, &e);
                return;
            }
        }
    }
}

/// After a failed `fdatasync` (of a syncer, or of a segment rotated away): every change not
/// yet durable, and every later one, fails.
pub(super) fn poison(shared: &Shared, e: &std::io::Error) {
    let message = format!(
        "fdatasync of the state log failed ({e}): no change is saved any more; restart the \
         resource manager to recover the state on disk"
    );
    tracing::error!("{message}");
    let mut s = shared.lock_sync();
    s.poisoned = Some(message.clone());
    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
    shared.durable.send_modify(|d| {
        d.failed = Some(Failed {
            first: 0,
            last: u64::MAX,
            error: message,
        })
    });
    drop(s);
    shared.sync_wake.notify_all();
}
