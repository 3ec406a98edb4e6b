//! [`Registry`]: the allocations of an executor manager and the resources they hold.
//!
//! A pure state machine: no processes, no sockets, time passed in. The service drives it with
//! what happened (reserved, spawned, ready, stop asked, process exited) and acts on what it
//! answers. Life of an allocation:
//!
//! ```text
//! reserve ──▶ Starting ──ready──▶ Running ──stop──▶ Stopping
//!               │  │                 │                 │
//!               │  └─stop─▶ Stopping │                 │
//!          exited / failed      exited            exited
//!               ▼                    ▼                 ▼
//!             Failed               Exited           Released
//! ```
//!
//! Cores, memory and the billing record are held from `reserve` until the executor process is
//! gone ([`Registry::exited`]), or until a start that never produced a process fails
//! ([`Registry::start_failed`]): so a core is never given to a second allocation while a
//! process of the first may still run on it, and always comes back however the allocation
//! ends. Ended allocations are remembered (the last `keep_ended`) for status queries.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::cores::{CorePool, CoreShortage};
use super::memory::{MemoryPool, MemoryShortage};

/// Where an allocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reserved; the executor is being spawned or has not reported ready.
    Starting,
    /// The executor is ready (serving, or waiting for its client).
    Running,
    /// Asked to stop (released or manager shutdown); the executor has not exited yet.
    Stopping,
    /// Stopped on request; the executor exited.
    Released,
    /// The executor exited on its own (its client left, it crashed, it was killed by someone).
    Exited,
    /// The executor never became ready.
    Failed,
}

impl State {
    /// The name used in the API (`AllocationStatus::state`).
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Released => "released",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }

    /// Whether the allocation still holds its resources.
    pub fn is_live(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }
}

/// What an allocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Cores (one worker each).
    pub cores: u32,
    /// Bytes of memory charged (see [`super::memory::allocation_bytes`]).
    pub memory: u64,
    /// Who asked, for logs.
    pub client: String,
}

/// One allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Id, unique for the manager's lifetime.
    pub id: u64,
    /// Where it is.
    pub state: State,
    /// Its cores (kept after it ended, for status).
    pub cores: Vec<u32>,
    /// Memory charged.
    pub memory: u64,
    /// Index of its billing record.
    pub billing_slot: usize,
    /// Pid of its executor, once spawned.
    pub pid: Option<u32>,
    /// Who asked.
    pub client: String,
    /// When it was reserved.
    pub created: Instant,
    /// When it ended.
    pub ended: Option<Instant>,
    /// Why it ended ("exited with status 0", "killed by signal 9 (SIGKILL)", a start error).
    pub reason: Option<String>,
    /// What went wrong, as the executor or the manager reported it (a start failure, or a
    /// failure the executor announced later), until its process is reaped.
    pub error: Option<String>,
    /// Final billing (execution ns, hot-polling ns), once ended.
    pub billing: (u64, u64),
    /// It failed to start because the library's init function refused.
    pub init_failed: bool,
    /// The HTTP status its start failure would have had as an answer to its request.
    pub failure_status: Option<u16>,
}

impl Record {
    /// How long it held (or has held by `now`) its resources.
    pub fn held_for(&self, now: Instant) -> Duration {
        self.ended
            .unwrap_or(now)
            .saturating_duration_since(self.created)
    }
}

/// What was given back when an allocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freed {
    /// The allocation.
    pub id: u64,
    /// Its state now (ended).
    pub state: State,
    /// Cores back in the pool.
    pub cores: Vec<u32>,
    /// Bytes back.
    pub memory: u64,
    /// Its billing record, free again.
    pub billing_slot: usize,
}

/// A successful reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The new allocation's id.
    pub id: u64,
    /// Its cores.
    pub cores: Vec<u32>,
    /// Its billing record.
    pub billing_slot: usize,
}

/// What to do to stop an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopAction {
    /// Signal this process (it is now `Stopping`).
    Signal(u32),
    /// Reserved but no process yet: the starter will see `Stopping` and give up.
    NoProcessYet,
    /// Already stopping: wait for it.
    AlreadyStopping,
    /// Already ended, in this state.
    AlreadyEnded(State),
}

/// Refusals and lookups that fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// More cores than the manager has at all.
    #[error("{wanted} cores asked for, but this executor manager rents out only {total}")]
    TooManyCores {
        /// Asked.
        wanted: u32,
        /// Total.
        total: u32,
    },
    /// More memory than the manager has at all.
    #[error("the allocation needs {wanted} bytes of memory, but this executor manager rents out only {total}")]
    TooMuchMemory {
        /// Asked.
        wanted: u64,
        /// Total.
        total: u64,
    },
    /// Not enough free cores now.
    #[error("not enough free cores: {0}")]
    Cores(CoreShortage),
    /// Not enough free memory now.
    #[error("not enough free memory: {0}")]
    Memory(MemoryShortage),
    /// Too many live allocations.
    #[error("{live} allocations are live, the most this executor manager runs at once")]
    TooManyAllocations {
        /// Live now (= the limit).
        live: u32,
    },
    /// No such allocation (or forgotten long ago).
    #[error("no allocation {0}")]
    NotFound(u64),
    /// The allocation ended (or is being stopped) before it could become ready.
    #[error("allocation {id} is {}{}", state.name(), reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotLive {
        /// Which.
        id: u64,
        /// Its state.
        state: State,
        /// Why, if known.
        reason: Option<String>,
    },
}

/// The allocations of one executor manager and the cores, memory and billing records they hold.
#[derive(Debug)]
pub struct Registry {
    cores: CorePool,
    memory: MemoryPool,
    max_live: u32,
    keep_ended: usize,
    next_id: u64,
    billing_free: VecDeque<usize>,
    records: BTreeMap<u64, Record>,
    ended: VecDeque<u64>,
}

impl Registry {
    /// A registry renting out `cores` and `memory` bytes, with at most `max_live` live
    /// allocations (and as many billing records), remembering `keep_ended` ended ones.
    pub fn new(
        cores: impl IntoIterator<Item = u32>,
        memory: u64,
        max_live: u32,
        keep_ended: usize,
    ) -> Registry {
        Registry {
            cores: CorePool::new(cores),
            memory: MemoryPool::new(memory),
            max_live,
            keep_ended,
            next_id: 1,
            billing_free: (0..max_live as usize).collect(),
            records: BTreeMap::new(),
            ended: VecDeque::new(),
        }
    }

    /// The same registry with each core counting `per_core` times (see
    /// [`CorePool::oversubscribed`]; benchmarks only). Call it before any reservation.
    pub fn oversubscribed(mut self, per_core: u32) -> Registry {
        self.cores = CorePool::oversubscribed(self.cores.order(), per_core);
        self
    }

    /// The same registry, handing out ids from `first` on (see [`crate::control::ids`]).
    pub fn starting_at(mut self, first: u64) -> Registry {
        self.next_id = first.max(1);
        self
    }

    /// The core pool.
    pub fn cores(&self) -> &CorePool {
        &self.cores
    }

    /// The memory pool.
    pub fn memory(&self) -> &MemoryPool {
        &self.memory
    }

    /// Live allocations.
    pub fn live(&self) -> u32 {
        self.records.values().filter(|r| r.state.is_live()).count() as u32
    }

    /// One allocation.
    pub fn get(&self, id: u64) -> Option<&Record> {
        self.records.get(&id)
    }

    /// Every remembered allocation, by id.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// Reserves cores, memory and a billing record for a new allocation (all or nothing).
    pub fn reserve(&mut self, spec: Spec, now: Instant) -> Result<Reservation, RegistryError> {
        if spec.cores > self.cores.total() {
            return Err(RegistryError::TooManyCores {
                wanted: spec.cores,
                total: self.cores.total(),
            });
        }
        if spec.memory > self.memory.total() {
            return Err(RegistryError::TooMuchMemory {
                wanted: spec.memory,
                total: self.memory.total(),
            });
        }
        if spec.cores > self.cores.free() {
            return Err(RegistryError::Cores(CoreShortage {
                wanted: spec.cores,
                free: self.cores.free(),
                total: self.cores.total(),
            }));
        }
        if spec.memory > self.memory.free() {
            return Err(RegistryError::Memory(MemoryShortage {
                wanted: spec.memory,
                free: self.memory.free(),
                total: self.memory.total(),
            }));
        }
        let live = self.live();
        if live >= self.max_live {
            return Err(RegistryError::TooManyAllocations { live });
        }
        let id = self.next_id;
        let cores = self
            .cores
            .reserve(id, spec.cores)
            .map_err(RegistryError::Cores)?;
        self.memory.take(spec.memory).expect("memory checked above");
        let billing_slot = self
            .billing_free
            .pop_front()
            .expect("one billing record per live allocation");
        self.next_id += 1;
        self.records.insert(
            id,
            Record {
                id,
                state: State::Starting,
                cores: cores.clone(),
                memory: spec.memory,
                billing_slot,
                pid: None,
                client: spec.client,
                created: now,
                ended: None,
                reason: None,
                error: None,
                billing: (0, 0),
                init_failed: false,
                failure_status: None,
            },
        );
        Ok(Reservation {
            id,
            cores,
            billing_slot,
        })
    }

    /// The executor of `id` was spawned as `pid`.
    pub fn spawned(&mut self, id: u64, pid: u32) {
        if let Some(r) = self.records.get_mut(&id) {
            if r.state.is_live() {
                r.pid = Some(pid);
            }
        }
    }

    /// The executor reported ready: `Starting` becomes `Running`. Fails when the allocation was
    /// stopped or ended meanwhile.
    pub fn ready(&mut self, id: u64) -> Result<(), RegistryError> {
        let r = self
            .records
            .get_mut(&id)
            .ok_or(RegistryError::NotFound(id))?;
        match r.state {
            State::Starting => {
                r.state = State::Running;
                Ok(())
            }
            state => Err(RegistryError::NotLive {
                id,
                state,
                reason: r.reason.clone(),
            }),
        }
    }

    /// The start failed with `error`. Without a process the resources come back now; with one
    /// they come back when it has exited ([`Registry::exited`]), and the error becomes the reason.
    pub fn start_failed(&mut self, id: u64, error: &str, now: Instant) -> Option<Freed> {
        let r = self.records.get_mut(&id)?;
        if !r.state.is_live() {
            // Its process was reaped before the failure was recorded (its manager read the
            // report late): the report, not "exited before it was ready", is the reason.
            if r.state == State::Failed && r.error.is_none() {
                r.error = Some(error.to_string());
                r.reason = Some(error.to_string());
            }
            return None;
        }
        r.error = Some(error.to_string());
        if r.pid.is_some() {
            return None;
        }
        r.reason = Some(error.to_string());
        Some(self.end(id, State::Failed, (0, 0), now))
    }

    /// How the start of `id` failed: the HTTP `status` its request would have been answered
    /// with, and whether the library's init function refused (its status says so, for a client
    /// answered before the executor was ready). Call it before [`Registry::start_failed`].
    pub fn start_failure(&mut self, id: u64, status: u16, init_failed: bool) {
        if let Some(r) = self.records.get_mut(&id) {
            r.failure_status = Some(status);
            r.init_failed = init_failed;
        }
    }

    /// The executor of `id` reported a failure while running (e.g. its client never connected);
    /// it becomes part of the reason when the process exits.
    pub fn report_error(&mut self, id: u64, error: &str) {
        if let Some(r) = self.records.get_mut(&id) {
            if r.state.is_live() {
                r.error = Some(error.to_string());
            }
        }
    }

    /// Asks `id` to stop.
    pub fn stop(&mut self, id: u64) -> Result<StopAction, RegistryError> {
        let r = self
            .records
            .get_mut(&id)
            .ok_or(RegistryError::NotFound(id))?;
        Ok(match r.state {
            State::Starting | State::Running => {
                r.state = State::Stopping;
                match r.pid {
                    Some(pid) => StopAction::Signal(pid),
                    None => StopAction::NoProcessYet,
                }
            }
            State::Stopping => StopAction::AlreadyStopping,
            ended => StopAction::AlreadyEnded(ended),
        })
    }

    /// The executor of `id` is gone (`how`: "exited with status 0", "killed by signal 9
    /// (SIGKILL)"); `billing` is its final record. Gives its resources back at once.
    pub fn exited(
        &mut self,
        id: u64,
        how: &str,
        billing: (u64, u64),
        now: Instant,
    ) -> Option<Freed> {
        let r = self.records.get_mut(&id)?;
        let state = match r.state {
            State::Stopping => State::Released,
            State::Running => State::Exited,
            State::Starting => State::Failed,
            _ => return None,
        };
        r.reason = Some(match (&r.error, state) {
            // The library's own words, as its allocation request would have had them.
            (Some(e), _) if r.init_failed => e.clone(),
            (Some(e), _) => format!("{e} (executor {how})"),
            (None, State::Failed) => format!("executor {how} before it was ready"),
            (None, _) => how.to_string(),
        });
        Some(self.end(id, state, billing, now))
    }

    fn end(&mut self, id: u64, state: State, billing: (u64, u64), now: Instant) -> Freed {
        let r = self
            .records
            .get_mut(&id)
            .expect("ending a known allocation");
        r.state = state;
        r.ended = Some(now);
        r.billing = billing;
        let freed_cores = self.cores.release(id);
        debug_assert_eq!(freed_cores, r.cores);
        self.memory.give_back(r.memory);
        // Reused last (FIFO), so a late billing update cannot land in a new owner's record.
        self.billing_free.push_back(r.billing_slot);
        let freed = Freed {
            id,
            state,
            cores: freed_cores,
            memory: r.memory,
            billing_slot: r.billing_slot,
        };
        self.ended.push_back(id);
        while self.ended.len() > self.keep_ended {
            if let Some(old) = self.ended.pop_front() {
                self.records.remove(&old);
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cores: u32, memory: u64) -> Spec {
        Spec {
            cores,
            memory,
            client: "test".into(),
        }
    }

    #[test]
    fn normal_life_and_release() {
        let t0 = Instant::now();
        let mut reg = Registry::new(0..4, 1000, 8, 10);
        let a = reg.reserve(spec(2, 100), t0).unwrap();
        assert_eq!((a.id, a.cores.clone()), (1, vec![0, 1]));
        assert_eq!(reg.get(1).unwrap().state, State::Starting);
        reg.spawned(1, 4242);
        reg.ready(1).unwrap();
        assert_eq!(reg.get(1).unwrap().state.name(), "running");
        assert_eq!((reg.cores().free(), reg.memory().free()), (2, 900));
        assert_eq!(reg.stop(1), Ok(StopAction::Signal(4242)));
        assert_eq!(reg.stop(1), Ok(StopAction::AlreadyStopping));
        let t1 = t0 + Duration::from_secs(3);
        let freed = reg.exited(1, "exited with status 0", (7, 8), t1).unwrap();
        assert_eq!(
            (freed.state, freed.cores, freed.memory),
            (State::Released, vec![0, 1], 100)
        );
        let r = reg.get(1).unwrap();
        assert_eq!(
            (r.state, r.reason.as_deref(), r.billing),
            (State::Released, Some("exited with status 0"), (7, 8))
        );
        assert_eq!(
            r.held_for(t1 + Duration::from_secs(9)),
            Duration::from_secs(3)
        );
        assert_eq!(
            (reg.cores().free(), reg.memory().free(), reg.live()),
            (4, 1000, 0)
        );
        assert_eq!(reg.stop(1), Ok(StopAction::AlreadyEnded(State::Released)));
        assert_eq!(
            reg.exited(1, "again", (0, 0), t1),
            None,
            "a second exit changes nothing"
        );
        assert_eq!(reg.stop(99), Err(RegistryError::NotFound(99)));
    }

    #[test]
    fn crash_and_kill_return_cores_at_once() {
        let t = Instant::now();
        let mut reg = Registry::new(0..2, 1000, 8, 10);
        let a = reg.reserve(spec(2, 10), t).unwrap();
        reg.spawned(a.id, 1);
        reg.ready(a.id).unwrap();
        assert!(matches!(
            reg.reserve(spec(1, 10), t),
            Err(RegistryError::Cores(CoreShortage {
                wanted: 1,
                free: 0,
                total: 2
            }))
        ));
        let freed = reg
            .exited(a.id, "killed by signal 11 (SIGSEGV)", (0, 0), t)
            .unwrap();
        assert_eq!(freed.state, State::Exited);
        assert_eq!(
            reg.get(a.id).unwrap().reason.as_deref(),
            Some("killed by signal 11 (SIGSEGV)")
        );
        let b = reg.reserve(spec(2, 10), t).unwrap();
        assert_eq!(b.cores, vec![0, 1]);
        // A failure the executor announced while running is kept in the reason.
        reg.spawned(b.id, 2);
        reg.ready(b.id).unwrap();
        reg.report_error(b.id, "client connected 0 of 2 workers within 10s");
        reg.exited(b.id, "exited with status 1", (0, 0), t).unwrap();
        assert_eq!(
            reg.get(b.id).unwrap().reason.as_deref(),
            Some("client connected 0 of 2 workers within 10s (executor exited with status 1)")
        );
    }

    #[test]
    fn failed_starts_return_everything() {
        let t = Instant::now();
        let mut reg = Registry::new(0..2, 1000, 8, 10);
        // No process at all: freed at once.
        let a = reg.reserve(spec(1, 10), t).unwrap();
        let freed = reg.start_failed(a.id, "cannot spawn: ENOENT", t).unwrap();
        assert_eq!((freed.state, freed.cores), (State::Failed, vec![0]));
        // A process that reported failure: freed when it exits, with both reasons.
        let b = reg.reserve(spec(2, 10), t).unwrap();
        reg.spawned(b.id, 7);
        assert_eq!(reg.start_failed(b.id, "unknown function \"nope\"", t), None);
        assert_eq!(reg.cores().free(), 0, "held until the process is gone");
        let freed = reg.exited(b.id, "exited with status 1", (0, 0), t).unwrap();
        assert_eq!(freed.state, State::Failed);
        assert_eq!(
            reg.get(b.id).unwrap().reason.as_deref(),
            Some("unknown function \"nope\" (executor exited with status 1)")
        );
        // A process that died before it was ready, without a report.
        let c = reg.reserve(spec(1, 10), t).unwrap();
        reg.spawned(c.id, 8);
        reg.exited(c.id, "killed by signal 9 (SIGKILL)", (0, 0), t)
            .unwrap();
        assert_eq!(
            reg.get(c.id).unwrap().reason.as_deref(),
            Some("executor killed by signal 9 (SIGKILL) before it was ready")
        );
        assert!(matches!(
            reg.ready(c.id),
            Err(RegistryError::NotLive {
                state: State::Failed,
                ..
            })
        ));
        // Stopped while starting: ready() refuses, exit makes it released.
        let d = reg.reserve(spec(1, 10), t).unwrap();
        assert_eq!(reg.stop(d.id), Ok(StopAction::NoProcessYet));
        assert!(matches!(
            reg.ready(d.id),
            Err(RegistryError::NotLive {
                state: State::Stopping,
                ..
            })
        ));
        reg.start_failed(d.id, "manager shutting down", t).unwrap();
        assert_eq!(
            (reg.cores().free(), reg.memory().free(), reg.live()),
            (2, 1000, 0)
        );
    }

    #[test]
    fn limits_and_billing_slots() {
        let t = Instant::now();
        let mut reg = Registry::new(0..8, 100, 2, 1);
        assert_eq!(
            reg.reserve(spec(9, 1), t),
            Err(RegistryError::TooManyCores {
                wanted: 9,
                total: 8
            })
        );
        assert_eq!(
            reg.reserve(spec(1, 101), t),
            Err(RegistryError::TooMuchMemory {
                wanted: 101,
                total: 100
            })
        );
        let a = reg.reserve(spec(1, 60), t).unwrap();
        assert!(matches!(
            reg.reserve(spec(1, 50), t),
            Err(RegistryError::Memory(_))
        ));
        let b = reg.reserve(spec(1, 40), t).unwrap();
        assert_ne!(a.billing_slot, b.billing_slot);
        assert_eq!(
            reg.reserve(spec(1, 0), t),
            Err(RegistryError::TooManyAllocations { live: 2 })
        );
        assert_eq!(reg.cores().free(), 6, "refusals take nothing");
        reg.spawned(a.id, 1);
        reg.exited(a.id, "exited with status 0", (0, 0), t).unwrap();
        let c = reg.reserve(spec(1, 0), t).unwrap();
        assert_ne!(c.billing_slot, b.billing_slot);
        // keep_ended = 1: the oldest ended record is forgotten.
        reg.spawned(b.id, 2);
        reg.exited(b.id, "exited with status 0", (0, 0), t).unwrap();
        assert!(reg.get(a.id).is_none() && reg.get(b.id).is_some());
        assert_eq!(reg.stop(a.id), Err(RegistryError::NotFound(a.id)));
    }
}
