//! The controller's state and the operations on it: applying and deleting deployments,
//! recomputing desired documents, and taking in what devices report.
//!
//! Everything here is synchronous and quick; I/O to the bus goes through the publish queue
//! (drained by [`crate::bus`]) so no caller ever waits on the broker.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Instant;

use dashmap::DashSet;
use edgefleet_protocol::codec::{self, DecodeError};
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::DeviceEvent;
use edgefleet_protocol::ids::validate_stack_name;
use edgefleet_protocol::presence::DevicePresence;
use edgefleet_protocol::site::SiteSummary;
use edgefleet_protocol::spec::{ServiceSpec, StackSpec};
use edgefleet_protocol::status::DeviceStatus;
use edgefleet_protocol::sync::SyncRequest;
use edgefleet_protocol::topics::{self, TopicKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::book::{ActiveDeployment, Book, next_document};
use crate::compose::{self, ComposeError};
use crate::fleet::{Connection, Fleet};
use crate::selector::{Selector, SelectorError};
use crate::store::{Store, StoreError};

/// Device events kept in the store per device.
const STORED_EVENTS_PER_DEVICE: u64 = 500;

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("{0}")]
    Name(String),
    #[error(transparent)]
    Target(#[from] SelectorError),
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Error)]
pub enum SiteWindowError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Error)]
pub enum PinError {
    #[error("deployment '{0}' has no revision {1}; list them with 'edgefleet get deployment {0}'")]
    NoRevision(String, u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `apply` takes (the HTTP body of `POST /api/v1/deployments`).
#[derive(Debug, Clone, Deserialize)]
pub struct ApplyRequest {
    pub name: String,
    pub target: String,
    /// The Compose file, as text.
    pub compose: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyOutcome {
    pub name: String,
    pub revision: u64,
    /// False when the file and target equal the latest revision (nothing was recorded).
    pub changed: bool,
    pub target: String,
    /// Known devices the deployment targets now.
    pub devices: Vec<String>,
    /// Staged apply (`x-edgefleet-rollout`): devices held on their current revision until a
    /// rollout moves them.
    pub held: Vec<String>,
}

/// The stored form of a revision's spec: what `changed` compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSpec {
    volumes: Vec<String>,
    services: BTreeMap<String, ServiceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollout: Option<crate::rollout::strategy::Strategy>,
}

/// Something to put on the bus.
#[derive(Debug)]
pub enum Outgoing {
    /// The device's current desired document (read when sent, so bursts coalesce).
    Desired(String),
    /// A retained document as it is (site summaries).
    Retained { topic: String, payload: Vec<u8> },
    /// A command document for one device, signed by the publisher (not retained).
    Command { device: String, command: Vec<u8> },
}

pub struct Controller {
    store: Mutex<Store>,
    pub fleet: Fleet,
    book: RwLock<Book>,
    /// Serializes desired-document computation (revision numbers must not race).
    refresh_lock: Mutex<()>,
    /// Serializes apply/delete: the store and the book must change together.
    change_lock: Mutex<()>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    queued: DashSet<String>,
    events: Mutex<Vec<(String, String, String)>>,
    /// Device-reported outcomes for the audit log, appended at the next flush.
    audit_pending: Mutex<Vec<crate::audit::Entry>>,
    /// Device identities (PKI, front, enrollment), set when running inside a gateway.
    pub security: std::sync::OnceLock<std::sync::Arc<crate::enroll::Security>>,
    /// Commands sent to agents and waiting for their reply.
    pub commands: crate::commands::Pending,
    /// Rollouts in progress (and the way to start and control them).
    pub rollouts: crate::rollouts::Rollouts,
    /// Site summaries as last published (without `updated_at`).
    published_sites: Mutex<BTreeMap<String, SiteSummary>>,
    pub started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Controller {
    /// Opens the controller over a store: loads deployments and the last-known fleet.
    pub fn new(
        store: Store,
    ) -> Result<(Controller, mpsc::UnboundedReceiver<Outgoing>), StoreError> {
        let mut book = Book::default();
        for dep in store.deployments()? {
            let Some(stack) = stored_stack(&store, &dep.name, dep.revision)? else {
                continue;
            };
            let selector = match Selector::parse(&dep.target) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(deployment = %dep.name, "stored target unreadable, deployment skipped: {e}");
                    continue;
                }
            };
            book.deployments.insert(
                dep.name.clone(),
                ActiveDeployment {
                    name: dep.name.clone(),
                    selector,
                    revision: dep.revision,
                    stack,
                },
            );
        }
        for (device, deployment, revision) in store.pins()? {
            if let Some(stack) = stored_stack(&store, &deployment, revision)? {
                book.pinned_stacks
                    .insert((deployment.clone(), revision), stack);
                book.pins.insert((device, deployment), revision);
            }
        }
        let fleet = Fleet::load(&store.devices()?);
        let rollouts = crate::rollouts::Rollouts::load(&store)?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            Controller {
                store: Mutex::new(store),
                fleet,
                book: RwLock::new(book),
                refresh_lock: Mutex::new(()),
                change_lock: Mutex::new(()),
                outgoing: tx,
                queued: DashSet::new(),
                events: Mutex::new(Vec::new()),
                audit_pending: Mutex::new(Vec::new()),
                security: std::sync::OnceLock::new(),
                commands: crate::commands::Pending::default(),
                rollouts,
                published_sites: Mutex::new(BTreeMap::new()),
                started: Instant::now(),
            },
            rx,
        ))
    }

    /// Queues something for the publisher task.
    pub(crate) fn send_outgoing(&self, out: Outgoing) -> bool {
        self.outgoing.send(out).is_ok()
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn book(&self) -> std::sync::RwLockReadGuard<'_, Book> {
        self.book.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new revision of a deployment (or nothing, if unchanged) and recomputes the
    /// desired documents of every device.
    pub fn apply(&self, req: &ApplyRequest, by: &str) -> Result<ApplyOutcome, ApplyError> {
        validate_stack_name(&req.name).map_err(|e| ApplyError::Name(e.to_string()))?;
        let selector = Selector::parse(&req.target)?;
        let parsed = compose::parse(&req.compose)?;
        let spec = StoredSpec {
            volumes: parsed.volumes.clone(),
            services: parsed.services.clone(),
            rollout: parsed.rollout.clone(),
        };
        let spec_json = serde_json::to_string(&spec).unwrap_or_default();
        let target = selector.to_string();
        let now = edgefleet_protocol::now_rfc3339();
        let _change = lock(&self.change_lock);
        let (revision, changed) = {
            let mut store = self.store();
            let latest = store.deployment(&req.name)?;
            let same = match &latest {
                Some(d) if d.target == target => {
                    store.revision(&req.name, d.revision)?.is_some_and(|r| {
                        serde_json::from_str::<StoredSpec>(&r.spec_json).ok() == Some(spec.clone())
                    })
                }
                _ => false,
            };
            match latest {
                Some(d) if same => (d.revision, false),
                _ => (
                    store.insert_revision(
                        &req.name,
                        &target,
                        &req.compose,
                        &spec_json,
                        by,
                        &now,
                    )?,
                    true,
                ),
            }
        };
        let mut held = Vec::new();
        if changed {
            tracing::info!(deployment = %req.name, revision, %target, by, "deployment revision recorded");
            if parsed.rollout.is_some() {
                held = self.hold_current(&req.name)?;
            } else {
                // Not staged: every device moves to the new revision now.
                self.release_pins(&req.name, |_| true)?;
            }
            let mut book = self.book.write().unwrap_or_else(|p| p.into_inner());
            book.deployments.insert(
                req.name.clone(),
                ActiveDeployment {
                    name: req.name.clone(),
                    selector: selector.clone(),
                    revision,
                    stack: parsed.into_stack_spec(&req.name, revision),
                },
            );
        }
        self.refresh_all()?;
        Ok(ApplyOutcome {
            name: req.name.clone(),
            revision,
            changed,
            target,
            devices: self.targets(&selector),
            held,
        })
    }

    /// Removes the pins of a deployment that `which(revision)` selects (store, then book).
    fn release_pins(&self, name: &str, which: impl Fn(u64) -> bool) -> Result<(), StoreError> {
        let pins: Vec<(String, Option<u64>)> = self
            .book()
            .pins
            .iter()
            .filter(|((_, dep), rev)| dep == name && which(**rev))
            .map(|((device, _), _)| (device.clone(), None))
            .collect();
        if pins.is_empty() {
            return Ok(());
        }
        self.store().set_pins(name, &pins)?;
        let mut book = self.book.write().unwrap_or_else(|p| p.into_inner());
        for (device, _) in &pins {
            book.pins.remove(&(device.clone(), name.to_owned()));
        }
        Ok(())
    }

    /// After a successful rollout to the latest revision: drop the pins that equal it.
    pub fn release_pins_at_latest(&self, name: &str) -> Result<(), StoreError> {
        let _change = lock(&self.change_lock);
        let latest = self.book().deployments.get(name).map(|d| d.revision);
        if let Some(latest) = latest {
            self.release_pins(name, |rev| rev == latest)?;
        }
        Ok(())
    }

    /// Staged apply: pins every device that runs the deployment to the revision it runs now,
    /// so the new revision reaches it only through a rollout. Returns the devices held.
    /// Called with `change_lock` held, before the book moves to the new revision.
    fn hold_current(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let mut pins = Vec::new();
        let mut stacks = Vec::new();
        {
            let book = self.book();
            for d in self.fleet.devices.iter() {
                let Some(rev) = d
                    .desired
                    .as_ref()
                    .and_then(|x| x.stacks.get(name))
                    .map(|s| s.deployment_revision)
                else {
                    continue;
                };
                if book.pins.contains_key(&(d.key().clone(), name.to_owned())) {
                    continue;
                }
                if let Some(stack) = d.desired.as_ref().and_then(|x| x.stacks.get(name)) {
                    stacks.push(((name.to_owned(), rev), stack.clone()));
                }
                pins.push((d.key().clone(), Some(rev)));
            }
        }
        if pins.is_empty() {
            return Ok(Vec::new());
        }
        self.store().set_pins(name, &pins)?;
        let mut book = self.book.write().unwrap_or_else(|p| p.into_inner());
        book.pinned_stacks.extend(stacks);
        let mut held = Vec::new();
        for (device, rev) in pins {
            if let Some(r) = rev {
                book.pins.insert((device.clone(), name.to_owned()), r);
                held.push(device);
            }
        }
        held.sort();
        tracing::info!(
            deployment = name,
            devices = held.len(),
            "staged apply: devices held on their revision until a rollout"
        );
        Ok(held)
    }

    /// Deletes a deployment: its stacks leave every device's desired document. Returns the
    /// devices it was targeting, or `None` if there was no such deployment.
    pub fn delete(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        let _change = lock(&self.change_lock);
        if !self
            .store()
            .delete_deployment(name, &edgefleet_protocol::now_rfc3339())?
        {
            return Ok(None);
        }
        self.release_pins(name, |_| true)?;
        let removed = self
            .book
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .deployments
            .remove(name);
        tracing::info!(deployment = name, "deployment deleted");
        self.refresh_all()?;
        Ok(Some(
            removed
                .map(|d| self.targets(&d.selector))
                .unwrap_or_default(),
        ))
    }

    /// Pins devices to a revision of a deployment (`Some`) or releases them to its latest
    /// (`None`), persists the pins, and recomputes those devices' desired documents.
    pub fn pin(&self, deployment: &str, pins: &[(String, Option<u64>)]) -> Result<(), PinError> {
        let _change = lock(&self.change_lock);
        let mut stacks = Vec::new();
        {
            let store = self.store();
            for rev in pins.iter().filter_map(|(_, r)| *r) {
                let stack = stored_stack(&store, deployment, rev)?
                    .ok_or_else(|| PinError::NoRevision(deployment.to_owned(), rev))?;
                stacks.push(((deployment.to_owned(), rev), stack));
            }
        }
        self.store().set_pins(deployment, pins)?;
        {
            let mut book = self.book.write().unwrap_or_else(|p| p.into_inner());
            book.pinned_stacks.extend(stacks);
            for (device, rev) in pins {
                let key = (device.clone(), deployment.to_owned());
                match rev {
                    Some(r) => book.pins.insert(key, *r),
                    None => book.pins.remove(&key),
                };
            }
        }
        let ids: Vec<String> = pins.iter().map(|(d, _)| d.clone()).collect();
        Ok(self.refresh(&ids)?)
    }

    /// Known devices a selector matches.
    pub fn targets(&self, selector: &Selector) -> Vec<String> {
        let mut ids: Vec<String> = self
            .fleet
            .devices
            .iter()
            .filter(|d| selector.matches(d.key(), &d.labels))
            .map(|d| d.key().clone())
            .collect();
        ids.sort();
        ids
    }

    /// Recomputes every device's desired document.
    pub fn refresh_all(&self) -> Result<(), StoreError> {
        self.refresh(&self.fleet.ids())
    }

    /// Recomputes the desired documents of these devices; changed ones get a new revision,
    /// are persisted before anything is published, and are queued for publishing.
    pub fn refresh(&self, ids: &[String]) -> Result<(), StoreError> {
        let _serial = lock(&self.refresh_lock);
        let mut changed = Vec::new();
        {
            let book = self.book();
            for id in ids {
                let Some(mut view) = self.fleet.get(id) else {
                    continue;
                };
                let stacks = book.stacks_for(id, &view.labels);
                if let Some(doc) = next_document(id, view.desired.as_ref(), stacks) {
                    view.desired = Some(doc);
                    changed.push(view);
                }
            }
        }
        self.commit_documents(changed)
    }

    /// Persists new desired documents, then (only then) makes them visible to the publisher
    /// and queues them. On a store error nothing changes in memory.
    fn commit_documents(&self, changed: Vec<crate::fleet::DeviceView>) -> Result<(), StoreError> {
        if changed.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = changed.iter().map(|v| v.to_row()).collect();
        self.store()
            .save_devices(&rows, &edgefleet_protocol::now_rfc3339())?;
        for view in changed {
            let Some(doc) = view.desired else { continue };
            tracing::info!(device = %view.id, revision = doc.revision, stacks = doc.stacks.len(), "new desired revision");
            self.fleet.update(&view.id, |d| d.desired = Some(doc));
            self.queue_desired(&view.id);
        }
        Ok(())
    }

    /// A device reports holding a desired revision newer than ours: the store lost writes
    /// (power loss) or was restored from a backup. Reissue the current document above it,
    /// or the agent would ignore it as a replay forever.
    fn renumber_above(&self, id: &str, reported: u64) -> Result<(), StoreError> {
        let _serial = lock(&self.refresh_lock);
        let Some(mut view) = self.fleet.get(id) else {
            return Ok(());
        };
        let Some(cur) = view.desired.as_ref() else {
            return Ok(());
        };
        if reported <= cur.revision {
            return Ok(());
        }
        tracing::warn!(
            device = id,
            reported,
            stored = cur.revision,
            "device holds a newer desired revision than the store (lost writes or restored backup): reissuing above it"
        );
        view.desired = Some(DesiredState::new(id, reported + 1, cur.stacks.clone()));
        self.commit_documents(vec![view])
    }

    /// Queues a (re)publish of a device's desired document; repeated requests coalesce.
    pub fn queue_desired(&self, id: &str) {
        if self.queued.insert(id.to_owned()) {
            let _ = self.outgoing.send(Outgoing::Desired(id.to_owned()));
        }
    }

    /// Called by the publisher when it takes a device off the queue: the document to send.
    pub fn take_queued_desired(&self, id: &str) -> Option<DesiredState> {
        self.queued.remove(id);
        let mut d = self.fleet.devices.get_mut(id)?;
        d.desired_published_at = Some(Instant::now());
        d.desired.clone()
    }

    /// Queues every device's desired document and every site summary (after every connect
    /// to the broker, which may have lost all retained messages).
    pub fn queue_all_desired(&self) {
        for id in self.fleet.ids() {
            self.queue_desired(&id);
        }
        lock(&self.published_sites).clear();
        self.queue_site_summaries();
        self.rollouts.publish_recent(self);
    }

    /// Maintenance windows by site, as stored (an unreadable one is logged and ignored).
    pub fn site_windows(
        &self,
    ) -> Result<BTreeMap<String, crate::rollout::window::Window>, StoreError> {
        let mut out = BTreeMap::new();
        for (site, spec, tz) in self.store().site_windows()? {
            match crate::rollout::window::Window::parse(&spec, &tz) {
                Ok(w) => {
                    out.insert(site, w);
                }
                Err(e) => tracing::error!(site, "stored maintenance window ignored: {e}"),
            }
        }
        Ok(out)
    }

    /// Sets or clears a site's maintenance window after validating it.
    pub fn set_site_window(
        &self,
        site: &str,
        window: Option<(&str, &str)>,
    ) -> Result<(), SiteWindowError> {
        edgefleet_protocol::ids::validate_label("site", site)
            .map_err(|e| SiteWindowError::Invalid(e.to_string()))?;
        if let Some((spec, tz)) = window {
            crate::rollout::window::Window::parse(spec, tz)
                .map_err(|e| SiteWindowError::Invalid(e.to_string()))?;
        }
        self.store().set_site_window(site, window)?;
        tracing::info!(site, ?window, "maintenance window set");
        Ok(())
    }

    /// Queues a retained document as it is.
    pub fn queue_retained(&self, topic: String, payload: Vec<u8>) {
        let _ = self.outgoing.send(Outgoing::Retained { topic, payload });
    }

    /// Queues the site summaries that changed since they were last published.
    pub fn queue_site_summaries(&self) {
        let now = crate::sites::summarize(self.fleet.devices.iter());
        let mut published = lock(&self.published_sites);
        // A site that lost its last device keeps a retained summary: overwrite it with zeros
        // rather than leave SCADA showing old counts and alarms.
        let mut now = now;
        for (site, old) in published.iter() {
            if !now.contains_key(site) && old.counts.devices > 0 {
                let mut empty = old.clone();
                empty.counts = Default::default();
                empty.lines.clear();
                empty.alarms.clear();
                now.insert(site.clone(), empty);
            }
        }
        for (site, summary) in now {
            if published.get(&site) == Some(&summary) {
                continue;
            }
            let mut doc = summary.clone();
            doc.updated_at = edgefleet_protocol::now_rfc3339();
            let _ = self.outgoing.send(Outgoing::Retained {
                topic: topics::site_summary(&site),
                payload: codec::encode(&doc),
            });
            published.insert(site, summary);
        }
    }

    /// Takes in one message from the bus. Payloads are untrusted: anything that does not
    /// decode, or names another device than its topic, is logged and dropped.
    pub fn on_message(&self, topic: &str, payload: &[u8]) {
        let Some(parsed) = topics::parse(topic) else {
            tracing::debug!(topic, "message on a topic we do not handle");
            return;
        };
        let Some(device) = parsed.device else { return };
        let result = match parsed.kind {
            TopicKind::DevicePresence => self.on_presence(device, payload),
            TopicKind::DeviceStatus => {
                decode_for::<DeviceStatus>(device, payload, |s| &s.device).map(|s| self.on_status(device, s))
            }
            TopicKind::DeviceEvents => decode_for::<DeviceEvent>(device, payload, |e| &e.device).map(|e| {
                let json = serde_json::to_string(&e).ok();
                if self.fleet.on_event(e.clone()) {
                    let site = self.fleet.site_of(device);
                    if let Some(entry) = crate::audit::device_outcome(&e, site.as_deref().unwrap_or("")) {
                        lock(&self.audit_pending).push(entry);
                    }
                    if let Some(json) = json {
                        lock(&self.events).push((e.device, e.ts, json));
                    }
                } else {
                    tracing::debug!(device, "event of a device that never announced itself: ignored");
                }
            }),
            TopicKind::DeviceSync => decode_for::<SyncRequest>(device, payload, |s| &s.device).map(|s| {
                tracing::debug!(device, have = s.have_revision, reason = %s.reason, "sync requested");
                if self.fleet.devices.contains_key(device) {
                    self.queue_desired(device);
                }
            }),
            TopicKind::DeviceReplies => decode_for::<edgefleet_protocol::command::Reply>(
                device,
                payload,
                |r| &r.device,
            )
            .map(|r| self.commands.on_reply(r)),
            TopicKind::DeviceDesired
            | TopicKind::DeviceCommands
            | TopicKind::ControllerPresence
            | TopicKind::SiteSummary
            | TopicKind::RolloutStatus => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(device, topic, "refused a message from the bus: {e}");
        }
    }

    fn on_status(&self, device: &str, status: DeviceStatus) {
        let reported = status.desired_revision;
        if !self.fleet.on_status(status) {
            tracing::debug!(
                device,
                "status of a device that never announced itself: ignored"
            );
            return;
        }
        let ours = self
            .fleet
            .devices
            .get(device)
            .map_or(0, |d| d.desired_revision());
        if ours > 0
            && reported > ours
            && let Err(e) = self.renumber_above(device, reported)
        {
            tracing::error!(device, "cannot reissue desired state: {e}");
        }
    }

    fn on_presence(&self, device: &str, payload: &[u8]) -> Result<(), DecodeError> {
        let p = decode_for::<DevicePresence>(device, payload, |p| &p.device)?;
        for (k, v) in &p.labels {
            if let Err(e) = edgefleet_protocol::ids::validate_label(k, v) {
                tracing::warn!(device, "presence with an invalid label refused: {e}");
                return Ok(());
            }
        }
        tracing::info!(device, state = ?p.state, session = p.session, "presence");
        if self.fleet.on_presence(p)
            && let Err(e) = self.refresh(&[device.to_owned()])
        {
            tracing::error!(device, "cannot compute desired state: {e}");
        }
        Ok(())
    }

    /// Devices whose last report shows they never received their current desired revision,
    /// although it was published at least `after` ago: the convergence watchdog republishes.
    pub fn lagging(&self, after: std::time::Duration) -> Vec<String> {
        self.fleet
            .devices
            .iter()
            .filter(|d| d.connection == Connection::Online)
            .filter(|d| {
                let want = d.desired_revision();
                want > 0
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
            .fleet
            .devices
            .iter()
            .filter(|d| d.connection == Connection::Unknown)
            .map(|d| d.key().clone())
            .collect();
        for id in unknown {
            tracing::info!(device = %id, "no presence since controller start: marked offline");
            self.fleet
                .update(&id, |d| d.connection = Connection::Offline);
        }
    }

    /// Writes changed devices, buffered events and device outcomes (audit) to the store.
    pub fn flush(&self) -> Result<(), StoreError> {
        let outcomes = std::mem::take(&mut *lock(&self.audit_pending));
        self.audit_all(&outcomes);
        let rows = self.fleet.take_dirty();
        let events = std::mem::take(&mut *lock(&self.events));
        if rows.is_empty() && events.is_empty() {
            return Ok(());
        }
        let mut store = self.store();
        let now = edgefleet_protocol::now_rfc3339();
        store.save_devices(&rows, &now)?;
        store.append_events(&events, STORED_EVENTS_PER_DEVICE)?;
        Ok(())
    }
}

/// The stack of a stored revision, or `None` (logged) if it is missing or unreadable.
fn stored_stack(store: &Store, name: &str, revision: u64) -> Result<Option<StackSpec>, StoreError> {
    let Some(row) = store.revision(name, revision)? else {
        tracing::error!(deployment = name, revision, "stored revision missing");
        return Ok(None);
    };
    match serde_json::from_str::<StoredSpec>(&row.spec_json) {
        Ok(spec) => Ok(Some(StackSpec {
            deployment: name.to_owned(),
            deployment_revision: revision,
            volumes: spec.volumes,
            services: spec.services,
        })),
        Err(e) => {
            tracing::error!(
                deployment = name,
                revision,
                "stored revision unreadable: {e}"
            );
            Ok(None)
        }
    }
}

fn decode_for<T: serde::de::DeserializeOwned>(
    device: &str,
    payload: &[u8],
    field: impl Fn(&T) -> &String,
) -> Result<T, DecodeError> {
    let value: T = codec::decode(payload)?;
    codec::check_device(device, field(&value))?;
    Ok(value)
}
