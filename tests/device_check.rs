//! `scripts/device-check.sh` on this machine: it must run, say what it found (here: no RDMA
//! device and no HPC libfabric provider, unless the machine has one), and write its CSV and
//! summary. On a machine with a device it would run the suites and benchmarks instead; this
//! test only runs the script where there is none (it says so otherwise).

use std::process::Command;

#[test]
fn device_check_reports_what_it_found_and_writes_its_files() {
    let has_device = std::fs::read_dir("/sys/class/infiniband")
        .map(|d| d.count() > 0)
        .unwrap_or(false);
    if has_device {
        eprintln!("this machine has an RDMA device: run scripts/device-check.sh by hand");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let r = Command::new(format!("{root}/scripts/device-check.sh"))
        .args(["--no-build", "--out"])
        .arg(out.path())
        .current_dir(root)
        .output()
        .expect("run scripts/device-check.sh");
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "device-check failed: {stdout}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).unwrap();
    assert_eq!(
        summary.trim(),
        stdout.trim(),
        "the summary is what it printed"
    );
    assert!(summary.contains("found no RDMA device"), "{summary}");
    let csv = std::fs::read_to_string(out.path().join("device-check.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("check,provider,detail,payload_bytes,p50_ns,p99_ns,result")
    );
    let fi_lists_hpc = Command::new("fi_info")
        .arg("-l")
        .output()
        .map(|o| {
            let l = String::from_utf8_lossy(&o.stdout).to_string();
            ["cxi:", "efa:", "opx:", "psm3:"]
                .iter()
                .any(|p| l.contains(p))
        })
        .unwrap_or(false);
    if !fi_lists_hpc {
        assert!(summary.contains("skipped:"), "{summary}");
        assert!(summary.contains("nothing to check"), "{summary}");
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), 1, "{csv}");
        assert!(
            rows[0].starts_with("none,") && rows[0].ends_with(",skipped"),
            "{csv}"
        );
    }
    // Bad arguments are refused clearly.
    let r = Command::new(format!("{root}/scripts/device-check.sh"))
        .args(["--iterations", "many"])
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--iterations needs a number"));
}
