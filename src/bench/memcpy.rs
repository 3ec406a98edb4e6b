//! `memcpy` mode: one thread, pinned to the client core, copies each size from one private
//! buffer to another. Same row format as the ping-pongs (p50/p99/p999 of one copy), so that the
//! bandwidth target ("1 MiB at no less than half the machine's memcpy bandwidth") is judged
//! against a figure from the same run. Small sizes are dominated by the two clock reads
//! (~20 ns each here); the figure that matters is the large one.

use std::hint::black_box;

use super::{measure, BenchError, Config, Mode, Row};
use crate::pin::pin_current_thread;

/// Measures every size of `cfg`.
pub fn run(cfg: &Config) -> Result<Vec<Row>, BenchError> {
    pin_current_thread(cfg.client_core)?;
    let max = cfg.max_bytes();
    let src = vec![0x5au8; max];
    let mut dst = vec![0u8; max];
    let mut rows = Vec::with_capacity(cfg.sizes.len());
    for &size in &cfg.sizes {
        let lat = measure(cfg.warmup, cfg.iterations, cfg.max_time_per_size, || {
            dst[..size].copy_from_slice(black_box(&src[..size]));
            black_box(&mut dst);
            Ok(())
        })?;
        rows.push(lat.row(Mode::Memcpy.name(), size));
    }
    Ok(rows)
}
