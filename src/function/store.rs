//! [`LibraryStore`]: function libraries on disk, one file per content hash.
//!
//! The executor manager receives a library as bytes and writes it once to
//! `<cache dir>/<sha256 hex>.so`; executors load it from there. Nothing here loads code: the
//! manager never runs a library's initialisers in its own process.
//!
//! * The directory is created with mode 0700 and refused when it is not owned by this user or can
//!   be written by group or others (a file planted there would be loaded as code).
//! * A file is written atomically: to a temporary file (mode 0700, `O_EXCL`) in the same
//!   directory, then renamed over `<hex>.so`. A library being loaded or running is never
//!   rewritten in place: a replaced file gets a new inode and the old mapping stays intact.
//! * An existing file is trusted only after its content hash is checked; a file that does not
//!   match (truncated by a crash, tampered with, a symlink, owned by someone else) is replaced.
//!   The temporary file is not fsync'ed: a crash may leave a short file, which this check catches.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{ContentHash, FunctionError, Result};
use crate::atomic_write::{write_atomic, Durability};

/// Where a stored library came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The file did not exist and was written.
    Written,
    /// A file with the same content hash was already there and was reused unchanged.
    Reused,
    /// A file was there but its content did not match its name; it was replaced.
    Replaced,
}

/// A library in the on-disk cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLibrary {
    /// Its content hash.
    pub hash: ContentHash,
    /// The cached file, `<dir>/<hash>.so` (absolute).
    pub path: PathBuf,
    /// Whether this call wrote it.
    pub outcome: StoreOutcome,
}

/// The on-disk cache of function libraries, keyed by content hash. Stateless: every method
/// checks the disk; see the [module documentation](self) for the rules.
#[derive(Debug, Clone)]
pub struct LibraryStore {
    dir: PathBuf,
    /// File name suffix after the hash: `.so` for libraries, [`ASSET_SUFFIX`] for assets.
    suffix: &'static str,
}

/// File name suffix of a library in the cache (`<hash>.so`).
pub const LIBRARY_SUFFIX: &str = ".so";
/// File name suffix of a function asset in its cache (`<hash>.asset`): same rules as libraries,
/// a directory of its own.
pub const ASSET_SUFFIX: &str = ".asset";

/// What is at a library's path.
enum Existing {
    Missing,
    Matches,
    Differs,
}

impl LibraryStore {
    /// Opens (creating it with mode 0700 if needed) the cache directory `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_suffix(dir, LIBRARY_SUFFIX)
    }

    /// [`Self::open`] for files named `<hash><suffix>` ([`ASSET_SUFFIX`] for function assets).
    pub fn open_with_suffix(dir: impl AsRef<Path>, suffix: &'static str) -> Result<Self> {
        let dir = dir.as_ref();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| FunctionError::io("create directory", dir, e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| FunctionError::io("resolve directory", dir, e))?;
        let meta = fs::metadata(&dir).map_err(|e| FunctionError::io("stat", &dir, e))?;
        let unsafe_dir = |reason: String| FunctionError::UnsafeCacheDir {
            path: dir.clone(),
            reason,
        };
        if !meta.is_dir() {
            return Err(unsafe_dir("not a directory".into()));
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(unsafe_dir(format!(
                "owned by uid {}, not by this user (uid {euid})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(unsafe_dir(format!(
                "mode {:o} lets group or others write; use chmod 700",
                meta.mode() & 0o7777
            )));
        }
        Ok(LibraryStore { dir, suffix })
    }

    /// The cache directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the library with this hash lives (whether or not it is there).
    pub fn path_of(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(format!("{hash}{}", self.suffix))
    }

    /// The file name suffix after the hash.
    pub fn suffix(&self) -> &'static str {
        self.suffix
    }

    /// Stores `bytes`, writing the file only if no file with the same content is there.
    pub fn store(&self, bytes: &[u8]) -> Result<CachedLibrary> {
        let hash = ContentHash::of(bytes);
        let path = self.path_of(&hash);
        let outcome = match self.check(&path, &hash)? {
            Existing::Matches => StoreOutcome::Reused,
            Existing::Missing => {
                self.write(&path, bytes)?;
                StoreOutcome::Written
            }
            Existing::Differs => {
                tracing::warn!(path = %path.display(), "cached function library does not match its hash; replacing it");
                self.write(&path, bytes)?;
                StoreOutcome::Replaced
            }
        };
        Ok(CachedLibrary {
            hash,
            path,
            outcome,
        })
    }

    /// The path of the cached library with this hash, after checking its content. A file that
    /// does not match is removed and reported as [`FunctionError::NotCached`].
    pub fn verified_path(&self, hash: &ContentHash) -> Result<PathBuf> {
        let path = self.path_of(hash);
        match self.check(&path, hash)? {
            Existing::Matches => Ok(path),
            Existing::Missing => Err(self.not_cached(hash)),
            Existing::Differs => {
                tracing::warn!(path = %path.display(), "cached function library does not match its hash; removing it");
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(FunctionError::io("remove", &path, e)),
                }
                Err(self.not_cached(hash))
            }
        }
    }

    /// Whether a correct copy of the library with this hash is cached.
    pub fn contains(&self, hash: &ContentHash) -> Result<bool> {
        Ok(matches!(
            self.check(&self.path_of(hash), hash)?,
            Existing::Matches
        ))
    }

    fn not_cached(&self, hash: &ContentHash) -> FunctionError {
        FunctionError::NotCached {
            hash: *hash,
            dir: self.dir.clone(),
        }
    }

    /// Checks the file at `path` against `hash` without following a symlink.
    fn check(&self, path: &Path, hash: &ContentHash) -> Result<Existing> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Missing),
            // ELOOP: a symlink; never trusted, replaced by the rename.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Existing::Differs),
            Err(e) => return Err(FunctionError::io("open", path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| FunctionError::io("stat", path, e))?;
        if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Ok(Existing::Differs);
        }
        let found = ContentHash::of_reader(io::BufReader::with_capacity(1 << 16, file))
            .map_err(|e| FunctionError::io("read", path, e))?;
        Ok(if found == *hash {
            Existing::Matches
        } else {
            Existing::Differs
        })
    }

    /// Writes `bytes` to a temporary file and renames it to `path` (mode 0700).
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        write_atomic(path, bytes, 0o700, Durability::Atomic)
            .map_err(|e| FunctionError::io("write", path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_reuse_replace_and_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LibraryStore::open(tmp.path().join("cache")).unwrap();
        let mode = fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let a = store.store(b"library a").unwrap();
        assert_eq!(a.outcome, StoreOutcome::Written);
        assert_eq!(a.path, store.path_of(&ContentHash::of(b"library a")));
        assert_eq!(fs::read(&a.path).unwrap(), b"library a");
        let ino = fs::metadata(&a.path).unwrap().ino();

        let again = store.store(b"library a").unwrap();
        assert_eq!(again.outcome, StoreOutcome::Reused);
        assert_eq!(fs::metadata(&a.path).unwrap().ino(), ino);
        assert!(store.contains(&a.hash).unwrap());
        assert_eq!(store.verified_path(&a.hash).unwrap(), a.path);

        fs::write(&a.path, b"library b").unwrap();
        assert!(!store.contains(&a.hash).unwrap());
        let repaired = store.store(b"library a").unwrap();
        assert_eq!(repaired.outcome, StoreOutcome::Replaced);
        assert_eq!(fs::read(&a.path).unwrap(), b"library a");

        fs::write(&a.path, b"tampered").unwrap();
        assert!(matches!(
            store.verified_path(&a.hash),
            Err(FunctionError::NotCached { .. })
        ));
        assert!(!a.path.exists());

        // A symlink planted under the hash's name is replaced, never followed.
        let elsewhere = tmp.path().join("elsewhere");
        fs::write(&elsewhere, b"library a").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &a.path).unwrap();
        assert_eq!(
            store.store(b"library a").unwrap().outcome,
            StoreOutcome::Replaced
        );
        assert!(!fs::symlink_metadata(&a.path).unwrap().is_symlink());

        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn refuses_writable_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("open");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            LibraryStore::open(&dir),
            Err(FunctionError::UnsafeCacheDir { .. })
        ));
    }
}
