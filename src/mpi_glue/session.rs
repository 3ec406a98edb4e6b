//! [`Session`]: leases shared by the ranks of an MPI job, and [`offload`] from any rank.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::{Deserialize, Serialize};

use super::collective::{all_flags, gather_bytes, scatter_bytes};
use super::plan::divide;
use super::report::{RankReport, SessionReport};
use super::SessionError;
use crate::bench::stats::Latencies;
use crate::client::{
    AllocationSpec, AnyExecutor, ClientError, ClientOptions, Cluster, Executor, FunctionId,
    InvokeError, Lease, LeaseOptions, ManagerClient, Pending,
};
use crate::control::executor_manager_api::Allocation;
use crate::rdma::{Fabric, FabricUser, Provider};

/// How a session is set up (the same on every rank; rank 0 reads the library).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// cluster.json (default: `$RFAAS_CLUSTER`).
    pub cluster: Option<PathBuf>,
    /// The function library, read by rank 0 only.
    pub library: PathBuf,
    /// Function names; [`Session::function`] resolves them.
    pub functions: Vec<String>,
    /// Workers (cores) per rank.
    pub cores_per_rank: u32,
    /// Largest input, bytes.
    pub input_capacity: u32,
    /// Largest output, bytes.
    pub output_capacity: u32,
    /// Invocations in flight per worker (1..=256).
    pub slots: u32,
    /// -1 always hot, 0 always warm, > 0 hot for that many ms after each invocation.
    pub hot_timeout_ms: i64,
    /// Timeouts and spinning of this rank's calls.
    pub options: ClientOptions,
    /// The job's lease (split over nodes allowed by default; renewed while the session lives).
    pub lease: LeaseOptions,
    /// Time every offload into the rank's histogram (two clock reads per call, ~50 ns); off
    /// for callers that time calls themselves, such as `scalable_benchmark`.
    pub record_latency: bool,
}

impl SessionConfig {
    /// One core per rank, 4 KiB in and out, 4 slots, hot for 100 ms after work, a lease that
    /// may span nodes.
    pub fn new(library: impl Into<PathBuf>, functions: &[&str]) -> SessionConfig {
        SessionConfig {
            cluster: None,
            library: library.into(),
            functions: functions.iter().map(|s| s.to_string()).collect(),
            cores_per_rank: 1,
            input_capacity: 4096,
            output_capacity: 4096,
            slots: 4,
            hot_timeout_ms: 100,
            options: ClientOptions::default(),
            lease: LeaseOptions {
                allow_split: true,
                ..LeaseOptions::default()
            },
            record_latency: true,
        }
    }

    fn spec(&self, library: Vec<u8>) -> AllocationSpec {
        let names: Vec<&str> = self.functions.iter().map(String::as_str).collect();
        let mut s = AllocationSpec::new(library, &names);
        s.input_capacity = self.input_capacity;
        s.output_capacity = self.output_capacity;
        s.slots = self.slots;
        s.hot_timeout_ms = self.hot_timeout_ms;
        s
    }
}

/// One allocation of a rank, as rank 0 scatters it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Assigned {
    node: String,
    allocation: Allocation,
}

/// What rank 0 sends each rank: its allocations, or why there are none.
type Assignment = Result<Vec<Assigned>, String>;

/// One worker of this rank: where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlace {
    /// Node (executor manager) name.
    pub node: String,
    /// Executor-manager address of the allocation.
    pub address: String,
    /// Allocation id on that node.
    pub allocation: u64,
    /// Worker index within the allocation.
    pub worker: usize,
    /// The core it is pinned to.
    pub core: u32,
}

/// What rank 0 holds for the job: the lease, and every allocation to end at the finish.
struct Leader {
    lease: Lease,
    /// (rank, its manager, allocation id, allocation token).
    allocations: Vec<(i32, ManagerClient, u64, String)>,
}

impl Leader {
    fn end(self) -> Vec<(i32, u64, u64)> {
        let billing = self
            .allocations
            .iter()
            .map(|(rank, m, id, token)| {
                let b = m.allocation(*id).ok();
                if let Err(e) = m.deallocate(*id, token) {
                    tracing::warn!("ending allocation {id} of rank {rank}: {e}");
                }
                (
                    *rank,
                    b.as_ref().map_or(0, |s| s.execution_ns),
                    b.as_ref().map_or(0, |s| s.hot_polling_ns),
                )
            })
            .collect();
        if let Err(e) = self.lease.release() {
            tracing::warn!("releasing the session's lease: {e}");
        }
        billing
    }
}

/// Connects to every assigned allocation over the cluster's provider.
struct ConnectAll<'a> {
    assigned: &'a [Assigned],
    spec: &'a AllocationSpec,
    opts: ClientOptions,
}

impl FabricUser for ConnectAll<'_> {
    type Output = Result<Vec<Box<dyn AnyExecutor>>, ClientError>;
    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let mut spec = self.spec.clone();
        self.assigned
            .iter()
            .map(|a| {
                spec.cores = a.allocation.workers.len() as u32;
                let e = Executor::connect(
                    fabric.clone(),
                    None,
                    a.allocation.clone(),
                    &spec,
                    None,
                    self.opts,
                )?;
                Ok(Box::new(e) as Box<dyn AnyExecutor>)
            })
            .collect()
    }
}

/// An offload in flight, from [`offload_async`]; collect it with [`Session::wait`] or
/// [`Session::poll`].
#[derive(Debug)]
#[must_use = "wait for the result, or its slot stays busy"]
pub struct Offload {
    exec: usize,
    pending: Pending,
    start: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    latency: Latencies,
    invocations: u64,
    errors: u64,
    failure: Option<String>,
}

/// The ranks of a job sharing leases: see the [module docs](super).
pub struct Session {
    comm: SimpleCommunicator,
    rank: i32,
    size: i32,
    provider: Provider,
    functions: Vec<String>,
    execs: Vec<Box<dyn AnyExecutor>>,
    nodes: Vec<String>,
    next: Cell<usize>,
    counters: RefCell<Counters>,
    leader: Option<Leader>,
    lease_id: u64,
    setup: Duration,
    record_latency: bool,
}

impl Session {
    /// Sets the session up on every rank of `comm` (collective): rank 0 leases and allocates,
    /// every rank connects to its own workers. Every rank returns the same kind of result: all
    /// succeed, or all fail (with rank 0's error, or the list of ranks that could not connect).
    pub fn start<C: Communicator>(comm: &C, cfg: &SessionConfig) -> Result<Session, SessionError> {
        let t0 = Instant::now();
        let comm = comm.duplicate();
        let (rank, size) = (comm.rank(), comm.size());
        // Every rank reads the cluster file (for the provider); only rank 0 talks to the
        // resource manager and the executor managers.
        let cluster = Cluster::open(cfg.cluster.as_deref());
        let mut leader = None;
        let mine: Assignment = if rank == 0 {
            let plan = match &cluster {
                Ok(c) => lead(c, cfg, size as usize),
                Err(e) => Err(SessionError::Client(ClientError::Config(e.to_string()))),
            };
            let parts: Vec<Vec<u8>> = match plan {
                Ok((l, per_rank)) => {
                    leader = Some(l);
                    per_rank.iter().map(|a| encode(&Ok(a.clone()))).collect()
                }
                Err(e) => vec![encode(&Err(e.to_string())); size as usize],
            };
            decode(&scatter_bytes(&comm, 0, Some(&parts))?)?
        } else {
            decode(&scatter_bytes(&comm, 0, None)?)?
        };
        let assigned = mine.map_err(SessionError::Leader)?;
        // From here on every rank must reach the Allgather below, whatever fails locally.
        let spec = cfg.spec(Vec::new());
        let connected = cluster.as_ref().map_err(|e| e.to_string()).and_then(|c| {
            c.provider
                .run(ConnectAll {
                    assigned: &assigned,
                    spec: &spec,
                    opts: cfg.options,
                })
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        });
        let (execs, own) = match connected {
            Ok(e) => (e, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let ok = all_flags(&comm, own.is_none());
        let provider = match (&cluster, ok.iter().all(|&f| f)) {
            (Ok(c), true) => c.provider,
            _ => {
                drop(execs);
                if let Some(l) = leader {
                    l.end();
                }
                let ranks = (0..size).filter(|&r| !ok[r as usize]).collect();
                return Err(SessionError::Peers { ranks, own });
            }
        };
        let lease_id = leader.as_ref().map_or(0, |l| l.lease.id());
        Ok(Session {
            rank,
            size,
            provider,
            functions: cfg.functions.clone(),
            nodes: assigned.iter().map(|a| a.node.clone()).collect(),
            execs,
            next: Cell::new(0),
            counters: RefCell::new(Counters::default()),
            leader,
            lease_id,
            setup: t0.elapsed(),
            record_latency: cfg.record_latency,
            comm,
        })
    }

    /// This rank.
    pub fn rank(&self) -> i32 {
        self.rank
    }

    /// Ranks in the session.
    pub fn size(&self) -> i32 {
        self.size
    }

    /// The session's own communicator (a duplicate of the one it started on): use it for the
    /// application's collectives about offloaded work, never inside an offload.
    pub fn comm(&self) -> &SimpleCommunicator {
        &self.comm
    }

    /// The provider the workers speak.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// How long [`Session::start`] took on this rank.
    pub fn setup_time(&self) -> Duration {
        self.setup
    }

    /// This rank's workers.
    pub fn workers(&self) -> Vec<WorkerPlace> {
        self.execs
            .iter()
            .zip(&self.nodes)
            .flat_map(|(e, node)| {
                let a = e.allocation();
                a.workers.iter().map(move |w| WorkerPlace {
                    node: node.clone(),
                    address: a.address.clone(),
                    allocation: a.id,
                    worker: w.index as usize,
                    core: w.core,
                })
            })
            .collect()
    }

    /// The id of a function of the session.
    pub fn function(&self, name: &str) -> Result<FunctionId, InvokeError> {
        self.functions
            .iter()
            .position(|f| f == name)
            .map(|i| FunctionId(i as u16))
            .ok_or_else(|| {
                InvokeError::Invalid(format!("function {name:?} is not part of this session"))
            })
    }

    /// Which executor, and which of its workers, is worker `worker` of [`Session::workers`].
    fn locate(&self, worker: usize) -> Result<(usize, usize), InvokeError> {
        if let Some(f) = &self.counters.borrow().failure {
            return Err(InvokeError::ExecutorGone(f.clone()));
        }
        let mut w = worker;
        for (i, e) in self.execs.iter().enumerate() {
            let n = e.allocation().workers.len();
            if w < n {
                return Ok((i, w));
            }
            w -= n;
        }
        Err(InvokeError::Invalid(format!(
            "this rank has no worker {worker} (it has {})",
            worker - w
        )))
    }

    /// The next worker in turn (round-robin over [`Session::workers`]).
    fn pick(&self) -> Result<(usize, usize), InvokeError> {
        let total: usize = self
            .execs
            .iter()
            .map(|e| e.allocation().workers.len())
            .sum();
        if total == 0 {
            return Err(InvokeError::Invalid("this rank has no workers".into()));
        }
        let i = self.next.get();
        self.next.set(i.wrapping_add(1));
        self.locate(i % total)
    }

    fn clock(&self) -> Option<Instant> {
        self.record_latency.then(Instant::now)
    }

    fn account<T>(&self, start: Option<Instant>, r: &Result<T, InvokeError>) {
        let mut c = self.counters.borrow_mut();
        match r {
            Ok(_) => {
                if let Some(t) = start {
                    c.latency.record(t.elapsed());
                }
                c.invocations += 1;
            }
            Err(e) => {
                c.errors += 1;
                if matches!(e, InvokeError::ExecutorGone(_)) && c.failure.is_none() {
                    tracing::error!("rank {}: {e}", self.rank);
                    c.failure = Some(e.to_string());
                }
            }
        }
    }

    /// Runs `function` on `input` on one of this rank's workers and waits for the result,
    /// which is copied into `output`; returns its length. No MPI call.
    pub fn offload(
        &self,
        function: &str,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, InvokeError> {
        let f = self.function(function)?;
        self.offload_id(f, input, output)
    }

    /// [`Session::offload`] with a resolved function (saves the name lookup on hot paths).
    pub fn offload_id(
        &self,
        f: FunctionId,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, InvokeError> {
        self.invoke_at(self.pick(), f, input, output)
    }

    /// [`Session::offload_id`] on worker `worker` of [`Session::workers`] (e.g. to know which
    /// worker served each call).
    pub fn offload_on(
        &self,
        worker: usize,
        f: FunctionId,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, InvokeError> {
        self.invoke_at(self.locate(worker), f, input, output)
    }

    fn invoke_at(
        &self,
        at: Result<(usize, usize), InvokeError>,
        f: FunctionId,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, InvokeError> {
        let start = self.clock();
        let r = at.and_then(|(e, w)| self.execs[e].invoke_on(w, f, input, output));
        self.account(start, &r);
        r
    }

    /// Posts `function` on `input` and returns at once ([`InvokeError::Busy`] when every slot
    /// of the chosen worker holds a call: wait for one first).
    pub fn offload_async(
        &self,
        function: &str,
        input: &[u8],
        output_len: usize,
    ) -> Result<Offload, InvokeError> {
        let f = self.function(function)?;
        self.submit_at(self.pick()?, f, input, output_len)
    }

    /// [`Session::offload_async`] on worker `worker` of [`Session::workers`].
    pub fn offload_async_on(
        &self,
        worker: usize,
        f: FunctionId,
        input: &[u8],
        output_len: usize,
    ) -> Result<Offload, InvokeError> {
        self.submit_at(self.locate(worker)?, f, input, output_len)
    }

    fn submit_at(
        &self,
        (exec, worker): (usize, usize),
        f: FunctionId,
        input: &[u8],
        output_len: usize,
    ) -> Result<Offload, InvokeError> {
        let start = self.clock();
        match self.execs[exec].submit(Some(worker), f, input, output_len) {
            Ok(pending) => Ok(Offload {
                exec,
                pending,
                start,
            }),
            Err(e) => {
                self.account::<()>(start, &Err(e.clone()));
                Err(e)
            }
        }
    }

    /// Waits for an offload from [`Session::offload_async`]; copies its result into `output`.
    pub fn wait(&self, o: Offload, output: &mut [u8]) -> Result<usize, InvokeError> {
        let r = self.execs[o.exec].wait(o.pending, output);
        self.account(o.start, &r);
        r
    }

    /// The result of an offload if it has arrived (`Ok(None)` while it runs).
    pub fn poll(&self, o: &Offload, output: &mut [u8]) -> Result<Option<usize>, InvokeError> {
        let r = self.execs[o.exec].poll(&o.pending, output);
        match &r {
            Ok(None) => {}
            Ok(Some(n)) => self.account(o.start, &Ok(*n)),
            Err(e) => self.account::<()>(o.start, &Err(e.clone())),
        }
        r
    }

    /// Ends the session on every rank (collective): disconnects, gathers every rank's counts
    /// and HDR histogram to rank 0, which adds the billing, ends the allocations and releases
    /// the lease. Rank 0 gets the report; the other ranks `None`.
    pub fn finish(mut self) -> Result<Option<SessionReport>, SessionError> {
        let workers = self.workers().len();
        self.execs.clear();
        let c = std::mem::take(&mut *self.counters.borrow_mut());
        let mine = RankReport {
            rank: self.rank,
            nodes: self.nodes.clone(),
            workers,
            invocations: c.invocations,
            errors: c.errors,
            failure: c.failure,
            latency: c.latency,
            execution_ns: 0,
            hot_polling_ns: 0,
        };
        let bytes = serde_json::to_vec(&mine).map_err(|e| SessionError::Mpi(e.to_string()))?;
        let gathered = gather_bytes(&self.comm, 0, &bytes)?;
        let Some(all) = gathered else {
            return Ok(None);
        };
        let mut ranks = all
            .iter()
            .map(|b| {
                serde_json::from_slice::<RankReport>(b)
                    .map_err(|e| SessionError::Mpi(format!("a rank's report: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(l) = self.leader.take() {
            for (rank, exec_ns, hot_ns) in l.end() {
                if let Some(r) = ranks.get_mut(rank as usize) {
                    r.execution_ns += exec_ns;
                    r.hot_polling_ns += hot_ns;
                }
            }
        }
        let mut total = Latencies::new();
        for r in &ranks {
            total.merge(&r.latency);
        }
        Ok(Some(SessionReport {
            ranks,
            total,
            lease: self.lease_id,
        }))
    }
}

impl Drop for Session {
    /// A session dropped without [`Session::finish`] (an error path): rank 0 still ends the
    /// allocations and releases the lease, without MPI.
    fn drop(&mut self) {
        self.execs.clear();
        if let Some(l) = self.leader.take() {
            l.end();
        }
    }
}

/// Rank 0: lease the job's cores, allocate per rank and node, return each rank's share.
fn lead(
    cluster: &Cluster,
    cfg: &SessionConfig,
    ranks: usize,
) -> Result<(Leader, Vec<Vec<Assigned>>), SessionError> {
    let library = std::fs::read(&cfg.library).map_err(|e| {
        SessionError::Client(ClientError::Config(format!(
            "read library {}: {e}",
            cfg.library.display()
        )))
    })?;
    let per_rank = cfg.cores_per_rank;
    let total = per_rank
        .checked_mul(ranks as u32)
        .ok_or_else(|| SessionError::Leader("too many cores".into()))?;
    let lease = cluster.lease(total, &cfg.lease)?;
    let parts = lease.parts().to_vec();
    let cores: Vec<u32> = parts.iter().map(|p| p.cores).collect();
    let plan = divide(&cores, ranks, per_rank)?;
    let mut spec = cfg.spec(library);
    spec.lease = Some(lease.allocation_lease());
    let mut leader = Leader {
        lease,
        allocations: Vec::new(),
    };
    // Upload the library once per node, then allocate every rank's pieces, a few at a time
    // (each spawns an executor process).
    let managers: Vec<ManagerClient> = parts
        .iter()
        .map(|p| cluster.manager_at(&p.address))
        .collect();
    for m in &managers {
        m.upload_for(&spec)?;
    }
    let jobs: Vec<(i32, usize, u32)> = plan
        .iter()
        .enumerate()
        .flat_map(|(r, pieces)| pieces.iter().map(move |p| (r as i32, p.part, p.cores)))
        .collect();
    let results: Vec<(i32, usize, Result<Allocation, ClientError>)> = std::thread::scope(|s| {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(8) {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&(rank, part, cores)| {
                    let mut spec = spec.clone();
                    spec.cores = cores;
                    let m = &managers[part];
                    s.spawn(move || {
                        let client = format!("mpi rank {rank} of pid {}", std::process::id());
                        (rank, part, m.allocate(&spec.request(client)))
                    })
                })
                .collect();
            out.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().expect("allocation thread")),
            );
        }
        out
    });
    let mut per_rank_assigned: Vec<Vec<Assigned>> = vec![Vec::new(); ranks];
    let mut first_error = None;
    for (rank, part, r) in results {
        match r {
            Ok(a) => {
                leader
                    .allocations
                    .push((rank, managers[part].clone(), a.id, a.token.clone()));
                per_rank_assigned[rank as usize].push(Assigned {
                    node: parts[part].node.clone(),
                    allocation: a,
                });
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        leader.end();
        return Err(e.into());
    }
    tracing::info!(
        "session: lease {} of {total} cores over {} node(s) for {ranks} ranks",
        leader.lease.id(),
        parts.len()
    );
    Ok((leader, per_rank_assigned))
}

fn encode(a: &Assignment) -> Vec<u8> {
    serde_json::to_vec(a).expect("assignments serialise")
}

fn decode(b: &[u8]) -> Result<Assignment, SessionError> {
    serde_json::from_slice(b)
        .map_err(|e| SessionError::Mpi(format!("bad assignment from rank 0: {e}")))
}

/// Runs `function` on `input` on one of the calling rank's workers and waits for the result
/// (copied into `output`; returns its length). No MPI traffic: see [`Session::offload`].
pub fn offload(
    session: &Session,
    function: &str,
    input: &[u8],
    output: &mut [u8],
) -> Result<usize, InvokeError> {
    session.offload(function, input, output)
}

/// Posts `function` on `input` from the calling rank and returns at once: see
/// [`Session::offload_async`], then [`Session::wait`].
pub fn offload_async(
    session: &Session,
    function: &str,
    input: &[u8],
    output_len: usize,
) -> Result<Offload, InvokeError> {
    session.offload_async(function, input, output_len)
}
