//! Queue pairs of the tcp provider: the initiator side (posting, acknowledgements, answers,
//! errors and flushes). The target side — reading the stream — is in `rx.rs`.
//!
//! # Locks (always taken in this order; none is held across a wait for the peer except `tx`
//! during a bounded blocking send)
//!
//! * `rx` — the stream's reader and its parse state. Taken with `try_lock` only: whoever holds
//!   it (the progress thread, or an application thread inside `poll`, `post_recv`, or a
//!   `post_send` that found the send queue full) reads; the others skip this stream. Never
//!   tried while holding `tx` or `sq` (the reader takes them).
//! * `tx` — the stream's writer and the next request number. Posters, and readers sending
//!   answers and acknowledgements.
//! * `sq` — requests in flight (sent, not yet acknowledged or answered), in order.
//! * `interest` — what the progress thread's epoll watches for this stream.
//!
//! # Completion of requests
//!
//! Every request frame carries a number; every frame the peer sends back carries the number of
//! the last request it has applied (a piggybacked acknowledgement; an explicit ACK frame when
//! nothing else goes back soon). Write, write-with-immediate and send complete when their
//! acknowledgement arrives, i.e. after the data is in the target's memory — as on verbs, where
//! the completion follows the responder's ACK. This is what lets a bad rkey complete *that*
//! request with `RemoteAccess` (and only once). Reads and atomics complete with their answer.
//! A request occupies a send-queue slot until then; `max_send_wr` requests in flight make
//! `post_send` fail with `QueueFull` (after it has read any acknowledgements waiting in the
//! socket).

use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::cq::CqShared;
use super::domain::{Domain, Pinned};
use super::progress::{DELEGATED_TICK, FAST_TICK, SLOW_TICK};
use super::rx::Rx;
use super::wire::{self, flag, op, send_all, seq_le, Header, Hello, HDR_LEN};
use super::TcpFabric;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::types::{
    Access, Op, QpTimeouts, RecvWr, SendFlags, SendWr, Wc, WcOpcode, WcStatus,
};
use crate::rdma::{QpInit, QueuePair};

/// How long an application thread that drives a busy-polled stream may hold back an
/// acknowledgement, hoping that a reply carries it for free.
pub(crate) const ACK_DELAY: Duration = Duration::from_micros(50);

const CONNECTED: u8 = 0;
const ERROR: u8 = 1;

/// Nanoseconds since a process-wide origin, never 0.
pub(crate) fn nanos_now() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a request in flight waits for.
#[derive(Debug)]
pub(crate) enum Waits {
    /// An acknowledgement (write, write-with-immediate, send).
    Ack,
    /// A read answer, landing in the pinned local bytes (`None`: zero length).
    Read(Option<Pinned>),
    /// An atomic answer, landing in the first 8 pinned local bytes.
    Atomic(Pinned),
}

/// A request sent and not yet completed.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub seq: u32,
    pub wr_id: u64,
    pub opcode: WcOpcode,
    pub signaled: bool,
    pub len: u32,
    pub waits: Waits,
}

/// What the progress thread's epoll watches for a stream. Streams are registered one-shot:
/// every event disarms the stream until it is re-armed, so the progress thread can never spin
/// on a stream that someone else is reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Armed for readable, hang-up and errors.
    On,
    /// Armed for hang-up and errors only (an application thread reads, or a frame waits for a
    /// receive).
    Off,
    /// An event fired and disarmed the stream; it needs re-arming.
    Fired,
    /// Nothing (end of stream seen, or the queue pair is gone).
    Removed,
}

/// Why a queue pair entered the error state.
#[derive(Debug)]
pub(crate) enum Cause {
    /// `disconnect` or drop.
    Local,
    /// End of stream or a reset: the peer closed, died, or gave up on us.
    PeerGone(String),
    /// An answer or acknowledgement did not come within `QpTimeouts::response`.
    Timeout,
    /// A send on the stream failed.
    Io(String),
    /// The peer sent something that is not a valid frame here.
    Protocol(String),
    /// The peer refused one of our requests (NAK).
    Remote(WcStatus),
    /// One of our own requests or receives failed a local check.
    LocalError(WcStatus),
    /// We refused one of the peer's requests (sent a NAK).
    Refused(WcStatus),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Local => f.write_str("disconnected locally"),
            Cause::PeerGone(why) => write!(f, "peer went away: {why}"),
            Cause::Timeout => {
                f.write_str("no answer or acknowledgement within the response timeout")
            }
            Cause::Io(why) => write!(f, "stream failed: {why}"),
            Cause::Protocol(why) => write!(f, "malformed frame from the peer: {why}"),
            Cause::Remote(st) => write!(f, "the peer refused a request: {st:?}"),
            Cause::LocalError(st) => write!(f, "a local check failed: {st:?}"),
            Cause::Refused(st) => write!(f, "refused a request of the peer: {st:?}"),
        }
    }
}

impl Cause {
    /// Peer-side failures complete requests that wait for an answer with `RetryExceeded`.
    fn retry(&self) -> bool {
        matches!(self, Cause::PeerGone(_) | Cause::Timeout | Cause::Io(_))
    }
}

#[derive(Debug)]
struct Watch {
    head: Option<u32>,
    since: Instant,
}

/// The state of one queue pair, shared by its handle, its CQs and the progress thread.
pub(crate) struct QpInner {
    pub(crate) num: u32,
    pub(crate) peer: String,
    pub(crate) dom: Arc<Domain>,
    pub(crate) stream: TcpStream,
    pub(crate) fd: RawFd,
    pub(crate) token: u64,
    pub(crate) send_cq: Arc<CqShared>,
    pub(crate) recv_cq: Arc<CqShared>,
    max_send_wr: usize,
    timeouts: QpTimeouts,
    /// How long we hold the peer's write-with-immediate or send for a receive (its RNR timer).
    pub(crate) peer_rnr: Duration,
    /// Unacknowledged peer requests at which an acknowledgement goes out at once.
    ack_window: u32,
    state: AtomicU8,
    tx: Mutex<u32>,
    sq: Mutex<VecDeque<InFlight>>,
    /// Number of the last request pushed into `sq`.
    posted: AtomicU32,
    pub(crate) rq: ArrayQueue<RecvWr>,
    pub(crate) rx: Mutex<Rx>,
    /// Number of the last peer request applied here.
    pub(crate) rx_done: AtomicU32,
    /// Last acknowledgement sent to the peer.
    ack_sent: AtomicU32,
    /// When an acknowledgement was held back (`nanos_now`), 0 when none is.
    ack_since: AtomicU64,
    pub(crate) held: AtomicBool,
    pub(crate) delegated: AtomicBool,
    pub(crate) eof: AtomicBool,
    /// The progress thread found the stream readable while someone else held its reader:
    /// that reader re-arms the stream when it lets go.
    pub(crate) missed: AtomicBool,
    interest: Mutex<Interest>,
    watch: Mutex<Watch>,
}

impl std::fmt::Debug for QpInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QpInner")
            .field("num", &self.num)
            .field("peer", &self.peer)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// A connected queue pair of the tcp provider.
///
/// Dropping it disconnects: posted work completes with `WrFlush`, and the peer's queue pair
/// moves to the error state.
#[derive(Debug)]
pub struct TcpQp {
    pub(crate) inner: Arc<QpInner>,
}

impl TcpQp {
    /// Creates a queue pair over a connected, handshaken stream, posts `recvs` and starts
    /// watching the stream. Nothing is read from the stream before the receives are posted.
    pub(crate) fn create(
        dom: &Arc<Domain>,
        stream: TcpStream,
        num: u32,
        peer_hello: &Hello,
        init: &QpInit<'_, TcpFabric>,
        recvs: &[RecvWr],
        peer: String,
    ) -> Result<TcpQp> {
        stream
            .set_nodelay(true)
            .map_err(|e| FabricError::io("TCP_NODELAY", e))?;
        stream
            .set_read_timeout(None)
            .map_err(|e| FabricError::io("SO_RCVTIMEO", e))?;
        let send_timeout = init.timeouts.response.max(Duration::from_millis(1));
        stream
            .set_write_timeout(Some(send_timeout))
            .map_err(|e| FabricError::io("SO_SNDTIMEO", e))?;
        let max_send_wr = init.caps.max_send_wr.max(1) as usize;
        let inner = Arc::new(QpInner {
            num,
            peer,
            dom: dom.clone(),
            fd: stream.as_raw_fd(),
            stream,
            token: dom.progress.new_token(),
            send_cq: init.send_cq.sh.clone(),
            recv_cq: init.recv_cq.sh.clone(),
            max_send_wr,
            timeouts: init.timeouts,
            peer_rnr: Duration::from_millis(u64::from(peer_hello.rnr_ms)),
            ack_window: (peer_hello.max_send_wr / 2).max(1),
            state: AtomicU8::new(CONNECTED),
            tx: Mutex::new(1),
            sq: Mutex::new(VecDeque::with_capacity(max_send_wr)),
            posted: AtomicU32::new(0),
            rq: ArrayQueue::new(init.caps.max_recv_wr.max(1) as usize),
            rx: Mutex::new(Rx::new()),
            rx_done: AtomicU32::new(0),
            ack_sent: AtomicU32::new(0),
            ack_since: AtomicU64::new(0),
            held: AtomicBool::new(false),
            delegated: AtomicBool::new(false),
            eof: AtomicBool::new(false),
            missed: AtomicBool::new(false),
            interest: Mutex::new(Interest::Removed),
            watch: Mutex::new(Watch {
                head: None,
                since: Instant::now(),
            }),
        });
        let qp = TcpQp { inner };
        for wr in recvs {
            qp.inner.rq.push(*wr).map_err(|_| {
                FabricError::Invalid(format!(
                    "{} initial receives exceed max_recv_wr = {}",
                    recvs.len(),
                    qp.inner.rq.capacity()
                ))
            })?;
        }
        {
            let mut i = lock(&qp.inner.interest);
            dom.progress.register(&qp.inner)?;
            *i = Interest::On;
        }
        qp.inner.send_cq.attach(&qp.inner);
        if !Arc::ptr_eq(&qp.inner.send_cq, &qp.inner.recv_cq) {
            qp.inner.recv_cq.attach(&qp.inner);
        }
        Ok(qp)
    }
}

impl Drop for TcpQp {
    fn drop(&mut self) {
        let q = &self.inner;
        q.set_error(Cause::Local);
        {
            let mut i = lock(&q.interest);
            if *i != Interest::Removed {
                q.dom
                    .progress
                    .set_interest(&q.stream, q.token, Interest::Removed);
                *i = Interest::Removed;
            }
        }
        q.dom.progress.unregister(q.token);
        q.send_cq.detach(q);
        q.recv_cq.detach(q);
    }
}

impl QueuePair for TcpQp {
    fn qp_num(&self) -> u32 {
        self.inner.num
    }
    fn post_send(&self, wr: &SendWr) -> Result<()> {
        self.inner.post_send(wr)
    }
    fn post_recv(&self, wr: &RecvWr) -> Result<()> {
        self.inner.post_recv(wr)
    }
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
    fn disconnect(&self) {
        self.inner.set_error(Cause::Local);
    }
}

impl QpInner {
    #[inline]
    pub(crate) fn is_connected(&self) -> bool {
        self.state.load(Ordering::Acquire) == CONNECTED
    }

    fn complete_send(&self, wr_id: u64, opcode: WcOpcode, status: WcStatus, len: u32) {
        self.send_cq
            .push(Wc::new(self.num, wr_id, status, opcode, len, None), false);
    }

    /// Pushes a receive completion.
    pub(crate) fn complete_recv(
        &self,
        wr_id: u64,
        status: WcStatus,
        opcode: WcOpcode,
        len: u32,
        imm: Option<u32>,
        solicited: bool,
    ) {
        self.recv_cq.push(
            Wc::new(self.num, wr_id, status, opcode, len, imm),
            solicited,
        );
    }

    // -----------------------------------------------------------------------------------------
    // Posting

    fn post_send(&self, wr: &SendWr) -> Result<()> {
        let opcode = wr.op.wc_opcode();
        if !self.is_connected() {
            self.complete_send(wr.wr_id, opcode, WcStatus::WrFlush, 0);
            return Ok(());
        }
        let writes_local = matches!(
            wr.op,
            Op::Read(_) | Op::FetchAdd { .. } | Op::CompareSwap { .. }
        );
        let need = if writes_local {
            Access::LOCAL_WRITE
        } else {
            Access::empty()
        };
        let local = match wr.sge {
            Some(s) if s.len > 0 => {
                match self
                    .dom
                    .resolve(s.lkey, s.addr, u64::from(s.len), need, false)
                {
                    Ok(p) => Some(p),
                    Err(st) => return self.fail_post(wr.wr_id, opcode, st),
                }
            }
            _ => None,
        };
        let len = local.as_ref().map_or(0, |p| p.len() as u32);
        let mut hdr = Header::new(0);
        let mut operands = [0u8; 16];
        let mut atomic = false;
        let (remote, waits) = match wr.op {
            Op::Send => {
                hdr.op = op::SEND;
                (None, Waits::Ack)
            }
            Op::SendImm(imm) => {
                hdr.op = op::SEND;
                hdr.flags |= flag::HAS_IMM;
                hdr.arg = imm;
                (None, Waits::Ack)
            }
            Op::Write(r) => {
                hdr.op = op::WRITE;
                (Some(r), Waits::Ack)
            }
            Op::WriteImm(r, imm) => {
                hdr.op = op::WRITE_IMM;
                hdr.arg = imm;
                (Some(r), Waits::Ack)
            }
            Op::Read(r) => {
                hdr.op = op::READ;
                hdr.arg = len;
                (Some(r), Waits::Read(local.clone()))
            }
            Op::FetchAdd { remote, add } => {
                let Some(dst) = local.clone().filter(|p| p.len() >= 8) else {
                    return self.fail_post(wr.wr_id, opcode, WcStatus::LocalLength);
                };
                hdr.op = op::FETCH_ADD;
                operands[..8].copy_from_slice(&add.to_le_bytes());
                atomic = true;
                (Some(remote), Waits::Atomic(dst))
            }
            Op::CompareSwap {
                remote,
                compare,
                swap,
            } => {
                let Some(dst) = local.clone().filter(|p| p.len() >= 8) else {
                    return self.fail_post(wr.wr_id, opcode, WcStatus::LocalLength);
                };
                hdr.op = op::CMP_SWAP;
                operands[..8].copy_from_slice(&compare.to_le_bytes());
                operands[8..].copy_from_slice(&swap.to_le_bytes());
                atomic = true;
                (Some(remote), Waits::Atomic(dst))
            }
        };
        if let Some(r) = remote {
            hdr.raddr = r.addr;
            hdr.rkey = r.rkey;
        }
        if wr.flags.contains(SendFlags::SOLICITED) && matches!(hdr.op, op::SEND | op::WRITE_IMM) {
            hdr.flags |= flag::SOLICITED;
        }
        // What follows the header: the local bytes for writes and sends, the operands for
        // atomics, nothing for reads.
        let payload: (*const u8, usize) = if atomic {
            hdr.len = 16;
            (operands.as_ptr(), 16)
        } else if matches!(hdr.op, op::READ) {
            (std::ptr::null(), 0)
        } else {
            hdr.len = len;
            local
                .as_ref()
                .map_or((std::ptr::null(), 0), |p| (p.ptr().cast_const(), p.len()))
        };
        let byte_len = if atomic { 8 } else { len };
        let signaled = wr.flags.contains(SendFlags::SIGNALED);

        // A full send queue usually means acknowledgements wait unread in the socket (nobody
        // else reads this stream right now): read them ourselves once, then decide.
        if lock(&self.sq).len() >= self.max_send_wr {
            self.drive(false);
        }
        let mut tx = lock(&self.tx);
        let seq = *tx;
        {
            let mut sq = lock(&self.sq);
            if !self.is_connected() {
                drop(sq);
                drop(tx);
                self.complete_send(wr.wr_id, opcode, WcStatus::WrFlush, 0);
                return Ok(());
            }
            if sq.len() >= self.max_send_wr {
                return Err(FabricError::QueueFull);
            }
            sq.push_back(InFlight {
                seq,
                wr_id: wr.wr_id,
                opcode,
                signaled,
                len: byte_len,
                waits,
            });
            self.posted.store(seq, Ordering::Release);
        }
        *tx = seq.wrapping_add(1);
        hdr.seq = seq;
        let ack = self.rx_done.load(Ordering::Acquire);
        hdr.ack = ack;
        let h = hdr.encode();
        // SAFETY: the header lives on this stack frame; the payload is either `operands` (on
        // this frame) or pinned local bytes (`local` keeps them mapped until we return).
        let sent = unsafe { send_all(self.fd, &[(h.as_ptr(), HDR_LEN), payload]) };
        drop(local);
        match sent {
            Ok(()) => self.note_ack_sent(ack),
            Err(e) => {
                drop(tx);
                self.set_error(Cause::Io(format!("send: {e}")));
            }
        }
        Ok(())
    }

    /// A request failed a local check: the queue pair enters the error state (flushing what
    /// was posted before), then the request completes with `status`.
    fn fail_post(&self, wr_id: u64, opcode: WcOpcode, status: WcStatus) -> Result<()> {
        self.set_error(Cause::LocalError(status));
        self.complete_send(wr_id, opcode, status, 0);
        Ok(())
    }

    fn post_recv(&self, wr: &RecvWr) -> Result<()> {
        if !self.is_connected() {
            self.complete_recv(wr.wr_id, WcStatus::WrFlush, WcOpcode::Recv, 0, None, false);
            return Ok(());
        }
        self.rq.push(*wr).map_err(|_| FabricError::QueueFull)?;
        fence(Ordering::SeqCst);
        if !self.is_connected() {
            // Raced with the move to the error state: flush what that flush may have missed.
            self.flush_rq();
            return Ok(());
        }
        if self.held.load(Ordering::SeqCst) {
            // A write-with-immediate or send waits for exactly this.
            self.drive(false);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Acknowledgements and answers (called by the reader)

    fn note_ack_sent(&self, ack: u32) {
        self.ack_sent.store(ack, Ordering::Release);
        if self.rx_done.load(Ordering::Acquire) == ack {
            self.ack_since.store(0, Ordering::Relaxed);
        }
    }

    /// Sends an explicit acknowledgement if one is owed.
    ///
    /// Never waits for the send lock: whoever holds it is sending a frame that carries an
    /// acknowledgement too, and if that one is older, the progress thread's tick retries.
    /// (Waiting could deadlock: a poster blocked on a full socket holds the lock while the
    /// peer waits for us to read.)
    pub(crate) fn send_ack(&self) {
        let tx = match self.tx.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                let _ = self.ack_since.compare_exchange(
                    0,
                    nanos_now(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                return;
            }
        };
        let done = self.rx_done.load(Ordering::Acquire);
        if done == self.ack_sent.load(Ordering::Acquire) || !self.is_connected() {
            return;
        }
        let mut hdr = Header::new(op::ACK);
        hdr.ack = done;
        let h = hdr.encode();
        // SAFETY: the header lives on this stack frame.
        match unsafe { send_all(self.fd, &[(h.as_ptr(), HDR_LEN)]) } {
            Ok(()) => self.note_ack_sent(done),
            Err(e) => {
                drop(tx);
                self.set_error(Cause::Io(format!("send ack: {e}")));
            }
        }
    }

    /// After a batch of frames: acknowledge what was applied, now or (when an application
    /// thread busy-polls this stream) a little later, so that a reply can carry it.
    pub(crate) fn after_batch(&self, progress: bool) {
        let done = self.rx_done.load(Ordering::Acquire);
        let sent = self.ack_sent.load(Ordering::Acquire);
        if done == sent || !self.is_connected() {
            return;
        }
        let urgent = done.wrapping_sub(sent) >= self.ack_window;
        if progress || urgent || !self.delegated.load(Ordering::Relaxed) {
            self.send_ack();
            return;
        }
        let now = nanos_now();
        let since = self.ack_since.load(Ordering::Relaxed);
        if since == 0 {
            self.ack_since.store(now, Ordering::Relaxed);
        } else if now.saturating_sub(since) >= ACK_DELAY.as_nanos() as u64 {
            self.send_ack();
        }
    }

    /// Sends an answer frame (read or atomic) carrying `payload`.
    ///
    /// # Safety
    /// `payload` must be readable for the duration of the call.
    pub(crate) unsafe fn send_answer(&self, mut hdr: Header, payload: (*const u8, usize)) {
        let tx = lock(&self.tx);
        let ack = self.rx_done.load(Ordering::Acquire);
        hdr.ack = ack;
        let h = hdr.encode();
        // SAFETY: the header lives on this stack frame; the caller vouches for the payload.
        match unsafe { send_all(self.fd, &[(h.as_ptr(), HDR_LEN), payload]) } {
            Ok(()) => self.note_ack_sent(ack),
            Err(e) => {
                drop(tx);
                self.set_error(Cause::Io(format!("send answer: {e}")));
            }
        }
    }

    /// Tells the peer that its request `seq` failed with `status` (best effort).
    pub(crate) fn send_nak(&self, seq: u32, status: WcStatus) {
        let mut hdr = Header::new(op::NAK);
        hdr.seq = seq;
        hdr.arg = wire::status_code(status);
        // SAFETY: no payload.
        unsafe { self.send_answer(hdr, (std::ptr::null(), 0)) }
    }

    /// Applies an acknowledgement: completes, in order, the requests up to `ack` that wait only
    /// for one. Stops at a read or atomic (they complete with their answer). `false` when
    /// `ack` acknowledges a request never sent.
    pub(crate) fn apply_ack(&self, ack: u32) -> bool {
        let mut sq = lock(&self.sq);
        if !seq_le(ack, self.posted.load(Ordering::Acquire)) {
            return false;
        }
        while let Some(e) = sq.front() {
            if !seq_le(e.seq, ack) || !matches!(e.waits, Waits::Ack) {
                break;
            }
            if let Some(e) = sq.pop_front() {
                if e.signaled {
                    self.complete_send(e.wr_id, e.opcode, WcStatus::Success, e.len);
                }
            }
        }
        true
    }

    /// The request an answer frame `hdr` answers, if it is the next one waiting for an answer
    /// of that kind and size: returns where the answer lands (`None` for a zero-length read).
    pub(crate) fn answer_target(
        &self,
        hdr: &Header,
    ) -> std::result::Result<Option<Pinned>, &'static str> {
        let sq = lock(&self.sq);
        let Some(e) = sq.front() else {
            return Err("answer to no request");
        };
        if e.seq != hdr.seq {
            return Err("answer out of order");
        }
        match (&e.waits, hdr.op) {
            (Waits::Read(dst), op::READ_RESP) => {
                if dst.as_ref().map_or(0, |p| p.len()) != hdr.len as usize {
                    return Err("read answer of the wrong length");
                }
                Ok(dst.clone())
            }
            (Waits::Atomic(dst), op::ATOMIC_RESP) => Ok(Some(dst.clone())),
            _ => Err("answer of the wrong kind"),
        }
    }

    /// Completes the request at the head of the queue with its answer (`old` for atomics:
    /// written to the request's SGE first).
    pub(crate) fn complete_answer(&self, seq: u32, old: Option<[u8; 8]>) {
        let mut sq = lock(&self.sq);
        if !matches!(sq.front(), Some(e) if e.seq == seq) {
            return; // flushed meanwhile
        }
        let Some(e) = sq.pop_front() else { return };
        drop(sq);
        if let (Some(old), Waits::Atomic(dst)) = (old, &e.waits) {
            // SAFETY: `dst` pins at least 8 bytes of a registered region (checked at post).
            unsafe { std::ptr::copy_nonoverlapping(old.as_ptr(), dst.ptr(), 8) };
        }
        if e.signaled {
            self.complete_send(e.wr_id, e.opcode, WcStatus::Success, e.len);
        }
    }

    /// The peer refused request `seq` with `status`: complete it so, then enter the error state.
    pub(crate) fn on_nak(&self, seq: u32, status: WcStatus) {
        let mut refused = Vec::new();
        {
            let mut sq = lock(&self.sq);
            while sq.front().is_some_and(|e| seq_le(e.seq, seq)) {
                let Some(e) = sq.pop_front() else { break };
                let st = if e.seq == seq {
                    status
                } else {
                    WcStatus::Fatal
                };
                refused.push((e.wr_id, e.opcode, st));
            }
        }
        // The error state first, so that whoever sees the completion sees the state too.
        self.fail(Cause::Remote(status), || {
            for (wr_id, opcode, st) in refused {
                self.complete_send(wr_id, opcode, st, 0);
            }
        });
    }

    // -----------------------------------------------------------------------------------------
    // Errors

    /// Moves the queue pair to the error state (once): flushes every request in flight and
    /// every posted receive, shuts the stream's sending side so the peer sees end of stream,
    /// and wakes whoever waits on the CQs.
    pub(crate) fn set_error(&self, cause: Cause) {
        self.fail(cause, || {});
    }

    /// As [`QpInner::set_error`], running `first` (which pushes the completions of the
    /// failure itself) right after the state changes and before anything is flushed.
    pub(crate) fn fail(&self, cause: Cause, first: impl FnOnce()) {
        let was = self.state.swap(ERROR, Ordering::SeqCst);
        first();
        if was == ERROR {
            return;
        }
        match &cause {
            Cause::Local | Cause::Remote(_) | Cause::LocalError(_) | Cause::Refused(_) => {
                tracing::debug!(qp = self.num, peer = %self.peer, "tcp queue pair to error state: {cause}")
            }
            Cause::PeerGone(_) => {
                tracing::info!(qp = self.num, peer = %self.peer, "tcp queue pair to error state: {cause}")
            }
            _ => {
                tracing::warn!(qp = self.num, peer = %self.peer, "tcp queue pair to error state: {cause}")
            }
        }
        let retry = cause.retry();
        {
            let mut sq = lock(&self.sq);
            while let Some(e) = sq.pop_front() {
                let st = if retry && !matches!(e.waits, Waits::Ack) {
                    WcStatus::RetryExceeded
                } else {
                    WcStatus::WrFlush
                };
                self.complete_send(e.wr_id, e.opcode, st, 0);
            }
        }
        self.flush_rq();
        let _ = self.stream.shutdown(Shutdown::Write);
        self.held.store(false, Ordering::SeqCst);
        self.update_interest();
        self.send_cq.kick();
        self.recv_cq.kick();
    }

    /// Completes every posted receive with `WrFlush`.
    pub(crate) fn flush_rq(&self) {
        while let Some(wr) = self.rq.pop() {
            self.complete_recv(wr.wr_id, WcStatus::WrFlush, WcOpcode::Recv, 0, None, false);
        }
    }

    // -----------------------------------------------------------------------------------------
    // The progress thread's view

    /// Points the progress thread's epoll at what this stream needs now.
    pub(crate) fn update_interest(&self) {
        let mut cur = lock(&self.interest);
        if *cur == Interest::Removed {
            return;
        }
        let want = if self.eof.load(Ordering::SeqCst) {
            Interest::Removed
        } else if self.held.load(Ordering::SeqCst) || self.delegated.load(Ordering::SeqCst) {
            Interest::Off
        } else {
            Interest::On
        };
        if want != *cur {
            self.dom
                .progress
                .set_interest(&self.stream, self.token, want);
            *cur = want;
        }
    }

    /// The progress thread got an event for this stream (which disarmed it).
    pub(crate) fn fired(&self) {
        let mut cur = lock(&self.interest);
        if *cur != Interest::Removed {
            *cur = Interest::Fired;
        }
    }

    /// The progress thread's reaction to a readable stream: read it, or leave it to whoever
    /// reads it now (who re-arms it afterwards), then re-arm.
    pub(crate) fn progress_drive(&self) {
        if !self.drive(true) {
            self.missed.store(true, Ordering::SeqCst);
            // The reader may have let go between our try and the flag: try once more.
            if !self.drive(true) {
                return;
            }
            self.missed.store(false, Ordering::SeqCst);
        }
        self.update_interest();
    }

    /// True while an application thread busy-polls a CQ of this queue pair (and so drives it).
    pub(crate) fn busy_polled(&self, now: Instant) -> bool {
        self.recv_cq.busy_polled(now)
            || (!Arc::ptr_eq(&self.send_cq, &self.recv_cq) && self.send_cq.busy_polled(now))
    }

    /// The progress thread stops watching this stream: a busy-polling application drives it.
    pub(crate) fn delegate(&self) {
        self.delegated.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.send_cq.is_blocking() || self.recv_cq.is_blocking() {
            self.delegated.store(false, Ordering::SeqCst);
        }
        self.update_interest();
    }

    /// The progress thread watches this stream again.
    pub(crate) fn undelegate(&self) {
        if self.delegated.swap(false, Ordering::SeqCst) {
            self.update_interest();
        }
    }

    /// Periodic work of the progress thread: the receiver-not-ready timer, held-back
    /// acknowledgements, the answer timeout, hand-back of streams nobody polls any more, and
    /// draining after an error. Returns how soon this queue pair wants the next tick.
    pub(crate) fn tick(&self, now: Instant) -> Duration {
        if self.delegated.load(Ordering::Relaxed) && !self.busy_polled(now) {
            self.undelegate();
        }
        // Re-arms a stream whose event was consumed by someone who did not re-arm it.
        self.update_interest();
        if self.held.load(Ordering::SeqCst) {
            self.check_rnr(now);
        }
        let connected = self.is_connected();
        if connected
            && self.rx_done.load(Ordering::Acquire) != self.ack_sent.load(Ordering::Acquire)
        {
            let since = self.ack_since.load(Ordering::Relaxed);
            if since == 0 || nanos_now().saturating_sub(since) >= ACK_DELAY.as_nanos() as u64 {
                self.send_ack();
            }
        }
        if connected {
            let head = lock(&self.sq).front().map(|e| e.seq);
            let mut w = lock(&self.watch);
            if head != w.head {
                w.head = head;
                w.since = now;
            } else if head.is_some()
                && now.saturating_duration_since(w.since) >= self.timeouts.response
            {
                drop(w);
                self.set_error(Cause::Timeout);
            }
        } else if !self.eof.load(Ordering::SeqCst) {
            self.progress_drive();
        }
        if self.held.load(Ordering::Relaxed)
            || (self.is_connected()
                && self.rx_done.load(Ordering::Acquire) != self.ack_sent.load(Ordering::Acquire))
        {
            FAST_TICK
        } else if self.delegated.load(Ordering::Relaxed) {
            DELEGATED_TICK
        } else {
            SLOW_TICK
        }
    }
}
