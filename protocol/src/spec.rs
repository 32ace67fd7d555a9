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
    /// Options of declared named volumes (driver, driver_opts, external); volumes without
    /// options are absent, so documents from before this field are unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_options: BTreeMap<String, VolumeOptions>,
    /// Networks the stack's services join, by Compose name. `default` (the stack's own
    /// network, as `docker compose` makes one per project) is listed when a service uses it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NetworkSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    /// Compose `configs` the services mount, by name, in clear (configuration, not secrets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, StackConfig>,
    /// Compose `secrets` the services mount, by name: each sealed for this device's enrolled
    /// key ([`crate::sealed`]); never in clear in a document.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, StackSecret>,
}

/// A Compose config's content (UTF-8 text), as the services of a stack mount it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackConfig {
    pub content: String,
}

/// A Compose secret of a stack: a keyed digest of its content (what tells a change, without
/// saying anything of the content), and the content sealed for the device the document is for.
/// The controller's book has `sealed: None`; it seals per device when it issues a document.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSecret {
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<crate::sealed::Sealed>,
}

impl std::fmt::Debug for StackSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StackSecret({}, {:?})", self.digest, self.sealed)
    }
}

/// A config or secret a service mounts as a file (Compose `configs:` / `secrets:` of a
/// service, short or long form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMount {
    /// The stack's config or secret.
    pub source: String,
    /// Absolute path in the container (Compose's defaults: `/<source>` for a config,
    /// `/run/secrets/<source>` for a secret).
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// File mode (Compose's default 0444).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Digest of the content (keyed for a secret): a changed content changes the service's
    /// config hash, so the container is recreated with the new file.
    pub digest: String,
}

/// The registry host an image is pulled from, as Docker reads a reference: the first part
/// when it has a `.` or `:` or is `localhost`, else Docker Hub (`docker.io`).
pub fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// A top-level named volume's options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// The volume exists on the device already under `name` (or its key): never created or
    /// removed by the agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// The Docker name of an external volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A network of a stack (Compose top-level `networks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Docker network driver (`bridge` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// No route outside the network.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// The network exists on the device already under `name` (or its key): joined, never
    /// created or removed by the agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// The Docker name of an external network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Fixed address pools (Compose `ipam.config`), for Docker's default IPAM driver. The
    /// network exists once per device and stack, so a fixed subnet never meets another
    /// device's; one that overlaps a network already on the device is the engine's refusal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipam: Vec<IpamPool>,
}

/// One address pool of a network (Compose `ipam.config[]`); addresses in Docker's text form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPool {
    /// `172.20.0.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Part of the subnet containers get addresses from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Addresses the driver must not hand out, by host name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// How a service joins one network of its stack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNetwork {
    /// Extra DNS names on that network (the service name always resolves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Fixed address on that network (it needs an `ipam` subnet). Such a service is replaced
    /// stop-first: two containers cannot hold one address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
}

/// Compose's `depends_on` conditions beyond "started".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependsCondition {
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

/// One `ulimits` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

/// Container logging (`logging`). The agent applies a size-capped `json-file` rotation when a
/// service sets none, so a chatty container cannot fill a device's flash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logging {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
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
    /// How the agent replaces this service's container when its config changes. Omitted when
    /// `stop-first`, so documents and hashes from before this field are unchanged.
    #[serde(default, skip_serializing_if = "UpdateOrder::is_default")]
    pub update_order: UpdateOrder,
    /// Compose keys beyond the original subset. Flattened and omitted when unset, so the
    /// documents (and config hashes) of services that use none of them are unchanged.
    #[serde(flatten, default)]
    pub extra: ServiceExtra,
}

/// The Compose service keys added with the Compose-spec parser; every field is omitted from
/// the document when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceExtra {
    /// Docker name of the container (`container_name`). Such a service is always replaced
    /// stop-first: two containers cannot hold one name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Container ports exposed on the stack's networks only (`80/tcp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// `host`, `none` or `service:<name>`; absent: the stack's networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Networks of the stack this service joins; empty (and no `network_mode`): `default`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// Docker form `HOST:CONTAINER[:rwm]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Device cgroup rules (`c 188:* rw`): devices of these numbers the container may use,
    /// including ones plugged in after it started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// `host:ip` entries for /etc/hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// tmpfs mount points (`/run` or `/run:size=64m`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// Memory limit in bytes (`mem_limit` or `deploy.resources.limits.memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU limit in billionths of a CPU (`cpus` or `deploy.resources.limits.cpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
    /// `os/arch[/variant]` the image must be pulled for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Dependencies that must be healthy or completed (not just started) first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_conditions: BTreeMap<String, DependsCondition>,
    /// The stack's configs this service mounts as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileMount>,
    /// The stack's secrets this service mounts as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileMount>,
}

impl ServiceSpec {
    /// Stable hash of everything that defines the container (hex, 16 chars). Two specs with
    /// the same hash produce the same container; the agent recreates a container only when
    /// this changes. `update_order` says how to replace a container, not what it is, so it
    /// does not count: changing only the order recreates nothing.
    pub fn config_hash(&self) -> String {
        let canonical;
        let spec = if self.update_order.is_default() {
            self
        } else {
            canonical = ServiceSpec {
                update_order: UpdateOrder::default(),
                ..self.clone()
            };
            &canonical
        };
        // serde_json writes struct fields in declaration order and BTreeMaps sorted: canonical.
        let bytes = serde_json::to_vec(spec).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        hex::encode(&digest[..8])
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
    /// Volume name (for `named`), absolute host path (for `bind`) or path relative to the
    /// stack directory without `./` (for `stack`).
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
    /// A relative bind mount (`./config:/etc/app`): `source` is a relative path inside the
    /// stack's own directory on the device (`<agent data dir>/stacks/<stack>/`).
    Stack,
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

/// Compose's `deploy.update_config.order`: how a container is replaced when its config
/// changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop and remove the old container, then create and start the new one (a short outage;
    /// the only order that works when the container binds a fixed host port).
    #[default]
    StopFirst,
    /// Start the new container next to the old one, wait until it runs (and is healthy, if it
    /// has a healthcheck), then stop the old one. The old one keeps running if the new one
    /// fails.
    StartFirst,
}

impl UpdateOrder {
    /// Compose spelling (`start-first`).
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
    }

    pub fn is_default(&self) -> bool {
        *self == UpdateOrder::StopFirst
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
            update_order: UpdateOrder::default(),
            extra: ServiceExtra::default(),
        }
    }

    fn stack(services: &[(&str, &[&str])]) -> StackSpec {
        StackSpec {
            deployment: "d".into(),
            deployment_revision: 1,
            volumes: vec![],
            volume_options: BTreeMap::new(),
            networks: BTreeMap::new(),
            services: services
                .iter()
                .map(|(n, d)| (n.to_string(), svc("img", d)))
                .collect(),
            configs: Default::default(),
            secrets: Default::default(),
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

    #[test]
    fn update_order_is_omitted_by_default_and_not_hashed() {
        let stop_first = svc("app:v1", &[]);
        let json = serde_json::to_value(&stop_first).unwrap();
        assert!(json.get("update_order").is_none(), "{json}");
        // The hash of a document from before the field existed (sha256 of
        // `{"image":"app:v1","restart":"no"}`, first 8 bytes).
        let old: ServiceSpec = serde_json::from_str(r#"{"image":"app:v1"}"#).unwrap();
        assert_eq!(old, stop_first);
        assert_eq!(old.config_hash(), stop_first.config_hash());
        assert_eq!(stop_first.config_hash(), "58749a4682907630");

        let start_first: ServiceSpec =
            serde_json::from_str(r#"{"image":"app:v1","update_order":"start-first"}"#).unwrap();
        assert_eq!(start_first.update_order, UpdateOrder::StartFirst);
        assert_eq!(
            serde_json::to_value(&start_first).unwrap()["update_order"],
            "start-first"
        );
        assert_eq!(start_first.config_hash(), stop_first.config_hash());
        assert!(
            serde_json::from_str::<ServiceSpec>(r#"{"image":"a","update_order":"rolling"}"#)
                .is_err()
        );
        assert_eq!(UpdateOrder::StartFirst.as_str(), "start-first");
    }
}
