//! The store on real files: replay, torn tails, corruption, crashes during compaction, group
//! commit.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::*;
use crate::resource_manager::state::StateError;
use crate::scheduler::{Config, Millis, NodeInfo, Scheduler};

/// A scheduler with the journal on, producing the records the store takes.
struct Source {
    sched: Scheduler,
    seq: u64,
}

impl Source {
    fn new() -> Source {
        let mut sched = Scheduler::new(Config::default());
        sched.journal(true);
        Source { sched, seq: 0 }
    }

    /// Registers node `name` and returns its record.
    fn register(&mut self, name: &str) -> LogRecord {
        let info = NodeInfo {
            name: name.into(),
            address: format!("{name}:1"),
            cores: 64,
            memory: 0,
            hosted: vec![],
        };
        self.sched.register(info, Millis(1)).unwrap();
        self.record()
    }

    /// The record of what changed since the last one.
    fn record(&mut self) -> LogRecord {
        let (changes, meta) = self.sched.take_changes();
        self.seq += 1;
        LogRecord {
            seq: self.seq,
            meta,
            changes,
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Names of the nodes the state on disk at `state` holds.
fn nodes_on_disk(state: &Path) -> (Vec<String>, Recovered) {
    let r = recovery::recover(state, 100).unwrap();
    let names = r
        .snapshot
        .as_ref()
        .map(|s| s.nodes.iter().map(|n| n.name.clone()).collect())
        .unwrap_or_default();
    (names, r)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

/// Writes `n` registrations n1.. through a store on `state`, waits, closes.
fn write_nodes(state: &Path, src: &mut Source, from: usize, n: usize) {
    let (store, _) = Store::open(state, 100, u64::MAX).unwrap();
    for i in from..from + n {
        store.append(src.register(&format!("n{i}")));
    }
    block_on(store.wait(src.seq)).unwrap();
    store.close().unwrap();
}

fn newest_segment(state: &Path) -> PathBuf {
    segments::list(state).unwrap().pop().unwrap().1
}

fn corrupt_message(e: StateError) -> String {
    match e {
        StateError::Corrupt { .. } => e.to_string(),
        other => panic!("expected a corrupt-state error, got {other}"),
    }
}

#[test]
fn records_are_replayed_in_order_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm.json");
    let mut src = Source::new();
    write_nodes(&state, &mut src, 1, 3);
    write_nodes(&state, &mut src, 4, 2);
    let (got, r) = nodes_on_disk(&state);
    assert_eq!(got, names("n", 5));
    assert_eq!((r.last_seq, r.replayed, r.dropped), (5, 5, 0));
    // Records hold lease tokens: only the owner may read the segments.
    use std::os::unix::fs::PermissionsExt;
    for (_, p) in segments::list(&state).unwrap() {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", p.display());
    }
    // No snapshot was ever written: the log alone, from record 1, is the state.
    assert!(!state.exists());
}

#[test]
fn a_torn_tail_is_dropped_and_the_log_continues_after_the_last_good_record() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm.json");
    let mut src = Source::new();
    write_nodes(&state, &mut src, 1, 3);
    let seg = newest_segment(&state);
    let good = std::fs::metadata(&seg).unwrap().len();
    // A crash in the middle of appending record 4: its first bytes only.
    let mut frame4 = Vec::new();
    frame::encode(&src.register("lost"), &mut frame4);
    src.seq -= 1;
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&frame4[..frame4.len() / 2]);
    std::fs::write(&seg, &bytes).unwrap();

    let (got, r) = nodes_on_disk(&state);
    assert_eq!(got, names("n", 3));
    assert_eq!(r.dropped, frame4.len() as u64 / 2);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good, "tail cut off");
    // A whole last record with a bad checksum is a torn tail too.
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut bad = frame4.clone();
    let last = bad.len() - 2;
    bad[last] ^= 1;
    bytes.extend_from_slice(&bad);
    std::fs::write(&seg, &bytes).unwrap();
    let mut src2 = Source::new();
    for i in 1..=3 {
        src2.register(&format!("n{i}"));
    }
    write_nodes(&state, &mut src2, 4, 1);
    let (got, r) = nodes_on_disk(&state);
    assert_eq!(got, names("n", 4));
    assert_eq!((r.last_seq, r.dropped), (4, 0));
}

/// A state of nodes n1..n3 in one segment: (its directory, the state file, the segment, its
/// bytes).
fn three_nodes() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm.json");
    write_nodes(&state, &mut Source::new(), 1, 3);
    let seg = newest_segment(&state);
    let clean = std::fs::read(&seg).unwrap();
    (dir, state, seg, clean)
}

#[test]
fn damage_before_valid_records_or_a_bad_snapshot_is_refused() {
    let (_dir, state, seg, clean) = three_nodes();

    // A bit flipped in record 2 of 3.
    let mut bytes = clean.clone();
    let first_len = u32::from_le_bytes(clean[0..4].try_into().unwrap()) as usize;
    bytes[frame::HEADER + first_len + frame::HEADER + 3] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let e = corrupt_message(recovery::recover(&state, 100).unwrap_err());
    assert!(e.contains("followed by a valid one"), "{e}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was cut");

    // Damage at the end of a segment that is not the newest.
    let mut cut = clean.clone();
    cut.truncate(clean.len() - 1);
    std::fs::write(&seg, &cut).unwrap();
    std::fs::write(segments::path(&state, 4), b"").unwrap();
    let e = corrupt_message(recovery::recover(&state, 100).unwrap_err());
    assert!(e.contains("not the newest"), "{e}");
    std::fs::remove_file(segments::path(&state, 4)).unwrap();
    std::fs::write(&seg, &clean).unwrap();

    // A gap: record 3 missing.
    let (recs, _, _) = frame::decode(&clean);
    let mut gap = Vec::new();
    frame::encode(&recs[0], &mut gap);
    frame::encode(&recs[2], &mut gap);
    std::fs::write(&seg, &gap).unwrap();
    let e = corrupt_message(recovery::recover(&state, 100).unwrap_err());
    assert!(e.contains("record 3 where record 2 was due"), "{e}");
    std::fs::write(&seg, &clean).unwrap();

    // An unreadable snapshot.
    std::fs::write(&state, b"{\"version\": 3").unwrap();
    let e = corrupt_message(recovery::recover(&state, 100).unwrap_err());
    assert!(e.contains("unusable"), "{e}");
    std::fs::remove_file(&state).unwrap();

    // A log whose beginning no snapshot covers.
    std::fs::rename(&seg, segments::path(&state, 7)).unwrap();
    let e = corrupt_message(recovery::recover(&state, 100).unwrap_err());
    assert!(e.contains("the log starts at record 7"), "{e}");
}

/// Copies the snapshot file and the segments of `state` into a new directory.
fn copy_state(state: &Path) -> (tempfile::TempDir, PathBuf) {
    let to = tempfile::tempdir().unwrap();
    let target = to.path().join(state.file_name().unwrap());
    if state.exists() {
        std::fs::copy(state, &target).unwrap();
    }
    for (_, p) in segments::list(state).unwrap() {
        std::fs::copy(&p, to.path().join(p.file_name().unwrap())).unwrap();
    }
    (to, target)
}

#[test]
fn a_crash_at_any_step_of_a_compaction_recovers_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm.json");
    let mut src = Source::new();
    let (store, _) = Store::open(&state, 100, 1).unwrap();
    for i in 1..=4 {
        store.append(src.register(&format!("n{i}")));
    }
    block_on(store.wait(4)).unwrap();
    assert!(store.wants_compaction());
    let before = segments::list(&state).unwrap();
    // Crash 1: after the rotation, before the snapshot is written.
    let mut crash1 = None;
    let done = store
        .compact(|| {
            crash1 = Some(copy_state(&state));
            let snap = src.sched.snapshot_view(Millis(2));
            (snapshot_file::encode_payload(&snap, src.seq), src.seq)
        })
        .unwrap()
        .unwrap();
    assert_eq!((done.seq, done.segments_removed), (4, 1));
    assert!(!store.wants_compaction());
    // Crash 2: the snapshot renamed into place, the old segment not yet deleted.
    let (crash2, state2) = copy_state(&state);
    for (_, p) in &before {
        std::fs::copy(p, crash2.path().join(p.file_name().unwrap()))
            .expect_err("the old segment is gone");
    }
    let (_, kept1) = crash1.as_ref().unwrap();
    let old_seg = segments::list(kept1).unwrap()[0].1.clone();
    std::fs::copy(&old_seg, crash2.path().join(old_seg.file_name().unwrap())).unwrap();
    // A temporary file of an interrupted snapshot write is ignored.
    std::fs::write(crash2.path().join(".tmp-abc123"), b"{\"vers").unwrap();

    for (what, at) in [("rotated", kept1.clone()), ("renamed", state2.clone())] {
        let (got, r) = nodes_on_disk(&at);
        assert_eq!(got, names("n", 4), "crash after {what}");
        assert_eq!(r.last_seq, 4, "crash after {what}");
    }
    let (_, r) = nodes_on_disk(&state2);
    assert_eq!(r.replayed, 0, "records the snapshot covers are skipped");

    // After the compaction, the log goes on in the new segment.
    store.append(src.register("n5"));
    block_on(store.wait(5)).unwrap();
    store.close().unwrap();
    let (got, r) = nodes_on_disk(&state);
    assert_eq!(got, names("n", 5));
    assert_eq!((r.last_seq, r.replayed), (5, 1));
    assert_eq!(segments::list(&state).unwrap().len(), 1);
}

#[test]
fn concurrent_changes_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm.json");
    let mut src = Source::new();
    let (store, _) = Store::open(&state, 100, u64::MAX).unwrap();
    // Hold the committer's segment while 50 changes arrive: it can take at most the first
    // alone, the rest pile up and go in one write and one fsync.
    let records: Vec<LogRecord> = (1..=50).map(|i| src.register(&format!("n{i}"))).collect();
    {
        let _writer = store.shared.lock_writer();
        for r in records {
            store.append(r);
        }
    }
    block_on(async {
        let waits: Vec<_> = (1..=50).map(|s| store.wait(s)).collect();
        for w in waits {
            w.await.unwrap();
        }
    });
    let commits = store.stats().commits.load(Ordering::Relaxed);
    assert!(
        (1..=2).contains(&commits),
        "{commits} commits for 50 records"
    );
    assert_eq!(store.stats().records.load(Ordering::Relaxed), 50);
    store.close().unwrap();
    assert_eq!(nodes_on_disk(&state).0.len(), 50);
}

#[test]
fn a_json_snapshot_and_json_log_of_an_earlier_build_migrate_to_binary() {
    use crate::resource_manager::state::StateFile;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm.json");
    let mut src = Source::new();
    // What the previous build left: a JSON snapshot (version 3) covering records 1 and 2,
    // then a segment of JSON records 3 and 4.
    src.register("n1");
    src.register("n2");
    let old = StateFile {
        version: 3,
        saved_at_unix_ms: 1,
        log_seq: 2,
        snapshot: src.sched.snapshot(Millis(2)),
    };
    std::fs::write(&state, serde_json::to_vec(&old).unwrap()).unwrap();
    let mut log = Vec::new();
    for name in ["n3", "n4"] {
        let json = serde_json::to_vec(&src.register(name)).unwrap();
        log.extend_from_slice(&(json.len() as u32).to_le_bytes());
        log.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        log.extend_from_slice(&json);
    }
    std::fs::write(segments::path(&state, 3), &log).unwrap();

    let (store, r) = Store::open(&state, 100, 1).unwrap();
    assert_eq!((r.version, r.last_seq, r.replayed), (3, 4, 2));
    store.append(src.register("n5"));
    block_on(store.wait(5)).unwrap();
    let newest = std::fs::read(newest_segment(&state)).unwrap();
    assert_eq!(
        newest[frame::HEADER],
        frame::BINARY,
        "new records are binary"
    );
    let (got, _) = nodes_on_disk(&state);
    assert_eq!(
        got,
        names("n", 5),
        "JSON snapshot + JSON and binary records"
    );
    // The next compaction rewrites the snapshot in binary.
    store
        .compact(|| {
            let snap = src.sched.snapshot(Millis(3));
            (snapshot_file::encode_payload(&snap, src.seq), src.seq)
        })
        .unwrap()
        .unwrap();
    store.close().unwrap();
    let bytes = std::fs::read(&state).unwrap();
    assert!(bytes.starts_with(snapshot_file::MAGIC));
    let (got, r) = nodes_on_disk(&state);
    assert_eq!(got, names("n", 5));
    assert_eq!((r.version, r.last_seq, r.replayed), (4, 5, 0));
}

#[test]
fn close_makes_every_queued_record_durable_and_concurrent_writers_all_finish() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm.json");
    let src = std::sync::Mutex::new(Source::new());
    let (store, _) = Store::open(&state, 100, u64::MAX).unwrap();
    // Eight writers, each waiting for its record before the next (like handlers); records are
    // appended in sequence order under one lock, as the scheduler's lock does.
    std::thread::scope(|s| {
        for t in 0..8 {
            let (src, store) = (&src, &store);
            s.spawn(move || {
                for i in 0..25 {
                    let seq = {
                        let mut src = src.lock().unwrap();
                        let r = src.register(&format!("t{t}-{i}"));
                        let seq = r.seq;
                        store.append(r);
                        seq
                    };
                    block_on(store.wait(seq)).unwrap();
                }
            });
        }
    });
    assert_eq!(store.durable().seq, 200);
    let commits = store.stats().commits.load(Ordering::Relaxed);
    assert!(
        (1..=200).contains(&commits),
        "{commits} syncs for 200 records"
    );
    // Queued and never waited for: close writes and syncs them all.
    let mut src = src.into_inner().unwrap();
    for i in 0..50 {
        store.append(src.register(&format!("late-{i}")));
    }
    store.close().unwrap();
    assert_eq!(store.durable().seq, 250);
    let (got, r) = nodes_on_disk(&state);
    assert_eq!((got.len(), r.last_seq), (250, 250));
}

/// Compactions while writers keep changing the scheduler (grants and releases, each appended
/// under the lock and waited for, like handlers; the snapshot encoded under the same lock, as
/// the resource manager does): after the store is closed, what is on disk recovers to the
/// state the scheduler has.
#[test]
fn compactions_during_concurrent_changes_recover_the_schedulers_state() {
    use crate::scheduler::journal::tests::observed;
    use crate::scheduler::LeaseRequest;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rm-state");
    let src = std::sync::Mutex::new(Source::new());
    let keep_ended = Config::default().keep_ended;
    let (store, _) = Store::open(&state, keep_ended, 1).unwrap();
    for i in 1..=4 {
        let r = src.lock().unwrap().register(&format!("n{i}"));
        store.append(r);
    }
    let writers_done = std::sync::atomic::AtomicUsize::new(0);
    let compactions = std::thread::scope(|s| {
        for t in 0..4u64 {
            let (src, store, done) = (&src, &store, &writers_done);
            s.spawn(move || {
                let mut held = std::collections::VecDeque::new();
                for i in 0..60u64 {
                    let seq = {
                        let mut src = src.lock().unwrap();
                        let g = src.sched.grant(LeaseRequest::cores(1), Millis(2 + i));
                        held.push_back(g.unwrap());
                        if (i + t) % 2 == 1 {
                            let g = held.pop_front().unwrap();
                            src.sched.release(g.lease, &g.token).unwrap();
                        }
                        let r = src.record();
                        let seq = r.seq;
                        store.append(r);
                        seq
                    };
                    block_on(store.wait(seq)).unwrap();
                }
                done.fetch_add(1, Ordering::Release);
            });
        }
        let mut compactions = 0;
        while writers_done.load(Ordering::Acquire) < 4 || compactions == 0 {
            let done = store
                .compact(|| {
                    let src = src.lock().unwrap();
                    let view = src.sched.snapshot_view(Millis(0));
                    (snapshot_file::encode_payload(&view, src.seq), src.seq)
                })
                .unwrap();
            compactions += usize::from(done.is_some());
        }
        compactions
    });
    store.close().unwrap();
    let src = src.into_inner().unwrap();
    let r = recovery::recover(&state, keep_ended).unwrap();
    let expected = observed(src.sched.snapshot(Millis(0)));
    assert_eq!(expected.1.len(), 120, "half the 240 grants are still live");
    assert_eq!(observed(r.snapshot.unwrap()), expected);
    assert!(compactions > 0);
    assert_eq!(r.last_seq, src.seq);
}

#[test]
fn old_records_after_a_torn_tail_are_stale_blocks_and_dropped_with_it_but_a_later_one_is_not() {
    let (_dir, state, seg, clean) = three_nodes();
    let (recs, _, _) = frame::decode(&clean);
    // A power cut saved the segment's new size but not the record appended into it: the tail
    // holds what the reused blocks held before, here frames of records 1 and 2 of a deleted
    // segment between bytes that are no frame at all.
    let mut stale = Vec::new();
    frame::encode(&recs[1], &mut stale);
    stale.extend_from_slice(&[0xa5; 37]);
    frame::encode(&recs[0], &mut stale);
    let mut bytes = clean.clone();
    bytes.extend_from_slice(&[0x5a; 11]);
    bytes.extend_from_slice(&stale);
    std::fs::write(&seg, &bytes).unwrap();
    let (got, r) = nodes_on_disk(&state);
    assert_eq!(got, names("n", 3));
    assert_eq!(
        (r.last_seq, r.dropped),
        (3, (bytes.len() - clean.len()) as u64)
    );
    assert_eq!(std::fs::read(&seg).unwrap(), clean, "the tail was cut off");

    // A frame of a record after the last one read is this log's: the damage before it is in
    // the middle of acknowledged records, and the state is refused as it is.
    let mut later = Source::new();
    for i in 1..=3 {
        later.register(&format!("n{i}"));
    }
    let mut bytes = clean.clone();
    bytes.extend_from_slice(&[0x5a; 11]);
    frame::encode(&later.register("n4"), &mut bytes);
    std::fs::write(&seg, &bytes).unwrap();
    let e = corrupt_message(recovery::recover(&state, 100).unwrap_err());
    assert!(e.contains("followed by a valid one (record 4)"), "{e}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was cut");
}
