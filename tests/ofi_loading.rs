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
