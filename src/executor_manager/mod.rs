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
//! | [`spawn`] | starting executors from the manager's own executable, reaping them |
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

use std::path::PathBuf;
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
    let cfg = ManagerConfig::load(args)?;
    let auth = cfg.credentials.authenticator()?;
    // What it presents to the resource manager: the node credential when there is one.
    let c = &cfg.credentials;
    let rm_secret = crate::control::secret::read_secret_file(
        c.node_secret_file.as_deref().unwrap_or(&c.secret_file),
    )?;
    let exe = executor_exe(
        std::env::current_exe().map_err(io_err("find this executable (to spawn executors)"))?,
    );
    manager_process::block_on("rfaas-em", serve(cfg, auth, rm_secret, exe))
}

/// The executable that executors run as (`<exe> executor`): `rfaas-executor` when it lies
/// beside this `rfaas` (`this`), a lean binary of the executor alone that starts faster; else
/// this executable.
fn executor_exe(this: PathBuf) -> PathBuf {
    let lean = this.with_file_name("rfaas-executor");
    let chosen = if lean.is_file() { lean } else { this };
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
