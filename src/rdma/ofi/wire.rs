//! What the `ofi` provider puts on the wire besides user data: the 64-bit remote CQ data of a
//! write-with-immediate, the 16-byte header of its internal messages (two-sided sends and
//! credit grants), and the connection handshake carried over the TCP side channel.

use crate::rdma::error::{FabricError, Result};
use crate::rdma::MAX_PRIVATE_DATA;

/// Bits of the remote CQ data, low to high: `imm` (32) | solicited (1) | mode (1) | 16 bits that
/// depend on the mode | target qp (14).
///
/// * mode 0: credits (12 bits; 4 unused). The write's length comes from the provider's
///   completion at the target (shm), or from a `MSG_WRITE_IMM` message after the write.
/// * mode 1 (providers that do not report the length of a remote write, e.g. libfabric 1.17's
///   `tcp;ofi_rxm`): the length (13 bits, up to [`MAX_CQ_LEN`]) and credits (3 bits, up to
///   [`MAX_LEN_GRANT`]), so a short write-with-immediate is one libfabric operation there too.
const SOLICITED_BIT: u32 = 32;
const MODE_BIT: u32 = 33;
const FIELD_SHIFT: u32 = 34;
const CREDIT_BITS: u32 = 12;
const LEN_BITS: u32 = 13;
const LEN_CREDIT_SHIFT: u32 = FIELD_SHIFT + LEN_BITS;
const LEN_CREDIT_BITS: u32 = 3;
const QP_SHIFT: u32 = 50;
/// Largest credit grant one message (or a mode-0 write) carries.
pub(crate) const MAX_GRANT: u32 = (1 << CREDIT_BITS) - 1;
/// Largest credit grant a mode-1 write carries.
pub(crate) const MAX_LEN_GRANT: u32 = (1 << LEN_CREDIT_BITS) - 1;
/// Longest write whose length travels in the CQ data (mode 1).
pub(crate) const MAX_CQ_LEN: u32 = (1 << LEN_BITS) - 1;
/// Queue pair numbers fit in 14 bits (they are reused after `MAX_QP_NUM` connections).
pub(crate) const MAX_QP_NUM: u32 = (1 << (64 - QP_SHIFT)) - 1;

/// The remote CQ data of a write-with-immediate, unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CqData {
    pub dst_qp: u32,
    pub imm: u32,
    pub solicited: bool,
    pub credits: u32,
    /// The write's length, when the initiator sent it (mode 1).
    pub len: Option<u32>,
}

impl CqData {
    /// Packs into 64 bits: mode 1 when `len` is set (it must be at most [`MAX_CQ_LEN`] and
    /// `credits` at most [`MAX_LEN_GRANT`]), else mode 0 (`credits` at most [`MAX_GRANT`]).
    pub(crate) fn pack(&self) -> u64 {
        debug_assert!(self.dst_qp <= MAX_QP_NUM);
        let field = match self.len {
            Some(len) => {
                debug_assert!(len <= MAX_CQ_LEN && self.credits <= MAX_LEN_GRANT);
                (1u64 << MODE_BIT)
                    | (u64::from(len) << FIELD_SHIFT)
                    | (u64::from(self.credits) << LEN_CREDIT_SHIFT)
            }
            None => {
                debug_assert!(self.credits <= MAX_GRANT);
                u64::from(self.credits) << FIELD_SHIFT
            }
        };
        (u64::from(self.dst_qp) << QP_SHIFT)
            | field
            | (u64::from(self.solicited) << SOLICITED_BIT)
            | u64::from(self.imm)
    }

    /// Unpacks [`CqData::pack`].
    pub(crate) fn unpack(data: u64) -> CqData {
        let bits = |shift: u32, n: u32| ((data >> shift) & ((1u64 << n) - 1)) as u32;
        let (credits, len) = if (data >> MODE_BIT) & 1 == 1 {
            (
                bits(LEN_CREDIT_SHIFT, LEN_CREDIT_BITS),
                Some(bits(FIELD_SHIFT, LEN_BITS)),
            )
        } else {
            (bits(FIELD_SHIFT, CREDIT_BITS), None)
        };
        CqData {
            dst_qp: (data >> QP_SHIFT) as u32,
            imm: data as u32,
            solicited: (data >> SOLICITED_BIT) & 1 == 1,
            credits,
            len,
        }
    }
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
        let d = |dst_qp, imm, solicited, credits, len| CqData {
            dst_qp,
            imm,
            solicited,
            credits,
            len,
        };
        for c in [
            d(1, 0, false, 0, None),
            d(MAX_QP_NUM, u32::MAX, true, MAX_GRANT, None),
            d(77, 0xdead_beef, false, 5, None),
            d(MAX_QP_NUM, u32::MAX, true, MAX_LEN_GRANT, Some(MAX_CQ_LEN)),
            d(3, 0x1234_5678, false, 0, Some(64)),
            d(1, 1, true, 2, Some(0)),
        ] {
            assert_eq!(CqData::unpack(c.pack()), c, "{c:?}");
        }
        // Independent of pack: the qp in the top 14 bits, the mode bit, a mode-1 length.
        let raw = (5u64 << 50) | (1 << 33) | (4096 << 34) | (1 << 47) | 9;
        assert_eq!(CqData::unpack(raw), d(5, 9, false, 1, Some(4096)));
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
