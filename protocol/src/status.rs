//! The device status document an agent reports (retained), the reported half of the shadow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `edgefleet/v1/devices/{device}/status`, retained, published by the agent on every change
/// and on every (re)connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub schema: u32,
    pub device: String,
    /// Revision of the last desired document the agent fully applied (0: none yet).
    pub observed_revision: u64,
    /// Revision of the newest desired document the agent has received (0: none yet).
    pub desired_revision: u64,
    pub state: ConvergenceState,
    pub stacks: BTreeMap<String, StackStatus>,
    /// Last device-level error (e.g. "docker engine unreachable").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub agent_version: String,
    pub updated_at: String,
    /// The device's engine platform in OCI form (`linux/amd64`, `linux/arm64`,
    /// `linux/arm/v7`), from its `info`; absent until the engine answered once (and from
    /// agents older than the field). `apply` refuses a service whose `platform` it cannot run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// Where the agent is with respect to its desired revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvergenceState {
    /// No desired document received yet.
    Idle,
    /// Working towards `desired_revision`.
    Converging,
    /// Every service of `observed_revision` matches Docker.
    Converged,
    /// The last attempt failed; see `last_error` and the services; the agent keeps retrying.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackStatus {
    pub deployment_revision: u64,
    pub services: BTreeMap<String, ServiceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Image reference as desired (`registry/app:1.4`).
    pub image: String,
    /// Image id Docker resolved it to (`sha256:…`), when the container exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    pub state: ContainerState,
    pub health: Health,
    pub restart_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Config hash of the running container (matches the desired spec when converged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// Docker's container state, plus `missing` for a desired container that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Missing,
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
    Removing,
}

impl ContainerState {
    /// Maps Docker's `State.Status` string; unknown values read as `dead` (not running).
    pub fn from_docker(s: &str) -> Self {
        match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "restarting" => ContainerState::Restarting,
            "paused" => ContainerState::Paused,
            "exited" => ContainerState::Exited,
            "removing" => ContainerState::Removing,
            _ => ContainerState::Dead,
        }
    }
}

/// Container health as Docker reports it; `none` when the service has no healthcheck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn from_docker(s: &str) -> Self {
        match s {
            "starting" => Health::Starting,
            "healthy" => Health::Healthy,
            "unhealthy" => Health::Unhealthy,
            _ => Health::None,
        }
    }
}
