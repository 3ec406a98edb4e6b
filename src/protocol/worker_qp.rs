//! The queue pair of a worker connection, the same on both of its ends (the client and the
//! executor's worker): one completion queue for sends and receives, one receive posted per
//! slot, room for every slot's result and credit traffic. Sizes only, no I/O.

use crate::rdma::{Fabric, QpCaps, QpInit, QpTimeouts, RecvWr};

/// Depth of the completion queue of a worker connection with `slots` slots.
pub fn cq_depth(slots: u32) -> u32 {
    4 * slots + 16
}

/// The receives posted before the connection is up: one per slot, `wr_id` the slot.
pub fn receives(slots: u32) -> Vec<RecvWr> {
    (0..u64::from(slots))
        .map(|i| RecvWr {
            wr_id: i,
            sge: None,
        })
        .collect()
}

/// The queue pair of a worker connection with `slots` slots, its completions on `cq`.
pub fn init<F: Fabric>(cq: &F::Cq, slots: u32) -> QpInit<'_, F> {
    QpInit {
        send_cq: cq,
        recv_cq: cq,
        caps: QpCaps {
            max_send_wr: 2 * slots + 8,
            max_recv_wr: slots,
            max_msg_size: 256,
        },
        timeouts: QpTimeouts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_receive_per_slot_and_room_for_every_slot() {
        let r = receives(3);
        assert_eq!(r.iter().map(|w| w.wr_id).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(r.iter().all(|w| w.sge.is_none()));
        // Each slot may have a result write and a credit in flight at once, plus slack.
        assert_eq!(cq_depth(8), 48);
    }
}
