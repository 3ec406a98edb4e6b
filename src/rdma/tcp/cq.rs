//! Completion queues of the tcp provider.
//!
//! Every completion (send side and receive side) is pushed into the CQ's [`CqCore`] by
//! whichever thread produced it: the poster (local errors, flushes), the progress thread, or an
//! application thread that drives a stream from [`TcpCq::poll`]. When the bounded core is full
//! the completion goes to an overflow list that `poll` drains after the core, so nothing is lost
//! and per-producer order is kept.
//!
//! # Hybrid progress
//!
//! `poll` first returns what is queued. When nothing is, and the queue serves at most
//! [`HYBRID_MAX_QPS`] queue pairs, it also drives the streams of those queue pairs itself
//! (non-blocking reads, each stream behind a try-lock), so a busy-polling application gets
//! completions without a cross-thread hand-off. The progress thread notices a CQ that is being
//! busy-polled (its poll counter moves) and stops watching its streams until the polling stops
//! or the application arms the queue to block; see `progress.rs`.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::qp::QpInner;
use crate::rdma::cq_core::CqCore;
use crate::rdma::error::Result;
use crate::rdma::notify::Notifier;
use crate::rdma::types::{Wc, WcStatus};
use crate::rdma::CompletionQueue;

/// A completion queue drives its queue pairs' streams from `poll` when it serves at most this
/// many (more would make every empty poll cost one system call per queue pair).
pub const HYBRID_MAX_QPS: usize = 8;

/// A CQ counts as busy-polled while its poll counter moved within this window.
pub(crate) const BUSY_WINDOW: Duration = Duration::from_millis(1);

/// A completion queue of the tcp provider.
#[derive(Debug)]
pub struct TcpCq {
    pub(crate) sh: Arc<CqShared>,
}

#[derive(Debug)]
struct BusyState {
    seen: u64,
    /// When the progress thread last saw the poll counter move (`None`: never polled).
    changed: Option<Instant>,
}

/// The part of a CQ that queue pairs and the progress thread share.
pub(crate) struct CqShared {
    core: CqCore,
    overflowed: AtomicBool,
    overflow: Mutex<VecDeque<Wc>>,
    /// Queue pairs whose completions land here (as send or receive CQ).
    qps: ArcSwap<Vec<Arc<QpInner>>>,
    /// Bumped by every `poll`.
    polls: AtomicU64,
    /// Set by `req_notify`, cleared by a `poll` that returns something: the application is
    /// about to block, so the progress thread must watch this CQ's streams.
    blocking: AtomicBool,
    busy: Mutex<BusyState>,
}

impl std::fmt::Debug for CqShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqShared")
            .field("qps", &self.qps.load().len())
            .finish_non_exhaustive()
    }
}

impl CqShared {
    /// Queues a completion and wakes a waiter that armed for it (`solicited` or an error wakes
    /// solicited-only waiters too).
    pub(crate) fn push(&self, wc: Wc, solicited: bool) {
        if !self.overflowed.load(Ordering::Acquire) && self.core.push(wc, solicited) {
            return;
        }
        {
            let mut o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            o.push_back(wc);
            self.overflowed.store(true, Ordering::Release);
        }
        self.core
            .notifier
            .signal(solicited || wc.status != WcStatus::Success);
    }

    /// Wakes whoever waits on this CQ, armed or not (connection failures).
    pub(crate) fn kick(&self) {
        self.core.notifier.kick();
    }

    fn pop(&self, out: &mut [Wc]) -> usize {
        let mut n = self.core.pop_into(out);
        if n < out.len() && self.overflowed.load(Ordering::Acquire) {
            let mut o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            // Entries pushed to the core before the overflow began are older: take them first.
            n += self.core.pop_into(&mut out[n..]);
            while n < out.len() {
                match o.pop_front() {
                    Some(wc) => {
                        out[n] = wc;
                        n += 1;
                    }
                    None => break,
                }
            }
            if o.is_empty() {
                self.overflowed.store(false, Ordering::Release);
            }
        }
        n
    }

    /// Adds a queue pair whose completions land here.
    pub(crate) fn attach(&self, qp: &Arc<QpInner>) {
        self.qps.rcu(|v| {
            let mut v = (**v).clone();
            if !v.iter().any(|q| Arc::ptr_eq(q, qp)) {
                v.push(qp.clone());
            }
            v
        });
    }

    /// Removes a queue pair (it is being dropped).
    pub(crate) fn detach(&self, qp: &Arc<QpInner>) {
        self.qps.rcu(|v| {
            let mut v = (**v).clone();
            v.retain(|q| !Arc::ptr_eq(q, qp));
            v
        });
    }

    /// True while the application polls this CQ in a loop and has not armed it to block, and
    /// the CQ is small enough for `poll` to drive its streams. Called by the progress thread.
    pub(crate) fn busy_polled(&self, now: Instant) -> bool {
        if self.blocking.load(Ordering::SeqCst) || self.qps.load().len() > HYBRID_MAX_QPS {
            return false;
        }
        let p = self.polls.load(Ordering::Relaxed);
        let mut b = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if p != b.seen {
            b.seen = p;
            b.changed = Some(now);
        }
        b.changed
            .is_some_and(|t| now.saturating_duration_since(t) < BUSY_WINDOW)
    }

    /// True when the application armed this CQ (and has not polled a completion since).
    pub(crate) fn is_blocking(&self) -> bool {
        self.blocking.load(Ordering::SeqCst)
    }
}

impl TcpCq {
    pub(crate) fn new(depth: u32) -> Result<TcpCq> {
        Ok(TcpCq {
            sh: Arc::new(CqShared {
                core: CqCore::new(depth, Notifier::new_local()?),
                overflowed: AtomicBool::new(false),
                overflow: Mutex::new(VecDeque::new()),
                qps: ArcSwap::from_pointee(Vec::new()),
                polls: AtomicU64::new(0),
                blocking: AtomicBool::new(false),
                busy: Mutex::new(BusyState {
                    seen: 0,
                    changed: None,
                }),
            }),
        })
    }
}

impl CompletionQueue for TcpCq {
    fn poll(&self, out: &mut [Wc]) -> usize {
        let sh = &*self.sh;
        sh.polls.fetch_add(1, Ordering::Relaxed);
        let mut n = sh.pop(out);
        if n == 0 && !out.is_empty() {
            let qps = sh.qps.load();
            if qps.len() <= HYBRID_MAX_QPS {
                for qp in qps.iter() {
                    qp.drive(false);
                }
                n = sh.pop(out);
            }
        }
        if n > 0 && sh.blocking.load(Ordering::Relaxed) {
            sh.blocking.store(false, Ordering::SeqCst);
        }
        n
    }

    fn req_notify(&self, solicited_only: bool) -> Result<()> {
        let sh = &*self.sh;
        sh.blocking.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // The application is about to sleep: make sure the progress thread watches every
        // stream whose completions land here.
        for qp in sh.qps.load().iter() {
            qp.undelegate();
        }
        sh.core.notifier.arm(solicited_only);
        Ok(())
    }

    fn wait(&self, timeout: Duration) -> Result<bool> {
        self.sh.core.notifier.wait(timeout)
    }

    fn raw_fd(&self) -> RawFd {
        self.sh.core.notifier.raw_fd()
    }
}
