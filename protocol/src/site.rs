//! Per-site summaries for SCADA screens and integrators: one small retained document per
//! site, so a plant screen learns the state of its whole site from one topic, whatever the
//! broker's retained-replay limits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Severity;

/// `edgefleet/v1/fleet/sites/{site}/summary`, retained, published by the controller when a
/// count or alarm changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSummary {
    pub schema: u32,
    pub site: String,
    #[serde(flatten)]
    pub counts: Counts,
    /// Per production line (`line` label; `unassigned` when absent).
    pub lines: BTreeMap<String, Counts>,
    /// Worst first, then oldest; at most [`MAX_ALARMS`].
    pub alarms: Vec<Alarm>,
    pub updated_at: String,
}

/// Alarms listed per site summary.
pub const MAX_ALARMS: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub devices: u32,
    pub online: u32,
    pub offline: u32,
    /// On their desired revision with every service as desired.
    pub converged: u32,
    /// Devices with at least one unhealthy or failing service, or a failed apply.
    pub unhealthy: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    pub device: String,
    pub severity: Severity,
    /// `offline`, `failed`, `unhealthy`.
    pub kind: String,
    /// Since when, when known (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    pub message: String,
}
