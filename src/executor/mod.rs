//! The executor process: one per allocation, one pinned worker thread per leased core.
//!
//! Started by the executor manager as `rfaas executor` (the manager's own executable), it reads an
//! [`ExecutorConfig`] from standard input, loads the function library, listens on the fabric,
//! reports an [`ExecutorEvent`] on standard output, accepts the client's connection to every
//! worker (authenticated by the allocation token), and serves invocations until the client
//! disconnects or it is told to stop (SIGTERM), when pending invocations are answered with
//! `ShuttingDown`. It dies with its manager (`PR_SET_PDEATHSIG`), and stops by itself when its
//! lease's deadline passes, even if its manager is frozen ([`deadline`]).

mod billing;
pub mod deadline;
mod worker;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::executor_manager_api::{
    ExecutorConfig, ExecutorEvent, WorkerAccept, WorkerConnect, TOKEN_LEN,
};
use crate::control::secret::secrets_equal;
use crate::function::assets::MappedAssets;
use crate::function::{ContentHash, FunctionError, FunctionLibrary, FunctionTable};
use crate::protocol::{HEADER_LEN, MAX_SLOTS};
use crate::rdma::{
    Access, ConnRequest, Fabric, FabricUser, Listener, MemoryRegion, QpCaps, QpInit, QpTimeouts,
    RecvWr,
};

pub use billing::Billing;
pub use worker::{Worker, WorkerExit};

/// Errors of the executor process.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The configuration on standard input was unusable.
    #[error("bad executor configuration: {0}")]
    Config(String),
    /// The library could not be loaded or a function not resolved.
    #[error(transparent)]
    Function(#[from] crate::function::FunctionError),
    /// The fabric failed.
    #[error("fabric: {0}")]
    Fabric(#[from] crate::rdma::FabricError),
    /// The client did not connect every worker in time.
    #[error("client connected {connected} of {workers} workers within {timeout:?}")]
    ConnectTimeout {
        /// Workers connected.
        connected: usize,
        /// Workers expected.
        workers: usize,
        /// The timeout.
        timeout: Duration,
    },
    /// Standard input/output failed.
    #[error("executor i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Largest configuration document read from standard input.
const MAX_CONFIG: u64 = 1 << 20;

/// Environment variable naming the fabric provider an executor opens *before* it reads its
/// configuration (set by the executor manager, which knows its provider): the fabric domain is
/// then open by the time a pooled executor gets its allocation. The configuration must name the
/// same provider.
pub const EARLY_PROVIDER_ENV: &str = "RFAAS_EXECUTOR_PROVIDER";

/// Entry point of `rfaas executor`: reads the configuration from standard input and serves.
/// Reports failure to start as an [`ExecutorEvent::Failed`] line too, so the manager can tell
/// the client why.
pub fn main_stdin() -> Result<(), ExecutorError> {
    // Die with the manager, whatever killed it.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let early = std::env::var(EARLY_PROVIDER_ENV)
        .ok()
        .and_then(|p| p.parse::<crate::rdma::Provider>().ok());
    let result = match early {
        Some(provider) => provider
            .run(Early)
            .map_err(ExecutorError::from)
            .and_then(|r| r),
        None => read_config().and_then(|cfg| run(cfg, &mut std::io::stdout())),
    };
    if let Err(e) = &result {
        let event = match e {
            ExecutorError::Function(FunctionError::InitFailed { message, .. }) => {
                ExecutorEvent::InitFailed {
                    error: message.clone(),
                }
            }
            _ => ExecutorEvent::Failed {
                error: e.to_string(),
            },
        };
        report(&mut std::io::stdout(), &event);
    }
    result
}

/// Reads and parses the configuration from standard input (until it closes).
fn read_config() -> Result<ExecutorConfig, ExecutorError> {
    let mut raw = String::new();
    std::io::stdin().take(MAX_CONFIG).read_to_string(&mut raw)?;
    serde_json::from_str::<ExecutorConfig>(&raw).map_err(|e| ExecutorError::Config(e.to_string()))
}

/// An executor whose fabric is opened before its configuration is read.
struct Early;

impl FabricUser for Early {
    type Output = Result<(), ExecutorError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let cfg = read_config()?;
        if cfg.provider != fabric.provider() {
            return Err(ExecutorError::Config(format!(
                "the configuration names provider {}, but {} was opened",
                cfg.provider,
                fabric.provider()
            )));
        }
        let (token, table, code_load_ns, stop) = prepare(&cfg)?;
        Serve {
            cfg: &cfg,
            token,
            table,
            code_load_ns,
            stop,
            out: &mut std::io::stdout(),
        }
        .run(fabric)
    }
}

type Prepared = ([u8; TOKEN_LEN], FunctionTable, u64, Arc<AtomicBool>);

/// What every executor does with its configuration before it serves: check it, load the
/// library, handle SIGTERM and SIGINT.
fn prepare(cfg: &ExecutorConfig) -> Result<Prepared, ExecutorError> {
    let token = validate(cfg)?;
    let t0 = Instant::now();
    // Loading includes the library's init function: it runs before the ready report.
    let table = load(cfg)?;
    let code_load_ns = t0.elapsed().as_nanos() as u64;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    if let Some(f) = &cfg.deadline_file {
        deadline::watch(deadline::DeadlineFile(f.into()), stop.clone());
    }
    Ok((token, table, code_load_ns, stop))
}

fn report(out: &mut impl Write, ev: &ExecutorEvent) {
    if let Ok(line) = serde_json::to_string(ev) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn validate(cfg: &ExecutorConfig) -> Result<[u8; TOKEN_LEN], ExecutorError> {
    let bad = |m: &str| Err(ExecutorError::Config(m.to_string()));
    if cfg.cores.is_empty() {
        return bad("no cores");
    }
    if cfg.slots == 0 || cfg.slots > MAX_SLOTS {
        return bad("slots must be in 1..=256");
    }
    if cfg.functions.is_empty() {
        return bad("no functions requested");
    }
    if cfg.input_capacity == 0 || cfg.output_capacity == 0 {
        return bad("capacities must be positive");
    }
    let token =
        hex::decode(&cfg.token).map_err(|_| ExecutorError::Config("token is not hex".into()))?;
    token
        .try_into()
        .map_err(|_| ExecutorError::Config(format!("token must have {TOKEN_LEN} bytes")))
}

/// Loads the library named by the configuration, resolves the requested functions, maps the
/// assets and calls the library's init function (if it has one) once with them. The mapped
/// assets are kept for the life of the process (a library may keep pointers into them).
fn load(cfg: &ExecutorConfig) -> Result<FunctionTable, ExecutorError> {
    let hash: ContentHash = cfg
        .library_hash
        .parse()
        .map_err(|e| ExecutorError::Config(format!("{e:?}")))?;
    // The manager verified this file's hash (and the assets') just before it spawned us.
    let lib = FunctionLibrary::open_verified(hash, Path::new(&cfg.library_path).to_path_buf())?;
    let table = lib.resolve(&cfg.functions)?;
    let assets = MappedAssets::map(
        cfg.assets
            .iter()
            .map(|a| (a.name.as_str(), Path::new(&a.path), a.size)),
    )?;
    // Once per process: never unmapped, whatever the library keeps.
    let assets: &'static MappedAssets = Box::leak(Box::new(assets));
    if lib.run_init(assets)? {
        tracing::info!(
            allocation = cfg.allocation,
            assets = assets.len(),
            "library initialised"
        );
    }
    Ok(table)
}

/// Runs an executor with `cfg`, reporting readiness on `out`.
pub fn run(cfg: ExecutorConfig, out: &mut impl Write) -> Result<(), ExecutorError> {
    let (token, table, code_load_ns, stop) = prepare(&cfg)?;
    cfg.provider.run(Serve {
        cfg: &cfg,
        token,
        table,
        code_load_ns,
        stop,
        out,
    })?
}

struct Serve<'a, W: Write> {
    cfg: &'a ExecutorConfig,
    token: [u8; TOKEN_LEN],
    table: FunctionTable,
    code_load_ns: u64,
    stop: Arc<AtomicBool>,
    out: &'a mut W,
}

impl<W: Write> FabricUser for Serve<'_, W> {
    type Output = Result<(), ExecutorError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let cfg = self.cfg;
        let listener = fabric.listen(&cfg.listen)?;
        report(
            self.out,
            &ExecutorEvent::Ready {
                address: listener.local_addr(),
                code_load_ns: self.code_load_ns,
            },
        );
        // Billing is connected after the ready report, while the answer travels to the client
        // (workers need it only once they serve): off the cold start's path.
        let billing = match &cfg.billing {
            Some(t) => match Billing::<F>::connect(&fabric, t, &self.token) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(allocation = cfg.allocation, "billing disabled: {e}");
                    None
                }
            },
            None => None,
        };
        let billing = billing.map(Arc::new);
        let workers = accept_workers(
            &fabric,
            &listener,
            cfg,
            &self.token,
            &self.table,
            &self.stop,
        )?;
        drop(listener);
        tracing::info!(
            allocation = cfg.allocation,
            workers = workers.len(),
            "executor serving"
        );
        let exits: Vec<WorkerExit> = std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .into_iter()
                .enumerate()
                .map(|(i, w)| {
                    let (stop, billing) = (self.stop.clone(), billing.clone());
                    // Named so that tools (and tests) find the workers: rfaas-worker-<index>.
                    std::thread::Builder::new()
                        .name(format!("rfaas-worker-{i}"))
                        .spawn_scoped(s, move || w.serve(&stop, billing.as_deref()))
                        .expect("spawn a worker thread")
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(WorkerExit::Panicked))
                .collect()
        });
        tracing::info!(allocation = cfg.allocation, ?exits, "executor done");
        Ok(())
    }
}

/// Waits until the client connected every worker (token checked), building the workers.
fn accept_workers<F: Fabric>(
    fabric: &F,
    listener: &F::Listener,
    cfg: &ExecutorConfig,
    token: &[u8; TOKEN_LEN],
    table: &FunctionTable,
    stop: &AtomicBool,
) -> Result<Vec<Worker<F>>, ExecutorError> {
    let n = cfg.cores.len();
    let mut slots: Vec<Option<Worker<F>>> = (0..n).map(|_| None).collect();
    let timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1));
    let deadline = Instant::now() + timeout;
    let stride = (HEADER_LEN + cfg.input_capacity as usize).next_multiple_of(64);
    let mut connected = 0;
    while connected < n {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ExecutorError::Config(
                "stopped before the client connected".into(),
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ExecutorError::ConnectTimeout {
                connected,
                workers: n,
                timeout,
            });
        }
        let Some(req) = listener.next_request((deadline - now).min(Duration::from_millis(100)))?
        else {
            continue;
        };
        let Some(hello) = WorkerConnect::decode(req.private_data()) else {
            tracing::warn!(
                peer = req.peer(),
                "refused a connection: malformed connect data"
            );
            req.reject("malformed connect data");
            continue;
        };
        if !secrets_equal(&hello.token, token) {
            tracing::warn!(
                peer = req.peer(),
                "refused a connection: wrong allocation token"
            );
            req.reject("wrong allocation token");
            continue;
        }
        let w = hello.worker as usize;
        if w >= n || slots[w].is_some() {
            tracing::warn!(
                peer = req.peer(),
                worker = w,
                "refused a connection: no such free worker"
            );
            req.reject("no such worker, or already connected");
            continue;
        }
        let cq = fabric.create_cq(4 * cfg.slots + 16)?;
        let input = fabric.alloc_mr(
            stride * cfg.slots as usize,
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        )?;
        let output = fabric.alloc_mr(
            cfg.output_capacity as usize * cfg.slots as usize,
            Access::LOCAL_WRITE,
        )?;
        let recvs: Vec<RecvWr> = (0..u64::from(cfg.slots))
            .map(|i| RecvWr {
                wr_id: i,
                sge: None,
            })
            .collect();
        let accept = WorkerAccept {
            input: input.remote(0, input.len() as u32),
            stride: stride as u32,
            slots: cfg.slots,
        };
        let caps = QpCaps {
            max_send_wr: 2 * cfg.slots + 8,
            max_recv_wr: cfg.slots,
            max_msg_size: 256,
        };
        let init = QpInit {
            send_cq: &cq,
            recv_cq: &cq,
            caps,
            timeouts: QpTimeouts::default(),
        };
        let qp = req.accept(init, &recvs, &accept.encode())?;
        slots[w] = Some(Worker::new(
            w,
            cfg,
            table.clone(),
            qp,
            cq,
            input,
            output,
            stride,
        ));
        connected += 1;
    }
    Ok(slots.into_iter().flatten().collect())
}
