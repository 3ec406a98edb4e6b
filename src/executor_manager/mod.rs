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
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ManagerError {
    let context = context.into();
    move |source| ManagerError::Io { context, source }
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
    if args.new_session {
        // Its own session and process group (pgid = pid): a launcher can stop the manager and
        // everything it spawned with one killpg, and no terminal's signals reach it.
        nix::unistd::setsid().map_err(|e| io_err("setsid")(e.into()))?;
    }
    let cfg = ManagerConfig::load(args)?;
    let auth = crate::http::Authenticator::load(
        &cfg.secret_file,
        cfg.node_secret_file.as_deref(),
        cfg.munge.clone(),
    )?;
    // What it presents to the resource manager: the node credential when there is one.
    let rm_secret = crate::control::secret::read_secret_file(
        cfg.node_secret_file.as_deref().unwrap_or(&cfg.secret_file),
    )?;
    let exe =
        std::env::current_exe().map_err(io_err("find this executable (to spawn executors)"))?;
    // Few threads: the manager is not on the invocation path, and the cores are for rent.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rfaas-em")
        .enable_all()
        .build()
        .map_err(io_err("start the async runtime"))?;
    let result = rt.block_on(serve(cfg, auth, rm_secret, exe));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(
    cfg: ManagerConfig,
    auth: crate::http::Authenticator,
    rm_secret: String,
    exe: PathBuf,
) -> Result<(), ManagerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(io_err("handle SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err("handle SIGINT"))?;

    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(io_err(format!("listen on {}", cfg.listen)))?;
    let http = listener
        .local_addr()
        .map_err(io_err("read the bound address"))?
        .to_string();
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
    let (tx, rx) = tokio::sync::oneshot::channel::<&'static str>();
    let waiter = tokio::spawn(async move {
        let sig = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = tx.send(sig);
    });
    let mut signal_name = "";
    let shutdown = async {
        signal_name = rx.await.unwrap_or("shutdown");
    };
    http_server::serve(listener, app, cfg.request_timeout, shutdown).await;
    waiter.abort();
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
