//! Records on disk: each is a frame `[length: u32 LE][CRC-32 of the payload: u32 LE][payload]`,
//! the payload a [`LogRecord`]. [`decode`] walks a segment's bytes and says where the valid
//! frames end and why ([`Stop`]), so that recovery can tell a torn tail (a crash while
//! appending) from corruption.
//!
//! The payload's first byte says its encoding: [`BINARY`] (this build writes it) is followed
//! by the record in `postcard` (compact, varints: about a third of the JSON and several times
//! faster to parse); `{` is a record in JSON as earlier builds wrote it (still read, so that a
//! log written before the upgrade replays). The checksum covers that byte too.

use serde::{Deserialize, Serialize};

use crate::scheduler::{Change, Meta};

/// Bytes before a frame's payload.
pub const HEADER: usize = 8;

/// Largest payload accepted (a registration with many hosted leases is the biggest record;
/// anything larger is damage, not data).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// First payload byte of a record in `postcard` (JSON records start with `{`).
pub const BINARY: u8 = 0x01;

/// One command's changes, with its sequence number (1, 2, ... without gaps).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRecord {
    /// Its place in the log.
    pub seq: u64,
    /// Counters and id allocators after it.
    pub meta: Meta,
    /// What it changed.
    pub changes: Vec<Change>,
}

/// Appends `record`'s frame to `out`.
pub fn encode(record: &LogRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(BINARY);
    let bytes = postcard::to_extend(record, std::mem::take(out));
    *out = bytes.expect("a record always serialises");
    let payload = &out[start + HEADER..];
    let len = u32::try_from(payload.len()).expect("records are far below 4 GiB");
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Why [`decode`] stopped before the end of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Fewer bytes than a header or than the payload announced: an append cut short.
    Truncated,
    /// Only zero bytes from here on (a file extended by a crash before its data landed).
    Zeros,
    /// The checksum does not match (or the length is absurd).
    Checksum,
    /// The checksum matches but the payload is not a record: damage the checksum cannot
    /// explain (another version, a bug); never dropped.
    Unparsable(String),
}

/// The valid records at the start of `bytes`, the offset where they end, and why decoding
/// stopped there (`None`: at the end).
pub fn decode(bytes: &[u8]) -> (Vec<LogRecord>, usize, Option<Stop>) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.iter().all(|b| *b == 0) {
            return (records, at, Some(Stop::Zeros));
        }
        if rest.len() < HEADER {
            return (records, at, Some(Stop::Truncated));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_PAYLOAD {
            return (records, at, Some(Stop::Checksum));
        }
        if rest.len() < HEADER + len {
            return (records, at, Some(Stop::Truncated));
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc32fast::hash(payload) != crc {
            return (records, at, Some(Stop::Checksum));
        }
        match parse(payload) {
            Ok(r) => records.push(r),
            Err(e) => return (records, at, Some(Stop::Unparsable(e))),
        }
        at += HEADER + len;
    }
    (records, at, None)
}

/// A payload as a record: `postcard` after [`BINARY`], or JSON (earlier builds).
fn parse(payload: &[u8]) -> Result<LogRecord, String> {
    match payload.first() {
        Some(&BINARY) => match postcard::take_from_bytes::<LogRecord>(&payload[1..]) {
            Ok((r, [])) => Ok(r),
            Ok((_, rest)) => Err(format!("{} bytes after the record", rest.len())),
            Err(e) => Err(e.to_string()),
        },
        Some(b'{') => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        Some(b) => Err(format!("unknown record encoding {b:#04x}")),
        None => Err("an empty record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> LogRecord {
        LogRecord {
            seq,
            meta: Meta {
                next_lease: seq + 1,
                ..Meta::default()
            },
            changes: vec![Change::Forget(crate::scheduler::LeaseId(seq))],
        }
    }

    fn three() -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for s in 1..=3 {
            encode(&record(s), &mut bytes);
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn frames_round_trip() {
        let (bytes, ends) = three();
        let (r, end, stop) = decode(&bytes);
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(r[2].meta.next_lease, 4);
        assert_eq!((end, stop), (ends[2], None));
    }

    #[test]
    fn a_cut_frame_is_truncated_and_a_flipped_bit_fails_the_checksum() {
        let (bytes, ends) = three();
        for cut in [ends[1] + 3, ends[1] + HEADER + 1, ends[2] - 1] {
            let (r, end, stop) = decode(&bytes[..cut]);
            assert_eq!((r.len(), end, stop), (2, ends[1], Some(Stop::Truncated)));
        }
        let mut bad = bytes.clone();
        bad[ends[0] + HEADER + 5] ^= 0x10;
        let (r, end, stop) = decode(&bad);
        assert_eq!((r.len(), end, stop), (1, ends[0], Some(Stop::Checksum)));
        let mut zeros = bytes[..ends[1]].to_vec();
        zeros.extend_from_slice(&[0; 100]);
        let (r, end, stop) = decode(&zeros);
        assert_eq!((r.len(), end, stop), (2, ends[1], Some(Stop::Zeros)));
    }

    /// A frame around `payload` as it is, checksum and all.
    fn raw_frame(payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    /// Records of every kind of change, from a real scheduler's journal.
    fn every_change() -> Vec<LogRecord> {
        use crate::scheduler::{Config, EndReason, LeaseRequest, Millis, NodeInfo, Scheduler};
        let info = |name: &str| NodeInfo {
            name: name.into(),
            address: format!("{name}:1"),
            cores: 4,
            memory: 1 << 30,
            hosted: vec![],
        };
        let mut s = Scheduler::new(Config {
            heartbeat_timeout_ms: 100,
            ..Config::default()
        });
        s.journal(true);
        let mut out = Vec::new();
        let mut take = |s: &mut Scheduler| {
            let (changes, meta) = s.take_changes();
            assert!(!changes.is_empty());
            out.push(LogRecord {
                seq: out.len() as u64 + 1,
                meta,
                changes,
            });
        };
        s.register(info("a"), Millis(0)).unwrap();
        take(&mut s);
        s.register(info("b"), Millis(0)).unwrap();
        take(&mut s);
        let split = LeaseRequest {
            allow_split: true,
            memory_per_core: 1 << 20,
            client: "c\"x\"".into(),
            ..LeaseRequest::cores(6)
        };
        let g = s.grant(split, Millis(1)).unwrap();
        take(&mut s);
        let h = s.grant(LeaseRequest::cores(1), Millis(2)).unwrap();
        take(&mut s);
        s.release(h.lease, &h.token).unwrap();
        take(&mut s);
        s.heartbeat("a", Millis(150)).unwrap();
        assert!(!s.tick(Millis(160)).is_empty(), "b dies, g ends");
        take(&mut s);
        s.deregister("a").unwrap();
        take(&mut s);
        let ended = s.ended_leases();
        assert!(ended.iter().any(|l| l.id == g.lease
            && matches!(
                l.state,
                crate::scheduler::LeaseState::Ended(EndReason::NodeDead(_))
            )));
        out
    }

    #[test]
    fn every_change_round_trips_in_binary_smaller_than_json() {
        let records = every_change();
        let kinds: std::collections::HashSet<_> = records
            .iter()
            .flat_map(|r| &r.changes)
            .map(std::mem::discriminant)
            .collect();
        assert_eq!(kinds.len(), 4, "node, node gone, lease, ended");
        let mut bytes = Vec::new();
        for r in &records {
            encode(r, &mut bytes);
        }
        let (back, end, stop) = decode(&bytes);
        assert_eq!((end, stop), (bytes.len(), None));
        let json = |r: &[LogRecord]| serde_json::to_value(r).unwrap();
        assert_eq!(json(&back), json(&records));
        let as_json: usize = records
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap().len())
            .sum();
        assert!(bytes.len() < as_json, "{} >= {as_json}", bytes.len());
    }

    #[test]
    fn json_records_of_earlier_builds_are_read_beside_binary_ones() {
        let records = every_change();
        let mut bytes = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if i % 2 == 0 {
                bytes.extend(raw_frame(&serde_json::to_vec(r).unwrap()));
            } else {
                encode(r, &mut bytes);
            }
        }
        let (back, end, stop) = decode(&bytes);
        assert_eq!((end, stop), (bytes.len(), None));
        let json = |r: &[LogRecord]| serde_json::to_value(r).unwrap();
        assert_eq!(json(&back), json(&records));
    }

    #[test]
    fn a_binary_record_with_trailing_bytes_or_an_unknown_encoding_is_unparsable() {
        let mut payload = vec![BINARY];
        payload.extend(postcard::to_stdvec(&record(1)).unwrap());
        assert_eq!(decode(&raw_frame(&payload)).0.len(), 1);
        payload.push(0);
        let stop = decode(&raw_frame(&payload)).2;
        assert!(
            matches!(&stop, Some(Stop::Unparsable(e)) if e.contains("after the record")),
            "{stop:?}"
        );
        payload[0] = 0x7f;
        let stop = decode(&raw_frame(&payload)).2;
        assert!(
            matches!(&stop, Some(Stop::Unparsable(e)) if e.contains("encoding 0x7f")),
            "{stop:?}"
        );
    }

    #[test]
    fn a_valid_checksum_over_a_non_record_is_unparsable() {
        let payload = b"{\"not\": \"a record\"}";
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        bytes.extend_from_slice(payload);
        let (r, end, stop) = decode(&bytes);
        assert!(r.is_empty() && end == 0);
        assert!(matches!(stop, Some(Stop::Unparsable(_))), "{stop:?}");
    }
}
