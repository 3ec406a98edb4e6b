//! What the HTTP/JSON servers (executor manager, resource manager) share: JSON error answers,
//! bounded body reads, one authentication layer ([`Authenticator`], [`protect`]), and a hyper accept loop with a header-read timer
//! and a connection limit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::control::executor_manager_api::ApiError;
use crate::control::munge::MungeSocket;
use crate::control::secret::secrets_equal;

/// Largest JSON request body, bytes.
pub const MAX_JSON_BYTES: usize = 64 << 10;
/// Most HTTP connections served at once.
pub const MAX_CONNECTIONS: usize = 512;

/// An error answer: a status and an [`ApiError`] body (`{"error": "..."}`).
#[derive(Debug)]
pub struct ApiFailure(pub StatusCode, pub String);

impl ApiFailure {
    /// `status` with `msg`.
    pub fn new(status: StatusCode, msg: impl Into<String>) -> ApiFailure {
        ApiFailure(status, msg.into())
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(ApiError { error: self.1 })).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// Who a request comes from, as its credentials prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// It may act as a node: register, heartbeat, deregister, drain, resume (it presented the
    /// node credential, or the cluster secret when no separate node credential is configured).
    pub node: bool,
    /// The user `munged` vouched for (MUNGE authentication), `None` for a shared secret.
    pub uid: Option<u32>,
}

impl Caller {
    /// 403 unless the caller holds the node credential.
    pub fn require_node(&self) -> Result<(), ApiFailure> {
        if self.node {
            Ok(())
        } else {
            Err(ApiFailure::new(
                StatusCode::FORBIDDEN,
                "this route needs the node credential (executor managers and operators hold \
                 it, clients do not)",
            ))
        }
    }
}

/// The credentials a server accepts, and what each may do:
///
/// * `Authorization: Bearer <node secret>`: everything, including the node routes.
/// * `Authorization: Bearer <cluster secret>`: client routes; the node routes too when no node
///   secret is configured (single-user mode, where every party is the same user anyway).
/// * `Authorization: Munge <credential>` (when MUNGE is enabled): client routes, as the user
///   `munged` vouches for.
pub struct Authenticator {
    client: Arc<str>,
    node: Option<Arc<str>>,
    munge: Option<MungeSocket>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("node_secret", &self.node.is_some())
            .field("munge", &self.munge)
            .finish_non_exhaustive()
    }
}

/// How long `unmunge` may take.
const MUNGE_TIMEOUT: Duration = Duration::from_secs(5);

impl Authenticator {
    /// Accepts the cluster secret `client` and, when given, the separate node secret `node`.
    pub fn new(client: &str, node: Option<&str>) -> Authenticator {
        Authenticator {
            client: Arc::from(client),
            node: node.map(Arc::from),
            munge: None,
        }
    }

    /// Reads the cluster secret and the node secret (when named) from their files (mode 0600),
    /// enabling MUNGE when `munge` names a socket; logs which mode it runs in.
    pub fn load(
        secret_file: &std::path::Path,
        node_secret_file: Option<&std::path::Path>,
        munge: Option<MungeSocket>,
    ) -> Result<Authenticator, crate::control::secret::SecretError> {
        use crate::control::secret::read_secret_file;
        let client = read_secret_file(secret_file)?;
        let node = node_secret_file.map(read_secret_file).transpose()?;
        if node.is_none() {
            tracing::warn!(
                "no node secret file: the cluster secret may register and remove nodes \
                 (single-user mode)"
            );
        }
        let auth = Authenticator::new(&client, node.as_deref());
        Ok(match munge {
            Some(socket) => auth.with_munge(socket),
            None => auth,
        })
    }

    /// Also accepts MUNGE credentials decoded through `socket`.
    pub fn with_munge(mut self, socket: MungeSocket) -> Authenticator {
        self.munge = Some(socket);
        self
    }

    /// Who sent `headers`; 401 when no credential or a wrong one.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Caller, ApiFailure> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let wrong = |what: &str| ApiFailure::new(StatusCode::UNAUTHORIZED, what.to_string());
        let Some(value) = value else {
            return Err(wrong(
                "missing credentials: send Authorization: Bearer <cluster secret>",
            ));
        };
        if let Some(s) = value.strip_prefix("Bearer ").map(str::trim) {
            if let Some(node) = &self.node {
                if secrets_equal(s.as_bytes(), node.as_bytes()) {
                    return Ok(Caller {
                        node: true,
                        uid: None,
                    });
                }
            }
            if secrets_equal(s.as_bytes(), self.client.as_bytes()) {
                return Ok(Caller {
                    node: self.node.is_none(),
                    uid: None,
                });
            }
            return Err(wrong("wrong cluster secret"));
        }
        if let Some(cred) = value.strip_prefix("Munge ").map(str::trim) {
            let Some(socket) = self.munge.clone() else {
                return Err(wrong("MUNGE authentication is not enabled on this server"));
            };
            let cred = cred.to_string();
            let decoded =
                tokio::task::spawn_blocking(move || socket.decode(&cred, MUNGE_TIMEOUT)).await;
            return match decoded {
                Ok(Ok(id)) => Ok(Caller {
                    node: false,
                    uid: Some(id.uid),
                }),
                Ok(Err(e)) => Err(wrong(&format!("MUNGE {e}"))),
                Err(e) => Err(ApiFailure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.to_string(),
                )),
            };
        }
        Err(wrong(
            "unknown authorization scheme: send Bearer <cluster secret> or Munge <credential>",
        ))
    }
}

/// Puts the API behind `auth`: every route but `GET /v1/health` needs a credential, and
/// handlers find the [`Caller`] among the request's extensions. Unknown routes and methods get
/// JSON 404 and 405 answers naming `api_table` (where the routes are documented).
pub fn protect<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    auth: Arc<Authenticator>,
    api_table: &'static str,
) -> Router<S> {
    router
        .fallback(move || async move {
            ApiFailure::new(
                StatusCode::NOT_FOUND,
                format!("no such route; see the API table in {api_table}"),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiFailure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn_with_state(auth, authenticate))
}

async fn authenticate(
    axum::extract::State(auth): axum::extract::State<Arc<Authenticator>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path() == "/v1/health" {
        return next.run(req).await;
    }
    match auth.identify(req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Reads a body of at most `limit` bytes within `timeout`: 413 when larger (at once when the
/// declared length says so), 408 when too slow, 400 when the connection breaks.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiFailure> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_big = || {
        ApiFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiFailure::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("request body not received within {timeout:?}"),
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(too_big());
                }
                src = s.source();
            }
            Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            ))
        }
    }
}

/// Parses a JSON request body: 400 naming `what` and the parser's message (missing field,
/// wrong type, line and column) otherwise.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiFailure> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, format!("bad {what}: {e}")))
}

/// Serves `app` on `listener` until `shutdown` completes: HTTP/1.1, the request head within
/// `head_timeout`, at most [`MAX_CONNECTIONS`] connections at once.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    head_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing a connection: {MAX_CONNECTIONS} already open");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .keep_alive(true);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(permit);
        });
    }
}
