//! Connection setup of the `ofi` provider. Reliable-datagram endpoints have no connect/accept,
//! so rfaas does it the way rdma_cm would, over a small TCP side channel: the connector sends
//! its libfabric provider name, endpoint name (`fi_getname`), queue pair number, posted receives
//! and private data; the listener's owner accepts (inserting the name into its address vector)
//! or rejects with a reason. Every frame is length-checked before use, a peer that stalls or
//! sends junk is dropped without delaying others, and the socket then stays open as the
//! connection's liveness channel.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::domain::Domain;
use super::qp::{OfiQp, QpParts};
use super::wire::{self, Hello, Reply};
use super::OfiFabric;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::types::RecvWr;
use crate::rdma::{ConnRequest, Listener, QpInit, MAX_PRIVATE_DATA};

/// How long a connecting peer has to send its whole request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

struct Pending {
    sock: TcpStream,
    peer: String,
    buf: Vec<u8>,
    deadline: Instant,
}

/// The passive side of `ofi` connection setup.
pub struct OfiListener {
    d: Arc<Domain>,
    sock: TcpListener,
    addr: String,
    pending: Mutex<Vec<Pending>>,
}

impl OfiListener {
    pub(crate) fn bind(d: &Arc<Domain>, addr: &str) -> Result<OfiListener> {
        let sock = TcpListener::bind(addr).map_err(|e| FabricError::BadAddress {
            addr: addr.to_string(),
            reason: format!("cannot listen: {e}"),
        })?;
        sock.set_nonblocking(true)
            .map_err(|e| FabricError::io("listener", e))?;
        let local = sock
            .local_addr()
            .map_err(|e| FabricError::io("listener address", e))?;
        Ok(OfiListener {
            d: d.clone(),
            sock,
            addr: local.to_string(),
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Accepts new sockets and reads what pending ones sent; returns a complete request.
    fn step(&self, pending: &mut Vec<Pending>) -> Option<OfiRequest> {
        loop {
            match self.sock.accept() {
                Ok((s, a)) => {
                    if s.set_nonblocking(true).is_ok() {
                        let _ = s.set_nodelay(true);
                        pending.push(Pending {
                            sock: s,
                            peer: a.to_string(),
                            buf: Vec::new(),
                            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("ofi listener accept: {e}");
                    break;
                }
            }
        }
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            let p = &mut pending[i];
            let mut chunk = [0u8; 2048];
            let mut drop_it = now >= p.deadline;
            match p.sock.read(&mut chunk) {
                Ok(0) => drop_it = true,
                Ok(n) => p.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => drop_it = true,
            }
            if !drop_it && !p.buf.is_empty() {
                match wire::take_frame(&p.buf) {
                    Ok(None) => {}
                    Ok(Some(body)) => {
                        let parsed = Hello::parse_request(body);
                        let p = pending.swap_remove(i);
                        match parsed {
                            Ok(h) if h.provider != self.d.info.provider => {
                                let why = format!(
                                    "libfabric provider mismatch: peer uses {:?}, this side {:?}",
                                    h.provider, self.d.info.provider
                                );
                                tracing::warn!(peer = %p.peer, "ofi: {why}");
                                reply(&p.sock, &Reply::Reject(why));
                            }
                            Ok(hello) => {
                                return Some(OfiRequest {
                                    d: self.d.clone(),
                                    sock: p.sock,
                                    peer: p.peer,
                                    hello,
                                })
                            }
                            Err(e) => tracing::warn!(peer = %p.peer, "ofi: bad handshake: {e}"),
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(peer = %p.peer, "ofi: bad handshake: {e}");
                        drop_it = true;
                    }
                }
            }
            if drop_it {
                pending.swap_remove(i);
            } else {
                i += 1;
            }
        }
        None
    }
}

fn reply(sock: &TcpStream, r: &Reply) {
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = (&*sock).write_all(&r.frame());
}

fn poll_fds(fds: &[RawFd], timeout: Duration) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().clamp(1, 50) as i32;
    // SAFETY: `p` holds `p.len()` valid pollfd entries.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
}

impl Listener<OfiFabric> for OfiListener {
    fn local_addr(&self) -> String {
        self.addr.clone()
    }

    fn next_request(&self, timeout: Duration) -> Result<Option<OfiRequest>> {
        let deadline = Instant::now() + timeout;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = self.step(&mut pending) {
                return Ok(Some(r));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut fds = vec![self.sock.as_raw_fd()];
            fds.extend(pending.iter().map(|p| p.sock.as_raw_fd()));
            poll_fds(&fds, left);
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// An incoming `ofi` connection request.
pub struct OfiRequest {
    d: Arc<Domain>,
    sock: TcpStream,
    peer: String,
    hello: Hello,
}

impl ConnRequest<OfiFabric> for OfiRequest {
    fn private_data(&self) -> &[u8] {
        &self.hello.private_data
    }

    fn peer(&self) -> &str {
        &self.peer
    }

    fn accept(
        self,
        init: QpInit<'_, OfiFabric>,
        initial_recvs: &[RecvWr],
        private_data: &[u8],
    ) -> Result<OfiQp> {
        if private_data.len() > MAX_PRIVATE_DATA {
            return Err(FabricError::Invalid(format!(
                "private data of {} bytes (at most {MAX_PRIVATE_DATA})",
                private_data.len()
            )));
        }
        let peer = match self.d.peer_addr(&self.hello.ep_name) {
            Ok(a) => a,
            Err(e) => {
                reply(&self.sock, &Reply::Reject(e.to_string()));
                return Err(e);
            }
        };
        let num = match self.d.alloc_qp_num() {
            Ok(n) => n,
            Err(e) => {
                reply(&self.sock, &Reply::Reject(e.to_string()));
                return Err(e);
            }
        };
        let accept = Reply::Accept(Hello {
            provider: self.d.info.provider.clone(),
            ep_name: self.d.name.clone(),
            qp_num: num,
            credits: initial_recvs.len() as u32,
            private_data: private_data.to_vec(),
        });
        let sock = self
            .sock
            .try_clone()
            .map_err(|e| FabricError::io("side channel", e))?;
        let parts = QpParts::new(num, peer, &self.hello, init, initial_recvs, sock);
        let qp = OfiQp::create(&self.d, parts)?;
        let _ = self.sock.set_nonblocking(false);
        let _ = self.sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
        (&self.sock)
            .write_all(&accept.frame())
            .map_err(|e| FabricError::io("sending the accept", e))?;
        let _ = self.sock.set_nonblocking(true);
        Ok(qp)
    }

    fn reject(self, reason: &str) {
        reply(&self.sock, &Reply::Reject(reason.to_string()));
    }
}

/// The active side: connects to the listener at `addr`.
pub(crate) fn connect(
    d: &Arc<Domain>,
    addr: &str,
    init: QpInit<'_, OfiFabric>,
    initial_recvs: &[RecvWr],
    private_data: &[u8],
    timeout: Duration,
) -> Result<(OfiQp, Vec<u8>)> {
    if private_data.len() > MAX_PRIVATE_DATA {
        return Err(FabricError::Invalid(format!(
            "private data of {} bytes (at most {MAX_PRIVATE_DATA})",
            private_data.len()
        )));
    }
    let bad = |reason: String| FabricError::BadAddress {
        addr: addr.to_string(),
        reason,
    };
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| bad(format!("expected host:port ({e})")))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))?;
    let deadline = Instant::now() + timeout;
    let mut sock = TcpStream::connect_timeout(&sa, timeout)
        .map_err(|e| FabricError::io(format!("connecting to {addr}"), e))?;
    let _ = sock.set_nodelay(true);
    let num = d.alloc_qp_num()?;
    let hello = Hello {
        provider: d.info.provider.clone(),
        ep_name: d.name.clone(),
        qp_num: num,
        credits: initial_recvs.len() as u32,
        private_data: private_data.to_vec(),
    };
    sock.set_write_timeout(Some(timeout))
        .map_err(|e| FabricError::io("side channel", e))?;
    sock.write_all(&hello.request_frame())
        .map_err(|e| FabricError::io("sending the connect request", e))?;
    let mut buf = Vec::new();
    let body = loop {
        if let Some(b) = wire::take_frame(&buf)? {
            break b.to_vec();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FabricError::Timeout(timeout));
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| FabricError::io("side channel", e))?;
        let mut chunk = [0u8; 2048];
        match sock.read(&mut chunk) {
            Ok(0) => {
                return Err(FabricError::Handshake(
                    "the listener closed the connection".into(),
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(FabricError::Timeout(timeout))
            }
            Err(e) => return Err(FabricError::io("reading the accept", e)),
        }
    };
    let h = match Reply::parse(&body)? {
        Reply::Reject(why) => return Err(FabricError::Rejected(why)),
        Reply::Accept(h) => h,
    };
    if h.provider != d.info.provider {
        return Err(FabricError::Handshake(format!(
            "libfabric provider mismatch: listener uses {:?}, this side {:?}",
            h.provider, d.info.provider
        )));
    }
    let peer = d.peer_addr(&h.ep_name)?;
    let qp = OfiQp::create(d, QpParts::new(num, peer, &h, init, initial_recvs, sock))?;
    Ok((qp, h.private_data))
}
