//! [`Millis`]: the scheduler's injected monotonic time.
//!
//! The scheduler never reads a clock. Every call that depends on time takes `now: Millis`,
//! milliseconds since an origin the caller chose (typically the resource manager's start, see
//! [`Millis::between`]). Tests drive time by hand.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since the caller's origin (monotonic).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// The origin.
    pub const ZERO: Millis = Millis(0);
    /// The end of time (a deadline that never comes).
    pub const MAX: Millis = Millis(u64::MAX);

    /// The time between `origin` and `now` of a real monotonic clock (pure conversion: the
    /// caller reads the clock).
    pub fn between(origin: std::time::Instant, now: std::time::Instant) -> Millis {
        Millis(u64::try_from(now.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the origin.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Millis::MAX`].
    pub fn plus(self, d: Duration) -> Millis {
        Millis(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// `self + ms` milliseconds, saturating.
    pub fn plus_ms(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Time from `earlier` to `self` (zero when `earlier` is later).
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Millis(5).plus(Duration::from_secs(1)), Millis(1005));
        assert_eq!(Millis::MAX.plus_ms(1), Millis::MAX);
        assert_eq!(Millis(10).since(Millis(4)), Duration::from_millis(6));
        assert_eq!(Millis(4).since(Millis(10)), Duration::ZERO);
        let o = std::time::Instant::now();
        assert_eq!(
            Millis::between(o, o + Duration::from_millis(1500)),
            Millis(1500)
        );
        assert_eq!(Millis::between(o + Duration::from_secs(1), o), Millis::ZERO);
    }
}
