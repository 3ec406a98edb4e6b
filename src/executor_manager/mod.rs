//! The executor manager (`rfaas executor-manager`): one per node, it rents the node's cores to
//! clients over an authenticated HTTP/JSON API ([`crate::control::executor_manager_api`]) and runs one executor
//! process per allocation.
//!
//! | file | concept |
//! |---|---|
//! | [`config`] | TOML file + flags → [`ManagerConfig`] |
//! | [`cores`] | which core belongs to which allocation (pure) |
//! | [`topology`] | the order cores are rented out in: nearest the NIC first (hwloc or sysfs) |
//! | [`memory`] | what an allocation costs, what is left (pure) |
//! | [`registry`] | allocation states and the resources they hold (pure, clock injected) |
//! | [`libraries`] | the content-hash library cache (the manager never loads code) |
//! | [`pool`] | executor processes started ahead of allocations, one allocation each |
//! | [`spawn`] | starting executors (forked or spawned), supervising them |
//! | [`zygote`] | the fork server executors are started from |
//! | [`billing`] | fabric records executors fetch-add their execution and polling time into |
//! | [`service`] | the actions: allocate, deallocate, status, shutdown |
//! | [`resource_manager_link`] | registration and heartbeats with the resource manager, lease checks |
//! | [`http_server`] | HTTP: routes, authentication, limits, timeouts, JSON errors |
//!
//! Lifecycle: [`run`] reads the configuration and the secret, opens the billing endpoint and the
//! cache, binds the HTTP listener, writes the ready file (if asked), and serves until SIGTERM or
//! SIGINT; then it stops accepting, SIGTERMs every executor, SIGKILLs those still there after the
//! grace period, and returns. Executors also die with their manager (`PR_SET_PDEATHSIG`), so
//! even a `kill -9` of the manager orphans nothing.

pub mod assets;
pub mod billing;
pub mod config;
pub mod cores;
pub mod http_server;
pub mod lease_deadlines;
pub mod libraries;
pub mod memory;
pub mod pool;
pub mod registry;
pub mod resource_manager_link;
pub mod service;
pub mod spawn;
pub mod topology;
pub mod zygote;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::atomic_write::{write_json_atomic, Durability};
use crate::manager_process::{self, io_err, IoFailure, StopSignals};

pub use config::{ConfigError, ManagerArgs, ManagerConfig};
pub use service::{Service, ServiceError};

/// Why an executor manager could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The secret file is unusable.
    #[error(transparent)]
    Secret(#[from] crate::control::secret::SecretError),
    /// The fabric provider cannot run here.
    #[error("cannot open the billing endpoint on the fabric")]
    Fabric(#[from] crate::rdma::FabricError),
    /// The NIC named in the configuration does not exist.
    #[error(transparent)]
    Nic(#[from] topology::NicNotFound),
    /// The library cache is unusable.
    #[error(transparent)]
    Library(#[from] crate::function::FunctionError),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] IoFailure),
}

/// What a manager writes to its ready file (`--ready-file`) once its API is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// Node name.
    pub node: String,
    /// HTTP address actually bound, `host:port`.
    pub http: String,
    /// Process id.
    pub pid: u32,
}

/// Runs an executor manager until SIGTERM or SIGINT (`rfaas executor-manager`).
pub fn run(args: &ManagerArgs) -> Result<(), ManagerError> {
    if args.server.new_session {
        manager_process::new_session()?;
    }
    let mut cfg = ManagerConfig::load(args)?;
    let auth = cfg.credentials.authenticator()?;
    // What it presents to the resource manager: the node credential when there is one.
    let c = &cfg.credentials;
    let rm_secret = crate::control::secret::read_secret_file(
        c.node_secret_file.as_deref().unwrap_or(&c.secret_file),
    )?;
    let exe = executor_exe(
        std::env::current_exe().map_err(io_err("find this executable (to spawn executors)"))?,
    );
    // What `rfaas status` reports is what was bound, not what was asked for.
    cfg.manager_cores = bind_manager_threads(&cfg);
    // Two threads: a manager is not on the invocation path, the cores are for rent.
    manager_process::block_on("rfaas-em", 2, serve(cfg, auth, rm_secret, exe))
}

/// Binds the calling thread, before it starts any other, to `manager_cores`: every thread of
/// the manager inherits the binding, so none of them runs on a core an executor was rented
/// (a cold start's executor then shares its core with nothing: woken by its configuration, it
/// need not wait for the manager thread that wrote it to block). Executors pin themselves
/// within the node's cpuset ([`crate::executor::CPUSET_ENV`]), not this binding.
/// Returns the cores it bound to (`None`: not bound).
fn bind_manager_threads(cfg: &ManagerConfig) -> Option<Vec<u32>> {
    let Some(own) = &cfg.manager_cores else {
        tracing::info!(
            "manager threads on its whole cpuset (manager_cores = all, or it rents out every core)"
        );
        return None;
    };
    let shared: Vec<u32> = own
        .iter()
        .copied()
        .filter(|c| cfg.cores.contains(c))
        .collect();
    if !shared.is_empty() {
        tracing::warn!(
            cores = %config::format_cpulist(&shared),
            "manager_cores includes cores it rents out: executors there share them with the manager"
        );
    }
    match crate::pin::bind_current_thread_to(own.iter().map(|&c| c as usize)) {
        Ok(()) if shared.is_empty() => tracing::info!(
            cores = %config::format_cpulist(own),
            "manager threads bound off the rented cores"
        ),
        Ok(()) => tracing::info!(
            cores = %config::format_cpulist(own),
            "manager threads bound to manager_cores"
        ),
        Err(e) => {
            tracing::warn!(
                cores = %config::format_cpulist(own),
                "manager threads not bound: {e}"
            );
            return None;
        }
    }
    Some(own.clone())
}

/// The executable that executors run as (`<exe> executor`): `rfaas-executor` when it lies
/// beside this `rfaas` (`this`), a lean binary of the executor alone that starts faster, built
/// with the same version and features ([`crate::executor::build_info`]); else this executable
/// (with a warning when a lean one is there but does not match: a differently built executor
/// could not open the manager's fabric). One built well before this binary is used with a
/// warning (cargo links the two in one build, in either order).
fn executor_exe(this: PathBuf) -> PathBuf {
    let lean = this.with_file_name("rfaas-executor");
    if !lean.is_file() {
        tracing::info!(executable = %this.display(), "executors run as `<executable> executor`");
        return this;
    }
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = matches!((modified(&lean), modified(&this)),
        (Some(l), Some(t)) if t.duration_since(l).is_ok_and(|d| d.as_secs() > 600));
    let info = std::process::Command::new(&lean)
        .arg("build-info")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let ours = crate::executor::build_info();
    let why_not = match &info {
        None => Some("it does not say how it was built".to_string()),
        Some(i) if *i != ours => Some(format!("it was built as {i:?}, this as {ours:?}")),
        _ => None,
    };
    if stale && why_not.is_none() {
        tracing::warn!(
            lean = %lean.display(),
            "the lean executor binary was built more than 10 minutes before this one: rebuild both \
             (`make build`) if the executor's code changed since"
        );
    }
    let chosen = match why_not {
        None => lean,
        Some(why) => {
            tracing::warn!(lean = %lean.display(), "not using the lean executor binary: {why}");
            this
        }
    };
    tracing::info!(executable = %chosen.display(), "executors run as `<executable> executor`");
    chosen
}

async fn serve(
    cfg: ManagerConfig,
    auth: crate::http::Authenticator,
    rm_secret: String,
    exe: PathBuf,
) -> Result<(), ManagerError> {
    let signals = StopSignals::install()?;
    let (listener, http) = manager_process::listen(&cfg.listen).await?;
    let service = Arc::new(Service::start(cfg.clone(), exe)?);
    tracing::info!(
        node = %cfg.node,
        provider = %cfg.provider,
        cores = %config::format_cpulist(&cfg.cores),
        memory = cfg.memory,
        run_dir = %cfg.run_dir.display(),
        "executor manager listening on http://{http}"
    );
    if let Some(path) = &cfg.ready_file {
        // Temporaries of a predecessor killed while it wrote this file.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Err(e) = crate::atomic_write::remove_stale_temporaries(dir) {
                tracing::warn!(dir = %dir.display(), "cannot remove stale temporaries: {e}");
            }
        }
        let info = ReadyInfo {
            node: cfg.node.clone(),
            http: http.clone(),
            pid: std::process::id(),
        };
        write_json_atomic(path, &info, 0o644, Durability::Atomic)
            .map_err(io_err(format!("write {}", path.display())))?;
    }

    let deadlines_dir = cfg.run_dir.join("deadlines");
    let deadlines = match &cfg.resource_manager {
        Some(_) => Some(
            lease_deadlines::LeaseDeadlines::open(&deadlines_dir)
                .map_err(io_err(format!("create {}", deadlines_dir.display())))?,
        ),
        None => None,
    };
    let rm_task = cfg
        .resource_manager
        .as_ref()
        .zip(deadlines)
        .map(|(addr, deadlines)| {
            let link = Arc::new(resource_manager_link::RmLink::new(
                addr, &rm_secret, &cfg.node, deadlines,
            ));
            service.set_rm(link.clone());
            (
                tokio::spawn(resource_manager_link::run(
                    service.clone(),
                    link.clone(),
                    http.clone(),
                )),
                link,
            )
        });
    let app = http_server::router(service.clone(), Arc::new(auth));
    let signal_name = signals.serve(listener, app, cfg.request_timeout).await;
    tracing::info!("{signal_name}: shutting down");
    if let Some((task, link)) = rm_task {
        task.abort();
        // Its cores leave the pool now rather than after the heartbeat timeout.
        match tokio::task::spawn_blocking(move || link.deregister()).await {
            Ok(Ok(_)) => tracing::info!("deregistered from the resource manager"),
            Ok(Err(e)) => tracing::warn!("deregistering from the resource manager: {e}"),
            Err(_) => {}
        }
    }
    service.shutdown().await;
    if let Some(path) = &cfg.ready_file {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("executor manager stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A directory with an `rfaas` and an `rfaas-executor` script that prints `info`.
    fn dir_with_lean(info: Option<&str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let this = dir.path().join("rfaas");
        std::fs::write(&this, b"").unwrap();
        if let Some(info) = info {
            let lean = dir.path().join("rfaas-executor");
            std::fs::write(&lean, format!("#!/bin/sh\necho '{info}'\n")).unwrap();
            std::fs::set_permissions(&lean, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        (dir, this)
    }

    #[test]
    fn the_lean_executor_is_used_only_when_it_was_built_alike() {
        let ours = crate::executor::build_info();
        let (dir, this) = dir_with_lean(Some(&ours));
        assert_eq!(executor_exe(this), dir.path().join("rfaas-executor"));
        let (_dir, this) = dir_with_lean(Some("rfaas 0.0.1 [libfabric]"));
        assert_eq!(executor_exe(this.clone()), this, "another build: not used");
        let (_dir, this) = dir_with_lean(None);
        assert_eq!(executor_exe(this.clone()), this, "none beside it");
    }
}
