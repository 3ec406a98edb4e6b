//! Where a benchmark's client thread runs: never on a core of its own workers.
//!
//! A busy-polling client on the core of the busy-polling worker it calls halves both (on a
//! two-core VM the hot p50 of `warm_benchmark` went from about 1 µs to 456 µs), so the
//! invocation benchmarks pin their client only after they know their workers' cores (from the
//! allocation), to a core of their cpuset that none of those workers uses. Every placement is
//! printed on stderr: each worker's core, then the client's, so a run says where each thread
//! ran. On a real cluster the workers are on other nodes and avoiding their core numbers costs
//! nothing.

use crate::pin;

/// What [`choose_client_core`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCore {
    /// Pin the client to this core, which none of its workers uses.
    Free(usize),
    /// Pin it to the core the user asked for; `shared` when a worker runs there too.
    Requested {
        /// The core asked for (`--client-core`).
        core: usize,
        /// Whether one of the client's own workers runs on it.
        shared: bool,
    },
    /// Every core of the cpuset runs one of its workers: leave the client unpinned.
    NoFreeCore,
}

/// Chooses the client's core: `requested` when given; else, among the cores of `cpuset` that
/// none of `workers` runs on, the `offset`-th counted down from the last one (`offset` is the
/// local rank of an MPI process, 0 otherwise), so that several clients on one node spread out.
pub fn choose_client_core(
    cpuset: &[usize],
    workers: &[usize],
    requested: Option<usize>,
    offset: usize,
) -> ClientCore {
    if let Some(core) = requested {
        return ClientCore::Requested {
            core,
            shared: workers.contains(&core),
        };
    }
    let free: Vec<usize> = cpuset
        .iter()
        .copied()
        .filter(|c| !workers.contains(c))
        .collect();
    match free.len() {
        0 => ClientCore::NoFreeCore,
        n => ClientCore::Free(free[n - 1 - offset % n]),
    }
}

/// One worker as the placement reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCore {
    /// Executor manager (node) name.
    pub node: String,
    /// Worker index within its allocation.
    pub worker: usize,
    /// The core it is pinned to (on its node).
    pub core: usize,
}

/// The client thread's placement over a run (its cpuset is taken once, before any pinning).
#[derive(Debug, Clone)]
pub struct ClientPlacement {
    label: String,
    cpuset: Vec<usize>,
    requested: Option<usize>,
    offset: usize,
    current: Option<usize>,
}

impl ClientPlacement {
    /// A placement for the calling thread; `label` prefixes its stderr lines (for example
    /// `warm_benchmark` or `scalable_benchmark rank 3`), `requested` is `--client-core`.
    pub fn new(label: &str, requested: Option<usize>, offset: usize) -> Self {
        ClientPlacement {
            label: label.to_string(),
            cpuset: pin::allowed_cores(),
            requested,
            offset,
            current: None,
        }
    }

    /// The core the client is pinned to, if it is.
    pub fn core(&self) -> Option<usize> {
        self.current
    }

    /// Pins the calling thread away from `workers` and prints where every thread runs.
    pub fn place(&mut self, workers: &[WorkerCore]) {
        for w in workers {
            eprintln!(
                "[{}] worker {} of {} runs on core {}",
                self.label, w.worker, w.node, w.core
            );
        }
        let cores: Vec<usize> = workers.iter().map(|w| w.core).collect();
        let choice = choose_client_core(&self.cpuset, &cores, self.requested, self.offset);
        let (core, note) = match choice {
            ClientCore::Free(core) => (core, String::new()),
            ClientCore::Requested { core, shared } => (
                core,
                if shared {
                    " as --client-core asks, although one of its own workers runs there".to_string()
                } else {
                    " as --client-core asks".to_string()
                },
            ),
            ClientCore::NoFreeCore => {
                self.current = None;
                eprintln!(
                    "[{}] client thread not pinned: every core of its cpuset ({}) runs one of \
                     its own workers; it runs on core {} now",
                    self.label,
                    list(&self.cpuset),
                    pin::current_core().map_or("?".to_string(), |c| c.to_string())
                );
                return;
            }
        };
        match pin::pin_current_thread_within(core, &self.cpuset) {
            Ok(()) => {
                self.current = Some(core);
                eprintln!(
                    "[{}] client thread pinned to core {core}{note} (cpuset {}, its workers' \
                     cores {})",
                    self.label,
                    list(&self.cpuset),
                    list(&cores)
                );
            }
            Err(e) => {
                self.current = None;
                eprintln!("[{}] client thread not pinned: {e}", self.label);
            }
        }
    }

    /// Moves the client when it is pinned to one of `workers`' cores (or not placed yet);
    /// prints only when it moves. For benchmarks that allocate anew while they measure.
    pub fn keep_clear_of(&mut self, workers: &[WorkerCore]) {
        let clash = match self.current {
            Some(c) => workers.iter().any(|w| w.core == c),
            None => true,
        };
        // A core the user asked for stays, clash or not (placed once, with its warning).
        let kept = self.requested.is_some() && self.current.is_some();
        if clash && !kept {
            self.place(workers);
        }
    }
}

fn list(cores: &[usize]) -> String {
    if cores.is_empty() {
        return "none".into();
    }
    cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_never_lands_on_its_workers() {
        // The case: two one-core nodes, the worker on the last core.
        assert_eq!(
            choose_client_core(&[0, 1], &[1], None, 0),
            ClientCore::Free(0)
        );
        assert_eq!(
            choose_client_core(&[0, 1], &[0], None, 0),
            ClientCore::Free(1)
        );
        assert_eq!(
            choose_client_core(&[0, 1, 2, 3], &[3], None, 0),
            ClientCore::Free(2)
        );
        // Local ranks count down over the free cores.
        assert_eq!(
            choose_client_core(&[0, 1, 2, 3], &[3], None, 1),
            ClientCore::Free(1)
        );
        assert_eq!(
            choose_client_core(&[0, 1, 2, 3], &[3], None, 3),
            ClientCore::Free(2)
        );
        assert_eq!(
            choose_client_core(&[1], &[1], None, 0),
            ClientCore::NoFreeCore
        );
        assert_eq!(
            choose_client_core(&[], &[], None, 0),
            ClientCore::NoFreeCore
        );
    }

    #[test]
    fn a_requested_core_is_kept_and_a_clash_is_named() {
        assert_eq!(
            choose_client_core(&[0, 1], &[1], Some(1), 0),
            ClientCore::Requested {
                core: 1,
                shared: true
            }
        );
        assert_eq!(
            choose_client_core(&[0, 1], &[1], Some(0), 0),
            ClientCore::Requested {
                core: 0,
                shared: false
            }
        );
    }
}
