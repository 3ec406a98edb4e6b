//! Example function libraries for rfaas.
//!
//! Built as a `cdylib` (`libfunctions.so`, the library a client ships to executors) and as an
//! `rlib` (so tests, benchmarks and clients can use the layouts and reference implementations
//! below):
//!
//! ```text
//! cargo build -p rfaas-functions --release     # -> target/release/libfunctions.so
//! ```
//!
//! Every function is exported with [`rfaas_function::export_function!`], so it has the rFaaS C ABI
//! `uint32_t f(void *in, uint32_t in_len, void *out)` under the name in the first column, knows
//! its output capacity when called by rfaas, and reports a panic as an error status. A function
//! whose result does not fit the caller's output capacity writes nothing and returns the length
//! it needs (the caller gets an output-too-large error).
//!
//! | symbol | input | output | purpose |
//! |---|---|---|---|
//! | `empty` | any bytes | returns the input length, writes nothing | the invocation floor: no work at all |
//! | `echo` | any bytes | the input, unchanged | payload round trips |
//! | `sleep_us` | `u64` LE microseconds, then anything | the input, unchanged, after sleeping | a function with a known duration |
//! | `checksum` | any bytes | 8 bytes: 64-bit FNV-1a of the input, LE ([`fnv1a64`]) | touches every byte |
//! | `black_scholes` | records of 5 × `f64` LE | records of 2 × `f64` LE | a real kernel (module [`black_scholes`](mod@black_scholes)) |
//! | `panic` | ignored | never returns: panics | tests: a panic becomes an error status |
//! | `segfault` | ignored | never returns: crashes the process | tests only: executor crash handling |
//!
//! `empty` returns the input length to mimic rFaaS's `empty` benchmark function: the caller gets
//! that many bytes of whatever its output buffer held (so a 1 MiB `empty` call still moves 1 MiB
//! back). A payload too short for `sleep_us`'s `u64` sleeps for 0 µs.
//!
//! A C library with the same ABI lives in `jobs/functions-c` (`echo_c`, `checksum_c`).

#![warn(missing_docs)]

pub mod black_scholes;

pub use black_scholes::{
    black_scholes, black_scholes_reference, decode_prices, encode_options, norm_cdf, price,
    OptionParams, Prices, OPTION_RECORD_BYTES, PRICE_RECORD_BYTES,
};

use std::time::Duration;

/// `empty`: does no work and writes nothing; returns the input length.
pub fn empty(input: &[u8], _output: &mut [u8]) -> usize {
    input.len()
}

/// `echo`: copies the input to the output.
pub fn echo(input: &[u8], output: &mut [u8]) -> usize {
    if let Some(out) = output.get_mut(..input.len()) {
        out.copy_from_slice(input);
    }
    input.len()
}

/// `sleep_us`: sleeps for the `u64` little-endian number of microseconds at the start of the
/// input (0 when the input is shorter than 8 bytes), then echoes the input.
pub fn sleep_us(input: &[u8], output: &mut [u8]) -> usize {
    if let Some(word) = input.first_chunk::<8>() {
        let micros = u64::from_le_bytes(*word);
        if micros > 0 {
            std::thread::sleep(Duration::from_micros(micros));
        }
    }
    echo(input, output)
}

/// The 64-bit FNV-1a hash of `bytes` (offset basis `0xcbf29ce484222325`, prime
/// `0x100000001b3`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `checksum`: writes the [`fnv1a64`] of the input as 8 little-endian bytes.
pub fn checksum(input: &[u8], output: &mut [u8]) -> usize {
    if let Some(out) = output.first_chunk_mut::<8>() {
        *out = fnv1a64(input).to_le_bytes();
    }
    8
}

/// `panic`: panics, always. For tests of the panic status.
pub fn panic_on_purpose(_input: &[u8], _output: &mut [u8]) -> usize {
    panic!("rfaas-functions: `panic` called (this function always panics)")
}

/// `segfault`: **test function** that crashes the calling process with SIGSEGV by writing to an
/// unmapped address. It exists for the executor's crash tests (a dead executor must become an
/// error at the client and give its cores back); never call it in a process you want to keep.
pub fn segfault(_input: &[u8], _output: &mut [u8]) -> usize {
    // The first page is never mapped on Linux (vm.mmap_min_addr), so this store faults. A
    // non-null aligned address avoids Rust's debug precondition check (which would abort with
    // SIGABRT instead of the SIGSEGV this function promises).
    let address = 16usize as *mut u64;
    #[allow(unsafe_code)]
    // SAFETY: none, on purpose: this is the one function whose job is to crash the process.
    unsafe {
        address.write_volatile(0xdead);
    }
    unreachable!("the write above faults")
}

rfaas_function::export_function!(empty, empty);
rfaas_function::export_function!(echo, echo);
rfaas_function::export_function!(sleep_us, sleep_us);
rfaas_function::export_function!(checksum, checksum);
rfaas_function::export_function!(black_scholes, black_scholes);
rfaas_function::export_function!(panic, panic_on_purpose);
rfaas_function::export_function!(segfault, segfault);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn echo_and_checksum_too_small() {
        let mut out = [0u8; 4];
        assert_eq!(echo(b"hello", &mut out), 5);
        assert_eq!(out, [0; 4]);
        assert_eq!(checksum(b"hello", &mut out), 8);
        assert_eq!(out, [0; 4]);
    }

    #[test]
    fn sleep_us_sleeps_and_echoes() {
        let mut input = 2000u64.to_le_bytes().to_vec();
        input.extend_from_slice(b"xyz");
        let mut out = [0u8; 16];
        let start = std::time::Instant::now();
        assert_eq!(sleep_us(&input, &mut out), 11);
        assert!(start.elapsed() >= Duration::from_micros(2000));
        assert_eq!(&out[..11], &input[..]);
        assert_eq!(sleep_us(b"abc", &mut out), 3);
    }
}
