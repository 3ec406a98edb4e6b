//! The resource manager's HTTP API as the load generator calls it: one keep-alive connection
//! pool per thread ([`Api`]), every request timed.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::RmLoadError;

/// A client of one resource manager (clone one per thread: each has its own connections).
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Api {
    /// A client of `http` (`host:port`) with the cluster secret.
    pub fn new(http: &str, secret: &str) -> Api {
        Api {
            agent: agent(),
            base: format!("http://{http}"),
            auth: format!("Bearer {secret}"),
        }
    }

    /// A fresh client with its own connections.
    pub fn fresh(&self) -> Api {
        Api {
            agent: agent(),
            ..self.clone()
        }
    }

    /// `method path` with a JSON body: (status, JSON answer, time taken).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value, Duration), RmLoadError> {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json");
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let t = Instant::now();
        let mut resp = self
            .agent
            .run(req.body(bytes).expect("a valid request"))
            .map_err(|e| RmLoadError::Api(format!("{method} {path}: {e}")))?;
        let code = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| RmLoadError::Api(format!("{method} {path}: {e}")))?;
        let took = t.elapsed();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((code, v, took))
    }

    /// [`Api::call`] that must answer `code`.
    pub fn expect(
        &self,
        code: u16,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Value, Duration), RmLoadError> {
        let (c, v, took) = self.call(method, path, body)?;
        if c != code {
            return Err(RmLoadError::Api(format!(
                "{method} {path}: {c} instead of {code}: {v}"
            )));
        }
        Ok((v, took))
    }
}

/// An HTTP agent of its own (keeping up to 4 connections to the manager), whose answers are
/// read whatever their status.
fn agent() -> ureq::Agent {
    crate::http_agent::agent(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .max_idle_connections_per_host(4)
            .build(),
    )
}
