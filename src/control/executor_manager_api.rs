//! Messages of the executor manager's HTTP API (`/v1/...`) and of the executor process protocol.
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | `PUT` | `/v1/libraries/{sha256}` | raw bytes of an ELF shared object, header [`UPLOAD_LEASE_HEADER`] with a resource manager → [`LibraryStored`] (cached by content hash) |
//! | `HEAD` | `/v1/libraries/{sha256}` | → 200 when cached, 404 otherwise; header [`UPLOAD_LIMIT_HEADER`] |
//! | `PUT` | `/v1/assets/{sha256}` | raw bytes of a function asset (any content), same header and limits as a library → [`LibraryStored`] (cached by content hash) |
//! | `HEAD` | `/v1/assets/{sha256}` | → 200 when cached, 404 otherwise |
//! | `POST` | `/v1/allocations` | [`AllocationRequest`] → [`Allocation`] |
//! | `DELETE` | `/v1/allocations/{id}` | header [`ALLOCATION_TOKEN_HEADER`] (or the lease token) → 204, 403 without |
//! | `GET` | `/v1/allocations/{id}` | → [`AllocationStatus`] |
//! | `GET` | `/v1/status` | → [`ManagerStatus`] |
//! | `GET` | `/v1/health` | → `{"ok":true}` (no authentication) |
//!
//! Errors are [`ApiError`] JSON bodies with a 4xx/5xx status. An allocation whose library's init
//! function failed is a 422 whose [`ApiError::code`] is [`INIT_FAILED_CODE`] and whose message is
//! the one the init function wrote.

use serde::{Deserialize, Serialize};

use crate::rdma::Provider;

/// Largest library an executor manager accepts.
pub const MAX_LIBRARY_BYTES: usize = 256 << 20;
/// The header that carries the lease (`<id>:<token>`) a library upload is made under: with a
/// resource manager, an executor manager stores libraries only for live leases with cores on
/// its node.
pub const UPLOAD_LEASE_HEADER: &str = "X-Rfaas-Lease";

/// The header of a `HEAD /v1/libraries/...` or `/v1/assets/...` answer that says the largest
/// upload the manager accepts, in bytes (`max_library_bytes`): a client refuses a larger one
/// itself, with a clear error, instead of sending bytes the manager will not read.
pub const UPLOAD_LIMIT_HEADER: &str = "X-Rfaas-Upload-Limit";

/// The header that carries an allocation's token when ending it (`DELETE /v1/allocations/{id}`).
pub const ALLOCATION_TOKEN_HEADER: &str = "X-Rfaas-Allocation-Token";

/// Bytes of a per-allocation token.
pub const TOKEN_LEN: usize = 32;

/// An error answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong, for a person.
    pub error: String,
    /// What went wrong, for a program, when a client may act on it (e.g. [`INIT_FAILED_CODE`]);
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// [`ApiError::code`] of an allocation refused because the library's init function
/// (`rfaas_init`) returned an error; [`ApiError::error`] is its message.
pub const INIT_FAILED_CODE: &str = "init_failed";

/// One named asset an allocation ships beside its library: uploaded before by content hash
/// (`PUT /v1/assets/{sha256}`), passed to the library's init function by name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssetRef {
    /// Its name, as the init function looks it up ([`crate::function::assets::check_asset_name`]).
    pub name: String,
    /// SHA-256 (hex) of its bytes.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
}

/// An asset as the executor manager hands it to an executor: a verified file of its cache.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecutorAsset {
    /// Its name.
    pub name: String,
    /// The cached file (the executor maps it read-only).
    pub path: String,
    /// SHA-256 (hex) of its bytes, verified by the manager.
    pub sha256: String,
    /// Its length in bytes (the executor checks the file has exactly this many).
    pub size: u64,
}

/// Answer to a library upload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LibraryStored {
    /// SHA-256 of the bytes, hex.
    pub hash: String,
    /// Bytes stored.
    pub bytes: u64,
}

/// A client asks for cores on this node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllocationRequest {
    /// SHA-256 (hex) of a library uploaded before.
    pub library: String,
    /// Function names to resolve; their order defines the function indices.
    pub functions: Vec<String>,
    /// Worker threads (one per core).
    pub cores: u32,
    /// Largest invocation payload in bytes (per input slot, header not included).
    pub input_capacity: u32,
    /// Largest result in bytes.
    pub output_capacity: u32,
    /// Input slots per worker (invocations in flight per worker), 1..=256.
    pub slots: u32,
    /// -1 always hot, 0 always warm, > 0 hot until that many milliseconds pass without work.
    pub hot_timeout_ms: i64,
    /// Lease this allocation belongs to (from the resource manager), if any.
    #[serde(default)]
    pub lease: Option<String>,
    /// Free text naming the client, for logs.
    #[serde(default)]
    pub client: String,
    /// Answer as soon as an executor from the manager's pool has its configuration, before it
    /// has loaded the library (see [`Allocation::early`]): the library then loads while the
    /// client connects. Pooled executors are answered once they have their configuration,
    /// fresh ones once they have started too; a client asking for it must learn a failed start
    /// from the allocation's state when its connection fails.
    #[serde(default)]
    pub early_answer: bool,
    /// Named assets for the library's init function, in the order the client listed them
    /// (none: nothing is passed; a library without init ignores them).
    #[serde(default)]
    pub assets: Vec<AssetRef>,
}

/// One worker of an allocation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker index (what a client names in its connect private data).
    pub index: u32,
    /// OS CPU the worker thread is pinned to.
    pub core: u32,
}

/// The executor manager's answer to an allocation: what the client needs to connect.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Allocation {
    /// Allocation id on this executor manager.
    pub id: u64,
    /// Hex token the client presents when it connects to the workers.
    pub token: String,
    /// Fabric provider of the executor.
    pub provider: Provider,
    /// Fabric address the executor listens on.
    pub address: String,
    /// Pid of the executor process.
    pub pid: u32,
    /// Workers, one per core.
    pub workers: Vec<WorkerInfo>,
    /// Nanoseconds spent by the manager: spawning the process until it reported ready.
    pub spawn_ns: u64,
    /// Nanoseconds the executor took to load the library, resolve the functions, map the assets
    /// and run the library's init function (if any).
    pub code_load_ns: u64,
    /// Whether the executor came from the manager's pool of pre-started processes (`false`:
    /// spawned fresh for this allocation).
    #[serde(default)]
    pub pooled: bool,
    /// Answered before the executor was ready (asked for with
    /// [`AllocationRequest::early_answer`]): it has its configuration and listens, and accepts
    /// connections once it has loaded the library. `spawn_ns` is then the hand-over and
    /// `code_load_ns` 0 (the library loads while the client connects). A start that fails
    /// shows in the allocation's state (`GET /v1/allocations/{id}`: `failed`, with the reason).
    #[serde(default)]
    pub early: bool,
    /// With `early`: the longest the executor may take to become ready (the manager's start
    /// timeout, milliseconds); a client's connection waits that long on top of its own timeout.
    #[serde(default)]
    pub ready_within_ms: u64,
}

/// State of an allocation, as the executor manager sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllocationStatus {
    /// Allocation id.
    pub id: u64,
    /// `running`, `exited` (with a reason), or `released`.
    pub state: String,
    /// Why the executor ended, when it did.
    #[serde(default)]
    pub reason: Option<String>,
    /// [`INIT_FAILED_CODE`] when it failed to start because the library's init function
    /// refused (the reason is then the library's message).
    #[serde(default)]
    pub code: Option<String>,
    /// When it failed to start: the HTTP status its allocation request would have been
    /// answered with (422 for an executor or library that refused, 504 for a timeout, 503 for
    /// a manager shutting down...).
    #[serde(default)]
    pub status: Option<u16>,
    /// Cores it holds (or held), one per worker in worker order: worker `i` is pinned to
    /// `cores[i]`.
    pub cores: Vec<u32>,
    /// Nanoseconds spent executing functions (billing).
    pub execution_ns: u64,
    /// Nanoseconds spent hot-polling (billing).
    pub hot_polling_ns: u64,
}

/// The executor manager's pool of pre-started executor processes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolStatus {
    /// Processes it keeps started (0: no pool).
    pub size: u32,
    /// Pids of the pooled processes ready now (none is pinned: they use no rented core).
    pub ready: Vec<u32>,
    /// Resident memory of those processes, bytes.
    pub memory: u64,
    /// Allocations served from the pool.
    pub taken: u64,
    /// Allocations that found the pool empty (spawned fresh).
    pub empty: u64,
    /// Pooled processes that died before they were used (and were replaced).
    pub died: u64,
    /// Whether the next allocation request would nudge a pooled process now: false for
    /// `NUDGE_INTERVAL` after a nudge that no allocation used (false from older managers).
    #[serde(default)]
    pub nudge_ready: bool,
    /// How executors start: `fork` (from the zygote) or `exec` (empty from older managers).
    #[serde(default)]
    pub executor_start: String,
    /// The pid of the zygote executors are forked from, while one runs.
    #[serde(default)]
    pub zygote: Option<u32>,
}

/// The executor manager's view of its node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManagerStatus {
    /// Node name.
    pub node: String,
    /// Cores it may rent out.
    pub cores_total: u32,
    /// Cores free now.
    pub cores_free: u32,
    /// Memory it may rent out, bytes.
    pub memory_total: u64,
    /// Memory free now, bytes.
    pub memory_free: u64,
    /// Live and recently ended allocations.
    pub allocations: Vec<AllocationStatus>,
    /// The NIC its cores are ordered by (`None`: none found or named: cpuset order).
    #[serde(default)]
    pub nic: Option<String>,
    /// Its cores nearest that NIC (in the cpuset of the NIC's first non-I/O ancestor).
    #[serde(default)]
    pub nic_cores: Vec<u32>,
    /// Every core it rents out, in the order allocations take them (nearest the NIC first).
    #[serde(default)]
    pub core_order: Vec<u32>,
    /// Its free cores, in that order.
    #[serde(default)]
    pub free_cores: Vec<u32>,
    /// The cores its own threads are bound to (`manager_cores`); empty: not bound, its whole
    /// cpuset; `None`: not reported (a manager from before the setting).
    #[serde(default)]
    pub manager_cores: Option<Vec<u32>>,
    /// Its pool of pre-started executors.
    #[serde(default)]
    pub pool: PoolStatus,
}

/// What an executor manager sends an executor process on its standard input (one JSON document),
/// so that nothing secret appears on a command line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Allocation id (for logs).
    pub allocation: u64,
    /// Hex token clients must present.
    pub token: String,
    /// Path of the cached library.
    pub library_path: String,
    /// Its SHA-256 (hex), checked again before loading.
    pub library_hash: String,
    /// Function names, in index order.
    pub functions: Vec<String>,
    /// Cores to pin the workers to, one per worker.
    pub cores: Vec<u32>,
    /// Payload capacity of an input slot.
    pub input_capacity: u32,
    /// Output capacity.
    pub output_capacity: u32,
    /// Input slots per worker.
    pub slots: u32,
    /// Hot/warm policy.
    pub hot_timeout_ms: i64,
    /// Fabric provider.
    pub provider: Provider,
    /// Address to listen on (port 0: pick one).
    pub listen: String,
    /// Where to add billing: the manager's fabric address and the 16-byte record
    /// (execution ns, hot-polling ns) to fetch-add into. `None` disables billing.
    #[serde(default)]
    pub billing: Option<BillingTarget>,
    /// How long to wait for the client to connect every worker before giving up, ms.
    pub connect_timeout_ms: u64,
    /// The lease's deadline file ([`crate::executor::deadline`]): the executor stops when the
    /// deadline in it passes or it is removed. `None`: no lease (no resource manager).
    #[serde(default)]
    pub deadline_file: Option<String>,
    /// The allocation's assets, mapped by the executor and passed to the library's init function
    /// (called once, before the ready report).
    #[serde(default)]
    pub assets: Vec<ExecutorAsset>,
}

/// A billing record in the executor manager's registered memory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BillingTarget {
    /// Fabric address of the manager's billing listener.
    pub address: String,
    /// The record: address, rkey, length 16.
    pub addr: u64,
    /// Remote key.
    pub rkey: u32,
}

/// What an executor prints as the first line of its standard output once it is ready (or failed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecutorEvent {
    /// Listening; clients may connect.
    Ready {
        /// Fabric address clients connect to.
        address: String,
        /// Nanoseconds to load the library, resolve the functions and run its init function.
        code_load_ns: u64,
    },
    /// Could not start.
    Failed {
        /// Why.
        error: String,
    },
    /// The library's init function (`rfaas_init`) refused to start.
    InitFailed {
        /// The message it wrote (or what went wrong calling it).
        error: String,
    },
    /// A pooled executor (started with `RFAAS_EXECUTOR_STANDBY`) has exec'd, opened its
    /// fabric domain and listens: it waits for its configuration. Printed once, before anything
    /// else; the pool counts the process ready only from this line on.
    Standby {
        /// The fabric address it listens on (clients may connect before it is ready: their
        /// connection is accepted once it is).
        #[serde(default)]
        address: Option<String>,
    },
    /// Every worker is connected and the first invocation was answered (printed after
    /// [`ExecutorEvent::Ready`]): the manager starts a pooled replacement only now, so that the
    /// replacement's start does not compete for the cores with this cold start.
    Serving,
}

/// Private data a client sends when it connects a queue pair to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerConnect {
    /// The allocation token.
    pub token: [u8; TOKEN_LEN],
    /// Which worker.
    pub worker: u32,
}

impl WorkerConnect {
    /// Wire length (fits the 55 bytes verbs allows).
    pub const LEN: usize = TOKEN_LEN + 4;

    /// Encodes.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..TOKEN_LEN].copy_from_slice(&self.token);
        b[TOKEN_LEN..].copy_from_slice(&self.worker.to_le_bytes());
        b
    }

    /// Decodes; `None` when the length is wrong.
    pub fn decode(b: &[u8]) -> Option<WorkerConnect> {
        if b.len() != Self::LEN {
            return None;
        }
        let mut token = [0u8; TOKEN_LEN];
        token.copy_from_slice(&b[..TOKEN_LEN]);
        Some(WorkerConnect {
            token,
            worker: u32::from_le_bytes(b[TOKEN_LEN..].try_into().ok()?),
        })
    }
}

/// Private data a worker answers a connect with: where its input slots are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerAccept {
    /// The input region: `slots` slots of `stride` bytes each, slot `i` at `addr + i * stride`.
    pub input: crate::rdma::RemoteBuf,
    /// Bytes per slot (header plus input capacity).
    pub stride: u32,
    /// Slots.
    pub slots: u32,
}

impl WorkerAccept {
    /// Wire length.
    pub const LEN: usize = 24;

    /// Encodes.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..16].copy_from_slice(&self.input.to_bytes());
        b[16..20].copy_from_slice(&self.stride.to_le_bytes());
        b[20..].copy_from_slice(&self.slots.to_le_bytes());
        b
    }

    /// Decodes; `None` when the length is wrong.
    pub fn decode(b: &[u8]) -> Option<WorkerAccept> {
        if b.len() != Self::LEN {
            return None;
        }
        Some(WorkerAccept {
            input: crate::rdma::RemoteBuf::from_bytes(&b[..16])?,
            stride: u32::from_le_bytes(b[16..20].try_into().ok()?),
            slots: u32::from_le_bytes(b[20..].try_into().ok()?),
        })
    }
}
