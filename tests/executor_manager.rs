//! The executor manager and the local cluster, as real processes on 127.0.0.1.
//!
//! * HTTP API: authentication, JSON errors and their status codes, body limits, library
//!   uploads checked against their hash, slow clients timed out without blocking others.
//! * Allocations with real executors (`rfaas executor`): ready → status → release; cores never
//!   shared; an executor killed with SIGKILL or crashing (SIGSEGV) gives its cores back at once
//!   with the signal as the reason; no capacity → 409 saying what is free; a failing executor
//!   → 422 with its error; billing recorded; SIGTERM of the manager stops its executors.
//! * `rfaas local-cluster start|stop` on shm and tcp: cluster.json written, `rfaas status`
//!   readable, nothing left running afterwards.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rfaas::client::{AllocationSpec, ClientOptions, Executor, InvokeError, ManagerClient};
use rfaas::control::executor_manager_api::{Allocation, ApiError};

fn error_of(body: &str) -> String {
    serde_json::from_str::<ApiError>(body)
        .unwrap_or_else(|e| panic!("not a JSON error ({e}): {body}"))
        .error
}

#[test]
fn every_route_but_health_needs_the_secret() {
    let m = Manager::start();
    let (code, body) = http(&m.http, "GET", "/v1/health", None, None);
    assert_eq!((code, body.as_str()), (200, r#"{"ok":true}"#));
    for (method, path) in [
        ("GET", "/v1/status"),
        ("POST", "/v1/allocations"),
        ("GET", "/v1/allocations/1"),
        ("DELETE", "/v1/allocations/1"),
        ("PUT", &format!("/v1/libraries/{}", "ab".repeat(32))),
        ("GET", "/v1/nope"),
    ] {
        let (code, body) = http(&m.http, method, path, None, None);
        assert_eq!(code, 401, "{method} {path} without secret: {body}");
        assert!(error_of(&body).contains("Authorization"), "{body}");
        let (code, body) = http(&m.http, method, path, Some("not the secret"), None);
        assert_eq!(code, 401, "{method} {path} with a wrong secret: {body}");
        assert!(error_of(&body).contains("wrong cluster secret"));
    }
    let st = m.status();
    assert_eq!(st.node, "test-node");
    assert_eq!(st.cores_total, cores().len() as u32);
    assert_eq!(st.cores_free, st.cores_total);
    assert!(
        !m.log_text().contains(&m.secret),
        "the secret must never be logged"
    );
}

#[test]
fn bad_requests_get_json_errors_with_the_right_status() {
    let m = Manager::start();
    let lib = m.upload(&common::fake_shared_object(
        b"not really a library, but stored by hash",
    ));
    let base = serde_json::from_str::<serde_json::Value>(&alloc_body(&lib, &["echo"], 1)).unwrap();
    let with = |key: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[key] = v;
        b.to_string()
    };
    let mut no_cores = base.clone();
    no_cores.as_object_mut().unwrap().remove("cores");
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "bad allocation request"),
        (no_cores.to_string(), "missing field `cores`"),
        (with("cores", 0.into()), "cores must be at least 1"),
        (with("cores", (-1).into()), "bad allocation request"),
        (with("slots", 300.into()), "slots"),
        (with("slots", 0.into()), "slots"),
        (with("input_capacity", 0.into()), "input_capacity"),
        (
            with("output_capacity", (2u64 << 30).into()),
            "output_capacity",
        ),
        (with("hot_timeout_ms", (-5).into()), "hot_timeout_ms"),
        (with("functions", serde_json::json!([])), "functions"),
        (with("library", "xyz".into()), "SHA-256"),
        (with("cores", 1000.into()), "rents out only"),
    ];
    for (body, word) in cases {
        let (code, answer) = m.call("POST", "/v1/allocations", Some(body.as_bytes()));
        assert_eq!(code, 400, "{body} → {answer}");
        assert!(
            error_of(&answer).contains(word),
            "{body}: {answer} should mention {word:?}"
        );
    }
    let (code, body) = m.call("GET", "/v1/allocations/abc", None);
    assert_eq!(code, 400, "{body}");
    let (code, body) = m.call("GET", "/v1/allocations/999", None);
    assert_eq!(code, 404, "{body}");
    assert!(error_of(&body).contains("999"));
    let (code, body) = m.call("DELETE", "/v1/allocations/999", None);
    assert_eq!(code, 404, "{body}");
    let (code, body) = m.call("GET", "/v1/nope", None);
    assert_eq!(code, 404, "{body}");
    error_of(&body);
    let (code, body) = m.call("PATCH", "/v1/status", None);
    assert_eq!(code, 405, "{body}");
    assert_eq!(
        m.status().cores_free,
        cores().len() as u32,
        "no refusal took a core"
    );
}

#[test]
fn oversized_bodies_are_413() {
    let m = Manager::start_with(ManagerOptions {
        extra: "request_timeout_ms = 2000\nmax_library_bytes = 100000\n".into(),
        ..Default::default()
    });
    let big_json = format!("{{\"client\":\"{}\"}}", "x".repeat(70_000));
    let (code, body) = m.call("POST", "/v1/allocations", Some(big_json.as_bytes()));
    assert_eq!(code, 413, "{body}");
    assert!(error_of(&body).contains("larger than"));
    let lib = vec![7u8; 100_001];
    let hash = rfaas::function::ContentHash::of(&lib).to_hex();
    let (code, body) = m.call("PUT", &format!("/v1/libraries/{hash}"), Some(&lib));
    assert_eq!(code, 413, "{body}");
    // A chunked body without Content-Length is cut off at the limit too.
    let head = format!(
        "PUT /v1/libraries/{hash} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        m.secret
    );
    let mut req = head.into_bytes();
    for _ in 0..3 {
        req.extend_from_slice(format!("{:x}\r\n", 50_000).as_bytes());
        req.extend_from_slice(&[1u8; 50_000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (answer, _) = raw_exchange(&m.http, &req, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Exactly at the limit is fine.
    let mut ok = common::fake_shared_object(b"");
    ok.resize(100_000, 7);
    assert_eq!(
        m.upload(&ok),
        rfaas::function::ContentHash::of(&ok).to_hex()
    );
}

#[test]
fn libraries_are_checked_against_their_hash() {
    let m = Manager::start();
    let bytes = common::fake_shared_object(b"library bytes");
    let hash = rfaas::function::ContentHash::of(&bytes).to_hex();
    let path = format!("/v1/libraries/{hash}");
    // Bytes that are no ELF shared object never reach the cache.
    let junk = b"ten megabytes of random bytes, say".to_vec();
    let junk_hash = rfaas::function::ContentHash::of(&junk).to_hex();
    let (code, body) = m.call("PUT", &format!("/v1/libraries/{junk_hash}"), Some(&junk));
    assert_eq!(code, 400, "{body}");
    assert!(error_of(&body).contains("ELF shared object"), "{body}");
    assert_eq!(
        m.call("HEAD", &format!("/v1/libraries/{junk_hash}"), None)
            .0,
        404
    );
    assert_eq!(m.call("HEAD", &path, None).0, 404);
    let (code, body) = m.call(
        "POST",
        "/v1/allocations",
        Some(alloc_body(&hash, &["echo"], 1).as_bytes()),
    );
    assert_eq!(code, 404, "{body}");
    assert!(error_of(&body).contains("upload it first"), "{body}");
    let wrong = rfaas::function::ContentHash::of(b"other").to_hex();
    let (code, body) = m.call("PUT", &format!("/v1/libraries/{wrong}"), Some(&bytes));
    assert_eq!(code, 400, "{body}");
    assert!(
        error_of(&body).contains(&hash),
        "{body} should name the real hash"
    );
    let (code, body) = m.call("PUT", "/v1/libraries/zz", Some(&bytes));
    assert_eq!(code, 400, "{body}");
    let (code, body) = m.call("PUT", &path, Some(&bytes));
    assert_eq!(code, 201, "{body}");
    let stored: rfaas::control::executor_manager_api::LibraryStored =
        serde_json::from_str(&body).unwrap();
    assert_eq!(
        (stored.hash.as_str(), stored.bytes),
        (hash.as_str(), bytes.len() as u64)
    );
    assert_eq!(
        m.call("PUT", &path, Some(&bytes)).0,
        200,
        "a second upload reuses the file"
    );
    assert_eq!(m.call("HEAD", &path, None).0, 200);
}

#[test]
fn a_stalled_client_is_timed_out_and_blocks_no_one() {
    let request_timeout = Duration::from_secs(3);
    let m = Manager::start_with(ManagerOptions {
        extra: format!(
            "request_timeout_ms = {}\nexecutor_connect_timeout_ms = 30000\nstop_grace_ms = 1000\n",
            request_timeout.as_millis()
        ),
        ..Default::default()
    });
    // A client library connection, idle for longer than the timeout below.
    let client = ManagerClient::new(&m.http, &m.secret);
    client.status().unwrap();
    // Half a request head, then silence (in place before the requests below).
    let head_only = stalled_exchange(&m.http, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
    // A complete head, then half the body.
    let req = format!(
        "POST /v1/allocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{\"libr",
        m.secret
    );
    let half_body = stalled_exchange(&m.http, req.as_bytes());
    for _ in 0..5 {
        assert_eq!(m.call("GET", "/v1/status", None).0, 200);
    }
    // Served before the stalled clients were cut: not queued behind them.
    let served = Instant::now();
    let (answer, took, cut) = head_only.join().unwrap();
    assert!(served < cut, "others are served while a client stalls");
    assert!(
        took < NO_HANG,
        "the stalled head was cut after {took:?}: {answer:?}"
    );
    let (answer, took, cut) = half_body.join().unwrap();
    assert!(served < cut, "others are served while a client stalls");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took >= request_timeout && took < NO_HANG,
        "the stalled body was cut after {took:?} (timeout {request_timeout:?})"
    );
    assert_eq!(m.status().cores_free, cores().len() as u32);
    // The server closed the idle pooled connection (idle longer than the stalled body, which
    // waited out the timeout); the client library reconnects unnoticed.
    assert_eq!(client.status().unwrap().cores_free, cores().len() as u32);
}

fn state_of(m: &Manager, id: u64) -> rfaas::control::executor_manager_api::AllocationStatus {
    let (code, body) = m.call("GET", &format!("/v1/allocations/{id}"), None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

// ---- Allocation tests: these need a working executor (`rfaas executor`). ----

#[test]
fn allocate_release_and_cores_come_back() {
    let m = Manager::start();
    let lib = m.upload(functions_library());
    let a = m.allocate(&lib, &["echo"], 1);
    assert_eq!(a.workers.len(), 1);
    assert_eq!(a.token.len(), 64);
    assert!(a.spawn_ns > 0 && a.spawn_ns >= a.code_load_ns, "{a:?}");
    assert!(alive(a.pid as i32));
    let cmdline = rfaas::cluster::procs::cmdline(a.pid as i32).unwrap();
    assert_eq!(
        cmdline[1..],
        ["executor".to_string()],
        "nothing but `executor` on the command line"
    );
    // The lean executor binary lies beside `rfaas` (cargo builds both), so it is the one used.
    assert!(
        cmdline[0].ends_with("/rfaas-executor"),
        "executors run as rfaas-executor: {cmdline:?}"
    );
    let st = m.status();
    assert_eq!(st.cores_free, st.cores_total - 1);
    assert!(st.memory_free < st.memory_total);
    let s = state_of(&m, a.id);
    assert_eq!(
        (s.state.as_str(), s.cores.clone()),
        ("running", vec![a.workers[0].core])
    );
    let (code, body) = m.call("DELETE", &format!("/v1/allocations/{}", a.id), None);
    assert_eq!(code, 204, "{body}");
    let st = m.status();
    assert_eq!(
        (st.cores_free, st.memory_free),
        (st.cores_total, st.memory_total),
        "cores back as DELETE answers"
    );
    assert!(!alive(a.pid as i32), "executor gone");
    let s = state_of(&m, a.id);
    assert_eq!(s.state, "released");
    assert!(s.reason.is_some());
    assert_eq!(
        m.call("DELETE", &format!("/v1/allocations/{}", a.id), None)
            .0,
        204,
        "DELETE is idempotent"
    );
}

#[test]
fn cores_are_never_shared_and_a_full_node_says_what_is_free() {
    let all = cores();
    let m = Manager::start();
    let lib = m.upload(functions_library());
    let mut allocs = Vec::new();
    for _ in 0..all.len() {
        allocs.push(m.allocate(&lib, &["echo"], 1));
    }
    let mut used: Vec<u32> = allocs
        .iter()
        .flat_map(|a| a.workers.iter().map(|w| w.core))
        .collect();
    used.sort_unstable();
    assert_eq!(used, all, "every core once");
    let (code, body) = m.call(
        "POST",
        "/v1/allocations",
        Some(alloc_body(&lib, &["echo"], 1).as_bytes()),
    );
    assert_eq!(code, 409, "{body}");
    let msg = error_of(&body);
    assert!(msg.contains(&format!("0 of {} free", all.len())), "{msg}");
    // Release one: exactly its core comes back and can be allocated again.
    let first = allocs.remove(0);
    assert_eq!(
        m.call("DELETE", &format!("/v1/allocations/{}", first.id), None)
            .0,
        204
    );
    let again = m.allocate(&lib, &["echo"], 1);
    assert_eq!(again.workers[0].core, first.workers[0].core);
}

#[test]
fn an_executor_killed_with_sigkill_frees_its_cores_at_once() {
    let m = Manager::start();
    let lib = m.upload(functions_library());
    let a = m.allocate(&lib, &["echo"], 1);
    kill(Pid::from_raw(a.pid as i32), Signal::SIGKILL).unwrap();
    let s = wait_for(NO_HANG, "the allocation to end", || {
        let s = state_of(&m, a.id);
        (s.state != "running").then_some(s)
    });
    assert_eq!(s.state, "exited");
    assert_eq!(s.reason.as_deref(), Some("killed by signal 9 (SIGKILL)"));
    let st = m.status();
    assert_eq!(st.cores_free, st.cores_total);
}

#[test]
fn an_executor_that_cannot_start_fails_the_allocation_with_its_error() {
    let m = Manager::start();
    let lib = m.upload(functions_library());
    let (code, body) = m.call(
        "POST",
        "/v1/allocations",
        Some(alloc_body(&lib, &["echo", "no_such_function"], 1).as_bytes()),
    );
    assert_eq!(code, 422, "{body}");
    assert!(error_of(&body).contains("no_such_function"), "{body}");
    let st = m.status();
    assert_eq!(
        st.cores_free, st.cores_total,
        "cores back before the answer"
    );
    assert_eq!(st.allocations.len(), 1);
    assert_eq!(st.allocations[0].state, "failed");
    // Not a library at all: also the executor's error, and the cores come back.
    let junk = m.upload(&common::fake_shared_object(b"but not really"));
    let (code, body) = m.call(
        "POST",
        "/v1/allocations",
        Some(alloc_body(&junk, &["echo"], 1).as_bytes()),
    );
    assert_eq!(code, 422, "{body}");
    assert_eq!(m.status().cores_free, st.cores_total);
}

#[test]
fn invocations_bill_and_a_crash_is_reported_with_its_signal() {
    let m = Manager::start();
    let manager = ManagerClient::new(&m.http, &m.secret);
    let spec = AllocationSpec::new(functions_library().to_vec(), &["sleep_us", "segfault"]);
    let fabric = rfaas::rdma::shm::ShmFabric::new().unwrap();
    let exec = Executor::allocate(fabric, &manager, &spec, ClientOptions::default())
        .expect("allocate through the client");
    let id = exec.allocation().id;
    let sleep = exec.function("sleep_us").unwrap();
    let mut out = vec![0u8; 64];
    for _ in 0..20 {
        exec.invoke(sleep, &1000u64.to_le_bytes(), &mut out)
            .unwrap();
    }
    exec.deallocate().unwrap();
    let s = wait_for(NO_HANG, "the allocation to end", || {
        let s = state_of(&m, id);
        (s.state == "released" || s.state == "exited").then_some(s)
    });
    assert!(s.execution_ns >= 20_000_000, "billing: {s:?}");

    let fabric = rfaas::rdma::shm::ShmFabric::new().unwrap();
    let exec = Executor::allocate(fabric, &manager, &spec, ClientOptions::default()).unwrap();
    let id = exec.allocation().id;
    let crash = exec.function("segfault").unwrap();
    // The death is noticed, not waited out: an ExecutorGone error, not a Timeout, that says
    // how the executor died (its manager saw the exit status), not only that the connection
    // failed.
    let r = exec.invoke(crash, b"", &mut out);
    assert!(
        matches!(&r, Err(InvokeError::ExecutorGone(why)) if why.contains("killed by signal 11 (SIGSEGV)")),
        "{r:?}"
    );
    // Every later call says so too.
    let r = exec.invoke(crash, b"", &mut out);
    assert!(
        matches!(&r, Err(InvokeError::ExecutorGone(why)) if why.contains("SIGSEGV")),
        "{r:?}"
    );
    let s = wait_for(NO_HANG, "the crash to be recorded", || {
        let s = state_of(&m, id);
        (s.state == "exited").then_some(s)
    });
    assert_eq!(s.reason.as_deref(), Some("killed by signal 11 (SIGSEGV)"));
    let st = m.status();
    assert_eq!(st.cores_free, st.cores_total);
}

#[test]
fn sigterm_stops_executors_and_exits_cleanly() {
    let mut m = Manager::start();
    let lib = m.upload(functions_library());
    let a = m.allocate(&lib, &["echo"], 1);
    let status = m.terminate(NO_HANG).expect("manager exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", m.log_text());
    wait_for(NO_HANG, "the executor to be gone", || {
        (!alive(a.pid as i32)).then_some(())
    });
    assert_eq!(
        group_members(m.pid()),
        Vec::<i32>::new(),
        "nothing left in the manager's group"
    );
    assert!(m.log_text().contains("SIGTERM"));
}

// ---- Local cluster ----

fn local_cluster(provider: &str) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let nodes = if cores().len() >= 2 { 2 } else { 1 };
    let out = Command::new(rfaas_bin())
        .args([
            "local-cluster",
            "start",
            "--no-resource-manager",
            "--provider",
            provider,
            "--nodes",
            &nodes.to_string(),
            "--run-dir",
        ])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "start: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster = rfaas::cluster::ClusterFile::load(&run.join("cluster.json")).unwrap();
    assert_eq!(cluster.provider.name(), provider);
    assert_eq!(cluster.executor_managers.len(), nodes);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&cluster.secret_file)
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let pids: Vec<i32> = rfaas::cluster::local::read_pids(&run.join("pids"))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert!(pids.iter().all(|p| alive(*p)));
    // A second start refuses.
    let again = Command::new(rfaas_bin())
        .args(["local-cluster", "start", "--run-dir"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already running")
    );
    // Every manager is up, with its own cores; rfaas status reads the cluster file from the environment.
    let secret = cluster.secret().unwrap();
    let mut all_cores = Vec::new();
    for e in &cluster.executor_managers {
        let (code, body) = http(&e.http, "GET", "/v1/status", Some(&secret), None);
        assert_eq!(code, 200, "{body}");
        let st: rfaas::control::executor_manager_api::ManagerStatus =
            serde_json::from_str(&body).unwrap();
        all_cores.push(st.cores_total);
    }
    assert!(all_cores.iter().all(|c| *c >= 1));
    let out = Command::new(rfaas_bin())
        .arg("status")
        .env(rfaas::env::CLUSTER, run.join("cluster.json"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("em-0") && table.contains("CORES FREE/TOTAL"),
        "{table}"
    );
    assert!(!table.contains(&secret));
    // An allocation's executor is stopped with its manager.
    let lib = functions_library();
    let hash = rfaas::function::ContentHash::of(lib).to_hex();
    let em = &cluster.executor_managers[0].http;
    assert_eq!(
        http(
            em,
            "PUT",
            &format!("/v1/libraries/{hash}"),
            Some(&secret),
            Some(lib)
        )
        .0,
        201
    );
    let (code, body) = http(
        em,
        "POST",
        "/v1/allocations",
        Some(&secret),
        Some(alloc_body(&hash, &["echo"], 1).as_bytes()),
    );
    assert_eq!(code, 201, "{body}");
    let executor: Allocation = serde_json::from_str(&body).unwrap();

    let out = Command::new(rfaas_bin())
        .args(["local-cluster", "stop", "--run-dir"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pid in pids.iter().copied().chain([executor.pid as i32]) {
        assert!(!alive(pid), "process {pid} survived local-cluster stop");
        assert_eq!(group_members(pid), Vec::<i32>::new());
    }
    assert!(!run.join("pids").exists() && !run.join("cluster.json").exists());
    let out = Command::new(rfaas_bin())
        .args(["local-cluster", "stop", "--run-dir"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no local cluster")
    );
}

#[test]
fn a_local_cluster_is_started_once_its_managers_are_registered_with_its_resource_manager() {
    let nodes = if cores().len() >= 2 { 2 } else { 1 };
    let lc = common::local_cluster::LocalCluster::start(&[], &["--nodes", &nodes.to_string()]);
    // Right away: every manager is a live node, and a lease of one core is granted.
    let cluster = rfaas::cluster::ClusterFile::load(&lc.cluster_file()).unwrap();
    let secret = cluster.secret().unwrap();
    let rm = rfaas::client::RmClient::new(cluster.resource_manager.as_deref().unwrap(), &secret);
    let listed = rm.nodes().unwrap().nodes;
    for i in 0..nodes {
        let name = format!("em-{i}");
        assert!(
            listed
                .iter()
                .any(|n| n.name == name && n.state == rfaas::scheduler::NodeState::Alive),
            "{name} not a live node: {listed:?}"
        );
    }
    let lease = rfaas::client::Lease::acquire(&rm, 1, &rfaas::client::LeaseOptions::default());
    let stop = lc.stop();
    assert!(lease.is_ok(), "{:?}", lease.err());
    assert!(stop.status.success(), "stop: {stop:?}");
}

#[test]
fn local_cluster_on_shm_starts_and_stops_without_leftovers() {
    local_cluster("shm");
}

#[test]
fn local_cluster_on_tcp_starts_and_stops_without_leftovers() {
    local_cluster("tcp");
}

#[test]
fn executors_die_with_a_manager_killed_with_sigkill() {
    let m = Manager::start();
    let lib = m.upload(functions_library());
    let a = m.allocate(&lib, &["echo"], 1);
    kill(Pid::from_raw(m.pid()), Signal::SIGKILL).unwrap();
    wait_for(NO_HANG, "the orphaned executor to die", || {
        (!alive(a.pid as i32)).then_some(())
    });
}

#[test]
fn executor_timeouts_end_allocations_and_say_why() {
    // Ready too late: the executor is killed and the allocation fails with a clear error. Its
    // library's constructor sleeps 300 ms, and the library loads after the configuration went
    // out, when the 1 ms start timeout counts from: no executor can be ready in time.
    let Some(slow) = c_library(
        "slow",
        "#include <unistd.h>\n__attribute__((constructor)) static void slow(void) { usleep(300000); }\n",
    ) else {
        return;
    };
    let m = Manager::start_with(ManagerOptions {
        extra: "executor_start_timeout_ms = 1\n".into(),
        ..Default::default()
    });
    let lib = m.upload(&std::fs::read(&slow).unwrap());
    let (code, body) = m.call(
        "POST",
        "/v1/allocations",
        Some(alloc_body(&lib, &["echo"], 1).as_bytes()),
    );
    assert_eq!(code, 504, "{body}");
    assert!(
        error_of(&body).contains("did not report ready within 1ms"),
        "{body}"
    );
    let st = m.status();
    assert_eq!(st.cores_free, st.cores_total);
    assert_eq!(st.allocations[0].state, "failed");
    drop(m);

    // Ready, but the client never connects: the executor gives up, and says so.
    let m = Manager::start_with(ManagerOptions {
        extra: "executor_connect_timeout_ms = 200\n".into(),
        ..Default::default()
    });
    let lib = m.upload(functions_library());
    let a = m.allocate(&lib, &["echo"], 1);
    let s = wait_for(NO_HANG, "the executor to give up", || {
        let s = state_of(&m, a.id);
        (s.state != "running").then_some(s)
    });
    assert_eq!(s.state, "exited");
    let reason = s.reason.unwrap();
    assert!(
        reason.contains("client connected 0 of 1 workers")
            && reason.contains("exited with status 1"),
        "{reason}"
    );
    let st = m.status();
    assert_eq!(st.cores_free, st.cores_total);
}

/// A shared library built with `cc` from C `source` (a temporary file: gone when dropped);
/// `None` (after `skip_unless_ci`) without a C compiler.
fn c_library(name: &str, source: &str) -> Option<tempfile::TempPath> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let so = tempfile::Builder::new()
        .prefix(&format!("lib{name}"))
        .suffix(".so")
        .tempfile()
        .unwrap()
        .into_temp_path();
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .status();
    if !built.is_ok_and(|s| s.success()) {
        skip_unless_ci(&format!("no C compiler (cc) to build the {name} library"));
        return None;
    }
    Some(so)
}

#[test]
fn a_library_whose_constructor_exits_is_a_client_error_not_a_server_error() {
    let Some(so) = c_library(
        "exits",
        "#include <stdlib.h>\n__attribute__((constructor)) static void bye(void) { exit(7); }\n",
    ) else {
        return;
    };
    let m = Manager::start();
    let lib = m.upload(&std::fs::read(&so).unwrap());
    let (code, body) = m.call(
        "POST",
        "/v1/allocations",
        Some(alloc_body(&lib, &["echo"], 1).as_bytes()),
    );
    assert_eq!(code, 422, "{body}");
    let st = m.status();
    assert_eq!(st.cores_free, st.cores_total, "cores back");
}

/// `rfaas-executor` is started by managers only: any other command line is a usage error.
#[test]
fn the_lean_executor_binary_refuses_other_command_lines() {
    for args in [&[][..], &["serve"][..], &["executor", "extra"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rfaas-executor"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage: rfaas-executor executor"),
            "{args:?}: {out:?}"
        );
    }
}
