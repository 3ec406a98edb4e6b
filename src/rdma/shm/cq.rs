//! shm completion queues: locally generated completions plus the incoming rings of every queue
//! pair bound to the queue.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::qp::RecvState;
use crate::rdma::cq_core::CqCore;
use crate::rdma::error::Result;
use crate::rdma::notify::{new_eventfd, Notifier};
use crate::rdma::segment::Segment;
use crate::rdma::{CompletionQueue, Wc};

/// The part of a completion queue that queue pairs (and the control thread) hold.
#[derive(Debug)]
pub(crate) struct CqShared {
    pub(crate) core: CqCore,
    /// Incoming rings polled by this queue. The poller keeps its own copy and refreshes it when
    /// `generation` changes, so a poll costs one atomic load here, never a lock.
    qps: Mutex<Vec<Arc<RecvState>>>,
    generation: AtomicU64,
    /// Holds the notification word; passed to peers so they can wake this queue's waiter.
    pub(crate) notify_seg: Arc<Segment>,
}

impl CqShared {
    pub(crate) fn bind(&self, rs: &Arc<RecvState>) {
        self.qps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rs.clone());
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn unbind(&self, rs: &Arc<RecvState>) {
        self.qps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|x| !Arc::ptr_eq(x, rs));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A shm completion queue. One thread polls it; any number of queue pairs feed it.
#[derive(Debug)]
pub struct ShmCq {
    pub(crate) sh: Arc<CqShared>,
    cursor: Cell<usize>,
    /// The poller's copy of `sh.qps` and the generation it was taken at.
    local: RefCell<(u64, Vec<Arc<RecvState>>)>,
}

impl ShmCq {
    pub(crate) fn new(depth: u32) -> Result<ShmCq> {
        let seg = Arc::new(Segment::create("rfaas-shm-cq", 64, true)?);
        let notifier = Notifier::in_segment(seg.clone(), 0, new_eventfd()?);
        let sh = CqShared {
            core: CqCore::new(depth.max(16), notifier),
            qps: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            notify_seg: seg,
        };
        Ok(ShmCq {
            sh: Arc::new(sh),
            cursor: Cell::new(0),
            local: RefCell::new((0, Vec::new())),
        })
    }
}

impl CompletionQueue for ShmCq {
    #[inline]
    fn poll(&self, out: &mut [Wc]) -> usize {
        let mut n = self.sh.core.pop_into(out);
        if n == out.len() {
            return n;
        }
        let mut local = self.local.borrow_mut();
        let gen = self.sh.generation.load(Ordering::Acquire);
        if gen != local.0 {
            // A queue pair came or went (rare): take a fresh copy under the lock.
            let fresh = self
                .sh
                .qps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            *local = (gen, fresh);
        }
        let qps = &local.1;
        let len = qps.len();
        if len == 0 {
            return n;
        }
        // Round-robin start for fairness between queue pairs (no division on this path).
        let start = if self.cursor.get() >= len {
            0
        } else {
            self.cursor.get()
        };
        let mut i = start;
        for _ in 0..len {
            n += qps[i].poll_into(&mut out[n..], &self.sh.core);
            if n == out.len() {
                break;
            }
            i += 1;
            if i == len {
                i = 0;
            }
        }
        self.cursor.set(start + 1);
        n
    }

    fn req_notify(&self, solicited_only: bool) -> Result<()> {
        self.sh.core.notifier.arm(solicited_only);
        Ok(())
    }

    fn wait(&self, timeout: Duration) -> Result<bool> {
        self.sh.core.notifier.wait(timeout)
    }

    fn raw_fd(&self) -> RawFd {
        self.sh.core.notifier.raw_fd()
    }
}
