//! The snapshot file: the whole state ([`StateFile`]) in `postcard`, behind a header that
//! names the format and checks the bytes:
//!
//! ```text
//! [magic "RFAASRM\0": 8][version: u32 LE][CRC-32 of the payload: u32 LE][length: u64 LE][payload]
//! ```
//!
//! A file that starts with `{` is a snapshot in JSON as earlier builds wrote it (versions 1 to
//! 3: the whole-file state of versions 1 and 2, the first snapshots of the log in version 3);
//! it is read the same way, so an upgrade needs no conversion step, and the next compaction
//! rewrites it in binary. Anything else, a wrong checksum or length, or a version this build
//! does not know is refused: a damaged snapshot is never taken for an empty state.

use std::path::Path;

use serde::Serialize;

use crate::resource_manager::state::{StateError, StateFile, STATE_VERSION};

/// The first bytes of a binary snapshot.
pub const MAGIC: &[u8; 8] = b"RFAASRM\0";

/// Bytes before the payload.
pub const HEADER: usize = 24;

/// The oldest version of the binary format (older versions are JSON).
pub const FIRST_BINARY: u32 = 4;

/// A snapshot file's bytes, header still unsealed: [`encode_payload`] writes them (under the
/// scheduler's lock, as fast as it can), [`Payload::seal`] adds the checksum (after it).
#[derive(Debug)]
pub struct Payload(Vec<u8>);

/// The bytes of a binary snapshot file of `snapshot` (a [`crate::scheduler::Snapshot`] or a
/// [`crate::scheduler::SnapshotView`]) covering the log up to record `log_seq`, to be sealed.
pub fn encode_payload<S: Serialize>(snapshot: &S, log_seq: u64) -> Payload {
    let file = StateFile {
        version: STATE_VERSION,
        saved_at_unix_ms: crate::resource_manager::state::unix_ms_now(),
        log_seq,
        snapshot,
    };
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&STATE_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 12]);
    Payload(postcard::to_extend(&file, out).expect("a snapshot always serialises"))
}

impl Payload {
    /// The file's bytes, with the payload's checksum and length in the header.
    pub fn seal(self) -> Vec<u8> {
        let mut out = self.0;
        let payload = &out[HEADER..];
        let crc = crc32fast::hash(payload);
        let len = payload.len() as u64;
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out[16..24].copy_from_slice(&len.to_le_bytes());
        out
    }
}

/// `snapshot` as the bytes of a binary snapshot file covering the log up to `log_seq`.
pub fn encode<S: Serialize>(snapshot: &S, log_seq: u64) -> Vec<u8> {
    encode_payload(snapshot, log_seq).seal()
}

/// The snapshot in `bytes`, read from `path` (named in errors): binary or JSON.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<StateFile, StateError> {
    let corrupt = |message: String| StateError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let file = if bytes.starts_with(MAGIC) {
        decode_binary(bytes).map_err(corrupt)?
    } else if bytes.first() == Some(&b'{') {
        let file: StateFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if !(1..FIRST_BINARY).contains(&file.version) {
            return Err(corrupt(format!(
                "a JSON snapshot of version {}: JSON snapshots are versions 1 to {}",
                file.version,
                FIRST_BINARY - 1
            )));
        }
        file
    } else {
        return Err(corrupt(
            "neither a binary snapshot (no header) nor a JSON one".into(),
        ));
    };
    Ok(file)
}

fn decode_binary(bytes: &[u8]) -> Result<StateFile, String> {
    let Some(header) = bytes.get(..HEADER) else {
        return Err(format!("{} bytes, shorter than the header", bytes.len()));
    };
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if !(FIRST_BINARY..=STATE_VERSION).contains(&version) {
        return Err(format!(
            "binary snapshot version {version}, this build reads {FIRST_BINARY} to \
             {STATE_VERSION}"
        ));
    }
    let len = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(format!(
            "the header announces {len} bytes of snapshot, the file holds {}: cut short or \
             extended",
            payload.len()
        ));
    }
    if crc32fast::hash(payload) != word(12) {
        return Err("the snapshot's checksum does not match: damaged".into());
    }
    match postcard::take_from_bytes::<StateFile>(payload) {
        Ok((file, [])) if file.version == version => Ok(file),
        Ok((file, [])) => Err(format!(
            "header version {version}, payload version {}",
            file.version
        )),
        Ok((_, rest)) => Err(format!("{} bytes after the snapshot", rest.len())),
        Err(e) => Err(format!("the snapshot does not parse ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Config, LeaseRequest, Millis, NodeInfo, Scheduler};

    fn state() -> StateFile {
        let mut s = Scheduler::new(Config::default());
        for name in ["a", "b"] {
            let info = NodeInfo {
                name: name.into(),
                address: format!("{name}:1"),
                cores: 8,
                memory: 1 << 30,
                hosted: vec![],
            };
            s.register(info, Millis(10)).unwrap();
        }
        let split = LeaseRequest {
            allow_split: true,
            ..LeaseRequest::cores(12)
        };
        s.grant(split, Millis(11)).unwrap();
        let g = s.grant(LeaseRequest::cores(2), Millis(12)).unwrap();
        s.release(g.lease, &g.token).unwrap();
        StateFile {
            version: STATE_VERSION,
            saved_at_unix_ms: 99,
            log_seq: 7,
            snapshot: s.snapshot(Millis(20)),
        }
    }

    fn json(f: &StateFile) -> serde_json::Value {
        serde_json::to_value(f).unwrap()
    }

    #[test]
    fn a_binary_snapshot_round_trips_and_is_smaller_than_json() {
        let f = state();
        assert_eq!(f.snapshot.leases.len(), 1);
        assert_eq!(f.snapshot.ended.len(), 1);
        let bytes = encode(&f.snapshot, f.log_seq);
        assert!(bytes.starts_with(MAGIC));
        let back = decode(Path::new("s"), &bytes).unwrap();
        assert_eq!((back.version, back.log_seq), (STATE_VERSION, 7));
        let now = crate::resource_manager::state::unix_ms_now();
        assert!(back.saved_at_unix_ms.abs_diff(now) < 3_600_000);
        let back = StateFile {
            saved_at_unix_ms: f.saved_at_unix_ms,
            ..back
        };
        assert_eq!(json(&back), json(&f));
        assert!(bytes.len() < serde_json::to_vec(&f).unwrap().len());
    }

    #[test]
    fn json_snapshots_of_versions_1_to_3_are_read_and_later_ones_refused() {
        for version in 1..=3 {
            let f = StateFile { version, ..state() };
            let back = decode(Path::new("s"), &serde_json::to_vec(&f).unwrap()).unwrap();
            assert_eq!(json(&back), json(&f));
        }
        let f = StateFile {
            version: 4,
            ..state()
        };
        let e = decode(Path::new("s"), &serde_json::to_vec(&f).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("JSON snapshot of version 4"), "{e}");
    }

    #[test]
    fn a_damaged_binary_snapshot_is_refused_with_the_reason() {
        let f = state();
        let bytes = encode(&f.snapshot, f.log_seq);
        let refused = |b: &[u8]| decode(Path::new("rm-state"), b).unwrap_err().to_string();
        let mut flipped = bytes.clone();
        flipped[HEADER + 10] ^= 1;
        assert!(refused(&flipped).contains("checksum"));
        assert!(refused(&bytes[..bytes.len() - 1]).contains("cut short"));
        assert!(refused(&bytes[..HEADER - 1]).contains("shorter than the header"));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(refused(&longer).contains("cut short or extended"));
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(STATE_VERSION + 1).to_le_bytes());
        assert!(refused(&newer).contains("this build reads"));
        let e = refused(b"\0\0\0\0");
        assert!(e.contains("neither") && e.contains("rm-state"), "{e}");
        assert!(refused(b"").contains("neither"));
    }
}
