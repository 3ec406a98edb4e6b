//! `cold_benchmark` against a real local cluster (one core, no resource manager):
//!
//! * one cold start at a time, it waits until the manager's pool is full again before each, so
//!   every cold start is served from the pool (back to back, the replacement could still be
//!   starting);
//! * `--bursts` runs rounds of concurrent cold starts against a manager with `oversubscribe`,
//!   one row per cold start, the thread as `rank` and the burst as `world_size`, phases that add
//!   up to each row's latency.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::local_cluster::LocalCluster;

/// The columns of a cold_benchmark row this test reads.
#[derive(Debug, serde::Deserialize)]
struct Row {
    mode: String,
    rank: u32,
    world_size: u32,
    repetition: usize,
    latency_ns: u64,
    allocation_ns: u64,
    spawn_ns: u64,
    code_load_ns: u64,
    connect_ns: u64,
    first_invocation_ns: u64,
    client_ns: u64,
}

/// A local shm cluster renting one core with `manager_config`, without a resource manager.
fn start(manager_config: &str) -> LocalCluster {
    LocalCluster::start(
        &[("em.toml", manager_config)],
        &[
            "--cores-per-node",
            "1",
            "--no-resource-manager",
            "--manager-config",
            "{dir}/em.toml",
        ],
    )
}

/// Runs cold_benchmark against `cluster` with `extra` flags to its end (calls time out after
/// 10 s); its rows.
fn cold_benchmark(cluster: &LocalCluster, name: &str, extra: &[&str]) -> Vec<Row> {
    let csv = cluster.dir.path().join(format!("{name}.csv"));
    let out = Command::new(env!("CARGO_BIN_EXE_cold_benchmark"))
        .arg("--cluster")
        .arg(cluster.cluster_file())
        .arg("--library")
        .arg(cluster.library())
        .arg("--output")
        .arg(&csv)
        .args(["--function", "empty", "--modes", "cached", "--sizes", "64"])
        .args(["--timeout-s", "10"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cold_benchmark {extra:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    read_rows(&csv)
}

fn read_rows(path: &Path) -> Vec<Row> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader.deserialize().map(|r| r.unwrap()).collect()
}

fn assert_phases_add_up(rows: &[Row]) {
    for r in rows {
        let sum = r.allocation_ns
            + r.spawn_ns
            + r.code_load_ns
            + r.connect_ns
            + r.first_invocation_ns
            + r.client_ns;
        assert_eq!(sum, r.latency_ns, "phases add up: {r:?}");
    }
}

#[test]
fn one_at_a_time_every_cold_start_is_served_from_a_full_pool() {
    let cluster = start("pool_size = 1\n");
    let rows = cold_benchmark(&cluster, "single", &["--repetitions", "4", "--warmup", "1"]);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for r in &rows {
        assert_eq!(
            r.mode, "cached-pool",
            "the benchmark waited for the replacement: {r:?}"
        );
        assert_eq!((r.rank, r.world_size), (0, 1));
    }
    assert_phases_add_up(&rows);
}

#[test]
fn bursts_of_concurrent_cold_starts_on_an_oversubscribed_core() {
    let cluster = start("pool_size = 2\noversubscribe = 4\n");
    let rows = cold_benchmark(
        &cluster,
        "bursts",
        &[
            "--bursts",
            "1,4",
            "--repetitions",
            "2",
            "--warmup",
            "0",
            "--hot-timeout",
            "0",
        ],
    );
    // Per burst size: every round has one row per thread.
    let mut seen: BTreeMap<u32, BTreeSet<(usize, u32)>> = BTreeMap::new();
    for r in &rows {
        let origin = r
            .mode
            .strip_prefix(&format!("cached-burst{}-", r.world_size))
            .unwrap_or_else(|| panic!("mode names the burst: {r:?}"));
        assert!(origin == "pool" || origin == "fresh", "{r:?}");
        assert!(r.rank < r.world_size, "{r:?}");
        assert!(
            seen.entry(r.world_size)
                .or_default()
                .insert((r.repetition, r.rank)),
            "one row per thread and round: {r:?}"
        );
    }
    let counts: Vec<(u32, usize)> = seen.iter().map(|(b, s)| (*b, s.len())).collect();
    assert_eq!(counts, vec![(1, 2), (4, 8)], "{rows:?}");
    assert_phases_add_up(&rows);
    // A burst of 4 against a pool of 2 (waited for before each round): at least those 2 come
    // from the pool, and the rest are not lost.
    let pooled = rows
        .iter()
        .filter(|r| r.world_size == 4 && r.mode.ends_with("-pool"))
        .count();
    assert!(pooled >= 4, "2 rounds, 2 pooled each at least: {rows:?}");
}
