//! End-to-end tests of the serverless core with real processes on 127.0.0.1: an executor
//! manager (`rfaas executor-manager`), the executors it spawns, and this process as the client,
//! on shm and on tcp, and (feature `libfabric`) on ofi over libfabric's shm and tcp;ofi_rxm.

mod common;

use std::time::{Duration, Instant};

use common::{functions_library, Manager, ManagerOptions};
use rfaas::client::{
    AllocationSpec, ClientError, ClientOptions, Executor, InvokeError, ManagerClient,
};
use rfaas::control::executor_manager_api::{WorkerConnect, TOKEN_LEN};
use rfaas::protocol::Status;
use rfaas::rdma::shm::ShmFabric;
use rfaas::rdma::tcp::TcpFabric;
use rfaas::rdma::{Fabric, FabricError, QpInit};

/// Runs the scenario `$scenario(fabric, provider)` on every provider, each a test of its own
/// named `$scenario::<provider>`: shm, tcp and, with the `libfabric` feature, ofi on libfabric's
/// `shm` and `tcp;ofi_rxm`.
macro_rules! on_every_provider {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[test]
            fn shm() {
                $scenario(ShmFabric::new().unwrap(), "shm");
            }

            #[test]
            fn tcp() {
                $scenario(TcpFabric::new().unwrap(), "tcp");
            }

            #[cfg(feature = "libfabric")]
            #[test]
            fn ofi_shm() {
                $scenario(ofi("shm"), "ofi:shm");
            }

            #[cfg(feature = "libfabric")]
            #[test]
            fn ofi_tcp_rxm() {
                $scenario(ofi("tcp;ofi_rxm"), "ofi:tcp;ofi_rxm");
            }
        }
    };
}

fn manager(provider: &'static str) -> Manager {
    #[cfg(feature = "libfabric")]
    if let Some(prov) = provider.strip_prefix("ofi:") {
        return manager_ofi(prov);
    }
    Manager::start_with(ManagerOptions {
        provider,
        ..ManagerOptions::default()
    })
}

/// A manager whose executors use the `ofi` provider on libfabric provider `prov`.
#[cfg(feature = "libfabric")]
fn manager_ofi(prov: &str) -> Manager {
    Manager::start_with(ManagerOptions {
        provider: "ofi",
        env: vec![(rfaas::env::OFI_PROVIDER, prov.to_string())],
        ..ManagerOptions::default()
    })
}

#[cfg(feature = "libfabric")]
fn ofi(prov: &str) -> rfaas::rdma::ofi::OfiFabric {
    rfaas::rdma::ofi::OfiFabric::with_provider(Some(prov)).expect("ofi domain")
}

fn fnv1a(bytes: &[u8]) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.to_le_bytes()
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn spec(functions: &[&str], capacity: u32) -> AllocationSpec {
    let mut s = AllocationSpec::new(functions_library().to_vec(), functions);
    s.input_capacity = capacity;
    s.output_capacity = capacity;
    s.hot_timeout_ms = 0; // tests share 2 cores: warm workers
    s
}

/// Every example function at 0 B, 1 B, 4 KiB and 1 MiB, and one byte over capacity.
fn every_function_and_size<F: Fabric>(fabric: F, provider: &'static str) {
    let m = manager(provider);
    let client = ManagerClient::new(&m.http, &m.secret);
    const MIB: u32 = 1 << 20;
    let s = spec(
        &["empty", "echo", "checksum", "black_scholes", "sleep_us"],
        MIB,
    );
    let exec = Executor::allocate(fabric, &client, &s, ClientOptions::default()).expect("allocate");
    let [empty, echo, checksum, bs, sleep] =
        ["empty", "echo", "checksum", "black_scholes", "sleep_us"]
            .map(|f| exec.function(f).unwrap());
    let mut out = vec![0u8; MIB as usize];
    for len in [0usize, 1, 4096, MIB as usize] {
        let input = payload(len);
        assert_eq!(
            exec.invoke(empty, &input, &mut out).unwrap(),
            len,
            "empty returns the input length ({len} B)"
        );
        let n = exec.invoke(echo, &input, &mut out).unwrap();
        assert_eq!(&out[..n], &input[..], "echo of {len} B");
        let n = exec.invoke(checksum, &input, &mut out).unwrap();
        assert_eq!(&out[..n], &fnv1a(&input), "checksum of {len} B");
    }
    // Black-Scholes: S=100, K=100, r=0.05, sigma=0.2, T=1 -> call 10.4506, put 5.5735.
    let opt: Vec<u8> = [100.0f64, 100.0, 0.05, 0.2, 1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let n = exec.invoke(bs, &opt, &mut out).unwrap();
    assert_eq!(n, 16);
    let call = f64::from_le_bytes(out[..8].try_into().unwrap());
    let put = f64::from_le_bytes(out[8..16].try_into().unwrap());
    assert!(
        (call - 10.4506).abs() < 1e-3 && (put - 5.5735).abs() < 1e-3,
        "call {call} put {put}"
    );
    let t = Instant::now();
    exec.invoke(sleep, &20_000u64.to_le_bytes(), &mut out)
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(20),
        "sleep_us(20 ms) took {:?}",
        t.elapsed()
    );
    // One byte over the input capacity: refused before it is sent, with the sizes in the error.
    let over = payload(MIB as usize + 1);
    match exec.invoke(echo, &over, &mut out) {
        Err(InvokeError::InputTooLarge { len, capacity }) => {
            assert_eq!((len, capacity), (MIB as usize + 1, MIB as usize))
        }
        other => panic!("oversized input gave {other:?}"),
    }
    // An output one byte larger than the caller's buffer: the executor refuses to write it.
    let input = payload(100);
    assert_eq!(
        exec.invoke(echo, &input, &mut out[..99]),
        Err(InvokeError::Status(Status::OutputTooLarge))
    );
    // And the allocation still works afterwards.
    let n = exec.invoke(echo, b"still fine", &mut out).unwrap();
    assert_eq!(&out[..n], b"still fine");
    exec.deallocate().unwrap();
}

on_every_provider!(every_function_and_size);

/// 100,000 invocations on one allocation, several in flight: every result matches its call.
fn many_invocations<F: Fabric>(fabric: F, provider: &'static str) {
    let m = manager(provider);
    let client = ManagerClient::new(&m.http, &m.secret);
    let mut s = spec(&["echo"], 64);
    s.slots = 8;
    s.hot_timeout_ms = 50;
    let exec = Executor::allocate(fabric, &client, &s, ClientOptions::default()).unwrap();
    let echo = exec.function("echo").unwrap();
    let mut out = [0u8; 64];
    let mut pending = std::collections::VecDeque::new();
    for i in 0u64..100_000 {
        let input = i.to_le_bytes();
        loop {
            match exec.submit(Some(0), echo, &input, 8) {
                Ok(p) => {
                    pending.push_back((p, i));
                    break;
                }
                Err(InvokeError::Busy) => {
                    let (p, j) = pending.pop_front().unwrap();
                    let n = exec.wait(p, &mut out).unwrap();
                    assert_eq!(&out[..n], &j.to_le_bytes(), "result of call {j}");
                }
                Err(e) => panic!("call {i}: {e}"),
            }
        }
    }
    for (p, j) in pending {
        let n = exec.wait(p, &mut out).unwrap();
        assert_eq!(&out[..n], &j.to_le_bytes());
    }
}

#[test]
fn shm_100k_invocations_with_calls_in_flight() {
    many_invocations(ShmFabric::new().unwrap(), "shm");
}

#[test]
fn tcp_100k_invocations_with_calls_in_flight() {
    many_invocations(TcpFabric::new().unwrap(), "tcp");
}

#[cfg(feature = "libfabric")]
#[test]
fn ofi_shm_100k_invocations_with_calls_in_flight() {
    many_invocations(ofi("shm"), "ofi:shm");
}

/// An unknown function name fails the allocation with a clear error; an unknown index fails the
/// call; the C library works unchanged.
#[test]
fn unknown_functions_and_the_c_library() {
    let m = manager("shm");
    let client = ManagerClient::new(&m.http, &m.secret);
    let err = Executor::allocate(
        ShmFabric::new().unwrap(),
        &client,
        &spec(&["echo", "no_such_fn"], 64),
        ClientOptions::default(),
    )
    .err()
    .expect("an unknown function name must fail the allocation");
    assert!(
        err.to_string().contains("no_such_fn"),
        "error does not name the function: {err}"
    );
    assert_eq!(
        m.status().cores_free,
        m.status().cores_total,
        "cores came back"
    );

    let exec = Executor::allocate(
        ShmFabric::new().unwrap(),
        &client,
        &spec(&["echo"], 64),
        ClientOptions::default(),
    )
    .unwrap();
    let mut out = [0u8; 64];
    assert_eq!(
        exec.invoke(rfaas::client::FunctionId(5), b"x", &mut out),
        Err(InvokeError::Status(Status::UnknownFunction))
    );
    assert!(matches!(
        exec.function("nope"),
        Err(ClientError::UnknownFunction(_))
    ));
    drop(exec);

    let c_lib = c_library();
    let mut s = AllocationSpec::new(c_lib, &["echo_c", "checksum_c"]);
    s.hot_timeout_ms = 0;
    let exec = Executor::allocate(
        ShmFabric::new().unwrap(),
        &client,
        &s,
        ClientOptions::default(),
    )
    .unwrap();
    let input = payload(1000);
    let mut out = vec![0u8; 4096];
    let n = exec
        .invoke(exec.function("echo_c").unwrap(), &input, &mut out)
        .unwrap();
    assert_eq!(&out[..n], &input[..]);
    let n = exec
        .invoke(exec.function("checksum_c").unwrap(), &input, &mut out)
        .unwrap();
    assert_eq!(n, 8);
}

fn c_library() -> Vec<u8> {
    common::functions_c_library("serverless-c", "functions_c")
}

/// A client that presents a wrong token is refused by the executor, which keeps waiting for the
/// real client.
#[test]
fn a_wrong_token_is_rejected() {
    let m = manager("shm");
    let client = ManagerClient::new(&m.http, &m.secret);
    let mut s = spec(&["echo"], 64);
    s.slots = 1;
    let hash = client.upload_library(s.library()).unwrap();
    let req = rfaas::control::executor_manager_api::AllocationRequest {
        library: hash.to_hex(),
        functions: vec!["echo".into()],
        cores: 1,
        input_capacity: 64,
        output_capacity: 64,
        slots: 1,
        hot_timeout_ms: 0,
        lease: None,
        client: "test".into(),
        early_answer: false,
        assets: Vec::new(),
    };
    let alloc = client.allocate(&req).unwrap();
    let fabric = ShmFabric::new().unwrap();
    let cq = fabric.create_cq(16).unwrap();
    let bad = WorkerConnect {
        token: [0x42; TOKEN_LEN],
        worker: 0,
    }
    .encode();
    match fabric.connect(
        &alloc.address,
        QpInit::new(&cq),
        &[],
        &bad,
        Duration::from_secs(5),
    ) {
        Err(FabricError::Rejected(why)) => assert!(why.contains("token"), "reason: {why}"),
        Err(e) => panic!("wrong token gave {e}"),
        Ok(_) => panic!("a wrong token was accepted"),
    }
    // And says so in its log (the lean `rfaas-executor` too: it once set up no logging).
    let logs = m.dir.path().join("run").join("logs");
    common::wait_for(
        Duration::from_secs(10),
        "the refusal in the executor's log",
        || {
            std::fs::read_dir(&logs).ok()?.flatten().find(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("refused a connection: wrong allocation token"))
            })
        },
    );
    // The real client still gets in.
    let exec = Executor::connect(
        fabric,
        Some(client),
        alloc,
        &s,
        None,
        ClientOptions::default(),
    )
    .unwrap();
    let mut out = [0u8; 8];
    let n = exec
        .invoke(exec.function("echo").unwrap(), b"ok", &mut out)
        .unwrap();
    assert_eq!(&out[..n], b"ok");
}

/// kill -9 of the executor manager: its executors die with it, clients get errors (not timeouts), and
/// nothing hangs.
fn manager_killed<F: Fabric>(fabric: F, provider: &'static str) {
    let mut m = manager(provider);
    let client = ManagerClient::new(&m.http, &m.secret);
    let opts = ClientOptions {
        timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let exec = Executor::allocate(fabric, &client, &spec(&["echo", "sleep_us"], 64), opts).unwrap();
    let echo = exec.function("echo").unwrap();
    let sleep = exec.function("sleep_us").unwrap();
    let mut out = [0u8; 64];
    exec.invoke(echo, b"before", &mut out).unwrap();
    // A call in flight when the manager dies.
    let pending = exec
        .submit(Some(0), sleep, &500_000u64.to_le_bytes(), 64)
        .unwrap();
    m.child.kill().unwrap();
    let _ = m.child.wait();
    // Both fail because the death is noticed, not by waiting out the client's timeout.
    let r = exec.wait(pending, &mut out);
    assert!(
        matches!(r, Err(InvokeError::ExecutorGone(_))),
        "in-flight call gave {r:?}"
    );
    let r = exec.invoke(echo, b"after", &mut out);
    assert!(
        matches!(r, Err(InvokeError::ExecutorGone(_))),
        "a call after the manager died gave {r:?}"
    );
    drop(exec); // deallocation fails (the manager is gone) without hanging
}

on_every_provider!(manager_killed);

/// An allocation of `echo` on two workers (one where the machine has a single core) of the shm
/// manager `m`.
fn echo_on_two_cores(m: &Manager) -> Executor<ShmFabric> {
    let client = ManagerClient::new(&m.http, &m.secret);
    let mut s = spec(&["echo"], 64);
    s.cores = common::cores().len().min(2) as u32;
    Executor::allocate(
        ShmFabric::new().unwrap(),
        &client,
        &s,
        ClientOptions::default(),
    )
    .unwrap()
}

/// Several threads share one Executor, each on its own worker.
#[test]
fn threads_share_an_executor() {
    let m = manager("shm");
    let exec = echo_on_two_cores(&m);
    let echo = exec.function("echo").unwrap();
    std::thread::scope(|sc| {
        for t in 0..4u32 {
            let exec = &exec;
            sc.spawn(move || {
                let mut out = [0u8; 8];
                for i in 0..2000u32 {
                    let v = (t << 16 | i).to_le_bytes();
                    let n = exec.invoke(echo, &v, &mut out).unwrap();
                    assert_eq!(&out[..n], &v);
                }
            });
        }
    });
}

/// Each worker thread of an executor is pinned to its own core, the one the manager reported,
/// as the operating system sees it (/proc/PID/task/*/status).
#[test]
fn workers_run_pinned_on_their_own_cores() {
    let m = manager("shm");
    let exec = echo_on_two_cores(&m);
    let echo = exec.function("echo").unwrap();
    let mut out = [0u8; 8];
    for w in 0..exec.workers() {
        exec.invoke_on(w, echo, b"x", &mut out).unwrap(); // every worker thread is up
    }
    let alloc = exec.allocation().clone();
    let mut want: Vec<u32> = alloc.workers.iter().map(|w| w.core).collect();
    want.sort();
    want.dedup();
    assert_eq!(
        want.len(),
        alloc.workers.len(),
        "two workers got the same core: {:?}",
        alloc.workers
    );
    // Worker threads by name (rfaas-worker-<index>), each with the cores it may run on. A
    // thread just started by a worker (billing, after the first result) carries the worker's
    // name and core until it runs: wait until every such newcomer has named itself.
    let worker_threads = || {
        let mut workers: Vec<(usize, String)> = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", alloc.pid)).unwrap() {
            let path = task.unwrap().path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let Some(index) = name.trim().strip_prefix("rfaas-worker-") else {
                continue;
            };
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap_or("")
                .trim()
                .to_string();
            workers.push((index.parse().unwrap(), allowed));
        }
        workers.sort();
        workers
    };
    let expected: Vec<(usize, String)> = alloc
        .workers
        .iter()
        .map(|w| (w.index as usize, w.core.to_string()))
        .collect();
    if common::cores().len() > 1 {
        common::wait_for(
            common::NO_HANG,
            &format!("each worker thread pinned to the single core the manager assigned it: {expected:?}"),
            || (worker_threads() == expected).then_some(()),
        );
    }
}

/// A function that segfaults kills its executor: the client gets an error at once (not a timeout) and
/// the manager gets its cores back (on tcp too; the shm case is in tests/executor_manager.rs).
#[test]
fn tcp_crashing_function_fails_fast_and_capacity_returns() {
    let m = manager("tcp");
    let client = ManagerClient::new(&m.http, &m.secret);
    let exec = Executor::allocate(
        TcpFabric::new().unwrap(),
        &client,
        &spec(&["segfault"], 64),
        ClientOptions::default(),
    )
    .unwrap();
    let f = exec.function("segfault").unwrap();
    let mut out = [0u8; 8];
    // The death is noticed (ExecutorGone), not waited out (Timeout).
    let r = exec.invoke(f, b"", &mut out);
    assert!(
        matches!(r, Err(InvokeError::ExecutorGone(_))),
        "segfault gave {r:?}"
    );
    common::wait_for(common::NO_HANG, "the cores to come back", || {
        let st = m.status();
        (st.cores_free == st.cores_total).then_some(())
    });
}
