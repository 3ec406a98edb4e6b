//! Unit tests of the tcp provider: two domains in one process, connected over loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::wire::{kind, op, Header, Hello, HDR_LEN, HELLO_LEN};
use super::*;
use crate::rdma::{
    Access, CompletionQueue, ConnRequest, Fabric, Listener, MemoryRegion, Op, QpCaps, QpInit,
    QpTimeouts, QueuePair, RecvWr, SendFlags, SendWr, Wc, WcOpcode, WcStatus,
};

/// Upper bound of every wait in these tests.
const T: Duration = Duration::from_secs(5);

/// The "did not hang" limit for elapsed times (tests check behaviour, benchmarks check speed).
const NO_HANG: Duration = Duration::from_secs(60);

struct Side {
    f: TcpFabric,
    cq: TcpCq,
    qp: TcpQp,
}

fn timeouts(rnr_ms: u64, response_ms: u64) -> QpTimeouts {
    QpTimeouts {
        rnr: Duration::from_millis(rnr_ms),
        response: Duration::from_millis(response_ms),
    }
}

/// Connects a fresh client domain (`a`) to a fresh server domain (`b`).
fn pair_with(ta: QpTimeouts) -> (Side, Side) {
    let fb = TcpFabric::new().unwrap();
    let l = fb.listen("127.0.0.1:0").unwrap();
    let addr = l.local_addr();
    let fa = TcpFabric::new().unwrap();
    let fa2 = fa.clone();
    let h = std::thread::spawn(move || {
        let cq = fa2.create_cq(256).unwrap();
        let mut init = QpInit::new(&cq);
        init.timeouts = ta;
        let (qp, pd) = fa2.connect(&addr, init, &[], b"hello", T).unwrap();
        assert_eq!(pd, b"welcome");
        (cq, qp)
    });
    let req = l.next_request(T).unwrap().expect("a connection request");
    assert_eq!(req.private_data(), b"hello");
    let cqb = fb.create_cq(256).unwrap();
    let qb = req.accept(QpInit::new(&cqb), &[], b"welcome").unwrap();
    let (cqa, qa) = h.join().unwrap();
    (
        Side {
            f: fa,
            cq: cqa,
            qp: qa,
        },
        Side {
            f: fb,
            cq: cqb,
            qp: qb,
        },
    )
}

fn pair() -> (Side, Side) {
    pair_with(QpTimeouts::default())
}

/// Waits (spin briefly, then block) for exactly `n` completions.
fn wcs(cq: &TcpCq, n: usize) -> Vec<Wc> {
    let deadline = Instant::now() + T;
    let mut v = Vec::new();
    let mut buf = [Wc::EMPTY; 16];
    while v.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {n} completions; got {v:?}"
        );
        let want = (n - v.len()).min(buf.len());
        let k = cq
            .poll_wait(&mut buf[..want], left, Duration::from_micros(50))
            .unwrap();
        v.extend_from_slice(&buf[..k]);
    }
    v
}

fn wc1(cq: &TcpCq) -> Wc {
    wcs(cq, 1)[0]
}

fn nothing_more(cq: &TcpCq, for_: Duration) {
    let mut buf = [Wc::EMPTY; 4];
    let until = Instant::now() + for_;
    while Instant::now() < until {
        let n = cq.poll(&mut buf);
        assert_eq!(n, 0, "unexpected completions {:?}", &buf[..n]);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether thread `tid` of this process sleeps (state `S` in `/proc`).
fn asleep(tid: nix::unistd::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).is_ok_and(|st| {
        st.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
    })
}

/// Whether the other end has neither closed `s` nor sent anything on it yet.
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let r = s.peek(&mut [0u8; 1]);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn wr(wr_id: u64, op: Op, sge: Option<crate::rdma::Sge>) -> SendWr {
    SendWr {
        wr_id,
        op,
        sge,
        flags: SendFlags::SIGNALED,
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn send_and_receive_with_and_without_immediate() {
    let (a, b) = pair();
    let src = a.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    let dst = b.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    src.write(0, &pattern(300, 1));
    b.qp.post_recv(&RecvWr {
        wr_id: 10,
        sge: Some(dst.sge(0, 2048)),
    })
    .unwrap();
    b.qp.post_recv(&RecvWr {
        wr_id: 11,
        sge: Some(dst.sge(2048, 2048)),
    })
    .unwrap();
    a.qp.post_send(&wr(1, Op::Send, Some(src.sge(0, 100))))
        .unwrap();
    a.qp.post_send(&wr(2, Op::SendImm(0xfeed), Some(src.sge(100, 200))))
        .unwrap();

    let r = wcs(&b.cq, 2);
    assert_eq!(
        (
            r[0].wr_id,
            r[0].status,
            r[0].opcode,
            r[0].byte_len,
            r[0].imm
        ),
        (10, WcStatus::Success, WcOpcode::Recv, 100, None)
    );
    assert_eq!(
        (r[1].wr_id, r[1].status, r[1].byte_len, r[1].imm),
        (11, WcStatus::Success, 200, Some(0xfeed))
    );
    assert_eq!(r[0].qp_num, b.qp.qp_num());
    let mut got = vec![0u8; 300];
    dst.read(0, &mut got[..100]);
    dst.read(2048, &mut got[100..]);
    assert_eq!(got, pattern(300, 1));

    let s = wcs(&a.cq, 2);
    assert_eq!(
        (s[0].wr_id, s[0].status, s[0].opcode, s[0].byte_len),
        (1, WcStatus::Success, WcOpcode::Send, 100)
    );
    assert_eq!((s[1].wr_id, s[1].status), (2, WcStatus::Success));
    assert_eq!(s[0].qp_num, a.qp.qp_num());
}

#[test]
fn send_into_too_small_receive_is_a_length_error() {
    let (a, b) = pair();
    let src = a.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    let dst = b.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    b.qp.post_recv(&RecvWr {
        wr_id: 7,
        sge: Some(dst.sge(0, 16)),
    })
    .unwrap();
    a.qp.post_send(&wr(1, Op::Send, Some(src.sge(0, 64))))
        .unwrap();
    let r = wc1(&b.cq);
    assert_eq!((r.wr_id, r.status), (7, WcStatus::LocalLength));
    let s = wc1(&a.cq);
    assert_eq!((s.wr_id, s.status), (1, WcStatus::RemoteInvalidRequest));
    assert!(!a.qp.is_connected());
    until("the target to leave the connected state", || {
        !b.qp.is_connected()
    });
}

#[test]
fn write_lands_without_the_target_polling() {
    let (a, b) = pair();
    let src = a.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    let dst =
        b.f.alloc_mr(8192, Access::REMOTE_WRITE | Access::LOCAL_WRITE)
            .unwrap();
    src.write(0, &pattern(64, 7));
    a.qp.post_send(&wr(1, Op::Write(dst.remote(100, 64)), Some(src.sge(0, 64))))
        .unwrap();
    // The send completion follows the target's acknowledgement, so the data is there.
    let s = wc1(&a.cq);
    assert_eq!(
        (s.wr_id, s.status, s.opcode, s.byte_len),
        (1, WcStatus::Success, WcOpcode::Write, 64)
    );
    let mut got = vec![0u8; 64];
    dst.read(100, &mut got);
    assert_eq!(got, pattern(64, 7));
    // A plain write produces no completion at the target.
    nothing_more(&b.cq, Duration::from_millis(20));
}

#[test]
fn write_with_immediate_reports_imm_and_length_and_data_is_visible() {
    let (a, b) = pair();
    let src = a.f.alloc_mr(1 << 16, Access::LOCAL_WRITE).unwrap();
    let dst = b.f.alloc_mr(1 << 16, Access::REMOTE_WRITE).unwrap();
    for i in 0..3 {
        b.qp.post_recv(&RecvWr {
            wr_id: 100 + i,
            sge: None,
        })
        .unwrap();
    }
    // A plain write, then a write-with-immediate: both visible at the imm's completion.
    src.write(0, &pattern(5000, 3));
    a.qp.post_send(&wr(
        1,
        Op::Write(dst.remote(0, 1000)),
        Some(src.sge(0, 1000)),
    ))
    .unwrap();
    a.qp.post_send(&SendWr {
        wr_id: 2,
        op: Op::WriteImm(dst.remote(1000, 4000), 0xabcd_0123),
        sge: Some(src.sge(1000, 4000)),
        flags: SendFlags::SIGNALED | SendFlags::SOLICITED,
    })
    .unwrap();
    let r = wc1(&b.cq);
    assert_eq!(
        (r.wr_id, r.status, r.opcode, r.byte_len, r.imm),
        (
            100,
            WcStatus::Success,
            WcOpcode::RecvWriteImm,
            4000,
            Some(0xabcd_0123)
        )
    );
    let mut got = vec![0u8; 5000];
    dst.read(0, &mut got);
    assert_eq!(got, pattern(5000, 3));

    // Zero length, no SGE, immediate only.
    a.qp.post_send(&wr(3, Op::WriteImm(dst.remote(0, 0), 42), None))
        .unwrap();
    let r = wc1(&b.cq);
    assert_eq!(
        (r.wr_id, r.status, r.byte_len, r.imm),
        (101, WcStatus::Success, 0, Some(42))
    );
    // Unsignaled: no send completion on success.
    a.qp.post_send(&SendWr {
        wr_id: 4,
        op: Op::WriteImm(dst.remote(0, 0), 43),
        sge: None,
        flags: SendFlags::empty(),
    })
    .unwrap();
    assert_eq!(wc1(&b.cq).imm, Some(43));
    let s = wcs(&a.cq, 2);
    assert_eq!(
        s.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
        vec![(1, WcStatus::Success), (2, WcStatus::Success)]
    );
    let s = wc1(&a.cq);
    assert_eq!((s.wr_id, s.opcode, s.byte_len), (3, WcOpcode::WriteImm, 0));
    nothing_more(&a.cq, Duration::from_millis(20));
}

#[test]
fn read_fetch_add_and_compare_swap_without_the_target_polling() {
    let (a, b) = pair();
    let local = a.f.alloc_mr(8192, Access::LOCAL_WRITE).unwrap();
    let remote =
        b.f.alloc_mr(8192, Access::REMOTE_READ | Access::REMOTE_ATOMIC)
            .unwrap();
    remote.write(0, &pattern(4096, 9));
    a.qp.post_send(&wr(
        1,
        Op::Read(remote.remote(0, 4096)),
        Some(local.sge(0, 4096)),
    ))
    .unwrap();
    let s = wc1(&a.cq);
    assert_eq!(
        (s.wr_id, s.status, s.opcode, s.byte_len),
        (1, WcStatus::Success, WcOpcode::Read, 4096)
    );
    let mut got = vec![0u8; 4096];
    local.read(0, &mut got);
    assert_eq!(got, pattern(4096, 9));

    remote
        .atomic_u64(4096)
        .store(40, std::sync::atomic::Ordering::SeqCst);
    let word = remote.remote(4096, 8);
    a.qp.post_send(&wr(
        2,
        Op::FetchAdd {
            remote: word,
            add: 2,
        },
        Some(local.sge(0, 8)),
    ))
    .unwrap();
    let s = wc1(&a.cq);
    assert_eq!(
        (s.wr_id, s.status, s.opcode, s.byte_len),
        (2, WcStatus::Success, WcOpcode::FetchAdd, 8)
    );
    assert_eq!(
        local
            .atomic_u64(0)
            .load(std::sync::atomic::Ordering::SeqCst),
        40
    );
    assert_eq!(
        remote
            .atomic_u64(4096)
            .load(std::sync::atomic::Ordering::SeqCst),
        42
    );

    // Compare-swap that matches, then one that does not.
    a.qp.post_send(&wr(
        3,
        Op::CompareSwap {
            remote: word,
            compare: 42,
            swap: 7,
        },
        Some(local.sge(8, 8)),
    ))
    .unwrap();
    a.qp.post_send(&wr(
        4,
        Op::CompareSwap {
            remote: word,
            compare: 42,
            swap: 9,
        },
        Some(local.sge(16, 8)),
    ))
    .unwrap();
    let s = wcs(&a.cq, 2);
    assert_eq!(
        (s[0].wr_id, s[0].status, s[0].opcode),
        (3, WcStatus::Success, WcOpcode::CompareSwap)
    );
    assert_eq!((s[1].wr_id, s[1].status), (4, WcStatus::Success));
    assert_eq!(
        local
            .atomic_u64(8)
            .load(std::sync::atomic::Ordering::SeqCst),
        42
    );
    assert_eq!(
        local
            .atomic_u64(16)
            .load(std::sync::atomic::Ordering::SeqCst),
        7
    );
    assert_eq!(
        remote
            .atomic_u64(4096)
            .load(std::sync::atomic::Ordering::SeqCst),
        7
    );
    // The target never polled and has nothing to poll.
    nothing_more(&b.cq, Duration::from_millis(10));
}

#[test]
fn fetch_add_is_atomic_against_the_owner() {
    use std::sync::atomic::Ordering::SeqCst;
    let (a, b) = pair();
    let target = b.f.alloc_mr(4096, Access::REMOTE_ATOMIC).unwrap();
    let local = a.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    let n = 200u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..n {
                target.atomic_u64(0).fetch_add(1, SeqCst);
            }
        });
        for i in 0..n {
            a.qp.post_send(&wr(
                i,
                Op::FetchAdd {
                    remote: target.remote(0, 8),
                    add: 1,
                },
                Some(local.sge(0, 8)),
            ))
            .unwrap();
            assert!(wc1(&a.cq).is_ok());
        }
    });
    assert_eq!(target.atomic_u64(0).load(SeqCst), 2 * n);
}

/// Posts `op` from `a` and checks that it fails with `status`, leaves `check` unchanged, and
/// moves both queue pairs to the error state; later requests flush.
fn expect_remote_failure(
    a: &Side,
    b: &Side,
    op: Op,
    sge: crate::rdma::Sge,
    status: WcStatus,
    check: &TcpMr,
) {
    let mut before = vec![0u8; check.len()];
    check.read(0, &mut before);
    a.qp.post_send(&wr(1, op, Some(sge))).unwrap();
    let s = wc1(&a.cq);
    assert_eq!((s.wr_id, s.status), (1, status), "{op:?}");
    assert!(!a.qp.is_connected());
    let mut after = vec![0u8; check.len()];
    check.read(0, &mut after);
    assert!(before == after, "target memory changed");
    a.qp.post_send(&wr(2, op, Some(sge))).unwrap();
    let s = wc1(&a.cq);
    assert_eq!((s.wr_id, s.status), (2, WcStatus::WrFlush));
    until("the target to leave the connected state", || {
        !b.qp.is_connected()
    });
}

#[test]
fn bad_rkey_bounds_and_rights_are_remote_access_errors_and_change_nothing() {
    type MakeOp = Box<dyn Fn(&TcpMr, &TcpMr) -> (Op, crate::rdma::Sge)>;
    let cases: Vec<(&str, MakeOp, WcStatus)> = vec![
        (
            "wrong rkey",
            Box::new(|l, r| {
                let mut rb = r.remote(0, 64);
                rb.rkey ^= 0x5a5;
                (Op::Write(rb), l.sge(0, 64))
            }),
            WcStatus::RemoteAccess,
        ),
        (
            "out of bounds",
            Box::new(|l, r| (Op::Write(r.remote(4096 - 32, 64)), l.sge(0, 64))),
            WcStatus::RemoteAccess,
        ),
        (
            "before the region",
            Box::new(|l, r| {
                let mut rb = r.remote(0, 64);
                rb.addr -= 8;
                (Op::Write(rb), l.sge(0, 64))
            }),
            WcStatus::RemoteAccess,
        ),
        (
            "write-imm out of bounds",
            Box::new(|l, r| (Op::WriteImm(r.remote(4000, 200), 1), l.sge(0, 200))),
            WcStatus::RemoteAccess,
        ),
        (
            "read without REMOTE_READ",
            Box::new(|l, r| (Op::Read(r.remote(0, 64)), l.sge(0, 64))),
            WcStatus::RemoteAccess,
        ),
        (
            "atomic without REMOTE_ATOMIC",
            Box::new(|l, r| {
                (
                    Op::FetchAdd {
                        remote: r.remote(0, 8),
                        add: 1,
                    },
                    l.sge(0, 8),
                )
            }),
            WcStatus::RemoteAccess,
        ),
        (
            "misaligned atomic",
            Box::new(|l, r| {
                (
                    Op::FetchAdd {
                        remote: r.remote(4, 8),
                        add: 1,
                    },
                    l.sge(0, 8),
                )
            }),
            WcStatus::RemoteInvalidRequest,
        ),
    ];
    for (name, make, status) in cases {
        let (a, b) = pair();
        let local = a.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
        local.write(0, &[0xee; 256]);
        // Writable, but neither readable nor atomic (the misaligned case gets atomic rights).
        let access = if name == "misaligned atomic" {
            Access::REMOTE_WRITE | Access::REMOTE_ATOMIC
        } else {
            Access::REMOTE_WRITE
        };
        let remote = b.f.alloc_mr(4096, access).unwrap();
        remote.write(0, &pattern(4096, 5));
        b.qp.post_recv(&RecvWr {
            wr_id: 50,
            sge: None,
        })
        .unwrap();
        let (op, sge) = make(&local, &remote);
        eprintln!("case: {name}");
        expect_remote_failure(&a, &b, op, sge, status, &remote);
        // The target's posted receive flushes.
        let r = wc1(&b.cq);
        assert_eq!((r.wr_id, r.status), (50, WcStatus::WrFlush), "{name}");
    }
}

#[test]
fn deregistered_region_is_no_longer_reachable() {
    let (a, b) = pair();
    let local = a.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    let remote = b.f.alloc_mr(4096, Access::REMOTE_WRITE).unwrap();
    let rb = remote.remote(0, 64);
    drop(remote);
    a.qp.post_send(&wr(1, Op::Write(rb), Some(local.sge(0, 64))))
        .unwrap();
    assert_eq!(wc1(&a.cq).status, WcStatus::RemoteAccess);
}

#[test]
fn local_sge_checks() {
    let (a, _b) = pair();
    let ro = a.f.alloc_mr(4096, Access::REMOTE_READ).unwrap();
    // A read lands locally: the region needs LOCAL_WRITE.
    a.qp.post_send(&wr(1, Op::Read(ro.remote(0, 8)), Some(ro.sge(0, 8))))
        .unwrap();
    let s = wc1(&a.cq);
    assert_eq!((s.wr_id, s.status), (1, WcStatus::LocalProtection));
    assert!(!a.qp.is_connected());

    let (a, _b) = pair();
    let m = a.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    let mut bad = m.sge(0, 64);
    bad.lkey ^= 1;
    a.qp.post_send(&wr(2, Op::Send, Some(bad))).unwrap();
    assert_eq!(wc1(&a.cq).status, WcStatus::LocalProtection);

    let (a, _b) = pair();
    let m = a.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    a.qp.post_send(&wr(3, Op::Send, Some(m.sge(4000, 200))))
        .unwrap();
    assert_eq!(wc1(&a.cq).status, WcStatus::LocalProtection);
}

#[test]
fn receiver_not_ready_times_out_and_a_late_receive_is_used() {
    // No receive within the initiator's RNR timer: RnrRetryExceeded.
    let (a, b) = pair_with(timeouts(100, 5000));
    a.qp.post_send(&wr(1, Op::WriteImm(Default::default(), 5), None))
        .unwrap();
    let t0 = Instant::now();
    let s = wc1(&a.cq);
    assert_eq!((s.wr_id, s.status), (1, WcStatus::RnrRetryExceeded));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(80),
        "{waited:?} (wc1 waits at most {T:?})"
    );
    until("the target to leave the connected state", || {
        !b.qp.is_connected()
    });

    // A receive posted before the timer runs out takes the held frame.
    let (a, b) = pair_with(timeouts(2000, 5000));
    a.qp.post_send(&wr(2, Op::WriteImm(Default::default(), 6), None))
        .unwrap();
    until("the target to hold the frame", || {
        b.qp.inner.held.load(std::sync::atomic::Ordering::SeqCst)
    });
    b.qp.post_recv(&RecvWr {
        wr_id: 9,
        sge: None,
    })
    .unwrap();
    let r = wc1(&b.cq);
    assert_eq!((r.wr_id, r.status, r.imm), (9, WcStatus::Success, Some(6)));
    assert_eq!(wc1(&a.cq).status, WcStatus::Success);
}

#[test]
fn one_mebibyte_write_read_and_send_arrive_intact() {
    const MIB: usize = 1 << 20;
    let (a, b) = pair();
    let src = a.f.alloc_mr(2 * MIB, Access::LOCAL_WRITE).unwrap();
    let dst =
        b.f.alloc_mr(
            2 * MIB,
            Access::REMOTE_WRITE | Access::REMOTE_READ | Access::LOCAL_WRITE,
        )
        .unwrap();
    let data = pattern(MIB, 77);
    src.write(0, &data);
    b.qp.post_recv(&RecvWr {
        wr_id: 1,
        sge: None,
    })
    .unwrap();
    a.qp.post_send(&wr(
        1,
        Op::WriteImm(dst.remote(0, MIB as u32), 1),
        Some(src.sge(0, MIB as u32)),
    ))
    .unwrap();
    let r = wc1(&b.cq);
    assert_eq!((r.status, r.byte_len), (WcStatus::Success, MIB as u32));
    let mut got = vec![0u8; MIB];
    dst.read(0, &mut got);
    assert!(got == data, "write payload corrupted");

    a.qp.post_send(&wr(
        2,
        Op::Read(dst.remote(0, MIB as u32)),
        Some(src.sge(MIB, MIB as u32)),
    ))
    .unwrap();
    let s = wcs(&a.cq, 2);
    assert_eq!(
        (s[1].wr_id, s[1].status, s[1].byte_len),
        (2, WcStatus::Success, MIB as u32)
    );
    src.read(MIB, &mut got);
    assert!(got == data, "read payload corrupted");

    b.qp.post_recv(&RecvWr {
        wr_id: 3,
        sge: Some(dst.sge(MIB, MIB as u32)),
    })
    .unwrap();
    a.qp.post_send(&wr(3, Op::Send, Some(src.sge(0, MIB as u32))))
        .unwrap();
    let r = wc1(&b.cq);
    assert_eq!(
        (r.wr_id, r.status, r.byte_len),
        (3, WcStatus::Success, MIB as u32)
    );
    dst.read(MIB, &mut got);
    assert!(got == data, "send payload corrupted");
}

#[test]
fn sixty_four_connections_share_one_completion_queue() {
    const N: usize = 64;
    let server = TcpFabric::new().unwrap();
    let l = server.listen("127.0.0.1:0").unwrap();
    let addr = l.local_addr();
    let shared = server.create_cq(16).unwrap(); // smaller than N: exercises the overflow list
    let client = TcpFabric::new().unwrap();
    let c2 = client.clone();
    let h = std::thread::spawn(move || {
        let cq = c2.create_cq(256).unwrap();
        let qps: Vec<TcpQp> = (0..N)
            .map(|i| {
                c2.connect(&addr, QpInit::new(&cq), &[], &(i as u32).to_le_bytes(), T)
                    .unwrap()
                    .0
            })
            .collect();
        for (i, qp) in qps.iter().enumerate() {
            qp.post_send(&wr(
                i as u64,
                Op::WriteImm(Default::default(), i as u32),
                None,
            ))
            .unwrap();
        }
        assert!(wcs(&cq, N).iter().all(|w| w.is_ok()));
        (cq, qps)
    });
    let mut qps = Vec::new();
    for _ in 0..N {
        let req = l.next_request(T).unwrap().expect("request");
        let recv = [RecvWr {
            wr_id: 1000 + qps.len() as u64,
            sge: None,
        }];
        qps.push(req.accept(QpInit::new(&shared), &recv, &[]).unwrap());
    }
    let got = wcs(&shared, N);
    let (_cq, _cqps) = h.join().unwrap();
    let mut imms: Vec<u32> = got.iter().map(|w| w.imm.unwrap()).collect();
    imms.sort_unstable();
    assert_eq!(imms, (0..N as u32).collect::<Vec<_>>());
    let mut nums: Vec<u32> = got.iter().map(|w| w.qp_num).collect();
    nums.sort_unstable();
    nums.dedup();
    assert_eq!(nums.len(), N);
    for w in &got {
        let qp = qps.iter().position(|q| q.qp_num() == w.qp_num).unwrap();
        assert_eq!(w.wr_id, 1000 + qp as u64);
    }
}

#[test]
fn bad_handshakes_are_dropped_and_good_ones_served() {
    let f = TcpFabric::new().unwrap();
    let l = f.listen("127.0.0.1:0").unwrap();
    let addr = l.local_addr();
    // 1. Another protocol.
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n.............")
        .unwrap();
    // 2. Half a hello, then silence.
    let good = Hello {
        kind: kind::HELLO,
        qp_num: 1,
        max_send_wr: 4,
        max_recv_wr: 4,
        max_msg_size: 64,
        rnr_ms: 10,
        pid: 1,
        data_len: 8,
    };
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(&good.encode()[..17]).unwrap();
    // 3. A hello that announces too much private data.
    let mut huge = TcpStream::connect(&addr).unwrap();
    huge.write_all(
        &Hello {
            data_len: 1 << 20,
            ..good
        }
        .encode(),
    )
    .unwrap();
    // 4. A complete hello whose private data never comes.
    let mut short = TcpStream::connect(&addr).unwrap();
    short.write_all(&good.encode()).unwrap();
    short.write_all(b"abc").unwrap();

    // A good client is served at once, while 2 and 4 still stall.
    let f2 = TcpFabric::new().unwrap();
    let t0 = Instant::now();
    let h = std::thread::spawn(move || {
        let cq = f2.create_cq(8).unwrap();
        let r = f2
            .connect(&addr, QpInit::new(&cq), &[], b"good", T)
            .map(|(q, d)| (q.qp_num(), d));
        (r, f2, cq)
    });
    let req = l.next_request(T).unwrap().expect("the good request");
    assert_eq!(req.private_data(), b"good");
    let cq = f.create_cq(8).unwrap();
    let _qp = req.accept(QpInit::new(&cq), &[], b"ok").unwrap();
    let (r, _f2, _cq2) = h.join().unwrap();
    assert_eq!(r.unwrap().1, b"ok");
    // Not queued behind 2 and 4: they are still open, not yet cut by the handshake timeout.
    assert!(
        still_open(&half) && still_open(&short),
        "the good client waited {:?}, until the stalled ones were cut",
        t0.elapsed()
    );
    // Nothing else is a request.
    assert!(l.next_request(Duration::from_millis(50)).unwrap().is_none());
    // The garbage and oversized connections are closed by the listener.
    for s in [&mut garbage, &mut huge] {
        s.set_read_timeout(Some(T)).unwrap();
        let mut b = [0u8; 64];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
        assert!(
            !still_open(s),
            "still_open does not see a closed connection"
        );
    }
    drop((half, short));
}

#[test]
fn rejected_connect_reports_the_reason() {
    let f = TcpFabric::new().unwrap();
    let l = f.listen("127.0.0.1:0").unwrap();
    let addr = l.local_addr();
    let h = std::thread::spawn(move || {
        let f2 = TcpFabric::new().unwrap();
        let cq = f2.create_cq(8).unwrap();
        f2.connect(&addr, QpInit::new(&cq), &[], &[7; 56], T)
            .map(|_| ())
    });
    let req = l.next_request(T).unwrap().unwrap();
    assert_eq!(req.private_data(), &[7; 56]);
    req.reject("no capacity");
    match h.join().unwrap() {
        Err(crate::rdma::FabricError::Rejected(r)) => assert_eq!(r, "no capacity"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Oversized private data is refused locally; an address with no listener fails fast.
    let cq = f.create_cq(8).unwrap();
    assert!(matches!(
        f.connect("127.0.0.1:1", QpInit::new(&cq), &[], &[0; 2000], T),
        Err(crate::rdma::FabricError::Invalid(_))
    ));
    assert!(f
        .connect("127.0.0.1:1", QpInit::new(&cq), &[], &[], T)
        .is_err());
    assert!(matches!(
        f.connect("no-port", QpInit::new(&cq), &[], &[], T),
        Err(crate::rdma::FabricError::BadAddress { .. })
    ));
}

#[test]
fn blocking_wait_times_out_then_wakes() {
    let (a, b) = pair();
    for i in 0..2 {
        b.qp.post_recv(&RecvWr {
            wr_id: i,
            sge: None,
        })
        .unwrap();
    }
    let mut buf = [Wc::EMPTY; 4];
    // Nothing comes: wait times out.
    b.cq.req_notify(false).unwrap();
    assert_eq!(b.cq.poll(&mut buf), 0);
    let t0 = Instant::now();
    assert!(!b.cq.wait(Duration::from_millis(50)).unwrap());
    assert!(t0.elapsed() >= Duration::from_millis(45));

    // Armed for solicited completions only: an unsolicited one does not wake, a solicited one
    // does.
    b.cq.req_notify(true).unwrap();
    assert_eq!(b.cq.poll(&mut buf), 0);
    a.qp.post_send(&wr(1, Op::WriteImm(Default::default(), 1), None))
        .unwrap();
    assert!(
        !b.cq.wait(Duration::from_millis(100)).unwrap(),
        "an unsolicited completion woke a solicited-only waiter"
    );
    // Sent once this thread sleeps in `wait` (the only place it can sleep).
    let waiter = nix::unistd::gettid();
    let sender = std::thread::spawn(move || {
        until("the waiter to sleep", || asleep(waiter));
        a.qp.post_send(&SendWr {
            wr_id: 2,
            op: Op::WriteImm(Default::default(), 2),
            sge: None,
            flags: SendFlags::SOLICITED,
        })
        .unwrap();
        a
    });
    assert!(b.cq.wait(T).unwrap());
    let got = wcs(&b.cq, 2);
    assert_eq!(
        got.iter().map(|w| w.imm.unwrap()).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let _a = sender.join().unwrap();

    // The fd turns readable too.
    b.cq.req_notify(false).unwrap();
    assert_eq!(b.cq.poll(&mut buf), 0);
    assert!(!crate::rdma::notify::wait_readable(b.cq.raw_fd(), Duration::from_millis(20)).unwrap());
}

#[test]
fn disconnect_and_peer_death_flush_everything() {
    let (a, b) = pair();
    for i in 0..3 {
        b.qp.post_recv(&RecvWr {
            wr_id: i,
            sge: None,
        })
        .unwrap();
    }
    // The peer "dies": its queue pair, CQ and domain go away.
    drop(a);
    let r = wcs(&b.cq, 3);
    assert!(
        r.iter()
            .all(|w| w.status == WcStatus::WrFlush && w.opcode == WcOpcode::Recv),
        "{r:?}"
    );
    assert!(!b.qp.is_connected());
    // Posting afterwards flushes too.
    b.qp.post_recv(&RecvWr {
        wr_id: 9,
        sge: None,
    })
    .unwrap();
    assert_eq!(wc1(&b.cq).status, WcStatus::WrFlush);
    b.qp.post_send(&wr(10, Op::Send, None)).unwrap();
    let w = wc1(&b.cq);
    assert_eq!((w.wr_id, w.status), (10, WcStatus::WrFlush));

    // A blocked waiter is woken when the peer goes.
    let (a, b) = pair();
    b.qp.post_recv(&RecvWr {
        wr_id: 5,
        sge: None,
    })
    .unwrap();
    b.cq.req_notify(false).unwrap();
    let waiter = nix::unistd::gettid();
    let killer = std::thread::spawn(move || {
        until("the waiter to sleep", || asleep(waiter));
        a.qp.disconnect();
        a
    });
    assert!(b.cq.wait(T).unwrap());
    assert_eq!(wc1(&b.cq).status, WcStatus::WrFlush);
    let a = killer.join().unwrap();
    assert!(!a.qp.is_connected());
}

/// A fake peer: completes the server side of the handshake by hand, then runs `then`.
fn fake_server(then: impl FnOnce(TcpStream) + Send + 'static) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut h = [0u8; HELLO_LEN];
        s.read_exact(&mut h).unwrap();
        let hello = Hello::decode(&h, &[kind::HELLO]).unwrap();
        let mut pd = vec![0u8; hello.data_len as usize];
        s.read_exact(&mut pd).unwrap();
        let acc = Hello {
            kind: kind::ACCEPT,
            qp_num: 77,
            max_send_wr: 16,
            max_recv_wr: 16,
            max_msg_size: 4096,
            rnr_ms: 100,
            pid: 0,
            data_len: 0,
        };
        s.write_all(&acc.encode()).unwrap();
        then(s);
    });
    addr
}

#[test]
fn outstanding_read_fails_when_the_peer_dies() {
    let addr = fake_server(|mut s| {
        // Swallow the read request, then die.
        let mut b = [0u8; HDR_LEN];
        let _ = s.read_exact(&mut b);
        std::thread::sleep(Duration::from_millis(20));
    });
    let f = TcpFabric::new().unwrap();
    let cq = f.create_cq(8).unwrap();
    let (qp, _) = f
        .connect(
            &addr,
            QpInit::new(&cq),
            &[RecvWr {
                wr_id: 3,
                sge: None,
            }],
            &[],
            T,
        )
        .unwrap();
    let m = f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    qp.post_send(&wr(1, Op::Read(Default::default()), Some(m.sge(0, 64))))
        .unwrap();
    let got = wcs(&cq, 2);
    let read = got.iter().find(|w| w.wr_id == 1).unwrap();
    assert_eq!(read.status, WcStatus::RetryExceeded);
    let recv = got.iter().find(|w| w.wr_id == 3).unwrap();
    assert_eq!(recv.status, WcStatus::WrFlush);
    assert!(!qp.is_connected());
}

#[test]
fn unanswered_request_times_out() {
    let addr = fake_server(|mut s| {
        // Read everything, answer nothing, stay connected.
        let mut b = [0u8; 256];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    let f = TcpFabric::new().unwrap();
    let cq = f.create_cq(8).unwrap();
    let mut init = QpInit::new(&cq);
    init.timeouts = timeouts(100, 150);
    let (qp, _) = f.connect(&addr, init, &[], &[], T).unwrap();
    let m = f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    qp.post_send(&wr(
        1,
        Op::FetchAdd {
            remote: Default::default(),
            add: 1,
        },
        Some(m.sge(0, 8)),
    ))
    .unwrap();
    // The answer timer fired (wc1 waits at most T for it).
    let w = wc1(&cq);
    assert_eq!((w.wr_id, w.status), (1, WcStatus::RetryExceeded));
}

#[test]
fn send_queue_bounds_requests_in_flight() {
    // The fake peer reads but never acknowledges: requests stay in flight.
    let addr = fake_server(|mut s| {
        let mut b = [0u8; 256];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    let f = TcpFabric::new().unwrap();
    let cq = f.create_cq(8).unwrap();
    let mut init = QpInit::new(&cq);
    init.caps.max_send_wr = 2;
    let (qp, _) = f.connect(&addr, init, &[], &[], T).unwrap();
    let op = Op::WriteImm(Default::default(), 1);
    qp.post_send(&wr(1, op, None)).unwrap();
    qp.post_send(&wr(2, op, None)).unwrap();
    assert!(matches!(
        qp.post_send(&wr(3, op, None)),
        Err(crate::rdma::FabricError::QueueFull)
    ));
    // Receives are bounded too.
    for i in 0..QpCaps::default().max_recv_wr {
        qp.post_recv(&RecvWr {
            wr_id: u64::from(i),
            sge: None,
        })
        .unwrap();
    }
    assert!(matches!(
        qp.post_recv(&RecvWr {
            wr_id: 99,
            sge: None
        }),
        Err(crate::rdma::FabricError::QueueFull)
    ));
    // Disconnecting flushes everything in flight and everything posted.
    qp.disconnect();
    let got = wcs(&cq, 2 + QpCaps::default().max_recv_wr as usize);
    assert!(got.iter().all(|w| w.status == WcStatus::WrFlush), "{got:?}");
}

#[test]
fn connect_times_out_when_the_listener_never_answers() {
    // Accepts the connection, never says anything.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    // It holds the connection until the client is done (or, if connect ignored its timeout,
    // until NO_HANG, when closing it ends the connect with another error than Timeout).
    let (done, client_done) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        l.accept().map(|(s, _)| {
            let _ = client_done.recv_timeout(NO_HANG);
            drop(s);
        })
    });
    let f = TcpFabric::new().unwrap();
    let cq = f.create_cq(8).unwrap();
    let t0 = Instant::now();
    let r = f.connect(
        &addr,
        QpInit::new(&cq),
        &[],
        &[],
        Duration::from_millis(150),
    );
    let took = t0.elapsed();
    let _ = done.send(());
    assert!(
        matches!(r, Err(crate::rdma::FabricError::Timeout(_))),
        "{r:?} after {took:?}"
    );
    assert!(took >= Duration::from_millis(140), "{took:?}");
    let _ = h.join();
}

#[test]
fn malformed_frames_break_only_their_connection() {
    // The encoded header of `op` with `len`, `seq` and `ack`, everything else zero.
    let header = |op, len, seq, ack| {
        Header {
            op,
            len,
            seq,
            ack,
            ..Header::default()
        }
        .encode()
        .to_vec()
    };
    let frames: Vec<Vec<u8>> = vec![
        vec![0xff; HDR_LEN],                         // unknown op
        header(op::FETCH_ADD, 3, 1, 0),              // bad length
        header(op::WRITE, 8, 5, 0),                  // out of sequence
        header(op::ACK, 0, 0, 1000),                 // acks the future
        header(op::READ_RESP, 8, 1, 0),              // answers nothing
        header(op::WRITE, 100, 1, 0)[..20].to_vec(), // truncated
    ];
    let f = TcpFabric::new().unwrap();
    // A healthy connection in the same domain keeps working throughout.
    let (a, b) = pair();
    for frame in frames {
        let addr = fake_server(move |mut s| {
            let _ = s.write_all(&frame);
            std::thread::sleep(Duration::from_millis(50));
        });
        let cq = f.create_cq(8).unwrap();
        let (qp, _) = f
            .connect(
                &addr,
                QpInit::new(&cq),
                &[RecvWr {
                    wr_id: 1,
                    sge: None,
                }],
                &[],
                T,
            )
            .unwrap();
        let w = wc1(&cq);
        assert_eq!((w.wr_id, w.status), (1, WcStatus::WrFlush));
        assert!(!qp.is_connected());
    }
    b.qp.post_recv(&RecvWr {
        wr_id: 1,
        sge: None,
    })
    .unwrap();
    a.qp.post_send(&wr(1, Op::WriteImm(Default::default(), 11), None))
        .unwrap();
    assert_eq!(wc1(&b.cq).imm, Some(11));
}

#[test]
fn busy_polling_drives_the_stream_itself() {
    // Ping-pong with both sides busy-polling: after a few rounds, the progress threads have
    // stepped aside (delegated) and the polls move the bytes.
    let (a, b) = pair();
    let ma = a.f.alloc_mr(4096, Access::ALL).unwrap();
    let mb = b.f.alloc_mr(4096, Access::ALL).unwrap();
    let (ra, rb) = (ma.remote(0, 64), mb.remote(0, 64));
    let rounds = 300;
    let echo = std::thread::spawn(move || {
        let mut buf = [Wc::EMPTY; 8];
        for i in 0..32 {
            b.qp.post_recv(&RecvWr {
                wr_id: i,
                sge: None,
            })
            .unwrap();
        }
        let mut done = 0;
        let mut deadline = Instant::now() + T;
        while done < rounds {
            assert!(Instant::now() < deadline, "no progress for {T:?}");
            let n = b.cq.poll(&mut buf);
            for w in &buf[..n] {
                assert!(w.is_ok(), "{w:?}");
                if w.opcode == WcOpcode::RecvWriteImm {
                    b.qp.post_recv(&RecvWr {
                        wr_id: w.wr_id,
                        sge: None,
                    })
                    .unwrap();
                    b.qp.post_send(&wr(
                        w.wr_id,
                        Op::WriteImm(ra, w.imm.unwrap()),
                        Some(mb.sge(0, 64)),
                    ))
                    .unwrap();
                    done += 1;
                    deadline = Instant::now() + T;
                }
            }
        }
        (b, mb)
    });
    let mut buf = [Wc::EMPTY; 8];
    for i in 0..32 {
        a.qp.post_recv(&RecvWr {
            wr_id: i,
            sge: None,
        })
        .unwrap();
    }
    let t0 = Instant::now();
    for i in 0..rounds {
        a.qp.post_send(&wr(i, Op::WriteImm(rb, i as u32), Some(ma.sge(0, 64))))
            .unwrap();
        let deadline = Instant::now() + T;
        'wait: loop {
            assert!(Instant::now() < deadline);
            let n = a.cq.poll(&mut buf);
            for w in &buf[..n] {
                assert!(w.is_ok(), "{w:?}");
                if w.opcode == WcOpcode::RecvWriteImm {
                    assert_eq!(w.imm, Some(i as u32));
                    a.qp.post_recv(&RecvWr {
                        wr_id: w.wr_id,
                        sge: None,
                    })
                    .unwrap();
                    break 'wait;
                }
            }
        }
    }
    let per_rt = t0.elapsed() / rounds as u32;
    eprintln!("busy-poll ping-pong (in-process, unpinned): {per_rt:?} per round trip");
    let _b = echo.join().unwrap();
}

#[test]
fn progress_thread_steps_aside_while_the_application_polls() {
    use std::sync::atomic::Ordering::SeqCst;
    let (a, b) = pair();
    let src = a.f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    let dst = b.f.alloc_mr(4096, Access::REMOTE_WRITE).unwrap();
    let mut buf = [Wc::EMPTY; 4];
    // b busy-polls while a writes: the progress thread delegates b's stream to b's polls.
    let deadline = Instant::now() + T;
    let mut i = 0u8;
    while !b.qp.inner.delegated.load(SeqCst) {
        assert!(Instant::now() < deadline, "never delegated");
        src.write(0, &[i; 8]);
        a.qp.post_send(&wr(
            u64::from(i),
            Op::Write(dst.remote(0, 8)),
            Some(src.sge(0, 8)),
        ))
        .unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(2) {
            b.cq.poll(&mut buf);
        }
        i = i.wrapping_add(1);
    }
    // Writes still land (the polls carry them).
    src.write(0, &[0xaa; 8]);
    a.qp.post_send(&wr(999, Op::Write(dst.remote(0, 8)), Some(src.sge(0, 8))))
        .unwrap();
    until("the write to land through b's polls", || {
        b.cq.poll(&mut buf);
        let mut v = [0u8; 8];
        dst.read(0, &mut v);
        v == [0xaa; 8]
    });
    // b stops polling: the progress thread takes the stream back and writes land alone.
    until("the progress thread to take the stream back", || {
        !b.qp.inner.delegated.load(SeqCst)
    });
    src.write(0, &[0xbb; 8]);
    a.qp.post_send(&wr(1000, Op::Write(dst.remote(0, 8)), Some(src.sge(0, 8))))
        .unwrap();
    until("the write to land without b", || {
        let mut v = [0u8; 8];
        dst.read(0, &mut v);
        v == [0xbb; 8]
    });
    // Arming the CQ to block takes the stream back at once.
    let deadline = Instant::now() + T;
    while !b.qp.inner.delegated.load(SeqCst) {
        assert!(Instant::now() < deadline, "never delegated again");
        a.qp.post_send(&wr(1, Op::Write(dst.remote(0, 8)), Some(src.sge(0, 8))))
            .unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(2) {
            b.cq.poll(&mut buf);
        }
    }
    b.cq.req_notify(false).unwrap();
    assert!(!b.qp.inner.delegated.load(SeqCst));
}

/// The peer side of `peer_process_killed_with_sigkill`: runs only in the child process.
#[test]
#[ignore = "helper: runs as the child process of peer_process_killed_with_sigkill"]
fn child_peer_process() {
    let Ok(addr) = std::env::var("RFAAS_TCP_TEST_PEER") else {
        return;
    };
    let f = TcpFabric::new().unwrap();
    let cq = f.create_cq(16).unwrap();
    let mr = f.alloc_mr(4096, Access::ALL).unwrap();
    let r = mr.remote(0, 4096);
    let (qp, _) = f
        .connect(&addr, QpInit::new(&cq), &[], &r.to_bytes(), T)
        .unwrap();
    // Serve one-sided operations (the progress thread does) until killed.
    std::thread::sleep(Duration::from_secs(30));
    drop((qp, mr));
}

#[test]
fn peer_process_killed_with_sigkill() {
    let f = TcpFabric::new().unwrap();
    let l = f.listen("127.0.0.1:0").unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "rdma::tcp::tests::child_peer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RFAAS_TCP_TEST_PEER", l.local_addr())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let req = l
        .next_request(Duration::from_secs(20))
        .unwrap()
        .expect("the child connects");
    let remote = crate::rdma::RemoteBuf::from_bytes(req.private_data()).unwrap();
    let cq = f.create_cq(16).unwrap();
    let recvs = [
        RecvWr {
            wr_id: 1,
            sge: None,
        },
        RecvWr {
            wr_id: 2,
            sge: None,
        },
    ];
    // An answer timer far longer than any wait here: the unanswered read below can only fail
    // because the peer's death is noticed.
    let mut init = QpInit::new(&cq);
    init.timeouts = timeouts(500, 600_000);
    let qp = req.accept(init, &recvs, &[]).unwrap();
    let local = f.alloc_mr(4096, Access::LOCAL_WRITE).unwrap();
    // A live peer process answers (its progress thread does, its main thread sleeps).
    local.write(0, &[5; 64]);
    qp.post_send(&wr(
        10,
        Op::Write(remote.slice(0, 64)),
        Some(local.sge(0, 64)),
    ))
    .unwrap();
    qp.post_send(&wr(
        11,
        Op::Read(remote.slice(0, 64)),
        Some(local.sge(64, 64)),
    ))
    .unwrap();
    let s = wcs(&cq, 2);
    assert!(s.iter().all(|w| w.is_ok()), "{s:?}");
    let mut v = [0u8; 64];
    local.read(64, &mut v);
    assert_eq!(v, [5; 64]);
    // Stop it, leave a read unanswered, then kill it.
    // SAFETY: test only: a plain signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    until("the child to stop", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    });
    qp.post_send(&wr(
        12,
        Op::Read(remote.slice(0, 64)),
        Some(local.sge(64, 64)),
    ))
    .unwrap();
    // (post_send has written the request to the socket when it returns.)
    // SAFETY: test only: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
    let got = wcs(&cq, 3);
    let status = |id| got.iter().find(|w| w.wr_id == id).map(|w| w.status);
    assert_eq!(status(12), Some(WcStatus::RetryExceeded));
    assert_eq!(status(1), Some(WcStatus::WrFlush));
    assert_eq!(status(2), Some(WcStatus::WrFlush));
    assert!(!qp.is_connected());
}

// ---------------------------------------------------------------------------------------------
// Timing (not a test of correctness): `cargo test --release --lib rdma::tcp::tests::latency --
// --ignored --nocapture`. The real benchmark is `fabric_pingpong`; this is the provider's own
// quick check against a raw TCP_NODELAY busy-poll ping-pong, both between two threads of this
// process pinned to different cores.

fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// The cores this process may use, read once, before any thread of the test pinned itself
/// (a pinned thread's own affinity is just its core).
fn all_cores() -> &'static [usize] {
    static CORES: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    CORES.get_or_init(crate::pin::allowed_cores)
}

fn pin(core: usize) {
    let cores = all_cores();
    if cores.len() > 1 && std::env::var_os("RFAAS_TCP_NOPIN").is_none() {
        let mut set = nix::sched::CpuSet::new();
        let _ = set.set(cores[core % cores.len()]);
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn raw_tcp_pingpong(size: usize, iters: usize) -> Vec<u64> {
    fn xfer(s: &mut TcpStream, buf: &mut [u8], send: bool) {
        let mut off = 0;
        while off < buf.len() {
            let r = if send {
                s.write(&buf[off..])
            } else {
                s.read(&mut buf[off..])
            };
            match r {
                Ok(0) => panic!("closed"),
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let total = iters + iters / 10;
    let echo = std::thread::spawn(move || {
        pin(1);
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; size];
        for _ in 0..total {
            xfer(&mut s, &mut buf, false);
            xfer(&mut s, &mut buf, true);
        }
    });
    pin(0);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_nonblocking(true).unwrap();
    let mut buf = vec![1u8; size];
    let mut t = Vec::with_capacity(iters);
    for i in 0..total {
        let t0 = Instant::now();
        xfer(&mut c, &mut buf, true);
        xfer(&mut c, &mut buf, false);
        if i >= total - iters {
            t.push(t0.elapsed().as_nanos() as u64);
        }
    }
    echo.join().unwrap();
    t
}

fn unpin() {
    let mut set = nix::sched::CpuSet::new();
    for &c in all_cores() {
        let _ = set.set(c);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

/// How the ping-pong waits for completions: `None` busy-polls; `Some(spin)` uses `poll_wait`
/// (spin that long, then arm and block).
fn get(cq: &TcpCq, buf: &mut [Wc], wait: Option<Duration>) -> usize {
    match wait {
        None => cq.poll(buf),
        // Pure blocking: arm, poll once, sleep.
        Some(spin) if spin.is_zero() => {
            cq.req_notify(false).unwrap();
            let n = cq.poll(buf);
            if n == 0 {
                cq.wait(T).unwrap();
            }
            n
        }
        Some(spin) => cq.poll_wait(buf, T, spin).unwrap(),
    }
}

fn fabric_pingpong(size: u32, iters: usize, wait: Option<Duration>) -> Vec<u64> {
    // The domains' threads inherit the creating thread's affinity: create them unpinned
    // unless asked to put them on the application's core.
    if std::env::var_os("RFAAS_TCP_PIN_PROGRESS").is_none() {
        unpin();
    }
    let (a, b) = pair();
    let ma = a.f.alloc_mr(1 << 20, Access::ALL).unwrap();
    let mb = b.f.alloc_mr(1 << 20, Access::ALL).unwrap();
    let (ra, rb) = (ma.remote(0, size), mb.remote(0, size));
    let total = iters + iters / 10;
    let echo = std::thread::spawn(move || {
        pin(1);
        let mut buf = [Wc::EMPTY; 16];
        for i in 0..32 {
            b.qp.post_recv(&RecvWr {
                wr_id: i,
                sge: None,
            })
            .unwrap();
        }
        let mut done = 0;
        while done < total {
            let n = get(&b.cq, &mut buf, wait);
            for w in &buf[..n] {
                if w.opcode == WcOpcode::RecvWriteImm {
                    b.qp.post_recv(&RecvWr {
                        wr_id: w.wr_id,
                        sge: None,
                    })
                    .unwrap();
                    b.qp.post_send(&wr(
                        0,
                        Op::WriteImm(ra, w.imm.unwrap()),
                        Some(mb.sge(0, size)),
                    ))
                    .unwrap();
                    done += 1;
                }
            }
        }
        // Let the last acknowledgements through before the queue pair goes.
        std::thread::sleep(Duration::from_millis(20));
        b.cq.poll(&mut buf);
        (b, mb)
    });
    pin(0);
    let mut buf = [Wc::EMPTY; 16];
    for i in 0..32 {
        a.qp.post_recv(&RecvWr {
            wr_id: i,
            sge: None,
        })
        .unwrap();
    }
    let mut t = Vec::with_capacity(iters);
    for i in 0..total {
        let t0 = Instant::now();
        a.qp.post_send(&wr(0, Op::WriteImm(rb, i as u32), Some(ma.sge(0, size))))
            .unwrap();
        'wait: loop {
            let n = get(&a.cq, &mut buf, wait);
            for w in &buf[..n] {
                if w.opcode == WcOpcode::RecvWriteImm {
                    a.qp.post_recv(&RecvWr {
                        wr_id: w.wr_id,
                        sge: None,
                    })
                    .unwrap();
                    break 'wait;
                }
            }
        }
        if i >= total - iters {
            t.push(t0.elapsed().as_nanos() as u64);
        }
    }
    let _b = echo.join().unwrap();
    t
}

#[test]
#[ignore = "timing, not correctness; run in release with --ignored --nocapture"]
fn latency_vs_raw_tcp() {
    all_cores();
    let iters: usize = std::env::var("RFAAS_TCP_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let sizes: Vec<usize> = std::env::var("RFAAS_TCP_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 4096]);
    for size in sizes {
        for round in 0..3 {
            let mut raw = raw_tcp_pingpong(size, iters);
            let mut fab = fabric_pingpong(size as u32, iters, None);
            let (r50, r99) = (percentile(&mut raw, 0.5), percentile(&mut raw, 0.99));
            let (f50, f99) = (percentile(&mut fab, 0.5), percentile(&mut fab, 0.99));
            eprintln!(
                "size {size:5} round {round}: tcp-raw p50 {r50:6} ns p99 {r99:7} ns | tcp fabric p50 {f50:6} ns p99 {f99:7} ns | ratio p50 {:.2}",
                f50 as f64 / r50 as f64
            );
        }
        for (what, wait) in [
            ("blocking", Duration::ZERO),
            ("spin 50us then block", Duration::from_micros(50)),
        ] {
            let mut fab = fabric_pingpong(size as u32, iters / 4, Some(wait));
            let (f50, f99) = (percentile(&mut fab, 0.5), percentile(&mut fab, 0.99));
            eprintln!("size {size:5} tcp fabric, {what}: p50 {f50:6} ns p99 {f99:7} ns");
        }
    }
}
