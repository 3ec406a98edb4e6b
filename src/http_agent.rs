//! The HTTP client agent every control-plane caller uses (clients, the executor manager's link
//! to the resource manager, `rfaas status`, the load generator): a `ureq` agent whose resolver
//! answers an IP-literal host (`127.0.0.1:8080`, `[::1]:80`, what every address in a cluster
//! file is) without a lookup.
//!
//! Why: `ureq`'s default resolver runs before the connection pool is consulted, on every
//! request, and with a timeout configured it resolves on a new thread so that it can give up.
//! That was one thread created and one `getaddrinfo` (reading `/etc/hosts`, `nsswitch.conf`) per
//! request, even on a kept-alive connection to a literal address: tens to hundreds of
//! microseconds on the cold-start path, and more CPU than the manager's own work in the
//! resource manager's load test. Names that are not literals still go to the default resolver.

use std::net::{IpAddr, SocketAddr};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// An agent with `config` whose resolver takes IP literals as they are.
pub fn agent(config: Config) -> ureq::Agent {
    ureq::Agent::with_parts(config, DefaultConnector::default(), LiteralFirst::default())
}

/// IP literals as they are, anything else through [`DefaultResolver`].
#[derive(Debug, Default)]
struct LiteralFirst(DefaultResolver);

impl Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        match literal(uri) {
            Some(addr) => {
                let mut addrs = self.empty();
                addrs.push(addr);
                Ok(addrs)
            }
            None => self.0.resolve(uri, config, timeout),
        }
    }
}

/// The socket address of `uri` when its host is an IP literal (and the port is known).
fn literal(uri: &Uri) -> Option<SocketAddr> {
    let authority = uri.authority()?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().ok()?;
    let port = authority.port_u16().or(match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    })?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Option<SocketAddr> {
        literal(&s.parse::<Uri>().unwrap())
    }

    #[test]
    fn ip_literals_are_taken_as_they_are() {
        assert_eq!(
            lit("http://127.0.0.1:8080/v1/health"),
            Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
        assert_eq!(
            lit("http://[::1]:9/x"),
            Some(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 9)))
        );
        assert_eq!(
            lit("http://10.1.2.3/"),
            Some(SocketAddr::from(([10, 1, 2, 3], 80)))
        );
        assert_eq!(
            lit("https://10.1.2.3/"),
            Some(SocketAddr::from(([10, 1, 2, 3], 443)))
        );
    }

    #[test]
    fn names_go_to_the_default_resolver() {
        assert_eq!(lit("http://localhost:8080/"), None);
        assert_eq!(lit("http://node12.cluster:8080/"), None);
    }

    #[test]
    fn an_agent_reaches_a_literal_address() {
        // A one-shot HTTP server on a kernel-chosen port answers through the literal path.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .unwrap();
        });
        let agent = agent(
            ureq::Agent::config_builder()
                .timeout_global(Some(std::time::Duration::from_secs(30)))
                .build(),
        );
        let body = agent
            .get(format!("http://127.0.0.1:{port}/"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        assert_eq!(body, "ok");
        server.join().unwrap();
    }
}
