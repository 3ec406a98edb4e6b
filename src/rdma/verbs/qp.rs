//! Queue pairs: creation on an rdma_cm id, posting, and the per-queue-pair tables that let a
//! shared completion queue report what the API promises.
//!
//! # Why a table
//!
//! ibverbs completions carry the `wr_id` and a status, but for errors the opcode is undefined,
//! so a flushed receive cannot be told from a flushed send on a completion queue that takes
//! both; and a successful write-with-immediate is reported as a plain `RDMA_WRITE` with no byte
//! count. So the provider posts its own `wr_id` — `token << 32 | is_recv << 31 | sequence` — and
//! keeps the caller's `wr_id`, the opcode and the length in a ring indexed by the sequence. The
//! completion queue finds the ring from the token (a lock-free map, see `cq.rs`).
//!
//! Rings have twice as many slots as the queue has entries. A slot is reused `2 × depth` posts
//! later; the hardware queue holds at most `depth` requests, and the requests after the
//! completed one can only be retired by a later poll of the same (single) poller, so a slot is
//! never overwritten before the poller has read it (the provider keeps at most `depth` send
//! requests outstanding itself, see below).
//!
//! # Signaling
//!
//! Queue pairs are created with `sq_sig_all = 0`, and a caller may post unsignaled requests
//! without limit; the provider signals every half queue on its own and hides those completions
//! (see `signal.rs`). The table counts the send completions polled (`retired`), so that
//! [`QueuePair::post_send`] knows how full the device's queue is and, when it is full, polls the
//! send completion queue itself instead of failing.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdma_sys::{
    atomic_t, ibv_modify_qp, ibv_post_recv, ibv_post_send, ibv_qp, ibv_qp_attr, ibv_qp_attr_mask,
    ibv_qp_init_attr, ibv_qp_type, ibv_recv_wr, ibv_send_flags, ibv_send_wr, ibv_sge,
    ibv_wr_opcode, imm_data_invalidated_rkey_union_t, rdma_cm_id, rdma_create_qp, rdma_disconnect,
    rdma_t, wr_t,
};

use super::async_events::{QpEntry, QpRegistry};
use super::cm::CmId;
use super::cq::CqInner;
use super::device::Device;
use super::error::{errno, last_os_error};
use super::signal::{outstanding, Signal, SignalPolicy};
use super::wire;
use super::VerbsFabric;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::{Op, QpInit, QpTimeouts, QueuePair, RecvWr, SendFlags, SendWr, Sge, WcOpcode};

/// Inline data requested for every queue pair (a hint; the device may grant less).
const WANT_INLINE: u32 = 128;

const RECV_BIT: u64 = 1 << 31;
/// The sequence bits of a device `wr_id`.
pub(crate) const SEQ_MASK: u64 = RECV_BIT - 1;
/// Set in a send slot's opcode byte when the provider signaled the request on its own.
const HIDDEN: u64 = 1 << 7;
/// How long `post_send` waits at most for the device to retire requests when the send queue is
/// full (it polls the send completion queue meanwhile), when the RNR timeout is shorter.
const MIN_DRAIN_WAIT: Duration = Duration::from_millis(10);
/// The most `post_send` waits for room (the contract: posting never blocks for long).
const MAX_DRAIN_WAIT: Duration = Duration::from_secs(4);

/// The `wr_id` posted to the device for request `seq` of queue pair `token`.
pub(crate) fn encode_wr_id(token: u32, recv: bool, seq: u64) -> u64 {
    (u64::from(token) << 32) | if recv { RECV_BIT } else { 0 } | (seq & SEQ_MASK)
}

/// Splits a device `wr_id` into `(token, is_recv, sequence)`.
pub(crate) fn decode_wr_id(wr_id: u64) -> (u32, bool, u64) {
    (
        (wr_id >> 32) as u32,
        wr_id & RECV_BIT != 0,
        wr_id & SEQ_MASK,
    )
}

fn opcode_code(op: WcOpcode) -> u64 {
    match op {
        WcOpcode::Send => 0,
        WcOpcode::Write => 1,
        WcOpcode::WriteImm => 2,
        WcOpcode::Read => 3,
        WcOpcode::FetchAdd => 4,
        WcOpcode::CompareSwap => 5,
        WcOpcode::Recv => 6,
        WcOpcode::RecvWriteImm => 7,
    }
}

fn code_opcode(code: u64) -> WcOpcode {
    match code {
        0 => WcOpcode::Send,
        1 => WcOpcode::Write,
        2 => WcOpcode::WriteImm,
        3 => WcOpcode::Read,
        4 => WcOpcode::FetchAdd,
        5 => WcOpcode::CompareSwap,
        6 => WcOpcode::Recv,
        _ => WcOpcode::RecvWriteImm,
    }
}

/// The caller's view of one send request, kept until its completion is polled.
struct SendSlot {
    wr_id: AtomicU64,
    /// `opcode code | byte length << 8`.
    meta: AtomicU64,
}

/// What a completed send request was.
pub(crate) struct SendInfo {
    pub wr_id: u64,
    pub opcode: WcOpcode,
    pub len: u32,
    /// Signaled by the provider, not the caller: a successful completion is not reported.
    pub hidden: bool,
}

#[derive(Default)]
struct Teardown {
    /// False once the queue pair started to drop: the monitor must not touch the id any more.
    alive: bool,
    /// True once the connection was established.
    established: bool,
    /// True once `rdma_disconnect` was called (by us or by the monitor).
    disconnect_sent: bool,
}

/// Per-queue-pair state shared with completion queues and the connection monitor.
pub(crate) struct QpTable {
    token: u32,
    connected: AtomicBool,
    /// The sequence number (masked) after the last send completion polled: the device has
    /// retired every request before it.
    retired: AtomicU64,
    send: Box<[SendSlot]>,
    recv: Box<[AtomicU64]>,
    teardown: Mutex<Teardown>,
}

impl QpTable {
    fn new(token: u32, send_depth: u32, recv_depth: u32) -> QpTable {
        let ring = |depth: u32| (2 * depth.max(1) as usize).next_power_of_two();
        QpTable {
            token,
            connected: AtomicBool::new(false),
            retired: AtomicU64::new(0),
            send: (0..ring(send_depth))
                .map(|_| SendSlot {
                    wr_id: AtomicU64::new(0),
                    meta: AtomicU64::new(0),
                })
                .collect(),
            recv: (0..ring(recv_depth)).map(|_| AtomicU64::new(0)).collect(),
            teardown: Mutex::new(Teardown {
                alive: true,
                ..Teardown::default()
            }),
        }
    }

    /// The token in this queue pair's device `wr_id`s.
    pub fn token(&self) -> u32 {
        self.token
    }

    fn record_send(&self, seq: u64, wr_id: u64, op: WcOpcode, len: u32, hidden: bool) {
        let s = &self.send[(seq as usize) & (self.send.len() - 1)];
        s.wr_id.store(wr_id, Ordering::Relaxed);
        let hidden = if hidden { HIDDEN } else { 0 };
        s.meta.store(
            opcode_code(op) | hidden | (u64::from(len) << 8),
            Ordering::Release,
        );
    }

    /// Called by the completion queue for every send completion of this queue pair (any
    /// status, hidden or not): the device retired request `seq` and all before it.
    pub fn retire(&self, seq: u64) {
        self.retired
            .store(seq.wrapping_add(1) & SEQ_MASK, Ordering::Release);
    }

    /// Send requests posted before `posted` that the device may still hold.
    fn outstanding(&self, posted: u64) -> u64 {
        outstanding(posted, self.retired.load(Ordering::Acquire), SEQ_MASK)
    }

    /// The send request with sequence `seq` (called by the completion queue).
    pub fn send_info(&self, seq: u64) -> SendInfo {
        let s = &self.send[(seq as usize) & (self.send.len() - 1)];
        let meta = s.meta.load(Ordering::Acquire);
        SendInfo {
            wr_id: s.wr_id.load(Ordering::Relaxed),
            opcode: code_opcode(meta & (HIDDEN - 1)),
            len: (meta >> 8) as u32,
            hidden: meta & HIDDEN != 0,
        }
    }

    fn record_recv(&self, seq: u64, wr_id: u64) {
        self.recv[(seq as usize) & (self.recv.len() - 1)].store(wr_id, Ordering::Release);
    }

    /// The caller's `wr_id` of receive `seq` (called by the completion queue).
    pub fn recv_wr_id(&self, seq: u64) -> u64 {
        self.recv[(seq as usize) & (self.recv.len() - 1)].load(Ordering::Acquire)
    }

    /// Called when an error completion of this queue pair is polled: it is in the error state.
    pub fn mark_failed(&self) {
        self.connected.store(false, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Teardown> {
        self.teardown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer disconnected (or the device went away): flush the queue pair.
    ///
    /// # Safety
    ///
    /// `id` must be this queue pair's id and valid for the duration of the call (the monitor
    /// holds an unacknowledged event of it, which keeps `rdma_destroy_id` from returning).
    pub unsafe fn on_disconnect(&self, id: *mut rdma_cm_id) {
        self.connected.store(false, Ordering::Release);
        let mut t = self.lock();
        if t.alive && t.established && !t.disconnect_sent {
            t.disconnect_sent = true;
            // SAFETY: `alive` under the lock means the queue pair's Drop has not started, so the
            // id and its QP exist (the caller guarantees the id itself).
            if unsafe { rdma_disconnect(id) } != 0 {
                tracing::debug!("rdma_disconnect after peer disconnect: {}", last_os_error());
            }
        }
    }
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn next_token() -> u32 {
    // Tokens only need to differ between queue pairs that share a completion queue at the same
    // time; skip 0 so a zeroed wr_id never matches.
    loop {
        let t = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed) as u32;
        if t != 0 {
            return t;
        }
    }
}

/// A connected reliable queue pair created through rdma_cm.
pub struct VerbsQp {
    // Field order is drop order: the id (with the QP) goes before the table the monitor may
    // still read, and before the completion queues and the device.
    id: CmId,
    qp: NonNull<ibv_qp>,
    qp_num: u32,
    table: Arc<QpTable>,
    send_seq: Cell<u64>,
    recv_seq: Cell<u64>,
    signals: Cell<SignalPolicy>,
    /// How long `post_send` waits for room in a full send queue.
    drain_wait: Duration,
    max_inline: u32,
    send_depth: u32,
    recv_depth: u32,
    send_cq: Arc<CqInner>,
    recv_cq: Arc<CqInner>,
    dev: Arc<Device>,
}

// SAFETY: the queue pair and its id are owned by this value; ibverbs allows posting from any
// thread. The Cells make it !Sync, so one thread posts at a time, as the API requires.
unsafe impl Send for VerbsQp {}

impl std::fmt::Debug for VerbsQp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsQp")
            .field("qp_num", &self.qp_num)
            .field("device", &self.dev.name())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl VerbsQp {
    /// Creates the queue pair of `id` (after route resolution, or on a connection request's id)
    /// in the fabric's protection domain, attached to the given completion queues.
    pub(crate) fn create(
        dev: &Arc<Device>,
        id: CmId,
        init: QpInit<'_, VerbsFabric>,
    ) -> Result<Self> {
        if id.verbs() != dev.ctx() {
            return Err(FabricError::Invalid(format!(
                "the connection runs over RDMA device {} but the fabric uses {} (set {}={})",
                id.device_name(),
                dev.name(),
                crate::env::VERBS_DEVICE,
                id.device_name()
            )));
        }
        let caps = dev.caps();
        let want_send = init.caps.max_send_wr.clamp(1, caps.max_qp_wr);
        let want_recv = init.caps.max_recv_wr.clamp(1, caps.max_qp_wr);
        let send_cq = Arc::clone(&init.send_cq.inner);
        let recv_cq = Arc::clone(&init.recv_cq.inner);

        let mut attr = None;
        for inline in [WANT_INLINE, 0] {
            let mut a = qp_init_attr(&send_cq, &recv_cq, want_send, want_recv, inline);
            // SAFETY: the id is bound to the device of `dev` (checked above), whose PD and CQs
            // outlive the QP (the VerbsQp holds Arcs to them); `a` is a valid init attr that the
            // call updates with the granted capabilities.
            let ret = unsafe { rdma_create_qp(id.as_ptr(), dev.pd(), &mut a) };
            if ret == 0 {
                attr = Some(a);
                break;
            }
            let e = last_os_error();
            if inline == 0 {
                return Err(FabricError::io("rdma_create_qp", e));
            }
            tracing::debug!("rdma_create_qp with {inline} B inline failed ({e}); retrying without");
        }
        let attr = attr.expect("loop returns or sets attr");
        // SAFETY: rdma_create_qp succeeded, so `id->qp` points to the new QP.
        let qp = NonNull::new(unsafe { (*id.as_ptr()).qp })
            .ok_or_else(|| FabricError::Invalid("rdma_create_qp left no QP".into()))?;
        // SAFETY: `qp` is valid; `qp_num` is a plain field.
        let qp_num = unsafe { (*qp.as_ptr()).qp_num };
        let send_depth = attr.cap.max_send_wr.max(1);
        let recv_depth = attr.cap.max_recv_wr.max(1);
        let table = Arc::new(QpTable::new(next_token(), send_depth, recv_depth));
        QpRegistry::global().insert(
            dev.ctx(),
            qp_num,
            QpEntry {
                table: Arc::clone(&table),
                id: id.as_ptr(),
            },
        );

        send_cq.attach(&table, send_depth);
        if !Arc::ptr_eq(&send_cq, &recv_cq) {
            recv_cq.attach(&table, recv_depth);
        } else {
            send_cq.reserve(recv_depth);
        }
        tracing::debug!(
            qp_num,
            send_depth,
            recv_depth,
            inline = attr.cap.max_inline_data,
            "verbs queue pair created"
        );
        Ok(VerbsQp {
            id,
            qp,
            qp_num,
            table,
            send_seq: Cell::new(0),
            recv_seq: Cell::new(0),
            signals: Cell::new(SignalPolicy::new(send_depth)),
            drain_wait: init.timeouts.rnr.clamp(MIN_DRAIN_WAIT, MAX_DRAIN_WAIT),
            max_inline: attr.cap.max_inline_data,
            send_depth,
            recv_depth,
            send_cq,
            recv_cq,
            dev: Arc::clone(dev),
        })
    }

    /// The rdma_cm id.
    pub(crate) fn cm_id(&self) -> &CmId {
        &self.id
    }

    /// Sets the receiver-not-ready timer this queue pair advertises: how long a *peer* that
    /// finds no receive posted here waits before it retries. (The number of retries is the
    /// peer's `rnr_retry`, which the CM takes from the conn param this side sent: so each side's
    /// RNR wait is set by its peer, from the peer's [`QpTimeouts::rnr`].)
    ///
    /// librdmacm moves the queue pair to RTS inside `rdma_accept` (passive side) and while it
    /// handles the peer's reply (active side), with the CM's default timer; this changes it with
    /// an RTS→RTS modify, right after `rdma_accept` on the passive side, so that the peer's first
    /// requests already see it.
    pub(crate) fn set_rnr_timer(&self, timeouts: &QpTimeouts) {
        let (_, rnr_code) = wire::rnr_params(timeouts.rnr);
        // SAFETY: all-zero is a valid ibv_qp_attr (integers and plain structs).
        let mut attr: ibv_qp_attr = unsafe { MaybeUninit::zeroed().assume_init() };
        attr.min_rnr_timer = rnr_code;
        // SAFETY: the QP is valid and in RTS; RTS→RTS may change the minimum RNR timer.
        let ret = unsafe {
            ibv_modify_qp(
                self.qp.as_ptr(),
                &mut attr,
                ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER.0 as libc::c_int,
            )
        };
        if ret != 0 {
            tracing::debug!(
                qp_num = self.qp_num,
                "could not set the RNR timer to {:?} (errno {ret}); keeping the CM's",
                wire::rnr_timer(rnr_code)
            );
        }
    }

    /// Called once the connection is established: marks the queue pair connected and hands its
    /// id to the device's connection monitor.
    pub(crate) fn established(&self) -> Result<()> {
        {
            let mut t = self.table.lock();
            t.established = true;
        }
        self.table.connected.store(true, Ordering::Release);
        // SAFETY: the table outlives the id (field order of VerbsQp: `id` drops first), and the
        // connection's events were all acknowledged by the caller.
        unsafe { self.dev.monitor().adopt(&self.id, Arc::as_ptr(&self.table)) }
    }

    /// The send queue holds `send_depth` requests the device has not retired: poll the send
    /// completion queue (keeping what the caller must see) until it retires some, for at most
    /// `drain_wait`. [`FabricError::QueueFull`] when it does not (the caller holds that many
    /// signaled completions unpolled, or the device is stuck).
    #[cold]
    fn make_room(&self, posted: u64) -> Result<()> {
        let deadline = Instant::now() + self.drain_wait;
        loop {
            let progressed = self.send_cq.reap();
            if self.table.outstanding(posted) < u64::from(self.send_depth) {
                return Ok(());
            }
            if !progressed {
                if Instant::now() >= deadline {
                    tracing::debug!(
                        qp_num = self.qp_num,
                        depth = self.send_depth,
                        "send queue full: no completion within {:?}",
                        self.drain_wait
                    );
                    return Err(FabricError::QueueFull);
                }
                std::hint::spin_loop();
            }
        }
    }

    fn sge_ptr(sge: &Option<Sge>, storage: &mut ibv_sge) -> (*mut ibv_sge, libc::c_int) {
        match sge {
            Some(s) => {
                *storage = ibv_sge {
                    addr: s.addr,
                    length: s.len,
                    lkey: s.lkey,
                };
                (storage as *mut ibv_sge, 1)
            }
            None => (ptr::null_mut(), 0),
        }
    }
}

fn qp_init_attr(
    send_cq: &CqInner,
    recv_cq: &CqInner,
    send: u32,
    recv: u32,
    inline: u32,
) -> ibv_qp_init_attr {
    // SAFETY: all-zero is a valid ibv_qp_init_attr (pointers and integers).
    let mut a: ibv_qp_init_attr = unsafe { MaybeUninit::zeroed().assume_init() };
    a.send_cq = send_cq.cq_ptr();
    a.recv_cq = recv_cq.cq_ptr();
    a.cap.max_send_wr = send;
    a.cap.max_recv_wr = recv;
    a.cap.max_send_sge = 1;
    a.cap.max_recv_sge = 1;
    a.cap.max_inline_data = inline;
    a.qp_type = ibv_qp_type::IBV_QPT_RC;
    a.sq_sig_all = 0;
    a
}

/// Whether `wr` goes inline: the caller asked, the opcode carries local data the device may copy
/// at post time, and the data fits what the queue pair was granted. `registered` says whether the
/// SGE lies inside a region registered with its lkey: the device never looks at the lkey of an
/// inline send (the CPU copies the bytes during the post), so a bad SGE would read arbitrary
/// memory or crash; such a request goes out as a normal one and fails with `LocalProtection`.
pub(crate) fn want_inline(wr: &SendWr, max_inline: u32, registered: impl Fn(&Sge) -> bool) -> bool {
    let inlinable = matches!(
        wr.op,
        Op::Send | Op::SendImm(_) | Op::Write(_) | Op::WriteImm(..)
    );
    match &wr.sge {
        Some(s) => {
            wr.flags.contains(SendFlags::INLINE)
                && inlinable
                && s.len > 0
                && s.len <= max_inline
                && registered(s)
        }
        None => false,
    }
}

/// Builds the `ibv_send_wr` for `wr`, posted with `dev_wr_id`, signaled when `signal` says so
/// and inline when `inline` does (see [`want_inline`]). Its SGE (if any) is written to
/// `sge_storage`, which must outlive the post.
fn build_send_wr(
    wr: &SendWr,
    dev_wr_id: u64,
    signal: Signal,
    inline: bool,
    sge_storage: &mut ibv_sge,
) -> ibv_send_wr {
    let (sg_list, num_sge) = VerbsQp::sge_ptr(&wr.sge, sge_storage);
    // SAFETY: all-zero is a valid ibv_send_wr (integers, null pointers, unions of those).
    let mut w: ibv_send_wr = unsafe { MaybeUninit::zeroed().assume_init() };
    w.wr_id = dev_wr_id;
    w.next = ptr::null_mut();
    w.sg_list = sg_list;
    w.num_sge = num_sge;
    let rdma = |r: &crate::rdma::RemoteBuf| wr_t {
        rdma: rdma_t {
            remote_addr: r.addr,
            rkey: r.rkey,
        },
    };
    // Immediates are host order in the API and network order on the wire.
    let imm = |v: u32| imm_data_invalidated_rkey_union_t {
        imm_data: v.to_be(),
    };
    match wr.op {
        Op::Send => w.opcode = ibv_wr_opcode::IBV_WR_SEND,
        Op::SendImm(v) => {
            w.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_IMM;
            w.imm_data_invalidated_rkey_union = imm(v);
        }
        Op::Write(r) => {
            w.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
            w.wr = rdma(&r);
        }
        Op::WriteImm(r, v) => {
            w.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
            w.wr = rdma(&r);
            w.imm_data_invalidated_rkey_union = imm(v);
        }
        Op::Read(r) => {
            w.opcode = ibv_wr_opcode::IBV_WR_RDMA_READ;
            w.wr = rdma(&r);
        }
        Op::FetchAdd { remote, add } => {
            w.opcode = ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD;
            w.wr = wr_t {
                atomic: atomic_t {
                    remote_addr: remote.addr,
                    compare_add: add,
                    swap: 0,
                    rkey: remote.rkey,
                },
            };
        }
        Op::CompareSwap {
            remote,
            compare,
            swap,
        } => {
            w.opcode = ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP;
            w.wr = wr_t {
                atomic: atomic_t {
                    remote_addr: remote.addr,
                    compare_add: compare,
                    swap,
                    rkey: remote.rkey,
                },
            };
        }
    }
    let mut flags = 0u32;
    if signal.signaled() {
        flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
    }
    if wr.flags.contains(SendFlags::SOLICITED) {
        flags |= ibv_send_flags::IBV_SEND_SOLICITED.0;
    }
    if inline {
        flags |= ibv_send_flags::IBV_SEND_INLINE.0;
    }
    w.send_flags = flags;
    w
}

fn post_error(ret: libc::c_int, what: &str) -> FabricError {
    match ret.abs() {
        libc::ENOMEM => FabricError::QueueFull,
        e => FabricError::io(what, std::io::Error::from_raw_os_error(e)),
    }
}

impl QueuePair for VerbsQp {
    fn qp_num(&self) -> u32 {
        self.qp_num
    }

    fn post_send(&self, wr: &SendWr) -> Result<()> {
        if matches!(wr.op, Op::FetchAdd { .. } | Op::CompareSwap { .. }) && !self.dev.caps().atomics
        {
            return Err(super::device::no_atomics(self.dev.name()));
        }
        let seq = self.send_seq.get();
        if self.table.outstanding(seq) >= u64::from(self.send_depth) {
            self.make_room(seq)?;
        }
        let mut signals = self.signals.get();
        let signal = signals.decide(wr.flags.contains(SendFlags::SIGNALED));
        let inline = want_inline(wr, self.max_inline, |s| self.dev.lkey_covers(s));
        let mut sge_storage = ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0,
        };
        let mut w = build_send_wr(
            wr,
            encode_wr_id(self.table.token, false, seq),
            signal,
            inline,
            &mut sge_storage,
        );
        let len = wr.sge.map_or(0, |s| s.len);
        self.table.record_send(
            seq,
            wr.wr_id,
            wr.op.wc_opcode(),
            len,
            signal == Signal::Hidden,
        );
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is valid; `w` and the SGE it points to live until the call returns,
        // which is all verbs needs (the payload itself is in registered memory, or copied now
        // when inline).
        let ret = unsafe { ibv_post_send(self.qp.as_ptr(), &mut w, &mut bad) };
        if ret != 0 {
            return Err(post_error(ret, "ibv_post_send"));
        }
        signals.commit(signal);
        self.signals.set(signals);
        self.send_seq.set(seq.wrapping_add(1));
        Ok(())
    }

    fn post_recv(&self, wr: &RecvWr) -> Result<()> {
        let seq = self.recv_seq.get();
        let mut sge_storage = ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0,
        };
        let (sg_list, num_sge) = Self::sge_ptr(&wr.sge, &mut sge_storage);
        let mut w = ibv_recv_wr {
            wr_id: encode_wr_id(self.table.token, true, seq),
            next: ptr::null_mut(),
            sg_list,
            num_sge,
        };
        self.table.record_recv(seq, wr.wr_id);
        let mut bad: *mut ibv_recv_wr = ptr::null_mut();
        // SAFETY: the QP is valid; `w` and its SGE live until the call returns.
        let ret = unsafe { ibv_post_recv(self.qp.as_ptr(), &mut w, &mut bad) };
        if ret != 0 {
            return Err(post_error(ret, "ibv_post_recv"));
        }
        self.recv_seq.set(seq.wrapping_add(1));
        Ok(())
    }

    fn is_connected(&self) -> bool {
        self.table.connected.load(Ordering::Acquire)
    }

    fn disconnect(&self) {
        self.table.connected.store(false, Ordering::Release);
        let mut t = self.table.lock();
        if t.established && !t.disconnect_sent {
            t.disconnect_sent = true;
            // SAFETY: the id and its QP are alive while `self` is.
            if unsafe { rdma_disconnect(self.id.as_ptr()) } != 0 {
                tracing::debug!(qp_num = self.qp_num, "{}", errno("rdma_disconnect"));
            }
        }
    }
}

impl Drop for VerbsQp {
    fn drop(&mut self) {
        // Stop the monitor from touching the id, and tell the peer.
        let send_disconnect = {
            let mut t = self.table.lock();
            t.alive = false;
            let first = t.established && !t.disconnect_sent;
            t.disconnect_sent = true;
            first
        };
        self.table.connected.store(false, Ordering::Release);
        if send_disconnect {
            // SAFETY: the id and QP are still alive (destroyed when `self.id` drops below).
            unsafe { rdma_disconnect(self.id.as_ptr()) };
        }
        // Asynchronous events of this QP are ignored from now on (the id is destroyed below).
        QpRegistry::global().remove(self.dev.ctx(), self.qp_num);
        // Completions of this QP still queued are skipped from now on.
        self.send_cq.detach(self.table.token, self.send_depth);
        if !Arc::ptr_eq(&self.send_cq, &self.recv_cq) {
            self.recv_cq.detach(self.table.token, self.recv_depth);
        } else {
            self.send_cq.unreserve(self.recv_depth);
        }
        // Fields drop next: the id (rdma_destroy_qp, rdma_destroy_id), then the table, the
        // completion queues and the device, in that order.
    }
}

/// Helpers for tests of other modules.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Send requests of `table` the device may still hold, `posted` being the next sequence.
    pub fn outstanding(table: &QpTable, posted: u64) -> u64 {
        table.outstanding(posted)
    }

    /// A table with the given sends `(seq, wr_id, opcode, len, hidden)` and receives
    /// `(seq, wr_id)`.
    pub fn table_with(
        token: u32,
        sends: &[(u64, u64, WcOpcode, u32, bool)],
        recvs: &[(u64, u64)],
    ) -> Arc<QpTable> {
        let t = QpTable::new(token, 4, 4);
        for &(seq, wr_id, op, len, hidden) in sends {
            t.record_send(seq, wr_id, op, len, hidden);
        }
        for &(seq, wr_id) in recvs {
            t.record_recv(seq, wr_id);
        }
        Arc::new(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wr_ids_round_trip() {
        for (token, recv, seq) in [
            (1u32, false, 0u64),
            (u32::MAX, true, SEQ_MASK),
            (7, true, 12345),
        ] {
            assert_eq!(
                decode_wr_id(encode_wr_id(token, recv, seq)),
                (token, recv, seq)
            );
        }
        // Sequences wrap inside their 31 bits without touching the flag or the token.
        assert_eq!(
            decode_wr_id(encode_wr_id(3, false, SEQ_MASK + 5)),
            (3, false, 4)
        );
    }

    #[test]
    fn opcode_codes_round_trip() {
        for op in [
            WcOpcode::Send,
            WcOpcode::Write,
            WcOpcode::WriteImm,
            WcOpcode::Read,
            WcOpcode::FetchAdd,
            WcOpcode::CompareSwap,
            WcOpcode::Recv,
            WcOpcode::RecvWriteImm,
        ] {
            assert_eq!(code_opcode(opcode_code(op)), op);
        }
    }

    #[test]
    fn tables_remember_requests() {
        let t = QpTable::new(9, 3, 5);
        assert_eq!(t.send.len(), 8);
        assert_eq!(t.recv.len(), 16);
        for seq in 0..20u64 {
            let hidden = seq % 3 == 0;
            t.record_send(
                seq,
                1000 + seq,
                WcOpcode::CompareSwap,
                seq as u32 * 10,
                hidden,
            );
            let i = t.send_info(seq);
            assert_eq!(
                (i.wr_id, i.opcode, i.len, i.hidden),
                (1000 + seq, WcOpcode::CompareSwap, seq as u32 * 10, hidden)
            );
            t.record_recv(seq, 77 + seq);
            assert_eq!(t.recv_wr_id(seq), 77 + seq);
        }
        assert!(!t.connected.load(Ordering::Relaxed));
    }

    #[test]
    fn retired_completions_bound_what_is_outstanding() {
        let t = QpTable::new(1, 4, 4);
        assert_eq!(t.outstanding(0), 0);
        assert_eq!(t.outstanding(6), 6);
        // The completion of request 3 retires 0..=3.
        t.retire(3);
        assert_eq!(t.outstanding(6), 2);
        // Sequence numbers wrap in the 31 bits of the wr_id; the count stays right.
        t.retire(SEQ_MASK);
        assert_eq!(t.outstanding(SEQ_MASK + 1), 0);
        assert_eq!(t.outstanding(SEQ_MASK + 4), 3);
    }

    /// Builds a request the way `post_send` does for a caller (no internal signaling) on a
    /// queue pair granted 64 bytes of inline data, with every SGE registered.
    fn send(op: Op, sge: Option<Sge>, flags: SendFlags) -> (ibv_send_wr, ibv_sge) {
        let (wr, mut storage) = request(5, op, sge, flags);
        let signal = SignalPolicy::new(1024).decide(flags.contains(SendFlags::SIGNALED));
        let inline = want_inline(&wr, 64, |_| true);
        let w = build_send_wr(&wr, 0xabc, signal, inline, &mut storage);
        (w, storage)
    }

    /// A caller's request and an empty SGE for `build_send_wr` to fill.
    fn request(wr_id: u64, op: Op, sge: Option<Sge>, flags: SendFlags) -> (SendWr, ibv_sge) {
        let wr = SendWr {
            wr_id,
            op,
            sge,
            flags,
        };
        let storage = ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0,
        };
        (wr, storage)
    }

    #[test]
    fn hidden_signals_set_the_device_flag() {
        let (wr, mut storage) = request(1, Op::Send, None, SendFlags::empty());
        let w = build_send_wr(&wr, 1, Signal::Hidden, false, &mut storage);
        assert_eq!(w.send_flags, ibv_send_flags::IBV_SEND_SIGNALED.0);
        let w = build_send_wr(&wr, 1, Signal::Unsignaled, false, &mut storage);
        assert_eq!(w.send_flags, 0);
    }

    #[test]
    fn inline_only_for_registered_memory() {
        let sge = Sge {
            addr: 0x2000,
            len: 32,
            lkey: 0x55,
        };
        let wr = |op, sge| SendWr {
            wr_id: 1,
            op,
            sge,
            flags: SendFlags::INLINE,
        };
        let remote = crate::rdma::RemoteBuf {
            addr: 0x1000,
            rkey: 1,
            len: 64,
        };
        assert!(want_inline(&wr(Op::Send, Some(sge)), 64, |_| true));
        assert!(want_inline(&wr(Op::Write(remote), Some(sge)), 64, |_| true));
        // An SGE the fabric does not know: posted normally, so the device checks the lkey.
        assert!(!want_inline(&wr(Op::Send, Some(sge)), 64, |_| false));
        let seen = std::cell::Cell::new(None);
        want_inline(&wr(Op::Send, Some(sge)), 64, |s| {
            seen.set(Some(*s));
            true
        });
        assert_eq!(seen.get(), Some(sge), "the check sees the caller's SGE");
        // Too long, empty, not asked for, or an opcode that writes local memory.
        assert!(!want_inline(
            &wr(Op::Send, Some(Sge { len: 65, ..sge })),
            64,
            |_| true
        ));
        assert!(!want_inline(&wr(Op::Send, None), 64, |_| true));
        assert!(!want_inline(
            &SendWr {
                flags: SendFlags::empty(),
                ..wr(Op::Send, Some(sge))
            },
            64,
            |_| true
        ));
        assert!(!want_inline(&wr(Op::Read(remote), Some(sge)), 64, |_| true));
    }

    #[test]
    fn send_requests_are_built_like_verbs_wants_them() {
        let remote = crate::rdma::RemoteBuf {
            addr: 0x1000,
            rkey: 0x77,
            len: 64,
        };
        let sge = Sge {
            addr: 0x2000,
            len: 64,
            lkey: 0x55,
        };

        let (w, s) = send(
            Op::WriteImm(remote, 0x0102_0304),
            Some(sge),
            SendFlags::SIGNALED | SendFlags::SOLICITED,
        );
        assert_eq!(w.wr_id, 0xabc);
        assert_eq!(w.opcode, ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM);
        assert_eq!(w.num_sge, 1);
        assert_eq!((s.addr, s.length, s.lkey), (0x2000, 64, 0x55));
        // SAFETY: reading the union members this opcode uses; all are plain integers.
        let (imm, raddr, rkey) = unsafe {
            (
                w.imm_data_invalidated_rkey_union.imm_data,
                w.wr.rdma.remote_addr,
                w.wr.rdma.rkey,
            )
        };
        assert_eq!(
            imm.to_ne_bytes(),
            [1, 2, 3, 4],
            "immediate in network byte order"
        );
        assert_eq!((raddr, rkey), (0x1000, 0x77));
        assert_eq!(
            w.send_flags,
            ibv_send_flags::IBV_SEND_SIGNALED.0 | ibv_send_flags::IBV_SEND_SOLICITED.0
        );

        // Zero-length write-with-immediate: no SGE at all.
        let (w, _) = send(Op::WriteImm(remote, 1), None, SendFlags::empty());
        assert_eq!((w.num_sge, w.sg_list.is_null(), w.send_flags), (0, true, 0));

        let (w, _) = send(
            Op::FetchAdd { remote, add: 9 },
            Some(Sge { len: 8, ..sge }),
            SendFlags::SIGNALED,
        );
        assert_eq!(w.opcode, ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD);
        // SAFETY: the atomic member, plain integers.
        let a = unsafe { w.wr.atomic };
        assert_eq!(
            (a.remote_addr, a.compare_add, a.swap, a.rkey),
            (0x1000, 9, 0, 0x77)
        );

        let (w, _) = send(
            Op::CompareSwap {
                remote,
                compare: 3,
                swap: 4,
            },
            Some(Sge { len: 8, ..sge }),
            SendFlags::SIGNALED,
        );
        assert_eq!(w.opcode, ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP);
        // SAFETY: as above.
        let a = unsafe { w.wr.atomic };
        assert_eq!((a.compare_add, a.swap, a.rkey), (3, 4, 0x77));

        let (w, _) = send(Op::Read(remote), Some(sge), SendFlags::INLINE);
        assert_eq!(w.opcode, ibv_wr_opcode::IBV_WR_RDMA_READ);
        assert_eq!(w.send_flags, 0, "reads are never inline");

        // Inline only when it fits what the queue pair was granted (64 here).
        let (w, _) = send(Op::Send, Some(Sge { len: 32, ..sge }), SendFlags::INLINE);
        assert_eq!(
            (w.opcode, w.send_flags),
            (
                ibv_wr_opcode::IBV_WR_SEND,
                ibv_send_flags::IBV_SEND_INLINE.0
            )
        );
        let (w, _) = send(
            Op::SendImm(5),
            Some(Sge { len: 65, ..sge }),
            SendFlags::INLINE,
        );
        assert_eq!(
            (w.opcode, w.send_flags),
            (ibv_wr_opcode::IBV_WR_SEND_WITH_IMM, 0)
        );
    }
}
