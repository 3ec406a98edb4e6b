#![allow(unsafe_code)] // Loading and calling native code; every block says why it is sound.

//! Loading function libraries and calling their functions.
//!
//! * [`FunctionLibrary`]: one loaded library (`dlopen` with `RTLD_NOW | RTLD_LOCAL` from the
//!   on-disk cache, after its content hash is checked).
//! * [`FunctionTable`]: the functions an allocation asked for, **in the order asked**: index `i`
//!   is the `i`-th requested name, so the client knows every index without opening the library
//!   (rFaaS derived indices from the library's sorted ELF symbols; rfaas never does).
//! * [`LibraryCache`]: a process-wide cache keyed by content hash, so each library is written and
//!   loaded once.
//!
//! # Trust
//!
//! Loading a library runs its initialisers and calling a function runs its code: a function
//! library is trusted native code, isolated only by the process that loads it (one executor
//! process per allocation, so a crashing function takes down its own allocation only). In
//! particular a C function is not told its output capacity and must not write past it; rfaas
//! checks every returned length before anything is sent, but cannot undo a write. Functions
//! exported with [`export_function!`](crate::export_function) see their capacity as a slice and
//! cannot overflow it.
//!
//! Names resolve only to functions *defined by the library itself*: a name that `dlsym` would
//! find in one of its dependencies (`malloc`, say) or that names data is an unknown function.

use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use super::abi::{
    ExtendedFunction, FunctionStatus, RawFunction, EXTENDED_SYMBOL_PREFIX, EXT_STATUS_OK,
};
use super::assets::MappedAssets;
use super::store::{CachedLibrary, LibraryStore};
use super::{ContentHash, FunctionError, Result};
use rfaas_function::init::{InitFunction, INIT_OK, INIT_SYMBOL};

/// Bytes of the error buffer an init function may write its message into.
pub const INIT_ERROR_CAPACITY: usize = 4096;

/// A loaded function library. Cheap to clone; unloaded when the last clone and the last
/// [`Function`] resolved from it are dropped.
#[derive(Clone)]
pub struct FunctionLibrary {
    hash: ContentHash,
    path: PathBuf,
    lib: Arc<Library>,
}

impl std::fmt::Debug for FunctionLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionLibrary")
            .field("hash", &self.hash)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FunctionLibrary {
    /// Stores `bytes` in the cache at `cache_dir` (see [`LibraryStore`]: written once per content
    /// hash, atomically, verified on reuse) and loads it.
    pub fn load(bytes: &[u8], cache_dir: &Path) -> Result<Self> {
        let cached = LibraryStore::open(cache_dir)?.store(bytes)?;
        Self::open_file(cached.hash, cached.path)
    }

    /// Loads the library with content hash `hash` from the cache at `cache_dir`, after checking
    /// its content ([`FunctionError::NotCached`] when it is missing or corrupt).
    pub fn open_cached(cache_dir: &Path, hash: &ContentHash) -> Result<Self> {
        let path = LibraryStore::open(cache_dir)?.verified_path(hash)?;
        Self::open_file(*hash, path)
    }

    /// Loads the library at `path` without hashing it again: the caller vouches that it holds
    /// the library with content hash `hash`. An executor uses this for the file its executor
    /// manager verified just before spawning it (hashing a multi-megabyte library costs
    /// milliseconds of every cold start); anyone else should use [`Self::open_cached`].
    pub fn open_verified(hash: ContentHash, path: PathBuf) -> Result<Self> {
        Self::open_file(hash, path)
    }

    fn open_file(hash: ContentHash, path: PathBuf) -> Result<Self> {
        // SAFETY: loading runs the library's initialisers. A function library is trusted code by
        // the contract of this module (see "Trust"); the file is the one whose content hash was
        // just checked, in a directory only this user can write. RTLD_NOW makes a missing symbol
        // fail here rather than in the middle of a call; RTLD_LOCAL keeps its symbols from
        // interposing on other libraries.
        let lib =
            unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) }.map_err(|source| {
                FunctionError::Load {
                    path: path.clone(),
                    source,
                }
            })?;
        tracing::debug!(%hash, path = %path.display(), "loaded function library");
        Ok(FunctionLibrary {
            hash,
            path,
            lib: Arc::new(lib),
        })
    }

    /// The library's content hash.
    pub fn hash(&self) -> ContentHash {
        self.hash
    }

    /// The cached file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves one function by name.
    pub fn function(&self, name: &str) -> Result<Function> {
        let invalid = |reason| FunctionError::InvalidName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        if name.starts_with(EXTENDED_SYMBOL_PREFIX) || name == INIT_SYMBOL {
            return Err(invalid("names an rfaas-internal entry point"));
        }
        let unknown = || FunctionError::UnknownFunction {
            name: name.to_owned(),
        };
        let plain = self.lookup(name).ok_or_else(unknown)?;
        let extended = self.lookup(&format!("{EXTENDED_SYMBOL_PREFIX}{name}"));
        let entry = match extended {
            // SAFETY: a symbol defined by this library under the extended prefix is an entry
            // generated by `export_function!`, whose signature is `ExtendedFunction`. Function
            // pointers have the size of data pointers on every platform rfaas supports.
            Some(ptr) => Entry::Extended(unsafe {
                std::mem::transmute::<*mut c_void, ExtendedFunction>(ptr)
            }),
            // SAFETY: the rFaaS ABI: every function a library exports for rFaaS has the signature
            // `RawFunction`; the pointer is a function defined by the library (checked by
            // `lookup`).
            None => Entry::Raw(unsafe { std::mem::transmute::<*mut c_void, RawFunction>(plain) }),
        };
        Ok(Function {
            name: name.to_owned(),
            entry,
            _lib: Arc::clone(&self.lib),
        })
    }

    /// Resolves `names`, in order: index `i` of the table is `names[i]`. The first name the
    /// library does not define is returned as [`FunctionError::UnknownFunction`].
    pub fn resolve<S: AsRef<str>>(&self, names: &[S]) -> Result<FunctionTable> {
        let functions = names
            .iter()
            .map(|n| self.function(n.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(FunctionTable { functions })
    }

    /// Whether the library defines the optional init entry `rfaas_init`.
    pub fn has_init(&self) -> bool {
        self.lookup(INIT_SYMBOL).is_some()
    }

    /// Calls the library's init entry `rfaas_init` once with `assets`, if it defines one;
    /// returns whether it did. A status other than 0 is [`FunctionError::InitFailed`] with the
    /// message the function wrote (at most [`INIT_ERROR_CAPACITY`] bytes, cut at the first NUL,
    /// invalid UTF-8 replaced).
    ///
    /// Call it once per process, before any function of the library runs, and keep `assets`
    /// alive for as long as the library is loaded: a C library may keep pointers into them.
    pub fn run_init(&self, assets: &MappedAssets) -> Result<bool> {
        let Some(ptr) = self.lookup(INIT_SYMBOL) else {
            return Ok(false);
        };
        // SAFETY: `rfaas_init` defined by the library itself (checked by `lookup`) has the
        // signature `InitFunction` by the ABI of `rfaas_function::init`; function pointers have
        // the size of data pointers on every platform rfaas supports.
        let init = unsafe { std::mem::transmute::<*mut c_void, InitFunction>(ptr) };
        let raw = assets.raw();
        let mut err = vec![0u8; INIT_ERROR_CAPACITY];
        let n = u32::try_from(raw.len()).map_err(|_| FunctionError::Asset {
            name: String::new(),
            reason: format!("{} assets are too many", raw.len()),
        })?;
        // SAFETY: `raw` holds `n` entries whose names are NUL-terminated and whose data is
        // readable for `len` bytes (mapped by `assets`, alive for this call and beyond); `err` is
        // writable for its length, passed as the capacity; the library is trusted to honour the
        // ABI (module docs, "Trust") and stays loaded (`self.lib`).
        let status = unsafe {
            init(
                raw.as_ptr(),
                n,
                err.as_mut_ptr().cast::<std::ffi::c_char>(),
                INIT_ERROR_CAPACITY as u32,
            )
        };
        if status == INIT_OK {
            return Ok(true);
        }
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        let text = String::from_utf8_lossy(&err[..end]);
        let text = text.trim();
        let message = if text.is_empty() {
            format!("rfaas_init returned {status} without a message")
        } else {
            text.to_string()
        };
        Err(FunctionError::InitFailed { status, message })
    }

    /// The address of a function named `name` defined by this library itself, if any.
    fn lookup(&self, name: &str) -> Option<*mut c_void> {
        let mut symbol = Vec::with_capacity(name.len() + 1);
        symbol.extend_from_slice(name.as_bytes());
        symbol.push(0);
        // SAFETY: the symbol is NUL-terminated and only its address is read (as a data
        // pointer), so the type cannot be wrong; the library outlives this call.
        let ptr = unsafe { self.lib.get::<*mut c_void>(&symbol) }
            .ok()
            .map(|s| *s)?;
        if ptr.is_null() || !self.defines_function(ptr) {
            return None;
        }
        Some(ptr)
    }

    /// Whether `addr` is the start of a function symbol defined in this library's own file.
    fn defines_function(&self, addr: *mut c_void) -> bool {
        let mut info = libc::Dl_info {
            dli_fname: std::ptr::null(),
            dli_fbase: std::ptr::null_mut(),
            dli_sname: std::ptr::null(),
            dli_saddr: std::ptr::null_mut(),
        };
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        let is_function = {
            const RTLD_DL_SYMENT: libc::c_int = 1;
            const STT_FUNC: u8 = 2;
            const STT_GNU_IFUNC: u8 = 10;
            let mut sym: *const libc::Elf64_Sym = std::ptr::null();
            // SAFETY: `info` and `sym` are valid for writes; with RTLD_DL_SYMENT glibc stores a
            // pointer to the symbol's ELF entry (or null) in `sym`.
            let found = unsafe {
                libc::dladdr1(
                    addr,
                    &mut info,
                    (&mut sym as *mut *const libc::Elf64_Sym).cast::<*mut c_void>(),
                    RTLD_DL_SYMENT,
                )
            };
            if found == 0 {
                return false;
            }
            // SAFETY: non-null `sym` points into the loaded object's dynamic symbol table, which
            // lives as long as the object, which `self.lib` keeps loaded.
            !sym.is_null() && matches!(unsafe { (*sym).st_info } & 0xf, STT_FUNC | STT_GNU_IFUNC)
        };
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let is_function = {
            // SAFETY: `info` is valid for writes.
            if unsafe { libc::dladdr(addr, &mut info) } == 0 {
                return false;
            }
            true
        };
        if !is_function || info.dli_fname.is_null() || info.dli_saddr != addr {
            return false;
        }
        // SAFETY: dladdr returned a non-null, NUL-terminated file name owned by the loader,
        // valid while the object is loaded.
        let file = unsafe { CStr::from_ptr(info.dli_fname) };
        file.to_bytes() == self.path.as_os_str().as_bytes()
    }
}

/// How a resolved function is called.
#[derive(Clone, Copy)]
enum Entry {
    /// A C function (or any function without the rfaas extension).
    Raw(RawFunction),
    /// A Rust function exported with `export_function!`.
    Extended(ExtendedFunction),
}

/// A function resolved from a loaded library; keeps the library loaded.
#[derive(Clone)]
pub struct Function {
    name: String,
    entry: Entry,
    _lib: Arc<Library>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("name", &self.name)
            .field("rust", &self.is_rust())
            .finish()
    }
}

impl Function {
    /// The name it was resolved by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it was exported with [`export_function!`](crate::export_function) (so it knows its
    /// output capacity and reports panics).
    pub fn is_rust(&self) -> bool {
        matches!(self.entry, Entry::Extended(_))
    }

    /// Calls the function on `input` (in place) with `output` as its output buffer, whose length
    /// is the output capacity (capped at `u32::MAX`).
    ///
    /// The returned length is checked against the capacity: a longer one is
    /// [`FunctionStatus::OutputTooLarge`] and the first `output.len()` bytes must not be sent.
    pub fn call(&self, input: &mut [u8], output: &mut [u8]) -> FunctionStatus {
        let Ok(in_len) = u32::try_from(input.len()) else {
            return FunctionStatus::InputTooLarge(input.len());
        };
        let capacity = u32::try_from(output.len()).unwrap_or(u32::MAX);
        let in_ptr = input.as_mut_ptr().cast::<c_void>();
        let out_ptr = output.as_mut_ptr().cast::<c_void>();
        let len = match self.entry {
            Entry::Raw(f) => {
                // SAFETY: the rFaaS ABI: `in_ptr` is valid for `in_len` bytes and `out_ptr` for
                // `capacity` bytes (both from exclusive, disjoint borrows); the function is
                // trusted to honour the ABI (module docs, "Trust"); `_lib` keeps it loaded.
                unsafe { f(in_ptr, in_len, out_ptr) }
            }
            Entry::Extended(f) => {
                let mut status = EXT_STATUS_OK;
                // SAFETY: as above, plus `capacity` is exactly the number of writable bytes at
                // `out_ptr` and `status` is a local valid for the call.
                let len = unsafe { f(in_ptr, in_len, out_ptr, capacity, &mut status) };
                if status != EXT_STATUS_OK {
                    return FunctionStatus::Panicked;
                }
                len
            }
        };
        if len > capacity {
            FunctionStatus::OutputTooLarge(len)
        } else {
            FunctionStatus::Ok(len)
        }
    }

    /// The plain C entry point, for hosts that call it themselves.
    ///
    /// The pointer is valid only while this `Function` (or another handle on its library) is
    /// alive.
    pub fn raw(&self) -> Option<RawFunction> {
        match self.entry {
            Entry::Raw(f) => Some(f),
            Entry::Extended(_) => None,
        }
    }
}

/// The functions of one allocation, in the order the client requested them.
#[derive(Debug, Clone, Default)]
pub struct FunctionTable {
    functions: Vec<Function>,
}

impl FunctionTable {
    /// Number of functions.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// Whether no function was requested.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// The function at `index` (position in the request).
    pub fn get(&self, index: usize) -> Option<&Function> {
        self.functions.get(index)
    }

    /// The names, in index order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.functions.iter().map(Function::name)
    }

    /// Calls function `index`; an index outside the table is [`FunctionStatus::UnknownFunction`].
    /// See [`Function::call`].
    pub fn call(&self, index: usize, input: &mut [u8], output: &mut [u8]) -> FunctionStatus {
        match self.functions.get(index) {
            Some(f) => f.call(input, output),
            None => FunctionStatus::UnknownFunction,
        }
    }
}

/// Function libraries of one process, keyed by content hash: each is written to the on-disk
/// [`LibraryStore`] once and loaded at most once. Thread-safe.
///
/// The executor manager uses [`store`](Self::store) (it writes libraries but never loads them:
/// a library's initialisers must not run in the manager); a process that runs functions uses
/// [`load`](Self::load) / [`load_cached`](Self::load_cached).
#[derive(Debug)]
pub struct LibraryCache {
    store: LibraryStore,
    loaded: Mutex<HashMap<ContentHash, FunctionLibrary>>,
}

impl LibraryCache {
    /// A cache over the directory `dir` (created with mode 0700 if needed).
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(LibraryCache {
            store: LibraryStore::open(dir)?,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The on-disk store.
    pub fn disk(&self) -> &LibraryStore {
        &self.store
    }

    /// Writes `bytes` to the disk cache unless a correct copy is there; loads nothing.
    pub fn store(&self, bytes: &[u8]) -> Result<CachedLibrary> {
        self.store.store(bytes)
    }

    /// The loaded library with this content hash, if this cache loaded it.
    pub fn get(&self, hash: &ContentHash) -> Option<FunctionLibrary> {
        self.lock().get(hash).cloned()
    }

    /// Stores (if needed) and loads (once per content hash) the library `bytes`.
    pub fn load(&self, bytes: &[u8]) -> Result<FunctionLibrary> {
        let hash = ContentHash::of(bytes);
        if let Some(lib) = self.get(&hash) {
            return Ok(lib);
        }
        let cached = self.store.store(bytes)?;
        self.insert(FunctionLibrary::open_file(cached.hash, cached.path)?)
    }

    /// Loads (once) the library with this content hash from the disk cache.
    pub fn load_cached(&self, hash: &ContentHash) -> Result<FunctionLibrary> {
        if let Some(lib) = self.get(hash) {
            return Ok(lib);
        }
        let path = self.store.verified_path(hash)?;
        self.insert(FunctionLibrary::open_file(*hash, path)?)
    }

    fn insert(&self, lib: FunctionLibrary) -> Result<FunctionLibrary> {
        // Two threads may have loaded the same library; dlopen counts references, so keeping
        // the first and dropping the second is harmless.
        Ok(self.lock().entry(lib.hash).or_insert(lib).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ContentHash, FunctionLibrary>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FunctionTable {
    /// Calls function `index` in place on registered memory: `in_len` input bytes at `in_off` of
    /// `input`, and `out_cap` bytes at `out_off` of `output` as the output buffer. This is how an
    /// executor runs a function on the bytes a client wrote, with no copy.
    ///
    /// Both regions are borrowed mutably, so no other thread of this process touches them during
    /// the call. Peers can write registered memory at any time; the rfaas protocol's credits keep
    /// them off these ranges while the function runs (a client reuses an input slot only after its
    /// result arrived, and the output range is the one reserved for that slot). Out-of-range
    /// offsets panic.
    #[allow(clippy::too_many_arguments)]
    pub fn call_in_regions<I: crate::rdma::MemoryRegion, O: crate::rdma::MemoryRegion>(
        &self,
        index: usize,
        input: &mut I,
        in_off: usize,
        in_len: usize,
        output: &mut O,
        out_off: usize,
        out_cap: usize,
    ) -> FunctionStatus {
        assert!(
            in_off.checked_add(in_len).is_some_and(|e| e <= input.len()),
            "input range outside its region"
        );
        assert!(
            out_off
                .checked_add(out_cap)
                .is_some_and(|e| e <= output.len()),
            "output range outside its region"
        );
        // SAFETY: both ranges lie inside their regions (checked above), which stay mapped while
        // borrowed; `&mut` on both regions rules out other local users and (borrowck) aliasing of
        // the two; peers stay off these ranges by the protocol invariant documented above.
        let (inp, out) = unsafe {
            (
                std::slice::from_raw_parts_mut(input.as_ptr().add(in_off), in_len),
                std::slice::from_raw_parts_mut(output.as_ptr().add(out_off), out_cap),
            )
        };
        self.call(index, inp, out)
    }
}
