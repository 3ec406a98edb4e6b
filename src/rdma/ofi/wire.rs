//! What the `ofi` provider puts on the wire besides user data: the 64-bit remote CQ data of a
//! write-with-immediate, the 16-byte header of its internal messages (two-sided sends and
//! credit grants), and the connection handshake carried over the TCP side channel.

use crate::rdma::error::{FabricError, Result};
use crate::rdma::MAX_PRIVATE_DATA;

/// Bits of the remote CQ data: `imm` (32) | solicited (1) | credits (12) | target qp (19).
const SOLICITED_BIT: u32 = 32;
const CREDIT_SHIFT: u32 = 33;
const CREDIT_BITS: u32 = 12;
const QP_SHIFT: u32 = CREDIT_SHIFT + CREDIT_BITS;
/// Largest credit grant one message carries.
pub(crate) const MAX_GRANT: u32 = (1 << CREDIT_BITS) - 1;
/// Queue pair numbers fit in 19 bits (they are reused after `MAX_QP_NUM` connections).
pub(crate) const MAX_QP_NUM: u32 = (1 << (64 - QP_SHIFT)) - 1;

/// Packs the remote CQ data of a write-with-immediate.
pub(crate) fn pack_cq_data(dst_qp: u32, imm: u32, solicited: bool, credits: u32) -> u64 {
    debug_assert!(dst_qp <= MAX_QP_NUM && credits <= MAX_GRANT);
    (u64::from(dst_qp) << QP_SHIFT)
        | (u64::from(credits) << CREDIT_SHIFT)
        | (u64::from(solicited) << SOLICITED_BIT)
        | u64::from(imm)
}

/// Unpacks [`pack_cq_data`]: (target qp, imm, solicited, credits).
pub(crate) fn unpack_cq_data(data: u64) -> (u32, u32, bool, u32) {
    (
        (data >> QP_SHIFT) as u32,
        data as u32,
        (data >> SOLICITED_BIT) & 1 == 1,
        ((data >> CREDIT_SHIFT) & u64::from(MAX_GRANT)) as u32,
    )
}

/// Kind of an internal message.
pub(crate) const MSG_SEND: u8 = 1;
/// A credit grant: the receiver posted `credits` more receives.
pub(crate) const MSG_GRANT: u8 = 2;
/// A write-with-immediate's completion, sent after its data (zero-length ones, and every one on a
/// provider that does not report the length of remote writes): `credits` and `imm` as for a
/// send, `len` the bytes written.
pub(crate) const MSG_WRITE_IMM: u8 = 3;
/// Header flag: the send carries an immediate.
pub(crate) const FLAG_IMM: u8 = 1;
/// Header flag: the send is solicited.
pub(crate) const FLAG_SOLICITED: u8 = 2;
/// Size of the internal message header.
pub(crate) const HDR_LEN: usize = 20;
/// Largest two-sided payload (the internal receive buffers hold this much after the header).
pub(crate) const MAX_SEND: usize = 4096;

/// The header of an internal message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MsgHdr {
    pub kind: u8,
    pub flags: u8,
    pub dst_qp: u32,
    pub imm: u32,
    pub credits: u32,
    /// Bytes written (`MSG_WRITE_IMM`).
    pub len: u32,
}

impl MsgHdr {
    pub(crate) fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.kind;
        b[1] = self.flags;
        b[4..8].copy_from_slice(&self.dst_qp.to_le_bytes());
        b[8..12].copy_from_slice(&self.imm.to_le_bytes());
        b[12..16].copy_from_slice(&self.credits.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<MsgHdr> {
        let b: &[u8; HDR_LEN] = b.get(..HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(MsgHdr {
            kind: b[0],
            flags: b[1],
            dst_qp: u(4),
            imm: u(8),
            credits: u(12),
            len: u(16),
        })
    }
}

/// Magic of handshake frames.
pub(crate) const MAGIC: &[u8; 4] = b"RFOF";
/// Handshake version.
pub(crate) const VERSION: u8 = 1;
/// Longest libfabric endpoint name accepted from a peer.
pub(crate) const MAX_NAME: usize = 512;
/// Longest handshake frame body.
pub(crate) const MAX_FRAME: usize = 16 + MAX_NAME + MAX_PRIVATE_DATA + 64;

/// One side's half of the handshake (the connect request, or the accept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The libfabric provider name, so mismatched peers fail clearly.
    pub provider: String,
    /// `fi_getname` of the sender's endpoint.
    pub ep_name: Vec<u8>,
    /// The sender's queue pair number.
    pub qp_num: u32,
    /// Receives the sender has posted (the peer's initial credits).
    pub credits: u32,
    /// Private data.
    pub private_data: Vec<u8>,
}

/// A reply: accepted with the acceptor's hello, or rejected with a reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Accept(Hello),
    Reject(String),
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32> {
        let (h, t) = self
            .0
            .split_first_chunk::<4>()
            .ok_or_else(|| FabricError::Handshake("truncated frame".into()))?;
        self.0 = t;
        Ok(u32::from_le_bytes(*h))
    }
    fn u8(&mut self) -> Result<u8> {
        let (&h, t) = self
            .0
            .split_first()
            .ok_or_else(|| FabricError::Handshake("truncated frame".into()))?;
        self.0 = t;
        Ok(h)
    }
    fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max || n > self.0.len() {
            return Err(FabricError::Handshake(format!(
                "{what} of {n} bytes (at most {max})"
            )));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
}

impl Hello {
    fn put(&self, out: &mut Vec<u8>) {
        put_bytes(out, self.provider.as_bytes());
        put_bytes(out, &self.ep_name);
        out.extend_from_slice(&self.qp_num.to_le_bytes());
        out.extend_from_slice(&self.credits.to_le_bytes());
        put_bytes(out, &self.private_data);
    }

    fn get(r: &mut Reader<'_>) -> Result<Hello> {
        let provider = String::from_utf8(r.bytes(64, "provider name")?.to_vec())
            .map_err(|_| FabricError::Handshake("provider name is not UTF-8".into()))?;
        let ep_name = r.bytes(MAX_NAME, "endpoint name")?.to_vec();
        if ep_name.is_empty() {
            return Err(FabricError::Handshake("empty endpoint name".into()));
        }
        let qp_num = r.u32()?;
        if qp_num == 0 || qp_num > MAX_QP_NUM {
            return Err(FabricError::Handshake(format!(
                "queue pair number {qp_num}"
            )));
        }
        let credits = r.u32()?;
        let private_data = r.bytes(MAX_PRIVATE_DATA, "private data")?.to_vec();
        Ok(Hello {
            provider,
            ep_name,
            qp_num,
            credits,
            private_data,
        })
    }

    /// The connect request frame.
    pub(crate) fn request_frame(&self) -> Vec<u8> {
        let mut body = vec![VERSION];
        self.put(&mut body);
        frame(&body)
    }

    /// Parses a connect request body (after magic and length).
    pub(crate) fn parse_request(body: &[u8]) -> Result<Hello> {
        let mut r = Reader(body);
        let v = r.u8()?;
        if v != VERSION {
            return Err(FabricError::Handshake(format!(
                "version {v}, expected {VERSION}"
            )));
        }
        Hello::get(&mut r)
    }
}

impl Reply {
    /// The reply frame.
    pub(crate) fn frame(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Reply::Accept(h) => {
                body.push(0);
                h.put(&mut body);
            }
            Reply::Reject(why) => {
                body.push(1);
                let why = &why.as_bytes()[..why.len().min(512)];
                put_bytes(&mut body, why);
            }
        }
        frame(&body)
    }

    /// Parses a reply body.
    pub(crate) fn parse(body: &[u8]) -> Result<Reply> {
        let mut r = Reader(body);
        match r.u8()? {
            0 => Ok(Reply::Accept(Hello::get(&mut r)?)),
            1 => Ok(Reply::Reject(
                String::from_utf8_lossy(r.bytes(512, "reason")?).into_owned(),
            )),
            other => Err(FabricError::Handshake(format!("reply kind {other}"))),
        }
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Looks for a whole frame at the start of `buf`: `Ok(Some(body))` when complete, `Ok(None)`
/// when more bytes are needed, an error when the bytes cannot be a frame.
pub(crate) fn take_frame(buf: &[u8]) -> Result<Option<&[u8]>> {
    let n = buf.len().min(4);
    if buf[..n] != MAGIC[..n] {
        return Err(FabricError::Handshake(
            "bad magic (not an rfaas ofi peer)".into(),
        ));
    }
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_FRAME {
        return Err(FabricError::Handshake(format!("frame of {len} bytes")));
    }
    Ok(buf.get(8..8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cq_data_round_trips() {
        for (qp, imm, sol, cr) in [
            (1, 0, false, 0),
            (MAX_QP_NUM, u32::MAX, true, MAX_GRANT),
            (77, 0xdead_beef, false, 5),
        ] {
            assert_eq!(
                unpack_cq_data(pack_cq_data(qp, imm, sol, cr)),
                (qp, imm, sol, cr)
            );
        }
    }

    #[test]
    fn handshake_round_trips_and_rejects_junk() {
        let h = Hello {
            provider: "shm".into(),
            ep_name: vec![1, 2, 3],
            qp_num: 9,
            credits: 4,
            private_data: b"pd".to_vec(),
        };
        let f = h.request_frame();
        let body = take_frame(&f).unwrap().unwrap();
        assert_eq!(Hello::parse_request(body).unwrap(), h);
        assert!(take_frame(&f[..6]).unwrap().is_none());
        assert!(take_frame(b"GET / HTTP/1.1").is_err());
        let r = Reply::Reject("full".into());
        assert_eq!(
            Reply::parse(take_frame(&r.frame()).unwrap().unwrap()).unwrap(),
            r
        );
        let mut bad = h.clone();
        bad.qp_num = 0;
        let f = bad.request_frame();
        assert!(Hello::parse_request(take_frame(&f).unwrap().unwrap()).is_err());
        let hdr = MsgHdr {
            kind: MSG_SEND,
            flags: FLAG_IMM,
            dst_qp: 3,
            imm: 7,
            credits: 2,
            len: 9,
        };
        assert_eq!(MsgHdr::decode(&hdr.encode()), Some(hdr));
    }
}
