//! # rfaas-function — write function libraries for rfaas
//!
//! Everything a function author needs and nothing else: the rFaaS C ABI types ([`abi`]) and
//! [`export_function!`], which exports a safe Rust function with that ABI and turns a panic into
//! an error status. No runtime is started and no socket is opened; the crate has no
//! dependencies, so a function library builds in seconds.
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! rfaas-function = { path = "crates/rfaas-function" }
//! ```
//!
//! ```
//! /// Copies the input to the output.
//! pub fn echo(input: &[u8], output: &mut [u8]) -> usize {
//!     if let Some(out) = output.get_mut(..input.len()) {
//!         out.copy_from_slice(input);
//!     }
//!     input.len() // more than output.len(): the caller gets "output too large"
//! }
//!
//! rfaas_function::export_function!(echo, echo);
//! ```
//!
//! A library that needs state loaded once (a model, a lookup table) exports an init function
//! with [`export_init!`]; it receives the named assets the allocation shipped (see [`init`]).
//!
//! A function that can fail on bad input frames its output with a one-byte application status
//! ([`app_status`]): 0 and the payload, or an error code and a message the client decodes into a
//! typed error.
//!
//! The platform crate `rfaas` re-exports this crate (`rfaas::function::abi`,
//! `rfaas::export_function!`), and its loader calls what the macro exports.

pub mod abi;
pub mod app_status;
mod export;
pub mod init;

pub use abi::{ExtendedFunction, FunctionStatus, RawFunction};
pub use init::{Assets, InitFunction, RawAsset};
