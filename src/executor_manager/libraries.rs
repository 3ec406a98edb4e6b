//! The manager's library cache (and, with [`Libraries::open_assets`], its asset cache): [`LibraryStore`] plus a memory of files already verified.
//!
//! The store checks a cached file's content hash on every lookup; hashing a 20 MB library costs
//! tens of milliseconds, too much for every cold start. A file this manager wrote or verified is
//! trusted again without hashing while its identity (inode, size, modification time) is
//! unchanged. The manager never loads a library: only executors do.
//!
//! The cache has a size limit ([`Libraries::evict_to`]): after each upload, the libraries used
//! least recently (by this manager: uploads and allocations; files of an earlier run count as
//! oldest) are removed until the cache fits, never the one just stored. A running executor
//! keeps its library mapped, so removing its file does not disturb it.

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
    /// Use order: hash → a counter value, higher is more recent.
    used: Mutex<(u64, HashMap<ContentHash, u64>)>,
}

impl Libraries {
    /// Opens (creating) the cache directory.
    pub fn open(dir: &Path) -> Result<Libraries, FunctionError> {
        Self::with_store(LibraryStore::open(dir)?)
    }

    /// Opens (creating) a cache directory of function assets: the same rules, files named
    /// `<hash>.asset` ([`crate::function::store::ASSET_SUFFIX`]).
    pub fn open_assets(dir: &Path) -> Result<Libraries, FunctionError> {
        Self::with_store(LibraryStore::open_with_suffix(
            dir,
            crate::function::store::ASSET_SUFFIX,
        )?)
    }

    fn with_store(store: LibraryStore) -> Result<Libraries, FunctionError> {
        Ok(Libraries {
            store,
            verified: Mutex::new(HashMap::new()),
            used: Mutex::new((0, HashMap::new())),
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

    /// The path of the cached file `hash` and its length, verified (blocking: may hash it).
    pub fn path_and_len(&self, hash: &ContentHash) -> Result<(PathBuf, u64), FunctionError> {
        let path = self.path(hash)?;
        let len = std::fs::metadata(&path)
            .map_err(|e| FunctionError::Io {
                op: "stat",
                path: path.clone(),
                source: e,
            })?
            .len();
        Ok((path, len))
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
                self.touch(hash);
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

    fn touch(&self, hash: &ContentHash) {
        let mut u = self.used.lock().unwrap_or_else(|p| p.into_inner());
        u.0 += 1;
        let n = u.0;
        u.1.insert(*hash, n);
    }

    /// Removes the least recently used libraries until the cache holds at most `limit` bytes,
    /// never `keep`; returns the hashes removed.
    pub fn evict_to(&self, limit: u64, keep: &ContentHash) -> Vec<ContentHash> {
        let Ok(entries) = std::fs::read_dir(self.store.dir()) else {
            return Vec::new();
        };
        let used = self
            .used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        let mut files: Vec<(u64, ContentHash, PathBuf, u64)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hash: ContentHash = name.strip_suffix(self.store.suffix())?.parse().ok()?;
                let len = e.metadata().ok()?.len();
                Some((used.get(&hash).copied().unwrap_or(0), hash, e.path(), len))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.3).sum();
        files.sort_unstable_by_key(|f| f.0);
        let mut removed = Vec::new();
        for (_, hash, path, len) in files {
            if total <= limit {
                break;
            }
            if &hash == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&hash);
                self.used
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .1
                    .remove(&hash);
                removed.push(hash);
            }
        }
        removed
    }

    fn remember(&self, hash: &ContentHash, path: &Path) {
        self.touch(hash);
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
    fn evicts_the_least_recently_used_down_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let libs = Libraries::open(&dir.path().join("cache")).unwrap();
        let a = libs.store(&[1u8; 100]).unwrap();
        let b = libs.store(&[2u8; 100]).unwrap();
        let c = libs.store(&[3u8; 100]).unwrap();
        // `a` used again: `b` is now the least recently used.
        libs.path(&a.hash).unwrap();
        assert_eq!(libs.evict_to(250, &c.hash), vec![b.hash]);
        assert!(!b.path.exists() && a.path.exists() && c.path.exists());
        // Never the one to keep, even when it alone is over the limit.
        assert_eq!(libs.evict_to(0, &c.hash), vec![a.hash]);
        assert!(c.path.exists());
    }

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
