//! Tests of the verbs provider.
//!
//! The first group runs everywhere: on a machine without RDMA (like CI) it checks the clear
//! "no RDMA device" failure, on a machine with a device it checks that opening works.
//!
//! The `#[ignore]`d group needs a device:
//!
//! ```text
//! RFAAS_VERBS_DEVICE=mlx5_0 cargo test --features verbs --lib rdma::verbs -- --ignored
//! ```
//!
//! (`RFAAS_TEST_VERBS_DEVICE`, when set, takes precedence.)
//!
//! The tests connect the device to itself through an IP address of it (its IPoIB or RoCE
//! interface): `RFAAS_TEST_VERBS_ADDR` when set, otherwise the first one rdma_cm binds to the
//! device ([`VerbsFabric::local_addrs`]).

use std::time::Duration;

use super::*;
use crate::rdma::provider::FabricUser;
use crate::rdma::{
    Access, CompletionQueue, ConnRequest, Fabric, FabricError, Listener, MemoryRegion, Op, QpInit,
    QueuePair, RecvWr, RemoteBuf, SendFlags, SendWr, Wc, WcOpcode, WcStatus,
};

/// Whether this machine has RDMA devices, asked of the kernel (sysfs) rather than of the code
/// under test: it decides which outcome the tests below expect.
fn machine_has_devices() -> bool {
    std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some())
}

/// With devices `r` must succeed; without, it must be the clear "no RDMA device" error.
fn assert_no_device_or_ok<T: std::fmt::Debug>(r: &Result<T>, what: &str) {
    match r {
        Ok(v) => assert!(
            machine_has_devices(),
            "{what}: succeeded on a machine without RDMA devices: {v:?}"
        ),
        Err(FabricError::Unavailable { provider, reason }) => {
            assert!(
                !machine_has_devices(),
                "{what}: failed on a machine with RDMA devices: {reason}"
            );
            assert_eq!(*provider, "verbs");
            assert!(
                reason.contains("no RDMA device"),
                "{what}: unexpected reason {reason:?}"
            );
        }
        Err(e) => panic!("{what}: expected Unavailable(no RDMA device) or success, got {e:?}"),
    }
}

#[test]
fn open_without_a_device_says_so() {
    let r = VerbsFabric::open(None);
    assert_no_device_or_ok(&r, "open(None)");
    if let Err(e) = &r {
        // The message a user sees names the provider and the reason.
        let s = e.to_string();
        assert!(
            s.contains("provider verbs is unavailable") && s.contains("no RDMA device"),
            "{s}"
        );
    }
    match VerbsFabric::device_names() {
        Ok(names) => {
            assert!(machine_has_devices());
            let mut sysfs: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            sysfs.sort();
            let mut names = names;
            names.sort();
            assert_eq!(names, sysfs, "the devices are those the kernel lists");
        }
        Err(e) => {
            assert!(!machine_has_devices(), "{e}");
            assert!(e.to_string().contains("no RDMA device"), "{e}");
        }
    }
}

#[test]
fn open_default_without_a_device_says_so() {
    // Honours RFAAS_VERBS_DEVICE when set; on a machine without devices the answer is the same.
    let r = VerbsFabric::open_default();
    match &r {
        Err(FabricError::Unavailable { reason, .. }) if reason.contains("not found") => {
            // A device machine with RFAAS_VERBS_DEVICE naming a missing device: the reason
            // lists the ones present.
            assert!(machine_has_devices(), "{reason}");
            let named = std::env::var(crate::env::VERBS_DEVICE).unwrap_or_default();
            assert!(
                !named.trim().is_empty()
                    && !std::path::Path::new("/sys/class/infiniband")
                        .join(named.trim())
                        .exists(),
                "{reason} although {named:?} exists"
            );
            assert!(reason.contains(crate::env::VERBS_DEVICE), "{reason}");
        }
        _ => assert_no_device_or_ok(&r, "open_default"),
    }
}

#[test]
fn unknown_device_is_unavailable_with_the_choices() {
    match VerbsFabric::open(Some("rfaas_no_such_device0")) {
        Ok(f) => panic!("opened a device that does not exist: {f:?}"),
        Err(FabricError::Unavailable { reason, .. }) if machine_has_devices() => {
            // The reason names the device asked for and lists those present.
            assert!(reason.contains("rfaas_no_such_device0"), "{reason}");
            for name in VerbsFabric::device_names().unwrap() {
                assert!(reason.contains(&name), "{reason} does not list {name}");
            }
        }
        Err(FabricError::Unavailable { reason, .. }) => {
            assert!(reason.starts_with("no RDMA device found"), "{reason}")
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

#[test]
fn provider_run_reports_unavailable() {
    struct Nothing;
    impl FabricUser for Nothing {
        type Output = Provider;
        fn run<F: Fabric>(self, fabric: F) -> Provider {
            fabric.provider()
        }
    }
    let r = Provider::Verbs.run(Nothing);
    if let Ok(p) = &r {
        assert_eq!(*p, Provider::Verbs);
    }
    match &r {
        Err(FabricError::Unavailable { reason, .. }) if reason.contains("not found") => {}
        _ => assert_no_device_or_ok(&r, "Provider::Verbs.run"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests that need a device.

const T: Duration = Duration::from_secs(10);

fn test_fabric() -> (VerbsFabric, String) {
    let dev = std::env::var("RFAAS_TEST_VERBS_DEVICE")
        .or_else(|_| std::env::var(crate::env::VERBS_DEVICE))
        .expect("set RFAAS_VERBS_DEVICE to an RDMA device (e.g. mlx5_0) to run this test");
    let f = VerbsFabric::open(Some(&dev)).expect("open the test device");
    let ip = std::env::var(crate::env::TEST_VERBS_ADDR).unwrap_or_else(|_| {
        f.local_addrs()
            .first()
            .unwrap_or_else(|| panic!("{dev} has no IP address: set RFAAS_TEST_VERBS_ADDR"))
            .to_string()
    });
    let host = if ip.contains(':') && !ip.starts_with('[') {
        format!("[{ip}]")
    } else {
        ip
    };
    (f, host)
}

/// Two connected queue pairs on one device, each with its own CQ and a 4 KiB region with
/// every right, and each side's view of the other's region.
struct Pair {
    fab: VerbsFabric,
    client_qp: VerbsQp,
    server_qp: VerbsQp,
    client_cq: VerbsCq,
    server_cq: VerbsCq,
    client_mr: VerbsMr,
    server_mr: VerbsMr,
    /// The server's region as the client sees it.
    server_remote: RemoteBuf,
    /// The client's region as the server sees it.
    client_remote: RemoteBuf,
}

const RECVS: u64 = 16;
/// Initial receives take 64-byte slots from this offset of each side's region.
const RECV_AREA: usize = 3072;

fn recvs(base: u64, mr: &VerbsMr) -> Vec<RecvWr> {
    (0..RECVS)
        .map(|i| RecvWr {
            wr_id: base + i,
            sge: Some(mr.sge(RECV_AREA + 64 * i as usize, 64)),
        })
        .collect()
}

fn pair() -> Pair {
    let (fab, host) = test_fabric();
    let listener = fab.listen(&format!("{host}:0")).expect("listen");
    let addr = listener.local_addr();
    let client_cq = fab.create_cq(64).unwrap();
    let server_cq = fab.create_cq(64).unwrap();
    let client_mr = fab.alloc_mr(4096, Access::ALL).unwrap();
    let server_mr = fab.alloc_mr(4096, Access::ALL).unwrap();
    let client_remote = client_mr.remote(0, 4096);
    let server_remote_local = server_mr.remote(0, 4096);

    let server_recvs = recvs(1000, &server_mr);
    let (server_qp, client) = std::thread::scope(|s| {
        // The listener and the completion queue are Send but not Sync: they move to the
        // accepting thread, and the queue comes back.
        let server = s.spawn(move || {
            let req = listener
                .next_request(T)
                .expect("next_request")
                .expect("a request in time");
            let mut data = req.private_data().to_vec();
            assert_eq!(
                data.len(),
                16 + 5,
                "client private data has the exact length"
            );
            assert_eq!(&data[16..], b"hello");
            data.truncate(16);
            let client_remote = RemoteBuf::from_bytes(&data).unwrap();
            let qp = req
                .accept(
                    QpInit::new(&server_cq),
                    &server_recvs,
                    &server_remote_local.to_bytes(),
                )
                .expect("accept");
            (qp, client_remote, server_cq)
        });
        let mut pd = client_remote.to_bytes().to_vec();
        pd.extend_from_slice(b"hello");
        let client = fab
            .connect(
                &addr,
                QpInit::new(&client_cq),
                &recvs(0, &client_mr),
                &pd,
                T,
            )
            .expect("connect");
        (server.join().unwrap(), client)
    });
    let (client_qp, reply) = client;
    assert_eq!(reply.len(), 16, "accept private data has the exact length");
    let server_remote = RemoteBuf::from_bytes(&reply).unwrap();
    assert_eq!(server_remote, server_remote_local);
    let (server_qp, seen_client_remote, server_cq) = server_qp;
    assert_eq!(seen_client_remote, client_remote);
    assert!(client_qp.is_connected() && server_qp.is_connected());
    Pair {
        fab,
        client_qp,
        server_qp,
        client_cq,
        server_cq,
        client_mr,
        server_mr,
        server_remote,
        client_remote,
    }
}

fn one_wc(cq: &VerbsCq) -> Wc {
    let mut wc = [Wc::EMPTY; 1];
    let n = cq.poll_wait(&mut wc, T, Duration::from_millis(1)).unwrap();
    assert_eq!(n, 1, "no completion within {T:?}");
    wc[0]
}

fn post(qp: &VerbsQp, wr_id: u64, op: Op, sge: Option<crate::rdma::Sge>) {
    qp.post_send(&SendWr {
        wr_id,
        op,
        sge,
        flags: SendFlags::SIGNALED | SendFlags::SOLICITED,
    })
    .unwrap();
}

#[test]
#[ignore = "needs an RDMA device: RFAAS_VERBS_DEVICE"]
fn write_imm_round_trip() {
    let p = pair();
    let payload: Vec<u8> = (0..64u8).collect();
    p.client_mr.write(0, &payload);
    post(
        &p.client_qp,
        1,
        Op::WriteImm(p.server_remote.slice(128, 64), 0xdead_beef),
        Some(p.client_mr.sge(0, 64)),
    );
    let wc = one_wc(&p.client_cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (1, WcStatus::Success, WcOpcode::WriteImm, 64)
    );
    assert_eq!(wc.qp_num, p.client_qp.qp_num());

    // The target waits through the completion channel (armed for solicited completions).
    p.server_cq.req_notify(true).unwrap();
    let mut wcs = [Wc::EMPTY; 4];
    let mut n = p.server_cq.poll(&mut wcs);
    if n == 0 {
        assert!(p.server_cq.wait(T).unwrap(), "no completion event");
        n = p.server_cq.poll(&mut wcs);
    }
    assert_eq!(n, 1);
    let wc = wcs[0];
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (1000, WcStatus::Success, WcOpcode::RecvWriteImm)
    );
    assert_eq!(
        (wc.imm, wc.byte_len, wc.qp_num),
        (Some(0xdead_beef), 64, p.server_qp.qp_num())
    );
    let mut got = vec![0u8; 64];
    p.server_mr.read(128, &mut got);
    assert_eq!(
        got, payload,
        "the write is visible when its immediate completes"
    );

    // Zero-length write-with-immediate back (no SGE).
    post(
        &p.server_qp,
        2,
        Op::WriteImm(p.client_remote.slice(0, 0), 7),
        None,
    );
    let wc = one_wc(&p.server_cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (2, WcStatus::Success, WcOpcode::WriteImm, 0)
    );
    let wc = one_wc(&p.client_cq);
    assert_eq!(
        (wc.wr_id, wc.opcode, wc.imm, wc.byte_len),
        (0, WcOpcode::RecvWriteImm, Some(7), 0)
    );

    // Two-sided send with immediate into the next posted receive.
    p.server_mr.write(2048, b"a message of 24 bytes...");
    post(
        &p.server_qp,
        3,
        Op::SendImm(42),
        Some(p.server_mr.sge(2048, 24)),
    );
    let wc = one_wc(&p.server_cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (3, WcStatus::Success, WcOpcode::Send, 24)
    );
    let wc = one_wc(&p.client_cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (1, WcStatus::Success, WcOpcode::Recv)
    );
    assert_eq!((wc.imm, wc.byte_len), (Some(42), 24));
    let mut got = [0u8; 24];
    p.client_mr.read(RECV_AREA + 64, &mut got);
    assert_eq!(&got, b"a message of 24 bytes...");
}

#[test]
#[ignore = "needs an RDMA device: RFAAS_VERBS_DEVICE"]
fn rdma_read() {
    let p = pair();
    let data: Vec<u8> = (0..128u32).map(|i| (i * 7) as u8).collect();
    p.server_mr.write(512, &data);
    post(
        &p.client_qp,
        9,
        Op::Read(p.server_remote.slice(512, 128)),
        Some(p.client_mr.sge(256, 128)),
    );
    let wc = one_wc(&p.client_cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (9, WcStatus::Success, WcOpcode::Read, 128)
    );
    let mut got = vec![0u8; 128];
    p.client_mr.read(256, &mut got);
    assert_eq!(got, data);
}

#[test]
#[ignore = "needs an RDMA device: RFAAS_VERBS_DEVICE"]
fn atomics() {
    use std::sync::atomic::Ordering;
    let p = pair();
    let word = p.server_mr.atomic_u64(64);
    word.store(10, Ordering::SeqCst);
    let remote = p.server_remote.slice(64, 8);
    post(
        &p.client_qp,
        1,
        Op::FetchAdd { remote, add: 5 },
        Some(p.client_mr.sge(0, 8)),
    );
    let wc = one_wc(&p.client_cq);
    assert_eq!(
        (wc.status, wc.opcode, wc.byte_len),
        (WcStatus::Success, WcOpcode::FetchAdd, 8)
    );
    assert_eq!(p.client_mr.atomic_u64(0).load(Ordering::SeqCst), 10);
    assert_eq!(word.load(Ordering::SeqCst), 15);

    post(
        &p.client_qp,
        2,
        Op::CompareSwap {
            remote,
            compare: 15,
            swap: 99,
        },
        Some(p.client_mr.sge(8, 8)),
    );
    let wc = one_wc(&p.client_cq);
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::CompareSwap)
    );
    assert_eq!(p.client_mr.atomic_u64(8).load(Ordering::SeqCst), 15);
    assert_eq!(word.load(Ordering::SeqCst), 99);

    post(
        &p.client_qp,
        3,
        Op::CompareSwap {
            remote,
            compare: 1,
            swap: 2,
        },
        Some(p.client_mr.sge(16, 8)),
    );
    assert!(one_wc(&p.client_cq).is_ok());
    assert_eq!(p.client_mr.atomic_u64(16).load(Ordering::SeqCst), 99);
    assert_eq!(
        word.load(Ordering::SeqCst),
        99,
        "a failed compare leaves the word alone"
    );
}

#[test]
#[ignore = "needs an RDMA device: RFAAS_VERBS_DEVICE"]
fn bad_rkey_is_a_remote_access_error_then_flush() {
    let p = pair();
    p.client_mr.write(0, &[0xab; 32]);
    let mut bad = p.server_remote.slice(0, 32);
    bad.rkey ^= 0x5a5a;
    post(
        &p.client_qp,
        1,
        Op::Write(bad),
        Some(p.client_mr.sge(0, 32)),
    );
    let wc = one_wc(&p.client_cq);
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::RemoteAccess));
    assert_eq!(
        wc.opcode,
        WcOpcode::Write,
        "the opcode is known even for errors"
    );
    let mut got = [0u8; 32];
    p.server_mr.read(0, &mut got);
    assert_eq!(got, [0u8; 32], "the target's memory is unchanged");
    assert!(!p.client_qp.is_connected());

    post(
        &p.client_qp,
        2,
        Op::Write(p.server_remote.slice(0, 32)),
        Some(p.client_mr.sge(0, 32)),
    );
    let wc = one_wc(&p.client_cq);
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (2, WcStatus::WrFlush, WcOpcode::Write)
    );
}

#[test]
#[ignore = "needs an RDMA device: RFAAS_VERBS_DEVICE"]
fn out_of_bounds_and_missing_rights_are_remote_access_errors() {
    // Past the end of the server's region.
    let p = pair();
    post(
        &p.client_qp,
        1,
        Op::Write(p.server_remote.slice(4090, 32)),
        Some(p.client_mr.sge(0, 32)),
    );
    assert_eq!(one_wc(&p.client_cq).status, WcStatus::RemoteAccess);

    // A write into a region registered for remote reads only (same process, so the client can
    // name it directly).
    let p = pair();
    let ro = p.fab.alloc_mr(4096, Access::REMOTE_READ).unwrap();
    post(
        &p.client_qp,
        2,
        Op::Write(ro.remote(0, 32)),
        Some(p.client_mr.sge(0, 32)),
    );
    assert_eq!(one_wc(&p.client_cq).status, WcStatus::RemoteAccess);
    let mut got = [1u8; 32];
    ro.read(0, &mut got);
    assert_eq!(got, [0u8; 32]);
}

#[test]
#[ignore = "needs an RDMA device: RFAAS_VERBS_DEVICE"]
fn reject_reaches_the_peer_with_its_reason() {
    let (fab, host) = test_fabric();
    let listener = fab.listen(&format!("{host}:0")).unwrap();
    let addr = listener.local_addr();
    let cq = fab.create_cq(16).unwrap();
    let r = std::thread::scope(|s| {
        s.spawn(move || {
            let req = listener.next_request(T).unwrap().unwrap();
            req.reject("no executors left");
        });
        fab.connect(&addr, QpInit::new(&cq), &[], b"x", T)
    });
    match r {
        Err(FabricError::Rejected(reason)) => assert_eq!(reason, "no executors left"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    let e = fab
        .connect(&addr, QpInit::new(&cq), &[], &[0u8; 56], T)
        .unwrap_err();
    assert!(matches!(e, FabricError::Invalid(_)), "{e:?}");
}

#[test]
#[ignore = "needs an RDMA device: RFAAS_VERBS_DEVICE"]
fn disconnect_flushes_the_peer() {
    let p = pair();
    p.client_qp.disconnect();
    assert!(!p.client_qp.is_connected());
    // The server's 16 posted receives flush once the monitor sees DISCONNECTED.
    let mut seen = 0;
    let mut wcs = [Wc::EMPTY; 16];
    let deadline = std::time::Instant::now() + T;
    while seen < RECVS as usize && std::time::Instant::now() < deadline {
        let n = p
            .server_cq
            .poll_wait(&mut wcs, Duration::from_millis(100), Duration::ZERO)
            .unwrap();
        for wc in &wcs[..n] {
            assert_eq!((wc.status, wc.opcode), (WcStatus::WrFlush, WcOpcode::Recv));
            assert!((1000..1000 + RECVS).contains(&wc.wr_id));
        }
        seen += n;
    }
    assert_eq!(seen, RECVS as usize, "all receives flushed");
    assert!(!p.server_qp.is_connected());
}

#[test]
#[ignore = "needs an RDMA device: RFAAS_VERBS_DEVICE"]
fn unsignaled_sends_never_fill_the_send_queue() {
    // The client's submit and the executor's reply never ask for completions. Without internal
    // signaling an mlx5 send queue (64 entries: the default QpCaps this pair uses) is full after
    // as many posts; here 20 queues' worth go through, and the sender never polls its own
    // completion queue (post_send reaps the provider's own completions).
    let p = pair();
    let depth = crate::rdma::QpCaps::default().max_send_wr as u64;
    let rounds = 20 * depth;
    let mut got = 0u64;
    let mut wcs = [Wc::EMPTY; 16];
    for i in 0..rounds {
        // The server reposts its receives as they complete (16 posted at a time).
        p.client_mr.write(0, &i.to_le_bytes());
        p.client_qp
            .post_send(&SendWr {
                wr_id: i,
                op: Op::WriteImm(p.server_remote.slice(0, 8), i as u32),
                sge: Some(p.client_mr.sge(0, 8)),
                flags: SendFlags::empty(),
            })
            .unwrap_or_else(|e| panic!("post {i} of {rounds}: {e}"));
        // Keep at most 8 in flight so the receiver never runs out of receives.
        while i + 1 - got > 8 {
            let n = p
                .server_cq
                .poll_wait(&mut wcs, T, Duration::from_millis(1))
                .unwrap();
            assert!(n > 0, "no receive completion within {T:?}");
            for wc in &wcs[..n] {
                assert_eq!(
                    (wc.status, wc.opcode, wc.imm),
                    (WcStatus::Success, WcOpcode::RecvWriteImm, Some(got as u32))
                );
                p.server_qp
                    .post_recv(&RecvWr {
                        wr_id: wc.wr_id,
                        sge: None,
                    })
                    .unwrap();
                got += 1;
            }
        }
    }
    // Not one completion is reported to the sender: every one it got was the provider's own.
    let mut wc = [Wc::EMPTY; 1];
    assert_eq!(p.client_cq.poll(&mut wc), 0, "unexpected {:?}", wc[0]);
    assert!(p.client_qp.is_connected());
}
