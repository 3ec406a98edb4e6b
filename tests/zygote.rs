//! The zygote executors are forked from, with a real executor manager and real executors on
//! 127.0.0.1.
//!
//! * By default (`executor_start = "fork"`) every executor, fresh or pooled, is a child of the
//!   manager's zygote (itself a child of the manager): a new process per allocation, which
//!   serves it; the zygote never maps a tenant's library and outlives the allocations.
//! * With `executor_start = "exec"` there is no zygote: executors are the manager's children.
//! * A zygote killed with SIGKILL takes its executors with it (their allocations end, their
//!   cores come back), and the next allocation gets a new zygote.
//! * The zygote is gone once the manager stops, by SIGTERM or by SIGKILL.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rfaas::client::{AllocationSpec, ClientOptions, Executor, ManagerClient};

const DID_NOT_HANG: Duration = Duration::from_secs(20);

fn manager(extra: &str) -> Manager {
    Manager::start_with(ManagerOptions {
        extra: format!("{}{extra}", ManagerOptions::default().extra),
        ..Default::default()
    })
}

/// The parent of `pid`.
fn parent(pid: u32) -> Option<u32> {
    rfaas::cluster::procs::stat(pid as i32).map(|s| s.ppid as u32)
}

/// The running zygote's pid, as the manager reports it.
fn zygote(m: &Manager) -> u32 {
    wait_for(DID_NOT_HANG, "the manager to report its zygote", || {
        let p = m.status().pool;
        assert_eq!(p.executor_start, "fork", "{p:?}");
        p.zygote.filter(|&z| alive(z as i32))
    })
}

fn gone(pid: u32, what: &str) {
    wait_for(DID_NOT_HANG, what, || (!alive(pid as i32)).then_some(()));
}

#[test]
fn executors_are_new_children_of_the_zygote_and_serve() {
    for pool_size in [0, 1] {
        let m = manager(&format!("pool_size = {pool_size}\n"));
        let z = zygote(&m);
        assert_eq!(
            parent(z),
            Some(m.pid() as u32),
            "the zygote is the manager's"
        );
        // Its content hash: part of the cached library's path.
        let lib = m.upload(functions_library());
        let manager = ManagerClient::new(&m.http, &m.secret);
        let spec = AllocationSpec::new(functions_library().to_vec(), &["echo"]);
        let mut pids = Vec::new();
        for i in 0..2u8 {
            let fabric = rfaas::rdma::shm::ShmFabric::new().unwrap();
            let exec = Executor::allocate(fabric, &manager, &spec, ClientOptions::default())
                .expect("allocate through the client");
            let a = exec.allocation().clone();
            assert_eq!(parent(a.pid), Some(z), "pool {pool_size}: forked: {a:?}");
            assert_ne!(a.pid, z);
            assert!(!pids.contains(&a.pid), "pool {pool_size}: a new process");
            let cmdline = rfaas::cluster::procs::cmdline(a.pid as i32).unwrap();
            assert_eq!(cmdline[1..], ["executor".to_string()], "{cmdline:?}");
            let echo = exec.function("echo").unwrap();
            let input = [i + 1; 300];
            let mut out = vec![0u8; 512];
            let n = exec.invoke(echo, &input, &mut out).unwrap();
            assert_eq!(&out[..n], &input[..]);
            // The tenant's library is in its executor, never in the zygote.
            assert!(maps_contain(a.pid, &lib), "{lib} in {}", a.pid);
            assert!(!maps_contain(z, &lib), "the zygote maps {lib}");
            exec.deallocate().unwrap();
            gone(a.pid, "the executor to end with its allocation");
            pids.push(a.pid);
        }
        assert_eq!(zygote(&m), z, "the same zygote serves every allocation");
    }
}

#[test]
fn with_exec_there_is_no_zygote_and_bad_values_are_refused() {
    let m = manager("pool_size = 0\nexecutor_start = \"exec\"\n");
    let lib = m.upload(functions_library());
    let a = m.allocate(&lib, &["echo"], 1);
    assert_eq!(parent(a.pid), Some(m.pid() as u32), "{a:?}");
    let p = m.status().pool;
    assert_eq!(
        (p.executor_start.as_str(), p.zygote),
        ("exec", None),
        "{p:?}"
    );
    m.release(&a);
    manager_refuses(&["--executor-start", "vfork"], "fork or exec");
}

#[test]
fn a_killed_zygote_takes_its_executors_and_is_replaced() {
    let m = manager("pool_size = 0\n");
    let lib = m.upload(functions_library());
    let z = zygote(&m);
    let a = m.allocate(&lib, &["echo"], 1);
    assert_eq!(parent(a.pid), Some(z));
    kill(Pid::from_raw(z as i32), Signal::SIGKILL).unwrap();
    gone(a.pid, "the executor to die with its zygote");
    // Its allocation ended and its core came back.
    wait_for(DID_NOT_HANG, "the allocation to end", || {
        let st = m.status();
        let ended = st
            .allocations
            .iter()
            .any(|r| r.id == a.id && r.state == "exited");
        (ended && st.cores_free == st.cores_total).then_some(())
    });
    // The next allocation gets a new zygote.
    let b = m.allocate(&lib, &["echo"], 1);
    let z2 = zygote(&m);
    assert_ne!(z2, z);
    assert_eq!(parent(b.pid), Some(z2), "{b:?}");
    m.release(&b);
}

#[test]
fn the_zygote_dies_with_the_manager() {
    // Stopped with SIGTERM.
    let mut m = manager("pool_size = 1\n");
    let z = zygote(&m);
    assert!(m.terminate(DID_NOT_HANG).is_some(), "the manager stopped");
    gone(z, "the zygote to go with its manager");
    // Killed with SIGKILL: the zygote's death signal, and its children's.
    let m = manager("pool_size = 1\n");
    let lib = m.upload(functions_library());
    let z = zygote(&m);
    let a = m.allocate(&lib, &["echo"], 1);
    kill(Pid::from_raw(m.pid()), Signal::SIGKILL).unwrap();
    gone(z, "the orphaned zygote to die");
    gone(a.pid, "the orphaned executor to die");
}

#[test]
fn a_stopped_zygote_neither_keeps_executors_alive_nor_blocks_allocations() {
    let m = manager("pool_size = 0\n");
    let lib = m.upload(functions_library());
    let z = zygote(&m);
    let a = m.allocate(&lib, &["echo"], 1);
    kill(Pid::from_raw(z as i32), Signal::SIGSTOP).unwrap();
    // Released while its zygote cannot reap it or say how it ended: the manager signals it
    // through its pidfd, sees it end there, and frees its core.
    m.release(&a);
    gone(a.pid, "the released executor to end");
    wait_for(DID_NOT_HANG, "its core to come back", || {
        let st = m.status();
        (st.cores_free == st.cores_total).then_some(())
    });
    // The next allocation does not wait for the stopped zygote beyond its answer timeout: it is
    // retired, the executor exec'd.
    let b = m.allocate(&lib, &["echo"], 1);
    assert_eq!(parent(b.pid), Some(m.pid() as u32), "{b:?}");
    m.release(&b);
    // The retired zygote had no children left: it is killed (stopped or not).
    let _ = kill(Pid::from_raw(z as i32), Signal::SIGCONT);
    gone(z, "the retired zygote to be killed");
    // And the one after gets a new zygote.
    let c = m.allocate(&lib, &["echo"], 1);
    let z2 = zygote(&m);
    assert_ne!(z2, z);
    assert_eq!(parent(c.pid), Some(z2), "{c:?}");
    m.release(&c);
}
