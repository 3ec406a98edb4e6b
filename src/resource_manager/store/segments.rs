//! Log segments: files `STATE.log.SEQ` beside the snapshot file `STATE`, where SEQ (20 digits)
//! is the sequence number of the first record written to it. Records only ever go to the
//! newest segment; compaction starts a new one and deletes the older ones once a snapshot
//! covers them.

use std::path::{Path, PathBuf};

/// The directory of `state` (`.` for a bare file name).
pub fn dir_of(state: &Path) -> &Path {
    match state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn prefix(state: &Path) -> String {
    format!(
        "{}.log.",
        state
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

/// The segment of `state` whose first record is `seq`.
pub fn path(state: &Path, seq: u64) -> PathBuf {
    dir_of(state).join(format!("{}{seq:020}", prefix(state)))
}

/// The segments of `state`, oldest first: `(first seq, path)`.
pub fn list(state: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let prefix = prefix(state);
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir_of(state))? {
        let e = e?;
        let name = e.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, e.path()));
    }
    out.sort_unstable();
    Ok(out)
}

/// Makes a directory entry change (a new or removed segment, a renamed snapshot) durable.
pub fn sync_dir(state: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir_of(state))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_listed_in_order_and_strangers_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("rm.json");
        for seq in [17, 3, 250] {
            std::fs::write(path(&state, seq), b"").unwrap();
        }
        for other in [
            "rm.json",
            "rm.json.log.12",
            "other.json.log.00000000000000000001",
        ] {
            std::fs::write(dir.path().join(other), b"").unwrap();
        }
        let got: Vec<u64> = list(&state).unwrap().into_iter().map(|s| s.0).collect();
        assert_eq!(got, [3, 17, 250]);
        assert!(path(&state, 3).ends_with("rm.json.log.00000000000000000003"));
    }
}
