//! Reading the executor's configuration from standard input, and the "configuration coming"
//! nudge.
//!
//! A pooled executor waits for its configuration blocked in `read(2)` on an idle core. Woken by
//! the configuration itself, it pays the wake-up of its thread (and on a VM of its virtual CPU)
//! on the cold start's path: 25-55 µs on the project's VM. The manager therefore writes one
//! whitespace byte (the *nudge*, [`NUDGE`]) to the executor's standard input as soon as an
//! allocation request has been parsed, before its checks, its core reservation and the
//! configuration:
//! the executor wakes on it while the manager works, and then polls its standard input without
//! sleeping (yielding its core to any thread that wants it, such as the manager's) for at most
//! [`NUDGE_SPIN`], so that the configuration is read the moment it is
//! written. A nudge carries nothing of a tenant (JSON ignores whitespace before a document), and
//! a nudge with no configuration after it (the allocation failed its checks, or another request
//! took this process) costs one bounded spin, after which the executor sleeps in `read(2)` again.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
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
    read_config_from(stdin.as_fd(), max)
}

/// [`read_config`] from descriptor `fd`.
fn read_config_from(fd: BorrowedFd<'_>, max: usize) -> Result<ExecutorConfig, ExecutorError> {
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
        // The configuration is a JSON object: complete only once a read ends with its `}`
        // (so a large one that comes in many reads is parsed once, not once per read).
        if doc.iter().rev().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
            continue;
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
fn wait_readable(fd: BorrowedFd<'_>, until: Instant) {
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::OwnedFd;

    use super::*;
    use crate::control::executor_manager_api::ExecutorConfig;
    use crate::rdma::Provider;

    fn config() -> ExecutorConfig {
        ExecutorConfig {
            allocation: 7,
            token: "t".repeat(64),
            library_path: "/lib/f.so".into(),
            library_hash: "ab".repeat(32),
            functions: vec!["echo".into(); 40],
            cores: vec![0],
            input_capacity: 4096,
            output_capacity: 4096,
            slots: 4,
            hot_timeout_ms: 0,
            provider: Provider::Shm,
            listen: "127.0.0.1:0".into(),
            billing: None,
            connect_timeout_ms: 1000,
            deadline_file: None,
            assets: Vec::new(),
        }
    }

    /// Writes `parts` to a pipe from another thread, each in its own write (with a flush),
    /// and reads a configuration from the other end.
    fn read_parts(parts: Vec<Vec<u8>>, max: usize) -> Result<ExecutorConfig, ExecutorError> {
        let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            for p in parts {
                // A reader that gave up closes its end: later writes may fail.
                if w.write_all(&p).and_then(|()| w.flush()).is_err() {
                    return;
                }
            }
        });
        let got = read_config_from(r.as_fd(), max);
        drop(r);
        writer.join().unwrap();
        got
    }

    fn json() -> Vec<u8> {
        serde_json::to_vec(&config()).unwrap()
    }

    #[test]
    fn nudges_then_a_document_in_pieces_is_read_whole() {
        let doc = json();
        let (a, b) = doc.split_at(doc.len() / 2);
        let (b, c) = b.split_at(b.len() / 2);
        let parts = vec![
            NUDGE.to_vec(),
            NUDGE.to_vec(),
            a.to_vec(),
            b.to_vec(),
            c.to_vec(),
        ];
        assert_eq!(read_parts(parts, 1 << 20).unwrap(), config());
        // A read that ends with a `}` inside a string is not the end of the document.
        let mut cfg = config();
        cfg.functions.push("odd}name".into());
        let doc = serde_json::to_vec(&cfg).unwrap();
        let at = doc.windows(4).position(|w| w == b"odd}").unwrap() + 4;
        let parts = vec![doc[..at].to_vec(), doc[at..].to_vec()];
        assert_eq!(read_parts(parts, 1 << 20).unwrap(), cfg);
    }

    #[test]
    fn the_end_of_input_or_too_many_bytes_fail_with_the_reason() {
        let doc = json();
        let cut = read_parts(vec![doc[..doc.len() - 3].to_vec()], 1 << 20).unwrap_err();
        assert!(
            cut.to_string()
                .contains("before the configuration was complete"),
            "{cut}"
        );
        let none = read_parts(vec![NUDGE.to_vec()], 1 << 20).unwrap_err();
        assert!(
            none.to_string().contains("without a configuration"),
            "{none}"
        );
        let big = read_parts(vec![doc.clone()], doc.len() - 1).unwrap_err();
        assert!(big.to_string().contains("exceeds"), "{big}");
        let bad = read_parts(vec![b"{\"allocation\": \"x\"}".to_vec()], 1 << 20).unwrap_err();
        assert!(bad.to_string().contains("invalid type"), "{bad}");
    }
}
