//! shm queue pairs: the data path.
//!
//! The initiator does all the work of a request in `post_send`: it checks its own SGE against its
//! region table and the remote buffer against the target's (shared read-only), copies or runs the
//! atomic on the peer's mapping, and for write-with-immediate and sends publishes an entry in the
//! target's incoming ring. The target's completion queue turns ring entries into receive
//! completions when it polls.

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::cq::CqShared;
use super::ring::{self, Ring};
use super::Domain;
use crate::rdma::cq_core::CqCore;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::mr_table::TableView;
use crate::rdma::notify::Notifier;
use crate::rdma::segment::Segment;
use crate::rdma::spsc::Spsc;
use crate::rdma::{
    Access, Op, QpTimeouts, QueuePair, RecvWr, RemoteBuf, SendFlags, SendWr, Wc, WcOpcode, WcStatus,
};

const STATE_OK: u32 = 0;
const STATE_ERROR: u32 = 1;

/// The receive half of a queue pair, shared with the completion queue that polls it.
#[derive(Debug)]
pub(crate) struct RecvState {
    pub(crate) qp_num: u32,
    pub(crate) ring: Ring,
    posted: Spsc<RecvWr>,
    consumed: AtomicU64,
    state: AtomicU32,
    table: TableView,
    _table_seg: Arc<Segment>,
}

impl RecvState {
    pub(crate) fn new(dom: &Domain, qp_num: u32, depth: u32, msg_size: u32) -> Result<RecvState> {
        let ring = Ring::create(depth, msg_size)?;
        let cap = ring.depth() as usize;
        Ok(RecvState {
            qp_num,
            ring,
            posted: Spsc::new(
                cap,
                RecvWr {
                    wr_id: 0,
                    sge: None,
                },
            ),
            consumed: AtomicU64::new(0),
            state: AtomicU32::new(STATE_OK),
            table: dom.table.view(),
            _table_seg: dom.table_seg.clone(),
        })
    }

    #[inline]
    pub(crate) fn is_ok(&self) -> bool {
        self.state.load(Ordering::Acquire) == STATE_OK
    }

    pub(crate) fn set_error(&self) {
        self.state.store(STATE_ERROR, Ordering::Release);
    }

    /// Posts a receive (before or after the connection is up).
    pub(crate) fn post(&self, wr: &RecvWr) -> Result<()> {
        self.posted.push(*wr).map_err(|_| FabricError::QueueFull)?;
        // Only the thread that posts receives writes this counter: no locked instruction.
        let posted = self.ring.posted();
        posted.store(posted.load(Ordering::Relaxed) + 1, Ordering::Release);
        Ok(())
    }

    /// Turns published ring entries into completions (and, once the queue pair failed and the
    /// ring is drained, flushes the remaining receives). Called by the completion queue.
    #[inline]
    pub(crate) fn poll_into(&self, out: &mut [Wc], _core: &CqCore) -> usize {
        let mut k = 0;
        while k < out.len() {
            let n = self.consumed.load(Ordering::Relaxed);
            let Some(e) = self.ring.peek(n) else {
                if self.ring.closed().load(Ordering::Relaxed) != 0 {
                    self.set_error();
                }
                if !self.is_ok() {
                    while k < out.len() {
                        let Some(wr) = self.posted.pop() else { break };
                        out[k] = Wc::new(
                            self.qp_num,
                            wr.wr_id,
                            WcStatus::WrFlush,
                            WcOpcode::Recv,
                            0,
                            None,
                        );
                        k += 1;
                    }
                }
                break;
            };
            let Some(wr) = self.posted.pop() else {
                // The peer published more than we posted: it broke the protocol.
                tracing::warn!(
                    qp = self.qp_num,
                    "shm peer overran the posted receives; closing"
                );
                self.set_error();
                break;
            };
            self.consumed.store(n + 1, Ordering::Relaxed);
            out[k] = match e.opcode {
                ring::OP_WRITE_IMM => Wc::new(
                    self.qp_num,
                    wr.wr_id,
                    WcStatus::Success,
                    WcOpcode::RecvWriteImm,
                    e.byte_len,
                    Some(e.imm),
                ),
                ring::OP_SEND | ring::OP_SEND_IMM => {
                    let imm = (e.opcode == ring::OP_SEND_IMM).then_some(e.imm);
                    let status = self.deliver_send(&wr, n, e.byte_len);
                    Wc::new(
                        self.qp_num,
                        wr.wr_id,
                        status,
                        WcOpcode::Recv,
                        e.byte_len,
                        imm,
                    )
                }
                _ => {
                    self.set_error();
                    Wc::new(
                        self.qp_num,
                        wr.wr_id,
                        WcStatus::Fatal,
                        WcOpcode::Recv,
                        0,
                        None,
                    )
                }
            };
            k += 1;
        }
        k
    }

    fn deliver_send(&self, wr: &RecvWr, n: u64, len: u32) -> WcStatus {
        if len > self.ring.msg_size() {
            return WcStatus::RemoteInvalidRequest;
        }
        if len == 0 {
            return WcStatus::Success;
        }
        let Some(sge) = wr.sge else {
            return WcStatus::LocalLength;
        };
        if sge.len < len {
            return WcStatus::LocalLength;
        }
        if self
            .table
            .check(
                sge.lkey,
                sge.addr,
                u64::from(len),
                Access::LOCAL_WRITE,
                false,
            )
            .is_err()
        {
            return WcStatus::LocalProtection;
        }
        // SAFETY: the slab slot of message `n` holds `len <= msg_size` bytes written by the peer
        // before it published the entry (Acquire in `peek`); the destination was just checked to
        // be `len` bytes of a registered local region with LOCAL_WRITE.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ring.slab_ptr(n), sge.addr as *mut u8, len as usize)
        };
        WcStatus::Success
    }
}

/// What the initiator knows of its peer: mappings of its arenas, region table, incoming ring and
/// the notifier of the completion queue behind that ring.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) pid: u32,
    pub(crate) rw: Segment,
    pub(crate) rw_base: u64,
    pub(crate) ro: Segment,
    pub(crate) ro_base: u64,
    pub(crate) table: TableView,
    pub(crate) _table_seg: Segment,
    pub(crate) ring: Ring,
    pub(crate) notifier: Notifier,
}

impl Peer {
    /// Checks an access against the peer's region table and returns where it lands in our
    /// mapping of the peer's memory.
    #[inline]
    fn translate(
        &self,
        rkey: u32,
        addr: u64,
        len: u32,
        need: Access,
    ) -> std::result::Result<*mut u8, WcStatus> {
        self.table.check(rkey, addr, u64::from(len), need, true)?;
        let end = addr
            .checked_add(u64::from(len))
            .ok_or(WcStatus::RemoteAccess)?;
        if addr >= self.rw_base && end <= self.rw_base + self.rw.len() as u64 {
            // SAFETY: `addr - rw_base + len` lies inside our mapping of the peer's read-write arena.
            return Ok(unsafe { self.rw.as_ptr().add((addr - self.rw_base) as usize) });
        }
        let read_only = !need.intersects(Access::REMOTE_WRITE | Access::REMOTE_ATOMIC);
        if read_only && addr >= self.ro_base && end <= self.ro_base + self.ro.len() as u64 {
            // SAFETY: inside our (read-only) mapping of the peer's read-only arena; only read.
            return Ok(unsafe { self.ro.as_ptr().add((addr - self.ro_base) as usize) });
        }
        Err(WcStatus::RemoteAccess)
    }
}

/// Everything a queue pair is made of; shared with the control thread (weakly).
#[derive(Debug)]
pub(crate) struct QpShared {
    pub(crate) dom: Arc<Domain>,
    pub(crate) qp_num: u32,
    pub(crate) recv: Arc<RecvState>,
    pub(crate) send_cq: Arc<CqShared>,
    pub(crate) recv_cq: Arc<CqShared>,
    pub(crate) peer: Peer,
    pub(crate) produced: AtomicU64,
    /// The peer's posted-receive count as last read (only the posting thread uses it).
    pub(crate) credit_limit: AtomicU64,
    pub(crate) timeouts: QpTimeouts,
    pub(crate) sock: OwnedFd,
    pub(crate) token: AtomicU64,
    pub(crate) closed: AtomicBool,
}

impl QpShared {
    /// Moves the queue pair to the error state and wakes whoever waits on its queues.
    pub(crate) fn fail(&self) {
        self.recv.set_error();
        self.recv_cq.core.notifier.kick();
        self.send_cq.core.notifier.kick();
    }

    /// Tears the connection down: the peer sees the socket close and flushes.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.recv.ring.closed().store(1, Ordering::Release);
        self.peer.ring.closed().store(1, Ordering::Release);
        self.peer.notifier.kick();
        self.fail();
        // SAFETY: shutting down our own connected socket; errors (already closed) are harmless.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// A connected shm queue pair. `Send`, not `Sync`: one thread posts on it.
#[derive(Debug)]
pub struct ShmQp {
    pub(crate) sh: Arc<QpShared>,
    _not_sync: PhantomData<Cell<()>>,
}

impl ShmQp {
    pub(crate) fn new(sh: Arc<QpShared>) -> ShmQp {
        ShmQp {
            sh,
            _not_sync: PhantomData,
        }
    }

    /// Pid of the peer process.
    pub fn peer_pid(&self) -> u32 {
        self.sh.peer.pid
    }

    #[inline]
    fn complete(&self, wr: &SendWr, status: WcStatus, byte_len: u32) {
        if status != WcStatus::Success {
            self.sh.fail();
        } else if !wr.flags.contains(SendFlags::SIGNALED) {
            return;
        }
        let wc = Wc::new(
            self.sh.qp_num,
            wr.wr_id,
            status,
            wr.op.wc_opcode(),
            byte_len,
            None,
        );
        // Room was checked before a signaled request ran; a full queue here means an error
        // completion of an unsignaled request, or another queue pair sharing the CQ raced us.
        if !self.sh.send_cq.core.push(wc, false) {
            tracing::error!(
                qp = self.sh.qp_num,
                "send completion queue overrun; completion dropped"
            );
        }
    }

    /// Waits for a receive credit at the peer (receiver-not-ready), up to the RNR timeout.
    #[inline]
    fn credit(&self, n: u64) -> std::result::Result<(), WcStatus> {
        // Credits seen last time: most sends need no look at the peer's counter (a cache line
        // the peer writes on every receive it posts).
        if self.sh.credit_limit.load(Ordering::Relaxed) > n {
            return Ok(());
        }
        let ring = &self.sh.peer.ring;
        let posted = ring.posted().load(Ordering::Acquire);
        self.sh.credit_limit.store(posted, Ordering::Relaxed);
        if posted > n {
            return Ok(());
        }
        let deadline = Instant::now() + self.sh.timeouts.rnr;
        let mut spins = 0u32;
        loop {
            let posted = ring.posted().load(Ordering::Acquire);
            if posted > n {
                self.sh.credit_limit.store(posted, Ordering::Relaxed);
                return Ok(());
            }
            if !self.sh.recv.is_ok() || ring.closed().load(Ordering::Acquire) != 0 {
                return Err(WcStatus::WrFlush);
            }
            spins += 1;
            if spins < 256 {
                std::hint::spin_loop();
            } else {
                if Instant::now() >= deadline {
                    return Err(WcStatus::RnrRetryExceeded);
                }
                std::thread::yield_now();
            }
        }
    }

    /// Runs one request; returns its status and byte count.
    #[inline]
    fn execute(&self, wr: &SendWr) -> (WcStatus, u32) {
        let sh = &*self.sh;
        let writes_locally = matches!(
            wr.op,
            Op::Read(_) | Op::FetchAdd { .. } | Op::CompareSwap { .. }
        );
        let (lptr, llen) = match wr.sge {
            None => (std::ptr::null_mut::<u8>(), 0u32),
            Some(s) => {
                let need = if writes_locally {
                    Access::LOCAL_WRITE
                } else {
                    Access::empty()
                };
                if sh
                    .dom
                    .table
                    .view()
                    .check(s.lkey, s.addr, u64::from(s.len), need, false)
                    .is_err()
                {
                    return (WcStatus::LocalProtection, 0);
                }
                (s.addr as *mut u8, s.len)
            }
        };
        match self.perform(wr, lptr, llen) {
            Ok(n) => (WcStatus::Success, n),
            Err(s) => (s, 0),
        }
    }

    /// Runs the remote part of a request whose local buffer `lptr..+llen` is checked; returns
    /// the byte count.
    #[inline]
    fn perform(&self, wr: &SendWr, lptr: *mut u8, llen: u32) -> std::result::Result<u32, WcStatus> {
        let peer = &self.sh.peer;
        match wr.op {
            Op::Write(rb) => {
                let dst = self.remote(rb, llen, Access::REMOTE_WRITE)?;
                if llen > 0 {
                    // SAFETY: `lptr..+llen` is a checked local region, `dst..+llen` a checked
                    // range of the peer's read-write mapping; distinct mappings never overlap
                    // in a way that matters for a byte copy of shared memory.
                    unsafe { std::ptr::copy(lptr, dst, llen as usize) };
                }
            }
            Op::WriteImm(rb, imm) => {
                let dst = self.remote(rb, llen, Access::REMOTE_WRITE)?;
                let n = self.next_message()?;
                if llen > 0 {
                    // SAFETY: as for `Write`.
                    unsafe { std::ptr::copy(lptr, dst, llen as usize) };
                }
                self.publish(n, ring::OP_WRITE_IMM, imm, llen, wr.flags);
            }
            Op::Send | Op::SendImm(_) => {
                if llen > peer.ring.msg_size() {
                    return Err(WcStatus::RemoteInvalidRequest);
                }
                let n = self.next_message()?;
                if llen > 0 {
                    // SAFETY: the slab slot of message `n` has `msg_size >= llen` bytes and the
                    // target does not read it until we publish `n`; the source is checked.
                    unsafe { std::ptr::copy(lptr, peer.ring.slab_ptr(n), llen as usize) };
                }
                let (opcode, imm) = match wr.op {
                    Op::SendImm(i) => (ring::OP_SEND_IMM, i),
                    _ => (ring::OP_SEND, 0),
                };
                self.publish(n, opcode, imm, llen, wr.flags);
            }
            Op::Read(rb) => {
                let src = self.remote(rb, llen, Access::REMOTE_READ)?;
                if llen > 0 {
                    // SAFETY: checked source in the peer's mapping, checked writable local
                    // target.
                    unsafe { std::ptr::copy(src, lptr, llen as usize) };
                }
            }
            Op::FetchAdd { remote, add } => {
                return self.atomic(remote.rkey, remote.addr, lptr, llen, |w| {
                    w.fetch_add(add, Ordering::AcqRel)
                })
            }
            Op::CompareSwap {
                remote,
                compare,
                swap,
            } => {
                return self.atomic(remote.rkey, remote.addr, lptr, llen, |w| {
                    match w.compare_exchange(compare, swap, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(v) | Err(v) => v,
                    }
                })
            }
        }
        Ok(llen)
    }

    /// Where `len` bytes of the peer's memory at `rb` land in our mapping, checked for `need`;
    /// a null pointer (never dereferenced: copies of zero bytes) when `len` is 0, which needs no
    /// check.
    #[inline]
    fn remote(
        &self,
        rb: RemoteBuf,
        len: u32,
        need: Access,
    ) -> std::result::Result<*mut u8, WcStatus> {
        if len == 0 {
            return Ok(std::ptr::null_mut());
        }
        self.sh.peer.translate(rb.rkey, rb.addr, len, need)
    }

    /// The sequence number of the next message to the peer, once the peer has a receive posted
    /// for it (see [`ShmQp::credit`]).
    #[inline]
    fn next_message(&self) -> std::result::Result<u64, WcStatus> {
        let n = self.sh.produced.load(Ordering::Relaxed);
        self.credit(n)?;
        Ok(n)
    }

    /// Publishes message `n`, whose payload is in place, to the peer's ring and wakes the peer
    /// (for a solicited message, also a peer armed for solicited events only).
    #[inline]
    fn publish(&self, n: u64, opcode: u32, imm: u32, byte_len: u32, wr_flags: SendFlags) {
        let flags = if wr_flags.contains(SendFlags::SOLICITED) {
            ring::FLAG_SOLICITED
        } else {
            0
        };
        let peer = &self.sh.peer;
        peer.ring.publish(
            n,
            ring::Entry {
                opcode,
                imm,
                byte_len,
                flags,
            },
        );
        self.sh.produced.store(n + 1, Ordering::Relaxed);
        peer.notifier.signal_after_seqcst(flags != 0);
    }

    #[inline]
    fn atomic(
        &self,
        rkey: u32,
        addr: u64,
        lptr: *mut u8,
        llen: u32,
        f: impl FnOnce(&AtomicU64) -> u64,
    ) -> std::result::Result<u32, WcStatus> {
        if llen < 8 {
            return Err(WcStatus::LocalLength);
        }
        if addr % 8 != 0 {
            return Err(WcStatus::RemoteInvalidRequest);
        }
        let p = self
            .sh
            .peer
            .translate(rkey, addr, 8, Access::REMOTE_ATOMIC)?;
        // SAFETY: `p` is an 8-byte aligned word (the peer's arena is page aligned in both
        // mappings and `addr` is 8-aligned) inside the read-write mapping, accessed atomically
        // by every party.
        let old = f(unsafe { AtomicU64::from_ptr(p.cast::<u64>()) });
        // SAFETY: `lptr` is a checked local region of at least 8 bytes with LOCAL_WRITE;
        // unaligned write because SGEs need not be aligned.
        unsafe { std::ptr::write_unaligned(lptr.cast::<u64>(), old) };
        Ok(8)
    }
}

impl QueuePair for ShmQp {
    fn qp_num(&self) -> u32 {
        self.sh.qp_num
    }

    #[inline]
    fn post_send(&self, wr: &SendWr) -> Result<()> {
        // Only a signaled request is sure to need a completion entry; an error completion on a
        // full queue is logged (the application let its queue overflow).
        if wr.flags.contains(SendFlags::SIGNALED) && !self.sh.send_cq.core.has_room(1) {
            return Err(FabricError::QueueFull);
        }
        if !self.sh.recv.is_ok() {
            self.complete(wr, WcStatus::WrFlush, 0);
            return Ok(());
        }
        let (status, len) = self.execute(wr);
        self.complete(wr, status, len);
        Ok(())
    }

    fn post_recv(&self, wr: &RecvWr) -> Result<()> {
        if !self.sh.recv.is_ok() {
            let wc = Wc::new(
                self.sh.qp_num,
                wr.wr_id,
                WcStatus::WrFlush,
                WcOpcode::Recv,
                0,
                None,
            );
            if !self.sh.recv_cq.core.push(wc, true) {
                return Err(FabricError::QueueFull);
            }
            return Ok(());
        }
        self.sh.recv.post(wr)
    }

    fn is_connected(&self) -> bool {
        self.sh.recv.is_ok() && self.sh.peer.ring.closed().load(Ordering::Acquire) == 0
    }

    fn disconnect(&self) {
        self.sh.close();
    }
}

impl Drop for ShmQp {
    fn drop(&mut self) {
        self.sh.close();
        self.sh
            .dom
            .control
            .forget(self.sh.token.load(Ordering::Relaxed));
        self.sh.recv_cq.unbind(&self.sh.recv);
    }
}
