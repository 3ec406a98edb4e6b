//! One simulated client's keep-alive HTTP/1.1 connection to the resource manager, async
//! (hyper's client on the load generator's small tokio runtime): many clients cost a task
//! each instead of an OS thread each, so the generator leaves the shared cores to the
//! manager it measures. One request is in flight per connection; requests are built from
//! prepared header values and bodies, and every request is timed and bounded by a timeout.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use super::RmLoadError;

/// The longest a request (connecting included) may take before the run fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections [`Conn::open_many`] opens at once.
pub const OPEN_AT_ONCE: usize = 32;

/// Where and how to reach the manager: its address and the prepared headers.
#[derive(Clone, Debug)]
pub struct Target {
    addr: String,
    host: HeaderValue,
    auth: HeaderValue,
    json: HeaderValue,
}

impl Target {
    /// The manager at `http` (`host:port`), with the cluster secret.
    pub fn new(http: &str, secret: &str) -> Result<Target, RmLoadError> {
        let value = |s: String, what: &str| {
            HeaderValue::try_from(s).map_err(|e| RmLoadError::Setup(format!("{what}: {e}")))
        };
        let mut auth = value(format!("Bearer {secret}"), "the cluster secret")?;
        auth.set_sensitive(true);
        Ok(Target {
            addr: http.to_string(),
            host: value(http.to_string(), "the manager's address")?,
            auth,
            json: HeaderValue::from_static("application/json"),
        })
    }
}

/// A keep-alive connection (reopened when the manager closed it).
pub struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// An answer: status, body, time from sending to the last byte of the body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body as received.
    pub body: Bytes,
    /// How long the call took.
    pub took: Duration,
}

impl Answer {
    /// This answer to `what` ("grant", "renew"...) as an error: its status and body.
    pub fn unexpected(&self, what: &str) -> RmLoadError {
        RmLoadError::Api(format!(
            "{what}: {} {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        ))
    }
}

impl Conn {
    /// A connection to `target`, opened on the first request.
    pub fn new(target: &Target) -> Conn {
        Conn {
            target: target.clone(),
            sender: None,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, RmLoadError> {
        let fail = |e: &dyn std::fmt::Display| {
            RmLoadError::Api(format!("connect to {}: {e}", self.target.addr))
        };
        let stream = tokio::net::TcpStream::connect(&self.target.addr)
            .await
            .map_err(|e| fail(&e))?;
        stream.set_nodelay(true).map_err(|e| fail(&e))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("load generator connection ended: {e}");
            }
        });
        Ok(sender)
    }

    /// `method path` with `body` (JSON, may be empty): the answer, whatever its status;
    /// an error when the connection fails or the answer takes longer than
    /// [`REQUEST_TIMEOUT`].
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Answer, RmLoadError> {
        let what = || format!("{method} {path}");
        let t = Instant::now();
        let r = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method.clone(), path, body))
            .await
            .map_err(|_| {
                self.sender = None;
                RmLoadError::Api(format!("{}: no answer within {REQUEST_TIMEOUT:?}", what()))
            })?;
        let (status, body) = r.map_err(|e| {
            self.sender = None;
            RmLoadError::Api(format!("{}: {e}", what()))
        })?;
        Ok(Answer {
            status,
            body,
            took: t.elapsed(),
        })
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), RmLoadError> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let api = |e: hyper::Error| RmLoadError::Api(e.to_string());
        sender.ready().await.map_err(api)?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.target.host.clone())
            .header(AUTHORIZATION, self.target.auth.clone())
            .header(CONTENT_TYPE, self.target.json.clone())
            .body(Full::new(body))
            .map_err(|e| RmLoadError::Api(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(api)?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(api)?.to_bytes();
        self.sender = Some(sender);
        Ok((status, body))
    }

    /// Opens `n` connections to `target`, at most [`OPEN_AT_ONCE`] at a time, each
    /// authenticated by a first request before the next ones open: the manager closes the
    /// oldest of more than 64 connections of one peer that have not yet sent credentials
    /// ([`crate::http::MAX_UNAUTHENTICATED_PER_PEER`]), and all of the generator's come from
    /// 127.0.0.1.
    pub async fn open_many(target: &Target, n: usize) -> Result<Vec<Conn>, RmLoadError> {
        let mut conns = Vec::with_capacity(n);
        while conns.len() < n {
            let batch = (n - conns.len()).min(OPEN_AT_ONCE);
            let opened: Vec<_> = (0..batch)
                .map(|_| {
                    let mut c = Conn::new(target);
                    tokio::spawn(async move {
                        // Lease 0 never exists (ids start at the time in microseconds): a
                        // cheap request that passes authentication.
                        c.expect(404, Method::GET, "/v1/leases/0", Bytes::new())
                            .await
                            .map(|_| c)
                    })
                })
                .collect();
            for o in opened {
                conns.push(o.await.map_err(|e| RmLoadError::Setup(e.to_string()))??);
            }
        }
        Ok(conns)
    }

    /// [`Conn::call`] that must answer `status`: the body and the time taken.
    pub async fn expect(
        &mut self,
        status: u16,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(Bytes, Duration), RmLoadError> {
        let a = self.call(method.clone(), path, body).await?;
        if a.status != status {
            return Err(RmLoadError::Api(format!(
                "{method} {path}: {} instead of {status}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            )));
        }
        Ok((a.body, a.took))
    }
}
