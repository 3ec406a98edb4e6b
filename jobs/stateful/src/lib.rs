//! A function library with state loaded once: its init function (exported with
//! [`rfaas_function::export_init!`]) copies the allocation's assets into a `OnceLock` and counts
//! how often it ran; its functions return what it kept. The tests of `tests/function_assets.rs`
//! use it to check that init runs exactly once per executor, before the first invocation, with
//! the assets' exact bytes, and that its errors and panics reach the client.
//!
//! | function | input | output |
//! |---|---|---|
//! | `asset` | an asset's name | the asset's bytes (empty and status "too large" when unknown: see below) |
//! | `asset_names` | — | the assets' names in the order received, one per line |
//! | `init_count` | — | how many times init ran in this process, `u32` little-endian |
//! | `pid` | — | this process's id, `u32` little-endian |
//!
//! Init fails with a message when an asset named `fail` is present (the message quotes its
//! bytes), and panics when one named `panic` is.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use rfaas_function::init::Assets;

/// Times init ran in this process.
static INIT_CALLS: AtomicU32 = AtomicU32::new(0);
/// The assets, as init received them (name, bytes), in order.
static ASSETS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();

/// The init function: fails on an asset named `fail`, panics on one named `panic`, else keeps a
/// copy of every asset.
pub fn init(assets: &Assets<'_>) -> Result<(), String> {
    INIT_CALLS.fetch_add(1, Ordering::SeqCst);
    if let Some(why) = assets.get("fail") {
        return Err(format!(
            "asset 'fail' says: {}",
            String::from_utf8_lossy(why)
        ));
    }
    if let Some(why) = assets.get("panic") {
        panic!("asset 'panic' says: {}", String::from_utf8_lossy(why));
    }
    let copy = assets
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect();
    ASSETS
        .set(copy)
        .map_err(|_| "init ran twice in one process".to_string())
}

/// Writes `bytes` to `output` if it fits; returns their length (more than the output's: the
/// caller sees "output too large").
fn put(bytes: &[u8], output: &mut [u8]) -> usize {
    if let Some(out) = output.get_mut(..bytes.len()) {
        out.copy_from_slice(bytes);
    }
    bytes.len()
}

/// The bytes of the asset named by the input; `usize::MAX` (an error status) when there is no
/// such asset or init did not run.
pub fn asset(input: &[u8], output: &mut [u8]) -> usize {
    let found = ASSETS
        .get()
        .and_then(|all| all.iter().find(|(n, _)| n.as_bytes() == input));
    match found {
        Some((_, bytes)) => put(bytes, output),
        None => usize::MAX,
    }
}

/// The assets' names, one per line, in the order init received them.
pub fn asset_names(_input: &[u8], output: &mut [u8]) -> usize {
    let names: Vec<&str> = ASSETS
        .get()
        .map(|all| all.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    put(names.join("\n").as_bytes(), output)
}

/// How many times init ran in this process (`u32` little-endian).
pub fn init_count(_input: &[u8], output: &mut [u8]) -> usize {
    put(&INIT_CALLS.load(Ordering::SeqCst).to_le_bytes(), output)
}

/// This process's id (`u32` little-endian).
pub fn pid(_input: &[u8], output: &mut [u8]) -> usize {
    put(&std::process::id().to_le_bytes(), output)
}

rfaas_function::export_init!(init);
rfaas_function::export_function!(asset, asset);
rfaas_function::export_function!(asset_names, asset_names);
rfaas_function::export_function!(init_count, init_count);
rfaas_function::export_function!(pid, pid);
