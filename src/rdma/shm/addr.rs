//! shm addresses: which Unix socket a `listen`/`connect` address names.

use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::UnixAddr;

use crate::rdma::error::{FabricError, Result};

/// A parsed shm address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ShmAddr {
    /// `host:port`: the abstract socket `rfaas-shm-<port>` (host must be local).
    Port { host: String, port: u16 },
    /// `@name`: an abstract socket.
    Abstract(String),
    /// A filesystem path.
    Path(String),
}

fn bad(addr: &str, reason: &str) -> FabricError {
    FabricError::BadAddress {
        addr: addr.to_string(),
        reason: reason.to_string(),
    }
}

impl ShmAddr {
    pub(crate) fn parse(s: &str) -> Result<ShmAddr> {
        let s = s.trim();
        if s.is_empty() {
            return Err(bad(
                s,
                "empty shm address (use host:port, @name or a socket path)",
            ));
        }
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() || name.len() > 100 {
                return Err(bad(s, "abstract socket name must have 1 to 100 bytes"));
            }
            return Ok(ShmAddr::Abstract(name.to_string()));
        }
        let path = s.strip_prefix("unix:").unwrap_or(s);
        if path.starts_with('/') || path.starts_with('.') {
            if path.len() > 100 {
                return Err(bad(s, "socket path longer than 100 bytes"));
            }
            return Ok(ShmAddr::Path(path.to_string()));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad(s, "expected host:port, @name or a path"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad(s, "port is not a number in 0..65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let local = matches!(
            host,
            "127.0.0.1" | "localhost" | "::1" | "0.0.0.0" | "::" | ""
        ) || host.starts_with("127.")
            || host
                == nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_default();
        if !local {
            return Err(bad(
                s,
                "shm only reaches this node: use a local address or the tcp provider",
            ));
        }
        Ok(ShmAddr::Port {
            host: host.to_string(),
            port,
        })
    }

    /// For port 0: a concrete port to try (callers retry on collision).
    pub(crate) fn with_port(&self, port: u16) -> ShmAddr {
        match self {
            ShmAddr::Port { host, .. } => ShmAddr::Port {
                host: host.clone(),
                port,
            },
            other => other.clone(),
        }
    }

    /// True for `host:0` (pick a port).
    pub(crate) fn wants_port(&self) -> bool {
        matches!(self, ShmAddr::Port { port: 0, .. })
    }

    pub(crate) fn unix(&self) -> Result<UnixAddr> {
        let r = match self {
            ShmAddr::Port { port, .. } => {
                UnixAddr::new_abstract(format!("rfaas-shm-{port}").as_bytes())
            }
            ShmAddr::Abstract(n) => UnixAddr::new_abstract(n.as_bytes()),
            ShmAddr::Path(p) => UnixAddr::new(p.as_str()),
        };
        r.map_err(|e| FabricError::io("unix socket address", e))
    }

    /// The address as peers should be told it.
    pub(crate) fn display(&self) -> String {
        match self {
            ShmAddr::Port { host, port } => {
                let h = if host.is_empty() || host == "0.0.0.0" {
                    "127.0.0.1"
                } else {
                    host
                };
                if h.contains(':') {
                    format!("[{h}]:{port}")
                } else {
                    format!("{h}:{port}")
                }
            }
            ShmAddr::Abstract(n) => format!("@{n}"),
            ShmAddr::Path(p) => p.clone(),
        }
    }
}

/// A port to try for `host:0`, spread so that concurrent domains rarely collide.
pub(crate) fn candidate_port(attempt: u32) -> u16 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ SEQ.fetch_add(1, Ordering::Relaxed).wrapping_mul(40_503)
        ^ attempt.wrapping_mul(97);
    (20_000 + seed % 40_000) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_refuses_remote_hosts() {
        assert_eq!(
            ShmAddr::parse("127.0.0.1:5000").unwrap(),
            ShmAddr::Port {
                host: "127.0.0.1".into(),
                port: 5000
            }
        );
        assert_eq!(ShmAddr::parse("@x").unwrap(), ShmAddr::Abstract("x".into()));
        assert_eq!(
            ShmAddr::parse("/tmp/s").unwrap(),
            ShmAddr::Path("/tmp/s".into())
        );
        assert_eq!(
            ShmAddr::parse("unix:/tmp/s").unwrap(),
            ShmAddr::Path("/tmp/s".into())
        );
        assert!(ShmAddr::parse("10.1.2.3:5000").is_err());
        assert!(ShmAddr::parse("127.0.0.1:99999").is_err());
        assert!(ShmAddr::parse("").is_err());
        assert_eq!(ShmAddr::parse("[::1]:7").unwrap().display(), "[::1]:7");
    }
}
