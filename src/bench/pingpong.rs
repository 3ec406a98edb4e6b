//! Round trip over any [`Fabric`]: the client writes `size` bytes with an immediate into the
//! server's registered buffer; the server, busy-polling its completion queue, answers with a
//! write-with-immediate of the same size into the client's buffer.
//!
//! Connection setup: the client passes its buffer ([`RemoteBuf`], 16 bytes) in the connect's
//! private data, the server its own in the accept's. Each side posts [`RECV_DEPTH`] receives
//! without buffers (write-with-immediate only needs the completion) and reposts one per message.
//! Sends are signalled every [`SIGNAL_EVERY`] requests only, so that queue slots are recycled on
//! verbs without a completion per message. The immediate carries a sequence number; [`STOP`]
//! (zero bytes) tells the server to exit.

use std::time::Instant;

use super::child::{announce, ServerChild};
use super::cli::ServerConfig;
use super::{measure, BenchError, Config, Mode, Row, Spin, SERVER_IDLE_TIMEOUT, SETUP_TIMEOUT};
use crate::pin::pin_current_thread;
use crate::rdma::provider::FabricUser;
use crate::rdma::{
    Access, CompletionQueue, ConnRequest, Fabric, Listener, MemoryRegion, Op, Provider, QpInit,
    QueuePair, RecvWr, RemoteBuf, SendFlags, SendWr, Wc, WcOpcode,
};

/// Receives posted per queue pair.
pub const RECV_DEPTH: u64 = 16;
/// One send in this many is signalled.
pub const SIGNAL_EVERY: u64 = 16;
/// The immediate that stops the server.
pub const STOP: u32 = u32::MAX;
const CQ_DEPTH: u32 = 256;

/// The client side, run by [`Provider::run`] in the measuring process.
pub struct Client<'a> {
    /// What to measure.
    pub cfg: &'a Config,
}

/// The server side, run by [`Provider::run`] in the server process.
pub struct Server<'a> {
    /// Its buffers and core.
    pub cfg: &'a ServerConfig,
}

impl FabricUser for Client<'_> {
    type Output = Result<Vec<Row>, BenchError>;
    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        client(&fabric, self.cfg)
    }
}

impl FabricUser for Server<'_> {
    type Output = Result<(), BenchError>;
    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        server(&fabric, self.cfg)
    }
}

fn recvs() -> Vec<RecvWr> {
    (0..RECV_DEPTH)
        .map(|i| RecvWr {
            wr_id: i,
            sge: None,
        })
        .collect()
}

fn len32(n: usize) -> Result<u32, BenchError> {
    u32::try_from(n)
        .map_err(|_| BenchError::Invalid(format!("{n} bytes do not fit a 32-bit length")))
}

/// Default listen address of a provider's server.
pub fn default_bind(p: Provider) -> String {
    match p {
        Provider::Shm => std::env::temp_dir()
            .join(format!(
                "rfaas-pingpong-{}-{}.sock",
                std::process::id(),
                nanos_now()
            ))
            .display()
            .to_string(),
        Provider::Tcp | Provider::Ofi => "127.0.0.1:0".to_string(),
        // Loopback has no RDMA device: listen on an address of the device in use.
        #[cfg(feature = "verbs")]
        Provider::Verbs => crate::rdma::verbs::VerbsFabric::default_bind()
            .unwrap_or_else(|| "127.0.0.1:0".to_string()),
        #[cfg(not(feature = "verbs"))]
        Provider::Verbs => "127.0.0.1:0".to_string(),
    }
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Posts a write-with-immediate of `len` bytes from the start of `mr` to the start of `peer`.
#[inline]
fn post_write_imm<M: MemoryRegion, Q: QueuePair>(
    qp: &Q,
    mr: &M,
    peer: RemoteBuf,
    len: u32,
    imm: u32,
    counter: &mut u64,
) -> Result<(), BenchError> {
    *counter += 1;
    let flags = if *counter % SIGNAL_EVERY == 0 || imm == STOP {
        SendFlags::SIGNALED
    } else {
        SendFlags::empty()
    };
    let wr = SendWr {
        wr_id: *counter,
        op: Op::WriteImm(peer.slice(0, len), imm),
        sge: (len > 0).then(|| mr.sge(0, len)),
        flags,
    };
    qp.post_send(&wr)?;
    Ok(())
}

fn client<F: Fabric>(fabric: &F, cfg: &Config) -> Result<Vec<Row>, BenchError> {
    let provider = fabric.provider();
    let max = cfg.max_bytes();
    let max32 = len32(max)?;
    let mr = fabric.alloc_mr(max, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
    let cq = fabric.create_cq(CQ_DEPTH)?;
    let mut cfg = cfg.clone();
    cfg.bind = Some(cfg.bind.clone().unwrap_or_else(|| default_bind(provider)));
    let mut child = ServerChild::spawn(&ServerConfig::command_line(
        Mode::Fabric(provider),
        &cfg,
        None,
    ))?;
    let addr = child.wait_ready(SETUP_TIMEOUT)?;
    tracing::debug!(%provider, %addr, "server ready");
    let (qp, pd) = fabric.connect(
        &addr,
        QpInit::new(&cq),
        &recvs(),
        &mr.remote(0, max32).to_bytes(),
        SETUP_TIMEOUT,
    )?;
    let peer = RemoteBuf::from_bytes(&pd).ok_or_else(|| {
        BenchError::Protocol(format!(
            "accept private data has {} bytes, expected 16",
            pd.len()
        ))
    })?;
    if (peer.len as usize) < max {
        return Err(BenchError::Protocol(format!(
            "server buffer has {} bytes, expected {max}",
            peer.len
        )));
    }
    pin_current_thread(cfg.client_core)?;

    let mut wcs = [Wc::EMPTY; 16];
    let mut seq: u32 = 0;
    let mut counter = 0u64;
    let mut rows = Vec::with_capacity(cfg.sizes.len());
    for &size in &cfg.sizes {
        let len = len32(size)?;
        let lat = measure(cfg.warmup, cfg.iterations, cfg.max_time_per_size, || {
            seq = if seq >= STOP - 1 { 1 } else { seq + 1 };
            post_write_imm(&qp, &mr, peer, len, seq, &mut counter)?;
            let mut spin = Spin::new(cfg.reply_timeout);
            loop {
                let n = cq.poll(&mut wcs);
                let mut done = false;
                for wc in &wcs[..n] {
                    if !wc.is_ok() {
                        return Err(BenchError::Completion(*wc));
                    }
                    if wc.opcode == WcOpcode::RecvWriteImm {
                        if wc.imm != Some(seq) || wc.byte_len != len {
                            return Err(BenchError::Protocol(format!(
                                "expected immediate {seq} with {len} bytes, got {:?} with {}",
                                wc.imm, wc.byte_len
                            )));
                        }
                        qp.post_recv(&RecvWr {
                            wr_id: wc.wr_id,
                            sge: None,
                        })?;
                        done = true;
                    }
                }
                if done {
                    return Ok(());
                }
                if n == 0 && spin.expired() {
                    return Err(BenchError::Timeout(format!(
                        "{provider}: no reply to a {size}-byte write within {:?}",
                        cfg.reply_timeout
                    )));
                }
            }
        })?;
        rows.push(lat.row(provider.name(), size));
    }
    post_write_imm(&qp, &mr, peer, 0, STOP, &mut counter)?;
    let res = child.finish(SETUP_TIMEOUT);
    qp.disconnect();
    res?;
    Ok(rows)
}

fn server<F: Fabric>(fabric: &F, cfg: &ServerConfig) -> Result<(), BenchError> {
    let provider = fabric.provider();
    let max32 = len32(cfg.max_bytes)?;
    let mr = fabric.alloc_mr(cfg.max_bytes, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
    let cq = fabric.create_cq(CQ_DEPTH)?;
    let bind = cfg.bind.clone().unwrap_or_else(|| default_bind(provider));
    let listener = fabric.listen(&bind)?;
    announce(&listener.local_addr())?;
    let req = listener.next_request(SETUP_TIMEOUT)?.ok_or_else(|| {
        BenchError::Timeout(format!("no client connected within {SETUP_TIMEOUT:?}"))
    })?;
    let Some(peer) = RemoteBuf::from_bytes(req.private_data()) else {
        req.reject("expected a 16-byte buffer descriptor");
        return Err(BenchError::Protocol("short connect private data".into()));
    };
    let qp = req.accept(QpInit::new(&cq), &recvs(), &mr.remote(0, max32).to_bytes())?;
    drop(listener);
    pin_current_thread(cfg.core)?;

    let mut wcs = [Wc::EMPTY; 16];
    let mut counter = 0u64;
    let mut last = Instant::now();
    let mut idle = 0u32;
    loop {
        let n = cq.poll(&mut wcs);
        for wc in &wcs[..n] {
            if !wc.is_ok() {
                return Err(BenchError::Completion(*wc));
            }
            if wc.opcode != WcOpcode::RecvWriteImm {
                continue;
            }
            let imm = wc.imm.unwrap_or(0);
            if imm == STOP {
                qp.disconnect();
                return Ok(());
            }
            if wc.byte_len > max32 || peer.len < wc.byte_len {
                return Err(BenchError::Protocol(format!(
                    "{} bytes do not fit the buffers",
                    wc.byte_len
                )));
            }
            qp.post_recv(&RecvWr {
                wr_id: wc.wr_id,
                sge: None,
            })?;
            post_write_imm(&qp, &mr, peer, wc.byte_len, imm, &mut counter)?;
        }
        if n > 0 {
            idle = 0;
            continue;
        }
        idle = idle.wrapping_add(1);
        if idle % 4096 == 0 {
            let now = Instant::now();
            if idle == 4096 {
                // First check after activity: restart the idle clock here, cheaply.
                last = now;
            }
            if now - last > SERVER_IDLE_TIMEOUT {
                return Err(BenchError::Timeout(format!(
                    "no message from the client for {SERVER_IDLE_TIMEOUT:?}"
                )));
            }
            if !qp.is_connected() {
                return Err(BenchError::Server(
                    "client disconnected before saying stop".into(),
                ));
            }
        } else {
            std::hint::spin_loop();
        }
    }
}
