//! The executor manager's link to the resource manager (`resource_manager` in the config).
//!
//! - On start, [`run`] registers (`POST /v1/nodes`: name, HTTP address, cores, memory, and the
//!   leases of its live allocations), then heartbeats every `heartbeat_interval_ms` of the
//!   answer. A 409 or 404 (the resource manager restarted without us, or declared us dead)
//!   means: register again, with the leases hosted now. An unreachable resource manager is
//!   retried; nothing running is touched meanwhile (it is not on the data path).
//! - After every heartbeat it lists the leases with a part on this node
//!   (`GET /v1/leases?node=NAME`); the executors of a hosted lease missing from that list
//!   (released, expired, ended with a dead node) are stopped, as `DELETE` would. Registration
//!   answers list ended hosted leases too (`stale`): stopped the same way. So a lease ends on
//!   this node at most one heartbeat interval after the resource manager ended it.
//! - An allocation must carry `lease = "<id>:<token>"`; [`RmLink::check_lease`] asks the
//!   resource manager (`GET /v1/leases/{id}` with the token in the
//!   [`LEASE_TOKEN_HEADER`] header: it compares in constant time and answers 403 for a wrong
//!   one), and the lease must be live with a part on this node.
//! - Every allocation under a lease gets a deadline file ([`LeaseDeadlines`]): the lease's
//!   deadline, moved by the renewals the lease list reports, and re-signed every heartbeat
//!   interval by a task of its own (whether or not the resource manager answers), so that an
//!   executor stops by itself when its lease ends, or when this manager freezes.
//! - On a clean stop the manager deregisters (`DELETE /v1/nodes/{name}`).

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::lease_deadlines::LeaseDeadlines;
use super::service::{Service, ServiceError};
use crate::control::executor_manager_api::ApiError;
use crate::control::resource_manager_api::{
    HostedLease, LeaseList, LeaseView, RegisterRequest, RegisterResponse, LEASE_TOKEN_HEADER,
};
use crate::scheduler::LeaseState;

/// Why a call to the resource manager failed.
#[derive(Debug, Clone)]
pub enum RmFailure {
    /// It answered with this status and message.
    Status(u16, String),
    /// It could not be reached (or answered garbage).
    Unreachable(String),
}

impl std::fmt::Display for RmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RmFailure::Status(s, m) => write!(f, "{s}: {m}"),
            RmFailure::Unreachable(m) => write!(f, "unreachable: {m}"),
        }
    }
}

/// A lease checked with the resource manager, as an allocation holds it.
#[derive(Debug, Clone)]
pub struct LeaseHold {
    /// Lease id.
    pub id: u64,
    /// Its token (to report it when registering again).
    pub token: String,
    /// Cores of its part on this node.
    pub cores: u32,
    /// Memory of its part on this node.
    pub memory: u64,
    /// Who holds it.
    pub client: String,
    /// Its deadline as the resource manager said when it was checked, unix ms.
    pub expires_at_unix_ms: u64,
}

/// Blocking HTTP client of the resource manager (call it from `spawn_blocking`).
pub struct RmLink {
    base: String,
    auth: String,
    agent: ureq::Agent,
    /// This node's name.
    pub node: String,
    /// The deadline files of the leases hosted here.
    pub deadlines: LeaseDeadlines,
}

impl std::fmt::Debug for RmLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RmLink")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RmLink {
    /// A link to the resource manager at `addr` (`host:port` or a URL).
    pub fn new(addr: &str, secret: &str, node: &str, deadlines: LeaseDeadlines) -> RmLink {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        let agent = crate::http_agent::agent(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .timeout_connect(Some(Duration::from_secs(2)))
                .http_status_as_error(false)
                .build(),
        );
        RmLink {
            base,
            auth: format!("Bearer {secret}"),
            agent,
            node: node.to_string(),
            deadlines,
        }
    }

    /// The resource manager's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn decode<T: DeserializeOwned>(
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, RmFailure> {
        let mut resp = resp.map_err(|e| RmFailure::Unreachable(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .body_mut()
                .read_json::<T>()
                .map_err(|e| RmFailure::Unreachable(format!("bad answer: {e}")));
        }
        let message = match resp.body_mut().read_to_string() {
            Ok(body) => serde_json::from_str::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or(body),
            Err(e) => e.to_string(),
        };
        Err(RmFailure::Status(status.as_u16(), message))
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, RmFailure> {
        let req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth);
        Self::decode(match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        })
    }

    /// Registers with the leases hosted now.
    pub fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, RmFailure> {
        self.post("/v1/nodes", Some(req))
    }

    /// Heartbeats.
    pub fn heartbeat(&self) -> Result<serde_json::Value, RmFailure> {
        self.post::<(), _>(&format!("/v1/nodes/{}/heartbeat", self.node), None)
    }

    /// Deregisters (a clean stop).
    pub fn deregister(&self) -> Result<serde_json::Value, RmFailure> {
        Self::decode(
            self.agent
                .delete(format!("{}/v1/nodes/{}", self.base, self.node))
                .header("Authorization", &self.auth)
                .call(),
        )
    }

    /// Live leases with a part on this node.
    pub fn leases_here(&self) -> Result<LeaseList, RmFailure> {
        Self::decode(
            self.agent
                .get(format!("{}/v1/leases?node={}", self.base, self.node))
                .header("Authorization", &self.auth)
                .call(),
        )
    }

    /// A lease, with `token` checked by the resource manager.
    pub fn lease(&self, id: u64, token: &str) -> Result<LeaseView, RmFailure> {
        Self::decode(
            self.agent
                .get(format!("{}/v1/leases/{id}", self.base))
                .header("Authorization", &self.auth)
                .header(LEASE_TOKEN_HEADER, token)
                .call(),
        )
    }

    /// Checks the `lease` text of an allocation request (`"<id>:<token>"`): granted by the
    /// resource manager, live, with a part on this node.
    pub fn check_lease(
        &self,
        lease: Option<&str>,
        client: &str,
    ) -> Result<LeaseHold, ServiceError> {
        let forbidden = |m: String| ServiceError::Forbidden(m);
        let Some(text) = lease else {
            return Err(forbidden(format!(
                "node {} takes allocations only for leases granted by the resource manager {}: \
                 lease cores there first and pass lease = \"<id>:<token>\"",
                self.node, self.base
            )));
        };
        let parsed = text
            .split_once(':')
            .and_then(|(id, token)| Some((id.trim().parse::<u64>().ok()?, token.trim())));
        let Some((id, token)) = parsed.filter(|(_, t)| !t.is_empty()) else {
            return Err(forbidden(format!(
                "lease {text:?} is not of the form \"<id>:<token>\""
            )));
        };
        let view = match self.lease(id, token) {
            Ok(v) => v,
            Err(RmFailure::Status(403, _)) => {
                return Err(forbidden(format!(
                    "lease {id}: wrong token (the resource manager {} did not grant it to you)",
                    self.base
                )))
            }
            Err(RmFailure::Status(404, _)) => {
                return Err(forbidden(format!(
                    "lease {id} is unknown to the resource manager {}",
                    self.base
                )))
            }
            Err(RmFailure::Status(s, m)) => {
                return Err(ServiceError::Unavailable(format!(
                    "cannot check lease {id} with the resource manager {}: {s}: {m}",
                    self.base
                )))
            }
            Err(RmFailure::Unreachable(m)) => {
                return Err(ServiceError::Unavailable(format!(
                    "cannot check lease {id}: the resource manager {} is unreachable ({m})",
                    self.base
                )))
            }
        };
        if let LeaseState::Ended(reason) = &view.state {
            return Err(forbidden(format!("lease {id} has ended ({reason})")));
        }
        let Some(part) = view.parts.iter().find(|p| p.node == self.node) else {
            return Err(forbidden(format!(
                "lease {id} has no cores on node {}",
                self.node
            )));
        };
        Ok(LeaseHold {
            id,
            token: token.to_string(),
            cores: part.cores,
            memory: part.memory,
            client: if view.client.is_empty() {
                client.to_string()
            } else {
                view.client.clone()
            },
            // The resource manager's clock is the wall clock.
            expires_at_unix_ms: view.expires_at.0,
        })
    }
}

async fn blocking<T: Send + 'static>(
    link: &Arc<RmLink>,
    f: impl FnOnce(&RmLink) -> T + Send + 'static,
) -> T {
    let link = link.clone();
    tokio::task::spawn_blocking(move || f(&link))
        .await
        .expect("resource manager call panicked")
}

fn stop_leases(service: &Arc<Service>, leases: &[u64], why: &str) {
    for &lease in leases {
        if let Some(link) = service.rm_link() {
            link.deadlines.forget(lease);
        }
        let ids = service.allocations_of_lease(lease);
        if !ids.is_empty() {
            tracing::info!(lease, allocations = ?ids, "lease {why}: stopping its executors");
        }
        for id in ids {
            let s = service.clone();
            tokio::spawn(async move {
                if let Err(e) = s.deallocate(id).await {
                    tracing::warn!(allocation = id, "stopping after the lease ended: {e}");
                }
            });
        }
    }
}

/// Registers, heartbeats and stops the executors of ended leases, forever (abort the task to
/// stop). `http` is this manager's own API address, passed on to clients in grants.
pub async fn run(service: Arc<Service>, link: Arc<RmLink>, http: String) {
    let cfg = service.config().clone();
    let mut failures = 0u32;
    let keeper = tokio::spawn(keep_deadlines(service.clone(), link.clone()));
    let _abort_keeper = AbortOnDrop(keeper);
    loop {
        let req = RegisterRequest {
            name: cfg.node.clone(),
            address: http.clone(),
            cores: cfg.cores.len() as u32,
            memory: cfg.memory,
            hosted: service
                .hosted_leases()
                .into_iter()
                .map(|h| HostedLease {
                    lease: crate::scheduler::LeaseId(h.id),
                    token: h.token,
                    cores: h.cores,
                    memory: h.memory,
                    client: h.client,
                })
                .collect(),
        };
        let resp = match blocking(&link, move |l| l.register(&req)).await {
            Ok(r) => r,
            Err(e) => {
                if failures % 20 == 0 {
                    tracing::warn!(rm = %link.url(), "cannot register with the resource manager: {e}; retrying");
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        failures = 0;
        tracing::info!(
            rm = %link.url(), new = resp.new, adopted = resp.adopted.len(),
            confirmed = resp.confirmed.len(), stale = resp.stale.len(),
            "registered with the resource manager"
        );
        link.deadlines.set_alive_ms(resp.heartbeat_timeout_ms);
        let stale: Vec<u64> = resp.stale.iter().map(|s| s.lease.0).collect();
        stop_leases(&service, &stale, "ended while unregistered");
        let interval = Duration::from_millis(resp.heartbeat_interval_ms.clamp(20, 10_000));
        loop {
            tokio::time::sleep(interval).await;
            match blocking(&link, |l| l.heartbeat()).await {
                Ok(_) => {}
                Err(RmFailure::Status(s @ (404 | 409), m)) => {
                    tracing::warn!(status = s, "resource manager: {m}; registering again");
                    break;
                }
                Err(e) => {
                    tracing::debug!("heartbeat failed: {e}");
                    continue;
                }
            }
            // Which hosted leases are still live? Only a successful answer stops anything.
            let hosted: Vec<u64> = service.hosted_leases().iter().map(|h| h.id).collect();
            if hosted.is_empty() {
                continue;
            }
            if let Ok(list) = blocking(&link, |l| l.leases_here()).await {
                // Renewals move the executors' deadlines (in this host's clock).
                let local_now = crate::executor::deadline::unix_ms_now();
                for l in &list.leases {
                    let left = l.expires_at.0.saturating_sub(list.now_ms);
                    link.deadlines
                        .update(l.id.0, local_now.saturating_add(left));
                }
                let ended: Vec<u64> = hosted
                    .into_iter()
                    .filter(|id| !list.leases.iter().any(|l| l.id.0 == *id))
                    .collect();
                stop_leases(&service, &ended, "ended at the resource manager");
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Re-signs the deadline files every heartbeat interval while this manager runs.
async fn keep_deadlines(service: Arc<Service>, link: Arc<RmLink>) {
    loop {
        let s = service.clone();
        link.deadlines
            .refresh(move || s.hosted_leases().iter().map(|h| h.id).collect());
        let every = Duration::from_millis((link.deadlines.alive_ms() / 4).clamp(10, 1000));
        tokio::time::sleep(every).await;
    }
}
