//! The incoming-completion ring of one shm queue pair.
//!
//! The receiver owns the ring (a shared segment) and passes it to its peer, which is the only
//! producer. Layout, all little endian, cache-line separated:
//!
//! ```text
//! 0     posted: u64      receives the owner has posted, ever (credits for the producer)
//! 64    closed: u32      set by either side when the connection is torn down
//! 128   entries[depth]   64 bytes each: seq u64, opcode u32, imm u32, byte_len u32, flags u32
//! ...   slab[depth]      max_msg_size bytes each: payloads of two-sided sends
//! ```
//!
//! Entry `i` holds message number `n` (with `n % depth == i`) once its `seq` equals `n + 1`
//! (stored with Release after the entry and any payload are written). Because the producer only
//! writes message `n` after the owner posted receive `n`, and the owner posts at most `depth`
//! receives ahead of what it consumed, the producer never overwrites an unconsumed entry.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::rdma::error::{FabricError, Result};
use crate::rdma::segment::Segment;

pub(crate) const HEADER: usize = 128;
pub(crate) const ENTRY: usize = 64;
/// Largest ring the handshake accepts.
pub(crate) const MAX_DEPTH: u32 = 1 << 16;
/// Largest two-sided message the handshake accepts.
pub(crate) const MAX_MSG: u32 = 1 << 20;

pub(crate) const OP_SEND: u32 = 1;
pub(crate) const OP_SEND_IMM: u32 = 2;
pub(crate) const OP_WRITE_IMM: u32 = 3;
pub(crate) const FLAG_SOLICITED: u32 = 1;

/// A mapped ring (the owner's, or the producer's view of the peer's).
#[derive(Debug)]
pub(crate) struct Ring {
    seg: Arc<Segment>,
    depth: u32,
    msg_size: u32,
}

/// One decoded entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub opcode: u32,
    pub imm: u32,
    pub byte_len: u32,
    pub flags: u32,
}

/// Bytes a ring of this shape needs.
pub(crate) fn ring_bytes(depth: u32, msg_size: u32) -> usize {
    HEADER + depth as usize * (ENTRY + msg_size as usize)
}

impl Ring {
    /// Creates a ring for `depth` receives (rounded up to a power of two) and messages of up to
    /// `msg_size` bytes.
    pub(crate) fn create(depth: u32, msg_size: u32) -> Result<Ring> {
        let depth = depth.clamp(1, MAX_DEPTH).next_power_of_two();
        if msg_size > MAX_MSG {
            return Err(FabricError::Invalid(format!(
                "max_msg_size {msg_size} > {MAX_MSG}"
            )));
        }
        let seg = Segment::create("rfaas-shm-ring", ring_bytes(depth, msg_size), true)?;
        Ok(Ring {
            seg: Arc::new(seg),
            depth,
            msg_size,
        })
    }

    /// Wraps a peer's ring after checking that the segment is large enough for its shape.
    pub(crate) fn attach(seg: Segment, depth: u32, msg_size: u32) -> Result<Ring> {
        if !depth.is_power_of_two() || depth > MAX_DEPTH || msg_size > MAX_MSG {
            return Err(FabricError::Handshake(format!(
                "bad ring shape {depth} x {msg_size}"
            )));
        }
        if seg.len() < ring_bytes(depth, msg_size) || !seg.writable() {
            return Err(FabricError::Handshake("peer ring segment too small".into()));
        }
        Ok(Ring {
            seg: Arc::new(seg),
            depth,
            msg_size,
        })
    }

    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }
    pub(crate) fn depth(&self) -> u32 {
        self.depth
    }
    pub(crate) fn msg_size(&self) -> u32 {
        self.msg_size
    }

    fn word64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= self.seg.len());
        // SAFETY: offsets used are inside the segment (header or an entry of a checked shape)
        // and 8-byte aligned; the segment lives as long as `self`.
        unsafe { AtomicU64::from_ptr(self.seg.as_ptr().add(off).cast()) }
    }
    fn word32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= self.seg.len());
        // SAFETY: as in `word64`, 4-byte aligned.
        unsafe { AtomicU32::from_ptr(self.seg.as_ptr().add(off).cast()) }
    }

    /// Receives posted so far (credits).
    #[inline]
    pub(crate) fn posted(&self) -> &AtomicU64 {
        self.word64(0)
    }

    /// Set when either side tore the connection down.
    #[inline]
    pub(crate) fn closed(&self) -> &AtomicU32 {
        self.word32(64)
    }

    #[inline]
    fn entry_off(&self, n: u64) -> usize {
        HEADER + (n & u64::from(self.depth - 1)) as usize * ENTRY
    }

    /// Where the payload of message `n` goes (producer) or comes from (owner).
    #[inline]
    pub(crate) fn slab_ptr(&self, n: u64) -> *mut u8 {
        let i = (n & u64::from(self.depth - 1)) as usize;
        let off = HEADER + self.depth as usize * ENTRY + i * self.msg_size as usize;
        // SAFETY: `off + msg_size` is within `ring_bytes(depth, msg_size)` (checked at
        // create/attach).
        unsafe { self.seg.as_ptr().add(off) }
    }

    /// Producer: publishes message `n`. Its payload, if any, must already be in the slab.
    #[inline]
    pub(crate) fn publish(&self, n: u64, e: Entry) {
        let off = self.entry_off(n);
        self.word32(off + 8).store(e.opcode, Ordering::Relaxed);
        self.word32(off + 12).store(e.imm, Ordering::Relaxed);
        self.word32(off + 16).store(e.byte_len, Ordering::Relaxed);
        self.word32(off + 20).store(e.flags, Ordering::Relaxed);
        // SeqCst (an `xchg` on x86, a full barrier): it orders the publication before the
        // producer's look at the waiter's armed word (`Notifier::signal_after_seqcst`), which is
        // cheaper than a Release store followed by a separate fence.
        self.word64(off).store(n + 1, Ordering::SeqCst);
    }

    /// Owner: message `n` if it has been published.
    #[inline]
    pub(crate) fn peek(&self, n: u64) -> Option<Entry> {
        let off = self.entry_off(n);
        if self.word64(off).load(Ordering::Acquire) != n + 1 {
            return None;
        }
        Some(Entry {
            opcode: self.word32(off + 8).load(Ordering::Relaxed),
            imm: self.word32(off + 12).load(Ordering::Relaxed),
            byte_len: self.word32(off + 16).load(Ordering::Relaxed),
            flags: self.word32(off + 20).load(Ordering::Relaxed),
        })
    }
}

/// One ring in one process, its producer and its owner at once: the shm data path's
/// publish-and-poll step alone, for the micro-benchmarks in `benches/`. Not part of the fabric
/// API (hidden from the docs).
#[doc(hidden)]
#[derive(Debug)]
pub struct RingLoop {
    ring: Ring,
    next: u64,
}

impl RingLoop {
    /// A ring of `depth` entries (rounded up to a power of two) without payload slabs.
    pub fn new(depth: u32) -> Result<RingLoop> {
        Ok(RingLoop {
            ring: Ring::create(depth, 0)?,
            next: 0,
        })
    }

    /// Publishes a write-with-immediate entry carrying `imm`, as a producer does, then polls it
    /// as the owner does; returns the immediate the owner read (`None` would be a bug).
    #[inline]
    pub fn round_trip(&mut self, imm: u32) -> Option<u32> {
        let n = self.next;
        self.ring.publish(
            n,
            Entry {
                opcode: OP_WRITE_IMM,
                imm,
                byte_len: 0,
                flags: 0,
            },
        );
        let e = self.ring.peek(n)?;
        self.next += 1;
        Some(e.imm)
    }
}
