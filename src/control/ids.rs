//! Ids that are never reused: lease ids (resource manager) and allocation ids (executor
//! manager) start at the wall-clock time in microseconds, so a restarted daemon, even one
//! that lost its state file, never hands out an id an earlier run gave to someone else (a
//! client holding the old id is told it is unknown, never that its token is wrong).

use std::time::{SystemTime, UNIX_EPOCH};

/// The first id a daemon starting now may hand out: microseconds since the Unix epoch. Above
/// every id an earlier run handed out, unless that run gave more than one id per microsecond
/// on average or the clock went back. Below 2^53 until the year 2255, so JSON readers that
/// use doubles keep every id exact.
pub fn first_id_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_grow_with_time_and_fit_a_double() {
        let a = super::first_id_now();
        // 2024-01-01 in microseconds: the clock of any machine running this is past it.
        assert!(a > 1_704_067_200_000_000, "{a}");
        assert!(a < 1 << 53);
        assert!(super::first_id_now() >= a);
    }
}
