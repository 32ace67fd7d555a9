//! A rollout as the API, the dashboard and the `…/rollouts/{id}/status` topic show it: the
//! engine's state plus who started it and its counts.

use serde::Serialize;

use super::engine::{Phase, Rollout, RolloutState};

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub id: u64,
    pub created_by: String,
    #[serde(flatten)]
    pub rollout: Rollout,
    pub in_flight: usize,
    pub failures: usize,
    pub succeeded: usize,
}

/// The state's name as the API writes it (`running`, `paused`, `failed`…).
pub fn state_name(s: &RolloutState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch (the clock the rollout engine counts in).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The API's view of a rollout.
pub fn view(id: u64, by: &str, rollout: Rollout) -> RolloutView {
    let succeeded = rollout
        .devices
        .values()
        .filter(|p| matches!(p, Phase::Succeeded))
        .count();
    RolloutView {
        id,
        created_by: by.to_owned(),
        in_flight: rollout.in_flight(),
        failures: rollout.failures(),
        succeeded,
        rollout,
    }
}
