//! The lease deadline an executor keeps, so that it stops serving when its lease ends even if
//! its executor manager is frozen (SIGSTOP, swapped out, wedged).
//!
//! The manager keeps one small file per hosted lease ([`DeadlineFile`]): two wall-clock times
//! in milliseconds since the Unix epoch, the lease's deadline as the resource manager last said
//! (renewals push it) and "the manager was alive until", which the manager pushes forward every
//! heartbeat interval by the resource manager's heartbeat timeout. The executor reads the file
//! every [`CHECK_EVERY`] and stops (as on SIGTERM) once the earlier of the two has passed, or
//! when the file is gone (the lease ended). A frozen manager stops pushing: its executors stop
//! about when the resource manager declares the node dead and ends its leases.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often an executor looks at its deadline file.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);
/// How long an executor told to stop by its deadline may take before it exits anyway.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a deadline file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The lease's deadline, unix ms.
    pub lease_until: u64,
    /// The manager vouches for the lease until then, unix ms.
    pub manager_until: u64,
}

impl Deadline {
    /// When serving must stop.
    pub fn stop_at(&self) -> u64 {
        self.lease_until.min(self.manager_until)
    }

    fn parse(text: &str) -> Option<Deadline> {
        let mut it = text.split_ascii_whitespace().map(|w| w.parse::<u64>().ok());
        Some(Deadline {
            lease_until: it.next()??,
            manager_until: it.next()??,
        })
    }
}

/// One lease's deadline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineFile(pub PathBuf);

impl DeadlineFile {
    /// The file of `lease` in `dir`.
    pub fn of(dir: &Path, lease: u64) -> DeadlineFile {
        DeadlineFile(dir.join(format!("lease-{lease}")))
    }

    /// Writes `d` atomically (a temporary file renamed over it, named after this process so
    /// that one left by a killed writer is removed later: [`crate::atomic_write`]).
    pub fn write(&self, d: Deadline) -> std::io::Result<()> {
        crate::atomic_write::write_atomic(
            &self.0,
            format!("{} {}\n", d.lease_until, d.manager_until).as_bytes(),
            0o644,
            crate::atomic_write::Durability::Atomic,
        )
    }

    /// Reads it: `Ok(None)` when it is gone.
    pub fn read(&self) -> std::io::Result<Option<Deadline>> {
        match std::fs::read_to_string(&self.0) {
            Ok(t) => Ok(Deadline::parse(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes it (the lease ended here).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the executor's watchdog: sets `stop` once the deadline in `file` has passed or the
/// file is gone, and exits the process if serving has not ended [`STOP_GRACE`] later. A file
/// that cannot be read for another reason (or is being replaced) keeps the last deadline read.
pub fn watch(file: DeadlineFile, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("rfaas-deadline".into())
        .spawn(move || {
            let mut last: Option<Deadline> = None;
            loop {
                let why = match file.read() {
                    Ok(None) => Some("its lease ended (deadline file removed)".to_string()),
                    Ok(Some(d)) => {
                        last = Some(d);
                        None
                    }
                    Err(_) => None,
                }
                .or_else(|| {
                    let d = last?;
                    (unix_ms_now() > d.stop_at()).then(|| {
                        if d.lease_until <= d.manager_until {
                            format!("its lease deadline passed ({} unix ms)", d.lease_until)
                        } else {
                            "its executor manager has been silent past the heartbeat timeout"
                                .to_string()
                        }
                    })
                });
                if let Some(why) = why {
                    eprintln!("rfaas executor: stopping: {why}");
                    stop.store(true, Ordering::Release);
                    std::thread::sleep(STOP_GRACE);
                    eprintln!(
                        "rfaas executor: still serving {STOP_GRACE:?} after the deadline: exiting"
                    );
                    std::process::exit(3);
                }
                std::thread::sleep(CHECK_EVERY);
            }
        })
        .expect("spawn the deadline watchdog");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_the_earlier_time_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = DeadlineFile::of(dir.path(), 7);
        assert_eq!(f.read().unwrap(), None);
        let d = Deadline {
            lease_until: 2000,
            manager_until: 1500,
        };
        f.write(d).unwrap();
        assert_eq!(f.read().unwrap(), Some(d));
        assert_eq!(d.stop_at(), 1500);
        f.remove();
        assert_eq!(f.read().unwrap(), None);
        assert_eq!(Deadline::parse("12"), None);
        assert_eq!(Deadline::parse("a b"), None);
    }
}
