//! Recovery at start: the snapshot file, then every record of the log segments after the
//! sequence number it covers, in order and without gaps.
//!
//! * A damaged frame in the newest segment with no later record after it is a torn tail (the
//!   process died while appending, so nobody was told about those records): it is dropped
//!   with a warning and the segment cut back to its last valid frame. Valid frames of
//!   earlier records in such a tail are stale blocks of a deleted segment (a power cut on a
//!   file system without a journal can save a file's size before its data), not this log.
//! * Anything else is refused with a [`StateError::Corrupt`] naming the file and the offset:
//!   damage before valid records, in an older segment, a record that does not parse although
//!   its checksum matches, a gap in the sequence numbers, an unreadable snapshot, or a log
//!   whose beginning no snapshot covers. A damaged state is never silently reset.

use std::path::{Path, PathBuf};

use crate::resource_manager::state::{StateError, STATE_VERSION};
use crate::scheduler::{Image, Snapshot};

use super::frame::{self, Stop};
use super::{segments, snapshot_file};

/// What was found on disk.
#[derive(Debug)]
pub struct Recovered {
    /// The state (snapshot brought forward by the log); `None`: nothing on disk.
    pub snapshot: Option<Snapshot>,
    /// The snapshot file's format version (1 stores process-relative times).
    pub version: u32,
    /// The last record's sequence number (the snapshot's when no record followed it).
    pub last_seq: u64,
    /// Records replayed.
    pub replayed: usize,
    /// Bytes dropped from a torn tail.
    pub dropped: u64,
    /// Size of the snapshot file.
    pub snapshot_bytes: u64,
    /// Size of the log segments kept.
    pub log_bytes: u64,
}

fn corrupt(path: &Path, message: impl Into<String>) -> StateError {
    StateError::Corrupt {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshot file: (snapshot, version, last record covered, size); `None` if absent.
type Base = Option<(Snapshot, u32, u64, u64)>;

fn read_snapshot(state: &Path) -> Result<Base, StateError> {
    match std::fs::read(state) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(state)(e)),
        Ok(bytes) => {
            let file = snapshot_file::decode(state, &bytes)?;
            Ok(Some((
                file.snapshot,
                file.version,
                file.log_seq,
                bytes.len() as u64,
            )))
        }
    }
}

/// A segment decoded: its records, where they end, why decoding stopped, and its bytes when
/// it stopped early (to tell a torn tail from damage).
struct Decoded {
    start: u64,
    path: PathBuf,
    records: Vec<super::frame::LogRecord>,
    end: usize,
    stop: Option<Stop>,
    bytes: Vec<u8>,
}

fn read_segments(state: &Path) -> Result<Vec<Decoded>, StateError> {
    let segs = segments::list(state).map_err(io(segments::dir_of(state)))?;
    let mut out = Vec::with_capacity(segs.len());
    for (start, path) in segs {
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let (records, end, stop) = frame::decode(&bytes);
        let bytes = if stop.is_some() { bytes } else { Vec::new() };
        out.push(Decoded {
            start,
            path,
            records,
            end,
            stop,
            bytes,
        });
    }
    Ok(out)
}

/// Reads the snapshot file `state` (if any) and replays its log. The snapshot is parsed while
/// the log is read and decoded, on two threads.
pub fn recover(state: &Path, keep_ended: usize) -> Result<Recovered, StateError> {
    let t = std::time::Instant::now();
    let (base, segs) = std::thread::scope(|s| {
        let base = s.spawn(|| read_snapshot(state));
        let segs = read_segments(state);
        (
            base.join().expect("the snapshot reader does not panic"),
            segs,
        )
    });
    let (base, segs) = (base?, segs?);
    let parsed_ms = t.elapsed().as_millis();
    let (base, version, covers, snapshot_bytes) = match base {
        Some((s, v, c, b)) => (Some(s), v, c, b),
        None => (None, STATE_VERSION, 0, 0),
    };
    if base.is_none() {
        if let Some(first) = segs.first() {
            if first.start > 1 {
                return Err(corrupt(
                    &first.path,
                    format!(
                        "the log starts at record {} but the snapshot {} covering the \
                         records before it is missing",
                        first.start,
                        state.display()
                    ),
                ));
            }
        }
    }
    let found = base.is_some() || !segs.is_empty();
    let taken_at = base.as_ref().map(|s| s.taken_at).unwrap_or_default();
    let mut image = Image::new(base.unwrap_or_else(empty), keep_ended);
    let mut next = covers + 1;
    let mut replayed = 0;
    let mut dropped = 0;
    let mut log_bytes = 0;
    let n = segs.len();
    for (i, seg) in segs.into_iter().enumerate() {
        let newest = i + 1 == n;
        let path = &seg.path;
        for r in seg.records {
            if r.seq < next && r.seq <= covers {
                continue;
            }
            if r.seq != next {
                return Err(corrupt(
                    path,
                    format!(
                        "record {} where record {next} was due: records are missing or \
                         repeated",
                        r.seq
                    ),
                ));
            }
            if version < 2 {
                return Err(corrupt(
                    state,
                    "a version-1 state file cannot be followed by a log",
                ));
            }
            image.apply(r.changes, r.meta);
            next += 1;
            replayed += 1;
        }
        let end = seg.end;
        if let Some(stop) = seg.stop {
            check_tail(path, &seg.bytes, end, &stop, newest, next - 1)?;
            let cut = seg.bytes.len() - end;
            tracing::warn!(
                "dropping a torn tail of {cut} bytes at byte {end} of {} ({stop:?}): \
                 records a crash interrupted, never acknowledged",
                path.display()
            );
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(path))?;
            f.set_len(end as u64).map_err(io(path))?;
            f.sync_all().map_err(io(path))?;
            dropped += cut as u64;
        }
        log_bytes += end as u64;
    }
    tracing::info!(
        snapshot_bytes,
        log_bytes,
        replayed,
        parsed_ms,
        total_ms = t.elapsed().as_millis(),
        "state read"
    );
    Ok(Recovered {
        snapshot: found.then(|| image.into_snapshot(taken_at)),
        version,
        last_seq: next - 1,
        replayed,
        dropped,
        snapshot_bytes,
        log_bytes,
    })
}

/// Whether decoding `bytes` of segment `path` may stop at `end` for `stop` (a torn tail) or
/// must be refused; `last` is the last record read before `end`.
fn check_tail(
    path: &Path,
    bytes: &[u8],
    end: usize,
    stop: &Stop,
    newest: bool,
    last: u64,
) -> Result<(), StateError> {
    let at = |what: &str| {
        corrupt(
            path,
            format!("{what} at byte {end}; move the state away (or repair it) to start"),
        )
    };
    if let Stop::Unparsable(e) = stop {
        return Err(at(&format!(
            "a record with a valid checksum does not parse ({e})"
        )));
    }
    if !newest {
        return Err(at(&format!(
            "a damaged record ({stop:?}) in a segment that is not the newest"
        )));
    }
    // A torn append leaves no later record behind it; a valid frame of a later record further
    // on means the damage is in the middle of acknowledged records. A valid frame of a record
    // already read (or older) is not this log's: a block that held a deleted segment, reused
    // for this one and exposed by a power cut that saved the file's new size but not the data
    // appended into it (possible on a file system without a journal).
    if let Some((off, seq)) = (end + 1..bytes.len())
        .filter_map(|o| frame_seq_at(&bytes[o..]).map(|seq| (o, seq)))
        .find(|&(_, seq)| seq > last)
    {
        return Err(at(&format!(
            "a damaged record ({stop:?}) followed by a valid one (record {seq}) at byte {off}"
        )));
    }
    Ok(())
}

/// The sequence number of the valid frame at the start of `rest`, if there is one.
fn frame_seq_at(rest: &[u8]) -> Option<u64> {
    let (records, _, _) = frame::decode(rest.get(..frame_len(rest)).unwrap_or(&[]));
    records.first().map(|r| r.seq)
}

/// The length of the frame starting `rest` as its header claims (0 if absurd).
fn frame_len(rest: &[u8]) -> usize {
    let Some(h) = rest.get(..4) else { return 0 };
    let len = u32::from_le_bytes(h.try_into().expect("4 bytes")) as usize;
    if len == 0 || len > frame::MAX_PAYLOAD {
        return 0;
    }
    frame::HEADER + len
}

fn empty() -> Snapshot {
    Snapshot {
        taken_at: Default::default(),
        nodes: Vec::new(),
        leases: Vec::new(),
        ended: Vec::new(),
        next_node: 0,
        next_lease: 1,
        counters: Default::default(),
    }
}
