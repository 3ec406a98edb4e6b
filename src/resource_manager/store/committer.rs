//! The committer: one thread that appends every record pending at the moment to the newest
//! segment in one write and makes it durable with one `fdatasync` (group commit), then tells
//! the waiting handlers ([`Durable`]). A failed write is cut back off the segment and retried
//! with the next batch; the handlers of the failed batch get its error.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::frame::{self, LogRecord};
use super::{segments, Shared};

/// How long a failed batch waits before it is retried (unless new records come first).
const RETRY: Duration = Duration::from_millis(100);

/// How far the log is durable.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Every record up to this one is on disk.
    pub seq: u64,
    /// The last failure: records up to this one could not be written (yet), and why.
    pub failed: Option<(u64, String)>,
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
        Ok(Writer {
            file,
            start: seq,
            len,
            next_seq: seq,
        })
    }

    /// Appends `bytes` and waits for the disk; on failure the segment is cut back to where it
    /// was, so that the next write follows the last good record.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let r = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        match r {
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

/// The committer thread's loop, until the store is closed and everything is written (or
/// writing fails at close).
pub(super) fn run(shared: Arc<Shared>) {
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
        let Some(last) = batch.last().map(|r| r.seq) else {
            if closed {
                return;
            }
            continue;
        };
        buf.clear();
        for r in &batch {
            frame::encode(r, &mut buf);
        }
        let result = {
            let mut w = shared.lock_writer();
            let r = w.append(&buf);
            if r.is_ok() {
                w.next_seq = last + 1;
            }
            r
        };
        match result {
            Ok(()) => {
                shared.stats.commits.fetch_add(1, Ordering::Relaxed);
                shared
                    .stats
                    .records
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                shared
                    .log_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                shared.durable.send_modify(|d| d.seq = last);
            }
            Err(e) => {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("cannot append to the state log: {e}");
                shared
                    .durable
                    .send_modify(|d| d.failed = Some((last, e.to_string())));
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
