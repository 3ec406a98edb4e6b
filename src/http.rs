//! What the HTTP/JSON servers (executor manager, resource manager) share: JSON error answers,
//! bounded body reads, one authentication layer ([`Authenticator`], [`protect`]), and a hyper accept loop with a header-read timer
//! and a connection limit.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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
        let mut r = (
            self.0,
            Json(ApiError {
                error: self.1,
                code: None,
            }),
        )
            .into_response();
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
            if let Some(c) = req.extensions().get::<ConnectionAuthenticated>() {
                c.0.store(true, Ordering::Release);
            }
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

/// Most connections one peer address may hold open before it has authenticated.
pub const MAX_UNAUTHENTICATED_PER_PEER: usize = 64;
/// Longest a connection may stay open without an authenticated request (at most the head
/// timeout): a slow client without credentials holds a slot only this long.
pub const UNAUTHENTICATED_LIMIT: Duration = Duration::from_secs(2);

/// Set on a connection once one of its requests carried valid credentials.
#[derive(Clone, Debug, Default)]
pub struct ConnectionAuthenticated(Arc<AtomicBool>);

struct Open {
    peer: IpAddr,
    authenticated: Arc<AtomicBool>,
    abort: Option<tokio::task::AbortHandle>,
}

/// The open connections, oldest first (ids grow).
#[derive(Default)]
struct Connections {
    open: BTreeMap<u64, Open>,
    next: u64,
}

impl Connections {
    fn unauthenticated(&self) -> impl Iterator<Item = (&u64, &Open)> {
        self.open
            .iter()
            .filter(|(_, c)| !c.authenticated.load(Ordering::Acquire))
    }

    /// Makes room for a connection from `peer`: closes the oldest unauthenticated connection
    /// of `peer` when it holds too many, or the oldest unauthenticated one of anyone when all
    /// slots are taken. `false`: every slot is held by an authenticated connection.
    fn make_room(&mut self, peer: IpAddr, limit: usize) -> bool {
        let of_peer: Vec<u64> = self
            .unauthenticated()
            .filter(|(_, c)| c.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        if of_peer.len() >= MAX_UNAUTHENTICATED_PER_PEER {
            self.close(of_peer[0]);
        }
        if self.open.len() < limit {
            return true;
        }
        let oldest = self.unauthenticated().map(|(id, _)| *id).next();
        match oldest {
            Some(id) => {
                self.close(id);
                true
            }
            None => false,
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(c) = self.open.remove(&id) {
            if let Some(a) = c.abort {
                a.abort();
            }
        }
    }
}

/// A warning logged at most once per interval, with how many were suppressed in between.
pub struct RateLimitedWarning {
    every: Duration,
    last: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl RateLimitedWarning {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> RateLimitedWarning {
        RateLimitedWarning {
            every,
            last: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Logs `msg` unless a line went out less than `every` ago (then counts it).
    pub fn warn(&self, msg: std::fmt::Arguments<'_>) {
        let mut g = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if g.0.is_some_and(|t| now.duration_since(t) < self.every) {
            g.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut g.1);
        g.0 = Some(now);
        drop(g);
        if suppressed > 0 {
            tracing::warn!("{msg} ({suppressed} more like this not logged)");
        } else {
            tracing::warn!("{msg}");
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes: HTTP/1.1, the request head within
/// `head_timeout`, at most [`MAX_CONNECTIONS`] connections at once. A connection that has not
/// sent an authenticated request within [`UNAUTHENTICATED_LIMIT`] is closed, a peer holds at
/// most [`MAX_UNAUTHENTICATED_PER_PEER`] unauthenticated connections, and when every slot is
/// taken a new connection displaces the oldest unauthenticated one: clients without
/// credentials, however slow or many, cannot lock out those with. Warnings are rate limited.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    head_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    static FULL: RateLimitedWarning = RateLimitedWarning::new(Duration::from_secs(10));
    static ACCEPT: RateLimitedWarning = RateLimitedWarning::new(Duration::from_secs(10));
    let conns = Arc::new(std::sync::Mutex::new(Connections::default()));
    let unauth_limit = UNAUTHENTICATED_LIMIT.min(head_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    ACCEPT.warn(format_args!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let authenticated = ConnectionAuthenticated::default();
        let id = {
            let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
            if !c.make_room(peer.ip(), MAX_CONNECTIONS) {
                drop(c);
                FULL.warn(format_args!(
                    "refusing a connection from {peer}: {MAX_CONNECTIONS} authenticated \
                     connections already open"
                ));
                continue;
            }
            let id = c.next;
            c.next += 1;
            c.open.insert(
                id,
                Open {
                    peer: peer.ip(),
                    authenticated: authenticated.0.clone(),
                    abort: None,
                },
            );
            id
        };
        let service =
            TowerToHyperService::new(app.clone().layer(axum::Extension(authenticated.clone())));
        let flag = authenticated.0;
        let done = conns.clone();
        let task = tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let unauthenticated = async {
                tokio::time::sleep(unauth_limit).await;
                if flag.load(Ordering::Acquire) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, "connection ended: {e}");
                },
                _ = unauthenticated => {
                    tracing::debug!(%peer, "closing a connection without credentials after {unauth_limit:?}");
                }
            }
            done.lock()
                .unwrap_or_else(|p| p.into_inner())
                .open
                .remove(&id);
        });
        if let Some(c) = conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .get_mut(&id)
        {
            c.abort = Some(task.abort_handle());
        }
    }
}
