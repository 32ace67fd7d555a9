//! The HTTP JSON API (axum). The CLI's client commands use exactly this API; so does the
//! dashboard ([`crate::web`]). Every request is untrusted: errors come back as
//! `{"error": "…"}` with a 4xx status and a sentence saying what to change.
//!
//! Every route but `health` and `login` needs `Authorization: Bearer TOKEN`; the
//! [`crate::auth`] middleware authenticates, applies the role table and writes the audit
//! log; handlers check site scope through the [`Auth`] extractor and filter lists by it.

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

use crate::audit::{self, Entry, Outcome};
use crate::auth::{self, Auth, Role, deployment_site};
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
    /// A request body that does not parse (its text is not audited: it may quote a secret).
    BadBody(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    Internal(String),
}

/// A refusal's message, attached to the response for the audit middleware.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message as the audit log records it.
    pub fn message(&self) -> &str {
        match self {
            ApiError::BadBody(_) => "the request body could not be read",
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Internal(m) => m,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let audited = ErrorMessage(self.message().to_owned());
        let msg = match self {
            ApiError::BadRequest(m)
            | ApiError::BadBody(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Internal(m) => m,
        };
        let mut resp = (status, Json(json!({ "error": msg }))).into_response();
        resp.extensions_mut().insert(audited);
        resp
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
        ApiError::BadBody(format!("request body: {}", e.body_text()))
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
        .route("/api/v1/login", axum::routing::post(login))
        .route("/api/v1/logout", axum::routing::post(logout))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/tokens", axum::routing::post(create_token))
        .route("/api/v1/users", get(users).post(create_user))
        .route("/api/v1/users/{name}", axum::routing::delete(remove_user))
        .route("/api/v1/audit", get(audit_list))
        .route("/api/v1/audit/verify", get(audit_verify))
        .route("/api/v1/audit/export", get(audit_export))
        .merge(crate::enroll::api_routes())
        .merge(crate::commands::api_routes())
        .fallback(|| async { ApiError::NotFound("no such API route; see /api/v1/health".into()) })
        .layer(axum::middleware::from_fn_with_state(
            ctrl.clone(),
            auth::middleware,
        ))
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

async fn devices(State(ctrl): Ctx, auth: Auth) -> Json<DeviceList> {
    let mut devices = ctrl.fleet.summaries();
    devices.retain(|d| auth.caller.sees(d.labels.get("site").map(String::as_str)));
    Json(DeviceList { devices })
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

async fn device(State(ctrl): Ctx, auth: Auth, Path(id): Path<String>) -> ApiResult<DeviceDetail> {
    let view = ctrl.fleet.get(&id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no device '{id}' has connected yet; list devices with 'edgefleet get devices'"
        ))
    })?;
    auth.check_site(
        &format!("device '{id}'"),
        view.labels.get("site").map(String::as_str),
    )?;
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

async fn deployments(State(ctrl): Ctx, auth: Auth) -> ApiResult<DeploymentList> {
    let rows = ctrl.store().deployments()?;
    Ok(Json(DeploymentList {
        deployments: rows
            .into_iter()
            .filter(|d| auth.caller.sees(deployment_site(&d.target).as_deref()))
            .map(|d| summarize(&ctrl, d))
            .collect(),
    }))
}

/// The site of a deployment (also of a deleted one: its last revision's target).
pub(crate) fn site_of_deployment(
    ctrl: &Controller,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let store = ctrl.store();
    let target = match store.deployment(name)? {
        Some(d) => Some(d.target),
        None => store.revisions(name)?.pop().map(|r| r.target),
    };
    Ok(target.and_then(|t| deployment_site(&t)))
}

async fn apply(
    State(ctrl): Ctx,
    auth: Auth,
    body: Result<Json<ApplyRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let site = deployment_site(&req.target);
    auth.note(&req.name, site.as_deref());
    auth.check_site(
        &format!("deployment '{}' with target '{}'", req.name, req.target),
        site.as_deref(),
    )?;
    let current = ctrl.store().deployment(&req.name)?;
    if let Some(cur) = current {
        auth.check_site(
            &format!(
                "existing deployment '{}' (target '{}')",
                cur.name, cur.target
            ),
            deployment_site(&cur.target).as_deref(),
        )?;
    }
    let outcome = ctrl.apply(&req, auth.username())?;
    auth.detail(json!({ "revision": outcome.revision, "changed": outcome.changed, "target": outcome.target }));
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

async fn deployment(
    State(ctrl): Ctx,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<DeploymentDetail> {
    let (row, revisions) = {
        let store = ctrl.store();
        let row = store
            .deployment(&name)?
            .ok_or_else(|| not_found_deployment(&name))?;
        (row, store.revisions(&name)?)
    };
    auth.check_site(
        &format!("deployment '{name}'"),
        deployment_site(&row.target).as_deref(),
    )?;
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
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    let row = ctrl
        .store()
        .deployment(&name)?
        .ok_or_else(|| not_found_deployment(&name))?;
    let site = deployment_site(&row.target);
    auth.note(&name, site.as_deref());
    auth.check_site(&format!("deployment '{name}'"), site.as_deref())?;
    let devices = ctrl
        .delete(&name)?
        .ok_or_else(|| not_found_deployment(&name))?;
    Ok(Json(
        json!({ "name": name, "deleted": true, "devices": devices }),
    ))
}

async fn revision(
    State(ctrl): Ctx,
    auth: Auth,
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
    auth.check_site(
        &format!("deployment '{name}' revision {revision}"),
        deployment_site(&row.target).as_deref(),
    )?;
    let spec: serde_json::Value = serde_json::from_str(&row.spec_json).unwrap_or_default();
    Ok(Json(json!({ "revision": row, "spec": spec })))
}

#[derive(Serialize)]
struct RolloutList {
    rollouts: Vec<RolloutView>,
}

async fn rollouts(State(ctrl): Ctx, auth: Auth) -> ApiResult<RolloutList> {
    let mut rollouts = ctrl.rollouts.list(&ctrl)?;
    if auth.caller.role.scoped() {
        let mut sites = std::collections::BTreeMap::new();
        let mut keep = Vec::new();
        for r in rollouts {
            if !sites.contains_key(&r.rollout.deployment) {
                let site = site_of_deployment(&ctrl, &r.rollout.deployment)?;
                sites.insert(r.rollout.deployment.clone(), site);
            }
            if auth.caller.sees(
                sites
                    .get(&r.rollout.deployment)
                    .cloned()
                    .flatten()
                    .as_deref(),
            ) {
                keep.push(r);
            }
        }
        rollouts = keep;
    }
    Ok(Json(RolloutList { rollouts }))
}

/// 403 unless the rollout's deployment is within the caller's scope; notes it for the audit.
fn check_rollout(
    ctrl: &Controller,
    auth: &Auth,
    id: u64,
    deployment: &str,
) -> Result<(), ApiError> {
    let site = site_of_deployment(ctrl, deployment)?;
    auth.note(&id.to_string(), site.as_deref());
    auth.check_site(
        &format!("rollout {id} of deployment '{deployment}'"),
        site.as_deref(),
    )
}

async fn start_rollout(
    State(ctrl): Ctx,
    auth: Auth,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let site = site_of_deployment(&ctrl, &req.deployment)?;
    auth.note(&req.deployment, site.as_deref());
    auth.check_site(&format!("deployment '{}'", req.deployment), site.as_deref())?;
    let view = ctrl.rollouts.start(&ctrl, &req, auth.username())?;
    auth.detail(json!({ "rollout": view.id, "deployment": req.deployment, "to_revision": view.rollout.to_revision }));
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
    auth: Auth,
    path: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> ApiResult<RolloutView> {
    let id = rollout_id(path)?;
    let view = ctrl.rollouts.get(&ctrl, id)?;
    check_rollout(&ctrl, &auth, id, &view.rollout.deployment)?;
    Ok(Json(view))
}

async fn control_rollout(
    State(ctrl): Ctx,
    auth: Auth,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<RolloutView> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::BadRequest(
            "a rollout id is a whole number; list them with 'edgefleet rollout list'".into(),
        )
    })?;
    let current = ctrl.rollouts.get(&ctrl, id)?;
    check_rollout(&ctrl, &auth, id, &current.rollout.deployment)?;
    let action: &'static str = match action.as_str() {
        "pause" => "pause",
        "resume" => "resume",
        "abort" => "abort",
        "rollback" => {
            let v = ctrl.rollouts.rollback(&ctrl, id, auth.username())?;
            auth.detail(json!({ "rollback_rollout": v.id }));
            return Ok(Json(v));
        }
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

async fn windows(State(ctrl): Ctx, auth: Auth) -> ApiResult<serde_json::Value> {
    let mut stored = ctrl.store().site_windows()?;
    stored.retain(|(site, _, _)| auth.caller.sees(Some(site)));
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
    auth: Auth,
    Path(site): Path<String>,
    body: Result<Json<WindowBody>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    auth.check_site(&format!("the window of site '{site}'"), Some(&site))?;
    let Json(b) = body?;
    auth.detail(json!({ "window": b.window, "tz": b.tz }));
    ctrl.set_site_window(&site, Some((&b.window, &b.tz)))?;
    Ok(Json(
        json!({ "site": site, "window": b.window, "tz": b.tz }),
    ))
}

async fn clear_window(
    State(ctrl): Ctx,
    auth: Auth,
    Path(site): Path<String>,
) -> ApiResult<serde_json::Value> {
    auth.check_site(&format!("the window of site '{site}'"), Some(&site))?;
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
    auth: Auth,
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
    for r in [&a, &b] {
        auth.check_site(
            &format!("deployment '{name}' revision {}", r.revision),
            deployment_site(&r.target).as_deref(),
        )?;
    }
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

/// A login session lasts this long.
const SESSION_SECS: i64 = 12 * 3600;
/// Default and longest lifetime of an API token.
const TOKEN_DEFAULT: &str = "90d";
const TOKEN_MAX_SECS: i64 = 366 * 24 * 3600;

#[derive(serde::Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

/// Issues a token and records it (by digest only); returns the token.
fn issue_token(
    ctrl: &Controller,
    username: &str,
    name: &str,
    lifetime_secs: i64,
) -> Result<(String, i64), ApiError> {
    let token = crate::users::new_token();
    let now = auth::now_unix();
    let expires_at = now.saturating_add(lifetime_secs);
    let store = ctrl.store();
    store.purge_expired_tokens(now)?;
    store.insert_token(
        &crate::users::token_digest(&token),
        username,
        name,
        &edgefleet_protocol::now_rfc3339(),
        expires_at,
    )?;
    Ok((token, expires_at))
}

/// `POST /api/v1/login {username, password}` → a session token. Argon2 runs off the runtime.
async fn login(
    State(ctrl): Ctx,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            login_refused(&ctrl, "", 400, "the request body could not be read");
            return Err(ApiError::BadBody(format!(
                "request body: {}; send {{\"username\": …, \"password\": …}}",
                e.status()
            )));
        }
    };
    let s = password_login(&ctrl, &body.username, body.password).await?;
    Ok(Json(json!({
        "token": s.token,
        "username": s.user.username,
        "expires_at": auth::rfc3339(s.expires_at),
        "role": s.user.role,
        "sites": s.user.sites,
    })))
}

fn login_refused(ctrl: &Controller, who: &str, status: u16, why: &str) {
    ctrl.audit(Entry {
        actor: "anonymous".into(),
        role: String::new(),
        action: "auth.login".into(),
        target: who.into(),
        site: String::new(),
        outcome: Outcome::Refused,
        status: Some(status),
        detail: json!({ "error": why }),
    });
}

/// A login session just issued.
pub struct Session {
    pub token: String,
    pub user: crate::users::User,
    pub expires_at: i64,
    pub lifetime_secs: i64,
}

/// Checks a password (argon2 off the runtime, a decoy hash for unknown users), issues a
/// session token and audits the outcome. Shared by the API's and the dashboard's login.
pub async fn password_login(
    ctrl: &Controller,
    username: &str,
    password: String,
) -> Result<Session, ApiError> {
    let user = ctrl.store().user(username)?;
    let phc = user.as_ref().map_or_else(
        || crate::users::decoy_hash().to_owned(),
        |u| u.password_hash.clone(),
    );
    let matches =
        tokio::task::spawn_blocking(move || crate::users::verify_password(&password, &phc))
            .await
            .unwrap_or(false);
    let user = match user {
        Some(u) if matches && !u.disabled => u,
        _ => {
            login_refused(ctrl, username, 401, "wrong username or password");
            return Err(ApiError::Unauthorized(
                "wrong username or password; check them and run 'edgefleet login' again".into(),
            ));
        }
    };
    let (token, expires_at) = issue_token(ctrl, &user.username, "login", SESSION_SECS)?;
    ctrl.audit(Entry {
        actor: user.username.clone(),
        role: user.role.as_str().into(),
        action: "auth.login".into(),
        target: user.username.clone(),
        site: String::new(),
        outcome: Outcome::Ok,
        status: Some(200),
        detail: json!({ "expires_at": auth::rfc3339(expires_at) }),
    });
    Ok(Session {
        token,
        user,
        expires_at,
        lifetime_secs: SESSION_SECS,
    })
}

/// Revokes the token the request carries.
async fn logout(State(ctrl): Ctx, auth: Auth) -> ApiResult<serde_json::Value> {
    auth.note(auth.username(), None);
    let revoked = ctrl.store().delete_token(&auth.caller.token_digest)?;
    Ok(Json(
        json!({ "username": auth.username(), "revoked": revoked }),
    ))
}

async fn whoami(auth: Auth) -> Json<serde_json::Value> {
    let c = &auth.caller;
    Json(json!({
        "username": c.username,
        "role": c.role,
        "sites": c.sites,
        "token": { "name": c.token_name, "expires_at": auth::rfc3339(c.expires_at) },
    }))
}

#[derive(serde::Deserialize)]
struct TokenBody {
    name: String,
    /// A duration (`30d`, `12h`); default 90 days, at most 366 days.
    #[serde(default)]
    expires_in: Option<String>,
}

/// `POST /api/v1/tokens {name, expires_in}`: an API token for the caller, with the caller's
/// role and sites, shown once.
async fn create_token(
    State(ctrl): Ctx,
    auth: Auth,
    body: Result<Json<TokenBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    auth.note(&format!("{}/{}", auth.username(), b.name), None);
    if b.name.is_empty() || b.name.len() > 64 || b.name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "a token needs a name of 1-64 characters saying what uses it (e.g. 'ci-deploy')".into(),
        ));
    }
    let spec = b.expires_in.as_deref().unwrap_or(TOKEN_DEFAULT);
    let secs = humantime::parse_duration(spec)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .filter(|s| *s > 0 && *s <= TOKEN_MAX_SECS)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "expires_in '{spec}': give a duration between 1s and 366d, e.g. 30d"
            ))
        })?;
    let (token, expires_at) = issue_token(&ctrl, auth.username(), &b.name, secs)?;
    auth.detail(json!({ "name": b.name, "expires_at": auth::rfc3339(expires_at) }));
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "name": b.name,
            "username": auth.username(),
            "role": auth.caller.role,
            "sites": auth.caller.sites,
            "expires_at": auth::rfc3339(expires_at),
        })),
    )
        .into_response())
}

async fn users(State(ctrl): Ctx) -> ApiResult<serde_json::Value> {
    Ok(Json(json!({ "users": ctrl.store().users()? })))
}

#[derive(serde::Deserialize)]
struct UserBody {
    username: String,
    role: String,
    #[serde(default)]
    sites: Vec<String>,
    /// Generated (and returned once) when absent.
    #[serde(default)]
    password: Option<String>,
}

async fn create_user(
    State(ctrl): Ctx,
    auth: Auth,
    body: Result<Json<UserBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    auth.note(&b.username, None);
    crate::users::validate_username(&b.username).map_err(ApiError::BadRequest)?;
    let role: Role = b.role.parse().map_err(ApiError::BadRequest)?;
    let mut sites = b.sites.clone();
    sites.sort();
    sites.dedup();
    for s in &sites {
        edgefleet_protocol::ids::validate_label("site", s)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    match (role.scoped(), sites.is_empty()) {
        (true, true) => {
            return Err(ApiError::BadRequest(format!(
                "a {role} acts only within sites: give at least one (--site lyon)"
            )));
        }
        (false, false) => {
            return Err(ApiError::BadRequest(format!(
                "an {role} is not limited to sites: drop --site (or make the user an operator or viewer)"
            )));
        }
        _ => {}
    }
    if let Some(p) = &b.password
        && p.chars().count() < 12
    {
        return Err(ApiError::BadRequest(
            "the password is too short: use at least 12 characters, or omit it to get a generated one".into(),
        ));
    }
    if ctrl.store().user(&b.username)?.is_some() {
        return Err(ApiError::Conflict(format!(
            "user '{}' exists; remove it first with 'edgefleet user remove {}'",
            b.username, b.username
        )));
    }
    let generated = b.password.is_none().then(crate::users::new_password);
    let password = b
        .password
        .clone()
        .or_else(|| generated.clone())
        .unwrap_or_default();
    let hash = tokio::task::spawn_blocking(move || crate::users::hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing failed: {e}")))?;
    let user = crate::users::User {
        username: b.username.clone(),
        role,
        sites: sites.clone(),
        created_at: edgefleet_protocol::now_rfc3339(),
        disabled: false,
        password_hash: hash,
    };
    if !ctrl.store().insert_user(&user)? {
        return Err(ApiError::Conflict(format!("user '{}' exists", b.username)));
    }
    auth.detail(json!({ "role": role, "sites": sites, "password": if generated.is_some() { "generated" } else { "given" } }));
    let mut out = serde_json::to_value(&user).unwrap_or_default();
    if let (Some(m), Some(p)) = (out.as_object_mut(), generated) {
        m.insert("password".into(), json!(p));
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn remove_user(
    State(ctrl): Ctx,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    auth.note(&name, None);
    if name == auth.username() {
        return Err(ApiError::Conflict(
            "you cannot remove yourself; ask another admin".into(),
        ));
    }
    let mut store = ctrl.store();
    let user = store.user(&name)?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no user '{name}'; list them with 'edgefleet user list'"
        ))
    })?;
    if user.role == Role::Admin
        && store
            .users()?
            .iter()
            .filter(|u| u.role == Role::Admin && !u.disabled)
            .count()
            <= 1
    {
        return Err(ApiError::Conflict(format!(
            "'{name}' is the last admin; create another admin first"
        )));
    }
    store.delete_user(&name)?;
    Ok(Json(json!({ "username": name, "removed": true })))
}

impl From<audit::AuditError> for ApiError {
    fn from(e: audit::AuditError) -> Self {
        match e {
            audit::AuditError::Sql(s) => StoreError::from(s).into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

fn audit_filter(
    q: Result<axum::extract::Query<audit::Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<audit::Filter, ApiError> {
    q.map(|axum::extract::Query(f)| f).map_err(|_| {
        ApiError::BadRequest("audit filters: ?since=2h|RFC3339&site=lyon&limit=100".into())
    })
}

/// `GET /api/v1/audit?since&site&limit` (newest `limit`, default 100, oldest first).
async fn audit_list(
    State(ctrl): Ctx,
    q: Result<axum::extract::Query<audit::Filter>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<serde_json::Value> {
    let mut f = audit_filter(q)?;
    f.limit = Some(f.limit.unwrap_or(100));
    let records = ctrl.store().audit_records(&f)?;
    Ok(Json(json!({ "records": records })))
}

async fn audit_verify(State(ctrl): Ctx) -> ApiResult<audit::Verification> {
    Ok(Json(ctrl.store().audit_verify()?))
}

#[derive(serde::Deserialize)]
struct ExportQuery {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    site: Option<String>,
}

/// `GET /api/v1/audit/export?format=csv|json&since&site`: every matching record.
async fn audit_export(
    State(ctrl): Ctx,
    q: Result<axum::extract::Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|_| ApiError::BadRequest("export: ?format=csv|json&since=2h&site=lyon".into()))?;
    let format = q.format.as_deref().unwrap_or("json");
    let filter = audit::Filter {
        since: q.since,
        site: q.site,
        limit: None,
    };
    let records = ctrl.store().audit_records(&filter)?;
    let text = audit::export(&records, format)?;
    let mime = if format == "csv" {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    };
    Ok(([(axum::http::header::CONTENT_TYPE, mime)], text).into_response())
}
