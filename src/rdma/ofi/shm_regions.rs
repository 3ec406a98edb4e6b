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
//! pid) only when that pid is dead.

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

/// Whether no process (not even a zombie) has id `pid` (`kill(pid, 0)` fails with `ESRCH`).
fn dead(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
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
/// process is dead (reaped: not even a zombie); returns how many were removed. Called by the
/// executor manager after it reaps an executor and by `rfaas local-cluster stop` for what it
/// stopped; a live pid (or a zombie not yet reaped) is left alone.
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
}
