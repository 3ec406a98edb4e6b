#![allow(unsafe_code)] // Mapping asset files; the one block says why it is sound.

//! Function assets: named bytes an allocation ships beside its library, for the library's init
//! function (`rfaas_init`, see [`rfaas_function::init`]).
//!
//! * Names: [`check_asset_name`] (1 to [`MAX_ASSET_NAME`] bytes of `A-Z a-z 0-9 . _ -`, not
//!   starting with a dot), checked by the client and again by the executor manager.
//! * The executor manager caches assets by content hash like libraries (its own directory,
//!   `<cache dir>/assets`, same upload limit, same least-recently-used eviction) and hands the
//!   executor the verified files.
//! * The executor maps each file read-only ([`MappedAssets::map`]) and keeps the mappings for
//!   the life of the process: the cache never rewrites a file in place (a replaced file gets a
//!   new inode, an evicted one is unlinked), so the bytes a library was given stay unchanged,
//!   and a C library may keep pointers into them.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rfaas_function::init::RawAsset;

use super::{FunctionError, Result};

/// Longest asset name, bytes.
pub const MAX_ASSET_NAME: usize = 128;

/// Checks an asset name: 1 to [`MAX_ASSET_NAME`] bytes of ASCII letters, digits, `.`, `_` and
/// `-`, not starting with a dot. The error says what is wrong, for a person.
pub fn check_asset_name(name: &str) -> std::result::Result<(), String> {
    let shown: String = name.chars().take(40).collect();
    if name.is_empty() || name.len() > MAX_ASSET_NAME {
        return Err(format!(
            "invalid asset name {shown:?}: 1 to {MAX_ASSET_NAME} bytes"
        ));
    }
    if name.starts_with('.') {
        return Err(format!(
            "invalid asset name {shown:?}: must not start with a dot"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid asset name {shown:?}: {c:?} is not allowed (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// One mapped asset.
struct Mapped {
    name: CString,
    /// `None` for an empty file (nothing to map).
    map: Option<memmap2::Mmap>,
}

/// The assets of an executor, mapped read-only; [`MappedAssets::raw`] is what the init entry
/// gets. Keep it alive as long as the library may use the bytes (an executor: for good).
#[derive(Default)]
pub struct MappedAssets {
    assets: Vec<Mapped>,
}

impl std::fmt::Debug for MappedAssets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.assets.iter().map(|a| (&a.name, a.len())))
            .finish()
    }
}

impl Mapped {
    fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }
}

impl MappedAssets {
    /// Maps `(name, path, size)` for each asset, in order. A name that is not valid, a file that
    /// is missing, a symlink, or not exactly `size` bytes long is an error naming the asset.
    pub fn map<'a>(assets: impl IntoIterator<Item = (&'a str, &'a Path, u64)>) -> Result<Self> {
        let mut out = Vec::new();
        for (name, path, size) in assets {
            check_asset_name(name).map_err(|reason| FunctionError::Asset {
                name: name.to_string(),
                reason,
            })?;
            let file: File = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| FunctionError::io("open asset", path, e))?;
            let len = file
                .metadata()
                .map_err(|e| FunctionError::io("stat asset", path, e))?
                .len();
            if len != size {
                return Err(FunctionError::Asset {
                    name: name.to_string(),
                    reason: format!("{} has {len} bytes, not {size}", path.display()),
                });
            }
            let map = if len == 0 {
                None
            } else {
                // SAFETY: a read-only private mapping of a file of the executor manager's cache:
                // written once (atomically, by rename) and never modified in place, only
                // replaced or unlinked, neither of which changes the mapped pages; the mapping
                // is kept as long as anything may read it.
                Some(
                    unsafe { memmap2::Mmap::map(&file) }
                        .map_err(|e| FunctionError::io("map asset", path, e))?,
                )
            };
            out.push(Mapped {
                name: CString::new(name).expect("checked names have no NUL"),
                map,
            });
        }
        Ok(MappedAssets { assets: out })
    }

    /// Number of assets.
    pub fn len(&self) -> usize {
        self.assets.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }

    /// The bytes of the asset named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.assets
            .iter()
            .find(|a| a.name.as_bytes() == name.as_bytes())
            .map(|a| a.map.as_deref().unwrap_or(&[]))
    }

    /// The assets as the init entry takes them (`struct rfaas_asset`), valid while `self` is.
    pub fn raw(&self) -> Vec<RawAsset> {
        self.assets
            .iter()
            .map(|a| RawAsset {
                name: a.name.as_ptr(),
                data: a.map.as_ref().map_or(std::ptr::null(), |m| m.as_ptr()),
                len: a.len() as u64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for ok in [
            "model",
            "model.onnx",
            "a",
            "labels_v2-final.txt",
            &"x".repeat(128),
        ] {
            assert_eq!(check_asset_name(ok), Ok(()), "{ok}");
        }
        for (bad, word) in [
            ("", "1 to 128"),
            (&"x".repeat(129)[..], "1 to 128"),
            (".hidden", "dot"),
            ("a/b", "'/'"),
            ("a b", "' '"),
            ("caf\u{e9}", "'\u{e9}'"),
            ("nul\0", "'\\0'"),
        ] {
            let e = check_asset_name(bad).unwrap_err();
            assert!(e.contains(word), "{bad:?}: {e}");
        }
    }

    #[test]
    fn maps_files_and_checks_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"weights").unwrap();
        std::fs::write(&b, b"").unwrap();
        let m = MappedAssets::map([("model", a.as_path(), 7), ("empty", b.as_path(), 0)]).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("model"), Some(&b"weights"[..]));
        assert_eq!(m.get("empty"), Some(&b""[..]));
        assert_eq!(m.get("none"), None);
        let raw = m.raw();
        assert_eq!((raw[0].len, raw[1].len), (7, 0));
        assert!(raw[1].data.is_null());

        let e = MappedAssets::map([("model", a.as_path(), 8)]).unwrap_err();
        assert!(e.to_string().contains("not 8"), "{e}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        assert!(MappedAssets::map([("model", link.as_path(), 7)]).is_err());
        let e = MappedAssets::map([("../x", a.as_path(), 7)]).unwrap_err();
        assert!(e.to_string().contains("invalid asset name"), "{e}");
    }
}
