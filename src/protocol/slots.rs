//! The client's bookkeeping for one worker connection: which input slots are free (credits),
//! which invocation each busy slot carries, and matching results to them.
//!
//! A client never writes into a slot whose previous invocation has not produced its result, so
//! the executor never sees its input overwritten while a function runs (rFaaS had one slot and no
//! flow control). Ids are 32 bits per connection and wrap; a result is matched by its slot and
//! checked against the low 16 bits of the id it carries, so a stale or forged result for a slot
//! is detected instead of completing the wrong call.

use super::invocation::{ResultImm, Status};

/// A result matched to the invocation it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Slot (free again).
    pub slot: u8,
    /// Full invocation id.
    pub id: u32,
    /// Outcome reported by the executor.
    pub status: Status,
}

/// Why a result could not be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// The slot is out of range or not in flight.
    #[error("result for slot {0}, which has no invocation in flight")]
    IdleSlot(u8),
    /// The id check failed.
    #[error("result for slot {slot} carries id {got:#06x}, expected {expected:#06x}")]
    WrongId {
        /// Slot.
        slot: u8,
        /// Low id bits received.
        got: u16,
        /// Low id bits expected.
        expected: u16,
    },
}

/// State of one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    InFlight(u32),
    /// The result arrived and waits in the slot's output area until the caller collects it.
    Done(u32, Status),
}

/// Free slots and invocations in flight on one connection. Allocation-free after `new`.
///
/// A slot goes Free → InFlight (`acquire`) → Done (`complete`, the result arrived) → Free
/// (`release`, the caller copied the result out), so a result is never overwritten before its
/// caller has read it.
#[derive(Clone, Debug)]
pub struct SlotTable {
    free: Vec<u8>,
    slots: Vec<Slot>,
    next_id: u32,
}

impl SlotTable {
    /// A table of `slots` slots (1..=256), all free; ids start at `first_id`.
    pub fn new(slots: u32, first_id: u32) -> SlotTable {
        let n = slots.clamp(1, super::MAX_SLOTS) as usize;
        SlotTable {
            free: (0..n).rev().map(|s| s as u8).collect(),
            slots: vec![Slot::Free; n],
            next_id: first_id,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots not free (in flight, or holding a result not yet collected).
    pub fn in_flight(&self) -> usize {
        self.capacity() - self.free.len()
    }

    /// Takes a free slot for a new invocation: `(slot, id)`, or `None` when every slot is busy.
    pub fn acquire(&mut self) -> Option<(u8, u32)> {
        let slot = self.free.pop()?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.slots[slot as usize] = Slot::InFlight(id);
        Some((slot, id))
    }

    /// Frees a slot whatever its state (the post failed locally, or its result was collected).
    pub fn release(&mut self, slot: u8) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            if *s != Slot::Free {
                *s = Slot::Free;
                self.free.push(slot);
            }
        }
    }

    /// Matches a result immediate to its invocation; the slot holds the result until `release`.
    pub fn complete(&mut self, imm: u32) -> Result<Completion, MatchError> {
        let r = ResultImm::decode(imm);
        let cell = self
            .slots
            .get_mut(r.slot as usize)
            .ok_or(MatchError::IdleSlot(r.slot))?;
        let Slot::InFlight(id) = *cell else {
            return Err(MatchError::IdleSlot(r.slot));
        };
        if (id & 0xffff) as u16 != r.id_low {
            return Err(MatchError::WrongId {
                slot: r.slot,
                got: r.id_low,
                expected: id as u16,
            });
        }
        *cell = Slot::Done(id, r.status);
        Ok(Completion {
            slot: r.slot,
            id,
            status: r.status,
        })
    }

    /// The result of invocation `id` in `slot`: `Some(status)` once it arrived, `None` while it is
    /// in flight; an error when the slot does not hold that invocation.
    pub fn result(&self, slot: u8, id: u32) -> Result<Option<Status>, MatchError> {
        match self.slots.get(slot as usize) {
            Some(Slot::InFlight(i)) if *i == id => Ok(None),
            Some(Slot::Done(i, st)) if *i == id => Ok(Some(*st)),
            _ => Err(MatchError::IdleSlot(slot)),
        }
    }

    /// Invocations in flight (not yet answered): `(slot, id)`.
    pub fn pending(&self) -> impl Iterator<Item = (u8, u32)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(s, st)| match st {
                Slot::InFlight(id) => Some((s as u8, *id)),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ResultImm;

    #[test]
    fn credits_bound_the_invocations_in_flight() {
        let mut t = SlotTable::new(2, 0);
        let (s0, i0) = t.acquire().unwrap();
        let (s1, i1) = t.acquire().unwrap();
        assert_ne!(s0, s1);
        assert_eq!(t.acquire(), None, "no third credit");
        let c = t.complete(ResultImm::encode(s1, Status::Ok, i1)).unwrap();
        assert_eq!((c.slot, c.id), (s1, i1));
        assert_eq!(t.result(s1, i1), Ok(Some(Status::Ok)));
        assert_eq!(
            t.acquire(),
            None,
            "a result not yet collected keeps its slot"
        );
        t.release(s1);
        assert!(t.acquire().is_some());
        assert_eq!(
            t.complete(ResultImm::encode(s0, Status::OutputTooLarge, i0))
                .unwrap()
                .status,
            Status::OutputTooLarge
        );
    }

    #[test]
    fn stale_and_foreign_results_are_refused() {
        let mut t = SlotTable::new(4, 10);
        let (s, id) = t.acquire().unwrap();
        assert!(matches!(
            t.complete(ResultImm::encode(s, Status::Ok, id + 1)),
            Err(MatchError::WrongId { .. })
        ));
        assert_eq!(
            t.complete(ResultImm::encode(3, Status::Ok, id)),
            Err(MatchError::IdleSlot(3))
        );
        assert_eq!(
            t.complete(ResultImm::encode(200, Status::Ok, id)),
            Err(MatchError::IdleSlot(200))
        );
        assert_eq!(t.result(s, id), Ok(None));
        assert!(t.complete(ResultImm::encode(s, Status::Ok, id)).is_ok());
        assert_eq!(
            t.complete(ResultImm::encode(s, Status::Ok, id)),
            Err(MatchError::IdleSlot(s)),
            "twice"
        );
        assert!(t.result(s, id + 1).is_err());
    }

    #[test]
    fn ids_wrap_safely_past_u32_max() {
        let mut t = SlotTable::new(1, u32::MAX - 2);
        for k in 0..100_000u32 {
            let (s, id) = t.acquire().unwrap();
            assert_eq!(id, (u32::MAX - 2).wrapping_add(k));
            assert_eq!(
                t.complete(ResultImm::encode(s, Status::Ok, id)).unwrap().id,
                id
            );
            t.release(s);
        }
    }

    #[test]
    fn pending_lists_only_unanswered_invocations() {
        let mut t = SlotTable::new(3, 0);
        let a = t.acquire().unwrap();
        let b = t.acquire().unwrap();
        t.complete(ResultImm::encode(b.0, Status::Ok, b.1)).unwrap();
        assert_eq!(t.pending().collect::<Vec<_>>(), vec![a]);
        t.release(a.0);
        t.release(b.0);
        assert_eq!(t.in_flight(), 0);
    }
}
