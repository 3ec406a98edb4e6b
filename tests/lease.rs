//! Leases end to end with real processes on 127.0.0.1: a resource manager, three executor
//! managers registered with it (one core each; on a small machine they share cores), and this
//! process as the client (`rfaas::client::Cluster` with a `resource_manager` in its cluster
//! file). Every wait is bounded.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    alive, alloc_body, functions_library, manager_for_rm, wait_for, write_cluster_file, Manager,
    ResourceManager,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rfaas::client::{
    AllocationSpec, ClientError, ClientOptions, Cluster, Executor, Lease, LeaseOptions,
};
use rfaas::cluster::ClusterFile;
use rfaas::rdma::shm::ShmFabric;
use serde_json::{json, Value};

const RM_KEYS: &str = "heartbeat_timeout_ms = 900\ndefault_ttl_ms = 5000\n";

struct Setup {
    rm: ResourceManager,
    ems: Vec<Manager>,
    cluster_file: PathBuf,
}

impl Setup {
    fn start(rm_keys: &str) -> Setup {
        let rm = ResourceManager::start(rm_keys);
        let cores = common::cores();
        let ems: Vec<Manager> = (0..3)
            .map(|i| manager_for_rm(&rm, &format!("n{i}"), &[cores[i % cores.len()]], ""))
            .collect();
        wait_for(common::NO_HANG, "three live nodes", || {
            let m = rm.metrics();
            (m["nodes_alive"] == 3).then_some(())
        });
        let cluster_file = write_cluster_file(&rm, &ems, "em-");
        Setup {
            rm,
            ems,
            cluster_file,
        }
    }

    fn cluster(&self) -> Cluster {
        Cluster::open(Some(&self.cluster_file)).unwrap()
    }

    fn free(&self) -> u64 {
        self.rm.metrics()["cores_grantable"].as_u64().unwrap()
    }

    /// A lease of one core and an allocation of [`spec`] under it over shm, with its executor's
    /// pid and the executor manager that hosts it.
    fn leased_allocation(&self) -> (Lease, Executor<ShmFabric>, i32, &Manager) {
        let lease = self.cluster().lease(1, &LeaseOptions::default()).unwrap();
        let exec = self
            .cluster()
            .allocate_leased(&ShmFabric::new().unwrap(), &lease, &spec(), opts())
            .unwrap();
        let pid = exec.allocation().pid as i32;
        let em = self
            .ems
            .iter()
            .find(|m| m.http == lease.parts()[0].address)
            .expect("the lease's executor manager");
        (lease, exec, pid, em)
    }
}

fn spec() -> AllocationSpec {
    let mut s = AllocationSpec::new(functions_library().to_vec(), &["echo"]);
    s.input_capacity = 64;
    s.output_capacity = 64;
    s.slots = 1;
    s.hot_timeout_ms = 0;
    s
}

fn opts() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    }
}

fn echo(exec: &rfaas::client::Executor<ShmFabric>, msg: &[u8]) -> Result<Vec<u8>, String> {
    let f = exec.function("echo").map_err(|e| e.to_string())?;
    let mut out = vec![0u8; 64];
    let n = exec.invoke(f, msg, &mut out).map_err(|e| e.to_string())?;
    out.truncate(n);
    Ok(out)
}

fn alloc_with_lease(hash: &str, lease: &str, cores: u32) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(&alloc_body(hash, &["echo"], cores)).unwrap();
    v["lease"] = json!(lease);
    v.to_string().into_bytes()
}

#[test]
fn lease_until_full_then_release_returns_capacity_and_managers_enforce_leases() {
    let s = Setup::start(RM_KEYS);
    let cluster = s.cluster();
    assert_eq!(s.free(), 3);

    // Without a lease, an executor manager refuses uploads and allocations, saying why.
    let lib = functions_library();
    let hash = rfaas::function::ContentHash::of(lib).to_hex();
    let (code, body) = s.ems[0].call("PUT", &format!("/v1/libraries/{hash}"), Some(lib));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("lease"), "{body}");
    let (code, body) = s.ems[0].call(
        "POST",
        "/v1/allocations",
        Some(alloc_body(&hash, &["echo"], 1).as_bytes()),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("lease"), "{body}");

    // Lease until full: a clear "no capacity" error.
    let leases: Vec<_> = (0..3)
        .map(|_| cluster.lease(1, &LeaseOptions::default()).unwrap())
        .collect();
    assert_eq!(s.free(), 0);
    match cluster.lease(1, &LeaseOptions::default()) {
        Err(ClientError::Manager {
            status: 503,
            message,
            ..
        }) => assert!(message.contains("no capacity"), "{message}"),
        other => panic!("expected no capacity, got {other:?}"),
    }

    // A wrong token, a lease elsewhere, more cores than leased: 403.
    let l0 = &leases[0];
    let home = l0.parts()[0].address.clone();
    let em = s.ems.iter().find(|m| m.http == home).unwrap();
    let other = s.ems.iter().find(|m| m.http != home).unwrap();
    em.upload_leased(lib, &l0.allocation_lease());
    // Under a lease with cores elsewhere: refused; under its own node's lease: stored.
    let (code, body) = common::http_as(
        &other.http,
        "PUT",
        &format!("/v1/libraries/{hash}"),
        Some(&format!("Bearer {}", other.secret)),
        &[("X-Rfaas-Lease", &l0.allocation_lease())],
        Some(lib),
    );
    assert_eq!(code, 403, "{body}");
    let here = leases
        .iter()
        .find(|l| l.parts()[0].address == other.http)
        .unwrap();
    other.upload_leased(lib, &here.allocation_lease());
    for (m, lease, cores, what) in [
        (em, format!("{}:{}", l0.id(), "0".repeat(64)), 1, "token"),
        (other, l0.allocation_lease(), 1, "no cores on node"),
        (em, l0.allocation_lease(), 2, "do not fit"),
        (em, "42:abc".to_string(), 1, "unknown"),
    ] {
        let (code, body) = m.call(
            "POST",
            "/v1/allocations",
            Some(&alloc_with_lease(&hash, &lease, cores)),
        );
        assert_eq!(code, 403, "{what}: {body}");
        assert!(body.contains(what), "{what}: {body}");
    }

    // On the granted node, with the lease: it works.
    let fabric = ShmFabric::new().unwrap();
    let exec = cluster
        .allocate_leased(&fabric, l0, &spec(), opts())
        .expect("allocate under a lease");
    assert_eq!(echo(&exec, b"hello").unwrap(), b"hello");
    // The lease's one core is in use: a second allocation under it is refused.
    let e = cluster
        .allocate_leased(&fabric, l0, &spec(), opts())
        .err()
        .expect("over the lease");
    assert!(e.to_string().contains("403"), "{e}");
    drop(exec);

    // Release: capacity back exactly, and leasable again.
    let mut leases = leases.into_iter();
    leases.next().unwrap().release().unwrap();
    assert_eq!(s.free(), 1);
    drop(leases);
    assert_eq!(s.free(), 3);

    // Cluster::allocate leases by itself (what `rfaas invoke` and the benchmarks use), and
    // gives the core back with the executor.
    let exec = cluster.allocate(&fabric, &spec(), opts(), 0).unwrap();
    assert!(exec.lease().is_some());
    assert_eq!(s.free(), 2);
    assert_eq!(echo(&exec, b"auto").unwrap(), b"auto");
    drop(exec);
    assert_eq!(s.free(), 3);
}

#[test]
fn an_unrenewed_lease_expires_and_its_executor_stops() {
    let s = Setup::start(RM_KEYS);
    let cluster = s.cluster();
    let fabric = ShmFabric::new().unwrap();
    let ttl = Duration::from_millis(700);

    // Renewed automatically: outlives its TTL several times.
    let kept = cluster
        .lease(
            1,
            &LeaseOptions {
                ttl: Some(ttl),
                ..LeaseOptions::default()
            },
        )
        .unwrap();
    let kept_exec = cluster
        .allocate_leased(&fabric, &kept, &spec(), opts())
        .unwrap();

    // Not renewed: it expires, and the executor manager stops its executor.
    let lapsed = cluster
        .lease(
            1,
            &LeaseOptions {
                // Long enough to allocate first (spawning an executor takes a while, longer
                // on a busy machine).
                ttl: Some(Duration::from_millis(6000)),
                auto_renew: false,
                ..LeaseOptions::default()
            },
        )
        .unwrap();
    let exec = cluster
        .allocate_leased(&fabric, &lapsed, &spec(), opts())
        .unwrap();
    let pid = exec.allocation().pid as i32;
    assert_eq!(echo(&exec, b"before").unwrap(), b"before");
    wait_for(
        common::NO_HANG,
        "the lapsed lease's executor to stop",
        || (!alive(pid)).then_some(()),
    );
    let (code, body) =
        s.rm.call("GET", &format!("/v1/leases/{}", lapsed.id()), None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("expired"), "{body}");
    // Invoking now fails with an error, not by waiting out its timeout.
    let e = echo(&exec, b"after").unwrap_err();
    assert!(!e.contains("no result within"), "{e}");
    drop(exec);
    lapsed.abandon();

    assert!(kept.ttl() == ttl);
    std::thread::sleep(ttl * 2);
    assert_eq!(echo(&kept_exec, b"still").unwrap(), b"still");
    let (code, body) = s.rm.call("GET", &format!("/v1/leases/{}", kept.id()), None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"live\""), "{body}");
    drop(kept_exec);
    drop(kept);
    wait_for(common::NO_HANG, "all cores free", || {
        (s.free() == 3).then_some(())
    });
}

#[test]
fn a_killed_executor_manager_ends_its_leases_and_its_cores_leave() {
    let mut s = Setup::start(RM_KEYS);
    let cluster = s.cluster();
    let spread = LeaseOptions {
        policy: rfaas::control::resource_manager_api::Policy::Spread,
        ..LeaseOptions::default()
    };
    let leases: Vec<_> = (0..3).map(|_| cluster.lease(1, &spread).unwrap()).collect();
    let victim = s.ems.remove(0);
    let lost = leases
        .iter()
        .find(|l| l.parts()[0].address == victim.http)
        .expect("a lease on every node");
    let _ = killpg(Pid::from_raw(victim.pid()), Signal::SIGKILL);
    drop(victim);
    wait_for(common::NO_HANG, "the node to be declared dead", || {
        let m = s.rm.metrics();
        (m["nodes_dead"] == 1 && m["nodes_alive"] == 2).then_some(m)
    });
    let (code, body) = s.rm.call("GET", &format!("/v1/leases/{}", lost.id()), None);
    assert_eq!(code, 200, "{body}");
    // Ended because its node (the victim, registered as "n0" by Setup) died.
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        state["state"]["ended"],
        json!({"kind": "node_dead", "node": "n0"}),
        "{body}"
    );
    let e = lost.renew().unwrap_err().to_string();
    assert!(e.contains("410"), "{e}");
    // Its core left the pool: the other two are held, nothing is grantable.
    assert_eq!(s.free(), 0);
    match cluster.lease(1, &LeaseOptions::default()) {
        Err(ClientError::Manager { status: 503, .. }) => {}
        other => panic!("expected no capacity, got {other:?}"),
    }
    drop(leases);
    assert_eq!(s.free(), 2);
}

#[test]
fn resource_manager_kill9_and_restart_while_invoking() {
    let mut s = Setup::start(RM_KEYS);
    // The restarted resource manager must listen where the managers and clients look.
    let toml = s.rm.dir.path().join("rm.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("127.0.0.1:0", &s.rm.http);
    std::fs::write(&toml, text).unwrap();
    let cluster = s.cluster();
    let fabric = ShmFabric::new().unwrap();
    let lease = cluster
        .lease(
            1,
            &LeaseOptions {
                ttl: Some(Duration::from_millis(1500)),
                ..LeaseOptions::default()
            },
        )
        .unwrap();
    let exec = Arc::new(
        cluster
            .allocate_leased(&fabric, &lease, &spec(), opts())
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let invoker = {
        let (exec, stop, ok, failed) = (exec.clone(), stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match echo(&exec, b"ping") {
                    Ok(v) if v == b"ping" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    wait_for(common::NO_HANG, "invocations before the restart", || {
        (ok.load(Ordering::Relaxed) >= 10).then_some(())
    });
    let before = ok.load(Ordering::Relaxed);
    s.rm.kill9_and_restart();
    let addr = s.rm.http.clone();
    assert_eq!(
        addr,
        cluster.resource_manager.as_ref().unwrap().url()[7..],
        "same address"
    );
    // The state comes back: three nodes (heartbeating again) and the lease.
    wait_for(common::NO_HANG, "three live nodes again", || {
        let m = s.rm.metrics();
        (m["nodes_alive"] == 3 && m["leases_live"] == 1).then_some(())
    });
    // Longer than the lease's TTL: renewals reach the new process.
    std::thread::sleep(Duration::from_millis(2000));
    let (code, body) =
        s.rm.call("GET", &format!("/v1/leases/{}", lease.id()), None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"live\""), "{body}");
    stop.store(true, Ordering::Relaxed);
    invoker.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "invocations failed");
    assert!(ok.load(Ordering::Relaxed) > before + 10);
    drop(exec);
    drop(lease);
    assert_eq!(s.free(), 3);
    // Registered again, no core granted twice.
    assert_eq!(s.rm.metrics()["cores_total"], 3);
}

#[test]
fn local_cluster_with_a_resource_manager_invokes_and_stops_without_leftovers() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let nodes = common::cores().len().min(2);
    let out = Command::new(common::rfaas_bin())
        .args(["local-cluster", "start", "--resource-manager", "--nodes"])
        .arg(nodes.to_string())
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap();
    let stop = || {
        Command::new(common::rfaas_bin())
            .args(["local-cluster", "stop", "--run-dir"])
            .arg(&run)
            .output()
            .unwrap()
    };
    if !out.status.success() {
        stop();
        panic!("start: {}", String::from_utf8_lossy(&out.stderr));
    }
    let file = ClusterFile::load(&run.join("cluster.json")).unwrap();
    let rm = file
        .resource_manager
        .clone()
        .expect("cluster.json names the rm");
    let pids: Vec<i32> = rfaas::cluster::local::read_pids(&run.join("pids"))
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(pids.len(), nodes + 1);
    assert!(pids.iter().all(|p| alive(*p)));

    // `rfaas invoke` leases through the resource manager by itself.
    let out =
        common::invoke_echo_command(dir.path(), &run.join("cluster.json"), b"through a lease")
            .output()
            .unwrap();
    assert!(
        out.status.success() && out.stdout == b"through a lease",
        "invoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `rfaas status` shows the resource manager's nodes.
    let out = Command::new(common::rfaas_bin())
        .args(["status", "--cluster"])
        .arg(run.join("cluster.json"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains(&format!("resource manager {rm}")) && table.contains("em-0"),
        "{table}"
    );
    assert!(
        table.contains(&format!("{nodes} node(s), {nodes} cores free")),
        "{table}"
    );

    let out = stop();
    assert!(
        out.status.success(),
        "stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived local-cluster stop");
        assert!(common::group_members(pid).is_empty());
    }
    assert!(!run.join("pids").exists());
    // The resource manager's durable state outlives the cluster (`start --resume-state`).
    let state =
        rfaas::resource_manager::store::recovery::recover(&run.join("rm-state"), 100).unwrap();
    assert!(state.snapshot.is_some(), "{state:?}");
}

#[test]
fn a_manager_declared_dead_registers_again_and_stops_what_ended() {
    use nix::sys::signal::kill;
    let s = Setup::start(RM_KEYS);
    let (lease, exec, pid, em) = s.leased_allocation();
    // The manager stops answering (its executor keeps running): declared dead, lease ended.
    kill(Pid::from_raw(em.pid()), Signal::SIGSTOP).unwrap();
    wait_for(common::NO_HANG, "the node to be declared dead", || {
        let m = s.rm.metrics();
        (m["nodes_dead"] == 1).then_some(())
    });
    kill(Pid::from_raw(em.pid()), Signal::SIGCONT).unwrap();
    // It hears 409, registers again with the lease it hosts, learns it ended, stops it.
    wait_for(
        common::NO_HANG,
        "the ended lease's executor to stop",
        || (!alive(pid)).then_some(()),
    );
    wait_for(common::NO_HANG, "the node alive again", || {
        let m = s.rm.metrics();
        (m["nodes_alive"] == 3 && m["cores_grantable"] == 3).then_some(())
    });
    assert!(em.log_text().contains("registering again"));
    drop(exec);
    lease.abandon();
}

#[test]
fn a_frozen_executor_manager_s_executor_stops_when_its_lease_can_no_longer_be_vouched_for() {
    let s = Setup::start(RM_KEYS);
    let (lease, exec, pid, em) = s.leased_allocation();
    assert_eq!(echo(&exec, b"before").unwrap(), b"before");
    // Frozen: it neither heartbeats nor stops anything. The resource manager declares the node
    // dead and ends the lease; the executor must stop serving by itself.
    let em_pid = Pid::from_raw(em.pid());
    nix::sys::signal::kill(em_pid, Signal::SIGSTOP).unwrap();
    struct Thaw(Pid);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, Signal::SIGCONT);
        }
    }
    let _thaw = Thaw(em_pid);
    wait_for(
        Duration::from_secs(30),
        "the frozen manager's executor to stop",
        || (!alive(pid)).then_some(()),
    );
    assert!(
        echo(&exec, b"after").is_err(),
        "an executor served after its manager froze"
    );
    wait_for(Duration::from_secs(10), "the lease to end", || {
        let (_, body) =
            s.rm.call("GET", &format!("/v1/leases/{}", lease.id()), None);
        body.contains("ended").then_some(())
    });
}
