//! Deployments (apply, list, delete, revisions and their diff) and the sites' maintenance
//! windows.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgefleet_domain::access::deployment_site;
use edgefleet_domain::selector::Selector;
use edgefleet_store::{DeploymentRow, RevisionRow, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::extract::Path as ApiPath;
use crate::services::deployments::{ApplyRequest, Deployments};
use crate::services::fleet::Fleet;
use crate::services::windows::Windows;

type ApiResult<T> = Result<Json<T>, ApiError>;

#[derive(Serialize)]
pub struct DeploymentSummary {
    name: String,
    target: String,
    revision: u64,
    updated_at: String,
    devices: Vec<String>,
}

#[derive(Serialize)]
pub struct DeploymentList {
    deployments: Vec<DeploymentSummary>,
}

fn summarize(fleet: &Fleet, d: DeploymentRow) -> DeploymentSummary {
    let devices = Selector::parse(&d.target)
        .map(|s| fleet.targets(&s))
        .unwrap_or_default();
    DeploymentSummary {
        name: d.name,
        target: d.target,
        revision: d.revision,
        updated_at: d.updated_at,
        devices,
    }
}

pub async fn list(
    State(store): State<Store>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
) -> ApiResult<DeploymentList> {
    let rows = store.deployments().await?;
    Ok(Json(DeploymentList {
        deployments: rows
            .into_iter()
            .filter(|d| auth.caller.sees(deployment_site(&d.target).as_deref()))
            .map(|d| summarize(&fleet, d))
            .collect(),
    }))
}

pub async fn apply(
    State(store): State<Store>,
    State(deployments): State<Arc<Deployments>>,
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
    if let Some(cur) = store.deployment(&req.name).await? {
        auth.check_site(
            &format!(
                "existing deployment '{}' (target '{}')",
                cur.name, cur.target
            ),
            deployment_site(&cur.target).as_deref(),
        )?;
    }
    let outcome = deployments.apply(&req, auth.username()).await?;
    auth.detail(json!({ "revision": outcome.revision, "changed": outcome.changed, "target": outcome.target, "dry_run": outcome.dry_run }));
    let status = if outcome.changed && !outcome.dry_run {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome)).into_response())
}

#[derive(Serialize)]
pub struct DeploymentDetail {
    #[serde(flatten)]
    summary: DeploymentSummary,
    compose: Option<String>,
    revisions: Vec<RevisionRow>,
}

fn not_found_deployment(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no deployment '{name}'; list them with 'edgefleet get deployments'"
    ))
}

pub async fn one(
    State(store): State<Store>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<DeploymentDetail> {
    let row = store
        .deployment(&name)
        .await?
        .ok_or_else(|| not_found_deployment(&name))?;
    auth.check_visible(
        deployment_site(&row.target).as_deref(),
        not_found_deployment(&name),
    )?;
    // Old revisions may have targeted another site (a name deleted there and re-created):
    // those are not the caller's to see.
    let revisions: Vec<RevisionRow> = store
        .revisions(&name)
        .await?
        .into_iter()
        .filter(|r| auth.caller.sees(deployment_site(&r.target).as_deref()))
        .collect();
    let compose = revisions
        .iter()
        .find(|r| r.revision == row.revision)
        .and_then(|r| r.compose.clone());
    let revisions = revisions
        .into_iter()
        .map(|r| RevisionRow { compose: None, ..r })
        .collect();
    Ok(Json(DeploymentDetail {
        summary: summarize(&fleet, row),
        compose,
        revisions,
    }))
}

pub async fn delete(
    State(store): State<Store>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<serde_json::Value> {
    let row = store
        .deployment(&name)
        .await?
        .ok_or_else(|| not_found_deployment(&name))?;
    let site = deployment_site(&row.target);
    auth.note(&name, site.as_deref());
    auth.check_visible(site.as_deref(), not_found_deployment(&name))?;
    let devices = deployments
        .delete(&name)
        .await?
        .ok_or_else(|| not_found_deployment(&name))?;
    Ok(Json(
        json!({ "name": name, "deleted": true, "devices": devices }),
    ))
}

pub async fn revision(
    State(store): State<Store>,
    auth: Auth,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> ApiResult<serde_json::Value> {
    let Path((name, revision)) = path.map_err(|_| {
        ApiError::BadRequest(
            "the revision must be a whole number; list them with 'edgefleet get deployment NAME'"
                .into(),
        )
    })?;
    let none = || ApiError::NotFound(format!("deployment '{name}' has no revision {revision}"));
    let row = store.revision(&name, revision).await?.ok_or_else(none)?;
    auth.check_visible(deployment_site(&row.target).as_deref(), none())?;
    let spec: serde_json::Value = serde_json::from_str(&row.spec_json).unwrap_or_default();
    Ok(Json(json!({ "revision": row, "spec": spec })))
}

#[derive(Deserialize)]
pub struct DiffQuery {
    from: u64,
    to: u64,
}

/// The text a revision's diff compares: its target, the apply variables of a file resolved
/// per device (they are kept with it, not folded into its services), and its Compose file.
pub fn diff_text(r: &RevisionRow) -> String {
    let mut text = format!("# target: {}\n", r.target);
    if let Ok(spec) = edgefleet_domain::deployment::RevisionSpec::from_json(&r.spec_json)
        && let Some(t) = spec.template
    {
        for (k, v) in &t.variables {
            text += &format!("# --var {k}={v}\n");
        }
    }
    text + r.compose.as_deref().unwrap_or("")
}

/// Unified diff between two revisions' texts.
pub fn unified_diff(name: &str, a: &RevisionRow, b: &RevisionRow) -> String {
    let (ta, tb) = (diff_text(a), diff_text(b));
    similar::TextDiff::from_lines(&ta, &tb)
        .unified_diff()
        .header(
            &format!("{name} revision {}", a.revision),
            &format!("{name} revision {}", b.revision),
        )
        .to_string()
}

/// Unified diff between the Compose files of two revisions (and their targets).
pub async fn diff(
    State(store): State<Store>,
    auth: Auth,
    ApiPath(name): ApiPath<String>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> ApiResult<serde_json::Value> {
    let Query(q) = query.map_err(|_| {
        ApiError::BadRequest(
            "give two revisions: ?from=1&to=2 (see 'edgefleet history NAME')".into(),
        )
    })?;
    let get = async |r: u64| -> Result<RevisionRow, ApiError> {
        store
            .revision(&name, r)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("deployment '{name}' has no revision {r}")))
    };
    let (a, b) = (get(q.from).await?, get(q.to).await?);
    for r in [&a, &b] {
        auth.check_visible(
            deployment_site(&r.target).as_deref(),
            ApiError::NotFound(format!(
                "deployment '{name}' has no revision {}",
                r.revision
            )),
        )?;
    }
    let diff = unified_diff(&name, &a, &b);
    Ok(Json(
        json!({ "deployment": name, "from": q.from, "to": q.to, "diff": diff }),
    ))
}

#[derive(Deserialize)]
pub struct WindowBody {
    /// `Mon-Fri 22:00-04:00`
    window: String,
    /// IANA time zone, e.g. `Europe/Paris`.
    tz: String,
}

pub async fn windows(
    State(windows): State<Arc<Windows>>,
    auth: Auth,
) -> ApiResult<serde_json::Value> {
    let now = jiff::Timestamp::now();
    let list: Vec<_> = windows
        .all()
        .into_iter()
        .filter(|(site, _)| auth.caller.sees(Some(site)))
        .map(|(site, w)| {
            let next = w.window.next_open(now).map(|t| t.to_string());
            json!({ "site": site, "window": w.spec, "tz": w.tz, "open_now": w.window.is_open(now), "next_open": next })
        })
        .collect();
    Ok(Json(json!({ "windows": list })))
}

pub async fn set_window(
    State(windows): State<Arc<Windows>>,
    auth: Auth,
    ApiPath(site): ApiPath<String>,
    body: Result<Json<WindowBody>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    auth.check_site(&format!("the window of site '{site}'"), Some(&site))?;
    let Json(b) = body?;
    auth.detail(json!({ "window": b.window, "tz": b.tz }));
    windows.set(&site, Some((&b.window, &b.tz))).await?;
    Ok(Json(
        json!({ "site": site, "window": b.window, "tz": b.tz }),
    ))
}

pub async fn clear_window(
    State(windows): State<Arc<Windows>>,
    auth: Auth,
    ApiPath(site): ApiPath<String>,
) -> ApiResult<serde_json::Value> {
    auth.check_site(&format!("the window of site '{site}'"), Some(&site))?;
    windows.set(&site, None).await?;
    Ok(Json(json!({ "site": site, "window": null })))
}
