//! Connection setup: the listener (passive side), connection requests, and `connect`.
//!
//! The listener's acceptor thread accepts sockets and hands each to a short-lived handshake
//! thread that reads the peer's hello with a deadline ([`HANDSHAKE_TIMEOUT`]). A peer that
//! stalls half way, speaks another protocol, or announces too much private data is logged and
//! dropped there, without holding up anyone else; only well-formed requests reach
//! [`Listener::next_request`]. The request's `accept` creates the queue pair, posts its
//! receives, and only then sends the accept, so nothing the peer sends can find no receive.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::domain::Domain;
use super::qp::{lock, TcpQp};
use super::wire::{kind, Hello, HelloError, HELLO_LEN};
use super::TcpFabric;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::notify::new_eventfd;
use crate::rdma::types::RecvWr;
use crate::rdma::{ConnRequest, Listener, QpInit, MAX_PRIVATE_DATA};

/// How long a peer has to complete its side of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most handshakes in progress at once per listener; more connections are dropped.
const MAX_HANDSHAKES: usize = 128;

/// Queue pair numbers are unique within the process.
static NEXT_QP_NUM: AtomicU32 = AtomicU32::new(1);

pub(crate) fn new_qp_num() -> u32 {
    NEXT_QP_NUM.fetch_add(1, Ordering::Relaxed)
}

fn hello_for(kind: u16, qp_num: u32, init: &QpInit<'_, TcpFabric>, data_len: usize) -> Hello {
    Hello {
        kind,
        qp_num,
        max_send_wr: init.caps.max_send_wr.max(1),
        max_recv_wr: init.caps.max_recv_wr.max(1),
        max_msg_size: init.caps.max_msg_size,
        rnr_ms: u32::try_from(init.timeouts.rnr.as_millis()).unwrap_or(u32::MAX),
        pid: std::process::id(),
        data_len: data_len as u32,
    }
}

/// Reads exactly `buf.len()` bytes before `deadline`.
fn read_full(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "handshake timed out",
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "peer closed during the handshake",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "handshake timed out",
                ))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn send_hello(s: &mut TcpStream, h: &Hello, data: &[u8], timeout: Duration) -> std::io::Result<()> {
    s.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let mut msg = Vec::with_capacity(HELLO_LEN + data.len());
    msg.extend_from_slice(&h.encode());
    msg.extend_from_slice(data);
    s.write_all(&msg)
}

/// Parses `host:port`.
fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    let bad = |reason: String| FabricError::BadAddress {
        addr: addr.to_string(),
        reason,
    };
    let v: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| bad(format!("expected host:port ({e})")))?
        .collect();
    if v.is_empty() {
        return Err(bad("resolves to no address".into()));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Active side

/// Connects to the listener at `addr` (see [`crate::rdma::Fabric::connect`]).
pub(crate) fn connect(
    dom: &Arc<Domain>,
    addr: &str,
    init: QpInit<'_, TcpFabric>,
    recvs: &[RecvWr],
    private_data: &[u8],
    timeout: Duration,
) -> Result<(TcpQp, Vec<u8>)> {
    if private_data.len() > MAX_PRIVATE_DATA {
        return Err(FabricError::Invalid(format!(
            "private data of {} bytes exceeds {MAX_PRIVATE_DATA}",
            private_data.len()
        )));
    }
    if recvs.len() > init.caps.max_recv_wr.max(1) as usize {
        return Err(FabricError::Invalid(format!(
            "{} initial receives exceed max_recv_wr = {}",
            recvs.len(),
            init.caps.max_recv_wr
        )));
    }
    let deadline = Instant::now() + timeout;
    let timed_out = || FabricError::Timeout(timeout);
    let mut last_err = None;
    let mut stream = None;
    for a in resolve(addr)? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some(mut s) = stream else {
        let e = last_err.unwrap_or_else(|| std::io::Error::other("no address"));
        if e.kind() == std::io::ErrorKind::TimedOut {
            return Err(timed_out());
        }
        return Err(FabricError::io(format!("connect to {addr}"), e));
    };
    let io_err = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            FabricError::Timeout(timeout)
        } else {
            FabricError::Handshake(format!("with {addr}: {e}"))
        }
    };
    s.set_nodelay(true)
        .map_err(|e| FabricError::io("TCP_NODELAY", e))?;
    let num = new_qp_num();
    let hello = hello_for(kind::HELLO, num, &init, private_data.len());
    send_hello(
        &mut s,
        &hello,
        private_data,
        deadline.saturating_duration_since(Instant::now()),
    )
    .map_err(io_err)?;
    let mut b = [0u8; HELLO_LEN];
    read_full(&mut s, &mut b, deadline).map_err(io_err)?;
    let reply = Hello::decode(&b, &[kind::ACCEPT, kind::REJECT])
        .map_err(|e| FabricError::Handshake(format!("from {addr}: {e}")))?;
    let mut data = vec![0u8; reply.data_len as usize];
    read_full(&mut s, &mut data, deadline).map_err(io_err)?;
    if reply.kind == kind::REJECT {
        return Err(FabricError::Rejected(
            String::from_utf8_lossy(&data).into_owned(),
        ));
    }
    let peer = format!("{addr} (pid {}, qp {})", reply.pid, reply.qp_num);
    let qp = TcpQp::create(dom, s, num, &reply, &init, recvs, peer)?;
    Ok((qp, data))
}

// ---------------------------------------------------------------------------------------------
// Passive side

struct Queue {
    reqs: Mutex<VecDeque<TcpRequest>>,
    cv: Condvar,
    /// Semaphore eventfd: its count is the number of queued requests.
    ready: OwnedFd,
    stop: AtomicBool,
    handshakes: AtomicUsize,
}

/// The passive side of tcp connection setup.
pub struct TcpListener {
    addr: SocketAddr,
    q: Arc<Queue>,
    stop_fd: Arc<OwnedFd>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn semaphore_eventfd() -> Result<OwnedFd> {
    // SAFETY: plain eventfd creation; the result is checked.
    let raw = unsafe {
        libc::eventfd(
            0,
            libc::EFD_CLOEXEC | libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE,
        )
    };
    if raw < 0 {
        return Err(FabricError::io("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn efd_add(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd.
    unsafe {
        libc::write(fd, (&one as *const u64).cast(), 8);
    }
}

fn efd_take(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64 from a non-blocking eventfd (EAGAIN is harmless).
    unsafe {
        libc::read(fd, (&mut v as *mut u64).cast(), 8);
    }
}

impl TcpListener {
    pub(crate) fn bind(dom: &Arc<Domain>, addr: &str) -> Result<TcpListener> {
        let addrs = resolve(addr)?;
        let l = StdListener::bind(&addrs[..])
            .map_err(|e| FabricError::io(format!("listen on {addr}"), e))?;
        l.set_nonblocking(true)
            .map_err(|e| FabricError::io("listener O_NONBLOCK", e))?;
        let bound = l
            .local_addr()
            .map_err(|e| FabricError::io("listener address", e))?;
        let q = Arc::new(Queue {
            reqs: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            ready: semaphore_eventfd()?,
            stop: AtomicBool::new(false),
            handshakes: AtomicUsize::new(0),
        });
        let stop_fd = Arc::new(new_eventfd()?);
        let (q2, stop2, dom2) = (q.clone(), stop_fd.clone(), dom.clone());
        let acceptor = std::thread::Builder::new()
            .name("rfaas-tcp-accept".into())
            .spawn(move || accept_loop(l, q2, stop2, dom2))
            .map_err(|e| FabricError::io("spawn tcp acceptor", e))?;
        Ok(TcpListener {
            addr: bound,
            q,
            stop_fd,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        self.q.stop.store(true, Ordering::SeqCst);
        efd_add(self.stop_fd.as_raw_fd());
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        // Pending requests are refused as they drop.
        let pending: Vec<TcpRequest> = lock(&self.q.reqs).drain(..).collect();
        drop(pending);
    }
}

fn accept_loop(l: StdListener, q: Arc<Queue>, stop_fd: Arc<OwnedFd>, dom: Arc<Domain>) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if q.stop.load(Ordering::SeqCst) {
            return;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!("tcp listener: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        loop {
            match l.accept() {
                Ok((s, peer)) => {
                    if q.handshakes.load(Ordering::SeqCst) >= MAX_HANDSHAKES {
                        tracing::warn!(%peer, "tcp listener: too many handshakes in progress; dropping connection");
                        continue;
                    }
                    q.handshakes.fetch_add(1, Ordering::SeqCst);
                    let (q2, dom2) = (q.clone(), dom.clone());
                    let spawned = std::thread::Builder::new()
                        .name("rfaas-tcp-handshake".into())
                        .spawn(move || {
                            handshake(s, peer, &q2, &dom2);
                            q2.handshakes.fetch_sub(1, Ordering::SeqCst);
                        });
                    if let Err(e) = spawned {
                        q.handshakes.fetch_sub(1, Ordering::SeqCst);
                        tracing::warn!(%peer, "tcp listener: cannot start a handshake thread: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ECONNABORTED, EMFILE, ...: log, back off a little, keep serving.
                    tracing::warn!("tcp listener: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                    break;
                }
            }
        }
    }
}

/// Runs the passive side of one handshake; queues the request when it is well formed.
fn handshake(mut s: TcpStream, peer: SocketAddr, q: &Queue, dom: &Arc<Domain>) {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    if let Err(e) = s.set_nonblocking(false).and_then(|_| s.set_nodelay(true)) {
        tracing::warn!(%peer, "tcp handshake: socket setup failed: {e}");
        return;
    }
    let mut b = [0u8; HELLO_LEN];
    if let Err(e) = read_full(&mut s, &mut b, deadline) {
        tracing::warn!(%peer, "tcp handshake refused: {e}");
        return;
    }
    let hello = match Hello::decode(&b, &[kind::HELLO]) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%peer, "tcp handshake refused: {e}");
            if let HelloError::BadVersion(_) = e {
                let reason = e.to_string();
                let rej = Hello {
                    kind: kind::REJECT,
                    data_len: reason.len() as u32,
                    ..Hello::default()
                };
                let _ = send_hello(&mut s, &rej, reason.as_bytes(), Duration::from_millis(100));
            }
            return;
        }
    };
    let mut data = vec![0u8; hello.data_len as usize];
    if let Err(e) = read_full(&mut s, &mut data, deadline) {
        tracing::warn!(%peer, "tcp handshake refused: private data: {e}");
        return;
    }
    let req = TcpRequest {
        stream: Some(s),
        peer: format!("{peer} (pid {}, qp {})", hello.pid, hello.qp_num),
        hello,
        data,
        dom: dom.clone(),
    };
    tracing::debug!(peer = %req.peer, "tcp connection request");
    let mut reqs = lock(&q.reqs);
    if q.stop.load(Ordering::SeqCst) {
        return; // the listener is gone; `req` refuses itself as it drops
    }
    reqs.push_back(req);
    efd_add(q.ready.as_raw_fd());
    q.cv.notify_one();
}

impl Listener<TcpFabric> for TcpListener {
    fn local_addr(&self) -> String {
        self.addr.to_string()
    }

    fn next_request(&self, timeout: Duration) -> Result<Option<TcpRequest>> {
        let deadline = Instant::now() + timeout;
        let mut reqs = lock(&self.q.reqs);
        loop {
            if let Some(r) = reqs.pop_front() {
                efd_take(self.q.ready.as_raw_fd());
                return Ok(Some(r));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            reqs = self
                .q
                .cv
                .wait_timeout(reqs, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.q.ready.as_fd().as_raw_fd()
    }
}

/// A well-formed incoming tcp connection request. Dropping it without `accept` refuses it.
pub struct TcpRequest {
    stream: Option<TcpStream>,
    peer: String,
    hello: Hello,
    data: Vec<u8>,
    dom: Arc<Domain>,
}

impl std::fmt::Debug for TcpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpRequest")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TcpRequest {
    fn refuse(&mut self, reason: &str) {
        if let Some(mut s) = self.stream.take() {
            let mut end = reason.len().min(MAX_PRIVATE_DATA);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let reason = &reason[..end];
            let rej = Hello {
                kind: kind::REJECT,
                pid: std::process::id(),
                data_len: reason.len() as u32,
                ..Hello::default()
            };
            if let Err(e) = send_hello(&mut s, &rej, reason.as_bytes(), Duration::from_millis(500))
            {
                tracing::debug!(peer = %self.peer, "tcp reject not delivered: {e}");
            }
            let _ = s.shutdown(Shutdown::Write);
        }
    }
}

impl Drop for TcpRequest {
    fn drop(&mut self) {
        self.refuse("connection request dropped without an answer");
    }
}

impl ConnRequest<TcpFabric> for TcpRequest {
    fn private_data(&self) -> &[u8] {
        &self.data
    }

    fn peer(&self) -> &str {
        &self.peer
    }

    fn accept(
        mut self,
        init: QpInit<'_, TcpFabric>,
        initial_recvs: &[RecvWr],
        private_data: &[u8],
    ) -> Result<TcpQp> {
        if private_data.len() > MAX_PRIVATE_DATA {
            return Err(FabricError::Invalid(format!(
                "private data of {} bytes exceeds {MAX_PRIVATE_DATA}",
                private_data.len()
            )));
        }
        let Some(s) = self.stream.take() else {
            return Err(FabricError::Disconnected);
        };
        let num = new_qp_num();
        let qp = TcpQp::create(
            &self.dom,
            s,
            num,
            &self.hello,
            &init,
            initial_recvs,
            self.peer.clone(),
        )?;
        // The receives are posted: now let the peer start.
        let reply = hello_for(kind::ACCEPT, num, &init, private_data.len());
        let mut msg = Vec::with_capacity(HELLO_LEN + private_data.len());
        msg.extend_from_slice(&reply.encode());
        msg.extend_from_slice(private_data);
        // Nobody else can send on the queue pair yet: the caller gets it when we return.
        if let Err(e) = (&qp.inner.stream).write_all(&msg) {
            return Err(FabricError::io(format!("accept {}", self.peer), e));
        }
        Ok(qp)
    }

    fn reject(mut self, reason: &str) {
        tracing::debug!(peer = %self.peer, "tcp connection rejected: {reason}");
        self.refuse(reason);
    }
}
