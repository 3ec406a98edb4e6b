//! `ofi-raw`: the floor of the `ofi` provider, a plain `fi_writedata` ping-pong between the same
//! two pinned processes on the libfabric provider of `RFAAS_OFI_PROVIDER` / `FI_PROVIDER`
//! ([`crate::rdma::ofi::raw`]). The CQ data carries `(sequence << 32) | length`; the server
//! writes the same number of bytes back with the same data.

use super::child::{announce, ServerChild};
use super::cli::ServerConfig;
use super::{measure, BenchError, Config, Mode, Row, SERVER_IDLE_TIMEOUT, SETUP_TIMEOUT};
use crate::pin::pin_current_thread;
use crate::rdma::ofi::raw::{RawFloor, SETUP};

const STOP_LEN: u64 = u32::MAX as u64;

fn open(len: usize) -> Result<RawFloor, BenchError> {
    Ok(RawFloor::open(
        crate::rdma::ofi::configured_provider().as_deref(),
        len,
    )?)
}

/// The client (measuring) side of `ofi-raw`.
pub fn client(cfg: &Config) -> Result<Vec<Row>, BenchError> {
    let max = cfg.max_bytes();
    let mut f = open(max)?;
    let mut child = ServerChild::spawn(&ServerConfig::command_line(Mode::OfiRaw, cfg, None))?;
    let addr = child.wait_ready(SETUP_TIMEOUT)?;
    f.connect(&addr)?;
    let me = f.address();
    f.fill(me.as_bytes());
    f.write_data(me.len(), SETUP, SETUP_TIMEOUT)?;
    // The server answers the setup with an empty write once it can reach us.
    f.wait_data(SETUP_TIMEOUT)?;
    pin_current_thread(cfg.client_core)?;
    f.fill(&vec![0x5au8; max]);
    let mut seq: u64 = 0;
    let mut rows = Vec::with_capacity(cfg.sizes.len());
    for &size in &cfg.sizes {
        let lat = measure(cfg.warmup, cfg.iterations, cfg.max_time_per_size, || {
            seq = (seq + 1) & 0xffff_ffff;
            let v = (seq << 32) | size as u64;
            f.write_data(size, v, cfg.reply_timeout)?;
            let got = f.wait_data(cfg.reply_timeout)?;
            if got != v {
                return Err(BenchError::Protocol(format!(
                    "ofi-raw: reply data {got:#x}, expected {v:#x}"
                )));
            }
            Ok(())
        })?;
        rows.push(lat.row(Mode::OfiRaw.name(), size));
    }
    f.write_data(0, STOP_LEN, SETUP_TIMEOUT)?;
    child.finish(SETUP_TIMEOUT)?;
    Ok(rows)
}

/// The server side of `ofi-raw` (runs in the child process).
pub fn server(cfg: &ServerConfig) -> Result<(), BenchError> {
    let mut f = open(cfg.max_bytes)?;
    announce(&f.address())?;
    let d = f.wait_data(SETUP_TIMEOUT)?;
    if d != SETUP {
        return Err(BenchError::Protocol(format!(
            "ofi-raw: first write has data {d:#x}"
        )));
    }
    let peer = String::from_utf8_lossy(&f.contents(1024))
        .trim_end_matches('\0')
        .to_string();
    f.connect(&peer)?;
    f.write_data(0, 0, SETUP_TIMEOUT)?;
    pin_current_thread(cfg.core)?;
    loop {
        let v = f.wait_data(SERVER_IDLE_TIMEOUT)?;
        let len = v & 0xffff_ffff;
        if len == STOP_LEN {
            return Ok(());
        }
        if len as usize > cfg.max_bytes {
            return Err(BenchError::Protocol(format!(
                "ofi-raw request of {len} bytes exceeds {}",
                cfg.max_bytes
            )));
        }
        f.write_data(len as usize, v, SERVER_IDLE_TIMEOUT)?;
    }
}
