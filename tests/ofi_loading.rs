//! The `ofi` provider opens libfabric when it is first used instead of linking it, so a binary
//! built with the `libfabric` feature starts as fast as one without it (Debian's libfabric pulls
//! in libinfinipath, whose constructor costs 0.1 to 0.25 s of every process start).

mod common;

use std::process::Command;

/// The libraries the dynamic linker loads for `exe` at start-up, as `ldd` lists them.
fn linked_libraries(exe: &str) -> Option<String> {
    let out = Command::new("ldd").arg(exe).output().ok()?;
    assert!(out.status.success(), "ldd {exe}: {out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn rfaas_starts_without_loading_libfabric() {
    let exe = env!("CARGO_BIN_EXE_rfaas");
    let Some(libs) = linked_libraries(exe) else {
        common::skip_unless_ci("ldd is not installed");
        return;
    };
    // The check is not vacuous: the C library and the loader are always there.
    assert!(libs.contains("libc.so"), "{libs}");
    // With the feature, the conformance suite's `ofi` runs prove the provider still opens it.
    for unwanted in ["libfabric", "libpsm", "libinfinipath"] {
        assert!(
            !libs.contains(unwanted),
            "{exe} loads {unwanted} at start-up:\n{libs}"
        );
    }
}

/// A process whose pid a SIGKILLed libfabric `shm` process had (the kernel recycles pids) finds
/// that process's region `/dev/shm/<pid>:0:0` still there; its first endpoint must open anyway
/// (it used to fail with `fi_enable: Device or resource busy`).
#[cfg(feature = "libfabric")]
#[test]
fn a_stale_shm_region_of_a_dead_process_with_this_pid_does_not_block_the_endpoint() {
    use rfaas::rdma::ofi::OfiFabric;
    use rfaas::rdma::Fabric;
    let stale = format!("/dev/shm/{}:0:0", std::process::id());
    std::fs::write(&stale, vec![0u8; 4096]).expect("a stale region in /dev/shm");
    // Nothing else in this test binary has opened a libfabric endpoint yet.
    let fabric = OfiFabric::with_provider(Some("shm"))
        .unwrap_or_else(|e| panic!("an ofi shm domain beside a stale region: {e}"));
    let cq = fabric.create_cq(16);
    assert!(cq.is_ok(), "{:?}", cq.err());
    drop(fabric);
    let _ = std::fs::remove_file(&stale);
}

/// The libfabric `shm` regions (`/dev/shm/<pid>:<n>:<n>`) of process `pid`.
#[cfg(feature = "libfabric")]
fn shm_regions_of(pid: u32) -> Vec<String> {
    let prefix = format!("{pid}:");
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix(&prefix).is_some_and(|rest| {
                        let parts: Vec<&str> = rest.split(':').collect();
                        parts.len() == 2
                            && parts
                                .iter()
                                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An executor on libfabric `shm` killed with SIGKILL never unlinks its regions; the executor
/// manager removes them once it has reaped it (before it reports the allocation ended), so they
/// do not stay in `/dev/shm` until reboot. This process opens no libfabric endpoint of its own.
#[cfg(feature = "libfabric")]
#[test]
fn an_ofi_executor_killed_with_sigkill_leaves_no_shm_region_once_reaped() {
    use common::{alloc_body, functions_library, wait_for, Manager, ManagerOptions, NO_HANG};
    use rfaas::control::executor_manager_api::{Allocation, AllocationStatus};
    let m = Manager::start_with(ManagerOptions {
        provider: "ofi",
        env: vec![(rfaas::env::OFI_PROVIDER, "shm".to_string())],
        ..ManagerOptions::default()
    });
    let lib = m.upload(functions_library());
    let (code, body) = m.call(
        "POST",
        "/v1/allocations",
        Some(alloc_body(&lib, &["echo"], 1).as_bytes()),
    );
    assert_eq!(code, 201, "allocation: {body}\n{}", m.log_text());
    let a: Allocation = serde_json::from_str(&body).unwrap();
    // The test is not vacuous: the executor's endpoint has a region named after its pid.
    let regions = wait_for(NO_HANG, "the executor's libfabric shm region", || {
        Some(shm_regions_of(a.pid)).filter(|r| !r.is_empty())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let state = wait_for(NO_HANG, "the manager to reap the executor", || {
        let (code, body) = m.call("GET", &format!("/v1/allocations/{}", a.id), None);
        assert_eq!(code, 200, "{body}");
        let s: AllocationStatus = serde_json::from_str(&body).unwrap();
        (s.state != "running").then_some(s)
    });
    assert_eq!(
        state.reason.as_deref(),
        Some("killed by signal 9 (SIGKILL)"),
        "{state:?}"
    );
    let left = shm_regions_of(a.pid);
    assert!(
        left.is_empty(),
        "regions {left:?} of the killed executor {} are still in /dev/shm (it had {regions:?})\n{}",
        a.pid,
        m.log_text()
    );
}

/// `rfaas local-cluster stop` removes the libfabric `shm` regions that the processes it stopped
/// left behind (a manager or executor it had to kill never unlinks its own), and no file of
/// another shape.
#[cfg(feature = "libfabric")]
#[test]
fn local_cluster_stop_removes_the_shm_regions_of_what_it_stopped() {
    let cluster = common::local_cluster::LocalCluster::start(
        &[],
        &[
            "--nodes",
            "1",
            "--cores-per-node",
            "1",
            "--no-resource-manager",
        ],
    );
    let pids = std::fs::read_to_string(cluster.run.join("pids")).unwrap();
    let manager: u32 = pids
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a manager pid in {pids:?}"));
    // What a manager killed with SIGKILL would have left, and a file of another shape that must
    // stay (that a live pid's regions stay is `shm_regions`' unit test: stop only looks at the
    // pids it stopped).
    let left_by_manager = format!("/dev/shm/{manager}:7:7");
    let other_shape = format!("/dev/shm/{manager}:7:x");
    for f in [&left_by_manager, &other_shape] {
        std::fs::write(f, b"region").unwrap();
    }
    let out = cluster.stop();
    let still = |f: &str| std::path::Path::new(f).exists();
    let (gone, other) = (!still(&left_by_manager), still(&other_shape));
    for f in [&left_by_manager, &other_shape] {
        let _ = std::fs::remove_file(f);
    }
    assert!(out.status.success(), "local-cluster stop: {out:?}");
    assert!(gone, "{left_by_manager} stayed after stop");
    assert!(other, "stop removed {other_shape}, not a region name");
}

/// A pooled executor has its libfabric endpoint open before any allocation takes it. One killed
/// while it waits in the pool, and one the manager kills when it stops, leave no region behind
/// once the manager has reaped them.
#[cfg(feature = "libfabric")]
#[test]
fn pooled_ofi_executors_killed_in_the_pool_or_at_stop_leave_no_shm_region() {
    use common::{wait_for, Manager, ManagerOptions, NO_HANG};
    use rfaas::control::executor_manager_api::ManagerStatus;
    let mut m = Manager::start_with(ManagerOptions {
        provider: "ofi",
        env: vec![(rfaas::env::OFI_PROVIDER, "shm".to_string())],
        ..ManagerOptions::default()
    });
    let pooled = |m: &Manager| {
        let (code, body) = m.call("GET", "/v1/status", None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<ManagerStatus>(&body)
            .unwrap()
            .pool
            .ready
    };
    let with_regions = |m: &Manager| {
        wait_for(NO_HANG, "a pooled executor with its shm region", || {
            pooled(m)
                .into_iter()
                .find(|&pid| !shm_regions_of(pid).is_empty())
        })
    };
    let first = with_regions(&m);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The manager reaps it, removes its regions and starts a replacement.
    let second = wait_for(NO_HANG, "a replacement in the pool", || {
        Some(with_regions(&m)).filter(|&p| p != first)
    });
    assert!(
        shm_regions_of(first).is_empty(),
        "{:?}",
        shm_regions_of(first)
    );
    // SIGTERM: the manager stops cleanly (libfabric's own handler, which would exit(1) at
    // once, must not have replaced the manager's).
    let stopped = m.terminate(NO_HANG).expect("the manager did not stop");
    assert!(stopped.success(), "{stopped:?}; its log:\n{}", m.log_text());
    assert!(
        shm_regions_of(second).is_empty(),
        "{:?} after the manager stopped; its log:\n{}",
        shm_regions_of(second),
        m.log_text()
    );
}
