//! [`Service`]: what the executor manager does, without HTTP: store libraries, allocate (reserve
//! cores → spawn → wait for ready), deallocate, report status, shut down.
//!
//! The registry ([`super::registry`]) decides; this module acts (processes, billing, files) and
//! tells the registry what happened. Every wait is bounded.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::control::executor_manager_api::{
    Allocation, AllocationRequest, AllocationStatus, AssetRef, ExecutorAsset, ExecutorConfig,
    ExecutorEvent, LibraryStored, ManagerStatus, WorkerInfo, INIT_FAILED_CODE, TOKEN_LEN,
};
use crate::control::secret::new_token;
use crate::function::ContentHash;
use crate::protocol::MAX_SLOTS;

use super::assets::{cached_assets, validate_assets, Blob};
use super::billing::Billing;
use super::config::ManagerConfig;
use super::libraries::Libraries;
use super::memory::allocation_bytes;
use super::pool::{NotStandby, Pool, PoolTiming};
use super::registry::{Registry, RegistryError, Reservation, Spec, State, StopAction};
use super::resource_manager_link::{LeaseHold, RmLink};
use super::spawn::{self, ExecutorHandle, Launcher, StopRequest};
use super::topology::CoreOrder;
use super::ManagerError;

/// Largest input or output capacity an allocation may ask for (per slot), bytes.
pub const MAX_CAPACITY: u32 = 1 << 30;
/// Most functions one allocation may resolve.
pub const MAX_FUNCTIONS: usize = 1024;
/// Longest function name, bytes.
pub const MAX_NAME: usize = 256;
/// Longest `client` / `lease` text, bytes.
pub const MAX_LABEL: usize = 256;

/// Why a request failed; [`ServiceError::status`] is its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or asks for something impossible (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such library or allocation (404).
    #[error("{0}")]
    NotFound(String),
    /// Not enough free capacity now (409).
    #[error("{0}")]
    NoCapacity(String),
    /// The executor refused the allocation (bad library, unknown function...) (422).
    #[error("{0}")]
    ExecutorFailed(String),
    /// The library's init function refused to start, with this message (422, and the
    /// [`INIT_FAILED_CODE`](crate::control::executor_manager_api::INIT_FAILED_CODE) code).
    #[error("function library init failed: {0}")]
    InitFailed(String),
    /// The manager is shutting down (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something on this node failed (500).
    #[error("{0}")]
    Internal(String),
    /// A bounded wait ran out (504).
    #[error("{0}")]
    Timeout(String),
    /// No lease granted by the resource manager covers the request (403).
    #[error("{0}")]
    Forbidden(String),
}

impl ServiceError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::BadRequest(_) => 400,
            ServiceError::NotFound(_) => 404,
            ServiceError::NoCapacity(_) => 409,
            ServiceError::ExecutorFailed(_) | ServiceError::InitFailed(_) => 422,
            ServiceError::Unavailable(_) => 503,
            ServiceError::Internal(_) => 500,
            ServiceError::Timeout(_) => 504,
            ServiceError::Forbidden(_) => 403,
        }
    }
}

impl From<RegistryError> for ServiceError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::TooManyCores { .. } | RegistryError::TooMuchMemory { .. } => {
                ServiceError::BadRequest(e.to_string())
            }
            RegistryError::Cores(_)
            | RegistryError::Memory(_)
            | RegistryError::TooManyAllocations { .. } => ServiceError::NoCapacity(e.to_string()),
            RegistryError::NotFound(_) => ServiceError::NotFound(e.to_string()),
            RegistryError::NotLive { .. } => ServiceError::Unavailable(e.to_string()),
        }
    }
}

/// Checks an allocation request; returns the library's hash.
pub fn validate(req: &AllocationRequest) -> Result<ContentHash, ServiceError> {
    let bad = |m: String| Err(ServiceError::BadRequest(m));
    let hash: ContentHash = match req.library.parse() {
        Ok(h) => h,
        Err(_) => {
            return bad(
                "library must be the SHA-256 (64 hex digits) of a library uploaded before".into(),
            )
        }
    };
    if req.cores == 0 {
        return bad("cores must be at least 1".into());
    }
    if req.slots == 0 || req.slots > MAX_SLOTS {
        return bad(format!(
            "slots must be in 1..={MAX_SLOTS}, not {}",
            req.slots
        ));
    }
    for (name, v) in [
        ("input_capacity", req.input_capacity),
        ("output_capacity", req.output_capacity),
    ] {
        if v == 0 || v > MAX_CAPACITY {
            return bad(format!(
                "{name} must be in 1..={MAX_CAPACITY} bytes, not {v}"
            ));
        }
    }
    if req.hot_timeout_ms < -1 {
        return bad(format!(
            "hot_timeout_ms must be -1 (always hot), 0 (always warm) or a positive number of ms, not {}",
            req.hot_timeout_ms
        ));
    }
    if req.functions.is_empty() || req.functions.len() > MAX_FUNCTIONS {
        return bad(format!(
            "functions must name 1 to {MAX_FUNCTIONS} functions"
        ));
    }
    if let Some(f) = req
        .functions
        .iter()
        .find(|f| f.is_empty() || f.len() > MAX_NAME || f.contains('\0'))
    {
        return bad(format!(
            "invalid function name {:?}: 1 to {MAX_NAME} bytes, no NUL",
            f.chars().take(40).collect::<String>()
        ));
    }
    if req.client.len() > MAX_LABEL || req.lease.as_ref().is_some_and(|l| l.len() > MAX_LABEL) {
        return bad(format!(
            "client and lease must have at most {MAX_LABEL} bytes"
        ));
    }
    Ok(hash)
}

/// The executor manager's state and actions.
pub struct Service {
    cfg: ManagerConfig,
    /// Starts executors (forked from the zygote, or spawned).
    launcher: Arc<Launcher>,
    logs: PathBuf,
    libraries: Libraries,
    /// Function assets, cached like libraries in `<cache dir>/assets`.
    assets: Libraries,
    billing: Billing,
    registry: Mutex<Registry>,
    handles: Mutex<HashMap<u64, ExecutorHandle>>,
    shutting_down: AtomicBool,
    /// The order allocations take cores in, and the NIC behind it.
    order: CoreOrder,
    /// The resource manager, when configured (set once by [`Service::set_rm`]).
    rm: std::sync::OnceLock<Arc<RmLink>>,
    /// Allocation id → the lease it runs under (with a resource manager).
    leases: Mutex<HashMap<u64, LeaseHold>>,
    /// Executor processes started ahead of allocations.
    pool: Arc<Pool>,
    /// Allocation id → its token (what ending it takes; see [`Service::may_end`]).
    tokens: Mutex<HashMap<u64, String>>,
}

/// An executor process just spawned for an allocation, not yet ready.
struct Spawned {
    id: u64,
    pid: u32,
    log: PathBuf,
    stdin: Option<spawn::ExecutorStdin>,
    stdout: Option<spawn::ExecutorStdout>,
    /// Held until its standard output is drained (see [`spawn::supervise`]).
    stdout_tx: Option<spawn::StdoutOpen>,
    handle: ExecutorHandle,
    /// Taken from the pool (not spawned for this allocation).
    pooled: bool,
    /// Where a pooled executor listens, as its standby report said.
    address: Option<String>,
    /// A fresh executor started to be answered early: it reports standby (with its address)
    /// before it reads its configuration, on the allocation's cores.
    awaits_standby: bool,
    /// A pooled executor's log, renamed to `log` while the manager waits for its ready report
    /// (the rename is off the cold start's path).
    pool_log: Option<PathBuf>,
    /// It took no configuration or closed its output without a word (it died).
    silent: bool,
}

impl Spawned {
    /// Gives a pooled executor's log the allocation's name (once).
    fn name_log(&mut self) {
        if let Some(from) = self.pool_log.take() {
            let _ = std::fs::rename(from, &self.log);
        }
    }
}

/// How an allocation attempt failed.
enum Attempt {
    /// Its pooled executor died before it could take the configuration.
    PooledDied(ServiceError),
    /// Anything else.
    Failed(ServiceError),
}

impl Attempt {
    fn into_error(self) -> ServiceError {
        match self {
            Attempt::PooledDied(e) | Attempt::Failed(e) => e,
        }
    }
}

impl From<ServiceError> for Attempt {
    fn from(e: ServiceError) -> Self {
        Attempt::Failed(e)
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("node", &self.cfg.node)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Creates the run directory, opens the library cache and the billing endpoint. `exe` is the
    /// executable to run executors from (the manager's own).
    pub fn start(cfg: ManagerConfig, exe: PathBuf) -> Result<Service, ManagerError> {
        let logs = cfg.run_dir.join("logs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&logs)
            .map_err(crate::manager_process::io_err(format!(
                "create {}",
                logs.display()
            )))?;
        let libraries = Libraries::open(&cfg.cache_dir)?;
        let assets = Libraries::open_assets(&cfg.cache_dir.join("assets"))?;
        let order = super::topology::discover(&cfg.cores, cfg.nic.as_deref())?;
        log_core_order(&order);
        let billing = Billing::start(cfg.provider, &cfg.fabric_host, cfg.max_allocations as usize)?;
        let registry = Registry::new(
            order.cores.iter().copied(),
            cfg.memory,
            cfg.max_allocations,
            cfg.keep_ended,
        )
        .oversubscribed(cfg.oversubscribe)
        .starting_at(crate::control::ids::first_id_now());
        if cfg.oversubscribe > 1 {
            tracing::warn!(
                "OVERSUBSCRIBED (benchmarks only): each of the {} cores counts {} times, so up to \
                 {} executors share a core and its time; latencies measured so are not those of \
                 a core per executor",
                order.cores.len(),
                cfg.oversubscribe,
                cfg.oversubscribe
            );
        }
        let launcher = Arc::new(Launcher::new(
            &exe,
            &cfg.run_dir,
            &logs,
            cfg.provider,
            &executor_listen(&cfg),
            &cfg.node_cpuset,
            cfg.executor_start,
        ));
        let pool = Pool::new(
            cfg.pool_size,
            launcher.clone(),
            &logs,
            order.cores.clone(),
            PoolTiming {
                start_timeout: cfg.executor_start_timeout,
                wait: cfg.pool_wait,
            },
        );
        if tokio::runtime::Handle::try_current().is_ok() {
            launcher.prepare();
            pool.refill();
        }
        Ok(Service {
            pool,
            cfg,
            launcher,
            logs,
            libraries,
            assets,
            billing,
            registry: Mutex::new(registry),
            handles: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            order,
            rm: std::sync::OnceLock::new(),
            leases: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ManagerConfig {
        &self.cfg
    }

    /// The link to the resource manager, once set.
    pub fn rm_link(&self) -> Option<&Arc<RmLink>> {
        self.rm.get()
    }

    /// Writes the deadline file of the lease `hold` (id, deadline) and names it for the
    /// executor; `None` without a lease.
    fn deadline_file(&self, hold: Option<(u64, u64)>) -> Option<String> {
        let (lease, until) = hold?;
        let link = self.rm.get()?;
        Some(link.deadlines.note(lease, until).display().to_string())
    }

    /// Links the service to its resource manager: from now on allocations need its leases.
    pub fn set_rm(&self, link: Arc<RmLink>) {
        let _ = self.rm.set(link);
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<u64, LeaseHold>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the lease entries of ended allocations (lock order: leases, then registry).
    fn prune_leases(&self, leases: &mut HashMap<u64, LeaseHold>) {
        let reg = self.registry();
        leases.retain(|id, _| reg.get(*id).is_some_and(|r| r.state.is_live()));
    }

    /// The leases of the live allocations, one entry per lease.
    pub fn hosted_leases(&self) -> Vec<LeaseHold> {
        let mut leases = self.leases();
        self.prune_leases(&mut leases);
        let mut out: Vec<LeaseHold> = Vec::new();
        for h in leases.values() {
            if !out.iter().any(|o| o.id == h.id) {
                out.push(h.clone());
            }
        }
        out.sort_unstable_by_key(|h| h.id);
        out
    }

    /// The live allocations running under `lease`.
    pub fn allocations_of_lease(&self, lease: u64) -> Vec<u64> {
        let mut leases = self.leases();
        self.prune_leases(&mut leases);
        let mut ids: Vec<u64> = leases
            .iter()
            .filter(|(_, h)| h.id == lease)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handles(&self) -> MutexGuard<'_, HashMap<u64, ExecutorHandle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a library whose hash the client named; `Ok((stored, newly_written))`.
    pub async fn store_library(
        self: &Arc<Self>,
        hash: &str,
        bytes: axum::body::Bytes,
    ) -> Result<(LibraryStored, bool), ServiceError> {
        self.store_blob(Blob::Library, hash, bytes).await
    }

    /// Stores a library or an asset whose hash the client named (a library must be an ELF
    /// shared object); evicts the least recently used of its kind beyond the cache limit.
    /// `Ok((stored, newly_written))`.
    pub async fn store_blob(
        self: &Arc<Self>,
        kind: Blob,
        hash: &str,
        bytes: axum::body::Bytes,
    ) -> Result<(LibraryStored, bool), ServiceError> {
        let want: ContentHash = hash.parse().map_err(|_| {
            ServiceError::BadRequest(format!("{hash:?} is not a SHA-256 (64 hex digits)"))
        })?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let got = ContentHash::of(&bytes);
            if got != want {
                return Err(ServiceError::BadRequest(format!(
                    "the uploaded bytes have SHA-256 {got}, not {want} as the path says"
                )));
            }
            if kind == Blob::Library {
                crate::function::elf::check_shared_object(&bytes).map_err(|why| {
                    ServiceError::BadRequest(format!(
                        "the upload is {why}: a function library must be an ELF shared object"
                    ))
                })?;
            }
            let cache = me.cache(kind);
            let cached = cache
                .store(&bytes)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            let new = cached.outcome != crate::function::StoreOutcome::Reused;
            let evicted = cache.evict_to(me.cfg.max_cache_bytes, &got);
            if !evicted.is_empty() {
                tracing::info!(
                    evicted = evicted.len(),
                    limit = me.cfg.max_cache_bytes,
                    "{} cache over its limit: least recently used files removed",
                    kind.name()
                );
            }
            tracing::info!(hash = %got, bytes = bytes.len(), new, "{} stored", kind.name());
            Ok((
                LibraryStored {
                    hash: got.to_hex(),
                    bytes: bytes.len() as u64,
                },
                new,
            ))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
    }

    /// Whether the library `hash` is cached (and intact).
    pub async fn has_library(self: &Arc<Self>, hash: &str) -> Result<bool, ServiceError> {
        self.has_blob(Blob::Library, hash).await
    }

    fn cache(&self, kind: Blob) -> &Libraries {
        match kind {
            Blob::Library => &self.libraries,
            Blob::Asset => &self.assets,
        }
    }

    /// Whether the library or asset `hash` is cached (and intact).
    pub async fn has_blob(self: &Arc<Self>, kind: Blob, hash: &str) -> Result<bool, ServiceError> {
        let Ok(hash) = hash.parse::<ContentHash>() else {
            return Ok(false);
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.cache(kind).path(&hash).is_ok())
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// Allocates: validate, reserve, spawn, wait until the executor is ready. Runs to the end
    /// even if the caller goes away (spawn it as a task): a half-made allocation never leaks.
    ///
    /// The steps, in order, each a method below: `ensure_accepting`, [`validate`] and
    /// [`validate_assets`], `lease_hold`, `library_path`, `asset_files`, `reserve`,
    /// `executor_config`, `spawn_supervised`, `wait_ready`, then `answer` or `abandon`.
    ///
    /// A pooled executor that dies before its configuration reaches it (killed while it
    /// waited: nothing of the allocation's doing) is replaced by a fresh spawn, once.
    pub async fn allocate(
        self: Arc<Self>,
        req: AllocationRequest,
    ) -> Result<Allocation, ServiceError> {
        match self.clone().allocate_with(req.clone(), true).await {
            Err(Attempt::PooledDied(err)) => {
                tracing::warn!("{err}; spawning a fresh executor instead");
                self.allocate_with(req, false)
                    .await
                    .map_err(Attempt::into_error)
            }
            other => other.map_err(Attempt::into_error),
        }
    }

    /// Wakes the pooled executor the next allocation would take ([`Pool::nudge`]): call it as
    /// an authenticated allocation request has been read and parsed, before it is checked.
    pub fn nudge_pool(&self) {
        if !self.shutting_down.load(Ordering::Acquire) {
            self.pool.nudge();
        }
    }

    /// [`Self::allocate`], from the pool when `pool` (and it has one ready).
    async fn allocate_with(
        self: Arc<Self>,
        req: AllocationRequest,
        pool: bool,
    ) -> Result<Allocation, Attempt> {
        self.ensure_accepting()?;
        let hash = validate(&req)?;
        let asset_hashes = validate_assets(&req.assets, &self.cfg)?;
        let hold = self.lease_hold(&req).await?;
        let lease_deadline = hold.as_ref().map(|h| (h.id, h.expires_at_unix_ms));
        let library_path = self.library_path(hash).await?;
        let assets = self.asset_files(&req.assets, asset_hashes).await?;
        let memory = allocation_bytes(
            req.cores,
            req.slots,
            req.input_capacity,
            req.output_capacity,
        );
        let res = self.reserve(&req, memory, hold)?;
        let id = res.id;
        let mut exec_cfg = self.executor_config(&req, &res, hash, &library_path, lease_deadline)?;
        exec_cfg.assets = assets;
        tracing::info!(allocation = id, client = %req.client, cores = ?res.cores, memory, library = %hash, "allocating");

        let t0 = Instant::now();
        let mut child = self.spawn_supervised(&res, pool, req.early_answer).await?;
        tracing::debug!(
            allocation = id,
            pooled = child.pooled,
            us = t0.elapsed().as_micros() as u64,
            "executor process in hand"
        );
        // Asked for, and the executor says where it listens (a pooled one said so on standby,
        // a fresh one says so once it has started): answer once it has its configuration; its
        // ready report is awaited in the background.
        let early = req.early_answer && (child.address.is_some() || child.awaits_standby);
        let outcome = match early {
            true => match self.early_hand_over(&mut child, &exec_cfg).await {
                Ok((since, None)) => self.await_ready(&mut child, since).await,
                Ok((since, Some(address))) => {
                    let spawn_ns = t0.elapsed().as_nanos() as u64;
                    let mut answer =
                        self.answer(&res, exec_cfg.token, child.pid, address, spawn_ns, 0);
                    answer.pooled = child.pooled;
                    answer.early = true;
                    answer.ready_within_ms = self.cfg.executor_start_timeout.as_millis() as u64;
                    let me = self.clone();
                    tokio::spawn(async move {
                        tracing::info!(
                            allocation = child.id,
                            pid = child.pid,
                            "executor has its configuration: answered before it is ready"
                        );
                        if let Err(err) = me.await_ready(&mut child, since).await {
                            // Released by its client (or stopped by a shutdown) before its
                            // ready report was read: its stop is under way, nothing failed.
                            let stopped = me.registry().get(child.id).is_some_and(|r| {
                                matches!(r.state, State::Stopping | State::Released)
                            });
                            if stopped {
                                tracing::debug!(
                                    allocation = child.id,
                                    "stopped before it was ready: {err}"
                                );
                                return;
                            }
                            me.abandon(child.id, child, err).await;
                        }
                    });
                    return Ok(answer);
                }
                Err(e) => Err(e),
            },
            false => self.wait_ready(&mut child, &exec_cfg).await,
        };
        match outcome {
            Ok((address, code_load_ns)) => {
                let spawn_ns = t0.elapsed().as_nanos() as u64;
                let mut answer = self.answer(
                    &res,
                    exec_cfg.token,
                    child.pid,
                    address,
                    spawn_ns,
                    code_load_ns,
                );
                answer.pooled = child.pooled;
                Ok(answer)
            }
            Err(err) => {
                let pooled_died = child.pooled && child.silent;
                let err = self.abandon(id, child, err).await;
                Err(if pooled_died {
                    Attempt::PooledDied(err)
                } else {
                    Attempt::Failed(err)
                })
            }
        }
    }

    /// Step 1: refuses new work while shutting down.
    fn ensure_accepting(&self) -> Result<(), ServiceError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ServiceError::Unavailable(
                "the executor manager is shutting down".into(),
            ));
        }
        Ok(())
    }

    /// Step 3: with a resource manager, the lease the request names, checked there; `None`
    /// without one.
    async fn lease_hold(&self, req: &AllocationRequest) -> Result<Option<LeaseHold>, ServiceError> {
        match (&self.cfg.resource_manager, self.rm.get()) {
            (None, _) => Ok(None),
            (Some(addr), None) => Err(ServiceError::Unavailable(format!(
                "not linked to the resource manager {addr} yet"
            ))),
            (Some(_), Some(link)) => {
                let link = link.clone();
                let (lease, client) = (req.lease.clone(), req.client.clone());
                Ok(Some(
                    tokio::task::spawn_blocking(move || {
                        link.check_lease(lease.as_deref(), &client)
                    })
                    .await
                    .map_err(|e| ServiceError::Internal(e.to_string()))??,
                ))
            }
        }
    }

    /// Step 4: where the uploaded library `hash` is stored.
    async fn library_path(self: &Arc<Self>, hash: ContentHash) -> Result<PathBuf, ServiceError> {
        // A library verified before costs a `stat` here, not a trip through the blocking pool.
        if let Some(path) = self.libraries.verified_before(&hash) {
            return Ok(path);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.libraries.path(&hash))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(|_| {
                ServiceError::NotFound(format!(
                    "unknown library {hash}: upload it first with PUT /v1/libraries/{hash}"
                ))
            })
    }

    /// Step 4b: the cached files of the request's assets (hashes from [`validate_assets`]),
    /// verified, with their sizes checked against the request's.
    async fn asset_files(
        self: &Arc<Self>,
        assets: &[AssetRef],
        hashes: Vec<ContentHash>,
    ) -> Result<Vec<ExecutorAsset>, ServiceError> {
        if assets.is_empty() {
            return Ok(Vec::new());
        }
        let me = self.clone();
        let assets = assets.to_vec();
        tokio::task::spawn_blocking(move || cached_assets(&me.assets, &assets, &hashes))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
    }

    /// Step 5: reserves cores and memory in the registry, within the lease's cores on this
    /// node when there is one (and records the allocation under it).
    fn reserve(
        &self,
        req: &AllocationRequest,
        memory: u64,
        hold: Option<LeaseHold>,
    ) -> Result<Reservation, ServiceError> {
        let spec = Spec {
            cores: req.cores,
            memory,
            client: req.client.clone(),
        };
        let mut leases = self.leases();
        if let Some(h) = &hold {
            self.prune_leases(&mut leases);
            let reg = self.registry();
            let used: u32 = leases
                .iter()
                .filter(|(_, o)| o.id == h.id)
                .filter_map(|(id, _)| reg.get(*id).map(|r| r.cores.len() as u32))
                .sum();
            drop(reg);
            if used + req.cores > h.cores {
                return Err(ServiceError::Forbidden(format!(
                    "lease {} has {} cores on node {}, {used} in use: {} more do not fit",
                    h.id, h.cores, self.cfg.node, req.cores
                )));
            }
        }
        let res = self.registry().reserve(spec, Instant::now())?;
        if let Some(h) = hold {
            leases.insert(res.id, h);
        }
        Ok(res)
    }

    /// Step 6: the executor's configuration, with a fresh allocation token (remembered: ending
    /// the allocation takes it), its billing record opened, and the file that tells it its
    /// lease's deadline. A failure here gives the reservation back.
    fn executor_config(
        &self,
        req: &AllocationRequest,
        res: &Reservation,
        hash: ContentHash,
        library_path: &std::path::Path,
        lease_deadline: Option<(u64, u64)>,
    ) -> Result<ExecutorConfig, ServiceError> {
        let id = res.id;
        let token = match new_token() {
            Ok(t) => t,
            Err(e) => {
                self.registry()
                    .start_failed(id, &e.to_string(), Instant::now());
                return Err(ServiceError::Internal(e.to_string()));
            }
        };
        self.remember_token(id, &token);
        let mut raw = [0u8; TOKEN_LEN];
        hex::decode_to_slice(&token, &mut raw).expect("new_token is hex of TOKEN_LEN bytes");
        let billing = self.billing.open(res.billing_slot, raw);
        Ok(ExecutorConfig {
            allocation: id,
            token,
            library_path: library_path.display().to_string(),
            library_hash: hash.to_hex(),
            functions: req.functions.clone(),
            cores: res.cores.clone(),
            input_capacity: req.input_capacity,
            output_capacity: req.output_capacity,
            slots: req.slots,
            hot_timeout_ms: req.hot_timeout_ms,
            provider: self.cfg.provider,
            listen: executor_listen(&self.cfg),
            billing: Some(billing),
            connect_timeout_ms: self.cfg.executor_connect_timeout.as_millis() as u64,
            deadline_file: self.deadline_file(lease_deadline),
            assets: Vec::new(),
        })
    }

    /// Step 7: takes an executor process from the pool, or spawns one, and hands it to a
    /// supervisor, which frees the allocation's resources the moment it exits. A failure here
    /// gives them back.
    async fn spawn_supervised(
        self: &Arc<Self>,
        res: &Reservation,
        pool: bool,
        early: bool,
    ) -> Result<Spawned, ServiceError> {
        let id = res.id;
        let log = self.logs.join(format!("executor-{id}.log"));
        let taken = if pool { self.pool.take().await } else { None };
        let (mut address, mut pool_log) = (None, None);
        let pooled = taken.map(|p| {
            address = p.address;
            pool_log = Some(p.log);
            p.child
        });
        let fresh = pooled.is_none();
        let started = match pooled {
            Some(child) => Ok(child),
            None => {
                let standby = early.then_some(&res.cores[..]);
                self.launcher.start(&log, standby, false).await
            }
        };
        let mut child = match started {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("allocation {id}: {e}");
                tracing::error!("{msg}");
                self.billing.close(res.billing_slot);
                self.registry().start_failed(id, &msg, Instant::now());
                return Err(ServiceError::Internal(msg));
            }
        };
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let pid = child.id();
        self.registry().spawned(id, pid);
        let (stdout_tx, stdout_rx) = spawn::stdout_open();
        let handle = {
            let me = self.clone();
            let (slot, log) = (res.billing_slot, log.clone());
            spawn::supervise(child, stdout_rx, move |how| me.reaped(id, slot, &how, &log))
        };
        self.handles().insert(id, handle.clone());
        Ok(Spawned {
            id,
            pid,
            log,
            stdin,
            stdout,
            stdout_tx: Some(stdout_tx),
            handle,
            pooled: !fresh,
            address,
            awaits_standby: fresh && early,
            pool_log,
            silent: false,
        })
    }

    /// Step 8: sends the executor its configuration and waits (bounded) for its first event;
    /// on "ready", marks the allocation ready and keeps draining its standard output. Its
    /// fabric address and code-load time.
    async fn wait_ready(
        self: &Arc<Self>,
        child: &mut Spawned,
        exec_cfg: &ExecutorConfig,
    ) -> Result<(String, u64), ServiceError> {
        let since = self.hand_over(child, exec_cfg).await?;
        self.await_ready(child, since).await
    }

    /// Step 8a: writes the executor its configuration (bounded); when it went out.
    async fn hand_over(
        &self,
        child: &mut Spawned,
        exec_cfg: &ExecutorConfig,
    ) -> Result<std::time::Instant, ServiceError> {
        self.ensure_accepting()?;
        let (Some(stdin), true) = (child.stdin.take(), child.stdout.is_some()) else {
            return Err(ServiceError::Internal(
                "executor spawned without pipes".into(),
            ));
        };
        let since = std::time::Instant::now();
        spawn::send_config(stdin, exec_cfg, self.cfg.executor_start_timeout)
            .await
            .map_err(|e| {
                child.silent = matches!(e, spawn::StartError::Config(_));
                ServiceError::Internal(e.to_string())
            })?;
        Ok(since)
    }

    /// Step 8a for an early answer: [`Self::hand_over`], and for a fresh executor its standby
    /// report (bounded); when the configuration went out, and where the executor listens
    /// (`None`: it did not say, so it is answered once ready).
    async fn early_hand_over(
        &self,
        child: &mut Spawned,
        exec_cfg: &ExecutorConfig,
    ) -> Result<(std::time::Instant, Option<String>), ServiceError> {
        let since = self.hand_over(child, exec_cfg).await?;
        if !child.awaits_standby {
            return Ok((since, child.address.clone()));
        }
        let timeout = self.cfg.executor_start_timeout;
        let id = child.id;
        match tokio::time::timeout(timeout, super::pool::read_standby(child.stdout.as_mut())).await
        {
            Ok(Ok(address)) => Ok((since, address)),
            // What the ready report's reader would have answered (see `Self::await_ready`).
            Ok(Err(NotStandby::Said(ExecutorEvent::Failed { error }))) => Err(
                ServiceError::ExecutorFailed(format!("the executor could not start: {error}")),
            ),
            Ok(Err(NotStandby::Said(ExecutorEvent::InitFailed { error }))) => {
                Err(ServiceError::InitFailed(error))
            }
            Ok(Err(why)) => Err(ServiceError::ExecutorFailed(format!(
                "allocation {id}: the executor {why}{}",
                log_tail(&child.log)
            ))),
            Err(_) => Err(ServiceError::Timeout(format!(
                "allocation {id}: the executor did not start within {timeout:?}"
            ))),
        }
    }

    /// Step 8b: waits (bounded, from `since`, when the configuration went out) for the
    /// executor's first event; on "ready", marks the allocation ready and keeps draining its
    /// standard output. Its fabric address and code-load time.
    async fn await_ready(
        self: &Arc<Self>,
        child: &mut Spawned,
        since: std::time::Instant,
    ) -> Result<(String, u64), ServiceError> {
        let id = child.id;
        child.name_log();
        let started = async {
            let Some(stdout) = child.stdout.take() else {
                return Err(ServiceError::Internal(
                    "executor spawned without pipes".into(),
                ));
            };
            let silent = &mut child.silent;
            spawn::first_event(stdout, self.cfg.executor_start_timeout, since)
                .await
                .map_err(|e| {
                    *silent = matches!(e, spawn::StartError::Silent);
                    let timeout = matches!(e, spawn::StartError::Timeout(_));
                    let msg = format!("allocation {id}: {e}{}", log_tail(&child.log));
                    // Exited or wrote garbage before reporting: the library's doing (a
                    // constructor that exits or prints), so a 4xx like any start failure.
                    if timeout {
                        ServiceError::Timeout(msg)
                    } else {
                        ServiceError::ExecutorFailed(msg)
                    }
                })
        };
        match started.await {
            Ok((
                ExecutorEvent::Ready {
                    address,
                    code_load_ns,
                },
                rest,
            )) => match self.registry().ready(id) {
                Ok(()) => {
                    tracing::info!(allocation = id, pid = child.pid, %address, code_load_ns, "executor ready");
                    let me = self.clone();
                    let open = child.stdout_tx.take().expect("stdout is drained once");
                    let pool = self.pool.clone();
                    spawn::drain_stdout(
                        id,
                        rest,
                        open,
                        move |error| {
                            tracing::warn!(allocation = id, "executor failed: {error}");
                            me.registry().report_error(id, &error);
                        },
                        // The pool's replacement starts once this cold start is done.
                        move || pool.refill(),
                    );
                    Ok((address, code_load_ns))
                }
                Err(e) => Err(ServiceError::from(e)),
            },
            Ok((ExecutorEvent::Failed { error }, _)) => Err(ServiceError::ExecutorFailed(format!(
                "the executor could not start: {error}"
            ))),
            Ok((ExecutorEvent::InitFailed { error }, _)) => Err(ServiceError::InitFailed(error)),
            Ok((ev @ (ExecutorEvent::Serving | ExecutorEvent::Standby { .. }), _)) => {
                Err(ServiceError::ExecutorFailed(format!(
                    "the executor reported {ev:?} instead of ready"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Step 9 on success: the answer to the client.
    fn answer(
        &self,
        res: &Reservation,
        token: String,
        pid: u32,
        address: String,
        spawn_ns: u64,
        code_load_ns: u64,
    ) -> Allocation {
        let id = res.id;
        Allocation {
            id,
            token,
            provider: self.cfg.provider,
            address,
            pid,
            workers: res
                .cores
                .iter()
                .enumerate()
                .map(|(i, &core)| WorkerInfo {
                    index: i as u32,
                    core,
                })
                .collect(),
            spawn_ns,
            code_load_ns,
            pooled: false,
            early: false,
            ready_within_ms: 0,
        }
    }

    /// Step 9 on failure: marks the allocation failed and makes sure its executor is gone
    /// (its cores come back before the caller is answered); returns `err`.
    async fn abandon(&self, id: u64, mut child: Spawned, err: ServiceError) -> ServiceError {
        // The log gets its name and the failure is recorded before the standard output counts
        // as closed: the supervisor waits for that before it records the exit, which then finds
        // the failure (and an empty log to remove) in place.
        child.name_log();
        tracing::warn!(allocation = id, pid = child.pid, "allocation failed: {err}");
        {
            let mut reg = self.registry();
            let init = matches!(err, ServiceError::InitFailed(_));
            reg.start_failure(id, err.status(), init);
            let text = match &err {
                // The library's own words: the status then tells a client what it would
                // have been answered (see `AllocationStatus::code`).
                ServiceError::InitFailed(message) => message.clone(),
                other => other.to_string(),
            };
            reg.start_failed(id, &text, Instant::now());
        }
        // Its pipes close: an executor still waiting for its configuration exits.
        drop(child.stdin.take());
        drop(child.stdout.take());
        drop(child.stdout_tx.take());
        // The executor is about to exit (it reported failure or died) or still alive
        // (timeout); either way it goes now, and its cores come back before we answer.
        let handle = &child.handle;
        let exiting = !matches!(err, ServiceError::Timeout(_));
        if !exiting || handle.wait_exit(Duration::from_millis(500)).await.is_none() {
            handle.request_stop(StopRequest::Kill);
            handle.wait_exit(Duration::from_secs(5)).await;
        }
        err
    }

    /// Called by the supervisor the moment an executor is gone: frees its resources.
    fn reaped(&self, id: u64, billing_slot: usize, how: &str, log: &std::path::Path) {
        // An executor that ends without serving never asked for its pool replacement.
        if !self.shutting_down.load(Ordering::Acquire) {
            self.pool.refill();
        }
        let billing = self.billing.close(billing_slot);
        let now = Instant::now();
        let mut reg = self.registry();
        let freed = reg.exited(id, how, billing, now);
        let record = reg.get(id).cloned();
        drop(reg);
        self.handles().remove(&id);
        if let (Some(freed), Some(r)) = (freed, record) {
            let reason = r.reason.as_deref().unwrap_or(how);
            let held = r.held_for(now);
            match freed.state {
                State::Exited if how != "exited with status 0" => {
                    tracing::warn!(allocation = id, cores = ?freed.cores, ?held, "executor {reason}; cores free again (log: {})", log.display())
                }
                _ => {
                    tracing::info!(allocation = id, state = freed.state.name(), cores = ?freed.cores, ?held, execution_ns = billing.0, hot_polling_ns = billing.1, "executor {reason}; cores free again")
                }
            }
        }
        if std::fs::metadata(log).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(log);
        }
    }

    fn remember_token(&self, id: u64, token: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let reg = self.registry();
        // Only allocations the registry still remembers keep their tokens.
        tokens.retain(|i, _| reg.get(*i).is_some());
        tokens.insert(id, token.to_string());
    }

    /// Whether a caller presenting `allocation_token` and/or `lease_token` may end allocation
    /// `id`: the allocation's own token, or the token of the lease it runs under, compared in
    /// constant time. Nobody else may end another's work.
    pub fn may_end(
        &self,
        id: u64,
        allocation_token: Option<&str>,
        lease_token: Option<&str>,
    ) -> bool {
        use crate::control::secret::secrets_equal;
        let by_allocation = allocation_token.is_some_and(|t| {
            let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens
                .get(&id)
                .is_some_and(|k| secrets_equal(k.as_bytes(), t.as_bytes()))
        });
        let by_lease = lease_token.is_some_and(|t| {
            self.leases()
                .get(&id)
                .is_some_and(|h| secrets_equal(h.token.as_bytes(), t.as_bytes()))
        });
        by_allocation || by_lease
    }

    /// Releases allocation `id`: SIGTERM, SIGKILL after the grace period; returns once the
    /// executor is gone and its cores are free.
    pub async fn deallocate(&self, id: u64) -> Result<(), ServiceError> {
        let action = self.registry().stop(id)?;
        let handle = self.handles().get(&id).cloned();
        match action {
            StopAction::AlreadyEnded(_) | StopAction::NoProcessYet => return Ok(()),
            StopAction::Signal(_) | StopAction::AlreadyStopping => {}
        }
        let Some(handle) = handle else { return Ok(()) };
        if matches!(action, StopAction::Signal(_)) {
            tracing::info!(allocation = id, pid = handle.pid, "releasing");
            handle.request_stop(StopRequest::Graceful(self.cfg.stop_grace));
        }
        let limit = self.cfg.stop_grace + Duration::from_secs(5);
        match handle.wait_exit(limit).await {
            Some(_) => Ok(()),
            None => Err(ServiceError::Timeout(format!(
                "executor {} of allocation {id} did not exit within {limit:?}",
                handle.pid
            ))),
        }
    }

    fn status_of(&self, r: &super::registry::Record) -> AllocationStatus {
        let (execution_ns, hot_polling_ns) = if r.state.is_live() {
            self.billing.read(r.billing_slot)
        } else {
            r.billing
        };
        AllocationStatus {
            id: r.id,
            state: r.state.name().to_string(),
            reason: r.reason.clone(),
            code: r.init_failed.then(|| INIT_FAILED_CODE.to_string()),
            status: r.failure_status,
            cores: r.cores.clone(),
            execution_ns,
            hot_polling_ns,
        }
    }

    /// One allocation.
    pub fn allocation(&self, id: u64) -> Result<AllocationStatus, ServiceError> {
        let reg = self.registry();
        reg.get(id)
            .map(|r| self.status_of(r))
            .ok_or_else(|| ServiceError::NotFound(format!("no allocation {id}")))
    }

    /// The node's cores, memory and allocations.
    pub fn status(&self) -> ManagerStatus {
        let reg = self.registry();
        ManagerStatus {
            node: self.cfg.node.clone(),
            cores_total: reg.cores().total(),
            cores_free: reg.cores().free(),
            memory_total: reg.memory().total(),
            memory_free: reg.memory().free(),
            allocations: reg.records().map(|r| self.status_of(r)).collect(),
            nic: self.order.nic.as_ref().map(|n| n.name.clone()),
            nic_cores: self.order.near_nic(),
            core_order: reg.cores().order(),
            free_cores: reg.cores().free_cores(),
            manager_cores: Some(self.cfg.manager_cores.clone().unwrap_or_default()),
            pool: self.pool.status(),
        }
    }

    /// Refuses new allocations, stops every executor (SIGTERM, SIGKILL after the grace period)
    /// and waits, bounded, until they are gone.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.pool.shutdown().await;
        let handles: Vec<(u64, ExecutorHandle)> = self
            .handles()
            .iter()
            .map(|(id, h)| (*id, h.clone()))
            .collect();
        if handles.is_empty() {
            return;
        }
        tracing::info!(executors = handles.len(), "stopping every executor");
        for (id, h) in &handles {
            let _ = self.registry().stop(*id);
            h.request_stop(StopRequest::Graceful(self.cfg.stop_grace));
        }
        let deadline = Instant::now() + self.cfg.stop_grace + Duration::from_secs(3);
        for (id, h) in &handles {
            let left = deadline.saturating_duration_since(Instant::now());
            if h.wait_exit(left).await.is_none() {
                tracing::error!(
                    allocation = id,
                    pid = h.pid,
                    "executor still there after SIGKILL"
                );
            }
        }
    }
}

/// The fabric address executors listen on: the manager's fabric host, any port.
fn executor_listen(cfg: &ManagerConfig) -> String {
    format!("{}:0", cfg.fabric_host)
}

/// Logs the order cores are rented out in, and why.
fn log_core_order(order: &CoreOrder) {
    use super::config::format_cpulist;
    let cores = format_cpulist(&order.cores);
    match &order.nic {
        None => tracing::info!(%cores, "no RDMA NIC found: cores rented out in cpuset order"),
        Some(nic) if nic.locality.is_none() => tracing::warn!(
            nic = %nic.name,
            %cores,
            "NIC {} has no locality information ({}): cores rented out in cpuset order",
            nic.name,
            nic.source
        ),
        Some(nic) => tracing::info!(
            nic = %nic.name,
            source = nic.source,
            near = %format_cpulist(&order.near_nic()),
            %cores,
            "cores rented out nearest the NIC first"
        ),
    }
}

/// The last lines of an executor's log, for an error message (" Its log ...: ...").
fn log_tail(log: &std::path::Path) -> String {
    let Ok(mut f) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return format!(" (its log {} is empty)", log.display());
    }
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let start = tail.char_indices().rev().nth(600).map_or(0, |(i, _)| i);
    format!(". Its log {} ends: {}", log.display(), &tail[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> AllocationRequest {
        AllocationRequest {
            library: "ab".repeat(32),
            functions: vec!["echo".into()],
            cores: 1,
            input_capacity: 64,
            output_capacity: 64,
            slots: 4,
            hot_timeout_ms: -1,
            lease: None,
            client: "t".into(),
            early_answer: false,
            assets: Vec::new(),
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(validate(&req()).is_ok());
        type Change = fn(&mut AllocationRequest);
        let cases: Vec<(Change, &str)> = vec![
            (|r| r.library = "nope".into(), "SHA-256"),
            (|r| r.cores = 0, "cores"),
            (|r| r.slots = 0, "slots"),
            (|r| r.slots = 257, "slots"),
            (|r| r.input_capacity = 0, "input_capacity"),
            (|r| r.output_capacity = MAX_CAPACITY + 1, "output_capacity"),
            (|r| r.hot_timeout_ms = -2, "hot_timeout_ms"),
            (|r| r.functions.clear(), "functions"),
            (|r| r.functions = vec![String::new()], "function name"),
            (|r| r.client = "x".repeat(300), "client"),
        ];
        for (change, word) in cases {
            let mut r = req();
            change(&mut r);
            let e = validate(&r).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains(word), "{e} should mention {word}");
        }
    }
}
