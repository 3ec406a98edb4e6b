//! The resource manager (`rfaas resource-manager`): one per cluster, it knows which executor
//! managers exist and which of their cores are leased, and grants leases to clients. It is not
//! on the data path: clients holding leases keep invoking while it restarts.
//!
//! | file | concept |
//! |---|---|
//! | [`config`] | TOML file + flags → [`RmConfig`] |
//! | [`state`] | the [`Scheduler`](crate::scheduler::Scheduler) behind a mutex, its clock, its durable copy |
//! | [`store`] | the durable copy: snapshot file + write-ahead log, group commit, compaction |
//! | [`http_server`] | HTTP: routes, authentication, limits, timeouts, JSON errors |
//!
//! Lifecycle: [`run`] reads the configuration and the secret, loads the state file and replays
//! its log (a corrupt one is an error, never silently replaced; an unwritable path fails at
//! start), binds the listener, writes the ready file, and serves until SIGTERM or SIGINT; a
//! background task ticks the scheduler every `tick_interval_ms` (expiries, missed heartbeats)
//! and logs what ended, and compacts the log when it has grown. On a signal it stops accepting,
//! writes what is pending, removes the ready file and exits 0. After a `kill -9`, the state
//! file and its log hold every change that was answered.
//!
//! # The API with curl
//!
//! Every route but `/v1/health` needs a credential ([`crate::http::Authenticator`]): the node
//! routes (register, heartbeat, drain, resume, deregister) the node credential
//! (`node_secret_file`), the others the cluster secret or a MUNGE credential; messages are in
//! [`crate::control::resource_manager_api`]. Errors are `{"error": "..."}` with 400 (bad JSON, missing
//! field, invalid value), 401 (secret), 403 (lease token), 404 (unknown node or lease), 408
//! (body too slow), 409 (node dead or draining), 410 (lease ended or expired), 413 (body over
//! 64 KiB) or 503 (no capacity).
//!
//! ```text
//! RM=127.0.0.1:5000
//! AUTH="Authorization: Bearer $(cat /run/rfaas/secret)"
//! NODE="Authorization: Bearer $(cat /run/rfaas/node-secret)"   # executor managers, operators
//!
//! # Health (no secret), metrics (nodes, free/used cores, leases, grants, expiries, ...).
//! curl -s http://$RM/v1/health
//! curl -s -H "$AUTH" http://$RM/v1/metrics
//!
//! # An executor manager registers (201 the first time, 200 again), heartbeats, drains
//! # (no new leases), resumes, deregisters (its leases end). `hosted` lists the leases it
//! # runs after a restart: unknown ones are adopted, ended ones come back in "stale".
//! curl -s -H "$NODE" -X POST http://$RM/v1/nodes \
//!      -d '{"name": "n1", "address": "10.0.0.1:10000", "cores": 16, "memory": 68719476736}'
//! curl -s -H "$NODE" -X POST http://$RM/v1/nodes \
//!      -d '{"name": "n1", "address": "10.0.0.1:10000", "cores": 16, "memory": 68719476736,
//!           "hosted": [{"lease": 7, "token": "9f2c...", "cores": 4, "memory": 0}]}'
//! curl -s -H "$NODE" -X POST http://$RM/v1/nodes/n1/heartbeat
//! curl -s -H "$NODE" -X POST http://$RM/v1/nodes/n1/drain
//! curl -s -H "$NODE" -X POST http://$RM/v1/nodes/n1/resume
//! curl -s -H "$NODE" -X DELETE http://$RM/v1/nodes/n1
//! curl -s -H "$AUTH" http://$RM/v1/nodes
//! curl -s -H "$AUTH" http://$RM/v1/nodes/n1
//!
//! # A client leases 8 cores (pack or spread; split over nodes if allowed; TTL in ms):
//! # 201 {"lease": 1, "token": "...", "parts": [{"node": "n1", "address": "10.0.0.1:10000",
//! #      "cores": 8, "memory": 0}], "ttl_ms": 30000, "expires_in_ms": 30000, ...}
//! curl -s -H "$AUTH" -X POST http://$RM/v1/leases \
//!      -d '{"cores": 8, "memory_per_core": 0, "policy": "spread", "allow_split": true,
//!           "ttl_ms": 30000, "client": "alice"}'
//! # ... renews it within its TTL, looks at it, releases it (token in a body or a header).
//! curl -s -H "$AUTH" -X POST http://$RM/v1/leases/1/renew -d '{"token": "..."}'
//! curl -s -H "$AUTH" http://$RM/v1/leases/1
//! curl -s -H "$AUTH" -X DELETE http://$RM/v1/leases/1 -d '{"token": "..."}'
//! curl -s -H "$AUTH" -H "X-Rfaas-Lease-Token: ..." -X DELETE http://$RM/v1/leases/1
//! # Live leases (and recently ended ones).
//! curl -s -H "$AUTH" http://$RM/v1/leases
//! curl -s -H "$AUTH" "http://$RM/v1/leases?ended=true"
//!
//! # When the cluster is full: 503
//! # {"error": "no capacity: 64 cores requested, largest free 16 on a node, 40 free in total
//! #  (splitting over nodes not allowed)"}
//! ```

pub mod config;
pub mod http_server;
pub mod state;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::manager_process::{self, io_err, IoFailure, StopSignals};

pub use config::{RmArgs, RmConfig};
pub use state::{Loaded, RmState, StateError};

/// Why a resource manager could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RmError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::executor_manager::ConfigError),
    /// The secret file is unusable.
    #[error(transparent)]
    Secret(#[from] crate::control::secret::SecretError),
    /// The state file is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] IoFailure),
}

/// What a resource manager writes to its ready file once its API is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// HTTP address actually bound, `host:port`.
    pub http: String,
    /// Process id.
    pub pid: u32,
    /// The state file, if any.
    pub state_file: Option<PathBuf>,
}

/// Runs a resource manager until SIGTERM or SIGINT (`rfaas resource-manager`).
pub fn run(args: &RmArgs) -> Result<(), RmError> {
    if args.server.new_session {
        manager_process::new_session()?;
    }
    let cfg = RmConfig::load(args)?;
    let auth = cfg.credentials.authenticator()?;
    manager_process::block_on("rfaas-rm", cfg.threads, serve(cfg, auth))
}

async fn serve(cfg: RmConfig, auth: crate::http::Authenticator) -> Result<(), RmError> {
    let signals = StopSignals::install()?;

    // Temporaries of a predecessor killed while it saved its state or ready file.
    for dir in [&cfg.state_file, &cfg.ready_file]
        .into_iter()
        .flatten()
        .filter_map(|p| p.parent())
    {
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        if let Err(e) = crate::atomic_write::remove_stale_temporaries(dir) {
            tracing::warn!(dir = %dir.display(), "cannot remove stale temporaries: {e}");
        }
    }
    let (state, loaded) = RmState::open_with(
        cfg.scheduler.clone(),
        cfg.state_file.clone(),
        cfg.compact_log_bytes,
    )?;
    let state = Arc::new(state);
    match loaded {
        Loaded::Volatile => tracing::warn!("no state_file: nodes and leases live in memory only"),
        Loaded::Fresh => tracing::info!("starting with an empty state"),
        Loaded::Restored {
            nodes,
            leases,
            replayed,
        } => tracing::info!(
            nodes,
            leases,
            replayed,
            "state restored from the state file"
        ),
    }

    let (listener, http) = manager_process::listen(&cfg.listen).await?;
    tracing::info!("resource manager listening on http://{http}");

    let ticker = {
        let st = state.clone();
        let every = cfg.tick_interval;
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                for e in st.tick() {
                    http_server::log_event(&e);
                }
                if st.wants_compaction() {
                    let st = st.clone();
                    // The lock is held only to take the snapshot; writing it blocks no one.
                    let done = tokio::task::spawn_blocking(move || st.compact()).await;
                    if let Ok(Err(e)) = done {
                        tracing::error!("cannot compact the state log: {e}");
                    }
                }
            }
        })
    };

    if let Some(path) = &cfg.ready_file {
        let info = ReadyInfo {
            http: http.clone(),
            pid: std::process::id(),
            state_file: cfg.state_file.clone(),
        };
        state::write_atomic(path, &info)?;
    }

    let app = http_server::router(state.clone(), Arc::new(auth), cfg.request_timeout);
    let signal_name = signals.serve(listener, app, cfg.request_timeout).await;
    ticker.abort();
    tracing::info!("{signal_name}: saving the state and stopping");
    let persisted = state.close();
    if let Some(path) = &cfg.ready_file {
        let _ = std::fs::remove_file(path);
    }
    saved(&cfg, persisted)?;
    tracing::info!("resource manager stopped");
    Ok(())
}

/// The outcome of saving the state to the state file, as an error that names the file.
fn saved(cfg: &RmConfig, result: Result<(), String>) -> Result<(), IoFailure> {
    match (&cfg.state_file, result) {
        (Some(path), Err(e)) => Err(io_err(format!("save the state to {}", path.display()))(
            std::io::Error::other(e),
        )),
        _ => Ok(()),
    }
}
