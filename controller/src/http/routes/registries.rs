//! Private-registry credentials: listed to anyone (host, sites, username, who set them; never
//! the password), set and removed by admins. Devices get a credential sealed for them in
//! their desired document when their stacks' images come from that registry and their site
//! is in its scope.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::extract::Path as ApiPath;
use crate::services::deployments::Deployments;
use crate::services::vault::{RegistryLogin, Vault, VaultError};

type ApiResult = Result<Json<Value>, ApiError>;

/// `PUT` body.
#[derive(Deserialize)]
pub struct RegistryBody {
    username: String,
    password: String,
    /// Sites whose devices get it; empty with `all_sites`: every site.
    #[serde(default)]
    sites: Vec<String>,
    #[serde(default)]
    all_sites: bool,
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Store(s) => s.into(),
            VaultError::Invalid(m) => ApiError::BadRequest(m),
        }
    }
}

/// `GET /api/v1/registries`.
pub async fn list(State(vault): State<Arc<Vault>>) -> ApiResult {
    Ok(Json(json!({ "registries": vault.registries() })))
}

/// `PUT /api/v1/registries/{host}` (admins): sets the credential devices of `sites` pull
/// with; their documents are reissued with it.
pub async fn set(
    State(vault): State<Arc<Vault>>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    ApiPath(host): ApiPath<String>,
    body: Result<Json<RegistryBody>, JsonRejection>,
) -> ApiResult {
    let Json(b) = body?;
    if b.sites.is_empty() != b.all_sites {
        return Err(ApiError::BadRequest(
            "say which sites' devices may use it: 'sites' (e.g. [\"lyon\"]) or 'all_sites': true, not both".into(),
        ));
    }
    let site = (b.sites.len() == 1).then(|| b.sites[0].clone());
    auth.note(&host, site.as_deref());
    let view = vault
        .set_registry(
            &host,
            b.sites,
            RegistryLogin {
                username: b.username,
                password: b.password,
            },
            auth.username(),
        )
        .await?;
    // What the audit keeps: never the password.
    auth.detail(json!({ "host": view.host, "sites": view.sites, "username": view.username }));
    deployments.refresh_all().await?;
    Ok(Json(json!(view)))
}

/// `DELETE /api/v1/registries/{host}` (admins).
pub async fn remove(
    State(vault): State<Arc<Vault>>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    ApiPath(host): ApiPath<String>,
) -> ApiResult {
    auth.note(&host, None);
    if !vault.remove_registry(&host).await? {
        return Err(ApiError::NotFound(format!(
            "no credential is set for registry '{host}'; list them with 'edgefleet registry list'"
        )));
    }
    deployments.refresh_all().await?;
    Ok(Json(json!({ "host": host, "removed": true })))
}
