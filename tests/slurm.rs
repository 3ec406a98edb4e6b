//! The Slurm deployment, on a real Slurm started by this test on this machine: a private
//! `SLURM_CONF` and state directory in a temporary directory, free ports, two virtual nodes `n1`
//! and `n2` on 127.0.0.1 (`slurmd -N n1`, `slurmd -N n2`), run as root.
//!
//! 1. `sbatch slurm/rfaas-cluster.sh` (single allocation, tcp, this build's binaries); waits for
//!    its `cluster.json`, and measures the time from `sbatch` to the first lease granted through
//!    the client library (issue target: under 5 s); one invocation through the lease.
//! 2. `sbatch --wait slurm/scalable-benchmark.sh` (2 nodes × 2 ranks, `srun --mpi=pmix`), then
//!    checks its CSV: header, ranks 0..N-1, one row per rank, size and repetition.
//! 3. `scancel` of the cluster job: the queue empties and no rfaas process of this Slurm is left.
//! 4. The same with the heterogeneous-job layout (`slurm/rfaas-cluster-hetjob.sh`, one node per
//!    component): a lease comes from the executor manager on the second node.
//! 5. With feature `libfabric`: the single-allocation layout again with `RFAAS_PROVIDER=ofi` on
//!    libfabric's `tcp;ofi_rxm` (`RFAAS_OFI_PROVIDER`, exported by `srun` to every node): the
//!    cluster file names `ofi`, and two executors that Slurm started answer invocations from
//!    this process over ofi; then `scancel` as in 3.
//! 6. `scontrol shutdown`; the daemons are gone.
//!
//! Every wait is bounded; on failure the Slurm logs, job outputs and daemon logs are printed.
//! The Slurm daemons and every process started under them are stopped even when the test panics
//! (a drop guard). Skips (passes, with a message) only when Slurm is not installed, and fails
//! then instead under `CI=true`.

mod common;

use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rfaas::client::{Cluster, LeaseOptions};

/// The Slurm programs this test needs.
const SLURM_PROGRAMS: &[&str] = &[
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "scancel",
    "scontrol",
    "sinfo",
];

/// Names of the executables of ours that a job may run.
const OUR_EXES: &[&str] = &["rfaas", "scalable_benchmark", "warm_benchmark"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `name` is: on PATH, or in the sbin directories (not always on a user's PATH).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `n` distinct free TCP ports on 127.0.0.1 (held together while chosen, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A private Slurm: slurmctld and two slurmd's, stopped on drop.
struct Slurm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    /// Directories holding the Slurm programs (prepended to the jobs' PATH).
    sbin: PathBuf,
    started: bool,
    stopped: bool,
}

impl Slurm {
    const NODES: [&'static str; 2] = ["n1", "n2"];

    /// Starts Slurm, or `None` when it is not installed.
    fn start() -> Option<Slurm> {
        let missing: Vec<&str> = SLURM_PROGRAMS
            .iter()
            .copied()
            .filter(|p| find_program(p).is_none())
            .collect();
        if !missing.is_empty() {
            common::skip_unless_ci(&format!(
                "Slurm is not installed (missing {}); scripts/setup.sh installs slurm-wlm",
                missing.join(", ")
            ));
            return None;
        }
        let sbin = find_program("slurmctld")
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("rfaas-slurm-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["state", "log", "jobs"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        for node in Self::NODES {
            fs::create_dir_all(d.join("spool").join(node)).unwrap();
            fs::create_dir_all(d.join("tmp").join(node)).unwrap();
        }
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        let ports = free_ports(3);
        let d = d.display();
        let mut conf = format!(
            "# A private Slurm for tests/slurm.rs (shared/ENVIRONMENT.md, \"Slurm on one machine\").
ClusterName=rfaastest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={n1}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=pmix
SchedulerType=sched/backfill
# Heterogeneous jobs are started by the backfill scheduler only: every second, not every 30.
SchedulerParameters=bf_interval=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
TmpFS={d}/tmp/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
KillWait=5
InactiveLimit=0
",
            ctld = ports[0],
            n1 = ports[1],
        );
        // Virtual nodes: more CPUs than the machine has (config_overrides), so that the
        // cluster job and the benchmark job fit side by side.
        for (node, port) in Self::NODES.iter().zip(&ports[1..]) {
            conf.push_str(&format!(
                "NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs=4 \
                 RealMemory=4000 State=UNKNOWN\n"
            ));
        }
        conf.push_str("PartitionName=rfaas Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP\n");
        let conf_path = dir.path().join("slurm.conf");
        fs::write(&conf_path, conf).unwrap();
        let slurm = Slurm {
            dir,
            conf: conf_path,
            sbin,
            started: true,
            stopped: false,
        };
        let out = slurm.run("slurmctld", &["-i"]);
        assert!(out.status.success(), "slurmctld: {}", text(&out));
        for node in Self::NODES {
            let out = slurm.run("slurmd", &["-N", node]);
            assert!(out.status.success(), "slurmd -N {node}: {}", text(&out));
        }
        common::wait_for(Duration::from_secs(30), "both nodes idle", || {
            let out = slurm.try_run("sinfo", &["-h", "-N", "-o", "%N %t"])?;
            let s = String::from_utf8_lossy(&out.stdout);
            let idle = s.lines().filter(|l| l.ends_with(" idle")).count();
            (idle == Self::NODES.len()).then_some(())
        });
        Some(slurm)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A Slurm command with this Slurm's configuration and nothing of any outer job's
    /// environment (a test run inside a Slurm job must not talk to that one).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(find_program(program).unwrap_or_else(|| program.into()));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if ["SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "RFAAS_"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                cmd.env_remove(k);
            }
        }
        let mut path = OsString::from(self.sbin.as_os_str());
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        cmd.env("SLURM_CONF", &self.conf)
            .env("PATH", path)
            .current_dir(self.dir().join("jobs"))
            .stdin(Stdio::null());
        cmd
    }

    fn try_run(&self, program: &str, args: &[&str]) -> Option<Output> {
        let out = self.command(program).args(args).output().ok()?;
        out.status.success().then_some(out)
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    /// The environment every rfaas job of this test gets (provider `tcp`).
    fn job_command(&self, run_dir: &Path) -> Command {
        self.job_command_on(run_dir, "tcp")
    }

    /// [`Slurm::job_command`] with `RFAAS_PROVIDER=provider` (add `RFAAS_OFI_PROVIDER` for ofi).
    fn job_command_on(&self, run_dir: &Path, provider: &str) -> Command {
        let mut cmd = self.command("sbatch");
        let bin_dir = Path::new(common::rfaas_bin()).parent().unwrap();
        cmd.env("RFAAS_HOME", repo())
            .env("RFAAS_BIN_DIR", bin_dir)
            .env("RFAAS_RUN_DIR", run_dir)
            .env("RFAAS_PROVIDER", provider)
            .env("RFAAS_START_TIMEOUT", "30")
            .env("RFAAS_STOP_TIMEOUT", "10")
            .env("RUST_LOG", "info");
        cmd
    }

    /// Submits `script` with `args` (sbatch options); returns the job id.
    fn sbatch(&self, run_dir: &Path, args: &[&str], script: &str) -> String {
        let out = self
            .job_command(run_dir)
            .arg("--parsable")
            .args(args)
            .arg(repo().join(script))
            .output()
            .expect("run sbatch");
        assert!(out.status.success(), "sbatch {script}: {}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // "<id>" or "<id>;<cluster>".
        id.split(';').next().unwrap().to_string()
    }

    /// Jobs in the queue (pending, running or completing).
    fn queue(&self) -> String {
        self.try_run("squeue", &["-h", "-o", "%i %T %j"])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "<squeue failed>".into())
    }

    fn cancel_all(&self) {
        if let Some(out) = self.try_run("squeue", &["-h", "-o", "%F"]) {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.try_run("scancel", &[id]);
            }
        }
    }

    /// Waits until the queue is empty.
    fn wait_queue_empty(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let q = self.queue();
            if q.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "jobs still in the queue after {timeout:?}:\n{q}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every process started under this Slurm (its daemons included): their environment names
    /// this Slurm's configuration file.
    fn processes(&self) -> Vec<(i32, String)> {
        let mut wanted = b"SLURM_CONF=".to_vec();
        wanted.extend_from_slice(self.conf.as_os_str().as_encoded_bytes());
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        let me = std::process::id() as i32;
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_slice()))
            })
            .map(|pid| {
                let cmd = fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default();
                (pid, cmd.trim().to_string())
            })
            .collect()
    }

    /// Processes of ours (rfaas daemons, executors, benchmarks) still running under this Slurm.
    fn rfaas_processes(&self) -> Vec<(i32, String)> {
        self.processes()
            .into_iter()
            .filter(|(pid, _)| {
                fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                    let name = exe.file_name().unwrap_or_default().to_string_lossy();
                    let name = name.trim_end_matches(" (deleted)");
                    OUR_EXES.contains(&name)
                })
            })
            .collect()
    }

    /// Prints the logs: Slurm's, the jobs' outputs, the daemons'.
    fn dump(&self) {
        eprintln!("---- queue ----\n{}", self.queue());
        let mut files = Vec::new();
        collect_logs(self.dir(), &mut files);
        files.sort();
        for f in files {
            let body = fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = body.lines().collect();
            eprintln!("---- {} (last 60 lines) ----", f.display());
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
    }

    /// Cancels every job, shuts Slurm down, and kills whatever is left of it.
    fn shutdown(&mut self) -> Vec<(i32, String)> {
        if self.stopped || !self.started {
            return Vec::new();
        }
        self.stopped = true;
        self.cancel_all();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.queue().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.try_run("scontrol", &["shutdown"]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = self.processes();
        for (pid, _) in &left {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        left
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let left = self.shutdown();
        if !left.is_empty() {
            eprintln!("killed processes left after scontrol shutdown: {left:?}");
        }
    }
}

fn collect_logs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_logs(&p, out);
        } else if p
            .extension()
            .is_some_and(|x| x == "log" || x == "out" || x == "conf")
        {
            out.push(p);
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Kills (-9) the daemon `what` whose ready file is `ready` and waits until whoever supervises
/// it started it again (a ready file with another pid): the ready information before and after.
fn kill_until_restarted<T: serde::de::DeserializeOwned>(
    ready: &Path,
    pid: impl Fn(&T) -> u32,
    what: &str,
) -> (T, T) {
    let read = || -> Option<T> { serde_json::from_slice(&fs::read(ready).ok()?).ok() };
    let before = read().unwrap_or_else(|| panic!("{what}'s ready file"));
    kill(Pid::from_raw(pid(&before) as i32), Signal::SIGKILL).unwrap();
    let after = common::wait_for(
        Duration::from_secs(60),
        &format!("{what} to be restarted"),
        || read().filter(|r| pid(r) != pid(&before)),
    );
    (before, after)
}

/// Waits until `run_dir/cluster.json` names a resource manager that grants a lease of one
/// core; returns the cluster.
fn first_lease(run_dir: &Path, timeout: Duration) -> (Cluster, rfaas::client::Lease) {
    let path = run_dir.join("cluster.json");
    let opts = LeaseOptions {
        auto_renew: false,
        ..LeaseOptions::default()
    };
    let mut last = String::from("no cluster.json yet");
    let deadline = Instant::now() + timeout;
    loop {
        if path.exists() {
            match Cluster::open(Some(&path)).and_then(|c| {
                let lease = c.lease(1, &opts)?;
                Ok((c, lease))
            }) {
                Ok(v) => return v,
                Err(e) => last = e.to_string(),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no lease from the cluster in {} after {timeout:?}: {last}",
            run_dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child (sbatch --wait) up to `timeout`; kills it on timeout.
fn wait_child(child: &mut std::process::Child, timeout: Duration) -> Option<ExitStatus> {
    let status = common::wait_exit(child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// Cancels `job`, waits until the queue is empty and no rfaas process is left.
fn cancel_and_check(slurm: &Slurm, job: &str, run_dir: &Path) {
    let t = Instant::now();
    let out = slurm.run("scancel", &[job]);
    assert!(out.status.success(), "scancel {job}: {}", text(&out));
    slurm.wait_queue_empty(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slurm.rfaas_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = slurm.rfaas_processes();
    assert!(
        left.is_empty(),
        "rfaas processes left after scancel {job}: {left:?}"
    );
    assert!(
        !run_dir.join("cluster.json").exists(),
        "cluster.json outlived the cluster job"
    );
    let output =
        fs::read_to_string(slurm.dir().join(format!("jobs/cluster-{job}.out"))).unwrap_or_default();
    assert!(
        output.contains("stopped"),
        "the cluster script did not stop cleanly:\n{output}"
    );
    println!("scancel {job}: everything stopped in {:?}", t.elapsed());
}

/// One row of the benchmark's CSV, the columns this test checks.
#[derive(Debug, serde::Deserialize)]
struct BenchRow {
    provider: String,
    payload_bytes: u64,
    rank: usize,
    world_size: usize,
    latency_ns: u64,
}

/// Checks the benchmark's CSV (the header with the `csv` crate, the rows with
/// `rfaas::bench::csv_rows`; a malformed row fails the test with its line): the header, and for
/// each rank one row per size and repetition.
fn check_csv(path: &Path, ranks: usize, sizes: &[u64], repetitions: usize) {
    let mut reader = csv::Reader::from_path(path)
        .unwrap_or_else(|e| panic!("the benchmark wrote no {}: {e}", path.display()));
    let header: Vec<String> = reader
        .headers()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        header.join(","),
        "benchmark,mode,provider,payload_bytes,rank,world_size,node,worker,repetition,latency_ns"
    );
    let rows: Vec<BenchRow> =
        rfaas::bench::csv_rows::read_rows(path).unwrap_or_else(|e| panic!("{e}"));
    let mut count = vec![std::collections::BTreeMap::<u64, usize>::new(); ranks];
    for row in rows {
        assert_eq!(row.provider, "tcp", "provider in {row:?}");
        assert_eq!(row.world_size, ranks, "world_size in {row:?}");
        assert!(row.rank < ranks, "rank in {row:?}");
        assert!(
            sizes.contains(&row.payload_bytes),
            "payload size in {row:?}"
        );
        assert!(row.latency_ns > 0, "latency in {row:?}");
        *count[row.rank].entry(row.payload_bytes).or_default() += 1;
    }
    for (rank, per_size) in count.iter().enumerate() {
        for size in sizes {
            assert_eq!(
                per_size.get(size).copied().unwrap_or(0),
                repetitions,
                "rank {rank}, {size} B: rows in {}",
                path.display()
            );
        }
    }
}

#[test]
fn cluster_and_benchmark_jobs_on_a_real_slurm() {
    let t_test = Instant::now();
    let Some(slurm) = Slurm::start() else {
        return;
    };
    println!("slurm up in {:?}", t_test.elapsed());
    let lib = slurm.dir().join("libfunctions.so");
    fs::write(&lib, common::functions_library()).unwrap();

    // 1. The cluster, single-allocation layout. --oversubscribe undoes the script's
    // --exclusive, so that the benchmark job gets cores on the same two nodes.
    let run_dir = slurm.dir().join("run");
    let t0 = Instant::now();
    let job = slurm.sbatch(
        &run_dir,
        &["--oversubscribe", "--output=cluster-%j.out"],
        "slurm/rfaas-cluster.sh",
    );
    let (cluster, lease) = first_lease(&run_dir, Duration::from_secs(60));
    let to_lease = t0.elapsed();
    println!(
        "sbatch -> first lease granted: {} ms (target: under 5 s)",
        to_lease.as_millis()
    );
    if to_lease > Duration::from_secs(5) {
        println!("WARNING: slower than the 5 s target");
    }
    assert!(
        cluster.managers.is_empty(),
        "cluster.json lists the resource manager only"
    );
    assert_eq!(cluster.provider, rfaas::rdma::Provider::Tcp);
    let node = &lease.parts()[0].node;
    assert!(Slurm::NODES.contains(&node.as_str()), "lease on {node}");
    lease.release().unwrap();
    // One invocation through a lease, over tcp, on executors Slurm started.
    let out = rfaas::client::invoke_once(
        &cluster,
        &lib,
        "echo",
        b"hello slurm",
        64,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(out, b"hello slurm");

    // 1b. The resource manager crashes (kill -9): the script starts it again on the same
    // address with the same state, and the clients' cluster.json still leads to it.
    let (before, after) = kill_until_restarted::<rfaas::resource_manager::ReadyInfo>(
        &run_dir.join("rm.json"),
        |r| r.pid,
        "the resource manager",
    );
    assert_eq!(after.http, before.http, "restarted on the same address");
    let (_, lease) = first_lease(&run_dir, Duration::from_secs(60));
    lease.release().unwrap();

    // 1c. An executor manager crashes (kill -9): its task starts it again on the same address;
    // it registers again there, and a lease on its node allocates and invokes.
    let (before, after) = kill_until_restarted::<rfaas::executor_manager::ReadyInfo>(
        &run_dir.join("nodes/n1/em.json"),
        |r| r.pid,
        "n1's executor manager",
    );
    assert_eq!(after.http, before.http, "restarted on the same address");
    let rm = cluster.resource_manager.clone().unwrap();
    common::wait_for(Duration::from_secs(60), "n1 registered again", || {
        rm.nodes().ok()?.nodes.into_iter().find(|n| {
            n.name == "n1"
                && n.address == before.http
                && n.state == rfaas::scheduler::NodeState::Alive
        })
    });
    let out = rfaas::client::invoke_once(
        &cluster,
        &lib,
        "echo",
        b"after the restart",
        64,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(out, b"after the restart");

    // 2. The benchmark job: 2 nodes x 2 ranks.
    match option_env!("CARGO_BIN_EXE_scalable_benchmark") {
        None => {
            println!("scalable_benchmark is not built (feature mpi off): benchmark job not run")
        }
        Some(_) => {
            let csv = run_dir.join("bench.csv");
            let (ranks, sizes, repetitions) = (4, [64u64, 1024], 20);
            let t = Instant::now();
            let mut child = slurm
                .job_command(&run_dir)
                .args([
                    "--wait",
                    "--nodes=2",
                    "--ntasks-per-node=2",
                    "--output=bench-%j.out",
                ])
                .arg(repo().join("slurm/scalable-benchmark.sh"))
                .env("RFAAS_BENCH_FUNCTION", "empty")
                .env("RFAAS_BENCH_SIZES", "64,1024")
                .env("RFAAS_BENCH_REPETITIONS", repetitions.to_string())
                .env("RFAAS_BENCH_MODE", "warm")
                .env("RFAAS_BENCH_OUTPUT", &csv)
                .env("RFAAS_WAIT_TIMEOUT", "30")
                // 4 ranks and 4 executors on a 2-core machine: nobody busy-polls for long.
                .env(
                    "RFAAS_BENCH_ARGS",
                    format!(
                        "--hot-timeout-ms 0 --client-spin-us 20 --warmup 5 --timeout-s 30 \
                         --library {}",
                        lib.display()
                    ),
                )
                .stdout(Stdio::null())
                .spawn()
                .expect("run sbatch --wait");
            let status = wait_child(&mut child, Duration::from_secs(180));
            assert!(
                status.is_some_and(|s| s.success()),
                "benchmark job: {status:?} after {:?}",
                t.elapsed()
            );
            println!("benchmark job ({ranks} ranks) took {:?}", t.elapsed());
            check_csv(&csv, ranks, &sizes, repetitions);
        }
    }

    // 3. Cancel the cluster: everything goes.
    cancel_and_check(&slurm, &job, &run_dir);

    // 4. The heterogeneous-job layout: the resource manager on one node, one executor manager
    // on the other (component sizes given on the command line override the script's).
    let het_dir = slurm.dir().join("run-het");
    let t0 = Instant::now();
    let het = slurm.sbatch(
        &het_dir,
        &["--output=cluster-%j.out", "--nodes=1", ":", "--nodes=1"],
        "slurm/rfaas-cluster-hetjob.sh",
    );
    let (_, lease) = first_lease(&het_dir, Duration::from_secs(60));
    println!(
        "hetjob: sbatch -> first lease granted: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(
        lease.parts()[0].node,
        "n2",
        "the executor managers' component"
    );
    lease.release().unwrap();
    cancel_and_check(&slurm, &het, &het_dir);

    // 5. The single-allocation layout on ofi (libfabric tcp;ofi_rxm).
    #[cfg(feature = "libfabric")]
    ofi_cluster_job(&slurm, &lib);

    // 6. Slurm down, nothing left.
    let mut slurm = slurm;
    let t = Instant::now();
    let left = slurm.shutdown();
    println!("scontrol shutdown: Slurm gone in {:?}", t.elapsed());
    assert!(left.is_empty(), "left after scontrol shutdown: {left:?}");
    println!("test took {:?}", t_test.elapsed());
}

/// The libfabric provider of step 5: the one between nodes that Debian's libfabric has.
#[cfg(feature = "libfabric")]
const OFI_PROVIDER: &str = "tcp;ofi_rxm";

/// Step 5: `slurm/rfaas-cluster.sh` with `RFAAS_PROVIDER=ofi`; two executors held at once (each
/// under a lease of its own, on whichever node the resource manager picks), each answering an
/// echo over ofi from this process; then `scancel`.
#[cfg(feature = "libfabric")]
fn ofi_cluster_job(slurm: &Slurm, lib: &Path) {
    use rfaas::client::{AllocationSpec, ClientOptions};
    let run_dir = slurm.dir().join("run-ofi");
    let t0 = Instant::now();
    let out = slurm
        .job_command_on(&run_dir, "ofi")
        .env(rfaas::env::OFI_PROVIDER, OFI_PROVIDER)
        .args(["--parsable", "--oversubscribe", "--output=cluster-%j.out"])
        .arg(repo().join("slurm/rfaas-cluster.sh"))
        .output()
        .expect("run sbatch");
    assert!(out.status.success(), "sbatch (ofi): {}", text(&out));
    let job = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (cluster, first) = first_lease(&run_dir, Duration::from_secs(60));
    println!(
        "ofi ({OFI_PROVIDER}): sbatch -> first lease granted: {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(cluster.provider, rfaas::rdma::Provider::Ofi);
    first.release().unwrap();
    let fabric = rfaas::rdma::ofi::OfiFabric::with_provider(Some(OFI_PROVIDER))
        .unwrap_or_else(|e| panic!("libfabric {OFI_PROVIDER} in this process: {e}"));
    let bytes = fs::read(lib).unwrap();
    let mut spec = AllocationSpec::new(bytes, &["echo"]);
    spec.slots = 1;
    spec.hot_timeout_ms = 0;
    let opts = ClientOptions {
        timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    let mut nodes = Vec::new();
    let mut execs = Vec::new();
    for k in 0..2u8 {
        // Each executor is a process Slurm started (srun) with the job's environment.
        let exec = cluster
            .allocate(&fabric, &spec, opts, 0)
            .unwrap_or_else(|e| panic!("allocation {k} over ofi: {e}"));
        let f = exec.function("echo").unwrap();
        let input = format!("hello slurm over ofi {k}").into_bytes();
        let mut output = vec![0u8; 64];
        let n = exec
            .invoke(f, &input, &mut output)
            .unwrap_or_else(|e| panic!("invocation {k} over ofi: {e}"));
        assert_eq!(&output[..n], &input[..], "echo {k} over ofi");
        if let Some(l) = exec.lease() {
            nodes.push(l.parts()[0].node.clone());
        }
        execs.push(exec);
    }
    println!("ofi: echo answered by executors on {nodes:?}");
    for n in &nodes {
        assert!(Slurm::NODES.contains(&n.as_str()), "lease on {n}");
    }
    for exec in execs {
        exec.deallocate().unwrap();
    }
    cancel_and_check(slurm, &job, &run_dir);
}
