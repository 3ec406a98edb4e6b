//! Benchmarks: the fabric floor ping-pong (`fabric_pingpong`, this page) and the invocation
//! benchmarks of the serverless core ([`invocation`]).
//!
//! A fabric round trip is one write-with-immediate each way into the peer's registered buffer, between
//! two processes pinned to different cores, both busy-polling. The same run can measure
//!
//! * the fabric providers through the rfaas API ([`pingpong`]): `shm`, `tcp`, `verbs`, `ofi`;
//! * the floors of the media without the fabric layer ([`raw`]): `shm-raw` (two processes map one
//!   memfd, the payload is copied in and a sequence word is stored with `Release`; the peer spins
//!   with `Acquire` and answers the same way) and `tcp-raw` (a `TCP_NODELAY` loopback socket
//!   ping-pong with busy-polled non-blocking `recv`) and `ofi-raw` (feature `libfabric`: a plain
//!   `fi_writedata` ping-pong on the libfabric provider that `ofi` uses, `ofi_raw`);
//! * `memcpy` in one process ([`memcpy`]), the reference for the 1 MiB bandwidth target;
//!
//! so that the layer's overhead is a ratio measured in one run ([`stats::summary`]).
//! The applications (thumbnailer, classifier) measure batches remotely and locally with
//! [`batch`].
//! Results are CSV rows ([`stats::Row`], header [`stats::CSV_HEADER`]), written with `csv` and
//! serde like every CSV of the benchmarks ([`csv_rows`]).

pub mod batch;
pub mod child;
pub mod cli;
pub mod cold_burst;
pub mod csv_rows;
pub mod invocation;
pub mod lease;
pub mod memcpy;
#[cfg(feature = "libfabric")]
pub mod ofi_raw;
pub mod pingpong;
pub mod placement;
pub mod raw;
pub mod rm_load;
#[cfg(feature = "mpi")]
pub mod scalable;
pub mod stats;

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::pin::PinError;
use crate::rdma::{FabricError, Provider, Wc};

pub use cli::Args;
pub use stats::{Latencies, Row, CSV_HEADER};

/// How long connection setup and the server's start may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// A server that hears nothing from its client for this long gives up.
pub const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest payload accepted (write lengths are 32-bit in the fabric API).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// What one benchmark row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A fabric provider through the rfaas API.
    Fabric(Provider),
    /// Shared-memory floor: memfd mapped by both processes, payload + release-stored flag.
    ShmRaw,
    /// TCP floor: `TCP_NODELAY` loopback ping-pong with busy-polled non-blocking `recv`.
    TcpRaw,
    /// libfabric floor: a plain `fi_writedata` ping-pong (feature `libfabric`).
    OfiRaw,
    /// One-process `memcpy` of each size (the bandwidth reference).
    Memcpy,
}

impl Mode {
    /// The name used on the command line and in the CSV `provider` column.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fabric(p) => p.name(),
            Mode::ShmRaw => "shm-raw",
            Mode::TcpRaw => "tcp-raw",
            Mode::OfiRaw => "ofi-raw",
            Mode::Memcpy => "memcpy",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "shm-raw" => Ok(Mode::ShmRaw),
            "tcp-raw" => Ok(Mode::TcpRaw),
            "ofi-raw" => Ok(Mode::OfiRaw),
            "memcpy" => Ok(Mode::Memcpy),
            other => other.parse::<Provider>().map(Mode::Fabric).map_err(|_| {
                format!("unknown provider {other:?}: expected shm, tcp, verbs, ofi, shm-raw, tcp-raw, ofi-raw or memcpy")
            }),
        }
    }
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The fabric refused (provider unavailable, connection failed, ...).
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// Pinning to a core failed.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// An operating-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The server process failed.
    #[error("{0}")]
    Server(String),
    /// The peer broke the benchmark's protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A work request completed with an error.
    #[error("work request failed: {0:?}")]
    Completion(Wc),
    /// A bad argument.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl BenchError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Everything a client-side run needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// Payload sizes in bytes.
    pub sizes: Vec<usize>,
    /// Measured iterations per size (upper bound; see `max_time_per_size`).
    pub iterations: u64,
    /// Unrecorded iterations before measuring each size.
    pub warmup: u64,
    /// Measuring (and warming up) one size stops after this long, whatever `iterations` says.
    pub max_time_per_size: Duration,
    /// Core of the client (measuring) thread.
    pub client_core: usize,
    /// Core of the server process's polling thread.
    pub server_core: usize,
    /// Where fabric and tcp-raw servers listen (`None`: a default per provider).
    pub bind: Option<String>,
    /// One round trip failing to come back within this long is an error.
    pub reply_timeout: Duration,
}

impl Config {
    /// Largest size, at least 64 bytes: the size of every buffer.
    pub fn max_bytes(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(0).max(64)
    }
}

/// Runs `round_trip` `warmup` times unrecorded, then up to `iterations` times recorded, stopping
/// either phase once it has run for `max_time`.
pub(crate) fn measure(
    warmup: u64,
    iterations: u64,
    max_time: Duration,
    mut round_trip: impl FnMut() -> Result<(), BenchError>,
) -> Result<Latencies, BenchError> {
    let start = Instant::now();
    for _ in 0..warmup {
        round_trip()?;
        if start.elapsed() > max_time {
            break;
        }
    }
    let mut lat = Latencies::new();
    let start = Instant::now();
    for _ in 0..iterations {
        let t0 = Instant::now();
        round_trip()?;
        let t1 = Instant::now();
        lat.record(t1 - t0);
        if t1 - start > max_time {
            break;
        }
    }
    Ok(lat)
}

/// A busy-wait helper: call [`Spin::expired`] on every unsuccessful poll. It reads the clock
/// only every 1024 calls (the first read starts the clock, so creating one costs nothing on the
/// measured path) and reports expiry once `timeout` has passed since then.
pub(crate) struct Spin {
    start: Option<Instant>,
    timeout: Duration,
    n: u32,
}

impl Spin {
    #[inline]
    pub(crate) fn new(timeout: Duration) -> Spin {
        Spin {
            start: None,
            timeout,
            n: 0,
        }
    }

    /// True once the timeout has passed (checked every 1024 calls).
    #[inline]
    pub(crate) fn expired(&mut self) -> bool {
        self.n = self.n.wrapping_add(1);
        if self.n % 1024 != 0 {
            std::hint::spin_loop();
            return false;
        }
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        now - start > self.timeout
    }
}

/// What a whole run produced.
#[derive(Debug, Default)]
pub struct Report {
    /// Every row printed, in order.
    pub rows: Vec<Row>,
    /// Modes that failed, with why.
    pub failures: Vec<(Mode, BenchError)>,
}

/// Runs every mode of `args` in order, writing the CSV header and each row to `out` as soon as it
/// is measured. A failing mode is recorded in the report and the next one runs.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<Report, BenchError> {
    let cfg = args.config()?;
    if cfg.client_core == cfg.server_core {
        tracing::warn!(
            core = cfg.client_core,
            "client and server pinned to the same core: busy polling will crawl"
        );
    }
    let csv = |e: csv_rows::CsvError| BenchError::io("writing CSV", std::io::Error::other(e));
    let header: Vec<&str> = CSV_HEADER.split(',').collect();
    let mut out = csv_rows::RowWriter::new(out, &header, "the CSV").map_err(csv)?;
    out.flush().map_err(csv)?;
    let mut report = Report::default();
    for &mode in &args.provider {
        tracing::info!(%mode, "measuring");
        // Each mode runs on a fresh thread that pins itself, so this thread keeps the full
        // cpuset and every server process starts unpinned (it pins itself to the server core).
        let cfg = cfg.clone();
        let res = std::thread::Builder::new()
            .name(format!("bench-{mode}"))
            .spawn(move || run_mode(mode, &cfg))
            .map_err(|e| BenchError::io("starting a benchmark thread", e))?
            .join()
            .unwrap_or_else(|_| {
                Err(BenchError::Server(format!(
                    "{mode}: benchmark thread panicked"
                )))
            });
        match res {
            Ok(rows) => {
                for r in rows {
                    out.row(&r).map_err(csv)?;
                    report.rows.push(r);
                }
                out.flush().map_err(csv)?;
            }
            Err(e) => report.failures.push((mode, e)),
        }
    }
    Ok(report)
}

/// Measures every size of one mode.
pub fn run_mode(mode: Mode, cfg: &Config) -> Result<Vec<Row>, BenchError> {
    match mode {
        Mode::Fabric(p) => p.run(pingpong::Client { cfg })?,
        Mode::ShmRaw => raw::shm_client(cfg),
        Mode::TcpRaw => raw::tcp_client(cfg),
        #[cfg(feature = "libfabric")]
        Mode::OfiRaw => ofi_raw::client(cfg),
        #[cfg(not(feature = "libfabric"))]
        Mode::OfiRaw => Err(no_libfabric()),
        Mode::Memcpy => memcpy::run(cfg),
    }
}

#[cfg(not(feature = "libfabric"))]
fn no_libfabric() -> BenchError {
    BenchError::Fabric(FabricError::NotCompiled {
        provider: "ofi-raw",
        feature: "libfabric",
    })
}

/// The hidden server mode (`--internal-server MODE`): what the child process runs.
pub fn serve(args: &Args, mode: Mode) -> Result<(), BenchError> {
    child::server_init()?;
    let srv = cli::ServerConfig::from_args(args)?;
    match mode {
        Mode::Fabric(p) => p.run(pingpong::Server { cfg: &srv })?,
        Mode::ShmRaw => raw::shm_server(&srv),
        Mode::TcpRaw => raw::tcp_server(&srv),
        #[cfg(feature = "libfabric")]
        Mode::OfiRaw => ofi_raw::server(&srv),
        #[cfg(not(feature = "libfabric"))]
        Mode::OfiRaw => Err(no_libfabric()),
        Mode::Memcpy => Err(BenchError::Invalid("memcpy has no server".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("shm".parse::<Mode>().unwrap(), Mode::Fabric(Provider::Shm));
        assert_eq!("TCP-raw".parse::<Mode>().unwrap(), Mode::TcpRaw);
        assert_eq!("memcpy".parse::<Mode>().unwrap(), Mode::Memcpy);
        for m in [
            "shm", "tcp", "verbs", "ofi", "shm-raw", "tcp-raw", "ofi-raw", "memcpy",
        ] {
            assert_eq!(m.parse::<Mode>().unwrap().name(), m);
        }
        assert!("udp".parse::<Mode>().is_err());
    }

    #[test]
    fn measure_respects_iterations_and_time_cap() {
        let mut n = 0;
        let lat = measure(3, 10, Duration::from_secs(10), || {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, lat.count()), (13, 10));
        let lat = measure(0, u64::MAX, Duration::from_millis(20), || {
            std::thread::sleep(Duration::from_millis(1));
            Ok(())
        })
        .unwrap();
        assert!(lat.count() >= 2 && lat.count() < 100, "{}", lat.count());
    }
}
