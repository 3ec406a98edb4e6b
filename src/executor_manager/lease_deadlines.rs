//! The deadline files of the leases this manager hosts ([`crate::executor::deadline`]): written
//! when an allocation starts under a lease, moved forward when the resource manager reports a
//! renewal, and re-signed every heartbeat interval while this manager runs, so that executors
//! stop by themselves when their lease ends or this manager freezes.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::executor::deadline::{unix_ms_now, Deadline, DeadlineFile};

/// Default of how long the manager vouches for its leases, until the resource manager tells
/// its heartbeat timeout.
const DEFAULT_ALIVE_MS: u64 = 10_000;

/// The deadline files of the hosted leases.
#[derive(Debug)]
pub struct LeaseDeadlines {
    dir: PathBuf,
    /// Lease id → its deadline, local unix ms.
    until: Mutex<HashMap<u64, u64>>,
    /// How far ahead each re-signing vouches (the resource manager's heartbeat timeout).
    alive_ms: AtomicU64,
}

impl LeaseDeadlines {
    /// Deadline files in `dir` (created, mode 0700; leftovers of an earlier run removed).
    pub fn open(dir: &Path) -> std::io::Result<LeaseDeadlines> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        for e in std::fs::read_dir(dir)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(LeaseDeadlines {
            dir: dir.to_path_buf(),
            until: Mutex::new(HashMap::new()),
            alive_ms: AtomicU64::new(DEFAULT_ALIVE_MS),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets how far ahead the manager vouches (the heartbeat timeout it registered with).
    pub fn set_alive_ms(&self, ms: u64) {
        self.alive_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// How far ahead each re-signing vouches, ms.
    pub fn alive_ms(&self) -> u64 {
        self.alive_ms.load(Ordering::Relaxed)
    }

    /// Writes the file: the lease's deadline plus one heartbeat timeout (a renewal reaches
    /// this manager up to a heartbeat interval after the resource manager granted it; the
    /// manager itself stops the executors of a lease that ended sooner), and "alive until"
    /// one heartbeat timeout from now.
    fn write(&self, lease: u64, lease_until: u64) {
        let alive = self.alive_ms.load(Ordering::Relaxed);
        let d = Deadline {
            lease_until: lease_until.saturating_add(alive),
            manager_until: unix_ms_now().saturating_add(alive),
        };
        if let Err(e) = DeadlineFile::of(&self.dir, lease).write(d) {
            tracing::warn!(lease, "cannot write the lease's deadline file: {e}");
        }
    }

    /// Records `lease`'s deadline (local unix ms) and writes its file; returns the file.
    pub fn note(&self, lease: u64, lease_until: u64) -> PathBuf {
        let mut until = self.lock();
        until.insert(lease, lease_until);
        self.write(lease, lease_until);
        DeadlineFile::of(&self.dir, lease).0
    }

    /// Moves a hosted lease's deadline (a renewal the resource manager reported).
    pub fn update(&self, lease: u64, lease_until: u64) {
        let mut until = self.lock();
        if let Some(u) = until.get_mut(&lease) {
            if *u != lease_until {
                *u = lease_until;
                self.write(lease, lease_until);
            }
        }
    }

    /// Re-signs the files of the leases `hosted()` names and removes the others (their
    /// allocations ended). `hosted` runs under the lock that [`Self::note`] takes, so a lease
    /// noted meanwhile is never removed.
    pub fn refresh(&self, hosted: impl FnOnce() -> Vec<u64>) {
        let mut until = self.lock();
        let hosted = hosted();
        until.retain(|lease, _| {
            let keep = hosted.contains(lease);
            if !keep {
                DeadlineFile::of(&self.dir, *lease).remove();
            }
            keep
        });
        for (&lease, &u) in until.iter() {
            self.write(lease, u);
        }
    }

    /// Ends `lease` here: its executors stop at their next look.
    pub fn forget(&self, lease: u64) {
        if self.lock().remove(&lease).is_some() {
            DeadlineFile::of(&self.dir, lease).remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noted_leases_are_resigned_until_no_longer_hosted() {
        let dir = tempfile::tempdir().unwrap();
        let d = LeaseDeadlines::open(&dir.path().join("deadlines")).unwrap();
        d.set_alive_ms(5000);
        let f = DeadlineFile(d.note(3, 1234));
        let first = f.read().unwrap().unwrap();
        assert_eq!(first.lease_until, 1234 + 5000);
        assert!(first.manager_until >= unix_ms_now() + 4000);
        d.update(3, 9999);
        assert_eq!(f.read().unwrap().unwrap().lease_until, 9999 + 5000);
        d.refresh(|| vec![3]);
        assert!(f.read().unwrap().is_some());
        d.refresh(Vec::new);
        assert_eq!(f.read().unwrap(), None);
        d.note(4, 1);
        d.forget(4);
        assert_eq!(
            DeadlineFile::of(&dir.path().join("deadlines"), 4)
                .read()
                .unwrap(),
            None
        );
    }
}
