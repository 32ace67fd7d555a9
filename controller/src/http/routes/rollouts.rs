//! Rollouts: start, list, one, and the operator's controls (pause, resume, abort, rollback).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgefleet_domain::rollout::view::RolloutView;
use serde::Serialize;
use serde_json::json;

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::extract::Path as ApiPath;
use crate::services::deployments::Deployments;
use crate::services::rollouts::{Control, Rollouts, StartRequest};

#[derive(Serialize)]
pub struct RolloutList {
    rollouts: Vec<RolloutView>,
}

pub async fn list(
    State(rollouts): State<Arc<Rollouts>>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
) -> Result<Json<RolloutList>, ApiError> {
    let mut rollouts = rollouts.list().await?;
    if auth.caller.role.scoped() {
        let sites = deployments
            .sites_of(
                rollouts
                    .iter()
                    .map(|r| r.rollout.deployment.clone())
                    .collect(),
            )
            .await?;
        rollouts.retain(|r| {
            auth.caller.sees(
                sites
                    .get(&r.rollout.deployment)
                    .cloned()
                    .flatten()
                    .as_deref(),
            )
        });
    }
    Ok(Json(RolloutList { rollouts }))
}

/// 404, as for a rollout that does not exist, unless the rollout's deployment is within the
/// caller's scope (a 403 would tell a scoped user that another site runs rollout `id` and
/// of which deployment); notes it for the audit either way.
async fn check_rollout(
    deployments: &Deployments,
    auth: &Auth,
    id: u64,
    deployment: &str,
) -> Result<(), ApiError> {
    let site = deployments.site_of(deployment).await?;
    auth.note(&id.to_string(), site.as_deref());
    auth.check_visible(
        site.as_deref(),
        ApiError::NotFound(crate::services::rollouts::RolloutError::NotFound(id).to_string()),
    )
}

pub async fn start(
    State(rollouts): State<Arc<Rollouts>>,
    State(deployments): State<Arc<Deployments>>,
    State(store): State<edgefleet_store::Store>,
    auth: Auth,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let site = deployments.site_of(&req.deployment).await?;
    auth.note(&req.deployment, site.as_deref());
    // Another site's deployment is answered as one that does not exist (as `get`/`delete`
    // of it are): a scoped user learns nothing of other sites' names.
    auth.check_visible(
        site.as_deref(),
        ApiError::NotFound(
            crate::services::rollouts::RolloutError::NoDeployment(req.deployment.clone())
                .to_string(),
        ),
    )?;
    // An older revision may have targeted another site (its Compose file, its secrets):
    // the caller must be allowed *that* revision's site too.
    if let Some(n) = req.revision
        && let Some(rev) = store.revision(&req.deployment, n).await?
    {
        let rev_site = edgefleet_domain::access::deployment_site(&rev.target);
        auth.check_visible(
            rev_site.as_deref(),
            ApiError::NotFound(format!(
                "deployment '{}' has no revision {n}",
                req.deployment
            )),
        )?;
    }
    let view = rollouts.start(&req, auth.username()).await?;
    auth.detail(json!({ "rollout": view.id, "deployment": req.deployment, "to_revision": view.rollout.to_revision }));
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

fn bad_id() -> ApiError {
    ApiError::BadRequest(
        "a rollout id is a whole number; list them with 'edgefleet rollout list'".into(),
    )
}

pub async fn one(
    State(rollouts): State<Arc<Rollouts>>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    let Path(id) = path.map_err(|_| bad_id())?;
    let view = rollouts.get(id).await?;
    check_rollout(&deployments, &auth, id, &view.rollout.deployment).await?;
    Ok(Json(view))
}

pub async fn control(
    State(rollouts): State<Arc<Rollouts>>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    ApiPath((id, action)): ApiPath<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    let id: u64 = id.parse().map_err(|_| bad_id())?;
    let current = rollouts.get(id).await?;
    check_rollout(&deployments, &auth, id, &current.rollout.deployment).await?;
    let action = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "abort" => Control::Abort,
        "rollback" => {
            let v = rollouts.rollback(id, auth.username()).await?;
            auth.detail(json!({ "rollback_rollout": v.id }));
            return Ok(Json(v));
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "no rollout action '{other}' (pause, resume, abort, rollback)"
            )));
        }
    };
    Ok(Json(rollouts.control(id, action).await?))
}
