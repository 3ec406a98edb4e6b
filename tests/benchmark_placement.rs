//! The invocation benchmarks never pin their client onto their own workers, and say on stderr
//! where each thread runs: `warm_benchmark` and `cold_benchmark` against a real local cluster
//! (`rfaas local-cluster start`) with one core per executor manager.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::cores;
use common::local_cluster::LocalCluster;

/// Runs a benchmark binary to its end (its calls time out after 10 s, so it cannot hang).
fn run_bench(bin: &str, cluster: &LocalCluster, output: &Path, extra: &[&str]) -> Output {
    let out = Command::new(bin)
        .arg("--cluster")
        .arg(cluster.cluster_file())
        .arg("--library")
        .arg(cluster.library())
        .arg("--output")
        .arg(output)
        .args(["--sizes", "64", "--timeout-s", "10"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{bin}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The core numbers the stderr lines give: `(label, core)` for every "worker N of NODE runs on
/// core C" (label "worker") and "client thread pinned to core C" (label "client") in order, and
/// whether a "client thread not pinned" line appeared.
fn placements(stderr: &str) -> (Vec<(&'static str, usize)>, bool) {
    let number_after = |line: &str, key: &str| -> Option<usize> {
        let rest = &line[line.find(key)? + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let mut seen = Vec::new();
    let mut unpinned = false;
    for line in stderr.lines() {
        if line.contains(" runs on core ") {
            seen.push(("worker", number_after(line, " runs on core ").unwrap()));
        } else if line.contains("client thread pinned to core ") {
            seen.push((
                "client",
                number_after(line, "client thread pinned to core ").unwrap(),
            ));
        } else if line.contains("client thread not pinned") {
            unpinned = true;
        }
    }
    (seen, unpinned)
}

#[test]
fn warm_and_cold_benchmarks_keep_the_client_off_their_workers() {
    let allowed: Vec<usize> = cores().into_iter().map(|c| c as usize).collect();
    let nodes = allowed.len().min(2);
    // `nodes` executor managers of one core each, with a resource manager.
    let cluster = LocalCluster::start(
        &[],
        &["--nodes", &nodes.to_string(), "--cores-per-node", "1"],
    );
    // The local cluster gives its managers the first `nodes` cores of the cpuset, one each.
    let manager_cores = &allowed[..nodes];
    let out_dir = tempfile::tempdir().unwrap();

    let warm = run_bench(
        env!("CARGO_BIN_EXE_warm_benchmark"),
        &cluster,
        &out_dir.path().join("warm.csv"),
        &["--modes", "hot", "--repetitions", "200", "--warmup", "20"],
    );
    let stderr = String::from_utf8_lossy(&warm.stderr);
    let (seen, unpinned) = placements(&stderr);
    let workers: Vec<usize> = seen
        .iter()
        .filter(|(what, _)| *what == "worker")
        .map(|&(_, c)| c)
        .collect();
    assert_eq!(workers.len(), 1, "one worker, named on stderr:\n{stderr}");
    assert!(
        manager_cores.contains(&workers[0]),
        "the worker runs on a manager's core {manager_cores:?}:\n{stderr}"
    );
    let free: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| *c != workers[0])
        .collect();
    match free.last() {
        Some(&expected) => {
            let client: Vec<usize> = seen
                .iter()
                .filter(|(what, _)| *what == "client")
                .map(|&(_, c)| c)
                .collect();
            assert_eq!(
                client,
                [expected],
                "the client goes to the last core its worker does not use:\n{stderr}"
            );
        }
        None => assert!(
            unpinned,
            "one core only: the client says it is unpinned:\n{stderr}"
        ),
    }

    // cold_benchmark allocates anew for every call: whenever it names a worker's core, the
    // client's next placement is elsewhere.
    let cold = run_bench(
        env!("CARGO_BIN_EXE_cold_benchmark"),
        &cluster,
        &out_dir.path().join("cold.csv"),
        &["--modes", "cached", "--repetitions", "3", "--warmup", "1"],
    );
    let stderr = String::from_utf8_lossy(&cold.stderr);
    let (seen, _) = placements(&stderr);
    assert!(
        seen.iter().any(|(what, _)| *what == "client") || allowed.len() == 1,
        "cold_benchmark says where its client runs:\n{stderr}"
    );
    let mut last_worker = None;
    for (what, core) in seen {
        match what {
            "worker" => last_worker = Some(core),
            _ => assert_ne!(
                Some(core),
                last_worker,
                "client placed on its worker's core:\n{stderr}"
            ),
        }
    }
}
