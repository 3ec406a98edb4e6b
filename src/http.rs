//! What the HTTP/JSON servers (executor manager, resource manager) share: JSON error answers,
//! bounded body reads, Bearer authentication, and a hyper accept loop with a header-read timer
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

/// Checks `Authorization: Bearer <secret>` in constant time; a 401 otherwise.
pub fn check_bearer(headers: &HeaderMap, secret: &str) -> Result<(), ApiFailure> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None => Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "missing credentials: send Authorization: Bearer <cluster secret>",
        )),
        Some(s) if secrets_equal(s.as_bytes(), secret.as_bytes()) => Ok(()),
        Some(_) => Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "wrong cluster secret",
        )),
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
