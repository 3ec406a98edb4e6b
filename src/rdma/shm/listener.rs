//! shm connection setup: the listener (accepted on the domain's control thread, see
//! [`super::control`]; a handshake whose connect message is not there yet gets a short-lived
//! thread of its own, so a stalled or malicious client never blocks the others), incoming
//! requests, and `connect`.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::Duration;

use nix::sys::socket::{
    accept4, bind, connect as sock_connect, getsockopt, listen, socket, sockopt::PeerCredentials,
    AddressFamily, Backlog, SockFlag, SockType,
};

use super::addr::{candidate_port, ShmAddr};
use super::control::OnReadable;
use super::qp::{Peer, QpShared, RecvState, ShmQp};
use super::ring::{ring_bytes, Ring};
use super::wire::{self, Hello, Kind, NUM_FDS};
use super::{Domain, ShmFabric, TABLE_CAP};
use crate::rdma::error::{FabricError, Result};
use crate::rdma::mr_table::{Entry, TableView, ENTRY_SIZE};
use crate::rdma::notify::{new_eventfd, Notifier};
use crate::rdma::segment::Segment;
use crate::rdma::{ConnRequest, Listener, QpInit, RecvWr, MAX_PRIVATE_DATA};

/// How long an incoming handshake may take before the listener drops it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshakes in progress at once; more are refused (and logged) until some finish.
const MAX_INFLIGHT: usize = 64;

#[derive(Debug)]
struct LShared {
    rx: Mutex<mpsc::Receiver<ShmRequest>>,
    efd: OwnedFd,
    inflight: AtomicUsize,
}

/// A listener's accepting side, called by the domain's control thread when its socket is
/// readable.
struct Acceptor {
    /// Weak: the domain's control thread holds this, and the domain holds that thread.
    dom: Weak<Domain>,
    /// The listening socket (non-blocking); `None` once the listener is closed.
    sock: Mutex<Option<OwnedFd>>,
    sh: Arc<LShared>,
    tx: mpsc::Sender<ShmRequest>,
}

/// A listening shm endpoint.
#[derive(Debug)]
pub struct ShmListener {
    addr: String,
    sh: Arc<LShared>,
    dom: Arc<Domain>,
    acceptor: Arc<Acceptor>,
    /// Its registration with the domain's control thread.
    token: u64,
    path: Option<String>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("sock", &self.sock)
            .finish_non_exhaustive()
    }
}

/// A well-formed incoming connection, waiting for `accept` or `reject`.
#[derive(Debug)]
pub struct ShmRequest {
    dom: Arc<Domain>,
    sock: OwnedFd,
    hello: Hello,
    peer: Peer,
    desc: String,
}

/// A Unix seqpacket socket, close-on-exec, with `flags` besides.
fn seqpacket(flags: SockFlag) -> Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | flags,
        None,
    )
    .map_err(|e| FabricError::io("create unix socket", e))
}

/// The uid of the process on the other end, which must be ours.
fn check_peer_uid(sock: &OwnedFd) -> std::result::Result<(u32, i32), String> {
    let cred = getsockopt(sock, PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != me {
        return Err(format!(
            "peer pid {} runs as uid {}, not {me}: shm is same-user only",
            cred.pid(),
            cred.uid()
        ));
    }
    Ok((cred.uid(), cred.pid()))
}

impl ShmListener {
    pub(crate) fn bind(dom: &Arc<Domain>, addr: &str) -> Result<ShmListener> {
        let parsed = ShmAddr::parse(addr)?;
        let tries = if parsed.wants_port() { 64 } else { 1 };
        let mut last = None;
        for attempt in 0..tries {
            let a = if parsed.wants_port() {
                parsed.with_port(candidate_port(attempt))
            } else {
                parsed.clone()
            };
            // Non-blocking: the control thread accepts until the socket says it is empty.
            let sock = seqpacket(SockFlag::SOCK_NONBLOCK)?;
            if let ShmAddr::Path(p) = &a {
                remove_stale_socket(p);
            }
            match bind(sock.as_raw_fd(), &a.unix()?) {
                Ok(()) => {
                    listen(&sock, Backlog::new(128).unwrap_or(Backlog::MAXCONN))
                        .map_err(|e| FabricError::io("listen", e))?;
                    let path = match &a {
                        ShmAddr::Path(p) => Some(p.clone()),
                        _ => None,
                    };
                    return Self::start(dom, sock, a.display(), path);
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.map_or_else(
            || std::io::Error::other("bind failed"),
            std::io::Error::from,
        );
        Err(FabricError::io(format!("bind shm address {addr}"), e))
    }

    fn start(
        dom: &Arc<Domain>,
        sock: OwnedFd,
        addr: String,
        path: Option<String>,
    ) -> Result<ShmListener> {
        let (tx, rx) = mpsc::channel();
        let sh = Arc::new(LShared {
            rx: Mutex::new(rx),
            efd: new_eventfd()?,
            inflight: AtomicUsize::new(0),
        });
        let raw = sock.as_raw_fd();
        let acceptor = Arc::new(Acceptor {
            dom: Arc::downgrade(dom),
            sock: Mutex::new(Some(sock)),
            sh: sh.clone(),
            tx,
        });
        // The socket stays open (in `acceptor`) until the listener's drop forgets it.
        let token = dom.control.watch_readable(raw, acceptor.clone())?;
        tracing::debug!(%addr, "shm listening");
        Ok(ShmListener {
            addr,
            sh,
            dom: dom.clone(),
            acceptor,
            token,
            path,
        })
    }
}

fn remove_stale_socket(path: &str) {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl OnReadable for Acceptor {
    /// Accepts every connection waiting on the listening socket.
    fn on_readable(&self) {
        let Some(dom) = self.dom.upgrade() else {
            return;
        };
        loop {
            let accepted = {
                let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
                let Some(sock) = sock.as_ref() else {
                    return; // closed
                };
                accept4(sock.as_raw_fd(), SockFlag::SOCK_CLOEXEC)
            };
            let raw = match accepted {
                Ok(fd) => fd,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => {
                    // Out of descriptors or memory: the socket stays readable, so the control
                    // thread comes back; not at once.
                    tracing::warn!("shm listener: accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            };
            // SAFETY: `accept4` returned a fresh descriptor that nothing else owns.
            let conn = unsafe { OwnedFd::from_raw_fd(raw) };
            self.take(&dom, conn);
        }
    }
}

impl Acceptor {
    /// Hands an accepted connection to its handshake.
    fn take(&self, dom: &Arc<Domain>, conn: OwnedFd) {
        let (sh, tx) = (&self.sh, &self.tx);
        if sh.inflight.load(Ordering::Acquire) >= MAX_INFLIGHT {
            tracing::warn!(
                "shm listener: refused a connection: {MAX_INFLIGHT} handshakes already in progress"
            );
            return;
        }
        sh.inflight.fetch_add(1, Ordering::AcqRel);
        // A client sends its connect message right after `connect`: when it is there already,
        // the handshake cannot block, and this thread does it (no thread to start on a cold
        // start's path). Otherwise a thread of its own waits for it (bounded).
        if readable_now(&conn) {
            handshake(dom, conn, sh, tx);
            return;
        }
        let (dom, sh, tx) = (dom.clone(), sh.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name("rfaas-shm-handshake".into())
            .spawn(move || handshake(&dom, conn, &sh, &tx));
        if let Err(e) = spawned {
            tracing::warn!("shm listener: cannot spawn a handshake thread: {e}");
        }
    }
}

/// How long a connecting thread polls for its answer before it sleeps on it.
const ACCEPT_SPIN: Duration = Duration::from_millis(2);

/// Polls `sock` for a message for at most `spin`, yielding the core between polls (a peer on
/// the same core gets to run); how long it polled.
fn spin_until_readable(sock: &OwnedFd, spin: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let spun = start.elapsed();
        if spun >= spin || readable_now(sock) {
            return spun;
        }
        std::thread::yield_now();
    }
}

/// Whether `sock` has a message waiting now.
fn readable_now(sock: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

/// The passive half of a handshake on `conn`, queued for [`Listener::next_request`]; ends one
/// of the listener's handshakes in flight.
fn handshake(dom: &Arc<Domain>, conn: OwnedFd, sh: &LShared, tx: &mpsc::Sender<ShmRequest>) {
    match incoming(dom, conn) {
        Ok(req) => {
            if tx.send(req).is_ok() {
                let one = 1u64.to_ne_bytes();
                let _ = nix::unistd::write(&sh.efd, &one);
            }
        }
        Err(why) => tracing::warn!("shm listener: refused a connection: {why}"),
    }
    sh.inflight.fetch_sub(1, Ordering::AcqRel);
}

/// Runs the passive half of a handshake up to the point where the application decides.
fn incoming(dom: &Arc<Domain>, sock: OwnedFd) -> std::result::Result<ShmRequest, String> {
    let (uid, pid) = check_peer_uid(&sock).inspect_err(|why| {
        let _ = wire::send(sock.as_fd(), &Hello::reject(why), &[]);
    })?;
    let (hello, fds) = wire::recv(sock.as_fd(), HANDSHAKE_TIMEOUT).map_err(|e| e.to_string())?;
    if hello.kind != Kind::Connect {
        return Err(format!("expected a connect message, got {:?}", hello.kind));
    }
    let peer = attach_peer(&hello, fds).map_err(|e| e.to_string())?;
    Ok(ShmRequest {
        dom: dom.clone(),
        sock,
        hello,
        peer,
        desc: format!("pid {pid} uid {uid}"),
    })
}

/// Maps what the peer sent: its arenas, region table, incoming ring and completion notifier.
fn attach_peer(h: &Hello, fds: Vec<OwnedFd>) -> Result<Peer> {
    let Ok::<[OwnedFd; NUM_FDS], _>([rw, ro, table, ring, notify, efd]) = fds.try_into() else {
        return Err(FabricError::Handshake(format!(
            "expected {NUM_FDS} descriptors"
        )));
    };
    let table_cap = h.table_cap as usize;
    if table_cap == 0 || table_cap > (1 << 20) {
        return Err(FabricError::Handshake(format!(
            "bad region table size {table_cap}"
        )));
    }
    let len =
        |v: u64| usize::try_from(v).map_err(|_| FabricError::Handshake("length overflow".into()));
    let rw = Segment::attach(rw, len(h.rw_len)?, true)?;
    let ro = Segment::attach(ro, len(h.ro_len)?, false)?;
    let table_seg = Segment::attach(table, table_cap * ENTRY_SIZE, false)?;
    // SAFETY: the mapping holds at least `table_cap` entries (checked by attach), is page aligned,
    // and lives in `Peer` next to the view; entries are only read atomically.
    let table_view = unsafe { TableView::new(table_seg.as_ptr().cast::<Entry>(), table_cap) };
    if !h.ring_depth.is_power_of_two() {
        return Err(FabricError::Handshake(
            "ring depth is not a power of two".into(),
        ));
    }
    let ring_seg = Segment::attach(
        ring,
        ring_bytes(
            h.ring_depth.min(super::ring::MAX_DEPTH),
            h.msg_size.min(super::ring::MAX_MSG),
        ),
        true,
    )?;
    let ring = Ring::attach(ring_seg, h.ring_depth, h.msg_size)?;
    let notify = Arc::new(Segment::attach(notify, 4, true)?);
    let kind = std::fs::read_link(format!("/proc/self/fd/{}", efd.as_raw_fd())).unwrap_or_default();
    if kind.to_string_lossy() != "anon_inode:[eventfd]" {
        return Err(FabricError::Handshake(
            "wake-up descriptor is not an eventfd".into(),
        ));
    }
    Ok(Peer {
        pid: h.pid,
        rw_base: h.rw_base,
        rw,
        ro_base: h.ro_base,
        ro,
        table: table_view,
        _table_seg: table_seg,
        ring,
        notifier: Notifier::in_segment(notify, 0, efd),
    })
}

/// Descriptors and message describing our side of a new queue pair.
fn our_side(
    dom: &Domain,
    kind: Kind,
    qp_num: u32,
    rs: &RecvState,
    init: &QpInit<'_, ShmFabric>,
    pd: &[u8],
) -> Result<(Hello, Vec<OwnedFd>)> {
    let owned = vec![dom.ro.seg.readonly_fd()?, dom.table_seg.readonly_fd()?];
    let hello = Hello {
        kind,
        pid: std::process::id(),
        qp_num,
        ring_depth: rs.ring.depth(),
        msg_size: rs.ring.msg_size(),
        table_cap: TABLE_CAP as u32,
        rw_base: dom.rw.base(),
        rw_len: dom.rw.seg.len() as u64,
        ro_base: dom.ro.base(),
        ro_len: dom.ro.seg.len() as u64,
        private_data: pd.to_vec(),
    };
    let _ = init;
    Ok((hello, owned))
}

fn fd_list(
    dom: &Domain,
    owned: &[OwnedFd],
    rs: &RecvState,
    init: &QpInit<'_, ShmFabric>,
) -> [RawFd; NUM_FDS] {
    [
        dom.rw.seg.fd().as_raw_fd(),
        owned[0].as_raw_fd(),
        owned[1].as_raw_fd(),
        rs.ring.segment().fd().as_raw_fd(),
        init.recv_cq.sh.notify_seg.fd().as_raw_fd(),
        init.recv_cq.sh.core.notifier.raw_fd(),
    ]
}

fn check_pd(pd: &[u8]) -> Result<()> {
    if pd.len() > MAX_PRIVATE_DATA {
        return Err(FabricError::Invalid(format!(
            "private data of {} bytes exceeds {MAX_PRIVATE_DATA}",
            pd.len()
        )));
    }
    Ok(())
}

fn new_recv_state(
    dom: &Domain,
    init: &QpInit<'_, ShmFabric>,
    recvs: &[RecvWr],
) -> Result<(u32, RecvState)> {
    let qp_num = dom.next_qp_num();
    let rs = RecvState::new(dom, qp_num, init.caps.max_recv_wr, init.caps.max_msg_size)?;
    for wr in recvs {
        rs.post(wr)?;
    }
    Ok((qp_num, rs))
}

/// Puts a queue pair together and starts watching its peer.
fn assemble(
    dom: &Arc<Domain>,
    sock: OwnedFd,
    qp_num: u32,
    rs: RecvState,
    init: &QpInit<'_, ShmFabric>,
    peer: Peer,
) -> Result<ShmQp> {
    let sock_raw = sock.as_raw_fd();
    let sh = Arc::new(QpShared {
        dom: dom.clone(),
        qp_num,
        recv: Arc::new(rs),
        send_cq: init.send_cq.sh.clone(),
        recv_cq: init.recv_cq.sh.clone(),
        peer,
        produced: AtomicU64::new(0),
        credit_limit: AtomicU64::new(0),
        timeouts: init.timeouts,
        sock,
        token: AtomicU64::new(0),
        closed: AtomicBool::new(false),
    });
    sh.recv_cq.bind(&sh.recv);
    let qp = ShmQp::new(sh.clone());
    let token = dom.control.watch(&sh, sock_raw)?;
    sh.token.store(token, Ordering::Relaxed);
    Ok(qp)
}

impl ConnRequest<ShmFabric> for ShmRequest {
    fn private_data(&self) -> &[u8] {
        &self.hello.private_data
    }

    fn peer(&self) -> &str {
        &self.desc
    }

    fn accept(
        self,
        init: QpInit<'_, ShmFabric>,
        initial_recvs: &[RecvWr],
        private_data: &[u8],
    ) -> Result<ShmQp> {
        check_pd(private_data)?;
        let dom = self.dom.clone();
        let (qp_num, rs) = new_recv_state(&dom, &init, initial_recvs)?;
        let (hello, owned) = our_side(&dom, Kind::Accept, qp_num, &rs, &init, private_data)?;
        let fds = fd_list(&dom, &owned, &rs, &init);
        wire::send(self.sock.as_fd(), &hello, &fds)?;
        assemble(&dom, self.sock, qp_num, rs, &init, self.peer)
    }

    fn reject(self, reason: &str) {
        if let Err(e) = wire::send(self.sock.as_fd(), &Hello::reject(reason), &[]) {
            tracing::debug!("shm reject: {e}");
        }
    }
}

impl Listener<ShmFabric> for ShmListener {
    fn local_addr(&self) -> String {
        self.addr.clone()
    }

    fn next_request(&self, timeout: Duration) -> Result<Option<ShmRequest>> {
        let rx = self.sh.rx.lock().unwrap_or_else(|p| p.into_inner());
        let r = match rx.recv_timeout(timeout) {
            Ok(req) => Ok(Some(req)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(FabricError::Disconnected),
        };
        // Keep the eventfd readable exactly while requests are queued.
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(self.sh.efd.as_raw_fd(), &mut buf);
        drop(rx);
        r
    }

    fn raw_fd(&self) -> RawFd {
        self.sh.efd.as_raw_fd()
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        let mut sock = self.acceptor.sock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sock.as_ref() {
            self.dom.control.forget_readable(self.token, s.as_raw_fd());
        }
        // Closed now (an accept running on the control thread holds this lock): the address
        // is free again when the drop returns.
        *sock = None;
        drop(sock);
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The active half of a handshake.
pub(crate) fn connect(
    dom: &Arc<Domain>,
    addr: &str,
    init: QpInit<'_, ShmFabric>,
    initial_recvs: &[RecvWr],
    private_data: &[u8],
    timeout: Duration,
) -> Result<(ShmQp, Vec<u8>)> {
    check_pd(private_data)?;
    let a = ShmAddr::parse(addr)?;
    // Everything the connect message needs is made first: it goes out right after `connect`,
    // so the listener finds it waiting and handshakes without a thread of its own.
    let (qp_num, rs) = new_recv_state(dom, &init, initial_recvs)?;
    let (hello, owned) = our_side(dom, Kind::Connect, qp_num, &rs, &init, private_data)?;
    let fds = fd_list(dom, &owned, &rs, &init);
    let sock = seqpacket(SockFlag::empty())?;
    sock_connect(sock.as_raw_fd(), &a.unix()?)
        .map_err(|e| FabricError::io(format!("connect to shm address {addr}"), e))?;
    check_peer_uid(&sock).map_err(FabricError::Handshake)?;
    wire::send(sock.as_fd(), &hello, &fds)?;
    // The answer comes within microseconds of an executor that is ready, or once it has
    // loaded its library (answered before it was ready): poll for it without sleeping first,
    // so that taking it costs no wake-up of this thread.
    let spun = spin_until_readable(&sock, ACCEPT_SPIN.min(timeout));
    let (reply, fds) = wire::recv(sock.as_fd(), timeout.saturating_sub(spun))?;
    match reply.kind {
        Kind::Reject => Err(FabricError::Rejected(
            String::from_utf8_lossy(&reply.private_data).into_owned(),
        )),
        Kind::Connect => Err(FabricError::Handshake(
            "peer answered a connect with a connect".into(),
        )),
        Kind::Accept => {
            let peer = attach_peer(&reply, fds)?;
            let qp = assemble(dom, sock, qp_num, rs, &init, peer)?;
            Ok((qp, reply.private_data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ShmFabric;
    use crate::rdma::Fabric;

    /// A listener's drop closes its socket before it returns (the domain's control thread,
    /// which accepts for it, may still hold its acceptor): the address binds again at once, on
    /// the same domain, and not while the listener is open.
    #[test]
    fn a_closed_listener_frees_its_address_at_once() {
        let f = ShmFabric::new().unwrap();
        let addr = format!("@rfaas-test-rebind-{}", std::process::id());
        for round in 0..50 {
            let l = f
                .listen(&addr)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(f.listen(&addr).is_err(), "round {round}: bound twice");
            drop(l);
        }
    }
}
