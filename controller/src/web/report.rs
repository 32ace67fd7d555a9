//! `GET /api/v1/reports/compliance?format=csv|json`: which version runs where, for auditors.
//!
//! One row per device, deployment and service the device reports (a device that runs
//! nothing gets one row with an empty deployment): the revision it runs and the one it should
//! run, the image reference, the image id the engine resolved it to (`sha256:…`, the
//! content digest of the image's configuration as the agent reports it; empty when no
//! container exists — it is not a registry manifest digest), and when and by whom the
//! running revision was recorded. Limited to the devices within the caller's sites.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use edgefleet_domain::access::Caller;
use edgefleet_domain::device::DeviceView;
use edgefleet_store::Store;
use serde::{Deserialize, Serialize};

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::services::fleet::Fleet;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ComplianceRow {
    pub device: String,
    pub site: String,
    pub area: String,
    pub line: String,
    pub connection: String,
    pub last_seen: String,
    pub deployment: String,
    pub service: String,
    /// The deployment revision the device reports running.
    pub revision: String,
    /// The deployment revision the controller wants it to run.
    pub desired_revision: String,
    /// Image reference (`registry/app:1.4`).
    pub image: String,
    /// Image id the engine resolved the reference to (`sha256:…`), if a container exists.
    pub image_id: String,
    pub state: String,
    pub health: String,
    /// When the running revision was recorded (RFC 3339).
    pub changed_at: String,
    /// Who recorded it.
    pub changed_by: String,
}

pub const COLUMNS: [&str; 16] = [
    "device",
    "site",
    "area",
    "line",
    "connection",
    "last_seen",
    "deployment",
    "service",
    "revision",
    "desired_revision",
    "image",
    "image_id",
    "state",
    "health",
    "changed_at",
    "changed_by",
];

impl ComplianceRow {
    fn fields(&self) -> [&str; 16] {
        [
            &self.device,
            &self.site,
            &self.area,
            &self.line,
            &self.connection,
            &self.last_seen,
            &self.deployment,
            &self.service,
            &self.revision,
            &self.desired_revision,
            &self.image,
            &self.image_id,
            &self.state,
            &self.health,
            &self.changed_at,
            &self.changed_by,
        ]
    }
}

fn word<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The report's rows, sorted by device, deployment, service.
pub async fn rows(
    fleet: &Fleet,
    store: &Store,
    caller: &Caller,
) -> Result<Vec<ComplianceRow>, ApiError> {
    let mut devices: Vec<DeviceView> = fleet
        .devices
        .iter()
        .filter(|d| caller.sees(d.labels.get("site").map(String::as_str)))
        .map(|d| d.value().clone())
        .collect();
    devices.sort_by(|a, b| a.id.cmp(&b.id));
    let mut revisions: std::collections::HashMap<(String, u64), (String, String)> =
        Default::default();
    let mut out = Vec::new();
    for d in devices {
        let label = |k: &str| d.labels.get(k).cloned().unwrap_or_default();
        let base = ComplianceRow {
            device: d.id.clone(),
            site: label("site"),
            area: label("area"),
            line: label("line"),
            connection: word(&d.connection),
            last_seen: d.last_seen.clone().unwrap_or_default(),
            deployment: String::new(),
            service: String::new(),
            revision: String::new(),
            desired_revision: String::new(),
            image: String::new(),
            image_id: String::new(),
            state: String::new(),
            health: String::new(),
            changed_at: String::new(),
            changed_by: String::new(),
        };
        let mut names: std::collections::BTreeSet<String> = Default::default();
        if let Some(s) = &d.status {
            names.extend(s.stacks.keys().cloned());
        }
        if let Some(ds) = &d.desired {
            names.extend(ds.stacks.keys().cloned());
        }
        if names.is_empty() {
            out.push(base);
            continue;
        }
        for name in names {
            let running = d.status.as_ref().and_then(|s| s.stacks.get(&name));
            let desired = d.desired.as_ref().and_then(|s| s.stacks.get(&name));
            let rev = running.map(|s| s.deployment_revision).filter(|r| *r > 0);
            let (changed_at, changed_by) = match rev {
                Some(r) => {
                    let key = (name.clone(), r);
                    if !revisions.contains_key(&key) {
                        let found = store
                            .revision(&name, r)
                            .await?
                            .map(|row| (row.created_at, row.created_by))
                            .unwrap_or_default();
                        revisions.insert(key.clone(), found);
                    }
                    revisions.get(&key).cloned().unwrap_or_default()
                }
                None => Default::default(),
            };
            let stack_row = ComplianceRow {
                deployment: name.clone(),
                revision: rev.map(|r| r.to_string()).unwrap_or_default(),
                desired_revision: desired
                    .map(|s| s.deployment_revision.to_string())
                    .unwrap_or_default(),
                changed_at,
                changed_by,
                ..base.clone()
            };
            let mut services: std::collections::BTreeSet<&String> = Default::default();
            if let Some(r) = running {
                services.extend(r.services.keys());
            }
            if let Some(ds) = desired {
                services.extend(ds.services.keys());
            }
            for svc in services {
                let st = running.and_then(|r| r.services.get(svc));
                let image = st.map(|s| s.image.clone()).or_else(|| {
                    desired
                        .and_then(|ds| ds.services.get(svc))
                        .map(|s| s.image.clone())
                });
                out.push(ComplianceRow {
                    service: svc.clone(),
                    image: image.unwrap_or_default(),
                    image_id: st.and_then(|s| s.image_id.clone()).unwrap_or_default(),
                    state: st
                        .map(|s| word(&s.state))
                        .unwrap_or_else(|| "missing".into()),
                    health: st.map(|s| word(&s.health)).unwrap_or_default(),
                    ..stack_row.clone()
                });
            }
        }
    }
    Ok(out)
}

pub fn csv(rows: &[ComplianceRow]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS)?;
    for r in rows {
        let cells = r.fields().map(crate::http::routes::audit::csv_cell);
        w.write_record(cells.iter().map(|c| c.as_bytes()))?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

#[derive(Deserialize)]
pub struct ReportQuery {
    #[serde(default)]
    format: Option<String>,
}

pub async fn compliance(
    State(fleet): State<Arc<Fleet>>,
    State(store): State<Store>,
    auth: Auth,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|_| ApiError::BadRequest("compliance report: ?format=csv|json".into()))?;
    let rows = rows(&fleet, &store, &auth.caller).await?;
    let generated = edgefleet_protocol::now_rfc3339();
    match q.format.as_deref().unwrap_or("json") {
        "csv" => Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"edgefleet-compliance.csv\"".to_owned(),
                ),
            ],
            csv(&rows).map_err(|e| ApiError::Internal(format!("cannot write the report: {e}")))?,
        )
            .into_response()),
        "json" => Ok(axum::Json(serde_json::json!({
            "generated_at": generated,
            "generated_by": auth.username(),
            "rows": rows,
        }))
        .into_response()),
        other => Err(ApiError::BadRequest(format!(
            "unknown report format '{other}': use csv or json"
        ))),
    }
}
