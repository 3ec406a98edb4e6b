//! Provider-neutral value types of the fabric API: access rights, work requests and completions.
//!
//! These mirror the subset of ibverbs that rFaaS uses. [`RemoteBuf`] is wire-visible: the invocation
//! protocol ships it inside headers, so its layout is fixed (`repr(C)`, 16 bytes).

use bitflags::bitflags;

bitflags! {
    /// Access rights of a memory region, as in `ibv_access_flags`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Access: u32 {
        /// The local side may write into the region (receives, read and atomic results land here).
        const LOCAL_WRITE = 1;
        /// Peers may RDMA-write into the region.
        const REMOTE_WRITE = 2;
        /// Peers may RDMA-read from the region.
        const REMOTE_READ = 4;
        /// Peers may run 8-byte atomics (fetch-add, compare-swap) on the region.
        const REMOTE_ATOMIC = 8;
    }
}

impl Access {
    /// Every right: what protocol buffers that are both sent from and written into usually want.
    pub const ALL: Access = Access::all();

    /// True when a peer may touch the region in any way (so it must be shared with peers).
    pub fn is_remote(self) -> bool {
        self.intersects(Access::REMOTE_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC)
    }
}

bitflags! {
    /// Flags of a send work request, as in `ibv_send_flags`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct SendFlags: u32 {
        /// Generate a completion on the send CQ when the request completes successfully
        /// (errors always generate one).
        const SIGNALED = 1;
        /// The receive completion this produces at the target wakes a CQ armed for solicited events.
        const SOLICITED = 2;
        /// A hint that the payload is small and may be copied at post time (ignored by software
        /// providers, which always copy at post time).
        const INLINE = 4;
    }
}

/// A buffer in a peer's registered memory: its virtual address in the owner, its rkey and length.
///
/// Wire-visible and identical for every provider (`repr(C)`, 16 bytes, little endian on the wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RemoteBuf {
    /// Virtual address of the first byte in the owner's address space (verbs semantics).
    pub addr: u64,
    /// Remote key of the memory region that holds the buffer.
    pub rkey: u32,
    /// Length in bytes.
    pub len: u32,
}

impl RemoteBuf {
    /// Size of the wire encoding in bytes.
    pub const WIRE_LEN: usize = 16;

    /// A sub-buffer starting `off` bytes into this one, `len` bytes long (not bounds-checked: the
    /// target checks every access against the registered region).
    pub fn slice(&self, off: u32, len: u32) -> RemoteBuf {
        RemoteBuf {
            addr: self.addr + u64::from(off),
            rkey: self.rkey,
            len,
        }
    }

    /// Little-endian wire encoding.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.rkey.to_le_bytes());
        b[12..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes [`RemoteBuf::to_bytes`]; `None` when `b` is shorter than 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<RemoteBuf> {
        let b: &[u8; 16] = b.get(..16)?.try_into().ok()?;
        Some(RemoteBuf {
            addr: u64::from_le_bytes(b[..8].try_into().ok()?),
            rkey: u32::from_le_bytes(b[8..12].try_into().ok()?),
            len: u32::from_le_bytes(b[12..].try_into().ok()?),
        })
    }
}

/// A local scatter/gather element: bytes of a locally registered region.
///
/// Build one with [`crate::rdma::MemoryRegion::sge`]; providers check `lkey` and bounds and
/// complete the request with [`WcStatus::LocalProtection`] when they do not match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sge {
    /// Local virtual address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Local key of the region that holds the bytes.
    pub lkey: u32,
}

/// The operation of a send work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Two-sided send into the next posted receive of the peer.
    Send,
    /// Two-sided send with a 32-bit immediate.
    SendImm(u32),
    /// One-sided write of the local SGE into `remote`; no completion at the target.
    Write(RemoteBuf),
    /// One-sided write plus a 32-bit immediate; consumes one posted receive at the target and
    /// produces a receive completion there after the data is visible. Zero length is allowed.
    WriteImm(RemoteBuf, u32),
    /// One-sided read of `remote` into the local SGE.
    Read(RemoteBuf),
    /// 8-byte atomic fetch-and-add on `remote` (8-byte aligned); the old value lands in the SGE.
    FetchAdd {
        /// The remote 8-byte word.
        remote: RemoteBuf,
        /// The value added.
        add: u64,
    },
    /// 8-byte atomic compare-and-swap on `remote`; the old value lands in the SGE.
    CompareSwap {
        /// The remote 8-byte word.
        remote: RemoteBuf,
        /// Expected value.
        compare: u64,
        /// Value stored when the word equals `compare`.
        swap: u64,
    },
}

impl Op {
    /// The completion opcode a successful request of this kind reports on the send CQ.
    pub fn wc_opcode(&self) -> WcOpcode {
        match self {
            Op::Send | Op::SendImm(_) => WcOpcode::Send,
            Op::Write(_) => WcOpcode::Write,
            Op::WriteImm(..) => WcOpcode::WriteImm,
            Op::Read(_) => WcOpcode::Read,
            Op::FetchAdd { .. } => WcOpcode::FetchAdd,
            Op::CompareSwap { .. } => WcOpcode::CompareSwap,
        }
    }
}

/// A send work request. At most one SGE (all rFaaS needs); `sge: None` means zero bytes.
#[derive(Clone, Copy, Debug)]
pub struct SendWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// What to do.
    pub op: Op,
    /// The local bytes sent/written, or where read and atomic results land.
    pub sge: Option<Sge>,
    /// Signalling and solicitation.
    pub flags: SendFlags,
}

/// A receive work request: where the payload of a `Send` lands (`WriteImm` payloads land at the
/// address the initiator named; their receive only carries the completion).
#[derive(Clone, Copy, Debug)]
pub struct RecvWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Receive buffer; `None` is legal for queues that only take write-with-immediate.
    pub sge: Option<Sge>,
}

/// Opcode of a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcOpcode {
    /// A send finished (initiator side).
    Send,
    /// An RDMA write finished (initiator side).
    Write,
    /// An RDMA write with immediate finished (initiator side).
    WriteImm,
    /// An RDMA read finished (initiator side).
    Read,
    /// A fetch-add finished (initiator side).
    FetchAdd,
    /// A compare-swap finished (initiator side).
    CompareSwap,
    /// A send arrived into a posted receive (target side).
    Recv,
    /// A write with immediate arrived and consumed a posted receive (target side).
    RecvWriteImm,
}

/// Status of a completion, as in `ibv_wc_status` (the subset that can happen here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcStatus {
    /// The request finished.
    Success,
    /// A receive buffer was too small for the incoming send.
    LocalLength,
    /// A local SGE did not match a registered region (wrong lkey, out of bounds, or no
    /// `LOCAL_WRITE` where the request writes locally).
    LocalProtection,
    /// The target refused the access: wrong rkey, out of bounds, or a missing access right.
    /// The target's memory is unchanged.
    RemoteAccess,
    /// The target could not run the request (misaligned atomic, malformed request).
    RemoteInvalidRequest,
    /// The target had no posted receive for longer than the receiver-not-ready timeout.
    RnrRetryExceeded,
    /// The peer stopped answering (died, or the link broke).
    RetryExceeded,
    /// The queue pair is in the error state: the request was flushed without running.
    WrFlush,
    /// Any other failure.
    Fatal,
}

/// A work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wc {
    /// The `wr_id` of the request.
    pub wr_id: u64,
    /// Outcome.
    pub status: WcStatus,
    /// What completed.
    pub opcode: WcOpcode,
    /// Bytes received (receive side) or transferred (initiator side).
    pub byte_len: u32,
    /// Immediate data (host order), for `RecvWriteImm` and `Recv` of a `SendImm`.
    pub imm: Option<u32>,
    /// Number of the local queue pair the completion belongs to.
    pub qp_num: u32,
}

impl Wc {
    /// The completion of request `wr_id` of queue pair `qp_num`.
    #[inline]
    pub fn new(
        qp_num: u32,
        wr_id: u64,
        status: WcStatus,
        opcode: WcOpcode,
        byte_len: u32,
        imm: Option<u32>,
    ) -> Wc {
        Wc {
            wr_id,
            status,
            opcode,
            byte_len,
            imm,
            qp_num,
        }
    }

    /// True when the request succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == WcStatus::Success
    }

    /// A placeholder to initialise completion arrays with.
    pub const EMPTY: Wc = Wc {
        wr_id: 0,
        status: WcStatus::Fatal,
        opcode: WcOpcode::Send,
        byte_len: 0,
        imm: None,
        qp_num: 0,
    };
}

/// Sizes of a queue pair, given at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    /// Most send requests in flight (software providers complete at post time; this bounds the
    /// responses a tcp initiator waits for).
    pub max_send_wr: u32,
    /// Most receives posted at once; also the depth of the incoming completion ring.
    pub max_recv_wr: u32,
    /// Largest two-sided message (Send / SendImm) in bytes.
    pub max_msg_size: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 64,
            max_recv_wr: 64,
            max_msg_size: 4096,
        }
    }
}

/// How long a queue pair waits before it fails a request, as verbs' RNR and retry timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpTimeouts {
    /// How long a write-with-immediate or send waits for the target to post a receive before it
    /// completes with [`WcStatus::RnrRetryExceeded`].
    pub rnr: std::time::Duration,
    /// How long a request that needs the target's answer (tcp reads and atomics) waits before the
    /// queue pair fails with [`WcStatus::RetryExceeded`].
    pub response: std::time::Duration,
}

impl Default for QpTimeouts {
    fn default() -> Self {
        QpTimeouts {
            rnr: std::time::Duration::from_millis(500),
            response: std::time::Duration::from_secs(5),
        }
    }
}
