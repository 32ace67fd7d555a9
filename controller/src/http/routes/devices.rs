//! Devices: the fleet list, one device in full, its labels (the inventory, admins only), and
//! a service's logs read from the device.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use edgefleet_domain::device::DeviceSummary;
use edgefleet_domain::template::ResolvedVariable;
use edgefleet_protocol::event::DeviceEvent;
use edgefleet_store::Store;
use serde::{Deserialize, Serialize};

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::services::commands::Commands;
use crate::services::deployments::Deployments;
use crate::services::fleet::Fleet;
use crate::services::inventory;

#[derive(Serialize)]
pub struct DeviceList {
    devices: Vec<DeviceSummary>,
}

pub async fn list(State(fleet): State<Arc<Fleet>>, auth: Auth) -> Json<DeviceList> {
    let mut devices = fleet.summaries();
    devices.retain(|d| auth.caller.sees(d.labels.get("site").map(String::as_str)));
    Json(DeviceList { devices })
}

#[derive(Serialize)]
pub struct DeviceDetail {
    #[serde(flatten)]
    summary: DeviceSummary,
    presence: Option<edgefleet_protocol::presence::DevicePresence>,
    status: Option<edgefleet_protocol::status::DeviceStatus>,
    desired: Option<edgefleet_protocol::desired::DesiredState>,
    events: Vec<DeviceEvent>,
    /// For each deployment resolved per device that targets it: the variables its file
    /// refers to, with this device's values and their source (`builtin`, `device`, `site`,
    /// `apply`, `unset`).
    variables: std::collections::BTreeMap<String, Vec<ResolvedVariable>>,
    /// Deployments that cannot be resolved for it (deployment → why): it keeps what it has.
    unresolved: std::collections::BTreeMap<String, String>,
}

/// A device's recent events: the ones in memory, else the stored ones.
pub async fn recent_events(
    store: &Store,
    id: &str,
    in_memory: Vec<DeviceEvent>,
) -> Result<Vec<DeviceEvent>, edgefleet_store::StoreError> {
    if !in_memory.is_empty() {
        return Ok(in_memory);
    }
    Ok(store
        .events(id, 50)
        .await?
        .iter()
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect())
}

/// The answer for a device that does not exist, and for one outside the caller's sites.
fn no_device(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no device '{id}' has connected yet; list devices with 'edgefleet get devices'"
    ))
}

pub async fn one(
    State(fleet): State<Arc<Fleet>>,
    State(store): State<Store>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let view = fleet.get(&id).ok_or_else(|| no_device(&id))?;
    auth.check_visible(view.labels.get("site").map(String::as_str), no_device(&id))?;
    let events = recent_events(&store, &id, view.events.iter().cloned().collect()).await?;
    Ok(Json(DeviceDetail {
        summary: view.summary(),
        presence: view.presence,
        status: view.status,
        desired: view.desired,
        events,
        variables: deployments.variables_of(&id),
        unresolved: view.unresolved,
    }))
}

#[derive(Deserialize)]
pub struct LogsQuery {
    pub stack: String,
    pub service: String,
    #[serde(default)]
    pub tail: Option<u32>,
}

/// `GET /api/v1/devices/{id}/logs?stack&service&tail`.
pub async fn logs(
    State(fleet): State<Arc<Fleet>>,
    State(commands): State<Arc<Commands>>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let site = fleet.site_of(&id);
    auth.check_visible(site.as_deref(), no_device(&id))?;
    let tail = q.tail.unwrap_or(100);
    let lines = commands
        .device_logs(&id, &q.stack, &q.service, tail)
        .await?;
    Ok(Json(serde_json::json!({
        "device": id, "stack": q.stack, "service": q.service, "lines": lines,
    })))
}

#[derive(Deserialize)]
pub struct LabelChanges {
    /// Labels to set (key → value).
    #[serde(default)]
    set: std::collections::BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default)]
    remove: Vec<String>,
}

/// `PUT /api/v1/devices/{id}/labels`: the inventory's labels of a device (admins only, see
/// the role table). The device's targets, scope and site follow at once.
pub async fn set_labels(
    State(fleet): State<Arc<Fleet>>,
    State(store): State<Store>,
    State(deployments): State<Arc<Deployments>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<LabelChanges>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body?;
    let old_site = fleet.site_of(&id);
    auth.note(&id, old_site.as_deref());
    let done =
        inventory::relabel(&store, &fleet, &deployments, &id, &body.set, &body.remove).await?;
    auth.detail(serde_json::json!({ "before": done.before, "after": done.after }));
    Ok(Json(serde_json::json!({
        "device": id,
        "labels": done.after,
        "previous_labels": done.before,
    })))
}
