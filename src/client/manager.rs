//! The HTTP client of one executor manager's API (see [`crate::control::api`]).

use std::time::Duration;

use serde::de::DeserializeOwned;
use ureq::http::StatusCode;

use super::error::ClientError;
use crate::control::api::{
    Allocation, AllocationRequest, AllocationStatus, ApiError, LibraryStored, ManagerStatus,
};
use crate::function::ContentHash;

/// A connection to one executor manager, authenticated with the cluster secret.
#[derive(Clone)]
pub struct ManagerClient {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for ManagerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ManagerClient {
    /// A client of the manager at `http` (`host:port` or a URL) using the cluster `secret`.
    pub fn new(http: &str, secret: &str) -> ManagerClient {
        let base = if http.starts_with("http://") || http.starts_with("https://") {
            http.trim_end_matches('/').to_string()
        } else {
            format!("http://{http}")
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .timeout_connect(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        ManagerClient {
            base,
            auth: format!("Bearer {secret}"),
            agent,
        }
    }

    /// The manager's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn http_err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            manager: self.base.clone(),
            message: e.to_string(),
        }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<T, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return resp
                .body_mut()
                .read_json::<T>()
                .map_err(|e| self.http_err(format!("bad answer: {e}")));
        }
        let message = match resp.body_mut().read_to_string() {
            Ok(body) => serde_json::from_str::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or(body),
            Err(e) => e.to_string(),
        };
        Err(ClientError::Manager {
            manager: self.base.clone(),
            status: status.as_u16(),
            message,
        })
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
        let url = format!("{}/v1/libraries/{}", self.base, hash.to_hex());
        let head = self
            .agent
            .head(&url)
            .header("Authorization", &self.auth)
            .call()
            .map_err(|e| self.http_err(e))?;
        if head.status() == StatusCode::OK {
            return Ok(hash);
        }
        let resp = self
            .agent
            .put(&url)
            .header("Authorization", &self.auth)
            .send(bytes)
            .map_err(|e| self.http_err(e))?;
        let _: LibraryStored = self.decode(resp)?;
        Ok(hash)
    }

    /// Asks for an allocation.
    pub fn allocate(&self, req: &AllocationRequest) -> Result<Allocation, ClientError> {
        let resp = self
            .agent
            .post(format!("{}/v1/allocations", self.base))
            .header("Authorization", &self.auth)
            .send_json(req)
            .map_err(|e| self.http_err(e))?;
        self.decode(resp)
    }

    /// Releases an allocation (its executor is stopped, its cores return).
    pub fn deallocate(&self, id: u64) -> Result<(), ClientError> {
        let mut resp = self
            .agent
            .delete(format!("{}/v1/allocations/{id}", self.base))
            .header("Authorization", &self.auth)
            .call()
            .map_err(|e| self.http_err(e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let message = resp.body_mut().read_to_string().unwrap_or_default();
        Err(ClientError::Manager {
            manager: self.base.clone(),
            status: resp.status().as_u16(),
            message,
        })
    }

    /// State of one allocation.
    pub fn allocation(&self, id: u64) -> Result<AllocationStatus, ClientError> {
        let resp = self
            .agent
            .get(format!("{}/v1/allocations/{id}", self.base))
            .header("Authorization", &self.auth)
            .call()
            .map_err(|e| self.http_err(e))?;
        self.decode(resp)
    }

    /// The manager's cores, memory and allocations.
    pub fn status(&self) -> Result<ManagerStatus, ClientError> {
        let resp = self
            .agent
            .get(format!("{}/v1/status", self.base))
            .header("Authorization", &self.auth)
            .call()
            .map_err(|e| self.http_err(e))?;
        self.decode(resp)
    }
}
