//! Pinning threads to cores.
//!
//! Threads are bound with `sched_setaffinity`, only inside the cpuset the process was started with
//! (the one Slurm or taskset gave it). Core numbers are OS CPU indices. Which cores to use is the
//! executor manager's choice, made with hwloc when the `hwloc` feature is on (nearest the NIC:
//! [`crate::executor_manager::topology`]); binding one thread to one core needs no topology, and loading
//! one costs an executor 3–8 ms that its first invocation would wait for.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Pinning failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The core is not in this process's allowed set.
    #[error("core {core} is not in this process's cpuset {allowed:?}")]
    NotAllowed {
        /// The core asked for.
        core: usize,
        /// The cores this process may use.
        allowed: Vec<usize>,
    },
    /// The system call failed.
    #[error("sched_setaffinity: {0}")]
    Os(#[from] nix::Error),
    /// This process's threads could not be listed (`/proc/self/task`).
    #[error("list this process's threads: {0}")]
    Threads(std::io::Error),
}

/// The cores this process may run on, in ascending order.
pub fn allowed_cores() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: usize) -> Result<(), PinError> {
    let allowed = allowed_cores();
    if !allowed.contains(&core) {
        return Err(PinError::NotAllowed { core, allowed });
    }
    bind(core)
}

/// Pins the calling thread to `core`, checked against `cpuset` (the cores the thread was allowed
/// before it was first pinned) rather than its current affinity: moves a pinned thread.
pub fn pin_current_thread_within(core: usize, cpuset: &[usize]) -> Result<(), PinError> {
    if !cpuset.contains(&core) {
        return Err(PinError::NotAllowed {
            core,
            allowed: cpuset.to_vec(),
        });
    }
    bind(core)
}

/// Binds the calling thread to the set of `cores` (any of them; cores beyond what a CPU set
/// holds are left out, and nothing happens when none is left).
pub fn bind_current_thread_to(cores: impl IntoIterator<Item = usize>) -> Result<(), PinError> {
    if let Some(set) = cpu_set(cores) {
        sched_setaffinity(Pid::from_raw(0), &set)?;
    }
    Ok(())
}

/// The CPU set of `cores` (cores beyond what a CPU set holds are left out); `None` when none
/// is left.
fn cpu_set(cores: impl IntoIterator<Item = usize>) -> Option<CpuSet> {
    let mut set = CpuSet::new();
    let mut any = false;
    for c in cores {
        any |= set.set(c).is_ok();
    }
    any.then_some(set)
}

/// Most passes over the thread list of [`bind_other_threads_to`].
const BIND_PASSES: usize = 8;

/// Binds every other thread of this process to the set of `cores` (nothing happens when `cores`
/// holds none a CPU set can): the whole process, so only for a process that is ours alone (an
/// executor), never a host that embeds this library. The thread list is read again until a
/// pass finds no thread it had not bound (a thread started meanwhile by one not yet bound kept
/// the old binding), at most [`BIND_PASSES`] times; threads that end meanwhile are skipped.
/// Threads started later inherit their creator's binding. Returns how many threads besides the
/// caller it found, or the first error after trying every one.
pub fn bind_other_threads_to(cores: impl IntoIterator<Item = usize>) -> Result<usize, PinError> {
    let Some(set) = cpu_set(cores) else {
        return Ok(0);
    };
    let me = nix::unistd::gettid().as_raw();
    let mut done = std::collections::BTreeSet::from([me]);
    let mut first_error = None;
    for _ in 0..BIND_PASSES {
        let tasks = std::fs::read_dir("/proc/self/task").map_err(PinError::Threads)?;
        let tids: Vec<i32> = tasks
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|t| t.parse().ok()))
            .filter(|tid| !done.contains(tid))
            .collect();
        if tids.is_empty() {
            break;
        }
        for tid in tids {
            done.insert(tid);
            match sched_setaffinity(Pid::from_raw(tid), &set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {} // ESRCH: ended meanwhile
                Err(e) => {
                    first_error.get_or_insert(PinError::Os(e));
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(done.len() - 1),
    }
}

fn bind(core: usize) -> Result<(), PinError> {
    let mut set = CpuSet::new();
    set.set(core)?;
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

/// The core the calling thread runs on right now.
pub fn current_core() -> Option<usize> {
    // sched_getcpu is not in nix; read it from /proc/thread-self/stat
    // (field 39) to stay in safe code.
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(36)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_to_an_allowed_core_and_rejects_others() {
        let allowed = allowed_cores();
        assert!(!allowed.is_empty());
        let core = *allowed.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(core).unwrap();
            for _ in 0..1000 {
                std::hint::spin_loop();
            }
            assert_eq!(current_core(), Some(core));
        })
        .join()
        .unwrap();
        assert!(matches!(
            pin_current_thread(100_000),
            Err(PinError::NotAllowed { .. })
        ));
    }
}
