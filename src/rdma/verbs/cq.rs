//! Completion queues with a completion channel each, and the translation of `ibv_wc` into the
//! API's [`Wc`].
//!
//! `poll` is `ibv_poll_cq` (rdma-sys re-implements the static inline call, so there is no system
//! call on the hot path) plus a lock-free lookup of the queue pair's table (see `qp.rs`) to
//! restore the caller's `wr_id`, the opcode and the length. `wait` polls the channel's
//! descriptor with a timeout, then takes and acknowledges the event.
//!
//! Completions of requests the provider signaled on its own (see `signal.rs`) are consumed here
//! and not reported. A queue pair whose send queue is full polls its send completion queue
//! itself ([`CqInner::reap`]); what it finds for the caller waits in a small stash that `poll`
//! returns first. Both take the same lock, so completions keep their order; it is uncontended
//! unless a queue pair reaps while another thread polls.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rdma_sys::{
    ibv_ack_cq_events, ibv_comp_channel, ibv_cq, ibv_create_comp_channel, ibv_create_cq,
    ibv_destroy_comp_channel, ibv_destroy_cq, ibv_get_cq_event, ibv_poll_cq, ibv_req_notify_cq,
    ibv_resize_cq, ibv_wc, ibv_wc_flags, ibv_wc_opcode, ibv_wc_status,
};

use super::cm::set_nonblocking;
use super::device::Device;
use super::error::{check_ret, errno, last_os_error};
use super::qp::{decode_wr_id, QpTable};
use crate::rdma::error::{FabricError, Result};
use crate::rdma::notify::wait_readable;
use crate::rdma::{CompletionQueue, Wc, WcOpcode, WcStatus};

/// Completions taken from the device per `ibv_poll_cq` call.
const BATCH: usize = 32;

type Registry = HashMap<u32, Arc<QpTable>>;

struct Capacity {
    /// Entries the CQ has.
    cqe: u32,
    /// Entries promised to attached queue pairs, plus the depth asked at creation.
    needed: u64,
}

/// The shared part of a completion queue; queue pairs hold an `Arc` so that the CQ outlives
/// every QP attached to it (verbs refuses to destroy a CQ in use).
pub(crate) struct CqInner {
    cq: NonNull<ibv_cq>,
    channel: NonNull<ibv_comp_channel>,
    registry: ArcSwap<Registry>,
    capacity: Mutex<Capacity>,
    /// Completions for the caller that a reaping queue pair took from the device; held while
    /// polling the device, so that completions keep their order.
    stash: Mutex<VecDeque<Wc>>,
    dev: Arc<Device>,
}

// SAFETY: the CQ and channel are libibverbs objects usable from any thread (the provider locks
// the CQ); the Rust state is atomics (ArcSwap) and a Mutex.
unsafe impl Send for CqInner {}
// SAFETY: as above.
unsafe impl Sync for CqInner {}

impl CqInner {
    pub(crate) fn cq_ptr(&self) -> *mut ibv_cq {
        self.cq.as_ptr()
    }

    /// Registers a queue pair's table (its completions can then be translated) and reserves
    /// room for `depth` more completions.
    pub(crate) fn attach(&self, table: &Arc<QpTable>, depth: u32) {
        self.registry.rcu(|r| {
            let mut r = Registry::clone(r);
            r.insert(table.token(), Arc::clone(table));
            r
        });
        self.reserve(depth);
    }

    /// Undoes [`CqInner::attach`].
    pub(crate) fn detach(&self, token: u32, depth: u32) {
        self.registry.rcu(|r| {
            let mut r = Registry::clone(r);
            r.remove(&token);
            r
        });
        self.unreserve(depth);
    }

    /// Grows the CQ (best effort) so that it can hold `n` more completions: a full CQ is a
    /// fatal error in verbs, so every attached queue pair's depth is counted.
    pub(crate) fn reserve(&self, n: u32) {
        let mut c = self.capacity.lock().unwrap_or_else(|p| p.into_inner());
        c.needed += u64::from(n);
        if c.needed <= u64::from(c.cqe) {
            return;
        }
        let max = self.dev.caps().max_cqe;
        let want = u32::try_from(c.needed).unwrap_or(u32::MAX).min(max);
        if want <= c.cqe {
            tracing::warn!(
                needed = c.needed,
                max,
                "completion queue cannot grow further"
            );
            return;
        }
        // SAFETY: the CQ is valid; resizing is thread-safe against polling in libibverbs
        // providers that support it, and harmless (an error) in those that do not.
        let ret = unsafe { ibv_resize_cq(self.cq.as_ptr(), want as libc::c_int) };
        if ret == 0 {
            // SAFETY: the CQ is valid; `cqe` holds the size granted.
            c.cqe = unsafe { (*self.cq.as_ptr()).cqe }.max(0) as u32;
        } else {
            tracing::warn!(
                cqe = c.cqe,
                needed = c.needed,
                "ibv_resize_cq failed (errno {ret}); the CQ may overflow under full load"
            );
        }
    }

    /// Returns room reserved by [`CqInner::reserve`].
    pub(crate) fn unreserve(&self, n: u32) {
        let mut c = self.capacity.lock().unwrap_or_else(|p| p.into_inner());
        c.needed = c.needed.saturating_sub(u64::from(n));
    }

    fn cqe(&self) -> usize {
        self.capacity.lock().unwrap_or_else(|p| p.into_inner()).cqe as usize
    }

    /// Moves up to `buf.len()` device completions into `buf`; returns how many were written.
    fn poll_device(&self, buf: &mut [MaybeUninit<ibv_wc>]) -> usize {
        if buf.is_empty() {
            return 0;
        }
        // SAFETY: the CQ is valid; `buf` has room for `buf.len()` entries, of which the call
        // initialises the first `n`.
        let n = unsafe { ibv_poll_cq(self.cq.as_ptr(), buf.len() as i32, buf.as_mut_ptr().cast()) };
        if n < 0 {
            tracing::error!("ibv_poll_cq failed ({n})");
            return 0;
        }
        n as usize
    }

    /// Polls the device for a queue pair whose send queue is full: hidden completions are
    /// consumed (which lets the device reuse their slots), the caller's are kept for
    /// [`CompletionQueue::poll`]. Returns whether it took any completion. Gives up at once when
    /// another thread is polling (that one retires the requests), or when the stash already holds
    /// as many completions as the queue has entries (the caller does not poll: its queue pair
    /// reports [`FabricError::QueueFull`], as verbs would).
    pub(crate) fn reap(&self) -> bool {
        let mut stash = match self.stash.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        let room = self.cqe().saturating_sub(stash.len()).min(BATCH);
        if room == 0 {
            return false;
        }
        let mut buf: [MaybeUninit<ibv_wc>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let n = self.poll_device(&mut buf[..room]);
        if n == 0 {
            return false;
        }
        let registry = self.registry.load();
        let mut last = None;
        for slot in &buf[..n] {
            // SAFETY: poll_device initialised the first `n` entries.
            let wc = unsafe { slot.assume_init_ref() };
            if let Some(w) = translate(wc, &registry, &mut last) {
                stash.push_back(w);
            }
        }
        true
    }
}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: no QP uses the CQ any more (each holds an Arc<CqInner>), and every event taken
        // from the channel was acknowledged in `wait`, so both can be destroyed, CQ first.
        unsafe {
            let ret = ibv_destroy_cq(self.cq.as_ptr());
            if ret != 0 {
                tracing::warn!("ibv_destroy_cq: errno {ret}");
            }
            let ret = ibv_destroy_comp_channel(self.channel.as_ptr());
            if ret != 0 {
                tracing::warn!("ibv_destroy_comp_channel: errno {ret}");
            }
        }
    }
}

/// A completion queue of the verbs provider, with its own completion channel.
///
/// Any number of queue pairs can share it. It is `Send` but not `Sync`: one thread polls it, as
/// the API says (completions taken by two pollers would be reported in no useful order).
pub struct VerbsCq {
    pub(crate) inner: Arc<CqInner>,
    _one_poller: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for VerbsCq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsCq")
            .field("fd", &self.raw_fd())
            .finish()
    }
}

impl VerbsCq {
    pub(crate) fn new(dev: &Arc<Device>, depth: u32) -> Result<VerbsCq> {
        let cqe = depth.clamp(1, dev.caps().max_cqe);
        // SAFETY: the context is open.
        let channel = unsafe { ibv_create_comp_channel(dev.ctx()) };
        let channel = NonNull::new(channel).ok_or_else(|| errno("ibv_create_comp_channel"))?;
        let destroy_channel = |ch: NonNull<ibv_comp_channel>| {
            // SAFETY: the channel was just created and has no CQ.
            unsafe { ibv_destroy_comp_channel(ch.as_ptr()) };
        };
        // SAFETY: the channel is valid and `fd` a plain field.
        let fd = unsafe { (*channel.as_ptr()).fd };
        if let Err(e) = set_nonblocking(fd, "completion channel O_NONBLOCK") {
            destroy_channel(channel);
            return Err(e);
        }
        // SAFETY: the context and channel are valid; the CQ context pointer is unused (NULL).
        let cq = unsafe {
            ibv_create_cq(
                dev.ctx(),
                cqe as libc::c_int,
                ptr::null_mut(),
                channel.as_ptr(),
                0,
            )
        };
        let Some(cq) = NonNull::new(cq) else {
            let e = last_os_error();
            destroy_channel(channel);
            return Err(FabricError::io(format!("ibv_create_cq({cqe})"), e));
        };
        // SAFETY: the CQ is valid; `cqe` holds the size granted.
        let granted = unsafe { (*cq.as_ptr()).cqe }.max(0) as u32;
        Ok(VerbsCq {
            inner: Arc::new(CqInner {
                cq,
                channel,
                registry: ArcSwap::from_pointee(Registry::new()),
                capacity: Mutex::new(Capacity {
                    cqe: granted,
                    needed: u64::from(cqe),
                }),
                stash: Mutex::new(VecDeque::new()),
                dev: Arc::clone(dev),
            }),
            _one_poller: PhantomData,
        })
    }

    /// Takes the pending channel event if there is one (non-blocking channel).
    fn take_event(&self) -> Result<bool> {
        let mut cq: *mut ibv_cq = ptr::null_mut();
        let mut ctx: *mut libc::c_void = ptr::null_mut();
        // SAFETY: the channel is valid and non-blocking; the out-pointers are valid.
        let ret = unsafe { ibv_get_cq_event(self.inner.channel.as_ptr(), &mut cq, &mut ctx) };
        if ret != 0 {
            let e = last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(false),
                _ => Err(FabricError::io("ibv_get_cq_event", e)),
            };
        }
        // SAFETY: the event is for the only CQ on this channel (ours); acknowledging each event
        // right away keeps ibv_destroy_cq from waiting.
        unsafe { ibv_ack_cq_events(cq, 1) };
        Ok(true)
    }
}

/// Maps an `ibv_wc_status` to the API's status.
pub(crate) fn map_status(s: ibv_wc_status::Type) -> WcStatus {
    use ibv_wc_status::*;
    match s {
        IBV_WC_SUCCESS => WcStatus::Success,
        IBV_WC_LOC_LEN_ERR => WcStatus::LocalLength,
        IBV_WC_LOC_PROT_ERR | IBV_WC_LOC_ACCESS_ERR => WcStatus::LocalProtection,
        IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccess,
        IBV_WC_REM_INV_REQ_ERR | IBV_WC_REM_INV_RD_REQ_ERR => WcStatus::RemoteInvalidRequest,
        IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
        IBV_WC_RETRY_EXC_ERR | IBV_WC_RESP_TIMEOUT_ERR => WcStatus::RetryExceeded,
        IBV_WC_WR_FLUSH_ERR => WcStatus::WrFlush,
        _ => WcStatus::Fatal,
    }
}

/// Translates one device completion; `None` for completions of queue pairs that are gone, and
/// for successful completions of requests the provider signaled on its own.
fn translate<'a>(
    wc: &ibv_wc,
    registry: &'a Registry,
    last: &mut Option<(u32, &'a QpTable)>,
) -> Option<Wc> {
    let (token, is_recv, seq) = decode_wr_id(wc.wr_id);
    let table: &QpTable = match *last {
        Some((t, table)) if t == token => table,
        _ => {
            let table: &QpTable = registry.get(&token)?;
            *last = Some((token, table));
            table
        }
    };
    let status = map_status(wc.status);
    if status != WcStatus::Success {
        table.mark_failed();
        tracing::debug!(
            qp_num = wc.qp_num,
            ?status,
            vendor_err = wc.vendor_err,
            "verbs error completion"
        );
    }
    let has_imm = wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0;
    // SAFETY: with IBV_WC_WITH_IMM set the union holds the immediate (network order); the
    // union is plain data either way.
    let imm = has_imm.then(|| u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data }));
    Some(if is_recv {
        let opcode = if wc.opcode == ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM
            && status == WcStatus::Success
        {
            WcOpcode::RecvWriteImm
        } else {
            WcOpcode::Recv
        };
        Wc {
            wr_id: table.recv_wr_id(seq),
            status,
            opcode,
            byte_len: if status == WcStatus::Success {
                wc.byte_len
            } else {
                0
            },
            imm: if status == WcStatus::Success {
                imm
            } else {
                None
            },
            qp_num: wc.qp_num,
        }
    } else {
        // The device retired this request and every earlier one of the queue pair.
        table.retire(seq);
        // The length is the SGE's: verbs defines `byte_len` for receives only.
        let info = table.send_info(seq);
        if info.hidden && status == WcStatus::Success {
            return None;
        }
        Wc {
            wr_id: info.wr_id,
            status,
            opcode: info.opcode,
            byte_len: info.len,
            imm: None,
            qp_num: wc.qp_num,
        }
    })
}

impl CompletionQueue for VerbsCq {
    fn poll(&self, out: &mut [Wc]) -> usize {
        let mut stash = self.inner.stash.lock().unwrap_or_else(|p| p.into_inner());
        let mut filled = 0;
        while filled < out.len() {
            let Some(w) = stash.pop_front() else { break };
            out[filled] = w;
            filled += 1;
        }
        if filled == out.len() {
            return filled;
        }
        let mut buf: [MaybeUninit<ibv_wc>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut want = (out.len() - filled).min(BATCH);
        let mut n = self.inner.poll_device(&mut buf[..want]);
        if n == 0 {
            return filled;
        }
        // Only now, with completions in hand, look at the queue pair tables.
        let registry = self.inner.registry.load();
        let mut last = None;
        loop {
            for slot in &buf[..n] {
                // SAFETY: poll_device initialised the first `n` entries.
                let wc = unsafe { slot.assume_init_ref() };
                match translate(wc, &registry, &mut last) {
                    Some(w) => {
                        out[filled] = w;
                        filled += 1;
                    }
                    None => tracing::trace!(
                        wr_id = wc.wr_id,
                        "not reported: the provider's own signal, or a destroyed queue pair's"
                    ),
                }
            }
            if n < want || filled == out.len() {
                return filled;
            }
            want = (out.len() - filled).min(BATCH);
            n = self.inner.poll_device(&mut buf[..want]);
            if n == 0 {
                return filled;
            }
        }
    }

    fn req_notify(&self, solicited_only: bool) -> Result<()> {
        // SAFETY: the CQ is valid.
        let ret = unsafe { ibv_req_notify_cq(self.inner.cq.as_ptr(), i32::from(solicited_only)) };
        check_ret(ret, "ibv_req_notify_cq")
    }

    fn wait(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.take_event()? {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_readable(self.raw_fd(), left)? {
                return self.take_event();
            }
        }
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        // SAFETY: the channel is valid while `self` lives; `fd` is a plain field.
        unsafe { (*self.inner.channel.as_ptr()).fd }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_like_the_software_providers() {
        use ibv_wc_status::*;
        assert_eq!(map_status(IBV_WC_SUCCESS), WcStatus::Success);
        assert_eq!(map_status(IBV_WC_REM_ACCESS_ERR), WcStatus::RemoteAccess);
        assert_eq!(map_status(IBV_WC_WR_FLUSH_ERR), WcStatus::WrFlush);
        assert_eq!(
            map_status(IBV_WC_RNR_RETRY_EXC_ERR),
            WcStatus::RnrRetryExceeded
        );
        assert_eq!(map_status(IBV_WC_RETRY_EXC_ERR), WcStatus::RetryExceeded);
        assert_eq!(map_status(IBV_WC_LOC_PROT_ERR), WcStatus::LocalProtection);
        assert_eq!(map_status(IBV_WC_LOC_LEN_ERR), WcStatus::LocalLength);
        assert_eq!(
            map_status(IBV_WC_REM_INV_REQ_ERR),
            WcStatus::RemoteInvalidRequest
        );
        assert_eq!(map_status(IBV_WC_GENERAL_ERR), WcStatus::Fatal);
    }

    fn fake_wc(
        wr_id: u64,
        status: ibv_wc_status::Type,
        opcode: ibv_wc_opcode::Type,
        imm: Option<u32>,
    ) -> ibv_wc {
        // SAFETY: all-zero is a valid ibv_wc (integers and a union of integers).
        let mut wc: ibv_wc = unsafe { MaybeUninit::zeroed().assume_init() };
        wc.wr_id = wr_id;
        wc.status = status;
        wc.opcode = opcode;
        wc.byte_len = 64;
        wc.qp_num = 0x1234;
        if let Some(v) = imm {
            wc.wc_flags = ibv_wc_flags::IBV_WC_WITH_IMM.0;
            wc.imm_data_invalidated_rkey_union.imm_data = v.to_be();
        }
        wc
    }

    #[test]
    fn completions_translate_through_the_table() {
        use super::super::qp::encode_wr_id;
        use super::super::qp::tests_support::table_with;
        let table = table_with(
            5,
            &[(0, 111, WcOpcode::WriteImm, 64, false)],
            &[(0, 222), (1, 333)],
        );
        let mut reg = Registry::new();
        reg.insert(5, Arc::clone(&table));
        let mut last = None;

        // The receive of a write-with-immediate: immediate back in host order.
        let wc = fake_wc(
            encode_wr_id(5, true, 0),
            ibv_wc_status::IBV_WC_SUCCESS,
            ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM,
            Some(0xdead_beef),
        );
        let w = translate(&wc, &reg, &mut last).unwrap();
        assert_eq!(
            (w.wr_id, w.opcode, w.imm, w.byte_len),
            (222, WcOpcode::RecvWriteImm, Some(0xdead_beef), 64)
        );

        // The initiator's completion of the write-with-immediate (verbs says RDMA_WRITE).
        let wc = fake_wc(
            encode_wr_id(5, false, 0),
            ibv_wc_status::IBV_WC_SUCCESS,
            ibv_wc_opcode::IBV_WC_RDMA_WRITE,
            None,
        );
        let w = translate(&wc, &reg, &mut last).unwrap();
        assert_eq!(
            (w.wr_id, w.opcode, w.byte_len, w.status),
            (111, WcOpcode::WriteImm, 64, WcStatus::Success)
        );

        // A flushed receive: opcode garbage in verbs, still reported as a receive.
        let wc = fake_wc(
            encode_wr_id(5, true, 1),
            ibv_wc_status::IBV_WC_WR_FLUSH_ERR,
            0xff,
            None,
        );
        let w = translate(&wc, &reg, &mut last).unwrap();
        assert_eq!(
            (w.wr_id, w.opcode, w.status),
            (333, WcOpcode::Recv, WcStatus::WrFlush)
        );

        // Completions of unknown (destroyed) queue pairs are dropped.
        let wc = fake_wc(
            encode_wr_id(6, true, 0),
            ibv_wc_status::IBV_WC_SUCCESS,
            ibv_wc_opcode::IBV_WC_RECV,
            None,
        );
        assert!(translate(&wc, &reg, &mut last).is_none());
    }

    #[test]
    fn hidden_completions_retire_requests_but_are_not_reported() {
        use super::super::qp::encode_wr_id;
        use super::super::qp::tests_support::{outstanding, table_with};
        let table = table_with(
            8,
            &[
                (0, 10, WcOpcode::Write, 64, false),
                (1, 11, WcOpcode::Write, 64, true),
                (2, 12, WcOpcode::WriteImm, 0, false),
                (3, 13, WcOpcode::Write, 8, true),
            ],
            &[],
        );
        let mut reg = Registry::new();
        reg.insert(8, Arc::clone(&table));
        let mut last = None;
        assert_eq!(outstanding(&table, 4), 4);

        // The provider's own signal on request 1: consumed, and 0 and 1 are retired.
        let wc = fake_wc(
            encode_wr_id(8, false, 1),
            ibv_wc_status::IBV_WC_SUCCESS,
            ibv_wc_opcode::IBV_WC_RDMA_WRITE,
            None,
        );
        assert!(translate(&wc, &reg, &mut last).is_none());
        assert_eq!(outstanding(&table, 4), 2);

        // The caller's own signaled request is reported as usual.
        let wc = fake_wc(
            encode_wr_id(8, false, 2),
            ibv_wc_status::IBV_WC_SUCCESS,
            ibv_wc_opcode::IBV_WC_RDMA_WRITE,
            None,
        );
        let w = translate(&wc, &reg, &mut last).unwrap();
        assert_eq!((w.wr_id, w.opcode, w.byte_len), (12, WcOpcode::WriteImm, 0));
        assert_eq!(outstanding(&table, 4), 1);

        // A request the provider signaled that fails is never hidden: the caller learns of it.
        let wc = fake_wc(
            encode_wr_id(8, false, 3),
            ibv_wc_status::IBV_WC_REM_ACCESS_ERR,
            0xff,
            None,
        );
        let w = translate(&wc, &reg, &mut last).unwrap();
        assert_eq!(
            (w.wr_id, w.status, w.opcode),
            (13, WcStatus::RemoteAccess, WcOpcode::Write)
        );
        assert_eq!(outstanding(&table, 4), 0);
    }

    #[test]
    fn verbs_cq_is_send_but_not_sync() {
        // Compile-time checks: `Send` is required, and `Sync` would make the call below
        // ambiguous (two impls apply), which fails to compile.
        fn send<T: Send>() {}
        send::<VerbsCq>();
        trait AmbiguousIfSync<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfSync<()> for T {}
        #[allow(dead_code)]
        struct IsSync;
        impl<T: ?Sized + Sync> AmbiguousIfSync<IsSync> for T {}
        <VerbsCq as AmbiguousIfSync<_>>::check();
    }
}
