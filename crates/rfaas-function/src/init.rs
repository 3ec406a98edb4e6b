//! Function state loaded once: named assets and the optional init entry.
//!
//! # The ABI
//!
//! ```c
//! typedef struct rfaas_asset {
//!     const char    *name;  /* NUL-terminated UTF-8 name, as the client named the asset */
//!     const uint8_t *data;  /* the asset's bytes */
//!     uint64_t       len;   /* their number */
//! } rfaas_asset;
//!
//! /* Optional. Called once per executor process, before its workers take the first
//!  * invocation, with every asset the allocation shipped (n_assets may be 0). Returns 0 when
//!  * the library is ready; anything else fails the allocation, and the client gets an
//!  * allocation error carrying the NUL-terminated message the function wrote into `err`
//!  * (at most err_cap bytes including the NUL; err_cap is at least 1). */
//! int32_t rfaas_init(const rfaas_asset *assets, uint32_t n_assets, char *err, uint32_t err_cap);
//! ```
//!
//! The rfaas executor keeps the asset bytes mapped, unchanged, for the life of the process, so a
//! C library may keep pointers into them. The safe Rust side ([`Assets`]) does not rely on that:
//! it hands out slices that live as long as the init call, and a Rust function keeps what it needs
//! (parsed or copied) in a `static` such as [`std::sync::OnceLock`].
//!
//! Libraries without `rfaas_init` work exactly as before: nothing is called.
//!
//! # Rust
//!
//! ```
//! use std::sync::OnceLock;
//! use rfaas_function::init::Assets;
//!
//! static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
//!
//! fn init(assets: &Assets<'_>) -> Result<(), String> {
//!     let table = assets.get("table").ok_or("asset 'table' missing")?;
//!     TABLE.set(table.to_vec()).map_err(|_| "initialised twice".to_string())
//! }
//!
//! /// Looks each input byte up in the table.
//! fn lookup(input: &[u8], output: &mut [u8]) -> usize {
//!     let Some(table) = TABLE.get() else { return usize::MAX }; // not initialised: too large
//!     for (o, i) in output.iter_mut().zip(input) {
//!         *o = table.get(*i as usize).copied().unwrap_or(0);
//!     }
//!     input.len()
//! }
//!
//! rfaas_function::export_init!(init);
//! rfaas_function::export_function!(lookup, lookup);
//! ```

use std::ffi::{c_char, CStr};

/// Symbol of a library's optional init entry ([`InitFunction`]).
pub const INIT_SYMBOL: &str = "rfaas_init";

/// One asset as the executor passes it to the init entry: `struct rfaas_asset` in C.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawAsset {
    /// NUL-terminated UTF-8 name.
    pub name: *const c_char,
    /// The asset's bytes (may be null when `len` is 0).
    pub data: *const u8,
    /// Number of bytes at `data`.
    pub len: u64,
}

/// The init entry: `int32_t rfaas_init(const rfaas_asset *assets, uint32_t n_assets, char *err,
/// uint32_t err_cap)`. Returns [`INIT_OK`] when the library is ready.
pub type InitFunction = unsafe extern "C" fn(
    assets: *const RawAsset,
    n_assets: u32,
    err: *mut c_char,
    err_cap: u32,
) -> i32;

/// What the init entry returns when the library is ready.
pub const INIT_OK: i32 = 0;

/// What [`export_init!`](crate::export_init) returns when the Rust init function returned an
/// error (its message is in the error buffer).
pub const INIT_FAILED: i32 = 1;

/// What [`export_init!`](crate::export_init) returns when the host passed invalid arguments (a
/// null pointer, a name that is not UTF-8).
pub const INIT_BAD_ARGUMENTS: i32 = 2;

/// What [`export_init!`](crate::export_init) returns when the Rust init function panicked.
pub const INIT_PANICKED: i32 = 3;

/// The assets an allocation shipped, by name, as the init function sees them.
#[derive(Debug, Clone, Default)]
pub struct Assets<'a> {
    entries: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Assets<'a> {
    /// Assets from name and bytes pairs (for hosts and tests; the executor builds them from
    /// [`RawAsset`]s).
    pub fn new(entries: Vec<(&'a str, &'a [u8])>) -> Self {
        Assets { entries }
    }

    /// The bytes of the asset named `name`, if the allocation shipped one.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
    }

    /// Every asset, in the order the client listed them.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.entries.iter().copied()
    }

    /// Number of assets.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the allocation shipped no asset.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Runs a Rust init function for the exported entry: checks the arguments, builds [`Assets`],
/// catches a panic and writes an error message into the host's buffer. Not public API: called by
/// the expansion of [`export_init!`](crate::export_init).
#[doc(hidden)]
#[allow(unsafe_code)]
pub fn __run_init<F>(f: F, assets: &[RawAsset], err: &mut [u8]) -> i32
where
    F: FnOnce(&Assets<'_>) -> Result<(), String>,
{
    let mut entries = Vec::with_capacity(assets.len());
    for (i, raw) in assets.iter().enumerate() {
        // SAFETY: the ABI promises a NUL-terminated name and `len` readable bytes at `data` (or a
        // null `data` with `len` 0), valid for at least the duration of this call; null names
        // and data are checked before use.
        match unsafe { raw_asset(raw) } {
            Some(entry) => entries.push(entry),
            None => {
                write_message(err, &format!("asset {i}: null pointer or name not UTF-8"));
                return INIT_BAD_ARGUMENTS;
            }
        }
    }
    let assets = Assets::new(entries);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&assets))) {
        Ok(Ok(())) => INIT_OK,
        Ok(Err(message)) => {
            write_message(err, &message);
            INIT_FAILED
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".to_string());
            write_message(err, &format!("init panicked: {what}"));
            INIT_PANICKED
        }
    }
}

/// Reads one [`RawAsset`]; `None` for a null name, a null `data` with a non-zero length, or a
/// name that is not UTF-8.
///
/// # Safety
/// `raw.name` must be null or point to a NUL-terminated string, and `raw.data` null or valid for
/// `raw.len` bytes, both for `'a`.
#[allow(unsafe_code)]
unsafe fn raw_asset<'a>(raw: &RawAsset) -> Option<(&'a str, &'a [u8])> {
    if raw.name.is_null() {
        return None;
    }
    // SAFETY: non-null (checked) and NUL-terminated by the caller's contract.
    let name = unsafe { CStr::from_ptr(raw.name) }.to_str().ok()?;
    let len = usize::try_from(raw.len).ok()?;
    let data: &[u8] = if len == 0 {
        &[]
    } else if raw.data.is_null() {
        return None;
    } else {
        // SAFETY: non-null (checked) and valid for `len` bytes by the caller's contract.
        unsafe { std::slice::from_raw_parts(raw.data, len) }
    };
    Some((name, data))
}

/// Writes `message` into `err` as a NUL-terminated string, cut at a character boundary so that
/// it fits (an empty buffer gets nothing).
fn write_message(err: &mut [u8], message: &str) {
    let Some(room) = err.len().checked_sub(1) else {
        return;
    };
    let mut end = message.len().min(room);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    err[..end].copy_from_slice(&message.as_bytes()[..end]);
    err[end] = 0;
}

/// Exports a safe Rust init function as the library's `rfaas_init` entry (see [the module
/// documentation](crate::init)).
///
/// ```text
/// rfaas_function::export_init!(rust_init_function);  // or rfaas::export_init!
/// ```
///
/// `rust_init_function` is callable as `fn(&Assets<'_>) -> Result<(), String>`. It runs once
/// per executor process before the first invocation; an `Err` (or a panic) fails the allocation
/// and its message reaches the client. A library exports at most one init function.
#[macro_export]
macro_rules! export_init {
    ($func:expr $(,)?) => {
        const _: () = {
            /// rfaas init entry: called once per executor with the allocation's assets.
            #[allow(unsafe_code)]
            #[export_name = "rfaas_init"]
            pub unsafe extern "C" fn __rfaas_init_entry(
                assets: *const $crate::init::RawAsset,
                n_assets: u32,
                err: *mut ::core::ffi::c_char,
                err_cap: u32,
            ) -> i32 {
                let assets: &[$crate::init::RawAsset] = if n_assets == 0 {
                    &[]
                } else if assets.is_null() {
                    return $crate::init::INIT_BAD_ARGUMENTS;
                } else {
                    // SAFETY: non-null (checked) and valid for `n_assets` entries by the ABI.
                    unsafe { ::core::slice::from_raw_parts(assets, n_assets as usize) }
                };
                let err: &mut [u8] = if err.is_null() || err_cap == 0 {
                    &mut []
                } else {
                    // SAFETY: non-null (checked) and writable for `err_cap` bytes by the ABI.
                    unsafe { ::core::slice::from_raw_parts_mut(err.cast::<u8>(), err_cap as usize) }
                };
                $crate::init::__run_init(|a| ($func)(a), assets, err)
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn raw(name: &CString, data: &[u8]) -> RawAsset {
        RawAsset {
            name: name.as_ptr(),
            data: data.as_ptr(),
            len: data.len() as u64,
        }
    }

    fn message(err: &[u8]) -> String {
        CStr::from_bytes_until_nul(err)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn init_sees_assets_by_name() {
        let (a, b) = (
            CString::new("model").unwrap(),
            CString::new("labels").unwrap(),
        );
        let assets = [raw(&a, b"weights"), raw(&b, b"")];
        let mut err = [0u8; 64];
        let mut seen = Vec::new();
        let status = __run_init(
            |assets| {
                seen = assets
                    .iter()
                    .map(|(n, d)| (n.to_string(), d.to_vec()))
                    .collect();
                assert_eq!(assets.get("model"), Some(&b"weights"[..]));
                assert_eq!(assets.get("absent"), None);
                Ok(())
            },
            &assets,
            &mut err,
        );
        assert_eq!(status, INIT_OK);
        assert_eq!(
            seen,
            vec![
                ("model".into(), b"weights".to_vec()),
                ("labels".into(), vec![])
            ]
        );
    }

    #[test]
    fn error_and_panic_reach_the_buffer() {
        let mut err = [0xffu8; 16];
        let status = __run_init(|_| Err("no model here, sorry".into()), &[], &mut err);
        assert_eq!(status, INIT_FAILED);
        assert_eq!(message(&err), "no model here, ");
        let status = __run_init(|_| panic!("boom"), &[], &mut err);
        assert_eq!(status, INIT_PANICKED);
        assert_eq!(message(&err), "init panicked: ");
        // An empty buffer gets nothing and is not written.
        assert_eq!(__run_init(|_| Err("x".into()), &[], &mut []), INIT_FAILED);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let mut err = [0u8; 64];
        let null_name = RawAsset {
            name: std::ptr::null(),
            data: std::ptr::null(),
            len: 0,
        };
        let called = std::cell::Cell::new(false);
        let status = __run_init(
            |_| {
                called.set(true);
                Ok(())
            },
            &[null_name],
            &mut err,
        );
        assert_eq!(status, INIT_BAD_ARGUMENTS);
        assert!(!called.get());
        assert!(message(&err).contains("asset 0"));
        let name = CString::new("x").unwrap();
        let null_data = RawAsset {
            name: name.as_ptr(),
            data: std::ptr::null(),
            len: 4,
        };
        assert_eq!(
            __run_init(|_| Ok(()), &[null_data], &mut err),
            INIT_BAD_ARGUMENTS
        );
    }

    #[test]
    fn message_is_cut_at_a_char_boundary() {
        let mut err = [0u8; 4];
        write_message(&mut err, "aéé"); // 'a' + 2 bytes + 2 bytes: only "aé" fits in 3
        assert_eq!(message(&err), "aé");
    }
}
