//! One executor worker: a thread pinned to one core that serves one client connection.
//!
//! Per invocation: a receive completion names the input slot; the worker reposts the receive,
//! decodes the header in the slot, runs the function in place with the slot's output area as
//! output buffer, and answers with ONE write-with-immediate of the output into the caller's region
//! (status and id in the immediate). Hot mode busy-polls; warm mode spins briefly, then sleeps on
//! the completion queue; `hot_timeout_ms` switches between them (see
//! [`PollSchedule`](crate::protocol::PollSchedule)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::billing::BillingSlot;
use crate::control::executor_manager_api::ExecutorConfig;
use crate::function::{FunctionStatus, FunctionTable};
use crate::protocol::{
    InvocationHeader, PollMode, PollSchedule, RequestImm, ResultImm, Status, HEADER_LEN,
};
use crate::rdma::{
    CompletionQueue, Fabric, MemoryRegion, Op, QueuePair, RecvWr, SendFlags, SendWr, Wc, WcOpcode,
    WcStatus,
};

/// How long a warm worker spins before it sleeps (a cross-core wake costs ~20 µs on VMs).
const WARM_SPIN: Duration = Duration::from_micros(20);
/// How long a warm worker sleeps before it looks at the stop flag again.
const WARM_SLEEP: Duration = Duration::from_millis(100);

/// Why a worker stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// The client disconnected (or its connection failed).
    ClientGone,
    /// The executor was told to stop.
    Stopped,
    /// The worker thread panicked.
    Panicked,
}

/// A worker and everything it owns.
pub struct Worker<F: Fabric> {
    index: usize,
    core: u32,
    hot_timeout_ms: i64,
    slots: u32,
    output_capacity: u32,
    table: FunctionTable,
    qp: F::Qp,
    cq: F::Cq,
    input: F::Mr,
    output: F::Mr,
    stride: usize,
}

impl<F: Fabric> Worker<F> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        cfg: &ExecutorConfig,
        table: FunctionTable,
        qp: F::Qp,
        cq: F::Cq,
        input: F::Mr,
        output: F::Mr,
        stride: usize,
    ) -> Worker<F> {
        Worker {
            index,
            core: cfg.cores[index],
            hot_timeout_ms: cfg.hot_timeout_ms,
            slots: cfg.slots,
            output_capacity: cfg.output_capacity,
            table,
            qp,
            cq,
            input,
            output,
            stride,
        }
    }

    /// Serves until the client goes away or `stop` is set.
    /// Billing goes to `billing` once it is connected; until then the worker keeps counting.
    /// `after_first` runs once, right after this worker answered its first invocation, or, when
    /// none came, at its first periodic billing flush (about a second in) or before it ends.
    pub fn serve(
        mut self,
        stop: &AtomicBool,
        billing: &BillingSlot<F>,
        mut after_first: Option<&(dyn Fn() + Sync)>,
    ) -> WorkerExit {
        if let Err(e) = super::pin_worker(self.core as usize) {
            tracing::warn!(worker = self.index, core = self.core, "not pinned: {e}");
        }
        let epoch = Instant::now();
        let now_ns = || epoch.elapsed().as_nanos() as u64;
        let mut sched = PollSchedule::new(self.hot_timeout_ms, 0);
        let mut wcs = [Wc::EMPTY; 16];
        let mut exec_ns = 0u64;
        let mut hot_ns = 0u64;
        let mut last_flush = 0u64;
        let mut last_yield = 0u64;
        loop {
            let mode = sched.mode(now_ns());
            let start = now_ns();
            let n = match mode {
                PollMode::Hot => {
                    let mut n = 0;
                    for _ in 0..4096 {
                        n = self.cq.poll(&mut wcs);
                        if n > 0 {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    if n == 0 {
                        let t = now_ns();
                        hot_ns += t - start;
                        // After 50 µs without work, let a thread that shares this core run (an
                        // oversubscribed node, or the client on a 2-core machine). Never while
                        // calls keep coming, so it costs the hot path nothing.
                        if t - last_yield > 50_000 {
                            std::thread::yield_now();
                            last_yield = t;
                        }
                    } else {
                        last_yield = now_ns();
                    }
                    n
                }
                PollMode::Warm => match self.cq.poll_wait(&mut wcs, WARM_SLEEP, WARM_SPIN) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::error!(worker = self.index, "completion queue: {e}");
                        return WorkerExit::ClientGone;
                    }
                },
            };
            if stop.load(Ordering::Acquire) {
                for wc in &wcs[..n] {
                    if wc.is_ok() && wc.opcode == WcOpcode::RecvWriteImm {
                        self.answer_without_running(wc, Status::ShuttingDown);
                    }
                }
                self.drain_with(Status::ShuttingDown);
                if let Some(f) = after_first.take() {
                    f();
                }
                flush_billing(billing, true, &mut exec_ns, &mut hot_ns);
                return WorkerExit::Stopped;
            }
            for wc in &wcs[..n] {
                if !wc.is_ok() {
                    tracing::info!(worker = self.index, status = ?wc.status, "client connection ended");
                    if let Some(f) = after_first.take() {
                        f();
                    }
                    flush_billing(billing, true, &mut exec_ns, &mut hot_ns);
                    return WorkerExit::ClientGone;
                }
                if wc.opcode == WcOpcode::RecvWriteImm {
                    let t = now_ns();
                    sched.on_work(t);
                    self.invoke(wc);
                    exec_ns += now_ns() - t;
                    if let Some(f) = after_first.take() {
                        f();
                    }
                }
            }
            if now_ns() - last_flush > 1_000_000_000 {
                last_flush = now_ns();
                if let Some(f) = after_first.take() {
                    f();
                }
                flush_billing(billing, false, &mut exec_ns, &mut hot_ns);
            }
        }
    }

    /// Runs one invocation and answers it.
    #[inline]
    fn invoke(&mut self, wc: &Wc) {
        let req = RequestImm::decode(wc.imm.unwrap_or(0));
        let slot = u32::from(req.slot);
        if slot >= self.slots {
            tracing::warn!(
                worker = self.index,
                slot,
                "invocation names a slot that does not exist; ignored"
            );
            self.repost(wc.wr_id);
            return;
        }
        let base = slot as usize * self.stride;
        let mut raw = [0u8; HEADER_LEN];
        self.input.read(base, &mut raw);
        let total = wc.byte_len as usize;
        let header = match InvocationHeader::decode(&raw, total) {
            Ok(h) if total <= self.stride => h,
            Ok(h) => {
                tracing::warn!(
                    worker = self.index,
                    total,
                    "invocation larger than its slot"
                );
                self.repost(wc.wr_id);
                self.reply(slot, &h, Status::BadRequest, 0);
                return;
            }
            Err(e) => {
                // Without a valid header there is no output buffer to answer into.
                tracing::warn!(worker = self.index, "malformed invocation: {e}");
                self.repost(wc.wr_id);
                return;
            }
        };
        // The receive goes back before the reply, so the client's next call never waits for it.
        self.repost(wc.wr_id);
        let out_off = slot as usize * self.output_capacity as usize;
        let status = self.table.call_in_regions(
            header.function as usize,
            &mut self.input,
            base + HEADER_LEN,
            header.payload_len as usize,
            &mut self.output,
            out_off,
            self.output_capacity as usize,
        );
        let (status, len) = match status {
            FunctionStatus::Ok(len) if len <= header.output.len => (Status::Ok, len),
            FunctionStatus::Ok(_) | FunctionStatus::OutputTooLarge(_) => {
                (Status::OutputTooLarge, 0)
            }
            FunctionStatus::Panicked => (Status::FunctionPanicked, 0),
            FunctionStatus::UnknownFunction => (Status::UnknownFunction, 0),
            FunctionStatus::InputTooLarge(_) => (Status::BadRequest, 0),
        };
        self.reply(slot, &header, status, len);
    }

    #[inline]
    fn repost(&self, wr_id: u64) {
        if let Err(e) = self.qp.post_recv(&RecvWr { wr_id, sge: None }) {
            tracing::error!(worker = self.index, "cannot repost a receive: {e}");
        }
    }

    /// One write-with-immediate of `len` output bytes (from the slot's output area) to the caller.
    #[inline]
    fn reply(&self, slot: u32, h: &InvocationHeader, status: Status, len: u32) {
        let out_off = slot as usize * self.output_capacity as usize;
        let wr = SendWr {
            wr_id: u64::from(slot),
            op: Op::WriteImm(h.output, ResultImm::encode(slot as u8, status, h.id)),
            sge: (len > 0).then(|| self.output.sge(out_off, len)),
            flags: SendFlags::SOLICITED,
        };
        if let Err(e) = self.qp.post_send(&wr) {
            tracing::warn!(worker = self.index, "cannot send a result: {e}");
        }
    }

    /// Answers an invocation without running it (e.g. when shutting down).
    fn answer_without_running(&self, wc: &Wc, status: Status) {
        let slot = u32::from(RequestImm::decode(wc.imm.unwrap_or(0)).slot);
        if slot >= self.slots {
            return;
        }
        let mut raw = [0u8; HEADER_LEN];
        self.input.read(slot as usize * self.stride, &mut raw);
        if let Ok(h) = InvocationHeader::decode(&raw, wc.byte_len as usize) {
            self.reply(slot, &h, status, 0);
        }
    }

    /// Answers whatever is already queued with `status`.
    fn drain_with(&self, status: Status) {
        let mut wcs = [Wc::EMPTY; 16];
        loop {
            let n = self.cq.poll(&mut wcs);
            if n == 0 {
                return;
            }
            for wc in &wcs[..n] {
                if wc.status == WcStatus::Success && wc.opcode == WcOpcode::RecvWriteImm {
                    self.answer_without_running(wc, status);
                }
            }
        }
    }
}

/// Adds what the worker counted to its bill and starts counting anew. While billing is still
/// being connected the counts stay (`last`: the worker stops, so it waits for the connection,
/// bounded by its timeout); without billing they are dropped.
fn flush_billing<F: Fabric>(
    billing: &BillingSlot<F>,
    last: bool,
    exec_ns: &mut u64,
    hot_ns: &mut u64,
) {
    let target = if last {
        Some(billing.wait())
    } else {
        billing.try_get()
    };
    let Some(target) = target else { return };
    if let Some(b) = target {
        b.add(*exec_ns, *hot_ns);
    }
    *exec_ns = 0;
    *hot_ns = 0;
}
