//! The executor worker's hot/warm schedule, driven by an injected clock (nanoseconds).
//!
//! `hot_timeout_ms`: -1 always hot (busy-poll), 0 always warm (block on the completion channel),
//! a positive value: hot until that many **milliseconds** pass without work, then warm until the
//! next invocation (rFaaS compared this value in nanoseconds by mistake).

/// How a worker waits for the next invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// Busy-poll the completion queue.
    Hot,
    /// Arm the completion queue and sleep (after a short spin).
    Warm,
}

/// The schedule of one worker.
#[derive(Clone, Copy, Debug)]
pub struct PollSchedule {
    hot_timeout_ms: i64,
    last_work_ns: u64,
}

impl PollSchedule {
    /// A schedule that starts at `now_ns` as if work had just arrived.
    pub fn new(hot_timeout_ms: i64, now_ns: u64) -> PollSchedule {
        PollSchedule {
            hot_timeout_ms,
            last_work_ns: now_ns,
        }
    }

    /// Records that an invocation arrived at `now_ns`.
    pub fn on_work(&mut self, now_ns: u64) {
        self.last_work_ns = now_ns;
    }

    /// How to wait at `now_ns`.
    pub fn mode(&self, now_ns: u64) -> PollMode {
        match self.hot_timeout_ms {
            t if t < 0 => PollMode::Hot,
            0 => PollMode::Warm,
            t => {
                let idle = now_ns.saturating_sub(self.last_work_ns);
                if idle >= (t as u64).saturating_mul(1_000_000) {
                    PollMode::Warm
                } else {
                    PollMode::Hot
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MS: u64 = 1_000_000;

    #[test]
    fn timeout_is_in_milliseconds() {
        let mut s = PollSchedule::new(5, 0);
        assert_eq!(s.mode(0), PollMode::Hot);
        assert_eq!(
            s.mode(4 * MS + 999_999),
            PollMode::Hot,
            "still hot just before 5 ms"
        );
        assert_eq!(s.mode(5 * MS), PollMode::Warm);
        s.on_work(6 * MS);
        assert_eq!(s.mode(7 * MS), PollMode::Hot, "work makes it hot again");
    }

    #[test]
    fn always_hot_and_always_warm() {
        assert_eq!(PollSchedule::new(-1, 0).mode(u64::MAX), PollMode::Hot);
        assert_eq!(PollSchedule::new(0, 0).mode(0), PollMode::Warm);
    }
}
