//! The part of a completion queue every software provider shares: a bounded lock-free queue of
//! locally generated completions plus a [`Notifier`].

use crossbeam_queue::ArrayQueue;

use super::notify::Notifier;
use super::types::{Wc, WcStatus};

/// Locally generated completions (send completions, errors, flushes, and for tcp every incoming
/// completion) and the wake-up machinery.
#[derive(Debug)]
pub(crate) struct CqCore {
    local: ArrayQueue<Wc>,
    pub(crate) notifier: Notifier,
}

impl CqCore {
    pub(crate) fn new(depth: u32, notifier: Notifier) -> CqCore {
        CqCore {
            local: ArrayQueue::new(depth.max(1) as usize),
            notifier,
        }
    }

    /// Queues a completion and wakes a waiter that armed for it. Returns false when the queue is
    /// full (the completion is not queued).
    #[inline]
    pub(crate) fn push(&self, wc: Wc, solicited: bool) -> bool {
        let urgent = solicited || wc.status != WcStatus::Success;
        if self.local.push(wc).is_err() {
            return false;
        }
        self.notifier.signal(urgent);
        true
    }

    /// True when `n` more completions fit.
    #[inline]
    pub(crate) fn has_room(&self, n: usize) -> bool {
        self.local.capacity() - self.local.len() >= n
    }

    /// Moves queued completions into `out`; returns how many.
    #[inline]
    pub(crate) fn pop_into(&self, out: &mut [Wc]) -> usize {
        let mut n = 0;
        while n < out.len() {
            match self.local.pop() {
                Some(wc) => {
                    out[n] = wc;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
}
