//! What devices say on the bus, taken in: presence, status, events, sync requests, command
//! replies. Every payload is untrusted: anything that does not decode, or names another
//! device than its topic, is logged and dropped; a status or event of a device that never
//! announced itself is refused (devices are created only by their presence).
//!
//! The MQTT link hands messages over a channel and never waits for this ([`Intake::run`]
//! takes them one by one). Status and events change only the in-memory fleet view; the
//! store sees them at the next [`Intake::flush`] (each second), in batches. A presence never
//! changes a device's labels (the inventory's); the first presence of a device never heard
//! of adopts it with its reported labels (audited, `device.adopt`) and computes its desired
//! document (persisted before published).

use std::sync::Arc;

use edgefleet_domain::audit::{Entry, Outcome, device_outcome};
use edgefleet_protocol::codec::{self, DecodeError};
use edgefleet_protocol::event::DeviceEvent;
use edgefleet_protocol::presence::DevicePresence;
use edgefleet_protocol::status::DeviceStatus;
use edgefleet_protocol::sync::SyncRequest;
use edgefleet_protocol::topics::{self, TopicKind};
use edgefleet_store::{Store, StoreError};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::audit::AuditLog;
use super::commands::Commands;
use super::deployments::Deployments;
use super::fleet::Fleet;
use super::outbox::Outbox;

/// Device events kept in the store per device.
const STORED_EVENTS_PER_DEVICE: u64 = edgefleet_domain::device::STORED_EVENTS;

/// One message from the bus.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

pub struct Intake {
    store: Store,
    fleet: Arc<Fleet>,
    deployments: Arc<Deployments>,
    commands: Arc<Commands>,
    audit: Arc<AuditLog>,
    outbox: Arc<Outbox>,
    /// Events for the store: (device, ts, json), written at the next flush.
    events: Mutex<Vec<(String, String, String)>>,
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

impl Intake {
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        deployments: Arc<Deployments>,
        commands: Arc<Commands>,
        audit: Arc<AuditLog>,
        outbox: Arc<Outbox>,
    ) -> Self {
        Intake {
            store,
            fleet,
            deployments,
            commands,
            audit,
            outbox,
            events: Mutex::new(Vec::new()),
        }
    }

    /// Takes messages off `rx` until `shutdown` (or until the link drops its sender).
    pub async fn run(&self, mut rx: mpsc::Receiver<Message>, shutdown: CancellationToken) {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            self.on_message(&msg.topic, &msg.payload).await;
        }
    }

    /// Takes in one message from the bus.
    pub async fn on_message(&self, topic: &str, payload: &[u8]) {
        let Some(parsed) = topics::parse(topic) else {
            tracing::debug!(topic, "message on a topic we do not handle");
            return;
        };
        let Some(device) = parsed.device else { return };
        let result = match parsed.kind {
            TopicKind::DevicePresence => self.on_presence(device, payload).await,
            TopicKind::DeviceStatus => {
                match decode_for::<DeviceStatus>(device, payload, |s| &s.device) {
                    Ok(s) => {
                        self.on_status(device, s).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            TopicKind::DeviceEvents => {
                decode_for::<DeviceEvent>(device, payload, |e| &e.device).map(|e| self.on_event(device, e))
            }
            TopicKind::DeviceSync => decode_for::<SyncRequest>(device, payload, |s| &s.device).map(|s| {
                tracing::debug!(device, have = s.have_revision, reason = %s.reason, "sync requested");
                if self.fleet.contains(device) {
                    self.outbox.queue_desired(device);
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
            | TopicKind::RolloutStatus
            | TopicKind::AuditHead => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(device, topic, "refused a message from the bus: {e}");
        }
    }

    fn on_event(&self, device: &str, e: DeviceEvent) {
        let json = serde_json::to_string(&e).ok();
        let site = self.fleet.site_of(device);
        let outcome = device_outcome(&e, site.as_deref().unwrap_or(""));
        let key = (e.device.clone(), e.ts.clone());
        if !self.fleet.on_event(e) {
            tracing::debug!(
                device,
                "event of a device that never announced itself: ignored"
            );
            return;
        }
        if let Some(entry) = outcome {
            self.audit.buffer(entry);
        }
        if let Some(json) = json {
            self.events.lock().push((key.0, key.1, json));
        }
    }

    async fn on_status(&self, device: &str, status: DeviceStatus) {
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
            && let Err(e) = self.deployments.renumber_above(device, reported).await
        {
            tracing::error!(device, "cannot reissue desired state: {e}");
        }
    }

    async fn on_presence(&self, device: &str, payload: &[u8]) -> Result<(), DecodeError> {
        let p = decode_for::<DevicePresence>(device, payload, |p| &p.device)?;
        for (k, v) in &p.labels {
            if let Err(e) = edgefleet_protocol::ids::validate_label(k, v) {
                tracing::warn!(device, "presence with an invalid label refused: {e}");
                return Ok(());
            }
        }
        tracing::info!(device, state = ?p.state, session = p.session, "presence");
        let labels = p.labels.clone();
        let outcome = self.fleet.on_presence(p);
        if outcome.adopted {
            tracing::info!(
                device,
                ?labels,
                "unknown device adopted with its reported labels"
            );
            self.audit.buffer(Entry {
                actor: format!("device:{device}"),
                role: "device".into(),
                action: "device.adopt".into(),
                target: device.to_owned(),
                site: labels.get("site").cloned().unwrap_or_default(),
                outcome: Outcome::Ok,
                status: None,
                detail: serde_json::json!({ "labels": labels }),
            });
        }
        if outcome.refresh
            && let Err(e) = self.deployments.refresh(&[device.to_owned()]).await
        {
            tracing::error!(device, "cannot compute desired state: {e}");
        }
        Ok(())
    }

    /// Writes changed devices, buffered events and device outcomes (audit) to the store.
    /// What could not be written stays for the next flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let audited = self.audit.flush().await;
        let views = self.fleet.take_dirty();
        let ids: Vec<String> = views.iter().map(|v| v.id.clone()).collect();
        if let Err(e) = self
            .store
            .save_devices(views, &edgefleet_protocol::now_rfc3339())
            .await
        {
            self.fleet.mark_dirty(ids);
            return Err(e);
        }
        let events = std::mem::take(&mut *self.events.lock());
        if let Err(e) = self
            .store
            .append_events(events.clone(), STORED_EVENTS_PER_DEVICE)
            .await
        {
            let mut pending = self.events.lock();
            let newer = std::mem::take(&mut *pending);
            *pending = events;
            pending.extend(newer);
            return Err(e);
        }
        audited
    }
}
