//! A deployment's revision as the store keeps it: the normalized services, volumes and
//! rollout strategy of its Compose file ([`RevisionSpec`]), or — for a file resolved per
//! device — its source and apply variables ([`Template`]). Two applies record a new
//! revision only if this (or the target) differs.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgefleet_protocol::spec::{
    NetworkSpec, ServiceSpec, StackConfig, StackSecret, StackSpec, VolumeOptions,
};
use serde::{Deserialize, Serialize};

use crate::compose::{ComposeError, ComposeStack};
use crate::rollout::strategy::Strategy;
use crate::template::{DeviceTemplate, Template};

/// The stored form of a revision's spec: what "changed" compares.
///
/// A templated revision (`template` set) has no services of its own: each device's are its
/// template resolved with that device's variables, so "changed" compares the source text,
/// the apply variables and the strategy (and, in the store, the target). Revisions stored
/// before templates existed read as untemplated.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
}

/// A revision's stack as the book holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevisionStack {
    /// The same stack on every device (the file refers to apply variables only): one
    /// allocation, shared by every device's desired document.
    Shared(Arc<StackSpec>),
    /// Resolved per device.
    PerDevice(Arc<DeviceTemplate>),
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
            template: None,
        }
    }

    /// A revision resolved per device.
    pub fn templated(template: Template, rollout: Option<Strategy>) -> Self {
        RevisionSpec {
            volumes: Vec::new(),
            volume_options: BTreeMap::new(),
            networks: BTreeMap::new(),
            services: BTreeMap::new(),
            rollout,
            configs: BTreeMap::new(),
            secrets: BTreeMap::new(),
            template: Some(template),
        }
    }

    /// The revision as the book holds it.
    pub fn into_revision_stack(
        self,
        deployment: &str,
        revision: u64,
    ) -> Result<RevisionStack, ComposeError> {
        Ok(match self.template {
            Some(t) => {
                RevisionStack::PerDevice(Arc::new(DeviceTemplate::new(deployment, revision, t)?))
            }
            None => RevisionStack::Shared(Arc::new(self.into_stack(deployment, revision))),
        })
    }

    /// The JSON text the store keeps.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The stack as it goes into a device's desired document (of an untemplated revision).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_stored_before_templates_still_read_and_compare() {
        let old = r#"{"volumes":[],"services":{"app":{"image":"app:1"}}}"#;
        let spec = RevisionSpec::from_json(old).unwrap();
        assert_eq!(spec.template, None);
        assert!(
            !spec.to_json().contains("template"),
            "an untemplated revision is stored as before"
        );
        assert_eq!(RevisionSpec::from_json(&spec.to_json()).unwrap(), spec);
        assert!(matches!(
            spec.into_revision_stack("web", 1),
            Ok(RevisionStack::Shared(s)) if s.services["app"].image == "app:1"
        ));
    }

    #[test]
    fn a_templated_revision_compares_source_and_apply_variables() {
        let spec = |compose: &str, tag: &str| {
            RevisionSpec::templated(
                Template {
                    compose: compose.into(),
                    variables: [("TAG".to_string(), tag.to_string())].into(),
                    files: BTreeMap::new(),
                    secrets: BTreeMap::new(),
                },
                None,
            )
        };
        let file = "services:\n  a:\n    image: \"a:${TAG}-${EDGEFLEET_SITE}\"\n";
        let a = spec(file, "1");
        let back = RevisionSpec::from_json(&a.to_json()).unwrap();
        assert_eq!(back, a, "round trip");
        assert_eq!(spec(file, "1"), a);
        assert_ne!(spec(file, "2"), a, "another apply value");
        assert_ne!(spec(&file.replace("a:", "b:"), "1"), a, "another source");
        assert!(a.services.is_empty());
        let RevisionStack::PerDevice(t) = a.into_revision_stack("web", 4).unwrap() else {
            panic!("a template is resolved per device");
        };
        assert_eq!((t.deployment.as_str(), t.revision), ("web", 4));
    }
}
