//! A device as the controller knows it: labels, connection, presence, reported status,
//! desired document and recent events ([`DeviceView`]), and the summary the API lists
//! ([`DeviceSummary`]). Pure data; the live fleet that holds them is a service.
//!
//! `labels` are the inventory's (set by `edgefleet device add` / `device label`): they alone
//! decide targeting, scope, site summaries and rollouts. The labels a device reports in its
//! presence are only shown ([`DeviceView::reported_labels`]); when they differ,
//! [`DeviceView::label_mismatch`] says how, and that is an alarm.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::DeviceEvent;
use edgefleet_protocol::presence::DevicePresence;
use edgefleet_protocol::status::{ContainerState, ConvergenceState, DeviceStatus, Health};
use serde::Serialize;

/// Events kept in memory per device.
pub const RECENT_EVENTS: usize = 50;

/// Events kept in the store per device.
pub const STORED_EVENTS: u64 = 500;

/// What the controller knows about a device's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    Online,
    Offline,
    /// Loaded from the store after a controller restart and not heard from since.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct DeviceView {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub connection: Connection,
    pub presence: Option<DevicePresence>,
    pub status: Option<DeviceStatus>,
    pub desired: Option<DesiredState>,
    pub last_seen: Option<String>,
    pub events: VecDeque<DeviceEvent>,
    /// When the desired document was last handed to the bus (for the convergence watchdog).
    pub desired_published_at: Option<Instant>,
    /// A desired revision the agent refused (`desired_rejected` / `security_rejected` naming
    /// it): the watchdog does not republish it, the refusal is what the device shows.
    pub refused_revision: Option<u64>,
    /// Deployments targeting the device that cannot be resolved for it (deployment → why,
    /// naming the variable): it keeps what its document has of them. An alarm; recomputed
    /// with every desired document, never stored.
    pub unresolved: BTreeMap<String, String>,
}

impl DeviceView {
    pub fn new(id: &str) -> Self {
        DeviceView {
            id: id.to_owned(),
            labels: BTreeMap::new(),
            connection: Connection::Unknown,
            presence: None,
            status: None,
            desired: None,
            last_seen: None,
            events: VecDeque::new(),
            desired_published_at: None,
            refused_revision: None,
            unresolved: BTreeMap::new(),
        }
    }

    /// A copy without the recent events: what the store keeps of a device (its events are
    /// stored apart), at a fraction of a full clone's cost (50 events, each with its own
    /// strings, were most of what a wave's store writes copied, measured with perf).
    pub fn without_events(&self) -> DeviceView {
        DeviceView {
            id: self.id.clone(),
            labels: self.labels.clone(),
            connection: self.connection,
            presence: self.presence.clone(),
            status: self.status.clone(),
            desired: self.desired.clone(),
            last_seen: self.last_seen.clone(),
            events: VecDeque::new(),
            desired_published_at: self.desired_published_at,
            refused_revision: self.refused_revision,
            unresolved: self.unresolved.clone(),
        }
    }

    pub fn desired_revision(&self) -> u64 {
        self.desired.as_ref().map_or(0, |d| d.revision)
    }

    /// What the device says its labels are (its latest presence), never used for anything
    /// but display and [`DeviceView::label_mismatch`].
    pub fn reported_labels(&self) -> BTreeMap<String, String> {
        self.presence
            .as_ref()
            .map(|p| p.labels.clone())
            .unwrap_or_default()
    }

    /// When the device reports labels and they differ from the inventory's: which keys,
    /// e.g. `site: inventory lyon, reported paris`. `None` when it reports none, or the same.
    pub fn label_mismatch(&self) -> Option<String> {
        let reported = self.reported_labels();
        if reported.is_empty() || reported == self.labels {
            return None;
        }
        let keys: std::collections::BTreeSet<&String> =
            reported.keys().chain(self.labels.keys()).collect();
        let shown = |v: Option<&String>| v.map_or("(none)".to_owned(), Clone::clone);
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| reported.get(*k) != self.labels.get(*k))
            .map(|k| {
                format!(
                    "{k}: inventory {}, reported {}",
                    shown(self.labels.get(k)),
                    shown(reported.get(k))
                )
            })
            .collect();
        Some(diffs.join("; "))
    }

    /// Whether the device reports having applied its current desired revision (never true
    /// before it has one).
    pub fn converged(&self) -> bool {
        self.desired.is_some()
            && self.status.as_ref().is_some_and(|s| {
                s.observed_revision == self.desired_revision()
                    && s.state == ConvergenceState::Converged
            })
    }

    /// The engine platform the device last reported in its status (`linux/arm/v7`), if any.
    pub fn platform(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.platform.as_deref())
    }

    pub fn summary(&self) -> DeviceSummary {
        let mut running = 0;
        let mut total = 0;
        let mut unhealthy = 0;
        if let Some(status) = &self.status {
            for svc in status.stacks.values().flat_map(|s| s.services.values()) {
                total += 1;
                if svc.state == ContainerState::Running {
                    running += 1;
                }
                if svc.health == Health::Unhealthy || svc.last_error.is_some() {
                    unhealthy += 1;
                }
            }
        }
        DeviceSummary {
            id: self.id.clone(),
            labels: self.labels.clone(),
            connection: self.connection,
            online: self.connection == Connection::Online,
            last_seen: self.last_seen.clone(),
            session: self.presence.as_ref().map(|p| p.session),
            agent_version: self.presence.as_ref().map(|p| p.agent_version.clone()),
            platform: self.platform().map(str::to_owned),
            desired_revision: self.desired_revision(),
            observed_revision: self.status.as_ref().map_or(0, |s| s.observed_revision),
            state: self.status.as_ref().map(|s| s.state),
            converged: self.converged(),
            stacks: self
                .desired
                .as_ref()
                .map(|d| d.stacks.keys().cloned().collect())
                .unwrap_or_default(),
            services_running: running,
            services_total: total,
            services_unhealthy: unhealthy,
            last_error: self.status.as_ref().and_then(|s| s.last_error.clone()),
            reported_labels: self.reported_labels(),
            label_mismatch: self.label_mismatch(),
        }
    }
}

/// One row of `GET /api/v1/devices`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub connection: Connection,
    pub online: bool,
    pub last_seen: Option<String>,
    pub session: Option<u64>,
    pub agent_version: Option<String>,
    /// The engine platform the device last reported (`linux/arm64`), if it did.
    pub platform: Option<String>,
    pub desired_revision: u64,
    pub observed_revision: u64,
    pub state: Option<ConvergenceState>,
    pub converged: bool,
    pub stacks: Vec<String>,
    pub services_running: usize,
    pub services_total: usize,
    pub services_unhealthy: usize,
    pub last_error: Option<String>,
    /// What the device reports (display only; `labels` are the inventory's).
    pub reported_labels: BTreeMap<String, String>,
    /// How the reported labels differ from the inventory's, if they do (an alarm).
    pub label_mismatch: Option<String>,
}
