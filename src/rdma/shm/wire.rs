//! The shm handshake: one seqpacket message each way, carrying the queue pair's shape, the
//! private data and (with `SCM_RIGHTS`) the descriptors of the segments the peer maps.
//!
//! ```text
//! magic "RFAASHM1" | version u32 | kind u32 | pid u32 | qp_num u32 | ring_depth u32 |
//! msg_size u32 | table_cap u32 | pd_len u32 | rw_base u64 | rw_len u64 | ro_base u64 |
//! ro_len u64 | private data (pd_len bytes)
//! ```
//! A connect or accept carries six descriptors, in this order: read-write arena, read-only arena
//! (read-only fd), region table (read-only fd), the sender's incoming ring, the notification
//! segment of the completion queue behind that ring, and that queue's eventfd. A reject carries
//! none; its private data is the reason.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

use crate::rdma::error::{FabricError, Result};
use crate::rdma::notify::wait_readable;
use crate::rdma::MAX_PRIVATE_DATA;

const MAGIC: &[u8; 8] = b"RFAASHM1";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 * 8 + 8 * 4;
/// Descriptors a connect or accept carries.
pub(crate) const NUM_FDS: usize = 6;
/// Largest message: header plus the largest private data.
pub(crate) const MAX_MSG: usize = HEADER + MAX_PRIVATE_DATA;

/// Kind of a handshake message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Connect = 1,
    Accept = 2,
    Reject = 3,
}

/// A handshake message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub kind: Kind,
    pub pid: u32,
    pub qp_num: u32,
    pub ring_depth: u32,
    pub msg_size: u32,
    pub table_cap: u32,
    pub rw_base: u64,
    pub rw_len: u64,
    pub ro_base: u64,
    pub ro_len: u64,
    pub private_data: Vec<u8>,
}

impl Hello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + self.private_data.len());
        b.extend_from_slice(MAGIC);
        for v in [
            VERSION,
            self.kind as u32,
            self.pid,
            self.qp_num,
            self.ring_depth,
            self.msg_size,
            self.table_cap,
            self.private_data.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.rw_base, self.rw_len, self.ro_base, self.ro_len] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.private_data);
        b
    }

    /// Decodes and validates a message; the error says what was wrong, for the log.
    pub(crate) fn decode(b: &[u8]) -> std::result::Result<Hello, String> {
        if b.len() < HEADER {
            return Err(format!(
                "message of {} bytes is shorter than the {HEADER}-byte header",
                b.len()
            ));
        }
        if &b[..8] != MAGIC {
            return Err("bad magic (not an rfaas shm peer)".into());
        }
        let u32_at = |i: usize| {
            u32::from_le_bytes([b[8 + 4 * i], b[9 + 4 * i], b[10 + 4 * i], b[11 + 4 * i]])
        };
        let u64_at = |i: usize| {
            let o = 8 + 32 + 8 * i;
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        if u32_at(0) != VERSION {
            return Err(format!(
                "protocol version {} (expected {VERSION})",
                u32_at(0)
            ));
        }
        let kind = match u32_at(1) {
            1 => Kind::Connect,
            2 => Kind::Accept,
            3 => Kind::Reject,
            k => return Err(format!("unknown message kind {k}")),
        };
        let pd_len = u32_at(7) as usize;
        if pd_len > MAX_PRIVATE_DATA {
            return Err(format!(
                "private data of {pd_len} bytes exceeds {MAX_PRIVATE_DATA}"
            ));
        }
        if b.len() != HEADER + pd_len {
            return Err(format!(
                "message has {} bytes, header says {}",
                b.len(),
                HEADER + pd_len
            ));
        }
        Ok(Hello {
            kind,
            pid: u32_at(2),
            qp_num: u32_at(3),
            ring_depth: u32_at(4),
            msg_size: u32_at(5),
            table_cap: u32_at(6),
            rw_base: u64_at(0),
            rw_len: u64_at(1),
            ro_base: u64_at(2),
            ro_len: u64_at(3),
            private_data: b[HEADER..].to_vec(),
        })
    }

    pub(crate) fn reject(reason: &str) -> Hello {
        let mut pd = reason.as_bytes().to_vec();
        pd.truncate(MAX_PRIVATE_DATA);
        Hello {
            kind: Kind::Reject,
            pid: std::process::id(),
            qp_num: 0,
            ring_depth: 0,
            msg_size: 0,
            table_cap: 0,
            rw_base: 0,
            rw_len: 0,
            ro_base: 0,
            ro_len: 0,
            private_data: pd,
        }
    }
}

/// Sends one message with descriptors.
pub(crate) fn send(sock: BorrowedFd<'_>, msg: &Hello, fds: &[RawFd]) -> Result<()> {
    let bytes = msg.encode();
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(|e| FabricError::io("send handshake", e))?;
    Ok(())
}

/// Receives one message and its descriptors, waiting at most `timeout`.
pub(crate) fn recv(sock: BorrowedFd<'_>, timeout: Duration) -> Result<(Hello, Vec<OwnedFd>)> {
    if !wait_readable(sock.as_raw_fd(), timeout)? {
        return Err(FabricError::Timeout(timeout));
    }
    let mut buf = vec![0u8; MAX_MSG + 1];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; NUM_FDS]);
    let (len, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(|e| FabricError::io("receive handshake", e))?;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed `fd` in our table for us; nothing
                        // else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if len == 0 {
        return Err(FabricError::Handshake(
            "peer closed the connection during the handshake".into(),
        ));
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(FabricError::Handshake(
            "handshake message or descriptors truncated".into(),
        ));
    }
    let hello = Hello::decode(&buf[..len]).map_err(FabricError::Handshake)?;
    Ok((hello, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let h = Hello {
            private_data: b"hello".to_vec(),
            ..Hello::reject("")
        };
        let h = Hello {
            kind: Kind::Connect,
            ring_depth: 64,
            rw_len: 1 << 30,
            ..h
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        let mut e = h.encode();
        e[0] = b'X';
        assert!(Hello::decode(&e).unwrap_err().contains("magic"));
        assert!(Hello::decode(&h.encode()[..20]).is_err());
        let mut e = h.encode();
        e.push(0);
        assert!(Hello::decode(&e).is_err(), "length must match the header");
    }
}
