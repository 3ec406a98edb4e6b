//! The executor process: one per allocation, one pinned worker thread per leased core.
//!
//! Started by the executor manager as `rfaas executor` (the manager's own executable), it reads an
//! [`ExecutorConfig`] from standard input, loads the function library, listens on the fabric,
//! reports an [`ExecutorEvent`] on standard output, accepts the client's connection to every
//! worker (authenticated by the allocation token), and serves invocations until the client
//! disconnects or it is told to stop (SIGTERM), when pending invocations are answered with
//! `ShuttingDown`. It dies with its manager (`PR_SET_PDEATHSIG`), and stops by itself when its
//! lease's deadline passes, even if its manager is frozen ([`deadline`]).
//!
//! What lies on a cold start's path is kept short: the fabric is open and listening before the
//! configuration arrives ([`EARLY_PROVIDER_ENV`], [`EARLY_LISTEN_ENV`]); the main thread pins
//! itself to the first core as soon as it knows it and becomes worker 0 (no thread to start,
//! no migration before the first invocation); billing connects to the manager on a thread of
//! its own while the client connects; and [`ExecutorEvent::Serving`], which makes the manager
//! start a pool replacement, goes out only after the first result.

mod billing;
pub mod config_input;
pub mod deadline;
mod worker;
pub mod zygote;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::executor_manager_api::{
    ExecutorConfig, ExecutorEvent, WorkerAccept, WorkerConnect, TOKEN_LEN,
};
use crate::control::secret::secrets_equal;
use crate::function::assets::MappedAssets;
use crate::function::{ContentHash, FunctionError, FunctionLibrary, FunctionTable};
use crate::protocol::{worker_qp, HEADER_LEN, MAX_SLOTS};
use crate::rdma::{Access, ConnRequest, Fabric, FabricUser, Listener, MemoryRegion};

pub use billing::{Billing, BillingSlot};
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
const MAX_CONFIG: usize = 1 << 20;

/// Environment variable naming the fabric provider an executor opens *before* it reads its
/// configuration (set by the executor manager, which knows its provider): the fabric domain is
/// then open by the time a pooled executor gets its allocation. The configuration must name the
/// same provider.
pub const EARLY_PROVIDER_ENV: &str = "RFAAS_EXECUTOR_PROVIDER";

/// Environment variable naming the fabric address an executor listens on *before* it reads its
/// configuration (with [`EARLY_PROVIDER_ENV`]; the manager's `fabric_host:0`): a pooled
/// executor is then listening when its allocation comes. A configuration that names another
/// address gets a listener of its own.
pub const EARLY_LISTEN_ENV: &str = "RFAAS_EXECUTOR_LISTEN";

/// Environment variable that makes an executor started with [`EARLY_PROVIDER_ENV`] print
/// [`ExecutorEvent::Standby`] once its fabric is open and listening (set by the executor pool,
/// which counts the process ready only then; a fresh spawn does not print it). Its value is the
/// manager's rentable cores (a cpulist such as `0-3,8`): the process waits for its configuration
/// on them.
pub const EARLY_STANDBY_ENV: &str = "RFAAS_EXECUTOR_STANDBY";

/// Environment variable with the cpuset (a cpulist) within which an executor pins its threads,
/// set by its manager: the cpuset the manager was started with. A manager keeps its own threads
/// off the cores it rents out (`manager_cores`), so what an executor inherits from it is not
/// where its workers may run. Without it (or when it does not parse), the process's own
/// affinity at its first pin is the cpuset.
pub const CPUSET_ENV: &str = "RFAAS_EXECUTOR_CPUSET";

/// What a manager and the executor binary it starts must agree on: the version and the
/// features that change what an executor can do (its fabric providers, its pinning). Printed
/// by `rfaas-executor build-info`; a manager uses that binary only when it prints the same.
pub fn build_info() -> String {
    let features = [
        ("verbs", cfg!(feature = "verbs")),
        ("libfabric", cfg!(feature = "libfabric")),
        ("hwloc", cfg!(feature = "hwloc")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| *name)
    .collect::<Vec<_>>()
    .join(",");
    format!("rfaas {} [{features}]", env!("CARGO_PKG_VERSION"))
}

/// Entry point of `rfaas executor`: reads the configuration from standard input and serves.
/// Reports failure to start as an [`ExecutorEvent::Failed`] line too, so the manager can tell
/// the client why.
pub fn main_stdin() -> Result<(), ExecutorError> {
    // A zygote returns here only in the executors it forks.
    if std::env::var_os(zygote::ZYGOTE_ENV).is_some() && zygote::serve()? == zygote::Role::Zygote {
        return Ok(());
    }
    // Die with the manager, whatever killed it.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let early = std::env::var(EARLY_PROVIDER_ENV)
        .ok()
        .and_then(|p| p.parse::<crate::rdma::Provider>().ok());
    // A pooled process (or a fresh one answered early) waits on the cores it was told before
    // its fabric starts threads of its own (they inherit the binding): the manager's binding,
    // which it inherited, keeps the manager's own threads off those cores.
    if let Some(cores) = early.and(std::env::var(EARLY_STANDBY_ENV).ok()) {
        wait_on(&cores);
    }
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

/// Reads and parses the configuration from standard input (see [`config_input`]).
fn read_config() -> Result<ExecutorConfig, ExecutorError> {
    config_input::read_config(MAX_CONFIG)
}

/// An executor whose fabric is opened before its configuration is read.
struct Early;

impl FabricUser for Early {
    type Output = Result<(), ExecutorError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let early_addr = std::env::var(EARLY_LISTEN_ENV).ok();
        let early = match &early_addr {
            Some(a) => Some(fabric.listen(a)?),
            None => None,
        };
        let mut spare = None;
        if std::env::var(EARLY_STANDBY_ENV).is_ok() {
            // Forked for the pool: its own copy of what it still shares with the zygote, before
            // it counts as ready (an allocation would otherwise wait for it).
            if zygote::pooled_child() {
                let t0 = Instant::now();
                let pages = zygote::unshare_memory();
                tracing::debug!(?pages, us = t0.elapsed().as_micros() as u64, "unshared");
            }
            let address = early.as_ref().map(|l| l.local_addr());
            report(&mut std::io::stdout(), &ExecutorEvent::Standby { address });
            // While it waits: worker 0's queue and buffers in the clients' default shape.
            spare = WorkerBuffers::spare(&fabric);
        }
        let cfg = read_config()?;
        tracing::debug!(allocation = cfg.allocation, "configuration read");
        if cfg.provider != fabric.provider() {
            return Err(ExecutorError::Config(format!(
                "the configuration names provider {}, but {} was opened",
                cfg.provider,
                fabric.provider()
            )));
        }
        // The fabric is open and listening: pin before the library loads.
        pin_main(&cfg);
        let (token, table, code_load_ns, stop) = prepare(&cfg)?;
        let listener = early.filter(|_| early_addr.as_deref() == Some(cfg.listen.as_str()));
        Serve {
            cfg: &cfg,
            token,
            table,
            code_load_ns,
            stop,
            out: &mut std::io::stdout(),
        }
        .serve(fabric, listener, spare)
    }
}

/// Slots of the spare buffers ([`WorkerBuffers::spare`]): the client's default
/// (`AllocationSpec::new`).
const SPARE_SLOTS: u32 = 4;

/// Input and output capacity of the spare buffers, bytes: the client's default.
const SPARE_CAPACITY: u32 = 4096;

/// A worker's completion queue and its pre-faulted input and output buffers.
struct WorkerBuffers<F: Fabric> {
    cq: F::Cq,
    cq_depth: u32,
    input: F::Mr,
    output: F::Mr,
}

impl<F: Fabric> WorkerBuffers<F> {
    /// For `slots` slots of `input_capacity` and `output_capacity` bytes.
    fn make(
        fabric: &F,
        slots: u32,
        input_capacity: u32,
        output_capacity: u32,
    ) -> Result<WorkerBuffers<F>, crate::rdma::FabricError> {
        let cq_depth = worker_qp::cq_depth(slots);
        Ok(WorkerBuffers {
            cq: fabric.create_cq(cq_depth)?,
            cq_depth,
            input: fabric.alloc_mr(
                input_stride(input_capacity) * slots as usize,
                Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            )?,
            output: fabric.alloc_mr(
                output_capacity as usize * slots as usize,
                Access::LOCAL_WRITE,
            )?,
        })
    }

    /// Worker 0's, made by a pooled executor while it waits for its configuration (they depend
    /// on nothing of an allocation: fresh, zeroed, pre-faulted memory), in the client's default
    /// shape ([`SPARE_SLOTS`] slots of [`SPARE_CAPACITY`] bytes). An allocation whose slots and
    /// capacities fit in them uses them (larger buffers than it needs: offsets are computed
    /// from its own sizes); any other makes its own, as without them. `None` if the fabric
    /// refuses: the allocation then makes its own.
    fn spare(fabric: &F) -> Option<WorkerBuffers<F>> {
        WorkerBuffers::make(fabric, SPARE_SLOTS, SPARE_CAPACITY, SPARE_CAPACITY)
            .inspect_err(|e| tracing::debug!("no spare worker buffers: {e}"))
            .ok()
    }

    /// Whether an allocation configured as `cfg` fits in them.
    fn fits(&self, cfg: &ExecutorConfig) -> bool {
        let slots = cfg.slots as usize;
        self.cq_depth >= worker_qp::cq_depth(cfg.slots)
            && self.input.len() >= input_stride(cfg.input_capacity) * slots
            && self.output.len() >= cfg.output_capacity as usize * slots
    }
}

/// Bytes between two slots of a worker's input buffer: the header and the input capacity,
/// rounded up to a cache line.
fn input_stride(input_capacity: u32) -> usize {
    (HEADER_LEN + input_capacity as usize).next_multiple_of(64)
}

type Prepared = ([u8; TOKEN_LEN], FunctionTable, u64, Arc<AtomicBool>);

/// The cores this process was allowed before its main thread narrowed or pinned itself.
static CPUSET: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// Whether the main thread has pinned itself to its first core.
static MAIN_PINNED: AtomicBool = AtomicBool::new(false);

/// [`CPUSET`], read the first time: [`CPUSET_ENV`], else the process's affinity.
fn cpuset() -> &'static [usize] {
    CPUSET.get_or_init(|| {
        std::env::var(CPUSET_ENV)
            .ok()
            .and_then(|list| crate::executor_manager::config::parse_cpulist(&list).ok())
            .map(|cores| cores.into_iter().map(|c| c as usize).collect())
            .unwrap_or_else(crate::pin::allowed_cores)
    })
}

/// While a pooled executor waits for its configuration, its main thread runs only on the
/// rentable cores (`list`, a cpulist from the pool; those of them it may use): woken by its
/// configuration it is then on a rentable core, with one rentable core exactly the one it pins
/// to, and pinning moves nothing. Moving a running thread to another core costs a migration
/// and, on a VM, the wake-up of that core: tens of microseconds on a cold start's path.
fn wait_on(list: &str) {
    let allowed = cpuset();
    let Ok(cores) = crate::executor_manager::config::parse_cpulist(list) else {
        return;
    };
    let cores = cores.into_iter().map(|c| c as usize);
    if let Err(e) = crate::pin::bind_current_thread_to(cores.filter(|c| allowed.contains(c))) {
        tracing::debug!("standby on all allowed cores: {e}");
    }
}

/// Pins the main thread, which becomes worker 0, to the first core (once): from then on
/// neither loading the library nor the first invocation waits for a migration; binds the
/// threads the fabric started to the allocation's cores. Call it once the fabric is open (its
/// threads, started by this one, would otherwise inherit worker 0's binding). The other
/// workers pin themselves within the node's cpuset ([`cpuset`]).
fn pin_main(cfg: &ExecutorConfig) {
    let Some(&core) = cfg.cores.first() else {
        return;
    };
    let cpuset = cpuset();
    if MAIN_PINNED.swap(true, Ordering::AcqRel) {
        return; // pinned already
    }
    if let Err(e) = crate::pin::pin_current_thread_within(core as usize, cpuset) {
        tracing::warn!(core, "not pinned: {e}");
    }
    // The threads its fabric started (a listener's, a progress thread) were bound as this
    // process was before its configuration: to the rentable cores, or the manager's. From now
    // on they run on the allocation's cores only, never on another tenant's or the manager's.
    let cores = cfg.cores.iter().map(|&c| c as usize);
    if let Err(e) = crate::pin::bind_other_threads_to(cores.filter(|c| cpuset.contains(c))) {
        tracing::warn!("fabric threads not bound to the allocation's cores: {e}");
    }
}

/// Binds the calling helper thread (started by worker 0, whose binding it inherited) to all of
/// the allocation's cores: the scheduler may run it beside any of its workers, never on cores
/// the allocation did not rent (other tenants' cores).
fn bind_helper_to_allocation(cores: &[u32]) {
    if let Err(e) = crate::pin::bind_current_thread_to(cores.iter().map(|&c| c as usize)) {
        tracing::debug!("helper thread keeps its binding: {e}");
    }
}

/// Pins the calling worker thread to `core`, within the process's cpuset as it was before any
/// thread of it was pinned.
fn pin_worker(core: usize) -> Result<(), crate::pin::PinError> {
    match CPUSET.get() {
        Some(cpuset) => crate::pin::pin_current_thread_within(core, cpuset),
        None => crate::pin::pin_current_thread(core),
    }
}

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

/// Runs an executor with `cfg`, reporting readiness on `out`. It must own its process: it
/// binds every thread of it to the allocation's cores (see `pin_main`).
pub fn run(cfg: ExecutorConfig, out: &mut (impl Write + Send)) -> Result<(), ExecutorError> {
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

impl<W: Write + Send> FabricUser for Serve<'_, W> {
    type Output = Result<(), ExecutorError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        self.serve(fabric, None, None)
    }
}

impl<W: Write + Send> Serve<'_, W> {
    /// Listens on `cfg.listen` (unless `listener` does already), reports ready, accepts the
    /// client's connections (worker 0 on `spare` buffers if they fit) and serves.
    fn serve<F: Fabric>(
        self,
        fabric: F,
        listener: Option<F::Listener>,
        spare: Option<WorkerBuffers<F>>,
    ) -> Result<(), ExecutorError> {
        let cfg = self.cfg;
        let listener = match listener {
            Some(l) => l,
            None => fabric.listen(&cfg.listen)?,
        };
        pin_main(cfg);
        report(
            self.out,
            &ExecutorEvent::Ready {
                address: listener.local_addr(),
                code_load_ns: self.code_load_ns,
            },
        );
        // Billing connects in the background (a handshake with the manager) once the first
        // result is out (see `serving`): workers need it only when they flush, about once a
        // second, and starting its thread earlier (tens of microseconds here) and its handshake
        // would compete with the client's connection and first invocation for the
        // allocation's core.
        let billing = Arc::new(BillingSlot::<F>::default());
        if cfg.billing.is_none() {
            billing.settle(None);
        }
        let billing_started = AtomicBool::new(false);
        let start_billing = || {
            let Some(t) = cfg.billing.clone() else { return };
            if billing_started.swap(true, Ordering::AcqRel) {
                return;
            }
            let (fabric, token, slot) = (fabric.clone(), self.token, billing.clone());
            let (allocation, cores) = (cfg.allocation, cfg.cores.clone());
            // Not joined: the workers' last flush waits for it (bounded by its connection's
            // timeout), and nothing else needs it to end.
            let spawned = std::thread::Builder::new()
                .name("rfaas-billing".into())
                .spawn(move || {
                    // Not on worker 0's core alone, whose binding it inherited.
                    bind_helper_to_allocation(&cores);
                    let b = Billing::<F>::connect(&fabric, &t, &token)
                        .inspect_err(|e| tracing::warn!(allocation, "billing disabled: {e}"))
                        .ok();
                    slot.settle(b);
                });
            if let Err(e) = spawned {
                tracing::warn!(allocation = cfg.allocation, "billing disabled: {e}");
                billing.settle(None);
            }
        };
        // The listener, once every worker is connected: closing it joins its accept thread,
        // which waits for a turn on a busy node, so it closes after the first result.
        let parked: Mutex<Option<F::Listener>> = Mutex::new(None);
        // The manager hears "serving" once the first result is out (whichever worker gave it):
        // whatever it starts then (a pool replacement) does not compete with this cold start.
        // Each worker runs it once: after its first result (or, with none, a second in or as
        // it ends; see `Worker::serve`).
        let (out, said) = (Mutex::new(&mut *self.out), AtomicBool::new(false));
        let serving = &|| {
            start_billing();
            if !said.swap(true, Ordering::AcqRel) {
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                report(&mut **out, &ExecutorEvent::Serving);
                drop(out);
                drop(parked.lock().unwrap_or_else(|p| p.into_inner()).take());
            }
        };
        std::thread::scope(|s| {
            let billing = &*billing;
            let workers = accept_workers(
                &fabric,
                &listener,
                cfg,
                &self.token,
                &self.table,
                &self.stop,
                spare,
            );
            let workers = match workers {
                Ok(w) => {
                    *parked.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
                    w
                }
                Err(e) => return Err(e),
            };
            tracing::info!(
                allocation = cfg.allocation,
                workers = workers.len(),
                "executor serving"
            );
            let mut workers = workers.into_iter();
            let first = workers.next();
            // Workers 1.. on threads of their own; worker 0 on this thread, pinned already.
            let handles: Vec<_> = workers
                .enumerate()
                .map(|(i, w)| {
                    let stop = &self.stop;
                    // Named so that tools (and tests) find the workers: rfaas-worker-<index>.
                    std::thread::Builder::new()
                        .name(format!("rfaas-worker-{}", i + 1))
                        .spawn_scoped(s, move || w.serve(stop, billing, Some(serving)))
                        .expect("spawn a worker thread")
                })
                .collect();
            let mut exits = Vec::new();
            if let Some(w) = first {
                // Named like the others (tools and tests find workers by thread name).
                let _ = nix::sys::prctl::set_name(c"rfaas-worker-0");
                exits.push(w.serve(&self.stop, billing, Some(serving)));
            }
            exits.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(WorkerExit::Panicked)),
            );
            tracing::info!(allocation = cfg.allocation, ?exits, "executor done");
            Ok(())
        })
    }
}

/// How long the executor polls its listener without sleeping after its ready report.
const CONNECT_SPIN: Duration = Duration::from_millis(2);

/// Waits until the client connected every worker (token checked), building the workers.
fn accept_workers<F: Fabric>(
    fabric: &F,
    listener: &F::Listener,
    cfg: &ExecutorConfig,
    token: &[u8; TOKEN_LEN],
    table: &FunctionTable,
    stop: &AtomicBool,
    spare: Option<WorkerBuffers<F>>,
) -> Result<Vec<Worker<F>>, ExecutorError> {
    let n = cfg.cores.len();
    let mut slots: Vec<Option<Worker<F>>> = (0..n).map(|_| None).collect();
    let timeout = Duration::from_millis(cfg.connect_timeout_ms.max(1));
    let deadline = Instant::now() + timeout;
    let stride = input_stride(cfg.input_capacity);
    // Every worker's completion queue and buffers (pre-faulted) are made now, while the
    // manager answers the client and the client gets ready to connect, not after it knocked;
    // worker 0's were made before the configuration came, if they fit.
    let mut spare = spare.filter(|s| s.fits(cfg));
    let mut prepared = (0..n)
        .map(|_| -> Result<_, ExecutorError> {
            let buffers = match spare.take() {
                Some(s) => s,
                None => {
                    WorkerBuffers::make(fabric, cfg.slots, cfg.input_capacity, cfg.output_capacity)?
                }
            };
            Ok(Some(buffers))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let spin_until = Instant::now() + CONNECT_SPIN;
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
        // Spin first (the client connects within a few hundred microseconds of the ready
        // report): the request is taken without waiting for this thread to be woken.
        let wait = if now < spin_until {
            Duration::ZERO
        } else {
            (deadline - now).min(Duration::from_millis(100))
        };
        let Some(req) = listener.next_request(wait)? else {
            if wait.is_zero() {
                std::thread::yield_now();
            }
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
        // Present: worker `w` was not connected before (checked above).
        let WorkerBuffers {
            cq, input, output, ..
        } = prepared[w]
            .take()
            .ok_or_else(|| ExecutorError::Config(format!("worker {w} connected twice")))?;
        let recvs = worker_qp::receives(cfg.slots);
        let accept = WorkerAccept {
            input: input.remote(0, input.len() as u32),
            stride: stride as u32,
            slots: cfg.slots,
        };
        let init = worker_qp::init::<F>(&cq, cfg.slots);
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
