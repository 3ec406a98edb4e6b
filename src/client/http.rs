//! The HTTP/JSON plumbing both control-plane clients share: base URL, the cluster secret as a
//! credential (a Bearer token or a fresh MUNGE credential per request), a ureq agent with timeouts, and turning answers into values or [`ClientError`]s.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::credential::Credential;
use super::error::ClientError;
use crate::control::executor_manager_api::{ApiError, INIT_FAILED_CODE};

/// One HTTP/JSON service (an executor manager or the resource manager).
#[derive(Clone)]
pub(crate) struct ApiClient {
    base: String,
    auth: Credential,
    agent: ureq::Agent,
    /// How errors name the service ("resource manager http://...").
    label: String,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A response, or the transport error that kept it from arriving.
pub(crate) type Answer = Result<ureq::http::Response<ureq::Body>, ureq::Error>;

impl ApiClient {
    /// A client of the service at `http` (`host:port` or a URL); `what` prefixes its name in
    /// errors (empty for none).
    pub(crate) fn new(
        http: &str,
        auth: Credential,
        what: &str,
        timeout: Duration,
        connect: Duration,
    ) -> ApiClient {
        let base = if http.starts_with("http://") || http.starts_with("https://") {
            http.trim_end_matches('/').to_string()
        } else {
            format!("http://{http}")
        };
        let agent = crate::http_agent::agent(
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .timeout_connect(Some(connect))
                .http_status_as_error(false)
                .build(),
        );
        let label = if what.is_empty() {
            base.clone()
        } else {
            format!("{what} {base}")
        };
        ApiClient {
            base,
            auth,
            agent,
            label,
        }
    }

    /// The base URL.
    pub(crate) fn url(&self) -> &str {
        &self.base
    }

    /// The agent, for requests that need more than [`Self::get`] and [`Self::post`].
    pub(crate) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// The `Authorization` header value of one request.
    pub(crate) fn auth(&self) -> Result<String, ClientError> {
        self.auth.header()
    }

    /// The credential.
    pub(crate) fn credential(&self) -> &Credential {
        &self.auth
    }

    /// `base` + `path`.
    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A transport error, named after the service.
    pub(crate) fn transport(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            manager: self.label.clone(),
            message: e.to_string(),
        }
    }

    /// A 2xx answer's JSON body, or the service's `{"error": ...}` as [`ClientError::Manager`].
    pub(crate) fn decode<T: DeserializeOwned>(&self, answer: Answer) -> Result<T, ClientError> {
        let mut resp = answer.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .body_mut()
                .read_json::<T>()
                .map_err(|e| self.transport(format!("bad answer: {e}")));
        }
        Err(self.refusal(&mut resp))
    }

    /// A non-2xx answer as [`ClientError::Manager`], with the service's message
    /// ([`ClientError::InitFailed`] for a library's failed init function).
    pub(crate) fn refusal(&self, resp: &mut ureq::http::Response<ureq::Body>) -> ClientError {
        let (message, code) = match resp.body_mut().read_to_string() {
            Ok(body) => match serde_json::from_str::<ApiError>(&body) {
                Ok(e) => (e.error, e.code),
                Err(_) => (body, None),
            },
            Err(e) => (e.to_string(), None),
        };
        self.failure(resp.status().as_u16(), message, code.as_deref())
    }

    /// The service's refusal `message` (HTTP `status`, error `code`) as a [`ClientError`]:
    /// [`ClientError::InitFailed`] for a library's failed init function, else
    /// [`ClientError::Manager`].
    pub(crate) fn failure(&self, status: u16, message: String, code: Option<&str>) -> ClientError {
        if code == Some(INIT_FAILED_CODE) {
            return ClientError::InitFailed {
                manager: self.label.clone(),
                message,
            };
        }
        ClientError::Manager {
            manager: self.label.clone(),
            status,
            message,
        }
    }

    /// `GET path`, authenticated.
    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.decode(
            self.agent
                .get(self.at(path))
                .header("Authorization", self.auth()?)
                .call(),
        )
    }

    /// `POST path` with a JSON body, authenticated.
    pub(crate) fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.decode(
            self.agent
                .post(self.at(path))
                .header("Authorization", self.auth()?)
                .send_json(body),
        )
    }
}
