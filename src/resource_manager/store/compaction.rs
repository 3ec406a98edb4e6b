//! Compaction: the state as a new snapshot, so that the log segments it covers can go.
//!
//! 1. The log's segment is rotated: records written from now on go to a new segment,
//!    so every older segment holds only records already applied to the scheduler.
//! 2. The caller encodes the snapshot and says the sequence number of the last record it
//!    reflects, under the scheduler's lock (at least every record of the older segments),
//!    straight from the scheduler's maps ([`crate::scheduler::SnapshotView`]), not from a
//!    copy of them.
//! 3. The snapshot is sealed (checksum) and written atomically ([`crate::atomic_write`]:
//!    temporary file, fsync, rename, fsync of the directory), saying which record it covers.
//! 4. The older segments are deleted.
//!
//! A crash before 3 leaves the old snapshot and every segment; between 3 and 4 the new
//! snapshot and segments whose records it covers (skipped at recovery); during 4 some of
//! them. Each recovers to the same state.

use std::sync::atomic::Ordering;

use crate::atomic_write::{write_atomic, Durability};
use crate::resource_manager::state::StateError;

use super::committer::Writer;
use super::snapshot_file::Payload;
use super::{segments, Store};

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The last record the snapshot covers.
    pub seq: u64,
    /// Its size.
    pub snapshot_bytes: u64,
    /// Segments deleted.
    pub segments_removed: usize,
}

impl Store {
    /// Compacts the log into a snapshot that `take` encodes
    /// ([`super::snapshot_file::encode_payload`]), with the last record it reflects (`None` when
    /// another compaction is running).
    pub fn compact(
        &self,
        take: impl FnOnce() -> (Payload, u64),
    ) -> Result<Option<Compacted>, StateError> {
        if self.shared.compacting.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let r = self.compact_now(take);
        if r.is_err() {
            self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.compacting.store(false, Ordering::Release);
        r.map(Some)
    }

    fn compact_now(&self, take: impl FnOnce() -> (Payload, u64)) -> Result<Compacted, StateError> {
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        // A poisoned log refused changes that the scheduler in memory still holds: a snapshot
        // of it would save them. Only a restart (recovering what is on disk) goes on.
        if let Some(why) = self.shared.poisoned() {
            return Err(io(&self.state)(std::io::Error::other(why)));
        }
        // 1. Rotate.
        let start = {
            let mut w = self.shared.lock_writer();
            if w.start != w.next_seq {
                // What was written to the old segment is durable before the log threads move on
                // to the new one (they sync the segment being written).
                if let Err(e) = w.file.sync_data() {
                    super::committer::poison(&self.shared, &e);
                    return Err(io(&segments::path(&self.state, w.start))(e));
                }
                let next = w.next_seq;
                *w = Writer::open(&self.state, next)
                    .map_err(io(&segments::path(&self.state, next)))?;
            }
            w.start
        };
        // 2, 3. The snapshot.
        let (payload, seq) = take();
        let encoded = payload.seal();
        write_atomic(&self.state, &encoded, 0o600, Durability::Synced).map_err(io(&self.state))?;
        let bytes = encoded.len() as u64;
        drop(encoded);
        self.shared.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        self.shared.snapshot_bytes.store(bytes, Ordering::Relaxed);
        // 4. The segments it covers.
        let old: Vec<_> = segments::list(&self.state)
            .map_err(io(segments::dir_of(&self.state)))?
            .into_iter()
            .filter(|(s, _)| *s < start)
            .collect();
        for (_, p) in &old {
            std::fs::remove_file(p).map_err(io(p))?;
        }
        segments::sync_dir(&self.state).map_err(io(segments::dir_of(&self.state)))?;
        let current = self.shared.lock_writer().len;
        self.shared.log_bytes.store(current, Ordering::Relaxed);
        Ok(Compacted {
            seq,
            snapshot_bytes: bytes,
            segments_removed: old.len(),
        })
    }
}
