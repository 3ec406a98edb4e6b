//! shm completion queues: locally generated completions plus the incoming rings of every queue
//! pair bound to the queue.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

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
    /// Incoming rings polled by this queue; replaced (copy on write) when queue pairs come and go.
    qps: ArcSwap<Vec<Arc<RecvState>>>,
    /// Holds the notification word; passed to peers so they can wake this queue's waiter.
    pub(crate) notify_seg: Arc<Segment>,
}

impl CqShared {
    pub(crate) fn bind(&self, rs: &Arc<RecvState>) {
        self.qps.rcu(|cur| {
            let mut v = Vec::clone(cur);
            v.push(rs.clone());
            v
        });
    }

    pub(crate) fn unbind(&self, rs: &Arc<RecvState>) {
        self.qps.rcu(|cur| {
            cur.iter()
                .filter(|x| !Arc::ptr_eq(x, rs))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

/// A shm completion queue. One thread polls it; any number of queue pairs feed it.
#[derive(Debug)]
pub struct ShmCq {
    pub(crate) sh: Arc<CqShared>,
    cursor: Cell<usize>,
}

impl ShmCq {
    pub(crate) fn new(depth: u32) -> Result<ShmCq> {
        let seg = Arc::new(Segment::create("rfaas-shm-cq", 64, true)?);
        let notifier = Notifier::in_segment(seg.clone(), 0, new_eventfd()?);
        let sh = CqShared {
            core: CqCore::new(depth.max(16), notifier),
            qps: ArcSwap::from_pointee(Vec::new()),
            notify_seg: seg,
        };
        Ok(ShmCq {
            sh: Arc::new(sh),
            cursor: Cell::new(0),
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
        let qps = self.sh.qps.load();
        let len = qps.len();
        if len == 0 {
            return n;
        }
        let start = self.cursor.get() % len;
        for k in 0..len {
            n += qps[(start + k) % len].poll_into(&mut out[n..], &self.sh.core);
            if n == out.len() {
                break;
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
