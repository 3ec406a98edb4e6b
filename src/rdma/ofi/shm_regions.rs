//! The shared-memory regions of libfabric's `shm` provider that dead processes leave behind.
//!
//! libfabric 1.17's `shm` names its regions after the process id:
//! `/dev/shm/<pid>:<domain>:<endpoint>`. A process that dies of a signal never unlinks them
//! (rfaas puts the default signal actions back, see [`super::restore_default_signals`]), so
//! they stay until reboot, 16 MiB each, and a later process that gets the same pid fails its
//! first `fi_enable` with `EBUSY`. Three places bound that:
//!
//! * a process removes the regions named after its own pid before its first endpoint (any that
//!   exist were left by a dead process: a pid names one live process);
//! * the executor manager removes an executor's regions once it has reaped it;
//! * `rfaas local-cluster stop` removes those of the daemons and executors it stopped.
//!
//! Only files of exactly the `<pid>:<n>:<n>` shape are touched, and (except for a process's own
//! pid) only when that pid is dead (gone, or a zombie with no thread left).

use std::path::Path;

/// Where libfabric's `shm` provider creates its regions.
const SHM_DIR: &str = "/dev/shm";

/// The pid a libfabric `shm` region named `name` belongs to, if the name has exactly the
/// `<pid>:<n>:<n>` shape (decimal numbers, nothing else).
pub(crate) fn region_pid(name: &str) -> Option<u32> {
    let mut parts = name.split(':');
    let (Some(pid), Some(dom), Some(ep), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let decimal = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !(decimal(pid) && decimal(dom) && decimal(ep)) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

/// Whether process `pid` is dead: no process has that id (`kill(pid, 0)` fails with `ESRCH`),
/// or it is a zombie none of whose threads still runs. A zombie holds its pid until its parent
/// reaps it, so no new process can own regions of that name meanwhile; daemons whose starter
/// has exited are reaped by init, which in some containers never does.
fn dead(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Err(nix::errno::Errno::ESRCH) => true,
        _ => zombie_without_threads(pid),
    }
}

/// Whether `/proc/<pid>` says zombie and lists no thread but the (exited) main one.
fn zombie_without_threads(pid: u32) -> bool {
    let zombie = i32::try_from(pid)
        .ok()
        .and_then(crate::cluster::procs::stat)
        .is_some_and(|s| s.state == 'Z' || s.state == 'X');
    zombie
        && std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count() <= 1)
            .unwrap_or(true)
}

/// Removes the regions in `dir` named after `pid`; returns how many were removed.
fn remove_in(dir: &Path, pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if region_pid(name) != Some(pid) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                removed += 1;
                tracing::debug!(
                    region = name,
                    "removed the libfabric shm region of a dead process"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                region = name,
                "cannot remove a stale libfabric shm region: {e}"
            ),
        }
    }
    removed
}

/// Removes the libfabric `shm` regions (`/dev/shm/<pid>:<n>:<n>`) of process `pid` if that
/// process is dead (reaped, or a zombie with no thread left); returns how many were removed.
/// Called by the executor manager after it reaps an executor and by `rfaas local-cluster stop`
/// for what it stopped; a live pid is left alone.
pub fn remove_regions_of_dead(pid: u32) -> usize {
    if !dead(pid) {
        return 0;
    }
    remove_in(Path::new(SHM_DIR), pid)
}

/// Removes the regions named after this process's own pid, once per process, before its first
/// endpoint: any that exist were left by a dead process that had this pid.
pub(crate) fn remove_stale_regions_of_this_pid() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let n = remove_in(Path::new(SHM_DIR), std::process::id());
        if n > 0 {
            tracing::warn!(
                regions = n,
                "removed libfabric shm regions a dead process with this pid left"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pid_domain_endpoint_shape_is_a_region() {
        assert_eq!(region_pid("1234:0:0"), Some(1234));
        assert_eq!(region_pid("77:12:3"), Some(77));
        for other in [
            "1234",
            "1234:0",
            "1234:0:0:0",
            "1234:0:x",
            "a1234:0:0",
            ":0:0",
            "1234::0",
            "0:0:0",
            "+5:0:0",
            "1234:0:0.tmp",
            "sem.1234:0:0",
            "99999999999:0:0",
        ] {
            assert_eq!(region_pid(other), None, "{other}");
        }
    }

    /// In a directory of our own: a dead pid's regions go, everything else stays.
    #[test]
    fn removes_exactly_the_regions_of_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "4242:0:0",
            "4242:1:7",
            "42420:0:0",
            "4242:0",
            "x4242:0:0",
            "1:0:0",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"r").unwrap();
        }
        assert_eq!(remove_in(dir.path(), 4242), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["1:0:0", "42420:0:0", "4242:0", "x4242:0:0"]);
    }

    #[test]
    fn a_live_pid_is_left_alone() {
        // This process is alive: nothing of it may be removed through the dead-pid path.
        assert!(!dead(std::process::id()));
        assert_eq!(remove_regions_of_dead(std::process::id()), 0);
        // pid 1 always exists.
        assert!(!dead(1));
    }

    #[test]
    fn a_zombie_is_dead_and_a_reaped_pid_too() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: it turns zombie once it has exited (bounded wait for that event).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !zombie_without_threads(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "{pid} never became a zombie"
            );
            std::thread::yield_now();
        }
        assert!(dead(pid));
        child.wait().unwrap();
        assert!(dead(pid));
    }
}
