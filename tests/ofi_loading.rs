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
