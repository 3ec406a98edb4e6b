//! Internal signaling: the bookkeeping that lets callers post unsignaled sends without limit.
//!
//! The API lets a caller post send requests without [`SendFlags::SIGNALED`](crate::rdma::SendFlags)
//! for as long as it likes (the client's submit and the executor's reply never ask for a
//! completion). ibverbs does not: a send queue slot is free again only once the device has
//! reported the completion of that request *or of a later one*, and only a signaled request
//! produces a completion. On mlx5 the send queue's tail moves in `ibv_poll_cq` when a send
//! completion is polled (`providers/mlx5/cq.c`), and `ibv_post_send` fails with `ENOMEM` when
//! `head - tail` reaches the queue size (`mlx5_wq_overflow`). With `sq_sig_all = 0` and only
//! unsignaled requests the queue fills after `depth` posts and stays full.
//!
//! So the provider signals on the caller's behalf: at least every [`SignalPolicy::interval`]
//! posts (half the queue) one request is signaled, and the completion it produces is marked
//! *hidden*: the completion queue consumes it (which frees the slots) and does not report it.
//! When the caller has not polled the send completion queue for a whole queue's worth of posts,
//! the queue pair polls it itself before posting (see `VerbsQp::post_send` and
//! `CqInner::reap`), keeping what it finds for the caller.
//!
//! Errors are never hidden: a request that fails produces an error completion even when it was
//! unsignaled (IB spec, and every flushed request after it does too), and the caller sees it.

/// The signaling decision for one send request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The caller asked for a completion: it is reported.
    Caller,
    /// The provider signals this request to free the send queue: its successful completion is
    /// consumed by the completion queue and never reported.
    Hidden,
    /// Unsignaled (no completion unless it fails).
    Unsignaled,
}

impl Signal {
    /// Whether the request is posted with `IBV_SEND_SIGNALED`.
    pub fn signaled(self) -> bool {
        !matches!(self, Signal::Unsignaled)
    }
}

/// Decides which send requests the provider signals on its own.
///
/// Pure bookkeeping: [`SignalPolicy::decide`] says what the next request is, and
/// [`SignalPolicy::commit`] records it once the post succeeded (a failed post changes nothing).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SignalPolicy {
    interval: u32,
    /// Unsignaled requests posted since the last signaled one.
    unsignaled: u32,
}

impl SignalPolicy {
    /// A policy for a send queue of `depth` entries: at most `depth / 2` unsignaled requests
    /// (at least one) follow each other.
    pub fn new(depth: u32) -> SignalPolicy {
        SignalPolicy {
            interval: (depth / 2).max(1),
            unsignaled: 0,
        }
    }

    /// The longest run of unsignaled requests.
    #[cfg(test)]
    pub fn interval(&self) -> u32 {
        self.interval
    }

    /// What the next request is, given whether the caller asked for a completion.
    pub fn decide(&self, caller_signaled: bool) -> Signal {
        if caller_signaled {
            Signal::Caller
        } else if self.unsignaled + 1 >= self.interval {
            Signal::Hidden
        } else {
            Signal::Unsignaled
        }
    }

    /// Records a request that was posted with decision `s`.
    pub fn commit(&mut self, s: Signal) {
        if s.signaled() {
            self.unsignaled = 0;
        } else {
            self.unsignaled += 1;
        }
    }
}

/// Send requests of a queue pair that the device may still hold: those posted (`posted`, the
/// next sequence number) after the last send completion polled (`retired`, the sequence number
/// after it). Both are taken modulo `mask + 1` (the sequence bits of a device `wr_id`).
pub(crate) fn outstanding(posted: u64, retired: u64, mask: u64) -> u64 {
    posted.wrapping_sub(retired) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model of an mlx5 send queue: `depth` slots, freed up to and including a request when
    /// its completion is polled; only signaled requests (or failed ones) complete.
    struct ModelSq {
        depth: u64,
        head: u64,
        tail: u64,
        /// Sequence numbers of the signaled requests not yet polled, oldest first.
        signaled: std::collections::VecDeque<(u64, Signal)>,
    }

    impl ModelSq {
        fn post(&mut self, s: Signal) -> Result<(), &'static str> {
            if self.head - self.tail >= self.depth {
                return Err("ENOMEM");
            }
            if s.signaled() {
                self.signaled.push_back((self.head, s));
            }
            self.head += 1;
            Ok(())
        }

        /// Polls every completion; returns how many were for the caller.
        fn poll_all(&mut self) -> usize {
            let mut reported = 0;
            while let Some((seq, s)) = self.signaled.pop_front() {
                self.tail = seq + 1;
                if s == Signal::Caller {
                    reported += 1;
                }
            }
            reported
        }
    }

    #[test]
    fn unsignaled_posts_fill_a_queue_without_internal_signaling() {
        // The bug this module fixes: with no signaled request the queue never drains.
        let mut sq = ModelSq {
            depth: 16,
            head: 0,
            tail: 0,
            signaled: Default::default(),
        };
        let mut posted = 0;
        while sq.post(Signal::Unsignaled).is_ok() {
            posted += 1;
            sq.poll_all();
            assert!(posted <= 16);
        }
        assert_eq!(posted, 16);
    }

    #[test]
    fn unsignaled_posts_never_fill_the_queue() {
        for depth in [1u32, 2, 3, 16, 255, 256] {
            let mut sq = ModelSq {
                depth: u64::from(depth),
                head: 0,
                tail: 0,
                signaled: Default::default(),
            };
            let mut p = SignalPolicy::new(depth);
            let mut hidden = 0;
            for i in 0..10_000u32 {
                let s = p.decide(false);
                sq.post(s)
                    .unwrap_or_else(|e| panic!("depth {depth}: post {i} failed: {e}"));
                p.commit(s);
                if s == Signal::Hidden {
                    hidden += 1;
                }
                // The caller polls now and then (the provider reaps when the queue is full).
                if sq.head - sq.tail >= u64::from(depth) {
                    assert_eq!(sq.poll_all(), 0, "hidden completions are never reported");
                }
            }
            let interval = (depth / 2).max(1);
            assert_eq!(hidden, 10_000 / interval, "depth {depth}");
        }
    }

    #[test]
    fn runs_of_unsignaled_requests_are_bounded() {
        let mut p = SignalPolicy::new(8);
        assert_eq!(p.interval(), 4);
        let mut got = Vec::new();
        for caller in [
            false, false, false, false, false, true, false, false, false, false,
        ] {
            let s = p.decide(caller);
            p.commit(s);
            got.push(s);
        }
        use Signal::*;
        assert_eq!(
            got,
            [
                Unsignaled, Unsignaled, Unsignaled, Hidden, Unsignaled, Caller, Unsignaled,
                Unsignaled, Unsignaled, Hidden
            ]
        );
    }

    #[test]
    fn a_failed_post_changes_nothing() {
        let p = SignalPolicy::new(4);
        // Deciding twice without committing gives the same answer.
        assert_eq!(p.decide(false), p.decide(false));
        let mut p = SignalPolicy::new(4);
        p.commit(Signal::Unsignaled);
        assert_eq!(p.decide(false), Signal::Hidden);
        assert_eq!(p.decide(true), Signal::Caller);
        assert!(Signal::Caller.signaled() && Signal::Hidden.signaled());
        assert!(!Signal::Unsignaled.signaled());
    }

    #[test]
    fn outstanding_counts_across_the_wrap() {
        let mask = (1u64 << 31) - 1;
        assert_eq!(outstanding(10, 10, mask), 0);
        assert_eq!(outstanding(10, 4, mask), 6);
        // `posted` is the full counter, `retired` was masked by the wr_id encoding.
        let posted = (1u64 << 31) + 3;
        assert_eq!(outstanding(posted, mask - 1, mask), 5);
    }
}
