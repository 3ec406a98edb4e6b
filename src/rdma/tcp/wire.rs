//! What travels on a tcp queue pair's stream: the connection handshake and the frames, plus the
//! socket calls that move them.
//!
//! Everything is little endian. A frame is a fixed 32-byte [`Header`] followed by `len` payload
//! bytes:
//!
//! ```text
//!  0  op      u8    WRITE, WRITE_IMM, SEND, READ, FETCH_ADD, CMP_SWAP (requests),
//!                   READ_RESP, ATOMIC_RESP, ACK, NAK (answers)
//!  1  flags   u8    SOLICITED | HAS_IMM
//!  2  -       u16   zero
//!  4  len     u32   payload bytes that follow the header
//!  8  seq     u32   requests: the sender's request number (1, 2, ...);
//!                   READ_RESP / ATOMIC_RESP / NAK: the request they answer
//! 12  ack     u32   every frame: the last request of the receiver that the sender has applied
//! 16  raddr   u64   target address (requests)
//! 24  rkey    u32   target region (requests)
//! 28  arg     u32   immediate (WRITE_IMM, SEND with HAS_IMM), length (READ),
//!                   status (NAK)
//! ```
//!
//! Atomic requests carry 16 payload bytes (`add` or `compare`, then `swap`); atomic answers carry
//! the old value (8 bytes); read answers carry the bytes read.
//!
//! The handshake is one fixed 40-byte [`Hello`] each way followed by its data: the connect's
//! private data (client → server), then the accept's private data or the reject's reason
//! (server → client).

use std::io;
use std::os::fd::RawFd;

use crate::rdma::types::WcStatus;
use crate::rdma::MAX_PRIVATE_DATA;

/// Bytes in a frame header.
pub(crate) const HDR_LEN: usize = 32;

/// Largest payload a frame may announce (a sanity bound; regions bound real transfers).
pub(crate) const MAX_PAYLOAD: u32 = 1 << 30;

/// Frame operations.
pub(crate) mod op {
    /// RDMA write: payload lands at `raddr`.
    pub const WRITE: u8 = 1;
    /// RDMA write with immediate: payload lands at `raddr`, then a receive completes.
    pub const WRITE_IMM: u8 = 2;
    /// Two-sided send (immediate if `HAS_IMM`).
    pub const SEND: u8 = 3;
    /// RDMA read of `arg` bytes at `raddr`.
    pub const READ: u8 = 4;
    /// 8-byte fetch-and-add at `raddr`.
    pub const FETCH_ADD: u8 = 5;
    /// 8-byte compare-and-swap at `raddr`.
    pub const CMP_SWAP: u8 = 6;
    /// Answer to READ: the bytes.
    pub const READ_RESP: u8 = 7;
    /// Answer to an atomic: the old value.
    pub const ATOMIC_RESP: u8 = 8;
    /// Acknowledges requests up to `ack` (no payload).
    pub const ACK: u8 = 9;
    /// Request `seq` failed with status `arg`; the sender's queue pair is in the error state.
    pub const NAK: u8 = 10;
}

/// Frame flags.
pub(crate) mod flag {
    /// The receive completion wakes solicited-only waiters.
    pub const SOLICITED: u8 = 1;
    /// `arg` carries an immediate (SEND).
    pub const HAS_IMM: u8 = 2;
    /// Every flag this version knows.
    pub const ALL: u8 = SOLICITED | HAS_IMM;
}

/// A decoded frame header. Any 32 bytes decode; [`Header::validate`] says whether they make sense.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub op: u8,
    pub flags: u8,
    pub reserved: u16,
    pub len: u32,
    pub seq: u32,
    pub ack: u32,
    pub raddr: u64,
    pub rkey: u32,
    pub arg: u32,
}

impl Header {
    /// A header with `op`, everything else zero.
    pub(crate) fn new(op: u8) -> Header {
        Header {
            op,
            ..Header::default()
        }
    }

    /// Wire encoding.
    pub(crate) fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.op;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.reserved.to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..12].copy_from_slice(&self.seq.to_le_bytes());
        b[12..16].copy_from_slice(&self.ack.to_le_bytes());
        b[16..24].copy_from_slice(&self.raddr.to_le_bytes());
        b[24..28].copy_from_slice(&self.rkey.to_le_bytes());
        b[28..32].copy_from_slice(&self.arg.to_le_bytes());
        b
    }

    /// Decodes the first [`HDR_LEN`] bytes of `b` (which must be at least that long).
    pub(crate) fn decode(b: &[u8; HDR_LEN]) -> Header {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[16..24]);
        Header {
            op: b[0],
            flags: b[1],
            reserved: u16::from_le_bytes([b[2], b[3]]),
            len: u32_at(4),
            seq: u32_at(8),
            ack: u32_at(12),
            raddr: u64::from_le_bytes(a),
            rkey: u32_at(24),
            arg: u32_at(28),
        }
    }

    /// True for operations a peer asks us to run (they carry a request number).
    pub(crate) fn is_request(&self) -> bool {
        matches!(
            self.op,
            op::WRITE | op::WRITE_IMM | op::SEND | op::READ | op::FETCH_ADD | op::CMP_SWAP
        )
    }

    /// Checks the fields that do not depend on connection state; `Err` names what is wrong.
    pub(crate) fn validate(&self) -> std::result::Result<(), &'static str> {
        if self.reserved != 0 || self.flags & !flag::ALL != 0 {
            return Err("reserved header bits set");
        }
        if self.len > MAX_PAYLOAD {
            return Err("payload length too large");
        }
        let len_ok = match self.op {
            op::WRITE | op::WRITE_IMM | op::SEND | op::READ_RESP => true,
            op::READ | op::ACK | op::NAK => self.len == 0,
            op::FETCH_ADD | op::CMP_SWAP => self.len == 16,
            op::ATOMIC_RESP => self.len == 8,
            _ => return Err("unknown frame operation"),
        };
        if !len_ok {
            return Err("payload length does not fit the operation");
        }
        if self.op == op::READ && self.arg > MAX_PAYLOAD {
            return Err("read length too large");
        }
        Ok(())
    }
}

/// `a` is at or before `b` in wrapping sequence order.
#[inline]
pub(crate) fn seq_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

/// Encodes a completion status for a NAK.
pub(crate) fn status_code(s: WcStatus) -> u32 {
    match s {
        WcStatus::RemoteAccess => 1,
        WcStatus::RemoteInvalidRequest => 2,
        WcStatus::RnrRetryExceeded => 3,
        _ => 4,
    }
}

/// Decodes a NAK's status (unknown codes are `Fatal`).
pub(crate) fn status_from_code(c: u32) -> WcStatus {
    match c {
        1 => WcStatus::RemoteAccess,
        2 => WcStatus::RemoteInvalidRequest,
        3 => WcStatus::RnrRetryExceeded,
        _ => WcStatus::Fatal,
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake

/// First bytes of every handshake message.
pub(crate) const MAGIC: [u8; 4] = *b"RFTP";
/// Protocol version.
pub(crate) const VERSION: u16 = 1;
/// Bytes of the fixed part of a handshake message.
pub(crate) const HELLO_LEN: usize = 40;

/// Kinds of handshake messages.
pub(crate) mod kind {
    /// Client → server: connect request.
    pub const HELLO: u16 = 1;
    /// Server → client: accepted.
    pub const ACCEPT: u16 = 2;
    /// Server → client: rejected (data = reason).
    pub const REJECT: u16 = 3;
}

/// The fixed part of a handshake message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hello {
    pub kind: u16,
    pub qp_num: u32,
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_msg_size: u32,
    /// The sender's receiver-not-ready timeout in milliseconds (how long the peer may hold its
    /// write-with-immediate or send for a receive).
    pub rnr_ms: u32,
    pub pid: u32,
    /// Bytes of data that follow.
    pub data_len: u32,
}

/// Why a handshake message was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HelloError {
    BadMagic,
    BadVersion(u16),
    BadKind(u16),
    TooMuchData(u32),
    BadCaps,
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::BadMagic => f.write_str("wrong magic (not an rfaas tcp peer)"),
            HelloError::BadVersion(v) => {
                write!(f, "unsupported protocol version {v} (want {VERSION})")
            }
            HelloError::BadKind(k) => write!(f, "unexpected handshake message kind {k}"),
            HelloError::TooMuchData(n) => {
                write!(
                    f,
                    "private data of {n} bytes exceeds the limit of {MAX_PRIVATE_DATA}"
                )
            }
            HelloError::BadCaps => f.write_str("queue sizes out of range"),
        }
    }
}

impl Hello {
    /// Wire encoding of the fixed part.
    pub(crate) fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.kind.to_le_bytes());
        let words = [
            self.qp_num,
            self.max_send_wr,
            self.max_recv_wr,
            self.max_msg_size,
            self.rnr_ms,
            self.pid,
            0,
            self.data_len,
        ];
        for (i, w) in words.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Decodes and checks the fixed part; `expect` lists the kinds acceptable here.
    pub(crate) fn decode(
        b: &[u8; HELLO_LEN],
        expect: &[u16],
    ) -> std::result::Result<Hello, HelloError> {
        if b[..4] != MAGIC {
            return Err(HelloError::BadMagic);
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(HelloError::BadVersion(version));
        }
        let kind = u16::from_le_bytes([b[6], b[7]]);
        if !expect.contains(&kind) {
            return Err(HelloError::BadKind(kind));
        }
        let w = |i: usize| {
            u32::from_le_bytes([b[8 + 4 * i], b[9 + 4 * i], b[10 + 4 * i], b[11 + 4 * i]])
        };
        let h = Hello {
            kind,
            qp_num: w(0),
            max_send_wr: w(1),
            max_recv_wr: w(2),
            max_msg_size: w(3),
            rnr_ms: w(4),
            pid: w(5),
            data_len: w(7),
        };
        if h.data_len as usize > MAX_PRIVATE_DATA {
            return Err(HelloError::TooMuchData(h.data_len));
        }
        let sane = |v: u32| (1..=1 << 20).contains(&v);
        if kind != kind::REJECT && !(sane(h.max_send_wr) && sane(h.max_recv_wr)) {
            return Err(HelloError::BadCaps);
        }
        Ok(h)
    }
}

// ---------------------------------------------------------------------------------------------
// Socket calls

/// `recv(MSG_DONTWAIT)` into `len` bytes at `ptr`. `Ok(0)` is end of stream; `WouldBlock` when
/// nothing is there. Retries on EINTR.
///
/// # Safety
/// `ptr..ptr+len` must be writable memory that nothing else accesses as a Rust reference while
/// the call runs.
pub(crate) unsafe fn recv_nb(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: the caller guarantees the buffer; MSG_DONTWAIT never blocks.
        let r = unsafe { libc::recv(fd, ptr.cast(), len, libc::MSG_DONTWAIT) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends every byte of `parts` (a header and an optional payload) with one `sendmsg` when the
/// kernel takes it all, looping on partial writes. The socket is blocking with a send timeout,
/// so this waits at most that long for room; a timeout is `TimedOut`.
///
/// # Safety
/// Every `(ptr, len)` in `parts` must be readable memory for the duration of the call.
pub(crate) unsafe fn send_all(fd: RawFd, parts: &[(*const u8, usize)]) -> io::Result<()> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2];
    let mut n = 0;
    for &(p, l) in parts.iter().filter(|(_, l)| *l > 0) {
        if n == iov.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many parts",
            ));
        }
        iov[n] = libc::iovec {
            iov_base: p as *mut libc::c_void,
            iov_len: l,
        };
        n += 1;
    }
    let mut first = 0;
    while first < n {
        // SAFETY: an all-zero msghdr is valid ("no name, no control data").
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov[first..n].as_mut_ptr();
        msg.msg_iovlen = (n - first) as _;
        // SAFETY: `msg` points at iovecs over memory the caller keeps readable.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "send timed out"))
                }
                _ => return Err(e),
            }
        }
        let mut sent = r as usize;
        while first < n && sent >= iov[first].iov_len {
            sent -= iov[first].iov_len;
            first += 1;
        }
        if first < n && sent > 0 {
            // SAFETY: `sent < iov_len`, so the advanced pointer stays inside the part.
            iov[first].iov_base = unsafe { iov[first].iov_base.cast::<u8>().add(sent) }.cast();
            iov[first].iov_len -= sent;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_validates() {
        let h = Header {
            op: op::WRITE_IMM,
            flags: flag::SOLICITED,
            reserved: 0,
            len: 77,
            seq: 9,
            ack: 3,
            raddr: 0x1234_5678_9abc,
            rkey: 0x4001,
            arg: 0xdead_beef,
        };
        assert_eq!(Header::decode(&h.encode()), h);
        assert!(h.validate().is_ok());
        assert!(Header { op: 99, ..h }.validate().is_err());
        assert!(Header { flags: 0x80, ..h }.validate().is_err());
        assert!(Header {
            op: op::FETCH_ADD,
            len: 8,
            ..h
        }
        .validate()
        .is_err());
        assert!(Header {
            len: MAX_PAYLOAD + 1,
            ..h
        }
        .validate()
        .is_err());
    }

    #[test]
    fn hello_checks_magic_version_and_sizes() {
        let h = Hello {
            kind: kind::HELLO,
            qp_num: 5,
            max_send_wr: 64,
            max_recv_wr: 64,
            max_msg_size: 4096,
            rnr_ms: 500,
            pid: 1,
            data_len: 56,
        };
        let b = h.encode();
        assert_eq!(Hello::decode(&b, &[kind::HELLO]), Ok(h));
        assert_eq!(
            Hello::decode(&b, &[kind::ACCEPT]),
            Err(HelloError::BadKind(kind::HELLO))
        );
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(
            Hello::decode(&bad, &[kind::HELLO]),
            Err(HelloError::BadMagic)
        );
        let mut bad = b;
        bad[4] = 9;
        assert_eq!(
            Hello::decode(&bad, &[kind::HELLO]),
            Err(HelloError::BadVersion(9))
        );
        let big = Hello {
            data_len: MAX_PRIVATE_DATA as u32 + 1,
            ..h
        }
        .encode();
        assert!(matches!(
            Hello::decode(&big, &[kind::HELLO]),
            Err(HelloError::TooMuchData(_))
        ));
        let zero = Hello {
            max_send_wr: 0,
            ..h
        }
        .encode();
        assert_eq!(
            Hello::decode(&zero, &[kind::HELLO]),
            Err(HelloError::BadCaps)
        );
    }

    #[test]
    fn sequence_order_wraps() {
        assert!(seq_le(1, 1));
        assert!(seq_le(1, 2));
        assert!(!seq_le(2, 1));
        assert!(seq_le(u32::MAX, 0));
        assert!(!seq_le(0, u32::MAX));
    }
}
