//! Logging set-up shared by every binary: `tracing` to stderr, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Initialises logging to stderr with `RUST_LOG`, or `default_level` when it is unset or invalid.
/// Colours only on a terminal. Calling it twice is harmless. Also puts back the default signal
/// actions that linked native libraries took over ([`crate::rdma::restore_default_signals`]).
pub fn init(default_level: &str) {
    crate::rdma::restore_default_signals();
    let filter =
        EnvFilter::try_from_env(crate::env::LOG).unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
