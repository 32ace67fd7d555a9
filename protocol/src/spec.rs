//! The normalized stack/service spec: what the controller derives from a Compose file and what
//! the agent turns into containers. Every field has one canonical form, so the config hash of
//! a service is stable across controller versions and key order.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// One stack (one deployment) on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSpec {
    /// Deployment this stack comes from.
    pub deployment: String,
    /// Revision of that deployment.
    pub deployment_revision: u64,
    /// Named volumes declared at the top level of the Compose file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    pub services: BTreeMap<String, ServiceSpec>,
}

/// One service: the Compose subset edgefleet supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

impl ServiceSpec {
    /// Stable hash of everything that defines the container (hex, 16 chars). Two specs with
    /// the same hash produce the same container; the agent recreates a container only when
    /// this changes.
    pub fn config_hash(&self) -> String {
        // serde_json writes struct fields in declaration order and BTreeMaps sorted: canonical.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// `None` publishes the container port on an ephemeral host port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: PortProtocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub kind: VolumeKind,
    /// Volume name (for `named`) or absolute host path (for `bind`).
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Named,
    Bind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    OnFailure,
    UnlessStopped,
}

impl RestartPolicy {
    /// Compose spelling (`unless-stopped`), also Docker's.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }

    /// Whether a stopped container of this policy means somebody stopped it: with `always`
    /// and `unless-stopped` the engine would otherwise have restarted it.
    pub fn keeps_running(self) -> bool {
        matches!(self, RestartPolicy::Always | RestartPolicy::UnlessStopped)
    }
}

/// Docker healthcheck, durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Docker form: `["CMD", "prog", "arg"]`, `["CMD-SHELL", "cmd"]` or `["NONE"]`.
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_ms: Option<u64>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OrderError {
    #[error("service '{service}' depends on '{missing}', which is not a service of this stack")]
    Unknown { service: String, missing: String },
    #[error("services {0:?} depend on each other in a cycle")]
    Cycle(Vec<String>),
}

impl StackSpec {
    /// Services in start order (dependencies first; ties by name), or why there is none.
    pub fn start_order(&self) -> Result<Vec<&str>, OrderError> {
        for (name, svc) in &self.services {
            if let Some(missing) = svc
                .depends_on
                .iter()
                .find(|d| !self.services.contains_key(*d))
            {
                return Err(OrderError::Unknown {
                    service: name.clone(),
                    missing: missing.clone(),
                });
            }
        }
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut order = Vec::with_capacity(self.services.len());
        while order.len() < self.services.len() {
            let ready: Vec<&str> = self
                .services
                .iter()
                .filter(|(n, s)| {
                    !done.contains(n.as_str())
                        && s.depends_on.iter().all(|d| done.contains(d.as_str()))
                })
                .map(|(n, _)| n.as_str())
                .collect();
            if ready.is_empty() {
                let rest = self
                    .services
                    .keys()
                    .filter(|n| !done.contains(n.as_str()))
                    .cloned()
                    .collect();
                return Err(OrderError::Cycle(rest));
            }
            for n in ready {
                done.insert(n);
                order.push(n);
            }
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn svc(image: &str, deps: &[&str]) -> ServiceSpec {
        ServiceSpec {
            image: image.into(),
            command: None,
            entrypoint: None,
            environment: BTreeMap::new(),
            ports: vec![],
            volumes: vec![],
            restart: RestartPolicy::default(),
            healthcheck: None,
            labels: BTreeMap::new(),
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn stack(services: &[(&str, &[&str])]) -> StackSpec {
        StackSpec {
            deployment: "d".into(),
            deployment_revision: 1,
            volumes: vec![],
            services: services
                .iter()
                .map(|(n, d)| (n.to_string(), svc("img", d)))
                .collect(),
        }
    }

    #[test]
    fn start_order_puts_dependencies_first() {
        let s = stack(&[("web", &["db", "cache"]), ("db", &[]), ("cache", &["db"])]);
        assert_eq!(s.start_order().unwrap(), vec!["db", "cache", "web"]);
    }

    #[test]
    fn start_order_refuses_cycles_and_unknowns() {
        let s = stack(&[("a", &["b"]), ("b", &["a"])]);
        assert!(matches!(s.start_order(), Err(OrderError::Cycle(_))));
        let s = stack(&[("a", &["zz"])]);
        assert!(matches!(s.start_order(), Err(OrderError::Unknown { .. })));
    }

    #[test]
    fn config_hash_changes_with_config_only() {
        let a = svc("app:v1", &[]);
        let mut b = a.clone();
        assert_eq!(a.config_hash(), b.config_hash());
        b.image = "app:v2".into();
        assert_ne!(a.config_hash(), b.config_hash());
        assert_eq!(a.config_hash().len(), 16);
    }
}
