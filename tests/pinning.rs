//! Executor workers are pinned, one per core, to the cores the executor manager reports, as the
//! operating system sees it (`/proc/PID/task/TID/status` and `sched_getaffinity`); concurrent
//! allocations never share a core; the order cores are rented out in (nearest the NIC first)
//! and a named NIC show in the status; the manager's own threads stay off the cores it rents
//! out; `rfaas status` finds the executor managers through the
//! resource manager when the cluster file lists none.
//!
//! Workers run warm (`hot_timeout_ms` 0): busy-polling workers would starve a 2-core machine.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use common::*;
use rfaas::client::{AllocationSpec, ClientOptions, Executor, ManagerClient};
use rfaas::rdma::shm::ShmFabric;

/// A worker thread of an executor, as /proc shows it.
#[derive(Debug)]
struct WorkerThread {
    tid: i32,
    index: usize,
    allowed: Vec<u32>,
    last_cpu: Option<u32>,
}

/// `Cpus_allowed_list` of a thread.
fn allowed_list(pid: i32, tid: i32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    rfaas::executor_manager::config::parse_cpulist(list.trim()).ok()
}

/// The CPU a thread last ran on (field 39 of its stat).
fn last_cpu(pid: i32, tid: i32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(36)?
        .parse()
        .ok()
}

/// The threads of `pid` named `rfaas-worker-N`.
fn worker_threads(pid: i32) -> Vec<WorkerThread> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let Some(index) = comm
            .trim()
            .strip_prefix("rfaas-worker-")
            .and_then(|i| i.parse().ok())
        else {
            continue;
        };
        let Some(allowed) = allowed_list(pid, tid) else {
            continue;
        };
        out.push(WorkerThread {
            tid,
            index,
            allowed,
            last_cpu: last_cpu(pid, tid),
        });
    }
    out.sort_by_key(|w| w.index);
    out
}

/// Waits until executor `pid` has `n` worker threads, each pinned to one core, and checks them
/// against `cores` (what the manager reported: worker `i` on `cores[i]`).
fn check_pinned(pid: i32, cores: &[u32]) {
    let n = cores.len();
    let workers = wait_for(NO_HANG, "every worker thread pinned to one core", || {
        let w = worker_threads(pid);
        (w.len() == n && w.iter().all(|t| t.allowed.len() == 1)).then_some(w)
    });
    let mut seen = BTreeSet::new();
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w.index, i, "worker indices 0..{n}: {workers:?}");
        assert_eq!(
            w.allowed,
            vec![cores[i]],
            "worker {i} (tid {}) is bound to {:?}, the manager reported core {}",
            w.tid,
            w.allowed,
            cores[i]
        );
        assert!(seen.insert(cores[i]), "two workers on core {}", cores[i]);
        // The same, through sched_getaffinity.
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(w.tid)).unwrap();
        let from_syscall: Vec<u32> = (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .map(|c| c as u32)
            .collect();
        assert_eq!(from_syscall, vec![cores[i]], "sched_getaffinity({})", w.tid);
        // A thread bound to one CPU runs there (it pinned itself, so it moved at once).
        assert_eq!(w.last_cpu, Some(cores[i]), "worker {i} last ran elsewhere");
    }
}

fn warm_spec(cores: u32) -> AllocationSpec {
    let mut spec = AllocationSpec::new(functions_library().to_vec(), &["echo"]);
    spec.cores = cores;
    spec.hot_timeout_ms = 0;
    spec
}

#[test]
fn each_worker_runs_on_its_own_core_as_the_manager_reports() {
    let all = cores();
    let m = Manager::start();
    let log = m.log_text();
    assert!(
        log.contains("cores rented out"),
        "the manager logs its core order at startup:\n{log}"
    );
    let st = m.status();
    let mut order = st.core_order.clone();
    assert_eq!(st.free_cores, st.core_order, "all free");
    order.sort_unstable();
    assert_eq!(
        order, all,
        "the core order is a permutation of the manager's cores"
    );

    let manager = ManagerClient::new(&m.http, &m.secret);
    let exec = Executor::allocate(
        ShmFabric::new().unwrap(),
        &manager,
        &warm_spec(all.len() as u32),
        ClientOptions::default(),
    )
    .expect("allocate every core");
    let a = exec.allocation().clone();
    let reported: Vec<u32> = a.workers.iter().map(|w| w.core).collect();
    assert_eq!(
        reported, st.core_order,
        "cores are taken in the preferred order"
    );
    // Every worker serves (so every worker thread is up), then the OS is asked where they run.
    let echo = exec.function("echo").unwrap();
    let mut out = [0u8; 16];
    for i in 0..exec.workers() {
        assert_eq!(exec.invoke_on(i, echo, b"pinned", &mut out).unwrap(), 6);
    }
    check_pinned(a.pid as i32, &reported);

    let st = m.status();
    let s = st.allocations.iter().find(|s| s.id == a.id).unwrap();
    assert_eq!(
        s.cores, reported,
        "status shows the allocation's cores in worker order"
    );
    assert!(st.free_cores.is_empty(), "{st:?}");
    let log = m.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("allocating") && l.contains(&format!("{reported:?}"))),
        "the manager logs the cores of each allocation:\n{log}"
    );
    exec.deallocate().unwrap();
}

/// `Cpus_allowed_list` of every thread of `pid`, with the thread's name.
fn thread_bindings(pid: i32) -> Vec<(String, Vec<u32>)> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process runs");
    dir.flatten()
        .filter_map(|e| {
            let tid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((comm.trim().to_string(), allowed_list(pid, tid)?))
        })
        .collect()
}

/// A manager that rents out some of its cores runs its own threads on the others (the default,
/// `manager_cores = "auto"`), and its executors still pin their workers to the rented cores;
/// `manager_cores = "all"` leaves its threads on its whole cpuset.
#[test]
fn the_manager_keeps_its_own_threads_off_the_cores_it_rents_out() {
    let all = cores();
    if all.len() < 2 {
        skip_unless_ci(&format!(
            "this test needs 2 cores, this process may use {all:?}"
        ));
        return;
    }
    let rented = vec![all[0]];
    let own: Vec<u32> = all[1..].to_vec();
    let m = Manager::start_with(ManagerOptions {
        cores: rented.clone(),
        ..Default::default()
    });
    // Two allocations in a row: from the pool, then from its replacement (or a fresh spawn).
    let manager = ManagerClient::new(&m.http, &m.secret);
    for round in 0..2 {
        let exec = Executor::allocate(
            ShmFabric::new().unwrap(),
            &manager,
            &warm_spec(1),
            ClientOptions::default(),
        )
        .expect("allocate the rented core");
        let echo = exec.function("echo").unwrap();
        let mut out = [0u8; 16];
        assert_eq!(exec.invoke(echo, b"off", &mut out).unwrap(), 3);
        let a = exec.allocation().clone();
        assert_eq!(a.workers[0].core, rented[0], "round {round}");
        check_pinned(a.pid as i32, &rented);
        // Every thread of the manager, those that served these requests too.
        let threads = thread_bindings(m.child.id() as i32);
        assert!(threads.len() >= 2, "{threads:?}");
        for (name, allowed) in &threads {
            assert_eq!(
                allowed, &own,
                "manager thread {name} runs on {allowed:?}, not only on the cores it does not rent out ({own:?})"
            );
        }
        exec.deallocate().unwrap();
    }
    assert_eq!(
        m.status().manager_cores,
        Some(own.clone()),
        "the status says where it runs"
    );
    let log = m.log_text();
    assert!(
        log.contains("manager threads bound off the rented cores"),
        "the manager logs where its threads run:\n{log}"
    );
    drop(m);

    let m = Manager::start_with(ManagerOptions {
        cores: rented.clone(),
        extra: format!(
            "{}manager_cores = \"all\"\n",
            ManagerOptions::default().extra
        ),
        ..Default::default()
    });
    assert_eq!(
        m.status().manager_cores,
        Some(vec![]),
        "not bound: shown as all"
    );
    for (name, allowed) in thread_bindings(m.child.id() as i32) {
        assert_eq!(
            allowed, all,
            "manager thread {name} with manager_cores = all"
        );
    }
}

/// Every thread of an executor (its workers, its fabric's threads) runs on its
/// allocation's cores once it serves: a pooled executor (answered early) and a fresh one
/// answered when ready (as the MPI layer asks), whose fabric threads started before their
/// allocation's cores were known.
#[test]
fn every_thread_of_an_executor_runs_on_its_allocations_cores() {
    let all = cores();
    if all.len() < 2 {
        skip_unless_ci(&format!(
            "this test needs 2 cores, this process may use {all:?}"
        ));
        return;
    }
    for (pool, early) in [(1, true), (0, false)] {
        let m = Manager::start_with(ManagerOptions {
            extra: format!("{}pool_size = {pool}\n", ManagerOptions::default().extra),
            ..Default::default()
        });
        let manager = ManagerClient::new(&m.http, &m.secret);
        let spec = warm_spec(1);
        let mut req = spec.request("pinning test".into());
        req.early_answer = early;
        manager.upload_for(&spec).expect("upload the library");
        let allocation = manager.allocate(&req).expect("allocate one core");
        assert_eq!(allocation.early, early, "pool {pool}");
        let exec = Executor::connect(
            ShmFabric::new().unwrap(),
            Some(manager.clone()),
            allocation,
            &spec,
            None,
            ClientOptions::default(),
        )
        .expect("connect");
        let echo = exec.function("echo").unwrap();
        let mut out = [0u8; 16];
        assert_eq!(exec.invoke(echo, b"mine", &mut out).unwrap(), 4);
        let a = exec.allocation().clone();
        let core = a.workers[0].core;
        check_pinned(a.pid as i32, &[core]);
        let threads = thread_bindings(a.pid as i32);
        // The worker and the fabric's listener thread at least (billing's, while it connects,
        // too: it ends once connected).
        assert!(
            threads.iter().any(|(n, _)| n == "rfaas-shm-ctl") && threads.len() >= 2,
            "worker and fabric threads: {threads:?}"
        );
        for (name, allowed) in &threads {
            assert_eq!(
                allowed,
                &vec![core],
                "executor thread {name} (pool {pool}, early answer {early}) may run on {allowed:?}, \
                 not only on its allocation's core {core}"
            );
        }
        exec.deallocate().unwrap();
    }
    // Several cores: each worker on its own, the fabric's threads on all of the allocation's.
    let m = Manager::start();
    let manager = ManagerClient::new(&m.http, &m.secret);
    let exec = Executor::allocate(
        ShmFabric::new().unwrap(),
        &manager,
        &warm_spec(2),
        ClientOptions::default(),
    )
    .expect("allocate two cores");
    let echo = exec.function("echo").unwrap();
    let mut out = [0u8; 16];
    for i in 0..exec.workers() {
        assert_eq!(exec.invoke_on(i, echo, b"two", &mut out).unwrap(), 3);
    }
    let a = exec.allocation().clone();
    let mut cores: Vec<u32> = a.workers.iter().map(|w| w.core).collect();
    check_pinned(a.pid as i32, &cores);
    cores.sort_unstable();
    for (name, allowed) in thread_bindings(a.pid as i32) {
        assert!(
            !allowed.is_empty() && allowed.iter().all(|c| cores.contains(c)),
            "executor thread {name} may run on {allowed:?}, outside its allocation's {cores:?}"
        );
    }
    exec.deallocate().unwrap();
}

#[test]
fn two_concurrent_one_core_allocations_get_different_cores() {
    let all = cores();
    if all.len() < 2 {
        skip_unless_ci(&format!(
            "this test needs 2 cores, this process may use {all:?}"
        ));
        return;
    }
    let m = Manager::start_with(ManagerOptions {
        cores: all[..2].to_vec(),
        ..Default::default()
    });
    let manager = ManagerClient::new(&m.http, &m.secret);
    let spec = warm_spec(1);
    // Both allocation requests race on the manager.
    let execs: Vec<Executor<ShmFabric>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    Executor::allocate(
                        ShmFabric::new().unwrap(),
                        &manager,
                        &spec,
                        ClientOptions::default(),
                    )
                    .expect("allocate one core")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let echo = execs[0].function("echo").unwrap();
    let mut out = [0u8; 16];
    let mut used = BTreeSet::new();
    for e in &execs {
        assert_eq!(e.invoke(echo, b"x", &mut out).unwrap(), 1);
        let a = e.allocation();
        assert_eq!(a.workers.len(), 1);
        assert!(
            used.insert(a.workers[0].core),
            "two allocations on core {}",
            a.workers[0].core
        );
        check_pinned(a.pid as i32, &[a.workers[0].core]);
    }
    assert_eq!(used, all[..2].iter().copied().collect::<BTreeSet<u32>>());
    let st = m.status();
    assert_eq!((st.cores_free, st.free_cores.len()), (0, 0));
    for e in execs {
        e.deallocate().unwrap();
    }
    assert_eq!(m.status().free_cores.len(), 2, "both cores back");
}

#[test]
fn a_named_nic_shows_in_the_status_and_a_missing_one_stops_the_manager() {
    // `lo` exists everywhere and has no locality: cpuset order, and the NIC is shown.
    let all = cores();
    let m = Manager::start_with(ManagerOptions {
        extra: format!("{}nic = \"lo\"\n", ManagerOptions::default().extra),
        ..Default::default()
    });
    let st = m.status();
    assert_eq!(st.nic.as_deref(), Some("lo"));
    assert_eq!(st.core_order, all, "no locality: cpuset order");
    assert!(st.nic_cores.is_empty());
    drop(m);

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    rfaas::control::secret::create_secret_file(&secret).unwrap();
    let mut child = Command::new(rfaas_bin())
        .args([
            "executor-manager",
            "--listen",
            "127.0.0.1:0",
            "--nic",
            "no-such-nic0",
        ])
        .arg("--secret-file")
        .arg(&secret)
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, NO_HANG);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the manager kept running with a NIC that does not exist");
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.unwrap().success());
    assert!(
        err.contains("no network device \"no-such-nic0\""),
        "a clear error: {err}"
    );
}

#[test]
fn status_finds_the_managers_through_the_resource_manager() {
    let rm = ResourceManager::start("");
    let all = cores();
    let m = manager_for_rm(&rm, "pin-node", &all, "");
    wait_for(NO_HANG, "the node registered", || {
        let (code, body) = rm.call("GET", "/v1/nodes", None);
        (code == 200 && body.contains("pin-node")).then_some(())
    });
    let cluster = rm.dir.path().join("cluster.json");
    std::fs::write(
        &cluster,
        serde_json::json!({
            "version": 1,
            "provider": "shm",
            "secret_file": "secret",
            "executor_managers": [],
            "resource_manager": rm.http,
        })
        .to_string(),
    )
    .unwrap();
    let out = Command::new(rfaas_bin())
        .args(["status", "--cluster"])
        .arg(&cluster)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order = rfaas::executor_manager::config::format_cpulist(&m.status().core_order);
    let row = text
        .lines()
        .find(|l| l.starts_with("pin-node") && l.contains(&m.http))
        .unwrap_or_else(|| panic!("the manager, found through the resource manager:\n{text}"));
    assert!(
        row.contains(&format!("{}/{}", all.len(), all.len())),
        "{text}"
    );
    assert!(
        text.contains("CORE ORDER")
            && text
                .lines()
                .any(|l| l.starts_with("pin-node") && l.contains(&order)),
        "{text}"
    );
}
