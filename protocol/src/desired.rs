//! The desired-state document: everything one device should run, as one retained message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::WorkloadPolicy;
use crate::spec::StackSpec;

/// Full desired state of one device (`edgefleet/v1/devices/{device}/desired`, retained).
/// `revision` increases by one each time the content changes; an agent never applies a
/// revision lower than the one it already applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub schema: u32,
    pub device: String,
    pub revision: u64,
    pub issued_at: String,
    /// Stacks by deployment name. An empty map means "run nothing managed".
    pub stacks: BTreeMap<String, StackSpec>,
    /// The workload policy of the device's site when this document was issued: the agent
    /// refuses a document whose new or changed stacks break it. Absent in documents from
    /// controllers before policies (nothing is checked then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<WorkloadPolicy>,
    /// Credentials for the private registries the document's images come from, by registry
    /// host (`registry.plant.local:5000`): a JSON `{"username", "password"}` sealed for this
    /// device ([`crate::sealed::registry_info`]), used by the agent to pull.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, crate::spec::StackSecret>,
}

impl DesiredState {
    pub fn new(device: &str, revision: u64, stacks: BTreeMap<String, StackSpec>) -> Self {
        DesiredState {
            schema: crate::SCHEMA_VERSION,
            device: device.to_owned(),
            revision,
            issued_at: crate::now_rfc3339(),
            stacks,
            policy: None,
            registries: BTreeMap::new(),
        }
    }

    /// The same document carrying `policy`.
    pub fn with_policy(mut self, policy: Option<WorkloadPolicy>) -> Self {
        self.policy = policy;
        self
    }
}
