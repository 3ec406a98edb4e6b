//! An allocation seen from the client: connections to its workers and the invocation API.
//!
//! # Threads
//!
//! [`Executor`] is `Send + Sync`. Each worker connection sits behind its own mutex; a call locks
//! one worker for as long as it waits for its result (uncontended, that lock costs one atomic
//! instruction). Several threads can therefore invoke at once, each on a different worker: the
//! blocking [`Executor::invoke`] picks a free worker by itself, and [`Executor::invoke_on`] names
//! one. Calls on the same worker from several threads take turns. For many calls in flight on one
//! worker, use [`Executor::submit`] and [`Executor::wait`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::error::{ClientError, InvokeError};
use super::executor_manager::ManagerClient;
use crate::control::executor_manager_api::{
    Allocation, AllocationRequest, AssetRef, WorkerAccept, WorkerConnect, TOKEN_LEN,
};
use crate::protocol::invocation::FLAG_SOLICITED_REPLY;
use crate::protocol::{worker_qp, InvocationHeader, RequestImm, SlotTable, Status, HEADER_LEN};
use crate::rdma::{
    Access, CompletionQueue, Fabric, MemoryRegion, Op, QueuePair, RecvWr, SendFlags, SendWr, Wc,
    WcOpcode,
};

/// What to allocate.
#[derive(Clone, Debug)]
pub struct AllocationSpec {
    /// The function library (shared object bytes; it travels to the executor manager). Private
    /// so that its cached hash stays right: see [`AllocationSpec::set_library`].
    library: Vec<u8>,
    /// Function names; their order gives the [`FunctionId`]s.
    pub functions: Vec<String>,
    /// Workers (cores).
    pub cores: u32,
    /// Largest input in bytes.
    pub input_capacity: u32,
    /// Largest output in bytes.
    pub output_capacity: u32,
    /// Invocations in flight per worker (1..=256).
    pub slots: u32,
    /// -1 always hot, 0 always warm, > 0 hot for that many ms after each invocation.
    pub hot_timeout_ms: i64,
    /// Lease from the resource manager, if any.
    pub lease: Option<String>,
    /// The library's content hash, computed once (hashing megabytes costs milliseconds).
    hash: std::sync::OnceLock<crate::function::ContentHash>,
    /// Named assets for the library's init function, in the order added.
    assets: Vec<Asset>,
}

/// A named asset of an [`AllocationSpec`]: bytes the library's init function receives once per
/// executor (see [`AllocationSpec::add_asset`]). Cheap to clone.
#[derive(Clone)]
pub struct Asset {
    name: String,
    bytes: std::sync::Arc<[u8]>,
    hash: crate::function::ContentHash,
}

impl std::fmt::Debug for Asset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asset")
            .field("name", &self.name)
            .field("len", &self.bytes.len())
            .field("hash", &self.hash)
            .finish()
    }
}

impl Asset {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Their content hash.
    pub fn hash(&self) -> crate::function::ContentHash {
        self.hash
    }
}

impl AllocationSpec {
    /// One core, 4 KiB in and out, 4 slots, hot for 100 ms after work.
    pub fn new(library: Vec<u8>, functions: &[&str]) -> AllocationSpec {
        AllocationSpec {
            library,
            functions: functions.iter().map(|s| s.to_string()).collect(),
            cores: 1,
            input_capacity: 4096,
            output_capacity: 4096,
            slots: 4,
            hot_timeout_ms: 100,
            lease: None,
            hash: std::sync::OnceLock::new(),
            assets: Vec::new(),
        }
    }

    /// Adds a named asset: bytes uploaded to the executor manager by content hash (like the
    /// library: sent once, cached there) and handed to the library's init function
    /// (`rfaas_init`, see [`rfaas_function::init`]) once per executor, before the first
    /// invocation. An asset of the same name is replaced. Names are 1 to 128 bytes of ASCII
    /// letters, digits, `.`, `_`, `-`, not starting with a dot; a bad name fails the allocation
    /// with [`ClientError::Invalid`] before anything is sent. A library without an init function
    /// ignores its assets.
    pub fn add_asset(&mut self, name: impl Into<String>, bytes: Vec<u8>) {
        let name = name.into();
        let hash = crate::function::ContentHash::of(&bytes);
        let asset = Asset {
            name,
            bytes: bytes.into(),
            hash,
        };
        match self.assets.iter_mut().find(|a| a.name == asset.name) {
            Some(a) => *a = asset,
            None => self.assets.push(asset),
        }
    }

    /// [`Self::add_asset`], by value.
    pub fn with_asset(mut self, name: impl Into<String>, bytes: Vec<u8>) -> Self {
        self.add_asset(name, bytes);
        self
    }

    /// The assets, in the order added.
    pub fn assets(&self) -> &[Asset] {
        &self.assets
    }

    /// Checks what the client can check before sending anything: the function names and the
    /// asset names.
    pub fn check(&self) -> Result<(), ClientError> {
        if self.functions.is_empty() || self.functions.len() > usize::from(u16::MAX) {
            return Err(ClientError::Invalid(
                "between 1 and 65535 function names".into(),
            ));
        }
        for a in &self.assets {
            crate::function::assets::check_asset_name(&a.name).map_err(ClientError::Invalid)?;
        }
        Ok(())
    }

    /// The allocation request for this spec (the library and the assets by their content
    /// hashes, which the manager must already have: [`super::ManagerClient::upload_for`]).
    /// `client` labels the allocation in the manager's logs and status.
    pub fn request(&self, client: String) -> AllocationRequest {
        AllocationRequest {
            library: self.library_hash().to_hex(),
            functions: self.functions.clone(),
            cores: self.cores,
            input_capacity: self.input_capacity,
            output_capacity: self.output_capacity,
            slots: self.slots,
            hot_timeout_ms: self.hot_timeout_ms,
            lease: self.lease.clone(),
            client,
            early_answer: false,
            assets: self
                .assets
                .iter()
                .map(|a| AssetRef {
                    name: a.name.clone(),
                    sha256: a.hash.to_hex(),
                    size: a.bytes.len() as u64,
                })
                .collect(),
        }
    }

    /// Replaces the library (and forgets its cached hash).
    pub fn set_library(&mut self, library: Vec<u8>) {
        self.library = library;
        self.hash = std::sync::OnceLock::new();
    }

    /// The library's bytes.
    pub fn library(&self) -> &[u8] {
        &self.library
    }

    /// The library's content hash.
    pub fn library_hash(&self) -> crate::function::ContentHash {
        *self
            .hash
            .get_or_init(|| crate::function::ContentHash::of(&self.library))
    }
}

/// Client-side behaviour.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// How long a call waits for its result.
    pub timeout: Duration,
    /// How long a waiting call busy-polls before it sleeps on the completion queue.
    pub spin: Duration,
    /// How long connecting to the workers may take.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            spin: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the time of an allocation went (client view), in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocationTimings {
    /// Leasing the cores from the resource manager (when the cluster has one), uploading the
    /// library (or finding it cached) and the allocation request, end to end.
    pub request_ns: u64,
    /// Part of the request: the manager spawning the executor until it was ready.
    pub spawn_ns: u64,
    /// Part of the spawn: the executor loading the library and resolving functions.
    pub code_load_ns: u64,
    /// Connecting the fabric to every worker.
    pub connect_ns: u64,
}

/// A function of the allocation (its index in the requested names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FunctionId(pub u16);

/// An invocation in flight, from [`Executor::submit`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "wait for the result, or its slot stays busy"]
pub struct Pending {
    worker: usize,
    slot: u8,
    id: u32,
}

impl Pending {
    /// The worker it runs on.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

struct Conn<F: Fabric> {
    qp: F::Qp,
    cq: F::Cq,
    staging: F::Mr,
    results: F::Mr,
    remote: WorkerAccept,
    table: SlotTable,
    lens: Vec<u32>,
    dead: Option<String>,
    stride: usize,
    out_cap: usize,
}

impl<F: Fabric> Conn<F> {
    /// Posts one invocation; returns its slot and id.
    #[inline]
    fn submit(
        &mut self,
        func: FunctionId,
        input: &[u8],
        out_len: usize,
        solicited: bool,
    ) -> Result<(u8, u32), InvokeError> {
        if let Some(why) = &self.dead {
            return Err(InvokeError::ExecutorGone(why.clone()));
        }
        let (slot, id) = self.table.acquire().ok_or(InvokeError::Busy)?;
        let off = slot as usize * self.stride;
        let out_cap = out_len.min(self.out_cap) as u32;
        let header = InvocationHeader {
            id,
            function: func.0,
            flags: if solicited { FLAG_SOLICITED_REPLY } else { 0 },
            payload_len: input.len() as u32,
            output: self.results.remote(slot as usize * self.out_cap, out_cap),
        };
        let mut raw = [0u8; HEADER_LEN];
        header.encode(&mut raw);
        self.staging.write(off, &raw);
        self.staging.write(off + HEADER_LEN, input);
        let total = (HEADER_LEN + input.len()) as u32;
        let wr = SendWr {
            wr_id: u64::from(slot),
            op: Op::WriteImm(
                self.remote
                    .input
                    .slice(u32::from(slot) * self.remote.stride, total),
                RequestImm::encode(slot, id),
            ),
            sge: Some(self.staging.sge(off, total)),
            flags: if solicited {
                SendFlags::SOLICITED
            } else {
                SendFlags::empty()
            },
        };
        if let Err(e) = self.qp.post_send(&wr) {
            self.table.release(slot);
            return Err(InvokeError::ExecutorGone(e.to_string()));
        }
        Ok((slot, id))
    }

    /// Takes completions off the queue; returns how many.
    #[inline]
    fn progress(&mut self) -> usize {
        let mut wcs = [Wc::EMPTY; 16];
        let n = self.cq.poll(&mut wcs);
        for wc in &wcs[..n] {
            self.on_completion(wc);
        }
        n
    }

    fn on_completion(&mut self, wc: &Wc) {
        if !wc.is_ok() {
            if self.dead.is_none() {
                tracing::warn!(status = ?wc.status, "worker connection failed");
                self.dead = Some(format!("connection to the worker failed ({:?})", wc.status));
            }
            return;
        }
        if wc.opcode != WcOpcode::RecvWriteImm {
            return;
        }
        let _ = self.qp.post_recv(&RecvWr {
            wr_id: 0,
            sge: None,
        });
        match self.table.complete(wc.imm.unwrap_or(0)) {
            Ok(c) => self.lens[c.slot as usize] = wc.byte_len,
            Err(e) => tracing::warn!("result dropped: {e}"),
        }
    }

    /// The result of `(slot, id)` if it arrived (copied into `out`, slot freed).
    #[inline]
    fn take(&mut self, slot: u8, id: u32, out: &mut [u8]) -> Option<Result<usize, InvokeError>> {
        match self.table.result(slot, id) {
            Ok(Some(status)) => {
                let len = self.lens[slot as usize] as usize;
                let r = if status != Status::Ok {
                    Err(InvokeError::Status(status))
                } else if len > out.len() {
                    Err(InvokeError::Invalid(format!(
                        "result of {len} bytes for a {}-byte buffer",
                        out.len()
                    )))
                } else {
                    self.results
                        .read(slot as usize * self.out_cap, &mut out[..len]);
                    Ok(len)
                };
                self.table.release(slot);
                Some(r)
            }
            Ok(None) => {
                let why = self.dead.clone()?;
                self.table.release(slot);
                Some(Err(InvokeError::ExecutorGone(why)))
            }
            Err(e) => Some(Err(InvokeError::Invalid(e.to_string()))),
        }
    }

    /// Waits for `(slot, id)`: spins for `spin`, then sleeps on the completion queue.
    fn wait(
        &mut self,
        slot: u8,
        id: u32,
        out: &mut [u8],
        timeout: Duration,
        spin: Duration,
    ) -> Result<usize, InvokeError> {
        let start = Instant::now();
        let mut k = 0u32;
        loop {
            self.progress();
            if let Some(r) = self.take(slot, id, out) {
                return r;
            }
            k = k.wrapping_add(1);
            if k % 256 != 0 {
                std::hint::spin_loop();
                continue;
            }
            if k % 4096 == 0 {
                // Let the executor run if it shares this core.
                std::thread::yield_now();
            }
            let waited = start.elapsed();
            if waited >= timeout {
                // The slot stays busy: the executor may still answer into it.
                return Err(InvokeError::Timeout(timeout));
            }
            if waited >= spin {
                let mut wcs = [Wc::EMPTY; 16];
                let left = timeout - waited;
                match self.cq.poll_wait(
                    &mut wcs,
                    left.min(Duration::from_millis(100)),
                    Duration::ZERO,
                ) {
                    Ok(n) => wcs[..n].iter().for_each(|wc| self.on_completion(wc)),
                    Err(e) => self.dead = Some(e.to_string()),
                }
            }
        }
    }
}

/// An allocation: workers on one executor manager's node, connected and ready to invoke.
pub struct Executor<F: Fabric> {
    manager: Option<ManagerClient>,
    allocation: Allocation,
    functions: Vec<String>,
    workers: Vec<Mutex<Conn<F>>>,
    next: AtomicUsize,
    opts: ClientOptions,
    input_capacity: usize,
    output_capacity: usize,
    timings: AllocationTimings,
    released: AtomicBool,
    /// A lease taken for this allocation alone ([`super::Cluster::allocate`] with a resource
    /// manager): released after the allocation, when the executor is dropped.
    lease: Option<super::lease::Lease>,
    /// How the executor ended, as its manager reports it (asked once, when a call finds it
    /// gone; empty when the manager could not tell).
    death: Mutex<Option<String>>,
    _fabric: F,
}

/// How long a call that found its executor gone waits for the manager to say how it ended.
const DEATH_REPORT_WAIT: Duration = Duration::from_secs(1);

impl<F: Fabric> Executor<F> {
    /// Uploads the library and the assets (unless cached), allocates `spec.cores` workers on `manager`, and
    /// connects to every worker over `fabric`.
    pub fn allocate(
        fabric: F,
        manager: &ManagerClient,
        spec: &AllocationSpec,
        opts: ClientOptions,
    ) -> Result<Self, ClientError> {
        spec.check()?;
        let t0 = Instant::now();
        // The allocation first: a library the manager has cached (the usual case) costs no
        // exchange of its own. An unknown library or asset is a 404: upload them, then ask again.
        let mut req = spec.request(format!("pid {}", std::process::id()));
        // A pooled executor is answered once it has its configuration: the library loads
        // while this client connects (a failed start is asked for below).
        req.early_answer = true;
        let allocation = match manager.allocate(&req) {
            Err(ClientError::Manager { status: 404, .. }) => {
                manager.upload_for(spec)?;
                manager.allocate(&req)?
            }
            other => other?,
        };
        let request_ns = t0.elapsed().as_nanos() as u64;
        let (id, token, early) = (allocation.id, allocation.token.clone(), allocation.early);
        match Self::connect(fabric, Some(manager.clone()), allocation, spec, None, opts) {
            Ok(mut e) => {
                e.timings.request_ns = request_ns;
                Ok(e)
            }
            Err(err) => {
                // Answered before it was ready: the connection fails when the executor does,
                // and its manager says why.
                let err = match early {
                    true => manager.start_failure(id, DEATH_REPORT_WAIT).unwrap_or(err),
                    false => err,
                };
                let _ = manager.deallocate(id, &token);
                Err(err)
            }
        }
    }

    /// Connects to (some of) the workers of an allocation made elsewhere, e.g. by another MPI
    /// rank: `workers` picks which (all when `None`); worker `i` of the result is the `i`-th of
    /// them. With `manager`, [`Executor::deallocate`] and drop release the allocation; without,
    /// they only disconnect.
    pub fn connect(
        fabric: F,
        manager: Option<ManagerClient>,
        allocation: Allocation,
        spec: &AllocationSpec,
        workers: Option<&[usize]>,
        opts: ClientOptions,
    ) -> Result<Self, ClientError> {
        if allocation.provider != fabric.provider() {
            return Err(ClientError::Config(format!(
                "the executor speaks {}, this client {}",
                allocation.provider,
                fabric.provider()
            )));
        }
        let token: [u8; TOKEN_LEN] = hex::decode(&allocation.token)
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or_else(|| ClientError::Config("malformed allocation token".into()))?;
        let all: Vec<usize> = (0..allocation.workers.len()).collect();
        let chosen = workers.unwrap_or(&all);
        // An executor answered before it was ready accepts once it is: that may take it up to
        // its manager's start timeout.
        let timeout = match allocation.early {
            true => opts.connect_timeout + Duration::from_millis(allocation.ready_within_ms),
            false => opts.connect_timeout,
        };
        let t1 = Instant::now();
        let conns = chosen
            .iter()
            .map(|&w| {
                if w >= allocation.workers.len() {
                    return Err(ClientError::Invalid(format!(
                        "allocation has no worker {w}"
                    )));
                }
                connect_worker(
                    &fabric,
                    &allocation.address,
                    &token,
                    w as u32,
                    spec,
                    timeout,
                )
                .map(Mutex::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timings = AllocationTimings {
            request_ns: 0,
            spawn_ns: allocation.spawn_ns,
            code_load_ns: allocation.code_load_ns,
            connect_ns: t1.elapsed().as_nanos() as u64,
        };
        Ok(Executor {
            released: AtomicBool::new(manager.is_none()),
            manager,
            allocation,
            functions: spec.functions.clone(),
            workers: conns,
            next: AtomicUsize::new(0),
            opts,
            input_capacity: spec.input_capacity as usize,
            output_capacity: spec.output_capacity as usize,
            timings,
            lease: None,
            death: Mutex::new(None),
            _fabric: fabric,
        })
    }

    /// Keeps `lease` until this executor is dropped (after its allocation is released).
    pub fn hold_lease(&mut self, lease: super::lease::Lease) {
        self.lease = Some(lease);
    }

    /// The lease this executor holds, if any (see [`Executor::hold_lease`]).
    pub fn lease(&self) -> Option<&super::lease::Lease> {
        self.lease.as_ref()
    }

    /// The allocation as the manager granted it.
    pub fn allocation(&self) -> &Allocation {
        &self.allocation
    }

    /// Adds the time spent leasing the cores to the request time.
    pub(crate) fn count_lease_time(&mut self, ns: u64) {
        self.timings.request_ns += ns;
    }

    /// Where the time to allocate went.
    pub fn timings(&self) -> AllocationTimings {
        self.timings
    }

    /// Largest input of one call, bytes.
    pub fn input_capacity(&self) -> usize {
        self.input_capacity
    }

    /// Largest output of one call, bytes.
    pub fn output_capacity(&self) -> usize {
        self.output_capacity
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The id of a function by name.
    pub fn function(&self, name: &str) -> Result<FunctionId, ClientError> {
        self.functions
            .iter()
            .position(|f| f == name)
            .map(|i| FunctionId(i as u16))
            .ok_or_else(|| ClientError::UnknownFunction(name.to_string()))
    }

    fn check(&self, input: &[u8]) -> Result<(), InvokeError> {
        if input.len() > self.input_capacity {
            return Err(InvokeError::InputTooLarge {
                len: input.len(),
                capacity: self.input_capacity,
            });
        }
        Ok(())
    }

    fn lock(&self, w: usize) -> Result<MutexGuard<'_, Conn<F>>, InvokeError> {
        let m = self
            .workers
            .get(w)
            .ok_or_else(|| InvokeError::Invalid(format!("no worker {w}")))?;
        Ok(m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `e`, with how the executor ended when it is gone: the fabric only says that the
    /// connection failed, its manager saw the process end ("killed by signal 11 (SIGSEGV)").
    /// Asked once per executor, within [`DEATH_REPORT_WAIT`].
    fn explain(&self, e: InvokeError) -> InvokeError {
        let InvokeError::ExecutorGone(why) = e else {
            return e;
        };
        let Some(manager) = &self.manager else {
            return InvokeError::ExecutorGone(why);
        };
        let mut death = self.death.lock().unwrap_or_else(|p| p.into_inner());
        let report = death.get_or_insert_with(|| {
            manager
                .allocation_settled(
                    self.allocation.id,
                    DEATH_REPORT_WAIT,
                    &["starting", "running"],
                )
                .map(|s| s.reason.unwrap_or(s.state))
                .unwrap_or_default()
        });
        if report.is_empty() {
            InvokeError::ExecutorGone(why)
        } else {
            InvokeError::ExecutorGone(format!("{why}; its executor manager says it {report}"))
        }
    }

    /// Runs `func` on `input` on some free worker, waits for the result, copies it into `output`
    /// and returns its length. `output.len()` (capped at the allocation's output capacity) is the
    /// capacity the function may fill.
    pub fn invoke(
        &self,
        func: FunctionId,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, InvokeError> {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            if let Ok(mut c) = self.workers[(start + k) % n].try_lock() {
                return self.call(&mut c, func, input, output);
            }
        }
        let mut c = self.lock(start % n)?;
        self.call(&mut c, func, input, output)
    }

    /// Runs `func` on worker `worker` and waits for the result.
    pub fn invoke_on(
        &self,
        worker: usize,
        func: FunctionId,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, InvokeError> {
        let mut c = self.lock(worker)?;
        self.call(&mut c, func, input, output)
    }

    fn call(
        &self,
        c: &mut Conn<F>,
        func: FunctionId,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, InvokeError> {
        self.check(input)?;
        let deadline = Instant::now() + self.opts.timeout;
        let (slot, id) = loop {
            match c.submit(func, input, output.len(), false) {
                Err(InvokeError::Busy) => {
                    // Every slot holds a submitted call: make progress until one frees up.
                    if Instant::now() >= deadline {
                        return Err(InvokeError::Timeout(self.opts.timeout));
                    }
                    c.progress();
                    std::thread::yield_now();
                }
                r => break r.map_err(|e| self.explain(e))?,
            }
        };
        c.wait(
            slot,
            id,
            output,
            deadline.saturating_duration_since(Instant::now()),
            self.opts.spin,
        )
        .map_err(|e| self.explain(e))
    }

    /// Posts `func` on `input` to `worker` (or a round-robin one) and returns at once; collect
    /// the result with [`Executor::wait`] or [`Executor::poll`]. [`InvokeError::Busy`] when all
    /// of that worker's slots are in use.
    pub fn submit(
        &self,
        worker: Option<usize>,
        func: FunctionId,
        input: &[u8],
        output_len: usize,
    ) -> Result<Pending, InvokeError> {
        self.check(input)?;
        let w = worker
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len());
        let mut c = self.lock(w)?;
        c.progress();
        let (slot, id) = c.submit(func, input, output_len, true)?;
        Ok(Pending {
            worker: w,
            slot,
            id,
        })
    }

    /// Waits for a submitted invocation; copies its result into `output`.
    pub fn wait(&self, p: Pending, output: &mut [u8]) -> Result<usize, InvokeError> {
        let mut c = self.lock(p.worker)?;
        c.wait(p.slot, p.id, output, self.opts.timeout, self.opts.spin)
            .map_err(|e| self.explain(e))
    }

    /// The result of a submitted invocation if it has arrived (`Ok(None)` while it runs).
    pub fn poll(&self, p: &Pending, output: &mut [u8]) -> Result<Option<usize>, InvokeError> {
        let mut c = self.lock(p.worker)?;
        c.progress();
        c.take(p.slot, p.id, output)
            .transpose()
            .map_err(|e| self.explain(e))
    }

    /// Runs `func` once on every worker in parallel, input `i` on worker `i`; one result each.
    pub fn invoke_parallel(
        &self,
        func: FunctionId,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
    ) -> Vec<Result<usize, InvokeError>> {
        if inputs.len() != outputs.len() || inputs.len() > self.workers.len() {
            let e = InvokeError::Invalid(format!(
                "{} inputs, {} outputs, {} workers",
                inputs.len(),
                outputs.len(),
                self.workers.len()
            ));
            return vec![Err(e); inputs.len()];
        }
        let mut guards: Vec<_> = (0..inputs.len()).map(|w| self.lock(w)).collect();
        let posted: Vec<Result<(u8, u32), InvokeError>> = guards
            .iter_mut()
            .zip(inputs.iter().zip(outputs.iter()))
            .map(|(g, (inp, out))| match g {
                Ok(c) => self
                    .check(inp)
                    .and_then(|_| c.submit(func, inp, out.len(), false)),
                Err(e) => Err(e.clone()),
            })
            .collect();
        guards
            .iter_mut()
            .zip(posted)
            .zip(outputs.iter_mut())
            .map(|((g, p), out)| {
                let c = g.as_mut().map_err(|e| e.clone())?;
                let (slot, id) = p?;
                c.wait(slot, id, out, self.opts.timeout, self.opts.spin)
            })
            .map(|r| r.map_err(|e| self.explain(e)))
            .collect()
    }

    /// Disconnects from the workers and releases the allocation.
    pub fn deallocate(self) -> Result<(), ClientError> {
        self.release()
    }

    fn release(&self) -> Result<(), ClientError> {
        for w in &self.workers {
            w.lock().unwrap_or_else(|p| p.into_inner()).qp.disconnect();
        }
        if self.released.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        match &self.manager {
            Some(m) => m.deallocate(self.allocation.id, &self.allocation.token),
            None => Ok(()),
        }
    }
}

impl<F: Fabric> Drop for Executor<F> {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::debug!("releasing allocation {}: {e}", self.allocation.id);
        }
    }
}

fn connect_worker<F: Fabric>(
    fabric: &F,
    address: &str,
    token: &[u8; TOKEN_LEN],
    worker: u32,
    spec: &AllocationSpec,
    timeout: Duration,
) -> Result<Conn<F>, ClientError> {
    let slots = spec.slots.clamp(1, crate::protocol::MAX_SLOTS);
    let stride = HEADER_LEN + spec.input_capacity as usize;
    let out_cap = spec.output_capacity as usize;
    let cq = fabric.create_cq(worker_qp::cq_depth(slots))?;
    let staging = fabric.alloc_mr(stride * slots as usize, Access::LOCAL_WRITE)?;
    let results = fabric.alloc_mr(
        out_cap * slots as usize,
        Access::LOCAL_WRITE | Access::REMOTE_WRITE,
    )?;
    let recvs = worker_qp::receives(slots);
    let init = worker_qp::init::<F>(&cq, slots);
    let hello = WorkerConnect {
        token: *token,
        worker,
    }
    .encode();
    let (qp, pd) = fabric.connect(address, init, &recvs, &hello, timeout)?;
    let remote = WorkerAccept::decode(&pd)
        .ok_or_else(|| ClientError::Config("worker sent malformed accept data".into()))?;
    if remote.slots < slots || (remote.stride as usize) < stride {
        return Err(ClientError::Config(format!(
            "worker offers {} slots of {} bytes, this client needs {slots} of {stride}",
            remote.slots, remote.stride
        )));
    }
    Ok(Conn {
        qp,
        cq,
        staging,
        results,
        remote,
        table: SlotTable::new(slots, 0),
        lens: vec![0; slots as usize],
        dead: None,
        stride,
        out_cap: out_cap.max(1),
    })
}
