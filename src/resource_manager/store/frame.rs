//! Records on disk: each is a frame `[length: u32 LE][CRC-32 of the payload: u32 LE][payload]`,
//! the payload a [`LogRecord`] in JSON. [`decode`] walks a segment's bytes and says where the
//! valid frames end and why ([`Stop`]), so that recovery can tell a torn tail (a crash while
//! appending) from corruption.

use serde::{Deserialize, Serialize};

use crate::scheduler::{Change, Meta};

/// Bytes before a frame's payload.
pub const HEADER: usize = 8;

/// Largest payload accepted (a registration with many hosted leases is the biggest record;
/// anything larger is damage, not data).
pub const MAX_PAYLOAD: usize = 64 << 20;

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
    serde_json::to_writer(&mut *out, record).expect("a record always serialises");
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
        match serde_json::from_slice::<LogRecord>(payload) {
            Ok(r) => records.push(r),
            Err(e) => return (records, at, Some(Stop::Unparsable(e.to_string()))),
        }
        at += HEADER + len;
    }
    (records, at, None)
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
