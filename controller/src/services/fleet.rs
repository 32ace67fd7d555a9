//! The live fleet view: every known device ([`DeviceView`]) in a `DashMap` keyed by id, the
//! set of devices changed since the last flush to the store, and a change counter the
//! dashboard's streams read to send only what changed.
//!
//! Written by the intake (presence, status, events), by the deployments service (desired
//! documents) and by the inventory (labels: [`Fleet::register`], [`Fleet::relabel`]); read
//! by everything else. A device's labels are the inventory's: a presence never changes
//! them, except that a device the controller has never heard of (no `device add`, no store
//! row) is adopted with the labels of its first presence (see ARCHITECTURE.md, "Inventory"). Never hold an entry across an `.await`: every method
//! here is synchronous and quick.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use dashmap::{DashMap, DashSet};
use edgefleet_domain::device::{Connection, DeviceSummary, DeviceView, RECENT_EVENTS};
use edgefleet_domain::selector::Selector;
use edgefleet_protocol::event::{DeviceEvent, EventKind};
use edgefleet_protocol::presence::{DevicePresence, PresenceState};
use edgefleet_protocol::status::DeviceStatus;
use parking_lot::Mutex;

/// Largest step between a device's known session number and a new presence's.
pub const MAX_SESSION_JUMP: u64 = 1_000_000;

/// What a presence changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PresenceOutcome {
    /// The device needs a desired document computed (new, or never had one).
    pub refresh: bool,
    /// The device was unknown and has been adopted with its reported labels.
    pub adopted: bool,
}

/// Which device changed when: change numbers, the newest per device.
#[derive(Default)]
struct Changes {
    seq: u64,
    by_seq: BTreeMap<u64, String>,
    of: HashMap<String, u64>,
}

/// The fleet: devices by id, the ones changed since the last flush, and change numbers.
#[derive(Default)]
pub struct Fleet {
    pub devices: DashMap<String, DeviceView>,
    dirty: DashSet<String>,
    /// Change numbers (one lock, so a reader never misses a change being numbered).
    changes: Mutex<Changes>,
    /// Woken on every change (one stored permit: a change while nobody waits is not lost).
    changed: tokio::sync::Notify,
}

impl Fleet {
    /// The fleet as the store last knew it (after a controller restart: connection unknown).
    pub fn load(views: Vec<DeviceView>) -> Self {
        let fleet = Fleet::default();
        for v in views {
            fleet.devices.insert(v.id.clone(), v);
        }
        fleet
    }

    fn touched(&self, id: &str) {
        {
            let mut c = self.changes.lock();
            c.seq += 1;
            let n = c.seq;
            if let Some(old) = c.of.insert(id.to_owned(), n) {
                c.by_seq.remove(&old);
            }
            c.by_seq.insert(n, id.to_owned());
        }
        self.dirty.insert(id.to_owned());
        self.changed.notify_one();
    }

    /// Returns after the next change to any device (at once if one happened since the last
    /// call returned).
    pub async fn wait_changed(&self) {
        self.changed.notified().await;
    }

    /// The current change number.
    pub fn change_seq(&self) -> u64 {
        self.changes.lock().seq
    }

    /// The current change number, and the devices changed after change number `seq`
    /// (costs what changed, not the fleet's size).
    pub fn changed_since(&self, seq: u64) -> (u64, Vec<String>) {
        let c = self.changes.lock();
        let ids = c
            .by_seq
            .range(seq.saturating_add(1)..)
            .map(|(_, id)| id.clone())
            .collect();
        (c.seq, ids)
    }

    /// Applies `f` to the device (created if unknown) and marks it changed. Returns what `f`
    /// returns.
    pub fn update<R>(&self, id: &str, f: impl FnOnce(&mut DeviceView) -> R) -> R {
        let mut entry = self
            .devices
            .entry(id.to_owned())
            .or_insert_with(|| DeviceView::new(id));
        let r = f(entry.value_mut());
        drop(entry);
        self.touched(id);
        r
    }

    /// Applies `f` to a device only if it is already known (created by its presence).
    pub fn update_known<R>(&self, id: &str, f: impl FnOnce(&mut DeviceView) -> R) -> Option<R> {
        let mut entry = self.devices.get_mut(id)?;
        let r = f(entry.value_mut());
        drop(entry);
        self.touched(id);
        Some(r)
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

    pub fn contains(&self, id: &str) -> bool {
        self.devices.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
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

    /// Known devices a selector matches, sorted.
    pub fn targets(&self, selector: &Selector) -> Vec<String> {
        let mut ids: Vec<String> = self
            .devices
            .iter()
            .filter(|d| selector.matches(d.key(), &d.labels))
            .map(|d| d.key().clone())
            .collect();
        ids.sort();
        ids
    }

    /// Takes the views of every device changed since the last call (to be written to the
    /// store).
    pub fn take_dirty(&self) -> Vec<DeviceView> {
        let ids: Vec<String> = self.dirty.iter().map(|k| k.key().clone()).collect();
        ids.iter()
            .filter_map(|id| {
                self.dirty.remove(id);
                self.get_without_events(id)
            })
            .collect()
    }

    /// A device's view without its recent events ([`DeviceView::without_events`]): for the
    /// store and for computing desired documents, which never read them.
    pub fn get_without_events(&self, id: &str) -> Option<DeviceView> {
        self.devices.get(id).map(|d| d.value().without_events())
    }

    /// Marks devices changed again (their write to the store failed: the next flush retries).
    pub fn mark_dirty(&self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.dirty.insert(id);
        }
    }

    /// Records a presence message; stale ones (older session) are ignored. The presence's
    /// labels are kept as reported only, except for a device never heard of, which is
    /// adopted with them.
    pub fn on_presence(&self, presence: DevicePresence) -> PresenceOutcome {
        let adopted = !self.devices.contains_key(&presence.device);
        self.update(&presence.device.clone(), |d| {
            if d.presence.as_ref().is_some_and(|p| p.session > presence.session) {
                tracing::debug!(device = %d.id, "stale presence of session {} ignored", presence.session);
                return PresenceOutcome::default();
            }
            // An agent's session number grows by one per connection attempt: a jump this
            // large is a forgery meant to make the device's real presences look stale.
            if let Some(p) = &d.presence
                && presence.session - p.session > MAX_SESSION_JUMP
            {
                tracing::warn!(device = %d.id, "presence refused: session {} jumps more than {MAX_SESSION_JUMP} past {}", presence.session, p.session);
                return PresenceOutcome::default();
            }
            if adopted {
                d.labels = presence.labels.clone();
            }
            d.connection = match presence.state {
                PresenceState::Online => Connection::Online,
                PresenceState::Offline => Connection::Offline,
            };
            d.last_seen = Some(edgefleet_protocol::now_rfc3339());
            d.presence = Some(presence);
            PresenceOutcome {
                refresh: d.desired.is_none() && d.connection == Connection::Online,
                adopted,
            }
        })
    }

    /// Records a device the inventory now knows (`device add`), with its labels; creates it
    /// if it was never seen. Returns its view.
    pub fn register(&self, id: &str, labels: BTreeMap<String, String>) -> DeviceView {
        self.update(id, |d| {
            d.labels = labels;
            d.clone()
        })
    }

    /// Changes a known device's labels (`device label`): sets `set`, removes `remove`.
    /// Returns (old labels, new view), or `None` for an unknown device.
    pub fn relabel(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Option<(BTreeMap<String, String>, DeviceView)> {
        self.update_known(id, |d| {
            let old = d.labels.clone();
            for k in remove {
                d.labels.remove(k);
            }
            d.labels
                .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            (old, d.clone())
        })
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
            if matches!(
                event.kind,
                EventKind::DesiredRejected | EventKind::SecurityRejected
            ) && event.revision.is_some_and(|r| r == d.desired_revision())
            {
                d.refused_revision = event.revision;
            }
            d.events.push_back(event);
            while d.events.len() > RECENT_EVENTS {
                d.events.pop_front();
            }
        })
        .is_some()
    }

    /// Records an event the controller raised about a known device (e.g. a deployment it
    /// cannot resolve for it); unlike [`Fleet::on_event`], it says nothing of the device
    /// being alive. False for an unknown id.
    pub fn controller_event(&self, event: DeviceEvent) -> bool {
        self.update_known(&event.device.clone(), |d| {
            d.events.push_back(event);
            while d.events.len() > RECENT_EVENTS {
                d.events.pop_front();
            }
        })
        .is_some()
    }

    /// Devices whose last report shows they never received their current desired revision,
    /// although it was published at least `after` ago: the convergence watchdog republishes.
    pub fn lagging(&self, after: Duration) -> Vec<String> {
        self.devices
            .iter()
            .filter(|d| d.connection == Connection::Online)
            .filter(|d| {
                let want = d.desired_revision();
                want > 0
                    && d.refused_revision != Some(want)
                    && d.status.as_ref().is_none_or(|s| s.desired_revision < want)
                    && d.desired_published_at.is_none_or(|t| t.elapsed() >= after)
            })
            .map(|d| d.key().clone())
            .collect()
    }

    /// After a controller restart: devices not heard from within the grace period are
    /// marked offline (their last will may not be replayed to us).
    pub fn expire_unknown(&self) {
        let unknown: Vec<String> = self
            .devices
            .iter()
            .filter(|d| d.connection == Connection::Unknown)
            .map(|d| d.key().clone())
            .collect();
        for id in unknown {
            tracing::info!(device = %id, "no presence since controller start: marked offline");
            self.update(&id, |d| d.connection = Connection::Offline);
        }
    }

    /// Marks a device's desired document as handed to the bus now.
    pub fn mark_published(&self, id: &str) {
        if let Some(mut d) = self.devices.get_mut(id) {
            d.desired_published_at = Some(Instant::now());
        }
    }
}
