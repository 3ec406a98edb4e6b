//! Queue pairs of the `ofi` provider: a peer endpoint address plus the contract's queue-pair
//! semantics built on the shared reliable-datagram endpoint.
//!
//! * **Receives and credits.** Posted receives are a software queue. A write-with-immediate or
//!   send consumes one at the target, so the initiator may only send while it holds a credit
//!   for one: the handshake gives the initial count, and later receives are granted back,
//!   piggybacked on the next write-with-immediate or send in the other direction (12 bits of the
//!   remote CQ data), or by a small grant message when the peer has none left. An initiator
//!   without credit waits (driving progress) up to the RNR timeout, then its request completes
//!   with `RnrRetryExceeded` and the queue pair fails.
//! * **Every request is signaled internally.** libfabric reports each request on the domain's
//!   completion queue; unsignaled ones are dropped there, so unsignaled posts never fill a queue.
//! * **Errors.** An error completion moves the queue pair to the error state: posted receives and
//!   requests in flight complete with `WrFlush`, later posts flush at once, and the TCP side
//!   channel is shut down so the peer's queue pair fails too.
//! * **Peer death.** The side channel stays open for the life of the connection; the domain's
//!   progress thread sees it close when the peer dies and fails the queue pair.

use std::collections::VecDeque;
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cq::CqShared;
use super::domain::{epoll_del, rma_msg, Domain, Inner, Slot};
use super::sys;
use super::wire::{self, MsgHdr, HDR_LEN, MAX_GRANT, MAX_SEND};
use super::OfiFabric;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::types::{Access, Op, RecvWr, SendFlags, SendWr, Wc, WcOpcode, WcStatus};
use crate::rdma::{QpInit, QueuePair};

/// A remote range (key and bounds) that a write on this queue pair has already delivered to.
///
/// libfabric's default completion of a write is "transmit complete": on `shm` and
/// `tcp;ofi_rxm` it reports success even when the target refuses the key or the range, and
/// only `FI_DELIVERY_COMPLETE` makes the initiator wait for the target's verdict (an error on
/// `tcp;ofi_rxm`; on `shm`, no answer at all, so the request fails after the response timeout).
/// Delivery completion costs a response from the target on every write (on `shm` also a
/// copy through an inject buffer instead of an inline command). So a queue pair asks for it
/// on the first write into a range, and once that completes without error, later writes that
/// fall inside the proven range go transmit-complete: their key and bounds were accepted by
/// the same target for the same region. Per-peer ordering (`FI_ORDER_WAW`, `FI_ORDER_SAW`) is
/// what makes a later write-with-data or send see them, not delivery completion. What is lost:
/// a region the target deregisters after it was proven is not noticed by the initiator (the
/// write is dropped at the target); the queue pair's remote-access errors hold for every range
/// it has not written yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub rkey: u32,
    pub start: u64,
    pub end: u64,
}

impl Window {
    fn covers(&self, w: &Window) -> bool {
        self.rkey == w.rkey && self.start <= w.start && w.end <= self.end
    }
}

/// Proven windows kept per queue pair (the oldest goes first): rfaas writes into a handful of
/// ranges per connection (input slots, output slots).
const MAX_WINDOWS: usize = 16;

struct QpState {
    posted: VecDeque<RecvWr>,
    /// Ranges proven by a delivery-complete write (see [`Window`]).
    proven: Vec<Window>,
    /// Receives the peer has posted for us that we have not used.
    credits: u32,
    /// Receives we posted that the peer does not know of yet.
    unreported: u32,
    /// Receives the peer knows of (its credits, as far as we can tell).
    peer_view: u32,
}

/// The part of a queue pair the domain's dispatcher reaches.
pub(crate) struct QpShared {
    pub num: u32,
    pub peer: u64,
    pub peer_qp: u32,
    pub send_cq: Arc<CqShared>,
    pub recv_cq: Arc<CqShared>,
    alive: AtomicBool,
    state: Mutex<QpState>,
    sock: TcpStream,
    rnr: Duration,
    response: Duration,
    max_recv: u32,
}

/// Everything needed to build a queue pair once the handshake is done.
pub(crate) struct QpParts<'a> {
    pub num: u32,
    pub peer: u64,
    pub peer_qp: u32,
    pub peer_credits: u32,
    pub send_cq: Arc<CqShared>,
    pub recv_cq: Arc<CqShared>,
    pub recvs: &'a [RecvWr],
    pub sock: TcpStream,
    pub rnr: Duration,
    pub response: Duration,
    pub max_recv: u32,
}

impl<'a> QpParts<'a> {
    /// The parts of queue pair `num` to the peer at address-vector entry `peer`, whose side of
    /// the handshake is `hello`, made as `init` says with `recvs` posted; `sock` is the side
    /// channel.
    pub(crate) fn new(
        num: u32,
        peer: u64,
        hello: &wire::Hello,
        init: QpInit<'_, OfiFabric>,
        recvs: &'a [RecvWr],
        sock: TcpStream,
    ) -> QpParts<'a> {
        QpParts {
            num,
            peer,
            peer_qp: hello.qp_num,
            peer_credits: hello.credits,
            send_cq: init.send_cq.s.clone(),
            recv_cq: init.recv_cq.s.clone(),
            recvs,
            sock,
            rnr: init.timeouts.rnr,
            response: init.timeouts.response,
            max_recv: init.caps.max_recv_wr,
        }
    }
}

impl QpShared {
    fn st(&self) -> std::sync::MutexGuard<'_, QpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Credits to grant the peer now (all we have not reported, up to one message's worth).
    pub(crate) fn take_grant(&self) -> u32 {
        if !self.alive.load(Ordering::Acquire) {
            return 0;
        }
        let mut st = self.st();
        let n = st.unreported.min(MAX_GRANT);
        st.unreported -= n;
        st.peer_view += n;
        n
    }

    /// Whether a write into `w` may skip delivery completion (see [`Window`]).
    fn proven(&self, w: &Window) -> bool {
        self.st().proven.iter().any(|p| p.covers(w))
    }

    /// A delivery-complete write into `w` succeeded: later writes inside it need none. A
    /// window overlapping or touching one of the same key widens it.
    pub(crate) fn prove(&self, w: Window) {
        let mut st = self.st();
        if let Some(p) = st
            .proven
            .iter_mut()
            .find(|p| p.rkey == w.rkey && p.start <= w.end && w.start <= p.end)
        {
            p.start = p.start.min(w.start);
            p.end = p.end.max(w.end);
            return;
        }
        if st.proven.len() == MAX_WINDOWS {
            st.proven.remove(0);
        }
        st.proven.push(w);
    }

    /// The peer granted `n` credits.
    pub(crate) fn granted(&self, n: u32) {
        self.st().credits += n;
    }

    /// A write-with-immediate (`send: None`) or send (`Some((payload, has_imm))`) arrived.
    pub(crate) fn arrived(
        &self,
        d: &Domain,
        imm: u32,
        len: u32,
        solicited: bool,
        credits: u32,
        send: Option<(&[u8], bool)>,
    ) {
        let mut st = self.st();
        st.credits += credits;
        if !self.alive.load(Ordering::Acquire) {
            return;
        }
        st.peer_view = st.peer_view.saturating_sub(1);
        let Some(r) = st.posted.pop_front() else {
            tracing::warn!(
                qp = self.num,
                "ofi: message without a posted receive (peer ignored credits)"
            );
            return;
        };
        if st.unreported > 0 && st.peer_view == 0 {
            d.grants_due.push(self.num);
        }
        drop(st);
        let mut wc = Wc {
            wr_id: r.wr_id,
            status: WcStatus::Success,
            opcode: WcOpcode::RecvWriteImm,
            byte_len: len,
            imm: Some(imm),
            qp_num: self.num,
        };
        if let Some((payload, has_imm)) = send {
            wc.opcode = WcOpcode::Recv;
            wc.imm = has_imm.then_some(imm);
            wc.byte_len = payload.len() as u32;
            if !payload.is_empty() {
                let ok = r.sge.and_then(|s| {
                    let e = d.mr_entry(s.lkey)?;
                    (s.addr >= e.addr
                        && s.addr + u64::from(s.len) <= e.addr + e.len
                        && payload.len() <= s.len as usize
                        && e.access.contains(Access::LOCAL_WRITE))
                    .then_some(s.addr)
                });
                match ok {
                    // SAFETY: the destination lies inside a registered region (checked above)
                    // that stays mapped while registered; the source is the receive buffer.
                    Some(addr) => unsafe {
                        std::ptr::copy_nonoverlapping(
                            payload.as_ptr(),
                            addr as *mut u8,
                            payload.len(),
                        )
                    },
                    None => wc.status = WcStatus::LocalLength,
                }
            }
        }
        self.recv_cq.push(wc, solicited);
    }

    /// Moves the queue pair to the error state: posted receives and requests in flight flush,
    /// the side channel closes (the peer fails too). Idempotent.
    pub(crate) fn fail(&self, d: &Domain, g: &mut Inner) {
        if !self.alive.swap(false, Ordering::AcqRel) {
            return;
        }
        let posted: Vec<RecvWr> = self.st().posted.drain(..).collect();
        for r in posted {
            self.recv_cq.push(
                Wc {
                    wr_id: r.wr_id,
                    status: WcStatus::WrFlush,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm: None,
                    qp_num: self.num,
                },
                true,
            );
        }
        d.flush_slots(g, self);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        self.send_cq.kick();
        self.recv_cq.kick();
    }

    /// The side channel turned readable: the peer closed it (died or disconnected).
    pub(crate) fn socket_event(&self, d: &Domain) {
        let mut b = [0u8; 64];
        let gone = match (&self.sock).read(&mut b) {
            Ok(0) => true,
            Ok(_) => false, // the peer never sends after the handshake; ignore
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        if gone {
            epoll_del(d.epoll.as_raw_fd(), self.sock.as_raw_fd());
            let mut g = d.lock();
            self.fail(d, &mut g);
        }
    }
}

/// A connected queue pair of the `ofi` provider.
pub struct OfiQp {
    d: Arc<Domain>,
    s: Arc<QpShared>,
}

impl OfiQp {
    /// Builds the queue pair, posts the initial receives and registers it with the domain.
    pub(crate) fn create(d: &Arc<Domain>, p: QpParts<'_>) -> Result<OfiQp> {
        p.sock
            .set_nonblocking(true)
            .map_err(|e| FabricError::io("side channel", e))?;
        let s = Arc::new(QpShared {
            num: p.num,
            peer: p.peer,
            peer_qp: p.peer_qp,
            send_cq: p.send_cq,
            recv_cq: p.recv_cq,
            alive: AtomicBool::new(true),
            state: Mutex::new(QpState {
                posted: p.recvs.iter().copied().collect(),
                credits: p.peer_credits,
                unreported: 0,
                peer_view: p.recvs.len() as u32,
                proven: Vec::new(),
            }),
            sock: p.sock,
            rnr: p.rnr,
            response: p.response,
            max_recv: p.max_recv.max(p.recvs.len() as u32),
        });
        d.qps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(s.num, s.clone());
        super::domain::epoll_add(d.epoll.as_raw_fd(), s.sock.as_raw_fd(), u64::from(s.num))?;
        Ok(OfiQp { d: d.clone(), s })
    }

    fn complete_now(&self, wr: &SendWr, status: WcStatus) {
        self.s.send_cq.push(
            Wc {
                wr_id: wr.wr_id,
                status,
                opcode: wr.op.wc_opcode(),
                byte_len: 0,
                imm: None,
                qp_num: self.s.num,
            },
            true,
        );
    }

    /// Fails the request locally with `status` and moves the queue pair to the error state.
    fn local_error(&self, wr: &SendWr, status: WcStatus) -> Result<()> {
        {
            let mut g = self.d.lock();
            self.s.fail(&self.d, &mut g);
        }
        self.complete_now(wr, status);
        Ok(())
    }

    /// Takes one credit for a message to the peer, waiting up to the RNR timeout; returns the
    /// credits to piggyback (at most `max_grant`), or `None` when the wait ran out or the queue
    /// pair failed.
    fn take_credit(&self, max_grant: u32) -> Option<u32> {
        let deadline = Instant::now() + self.s.rnr;
        let mut spins = 0u32;
        loop {
            {
                let mut st = self.s.st();
                if st.credits > 0 {
                    st.credits -= 1;
                    let n = st.unreported.min(max_grant);
                    st.unreported -= n;
                    st.peer_view += n;
                    return Some(n);
                }
            }
            if !self.s.alive.load(Ordering::Acquire) || Instant::now() >= deadline {
                return None;
            }
            self.d.progress();
            spins += 1;
            if spins > 200 {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl QueuePair for OfiQp {
    fn qp_num(&self) -> u32 {
        self.s.num
    }

    fn post_send(&self, wr: &SendWr) -> Result<()> {
        let d = &*self.d;
        if !self.s.alive.load(Ordering::Acquire) {
            self.complete_now(wr, WcStatus::WrFlush);
            return Ok(());
        }
        let writes_locally = matches!(
            wr.op,
            Op::Read(_) | Op::FetchAdd { .. } | Op::CompareSwap { .. }
        );
        let is_atomic = matches!(wr.op, Op::FetchAdd { .. } | Op::CompareSwap { .. });
        if is_atomic && !d.info.atomics {
            let hint = if d.info.provider == "tcp" {
                "use 'tcp;ofi_rxm'".to_string()
            } else {
                "use a libfabric provider whose `fi_info -p NAME` lists FI_ATOMIC (shm, \
                 tcp;ofi_rxm from libfabric 1.18, cxi, verbs;ofi_rxm)"
                    .to_string()
            };
            return Err(FabricError::Unavailable {
                provider: "ofi",
                reason: format!(
                    "libfabric {} provider '{}' has no FI_ATOMIC (fetch-add, compare-swap): {hint}",
                    d.info.libfabric_version, d.info.provider
                ),
            });
        }
        // The local buffer: checked against the region table, as verbs checks lkeys.
        let (laddr, llen, ldesc) = match wr.sge {
            None => (d.buf(0) as u64, 0u32, d.bounce_desc()),
            Some(s) => {
                let ok = d.mr_entry(s.lkey).filter(|e| {
                    s.addr >= e.addr
                        && s.addr + u64::from(s.len) <= e.addr + e.len
                        && (!writes_locally || e.access.contains(Access::LOCAL_WRITE))
                });
                match ok {
                    Some(e) => (s.addr, s.len, e.desc),
                    None => return self.local_error(wr, WcStatus::LocalProtection),
                }
            }
        };
        if is_atomic {
            let remote = match wr.op {
                Op::FetchAdd { remote, .. } | Op::CompareSwap { remote, .. } => remote,
                _ => unreachable!(),
            };
            if remote.addr % 8 != 0 {
                return self.local_error(wr, WcStatus::RemoteInvalidRequest);
            }
            if llen < 8 {
                return self.local_error(wr, WcStatus::LocalProtection);
            }
        }
        if matches!(wr.op, Op::Send | Op::SendImm(_)) && llen as usize > MAX_SEND {
            return Err(FabricError::Invalid(format!(
                "send of {llen} bytes: the ofi provider carries at most {MAX_SEND} bytes per send"
            )));
        }
        // A short write-with-immediate on a provider that does not report the length of remote
        // writes carries the length in its CQ data (mode 1), and fewer credits.
        let len_in_cq_data = matches!(wr.op, Op::WriteImm(..))
            && !d.len_reported
            && llen > 0
            && llen <= wire::MAX_CQ_LEN;
        let piggy = if matches!(wr.op, Op::Send | Op::SendImm(_) | Op::WriteImm(..)) {
            let max_grant = if len_in_cq_data {
                wire::MAX_LEN_GRANT
            } else {
                MAX_GRANT
            };
            match self.take_credit(max_grant) {
                Some(n) => n,
                None => {
                    let st = if self.s.alive.load(Ordering::Acquire) {
                        WcStatus::RnrRetryExceeded
                    } else {
                        WcStatus::WrFlush
                    };
                    return self.local_error(wr, st);
                }
            }
        } else {
            0
        };
        // A write asks for delivery completion unless an earlier one on this queue pair proved
        // its target range (see `Window`); that completion, when it comes, proves it.
        let window = match wr.op {
            Op::Write(r) | Op::WriteImm(r, _) if llen > 0 => Some(Window {
                rkey: r.rkey,
                start: r.addr,
                end: r.addr.saturating_add(u64::from(llen)),
            }),
            _ => None,
        };
        let dc = window.is_some_and(|w| !self.s.proven(&w));
        let slot = Slot {
            busy: true,
            qp: self.s.num,
            wr_id: wr.wr_id,
            opcode: wr.op.wc_opcode(),
            len: llen,
            signaled: wr.flags.contains(SendFlags::SIGNALED),
            internal: false,
            flushed: false,
            deadline: Some(Instant::now() + self.s.response),
            proves: if dc { window } else { None },
        };
        let solicited = wr.flags.contains(SendFlags::SOLICITED);
        let peer = self.s.peer;
        let mut g = d.lock();
        let i = d.take_slot(&mut g, slot)?;
        match wr.op {
            Op::Send | Op::SendImm(_) => {
                let (imm, flags) = match wr.op {
                    Op::SendImm(v) => (v, wire::FLAG_IMM),
                    _ => (0, 0),
                };
                if llen > 0 {
                    // SAFETY: the source lies in a registered region (checked); the slot's
                    // buffer has room for MAX_SEND bytes after the header.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            laddr as *const u8,
                            d.buf(i).add(HDR_LEN),
                            llen as usize,
                        )
                    };
                }
                let hdr = MsgHdr {
                    kind: wire::MSG_SEND,
                    flags: flags | if solicited { wire::FLAG_SOLICITED } else { 0 },
                    dst_qp: self.s.peer_qp,
                    imm,
                    credits: piggy,
                    len: llen,
                };
                d.send_msg(&mut g, i, peer, &hdr, llen as usize)
            }
            Op::WriteImm(remote, imm) if llen == 0 || !(d.len_reported || len_in_cq_data) => {
                // The write (if any), then its completion as a message: ordered after the data
                // by FI_ORDER_SAW. A zero-length one is the message alone (no key checked);
                // others come here on providers that do not report the length of a remote
                // write when they are too long for the CQ data (over `MAX_CQ_LEN`).
                let hdr = MsgHdr {
                    kind: wire::MSG_WRITE_IMM,
                    flags: if solicited { wire::FLAG_SOLICITED } else { 0 },
                    dst_qp: self.s.peer_qp,
                    imm,
                    credits: piggy,
                    len: llen,
                };
                if llen == 0 {
                    return d.send_msg(&mut g, i, peer, &hdr, 0);
                }
                self.post_rma(&mut g, i, remote, laddr, llen, ldesc, false, None, dc)?;
                let internal = Slot {
                    qp: self.s.num,
                    internal: true,
                    proves: None,
                    ..slot
                };
                let m = d.take_slot(&mut g, internal)?;
                d.send_msg(&mut g, m, peer, &hdr, 0)
            }
            Op::Write(remote) | Op::Read(remote) => {
                let read = matches!(wr.op, Op::Read(_));
                self.post_rma(&mut g, i, remote, laddr, llen, ldesc, read, None, dc)
            }
            Op::WriteImm(remote, imm) => {
                let data = wire::CqData {
                    dst_qp: self.s.peer_qp,
                    imm,
                    solicited,
                    credits: piggy,
                    len: len_in_cq_data.then_some(llen),
                }
                .pack();
                self.post_rma(&mut g, i, remote, laddr, llen, ldesc, false, Some(data), dc)
            }
            Op::FetchAdd { remote, add } => {
                self.post_atomic(&mut g, i, remote, sys::fi_op_FI_SUM, add, 0, laddr, ldesc)
            }
            Op::CompareSwap {
                remote,
                compare,
                swap,
            } => self.post_atomic(
                &mut g,
                i,
                remote,
                sys::fi_op_FI_CSWAP,
                swap,
                compare,
                laddr,
                ldesc,
            ),
        }
    }

    fn post_recv(&self, wr: &RecvWr) -> Result<()> {
        if !self.s.alive.load(Ordering::Acquire) {
            self.s.recv_cq.push(
                Wc {
                    wr_id: wr.wr_id,
                    status: WcStatus::WrFlush,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm: None,
                    qp_num: self.s.num,
                },
                true,
            );
            return Ok(());
        }
        let mut st = self.s.st();
        if st.posted.len() >= self.s.max_recv as usize {
            return Err(FabricError::QueueFull);
        }
        st.posted.push_back(*wr);
        st.unreported += 1;
        let due = st.peer_view == 0;
        drop(st);
        if due {
            self.d.grants_due.push(self.s.num);
        }
        Ok(())
    }

    fn is_connected(&self) -> bool {
        self.s.alive.load(Ordering::Acquire)
    }

    fn disconnect(&self) {
        let mut g = self.d.lock();
        self.s.fail(&self.d, &mut g);
    }
}

impl OfiQp {
    /// Posts an RMA write (with remote CQ data `data`) or read from transmit slot `i`; a write
    /// with `dc` asks for delivery completion (see [`Window`]).
    #[allow(clippy::too_many_arguments)]
    fn post_rma(
        &self,
        g: &mut Inner,
        i: usize,
        remote: crate::rdma::RemoteBuf,
        laddr: u64,
        llen: u32,
        ldesc: *mut libc::c_void,
        read: bool,
        data: Option<u64>,
        dc: bool,
    ) -> Result<()> {
        let d = &*self.d;
        let iov = libc::iovec {
            iov_base: laddr as *mut libc::c_void,
            iov_len: llen as usize,
        };
        let rma = sys::fi_rma_iov {
            addr: d.remote_addr(remote.addr),
            len: llen as usize,
            key: u64::from(remote.rkey),
        };
        let mut flags = sys::FI_COMPLETION;
        if dc {
            flags |= sys::FI_DELIVERY_COMPLETE;
        }
        if data.is_some() {
            flags |= sys::FI_REMOTE_CQ_DATA;
        }
        let mut desc = ldesc;
        let peer = self.s.peer;
        d.post(
            g,
            i,
            if read { "fi_readmsg" } else { "fi_writemsg" },
            |ep, ctx| {
                let msg = rma_msg(&iov, &mut desc, peer, &rma, ctx, data.unwrap_or(0));
                // SAFETY: `msg` and what it points to live across the call; the local buffer is
                // registered (checked by the caller), who keeps it until the completion, as with
                // verbs.
                unsafe {
                    if read {
                        sys::rfaas_fi_readmsg(ep, &msg, u64::from(flags))
                    } else {
                        sys::rfaas_fi_writemsg(ep, &msg, u64::from(flags))
                    }
                }
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn post_atomic(
        &self,
        g: &mut Inner,
        i: usize,
        remote: crate::rdma::RemoteBuf,
        op: sys::fi_op,
        operand: u64,
        compare: u64,
        result: u64,
        result_desc: *mut libc::c_void,
    ) -> Result<()> {
        let d = &*self.d;
        let buf = d.buf(i);
        // SAFETY: the slot's buffer holds at least 16 bytes and belongs to this request until
        // its completion; libfabric reads the operands from it.
        unsafe {
            std::ptr::write_unaligned(buf.cast::<u64>(), operand);
            std::ptr::write_unaligned(buf.add(8).cast::<u64>(), compare);
        }
        let opv = sys::fi_ioc {
            addr: buf.cast(),
            count: 1,
        };
        let cmpv = sys::fi_ioc {
            addr: buf.wrapping_add(8).cast(),
            count: 1,
        };
        let mut resv = sys::fi_ioc {
            addr: result as *mut libc::c_void,
            count: 1,
        };
        let rma = sys::fi_rma_ioc {
            addr: d.remote_addr(remote.addr),
            count: 1,
            key: u64::from(remote.rkey),
        };
        let mut desc = d.bounce_desc();
        let mut cdesc = d.bounce_desc();
        let mut rdesc = result_desc;
        let peer = self.s.peer;
        d.post(
            g,
            i,
            "fi_fetch_atomicmsg/fi_compare_atomicmsg",
            |ep, ctx| {
                let msg = sys::fi_msg_atomic {
                    msg_iov: &opv,
                    desc: &mut desc,
                    iov_count: 1,
                    addr: peer,
                    rma_iov: &rma,
                    rma_iov_count: 1,
                    datatype: sys::fi_datatype_FI_UINT64,
                    op,
                    context: ctx,
                    data: 0,
                };
                // SAFETY: every pointer in `msg`, the compare and result vectors lives across the
                // call; the result buffer is registered with LOCAL_WRITE (checked by the caller).
                unsafe {
                    if op == sys::fi_op_FI_CSWAP {
                        sys::rfaas_fi_compare_atomicmsg(
                            ep,
                            &msg,
                            &cmpv,
                            &mut cdesc,
                            &mut resv,
                            &mut rdesc,
                            u64::from(sys::FI_COMPLETION),
                        )
                    } else {
                        sys::rfaas_fi_fetch_atomicmsg(
                            ep,
                            &msg,
                            &mut resv,
                            &mut rdesc,
                            u64::from(sys::FI_COMPLETION),
                        )
                    }
                }
            },
        )
    }
}

impl Drop for OfiQp {
    fn drop(&mut self) {
        self.disconnect();
        epoll_del(self.d.epoll.as_raw_fd(), self.s.sock.as_raw_fd());
        self.d
            .qps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.s.num);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Window;
    use crate::rdma::ofi::{OfiFabric, OfiQp};
    use crate::rdma::types::{
        Access, Op, QpCaps, QpTimeouts, RemoteBuf, SendFlags, SendWr, Wc, WcStatus,
    };
    use crate::rdma::{
        CompletionQueue, ConnRequest, Fabric, Listener, MemoryRegion, QpInit, QueuePair,
    };

    const WAIT: Duration = Duration::from_secs(20);

    #[test]
    fn windows_cover_and_widen() {
        let w = |rkey, start, end| Window { rkey, start, end };
        assert!(w(1, 0, 64).covers(&w(1, 0, 64)));
        assert!(w(1, 0, 64).covers(&w(1, 8, 16)));
        assert!(!w(1, 0, 64).covers(&w(1, 60, 68)));
        assert!(!w(1, 0, 64).covers(&w(2, 0, 8)));
    }

    /// `b` connected to `a` on libfabric provider `prov`, with short response timers.
    fn pair(prov: &str) -> (OfiFabric, OfiFabric, OfiQp, OfiQp, super::super::OfiCq) {
        let a = OfiFabric::with_provider(Some(prov)).expect("ofi domain");
        let b = OfiFabric::with_provider(Some(prov)).expect("ofi domain");
        let cq_a = a.create_cq(64).unwrap();
        let cq_b = b.create_cq(64).unwrap();
        let timeouts = QpTimeouts {
            rnr: Duration::from_millis(200),
            response: Duration::from_millis(300),
        };
        let caps = QpCaps::default();
        let listener = a.listen("127.0.0.1:0").unwrap();
        let addr = listener.local_addr();
        let (qp_a, qp_b) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let req = listener.next_request(WAIT).unwrap().expect("a request");
                let init = QpInit {
                    send_cq: &cq_a,
                    recv_cq: &cq_a,
                    caps,
                    timeouts,
                };
                req.accept(init, &[], b"").unwrap()
            });
            let init = QpInit {
                send_cq: &cq_b,
                recv_cq: &cq_b,
                caps,
                timeouts,
            };
            let (qp_b, _) = b.connect(&addr, init, &[], b"", WAIT).unwrap();
            (h.join().unwrap(), qp_b)
        });
        (a, b, qp_a, qp_b, cq_b)
    }

    fn one(cq: &super::super::OfiCq) -> Wc {
        let mut wc = [Wc::EMPTY; 1];
        let deadline = Instant::now() + WAIT;
        loop {
            if cq.poll(&mut wc) == 1 {
                return wc[0];
            }
            assert!(Instant::now() < deadline, "no completion in {WAIT:?}");
            std::thread::yield_now();
        }
    }

    fn write(id: u64, remote: RemoteBuf, src: &crate::rdma::Sge) -> SendWr {
        SendWr {
            wr_id: id,
            op: Op::Write(remote),
            sge: Some(*src),
            flags: SendFlags::SIGNALED,
        }
    }

    /// Writes that skip delivery completion inside a proven window land; a write past the
    /// window's end (out of the region's bounds) and one with another key still fail, on each
    /// libfabric provider (`RemoteAccess`, or `RetryExceeded` where shm never answers).
    fn errors_outside_proven_windows(prov: &str) {
        for bad in ["out of bounds", "wrong key"] {
            let (a, b, _qp_a, qp_b, cq_b) = pair(prov);
            let target = a
                .alloc_mr(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
                .unwrap();
            let src = b.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
            for round in 0..3u8 {
                src.write(0, &[round + 1; 64]);
                qp_b.post_send(&write(
                    u64::from(round),
                    target.remote(0, 64),
                    &src.sge(0, 64),
                ))
                .unwrap();
                let c = one(&cq_b);
                assert_eq!(c.status, WcStatus::Success, "{prov} round {round}: {c:?}");
            }
            // The last write is visible once the target has driven progress.
            let deadline = Instant::now() + WAIT;
            let mut got = [0u8; 64];
            loop {
                target.read(0, &mut got);
                if got == [3u8; 64] {
                    break;
                }
                assert!(Instant::now() < deadline, "{prov}: writes never landed");
                std::thread::yield_now();
            }
            let remote = match bad {
                "out of bounds" => target.remote(4096 - 8, 64),
                _ => RemoteBuf {
                    rkey: target.rkey() ^ 0x5a5a_0000,
                    ..target.remote(0, 64)
                },
            };
            src.write(0, &[0xee; 64]);
            qp_b.post_send(&write(9, remote, &src.sge(0, 64))).unwrap();
            let c = one(&cq_b);
            assert!(
                matches!(c.status, WcStatus::RemoteAccess | WcStatus::RetryExceeded),
                "{prov}, {bad} after a proven window: {c:?}"
            );
            target.read(0, &mut got);
            assert_eq!(got, [3u8; 64], "{prov}, {bad}: target memory changed");
        }
    }

    #[test]
    fn errors_outside_proven_windows_shm() {
        errors_outside_proven_windows("shm");
    }

    #[test]
    fn errors_outside_proven_windows_tcp_rxm() {
        errors_outside_proven_windows("tcp;ofi_rxm");
    }
}
