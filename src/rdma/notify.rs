//! Completion notification: an "armed" word plus an eventfd, the software form of a verbs
//! completion channel.
//!
//! The waiter arms the word (all completions, or solicited ones only), polls once more, then
//! blocks on the eventfd. A producer, after publishing a completion, looks at the word and writes
//! the eventfd only when the waiter asked for this kind of completion, so the hot path (nobody
//! armed) costs one load and no system call. For shm the word lives in shared memory and the
//! eventfd is passed to peers, so a peer process can wake the waiter directly.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{FabricError, Result};
use super::segment::Segment;

/// Nobody waits.
pub const DISARMED: u32 = 0;
/// Wake on any completion.
pub const ARMED_ALL: u32 = 1;
/// Wake on solicited completions and errors only.
pub const ARMED_SOLICITED: u32 = 2;

#[derive(Debug)]
enum Backing {
    Heap(#[allow(dead_code)] Box<AtomicU32>),
    Shared(#[allow(dead_code)] Arc<Segment>),
}

/// One side's handle on a notification word and its eventfd.
#[derive(Debug)]
pub struct Notifier {
    armed: *const AtomicU32,
    _backing: Backing,
    efd: OwnedFd,
}

// SAFETY: `armed` points into memory owned by `_backing` (a box or a mapped segment) that lives
// as long as the Notifier and is only accessed atomically.
unsafe impl Send for Notifier {}
// SAFETY: as above.
unsafe impl Sync for Notifier {}

/// Creates a non-blocking, close-on-exec eventfd.
pub fn new_eventfd() -> Result<OwnedFd> {
    // SAFETY: plain eventfd creation; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(FabricError::io("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Waits until `fd` is readable or `timeout` passes; `Ok(false)` on timeout. Retries on EINTR.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> Result<bool> {
    wait_any_readable(&[fd], timeout)
}

/// Waits until `a` or `b` is readable or `timeout` passes; `Ok(false)` on timeout. (A thread
/// waits on its socket and on a stop eventfd with this.)
pub fn wait_either_readable(a: RawFd, b: RawFd, timeout: Duration) -> Result<bool> {
    wait_any_readable(&[a, b], timeout)
}

/// Waits until one of `fds` (at most 4) is readable or `timeout` passes; `Ok(false)` on timeout.
/// Retries on EINTR, and rounds sub-millisecond remainders up so it sleeps instead of spinning.
fn wait_any_readable(fds: &[RawFd], timeout: Duration) -> Result<bool> {
    let mut pfd = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    let n = fds.len().min(pfd.len());
    for (p, &fd) in pfd.iter_mut().zip(fds) {
        p.fd = fd;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = if left.is_zero() {
            0
        } else {
            left.as_micros().div_ceil(1000)
        };
        let ms = i32::try_from(ms).unwrap_or(i32::MAX);
        // SAFETY: `pfd` holds at least `n` valid pollfd entries.
        let r = unsafe { libc::poll(pfd.as_mut_ptr(), n as libc::nfds_t, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(FabricError::io("poll", err));
        }
    }
}

impl Notifier {
    /// A notifier whose word lives on the heap (for providers whose producers are threads of
    /// this process).
    pub fn new_local() -> Result<Notifier> {
        let word = Box::new(AtomicU32::new(DISARMED));
        let armed: *const AtomicU32 = &*word;
        Ok(Notifier {
            armed,
            _backing: Backing::Heap(word),
            efd: new_eventfd()?,
        })
    }

    /// A notifier whose word is the 4 bytes at `offset` of a shared segment.
    /// Panics when the word is outside the segment or misaligned.
    pub fn in_segment(seg: Arc<Segment>, offset: usize, efd: OwnedFd) -> Notifier {
        assert!(
            offset % 4 == 0 && offset + 4 <= seg.len(),
            "notify word outside segment"
        );
        // SAFETY: in bounds and aligned (checked above); the segment outlives the pointer since
        // the Notifier keeps the Arc.
        let armed = unsafe { seg.as_ptr().add(offset).cast::<AtomicU32>() };
        Notifier {
            armed,
            _backing: Backing::Shared(seg),
            efd,
        }
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: `armed` is valid and aligned for as long as `self` lives (see constructors).
        unsafe { &*self.armed }
    }

    /// The eventfd.
    pub fn raw_fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Duplicates the eventfd (to pass to a peer).
    pub fn dup_fd(&self) -> Result<OwnedFd> {
        self.efd
            .try_clone()
            .map_err(|e| FabricError::io("dup eventfd", e))
    }

    /// Arms for the next completion (`solicited_only`: the next solicited one or an error).
    /// The caller must poll once more after arming, before it waits.
    pub fn arm(&self, solicited_only: bool) {
        let v = if solicited_only {
            ARMED_SOLICITED
        } else {
            ARMED_ALL
        };
        self.word().store(v, Ordering::SeqCst);
        // Pairs with the fence in `signal`: either the producer sees the arm, or the waiter's
        // next poll sees the completion.
        fence(Ordering::SeqCst);
    }

    /// Called by a producer after it published a completion: wakes the waiter if it armed for
    /// this kind of completion. `urgent` completions (solicited, or errors) wake solicited-only
    /// waiters too.
    #[inline]
    pub fn signal(&self, urgent: bool) {
        fence(Ordering::SeqCst);
        let w = self.word();
        let a = w.load(Ordering::Relaxed);
        if a == DISARMED || (a == ARMED_SOLICITED && !urgent) {
            return;
        }
        if w.compare_exchange(a, DISARMED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.kick();
        }
    }

    /// [`Notifier::signal`] for a producer whose publication was itself a SeqCst store: that
    /// store already orders it before this SeqCst load of the armed word, so no fence is needed.
    #[inline]
    pub fn signal_after_seqcst(&self, urgent: bool) {
        let w = self.word();
        let a = w.load(Ordering::SeqCst);
        if a == DISARMED || (a == ARMED_SOLICITED && !urgent) {
            return;
        }
        if w.compare_exchange(a, DISARMED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.kick();
        }
    }

    /// Writes the eventfd unconditionally (used on connection failure, and by `kick` paths that
    /// must wake whoever waits).
    pub fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd. A full counter (EAGAIN) already
        // means "readable", so the result can be ignored.
        unsafe {
            libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Blocks until the eventfd fires or `timeout` passes, then clears it; `Ok(false)` on timeout.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        if !wait_readable(self.efd.as_raw_fd(), timeout)? {
            return Ok(false);
        }
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from a non-blocking eventfd; EAGAIN (another
        // reader was first) is harmless.
        unsafe {
            libc::read(self.efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
        Ok(true)
    }
}
