//! Sync requests: an agent asking the controller to publish its desired document again.

use serde::{Deserialize, Serialize};

/// `edgefleet/v1/devices/{device}/sync`, QoS 1, not retained. Sent when the agent has no
/// desired document some seconds after connecting, so convergence never rests on one retained
/// delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub schema: u32,
    pub device: String,
    /// Newest revision the agent holds (0: none).
    pub have_revision: u64,
    pub reason: String,
}
