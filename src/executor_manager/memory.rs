//! Memory accounting: what an allocation costs and how much of the node's rentable memory is
//! taken. Pure arithmetic, no system calls.
//!
//! An allocation is charged the fabric buffers its executor registers, per worker (one per core):
//!
//! * the input ring: `slots` slots of `round_up(HEADER_LEN + input_capacity, 64)` bytes;
//! * the output buffers: `slots × output_capacity` bytes;
//!
//! each region rounded up to whole 4 KiB pages. So, roughly,
//! `cores × slots × (32 + input_capacity + output_capacity)`. The executor's code, heap and the
//! mapped library are not charged (they are small and shared); nothing is enforced by the
//! kernel (no cgroups): the manager refuses allocations that would exceed its budget.

use crate::protocol::HEADER_LEN;

const PAGE: u64 = 4096;

/// Bytes charged for an allocation of `cores` workers with `slots` input slots each.
/// Saturates at `u64::MAX` (so an absurd request is refused, never wrapped around).
pub fn allocation_bytes(cores: u32, slots: u32, input_capacity: u32, output_capacity: u32) -> u64 {
    let round = |n: u128, to: u128| n.div_ceil(to) * to;
    let stride = round(HEADER_LEN as u128 + u128::from(input_capacity), 64);
    let input = round(stride * u128::from(slots), PAGE as u128);
    let output = round(
        u128::from(output_capacity) * u128::from(slots),
        PAGE as u128,
    );
    let total = u128::from(cores) * (input + output);
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// Not enough free memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{wanted} bytes of memory asked for, {free} of {total} free")]
pub struct MemoryShortage {
    /// Bytes asked for.
    pub wanted: u64,
    /// Bytes free now.
    pub free: u64,
    /// Bytes this manager rents out in all.
    pub total: u64,
}

/// The node's rentable memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPool {
    total: u64,
    used: u64,
}

impl MemoryPool {
    /// `total` bytes, all free.
    pub fn new(total: u64) -> MemoryPool {
        MemoryPool { total, used: 0 }
    }

    /// Bytes in the pool.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes not taken.
    pub fn free(&self) -> u64 {
        self.total - self.used
    }

    /// Takes `bytes`, or nothing.
    pub fn take(&mut self, bytes: u64) -> Result<(), MemoryShortage> {
        if bytes > self.free() {
            return Err(MemoryShortage {
                wanted: bytes,
                free: self.free(),
                total: self.total,
            });
        }
        self.used += bytes;
        Ok(())
    }

    /// Gives `bytes` back (never more than is taken).
    pub fn give_back(&mut self, bytes: u64) {
        debug_assert!(bytes <= self.used, "memory returned twice");
        self.used -= bytes.min(self.used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_registered_buffers() {
        // 1 core, 1 slot, 64 B in/out: one page of input ring, one page of output.
        assert_eq!(allocation_bytes(1, 1, 64, 64), 2 * PAGE);
        // 2 cores × 4 slots × (32 + 4096 → 4160) = 16640 → 5 pages; output 4 × 4096 = 4 pages.
        assert_eq!(allocation_bytes(2, 4, 4096, 4096), 2 * 9 * PAGE);
        assert_eq!(
            allocation_bytes(u32::MAX, 256, u32::MAX, u32::MAX),
            u64::MAX
        );
    }

    #[test]
    fn takes_and_gives_back() {
        let mut m = MemoryPool::new(100);
        m.take(60).unwrap();
        assert_eq!(
            m.take(41),
            Err(MemoryShortage {
                wanted: 41,
                free: 40,
                total: 100
            })
        );
        m.take(40).unwrap();
        assert_eq!(m.free(), 0);
        m.give_back(60);
        assert_eq!(m.free(), 60);
    }
}
