//! Group commit: [`LOG_THREADS`] threads, each of which takes every record pending at the
//! moment, appends them to the newest segment in one write, makes what was written durable
//! with `fdatasync`, then tells the waiting handlers ([`super::waiters`]).
//!
//! With more than one thread the syncs overlap: while one thread syncs, the next records are
//! taken, written and synced by another, and a sync covers every record written before it
//! started. That shortens the wait of a change that arrives during a sync (with one sync at
//! a time it waits 1.5 syncs on average), but every sync costs CPU (here about 55 µs of
//! system time, the virtio doorbell and two context switches), and overlapping syncs are
//! smaller: under load one thread did more with less (`rm_load_benchmark` on 2 cores,
//! 64 clients: 12,100-14,000 grants/s with one, 11,700-12,000 with two, 10,100-10,500 with
//! four), so [`LOG_THREADS`] is 1; a device with slow but parallel syncs may want more. The
//! thread that writes a batch syncs it: a record goes from its handler to a log thread and
//! back, two hand-offs (a separate writer thread that passed the batch on to a syncer made
//! three), and a log thread is woken only when one is idle and records wait.
//!
//! A failed write is cut back off the segment and retried with the next batch (or after
//! [`RETRY`]); the handlers of the failed batch get its error. A failed `fdatasync` leaves the
//! written data in an unknown state (the kernel reports such an error once and may drop the
//! dirty pages), so the log is poisoned, as PostgreSQL does since 2018: this and every later
//! change fails until the manager is restarted and recovers what is on disk. Each log thread
//! syncs through its own open file description of the segment (the kernel reports a writeback
//! error once per description), so no thread can report records durable whose loss another
//! one was told of.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::frame;
use super::{segments, Shared};

/// How long a failed batch waits before it is retried (unless new records come first).
const RETRY: Duration = Duration::from_millis(100);

/// Threads that write and `fdatasync` the log: at most this many syncs are in flight at once
/// (one: see the module's documentation).
pub const LOG_THREADS: usize = 1;

/// What the log threads wrote, and whether a sync failed (under [`Shared`]'s `sync`).
#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// The last record written to the segment.
    written: u64,
    /// The segment it was written to (its start): a sync of another segment's file does not
    /// cover it.
    segment: u64,
    /// A sync failed: nothing is durable any more.
    poisoned: Option<String>,
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
    /// One descriptor of the segment per log thread, opened before anything was written to
    /// it: the kernel reports a writeback error once per open file description, so a thread
    /// whose `fdatasync` succeeds on its own description knows that nothing written before it
    /// started was lost (with shared descriptions another thread could have taken the error).
    sync_files: Vec<Arc<File>>,
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
        let sync_files = (0..LOG_THREADS)
            .map(|_| File::open(&path).map(Arc::new))
            .collect::<std::io::Result<_>>()?;
        Ok(Writer {
            file,
            start: seq,
            len,
            next_seq: seq,
            sync_files,
        })
    }

    /// Appends `bytes` (not yet durable: a sync makes it so); on failure the segment is
    /// cut back to where it was, so that the next write follows the last good record. The
    /// error, and whether the cut failed too (the segment then ends in a torn write: nothing
    /// may follow it).
    fn append(&mut self, bytes: &[u8]) -> Result<(), (std::io::Error, bool)> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let torn = match self.file.set_len(self.len) {
                    Ok(()) => false,
                    Err(cut) => {
                        tracing::error!("cannot cut back a failed write of the log: {cut}");
                        true
                    }
                };
                Err((e, torn))
            }
        }
    }
}

/// The log threads, until the store is closed and everything queued is written and synced
/// (or writing fails at close).
pub(super) fn run(shared: Arc<Shared>) {
    std::thread::scope(|scope| {
        for i in 0..LOG_THREADS {
            let shared = &shared;
            let spawned = std::thread::Builder::new()
                .name(format!("rfaas-rm-log{i}"))
                .spawn_scoped(scope, move || {
                    // A panic would leave its batch's handlers waiting and the next batch
                    // written after a gap: the log is poisoned instead (nothing more is saved,
                    // every waiter is told).
                    let run = std::panic::AssertUnwindSafe(|| log_thread(shared, i));
                    if std::panic::catch_unwind(run).is_err() {
                        poison(shared, &std::io::Error::other("a log thread panicked"));
                    }
                });
            if let Err(e) = spawned {
                // Fewer threads would do, but none at all would write nothing: say so to
                // every change rather than let them wait.
                if i == 0 {
                    poison(shared, &e);
                } else {
                    tracing::warn!("the state log runs with {i} threads: {e}");
                }
            }
        }
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

/// Log thread `index`: waits for records, writes all that are pending, syncs them, tells
/// their handlers; returns once the store is closed and nothing is left.
fn log_thread(shared: &Shared, index: usize) {
    let mut buf = Vec::new();
    loop {
        // Wait for records (or a failed batch's retry to be due).
        {
            let mut q = shared.lock_queue();
            loop {
                let now = Instant::now();
                let retry_due = !q.retry.is_empty() && (q.closed || q.retry_at <= now);
                if !q.records.is_empty() || retry_due {
                    break;
                }
                if q.closed {
                    return;
                }
                q.idle += 1;
                q = if q.retry.is_empty() {
                    shared.wake.wait(q).unwrap_or_else(|p| p.into_inner())
                } else {
                    let left = q.retry_at.saturating_duration_since(now);
                    shared
                        .wake
                        .wait_timeout(q, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                };
                q.idle -= 1;
            }
        }
        // Take and write them under the writer's lock: batches go to the segment in order.
        let (file, segment, last, count, bytes) = {
            let mut w = shared.lock_writer();
            let (batch, closed) = {
                let mut q = shared.lock_queue();
                if q.abandoned {
                    q.records.clear();
                }
                let mut batch = std::mem::take(&mut q.retry);
                batch.append(&mut q.records);
                (batch, q.closed)
            };
            let (Some(first), Some(last)) =
                (batch.first().map(|r| r.seq), batch.last().map(|r| r.seq))
            else {
                continue; // another thread took them
            };
            if shared.lock_sync().poisoned.is_some() {
                continue; // their handlers already know: every record fails once poisoned
            }
            buf.clear();
            for r in &batch {
                frame::encode(r, &mut buf);
            }
            match w.append(&buf) {
                Ok(()) => {
                    w.next_seq = last + 1;
                    // Under the writer's lock, so that a sync that sees it finds the data
                    // written.
                    let mut s = shared.lock_sync();
                    (s.written, s.segment) = (last, w.start);
                    drop(s);
                    (
                        w.sync_files[index].clone(),
                        w.start,
                        last,
                        batch.len(),
                        buf.len(),
                    )
                }
                Err((e, torn)) => {
                    if torn {
                        // The segment ends in a torn write that could not be cut off: a record
                        // written after it would be unreadable.
                        drop(w);
                        poison(shared, &e);
                        continue;
                    }
                    // Back in the queue before the writer's lock is released: no other thread
                    // may write the records after these first.
                    let mut q = shared.lock_queue();
                    if closed {
                        // Closing: given up, with every later record (written after a gap,
                        // they would make the log unreadable); their handlers are told at
                        // the close.
                        q.abandoned = true;
                        q.records.clear();
                    } else {
                        let mut later = std::mem::take(&mut q.records);
                        q.retry = batch;
                        q.retry.append(&mut later);
                        q.retry_at = Instant::now() + RETRY;
                    }
                    drop(q);
                    drop(w);
                    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("cannot append to the state log: {e}");
                    // Only this batch fails: earlier ones may still be syncing.
                    shared.waiters.fail(Failed {
                        first,
                        last,
                        error: e.to_string(),
                    });
                    continue;
                }
            }
        };
        shared
            .stats
            .records
            .fetch_add(count as u64, Ordering::Relaxed);
        shared.log_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if buf.capacity() > 16 << 20 {
            buf = Vec::new();
        }
        // Sync: it covers every record written before it starts, by any thread, to this
        // segment. When a compaction rotated the log since this batch was written (it synced
        // the old segment first, [`super::compaction`]), the records written since went to
        // the new one, which this sync does not cover: it then answers for its own batch.
        let covers = {
            let s = shared.lock_sync();
            if s.segment == segment {
                s.written
            } else {
                last
            }
        };
        match file.sync_data() {
            Ok(()) => {
                shared.stats.commits.fetch_add(1, Ordering::Relaxed);
                // Under the sync lock, which poisoning takes: once poisoned, nothing more is
                // reported durable.
                let s = shared.lock_sync();
                if s.poisoned.is_some() {
                    continue;
                }
                shared.waiters.advance(covers);
                drop(s);
            }
            Err(e) => poison(shared, &e),
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
    shared.waiters.fail(Failed {
        first: 0,
        last: u64::MAX,
        error: message,
    });
    drop(s);
}
