//! The resource manager's configuration: a TOML file, overridden by command-line flags.
//!
//! ```toml
//! # rfaas resource-manager --config rm.toml
//! listen = "0.0.0.0:5000"          # HTTP API (port 0 picks one; see ready_file)
//! secret_file = "/run/rfaas/secret" # cluster secret, mode 0600 (required)
//! node_secret_file = "/run/rfaas/node-secret" # node credential, mode 0600: only its holders
//!                                  # may register, heartbeat, deregister, drain (none: the
//!                                  # cluster secret may, single-user mode)
//! munge = true                     # also accept MUNGE credentials from clients
//! munge_socket = "/run/munge/munge.socket.2"  # munged's socket (implies munge = true)
//! state_file = "/var/lib/rfaas/rm-state"  # durable state (none: state lives in memory)
//! ready_file = "/run/rfaas/rm.json" # {http, pid, state_file} once the API is up
//! default_ttl_ms = 60000           # lease TTL when a request names none
//! max_ttl_ms = 86400000            # longest TTL granted (longer requests are clamped)
//! heartbeat_timeout_ms = 10000     # a node silent this long is dead, its leases end
//! adopt_ttl_ms = 60000             # TTL of a lease adopted from a re-registering node
//! tick_interval_ms = 100           # how often expiries and deaths are checked
//! request_timeout_ms = 10000       # to send a request's head, and then its body
//! keep_ended = 10000               # ended leases remembered ("lease 7 has ended: expired")
//! compact_log_bytes = 33554432     # the state log is compacted into a new snapshot beyond
//!                                  # this size (and the snapshot's)
//! threads = 4                      # worker threads serving the API
//! ```
//!
//! Unknown keys are errors. Every key has a flag of the same name; a flag wins over the file.
//! Relative paths in the file are relative to the file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use crate::control::server_args::ConfigError;
use crate::control::server_args::{Credentials, ServerArgs};
use crate::scheduler::Config as SchedConfig;

/// Worker threads serving the API unless `threads` says otherwise. More than the two cores of
/// the VM it was measured on: with the clients on the same cores, a worker is often preempted
/// while it holds requests it took, and other workers go on (`rm_load_benchmark`, one log
/// thread: 13,000-14,000 grants/s and grant p99 3.8-4.3 ms with 3 to 6 workers, 12,100-12,900
/// and 4.0-5.0 ms with 2, 11,700 and 5.5-5.6 ms with 1).
pub const DEFAULT_THREADS: usize = 4;

/// Command line of `rfaas resource-manager`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_help = "\
The config file takes every flag as a key, with '_' for '-':

  listen = \"0.0.0.0:5000\"
  secret_file = \"/run/rfaas/secret\"   # mode 0600; never put the secret on a command line
  state_file = \"/var/lib/rfaas/rm-state\"
  default_ttl_ms = 60000
  heartbeat_timeout_ms = 10000

Logs every grant, renewal, release, registration and expiry to a write-ahead log beside the
state file (STATE.log.N; group commit, one fsync for all concurrent changes), compacts the log
into the state file now and then, and replays both at start: a restart, even after kill -9,
keeps nodes and leases.
Stops cleanly on SIGTERM or SIGINT. Logs go to stderr; set RUST_LOG for more.")]
pub struct RmArgs {
    /// The configuration file, listen address, secret and credential files, request timeout.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Durable state: a snapshot, with its write-ahead log beside it (FILE.log.N), loaded at
    /// start, every change logged before it is answered (none: memory only).
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// Write {http, pid, state_file} as JSON to this file once the API is up.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Lease TTL when a request names none, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub default_ttl_ms: Option<u64>,
    /// Longest lease TTL granted, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub max_ttl_ms: Option<u64>,
    /// A node not heard of for this long is marked dead, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// TTL of a lease adopted from a re-registering node, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub adopt_ttl_ms: Option<u64>,
    /// How often expiries and missed heartbeats are checked, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub tick_interval_ms: Option<u64>,
    /// Ended leases remembered.
    #[arg(long, value_name = "N")]
    pub keep_ended: Option<usize>,
    /// Compact the state log into a new snapshot once it holds this many bytes (and more
    /// than the snapshot).
    #[arg(long, value_name = "BYTES")]
    pub compact_log_bytes: Option<u64>,
    /// Worker threads serving the API (default 4).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    state_file: Option<PathBuf>,
    ready_file: Option<PathBuf>,
    default_ttl_ms: Option<u64>,
    max_ttl_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    adopt_ttl_ms: Option<u64>,
    tick_interval_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    keep_ended: Option<usize>,
    compact_log_bytes: Option<u64>,
    threads: Option<usize>,
}

/// The resolved configuration of a resource manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RmConfig {
    /// HTTP listen address.
    pub listen: String,
    /// The credentials it accepts (secret files, MUNGE).
    pub credentials: Credentials,
    /// Durable state file.
    pub state_file: Option<PathBuf>,
    /// Where to announce readiness.
    pub ready_file: Option<PathBuf>,
    /// The scheduler's tunables.
    pub scheduler: SchedConfig,
    /// Expiry and heartbeat checks.
    pub tick_interval: Duration,
    /// Request head, then body.
    pub request_timeout: Duration,
    /// Log size beyond which it is compacted into a snapshot.
    pub compact_log_bytes: u64,
    /// Worker threads of the HTTP server.
    pub threads: usize,
}

impl RmConfig {
    /// Reads the file named by `--config` (if any), applies the flags, fills defaults, checks.
    pub fn load(args: &RmArgs) -> Result<RmConfig, ConfigError> {
        let server = &args.server;
        let (file, from_file) = server.read_file::<FileConfig>()?;
        let rel = |p: PathBuf| from_file.path(p);
        let d = SchedConfig::default();
        let scheduler = SchedConfig {
            heartbeat_timeout_ms: args
                .heartbeat_timeout_ms
                .or(file.heartbeat_timeout_ms)
                .unwrap_or(d.heartbeat_timeout_ms),
            default_ttl_ms: args
                .default_ttl_ms
                .or(file.default_ttl_ms)
                .unwrap_or(d.default_ttl_ms),
            max_ttl_ms: args.max_ttl_ms.or(file.max_ttl_ms).unwrap_or(d.max_ttl_ms),
            adopt_ttl_ms: args
                .adopt_ttl_ms
                .or(file.adopt_ttl_ms)
                .unwrap_or(d.adopt_ttl_ms),
            keep_ended: args.keep_ended.or(file.keep_ended).unwrap_or(d.keep_ended),
            ..d
        };
        let credentials = server.credentials(&from_file)?;
        let cfg = RmConfig {
            listen: server.listen(file.listen, "127.0.0.1:5000"),
            credentials,
            state_file: args.state_file.clone().or(file.state_file.map(rel)),
            ready_file: args.ready_file.clone().or(file.ready_file.map(rel)),
            scheduler,
            tick_interval: Duration::from_millis(
                args.tick_interval_ms
                    .or(file.tick_interval_ms)
                    .unwrap_or(100),
            ),
            request_timeout: Duration::from_millis(
                server.request_timeout_ms(file.request_timeout_ms, 10_000),
            ),
            compact_log_bytes: args
                .compact_log_bytes
                .or(file.compact_log_bytes)
                .unwrap_or(super::state::DEFAULT_COMPACT_BYTES),
            threads: args.threads.or(file.threads).unwrap_or(DEFAULT_THREADS),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        let s = &self.scheduler;
        if s.default_ttl_ms == 0 || s.max_ttl_ms == 0 || s.adopt_ttl_ms == 0 {
            return bad("lease TTLs must be at least 1 ms");
        }
        if s.default_ttl_ms > s.max_ttl_ms {
            return bad("default_ttl_ms must not exceed max_ttl_ms");
        }
        if s.heartbeat_timeout_ms == 0 {
            return bad("heartbeat_timeout_ms must be at least 1 ms");
        }
        if self.tick_interval.is_zero() || self.tick_interval > Duration::from_secs(60) {
            return bad("tick_interval_ms must be between 1 and 60000");
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout_ms must be at least 1 ms");
        }
        if !(1..=1024).contains(&self.threads) {
            return bad("threads must be between 1 and 1024");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("rm.toml");
        std::fs::write(
            &f,
            "secret_file = \"s\"\nstate_file = \"state.json\"\ndefault_ttl_ms = 500\n",
        )
        .unwrap();
        let args = RmArgs {
            server: ServerArgs {
                config: Some(f.clone()),
                ..ServerArgs::default()
            },
            default_ttl_ms: Some(700),
            ..RmArgs::default()
        };
        let c = RmConfig::load(&args).unwrap();
        assert_eq!(c.credentials.secret_file, dir.path().join("s"));
        assert_eq!(c.state_file, Some(dir.path().join("state.json")));
        assert_eq!(c.scheduler.default_ttl_ms, 700);
        assert_eq!(c.tick_interval, Duration::from_millis(100));
        assert_eq!(c.threads, DEFAULT_THREADS);
        std::fs::write(&f, "secret_file = \"s\"\nthreads = 8\n").unwrap();
        assert_eq!(RmConfig::load(&args).unwrap().threads, 8);
        let flag = RmArgs {
            threads: Some(3),
            ..args.clone()
        };
        assert_eq!(RmConfig::load(&flag).unwrap().threads, 3);
        std::fs::write(&f, "secret_file = \"s\"\nthreads = 0\n").unwrap();
        let e = RmConfig::load(&args).unwrap_err().to_string();
        assert!(e.contains("threads must be between 1 and 1024"), "{e}");
        std::fs::write(&f, "secret_file = \"s\"\nttl = 5\n").unwrap();
        let e = RmConfig::load(&args).unwrap_err().to_string();
        assert!(e.contains("unknown field `ttl`"), "{e}");
        assert!(RmConfig::load(&RmArgs::default())
            .unwrap_err()
            .to_string()
            .contains("no secret file"));
    }
}
