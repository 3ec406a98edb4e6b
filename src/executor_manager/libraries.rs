//! The manager's library cache: [`LibraryStore`] plus a memory of files already verified.
//!
//! The store checks a cached file's content hash on every lookup; hashing a 20 MB library costs
//! tens of milliseconds, too much for every cold start. A file this manager wrote or verified is
//! trusted again without hashing while its identity (inode, size, modification time) is
//! unchanged. The manager never loads a library: only executors do.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::function::{CachedLibrary, ContentHash, FunctionError, LibraryStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        let m = std::fs::symlink_metadata(path).ok()?;
        if !m.is_file() {
            return None;
        }
        Some(FileId {
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// Function libraries cached by content hash.
#[derive(Debug)]
pub struct Libraries {
    store: LibraryStore,
    verified: Mutex<HashMap<ContentHash, FileId>>,
}

impl Libraries {
    /// Opens (creating) the cache directory.
    pub fn open(dir: &Path) -> Result<Libraries, FunctionError> {
        Ok(Libraries {
            store: LibraryStore::open(dir)?,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// Stores `bytes` (blocking: writes and hashes).
    pub fn store(&self, bytes: &[u8]) -> Result<CachedLibrary, FunctionError> {
        let cached = self.store.store(bytes)?;
        self.remember(&cached.hash, &cached.path);
        Ok(cached)
    }

    /// The path of the cached library `hash`, verified (blocking: may hash the file).
    pub fn path(&self, hash: &ContentHash) -> Result<PathBuf, FunctionError> {
        let path = self.store.path_of(hash);
        let known = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .copied();
        if let (Some(known), Some(now)) = (known, FileId::of(&path)) {
            if known == now {
                return Ok(path);
            }
        }
        let path = self.store.verified_path(hash).inspect_err(|_| {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(hash);
        })?;
        self.remember(hash, &path);
        Ok(path)
    }

    fn remember(&self, hash: &ContentHash, path: &Path) {
        if let Some(id) = FileId::of(path) {
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*hash, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_notices_changes() {
        let dir = tempfile::tempdir().unwrap();
        let libs = Libraries::open(&dir.path().join("cache")).unwrap();
        let c = libs.store(b"some library").unwrap();
        assert_eq!(libs.path(&c.hash).unwrap(), c.path);
        // Replaced behind the manager's back (new inode): verified again, and refused.
        std::fs::remove_file(&c.path).unwrap();
        std::fs::write(&c.path, b"other bytes!").unwrap();
        assert!(matches!(
            libs.path(&c.hash),
            Err(FunctionError::NotCached { .. })
        ));
        assert!(matches!(
            libs.path(&ContentHash::of(b"never stored")),
            Err(FunctionError::NotCached { .. })
        ));
    }
}
