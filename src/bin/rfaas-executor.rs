//! `rfaas-executor executor`: the executor process alone ([`rfaas::executor::main_stdin`]),
//! what an executor manager starts for an allocation when this binary lies beside its `rfaas`
//! (else it runs `rfaas executor`, the same code). A binary of its own because a cold start
//! pays for loading the executable: this one maps and relocates a fifth of `rfaas`'s code (no
//! HTTP servers, no command line of the managers), which made a fresh executor reach standby
//! about 0.4 ms sooner on the project's VM.
use std::process::ExitCode;

fn main() -> ExitCode {
    // The same command line as `rfaas executor`, so that tools (and `rfaas local-cluster`)
    // recognise executors by it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    // What its manager checks before it uses this binary (see `executor_exe`).
    if args == ["build-info"] {
        println!("{}", rfaas::executor::build_info());
        return ExitCode::SUCCESS;
    }
    if args != ["executor"] {
        eprintln!(
            "usage: rfaas-executor executor  (started by an executor manager; it reads its \
             configuration on standard input), or rfaas-executor build-info"
        );
        return ExitCode::from(2);
    }
    // As `rfaas executor` does: warnings (a refused token, a failed invocation) to its log
    // file (standard error), more with `RUST_LOG`, and the default signal actions back.
    rfaas::logging::init("warn");
    // The executor already reported its failure to the manager on standard output.
    if rfaas::executor::main_stdin().is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
