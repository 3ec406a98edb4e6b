//! Plain values that cross the wire or the C boundary: private-data framing, socket addresses,
//! and the encodings of the RNR and ACK timers. Nothing here touches a device, so all of it is
//! tested on machines without one.
//!
//! # Private data
//!
//! rdma_cm carries private data in IB CM messages of fixed size: a connect request has 56 bytes
//! for the application (92 minus rdma_cm's 36-byte header), an accept 196 and a reject 148. On
//! InfiniBand and RoCE the receiver is always handed the whole field, zero padded, so the length
//! the sender used is lost. The API promises the exact bytes, so every blob is framed with a
//! one-byte length: a connect carries at most [`MAX_CONNECT_DATA`] = 55 bytes of application
//! data, an accept [`MAX_ACCEPT_DATA`] = 195. Rejects carry a magic and a UTF-8 reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::time::Duration;

use crate::rdma::error::{FabricError, Result};

/// Application bytes a connect request can carry (56-byte IB CM field minus the length byte).
pub const MAX_CONNECT_DATA: usize = 55;
/// Application bytes an accept can carry (196-byte IB CM REP field minus the length byte).
pub const MAX_ACCEPT_DATA: usize = 195;
/// Size of the private-data field of an IB CM reject.
const REJECT_FIELD: usize = 148;
/// Marks a reject sent by this provider (as opposed to one made by the CM itself).
const REJECT_MAGIC: [u8; 2] = *b"rF";

/// Frames `data` for a connect request; [`FabricError::Invalid`] when it is too long.
pub fn encode_connect(data: &[u8]) -> Result<Vec<u8>> {
    encode(data, MAX_CONNECT_DATA, "connect")
}

/// Frames `data` for an accept; [`FabricError::Invalid`] when it is too long.
pub fn encode_accept(data: &[u8]) -> Result<Vec<u8>> {
    encode(data, MAX_ACCEPT_DATA, "accept")
}

fn encode(data: &[u8], max: usize, what: &str) -> Result<Vec<u8>> {
    if data.len() > max {
        return Err(FabricError::Invalid(format!(
            "verbs {what} private data is {} bytes; rdma_cm over RC carries at most {max}",
            data.len()
        )));
    }
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(data.len() as u8);
    v.extend_from_slice(data);
    Ok(v)
}

/// Unframes a connect or accept blob received from a peer.
pub fn decode(raw: &[u8]) -> std::result::Result<&[u8], String> {
    let (&len, rest) = raw
        .split_first()
        .ok_or_else(|| "empty private data".to_string())?;
    rest.get(..usize::from(len)).ok_or_else(|| {
        format!(
            "malformed private data: length byte {len} but only {} bytes follow",
            rest.len()
        )
    })
}

/// Encodes a reject reason (truncated at a character boundary to fit the CM field).
pub fn encode_reject(reason: &str) -> Vec<u8> {
    let room = REJECT_FIELD - REJECT_MAGIC.len() - 1;
    let mut end = reason.len().min(room);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut v = Vec::with_capacity(end + 3);
    v.extend_from_slice(&REJECT_MAGIC);
    v.push(end as u8);
    v.extend_from_slice(&reason.as_bytes()[..end]);
    v
}

/// Decodes a reject sent by [`encode_reject`]; `None` for anything else (a reject made by the
/// CM, or a peer that is not rfaas).
pub fn decode_reject(raw: &[u8]) -> Option<String> {
    let rest = raw.strip_prefix(&REJECT_MAGIC[..])?;
    let body = decode(rest).ok()?;
    Some(String::from_utf8_lossy(body).into_owned())
}

/// Resolves `host:port` (names allowed) to the first socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    let bad = |reason: String| FabricError::BadAddress {
        addr: addr.to_string(),
        reason,
    };
    let mut it = addr
        .to_socket_addrs()
        .map_err(|e| bad(format!("expected host:port ({e})")))?;
    it.next()
        .ok_or_else(|| bad("the name resolves to no address".into()))
}

/// A socket address laid out for the C calls.
pub struct RawSockAddr {
    storage: libc::sockaddr_storage,
}

impl RawSockAddr {
    /// Converts a Rust socket address.
    pub fn new(addr: SocketAddr) -> RawSockAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and at least as aligned as
                // sockaddr_in, and is exclusively borrowed here.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
            }
        }
        RawSockAddr { storage }
    }

    /// The address as the `struct sockaddr *` the C calls take (they do not keep it).
    pub fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        (&mut self.storage as *mut libc::sockaddr_storage).cast()
    }
}

/// Reads an IPv4 or IPv6 address out of a `sockaddr_storage`; `None` for other families.
pub fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let p: *const libc::sockaddr_storage = s;
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is large and
            // aligned enough for it, and `s` is a valid reference.
            let sin = unsafe { &*p.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*p.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Formats an address for `local_addr` and logs (IPv6 in brackets).
pub fn format_addr(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(_) => a.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]:{}", a.port()),
    }
}

/// RNR NAK timer values of the IB specification, in microseconds, indexed by their 5-bit code
/// (code 0 is the longest).
const RNR_TIMER_US: [u32; 32] = [
    655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560, 3_840,
    5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880, 163_840,
    245_760, 327_680, 491_520,
];

/// RNR retries meaning "forever".
pub const RNR_RETRY_INFINITE: u8 = 7;

/// Maps the API's RNR timeout to `(rnr_retry_count, min_rnr_timer code)`: the initiator retries
/// `rnr_retry_count` times, waiting the timer the target advertises in between, so the total
/// wait is about `count × timer`, kept at or below `rnr`. The longest finite wait verbs can
/// express is 6 × 655 ms ≈ 3.9 s; longer timeouts get that, and an hour or more means "wait
/// forever".
pub fn rnr_params(rnr: Duration) -> (u8, u8) {
    const FINE_CODE: u8 = 14; // 1.28 ms between retries when waiting forever
    if rnr >= Duration::from_secs(3600) {
        return (RNR_RETRY_INFINITE, FINE_CODE);
    }
    let total_us = u64::try_from(rnr.as_micros()).unwrap_or(u64::MAX);
    if total_us < u64::from(RNR_TIMER_US[1]) {
        return (0, 1);
    }
    let retries: u64 = 6;
    let per_try = total_us / retries;
    // The largest timer that fits `per_try` (the table is ascending from code 1, code 0 is the
    // longest of all).
    let best = (0u8..32)
        .filter(|&c| u64::from(RNR_TIMER_US[usize::from(c)]) <= per_try)
        .max_by_key(|&c| RNR_TIMER_US[usize::from(c)]);
    match best {
        Some(code) => (retries as u8, code),
        None => {
            // Below 6 × 10 µs: use the shortest timer and fewer retries.
            let n = (total_us / u64::from(RNR_TIMER_US[1])).min(retries);
            (n as u8, 1)
        }
    }
}

/// The RNR timer of `code` (for logs and tests).
pub fn rnr_timer(code: u8) -> Duration {
    Duration::from_micros(u64::from(RNR_TIMER_US[usize::from(code & 31)]))
}

/// Transport retries (the 3-bit field's largest finite value).
pub const RETRY_COUNT: u8 = 7;

/// The local ACK timeout exponent `t` (timeout = 4.096 µs × 2^t) such that `RETRY_COUNT + 1`
/// tries take about `response`, clamped to the range where verbs timers make sense.
pub fn ack_timeout_exponent(response: Duration) -> u8 {
    let per_try_ns = response.as_nanos() / (u128::from(RETRY_COUNT) + 1);
    let units = per_try_ns / 4096;
    let t = if units <= 1 {
        0
    } else {
        127 - units.leading_zeros()
    };
    t.clamp(8, 30) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_framing_round_trips_exact_lengths() {
        for n in [0usize, 1, 4, 16, 54, 55] {
            let data: Vec<u8> = (0..n as u8).collect();
            let f = encode_connect(&data).unwrap();
            assert!(f.len() <= 56);
            // The receiver sees the field zero padded to 56 bytes on InfiniBand and RoCE.
            let mut padded = f.clone();
            padded.resize(56, 0);
            assert_eq!(decode(&padded).unwrap(), &data[..]);
            assert_eq!(decode(&f).unwrap(), &data[..]);
        }
        let e = encode_connect(&[0u8; 56]).unwrap_err();
        assert!(e.to_string().contains("at most 55"), "{e}");
    }

    #[test]
    fn accept_framing_limits() {
        assert!(encode_accept(&[7u8; 195]).is_ok());
        assert!(matches!(
            encode_accept(&[7u8; 196]),
            Err(FabricError::Invalid(_))
        ));
        let f = encode_accept(b"hello").unwrap();
        let mut padded = f;
        padded.resize(196, 0);
        assert_eq!(decode(&padded).unwrap(), b"hello");
    }

    #[test]
    fn garbage_private_data_is_refused() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[10, 1, 2]).is_err());
        assert_eq!(decode(&[0]).unwrap(), b"");
    }

    #[test]
    fn reject_reasons() {
        let r = encode_reject("executor busy");
        assert!(r.len() <= REJECT_FIELD);
        let mut padded = r;
        padded.resize(REJECT_FIELD, 0);
        assert_eq!(decode_reject(&padded).as_deref(), Some("executor busy"));
        let long = "é".repeat(200);
        let r = encode_reject(&long);
        assert!(r.len() <= REJECT_FIELD);
        let back = decode_reject(&r).unwrap();
        assert!(!back.is_empty() && long.starts_with(&back));
        assert_eq!(decode_reject(&[0u8; 148]), None);
        assert_eq!(decode_reject(b"xx"), None);
    }

    #[test]
    fn socket_addresses_round_trip() {
        for s in ["10.1.2.3:4791", "[fe80::1]:18515", "0.0.0.0:0"] {
            let a: SocketAddr = s.parse().unwrap();
            let mut raw = RawSockAddr::new(a);
            assert!(!raw.as_mut_ptr().is_null());
            assert_eq!(from_storage(&raw.storage), Some(a));
            assert_eq!(format_addr(a), s);
        }
        // SAFETY: all-zero sockaddr_storage is AF_UNSPEC.
        let unspec: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(from_storage(&unspec), None);
    }

    #[test]
    fn resolve_addresses() {
        assert_eq!(
            resolve("127.0.0.1:99").unwrap(),
            "127.0.0.1:99".parse().unwrap()
        );
        assert!(matches!(
            resolve("no-port"),
            Err(FabricError::BadAddress { .. })
        ));
    }

    #[test]
    fn rnr_mapping_stays_within_the_timeout() {
        // The longest finite wait verbs can express: 6 retries of the 655 ms timer.
        let longest = rnr_timer(0) * 6;
        for ms in [1u64, 5, 100, 500, 2000, 60_000] {
            let rnr = Duration::from_millis(ms);
            let (n, code) = rnr_params(rnr);
            assert!(n <= 6 && code < 32, "{ms} ms -> {n}, {code}");
            let total = rnr_timer(code) * u32::from(n);
            assert!(total <= rnr, "{ms} ms -> {total:?}");
            assert!(total * 2 >= rnr.min(longest), "{ms} ms -> only {total:?}");
        }
        assert_eq!(rnr_params(Duration::ZERO), (0, 1));
        assert_eq!(rnr_params(Duration::from_secs(7200)).0, RNR_RETRY_INFINITE);
        let (n, code) = rnr_params(Duration::from_micros(30));
        assert_eq!((n, code), (3, 1));
    }

    #[test]
    fn ack_timeout_exponents() {
        // 5 s over 8 tries: 625 ms each, 4.096 µs × 2^17 = 537 ms.
        assert_eq!(ack_timeout_exponent(Duration::from_secs(5)), 17);
        assert_eq!(ack_timeout_exponent(Duration::ZERO), 8);
        assert_eq!(ack_timeout_exponent(Duration::from_secs(1 << 40)), 30);
    }
}
