//! The MPI layer under `mpirun` (feature `mpi`): `scalable_benchmark` with 1, 2 and 4 ranks on
//! this 2-core machine (`--oversubscribe`, root allowed), the Black–Scholes example, and an
//! executor killed in the middle of a run.
//!
//! Every test starts its own cluster (a resource manager and executor managers on shm, each
//! renting cores 0-1, so that 4 ranks find 4 leasable cores on 2 nodes), with always-warm
//! executors (`hot_timeout_ms` 0) so that busy-polling does not starve the two cores. Every wait
//! is bounded; `mpirun` is killed with everything it started when a test gives up.
//!
//! With feature `libfabric` too, the warm benchmark also runs on the `ofi` provider over
//! libfabric's `shm` and `tcp;ofi_rxm` (`ofi_*` tests): executors, managers and every rank use
//! the libfabric provider named by `RFAAS_OFI_PROVIDER`.

#![cfg(feature = "mpi")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    functions_library, manager_for_rm_on, wait_exit, wait_for, write_cluster_file_for, Manager,
    Net, ResourceManager,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_scalable_benchmark");
/// How long one `mpirun` may take before the test gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(45);

/// A resource manager and `nodes` executor managers (`n0`, `n1`, ...) renting cores 0-1 each,
/// the cluster file naming them all, and the function library written beside it.
struct TestCluster {
    rm: ResourceManager,
    ems: Vec<Manager>,
    file: PathBuf,
    library: PathBuf,
    net: Net,
}

impl TestCluster {
    fn start(nodes: usize) -> TestCluster {
        TestCluster::start_on(nodes, Net::SHM)
    }

    /// The cluster with its executors (and clients) on fabric `net`.
    fn start_on(nodes: usize, net: Net) -> TestCluster {
        let rm = ResourceManager::start("heartbeat_timeout_ms = 2000\n");
        let cores = common::cores();
        let ems: Vec<Manager> = (0..nodes)
            .map(|i| manager_for_rm_on(&rm, &format!("n{i}"), &cores, "", net))
            .collect();
        wait_for(common::NO_HANG, "every node alive", || {
            (rm.metrics()["nodes_alive"] == nodes as u64).then_some(())
        });
        let file = write_cluster_file_for(&rm, &ems, "n", net.provider);
        let library = rm.dir.path().join("libfunctions.so");
        std::fs::write(&library, functions_library()).unwrap();
        TestCluster {
            rm,
            ems,
            file,
            library,
            net,
        }
    }

    /// `mpirun` of `program` with this cluster's fabric in the ranks' environment.
    fn mpirun(&self, n: usize, program: &str, args: &[String]) -> Command {
        let mut c = mpirun(n, program, args);
        c.envs(self.net.env());
        c
    }

    fn out(&self, name: &str) -> PathBuf {
        self.rm.dir.path().join(name)
    }

    /// The pid of the executor process of allocation `id` on node `node`: the process whose
    /// standard error is that allocation's log in the node's run directory.
    fn executor_pid(&self, node: &str, id: u64) -> Option<i32> {
        let i: usize = node.strip_prefix('n')?.parse().ok()?;
        let dir = std::fs::canonicalize(self.ems.get(i)?.dir.path()).ok()?;
        let log = format!("executor-{id}.log");
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path().join("fd/2")).ok()?;
            (target.starts_with(&dir) && target.file_name()? == log.as_str()).then_some(pid)
        })
    }
}

/// `mpirun --bind-to none --oversubscribe -n N program args...`, root allowed, in its own
/// process group.
fn mpirun(n: usize, program: &str, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    // No binding: each rank pins itself off its executor's core (OpenMPI binds to one core).
    c.args([
        "--bind-to",
        "none",
        "--oversubscribe",
        "-n",
        &n.to_string(),
        program,
    ])
    .args(args)
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("RUST_BACKTRACE", "0")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    c
}

/// mpirun and its ranks: killed (the whole process group) unless they exited.
struct Job(Child);

impl Drop for Job {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = nix::sys::signal::killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

/// Output lines as they come (stdout and stderr, in two threads), and all of them at the end.
struct Lines {
    rx: mpsc::Receiver<String>,
    all: Vec<String>,
}

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        Lines {
            rx,
            all: Vec::new(),
        }
    }

    /// The first new line that `f` accepts, within `timeout`.
    fn find<T>(&mut self, timeout: Duration, mut f: impl FnMut(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(l) = self.rx.recv_timeout(left) else {
                return None;
            };
            let hit = f(&l);
            self.all.push(l);
            if hit.is_some() {
                return hit;
            }
        }
        None
    }

    /// Everything, once the readers are done (the process exited), bounded.
    fn rest(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(l) => self.all.push(l),
                Err(_) => break,
            }
        }
        self.all.join("\n")
    }
}

/// Runs a command to its end (bounded): exit status and all its output.
fn run_to_end(mut cmd: Command) -> (ExitStatus, String) {
    let mut job = Job(cmd.spawn().expect("run mpirun (is OpenMPI installed?)"));
    let mut lines = Lines::of(&mut job.0);
    let status = wait_exit(&mut job.0, RUN_TIMEOUT);
    let text = lines.rest();
    let status =
        status.unwrap_or_else(|| panic!("mpirun still running after {RUN_TIMEOUT:?}:\n{text}"));
    (status, text)
}

fn bench_args(c: &TestCluster, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--cluster".into(),
        c.file.display().to_string(),
        "--library".into(),
        c.library.display().to_string(),
        "--function".into(),
        "echo".into(),
        "--output".into(),
        out.display().to_string(),
        "--hot-timeout-ms".into(),
        "0".into(),
        "--client-spin-us".into(),
        "100".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The CSV (read with the `csv` crate) as header → column index, and the rows; a malformed row
/// fails the test with its line.
fn read_csv(path: &Path) -> (BTreeMap<String, usize>, Vec<Vec<String>>) {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = reader
        .headers()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .enumerate()
        .map(|(i, h)| (h.to_string(), i))
        .collect();
    let rows = reader
        .records()
        .map(|r| {
            let r = r.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            r.iter().map(str::to_string).collect()
        })
        .collect();
    (header, rows)
}

/// Warm mode from `n` ranks: exactly n × R rows per size, ranks 0..n-1, world size n, and
/// every rank on workers of its own.
fn warm(n: usize, nodes: usize) {
    warm_on(n, nodes, Net::SHM);
}

/// [`warm`] on fabric `net`; the rows and the metadata name its provider.
fn warm_on(n: usize, nodes: usize, net: Net) {
    let c = TestCluster::start_on(nodes, net);
    let out = c.out("warm.csv");
    let r = 40;
    let args = bench_args(
        &c,
        &out,
        &[
            "--sizes",
            "64,4096",
            "--repetitions",
            &r.to_string(),
            "--warmup",
            "5",
        ],
    );
    let (status, text) = run_to_end(c.mpirun(n, BENCH, &args));
    assert!(status.success(), "{status}:\n{text}");

    let (h, rows) = read_csv(&out);
    assert_eq!(rows.len(), 2 * n * r, "{text}");
    for size in ["64", "4096"] {
        let mut per_rank: BTreeMap<u32, usize> = BTreeMap::new();
        for row in rows.iter().filter(|row| row[h["payload_bytes"]] == size) {
            assert_eq!(row[h["benchmark"]], "scalable_benchmark");
            assert_eq!(row[h["provider"]], net.provider.name());
            assert_eq!(row[h["mode"]], "warm");
            assert_eq!(row[h["world_size"]], n.to_string());
            *per_rank.entry(row[h["rank"]].parse().unwrap()).or_default() += 1;
        }
        let want: BTreeMap<u32, usize> = (0..n as u32).map(|k| (k, r)).collect();
        assert_eq!(per_rank, want, "rows per rank at {size} B");
    }

    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(meta["world_size"], n as u64);
    if let Some(libfabric) = net.ofi {
        // The metadata names the libfabric provider behind the `ofi` rows.
        assert_eq!(meta["fabric"]["ofi"]["provider"], libfabric, "{meta}");
    }
    assert!(meta["mpi_library"].as_str().unwrap().contains("MPI"));
    assert!(!meta["mpi_library"].as_str().unwrap().contains('\0'));
    let ranks = meta["ranks"].as_array().unwrap();
    assert_eq!(ranks.len(), n);
    let mut seen = BTreeSet::new();
    let mut cores = BTreeSet::new();
    for (k, rank) in ranks.iter().enumerate() {
        assert_eq!(rank["rank"], k as u64);
        assert!(rank["failure"].is_null(), "{rank}");
        let workers = rank["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 1, "{rank}");
        for w in workers {
            let node = w["node"].as_str().unwrap().to_string();
            let key = (
                node.clone(),
                w["allocation"].as_u64().unwrap(),
                w["worker"].as_u64().unwrap(),
            );
            assert!(seen.insert(key), "a worker shared by two ranks: {meta}");
            assert!(
                cores.insert((node, w["core"].as_u64().unwrap())),
                "a core shared: {meta}"
            );
        }
    }
    for k in 0..n {
        assert!(
            text.contains(&format!("rank {k} warm 64 B: count {r}")),
            "{text}"
        );
    }
    assert!(
        text.contains("warm 4096 B: done on"),
        "progress lines: {text}"
    );
}

#[test]
fn warm_one_rank() {
    warm(1, 1);
}

#[test]
fn warm_two_ranks() {
    warm(2, 1);
}

#[test]
fn warm_four_ranks_on_two_nodes() {
    warm(4, 2);
}

/// The MPI benchmark over libfabric's shared-memory provider: two ranks, one node.
#[cfg(feature = "libfabric")]
#[test]
fn ofi_shm_warm_two_ranks() {
    warm_on(2, 1, Net::ofi("shm"));
}

/// Over libfabric's `tcp;ofi_rxm` (the route between nodes): two ranks on two nodes.
#[cfg(feature = "libfabric")]
#[test]
fn ofi_tcp_rxm_warm_two_ranks_on_two_nodes() {
    warm_on(2, 2, Net::ofi("tcp;ofi_rxm"));
}

#[test]
fn throughput_and_cold_two_ranks() {
    let c = TestCluster::start(1);
    let out = c.out("throughput.csv");
    let args = bench_args(
        &c,
        &out,
        &[
            "--mode",
            "throughput",
            "--in-flight",
            "4",
            "--sizes",
            "64",
            "--repetitions",
            "200",
            "--warmup",
            "8",
        ],
    );
    let (status, text) = run_to_end(mpirun(2, BENCH, &args));
    assert!(status.success(), "{status}:\n{text}");
    let (h, rows) = read_csv(&out);
    assert_eq!(rows.len(), 400);
    assert!(rows.iter().all(|r| r[h["mode"]] == "throughput"));
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    let t = &meta["throughput"][0];
    assert_eq!(t["ranks"].as_array().unwrap().len(), 2, "{meta}");
    assert!(
        t["total_invocations_per_s"].as_f64().unwrap() > 0.0,
        "{meta}"
    );
    assert!(text.contains("total throughput 64 B:"), "{text}");
    // The columns analysis/ computes the rate from: in_flight, and each rank's phase duration,
    // the same as the rank's seconds in the metadata.
    for r in t["ranks"].as_array().unwrap() {
        let rank = r["rank"].as_u64().unwrap().to_string();
        let mine: Vec<_> = rows.iter().filter(|row| row[h["rank"]] == rank).collect();
        assert_eq!(mine.len(), 200, "rank {rank}");
        let seconds = r["seconds"].as_f64().unwrap();
        for row in mine {
            assert_eq!(row[h["in_flight"]], "4");
            let d: f64 = row[h["duration_ns"]].parse().unwrap();
            assert!(
                (d / 1e9 - seconds).abs() <= 1e-6 * seconds,
                "{d} vs {seconds}"
            );
        }
    }

    let out = c.out("cold.csv");
    let args = bench_args(
        &c,
        &out,
        &[
            "--mode",
            "cold",
            "--sizes",
            "64",
            "--repetitions",
            "2",
            "--warmup",
            "0",
        ],
    );
    let (status, text) = run_to_end(mpirun(2, BENCH, &args));
    assert!(status.success(), "{status}:\n{text}");
    let (h, rows) = read_csv(&out);
    assert_eq!(rows.len(), 4, "{text}");
    for col in rfaas::bench::invocation::COLD_PHASES {
        assert!(h.contains_key(col), "{col} missing");
    }
    let ranks: BTreeSet<&str> = rows.iter().map(|r| r[h["rank"]].as_str()).collect();
    assert_eq!(ranks, BTreeSet::from(["0", "1"]));
}

#[test]
fn black_scholes_example_two_ranks() {
    let example = Path::new(BENCH)
        .parent()
        .unwrap()
        .join("examples/black_scholes_mpi");
    assert!(
        example.exists(),
        "{} is missing: build it with `cargo build --all-features --examples`",
        example.display()
    );
    let c = TestCluster::start(1);
    let args: Vec<String> = [
        "--cluster",
        &c.file.display().to_string(),
        "--library",
        &c.library.display().to_string(),
        "--options",
        "20000",
        "--batch",
        "1000",
        "--prices-out",
        &c.rm.dir.path().display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (status, text) = run_to_end(mpirun(2, example.to_str().unwrap(), &args));
    assert!(status.success(), "{status}:\n{text}");
    assert!(text.contains("correct on every rank"), "{text}");
    // The example checks itself against the same kernel run locally; this checks every price
    // against the textbook formula with an independently computed normal CDF.
    common::black_scholes::self_check();
    for rank in 0..2 {
        let read = |ext: &str| std::fs::read(c.rm.dir.path().join(format!("rank{rank}.{ext}")));
        let (options, prices) = (read("options").unwrap(), read("prices").unwrap());
        assert_eq!(options.len(), 20_000 * 40, "rank {rank}'s options");
        assert_eq!(prices.len(), 20_000 * 16, "rank {rank}'s prices");
        let f = |b: &[u8], i: usize| f64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap());
        for (i, (o, p)) in options.chunks(40).zip(prices.chunks(16)).enumerate() {
            let want = common::black_scholes::prices(f(o, 0), f(o, 1), f(o, 2), f(o, 3), f(o, 4));
            assert!(
                (f(p, 0) - want.0).abs() < 1e-8 && (f(p, 1) - want.1).abs() < 1e-8,
                "rank {rank} option {i}: got ({}, {}), want {want:?}",
                f(p, 0),
                f(p, 1)
            );
        }
    }
}

#[test]
fn executor_killed_mid_run_fails_that_rank_only() {
    let c = TestCluster::start(1);
    let out = c.out("killed.csv");
    // About 2 s of calls per rank in a debug build: the kill lands in the measured phase.
    let r = 300_000;
    let args = bench_args(
        &c,
        &out,
        &[
            "--sizes",
            "64",
            "--repetitions",
            &r.to_string(),
            "--warmup",
            "10",
            "--timeout-s",
            "5",
        ],
    );
    let mut job = Job(mpirun(2, BENCH, &args).spawn().expect("run mpirun"));
    let mut lines = Lines::of(&mut job.0);
    // "[scalable_benchmark] placement: rank 1 node n0 allocation 2 worker 0 core 0"
    let (node, id) = lines
        .find(common::NO_HANG, |l| {
            let rest = l.split("placement: rank 1 node ").nth(1)?;
            let mut w = rest.split_whitespace();
            let node = w.next()?.to_string();
            let id: u64 = w.nth(1)?.parse().ok()?;
            Some((node, id))
        })
        .unwrap_or_else(|| panic!("no placement line for rank 1:\n{}", lines.rest()));
    let pid = wait_for(common::NO_HANG, "rank 1's executor process", || {
        c.executor_pid(&node, id)
    });
    // Killed once it has served calls: its billing record (flushed after its first second of
    // serving) shows execution time.
    let em = &c.ems[node.strip_prefix('n').unwrap().parse::<usize>().unwrap()];
    wait_for(common::NO_HANG, "rank 1's executor to serve calls", || {
        let st = em.status();
        let a = st.allocations.iter().find(|a| a.id == id)?;
        (a.execution_ns > 0).then_some(())
    });
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let status = wait_exit(&mut job.0, RUN_TIMEOUT);
    let text = lines.rest();
    let status = status.unwrap_or_else(|| panic!("mpirun still running:\n{text}"));
    assert!(
        !status.success(),
        "a failed rank must fail the run:\n{text}"
    );
    assert!(text.contains("rank 1 failed:"), "{text}");
    assert!(
        text.contains("[scalable_benchmark] rank 1: warm 64 B:"),
        "{text}"
    );

    let (h, rows) = read_csv(&out);
    let rank0 = rows.iter().filter(|row| row[h["rank"]] == "0").count();
    let rank1 = rows.iter().filter(|row| row[h["rank"]] == "1").count();
    assert_eq!(rank0, r, "rank 0 measured everything:\n{text}");
    eprintln!("rank 1 measured {rank1} of {r} calls before its executor died");
    assert!(rank1 < r, "rank 1 stopped when its executor died");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(meta["failed_ranks"][0]["rank"], 1, "{meta}");
    assert!(meta["ranks"][0]["failure"].is_null());
}
