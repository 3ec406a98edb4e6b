//! The target side of a tcp queue pair: reading its stream and applying what arrives.
//!
//! Whoever holds a queue pair's `rx` lock reads its stream with non-blocking `recv`s: the
//! progress thread, or an application thread inside `poll` (hybrid progress) or `post_recv`
//! (resuming a frame that waited for a receive). Bytes go into a small staging buffer, from
//! which frame headers are parsed; a large payload that is not yet in the buffer is received
//! straight into the registered region it targets.
//!
//! Requests are checked against the domain's region table before anything is touched: a wrong
//! key, bounds or rights answer with a NAK (the initiator completes the request with
//! `RemoteAccess`), leave memory unchanged, and move the queue pair to the error state. Any
//! malformed frame moves it to the error state too. After an error the reader discards
//! everything until the peer closes.

use std::sync::atomic::{fence, Ordering};
use std::sync::TryLockError;
use std::time::Instant;

use super::domain::Pinned;
use super::qp::{Cause, QpInner};
use super::wire::{flag, op, recv_nb, Header, HDR_LEN};
use crate::rdma::types::{Access, RecvWr, WcOpcode, WcStatus};

/// Bytes of a stream's staging buffer.
const STAGING: usize = 16 * 1024;
/// Payload bytes still to come at which the reader receives straight into the region.
const DIRECT_MIN: usize = 4096;

/// Where a payload's bytes go.
#[derive(Debug)]
enum Sink {
    /// Registered memory (`Pinned::len() == hdr.len`).
    Mem(Pinned),
    /// Atomic operands or an atomic answer; also zero-length payloads.
    Small([u8; 16]),
}

/// What happens once a payload is complete.
#[derive(Debug)]
enum Then {
    Write,
    WriteImm(RecvWr),
    Send(RecvWr),
    Atomic(Pinned),
    ReadAnswer,
    AtomicAnswer,
}

#[derive(Debug)]
enum Cur {
    /// Between frames.
    Header,
    /// A write-with-immediate or send waits for a receive to be posted.
    Held { hdr: Header, since: Instant },
    /// Receiving a payload.
    Payload {
        hdr: Header,
        sink: Sink,
        done: usize,
        then: Then,
    },
    /// The queue pair is in the error state: discard everything until end of stream.
    Drain,
    /// End of stream seen.
    Closed,
}

/// A stream's reader state (behind the queue pair's `rx` lock).
#[derive(Debug)]
pub(crate) struct Rx {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    cur: Cur,
    /// Number of the next request the peer may send.
    expect: u32,
}

impl Rx {
    pub(crate) fn new() -> Rx {
        Rx {
            buf: vec![0u8; STAGING].into_boxed_slice(),
            start: 0,
            end: 0,
            cur: Cur::Header,
            expect: 1,
        }
    }

    fn avail(&self) -> usize {
        self.end - self.start
    }
}

/// Outcome of one `recv`.
enum Got {
    Bytes,
    Short,
    Empty,
    Eof(String),
}

impl QpInner {
    /// Reads and applies whatever the stream has, unless another thread is already doing so
    /// (then returns false). `progress`: called by the progress thread (acknowledges at once).
    pub(crate) fn drive(&self, progress: bool) -> bool {
        let mut first = true;
        loop {
            let mut rx = match self.rx.try_lock() {
                Ok(g) => g,
                Err(TryLockError::WouldBlock) => return !first,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
            };
            first = false;
            self.run(&mut rx, progress);
            let held = matches!(rx.cur, Cur::Held { .. });
            drop(rx);
            // The progress thread found the stream readable while we read it, and left it
            // disarmed for us: re-arm it (data that came after our last read wakes it).
            if !progress
                && self.missed.load(Ordering::SeqCst)
                && self.missed.swap(false, Ordering::SeqCst)
            {
                self.update_interest();
            }
            if !held {
                return true;
            }
            // We hold a frame for a receive. `post_recv` pushes, then looks at `held`; we set
            // `held`, then look at the queue: one of us sees the other.
            fence(Ordering::SeqCst);
            if self.rq.is_empty() && self.is_connected() {
                return true;
            }
        }
    }

    fn set_held(&self, held: bool) {
        if self.held.swap(held, Ordering::SeqCst) != held {
            self.update_interest();
        }
    }

    /// Receives into the staging buffer.
    fn fill(&self, rx: &mut Rx) -> Got {
        if rx.start == rx.end {
            rx.start = 0;
            rx.end = 0;
        } else if rx.end == rx.buf.len() {
            rx.buf.copy_within(rx.start..rx.end, 0);
            rx.end -= rx.start;
            rx.start = 0;
        }
        let room = rx.buf.len() - rx.end;
        // SAFETY: `buf[end..]` is `room` writable bytes owned by `rx`, which we hold mutably.
        let r = unsafe { recv_nb(self.fd, rx.buf.as_mut_ptr().add(rx.end), room) };
        match r {
            Ok(0) => Got::Eof("end of stream".into()),
            Ok(n) => {
                rx.end += n;
                if n < room {
                    Got::Short
                } else {
                    Got::Bytes
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Got::Empty,
            Err(e) => Got::Eof(e.to_string()),
        }
    }

    /// The read loop: parse and apply frames until the stream has no more bytes for now.
    fn run(&self, rx: &mut Rx, progress: bool) {
        // The last recv returned fewer bytes than asked: the socket is (very likely) empty, so
        // stop instead of paying for a recv that says so. Level-triggered epoll, or the next
        // poll, picks up anything that arrives later.
        let mut short = false;
        loop {
            if !self.is_connected() && !matches!(rx.cur, Cur::Drain | Cur::Closed) {
                self.to_drain(rx);
            }
            match &mut rx.cur {
                Cur::Closed => break,
                Cur::Drain => {
                    rx.start = 0;
                    rx.end = 0;
                    match self.fill(rx) {
                        Got::Bytes | Got::Short => continue,
                        Got::Empty => break,
                        Got::Eof(why) => {
                            self.on_eof(rx, why);
                            break;
                        }
                    }
                }
                Cur::Header => {
                    if rx.avail() >= HDR_LEN {
                        let mut b = [0u8; HDR_LEN];
                        b.copy_from_slice(&rx.buf[rx.start..rx.start + HDR_LEN]);
                        rx.start += HDR_LEN;
                        self.begin(rx, Header::decode(&b));
                        continue;
                    }
                    if short {
                        break;
                    }
                }
                Cur::Held { hdr, .. } => {
                    let hdr = *hdr;
                    match self.rq.pop() {
                        Some(wr) => {
                            rx.cur = Cur::Header;
                            self.set_held(false);
                            self.start_recv_op(rx, hdr, wr);
                            continue;
                        }
                        None => {
                            self.set_held(true);
                            break;
                        }
                    }
                }
                Cur::Payload {
                    hdr, sink, done, ..
                } => {
                    let need = hdr.len as usize - *done;
                    if need == 0 {
                        self.finish(rx);
                        continue;
                    }
                    let avail = rx.end - rx.start;
                    if avail > 0 {
                        let k = avail.min(need);
                        let src = &rx.buf[rx.start..rx.start + k];
                        match sink {
                            // SAFETY: the pinned range has `hdr.len` bytes and `done + k <=
                            // hdr.len`; `src` is our own buffer, distinct from registered
                            // memory.
                            Sink::Mem(p) => unsafe {
                                std::ptr::copy_nonoverlapping(src.as_ptr(), p.ptr().add(*done), k)
                            },
                            Sink::Small(b) => b[*done..*done + k].copy_from_slice(src),
                        }
                        *done += k;
                        rx.start += k;
                        continue;
                    }
                    if short {
                        break;
                    }
                    if let (Sink::Mem(p), true) = (&*sink, need >= DIRECT_MIN) {
                        // SAFETY: `done + need == hdr.len == p.len()`, so the range is inside
                        // the pinned region, which stays mapped while `p` lives; registered
                        // memory is only ever accessed through raw pointers.
                        let r = unsafe { recv_nb(self.fd, p.ptr().add(*done), need) };
                        match r {
                            Ok(0) => {
                                self.on_eof(rx, "end of stream".into());
                                break;
                            }
                            Ok(k) => {
                                *done += k;
                                short = k < need;
                                continue;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                self.on_eof(rx, e.to_string());
                                break;
                            }
                        }
                    }
                }
            }
            // Header or Payload that needs more bytes.
            match self.fill(rx) {
                Got::Bytes => {}
                Got::Short => short = true,
                Got::Empty => break,
                Got::Eof(why) => {
                    self.on_eof(rx, why);
                    break;
                }
            }
        }
        self.after_batch(progress);
    }

    /// End of stream or a receive error.
    fn on_eof(&self, rx: &mut Rx, why: String) {
        if self.is_connected() {
            let why = if rx.avail() > 0 || !matches!(rx.cur, Cur::Header) {
                format!("{why} in the middle of a frame")
            } else {
                why
            };
            self.set_error(Cause::PeerGone(why));
        }
        self.drop_current(rx);
        rx.cur = Cur::Closed;
        self.held.store(false, Ordering::SeqCst);
        self.eof.store(true, Ordering::SeqCst);
        self.update_interest();
    }

    /// Abandons the frame being received (the queue pair is in the error state): a receive it
    /// consumed completes with `WrFlush`.
    fn drop_current(&self, rx: &mut Rx) {
        if let Cur::Payload {
            then: Then::WriteImm(wr) | Then::Send(wr),
            ..
        } = &rx.cur
        {
            self.complete_recv(wr.wr_id, WcStatus::WrFlush, WcOpcode::Recv, 0, None, false);
        }
        rx.cur = Cur::Header;
    }

    fn to_drain(&self, rx: &mut Rx) {
        self.drop_current(rx);
        rx.cur = Cur::Drain;
        rx.start = 0;
        rx.end = 0;
        self.set_held(false);
    }

    /// A frame that makes no sense here: log it and give up on the connection.
    fn protocol_error(&self, rx: &mut Rx, why: &str, hdr: &Header) {
        tracing::warn!(
            qp = self.num,
            peer = %self.peer,
            "malformed frame from tcp peer ({why}): op {} len {} seq {}; closing the connection",
            hdr.op,
            hdr.len,
            hdr.seq
        );
        self.set_error(Cause::Protocol(why.to_string()));
        self.to_drain(rx);
    }

    /// Refuses the peer's request `seq`: NAK, error state, drain.
    fn refuse(&self, rx: &mut Rx, hdr: &Header, status: WcStatus) {
        self.refuse_then(rx, hdr, status, || {});
    }

    /// As `refuse`; `first` pushes local completions of the failure once the queue pair is in
    /// the error state (before anything is flushed).
    fn refuse_then(&self, rx: &mut Rx, hdr: &Header, status: WcStatus, first: impl FnOnce()) {
        tracing::warn!(
            qp = self.num,
            peer = %self.peer,
            "refused tcp peer request {} (op {}, addr {:#x}, rkey {:#x}, len {}): {status:?}",
            hdr.seq,
            hdr.op,
            hdr.raddr,
            hdr.rkey,
            if hdr.op == op::READ { hdr.arg } else { hdr.len }
        );
        self.send_nak(hdr.seq, status);
        self.fail(Cause::Refused(status), first);
        self.to_drain(rx);
    }

    /// A complete header arrived.
    fn begin(&self, rx: &mut Rx, hdr: Header) {
        if let Err(why) = hdr.validate() {
            return self.protocol_error(rx, why, &hdr);
        }
        // Every frame acknowledges our requests up to `ack`.
        if !self.apply_ack(hdr.ack) {
            return self.protocol_error(rx, "acknowledges a request never sent", &hdr);
        }
        if hdr.is_request() {
            if hdr.seq != rx.expect {
                return self.protocol_error(rx, "request out of sequence", &hdr);
            }
            rx.expect = rx.expect.wrapping_add(1);
        }
        let len = u64::from(hdr.len);
        match hdr.op {
            op::ACK => {}
            op::NAK => {
                self.on_nak(hdr.seq, super::wire::status_from_code(hdr.arg));
                self.to_drain(rx);
            }
            op::WRITE => {
                if hdr.len == 0 {
                    self.rx_done.store(hdr.seq, Ordering::Release);
                } else {
                    match self
                        .dom
                        .resolve(hdr.rkey, hdr.raddr, len, Access::REMOTE_WRITE, true)
                    {
                        Ok(p) => {
                            rx.cur = Cur::Payload {
                                hdr,
                                sink: Sink::Mem(p),
                                done: 0,
                                then: Then::Write,
                            }
                        }
                        Err(st) => self.refuse(rx, &hdr, st),
                    }
                }
            }
            op::WRITE_IMM | op::SEND => match self.rq.pop() {
                Some(wr) => self.start_recv_op(rx, hdr, wr),
                None => {
                    rx.cur = Cur::Held {
                        hdr,
                        since: Instant::now(),
                    };
                    self.set_held(true);
                }
            },
            op::READ => {
                let n = hdr.arg;
                let src = if n == 0 {
                    None
                } else {
                    match self.dom.resolve(
                        hdr.rkey,
                        hdr.raddr,
                        u64::from(n),
                        Access::REMOTE_READ,
                        true,
                    ) {
                        Ok(p) => Some(p),
                        Err(st) => return self.refuse(rx, &hdr, st),
                    }
                };
                self.rx_done.store(hdr.seq, Ordering::Release);
                let mut ans = Header::new(op::READ_RESP);
                ans.seq = hdr.seq;
                ans.len = n;
                let payload = src
                    .as_ref()
                    .map_or((std::ptr::null(), 0), |p| (p.ptr().cast_const(), p.len()));
                // SAFETY: the payload is pinned registered memory (`src` lives until after the
                // call) or empty.
                unsafe { self.send_answer(ans, payload) };
            }
            op::FETCH_ADD | op::CMP_SWAP => {
                if hdr.raddr % 8 != 0 {
                    return self.refuse(rx, &hdr, WcStatus::RemoteInvalidRequest);
                }
                match self
                    .dom
                    .resolve(hdr.rkey, hdr.raddr, 8, Access::REMOTE_ATOMIC, true)
                {
                    Ok(p) => {
                        rx.cur = Cur::Payload {
                            hdr,
                            sink: Sink::Small([0; 16]),
                            done: 0,
                            then: Then::Atomic(p),
                        }
                    }
                    Err(st) => self.refuse(rx, &hdr, st),
                }
            }
            op::READ_RESP | op::ATOMIC_RESP => match self.answer_target(&hdr) {
                Err(why) => self.protocol_error(rx, why, &hdr),
                Ok(dst) => {
                    let (sink, then) = if hdr.op == op::READ_RESP {
                        (
                            dst.map_or(Sink::Small([0; 16]), Sink::Mem),
                            Then::ReadAnswer,
                        )
                    } else {
                        (Sink::Small([0; 16]), Then::AtomicAnswer)
                    };
                    rx.cur = Cur::Payload {
                        hdr,
                        sink,
                        done: 0,
                        then,
                    };
                }
            },
            _ => self.protocol_error(rx, "unknown operation", &hdr),
        }
    }

    /// A write-with-immediate or send has its receive `wr`: check where its payload goes.
    fn start_recv_op(&self, rx: &mut Rx, hdr: Header, wr: RecvWr) {
        let len = hdr.len;
        if hdr.op == op::WRITE_IMM {
            if len == 0 {
                rx.cur = Cur::Payload {
                    hdr,
                    sink: Sink::Small([0; 16]),
                    done: 0,
                    then: Then::WriteImm(wr),
                };
                return;
            }
            match self.dom.resolve(
                hdr.rkey,
                hdr.raddr,
                u64::from(len),
                Access::REMOTE_WRITE,
                true,
            ) {
                Ok(p) => {
                    rx.cur = Cur::Payload {
                        hdr,
                        sink: Sink::Mem(p),
                        done: 0,
                        then: Then::WriteImm(wr),
                    }
                }
                Err(st) => self.refuse_then(rx, &hdr, st, || {
                    self.complete_recv(wr.wr_id, WcStatus::WrFlush, WcOpcode::Recv, 0, None, false)
                }),
            }
            return;
        }
        // SEND: the payload lands in the receive's buffer.
        let sink = match wr.sge {
            _ if len == 0 => Ok(Sink::Small([0; 16])),
            Some(s) if s.len >= len => self
                .dom
                .resolve(s.lkey, s.addr, u64::from(len), Access::LOCAL_WRITE, false)
                .map(Sink::Mem),
            _ => Err(WcStatus::LocalLength),
        };
        match sink {
            Ok(sink) => {
                rx.cur = Cur::Payload {
                    hdr,
                    sink,
                    done: 0,
                    then: Then::Send(wr),
                }
            }
            Err(st) => {
                let imm = (hdr.flags & flag::HAS_IMM != 0).then_some(hdr.arg);
                self.refuse_then(rx, &hdr, WcStatus::RemoteInvalidRequest, || {
                    self.complete_recv(wr.wr_id, st, WcOpcode::Recv, len, imm, true)
                });
            }
        }
    }

    /// A payload is complete: apply the frame.
    fn finish(&self, rx: &mut Rx) {
        let Cur::Payload {
            hdr, sink, then, ..
        } = std::mem::replace(&mut rx.cur, Cur::Header)
        else {
            return;
        };
        let solicited = hdr.flags & flag::SOLICITED != 0;
        match then {
            Then::Write => self.rx_done.store(hdr.seq, Ordering::Release),
            Then::WriteImm(wr) => {
                self.complete_recv(
                    wr.wr_id,
                    WcStatus::Success,
                    WcOpcode::RecvWriteImm,
                    hdr.len,
                    Some(hdr.arg),
                    solicited,
                );
                self.rx_done.store(hdr.seq, Ordering::Release);
            }
            Then::Send(wr) => {
                let imm = (hdr.flags & flag::HAS_IMM != 0).then_some(hdr.arg);
                self.complete_recv(
                    wr.wr_id,
                    WcStatus::Success,
                    WcOpcode::Recv,
                    hdr.len,
                    imm,
                    solicited,
                );
                self.rx_done.store(hdr.seq, Ordering::Release);
            }
            Then::Atomic(target) => {
                let Sink::Small(ops) = sink else { return };
                let a = u64::from_le_bytes(ops[..8].try_into().unwrap_or_default());
                let b = u64::from_le_bytes(ops[8..].try_into().unwrap_or_default());
                // SAFETY: `target` pins 8 bytes of a region granting REMOTE_ATOMIC; the address
                // is 8-byte aligned (checked in `begin`: regions are page aligned and the
                // target address is a multiple of 8); every accessor of such words uses atomic
                // instructions (`MemoryRegion::atomic_u64`).
                let word =
                    unsafe { std::sync::atomic::AtomicU64::from_ptr(target.ptr().cast::<u64>()) };
                let old = if hdr.op == op::FETCH_ADD {
                    word.fetch_add(a, Ordering::AcqRel)
                } else {
                    match word.compare_exchange(a, b, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(v) | Err(v) => v,
                    }
                };
                self.rx_done.store(hdr.seq, Ordering::Release);
                let mut ans = Header::new(op::ATOMIC_RESP);
                ans.seq = hdr.seq;
                ans.len = 8;
                let old = old.to_le_bytes();
                // SAFETY: `old` lives on this stack frame.
                unsafe { self.send_answer(ans, (old.as_ptr(), 8)) };
            }
            Then::ReadAnswer => {
                self.complete_answer(hdr.seq, None);
                self.apply_ack(hdr.ack);
            }
            Then::AtomicAnswer => {
                let Sink::Small(b) = sink else { return };
                let mut old = [0u8; 8];
                old.copy_from_slice(&b[..8]);
                self.complete_answer(hdr.seq, Some(old));
                self.apply_ack(hdr.ack);
            }
        }
    }

    /// Receiver-not-ready timer: a frame held longer than the peer's RNR timeout is refused.
    pub(crate) fn check_rnr(&self, now: Instant) {
        let Ok(mut rx) = self.rx.try_lock() else {
            return;
        };
        if let Cur::Held { hdr, since } = rx.cur {
            if now.saturating_duration_since(since) >= self.peer_rnr {
                if let Some(wr) = self.rq.pop() {
                    // A receive arrived just now: use it.
                    rx.cur = Cur::Header;
                    self.set_held(false);
                    self.start_recv_op(&mut rx, hdr, wr);
                    drop(rx);
                    self.drive(true);
                    return;
                }
                self.refuse(&mut rx, &hdr, WcStatus::RnrRetryExceeded);
            }
        }
    }
}
