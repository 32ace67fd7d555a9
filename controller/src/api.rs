//! The HTTP JSON API (axum). The CLI's client commands use exactly this API; so will the
//! dashboard. Every request is untrusted: errors come back as `{"error": "…"}` with a 4xx
//! status and a sentence saying what to change.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use edgefleet_protocol::event::DeviceEvent;
use serde::Serialize;
use serde_json::json;

use crate::core::{ApplyError, ApplyRequest, Controller};
use crate::fleet::DeviceSummary;
use crate::rollouts::{RolloutError, RolloutView, StartRequest};
use crate::selector::Selector;
use crate::store::{RevisionRow, StoreError};

/// Base path of every API route.
pub const BASE: &str = "/api/v1";

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        (status, Json(json!({ "error": msg }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("store error: {e}");
        ApiError::Internal(format!(
            "{e}; check free disk space and the permissions of the gateway's --data-dir, then retry (the gateway log has details)"
        ))
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Store(s) => s.into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Store(s) => s.into(),
            RolloutError::Pin(crate::core::PinError::Store(s)) => s.into(),
            e @ (RolloutError::NotFound(_) | RolloutError::NoDeployment(_)) => {
                ApiError::NotFound(e.to_string())
            }
            e @ (RolloutError::Busy { .. } | RolloutError::BadState { .. }) => {
                ApiError::Conflict(e.to_string())
            }
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::BadRequest(format!("request body: {}", e.body_text()))
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;
type Ctx = State<Arc<Controller>>;

pub fn router(ctrl: Arc<Controller>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{id}", get(device))
        .route("/api/v1/deployments", get(deployments).post(apply))
        .route(
            "/api/v1/deployments/{name}",
            get(deployment).delete(delete_deployment),
        )
        .route(
            "/api/v1/deployments/{name}/revisions/{revision}",
            get(revision),
        )
        .route("/api/v1/deployments/{name}/diff", get(diff))
        .route("/api/v1/windows", get(windows))
        .route(
            "/api/v1/windows/{site}",
            axum::routing::put(set_window).delete(clear_window),
        )
        .route("/api/v1/rollouts", get(rollouts).post(start_rollout))
        .route("/api/v1/rollouts/{id}", get(rollout))
        .route(
            "/api/v1/rollouts/{id}/{action}",
            axum::routing::post(control_rollout),
        )
        .fallback(|| async { ApiError::NotFound("no such API route; see /api/v1/health".into()) })
        .with_state(ctrl)
}

async fn health(State(ctrl): Ctx) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "devices": ctrl.fleet.devices.len(),
        "uptime_s": ctrl.started.elapsed().as_secs(),
    }))
}

#[derive(Serialize)]
struct DeviceList {
    devices: Vec<DeviceSummary>,
}

async fn devices(State(ctrl): Ctx) -> Json<DeviceList> {
    Json(DeviceList {
        devices: ctrl.fleet.summaries(),
    })
}

#[derive(Serialize)]
struct DeviceDetail {
    #[serde(flatten)]
    summary: DeviceSummary,
    presence: Option<edgefleet_protocol::presence::DevicePresence>,
    status: Option<edgefleet_protocol::status::DeviceStatus>,
    desired: Option<edgefleet_protocol::desired::DesiredState>,
    events: Vec<DeviceEvent>,
}

async fn device(State(ctrl): Ctx, Path(id): Path<String>) -> ApiResult<DeviceDetail> {
    let view = ctrl.fleet.get(&id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no device '{id}' has connected yet; list devices with 'edgefleet get devices'"
        ))
    })?;
    let mut events: Vec<DeviceEvent> = view.events.iter().cloned().collect();
    if events.is_empty() {
        events = ctrl
            .store()
            .events(&id, 50)?
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
    }
    Ok(Json(DeviceDetail {
        summary: view.summary(),
        presence: view.presence,
        status: view.status,
        desired: view.desired,
        events,
    }))
}

#[derive(Serialize)]
struct DeploymentSummary {
    name: String,
    target: String,
    revision: u64,
    updated_at: String,
    devices: Vec<String>,
}

#[derive(Serialize)]
struct DeploymentList {
    deployments: Vec<DeploymentSummary>,
}

fn summarize(ctrl: &Controller, d: crate::store::DeploymentRow) -> DeploymentSummary {
    let devices = Selector::parse(&d.target)
        .map(|s| ctrl.targets(&s))
        .unwrap_or_default();
    DeploymentSummary {
        name: d.name,
        target: d.target,
        revision: d.revision,
        updated_at: d.updated_at,
        devices,
    }
}

async fn deployments(State(ctrl): Ctx) -> ApiResult<DeploymentList> {
    let rows = ctrl.store().deployments()?;
    Ok(Json(DeploymentList {
        deployments: rows.into_iter().map(|d| summarize(&ctrl, d)).collect(),
    }))
}

async fn apply(
    State(ctrl): Ctx,
    body: Result<Json<ApplyRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let outcome = ctrl.apply(&req, "api")?;
    let status = if outcome.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome)).into_response())
}

#[derive(Serialize)]
struct DeploymentDetail {
    #[serde(flatten)]
    summary: DeploymentSummary,
    compose: Option<String>,
    revisions: Vec<RevisionRow>,
}

async fn deployment(State(ctrl): Ctx, Path(name): Path<String>) -> ApiResult<DeploymentDetail> {
    let (row, revisions) = {
        let store = ctrl.store();
        let row = store
            .deployment(&name)?
            .ok_or_else(|| not_found_deployment(&name))?;
        (row, store.revisions(&name)?)
    };
    let compose = revisions
        .iter()
        .find(|r| r.revision == row.revision)
        .and_then(|r| r.compose.clone());
    let revisions = revisions
        .into_iter()
        .map(|r| RevisionRow { compose: None, ..r })
        .collect();
    Ok(Json(DeploymentDetail {
        summary: summarize(&ctrl, row),
        compose,
        revisions,
    }))
}

fn not_found_deployment(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no deployment '{name}'; list them with 'edgefleet get deployments'"
    ))
}

async fn delete_deployment(
    State(ctrl): Ctx,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    let devices = ctrl
        .delete(&name)?
        .ok_or_else(|| not_found_deployment(&name))?;
    Ok(Json(
        json!({ "name": name, "deleted": true, "devices": devices }),
    ))
}

async fn revision(
    State(ctrl): Ctx,
    path: Result<Path<(String, u64)>, axum::extract::rejection::PathRejection>,
) -> ApiResult<serde_json::Value> {
    let Path((name, revision)) = path.map_err(|_| {
        ApiError::BadRequest(
            "the revision must be a whole number; list them with 'edgefleet get deployment NAME'"
                .into(),
        )
    })?;
    let row = ctrl.store().revision(&name, revision)?.ok_or_else(|| {
        ApiError::NotFound(format!("deployment '{name}' has no revision {revision}"))
    })?;
    let spec: serde_json::Value = serde_json::from_str(&row.spec_json).unwrap_or_default();
    Ok(Json(json!({ "revision": row, "spec": spec })))
}

#[derive(Serialize)]
struct RolloutList {
    rollouts: Vec<RolloutView>,
}

async fn rollouts(State(ctrl): Ctx) -> ApiResult<RolloutList> {
    Ok(Json(RolloutList {
        rollouts: ctrl.rollouts.list(&ctrl)?,
    }))
}

async fn start_rollout(
    State(ctrl): Ctx,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let view = ctrl.rollouts.start(&ctrl, &req, "api")?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

fn rollout_id(
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> Result<u64, ApiError> {
    path.map(|Path(id)| id).map_err(|_| {
        ApiError::BadRequest(
            "a rollout id is a whole number; list them with 'edgefleet rollout list'".into(),
        )
    })
}

async fn rollout(
    State(ctrl): Ctx,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> ApiResult<RolloutView> {
    let id = rollout_id(path)?;
    Ok(Json(ctrl.rollouts.get(&ctrl, id)?))
}

async fn control_rollout(
    State(ctrl): Ctx,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<RolloutView> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::BadRequest(
            "a rollout id is a whole number; list them with 'edgefleet rollout list'".into(),
        )
    })?;
    let action: &'static str = match action.as_str() {
        "pause" => "pause",
        "resume" => "resume",
        "abort" => "abort",
        "rollback" => return Ok(Json(ctrl.rollouts.rollback(&ctrl, id, "api")?)),
        other => {
            return Err(ApiError::NotFound(format!(
                "no rollout action '{other}' (pause, resume, abort, rollback)"
            )));
        }
    };
    Ok(Json(ctrl.rollouts.control(&ctrl, id, action)?))
}

#[derive(serde::Deserialize)]
struct WindowBody {
    /// `Mon-Fri 22:00-04:00`
    window: String,
    /// IANA time zone, e.g. `Europe/Paris`.
    tz: String,
}

impl From<crate::core::SiteWindowError> for ApiError {
    fn from(e: crate::core::SiteWindowError) -> Self {
        match e {
            crate::core::SiteWindowError::Store(s) => s.into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

async fn windows(State(ctrl): Ctx) -> ApiResult<serde_json::Value> {
    let stored = ctrl.store().site_windows()?;
    let parsed = ctrl.site_windows()?;
    let now = jiff::Timestamp::now();
    let list: Vec<_> = stored
        .into_iter()
        .map(|(site, spec, tz)| {
            let open = parsed.get(&site).map(|w| w.is_open(now));
            let next = parsed
                .get(&site)
                .and_then(|w| w.next_open(now))
                .map(|t| t.to_string());
            json!({ "site": site, "window": spec, "tz": tz, "open_now": open, "next_open": next })
        })
        .collect();
    Ok(Json(json!({ "windows": list })))
}

async fn set_window(
    State(ctrl): Ctx,
    Path(site): Path<String>,
    body: Result<Json<WindowBody>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let Json(b) = body?;
    ctrl.set_site_window(&site, Some((&b.window, &b.tz)))?;
    Ok(Json(
        json!({ "site": site, "window": b.window, "tz": b.tz }),
    ))
}

async fn clear_window(State(ctrl): Ctx, Path(site): Path<String>) -> ApiResult<serde_json::Value> {
    ctrl.set_site_window(&site, None)?;
    Ok(Json(json!({ "site": site, "window": null })))
}

#[derive(serde::Deserialize)]
struct DiffQuery {
    from: u64,
    to: u64,
}

/// Unified diff between the Compose files of two revisions (and their targets).
async fn diff(
    State(ctrl): Ctx,
    Path(name): Path<String>,
    query: Result<axum::extract::Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<serde_json::Value> {
    let axum::extract::Query(q) = query.map_err(|_| {
        ApiError::BadRequest(
            "give two revisions: ?from=1&to=2 (see 'edgefleet history NAME')".into(),
        )
    })?;
    let (a, b) = {
        let store = ctrl.store();
        let get = |r: u64| -> Result<crate::store::RevisionRow, ApiError> {
            store.revision(&name, r)?.ok_or_else(|| {
                ApiError::NotFound(format!("deployment '{name}' has no revision {r}"))
            })
        };
        (get(q.from)?, get(q.to)?)
    };
    let text = |r: &crate::store::RevisionRow| {
        format!(
            "# target: {}\n{}",
            r.target,
            r.compose.as_deref().unwrap_or("")
        )
    };
    let (ta, tb) = (text(&a), text(&b));
    let diff = similar::TextDiff::from_lines(&ta, &tb)
        .unified_diff()
        .header(
            &format!("{name} revision {}", q.from),
            &format!("{name} revision {}", q.to),
        )
        .to_string();
    Ok(Json(
        json!({ "deployment": name, "from": q.from, "to": q.to, "diff": diff }),
    ))
}
