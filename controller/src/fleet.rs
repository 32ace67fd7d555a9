//! The live fleet view: every known device's labels, presence, reported status, desired
//! document and recent events, in a `DashMap` keyed by device id.
//!
//! Written by the bus handlers (presence/status/events) and by the desired-state book; read
//! by the HTTP API. Changed devices are marked dirty and flushed to the store in batches, so
//! the view survives a controller restart as "last known" state.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use dashmap::{DashMap, DashSet};
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::DeviceEvent;
use edgefleet_protocol::presence::{DevicePresence, PresenceState};
use edgefleet_protocol::status::{ContainerState, ConvergenceState, DeviceStatus, Health};
use serde::Serialize;

use crate::store::DeviceRow;

/// Events kept in memory per device.
pub const RECENT_EVENTS: usize = 50;

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
        }
    }

    pub fn desired_revision(&self) -> u64 {
        self.desired.as_ref().map_or(0, |d| d.revision)
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
        }
    }

    pub fn to_row(&self) -> DeviceRow {
        fn json<T: Serialize>(v: &Option<T>) -> Option<String> {
            v.as_ref().and_then(|v| serde_json::to_string(v).ok())
        }
        DeviceRow {
            id: self.id.clone(),
            labels_json: serde_json::to_string(&self.labels).unwrap_or_else(|_| "{}".into()),
            desired_revision: self.desired_revision(),
            desired_json: json(&self.desired),
            presence_json: json(&self.presence),
            status_json: json(&self.status),
            last_seen: self.last_seen.clone(),
        }
    }

    /// Rebuilds a device from its stored row. A row that does not decode loses only the
    /// undecodable part (logged), never the device.
    pub fn from_row(row: &DeviceRow) -> Self {
        fn parse<T: serde::de::DeserializeOwned>(
            id: &str,
            what: &str,
            s: &Option<String>,
        ) -> Option<T> {
            let s = s.as_ref()?;
            match edgefleet_protocol::codec::decode(s.as_bytes()) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(device = id, "stored {what} unreadable, dropped: {e}");
                    None
                }
            }
        }
        let mut v = DeviceView::new(&row.id);
        v.labels = serde_json::from_str(&row.labels_json).unwrap_or_default();
        v.desired = parse(&row.id, "desired document", &row.desired_json);
        v.presence = parse(&row.id, "presence", &row.presence_json);
        v.status = parse(&row.id, "status", &row.status_json);
        v.last_seen = row.last_seen.clone();
        v
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
    pub desired_revision: u64,
    pub observed_revision: u64,
    pub state: Option<ConvergenceState>,
    pub converged: bool,
    pub stacks: Vec<String>,
    pub services_running: usize,
    pub services_total: usize,
    pub services_unhealthy: usize,
    pub last_error: Option<String>,
}

/// The fleet: devices by id, plus the set of devices changed since the last flush.
#[derive(Default)]
pub struct Fleet {
    pub devices: DashMap<String, DeviceView>,
    dirty: DashSet<String>,
}

impl Fleet {
    pub fn load(rows: &[DeviceRow]) -> Self {
        let fleet = Fleet::default();
        for row in rows {
            fleet
                .devices
                .insert(row.id.clone(), DeviceView::from_row(row));
        }
        fleet
    }

    /// Applies `f` to the device (created if unknown) and marks it dirty. Returns what `f`
    /// returns. Never hold the guard across an await: `f` is synchronous.
    pub fn update<R>(&self, id: &str, f: impl FnOnce(&mut DeviceView) -> R) -> R {
        let mut entry = self
            .devices
            .entry(id.to_owned())
            .or_insert_with(|| DeviceView::new(id));
        let r = f(entry.value_mut());
        drop(entry);
        self.dirty.insert(id.to_owned());
        r
    }

    /// The `site` label of a device, without cloning its view.
    pub fn site_of(&self, id: &str) -> Option<String> {
        self.devices
            .get(id)
            .and_then(|d| d.labels.get("site").cloned())
    }

    pub fn get(&self, id: &str) -> Option<DeviceView> {
        self.devices.get(id).map(|d| d.value().clone())
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.devices.iter().map(|d| d.key().clone()).collect();
        ids.sort();
        ids
    }

    pub fn summaries(&self) -> Vec<DeviceSummary> {
        let mut all: Vec<DeviceSummary> = self.devices.iter().map(|d| d.summary()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Takes the rows of every device changed since the last call.
    pub fn take_dirty(&self) -> Vec<DeviceRow> {
        let ids: Vec<String> = self.dirty.iter().map(|k| k.key().clone()).collect();
        ids.iter()
            .filter_map(|id| {
                self.dirty.remove(id);
                self.devices.get(id).map(|d| d.to_row())
            })
            .collect()
    }

    /// Records a presence message; stale ones (older session) are ignored. Returns true when
    /// the device's labels changed or it was new (its desired document must be recomputed).
    pub fn on_presence(&self, presence: DevicePresence) -> bool {
        self.update(&presence.device.clone(), |d| {
            if d.presence.as_ref().is_some_and(|p| p.session > presence.session) {
                tracing::debug!(device = %d.id, "stale presence of session {} ignored", presence.session);
                return false;
            }
            let relabel = d.labels != presence.labels || d.desired.is_none();
            d.connection = match presence.state {
                PresenceState::Online => Connection::Online,
                PresenceState::Offline => Connection::Offline,
            };
            if presence.state == PresenceState::Online {
                d.labels = presence.labels.clone();
            }
            d.last_seen = Some(edgefleet_protocol::now_rfc3339());
            d.presence = Some(presence);
            relabel && d.connection == Connection::Online
        })
    }

    /// Applies `f` to a device only if it is already known (created by its presence).
    pub fn update_known<R>(&self, id: &str, f: impl FnOnce(&mut DeviceView) -> R) -> Option<R> {
        let mut entry = self.devices.get_mut(id)?;
        let r = f(entry.value_mut());
        drop(entry);
        self.dirty.insert(id.to_owned());
        Some(r)
    }

    /// Records a status. Devices are created only by their presence, so a status for an
    /// unknown id (a stray or hostile publisher) is refused: false.
    pub fn on_status(&self, status: DeviceStatus) -> bool {
        self.update_known(&status.device.clone(), |d| {
            d.last_seen = Some(edgefleet_protocol::now_rfc3339());
            d.status = Some(status);
        })
        .is_some()
    }

    /// Records an event of a known device; false for an unknown id.
    pub fn on_event(&self, event: DeviceEvent) -> bool {
        self.update_known(&event.device.clone(), |d| {
            d.last_seen = Some(edgefleet_protocol::now_rfc3339());
            d.events.push_back(event);
            while d.events.len() > RECENT_EVENTS {
                d.events.pop_front();
            }
        })
        .is_some()
    }
}
