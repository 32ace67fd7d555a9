//! Device identities (admin only): enrollment tokens, revocation, integrator certificates,
//! local MQTT users of the gateway's plain listener, and the equivalent ACL for an external
//! broker.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use edgefleet_domain::labels::parse_labels;
use serde::Deserialize;

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::services::fleet::Fleet;
use crate::services::identity::{DEFAULT_TOKEN_TTL, Identity};

#[derive(Deserialize, Default)]
pub struct AddDeviceBody {
    /// `site=lyon,line=3`
    #[serde(default)]
    labels: String,
    /// `24h`, `7d` (humantime); default 24 h.
    #[serde(default)]
    expires: Option<String>,
}

pub async fn add_device(
    State(identity): State<Arc<Identity>>,
    State(fleet): State<Arc<Fleet>>,
    State(store): State<edgefleet_store::Store>,
    State(deployments): State<Arc<crate::services::deployments::Deployments>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<AddDeviceBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body?;
    let labels = parse_labels(&body.labels).map_err(ApiError::BadRequest)?;
    auth.note(&id, labels.get("site").map(String::as_str));
    let ttl = match &body.expires {
        None => DEFAULT_TOKEN_TTL,
        Some(t) => humantime::parse_duration(t).map_err(|e| {
            ApiError::BadRequest(format!(
                "expires '{t}' is not a duration like 24h or 7d: {e}"
            ))
        })?,
    };
    auth.detail(serde_json::json!({ "labels": labels, "expires_in_s": ttl.as_secs() }));
    let token = identity
        .add_device(&id, &labels, ttl, auth.username())
        .await?;
    // The inventory knows the device (and its labels) from now on, enrolled or not yet.
    crate::services::inventory::register(&store, &fleet, &deployments, &id, labels.clone()).await?;
    let expires_at = std::time::UNIX_EPOCH + Duration::from_secs(token.expires_at.max(0) as u64);
    Ok(Json(serde_json::json!({
        "device": token.device,
        "labels": labels,
        "token": token.token,
        "expires_at": humantime::format_rfc3339_seconds(expires_at).to_string(),
        "enroll_url": token.enroll_url,
    })))
}

pub async fn revoke_device(
    State(identity): State<Arc<Identity>>,
    State(fleet): State<Arc<Fleet>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let site = fleet.site_of(&id);
    auth.note(&id, site.as_deref());
    let (certificates, disconnected) = identity.revoke_device(&id).await?;
    Ok(Json(serde_json::json!({
        "device": id, "certificates_revoked": certificates, "connections_closed": disconnected,
    })))
}

pub async fn revoke_integrator(
    State(identity): State<Arc<Identity>>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.note(&name, None);
    let (certificates, disconnected) = identity.revoke_integrator(&name).await?;
    Ok(Json(serde_json::json!({
        "integrator": name, "certificates_revoked": certificates, "connections_closed": disconnected,
    })))
}

#[derive(Deserialize)]
pub struct AddIntegratorBody {
    name: String,
}

pub async fn add_integrator(
    State(identity): State<Arc<Identity>>,
    auth: Auth,
    body: Result<Json<AddIntegratorBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body?;
    auth.note(&body.name, None);
    let new = identity.add_integrator(&body.name).await?;
    auth.detail(serde_json::json!({ "serial": new.cert.serial }));
    Ok(Json(serde_json::json!({
        "name": body.name,
        "client_id": edgefleet_protocol::acl::Identity::Integrator(body.name.clone()).common_name(),
        "serial": new.cert.serial,
        "cert_pem": new.cert.cert_pem,
        "key_pem": new.cert.key_pem,
        "ca_pem": new.ca_pem,
        "broker_url": new.broker_url,
    })))
}

#[derive(Deserialize)]
pub struct AclQuery {
    #[serde(default)]
    format: Option<String>,
    /// Comma-separated integrator names to write user blocks for.
    #[serde(default)]
    integrators: Option<String>,
}

pub async fn acl(Query(q): Query<AclQuery>) -> Result<String, ApiError> {
    match q.format.as_deref().unwrap_or("mosquitto") {
        "mosquitto" => {}
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown ACL format '{other}': the only format is 'mosquitto'"
            )));
        }
    }
    let names: Vec<String> = q
        .integrators
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    edgefleet_protocol::acl::mosquitto_acl_with_integrators(&names)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[derive(Deserialize)]
pub struct AddMqttUserBody {
    name: String,
    /// `local` (default), `bridge`, `device:ID`, `integrator:NAME`.
    #[serde(default)]
    role: Option<String>,
    /// Role `local` only: topic filters it may receive (default `["#"]`: every topic outside
    /// edgefleet/).
    #[serde(default)]
    read: Option<Vec<String>>,
    /// Role `local` only: topic filters it may publish on (default `["#"]`).
    #[serde(default)]
    write: Option<Vec<String>>,
}

pub async fn add_mqtt_user(
    State(identity): State<Arc<Identity>>,
    auth: Auth,
    body: Result<Json<AddMqttUserBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body?;
    let role = body.role.unwrap_or_else(|| "local".to_owned());
    auth.note(&body.name, None);
    auth.detail(serde_json::json!({ "role": role, "read": body.read, "write": body.write }));
    let new = identity
        .add_mqtt_user(&body.name, &role, body.read, body.write, auth.username())
        .await?;
    let local = new.role == "local";
    Ok(Json(serde_json::json!({
        "name": new.name,
        "role": new.role,
        "password": new.password,
        "read": local.then_some(&new.grants.read),
        "write": local.then_some(&new.grants.write),
    })))
}

pub async fn list_mqtt_users(
    State(identity): State<Arc<Identity>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let users: Vec<serde_json::Value> = identity
        .mqtt_users()
        .await?
        .into_iter()
        .map(|u| {
            let local = u.role == "local";
            serde_json::json!({
                "name": u.name, "role": u.role, "created_at": u.created_at, "created_by": u.created_by,
                "read": local.then_some(&u.read), "write": local.then_some(&u.write),
            })
        })
        .collect();
    Ok(Json(serde_json::json!(users)))
}

pub async fn remove_mqtt_user(
    State(identity): State<Arc<Identity>>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.note(&name, None);
    let closed = identity.remove_mqtt_user(&name).await?;
    Ok(Json(
        serde_json::json!({ "name": name, "connections_closed": closed }),
    ))
}
