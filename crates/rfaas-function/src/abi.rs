//! The function ABI: what a function library exports and what a call returns.
//!
//! # The rFaaS C ABI
//!
//! ```c
//! uint32_t f(void *in, uint32_t in_len, void *out);
//! ```
//!
//! * `in` points to the `in_len` bytes of the invocation's payload, in the worker's input slot. The
//!   function may modify them in place (they are discarded after the call).
//! * `out` points to the worker's output buffer. Its capacity is the allocation's output capacity
//!   (fixed when the allocation is made, known to the client). A C function is not told the
//!   capacity: it must know it from its own contract with the client, exactly as in rFaaS.
//! * The return value is the number of output bytes written at `out`. A returned length larger
//!   than the capacity is reported as [`FunctionStatus::OutputTooLarge`], never sent: the executor
//!   checks every returned length against the capacity before it writes anything back. This is the
//!   only error a C function can signal; a function that wants to say "I need N bytes" returns N
//!   without writing.
//! * The function must be thread-safe: every worker thread of an allocation calls into the same
//!   loaded library.
//!
//! No return value is reserved: a C function cannot collide with an rfaas status by accident.
//!
//! # The rfaas extension (functions exported with [`export_function!`](crate::export_function))
//!
//! A Rust function exported with the macro gets two symbols:
//!
//! * `name` with the plain C ABI above, so that any rFaaS-compatible host can call it. Through
//!   this entry the output capacity is taken to be `in_len` (rFaaS gives both buffers the same
//!   size, so the output buffer is at least as long as any payload), a result longer than that is
//!   returned as its length (too large), and a panic returns [`PLAIN_PANIC_SENTINEL`].
//! * [`EXTENDED_SYMBOL_PREFIX`]`name` with the [`ExtendedFunction`] ABI: the same arguments plus
//!   the output capacity and an out-of-band status word. The rfaas loader prefers this entry, so a
//!   Rust function always sees its real output capacity and a panic is reported through the status
//!   word ([`EXT_STATUS_PANICKED`]) rather than through the length, where it could be mistaken for
//!   one.
//!
//! Why not a thread-local that the loader sets before each call? Every `cdylib` carries its own
//! statically linked copy of this crate, so a thread-local in the executor's copy is not
//! the one the library's copy would read. The capacity has to cross the boundary as an argument.

use std::ffi::c_void;

/// A function with the rFaaS C ABI: `uint32_t f(void *in, uint32_t in_len, void *out)`.
///
/// Returns the output length; see the [module documentation](self) for the contract.
pub type RawFunction =
    unsafe extern "C" fn(input: *mut c_void, in_len: u32, output: *mut c_void) -> u32;

/// The rfaas extension of [`RawFunction`], exported by [`export_function!`](crate::export_function)
/// as [`EXTENDED_SYMBOL_PREFIX`] followed by the function's name.
///
/// `out_capacity` is the number of writable bytes at `output`; `status` points to a word the
/// function sets to [`EXT_STATUS_OK`] or [`EXT_STATUS_PANICKED`]. The return value is the output
/// length, as for [`RawFunction`].
pub type ExtendedFunction = unsafe extern "C" fn(
    input: *mut c_void,
    in_len: u32,
    output: *mut c_void,
    out_capacity: u32,
    status: *mut u32,
) -> u32;

/// Prefix of the symbol of a function's [`ExtendedFunction`] entry.
///
/// It starts with two underscores, which C reserves for the implementation, so a C library does
/// not define it by accident.
pub const EXTENDED_SYMBOL_PREFIX: &str = "__rfaas_ext_v1_";

/// Status word of an [`ExtendedFunction`] that returned normally.
pub const EXT_STATUS_OK: u32 = 0;

/// Status word of an [`ExtendedFunction`] whose Rust function panicked.
pub const EXT_STATUS_PANICKED: u32 = 1;

/// What the plain C entry of a macro-exported function returns when the function panicked (or
/// the host passed overlapping buffers). It is larger than any real capacity, so a host that
/// checks lengths (as rfaas does) reports it as too large rather than sending it.
pub const PLAIN_PANIC_SENTINEL: u32 = u32::MAX;

/// The outcome of one call, as the executor turns it into a result status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FunctionStatus {
    /// The function returned normally with this many output bytes (at most the capacity).
    Ok(u32),
    /// The function returned a length larger than the caller's output capacity; nothing may be
    /// sent. Carries the returned length.
    OutputTooLarge(u32),
    /// The function panicked (Rust functions exported with the macro only).
    Panicked,
    /// The invocation named a function index that the allocation did not resolve.
    UnknownFunction,
    /// The payload is longer than the ABI's 32-bit length can describe. Carries its length.
    InputTooLarge(usize),
}

impl FunctionStatus {
    /// The output length, if the call succeeded.
    pub fn output_len(self) -> Option<u32> {
        match self {
            FunctionStatus::Ok(len) => Some(len),
            _ => None,
        }
    }

    /// Whether the call succeeded.
    pub fn is_ok(self) -> bool {
        matches!(self, FunctionStatus::Ok(_))
    }
}

/// Runs a safe Rust function for the exported entries, catching a panic.
///
/// Returns the output length (saturated at `u32::MAX`; a length above `output.len()` means too
/// large) or `Err(())` when `f` panicked. Not public API: called by the expansion of
/// [`export_function!`](crate::export_function).
#[doc(hidden)]
#[allow(clippy::result_unit_err)]
pub fn __invoke<F>(f: F, input: &mut [u8], output: &mut [u8]) -> Result<u32, ()>
where
    F: FnOnce(&mut [u8], &mut [u8]) -> usize,
{
    // After a panic both buffers are discarded (the call reports `Panicked` and nothing is sent),
    // so no broken invariant can be observed: asserting unwind safety is sound.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(input, output))) {
        Ok(len) => Ok(u32::try_from(len).unwrap_or(u32::MAX)),
        Err(_) => Err(()),
    }
}

/// Whether two buffers given by address and length overlap. Not public API: the expansion of
/// [`export_function!`](crate::export_function) refuses overlapping buffers, because it hands
/// the function a shared and an exclusive slice.
#[doc(hidden)]
pub fn __overlap(a: *const c_void, a_len: usize, b: *const c_void, b_len: usize) -> bool {
    if a_len == 0 || b_len == 0 {
        return false;
    }
    let (a, b) = (a as usize, b as usize);
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_reports_length_and_panic() {
        let mut input = *b"abc";
        let mut output = [0u8; 8];
        let r = __invoke(
            |i, o| {
                o[..i.len()].copy_from_slice(i);
                i.len()
            },
            &mut input,
            &mut output,
        );
        assert_eq!(r, Ok(3));
        assert_eq!(&output[..3], b"abc");
        let r = __invoke(|_, _| panic!("on purpose"), &mut input, &mut output);
        assert_eq!(r, Err(()));
        let r = __invoke(|_, _| usize::MAX, &mut input, &mut output);
        assert_eq!(r, Ok(u32::MAX));
    }

    #[test]
    fn overlap() {
        let buf = [0u8; 16];
        let p = buf.as_ptr() as *const c_void;
        let q = buf[8..].as_ptr() as *const c_void;
        assert!(__overlap(p, 9, q, 1));
        assert!(!__overlap(p, 8, q, 8));
        assert!(!__overlap(p, 0, p, 8));
        assert!(__overlap(q, 8, p, 16));
    }
}
