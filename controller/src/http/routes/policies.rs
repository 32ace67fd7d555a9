//! Workload policies: read them (anyone, within their sites), set and clear them (admins),
//! check a file against them (operators), and list the deployments that break them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use edgefleet_domain::access::deployment_site;
use edgefleet_domain::policy::{PolicySource, from_yaml};
use edgefleet_protocol::policy::WorkloadPolicy;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::extract::Path as ApiPath;
use crate::services::deployments::{ApplyRequest, Deployments, PolicyViolation};
use crate::services::policies::Policies;

type ApiResult = Result<Json<Value>, ApiError>;

/// `PUT` body: the policy file's text (YAML or JSON), as `edgefleet policy set -f` sends it.
#[derive(Deserialize)]
pub struct PolicyBody {
    policy: String,
}

fn shown(policies: &Policies, site: Option<&str>) -> Value {
    let e = policies.shown(site);
    json!({
        "site": site,
        "source": e.source,
        "policy": e.policy,
        "set_by": e.set.as_ref().map(|s| &s.1),
        "set_at": e.set.as_ref().map(|s| &s.0),
    })
}

fn visible(auth: &Auth, list: Vec<PolicyViolation>) -> Vec<PolicyViolation> {
    list.into_iter()
        .filter(|v| auth.caller.sees(v.site.as_deref()))
        .collect()
}

/// `GET /api/v1/policies`: the fleet default, every site's policy the caller may see, and
/// the baseline they start from.
pub async fn list(State(policies): State<Arc<Policies>>, auth: Auth) -> ApiResult {
    let all = policies.all();
    let sites: Vec<Value> = all
        .sites
        .keys()
        .filter(|s| auth.caller.sees(Some(s)))
        .map(|s| shown(&policies, Some(s)))
        .collect();
    Ok(Json(json!({
        "fleet": all.fleet.as_ref().map(|_| shown(&policies, None)),
        "sites": sites,
        "baseline": WorkloadPolicy::baseline(),
    })))
}

/// `GET /api/v1/policies/sites/{site}`: the policy devices of the site run under.
pub async fn site(
    State(policies): State<Arc<Policies>>,
    auth: Auth,
    ApiPath(site): ApiPath<String>,
) -> ApiResult {
    edgefleet_protocol::ids::validate_label("site", &site)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    auth.check_site(&format!("the policy of site '{site}'"), Some(&site))?;
    Ok(Json(shown(&policies, Some(&site))))
}

/// `GET /api/v1/policies/fleet`: the fleet default (the baseline when none is set).
pub async fn fleet(State(policies): State<Arc<Policies>>) -> ApiResult {
    Ok(Json(shown(&policies, None)))
}

async fn change(
    policies: &Policies,
    deployments: &Deployments,
    auth: &Auth,
    site: Option<&str>,
    body: Option<Result<Json<PolicyBody>, JsonRejection>>,
) -> ApiResult {
    let policy = match body {
        Some(body) => {
            let Json(b) = body?;
            Some(from_yaml(&b.policy).map_err(|e| ApiError::BadRequest(e.to_string()))?)
        }
        None => None,
    };
    policies.set(site, policy.clone(), auth.username()).await?;
    // Re-evaluate every deployment under the policy now in force: the violators are listed
    // and audited, never stopped. A site's change concerns that site; the fleet default's,
    // every site without its own policy.
    let violations: Vec<PolicyViolation> = deployments
        .violations()
        .into_iter()
        .filter(|v| match site {
            Some(s) => v.site.as_deref() == Some(s),
            None => !matches!(v.policy, PolicySource::Site(_)),
        })
        .collect();
    auth.detail(json!({
        "policy": policy,
        "violations": violations.len(),
        "violating": violations.iter().take(50).map(|v| json!({
            "deployment": v.deployment, "revision": v.revision, "service": v.violation.service,
            "key": v.violation.key, "rule": v.violation.rule, "devices": v.devices.len(),
        })).collect::<Vec<_>>(),
    }));
    if !violations.is_empty() {
        tracing::warn!(site = ?site, count = violations.len(), "policy changed: deployments now break it (listed, not stopped)");
    }
    let mut out = shown(policies, site);
    out["violations"] = serde_json::to_value(&violations).unwrap_or_default();
    Ok(Json(out))
}

/// `PUT /api/v1/policies/sites/{site}` (admins): sets a site's policy; answers with the
/// deployments that break it.
pub async fn set_site(
    State(policies): State<Arc<Policies>>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    ApiPath(site): ApiPath<String>,
    body: Result<Json<PolicyBody>, JsonRejection>,
) -> ApiResult {
    auth.note(&site, Some(&site));
    change(&policies, &deployments, &auth, Some(&site), Some(body)).await
}

/// `DELETE /api/v1/policies/sites/{site}` (admins): the site falls back to the fleet
/// default (or the baseline).
pub async fn clear_site(
    State(policies): State<Arc<Policies>>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    ApiPath(site): ApiPath<String>,
) -> ApiResult {
    auth.note(&site, Some(&site));
    change(&policies, &deployments, &auth, Some(&site), None).await
}

/// `PUT /api/v1/policies/fleet` (admins): the default of every site without its own.
pub async fn set_fleet(
    State(policies): State<Arc<Policies>>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    body: Result<Json<PolicyBody>, JsonRejection>,
) -> ApiResult {
    change(&policies, &deployments, &auth, None, Some(body)).await
}

/// `DELETE /api/v1/policies/fleet` (admins): back to the baseline.
pub async fn clear_fleet(
    State(policies): State<Arc<Policies>>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
) -> ApiResult {
    change(&policies, &deployments, &auth, None, None).await
}

/// `GET /api/v1/policies/violations`: deployments breaking the policy they run under now.
pub async fn violations(State(deployments): State<Arc<Deployments>>, auth: Auth) -> ApiResult {
    let list = visible(&auth, deployments.violations());
    Ok(Json(json!({ "violations": list })))
}

/// `POST /api/v1/policies/check`: a dry run of the policies for a file and target (the
/// body of an apply); records nothing.
pub async fn check(
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    body: Result<Json<ApplyRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let site = deployment_site(&req.target);
    auth.note(&req.name, site.as_deref());
    auth.check_site(&format!("target '{}'", req.target), site.as_deref())?;
    let (devices, refusals) = deployments.check_file(&req)?;
    let refusals: Vec<Value> = refusals
        .into_iter()
        .flat_map(|(source, vs)| {
            vs.into_iter().map(move |v| {
                let mut j = serde_json::to_value(&v).unwrap_or_default();
                j["policy"] = json!(source.clone());
                j["message"] = json!(format!("{source}: {v}"));
                j
            })
        })
        .collect();
    Ok(Json(json!({
        "name": req.name,
        "target": req.target,
        "devices": devices,
        "allowed": refusals.is_empty(),
        "refusals": refusals,
    })))
}
