//! Site and device variables (`edgefleet vars`): anyone reads them within their sites;
//! admins and operators set and unset them within their sites (a device's site is its
//! `site` label; a device not in the inventory belongs to no site: admins only). A change
//! re-resolves the documents of the devices it reaches at once and answers with those that
//! can no longer be resolved. Audited as `variables.set` and `variables.unset`, with the
//! names and (shortened) values: variables are configuration, not secrets.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use edgefleet_domain::variables::Scope;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::services::deployments::Deployments;
use crate::services::fleet::Fleet;
use crate::services::variables::{Variables, validate_scope};

type ApiResult = Result<Json<Value>, ApiError>;

/// `PUT` body: the variables to set (the scope's others are kept).
#[derive(Deserialize)]
pub struct SetBody {
    variables: BTreeMap<String, String>,
}

/// `DELETE` query: `names=A,B` (absent: every variable of the scope).
#[derive(Deserialize)]
pub struct UnsetQuery {
    #[serde(default)]
    names: Option<String>,
}

/// The answer for a device outside the caller's sites (as if it did not exist).
fn no_device(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no device '{id}' has connected yet; list devices with 'edgefleet get devices'"
    ))
}

/// A value as the audit log keeps it: at most 64 characters.
fn short(v: &str) -> String {
    match v.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &v[..i]),
        None => v.to_owned(),
    }
}

/// Checks the scope's name and that the caller may act on it; notes it for the audit log.
fn admit(auth: &Auth, fleet: &Fleet, scope: &Scope) -> Result<(), ApiError> {
    validate_scope(scope)?;
    match scope {
        Scope::Site(site) => {
            auth.note(&scope.key(), Some(site));
            auth.check_site(&format!("the scope '{}'", scope.key()), Some(site))
        }
        Scope::Device(id) if fleet.contains(id) => {
            let site = fleet.site_of(id);
            auth.note(&scope.key(), site.as_deref());
            auth.check_visible(site.as_deref(), no_device(id))
        }
        Scope::Device(_) => {
            auth.note(&scope.key(), None);
            auth.check_site(
                &format!(
                    "the scope '{}' (a device not in the inventory)",
                    scope.key()
                ),
                None,
            )
        }
    }
}

fn shown(variables: &Variables, scope: &Scope) -> Value {
    json!({
        "scope": scope,
        "variables": variables.rows(Some(scope)),
    })
}

/// `GET /api/v1/variables`: every site's and device's variables the caller may see.
pub async fn list(
    State(variables): State<Arc<Variables>>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
) -> ApiResult {
    let rows: Vec<_> = variables
        .rows(None)
        .into_iter()
        .filter(|r| match &r.scope {
            Scope::Site(s) => auth.caller.sees(Some(s)),
            Scope::Device(d) => auth.caller.sees(fleet.site_of(d).as_deref()),
        })
        .collect();
    Ok(Json(json!({ "variables": rows })))
}

async fn get(variables: &Variables, fleet: &Fleet, auth: &Auth, scope: Scope) -> ApiResult {
    admit(auth, fleet, &scope)?;
    Ok(Json(shown(variables, &scope)))
}

async fn set(
    variables: &Variables,
    deployments: &Deployments,
    fleet: &Fleet,
    auth: &Auth,
    scope: Scope,
    body: Result<Json<SetBody>, JsonRejection>,
) -> ApiResult {
    admit(auth, fleet, &scope)?;
    let Json(body) = body?;
    let values: BTreeMap<String, String> = body.variables;
    variables.set(&scope, &values, auth.username()).await?;
    let (devices, unresolved) = deployments.variables_changed(&scope).await?;
    auth.detail(json!({
        "set": values.iter().map(|(k, v)| (k.clone(), short(v))).collect::<BTreeMap<_, _>>(),
        "devices": devices.len(),
        "unresolved": unresolved.len(),
    }));
    tracing::info!(scope = %scope.key(), names = ?values.keys().collect::<Vec<_>>(), devices = devices.len(), by = auth.username(), "variables set");
    let mut out = shown(variables, &scope);
    out["devices"] = json!(devices);
    out["unresolved"] = json!(unresolved);
    Ok(Json(out))
}

async fn unset(
    variables: &Variables,
    deployments: &Deployments,
    fleet: &Fleet,
    auth: &Auth,
    scope: Scope,
    query: UnsetQuery,
) -> ApiResult {
    admit(auth, fleet, &scope)?;
    // `names` given: exactly those (each a variable name; `names=` is not "all", which is
    // the parameter left out).
    let names: Vec<String> = match query.names.as_deref() {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|n| {
                edgefleet_domain::interpolate::validate_name(n).map(|()| n.to_owned())
            })
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "names: {e}; give NAME[,NAME…], or leave names out to remove every variable of the scope"
                ))
            })?,
    };
    let removed = variables.unset(&scope, &names).await?;
    let (devices, unresolved) = deployments.variables_changed(&scope).await?;
    auth.detail(json!({
        "unset": removed,
        "devices": devices.len(),
        "unresolved": unresolved.len(),
    }));
    tracing::info!(scope = %scope.key(), names = ?removed, devices = devices.len(), by = auth.username(), "variables unset");
    if !unresolved.is_empty() {
        tracing::warn!(scope = %scope.key(), devices = unresolved.len(), "variables unset: devices can no longer resolve a deployment (they keep what they run)");
    }
    let mut out = shown(variables, &scope);
    out["removed"] = json!(removed);
    out["devices"] = json!(devices);
    out["unresolved"] = json!(unresolved);
    Ok(Json(out))
}

/// `GET /api/v1/variables/sites/{site}`.
pub async fn site(
    State(variables): State<Arc<Variables>>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
    Path(site): Path<String>,
) -> ApiResult {
    get(&variables, &fleet, &auth, Scope::Site(site)).await
}

/// `PUT /api/v1/variables/sites/{site}`: sets variables of every device of the site.
pub async fn set_site(
    State(variables): State<Arc<Variables>>,
    State(deployments): State<Arc<Deployments>>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
    Path(site): Path<String>,
    body: Result<Json<SetBody>, JsonRejection>,
) -> ApiResult {
    set(
        &variables,
        &deployments,
        &fleet,
        &auth,
        Scope::Site(site),
        body,
    )
    .await
}

/// `DELETE /api/v1/variables/sites/{site}?names=A,B`.
pub async fn unset_site(
    State(variables): State<Arc<Variables>>,
    State(deployments): State<Arc<Deployments>>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
    Path(site): Path<String>,
    Query(q): Query<UnsetQuery>,
) -> ApiResult {
    unset(
        &variables,
        &deployments,
        &fleet,
        &auth,
        Scope::Site(site),
        q,
    )
    .await
}

/// `GET /api/v1/variables/devices/{id}`.
pub async fn device(
    State(variables): State<Arc<Variables>>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult {
    get(&variables, &fleet, &auth, Scope::Device(id)).await
}

/// `PUT /api/v1/variables/devices/{id}`: sets variables of one device (they win over its
/// site's).
pub async fn set_device(
    State(variables): State<Arc<Variables>>,
    State(deployments): State<Arc<Deployments>>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<SetBody>, JsonRejection>,
) -> ApiResult {
    set(
        &variables,
        &deployments,
        &fleet,
        &auth,
        Scope::Device(id),
        body,
    )
    .await
}

/// `DELETE /api/v1/variables/devices/{id}?names=A,B`.
pub async fn unset_device(
    State(variables): State<Arc<Variables>>,
    State(deployments): State<Arc<Deployments>>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<UnsetQuery>,
) -> ApiResult {
    unset(
        &variables,
        &deployments,
        &fleet,
        &auth,
        Scope::Device(id),
        q,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn audited_values_are_short() {
        assert_eq!(short("10.1.3.7"), "10.1.3.7");
        let long = "é".repeat(100);
        assert_eq!(short(&long).chars().count(), 65);
    }
}
