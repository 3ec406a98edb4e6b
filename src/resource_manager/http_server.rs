//! The resource manager's HTTP API (the table in [`crate::control::resource_manager_api`]), on axum over
//! hyper with the executor manager's limits ([`crate::http`]): authentication on every route
//! but `GET /v1/health` ([`crate::http::protect`]; the node routes, register, heartbeat,
//! deregister, drain and resume, need the node credential), JSON bodies of at most
//! [`MAX_JSON_BYTES`] (413) received within the request timeout (408), the request head within
//! it too, JSON errors with the status of [`status_of`].
//!
//! A change is answered once it is in the state log ([`RmState::durable`]; a renewal only
//! when it must be, see [`RmState::renew`]); a handler whose
//! client hangs up meanwhile changes nothing more, and the change stands (a grant nobody
//! heard of expires with its TTL).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::control::resource_manager_api::{
    DeregisterResponse, GrantRequest, GrantResponse, LeaseList, MetricsResponse, NodeList,
    RegisterRequest, RegisterResponse, ReleaseResponse, RenewResponse, StaleLease, TokenBody,
    LEASE_TOKEN_HEADER,
};
use crate::http::{
    created_or_ok, health, parse_json, protect, read_body, ApiFailure, Authenticator, Caller,
    NodeCredential, MAX_JSON_BYTES,
};
use crate::scheduler::{Event, LeaseId, LeaseRequest, Millis, NodeInfo, SchedError, Scheduler};

use super::state::RmState;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    state: Arc<RmState>,
    request_timeout: Duration,
}

/// The HTTP status of a scheduler refusal.
pub fn status_of(e: &SchedError) -> StatusCode {
    match e {
        SchedError::UnknownNode(_) | SchedError::UnknownLease(_) => StatusCode::NOT_FOUND,
        SchedError::NodeDead(_) | SchedError::NodeDraining(_) => StatusCode::CONFLICT,
        SchedError::LeaseEnded { .. } | SchedError::LeaseExpired(_) => StatusCode::GONE,
        SchedError::WrongToken(_) => StatusCode::FORBIDDEN,
        SchedError::NoCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
        SchedError::Invalid(_) => StatusCode::BAD_REQUEST,
        SchedError::Token(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn refused(e: SchedError) -> ApiFailure {
    ApiFailure::new(status_of(&e), e.to_string())
}

/// The API's routes over `state`, behind `auth`.
pub fn router(state: Arc<RmState>, auth: Arc<Authenticator>, request_timeout: Duration) -> Router {
    let st = AppState {
        state,
        request_timeout,
    };
    let routes = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/metrics", get(metrics))
        .route("/v1/nodes", get(list_nodes).post(register))
        .route("/v1/nodes/{name}", get(node).delete(deregister))
        .route("/v1/nodes/{name}/heartbeat", post(heartbeat))
        .route("/v1/nodes/{name}/drain", node_change(Scheduler::drain))
        .route("/v1/nodes/{name}/resume", node_change(Scheduler::resume))
        .route("/v1/leases", get(list_leases).post(grant))
        .route("/v1/leases/{id}", get(lease).delete(release))
        .route("/v1/leases/{id}/renew", post(renew));
    protect(routes, auth, "rfaas::control::resource_manager_api").with_state(st)
}

async fn json_body<T: DeserializeOwned>(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<T, ApiFailure> {
    let bytes = read_body(headers, body, MAX_JSON_BYTES, st.request_timeout).await?;
    parse_json(&bytes, what)
}

/// Changes the scheduler with `f` (a refusal is answered with [`status_of`]) and waits until
/// the change is saved.
async fn change<R>(
    st: &AppState,
    f: impl FnOnce(&mut Scheduler, Millis) -> Result<R, SchedError>,
) -> Result<R, ApiFailure> {
    let (r, seq) = st.state.change(f).map_err(refused)?;
    durable(st, seq).await?;
    Ok(r)
}

/// Waits until log record `seq` is on disk.
async fn durable(st: &AppState, seq: u64) -> Result<(), ApiFailure> {
    st.state.durable(seq).await.map_err(|e| {
        ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the change was made but could not be saved to the state file: {e}"),
        )
    })
}

/// The lease id of a `/v1/leases/{id}` route: 400 when it is not a number.
struct LeasePath(LeaseId);

impl<S: Send + Sync> FromRequestParts<S> for LeasePath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<LeasePath, Response> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        id.parse().map(|n| LeasePath(LeaseId(n))).map_err(|_| {
            ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!("lease id {id:?} is not a number"),
            )
            .into_response()
        })
    }
}

async fn metrics(State(st): State<AppState>) -> Json<MetricsResponse> {
    let scheduler = st.state.with(|s, _| s.metrics());
    let (snapshots_written, snapshot_errors) = st.state.snapshot_counts();
    Json(MetricsResponse {
        scheduler,
        uptime_ms: st.state.uptime_ms(),
        snapshots_written,
        snapshot_errors,
    })
}

async fn register(
    State(st): State<AppState>,
    _node: NodeCredential,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    let req: RegisterRequest = json_body(&st, &headers, body, "registration").await?;
    crate::control::registration::check(&req)
        .map_err(|m| ApiFailure::new(StatusCode::BAD_REQUEST, format!("bad registration: {m}")))?;
    let name = req.name.clone();
    let info = NodeInfo {
        name: req.name,
        address: req.address,
        cores: req.cores,
        memory: req.memory,
        hosted: req.hosted,
    };
    let (r, view, timeout) = change(&st, |s, now| {
        let r = s.register(info, now)?;
        let view = s.node(&name).expect("just registered");
        Ok((r, view, s.config().heartbeat_timeout_ms))
    })
    .await?;
    tracing::info!(
        node = %name, address = %view.address, cores = view.cores_total, new = r.new,
        revived = r.revived, adopted = r.adopted.len(), stale = r.stale.len(),
        "node registered"
    );
    Ok((
        created_or_ok(r.new),
        Json(RegisterResponse {
            node: view,
            new: r.new,
            revived: r.revived,
            adopted: r.adopted,
            confirmed: r.confirmed,
            stale: r
                .stale
                .into_iter()
                .map(|(lease, reason)| StaleLease { lease, reason })
                .collect(),
            heartbeat_interval_ms: (timeout / 3).max(1),
            heartbeat_timeout_ms: timeout,
        }),
    )
        .into_response())
}

async fn heartbeat(
    State(st): State<AppState>,
    _node: NodeCredential,
    Path(name): Path<String>,
) -> Result<Response, ApiFailure> {
    let view = st
        .state
        .with(|s, now| {
            s.heartbeat(&name, now)?;
            Ok(s.node(&name).expect("known node"))
        })
        .map_err(refused)?;
    Ok(Json(view).into_response())
}

/// A node route (`POST /v1/nodes/{name}/drain`, `.../resume`) that changes the node's state
/// with `f`, saves it, and answers the node as it is now.
fn node_change(f: fn(&mut Scheduler, &str) -> Result<(), SchedError>) -> MethodRouter<AppState> {
    post(
        move |State(st): State<AppState>, _node: NodeCredential, Path(name): Path<String>| async move {
            let view = change(&st, |s, _| {
                f(s, &name)?;
                Ok(s.node(&name).expect("known node"))
            })
            .await?;
            tracing::info!(node = %name, state = view.state.name(), "node state changed");
            Ok::<_, ApiFailure>(Json(view).into_response())
        },
    )
}

async fn deregister(
    State(st): State<AppState>,
    _node: NodeCredential,
    Path(name): Path<String>,
) -> Result<Response, ApiFailure> {
    let events = change(&st, |s, _| s.deregister(&name)).await?;
    let ended: Vec<LeaseId> = events
        .iter()
        .filter_map(|e| match e {
            Event::LeaseEnded(e) => Some(e.lease),
            Event::NodeDead { .. } => None,
        })
        .collect();
    tracing::info!(node = %name, leases_ended = ended.len(), "node deregistered");
    Ok(Json(DeregisterResponse { node: name, ended }).into_response())
}

async fn node(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiFailure> {
    st.state
        .with(|s, _| s.node(&name))
        .map(|v| Json(v).into_response())
        .ok_or_else(|| refused(SchedError::UnknownNode(name)))
}

async fn list_nodes(State(st): State<AppState>) -> Json<NodeList> {
    Json(st.state.with(|s, now| NodeList {
        now_ms: now.0,
        nodes: s.nodes(),
    }))
}

async fn grant(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    let mut req: GrantRequest = json_body(&st, &headers, body, "lease request").await?;
    if let Some(uid) = caller.uid {
        // MUNGE: the lease belongs to the user munged vouched for, whatever the body says.
        req.client = format!("uid {uid}");
    }
    let client = req.client.clone();
    let req = LeaseRequest {
        cores: req.cores,
        memory_per_core: req.memory_per_core,
        policy: req.policy,
        allow_split: req.allow_split,
        ttl: req.ttl_ms.map(Duration::from_millis),
        client: req.client,
    };
    let (g, now) = change(&st, |s, now| {
        s.grant(req, now)
            .map(|g| (g, now))
            .inspect_err(|e| tracing::debug!(%client, "lease refused: {e}"))
    })
    .await?;
    tracing::debug!(lease = %g.lease, %client, parts = g.parts.len(), "lease granted");
    Ok((
        StatusCode::CREATED,
        Json(GrantResponse {
            lease: g.lease,
            token: g.token,
            parts: g.parts,
            ttl_ms: g.ttl_ms,
            expires_in_ms: g.expires_at.0.saturating_sub(now.0),
            expires_at_unix_ms: st.state.unix_ms(g.expires_at),
        }),
    )
        .into_response())
}

async fn renew(
    State(st): State<AppState>,
    LeasePath(lease): LeasePath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    let t: TokenBody = json_body(&st, &headers, body, "renewal").await?;
    let (to, now, ttl_ms, seq) = st.state.renew(lease, &t.token).map_err(refused)?;
    durable(&st, seq).await?;
    Ok(Json(RenewResponse {
        lease,
        ttl_ms,
        expires_in_ms: to.0.saturating_sub(now.0),
        expires_at_unix_ms: st.state.unix_ms(to),
    })
    .into_response())
}

async fn release(
    State(st): State<AppState>,
    LeasePath(lease): LeasePath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    let token = match headers
        .get(LEASE_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) => t.trim().to_string(),
        None => {
            let bytes = read_body(&headers, body, MAX_JSON_BYTES, st.request_timeout).await?;
            if bytes.is_empty() {
                return Err(ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "send the lease token: a body {{\"token\": \"...\"}} or a header \
                         {LEASE_TOKEN_HEADER}"
                    ),
                ));
            }
            parse_json::<TokenBody>(&bytes, "release")?.token
        }
    };
    let ended = change(&st, |s, _| s.release(lease, &token)).await?;
    tracing::debug!(%lease, "lease released");
    Ok(Json(ReleaseResponse {
        lease,
        parts: ended.parts,
    })
    .into_response())
}

/// One lease. With the header [`LEASE_TOKEN_HEADER`] (how an executor manager checks the
/// lease a client presents), the token is checked too, in constant time: 403 when it is not
/// the lease's.
async fn lease(
    State(st): State<AppState>,
    LeasePath(id): LeasePath,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    let presented = headers
        .get(LEASE_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.trim().to_string());
    st.state
        .with(|s, _now| {
            let view = s.lease(id)?;
            let live = matches!(view.state, crate::scheduler::LeaseState::Live);
            if let (true, Some(t)) = (live, &presented) {
                let ok = s.lease_token_matches(id, t);
                return Some(if ok {
                    Ok(view)
                } else {
                    Err(refused(SchedError::WrongToken(id)))
                });
            }
            Some(Ok(view))
        })
        .ok_or_else(|| refused(SchedError::UnknownLease(id)))?
        .map(|v| Json(v).into_response())
}

async fn list_leases(State(st): State<AppState>, RawQuery(q): RawQuery) -> Json<LeaseList> {
    let with_ended = q
        .as_deref()
        .is_some_and(|q| q.split('&').any(|kv| kv == "ended=true" || kv == "ended=1"));
    // `?node=NAME`: only leases with a part on that node (what an executor manager hosts).
    let node = q.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("node="))
            .map(str::to_string)
    });
    Json(st.state.with(|s, now| {
        LeaseList {
            now_ms: now.0,
            leases: match &node {
                None => s.leases(),
                Some(n) => s
                    .leases()
                    .into_iter()
                    .filter(|l| l.parts.iter().any(|p| &p.node == n))
                    .collect(),
            },
            ended: if with_ended {
                s.ended_leases()
            } else {
                Vec::new()
            },
        }
    }))
}

/// Logs what a tick (or a deregistration) reports.
pub fn log_event(e: &Event) {
    match e {
        Event::NodeDead {
            node,
            last_heartbeat,
        } => tracing::warn!(
            %node, last_heartbeat_ms = last_heartbeat.0,
            "node missed its heartbeats: marked dead, its cores leave the pool"
        ),
        Event::LeaseEnded(e) => tracing::info!(
            lease = %e.lease, client = %e.client, reason = %e.reason,
            cores = e.parts.iter().map(|p| p.cores).sum::<u32>(),
            "lease ended, capacity back"
        ),
    }
}
