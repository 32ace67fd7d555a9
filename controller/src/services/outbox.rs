//! What the controller puts on the bus, queued: nobody ever waits on the broker. The bus's
//! publisher drains the queue ([`crate::bus`]). Desired documents are queued by device id
//! and retained documents by topic, both read when sent, so a burst of changes to one device
//! or topic coalesces into one publish and the queue stays bounded while the broker is away.
//!
//! Also the per-site summaries for SCADA screens ([`SiteSummaries`]): recomputed from the
//! fleet view each second and queued only when they changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::{DashMap, DashSet};
use edgefleet_domain::sites;
use edgefleet_protocol::codec;
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::site::SiteSummary;
use edgefleet_protocol::topics;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::fleet::Fleet;

/// Something to put on the bus.
#[derive(Debug)]
pub enum Outgoing {
    /// The device's current desired document (read when sent, so bursts coalesce).
    Desired(String),
    /// The latest retained document queued for this topic (site summaries, rollout status;
    /// read when sent, so bursts coalesce).
    Retained(String),
    /// A command document for one device, signed by the publisher (not retained).
    Command { device: String, command: Vec<u8> },
}

/// The publish queue.
pub struct Outbox {
    fleet: Arc<Fleet>,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Devices whose desired document is queued and not yet taken.
    queued: DashSet<String>,
    /// Retained documents queued and not yet taken, the latest per topic.
    retained: DashMap<String, Vec<u8>>,
}

impl Outbox {
    /// The queue and its receiving end (for the publisher).
    pub fn new(fleet: Arc<Fleet>) -> (Outbox, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Outbox {
                fleet,
                tx,
                queued: DashSet::new(),
                retained: DashMap::new(),
            },
            rx,
        )
    }

    /// Queues a (re)publish of a device's desired document; repeated requests coalesce.
    pub fn queue_desired(&self, id: &str) {
        if self.queued.insert(id.to_owned()) {
            let _ = self.tx.send(Outgoing::Desired(id.to_owned()));
        }
    }

    /// Every device's desired document (after every connect to the broker, which may have
    /// lost all retained messages).
    pub fn queue_all_desired(&self) {
        for id in self.fleet.ids() {
            self.queue_desired(&id);
        }
    }

    /// Called by the publisher when it takes a device off the queue: the document to send
    /// (only the document is copied, not the device's whole view with its events).
    pub fn take_desired(&self, id: &str) -> Option<DesiredState> {
        self.queued.remove(id);
        self.fleet.mark_published(id);
        self.fleet.devices.get(id)?.desired.clone()
    }

    /// Queues a retained document as it is. A newer document for a topic still queued
    /// replaces the older one (a retained topic only ever needs its latest state), so the
    /// queue stays bounded while the broker is unreachable: at most one entry per device and
    /// per retained topic, plus commands.
    pub fn queue_retained(&self, topic: String, payload: Vec<u8>) {
        if self.retained.insert(topic.clone(), payload).is_none() {
            let _ = self.tx.send(Outgoing::Retained(topic));
        }
    }

    /// Called by the publisher when it takes a retained topic off the queue: the latest
    /// document queued for it.
    pub fn take_retained(&self, topic: &str) -> Option<Vec<u8>> {
        self.retained.remove(topic).map(|(_, payload)| payload)
    }

    /// Queues a command for one device (signed when published). False if the publisher is
    /// gone (the controller is shutting down).
    pub fn queue_command(&self, device: &str, command: Vec<u8>) -> bool {
        self.tx
            .send(Outgoing::Command {
                device: device.to_owned(),
                command,
            })
            .is_ok()
    }
}

/// The retained per-site summaries (`edgefleet/v1/fleet/sites/{site}/summary`), as last
/// published.
pub struct SiteSummaries {
    fleet: Arc<Fleet>,
    outbox: Arc<Outbox>,
    /// Without `updated_at`, so unchanged summaries compare equal.
    published: Mutex<BTreeMap<String, SiteSummary>>,
}

impl SiteSummaries {
    pub fn new(fleet: Arc<Fleet>, outbox: Arc<Outbox>) -> Self {
        SiteSummaries {
            fleet,
            outbox,
            published: Mutex::new(BTreeMap::new()),
        }
    }

    /// Forgets what was published (after a reconnect: the broker may hold nothing), so the
    /// next [`SiteSummaries::queue_changed`] sends every summary.
    pub fn reset(&self) {
        self.published.lock().clear();
    }

    /// Queues the site summaries that changed since they were last published.
    pub fn queue_changed(&self) {
        let mut now = sites::summarize(self.fleet.devices.iter());
        let mut published = self.published.lock();
        // A site that lost its last device keeps a retained summary: overwrite it with zeros
        // rather than leave SCADA showing old counts and alarms.
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
            self.outbox
                .queue_retained(topics::site_summary(&site), codec::encode(&doc));
            published.insert(site, summary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_holds_one_entry_per_retained_topic_and_device() {
        let fleet = Arc::new(Fleet::default());
        let (outbox, mut rx) = Outbox::new(fleet);
        for i in 0..1000u32 {
            outbox.queue_retained("a".into(), i.to_string().into_bytes());
            outbox.queue_retained("b".into(), b"b".to_vec());
            outbox.queue_desired("d1");
        }
        let mut queued = Vec::new();
        while let Ok(job) = rx.try_recv() {
            queued.push(format!("{job:?}"));
        }
        assert_eq!(queued.len(), 3, "{queued:?}");
        assert_eq!(outbox.take_retained("a"), Some(b"999".to_vec()));
        assert_eq!(outbox.take_retained("a"), None);
    }
}
