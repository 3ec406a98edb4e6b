//! The smallest safe wrapper the shared-memory floor benchmark (`fabric_pingpong --provider
//! shm-raw`, see `crate::bench::raw`) needs: one memfd [`Segment`] that two processes map, with
//! bounds-checked byte copies and atomic flag words.
//!
//! It lives here only because the crate denies `unsafe` outside `src/rdma/`; the benchmark logic
//! stays in `src/bench/`. Nothing in the fabric providers uses it.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use super::error::{FabricError, Result};
use super::segment::Segment;

/// A shared-memory segment for the raw floor: plain bytes plus 8-byte atomic words.
#[derive(Debug)]
pub struct FloorSegment {
    seg: Segment,
}

/// Set once a process has adopted its inherited descriptor (see
/// [`FloorSegment::adopt_inherited_fd`]).
static ADOPTED: AtomicBool = AtomicBool::new(false);

impl FloorSegment {
    /// Creates a zeroed, pre-faulted, sealed segment of at least `len` bytes.
    pub fn create(len: usize) -> Result<FloorSegment> {
        Ok(FloorSegment {
            seg: Segment::create("rfaas-floor", len, true)?,
        })
    }

    /// A duplicate of the segment's descriptor without `FD_CLOEXEC`, so that a child process
    /// started next inherits it (under the same number). Drop it once the child is running.
    pub fn inheritable_fd(&self) -> Result<OwnedFd> {
        let fd = self
            .seg
            .fd()
            .try_clone_to_owned()
            .map_err(|e| FabricError::io("dup segment fd", e))?;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
        Ok(fd)
    }

    /// Maps the segment a parent process passed down as descriptor number `raw` (from
    /// [`FloorSegment::inheritable_fd`]), after checking that `raw` is an open descriptor above
    /// stderr, that it is a sealed memfd of at least `min_len` bytes, and that this process has
    /// not adopted one before. Takes ownership of the descriptor: call it once per process, with
    /// a number nothing else in the process uses.
    pub fn adopt_inherited_fd(raw: RawFd, min_len: usize) -> Result<FloorSegment> {
        if raw <= 2 {
            return Err(FabricError::Invalid(format!(
                "inherited fd {raw} is a standard stream"
            )));
        }
        // Fails with EBADF when the descriptor is not open, before we claim ownership of it.
        let flags = fcntl(raw, FcntlArg::F_GETFD)?;
        if FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC) {
            // A descriptor this process opened itself (std opens everything CLOEXEC), not one
            // inherited across exec.
            return Err(FabricError::Invalid(format!("fd {raw} was not inherited")));
        }
        if ADOPTED.swap(true, Ordering::SeqCst) {
            return Err(FabricError::Invalid(
                "an inherited segment fd was already adopted".into(),
            ));
        }
        // SAFETY: `raw` is open (F_GETFD succeeded), is not a standard stream, has no CLOEXEC
        // flag (so it was inherited across exec rather than opened by Rust code in this
        // process, which always sets CLOEXEC), and the ADOPTED flag guarantees that this is the
        // only place in the process that takes ownership of an inherited descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Do not leak it into grandchildren.
        fcntl(
            fd.as_fd().as_raw_fd(),
            FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
        )?;
        Ok(FloorSegment {
            seg: Segment::attach(fd, min_len, true)?,
        })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.seg.len()
    }

    /// True for a zero-length segment (never: segments are at least a page).
    pub fn is_empty(&self) -> bool {
        self.seg.is_empty()
    }

    /// Copies `src` into the segment at `off`. Panics when out of bounds.
    #[inline]
    pub fn write(&self, off: usize, src: &[u8]) {
        assert!(
            off.checked_add(src.len())
                .is_some_and(|end| end <= self.len()),
            "write out of bounds"
        );
        // SAFETY: the range lies inside the mapping (checked above), which stays mapped while
        // `self` lives and is writable (created or attached read-write); `src` is a Rust slice
        // in private memory, so the ranges cannot overlap. The peer may touch the same bytes
        // concurrently only if the benchmark protocol is broken, which tears plain bytes but
        // creates no invalid Rust values.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.seg.as_ptr().add(off), src.len())
        }
    }

    /// Copies bytes at `off` out of the segment into `dst`. Panics when out of bounds.
    #[inline]
    pub fn read(&self, off: usize, dst: &mut [u8]) {
        assert!(
            off.checked_add(dst.len())
                .is_some_and(|end| end <= self.len()),
            "read out of bounds"
        );
        // SAFETY: as in `write`, with the copy going the other way into a distinct Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(self.seg.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        }
    }

    /// Copies `len` bytes at `src` to `dst` inside the segment. Panics when either range is out
    /// of bounds or the ranges overlap.
    #[inline]
    pub fn copy_within(&self, src: usize, dst: usize, len: usize) {
        let in_bounds = |off: usize| off.checked_add(len).is_some_and(|end| end <= self.len());
        assert!(in_bounds(src) && in_bounds(dst), "copy out of bounds");
        assert!(src + len <= dst || dst + len <= src, "overlapping copy");
        // SAFETY: both ranges lie inside the mapping (checked above) and do not overlap
        // (checked above); the mapping is writable and lives as long as `self`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.seg.as_ptr().add(src),
                self.seg.as_ptr().add(dst),
                len,
            )
        }
    }

    /// The 8-byte word at `off` as an atomic shared with the peer. Panics when `off` is out of
    /// bounds or not 8-byte aligned.
    #[inline]
    pub fn word(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 8 <= self.len(),
            "flag word out of bounds or misaligned"
        );
        // SAFETY: the word lies inside the mapping, which is page aligned, so `off % 8 == 0`
        // makes it 8-byte aligned; it lives as long as `&self`; every process that touches it
        // uses atomic instructions only.
        unsafe { AtomicU64::from_ptr(self.seg.as_ptr().add(off).cast::<u64>()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_words_round_trip() {
        let s = FloorSegment::create(10_000).unwrap();
        assert!(s.len() >= 10_000);
        s.write(100, b"hello");
        let mut out = [0u8; 5];
        s.read(100, &mut out);
        assert_eq!(&out, b"hello");
        s.copy_within(100, 200, 5);
        s.read(200, &mut out);
        assert_eq!(&out, b"hello");
        s.word(64).store(7, Ordering::Release);
        assert_eq!(s.word(64).load(Ordering::Acquire), 7);
        let fd = s.inheritable_fd().unwrap();
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).unwrap();
        assert!(!FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
    }

    #[test]
    fn refuses_standard_streams_and_closed_fds() {
        assert!(FloorSegment::adopt_inherited_fd(1, 1).is_err());
        assert!(FloorSegment::adopt_inherited_fd(100_000, 1).is_err());
    }
}
