//! The executor manager's HTTP API (the table in [`crate::control::executor_manager_api`]), on axum over hyper.
//!
//! * Every route but `GET /v1/health` needs a credential ([`crate::http::protect`]: the cluster
//!   secret, the node credential or a MUNGE credential); otherwise 401 with a JSON
//!   [`ApiError`].
//! * Ending an allocation (`DELETE /v1/allocations/{id}`) also needs its token
//!   ([`ALLOCATION_TOKEN_HEADER`]) or the token of the lease it runs under
//!   ([`LEASE_TOKEN_HEADER`]), or the node credential: 403 otherwise.
//! * Bodies are read with a size limit (JSON: [`MAX_JSON_BYTES`]; libraries: the configured
//!   maximum, at most [`MAX_LIBRARY_BYTES`](crate::control::executor_manager_api::MAX_LIBRARY_BYTES)) → 413, and a
//!   time limit → 408. The request head must arrive within the request timeout too (hyper's
//!   header-read timer), so a client that sends half a request and stalls holds nothing for
//!   long; connections beyond [`MAX_CONNECTIONS`] are refused.
//! * Assets (`PUT`/`HEAD /v1/assets/{sha256}`) are uploaded like libraries, with the same lease
//!   rule and limits, without the ELF check.
//! * An allocation refused by the library's init function is a 422 whose JSON body carries
//!   `"code": "init_failed"` beside the function's message.
//! * JSON is parsed here, so a bad document or a missing field is a 400 naming it.
//! * Allocation runs as a task of its own: a client that disconnects mid-allocation cannot leave
//!   cores reserved or an executor half started.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use crate::control::executor_manager_api::{
    AllocationRequest, ApiError, ALLOCATION_TOKEN_HEADER, INIT_FAILED_CODE, UPLOAD_LEASE_HEADER,
    UPLOAD_LIMIT_HEADER,
};
use crate::control::resource_manager_api::LEASE_TOKEN_HEADER;
use crate::http::{created_or_ok, health, parse_json, protect, read_body, Authenticator, Caller};

use super::assets::Blob;
use super::service::{Service, ServiceError};

pub use crate::http::{serve, ApiFailure, MAX_CONNECTIONS, MAX_JSON_BYTES};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    service: Arc<Service>,
}

impl From<ServiceError> for ApiFailure {
    fn from(e: ServiceError) -> Self {
        ApiFailure(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.to_string(),
        )
    }
}

/// The API's routes over `service`, behind `auth`.
pub fn router(service: Arc<Service>, auth: Arc<Authenticator>) -> Router {
    let state = AppState { service };
    let routes = Router::new()
        .route("/v1/health", get(health))
        .route(
            "/v1/libraries/{hash}",
            put(upload_library).head(head_library),
        )
        .route("/v1/assets/{hash}", put(upload_asset).head(head_asset))
        .route("/v1/allocations", post(allocate))
        .route("/v1/allocations/{id}", get(allocation).delete(deallocate))
        .route("/v1/status", get(status));
    protect(routes, auth, "rfaas::control::executor_manager_api").with_state(state)
}

async fn upload_library(
    st: State<AppState>,
    hash: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    upload(Blob::Library, st, hash, headers, body).await
}

async fn upload_asset(
    st: State<AppState>,
    hash: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    upload(Blob::Asset, st, hash, headers, body).await
}

/// An upload of a library or an asset: the same lease rule, size and time limits.
async fn upload(
    kind: Blob,
    State(st): State<AppState>,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    // With a resource manager, only a live lease with cores here may fill the cache. The
    // body is read (bounded) even when refused, so the client hears why instead of a reset.
    let allowed: Result<(), ApiFailure> = match st.service.rm_link() {
        None => Ok(()),
        Some(link) => {
            let lease = headers
                .get(UPLOAD_LEASE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string());
            match lease {
                None => Err(ApiFailure::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "uploads need a lease with cores on this node: send \
                         {UPLOAD_LEASE_HEADER}: <id>:<token>"
                    ),
                )),
                Some(lease) => {
                    let link = link.clone();
                    tokio::task::spawn_blocking(move || link.check_lease(Some(&lease), "upload"))
                        .await
                        .map_err(|e| {
                            ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        })
                        .and_then(|r| r.map(|_| ()).map_err(ApiFailure::from))
                }
            }
        }
    };
    let cfg = st.service.config();
    let limit = cfg.max_library_bytes;
    // Allow for slow links: the request timeout plus 1 µs per 10 bytes announced (10 MB/s).
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let timeout = cfg.request_timeout
        + Duration::from_micros(declared.unwrap_or(limit as u64).min(limit as u64) / 10);
    let bytes = read_body(&headers, body, limit, timeout).await;
    allowed?;
    let bytes = bytes?;
    let (stored, new) = st.service.store_blob(kind, &hash, bytes).await?;
    Ok((created_or_ok(new), Json(stored)).into_response())
}

async fn head_library(st: State<AppState>, hash: Path<String>) -> Result<Response, ApiFailure> {
    head(Blob::Library, st, hash).await
}

async fn head_asset(st: State<AppState>, hash: Path<String>) -> Result<Response, ApiFailure> {
    head(Blob::Asset, st, hash).await
}

/// 200 when cached, 404 otherwise; both say the upload limit ([`UPLOAD_LIMIT_HEADER`]).
async fn head(
    kind: Blob,
    State(st): State<AppState>,
    Path(hash): Path<String>,
) -> Result<Response, ApiFailure> {
    let status = if st.service.has_blob(kind, &hash).await? {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let limit = st.service.config().max_library_bytes.to_string();
    Ok((status, [(UPLOAD_LIMIT_HEADER, limit)]).into_response())
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
    // The pooled executor this allocation will likely take wakes now, while the request is
    // checked and its cores reserved (see `Pool::nudge`); a request that is not even an
    // allocation request wakes nothing.
    st.service.nudge_pool();
    let task = tokio::spawn(st.service.clone().allocate(req));
    let outcome = task
        .await
        .map_err(|e| ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match outcome {
        Ok(alloc) => Ok((StatusCode::CREATED, Json(alloc)).into_response()),
        // The library's own message, marked so that clients can tell it from other refusals.
        Err(ServiceError::InitFailed(message)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ApiError {
                error: message,
                code: Some(INIT_FAILED_CODE.into()),
            }),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
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
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiFailure> {
    let id = parse_id(&id)?;
    let presented = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let allowed = caller.node
        || st.service.may_end(
            id,
            presented(ALLOCATION_TOKEN_HEADER),
            presented(LEASE_TOKEN_HEADER),
        );
    if !allowed {
        // The same answer whether or not the allocation exists: ids reveal nothing.
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            format!(
                "ending allocation {id} needs its token ({ALLOCATION_TOKEN_HEADER}) or its \
                 lease's ({LEASE_TOKEN_HEADER})"
            ),
        ));
    }
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
