//! The `ofi-raw` floor of `fabric_pingpong`: a plain `fi_writedata` ping-pong between two
//! endpoints of the configured libfabric provider, without the rfaas layer (no queue pairs,
//! credits, side channel or progress thread), so the layer's cost is a ratio in one run.
//!
//! Each side opens its own endpoint and one registered buffer. The server announces
//! [`RawFloor::address`] (endpoint name, buffer address and key); the client inserts it,
//! writes its own address into the server's buffer with CQ data [`SETUP`], and then every round
//! trip is one write with data each way, both sides spinning on `fi_cq_read`.

use std::ffi::c_void;
use std::time::{Duration, Instant};

use super::domain::{fi_error, getinfo, open_handles, rma_msg, Handles};
use super::sys;
use crate::rdma::error::{FabricError, Result};
use crate::rdma::segment::PrivateMem;

/// CQ data of the setup write (the client's address).
pub const SETUP: u64 = u64::MAX;

/// One side of the raw floor.
pub struct RawFloor {
    h: Handles,
    buf: *mut u8,
    len: usize,
    mr: *mut sys::fid_mr,
    desc: *mut c_void,
    key: u64,
    virt: bool,
    name: Vec<u8>,
    peer: Option<(u64, u64, u64)>,
    ctx: Box<sys::fi_context2>,
    /// The buffer's memory: unmapped after the registration and endpoint close in `Drop`.
    _mem: PrivateMem,
}

// SAFETY: the handles and buffer are owned by this value and used by one thread at a time
// (`&mut self` for every libfabric call).
unsafe impl Send for RawFloor {}

impl RawFloor {
    /// Opens an endpoint of libfabric provider `provider` with a `len`-byte buffer.
    pub fn open(provider: Option<&str>, len: usize) -> Result<RawFloor> {
        let info = getinfo(provider, false).map_err(|e| FabricError::Unavailable {
            provider: "ofi-raw",
            reason: fi_error("fi_getinfo", e).to_string(),
        })?;
        // No wait object: the floor busy-polls, and a wait object must not cost it anything.
        let h = open_handles(info, false)?;
        // SAFETY: `info` belongs to `h` and stays valid while it lives.
        let mr_mode = unsafe { (*(*h.info).domain_attr).mr_mode } as u32;
        let mem = PrivateMem::new(len.max(4096))?;
        let (buf, len) = (mem.as_ptr(), mem.len());
        let mut mr = std::ptr::null_mut();
        let access = (sys::FI_READ
            | sys::FI_WRITE
            | sys::FI_REMOTE_READ
            | sys::FI_REMOTE_WRITE
            | sys::FI_SEND
            | sys::FI_RECV) as u64;
        // SAFETY: the buffer is mapped for `len` bytes until Drop, after the registration closes.
        let r = unsafe { sys::rfaas_fi_mr_reg(h.domain, buf.cast(), len, access, 7, &mut mr) };
        if r != 0 {
            return Err(fi_error("fi_mr_reg", r as isize));
        }
        // SAFETY: `mr` is a fresh registration; binding/enabling as FI_MR_ENDPOINT asks.
        let (desc, key) = unsafe {
            if mr_mode & sys::FI_MR_ENDPOINT != 0 {
                sys::rfaas_fi_mr_bind_ep(mr, h.ep);
                sys::rfaas_fi_mr_enable(mr);
            }
            (sys::rfaas_fi_mr_desc(mr), sys::rfaas_fi_mr_key(mr))
        };
        let mut name = vec![0u8; 512];
        let mut nlen = name.len();
        // SAFETY: `name` has `nlen` writable bytes.
        let r = unsafe { sys::rfaas_fi_getname(h.ep, name.as_mut_ptr().cast(), &mut nlen) };
        let mut f = RawFloor {
            h,
            buf,
            len,
            mr,
            desc,
            key,
            virt: mr_mode & sys::FI_MR_VIRT_ADDR != 0,
            name: Vec::new(),
            peer: None,
            ctx: Box::default(),
            _mem: mem,
        };
        if r != 0 {
            return Err(fi_error("fi_getname", r as isize));
        }
        name.truncate(nlen);
        f.name = name;
        Ok(f)
    }

    /// `hex(endpoint name):buffer address:key`, for the peer's [`RawFloor::connect`].
    pub fn address(&self) -> String {
        let addr = if self.virt { self.buf as u64 } else { 0 };
        format!("{}:{addr}:{}", hex::encode(&self.name), self.key)
    }

    /// Targets the peer whose [`RawFloor::address`] is `peer`.
    pub fn connect(&mut self, peer: &str) -> Result<()> {
        let bad = |why: &str| FabricError::BadAddress {
            addr: peer.to_string(),
            reason: why.to_string(),
        };
        let mut it = peer.trim().split(':');
        let (Some(n), Some(a), Some(k), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(bad("expected name:address:key"));
        };
        let name = hex::decode(n).map_err(|_| bad("name is not hex"))?;
        let addr: u64 = a.parse().map_err(|_| bad("address"))?;
        let key: u64 = k.parse().map_err(|_| bad("key"))?;
        let mut fi_addr = 0u64;
        // SAFETY: `name` is readable; fi_av_insert reads one address from it.
        let r = unsafe { sys::rfaas_fi_av_insert(self.h.av, name.as_ptr().cast(), &mut fi_addr) };
        if r != 1 {
            return Err(bad("not an address of this libfabric provider"));
        }
        self.peer = Some((fi_addr, addr, key));
        Ok(())
    }

    /// Copies `bytes` to the start of the local buffer.
    pub fn fill(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.len);
        // SAFETY: at most `len` bytes into the mapped buffer, from a distinct slice.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.buf, n) };
    }

    /// The first `n` bytes of the local buffer.
    pub fn contents(&self, n: usize) -> Vec<u8> {
        let n = n.min(self.len);
        // SAFETY: in bounds of the mapped buffer; read after the write's completion was seen.
        unsafe { std::slice::from_raw_parts(self.buf, n) }.to_vec()
    }

    /// Writes the first `len` bytes of the local buffer to the start of the peer's, with CQ
    /// data `data` (`fi_writemsg` with `FI_REMOTE_CQ_DATA`).
    pub fn write_data(&mut self, len: usize, data: u64, timeout: Duration) -> Result<()> {
        let (peer, raddr, key) = self
            .peer
            .ok_or_else(|| FabricError::Invalid("ofi-raw: not connected".into()))?;
        let iov = libc::iovec {
            iov_base: self.buf.cast(),
            iov_len: len.min(self.len),
        };
        let rma = sys::fi_rma_iov {
            addr: raddr,
            len: iov.iov_len,
            key,
        };
        let mut desc = self.desc;
        let ctx: *mut sys::fi_context2 = &mut *self.ctx;
        let msg = rma_msg(&iov, &mut desc, peer, &rma, ctx.cast(), data);
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: `msg` and what it points to live across the call; the buffer stays
            // registered. The context is reused: its completions are only drained, never read.
            let r = unsafe {
                sys::rfaas_fi_writemsg(
                    self.h.ep,
                    &msg,
                    u64::from(sys::FI_COMPLETION | sys::FI_REMOTE_CQ_DATA),
                )
            };
            if r == 0 {
                return Ok(());
            }
            if r != -(sys::FI_EAGAIN as isize) || Instant::now() > deadline {
                return Err(fi_error("fi_writemsg", r));
            }
            self.poll();
        }
    }

    /// Reads the completion queue once; returns the CQ data of a remote write, if one came.
    fn poll(&mut self) -> Option<u64> {
        let mut e = [sys::fi_cq_data_entry::default(); 8];
        let mut got = None;
        // SAFETY: room for 8 entries of the configured format.
        let n = unsafe { sys::rfaas_fi_cq_read(self.h.cq, e.as_mut_ptr(), e.len()) };
        if n > 0 {
            for ent in &e[..n as usize] {
                if ent.flags & u64::from(sys::FI_REMOTE_CQ_DATA) != 0 {
                    got = Some(ent.data);
                }
            }
        } else if n == -(sys::FI_EAVAIL as isize) {
            let mut err = sys::fi_cq_err_entry::default();
            // SAFETY: a zeroed error entry with no provider data buffer.
            unsafe { sys::rfaas_fi_cq_readerr(self.h.cq, &mut err) };
        }
        got
    }

    /// Spins until a remote write with data arrives; returns its data.
    pub fn wait_data(&mut self, timeout: Duration) -> Result<u64> {
        let start = Instant::now();
        let mut n = 0u32;
        loop {
            if let Some(d) = self.poll() {
                return Ok(d);
            }
            n = n.wrapping_add(1);
            if n % 1024 == 0 && start.elapsed() > timeout {
                return Err(FabricError::Timeout(timeout));
            }
        }
    }
}

impl Drop for RawFloor {
    fn drop(&mut self) {
        // SAFETY: the registration is closed once, before its memory is unmapped; the
        // remaining handles close in `Handles`' Drop.
        unsafe {
            sys::rfaas_fi_close(self.mr.cast());
        }
        self.h.bounce_mr = std::ptr::null_mut();
        // Close the endpoint before the buffer goes away (with the fields, after this).
        self.h.close_now();
    }
}
