//! Shared-memory segments: sealed memfds mapped `MAP_SHARED`.
//!
//! The shm provider keeps every remotely accessible region, every incoming-completion ring and
//! every completion queue's notification word in one of these, and passes the fd to peers over a
//! Unix socket. Segments are sealed against shrinking and growing, and a peer checks the seals
//! before it maps one, so the owner can never make the peer's accesses fault (SIGBUS).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use super::error::{FabricError, Result};

/// A range of memory this process mapped with `mmap`, unmapped on drop: what a [`Segment`] and
/// a [`PrivateMem`] are made of (both dereference to it for [`Mapping::as_ptr`] and
/// [`Mapping::len`]).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; the pointer is valid for the mapping's lifetime in every
// thread, and all concurrent access goes through raw pointers or atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` only exposes the address, never a Rust reference to the bytes.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` (or anonymous memory with `fd` -1 and `MAP_ANONYMOUS` in
    /// `flags`) at an address the kernel picks; `what` names the mapping in errors.
    fn new(
        len: usize,
        prot: libc::c_int,
        flags: libc::c_int,
        fd: RawFd,
        what: &str,
    ) -> Result<Mapping> {
        // SAFETY: a new mapping at an address the kernel picks, so no existing memory is
        // affected; the result is checked against MAP_FAILED before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(os_err(what));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| os_err("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// First byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for zero length (never: mappings are at least a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `new`, unmapped only here.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A mapped shared-memory segment. Unmapped on drop; the memory lives on while any process
/// still maps it or holds its fd.
#[derive(Debug)]
pub struct Segment {
    map: Mapping,
    fd: OwnedFd,
    writable: bool,
}

impl std::ops::Deref for Segment {
    type Target = Mapping;

    fn deref(&self) -> &Mapping {
        &self.map
    }
}

const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

fn os_err(context: &str) -> FabricError {
    FabricError::io(context, std::io::Error::last_os_error())
}

fn page_round(len: usize) -> usize {
    let page = 4096;
    len.max(1).div_ceil(page) * page
}

impl Segment {
    /// Creates a zeroed, sealed segment of at least `len` bytes (rounded up to pages), mapped
    /// read-write. `populate` pre-faults every page (registered memory must not fault on the
    /// hot path).
    pub fn create(name: &str, len: usize, populate: bool) -> Result<Segment> {
        let len = page_round(len);
        let cname = CString::new(name).map_err(|_| FabricError::Invalid("segment name".into()))?;
        // SAFETY: `cname` is a valid NUL-terminated string; flags are valid memfd flags.
        let raw = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(os_err("memfd_create"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len)
            .map_err(|_| FabricError::Invalid("segment too large".into()))?;
        // SAFETY: `fd` is an open memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(os_err("ftruncate memfd"));
        }
        // SAFETY: `fd` is an open memfd created with MFD_ALLOW_SEALING.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS) } != 0 {
            return Err(os_err("seal memfd"));
        }
        Self::map(fd, len, true, populate)
    }

    /// Maps a segment received from a peer, after checking that it is sealed against resizing
    /// and at least `min_len` bytes long. `writable` maps it read-write, else read-only.
    pub fn attach(fd: OwnedFd, min_len: usize, writable: bool) -> Result<Segment> {
        // SAFETY: `fd` is an open descriptor; F_GET_SEALS takes no argument.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0
            || seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
                != (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
        {
            return Err(FabricError::Handshake(
                "peer segment is not sealed against resizing".into(),
            ));
        }
        // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open and `st` is a valid out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(os_err("fstat peer segment"));
        }
        let size = usize::try_from(st.st_size).unwrap_or(0);
        if size < min_len || size == 0 {
            return Err(FabricError::Handshake(format!(
                "peer segment has {size} bytes, expected at least {min_len}"
            )));
        }
        Self::map(fd, size, writable, false)
    }

    fn map(fd: OwnedFd, len: usize, writable: bool, populate: bool) -> Result<Segment> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
        let map = Mapping::new(len, prot, flags, fd.as_raw_fd(), "mmap segment")?;
        Ok(Segment { map, fd, writable })
    }

    /// Faults in the pages of `[off, off + len)` (rounded out to pages, clipped to the
    /// segment) for writing, so that their first use does not fault. The segment must be
    /// writable.
    pub fn prefault(&self, off: usize, len: usize) {
        const PAGE: usize = 4096;
        let start = (off / PAGE * PAGE).min(self.len());
        let end = (off + len)
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(self.len());
        if !self.writable || start >= end {
            return;
        }
        // SAFETY: [start, end) lies inside the mapping (clipped above). MADV_POPULATE_WRITE
        // only faults pages in.
        let r = unsafe {
            libc::madvise(
                self.as_ptr().add(start).cast(),
                end - start,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if r != 0 {
            // Older kernels: touch every page (writing the zero that is already there).
            for p in (start..end).step_by(PAGE) {
                // SAFETY: `p` is inside the mapping, which is writable (checked above);
                // volatile so the store is not elided. Callers prefault memory nobody uses yet.
                unsafe { std::ptr::write_volatile(self.as_ptr().add(p), 0) };
            }
        }
    }

    /// True when mapped read-write.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The memfd (to pass to a peer that may write).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A read-only descriptor of the same memory, for peers that may only read it.
    pub fn readonly_fd(&self) -> Result<OwnedFd> {
        let path = CString::new(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
            .map_err(|_| FabricError::Invalid("fd path".into()))?;
        // SAFETY: `path` is a valid NUL-terminated path; the flags open it read-only.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(os_err("reopen segment read-only"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }
}

/// Private anonymous memory, page aligned and pre-faulted: for regions that peers never touch,
/// and for the tcp provider, whose peers reach memory through the progress thread.
#[derive(Debug)]
pub struct PrivateMem {
    map: Mapping,
}

impl std::ops::Deref for PrivateMem {
    type Target = Mapping;

    fn deref(&self) -> &Mapping {
        &self.map
    }
}

impl PrivateMem {
    /// Allocates `len` zeroed bytes (rounded up to pages).
    pub fn new(len: usize) -> Result<PrivateMem> {
        let len = page_round(len);
        let map = Mapping::new(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            "mmap anonymous",
        )?;
        Ok(PrivateMem { map })
    }
}
