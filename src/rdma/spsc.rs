//! A bounded single-producer single-consumer queue of `Copy` values, lock-free with no
//! read-modify-write instructions: the producer owns `tail`, the consumer owns `head`.
//!
//! Used for posted receives (the thread that owns a queue pair posts them, the thread that polls
//! its completion queue takes them), where crossbeam's MPMC queue would cost two locked
//! compare-and-swaps per message. Safe to call from any thread, but correct only with at most one
//! producer and one consumer at a time, which the owning types guarantee (`!Sync` handles).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// The queue.
pub(crate) struct Spsc<T: Copy> {
    slots: Box<[UnsafeCell<T>]>,
    mask: usize,
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
}

// SAFETY: values are `Copy` and each slot is written only by the producer before it publishes
// the slot (Release on `tail`) and read only by the consumer after it observed that (Acquire),
// and rewritten only after the consumer released it (Release on `head`, Acquire by producer).
unsafe impl<T: Copy + Send> Send for Spsc<T> {}
// SAFETY: as above; the single-producer/single-consumer discipline is upheld by the callers.
unsafe impl<T: Copy + Send> Sync for Spsc<T> {}

impl<T: Copy> std::fmt::Debug for Spsc<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spsc")
            .field("capacity", &self.slots.len())
            .field("len", &self.len())
            .finish()
    }
}

impl<T: Copy> Spsc<T> {
    /// A queue of `capacity` (rounded up to a power of two) slots, filled with `fill`.
    pub(crate) fn new(capacity: usize, fill: T) -> Spsc<T> {
        let cap = capacity.max(1).next_power_of_two();
        Spsc {
            slots: (0..cap).map(|_| UnsafeCell::new(fill)).collect(),
            mask: cap - 1,
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Values queued.
    pub(crate) fn len(&self) -> usize {
        self.tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head.load(Ordering::Acquire))
    }

    /// Producer: appends `v`; `Err(v)` when full.
    #[inline]
    pub(crate) fn push(&self, v: T) -> Result<(), T> {
        let tail = self.tail.load(Ordering::Relaxed);
        if tail.wrapping_sub(self.head.load(Ordering::Acquire)) > self.mask {
            return Err(v);
        }
        // SAFETY: the slot at `tail` is not visible to the consumer until the Release below, and
        // the consumer is done with it (checked against `head` above).
        unsafe { *self.slots[tail & self.mask].get() = v };
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Consumer: takes the oldest value.
    #[inline]
    pub(crate) fn pop(&self) -> Option<T> {
        let head = self.head.load(Ordering::Relaxed);
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: the producer published this slot (Acquire above) and will not rewrite it
        // until the Release below.
        let v = unsafe { *self.slots[head & self.mask].get() };
        self.head.store(head.wrapping_add(1), Ordering::Release);
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_bounded_and_across_threads() {
        let q = Spsc::new(3, 0u64);
        assert!(q.push(1).is_ok() && q.push(2).is_ok() && q.push(3).is_ok() && q.push(4).is_ok());
        assert_eq!(q.push(5), Err(5), "capacity rounds up to 4");
        assert_eq!((q.pop(), q.pop(), q.len()), (Some(1), Some(2), 2));
        let q = std::sync::Arc::new(Spsc::new(8, 0u64));
        let q2 = q.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..100_000u64 {
                while q2.push(i).is_err() {
                    std::hint::spin_loop();
                }
            }
        });
        let mut next = 0;
        while next < 100_000 {
            if let Some(v) = q.pop() {
                assert_eq!(v, next);
                next += 1;
            }
        }
        producer.join().unwrap();
        assert_eq!(q.len(), 0);
    }
}
