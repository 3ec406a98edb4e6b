//! Leases from the resource manager ([`crate::resource_manager`]): a client leases cores, then
//! allocates executors on the granted parts, passing `"<id>:<token>"` as the allocation's
//! lease. A [`Lease`] renews itself on a background thread (every third of its TTL) while
//! held, and is released on drop.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::credential::Credential;
use super::error::ClientError;
use super::http::ApiClient;
use crate::control::resource_manager_api::{
    GrantRequest, GrantResponse, LeaseList, NodeList, PartView, Policy, ReleaseResponse,
    RenewResponse, TokenBody,
};

/// A connection to the resource manager, authenticated with the cluster secret or MUNGE.
#[derive(Clone, Debug)]
pub struct RmClient {
    api: ApiClient,
}

impl RmClient {
    /// A client of the resource manager at `http` (`host:port` or a URL).
    pub fn new(http: &str, secret: &str) -> RmClient {
        Self::with_credential(http, Credential::Secret(secret.to_string()))
    }

    /// A client of the resource manager at `http` authenticating with `credential`.
    pub fn with_credential(http: &str, credential: Credential) -> RmClient {
        RmClient {
            api: ApiClient::new(
                http,
                credential,
                "resource manager",
                Duration::from_secs(10),
                Duration::from_secs(3),
            ),
        }
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        self.api.url()
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.api.get(path)
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, b: &B) -> Result<T, ClientError> {
        self.api.post(path, b)
    }

    /// Asks for a lease (503 with the resource manager's "no capacity" message when full).
    pub fn grant(&self, req: &GrantRequest) -> Result<GrantResponse, ClientError> {
        self.post("/v1/leases", req)
    }

    /// Renews a lease.
    pub fn renew(&self, id: u64, token: &str) -> Result<RenewResponse, ClientError> {
        self.post(
            &format!("/v1/leases/{id}/renew"),
            &TokenBody {
                token: token.to_string(),
            },
        )
    }

    /// Releases a lease.
    pub fn release(&self, id: u64, token: &str) -> Result<ReleaseResponse, ClientError> {
        self.api.decode(
            self.api
                .agent()
                .delete(self.api.at(&format!("/v1/leases/{id}")))
                .header("Authorization", self.api.auth()?)
                .header(
                    crate::control::resource_manager_api::LEASE_TOKEN_HEADER,
                    token,
                )
                .call(),
        )
    }

    /// Every node.
    pub fn nodes(&self) -> Result<NodeList, ClientError> {
        self.get("/v1/nodes")
    }

    /// Live leases.
    pub fn leases(&self) -> Result<LeaseList, ClientError> {
        self.get("/v1/leases")
    }
}

/// What to lease.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// Lifetime without renewal (`None`: the resource manager's default).
    pub ttl: Option<Duration>,
    /// Pack (default) or spread.
    pub policy: Policy,
    /// Whether the cores may come from several nodes.
    pub allow_split: bool,
    /// Memory per core, bytes.
    pub memory_per_core: u64,
    /// Renew on a background thread while held.
    pub auto_renew: bool,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            ttl: None,
            policy: Policy::default(),
            allow_split: false,
            memory_per_core: 0,
            auto_renew: true,
        }
    }
}

struct Renewer {
    stop: Mutex<bool>,
    cv: Condvar,
}

/// Cores leased from the resource manager; renewed while held, released on drop.
pub struct Lease {
    rm: RmClient,
    grant: GrantResponse,
    renewer: Arc<Renewer>,
    thread: Option<std::thread::JoinHandle<()>>,
    released: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.grant.lease)
            .field("parts", &self.grant.parts)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Leases `cores` cores through `rm`.
    pub fn acquire(rm: &RmClient, cores: u32, opts: &LeaseOptions) -> Result<Lease, ClientError> {
        let grant = rm.grant(&GrantRequest {
            cores,
            memory_per_core: opts.memory_per_core,
            policy: opts.policy,
            allow_split: opts.allow_split,
            ttl_ms: opts.ttl.map(|t| t.as_millis() as u64),
            client: format!("pid {}", std::process::id()),
        })?;
        let renewer = Arc::new(Renewer {
            stop: Mutex::new(false),
            cv: Condvar::new(),
        });
        let thread = opts.auto_renew.then(|| {
            let (rm, r) = (rm.clone(), renewer.clone());
            let (id, token) = (grant.lease.0, grant.token.clone());
            let every = Duration::from_millis((grant.ttl_ms / 3).max(1));
            std::thread::Builder::new()
                .name(format!("rfaas-lease-{id}"))
                .spawn(move || loop {
                    let stop = r.stop.lock().unwrap_or_else(|p| p.into_inner());
                    let (stop, _) =
                        r.cv.wait_timeout_while(stop, every, |s| !*s)
                            .unwrap_or_else(|p| p.into_inner());
                    if *stop {
                        return;
                    }
                    drop(stop);
                    match rm.renew(id, &token) {
                        Ok(_) => {}
                        Err(ClientError::Manager { status: 410, .. })
                        | Err(ClientError::Manager { status: 404, .. }) => {
                            tracing::warn!(lease = id, "lease ended; no more renewals");
                            return;
                        }
                        Err(e) => tracing::debug!(lease = id, "renewing: {e}"),
                    }
                })
                .expect("spawn the lease renewal thread")
        });
        Ok(Lease {
            rm: rm.clone(),
            grant,
            renewer,
            thread,
            released: false,
        })
    }

    /// The lease id.
    pub fn id(&self) -> u64 {
        self.grant.lease.0
    }

    /// Its token.
    pub fn token(&self) -> &str {
        &self.grant.token
    }

    /// What an allocation passes as its lease: `"<id>:<token>"`.
    pub fn allocation_lease(&self) -> String {
        format!("{}:{}", self.grant.lease.0, self.grant.token)
    }

    /// Where its cores are.
    pub fn parts(&self) -> &[PartView] {
        &self.grant.parts
    }

    /// Its TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.grant.ttl_ms)
    }

    /// Renews it now.
    pub fn renew(&self) -> Result<RenewResponse, ClientError> {
        self.rm.renew(self.id(), self.token())
    }

    fn stop_renewing(&mut self) {
        *self.renewer.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.renewer.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops renewing and releases it; its capacity is back.
    pub fn release(mut self) -> Result<ReleaseResponse, ClientError> {
        self.stop_renewing();
        self.released = true;
        self.rm.release(self.id(), &self.grant.token)
    }

    /// Stops renewing it without releasing it (it expires with its TTL).
    pub fn abandon(mut self) {
        self.stop_renewing();
        self.released = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_renewing();
        if !self.released {
            if let Err(e) = self.rm.release(self.id(), &self.grant.token) {
                tracing::debug!(lease = self.id(), "releasing: {e}");
            }
        }
    }
}
