//! What a node registration may say ([`RegisterRequest`]): checked by the resource manager
//! before the scheduler sees it, so a bad or hostile request is a 400 naming the field.

use crate::control::resource_manager_api::RegisterRequest;

/// Longest node name, bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most cores one node may offer.
pub const MAX_CORES: u32 = 1 << 16;
/// Most memory one node may offer, bytes (1 PiB).
pub const MAX_MEMORY: u64 = 1 << 50;
/// Most hosted leases one registration may list.
pub const MAX_HOSTED: usize = 1 << 16;
/// Longest token of a hosted lease, bytes.
pub const MAX_TOKEN_LEN: usize = 256;

/// A node name: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `.`, `_` or `-`, starting with
/// a letter or digit (so no path tricks, no control or bidirectional characters that could
/// make `rfaas status` lie).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "node name must have 1 to {MAX_NAME_LEN} characters, not {}",
            name.chars().count()
        ));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "node name {:?} may hold only ASCII letters, digits, '.', '_' and '-', and must \
             start with a letter or digit",
            name.escape_default().to_string()
        ));
    }
    Ok(())
}

/// An HTTP address `host:port`: an IPv4 or bracketed IPv6 address, or a host name of letters,
/// digits, `.` and `-`, and a port from 1 to 65535.
pub fn check_address(address: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "address {:?} is not host:port (an IP address or host name, port 1-65535)",
            address.escape_default().to_string()
        )
    };
    if address.len() > 300 {
        return Err(bad());
    }
    if let Ok(a) = address.parse::<std::net::SocketAddr>() {
        return if a.port() == 0 { Err(bad()) } else { Ok(()) };
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Checks every field of a registration; the message names what is wrong.
pub fn check(req: &RegisterRequest) -> Result<(), String> {
    check_name(&req.name)?;
    check_address(&req.address)?;
    if req.cores == 0 || req.cores > MAX_CORES {
        return Err(format!(
            "cores must be between 1 and {MAX_CORES}, not {}",
            req.cores
        ));
    }
    if req.memory > MAX_MEMORY {
        return Err(format!(
            "memory must be at most {MAX_MEMORY} bytes, not {}",
            req.memory
        ));
    }
    if req.hosted.len() > MAX_HOSTED {
        return Err(format!("at most {MAX_HOSTED} hosted leases"));
    }
    let mut cores = 0u64;
    let mut memory = 0u64;
    for h in &req.hosted {
        if h.token.is_empty() || h.token.len() > MAX_TOKEN_LEN {
            return Err(format!("hosted lease {}: bad token length", h.lease));
        }
        if h.cores == 0 {
            return Err(format!("hosted lease {} holds no cores", h.lease));
        }
        cores += u64::from(h.cores);
        memory = memory.saturating_add(h.memory);
    }
    if cores > u64::from(req.cores) {
        return Err(format!(
            "hosted leases hold {cores} cores, more than the node's {}",
            req.cores
        ));
    }
    if req.memory > 0 && memory > req.memory {
        return Err(format!(
            "hosted leases hold {memory} bytes of memory, more than the node's {}",
            req.memory
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        for good in ["n1", "em-0", "node.example_2", "A"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../../etc",
            "a/b",
            "evil\u{202e}txt",
            "-x",
            ".x",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "127.0.0.1:10000",
            "[::1]:80",
            "node-1.cluster:5000",
            "localhost:1",
        ] {
            assert!(check_address(good).is_ok(), "{good}");
        }
        for bad in [
            "not an address",
            "127.0.0.1:0",
            "127.0.0.1",
            "h:99999",
            ":80",
            "a..b:80",
            "x/y:80",
            "",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }
}
