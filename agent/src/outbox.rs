//! What the agent tells the fleet, as a trait: events, its status document and sync requests.
//! The MQTT link ([`crate::mqtt::Bus`]) implements it; [`RecordingOutbox`] keeps everything
//! in memory for tests and the simulator. Implementations never block.

use edgefleet_protocol::event::DeviceEvent;
use edgefleet_protocol::status::DeviceStatus;
use edgefleet_protocol::sync::SyncRequest;
use parking_lot::Mutex;

/// Where the reconciler and the desired-state intake send what they have to say.
pub trait Outbox: Send + Sync + 'static {
    /// A non-retained event (best effort; buffered briefly while disconnected).
    fn event(&self, event: DeviceEvent);
    /// The current status document (retained; republished on every reconnect). Returns
    /// false if it could not be handed over (queue full): the caller must offer it again.
    fn status(&self, status: &DeviceStatus) -> bool;
    /// Asks the controller to publish this device's desired document again.
    fn sync_request(&self, request: SyncRequest);
    /// The answer to a controller command (not retained; dropped while disconnected: the
    /// controller's request times out and the user asks again).
    fn reply(&self, reply: &edgefleet_protocol::command::Reply);
}

/// An [`Outbox`] that records everything.
#[derive(Debug, Default)]
pub struct RecordingOutbox {
    events: Mutex<Vec<DeviceEvent>>,
    statuses: Mutex<Vec<DeviceStatus>>,
    syncs: Mutex<Vec<SyncRequest>>,
    replies: Mutex<Vec<edgefleet_protocol::command::Reply>>,
}

impl RecordingOutbox {
    pub fn events(&self) -> Vec<DeviceEvent> {
        self.events.lock().clone()
    }

    pub fn statuses(&self) -> Vec<DeviceStatus> {
        self.statuses.lock().clone()
    }

    pub fn syncs(&self) -> Vec<SyncRequest> {
        self.syncs.lock().clone()
    }

    pub fn replies(&self) -> Vec<edgefleet_protocol::command::Reply> {
        self.replies.lock().clone()
    }

    /// Forgets what was recorded so far.
    pub fn clear(&self) {
        self.events.lock().clear();
        self.statuses.lock().clear();
        self.syncs.lock().clear();
    }
}

impl Outbox for RecordingOutbox {
    fn event(&self, event: DeviceEvent) {
        self.events.lock().push(event);
    }

    fn status(&self, status: &DeviceStatus) -> bool {
        self.statuses.lock().push(status.clone());
        true
    }

    fn sync_request(&self, request: SyncRequest) {
        self.syncs.lock().push(request);
    }

    fn reply(&self, reply: &edgefleet_protocol::command::Reply) {
        self.replies.lock().push(reply.clone());
    }
}
