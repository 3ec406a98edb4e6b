//! The fabric conformance suite: the same tests, parametrised over every provider.
//!
//! Each test checks one clause of the contract in `rfaas::rdma` (module docs). Tests that depend
//! on separate processes (a peer killed with SIGKILL, a peer of another uid, data crossing a
//! real process boundary) re-execute this binary as the peer: `main` looks at
//! `RFAAS_CONFORMANCE_PEER` first and runs the peer role it names.
//!
//! Providers: `shm` and `tcp` always; `verbs` when `RFAAS_VERBS_DEVICE` names an RDMA device of
//! this host (the binary must then be built with `--features verbs`; without it a failing
//! `verbs::not_compiled` trial says so). The verbs tests listen on `RFAAS_TEST_VERBS_ADDR` when
//! set, otherwise on the first IP address rdma_cm binds to that device (its IPoIB or RoCE
//! interface); peer processes inherit the device name. Every generic test runs on verbs, except
//! `other_uid_refused`, which checks a property of shm alone. These tests have not run on an
//! RDMA device yet (none on the development machines; soft-RoCE needs the `rdma_rxe` kernel
//! module); the hardware check of issue 10 (`scripts/device-check.sh`) is to run them.
//!
//! `ofi` (built with `--features libfabric`) runs on libfabric's `shm` and `tcp;ofi_rxm` providers,
//! plus any libfabric provider named by `RFAAS_TEST_OFI_PROVIDER` (e.g. `cxi` or `efa` on a
//! cluster); see `ofi_suites` for the tests that cannot hold on libfabric 1.17 and why.
//!
//! ```text
//! RFAAS_VERBS_DEVICE=mlx5_0 cargo test --features verbs --test fabric_conformance -- verbs::
//! ```

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use rfaas::rdma::shm::ShmFabric;
use rfaas::rdma::{
    Access, CompletionQueue, ConnRequest, Fabric, FabricError, Listener, MemoryRegion, Op, QpCaps,
    QpInit, QpTimeouts, QueuePair, RecvWr, RemoteBuf, SendFlags, SendWr, Wc, WcOpcode, WcStatus,
};

type TestResult = Result<(), Failed>;

const WAIT: Duration = Duration::from_secs(5);
/// The "did not hang" limit for elapsed times (tests check behaviour, benchmarks check speed).
const NO_HANG: Duration = Duration::from_secs(60);
const SPIN: Duration = Duration::from_micros(50);

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+).into());
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Harness helpers
// ---------------------------------------------------------------------------------------------

/// Waits for exactly one completion.
fn one<C: CompletionQueue>(cq: &C) -> Result<Wc, Failed> {
    let mut wc = [Wc::EMPTY; 1];
    let n = cq
        .poll_wait(&mut wc, WAIT, SPIN)
        .map_err(|e| format!("poll_wait: {e}"))?;
    ensure!(n == 1, "no completion within {WAIT:?}");
    Ok(wc[0])
}

/// Asserts that no completion arrives within `d`.
fn none_within<C: CompletionQueue>(cq: &C, d: Duration) -> TestResult {
    let mut wc = [Wc::EMPTY; 1];
    let n = cq
        .poll_wait(&mut wc, d, SPIN)
        .map_err(|e| format!("poll_wait: {e}"))?;
    ensure!(n == 0, "unexpected completion {:?}", wc[0]);
    Ok(())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn mr_bytes<M: MemoryRegion>(mr: &M, off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mr.read(off, &mut v);
    v
}

/// Two connected endpoints of one provider, in this process (two separate domains).
struct Pair<F: Fabric> {
    a: F,
    b: F,
    cq_a: F::Cq,
    cq_b: F::Cq,
    qp_a: F::Qp,
    qp_b: F::Qp,
}

fn caps() -> QpCaps {
    QpCaps {
        max_send_wr: 256,
        max_recv_wr: 256,
        max_msg_size: 4096,
    }
}

fn timeouts() -> QpTimeouts {
    QpTimeouts {
        rnr: Duration::from_millis(200),
        response: Duration::from_secs(3),
    }
}

/// Connects `b` (active) to `a` (passive). `a` accepts with `recvs_a` posted, `b` posts `recvs_b`.
fn pair<F: Fabric>(
    mk: fn() -> F,
    recvs_a: &[RecvWr],
    recvs_b: &[RecvWr],
) -> Result<Pair<F>, Failed> {
    pair_with(mk, recvs_a, recvs_b, timeouts())
}

/// [`pair`] with the queue pairs' `timeouts`.
fn pair_with<F: Fabric>(
    mk: fn() -> F,
    recvs_a: &[RecvWr],
    recvs_b: &[RecvWr],
    timeouts: QpTimeouts,
) -> Result<Pair<F>, Failed> {
    let a = mk();
    let b = mk();
    let cq_a = a.create_cq(1024)?;
    let cq_b = b.create_cq(1024)?;
    let listener = a.listen(&listen_addr(&a))?;
    let addr = listener.local_addr();
    let (qp_b, qp_a, cq_a) = std::thread::scope(|s| -> Result<_, Failed> {
        let h = s.spawn(move || -> Result<(F::Qp, F::Cq), String> {
            let req = listener
                .next_request(WAIT)
                .map_err(|e| e.to_string())?
                .ok_or("no connection request")?;
            if req.private_data() != b"hello from b" {
                return Err(format!("private data {:?}", req.private_data()));
            }
            let init = QpInit {
                send_cq: &cq_a,
                recv_cq: &cq_a,
                caps: caps(),
                timeouts,
            };
            let qp = req
                .accept(init, recvs_a, b"hello from a")
                .map_err(|e| e.to_string())?;
            Ok((qp, cq_a))
        });
        let init = QpInit {
            send_cq: &cq_b,
            recv_cq: &cq_b,
            caps: caps(),
            timeouts,
        };
        let (qp_b, pd) = b.connect(&addr, init, recvs_b, b"hello from b", WAIT)?;
        let (qp_a, cq_a) = h.join().map_err(|_| "accept thread panicked")??;
        ensure!(pd == b"hello from a", "accept private data {pd:?}");
        Ok((qp_b, qp_a, cq_a))
    })?;
    Ok(Pair {
        a,
        b,
        cq_a,
        cq_b,
        qp_a,
        qp_b,
    })
}

/// The IP address the verbs tests listen on (set by `main` when it registers them).
static VERBS_HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Where a test's listener binds: loopback for the software providers, an address of the RDMA
/// device for verbs (loopback has no RDMA device, except through soft-RoCE).
fn listen_addr<F: Fabric>(f: &F) -> String {
    match (f.provider(), VERBS_HOST.get()) {
        (rfaas::rdma::Provider::Verbs, Some(host)) if host.contains(':') => format!("[{host}]:0"),
        (rfaas::rdma::Provider::Verbs, Some(host)) => format!("{host}:0"),
        _ => "127.0.0.1:0".to_string(),
    }
}

fn recv_wr(id: u64) -> RecvWr {
    RecvWr {
        wr_id: id,
        sge: None,
    }
}

fn recvs(n: u64) -> Vec<RecvWr> {
    (0..n).map(recv_wr).collect()
}

fn send_wr(id: u64, op: Op, sge: Option<rfaas::rdma::Sge>) -> SendWr {
    SendWr {
        wr_id: id,
        op,
        sge,
        flags: SendFlags::SIGNALED,
    }
}

// ---------------------------------------------------------------------------------------------
// The tests (generic over the provider)
// ---------------------------------------------------------------------------------------------

/// Two-sided send/receive: payload, byte length, immediate, zero length, too-small buffer.
fn send_recv<F: Fabric>(mk: fn() -> F) -> TestResult {
    let p = pair(mk, &[], &[])?;
    let rbuf = p.a.alloc_mr(8192, Access::LOCAL_WRITE)?;
    let sbuf = p.b.alloc_mr(8192, Access::LOCAL_WRITE)?;
    for (i, len) in [0usize, 1, 100, 4096].into_iter().enumerate() {
        let i = i as u64;
        p.qp_a.post_recv(&RecvWr {
            wr_id: 100 + i,
            sge: Some(rbuf.sge(0, 4096)),
        })?;
        let data = pattern(len, i as u8);
        sbuf.write(0, &data);
        let op = if i % 2 == 0 {
            Op::Send
        } else {
            Op::SendImm(0xdead_0000 + i as u32)
        };
        p.qp_b
            .post_send(&send_wr(i, op, (len > 0).then(|| sbuf.sge(0, len as u32))))?;
        let s = one(&p.cq_b)?;
        ensure!(
            s.is_ok() && s.wr_id == i && s.opcode == WcOpcode::Send,
            "send completion {s:?}"
        );
        let r = one(&p.cq_a)?;
        ensure!(
            r.is_ok() && r.wr_id == 100 + i && r.opcode == WcOpcode::Recv,
            "recv completion {r:?}"
        );
        ensure!(
            r.byte_len as usize == len,
            "byte_len {} != {len}",
            r.byte_len
        );
        ensure!(
            r.qp_num == p.qp_a.qp_num(),
            "qp_num {} != {}",
            r.qp_num,
            p.qp_a.qp_num()
        );
        let want_imm = (i % 2 == 1).then_some(0xdead_0000 + i as u32);
        ensure!(r.imm == want_imm, "imm {:?} != {want_imm:?}", r.imm);
        ensure!(
            mr_bytes(&rbuf, 0, len) == data,
            "payload of {len} bytes differs"
        );
    }
    // A receive buffer smaller than the message: LocalLength at the receiver.
    p.qp_a.post_recv(&RecvWr {
        wr_id: 7,
        sge: Some(rbuf.sge(0, 10)),
    })?;
    p.qp_b
        .post_send(&send_wr(8, Op::Send, Some(sbuf.sge(0, 100))))?;
    let _ = one(&p.cq_b)?;
    let r = one(&p.cq_a)?;
    ensure!(
        r.wr_id == 7 && r.status == WcStatus::LocalLength,
        "short buffer gave {r:?}"
    );
    Ok(())
}

/// Write-with-immediate at many sizes (0 B to 1 MiB) and immediates: data intact, byte_len and
/// immediate exact, one posted receive consumed each.
fn write_imm_sizes<F: Fabric>(mk: fn() -> F) -> TestResult {
    let p = pair(mk, &recvs(16), &[])?;
    const MIB: usize = 1 << 20;
    let target =
        p.a.alloc_mr(MIB + 64, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
    let src = p.b.alloc_mr(MIB, Access::LOCAL_WRITE)?;
    let imms = [0u32, 1, 0x8000_0000, u32::MAX, 12345, 7];
    for (i, &len) in [0usize, 1, 63, 4096, 65536, MIB].iter().enumerate() {
        let data = pattern(len, 3 + i as u8);
        src.write(0, &data);
        let off = i * 8; // unaligned-ish destinations
        let remote = target.remote(off, len as u32);
        let sge = (len > 0).then(|| src.sge(0, len as u32));
        p.qp_b
            .post_send(&send_wr(i as u64, Op::WriteImm(remote, imms[i]), sge))?;
        let s = one(&p.cq_b)?;
        ensure!(
            s.is_ok() && s.opcode == WcOpcode::WriteImm,
            "initiator completion {s:?}"
        );
        let r = one(&p.cq_a)?;
        ensure!(
            r.is_ok() && r.opcode == WcOpcode::RecvWriteImm,
            "target completion {r:?}"
        );
        ensure!(
            r.wr_id == i as u64,
            "consumed receive {} (expected {i}: FIFO order)",
            r.wr_id
        );
        ensure!(
            r.imm == Some(imms[i]) && r.byte_len as usize == len,
            "imm/len {:?}/{}",
            r.imm,
            r.byte_len
        );
        ensure!(
            mr_bytes(&target, off, len) == data,
            "{len}-byte write corrupted"
        );
    }
    Ok(())
}

/// Plain writes produce no target completion, and are visible once a later write-with-immediate
/// on the same queue pair completes (RC ordering), every time.
fn write_then_imm_ordering<F: Fabric>(mk: fn() -> F) -> TestResult {
    let p = pair(mk, &[], &[])?;
    let target =
        p.a.alloc_mr(64 * 1024, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
    let src = p.b.alloc_mr(64 * 1024, Access::LOCAL_WRITE)?;
    let rounds = 500u32;
    for r in 0..rounds {
        p.qp_a.post_recv(&recv_wr(u64::from(r)))?;
        let len = if r % 50 == 0 { 60 * 1024 } else { 64 };
        let mut data = pattern(len, r as u8);
        data[..4].copy_from_slice(&r.to_le_bytes());
        src.write(0, &data);
        let unsignaled = SendWr {
            wr_id: 0,
            op: Op::Write(target.remote(0, len as u32)),
            sge: Some(src.sge(0, len as u32)),
            flags: SendFlags::empty(),
        };
        p.qp_b.post_send(&unsignaled)?;
        p.qp_b.post_send(&SendWr {
            wr_id: 1,
            op: Op::WriteImm(target.remote(0, 0), r),
            sge: None,
            flags: SendFlags::empty(),
        })?;
        let c = one(&p.cq_a)?;
        ensure!(
            c.is_ok() && c.imm == Some(r),
            "completion {c:?} in round {r}"
        );
        ensure!(
            mr_bytes(&target, 0, len) == data,
            "round {r}: the write was not visible at its immediate's completion"
        );
    }
    none_within(&p.cq_b, Duration::from_millis(20))
        .map_err(|e| format!("unsignaled requests completed: {e:?}"))?;
    Ok(())
}

/// RDMA read of a remote-read region.
fn read<F: Fabric>(mk: fn() -> F) -> TestResult {
    let p = pair(mk, &[], &[])?;
    let remote = p.a.alloc_mr(1 << 20, Access::REMOTE_READ)?;
    let data = pattern(1 << 20, 9);
    remote.write(0, &data);
    let local = p.b.alloc_mr(1 << 20, Access::LOCAL_WRITE)?;
    for (i, (off, len)) in [(0usize, 1usize), (100, 4000), (0, 1 << 20)]
        .into_iter()
        .enumerate()
    {
        p.qp_b.post_send(&send_wr(
            i as u64,
            Op::Read(remote.remote(off, len as u32)),
            Some(local.sge(0, len as u32)),
        ))?;
        let c = one(&p.cq_b)?;
        ensure!(
            c.is_ok() && c.opcode == WcOpcode::Read && c.byte_len as usize == len,
            "read completion {c:?}"
        );
        ensure!(
            mr_bytes(&local, 0, len) == data[off..off + len],
            "read of {len} bytes at {off} differs"
        );
    }
    Ok(())
}

/// Fetch-add and compare-swap land with no action by the target and return the old value; they
/// are atomic against concurrent initiators.
fn atomics<F: Fabric>(mk: fn() -> F) -> TestResult {
    let p = pair(mk, &[], &[])?;
    let word =
        p.a.alloc_mr(64, Access::LOCAL_WRITE | Access::REMOTE_ATOMIC)?;
    word.atomic_u64(8).store(40, Ordering::SeqCst);
    let res = p.b.alloc_mr(64, Access::LOCAL_WRITE)?;
    let w = word.remote(8, 8);
    p.qp_b.post_send(&send_wr(
        1,
        Op::FetchAdd { remote: w, add: 2 },
        Some(res.sge(0, 8)),
    ))?;
    let c = one(&p.cq_b)?;
    ensure!(
        c.is_ok() && c.opcode == WcOpcode::FetchAdd,
        "fetch-add {c:?}"
    );
    ensure!(
        res.atomic_u64(0).load(Ordering::SeqCst) == 40,
        "fetch-add returned {}",
        res.atomic_u64(0).load(Ordering::SeqCst)
    );
    ensure!(
        word.atomic_u64(8).load(Ordering::SeqCst) == 42,
        "word is {}",
        word.atomic_u64(8).load(Ordering::SeqCst)
    );
    // CAS that fails, then one that succeeds.
    for (id, cmp, want_old, want_now) in [(2u64, 7u64, 42u64, 42u64), (3, 42, 42, 99)] {
        p.qp_b.post_send(&send_wr(
            id,
            Op::CompareSwap {
                remote: w,
                compare: cmp,
                swap: 99,
            },
            Some(res.sge(0, 8)),
        ))?;
        let c = one(&p.cq_b)?;
        ensure!(c.is_ok() && c.opcode == WcOpcode::CompareSwap, "cas {c:?}");
        let old = res.atomic_u64(0).load(Ordering::SeqCst);
        let now = word.atomic_u64(8).load(Ordering::SeqCst);
        ensure!(
            old == want_old && now == want_now,
            "cas({cmp}) old {old} now {now}"
        );
    }
    // Concurrent initiators: a second queue pair from the same client adds in parallel.
    word.atomic_u64(16).store(0, Ordering::SeqCst);
    let counter = word.remote(16, 8);
    let n = 300u64;
    let q = pair_extra(&p, mk)?;
    std::thread::scope(|s| -> TestResult {
        let h = s.spawn(move || -> TestResult {
            for i in 0..n {
                q.qp.post_send(&send_wr(
                    i,
                    Op::FetchAdd {
                        remote: counter,
                        add: 1,
                    },
                    Some(q.res.sge(0, 8)),
                ))?;
                ensure!(one(&q.cq)?.is_ok(), "extra fetch-add failed");
            }
            Ok(())
        });
        for i in 0..n {
            p.qp_b.post_send(&send_wr(
                i,
                Op::FetchAdd {
                    remote: counter,
                    add: 1,
                },
                Some(res.sge(0, 8)),
            ))?;
            ensure!(one(&p.cq_b)?.is_ok(), "fetch-add failed");
        }
        h.join().map_err(|_| "thread panicked")?
    })?;
    let total = word.atomic_u64(16).load(Ordering::SeqCst);
    ensure!(total == 2 * n, "lost updates: {total} != {}", 2 * n);
    Ok(())
}

/// A provider without atomics refuses fetch-add and compare-swap at once, with an error that
/// names the missing capability, and the queue pair keeps working (libfabric providers whose
/// `fi_info` lacks `FI_ATOMIC`, e.g. libfabric 1.17's `tcp;ofi_rxm`).
#[cfg(feature = "libfabric")]
fn atomics_refused_clearly<F: Fabric>(mk: fn() -> F) -> TestResult {
    let p = pair(mk, &recvs(1), &[])?;
    let word =
        p.a.alloc_mr(64, Access::LOCAL_WRITE | Access::REMOTE_ATOMIC)?;
    let res = p.b.alloc_mr(64, Access::LOCAL_WRITE)?;
    for op in [
        Op::FetchAdd {
            remote: word.remote(8, 8),
            add: 2,
        },
        Op::CompareSwap {
            remote: word.remote(8, 8),
            compare: 0,
            swap: 1,
        },
    ] {
        match p.qp_b.post_send(&send_wr(1, op, Some(res.sge(0, 8)))) {
            Err(FabricError::Unavailable { reason, .. }) => ensure!(
                reason.contains("FI_ATOMIC") && reason.contains("use "),
                "refusal does not name the capability and the fix: {reason}"
            ),
            other => return Err(format!("atomic on a provider without atomics: {other:?}").into()),
        }
    }
    ensure!(mr_bytes(&word, 0, 64) == vec![0u8; 64], "word changed");
    p.qp_b
        .post_send(&send_wr(2, Op::WriteImm(word.remote(0, 0), 7), None))?;
    let c = one(&p.cq_a)?;
    ensure!(
        c.is_ok() && c.imm == Some(7),
        "queue pair broken after the refusal: {c:?}"
    );
    Ok(())
}

/// A second connection from `p.b`'s domain to a fresh listener in `p.a`'s domain.
struct Extra<F: Fabric> {
    qp: F::Qp,
    cq: F::Cq,
    res: F::Mr,
    _peer_qp: F::Qp,
    _peer_cq: F::Cq,
}

fn pair_extra<F: Fabric>(p: &Pair<F>, _mk: fn() -> F) -> Result<Extra<F>, Failed> {
    let listener = p.a.listen(&listen_addr(&p.a))?;
    let addr = listener.local_addr();
    let peer_cq = p.a.create_cq(64)?;
    let cq = p.b.create_cq(64)?;
    let res = p.b.alloc_mr(64, Access::LOCAL_WRITE)?;
    let (qp, peer_qp, peer_cq) = std::thread::scope(|s| -> Result<_, Failed> {
        let h = s.spawn(move || -> Result<(F::Qp, F::Cq), String> {
            let req = listener
                .next_request(WAIT)
                .map_err(|e| e.to_string())?
                .ok_or("no request")?;
            let qp = req
                .accept(QpInit::new(&peer_cq), &[], &[])
                .map_err(|e| e.to_string())?;
            Ok((qp, peer_cq))
        });
        let (qp, _) = p.b.connect(&addr, QpInit::new(&cq), &[], &[], WAIT)?;
        let (peer_qp, peer_cq) = h.join().map_err(|_| "accept panicked")??;
        Ok((qp, peer_qp, peer_cq))
    })?;
    Ok(Extra {
        qp,
        cq,
        res,
        _peer_qp: peer_qp,
        _peer_cq: peer_cq,
    })
}

/// Wrong rkey, out of bounds, missing right, misaligned atomic: an error completion at the
/// initiator, the target's memory unchanged, and the queue pair in the error state afterwards.
fn access_errors<F: Fabric>(mk: fn() -> F) -> TestResult {
    access_errors_with(mk, None, false)
}

/// [`access_errors`] for libfabric 1.17's `tcp;ofi_rxm`, whose target checks the key and the
/// range of a read but not the region's access rights: "read without the right" may succeed
/// there (the target's memory is still checked unchanged). Every other case holds as is.
#[cfg(feature = "libfabric")]
fn access_errors_read_unchecked<F: Fabric>(mk: fn() -> F) -> TestResult {
    access_errors_with(mk, None, true)
}

/// [`access_errors`] for libfabric 1.17's shm, whose target refuses a bad key or range (and
/// leaves its memory unchanged) but never tells the initiator: the request fails when the
/// queue pair's response timer runs out, with `RetryExceeded` instead of `RemoteAccess`.
#[cfg(feature = "libfabric")]
fn access_errors_unreported<F: Fabric>(mk: fn() -> F) -> TestResult {
    access_errors_with(mk, Some(WcStatus::RetryExceeded), false)
}

/// `also`: a status accepted besides the expected one (with a short response timer).
fn access_errors_with<F: Fabric>(
    mk: fn() -> F,
    also: Option<WcStatus>,
    read_right_unchecked: bool,
) -> TestResult {
    let tmo = QpTimeouts {
        response: if also.is_some() {
            Duration::from_millis(300)
        } else {
            timeouts().response
        },
        ..timeouts()
    };
    type Case = (&'static str, fn(&RemoteBuf, &RemoteBuf) -> Op, WcStatus);
    let cases: [Case; 6] = [
        (
            "wrong rkey",
            |w, _| {
                Op::Write(RemoteBuf {
                    rkey: w.rkey ^ 0x5a5a_0000,
                    ..*w
                })
            },
            WcStatus::RemoteAccess,
        ),
        (
            "out of bounds",
            |w, _| {
                Op::Write(RemoteBuf {
                    addr: w.addr + 4096 - 8,
                    ..*w
                })
            },
            WcStatus::RemoteAccess,
        ),
        (
            "before the region",
            |w, _| {
                Op::Write(RemoteBuf {
                    addr: w.addr - 8,
                    ..*w
                })
            },
            WcStatus::RemoteAccess,
        ),
        (
            "write to a read-only region",
            |_, r| Op::WriteImm(*r, 1),
            WcStatus::RemoteAccess,
        ),
        (
            "atomic without the right",
            |w, _| Op::FetchAdd { remote: *w, add: 1 },
            WcStatus::RemoteAccess,
        ),
        (
            "read without the right",
            |w, _| Op::Read(*w),
            WcStatus::RemoteAccess,
        ),
    ];
    for (name, op, want) in cases {
        let p = pair_with(mk, &recvs(4), &[], tmo)?;
        let wmr =
            p.a.alloc_mr(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
        let rmr = p.a.alloc_mr(4096, Access::REMOTE_READ)?;
        let before_w = pattern(4096, 1);
        let before_r = pattern(4096, 2);
        wmr.write(0, &before_w);
        rmr.write(0, &before_r);
        let src = p.b.alloc_mr(4096, Access::LOCAL_WRITE)?;
        src.write(0, &[0xee; 64]);
        let wbuf = wmr.remote(0, 64);
        let rbuf = rmr.remote(0, 64);
        match p
            .qp_b
            .post_send(&send_wr(1, op(&wbuf, &rbuf), Some(src.sge(0, 64))))
        {
            // A provider without atomics refuses them outright (checked by name); nothing to
            // check at the target for this case.
            Err(FabricError::Unavailable { reason, .. })
                if name.starts_with("atomic") && reason.contains("FI_ATOMIC") =>
            {
                continue
            }
            r => r?,
        }
        let c = one(&p.cq_b)?;
        if read_right_unchecked && name == "read without the right" && c.is_ok() {
            ensure!(
                mr_bytes(&wmr, 0, 4096) == before_w,
                "{name}: target memory changed"
            );
            continue;
        }
        ensure!(
            c.status == want || Some(c.status) == also,
            "{name}: got {:?}, expected {want:?}",
            c.status
        );
        ensure!(
            mr_bytes(&wmr, 0, 4096) == before_w && mr_bytes(&rmr, 0, 4096) == before_r,
            "{name}: target memory changed"
        );
        // The queue pair is now in the error state: the next request flushes.
        p.qp_b
            .post_send(&send_wr(2, Op::Write(wbuf), Some(src.sge(0, 8))))?;
        let c = one(&p.cq_b)?;
        ensure!(
            c.wr_id == 2 && c.status == WcStatus::WrFlush,
            "{name}: request after the error gave {c:?}"
        );
        ensure!(
            !p.qp_b.is_connected(),
            "{name}: queue pair still reports connected"
        );
        ensure!(
            mr_bytes(&wmr, 0, 4096) == before_w,
            "{name}: flushed write reached the target"
        );
    }
    // Misaligned atomic in a region that allows atomics.
    let p = pair_with(mk, &[], &[], tmo)?;
    let amr =
        p.a.alloc_mr(64, Access::LOCAL_WRITE | Access::REMOTE_ATOMIC)?;
    let src = p.b.alloc_mr(64, Access::LOCAL_WRITE)?;
    match p.qp_b.post_send(&send_wr(
        1,
        Op::FetchAdd {
            remote: amr.remote(4, 8),
            add: 1,
        },
        Some(src.sge(0, 8)),
    )) {
        Err(FabricError::Unavailable { reason, .. }) if reason.contains("FI_ATOMIC") => {
            return Ok(())
        }
        r => r?,
    }
    let c = one(&p.cq_b)?;
    // IB: an atomic at an address that is not 8-byte aligned is an invalid request (NAK).
    ensure!(
        c.status == WcStatus::RemoteInvalidRequest,
        "misaligned atomic gave {c:?}"
    );
    ensure!(
        mr_bytes(&amr, 0, 64) == vec![0u8; 64],
        "misaligned atomic changed memory"
    );
    Ok(())
}

/// A local SGE outside any registered region is refused (LocalProtection), and a region without
/// LOCAL_WRITE cannot receive read results.
fn local_protection<F: Fabric>(mk: fn() -> F) -> TestResult {
    let p = pair(mk, &recvs(4), &[])?;
    let target = p.a.alloc_mr(
        4096,
        Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
    )?;
    let src = p.b.alloc_mr(4096, Access::LOCAL_WRITE)?;
    let mut sge = src.sge(0, 64);
    sge.len = 8192; // beyond the region
    p.qp_b
        .post_send(&send_wr(1, Op::Write(target.remote(0, 64)), Some(sge)))?;
    let c = one(&p.cq_b)?;
    ensure!(
        c.status == WcStatus::LocalProtection,
        "oversized SGE gave {c:?}"
    );
    let p = pair(mk, &recvs(4), &[])?;
    let target = p.a.alloc_mr(4096, Access::REMOTE_READ)?;
    let ro = p.b.alloc_mr(4096, Access::REMOTE_READ)?; // no LOCAL_WRITE
    p.qp_b.post_send(&send_wr(
        1,
        Op::Read(target.remote(0, 64)),
        Some(ro.sge(0, 64)),
    ))?;
    let c = one(&p.cq_b)?;
    ensure!(
        c.status == WcStatus::LocalProtection,
        "read into a region without LOCAL_WRITE gave {c:?}"
    );
    Ok(())
}

/// With no receive posted, a write-with-immediate fails after the RNR timeout, not forever.
fn rnr_timeout<F: Fabric>(mk: fn() -> F) -> TestResult {
    let p = pair(mk, &[], &[])?;
    let target =
        p.a.alloc_mr(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
    let start = Instant::now();
    p.qp_b
        .post_send(&send_wr(1, Op::WriteImm(target.remote(0, 0), 5), None))?;
    let c = one(&p.cq_b)?;
    let took = start.elapsed();
    ensure!(c.status == WcStatus::RnrRetryExceeded, "got {c:?}");
    ensure!(
        took >= Duration::from_millis(150),
        "RNR after {took:?} (timeout 200 ms; `one` waits at most {WAIT:?})"
    );
    none_within(&p.cq_a, Duration::from_millis(20))?;
    Ok(())
}

/// A receive posted while the sender waits for one unblocks it (receiver-not-ready is a wait, not
/// an error, while it lasts).
fn rnr_then_post<F: Fabric>(mk: fn() -> F) -> TestResult {
    // An RNR timeout longer than the test: the write waits for the receive however late it
    // comes on a busy machine.
    let rnr = QpTimeouts {
        rnr: NO_HANG,
        ..timeouts()
    };
    let p = pair_with(mk, &[], &[], rnr)?;
    let target =
        p.a.alloc_mr(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
    let Pair {
        qp_a,
        cq_a,
        qp_b,
        cq_b,
        a: _a,
        b: _b,
    } = p;
    let remote = target.remote(0, 0);
    // Posted from another thread: on shm, post_send itself waits for the receive.
    let sender = std::thread::spawn(move || {
        qp_b.post_send(&send_wr(1, Op::WriteImm(remote, 6), None))
            .map(|_| qp_b)
            .map_err(|e| e.to_string())
    });
    // Without a receive the write does not complete (a check, not an ordering: the receive
    // below is late, or not, either way).
    none_within(&cq_b, Duration::from_millis(50))?;
    qp_a.post_recv(&recv_wr(77))?;
    let _qp_b = sender.join().map_err(|_| "sender panicked")??;
    ensure!(
        one(&cq_b)?.is_ok(),
        "late receive did not satisfy the waiting write"
    );
    let c = one(&cq_a)?;
    ensure!(
        c.is_ok() && c.wr_id == 77 && c.imm == Some(6),
        "target got {c:?}"
    );
    Ok(())
}

/// 64 connections feed one completion queue; every completion names its queue pair.
fn shared_cq_64<F: Fabric>(mk: fn() -> F) -> TestResult {
    let server = mk();
    let client = mk();
    let scq = server.create_cq(256)?;
    let ccq = client.create_cq(256)?;
    let listener = server.listen(&listen_addr(&server))?;
    let addr = listener.local_addr();
    let target = server.alloc_mr(64 * 64, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
    let src = client.alloc_mr(64, Access::LOCAL_WRITE)?;
    let mut cqps = Vec::new();
    let (sqps, scq) = std::thread::scope(|s| -> Result<_, Failed> {
        let h = s.spawn(move || -> Result<(Vec<F::Qp>, F::Cq), String> {
            let mut v = Vec::new();
            for _ in 0..64 {
                let req = listener
                    .next_request(WAIT)
                    .map_err(|e| e.to_string())?
                    .ok_or("missing request")?;
                v.push(
                    req.accept(QpInit::new(&scq), &[recv_wr(0)], &[])
                        .map_err(|e| e.to_string())?,
                );
            }
            Ok((v, scq))
        });
        for _ in 0..64 {
            cqps.push(client.connect(&addr, QpInit::new(&ccq), &[], &[], WAIT)?.0);
        }
        Ok(h.join().map_err(|_| "accept panicked")??)
    })?;
    for (i, qp) in cqps.iter().enumerate() {
        src.write(0, &[i as u8; 64]);
        qp.post_send(&SendWr {
            wr_id: i as u64,
            op: Op::WriteImm(target.remote(i * 64, 64), i as u32),
            sge: Some(src.sge(0, 64)),
            flags: SendFlags::empty(),
        })?;
    }
    let mut seen = std::collections::HashMap::new();
    let mut wcs = [Wc::EMPTY; 16];
    let deadline = Instant::now() + WAIT;
    while seen.len() < 64 && Instant::now() < deadline {
        let n = scq.poll_wait(&mut wcs, Duration::from_millis(100), SPIN)?;
        for wc in &wcs[..n] {
            ensure!(
                wc.is_ok() && wc.opcode == WcOpcode::RecvWriteImm,
                "completion {wc:?}"
            );
            let i = wc.imm.unwrap_or(u32::MAX);
            ensure!(seen.insert(i, wc.qp_num).is_none(), "immediate {i} twice");
        }
    }
    ensure!(seen.len() == 64, "{} of 64 completions arrived", seen.len());
    let qp_nums: std::collections::HashSet<u32> = sqps.iter().map(|q| q.qp_num()).collect();
    ensure!(qp_nums.len() == 64, "queue pair numbers are not distinct");
    for (imm, qpn) in &seen {
        ensure!(
            qp_nums.contains(qpn),
            "completion for imm {imm} names unknown qp {qpn}"
        );
        ensure!(
            mr_bytes(&target, *imm as usize * 64, 64) == vec![*imm as u8; 64],
            "data of connection {imm}"
        );
    }
    Ok(())
}

/// Blocking: an armed queue's wait times out when nothing comes, wakes when something does, and
/// a solicited-only arm ignores unsolicited completions; the fd turns readable.
fn blocking_wait<F: Fabric>(mk: fn() -> F) -> TestResult {
    let p = pair(mk, &recvs(8), &[])?;
    let target =
        p.a.alloc_mr(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
    let mut wc = [Wc::EMPTY; 4];
    p.cq_a.req_notify(false)?;
    ensure!(p.cq_a.poll(&mut wc) == 0, "completion out of nowhere");
    let t = Instant::now();
    ensure!(
        !p.cq_a.wait(Duration::from_millis(100))?,
        "wait returned true with nothing to wait for"
    );
    ensure!(
        t.elapsed() >= Duration::from_millis(90),
        "wait returned after {:?} (timeout 100 ms)",
        t.elapsed()
    );

    let Pair {
        qp_b,
        cq_a,
        cq_b,
        a: _a,
        b: _b,
        qp_a: _qp_a,
    } = p;
    let remote = target.remote(0, 0);
    let post = move |qp: &F::Qp, imm: u32, solicited: bool| -> TestResult {
        let flags = if solicited {
            SendFlags::SOLICITED
        } else {
            SendFlags::empty()
        };
        qp.post_send(&SendWr {
            wr_id: 0,
            op: Op::WriteImm(remote, imm),
            sge: None,
            flags,
        })?;
        Ok(())
    };
    // Arm for everything, sleep, get woken by a completion sent from another thread.
    cq_a.req_notify(false)?;
    ensure!(
        cq_a.poll(&mut wc) == 0,
        "unexpected completion before the wake test"
    );
    // The completion is sent once this thread sleeps in `wait` (the only place it can sleep).
    let waiter = nix::unistd::gettid();
    let sender = std::thread::spawn(move || {
        wait_until_asleep(waiter)?;
        post(&qp_b, 1, false)
            .map(|_| qp_b)
            .map_err(|e| format!("{e:?}"))
    });
    let woke = cq_a.wait(WAIT)?;
    let qp_b = sender.join().map_err(|_| "sender panicked")??;
    let post = |imm, sol| post(&qp_b, imm, sol);
    ensure!(woke, "armed wait was not woken by a completion");
    ensure!(
        cq_a.poll(&mut wc) == 1 && wc[0].imm == Some(1),
        "woken but no completion"
    );

    // Solicited only: an unsolicited completion does not wake; a solicited one does.
    cq_a.req_notify(true)?;
    post(2, false)?;
    ensure!(
        !cq_a.wait(Duration::from_millis(100))?,
        "unsolicited completion woke a solicited-only wait"
    );
    post(3, true)?;
    ensure!(cq_a.wait(WAIT)?, "solicited completion did not wake");
    let n = cq_a.poll(&mut wc);
    ensure!(
        n == 2 && wc[0].imm == Some(2) && wc[1].imm == Some(3),
        "after solicited wake: {:?}",
        &wc[..n]
    );

    // The fd is pollable.
    cq_a.req_notify(false)?;
    post(4, false)?;
    let readable = rfaas::rdma::notify::wait_readable(cq_a.raw_fd(), WAIT)?;
    ensure!(
        readable,
        "completion fd not readable after an armed completion"
    );
    drop(cq_b);
    Ok(())
}

/// Malformed connection attempts (garbage, a handshake cut off half way, nothing at all) are
/// refused without disturbing a good connection; a reject carries its reason to the connector.
fn bad_handshakes<F: Fabric>(mk: fn() -> F) -> TestResult {
    let a = mk();
    let b = mk();
    let cq_a = a.create_cq(64)?;
    let cq_b = b.create_cq(64)?;
    let listener = a.listen(&listen_addr(&a))?;
    let addr = listener.local_addr();
    // Bad peers: connect with the raw transport and misbehave.
    let _junk = raw_junk_connections(a.provider(), &addr)?;
    // A good connection still gets through quickly.
    let t = Instant::now();
    let (qp_b, qp_a, cq_a, listener) = std::thread::scope(|s| -> Result<_, Failed> {
        let h = s.spawn(move || -> Result<_, String> {
            let req = listener
                .next_request(WAIT)
                .map_err(|e| e.to_string())?
                .ok_or("good request never arrived")?;
            let qp = req
                .accept(QpInit::new(&cq_a), &[recv_wr(1)], b"ok")
                .map_err(|e| e.to_string())?;
            Ok((qp, cq_a, listener))
        });
        let r = b.connect(&addr, QpInit::new(&cq_b), &[], b"good", WAIT)?;
        let (qp_a, cq_a, listener) = h.join().map_err(|_| "accept panicked")??;
        Ok((r.0, qp_a, cq_a, listener))
    })?;
    // Not queued behind them: the silent one (last) is still open, not yet cut by the
    // listener's handshake timeout, when the good one is through.
    ensure!(
        _junk.last().map_or(true, |s| still_open(s.as_ref())),
        "good connection delayed {:?} until a silent one was cut",
        t.elapsed()
    );
    qp_b.post_send(&send_wr(1, Op::WriteImm(RemoteBuf::default(), 9), None))?;
    ensure!(
        one(&cq_a)?.imm == Some(9),
        "good connection does not carry data"
    );
    drop((qp_a, qp_b));
    // Reject with a reason.
    let rejecter = std::thread::spawn(move || {
        if let Ok(Some(req)) = listener.next_request(WAIT) {
            req.reject("no capacity for you");
        }
        listener
    });
    let r = b.connect(&addr, QpInit::new(&cq_b), &[], b"please", WAIT);
    let _listener = rejecter.join().map_err(|_| "rejecter panicked")?;
    match r {
        Err(FabricError::Rejected(why)) => {
            ensure!(why.contains("no capacity for you"), "reject reason {why:?}")
        }
        Err(e) => return Err(format!("rejected connect failed with {e}, not Rejected").into()),
        Ok(_) => return Err("rejected connect succeeded".into()),
    }
    // Oversized private data is refused locally with a clear error.
    let big = vec![0u8; rfaas::rdma::MAX_PRIVATE_DATA + 1];
    ensure!(
        b.connect(&addr, QpInit::new(&cq_b), &[], &big, WAIT)
            .is_err(),
        "oversized private data accepted"
    );
    Ok(())
}

/// Opens misbehaving raw connections to a listener; they are kept open while the caller tests.
fn raw_junk_connections(
    provider: rfaas::rdma::Provider,
    addr: &str,
) -> Result<Vec<Box<dyn std::any::Any>>, Failed> {
    use std::io::Write;
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    match provider {
        rfaas::rdma::Provider::Tcp | rfaas::rdma::Provider::Ofi => {
            for junk in [
                &b"GET / HTTP/1.1\r\n\r\n"[..],
                &[0xff; 3][..],
                &[0u8; 200][..],
                &[],
            ] {
                let mut s = std::net::TcpStream::connect(addr)?;
                s.write_all(junk)?;
                keep.push(Box::new(s));
            }
        }
        rfaas::rdma::Provider::Shm => {
            use nix::sys::socket::{
                connect, send, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
            };
            let port = addr
                .rsplit_once(':')
                .map(|(_, p)| p)
                .ok_or("shm address without port")?;
            let ua = UnixAddr::new_abstract(format!("rfaas-shm-{port}").as_bytes())
                .map_err(|e| e.to_string())?;
            for junk in [&b"RFAASHM1"[..], &[0xff; 3][..], &[0u8; 200][..], &[]] {
                let s = socket(
                    AddressFamily::Unix,
                    SockType::SeqPacket,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(|e| e.to_string())?;
                connect(std::os::fd::AsRawFd::as_raw_fd(&s), &ua).map_err(|e| e.to_string())?;
                if !junk.is_empty() {
                    send(std::os::fd::AsRawFd::as_raw_fd(&s), junk, MsgFlags::empty())
                        .map_err(|e| e.to_string())?;
                }
                keep.push(Box::new(s));
            }
        }
        rfaas::rdma::Provider::Verbs => {}
    }
    Ok(keep)
}

/// Whether a connection of [`raw_junk_connections`] is still open: nothing to read yet, and
/// not closed by the other end.
fn still_open(s: &dyn std::any::Any) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::{AsFd, AsRawFd};
    let fd = if let Some(t) = s.downcast_ref::<std::net::TcpStream>() {
        t.as_fd().as_raw_fd()
    } else if let Some(o) = s.downcast_ref::<std::os::fd::OwnedFd>() {
        o.as_raw_fd()
    } else {
        return true;
    };
    let mut b = [0u8; 1];
    matches!(
        recv(fd, &mut b, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
        Err(nix::errno::Errno::EAGAIN)
    )
}

// ---------------------------------------------------------------------------------------------
// Multi-process tests
// ---------------------------------------------------------------------------------------------

const PEER_ROLE: &str = "RFAAS_CONFORMANCE_PEER";
const PEER_ADDR: &str = "RFAAS_CONFORMANCE_ADDR";
const PEER_PROVIDER: &str = "RFAAS_CONFORMANCE_PROVIDER";

/// How a peer process names the provider of `f`: `ofi:<libfabric provider>` for ofi.
fn peer_provider<F: Fabric>(f: &F) -> String {
    #[cfg(feature = "libfabric")]
    if let Some(o) = (f as &dyn std::any::Any).downcast_ref::<rfaas::rdma::ofi::OfiFabric>() {
        return format!("ofi:{}", o.info().provider);
    }
    f.provider().name().to_string()
}

fn spawn_peer(role: &str, provider: &str, addr: &str) -> Result<Child, Failed> {
    let exe = std::env::current_exe()?;
    Ok(Command::new(exe)
        .env(PEER_ROLE, role)
        .env(PEER_ADDR, addr)
        .env(PEER_PROVIDER, provider)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?)
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Accepts one connection from a peer process, with `n` receives posted.
fn accept_peer<F: Fabric>(
    f: &F,
    l: &F::Listener,
    cq: &F::Cq,
    n: u64,
    pd: &[u8],
) -> Result<F::Qp, Failed> {
    let _ = f;
    let req = l
        .next_request(Duration::from_secs(20))?
        .ok_or("peer process never connected")?;
    Ok(req.accept(
        QpInit {
            send_cq: cq,
            recv_cq: cq,
            caps: caps(),
            timeouts: timeouts(),
        },
        &recvs(n),
        pd,
    )?)
}

/// Data crosses a real process boundary intact: the peer echoes writes back (64 B and 1 MiB).
fn cross_process_echo<F: Fabric>(mk: fn() -> F) -> TestResult {
    let f = mk();
    let cq = f.create_cq(64)?;
    let l = f.listen(&listen_addr(&f))?;
    let inbox = f.alloc_mr(1 << 20, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
    let src = f.alloc_mr(1 << 20, Access::LOCAL_WRITE)?;
    let _peer = KillOnDrop(spawn_peer("echo", &peer_provider(&f), &l.local_addr())?);
    let qp = accept_peer(&f, &l, &cq, 16, &inbox.remote(0, 1 << 20).to_bytes())?;
    // The peer tells us where its inbox is with its first write-with-immediate (imm = u32::MAX).
    let hello = one(&cq)?;
    ensure!(
        hello.is_ok() && hello.imm == Some(u32::MAX),
        "peer hello {hello:?}"
    );
    let mut raw = [0u8; 16];
    inbox.read(0, &mut raw);
    let peer_inbox = RemoteBuf::from_bytes(&raw).ok_or("bad peer inbox")?;
    for (i, len) in [64usize, 1 << 20].into_iter().enumerate() {
        let data = pattern(len, 40 + i as u8);
        src.write(0, &data);
        qp.post_recv(&recv_wr(100))?;
        qp.post_send(&send_wr(
            i as u64,
            Op::WriteImm(peer_inbox, len as u32),
            Some(src.sge(0, len as u32)),
        ))?;
        let mut got_echo = false;
        for _ in 0..2 {
            let c = one(&cq)?;
            ensure!(c.is_ok(), "completion {c:?}");
            if c.opcode == WcOpcode::RecvWriteImm {
                ensure!(
                    c.byte_len as usize == len && c.imm == Some(len as u32),
                    "echo completion {c:?}"
                );
                got_echo = true;
            }
        }
        ensure!(got_echo, "no echo for {len} bytes");
        ensure!(
            mr_bytes(&inbox, 0, len) == data,
            "echo of {len} bytes differs across processes"
        );
    }
    Ok(())
}

/// A peer killed with SIGKILL: posted receives flush, new requests fail, and the queue pair
/// reports disconnected, within a bounded time; nothing hangs.
fn peer_killed<F: Fabric>(mk: fn() -> F) -> TestResult {
    let f = mk();
    let cq = f.create_cq(64)?;
    let l = f.listen(&listen_addr(&f))?;
    let mut peer = KillOnDrop(spawn_peer("idle", &peer_provider(&f), &l.local_addr())?);
    let qp = accept_peer(&f, &l, &cq, 4, &[])?;
    // The peer is connected (accepted) and idle; kill it.
    peer.0.kill()?;
    let killed = Instant::now();
    let mut flushed = 0;
    let mut wc = [Wc::EMPTY; 8];
    while flushed < 4 && killed.elapsed() < NO_HANG {
        let n = cq.poll_wait(&mut wc, Duration::from_millis(200), SPIN)?;
        for c in &wc[..n] {
            ensure!(
                c.status != WcStatus::Success,
                "success completion after the peer died: {c:?}"
            );
            flushed += 1;
        }
    }
    ensure!(
        flushed == 4,
        "{flushed} of 4 posted receives flushed within {NO_HANG:?} of SIGKILL"
    );
    ensure!(
        !qp.is_connected(),
        "queue pair still connected after the peer died"
    );
    let buf = f.alloc_mr(64, Access::LOCAL_WRITE)?;
    qp.post_send(&send_wr(
        9,
        Op::WriteImm(
            RemoteBuf {
                addr: 0,
                rkey: 1,
                len: 8,
            },
            1,
        ),
        Some(buf.sge(0, 8)),
    ))?;
    let c = one(&cq)?;
    // The queue pair is in the error state: the request is flushed, not sent.
    ensure!(
        c.wr_id == 9 && c.status == WcStatus::WrFlush,
        "request to a dead peer gave {c:?}"
    );
    Ok(())
}

/// shm only: a process running as another user cannot attach (root drops to `nobody`).
fn other_uid_refused(_: fn() -> ShmFabric) -> TestResult {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root to run a peer as another uid (CI runs as root)".into());
    }
    let f = ShmFabric::new()?;
    let l = f.listen(&listen_addr(&f))?;
    let mut peer = KillOnDrop(spawn_peer("other-uid", "shm", &l.local_addr())?);
    let status = wait_child(&mut peer.0, Duration::from_secs(10))?;
    ensure!(
        status == Some(0),
        "other-uid peer exit status {status:?} (0 = refused, 3 = it attached)"
    );
    ensure!(
        l.next_request(Duration::from_millis(200))?.is_none(),
        "listener handed out a request from another uid"
    );
    Ok(())
}

/// Waits (bounded) until thread `tid` of this process sleeps (state `S` in `/proc`).
fn wait_until_asleep(tid: nix::unistd::Pid) -> Result<(), String> {
    let stat = format!("/proc/self/task/{tid}/stat");
    let deadline = Instant::now() + NO_HANG;
    loop {
        let text = std::fs::read_to_string(&stat).map_err(|e| format!("{stat}: {e}"))?;
        // The state follows the command name, which is in parentheses.
        let state = text
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state == Some("S") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("thread {tid} never slept (state {state:?})"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_child(c: &mut Child, d: Duration) -> Result<Option<i32>, Failed> {
    let deadline = Instant::now() + d;
    loop {
        if let Some(st) = c.try_wait()? {
            return Ok(st.code());
        }
        if Instant::now() > deadline {
            return Err("peer process did not exit".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Peer roles (this binary re-executed)
// ---------------------------------------------------------------------------------------------

fn peer_main(role: &str) -> i32 {
    let addr = std::env::var(PEER_ADDR).unwrap_or_default();
    let provider = std::env::var(PEER_PROVIDER).unwrap_or_default();
    let r = match provider.as_str() {
        "shm" => peer_role(role, &addr, || ShmFabric::new().expect("shm domain")),
        "tcp" => peer_role(role, &addr, || {
            rfaas::rdma::tcp::TcpFabric::new().expect("tcp domain")
        }),
        #[cfg(feature = "libfabric")]
        other if other.starts_with("ofi:") => peer_role(role, &addr, || {
            rfaas::rdma::ofi::OfiFabric::with_provider(Some(&other[4..])).expect("ofi domain")
        }),
        #[cfg(feature = "verbs")]
        "verbs" => peer_role(role, &addr, || {
            rfaas::rdma::verbs::VerbsFabric::open_default().expect("verbs device")
        }),
        other => Err(format!("unknown provider {other}")),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("peer {role}: {e}");
            2
        }
    }
}

fn peer_role<F: Fabric>(role: &str, addr: &str, mk: impl Fn() -> F) -> Result<i32, String> {
    if role == "other-uid" {
        nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).map_err(|e| e.to_string())?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(|e| e.to_string())?;
        let f = mk();
        let cq = f.create_cq(16).map_err(|e| e.to_string())?;
        return Ok(
            match f.connect(addr, QpInit::new(&cq), &[], &[], Duration::from_secs(3)) {
                Ok(_) => 3,
                Err(e) => {
                    eprintln!("other-uid peer refused as expected: {e}");
                    0
                }
            },
        );
    }
    let f = mk();
    let cq = f.create_cq(64).map_err(|e| e.to_string())?;
    let inbox = f
        .alloc_mr(1 << 20, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
        .map_err(|e| e.to_string())?;
    let init = QpInit {
        send_cq: &cq,
        recv_cq: &cq,
        caps: caps(),
        timeouts: timeouts(),
    };
    let (qp, pd) = f
        .connect(addr, init, &recvs(16), &[], Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    if role == "idle" {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    // echo: announce our inbox, then send every write back.
    let back = RemoteBuf::from_bytes(&pd).ok_or("no inbox in private data")?;
    let hello = f
        .alloc_mr(16, Access::LOCAL_WRITE)
        .map_err(|e| e.to_string())?;
    hello.write(0, &inbox.remote(0, 1 << 20).to_bytes());
    qp.post_send(&SendWr {
        wr_id: 0,
        op: Op::WriteImm(back, u32::MAX),
        sge: Some(hello.sge(0, 16)),
        flags: SendFlags::empty(),
    })
    .map_err(|e| e.to_string())?;
    let mut wc = [Wc::EMPTY; 4];
    loop {
        let n = cq
            .poll_wait(&mut wc, Duration::from_secs(30), SPIN)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(0);
        }
        for c in &wc[..n] {
            if c.status != WcStatus::Success {
                return Ok(0); // the test closed the connection
            }
            if c.opcode == WcOpcode::RecvWriteImm {
                qp.post_recv(&recv_wr(0)).map_err(|e| e.to_string())?;
                let len = c.byte_len;
                qp.post_send(&SendWr {
                    wr_id: 1,
                    op: Op::WriteImm(back, len),
                    sge: (len > 0).then(|| inbox.sge(0, len)),
                    flags: SendFlags::empty(),
                })
                .map_err(|e| e.to_string())?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

macro_rules! suite {
    ($trials:ident, $name:literal, $mk:expr, [$($test:ident),* $(,)?]) => {
        $(
            $trials.push(Trial::test(concat!($name, "::", stringify!($test)), || $test($mk)));
        )*
    };
}

/// [`suite!`] with the tests of the contract every provider without exceptions passes (shm,
/// tcp, verbs), then `extra` tests of this provider.
macro_rules! contract_suite {
    ($trials:ident, $name:literal, $mk:expr $(, $extra:ident)* $(,)?) => {
        suite!(
            $trials,
            $name,
            $mk,
            [
                send_recv,
                write_imm_sizes,
                write_then_imm_ordering,
                read,
                atomics,
                access_errors,
                local_protection,
                rnr_timeout,
                rnr_then_post,
                shared_cq_64,
                blocking_wait,
                bad_handshakes,
                cross_process_echo,
                peer_killed,
                $($extra,)*
            ]
        )
    };
}

/// [`suite!`] with a run-time name prefix.
#[cfg(feature = "libfabric")]
macro_rules! suite_named {
    ($trials:ident, $name:expr, $mk:expr, [$($test:ident),* $(,)?]) => {
        $(
            $trials.push(Trial::test(format!("{}::{}", $name, stringify!($test)), move || $test($mk)));
        )*
    };
}

fn main() {
    if let Ok(role) = std::env::var(PEER_ROLE) {
        std::process::exit(peer_main(&role));
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    fn shm() -> ShmFabric {
        ShmFabric::new().expect("shm domain")
    }
    contract_suite!(trials, "shm", shm, other_uid_refused);
    fn tcp() -> rfaas::rdma::tcp::TcpFabric {
        rfaas::rdma::tcp::TcpFabric::new().expect("tcp domain")
    }
    contract_suite!(trials, "tcp", tcp);
    register_verbs(&mut trials);
    #[cfg(feature = "libfabric")]
    ofi_suites(&mut trials);
    libtest_mimic::run(&args, trials).exit();
}

/// The `ofi` provider on libfabric's own software providers, which Debian ships: `shm` (one
/// node) and `tcp;ofi_rxm` (reliable datagrams over TCP), plus the libfabric provider named by
/// `RFAAS_TEST_OFI_PROVIDER` (a cluster's `cxi`, `efa`, `opx`, `verbs;ofi_rxm`).
///
/// Every test runs on every libfabric provider, except: on libfabric's `shm`,
/// `access_errors_unreported` replaces `access_errors` (shm 1.17 never reports a refused write
/// to the initiator; the request fails on rfaas's response timer instead); on `tcp;ofi_rxm`,
/// `access_errors_read_unchecked` (its target does not check read rights); and `atomics` and the
/// atomic case of
/// `access_errors` on a provider whose `fi_info` lacks `FI_ATOMIC` (libfabric 1.17's
/// `tcp;ofi_rxm`): there the test instead checks that an atomic is refused with an error naming
/// the missing capability (`atomics_refused_clearly`). `other_uid_refused` is an shm-provider
/// test (libfabric's shm has no such check: any local process may connect).
#[cfg(feature = "libfabric")]
fn ofi_suites(trials: &mut Vec<Trial>) {
    use rfaas::rdma::ofi::OfiFabric;
    fn ofi_shm() -> OfiFabric {
        OfiFabric::with_provider(Some("shm")).expect("ofi domain on libfabric shm")
    }
    fn ofi_tcp() -> OfiFabric {
        OfiFabric::with_provider(Some("tcp;ofi_rxm")).expect("ofi domain on libfabric tcp;ofi_rxm")
    }
    fn ofi_env() -> OfiFabric {
        let p = std::env::var(rfaas::env::TEST_OFI_PROVIDER).unwrap_or_default();
        OfiFabric::with_provider(Some(&p)).expect("ofi domain on RFAAS_TEST_OFI_PROVIDER")
    }
    let add = |trials: &mut Vec<Trial>, name: &str, mk: fn() -> OfiFabric| {
        let has_atomics = mk().info().atomics;
        let name = format!("ofi-{name}");
        suite_named!(
            trials,
            name,
            mk,
            [
                send_recv,
                write_imm_sizes,
                write_then_imm_ordering,
                read,
                local_protection,
                rnr_timeout,
                rnr_then_post,
                shared_cq_64,
                blocking_wait,
                bad_handshakes,
                cross_process_echo,
                peer_killed,
            ]
        );
        let prov = mk().info().provider.clone();
        if prov == "shm" {
            suite_named!(trials, name, mk, [access_errors_unreported]);
        } else if prov == "tcp;ofi_rxm" {
            suite_named!(trials, name, mk, [access_errors_read_unchecked]);
        } else {
            suite_named!(trials, name, mk, [access_errors]);
        }
        if has_atomics {
            suite_named!(trials, name, mk, [atomics]);
        } else {
            suite_named!(trials, name, mk, [atomics_refused_clearly]);
        }
    };
    trials.push(Trial::test(
        "ofi::missing_provider_is_a_clear_error",
        || match OfiFabric::with_provider(Some("no_such_provider")) {
            Err(FabricError::Unavailable { reason, .. }) => {
                ensure!(
                    reason.contains("no_such_provider") && reason.contains("fi_info"),
                    "unhelpful error: {reason}"
                );
                Ok(())
            }
            Err(e) => Err(format!("wrong error kind: {e}").into()),
            Ok(_) => Err("opened a provider that does not exist".into()),
        },
    ));
    trials.push(Trial::test("ofi::provider_mismatch_is_rejected", || {
        let a = ofi_shm();
        let b = ofi_tcp();
        let l = a.listen("127.0.0.1:0")?;
        let cq = b.create_cq(16)?;
        let addr = l.local_addr();
        let waiter = std::thread::spawn(move || l.next_request(Duration::from_millis(500)));
        let r = b.connect(&addr, QpInit::new(&cq), &[], b"x", WAIT);
        let got = waiter.join().map_err(|_| "listener panicked")??;
        ensure!(
            got.is_none(),
            "the listener handed out a mismatched request"
        );
        match r {
            Err(FabricError::Rejected(why)) => {
                ensure!(why.contains("mismatch"), "reason {why:?}");
                Ok(())
            }
            other => Err(format!("mismatched connect gave {:?}", other.map(|_| ())).into()),
        }
    }));
    add(trials, "shm", ofi_shm);
    add(trials, "tcp-rxm", ofi_tcp);
    if std::env::var(rfaas::env::TEST_OFI_PROVIDER).is_ok_and(|p| !p.is_empty()) {
        add(trials, "env", ofi_env);
    }
}

/// The device `RFAAS_VERBS_DEVICE` names, if any.
fn named_verbs_device() -> Option<String> {
    std::env::var(rfaas::env::VERBS_DEVICE)
        .ok()
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
}

/// Registers the suite for verbs when a device is named.
#[cfg(feature = "verbs")]
fn register_verbs(trials: &mut Vec<Trial>) {
    use rfaas::rdma::verbs::VerbsFabric;
    let Some(device) = named_verbs_device() else {
        return;
    };
    let host = match std::env::var(rfaas::env::TEST_VERBS_ADDR) {
        Ok(a) if !a.trim().is_empty() => Ok(a.trim().trim_matches(['[', ']']).to_string()),
        _ => VerbsFabric::open(Some(&device))
            .map_err(|e| e.to_string())
            .and_then(|f| {
                f.local_addrs()
                    .first()
                    .map(|ip| ip.to_string())
                    .ok_or_else(|| format!("{device} has no IP address: set RFAAS_TEST_VERBS_ADDR"))
            }),
    };
    let host = match host {
        Ok(h) => h,
        Err(e) => {
            // Named but unusable: one failing trial says why, rather than a silent skip.
            trials.push(Trial::test("verbs::device_usable", move || {
                Err(format!("RFAAS_VERBS_DEVICE={device}: {e}").into())
            }));
            return;
        }
    };
    let _ = VERBS_HOST.set(host);
    fn verbs() -> VerbsFabric {
        VerbsFabric::open_default().expect("verbs device")
    }
    contract_suite!(trials, "verbs", verbs);
}

/// Without the feature a named device is an error, not a silent skip.
#[cfg(not(feature = "verbs"))]
fn register_verbs(trials: &mut Vec<Trial>) {
    if let Some(device) = named_verbs_device() {
        trials.push(Trial::test("verbs::not_compiled", move || {
            Err(format!(
                "RFAAS_VERBS_DEVICE={device} but this binary has no verbs provider: run \
                 cargo test --features verbs --test fabric_conformance"
            )
            .into())
        }));
    }
}
