//! Presence of agents and of the controller (retained, with a last will).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    Online,
    Offline,
}

/// `edgefleet/v1/devices/{device}/presence`, retained. Published `online` on every connect;
/// the same document with `offline` is the connection's last will. `session` increases with
/// every connection of the device, so a late will of an older connection is never mistaken for
/// the current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePresence {
    pub schema: u32,
    pub device: String,
    pub state: PresenceState,
    pub session: u64,
    /// Targeting labels (`site`, `area`, `line`, …) the agent was started with.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    /// When this connection was made.
    pub since: String,
}

/// `edgefleet/v1/controller/presence`, retained, with an `offline` last will. Agents republish
/// their status and presence whenever they see a new `session` online (a "rebirth"), so a
/// controller that restarts learns the whole fleet without relying on retained replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerPresence {
    pub schema: u32,
    pub state: PresenceState,
    pub session: u64,
    pub version: String,
    pub since: String,
}
