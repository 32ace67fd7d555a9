//! A deployment's revision as the store keeps it: the normalized services, volumes and
//! rollout strategy of its Compose file ([`RevisionSpec`]). Two applies record a new
//! revision only if this (or the target) differs.

use std::collections::BTreeMap;

use edgefleet_protocol::spec::{
    NetworkSpec, ServiceSpec, StackConfig, StackSecret, StackSpec, VolumeOptions,
};
use serde::{Deserialize, Serialize};

use crate::compose::ComposeStack;
use crate::rollout::strategy::Strategy;

/// The stored form of a revision's spec: what "changed" compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSpec {
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_options: BTreeMap<String, VolumeOptions>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NetworkSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Strategy>,
    /// Configs, in clear (configuration, not secrets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, StackConfig>,
    /// Secrets by their keyed digest only; the content is kept sealed apart
    /// (`revision_secrets`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, StackSecret>,
}

impl RevisionSpec {
    pub fn of(stack: &ComposeStack) -> Self {
        RevisionSpec {
            volumes: stack.volumes.clone(),
            volume_options: stack.volume_options.clone(),
            networks: stack.networks.clone(),
            services: stack.services.clone(),
            rollout: stack.rollout.clone(),
            configs: stack.configs.clone(),
            secrets: stack.secret_digests(),
        }
    }

    /// The JSON text the store keeps.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The stack as it goes into a device's desired document.
    pub fn into_stack(self, deployment: &str, revision: u64) -> StackSpec {
        StackSpec {
            deployment: deployment.to_owned(),
            deployment_revision: revision,
            volumes: self.volumes,
            volume_options: self.volume_options,
            networks: self.networks,
            services: self.services,
            configs: self.configs,
            secrets: self.secrets,
        }
    }
}
