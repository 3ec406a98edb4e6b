//! Reading the executor's configuration from standard input, and the "configuration coming"
//! nudge.
//!
//! A pooled executor waits for its configuration blocked in `read(2)` on an idle core. Woken by
//! the configuration itself, it pays the wake-up of its thread (and on a VM of its virtual CPU)
//! on the cold start's path: 25-55 µs on the project's VM. The manager therefore writes one
//! whitespace byte (the *nudge*, [`NUDGE`]) to the executor's standard input as soon as an
//! allocation request arrives, before its checks, its core reservation and the configuration:
//! the executor wakes on it while the manager works, and then polls its standard input without
//! sleeping (yielding its core to any thread that wants it, such as the manager's) for at most
//! [`NUDGE_SPIN`], so that the configuration is read the moment it is
//! written. A nudge carries nothing of a tenant (JSON ignores whitespace before a document), and
//! a nudge with no configuration after it (the allocation failed its checks, or another request
//! took this process) costs one bounded spin, after which the executor sleeps in `read(2)` again.

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::control::executor_manager_api::ExecutorConfig;

use super::ExecutorError;

/// What the manager writes to a pooled executor's standard input when its configuration is
/// about to come: whitespace, which JSON skips before a document.
pub const NUDGE: &[u8] = b" ";

/// Longest the executor polls its standard input without sleeping after a nudge.
pub const NUDGE_SPIN: Duration = Duration::from_millis(2);

/// Bytes read from standard input per `read(2)`.
const CHUNK: usize = 16 * 1024;

/// Reads and parses the configuration from standard input: one JSON document, taken as soon as
/// it is complete (a pooled executor's cold start does not wait for the manager to close the
/// pipe too); at most `max` bytes. Whitespace before the document is a nudge: the next bytes are
/// polled for without sleeping for at most [`NUDGE_SPIN`].
pub fn read_config(max: usize) -> Result<ExecutorConfig, ExecutorError> {
    let stdin = std::io::stdin();
    // Raw reads of fd 0: nothing is buffered where `poll` would not see it.
    let fd = stdin.as_fd();
    let mut doc: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut spin_until: Option<Instant> = None;
    loop {
        if let Some(until) = spin_until {
            wait_readable(fd, until);
            spin_until = None;
        }
        let n = match nix::unistd::read(fd.as_raw_fd(), &mut chunk) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            // A non-blocking descriptor with nothing in it yet: wait for it, a second at a time
            // (the manager kills an executor that does not report in time).
            Err(nix::errno::Errno::EAGAIN) => {
                wait_readable(fd, Instant::now() + Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(ExecutorError::Io(e.into())),
        };
        if n == 0 {
            return Err(ExecutorError::Config(if doc.is_empty() {
                "standard input closed without a configuration".into()
            } else {
                "standard input closed before the configuration was complete".into()
            }));
        }
        let got = &chunk[..n];
        if doc.is_empty() {
            let start = got.iter().position(|b| !b.is_ascii_whitespace());
            match start {
                // Only whitespace: a nudge. The configuration comes within microseconds.
                None => {
                    spin_until = Some(Instant::now() + NUDGE_SPIN);
                    continue;
                }
                Some(i) => doc.extend_from_slice(&got[i..]),
            }
        } else {
            doc.extend_from_slice(got);
        }
        if doc.len() > max {
            return Err(ExecutorError::Config(format!(
                "the configuration exceeds {max} bytes"
            )));
        }
        match serde_json::Deserializer::from_slice(&doc)
            .into_iter::<ExecutorConfig>()
            .next()
        {
            Some(Ok(cfg)) => return Ok(cfg),
            Some(Err(e)) if e.is_eof() => continue, // incomplete: read on
            Some(Err(e)) => return Err(ExecutorError::Config(e.to_string())),
            None => continue,
        }
    }
}

/// Polls `fd` without sleeping until it is readable or `until` passed, then waits for it in
/// `poll(2)` (the caller's `read` would otherwise block anyway) once the spin is over.
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, until: Instant) {
    let readable = |timeout: PollTimeout| {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        matches!(nix::poll::poll(&mut fds, timeout), Ok(n) if n > 0)
    };
    let spin_end = until.min(Instant::now() + NUDGE_SPIN);
    while Instant::now() < spin_end {
        if readable(PollTimeout::ZERO) {
            return;
        }
        // The manager that is about to write the configuration may share this core: let it run.
        std::thread::yield_now();
    }
    let left = until.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let _ = readable(PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX));
    }
}
