//! The floors of the media, measured without the fabric layer, between the same two pinned
//! processes as the fabric ping-pong.
//!
//! * `shm-raw`: the client creates a memfd segment ([`FloorSegment`]), the server process inherits
//!   and maps it. A round trip: the client copies the payload into the request area and stores
//!   `(seq << 32) | len` into the request word with `Release`; the server spins on that word with
//!   `Acquire`, copies the request area into the reply area (the echo the fabric server does with
//!   its write-with-immediate) and stores the same word into the reply word with `Release`; the
//!   client spins on it with `Acquire`. One copy each way, as on the shm provider.
//! * `tcp-raw`: a `TCP_NODELAY` loopback connection, both ends busy-polling
//!   `recv(MSG_DONTWAIT)` and writing with blocking `write`s; a message is an 8-byte header (length, sequence number, little endian) followed by
//!   the payload, and the server echoes it back.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

use super::child::{announce, ServerChild};
use super::cli::ServerConfig;
use super::{measure, BenchError, Config, Mode, Row, Spin, SERVER_IDLE_TIMEOUT, SETUP_TIMEOUT};
use crate::pin::pin_current_thread;
use crate::rdma::raw_floor::FloorSegment;

/// The length that tells a raw server to exit.
const STOP_LEN: u32 = u32::MAX;

/// Where things live in the shm-raw segment: two flag words on separate cache-line pairs, then
/// two page-aligned payload areas.
#[derive(Clone, Copy, Debug)]
struct ShmLayout {
    req_flag: usize,
    resp_flag: usize,
    req_data: usize,
    resp_data: usize,
    len: usize,
}

impl ShmLayout {
    fn new(max: usize) -> ShmLayout {
        let area = max.div_ceil(4096).max(1) * 4096;
        ShmLayout {
            req_flag: 0,
            resp_flag: 128,
            req_data: 4096,
            resp_data: 4096 + area,
            len: 4096 + 2 * area,
        }
    }
}

#[inline]
fn flag(seq: u32, len: u32) -> u64 {
    (u64::from(seq) << 32) | u64::from(len)
}

/// The client (measuring) side of `shm-raw`.
pub fn shm_client(cfg: &Config) -> Result<Vec<Row>, BenchError> {
    let max = cfg.max_bytes();
    let layout = ShmLayout::new(max);
    let seg = FloorSegment::create(layout.len)?;
    let fd = seg.inheritable_fd()?;
    let mut child = ServerChild::spawn(&ServerConfig::command_line(
        Mode::ShmRaw,
        cfg,
        Some(fd.as_raw_fd()),
    ))?;
    drop(fd);
    child.wait_ready(SETUP_TIMEOUT)?;
    pin_current_thread(cfg.client_core)?;

    let src = vec![0x5au8; max];
    let (req, resp) = (seg.word(layout.req_flag), seg.word(layout.resp_flag));
    let mut seq: u32 = 0;
    let mut rows = Vec::with_capacity(cfg.sizes.len());
    for &size in &cfg.sizes {
        let len = u32::try_from(size).map_err(|_| BenchError::Invalid(format!("size {size}")))?;
        let lat = measure(cfg.warmup, cfg.iterations, cfg.max_time_per_size, || {
            seq = seq.wrapping_add(1).max(1);
            let v = flag(seq, len);
            seg.write(layout.req_data, &src[..size]);
            req.store(v, Ordering::Release);
            let mut spin = Spin::new(cfg.reply_timeout);
            while resp.load(Ordering::Acquire) != v {
                if spin.expired() {
                    return Err(BenchError::Timeout(format!(
                        "shm-raw: no reply to {size} bytes within {:?}",
                        cfg.reply_timeout
                    )));
                }
            }
            Ok(())
        })?;
        rows.push(lat.row(Mode::ShmRaw.name(), size));
    }
    req.store(
        flag(seq.wrapping_add(1).max(1), STOP_LEN),
        Ordering::Release,
    );
    child.finish(SETUP_TIMEOUT)?;
    Ok(rows)
}

/// The server side of `shm-raw` (runs in the child process).
pub fn shm_server(cfg: &ServerConfig) -> Result<(), BenchError> {
    let fd = cfg
        .inherited_fd
        .ok_or_else(|| BenchError::Invalid("shm-raw server needs --inherited-fd".into()))?;
    let layout = ShmLayout::new(cfg.max_bytes);
    let seg = FloorSegment::adopt_inherited_fd(fd, layout.len)?;
    announce("shm-raw")?;
    pin_current_thread(cfg.core)?;
    let (req, resp) = (seg.word(layout.req_flag), seg.word(layout.resp_flag));
    let mut last = 0u64;
    loop {
        let mut spin = Spin::new(SERVER_IDLE_TIMEOUT);
        let v = loop {
            let v = req.load(Ordering::Acquire);
            if v != last {
                break v;
            }
            if spin.expired() {
                return Err(BenchError::Timeout(format!(
                    "shm-raw: no request for {SERVER_IDLE_TIMEOUT:?}"
                )));
            }
        };
        let len = (v & u64::from(u32::MAX)) as u32;
        if len == STOP_LEN {
            return Ok(());
        }
        let len = len as usize;
        if len > cfg.max_bytes {
            return Err(BenchError::Protocol(format!(
                "shm-raw request of {len} bytes exceeds {}",
                cfg.max_bytes
            )));
        }
        seg.copy_within(layout.req_data, layout.resp_data, len);
        resp.store(v, Ordering::Release);
        last = v;
    }
}

/// Reads exactly `buf.len()` bytes, busy-polling `recv(MSG_DONTWAIT)` (the socket itself stays
/// blocking, so that writes block instead of spinning).
fn read_exact_spin(s: &TcpStream, buf: &mut [u8], timeout: Duration) -> Result<(), BenchError> {
    let mut got = 0;
    let mut spin = Spin::new(timeout);
    while got < buf.len() {
        match recv(s.as_raw_fd(), &mut buf[got..], MsgFlags::MSG_DONTWAIT) {
            Ok(0) => {
                return Err(BenchError::Server(
                    "tcp-raw: peer closed the connection".into(),
                ))
            }
            Ok(n) => got += n,
            Err(Errno::EAGAIN) => {
                if spin.expired() {
                    return Err(BenchError::Timeout(format!(
                        "tcp-raw: no data within {timeout:?}"
                    )));
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(BenchError::io("tcp-raw recv", e.into())),
        }
    }
    Ok(())
}

/// Writes all of `buf` with blocking writes (bounded by the socket's write timeout).
fn write_all(mut s: &TcpStream, buf: &[u8]) -> Result<(), BenchError> {
    s.write_all(buf)
        .map_err(|e| BenchError::io("tcp-raw write", e))
}

fn header(len: u32, seq: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&seq.to_le_bytes());
    h
}

fn tune(s: &TcpStream, timeout: Duration) -> Result<(), BenchError> {
    s.set_nodelay(true)
        .map_err(|e| BenchError::io("TCP_NODELAY", e))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| BenchError::io("SO_SNDTIMEO", e))
}

/// The client (measuring) side of `tcp-raw`.
pub fn tcp_client(cfg: &Config) -> Result<Vec<Row>, BenchError> {
    let max = cfg.max_bytes();
    let mut child = ServerChild::spawn(&ServerConfig::command_line(Mode::TcpRaw, cfg, None))?;
    let addr = child.wait_ready(SETUP_TIMEOUT)?;
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| BenchError::Protocol(format!("server address {addr:?}: {e}")))?;
    let s = TcpStream::connect_timeout(&sa, SETUP_TIMEOUT)
        .map_err(|e| BenchError::io(format!("connect {sa}"), e))?;
    tune(&s, cfg.reply_timeout)?;
    pin_current_thread(cfg.client_core)?;

    let mut sbuf = vec![0x5au8; 8 + max];
    let mut rbuf = vec![0u8; 8 + max];
    let mut seq: u32 = 0;
    let mut rows = Vec::with_capacity(cfg.sizes.len());
    for &size in &cfg.sizes {
        let len = u32::try_from(size).map_err(|_| BenchError::Invalid(format!("size {size}")))?;
        let lat = measure(cfg.warmup, cfg.iterations, cfg.max_time_per_size, || {
            seq = seq.wrapping_add(1);
            sbuf[..8].copy_from_slice(&header(len, seq));
            write_all(&s, &sbuf[..8 + size])?;
            read_exact_spin(&s, &mut rbuf[..8 + size], cfg.reply_timeout)?;
            if rbuf[..8] != sbuf[..8] {
                return Err(BenchError::Protocol(
                    "tcp-raw: reply header does not match".into(),
                ));
            }
            Ok(())
        })?;
        rows.push(lat.row(Mode::TcpRaw.name(), size));
    }
    write_all(&s, &header(STOP_LEN, 0))?;
    child.finish(SETUP_TIMEOUT)?;
    Ok(rows)
}

/// The server side of `tcp-raw` (runs in the child process).
pub fn tcp_server(cfg: &ServerConfig) -> Result<(), BenchError> {
    let bind = cfg.bind.as_deref().unwrap_or("127.0.0.1:0");
    let listener =
        TcpListener::bind(bind).map_err(|e| BenchError::io(format!("bind {bind}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::io("local_addr", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| BenchError::io("O_NONBLOCK", e))?;
    announce(&addr.to_string())?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Err(BenchError::Timeout(format!(
                    "tcp-raw: no client within {SETUP_TIMEOUT:?}"
                )));
            }
            Err(e) => return Err(BenchError::io("accept", e)),
        }
    };
    drop(listener);
    tune(&s, SERVER_IDLE_TIMEOUT)?;
    pin_current_thread(cfg.core)?;
    let mut buf = vec![0u8; 8 + cfg.max_bytes];
    loop {
        read_exact_spin(&s, &mut buf[..8], SERVER_IDLE_TIMEOUT)?;
        let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
        if len == STOP_LEN {
            return Ok(());
        }
        let len = len as usize;
        if len > cfg.max_bytes {
            return Err(BenchError::Protocol(format!(
                "tcp-raw request of {len} bytes exceeds {}",
                cfg.max_bytes
            )));
        }
        read_exact_spin(&s, &mut buf[8..8 + len], SERVER_IDLE_TIMEOUT)?;
        write_all(&s, &buf[..8 + len])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_separates_flags_and_areas() {
        let l = ShmLayout::new(1 << 20);
        assert!(l.resp_flag - l.req_flag >= 128);
        assert!(l.req_data >= l.resp_flag + 8 && l.req_data % 4096 == 0);
        assert_eq!(l.resp_data - l.req_data, 1 << 20);
        assert_eq!(l.len, l.resp_data + (1 << 20));
        let small = ShmLayout::new(64);
        assert_eq!(small.resp_data - small.req_data, 4096);
        assert_eq!(flag(1, 64), (1 << 32) | 64);
    }
}
