//! Function libraries: the rFaaS function ABI, exporting Rust functions, caching and loading.
//!
//! A function library is an ELF shared object whose functions have the rFaaS C ABI
//! `uint32_t f(void *in, uint32_t in_len, void *out)` (see [`abi`], from the crate
//! `rfaas-function`, which function libraries depend on alone). Libraries written for
//! rFaaS in C or C++ work unchanged; Rust functions are exported with
//! [`export_function!`](crate::export_function), which also reports panics and passes the output
//! capacity.
//!
//! The life of a library:
//!
//! 1. The client sends the library's **bytes** with its allocation request (no shared file
//!    system is assumed), or only its [`ContentHash`] when the manager already has it.
//! 2. The executor manager writes it once to its cache directory as `<sha256>.so`
//!    ([`LibraryStore`] / [`LibraryCache::store`]): atomically, mode 0700, checked on reuse.
//! 3. The executor process loads it from there ([`FunctionLibrary::open_cached`]) and resolves the
//!    requested functions **by name, in the order requested** ([`FunctionLibrary::resolve`]):
//!    the index of a function in invocations is its position in the client's request. An
//!    unknown name fails the allocation with [`FunctionError::UnknownFunction`].
//! 4. If the library exports the optional init entry `rfaas_init`
//!    ([`rfaas_function::init`]), the executor maps the allocation's assets
//!    ([`assets::MappedAssets`]) and calls it once ([`FunctionLibrary::run_init`]) before it
//!    reports ready; an error status fails the allocation with the init function's message.
//! 5. Each invocation is a [`FunctionTable::call`], which checks the returned length against the
//!    caller's output capacity and turns the outcome into a [`FunctionStatus`].
//!
//! ```no_run
//! use rfaas::function::{FunctionLibrary, FunctionStatus};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bytes = std::fs::read("target/release/libfunctions.so")?;
//! let lib = FunctionLibrary::load(&bytes, std::path::Path::new("/tmp/rfaas-cache"))?;
//! let table = lib.resolve(&["echo", "checksum"])?; // index 0 = echo, 1 = checksum
//! let mut input = *b"hello";
//! let mut output = [0u8; 64];
//! assert_eq!(table.call(0, &mut input, &mut output), FunctionStatus::Ok(5));
//! # Ok(()) }
//! ```

pub mod assets;
pub mod elf;
pub mod error;
pub mod hash;
pub mod loader;
pub mod store;

pub use error::{FunctionError, Result};
pub use hash::{ContentHash, ParseHashError};
pub use loader::{Function, FunctionLibrary, FunctionTable, LibraryCache};
/// The rFaaS C ABI types, from the function authors' crate `rfaas-function` (re-exported).
pub use rfaas_function::abi;
pub use rfaas_function::abi::{ExtendedFunction, FunctionStatus, RawFunction};
pub use store::{CachedLibrary, LibraryStore, StoreOutcome};
