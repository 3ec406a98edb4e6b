//! The HTTP client of one executor manager's API (see [`crate::control::executor_manager_api`]).

use std::time::Duration;

use ureq::http::StatusCode;

use super::credential::Credential;
use super::error::ClientError;
use super::http::ApiClient;
use crate::control::executor_manager_api::{
    Allocation, AllocationRequest, AllocationStatus, LibraryStored, ManagerStatus,
    ALLOCATION_TOKEN_HEADER, UPLOAD_LEASE_HEADER, UPLOAD_LIMIT_HEADER,
};
use crate::function::ContentHash;

/// A connection to one executor manager, authenticated with the cluster secret or MUNGE.
#[derive(Clone, Debug)]
pub struct ManagerClient {
    api: ApiClient,
}

impl ManagerClient {
    /// A client of the manager at `http` (`host:port` or a URL) using the cluster `secret`.
    pub fn new(http: &str, secret: &str) -> ManagerClient {
        Self::with_credential(http, Credential::Secret(secret.to_string()))
    }

    /// A client of the manager at `http` authenticating with `credential`.
    pub fn with_credential(http: &str, credential: Credential) -> ManagerClient {
        ManagerClient {
            api: ApiClient::new(
                http,
                credential,
                "executor manager",
                Duration::from_secs(60),
                Duration::from_secs(5),
            ),
        }
    }

    /// What it authenticates with.
    pub fn credential(&self) -> &Credential {
        self.api.credential()
    }

    /// The manager's base URL.
    pub fn url(&self) -> &str {
        self.api.url()
    }

    /// Uploads a library unless the manager has it already; returns its content hash.
    pub fn upload_library(&self, bytes: &[u8]) -> Result<ContentHash, ClientError> {
        self.upload_library_with_hash(bytes, ContentHash::of(bytes))
    }

    /// [`Self::upload_library`] when the hash is already known.
    pub fn upload_library_with_hash(
        &self,
        bytes: &[u8],
        hash: ContentHash,
    ) -> Result<ContentHash, ClientError> {
        self.upload_library_leased(bytes, hash, None)
    }

    /// [`Self::upload_library_with_hash`] under a lease (`"<id>:<token>"`, what
    /// [`super::Lease::allocation_lease`] gives): a manager linked to a resource manager
    /// stores libraries only for live leases with cores on its node.
    pub fn upload_library_leased(
        &self,
        bytes: &[u8],
        hash: ContentHash,
        lease: Option<&str>,
    ) -> Result<ContentHash, ClientError> {
        self.upload_blob("libraries", bytes, hash, lease)
    }

    /// Uploads a function asset (any bytes) unless the manager has it already, under a lease
    /// like [`Self::upload_library_leased`]; returns its content hash.
    pub fn upload_asset_leased(
        &self,
        bytes: &[u8],
        hash: ContentHash,
        lease: Option<&str>,
    ) -> Result<ContentHash, ClientError> {
        self.upload_blob("assets", bytes, hash, lease)
    }

    /// Uploads what `spec` needs (its library, then its assets), skipping what is cached.
    pub fn upload_for(&self, spec: &super::AllocationSpec) -> Result<(), ClientError> {
        let lease = spec.lease.as_deref();
        self.upload_library_leased(spec.library(), spec.library_hash(), lease)?;
        for asset in spec.assets() {
            self.upload_asset_leased(asset.bytes(), asset.hash(), lease)?;
        }
        Ok(())
    }

    /// `HEAD` then (when missing) `PUT /v1/{kind}/{hash}`.
    fn upload_blob(
        &self,
        kind: &str,
        bytes: &[u8],
        hash: ContentHash,
        lease: Option<&str>,
    ) -> Result<ContentHash, ClientError> {
        let url = self.api.at(&format!("/v1/{kind}/{}", hash.to_hex()));
        let head = self
            .api
            .agent()
            .head(&url)
            .header("Authorization", self.api.auth()?)
            .call();
        let head = head.map_err(|e| self.api.transport(e))?;
        if head.status() == StatusCode::OK {
            return Ok(hash);
        }
        // The manager would refuse it unread (and a refused body shows here as a broken pipe).
        let limit = head
            .headers()
            .get(UPLOAD_LIMIT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(limit) = limit.filter(|&l| bytes.len() as u64 > l) {
            let what = if kind == "assets" {
                "an asset"
            } else {
                "a library"
            };
            return Err(ClientError::Manager {
                manager: format!("executor manager {}", self.api.url()),
                status: 413,
                message: format!(
                    "{what} of {} bytes is larger than the {limit} bytes one upload may have \
                     (max_library_bytes)",
                    bytes.len()
                ),
            });
        }
        let mut put = self
            .api
            .agent()
            .put(&url)
            .header("Authorization", self.api.auth()?);
        if let Some(l) = lease {
            put = put.header(UPLOAD_LEASE_HEADER, l);
        }
        let put = put.send(bytes);
        let _: LibraryStored = self.api.decode(put)?;
        Ok(hash)
    }

    /// Asks for an allocation.
    pub fn allocate(&self, req: &AllocationRequest) -> Result<Allocation, ClientError> {
        self.api.post("/v1/allocations", req)
    }

    /// Releases an allocation (its executor is stopped, its cores return); `token` is the
    /// allocation's ([`Allocation::token`]).
    pub fn deallocate(&self, id: u64, token: &str) -> Result<(), ClientError> {
        let url = self.api.at(&format!("/v1/allocations/{id}"));
        let mut resp = self
            .api
            .agent()
            .delete(&url)
            .header("Authorization", self.api.auth()?)
            .header(ALLOCATION_TOKEN_HEADER, token)
            .call()
            .map_err(|e| self.api.transport(e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(self.api.refusal(&mut resp))
    }

    /// State of one allocation.
    pub fn allocation(&self, id: u64) -> Result<AllocationStatus, ClientError> {
        self.api.get(&format!("/v1/allocations/{id}"))
    }

    /// State of one allocation, with an answer within `timeout` or an error (for error paths
    /// that must not wait long: the manager may be frozen).
    pub fn allocation_within(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Result<AllocationStatus, ClientError> {
        self.api.decode(
            self.api
                .agent()
                .get(self.api.at(&format!("/v1/allocations/{id}")))
                .header("Authorization", self.api.auth()?)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .call(),
        )
    }

    /// Why allocation `id`, answered before its executor was ready
    /// ([`Allocation::early`](crate::control::executor_manager_api::Allocation::early)), failed
    /// to start, once the manager knows (asked within `wait`): the error its allocation request
    /// would have had (422, or [`ClientError::InitFailed`]). `None` when it did not fail to
    /// start, or the manager could not tell in time.
    pub fn start_failure(&self, id: u64, wait: Duration) -> Option<ClientError> {
        let s = self.allocation_settled(id, wait, &["starting"])?;
        match s.state.as_str() {
            "failed" => {
                let message = s
                    .reason
                    .unwrap_or_else(|| "the executor failed to start".into());
                let status = s.status.unwrap_or(422);
                Some(self.api.failure(status, message, s.code.as_deref()))
            }
            // Stopped before it was ready, and not by this client: its manager is shutting
            // down (what the allocation request would have been told, 503).
            "released" | "stopping" => {
                let message = s
                    .reason
                    .unwrap_or_else(|| "stopped before it was ready".into());
                Some(self.api.failure(503, message, None))
            }
            _ => None,
        }
    }

    /// State of allocation `id` once it is in none of the `pending` states, asked until then
    /// within `wait` (a few milliseconds apart, each answer within what is left: the manager
    /// may be frozen); `None` if the manager could not tell in time.
    pub fn allocation_settled(
        &self,
        id: u64,
        wait: Duration,
        pending: &[&str],
    ) -> Option<AllocationStatus> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.allocation_within(id, left.max(Duration::from_millis(1))) {
                Ok(s) if !pending.contains(&s.state.as_str()) => return Some(s),
                Ok(_) if !left.is_zero() => std::thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }

    /// The manager's cores, memory and allocations.
    pub fn status(&self) -> Result<ManagerStatus, ClientError> {
        self.api.get("/v1/status")
    }
}
