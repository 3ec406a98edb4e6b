//! `rm_load_benchmark` end to end at a small scale: a real resource manager, the async
//! clients of the cycles, the paced heartbeats and renewals over their own connections, the
//! `kill -9` restart and the CSV. It checks what the benchmark must count right whatever the
//! machine's speed (no timing is asserted): every cycle's three calls answered, nothing
//! refused, no background call failed, every held lease live and restored after the restart.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

const NODES: u32 = 8;
const LEASES: u32 = 40;
const CLIENTS: u32 = 5;
const CYCLES: u32 = 300;

/// (phase, metric) → value of the benchmark's CSV.
fn read_rows(csv: &str) -> HashMap<(String, String), f64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (phase, metric, value) = (col("phase"), col("metric"), col("value"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let v = f[value].parse().unwrap_or_else(|e| panic!("{l}: {e}"));
            ((f[phase].to_string(), f[metric].to_string()), v)
        })
        .collect()
}

#[test]
fn the_load_generator_completes_every_cycle_and_the_restart_restores_every_held_lease() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rm-load.csv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rm_load_benchmark"))
        .args(["--cores-per-node", "16", "--ttl-ms", "600000"])
        .args([
            "--heartbeat-timeout-ms",
            "60000",
            "--background-threads",
            "3",
        ])
        .args([
            "--nodes",
            &NODES.to_string(),
            "--leases",
            &LEASES.to_string(),
        ])
        .args([
            "--clients",
            &CLIENTS.to_string(),
            "--cycles",
            &CYCLES.to_string(),
        ])
        .arg("--rfaas")
        .arg(env!("CARGO_BIN_EXE_rfaas"))
        .arg("--dir")
        .arg(dir.path().join("state"))
        .arg("--output")
        .arg(&out)
        .spawn()
        .expect("start rm_load_benchmark");
    // Did not hang: a generous limit.
    let Some(status) = common::wait_exit(&mut child, Duration::from_secs(300)) else {
        let _ = child.kill();
        panic!("rm_load_benchmark did not finish within 300 s");
    };
    assert!(status.success(), "rm_load_benchmark failed: {status}");

    let rows = read_rows(&std::fs::read_to_string(&out).unwrap());
    let get = |phase: &str, metric: &str| {
        *rows
            .get(&(phase.to_string(), metric.to_string()))
            .unwrap_or_else(|| panic!("no row {phase}/{metric}"))
    };
    for call in ["grant", "renew", "release"] {
        assert_eq!(
            get("load", &format!("{call}_count")),
            f64::from(CYCLES),
            "{call}"
        );
    }
    assert_eq!(get("load", "refused"), 0.0);
    assert_eq!(get("load", "ended_by_node_death"), 0.0);
    assert_eq!(
        get("first_10pct", "grant_release_count"),
        f64::from(CYCLES / 10)
    );
    for k in 1..=10 {
        let tenth = format!("tenth_{k}");
        assert_eq!(
            get(&tenth, "grant_release_count"),
            f64::from(CYCLES / 10),
            "{tenth}"
        );
    }
    assert_eq!(
        get("tenth_1", "grant_release_p50"),
        get("first_10pct", "grant_release_p50")
    );
    assert_eq!(
        get("tenth_10", "grant_release_p50"),
        get("last_10pct", "grant_release_p50")
    );
    assert_eq!(get("floor", "health_count"), 2000.0);
    assert_eq!(get("background", "heartbeat_failed"), 0.0);
    assert_eq!(get("background", "renewal_failed"), 0.0);
    // Each of the 3 connections of the heartbeats and of the renewals sends its first at once.
    assert!(get("background", "heartbeat_count") >= 3.0);
    assert!(get("background", "renewal_count") >= 3.0);
    // The cycles' leases were released: the held ones are live, and all came back.
    assert_eq!(get("rm", "leases_live"), f64::from(LEASES));
    assert_eq!(get("rm", "node_deaths"), 0.0);
    assert_eq!(get("restart", "leases_restored"), f64::from(LEASES));
}
