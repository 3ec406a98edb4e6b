//! Wire format of one invocation.
//!
//! Input slot of a worker (remote-writable by its client), written with one write-with-immediate:
//!
//! ```text
//! offset size
//! 0      4    magic "RFI1"
//! 4      4    invocation id (u32, per connection, wraps)
//! 8      2    function index (order of the names the client asked for at allocation)
//! 10     2    flags (bit 0: the caller wants a solicited reply, i.e. it may be sleeping)
//! 12     4    payload length
//! 16     16   output buffer of the caller: addr u64, rkey u32, capacity u32
//! 32     n    payload
//! ```
//! Request immediate: `slot (8 bits) | low 24 bits of the id << 8`.
//! Result immediate: `slot (8 bits) | status (8 bits) << 8 | low 16 bits of the id << 16`; the
//! result bytes (possibly none) are the write's payload, their count its `byte_len`.
//! All integers little endian.

use crate::rdma::RemoteBuf;

/// Bytes of the header in front of every payload.
pub const HEADER_LEN: usize = 32;
/// Most input slots per worker (the slot index travels in 8 bits).
pub const MAX_SLOTS: u32 = 256;
const MAGIC: [u8; 4] = *b"RFI1";
/// Header flag: the caller sleeps on its completion queue; reply with a solicited write.
pub const FLAG_SOLICITED_REPLY: u16 = 1;

/// Outcome of an invocation, as the executor reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The function ran; the output is the write's payload.
    Ok = 0,
    /// The function index is not one the allocation resolved.
    UnknownFunction = 1,
    /// The function produced more bytes than the caller's output capacity (nothing written).
    OutputTooLarge = 2,
    /// The function panicked (Rust) and was caught.
    FunctionPanicked = 3,
    /// The executor is shutting down and did not run the function.
    ShuttingDown = 4,
    /// The request was malformed (bad header, payload length mismatch).
    BadRequest = 5,
}

impl Status {
    /// Decodes a status byte (unknown values are reported as `BadRequest`).
    pub fn from_u8(v: u8) -> Status {
        match v {
            0 => Status::Ok,
            1 => Status::UnknownFunction,
            2 => Status::OutputTooLarge,
            3 => Status::FunctionPanicked,
            4 => Status::ShuttingDown,
            _ => Status::BadRequest,
        }
    }
}

/// A malformed header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Fewer bytes than a header.
    #[error("invocation of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    /// Not an rfaas invocation header.
    #[error("bad invocation magic")]
    BadMagic,
    /// The header's payload length disagrees with what arrived.
    #[error("header says {header} payload bytes, {arrived} arrived")]
    LengthMismatch {
        /// Length in the header.
        header: u32,
        /// Bytes that arrived after the header.
        arrived: usize,
    },
}

/// The header of one invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvocationHeader {
    /// Per-connection invocation id (wraps).
    pub id: u32,
    /// Function index.
    pub function: u16,
    /// Flags (`FLAG_SOLICITED_REPLY`).
    pub flags: u16,
    /// Payload bytes after the header.
    pub payload_len: u32,
    /// Where the result goes.
    pub output: RemoteBuf,
}

impl InvocationHeader {
    /// Encodes into the first [`HEADER_LEN`] bytes of `b` (panics if shorter).
    pub fn encode(&self, b: &mut [u8]) {
        let b = &mut b[..HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..10].copy_from_slice(&self.function.to_le_bytes());
        b[10..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        b[16..32].copy_from_slice(&self.output.to_bytes());
    }

    /// Decodes an invocation of `total` bytes (header plus payload) whose first bytes are `b`.
    pub fn decode(b: &[u8], total: usize) -> Result<InvocationHeader, ProtocolError> {
        if total < HEADER_LEN || b.len() < HEADER_LEN {
            return Err(ProtocolError::Short(total.min(b.len())));
        }
        if b[0..4] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let h = InvocationHeader {
            id: u32_at(4),
            function: u16::from_le_bytes([b[8], b[9]]),
            flags: u16::from_le_bytes([b[10], b[11]]),
            payload_len: u32_at(12),
            output: RemoteBuf::from_bytes(&b[16..32]).ok_or(ProtocolError::Short(b.len()))?,
        };
        if h.payload_len as usize != total - HEADER_LEN {
            return Err(ProtocolError::LengthMismatch {
                header: h.payload_len,
                arrived: total - HEADER_LEN,
            });
        }
        Ok(h)
    }
}

/// The immediate of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestImm {
    /// Input slot written.
    pub slot: u8,
    /// Low 24 bits of the invocation id.
    pub id_low: u32,
}

impl RequestImm {
    /// Encodes for slot `slot` and invocation `id`.
    pub fn encode(slot: u8, id: u32) -> u32 {
        u32::from(slot) | (id << 8)
    }
    /// Decodes.
    pub fn decode(imm: u32) -> RequestImm {
        RequestImm {
            slot: (imm & 0xff) as u8,
            id_low: imm >> 8,
        }
    }
}

/// The immediate of a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResultImm {
    /// Input slot the request used (now free again).
    pub slot: u8,
    /// Outcome.
    pub status: Status,
    /// Low 16 bits of the invocation id.
    pub id_low: u16,
}

impl ResultImm {
    /// Encodes.
    pub fn encode(slot: u8, status: Status, id: u32) -> u32 {
        u32::from(slot) | (u32::from(status as u8) << 8) | ((id & 0xffff) << 16)
    }
    /// Decodes.
    pub fn decode(imm: u32) -> ResultImm {
        ResultImm {
            slot: (imm & 0xff) as u8,
            status: Status::from_u8(((imm >> 8) & 0xff) as u8),
            id_low: (imm >> 16) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_bad_input() {
        let h = InvocationHeader {
            id: 0xfedc_ba98,
            function: 3,
            flags: FLAG_SOLICITED_REPLY,
            payload_len: 5,
            output: RemoteBuf {
                addr: 0x1234_5678_9abc,
                rkey: 77,
                len: 4096,
            },
        };
        let mut b = [0u8; HEADER_LEN + 5];
        h.encode(&mut b);
        assert_eq!(InvocationHeader::decode(&b, b.len()), Ok(h));
        assert_eq!(
            InvocationHeader::decode(&b, b.len() - 1),
            Err(ProtocolError::LengthMismatch {
                header: 5,
                arrived: 4
            })
        );
        assert_eq!(
            InvocationHeader::decode(&b[..10], 10),
            Err(ProtocolError::Short(10))
        );
        b[0] = b'X';
        assert_eq!(
            InvocationHeader::decode(&b, b.len()),
            Err(ProtocolError::BadMagic)
        );
    }

    #[test]
    fn immediates_round_trip_at_the_edges() {
        for (slot, id) in [
            (0u8, 0u32),
            (255, u32::MAX),
            (17, 0x00ab_cdef),
            (1, 1 << 24),
        ] {
            let r = RequestImm::decode(RequestImm::encode(slot, id));
            assert_eq!((r.slot, r.id_low), (slot, id & 0x00ff_ffff));
            for st in [
                Status::Ok,
                Status::UnknownFunction,
                Status::OutputTooLarge,
                Status::FunctionPanicked,
                Status::ShuttingDown,
                Status::BadRequest,
            ] {
                let r = ResultImm::decode(ResultImm::encode(slot, st, id));
                assert_eq!(
                    (r.slot, r.status, r.id_low),
                    (slot, st, (id & 0xffff) as u16)
                );
            }
        }
    }
}
