//! A local cluster: N executor managers on 127.0.0.1, in the background
//! (`rfaas local-cluster start|stop`).
//!
//! Layout of the run directory (mode 0700):
//!
//! ```text
//! DIR/secret          the cluster secret (0600), created once and kept: what clients hold
//! DIR/node-secret     the node credential (0600), created once and kept: only the resource
//!                     manager and the executor managers read it (register, heartbeat, ...)
//! DIR/cluster.json    what clients read (--cluster DIR/cluster.json)
//! DIR/pids            "<pid> <name>" per manager (each leads its own session and process group)
//! DIR/daemons.json    how each daemon was started, with the address it bound (`restart` reuses it)
//! DIR/em-N.json       manager N's ready file: its HTTP address and pid
//! DIR/em-N/           manager N's run directory (library cache, executor logs)
//! DIR/logs/em-N.log   manager N's log (stdout and stderr)
//! DIR/rm.json         the resource manager's ready file (unless --no-resource-manager)
//! DIR/rm-state   the resource manager's state file (unless --no-resource-manager),
//!                     and its log DIR/rm-state.log.N
//! DIR/logs/rm.log     the resource manager's log
//! ```
//!
//! Unless `--no-resource-manager` is given, a resource manager starts first (its own session, line `rm` in
//! `pids`), every executor manager registers with it (node names `em-N`, unique), and
//! `cluster.json` names it: clients then lease before allocating. `stop` stops the executor
//! managers first (they deregister), then the resource manager, and keeps its state file
//! (`start --resume-state` starts from it; a plain `start` discards it).
//!
//! Each manager gets its own cores (the cpuset of `start` split evenly, or `--cores-per-node`),
//! so two allocations never share a core even across managers. `stop` SIGTERMs every manager
//! (which stops its executors), waits, SIGKILLs the process groups of any left, and checks in
//! `/proc` that no process of those groups remains; then (feature `libfabric`) it removes the
//! libfabric `shm` regions those processes left in `/dev/shm`.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::daemons::{with_listen, Daemons};
use super::file::{ClusterFile, ManagerEntry};
use super::{procs, ClusterError};
use crate::executor_manager::config::format_cpulist;
use crate::executor_manager::ReadyInfo;
use crate::rdma::Provider;

/// `rfaas local-cluster start`.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Run directory: cluster.json, secret, pids, logs/ (created; mode 0700).
    #[arg(long, value_name = "DIR")]
    pub run_dir: PathBuf,
    /// Fabric provider of the executors: shm (one node) or tcp.
    #[arg(long, default_value = "shm", env = crate::env::PROVIDER)]
    pub provider: Provider,
    /// Executor managers to start (all on 127.0.0.1).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub nodes: u32,
    /// Cores each manager rents out (default: this process's cores divided evenly).
    #[arg(long, value_name = "K")]
    pub cores_per_node: Option<u32>,
    /// Memory each manager rents out (bytes or with a unit, e.g. 2GiB; default: MemTotal).
    #[arg(long, value_name = "SIZE")]
    pub memory_per_node: Option<String>,
    /// A TOML config file passed to every manager (flags set by this command win).
    #[arg(long, value_name = "FILE")]
    pub manager_config: Option<PathBuf>,
    /// How long to wait for every manager to be ready, seconds.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub timeout_s: u64,
    /// Start the executor managers alone, without a resource manager (by default one starts
    /// first, and the executor managers then take only leased allocations).
    #[arg(long)]
    pub no_resource_manager: bool,
    /// Start a resource manager (the default; kept for scripts that ask for it explicitly).
    #[arg(long, hide = true, conflicts_with = "no_resource_manager")]
    pub resource_manager: bool,
    /// A TOML config file for the resource manager (TTLs, heartbeat timeout; flags set by
    /// this command win).
    #[arg(long, value_name = "FILE")]
    pub resource_manager_config: Option<PathBuf>,
    /// Start the resource manager from the state a previous cluster in DIR left in
    /// DIR/rm-state (kept by `stop`): its leases and nodes come back. Without it the
    /// file is discarded and the cluster starts empty.
    #[arg(long, conflicts_with = "no_resource_manager")]
    pub resume_state: bool,
}

/// `rfaas local-cluster stop`.
#[derive(Debug, Clone, clap::Args)]
pub struct StopArgs {
    /// Run directory given to `start`.
    #[arg(long, value_name = "DIR")]
    pub run_dir: PathBuf,
    /// How long managers get to stop their executors and exit before they are killed, seconds.
    #[arg(long, default_value_t = 15, value_name = "S")]
    pub timeout_s: u64,
}

/// Paths in a run directory.
#[derive(Debug, Clone)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// The run directory `dir`.
    pub fn new(dir: &Path) -> RunDir {
        RunDir(dir.to_path_buf())
    }
    /// `DIR/cluster.json`.
    pub fn cluster_file(&self) -> PathBuf {
        self.0.join("cluster.json")
    }
    /// `DIR/secret`.
    pub fn secret(&self) -> PathBuf {
        self.0.join("secret")
    }
    /// `DIR/node-secret`.
    pub fn node_secret(&self) -> PathBuf {
        self.0.join("node-secret")
    }
    /// `DIR/pids`.
    pub fn pids(&self) -> PathBuf {
        self.0.join("pids")
    }
    /// `DIR/logs`.
    pub fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }
    /// `DIR/logs/<name>.log`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    /// `DIR/<name>.json`.
    pub fn ready_file(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.json"))
    }
    /// `DIR/rm-state`: the resource manager's state file (binary). A run directory from
    /// before the rename keeps its `DIR/rm-state.json` (the manager reads either format).
    pub fn rm_state(&self) -> PathBuf {
        let legacy = self.0.join("rm-state.json");
        if legacy.exists() {
            legacy
        } else {
            self.0.join("rm-state")
        }
    }
    /// `DIR/daemons.json`: how each daemon was started, with the address it bound.
    pub fn daemons(&self) -> PathBuf {
        self.0.join("daemons.json")
    }
    /// `DIR/<name>/`.
    pub fn manager_dir(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

pub(super) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// The `--manager-cores` of a local cluster's executor managers, unless the manager
/// configuration sets `manager_cores` itself: the cores of `allowed` that no manager rents out
/// (`groups`), or `all` when they rent out every one. Each manager's own default (its cpuset
/// but its own rented cores) would put it on the cores the other managers rent out.
fn local_manager_cores(
    allowed: &[u32],
    groups: &[Vec<u32>],
    manager_config: Option<&Path>,
) -> Option<String> {
    let set_in_file = manager_config
        .and_then(|p| fs::read_to_string(p).ok())
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("manager_cores"));
    if set_in_file {
        return None;
    }
    let free: Vec<u32> = allowed
        .iter()
        .copied()
        .filter(|c| !groups.iter().flatten().any(|g| g == c))
        .collect();
    Some(if free.is_empty() {
        "all".into()
    } else {
        format_cpulist(&free)
    })
}

/// Splits `cores` into `nodes` disjoint sets of `per_node` (default: an even share).
pub fn split_cores(
    cores: &[u32],
    nodes: u32,
    per_node: Option<u32>,
) -> Result<Vec<Vec<u32>>, ClusterError> {
    if nodes == 0 {
        return Err(ClusterError::Invalid("--nodes must be at least 1".into()));
    }
    let per = per_node.unwrap_or(cores.len() as u32 / nodes);
    if per == 0 || (per as usize) * (nodes as usize) > cores.len() {
        return Err(ClusterError::Invalid(format!(
            "{nodes} executor managers × {} cores need {} cores, but this process may use {} ({}); \
             give fewer --nodes or --cores-per-node",
            per.max(1),
            per.max(1) as usize * nodes as usize,
            cores.len(),
            format_cpulist(cores)
        )));
    }
    Ok(cores
        .chunks(per as usize)
        .take(nodes as usize)
        .map(<[u32]>::to_vec)
        .collect())
}

/// The pids file: `(pid, name)` per manager.
pub fn read_pids(path: &Path) -> Result<Option<Vec<(i32, String)>>, ClusterError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("read {}", path.display()))(e)),
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let pid = parts
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|p| *p > 1);
        let (Some(pid), Some(name)) = (pid, parts.next()) else {
            return Err(ClusterError::Invalid(format!(
                "{}: bad line {line:?}",
                path.display()
            )));
        };
        out.push((pid, name.to_string()));
    }
    Ok(Some(out))
}

/// Whether `pid` is still the executor (or resource) manager that was started as the leader
/// of its own process group (and not some other process that reused the pid).
pub(super) fn is_our_manager(pid: i32) -> bool {
    procs::stat(pid).is_some_and(|s| s.pgrp == pid && s.state != 'Z')
        && procs::cmdline(pid).is_some_and(|c| {
            c.iter()
                .any(|a| a == "executor-manager" || a == "resource-manager")
        })
}

/// `path` as an argument (the daemons' arguments are recorded as JSON strings).
fn path_arg(path: &Path) -> Result<String, ClusterError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| ClusterError::Invalid(format!("{}: not a UTF-8 path", path.display())))
}

/// Starts daemon `name` (`exe args...`, its own session, output appended to
/// `DIR/logs/<name>.log`) after removing its old ready file.
pub(super) fn launch(
    dir: &RunDir,
    exe: &Path,
    name: &str,
    args: &[String],
) -> Result<Child, ClusterError> {
    let _ = fs::remove_file(dir.ready_file(name));
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log(name))
        .map_err(io(format!("open {}", dir.log(name).display())))?;
    let err_log = log.try_clone().map_err(io("duplicate the log file"))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .spawn()
        .map_err(io(format!("start {} {}", exe.display(), args[0])))
}

/// Waits until daemon `name` has written its ready file and answers `/v1/health`; returns the
/// address it bound. A daemon that exits first, or is not ready within `timeout` (then it is
/// killed), is an error with the end of its log.
pub(super) fn wait_one(
    dir: &RunDir,
    name: &str,
    child: &mut Child,
    timeout: Duration,
) -> Result<String, ClusterError> {
    let ready = dir.ready_file(name);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = dir.log(name);
            return Err(ClusterError::ManagerDied {
                name: name.into(),
                status: crate::executor_manager::spawn::exit_reason(status),
                tail: tail(&log, 10),
                log,
            });
        }
        let http = fs::read(&ready)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("http").and_then(|h| h.as_str()).map(str::to_string));
        if let Some(http) = http.filter(|h| healthy(h)) {
            return Ok(http);
        }
        if Instant::now() >= deadline {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = child.wait();
            return Err(ClusterError::NotReady {
                name: name.into(),
                timeout,
                log: dir.log(name),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The resource manager's arguments (listening on port 0: the address it binds is recorded).
fn rm_args(
    dir: &RunDir,
    args: &StartArgs,
    secret_file: &Path,
    node_secret_file: &Path,
) -> Result<Vec<String>, ClusterError> {
    let mut out = vec!["resource-manager".to_string()];
    if let Some(c) = &args.resource_manager_config {
        out.extend(["--config".into(), path_arg(c)?]);
    }
    out.extend([
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--secret-file".into(),
        path_arg(secret_file)?,
        "--node-secret-file".into(),
        path_arg(node_secret_file)?,
        "--state-file".into(),
        path_arg(&dir.rm_state())?,
        "--ready-file".into(),
        path_arg(&dir.ready_file("rm"))?,
        "--new-session".into(),
    ]);
    Ok(out)
}

/// Starts the resource manager and waits until it answers; returns it, its address and its
/// arguments.
fn start_rm(
    dir: &RunDir,
    args: &StartArgs,
    exe: &Path,
    secret_file: &Path,
    node_secret_file: &Path,
) -> Result<(Child, String, Vec<String>), ClusterError> {
    // A new cluster, unless asked to resume: the state of a previous one names leases whose
    // clients are gone.
    if !args.resume_state {
        let _ = crate::resource_manager::store::remove_state(&dir.rm_state());
    }
    let rm_args = rm_args(dir, args, secret_file, node_secret_file)?;
    let mut child = launch(dir, exe, "rm", &rm_args)?;
    let http = wait_one(dir, "rm", &mut child, Duration::from_secs(args.timeout_s))?;
    Ok((child, http, rm_args))
}

/// Whether `pid` is an executor process (`<exe> executor`).
pub(super) fn is_executor(pid: i32) -> bool {
    procs::cmdline(pid).is_some_and(|c| c.len() == 2 && c[1] == "executor")
}

/// The last lines of a log, for an error message.
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn healthy(http: &str) -> bool {
    let agent = crate::http_agent::agent(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(1)))
            .http_status_as_error(false)
            .build(),
    );
    agent
        .get(format!("http://{http}/v1/health"))
        .call()
        .is_ok_and(|r| r.status().is_success())
}

/// Starts a local cluster; returns the cluster file written.
pub fn start(args: &StartArgs) -> Result<ClusterFile, ClusterError> {
    let dir = RunDir::new(&args.run_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.logs())
        .map_err(io(format!("create {}", dir.logs().display())))?;
    if let Some(pids) = read_pids(&dir.pids())? {
        if pids.iter().any(|(pid, _)| is_our_manager(*pid)) {
            return Err(ClusterError::AlreadyRunning(args.run_dir.clone()));
        }
        let _ = fs::remove_file(dir.pids());
    }
    let _ = fs::remove_file(dir.cluster_file());
    let _ = crate::atomic_write::remove_stale_temporaries(&args.run_dir);
    let allowed: Vec<u32> = crate::pin::allowed_cores()
        .into_iter()
        .map(|c| c as u32)
        .collect();
    let groups = split_cores(&allowed, args.nodes, args.cores_per_node)?;
    let manager_cores = local_manager_cores(&allowed, &groups, args.manager_config.as_deref());
    let read_or_create = |path: PathBuf| {
        if path.exists() {
            crate::control::secret::read_secret_file(&path)
        } else {
            crate::control::secret::create_secret_file(&path)
        }
    };
    let secret = read_or_create(dir.secret())?;
    read_or_create(dir.node_secret())?;
    let secret_file = fs::canonicalize(dir.secret()).map_err(io("resolve the secret file"))?;
    let node_secret_file =
        fs::canonicalize(dir.node_secret()).map_err(io("resolve the node secret file"))?;
    let exe = std::env::current_exe().map_err(io("find this executable"))?;
    let node = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());

    let mut rm: Option<(Child, String, Vec<String>)> = None;
    let mut started: Vec<(String, Child)> = Vec::new();
    let mut em_args: Vec<(String, Vec<String>)> = Vec::new();
    let result = (|| {
        if !args.no_resource_manager {
            rm = Some(start_rm(&dir, args, &exe, &secret_file, &node_secret_file)?);
        }
        for (i, cores) in groups.iter().enumerate() {
            let name = format!("em-{i}");
            let mut em = vec!["executor-manager".to_string()];
            if let Some(c) = &args.manager_config {
                em.extend(["--config".into(), path_arg(c)?]);
            }
            // Node names must be unique at a resource manager: `em-N` then.
            let node_name = if rm.is_some() { name.as_str() } else { &node };
            em.extend([
                "--node".into(),
                node_name.into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--provider".into(),
                args.provider.name().into(),
                "--fabric-host".into(),
                "127.0.0.1".into(),
                "--cores".into(),
                format_cpulist(cores),
                "--secret-file".into(),
                path_arg(&secret_file)?,
                "--node-secret-file".into(),
                path_arg(&node_secret_file)?,
                "--run-dir".into(),
                path_arg(&dir.manager_dir(&name))?,
                "--ready-file".into(),
                path_arg(&dir.ready_file(&name))?,
                "--new-session".into(),
            ]);
            if let Some(m) = &args.memory_per_node {
                em.extend(["--memory".into(), m.clone()]);
            }
            if let Some(m) = &manager_cores {
                em.extend(["--manager-cores".into(), m.clone()]);
            }
            if let Some((_, addr, _)) = &rm {
                em.extend(["--resource-manager".into(), addr.clone()]);
            }
            let child = launch(&dir, &exe, &name, &em)?;
            started.push((name.clone(), child));
            em_args.push((name, em));
        }
        // With a resource manager, ready means registered there: a lease asked for right
        // after `start` must find the managers' cores.
        let rm_client = rm
            .as_ref()
            .map(|(_, addr, _)| crate::client::RmClient::new(addr, &secret));
        wait_ready(
            &dir,
            &mut started,
            rm_client.as_ref(),
            Duration::from_secs(args.timeout_s),
        )
    })();
    let entries = match result {
        Ok(entries) => entries,
        Err(e) => {
            // Take down whatever did start.
            for child in started
                .iter_mut()
                .map(|(_, c)| c)
                .chain(rm.as_mut().map(|(c, _, _)| c))
            {
                let pid = Pid::from_raw(child.id() as i32);
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = kill(pid, Signal::SIGKILL);
                let _ = child.wait();
            }
            return Err(e);
        }
    };
    // From now on every daemon's address is fixed: a restart binds it again.
    let mut daemons = Daemons::default();
    if let Some((_, addr, a)) = &rm {
        daemons.daemons.insert("rm".into(), with_listen(a, addr));
    }
    for ((name, a), entry) in em_args.iter().zip(&entries) {
        daemons
            .daemons
            .insert(name.clone(), with_listen(a, &entry.http));
    }
    daemons.write(&dir.daemons())?;
    let pids: String = rm
        .iter()
        .map(|(c, _, _)| format!("{} rm\n", c.id()))
        .chain(
            started
                .iter()
                .map(|(name, c)| format!("{} {name}\n", c.id())),
        )
        .collect();
    fs::write(dir.pids(), pids).map_err(io(format!("write {}", dir.pids().display())))?;
    let cluster = ClusterFile {
        version: ClusterFile::VERSION,
        provider: args.provider,
        secret_file,
        executor_managers: entries,
        resource_manager: rm.map(|(_, addr, _)| addr),
    };
    cluster.write(&dir.cluster_file())?;
    Ok(cluster)
}

/// Waits until every manager in `started` has written its ready file and answers
/// `/v1/health`, and, with `rm`, is registered there and alive; their entries.
fn wait_ready(
    dir: &RunDir,
    started: &mut [(String, Child)],
    rm: Option<&crate::client::RmClient>,
    timeout: Duration,
) -> Result<Vec<ManagerEntry>, ClusterError> {
    let deadline = Instant::now() + timeout;
    let mut ready: Vec<Option<ManagerEntry>> = vec![None; started.len()];
    loop {
        for (i, (name, child)) in started.iter_mut().enumerate() {
            if ready[i].is_some() {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = dir.log(name);
                return Err(ClusterError::ManagerDied {
                    name: name.clone(),
                    status: crate::executor_manager::spawn::exit_reason(status),
                    log: log.clone(),
                    tail: tail(&log, 10),
                });
            }
            let info = fs::read(dir.ready_file(name))
                .ok()
                .and_then(|b| serde_json::from_slice::<ReadyInfo>(&b).ok());
            if let Some(info) = info {
                if healthy(&info.http) {
                    ready[i] = Some(ManagerEntry {
                        name: name.clone(),
                        http: info.http,
                        node: info.node,
                    });
                }
            }
        }
        // The first manager not ready yet (not listening, or not registered and alive).
        let waiting = match ready.iter().position(Option::is_none) {
            Some(i) => Some(i),
            None => rm.and_then(|rm| {
                let nodes = rm.nodes().map(|l| l.nodes).unwrap_or_default();
                ready.iter().flatten().position(|e| {
                    !nodes
                        .iter()
                        .any(|n| n.name == e.node && n.state == crate::scheduler::NodeState::Alive)
                })
            }),
        };
        let Some(waiting) = waiting else {
            return Ok(ready.into_iter().flatten().collect());
        };
        if Instant::now() >= deadline {
            let (name, _) = &started[waiting];
            return Err(ClusterError::NotReady {
                name: name.clone(),
                timeout,
                log: dir.log(name),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `stop` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Managers that were running and were stopped.
    pub managers: usize,
    /// Of those, how many had to be killed.
    pub killed: usize,
}

/// Stops the local cluster in `args.run_dir` and everything it spawned; `None` when no cluster
/// was running there.
pub fn stop(args: &StopArgs) -> Result<Option<Stopped>, ClusterError> {
    let dir = RunDir::new(&args.run_dir);
    let Some(pids) = read_pids(&dir.pids())? else {
        return Ok(None);
    };
    type Pids = Vec<(i32, String)>;
    let (ours, gone): (Pids, Pids) = pids.into_iter().partition(|(pid, _)| is_our_manager(*pid));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    // Executor managers first (they deregister from the resource manager), then it.
    for rm_phase in [false, true] {
        let phase: Vec<&(i32, String)> = ours
            .iter()
            .filter(|(_, n)| (n == "rm") == rm_phase)
            .collect();
        for (pid, name) in &phase {
            tracing::debug!(pid, name, "SIGTERM");
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        while phase.iter().any(|(pid, _)| procs::alive(*pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut killed = 0;
    for (pid, name) in &ours {
        if procs::alive(*pid) {
            tracing::warn!(
                pid,
                name,
                "executor manager still running after {}s; killing its process group",
                args.timeout_s
            );
            killed += 1;
        }
    }
    // Anything left in the managers' process groups (executors included) goes now.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut stopped: Vec<i32> = ours.iter().chain(&gone).map(|(pid, _)| *pid).collect();
    loop {
        // Everything in the groups of our managers; in the groups of managers that died
        // before (killed?), only executors (the group id may have been reused since).
        let left: Vec<procs::ProcStat> = ours
            .iter()
            .flat_map(|(pid, _)| procs::members(*pid))
            .chain(
                gone.iter()
                    .flat_map(|(pid, _)| procs::members(*pid))
                    .filter(|p| is_executor(p.pid)),
            )
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Survivors(
                left.iter().map(|p| p.pid).collect(),
            ));
        }
        for p in &left {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            stopped.push(p.pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // libfabric shm regions of what was stopped (those killed never unlink theirs); only pids
    // that are gone by now.
    #[cfg(feature = "libfabric")]
    for pid in stopped {
        if let Ok(pid) = u32::try_from(pid) {
            crate::rdma::ofi::remove_shm_regions_of_dead(pid);
        }
    }
    // DIR/rm-state stays: it is the resource manager's durable state (`start
    // --resume-state` picks it up).
    for path in [dir.pids(), dir.cluster_file(), dir.daemons()] {
        let _ = fs::remove_file(path);
    }
    for (_, name) in ours.iter().chain(&gone) {
        let _ = fs::remove_file(dir.ready_file(name));
    }
    // Temporaries of daemons killed while writing (state, ready files, library uploads): every
    // writer is gone now.
    remove_temporaries_below(&args.run_dir, 3);
    Ok(Some(Stopped {
        managers: ours.len(),
        killed,
    }))
}

/// [`remove_stale_temporaries`](crate::atomic_write::remove_stale_temporaries) in `dir` and
/// its subdirectories, `depth` levels down.
fn remove_temporaries_below(dir: &Path, depth: u32) {
    let _ = crate::atomic_write::remove_stale_temporaries(dir);
    if depth == 0 {
        return;
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_temporaries_below(&entry.path(), depth - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_managers_run_on_the_cores_none_of_them_rents_out() {
        // Two managers renting every core between them: each would otherwise move onto the
        // other's rented core.
        assert_eq!(
            local_manager_cores(&[0, 1], &[vec![0], vec![1]], None).as_deref(),
            Some("all")
        );
        assert_eq!(
            local_manager_cores(&[0, 1, 2, 3, 5], &[vec![0], vec![1]], None).as_deref(),
            Some("2-3,5")
        );
        // A manager configuration that says where the managers run is left to say it.
        let dir = tempfile::tempdir().unwrap();
        let (with, without) = (
            dir.path().join("with.toml"),
            dir.path().join("without.toml"),
        );
        fs::write(&with, "pool_size = 2\nmanager_cores = \"all\"\n").unwrap();
        fs::write(&without, "pool_size = 2\n").unwrap();
        assert_eq!(
            local_manager_cores(&[0, 1, 2], &[vec![0]], Some(&with)),
            None
        );
        assert_eq!(
            local_manager_cores(&[0, 1, 2], &[vec![0]], Some(&without)).as_deref(),
            Some("1-2")
        );
    }

    #[test]
    fn splits_cores_evenly_or_refuses() {
        assert_eq!(
            split_cores(&[0, 1, 2, 3], 2, None).unwrap(),
            vec![vec![0, 1], vec![2, 3]]
        );
        assert_eq!(
            split_cores(&[0, 1, 2, 3, 4], 2, Some(1)).unwrap(),
            vec![vec![0], vec![1]]
        );
        assert_eq!(
            split_cores(&[0, 1, 2], 1, None).unwrap(),
            vec![vec![0, 1, 2]]
        );
        let e = split_cores(&[0, 1], 3, None).unwrap_err().to_string();
        assert!(
            e.contains("3 executor managers") && e.contains("0-1"),
            "{e}"
        );
        assert!(split_cores(&[0, 1], 1, Some(3)).is_err());
        assert!(split_cores(&[0, 1], 0, None).is_err());
    }

    #[test]
    fn pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pids");
        assert_eq!(read_pids(&p).unwrap(), None);
        fs::write(&p, "123 em-0\n456 em-1\n").unwrap();
        assert_eq!(
            read_pids(&p).unwrap().unwrap(),
            vec![(123, "em-0".into()), (456, "em-1".into())]
        );
        fs::write(&p, "1 em-0\n").unwrap();
        assert!(read_pids(&p).is_err(), "pid 1 is never ours");
    }
}
