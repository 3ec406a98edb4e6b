//! The executor pool, with a real executor manager and real executors on 127.0.0.1.
//!
//! * A pooled executor serves one allocation: every allocation gets a process of its own (a pid
//!   no earlier allocation had), and a pooled process has no library mapped before it is taken.
//! * Killing pooled processes, or a burst of allocations (as many as there are cores) against
//!   a pool of one, loses no allocation and never hangs: the pool replaces the dead and
//!   allocations that find it empty spawn fresh (`pool_size = 0` forces that path).
//! * Pooled processes are gone once the manager stops, by SIGTERM or by SIGKILL.
//! * A pooled process counts as ready only once its fabric listens (it said so on standby),
//!   and an allocation that comes while the pool's process is still starting waits for it
//!   instead of spawning another.
//! * Through the client (which asks for it), an allocation is answered as soon as its executor
//!   listens and has the configuration (from the pool, or fresh once it has started), before
//!   it has loaded the library. An executor that then fails to start fails the allocation with
//!   its reason all the same.
//! * `oversubscribe = N` rents each core N times (benchmarks only) and is refused together
//!   with a resource manager.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rfaas::client::{AllocationSpec, ClientError, ClientOptions, Executor, ManagerClient};
use rfaas::control::executor_manager_api::Allocation;

const DID_NOT_HANG: Duration = Duration::from_secs(20);

fn manager_with_pool(size: usize) -> Manager {
    Manager::start_with(ManagerOptions {
        extra: format!("{}pool_size = {size}\n", ManagerOptions::default().extra),
        ..Default::default()
    })
}

/// Waits until the pool holds `n` ready processes; their pids.
fn pool_ready(m: &Manager, n: usize) -> Vec<u32> {
    wait_for(DID_NOT_HANG, &format!("{n} pooled executors"), || {
        let p = m.status().pool;
        (p.ready.len() == n && p.ready.iter().all(|&pid| alive(pid as i32))).then_some(p.ready)
    })
}

fn allocate(m: &Manager, lib: &str) -> Allocation {
    m.allocate(lib, &["echo"], 1)
}

#[test]
fn every_allocation_gets_a_process_of_its_own_from_the_pool() {
    let m = manager_with_pool(1);
    let lib = m.upload(functions_library());
    let mut seen = HashSet::new();
    for round in 0..3 {
        let pooled = pool_ready(&m, 1)[0];
        assert!(
            !maps_contain(pooled, &lib),
            "round {round}: a pooled executor has no library loaded yet"
        );
        assert!(
            seen.insert(pooled),
            "round {round}: pid {pooled} was pooled before"
        );
        let a = allocate(&m, &lib);
        assert!(a.pooled, "round {round}: the pool had one ready: {a:?}");
        assert_eq!(a.pid, pooled, "round {round}: it is the pooled process");
        assert!(
            maps_contain(a.pid, &lib),
            "round {round}: the taken process loaded the library"
        );
        m.release(&a);
        assert!(!alive(a.pid as i32), "round {round}: never reused");
    }
    // The replacement of the last one starts once that one has ended.
    pool_ready(&m, 1);
    let p = m.status().pool;
    assert_eq!((p.size, p.taken), (1, 3), "{p:?}");
    // Its memory is accounted for.
    assert!(p.memory > 0, "{p:?}");
}

#[test]
fn a_pooled_executor_serves_invocations_and_only_its_client() {
    let m = manager_with_pool(1);
    pool_ready(&m, 1);
    let manager = ManagerClient::new(&m.http, &m.secret);
    let spec = AllocationSpec::new(functions_library().to_vec(), &["echo"]);
    let mut pids = Vec::new();
    for i in 0..2u8 {
        pool_ready(&m, 1);
        let fabric = rfaas::rdma::shm::ShmFabric::new().unwrap();
        let exec = Executor::allocate(fabric, &manager, &spec, ClientOptions::default())
            .expect("allocate through the client");
        assert!(exec.allocation().pooled);
        pids.push(exec.allocation().pid);
        let echo = exec.function("echo").unwrap();
        let input = [i; 100];
        let mut out = vec![0u8; 128];
        let n = exec.invoke(echo, &input, &mut out).unwrap();
        assert_eq!(&out[..n], &input[..]);
        exec.deallocate().unwrap();
    }
    assert_ne!(pids[0], pids[1]);
}

/// The client asks for an early answer: an executor, pooled or fresh, is answered once it
/// listens and has its configuration (it loads the library while the client connects), and
/// serves. One whose start fails (a function its library lacks) fails the allocation with the
/// executor's own reason, and the core comes back.
#[test]
fn executors_are_answered_early_and_a_failed_start_still_reaches_the_client() {
    for size in [1, 0] {
        let m = manager_with_pool(size);
        if size > 0 {
            pool_ready(&m, size);
        }
        let manager = ManagerClient::new(&m.http, &m.secret);
        let spec = AllocationSpec::new(functions_library().to_vec(), &["echo"]);
        let fabric = rfaas::rdma::shm::ShmFabric::new().unwrap();
        let exec = Executor::allocate(fabric, &manager, &spec, ClientOptions::default())
            .expect("allocate through the client");
        let a = exec.allocation().clone();
        assert_eq!((a.pooled, a.early), (size > 0, true), "{a:?}");
        assert_eq!(a.code_load_ns, 0, "not known when answered early: {a:?}");
        assert!(a.ready_within_ms > 0, "{a:?}");
        let echo = exec.function("echo").unwrap();
        let mut out = vec![0u8; 128];
        let n = exec.invoke(echo, b"early", &mut out).unwrap();
        assert_eq!(&out[..n], b"early");
        // Connected and answered: the manager sees it ready once it has read its report
        // (in the background after an early answer).
        wait_for(DID_NOT_HANG, "the allocation to be running", || {
            (manager.allocation(a.id).unwrap().state == "running").then_some(())
        });
        exec.deallocate().unwrap();

        if size > 0 {
            pool_ready(&m, size);
        }
        let bad = AllocationSpec::new(functions_library().to_vec(), &["no_such_function"]);
        let fabric = rfaas::rdma::shm::ShmFabric::new().unwrap();
        let err = Executor::allocate(fabric, &manager, &bad, ClientOptions::default())
            .err()
            .expect("a function the library lacks fails the allocation");
        match &err {
            ClientError::Manager {
                status, message, ..
            } => {
                assert_eq!(*status, 422, "{err:?}");
                assert!(message.contains("no_such_function"), "{err:?}");
            }
            other => panic!("pool {size}: expected the manager's refusal, got {other:?}"),
        }
        wait_for(DID_NOT_HANG, "the core to come back", || {
            let st = m.status();
            (st.cores_free == st.cores_total).then_some(())
        });
    }
}

#[test]
fn killed_pooled_executors_are_replaced_and_lose_nothing() {
    let m = manager_with_pool(2);
    let lib = m.upload(functions_library());
    let victims = pool_ready(&m, 2);
    for &pid in &victims {
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    }
    // Allocating right away works, whether the pool noticed yet or not.
    let a = allocate(&m, &lib);
    assert!(!victims.contains(&a.pid), "{a:?}");
    m.release(&a);
    let fresh = pool_ready(&m, 2);
    assert!(fresh.iter().all(|p| !victims.contains(p)), "{fresh:?}");
    let p = m.status().pool;
    assert!(p.died >= 1, "the deaths are counted: {p:?}");
    let b = allocate(&m, &lib);
    assert!(b.pooled && fresh.contains(&b.pid), "{b:?} from {fresh:?}");
    m.release(&b);
}

#[test]
fn a_burst_of_allocations_against_a_pool_of_one_loses_nothing() {
    let m = manager_with_pool(1);
    let lib = m.upload(functions_library());
    let burst = cores().len();
    let mut pids = HashSet::new();
    for round in 0..3 {
        pool_ready(&m, 1);
        let got: Vec<Allocation> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..burst).map(|_| s.spawn(|| allocate(&m, &lib))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Whether the replacement was ready in time for the second request is up to the
        // scheduler: every allocation succeeded, from the pool or fresh.
        assert_eq!(got.len(), burst, "round {round}");
        for a in &got {
            assert!(pids.insert(a.pid), "round {round}: pid {} reused", a.pid);
            m.release(a);
        }
    }
    let p = m.status().pool;
    assert_eq!(p.taken + p.empty, 3 * burst as u64, "{p:?}");
    let st = m.status();
    assert_eq!(st.cores_free, st.cores_total);
}

#[test]
fn pool_processes_die_with_the_manager() {
    // Stopped with SIGTERM.
    let mut m = manager_with_pool(2);
    let pooled = pool_ready(&m, 2);
    assert!(m.terminate(DID_NOT_HANG).is_some(), "the manager stopped");
    for pid in &pooled {
        wait_for(DID_NOT_HANG, "pooled executors to go", || {
            (!alive(*pid as i32)).then_some(())
        });
    }
    // Killed with SIGKILL: the executors' death signal.
    let m = manager_with_pool(2);
    let pooled = pool_ready(&m, 2);
    kill(Pid::from_raw(m.pid()), Signal::SIGKILL).unwrap();
    for pid in &pooled {
        wait_for(DID_NOT_HANG, "orphaned pooled executors to die", || {
            (!alive(*pid as i32)).then_some(())
        });
    }
}

#[test]
fn pool_size_zero_spawns_fresh_and_bad_sizes_are_refused() {
    let m = manager_with_pool(0);
    let lib = m.upload(functions_library());
    let a = allocate(&m, &lib);
    assert!(!a.pooled);
    let p = m.status().pool;
    assert_eq!((p.size, p.ready.len(), p.taken), (0, 0, 0), "{p:?}");
    m.release(&a);
    manager_refuses(&["--pool-size", "100000"], "pool_size");
}

/// Whether `pid` holds a listening Unix socket (the shm listener): an inode in
/// `/proc/net/unix` with the listening flag (`__SO_ACCEPTCON`, 0x10000) among its descriptors.
fn listens(pid: u32) -> bool {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let listening: std::collections::HashSet<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let inode = f.get(6)?;
            (flags & 0x10000 != 0).then(|| format!("socket:[{inode}]"))
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|t| listening.contains(t.to_string_lossy().as_ref()))
            })
        })
        .unwrap_or(false)
}

#[test]
fn a_pooled_process_is_ready_only_once_its_fabric_listens() {
    let m = manager_with_pool(1);
    let lib = m.upload(functions_library());
    for round in 0..3 {
        let a = allocate(&m, &lib);
        // Its end starts the replacement: from then on, every status that lists a process as
        // ready must find it listening (its shm listener's socket listens).
        m.release(&a);
        let pid = wait_for(DID_NOT_HANG, "the replacement to be ready", || {
            let p = m.status().pool;
            let pid = *p.ready.first()?;
            assert!(
                listens(pid) || !alive(pid as i32),
                "round {round}: pid {pid} is listed ready but does not listen yet"
            );
            Some(pid)
        });
        assert_ne!(pid, a.pid, "round {round}");
    }
}

#[test]
fn an_allocation_waits_for_a_starting_pooled_process_instead_of_spawning_another() {
    // A wait far longer than any start (the default, twice the recent start time, would
    // make the test depend on how busy the machine is): the test checks that the allocation
    // waits for the starting process, not how fast it starts.
    let m = Manager::start_with(ManagerOptions {
        extra: "request_timeout_ms = 30000\nexecutor_connect_timeout_ms = 30000\nstop_grace_ms = 1000\npool_size = 1\npool_wait_ms = 20000\n".into(),
        ..Default::default()
    });
    let lib = m.upload(functions_library());
    pool_ready(&m, 1);
    for round in 0..3 {
        let a = allocate(&m, &lib);
        assert!(a.pooled, "round {round}: {a:?}");
        // Released without an invocation: the replacement starts as the executor ends, before
        // the answer, and the next allocation comes while it starts.
        m.release(&a);
        let b = allocate(&m, &lib);
        assert!(
            b.pooled,
            "round {round}: the allocation waited for the starting process: {b:?}\n{}",
            m.log_text()
        );
        m.release(&b);
        pool_ready(&m, 1);
    }
    let p = m.status().pool;
    assert_eq!(
        (p.taken, p.empty),
        (6, 0),
        "no fresh spawn was needed: {p:?}"
    );
}

#[test]
fn oversubscribe_rents_each_core_several_times_and_only_without_a_resource_manager() {
    let one = vec![cores()[0]];
    let m = Manager::start_with(ManagerOptions {
        cores: one.clone(),
        extra: "pool_size = 0\noversubscribe = 3\nexecutor_connect_timeout_ms = 30000\n".into(),
        ..Default::default()
    });
    let st = m.status();
    assert_eq!((st.cores_total, st.cores_free), (3, 3), "{st:?}");
    assert!(
        m.log_text().contains("OVERSUBSCRIBED"),
        "the manager warns: {}",
        m.log_text()
    );
    let lib = m.upload(functions_library());
    let got: Vec<Allocation> = (0..3).map(|_| allocate(&m, &lib)).collect();
    for a in &got {
        assert_eq!(a.workers[0].core, one[0], "{a:?}");
    }
    let (code, body) = m.call(
        "POST",
        "/v1/allocations",
        Some(alloc_body(&lib, &["echo"], 1).as_bytes()),
    );
    assert_eq!(code, 409, "a fourth does not fit: {body}");
    for a in &got {
        m.release(a);
    }
    assert_eq!(m.status().cores_free, 3);
    // Refused with a resource manager, and out of range.
    for (flags, needle) in [
        (
            vec!["--oversubscribe", "2", "--resource-manager", "127.0.0.1:1"],
            "resource manager",
        ),
        (vec!["--oversubscribe", "0"], "oversubscribe"),
        (vec!["--oversubscribe", "1000"], "oversubscribe"),
    ] {
        manager_refuses(&flags, needle);
    }
}

/// The state letter of `pid`'s main thread (`R` running, `S` sleeping, ...), from
/// `/proc/PID/stat`.
fn main_thread_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the comm may hold spaces and parentheses, the state follows the last.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// An allocation request wakes the pooled process it would take (the "configuration coming"
/// nudge) before it is checked: one that then fails (an unknown library) leaves the process in
/// the pool, which goes back to sleep (no unbounded polling on the rentable core) and then
/// serves the next allocation as usual.
#[test]
fn a_pooled_process_woken_for_a_failed_request_sleeps_again_and_serves_the_next() {
    let m = manager_with_pool(1);
    let lib = m.upload(functions_library());
    let pooled = pool_ready(&m, 1)[0];
    let unknown = rfaas::function::ContentHash::of(b"no such library").to_hex();
    let asleep = || {
        wait_for(DID_NOT_HANG, "the pooled process to sleep", || {
            (main_thread_state(pooled) == Some('S')).then_some(())
        })
    };
    for round in 0..3 {
        asleep();
        // After a nudge that no allocation used, a manager nudges again only `NUDGE_INTERVAL`
        // later (a stream of refused requests must not keep a rentable core busy): the status
        // says when it would nudge again.
        wait_for(DID_NOT_HANG, "the manager to nudge again", || {
            m.status().pool.nudge_ready.then_some(())
        });
        let switches = voluntary_switches(pooled);
        let body = alloc_body(&unknown, &["echo"], 1);
        let (code, body) = m.call("POST", "/v1/allocations", Some(body.as_bytes()));
        assert_eq!(code, 404, "round {round}: an unknown library: {body}");
        // Its configuration never comes: after its bounded poll it sleeps in read(2) again,
        // having been woken (a sleeping thread switches voluntarily only once woken).
        asleep();
        assert!(
            voluntary_switches(pooled) > switches,
            "round {round}: the request woke the pooled process"
        );
        assert_eq!(
            pool_ready(&m, 1),
            vec![pooled],
            "round {round}: still the same pooled process"
        );
    }
    let a = allocate(&m, &lib);
    assert!(a.pooled, "{a:?}");
    assert_eq!(a.pid, pooled, "the nudged process took the allocation");
    m.release(&a);
}

/// How often `pid`'s main thread gave up its core voluntarily (slept).
fn voluntary_switches(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/PID/status")
}

/// A pooled executor makes worker 0's queue and buffers while it waits, in the client's default
/// shape: allocations of other shapes (smaller, and larger than those) get buffers that fit
/// them, and every slot carries inputs of the full capacity intact.
#[test]
fn pooled_executors_serve_allocations_of_any_shape() {
    let m = manager_with_pool(1);
    let manager = ManagerClient::new(&m.http, &m.secret);
    for (slots, capacity) in [(1u32, 64u32), (4, 4096), (8, 64 * 1024)] {
        pool_ready(&m, 1);
        let mut spec = AllocationSpec::new(functions_library().to_vec(), &["echo"]);
        spec.slots = slots;
        spec.input_capacity = capacity;
        spec.output_capacity = capacity;
        let fabric = rfaas::rdma::shm::ShmFabric::new().unwrap();
        let exec = Executor::allocate(fabric, &manager, &spec, ClientOptions::default())
            .expect("allocate through the client");
        assert!(exec.allocation().pooled, "{slots} x {capacity}");
        let echo = exec.function("echo").unwrap();
        // All slots in flight at once, each with a full-capacity input of its own bytes.
        let inputs: Vec<Vec<u8>> = (0..slots)
            .map(|s| {
                (0..capacity as usize)
                    .map(|i| (i as u32 * 7 + s * 31) as u8)
                    .collect()
            })
            .collect();
        let pending: Vec<_> = inputs
            .iter()
            .map(|input| {
                exec.submit(None, echo, input, capacity as usize)
                    .expect("submit")
            })
            .collect();
        for (s, p) in pending.into_iter().enumerate() {
            let mut out = vec![0u8; capacity as usize];
            let n = exec.wait(p, &mut out).expect("wait");
            assert_eq!(n, capacity as usize, "slot {s} of {slots} x {capacity}");
            assert!(
                out == inputs[s],
                "slot {s} of {slots} x {capacity}: echoed intact"
            );
        }
        exec.deallocate().unwrap();
    }
}
