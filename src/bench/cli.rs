//! Command-line arguments of `fabric_pingpong` (parsed by the binary, interpreted here so that
//! the parent and the server process it starts agree on every flag).

use std::time::Duration;

use clap::Parser;

use super::{BenchError, Config, Mode, MAX_PAYLOAD};
use crate::pin::allowed_cores;

const ABOUT: &str = "Fabric floor benchmark: round-trip latency of the rfaas fabric providers and of the raw media.";

const LONG_ABOUT: &str = "\
Fabric floor benchmark: round-trip latency of the rfaas fabric providers and of the raw media.

A round trip is one RDMA write-with-immediate of PAYLOAD bytes from the client into the server's
registered buffer, answered by one write-with-immediate of the same size back into the client's
buffer. Client and server are two processes (this binary starts itself again as the server;
it reports its address through a pipe and dies with its parent), pinned to different cores,
both busy-polling their completion queue. Each process pins its polling thread after the
connection is set up, so helper threads (the tcp provider's progress thread) keep the whole
cpuset.

Modes (--provider, comma separated, run in order):
  shm      the rfaas shared-memory provider (memfd arenas mapped by the peer)
  tcp      the rfaas TCP provider (one stream per connection, target progress thread)
  verbs    the rfaas InfiniBand/RoCE provider (feature `verbs`; fails with \"no RDMA device\"
           on machines without one)
  ofi      the rfaas libfabric provider (feature `libfabric`) on the libfabric provider named
           by RFAAS_OFI_PROVIDER or FI_PROVIDER (shm, tcp;ofi_rxm, cxi, efa, ...)
  ofi-raw  floor of libfabric without the rfaas layer: a plain fi_writedata ping-pong (remote
           CQ data carries sequence and length) on the same libfabric provider
  shm-raw  floor of shared memory without the fabric layer: both processes map one memfd; the
           client copies the payload in and stores a sequence word with Release ordering, the
           server spins on it with Acquire and answers the same way
  tcp-raw  floor of TCP without the fabric layer: a TCP_NODELAY loopback ping-pong (8-byte header
           + payload), busy-polling recv(MSG_DONTWAIT), blocking writes
  memcpy   one-process copy of each size (same row format): the bandwidth reference

Output: CSV on stdout with the header
  provider,payload_bytes,iterations,p50_ns,p99_ns,p999_ns
one row per (mode, size); p50/p99/p999 are round-trip times in nanoseconds (copy times for
memcpy) from an HDR histogram; iterations is the number measured (warm-up excluded, capped by
--max-time-per-size). Afterwards a short summary goes to stderr: shm/shm-raw and tcp/tcp-raw
p50 ratios (and ofi/ofi-raw) and the shm bandwidth at the largest size (2 x payload / p50 round trip) against
memcpy's. A mode that cannot run (e.g. verbs without a device) is reported on stderr, the other
modes still run, and the exit status is non-zero.

Logs go to stderr (RUST_LOG, default warn).";

/// `fabric_pingpong` arguments.
#[derive(Debug, Clone, Parser)]
#[command(name = "fabric_pingpong", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Args {
    /// Modes to measure, comma separated: shm, tcp, verbs, ofi, shm-raw, tcp-raw, ofi-raw, memcpy.
    #[arg(
        short,
        long,
        env = "RFAAS_PROVIDER",
        value_delimiter = ',',
        default_value = "shm"
    )]
    pub provider: Vec<Mode>,

    /// Payload sizes in bytes, comma separated (suffixes K and M mean KiB and MiB).
    #[arg(short, long, value_delimiter = ',', value_parser = parse_size, default_value = "64,4096,1048576")]
    pub sizes: Vec<usize>,

    /// Measured round trips per size (at most; see --max-time-per-size).
    #[arg(short = 'n', long, default_value_t = 100_000)]
    pub iterations: u64,

    /// Unrecorded round trips before measuring each size.
    #[arg(short, long, default_value_t = 1_000)]
    pub warmup: u64,

    /// Stop warming up, and stop measuring, one size after this many seconds (so that large
    /// sizes and slow providers finish in bounded time).
    #[arg(long, value_name = "SECONDS", value_parser = parse_secs, default_value = "3")]
    pub max_time_per_size: Duration,

    /// Core the server process polls on [default: the second core this process may use].
    #[arg(long, value_name = "CORE")]
    pub server_core: Option<usize>,

    /// Core the client (measuring) thread polls on [default: the first core this process may use].
    #[arg(long, value_name = "CORE")]
    pub client_core: Option<usize>,

    /// Address the servers of every mode listen on [default: a fresh socket path in the temp
    /// directory for shm, 127.0.0.1:0 for tcp and tcp-raw, the first IP address of the RDMA
    /// device for verbs (its IPoIB or RoCE interface, port 0; loopback has no RDMA device)].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,

    /// Fail when one round trip does not come back within this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = parse_secs, default_value = "10")]
    pub reply_timeout: Duration,

    /// Internal: run as the server process of MODE (started by the client, never by hand).
    #[arg(long, hide = true, value_name = "MODE")]
    pub internal_server: Option<Mode>,

    /// Internal: the server's buffer size.
    #[arg(long, hide = true, default_value_t = 0)]
    pub max_bytes: usize,

    /// Internal: the inherited memfd of shm-raw.
    #[arg(long, hide = true)]
    pub inherited_fd: Option<i32>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    crate::size::parse_size_at_most(s, MAX_PAYLOAD).map_err(|e| e.to_string())
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s:?}: {e}"))
}

fn default_cores() -> (usize, usize) {
    let cores = allowed_cores();
    let first = cores.first().copied().unwrap_or(0);
    (first, cores.get(1).copied().unwrap_or(first))
}

impl Args {
    /// The client-side configuration.
    pub fn config(&self) -> Result<Config, BenchError> {
        if self.sizes.is_empty() {
            return Err(BenchError::Invalid("no --sizes".into()));
        }
        let (c, s) = default_cores();
        Ok(Config {
            sizes: self.sizes.clone(),
            iterations: self.iterations,
            warmup: self.warmup,
            max_time_per_size: self.max_time_per_size,
            client_core: self.client_core.unwrap_or(c),
            server_core: self.server_core.unwrap_or(s),
            bind: self.bind.clone(),
            reply_timeout: self.reply_timeout,
        })
    }
}

/// What a server process needs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Size of its buffers.
    pub max_bytes: usize,
    /// Core to poll on.
    pub core: usize,
    /// Listen address override.
    pub bind: Option<String>,
    /// The shm-raw segment's inherited descriptor.
    pub inherited_fd: Option<i32>,
}

impl ServerConfig {
    /// From the hidden arguments the client passed.
    pub fn from_args(args: &Args) -> Result<ServerConfig, BenchError> {
        if args.max_bytes == 0 || args.max_bytes > MAX_PAYLOAD {
            return Err(BenchError::Invalid(format!(
                "--max-bytes {}",
                args.max_bytes
            )));
        }
        Ok(ServerConfig {
            max_bytes: args.max_bytes,
            core: args.server_core.unwrap_or_else(|| default_cores().1),
            bind: args.bind.clone(),
            inherited_fd: args.inherited_fd,
        })
    }

    /// The command line that starts a server process of `mode` for `cfg`.
    pub fn command_line(mode: Mode, cfg: &Config, inherited_fd: Option<i32>) -> Vec<String> {
        let mut v = vec![
            "--internal-server".to_string(),
            mode.name().to_string(),
            "--provider".to_string(),
            mode.name().to_string(),
            "--max-bytes".to_string(),
            cfg.max_bytes().to_string(),
            "--server-core".to_string(),
            cfg.server_core.to_string(),
        ];
        if let Some(b) = &cfg.bind {
            v.extend(["--bind".to_string(), b.clone()]);
        }
        if let Some(fd) = inherited_fd {
            v.extend(["--inherited-fd".to_string(), fd.to_string()]);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_seconds_parse() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert!(parse_size("2G").is_err());
        assert!(parse_size("4096M").is_err());
        assert_eq!(parse_secs("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_secs("-1").is_err());
    }

    #[test]
    fn cli_parses_lists_and_round_trips_the_server_command_line() {
        let a = Args::try_parse_from([
            "fabric_pingpong",
            "--provider",
            "shm-raw,tcp-raw,memcpy",
            "--sizes",
            "64,4K",
            "-n",
            "10",
            "--client-core",
            "0",
            "--server-core",
            "0",
        ])
        .unwrap();
        assert_eq!(a.provider, vec![Mode::ShmRaw, Mode::TcpRaw, Mode::Memcpy]);
        let cfg = a.config().unwrap();
        assert_eq!(cfg.sizes, vec![64, 4096]);
        let mut line = vec!["fabric_pingpong".to_string()];
        line.extend(ServerConfig::command_line(Mode::ShmRaw, &cfg, Some(7)));
        let b = Args::try_parse_from(line).unwrap();
        assert_eq!(b.internal_server, Some(Mode::ShmRaw));
        let s = ServerConfig::from_args(&b).unwrap();
        assert_eq!((s.max_bytes, s.core, s.inherited_fd), (4096, 0, Some(7)));
    }
}
