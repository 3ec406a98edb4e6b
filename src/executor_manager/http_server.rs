//! The executor manager's HTTP API (the table in [`crate::control::executor_manager_api`]), on axum over hyper.
//!
//! * Every route but `GET /v1/health` needs `Authorization: Bearer <cluster secret>` (compared
//!   in constant time); otherwise 401 with a JSON [`ApiError`](crate::control::executor_manager_api::ApiError).
//! * Bodies are read with a size limit (JSON: [`MAX_JSON_BYTES`]; libraries: the configured
//!   maximum, at most [`MAX_LIBRARY_BYTES`](crate::control::executor_manager_api::MAX_LIBRARY_BYTES)) → 413, and a
//!   time limit → 408. The request head must arrive within the request timeout too (hyper's
//!   header-read timer), so a client that sends half a request and stalls holds nothing for
//!   long; connections beyond [`MAX_CONNECTIONS`] are refused.
//! * JSON is parsed here, so a bad document or a missing field is a 400 naming it.
//! * Allocation runs as a task of its own: a client that disconnects mid-allocation cannot leave
//!   cores reserved or an executor half started.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use crate::control::executor_manager_api::AllocationRequest;
use crate::http::{check_bearer, parse_json, read_body};

use super::service::{Service, ServiceError};

pub use crate::http::{serve, ApiFailure, MAX_CONNECTIONS, MAX_JSON_BYTES};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    service: Arc<Service>,
    secret: Arc<str>,
}

impl From<ServiceError> for ApiFailure {
    fn from(e: ServiceError) -> Self {
        ApiFailure(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.to_string(),
        )
    }
}

/// The API's routes over `service`, authenticated with `secret`.
pub fn router(service: Arc<Service>, secret: &str) -> Router {
    let state = AppState {
        service,
        secret: Arc::from(secret),
    };
    Router::new()
        .route("/v1/health", get(health))
        .route(
            "/v1/libraries/{hash}",
            put(upload_library).head(head_library),
        )
        .route("/v1/allocations", post(allocate))
        .route("/v1/allocations/{id}", get(allocation).delete(deallocate))
        .route("/v1/status", get(status))
        .fallback(|| async {
            ApiFailure::new(
                StatusCode::NOT_FOUND,
                "no such route; see the API table in rfaas::control::executor_manager_api",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiFailure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn authenticate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/v1/health" {
        return next.run(req).await;
    }
    match check_bearer(req.headers(), &st.secret) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true }))
}

async fn upload_library(
    State(st): State<AppState>,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    let cfg = st.service.config();
    let limit = cfg.max_library_bytes;
    // Allow for slow links: the request timeout plus 1 µs per 10 bytes announced (10 MB/s).
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let timeout = cfg.request_timeout
        + Duration::from_micros(declared.unwrap_or(limit as u64).min(limit as u64) / 10);
    let bytes = read_body(&headers, body, limit, timeout).await?;
    let (stored, new) = st.service.store_library(&hash, bytes).await?;
    Ok((
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(stored),
    )
        .into_response())
}

async fn head_library(
    State(st): State<AppState>,
    Path(hash): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    Ok(if st.service.has_library(&hash).await? {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

async fn allocate(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    let bytes = read_body(
        &headers,
        body,
        MAX_JSON_BYTES,
        st.service.config().request_timeout,
    )
    .await?;
    let req: AllocationRequest = parse_json(&bytes, "allocation request")?;
    let task = tokio::spawn(st.service.clone().allocate(req));
    let alloc = task
        .await
        .map_err(|e| ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((StatusCode::CREATED, Json(alloc)).into_response())
}

fn parse_id(id: &str) -> Result<u64, ApiFailure> {
    id.parse().map_err(|_| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("allocation id {id:?} is not a number"),
        )
    })
}

async fn allocation(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    Ok(Json(st.service.allocation(parse_id(&id)?)?).into_response())
}

async fn deallocate(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    let id = parse_id(&id)?;
    let service = st.service.clone();
    // As a task: stopping completes even if the client hangs up.
    tokio::spawn(async move { service.deallocate(id).await })
        .await
        .map_err(|e| ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn status(State(st): State<AppState>) -> Response {
    Json(st.service.status()).into_response()
}
