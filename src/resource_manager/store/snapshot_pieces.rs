//! A snapshot encoded a piece at a time, the scheduler's lock taken once per piece, so that a
//! compaction holds up the commands for one piece (a few hundred entities, a tenth of a
//! millisecond), not for the whole state (tens of milliseconds at 100,000 leases).
//!
//! The ids are listed under the lock once ([`Scheduler::snapshot_ids`]); then each piece of
//! them is looked up and encoded under the lock, which is released fairly (a waiting command
//! goes first) between pieces; the id allocators and counters are read last. What the file
//! then holds is *fuzzy* ([`crate::scheduler::SnapshotIds`]): each entity as it was when its
//! piece was read, one gone by then left out, one created after the listing not in it.
//!
//! It is labelled as covering the log up to the record before the segment that the compaction
//! opened ([`super::compaction`]): every change before that one was applied before the ids
//! were listed, so it is in the file, and recovery replays every later record over the file.
//! Records are whole entities' states after a change, applied in order, an ended lease
//! remembered once however often it is replayed ([`crate::scheduler::Image`]), so the result
//! is the state after the last record, whatever the file holds of the entities the records
//! touch. A change made while the pieces were read whose record a crash then loses may
//! survive in the file: nobody was told of it (its handler waits for its record), as with any
//! change not yet durable; lease ids never go back, since the allocators are read last.
//!
//! The bytes are those [`super::snapshot_file::encode_payload`] writes for the same state:
//! `postcard` writes a struct as its fields in order and a sequence as its length, then its
//! elements, so each list is encoded on its own and its length written before it once known.

use serde::Serialize;

use crate::resource_manager::state::{unix_ms_now, STATE_VERSION};
use crate::scheduler::{Millis, Scheduler};

use super::snapshot_file::{unsealed_header, Payload};

/// Entities encoded per taking of the lock: about 0.1 ms on the project's VM, so that a
/// compaction thread preempted while it holds the lock (a loaded machine) is rare.
pub const PIECE: usize = 256;

/// Appends `value` in `postcard` to `out`.
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    *out = postcard::to_extend(value, std::mem::take(out)).expect("a snapshot always serialises");
}

/// The entities of `ids` that still exist, each encoded, read `piece` at a time under the lock
/// (`with`): how many, and their bytes.
fn encode_list<I: Copy, T: Serialize>(
    ids: &[I],
    piece: usize,
    with: &impl Fn(&mut dyn FnMut(&Scheduler)),
    get: fn(&Scheduler, I) -> Option<&T>,
) -> (usize, Vec<u8>) {
    let mut count = 0;
    let mut out = Vec::new();
    for chunk in ids.chunks(piece.max(1)) {
        with(&mut |s| {
            for &id in chunk {
                if let Some(entity) = get(s, id) {
                    put(&mut out, entity);
                    count += 1;
                }
            }
        });
    }
    (count, out)
}

/// The bytes of a binary snapshot file covering the log up to record `log_seq`, to be sealed,
/// read from the scheduler `piece` entities at a time: `with` runs its argument on the
/// scheduler under its lock (and should release it so that waiting commands go first).
pub fn encode_in_pieces(
    log_seq: u64,
    taken_at: Millis,
    piece: usize,
    with: impl Fn(&mut dyn FnMut(&Scheduler)),
) -> Payload {
    let mut ids = Default::default();
    with(&mut |s| ids = s.snapshot_ids());
    let nodes = encode_list(&ids.nodes, piece, &with, Scheduler::snapshot_node);
    let leases = encode_list(&ids.leases, piece, &with, Scheduler::snapshot_lease);
    let ended = encode_list(&ids.ended, piece, &with, Scheduler::snapshot_ended);
    let mut meta = Default::default();
    with(&mut |s| meta = s.meta());

    let size = nodes.1.len() + leases.1.len() + ended.1.len() + 128;
    let mut out = unsealed_header(size);
    // `StateFile { version, saved_at_unix_ms, log_seq, snapshot: Snapshot { taken_at, nodes,
    // leases, ended, next_node, next_lease, counters } }`, field by field.
    put(&mut out, &(STATE_VERSION, unix_ms_now(), log_seq, taken_at));
    for (count, bytes) in [nodes, leases, ended] {
        put(&mut out, &count);
        out.extend_from_slice(&bytes);
    }
    put(&mut out, &(meta.next_node, meta.next_lease, meta.counters));
    Payload::from_unsealed(out)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::Path;

    use super::*;
    use crate::resource_manager::store::snapshot_file::{decode, encode_payload};
    use crate::scheduler::journal::tests::observed;
    use crate::scheduler::{Change, Config, Image, LeaseRequest, Meta, NodeInfo, Snapshot};

    fn info(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            address: format!("{name}:1"),
            cores: 16,
            memory: 1 << 30,
            hosted: vec![],
        }
    }

    fn decoded(p: Payload) -> Snapshot {
        decode(Path::new("s"), &p.seal()).unwrap().snapshot
    }

    /// A scheduler with nodes, live leases and ended ones, its journal on.
    fn busy() -> (Scheduler, Vec<crate::scheduler::Grant>) {
        let mut s = Scheduler::new(Config {
            keep_ended: 6,
            heartbeat_timeout_ms: 1_000_000,
            ..Config::default()
        });
        s.journal(true);
        for i in 0..6 {
            s.register(info(&format!("n{i}")), Millis(0)).unwrap();
        }
        let mut grants: Vec<_> = (0..40)
            .map(|i| s.grant(LeaseRequest::cores(1 + i % 3), Millis(1)).unwrap())
            .collect();
        for g in grants.drain(..10) {
            s.release(g.lease, &g.token).unwrap();
        }
        (s, grants)
    }

    #[test]
    fn read_without_changes_it_is_the_snapshot_the_view_writes() {
        let (s, _) = busy();
        let pieces = decoded(encode_in_pieces(9, Millis(5), 4, |f| f(&s)));
        let whole = decoded(encode_payload(&s.snapshot_view(Millis(5)), 9));
        assert_eq!(
            serde_json::to_value(&pieces).unwrap(),
            serde_json::to_value(&whole).unwrap()
        );
        assert_eq!(
            (pieces.nodes.len(), pieces.leases.len(), pieces.ended.len()),
            (6, 30, 6)
        );
    }

    /// Commands run between the pieces (grants, releases, renewals, registrations, a drain, a
    /// deregistration); the records of every command after the listing, replayed over the file,
    /// give the state the scheduler has at the end, as a restart would load it.
    #[test]
    fn changes_between_the_pieces_are_made_exact_by_replaying_their_records() {
        let (mut s, grants) = busy();
        let _ = s.take_changes();
        let s = RefCell::new(s);
        let held = RefCell::new(grants);
        let records: RefCell<Vec<(Vec<Change>, Meta)>> = RefCell::default();
        let step = RefCell::new(0u64);
        // One command per taking of the lock, cycling through the kinds.
        let command = |s: &mut Scheduler| {
            let mut n = step.borrow_mut();
            *n += 1;
            let now = Millis(10 + *n);
            let mut held = held.borrow_mut();
            match *n % 6 {
                0 | 3 => held.push(s.grant(LeaseRequest::cores(2), now).unwrap()),
                1 if !held.is_empty() => {
                    let g = held.remove(0);
                    s.release(g.lease, &g.token).unwrap();
                }
                2 if !held.is_empty() => {
                    let g = held.last().unwrap();
                    s.renew(g.lease, &g.token, now).unwrap();
                }
                4 if *n == 4 => s.drain("n1").unwrap(),
                5 if *n == 11 => {
                    let gone = s.deregister("n2").unwrap();
                    assert!(!gone.is_empty(), "n2 held leases");
                    held.retain(|g| s.snapshot_lease(g.lease).is_some());
                }
                _ => {
                    s.register(info(&format!("late{n}")), now).unwrap();
                }
            }
            records.borrow_mut().push(s.take_changes());
        };
        let payload = encode_in_pieces(0, Millis(9), 3, |f| {
            let mut sched = s.borrow_mut();
            command(&mut sched);
            f(&sched);
        });
        // And after the file was written, before the "crash".
        for _ in 0..5 {
            command(&mut s.borrow_mut());
        }
        let mut image = Image::new(decoded(payload), 6);
        let records = records.into_inner();
        assert!(
            records.len() > 20,
            "{} commands ran between pieces",
            records.len()
        );
        for (changes, meta) in records {
            image.apply(changes, meta);
        }
        let s = s.into_inner();
        assert_eq!(
            observed(image.into_snapshot(Millis(100))),
            observed(s.snapshot(Millis(100)))
        );
    }
}
