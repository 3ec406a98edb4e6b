//! `rfaas-executor executor`: the executor process alone ([`rfaas::executor::main_stdin`]),
//! what an executor manager starts for an allocation when this binary lies beside its `rfaas`
//! (else it runs `rfaas executor`, the same code). A binary of its own because a cold start
//! pays for loading the executable: this one maps and relocates a fifth of `rfaas`'s code (no
//! HTTP servers, no command line of the managers), which made a fresh executor reach standby
//! about 0.4 ms sooner on the project's VM.
//!
//! It defines the C `main` itself (`#![no_main]`), so that the Rust runtime's start-up does not
//! run: that start-up reads `/proc/self/maps` (through `pthread_getattr_np`, to place a guard
//! for the main thread's stack), installs stack-overflow handlers and an alternate signal stack
//! for every thread, and checks descriptors 0-2, 30-50 µs of a fresh executor's start on the
//! project's VM (A/B of `exec` to standby report, 400 starts each). What is lost: a stack
//! overflow ends the process with SIGSEGV instead of a message and SIGABRT, and SIGPIPE is
//! handled here (a flag: a write to a closed pipe fails with EPIPE instead of killing the
//! process, as under the runtime). A panic still exits with status 101 (caught below).
#![no_main]

use std::ffi::c_int;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The process's entry point, called by the C library's start-up code.
// The one unsafe attribute of this binary: it exports the symbol `main`, which nothing else in
// it defines (`#![no_main]`: the Rust runtime's `main` is not generated).
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const std::ffi::c_char) -> c_int {
    // What the Rust runtime does for every program: writes to a closed pipe fail (EPIPE)
    // instead of killing the process.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGPIPE,
        Arc::new(AtomicBool::new(false)),
    );
    // 101: what the runtime exits with after a panic in `main`.
    let code = std::panic::catch_unwind(run).unwrap_or(101);
    let _ = std::io::stdout().flush();
    code
}

/// `rfaas-executor executor` or `rfaas-executor build-info`; the exit status.
fn run() -> c_int {
    // The same command line as `rfaas executor`, so that tools (and `rfaas local-cluster`)
    // recognise executors by it. (The C library hands the arguments to `std::env::args` also
    // without the Rust runtime's start-up.)
    let args: Vec<String> = std::env::args().skip(1).collect();
    // What its manager checks before it uses this binary (see `executor_exe`).
    if args == ["build-info"] {
        println!("{}", rfaas::executor::build_info());
        return 0;
    }
    if args != ["executor"] {
        eprintln!(
            "usage: rfaas-executor executor  (started by an executor manager; it reads its \
             configuration on standard input), or rfaas-executor build-info"
        );
        return 2;
    }
    // The executor already reported its failure to the manager on standard output.
    if rfaas::executor::main_stdin().is_ok() {
        0
    } else {
        1
    }
}
