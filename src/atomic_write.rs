//! Replacing a file atomically: the one way rfaas writes a file that others read while it
//! changes (the resource manager's state file, ready files, `cluster.json`, the function
//! library cache).
//!
//! The bytes go to a uniquely named temporary file in the same directory (created by the
//! `tempfile` crate with the requested mode, removed if anything fails), which is then renamed
//! over the target: a reader sees the old file or the new one, never a part. A process killed
//! with SIGKILL while writing leaves its temporary behind: temporaries are named
//! `.<target>.tmp-<pid>-<random>`, so [`remove_stale_temporaries`] (run by the daemons when they
//! start) removes those of dead writers, and never one that a live process is still writing. With
//! [`Durability::Synced`] the file is fsynced before the rename and its directory after it,
//! so the new content survives a power loss once the call returns.

use std::fs::Permissions;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Serialize;

/// Whether a write waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Atomic, not fsynced (a crash may lose the new content, never half of it).
    Atomic,
    /// Atomic and fsynced: file before the rename, directory after it.
    Synced,
}

/// Replaces `path` with `bytes`; the new file has permission bits `mode` (e.g. `0o600`).
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let target = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{target}{TMP_MARK}{}-", std::process::id());
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if durability == Durability::Synced {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durability == Durability::Synced {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What separates a temporary's target from its writer's pid: `.<target>.tmp-<pid>-<random>`.
const TMP_MARK: &str = ".tmp-";

/// The pid of the process that wrote temporary `name`, if `name` is one.
fn writer_of(name: &str) -> Option<i32> {
    let rest = name.strip_prefix('.')?;
    let (_, after) = rest.rsplit_once(TMP_MARK)?;
    let (pid, _) = after.split_once('-')?;
    pid.parse().ok().filter(|p| *p > 0)
}

/// Removes from `dir` the temporaries of [`write_atomic`] whose writer is gone (killed while
/// writing); returns how many. Those of live processes stay: they may still be renamed.
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(writer_of) else {
            continue;
        };
        // A zombie is gone too (a writer killed and not reaped yet).
        if !crate::cluster::procs::alive(pid) && entry.file_type()?.is_file() {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Replaces `path` with `value` as JSON (pretty-printed: these files are read by people too).
pub fn write_json_atomic<T: Serialize>(
    path: &Path,
    value: &T,
    mode: u32,
    durability: Durability,
) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &json, mode, durability)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_the_file_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"old").unwrap();
        write_json_atomic(
            &path,
            &serde_json::json!({"a": 1}),
            0o600,
            Durability::Synced,
        )
        .unwrap();
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, serde_json::json!({"a": 1}));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        write_atomic(&path, b"\x7fELF", 0o700, Durability::Atomic).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\x7fELF");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o700);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn stale_temporaries_of_dead_writers_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        // A writer that is surely gone: a child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let stale = dir.path().join(format!(".state.json.tmp-{dead}-abc123"));
        let live = dir.path().join(format!(".state.json.tmp-{me}-def456"));
        let other = dir.path().join(".tmp-notours");
        for p in [&stale, &live, &other] {
            std::fs::write(p, b"partial").unwrap();
        }
        assert_eq!(writer_of(&format!(".a.so.tmp-{dead}-x")), Some(dead as i32));
        assert_eq!(writer_of("a.so"), None);
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert!(!stale.exists() && live.exists() && other.exists());
    }

    #[test]
    fn a_missing_directory_is_an_error_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("f.json");
        let err = write_atomic(&path, b"x", 0o600, Durability::Atomic).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!path.exists());
    }
}
