//! How a desired service becomes a container on this device: container and volume names, the
//! `io.edgefleet.*` labels that mark what an agent owns, and the runtime-neutral
//! [`ContainerSpec`] handed to a [`crate::runtime::ContainerRuntime`].
//!
//! Several agents may share one Docker engine (tests, demos, a gateway that is also a device):
//! the device label is what keeps each agent to its own containers.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_protocol::spec::{
    HealthCheck, NetworkSpec, PortMapping, RestartPolicy, ServiceExtra, ServiceSpec, StackSpec,
    VolumeKind,
};

/// Device that owns the container or volume.
pub const LABEL_DEVICE: &str = "io.edgefleet.device";
/// Stack (deployment) the container belongs to.
pub const LABEL_STACK: &str = "io.edgefleet.stack";
/// Compose service the container runs.
pub const LABEL_SERVICE: &str = "io.edgefleet.service";
/// [`ServiceSpec::config_hash`] the container was created from.
pub const LABEL_CONFIG_HASH: &str = "io.edgefleet.config-hash";
/// Deployment revision the container was created for (informational).
pub const LABEL_REVISION: &str = "io.edgefleet.deployment-revision";

/// Docker name of a service's container: `ef-<device>-<stack>-<service>-<hash of the three>`.
pub fn container_name(device: &str, stack: &str, service: &str) -> String {
    let h = edgefleet_protocol::ids::names_hash(&[device, stack, service]);
    format!("ef-{device}-{stack}-{service}-{h}")
}

/// Suffix of the temporary name a `start-first` update gives the new container while the old
/// one still holds [`container_name`].
pub const NEXT_SUFFIX: &str = "-next";

/// Temporary Docker name of a service's new container during a `start-first` update:
/// [`container_name`] + [`NEXT_SUFFIX`]. No canonical name ends this way (they end in a hash).
pub fn next_container_name(device: &str, stack: &str, service: &str) -> String {
    format!("{}{NEXT_SUFFIX}", container_name(device, stack, service))
}

/// Docker name of a stack's named volume: `ef-<device>-<stack>-<volume>-<hash of the three>`.
pub fn volume_name(device: &str, stack: &str, volume: &str) -> String {
    let h = edgefleet_protocol::ids::names_hash(&[device, stack, volume]);
    format!("ef-{device}-{stack}-{volume}-{h}")
}

/// Docker name of a stack's network: `ef-<device>-<stack>-<network>-<hash of the three>`
/// (per device, like volumes, so several agents can share one engine). Services find each
/// other by service name and aliases on it, never by this name.
pub fn network_name(device: &str, stack: &str, network: &str) -> String {
    let h = edgefleet_protocol::ids::names_hash(&[device, stack, network]);
    format!("ef-{device}-{stack}-{network}-{h}")
}

/// One network a container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAttach {
    /// Docker network name.
    pub name: String,
    /// DNS names of the container on it: the service name, then the Compose aliases.
    pub aliases: Vec<String>,
    /// How to create it if it is missing (never, when `external`).
    pub spec: NetworkSpec,
    /// The container's fixed addresses on it (Compose `ipv4_address`, `ipv6_address`).
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
}

/// Test helper: drops the `-<hash>` suffix of Docker names in a description
/// (`create ef-dev-app-web-1a2b3c4d` → `create ef-dev-app-web`, `…-1a2b3c4d-next` →
/// `…-next`) so expectations stay readable.
#[cfg(test)]
pub(crate) fn unhash(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let (word, next) = match w.strip_suffix(NEXT_SUFFIX) {
                Some(word) => (word, NEXT_SUFFIX),
                None => (w, ""),
            };
            match word.rsplit_once('-') {
                Some((head, h))
                    if word.starts_with("ef-")
                        && h.len() == 8
                        && h.chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    format!("{head}{next}")
                }
                _ => w.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Named volumes a stack uses: the declared ones plus any a service mounts.
pub fn stack_volumes(stack: &StackSpec) -> BTreeSet<&str> {
    let mut names: BTreeSet<&str> = stack.volumes.iter().map(String::as_str).collect();
    for svc in stack.services.values() {
        for m in svc.volumes.iter().filter(|m| m.kind == VolumeKind::Named) {
            names.insert(m.source.as_str());
        }
    }
    names
}

/// A mount with its source resolved (Docker volume name or host path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: VolumeKind,
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

impl Mount {
    /// Docker `Binds` form: `source:target[:ro]`.
    pub fn bind_string(&self) -> String {
        let ro = if self.read_only { ":ro" } else { "" };
        format!("{}:{}{ro}", self.source, self.target)
    }
}

/// Everything needed to create one container, independent of the engine API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    pub ports: Vec<PortMapping>,
    pub mounts: Vec<Mount>,
    pub restart: RestartPolicy,
    pub healthcheck: Option<HealthCheck>,
    pub labels: BTreeMap<String, String>,
    /// Networks to join, the first one at create. Empty with a `network_mode`.
    pub networks: Vec<NetworkAttach>,
    /// Docker network mode (`host`, `none`, `bridge`, `container:<name>`), if not networks.
    pub network_mode: Option<String>,
    /// The other Compose keys, as the service spec has them.
    pub extra: ServiceExtra,
    /// Configs and secrets, mounted read-only from files the agent writes under the stack
    /// directory before it creates the container.
    pub files: Vec<StackFile>,
}

/// Whether a [`StackFile`] holds a config (in clear in the document) or a secret (sealed
/// for this device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Config,
    Secret,
}

/// One config or secret file of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackFile {
    pub kind: FileKind,
    /// The stack's config or secret.
    pub source: String,
    /// Path under the agent's stack root: `<stack>/.edgefleet/<service>/<configs|secrets>/<n>-<source>`.
    pub path: String,
    /// Absolute path in the container.
    pub target: String,
    /// File mode (Compose's default 0444).
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The config and secret files of service `service` of stack `stack_name`.
pub fn stack_files(stack_name: &str, service: &str, svc: &ServiceSpec) -> Vec<StackFile> {
    let each = |kind: FileKind, dir: &str, mounts: &[edgefleet_protocol::spec::FileMount]| {
        mounts
            .iter()
            .enumerate()
            .map(|(i, m)| StackFile {
                kind,
                source: m.source.clone(),
                path: format!("{stack_name}/.edgefleet/{service}/{dir}/{i}-{}", m.source),
                target: m.target.clone(),
                mode: m.mode.unwrap_or(0o444),
                uid: m.uid,
                gid: m.gid,
            })
            .collect::<Vec<_>>()
    };
    let mut files = each(FileKind::Config, "configs", &svc.extra.configs);
    files.extend(each(FileKind::Secret, "secrets", &svc.extra.secrets));
    files
}

impl ContainerSpec {
    /// The container for service `service` of stack `stack_name` on `device`. The user's labels
    /// come first; the `io.edgefleet.*` labels always win.
    pub fn for_service(
        device: &str,
        stack_name: &str,
        stack: &StackSpec,
        service: &str,
        svc: &ServiceSpec,
    ) -> ContainerSpec {
        let mut labels = svc.labels.clone();
        labels.insert(LABEL_DEVICE.into(), device.into());
        labels.insert(LABEL_STACK.into(), stack_name.into());
        labels.insert(LABEL_SERVICE.into(), service.into());
        labels.insert(LABEL_CONFIG_HASH.into(), svc.config_hash());
        labels.insert(LABEL_REVISION.into(), stack.deployment_revision.to_string());
        let mounts = svc
            .volumes
            .iter()
            .map(|m| Mount {
                kind: m.kind,
                source: match m.kind {
                    VolumeKind::Named => match stack.volume_options.get(&m.source) {
                        Some(o) if o.external => o.name.clone().unwrap_or_else(|| m.source.clone()),
                        _ => volume_name(device, stack_name, &m.source),
                    },
                    VolumeKind::Bind => m.source.clone(),
                    // Resolved under the agent's stack directory by the runtime.
                    VolumeKind::Stack => format!("{stack_name}/{}", m.source),
                },
                target: m.target.clone(),
                read_only: m.read_only,
            })
            .collect();
        ContainerSpec {
            name: ContainerSpec::docker_name(device, stack_name, service, svc),
            image: svc.image.clone(),
            command: svc.command.clone(),
            entrypoint: svc.entrypoint.clone(),
            env: svc
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            ports: svc.ports.clone(),
            mounts,
            restart: svc.restart,
            healthcheck: svc.healthcheck.clone(),
            labels,
            networks: service_networks(device, stack_name, stack, service, svc),
            network_mode: svc.extra.network_mode.as_deref().map(|m| {
                match m.strip_prefix("service:") {
                    Some(other) => format!(
                        "container:{}",
                        stack
                            .services
                            .get(other)
                            .and_then(|o| o.extra.container_name.clone())
                            .unwrap_or_else(|| container_name(device, stack_name, other))
                    ),
                    None => m.to_owned(),
                }
            }),
            extra: svc.extra.clone(),
            files: stack_files(stack_name, service, svc),
        }
    }
}

/// The networks the agent creates for `desired` (every desired service's, not external).
pub fn desired_networks(
    device: &str,
    desired: &edgefleet_protocol::desired::DesiredState,
) -> std::collections::BTreeSet<String> {
    desired
        .stacks
        .iter()
        .flat_map(|(stack_name, stack)| {
            stack.services.iter().flat_map(move |(service, svc)| {
                service_networks(device, stack_name, stack, service, svc)
                    .into_iter()
                    .filter(|n| !n.spec.external)
                    .map(|n| n.name)
            })
        })
        .collect()
}

/// The networks a service joins: the ones it names, or the stack's `default`.
fn service_networks(
    device: &str,
    stack_name: &str,
    stack: &StackSpec,
    service: &str,
    svc: &ServiceSpec,
) -> Vec<NetworkAttach> {
    if svc.extra.network_mode.is_some() {
        return Vec::new();
    }
    let default = [("default".to_owned(), Default::default())].into();
    let wanted = if svc.extra.networks.is_empty() {
        &default
    } else {
        &svc.extra.networks
    };
    wanted
        .iter()
        .map(|(net, how)| {
            let spec = stack.networks.get(net).cloned().unwrap_or_default();
            let name = match (&spec.external, &spec.name) {
                (true, Some(n)) => n.clone(),
                (true, None) => net.clone(),
                _ => network_name(device, stack_name, net),
            };
            let mut aliases = vec![service.to_owned()];
            if let Some(c) = &svc.extra.container_name {
                aliases.push(c.clone());
            }
            aliases.extend(how.aliases.iter().cloned());
            NetworkAttach {
                name,
                aliases,
                spec,
                ipv4_address: how.ipv4_address.clone(),
                ipv6_address: how.ipv6_address.clone(),
            }
        })
        .collect()
}

impl ContainerSpec {
    /// Docker name for a service: its `container_name`, or [`container_name`].
    pub fn docker_name(device: &str, stack: &str, service: &str, svc: &ServiceSpec) -> String {
        svc.extra
            .container_name
            .clone()
            .unwrap_or_else(|| container_name(device, stack, service))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_protocol::spec::VolumeMount;

    #[test]
    fn spec_carries_names_labels_and_resolved_mounts() {
        let mut svc: ServiceSpec = serde_json::from_str(r#"{"image":"app:1"}"#).unwrap();
        svc.labels.insert(LABEL_DEVICE.into(), "spoofed".into());
        svc.labels.insert("team".into(), "ot".into());
        svc.environment.insert("MODE".into(), "fast".into());
        svc.volumes = vec![
            VolumeMount {
                kind: VolumeKind::Named,
                source: "data".into(),
                target: "/data".into(),
                read_only: false,
            },
            VolumeMount {
                kind: VolumeKind::Bind,
                source: "/etc/plant".into(),
                target: "/etc/plant".into(),
                read_only: true,
            },
        ];
        let stack = StackSpec {
            deployment: "hist".into(),
            deployment_revision: 4,
            volumes: vec!["data".into()],
            volume_options: Default::default(),
            networks: Default::default(),
            services: [("db".to_string(), svc.clone())].into(),
            configs: Default::default(),
            secrets: Default::default(),
        };
        let spec = ContainerSpec::for_service("press-07", "hist", &stack, "db", &svc);
        assert_eq!(
            spec.name,
            crate::container::container_name("press-07", "hist", "db")
        );
        assert_eq!(spec.labels[LABEL_DEVICE], "press-07");
        assert_eq!(spec.labels[LABEL_CONFIG_HASH], svc.config_hash());
        assert_eq!(spec.labels[LABEL_REVISION], "4");
        assert_eq!(spec.labels["team"], "ot");
        assert_eq!(spec.env, vec!["MODE=fast"]);
        assert_eq!(
            spec.mounts[0].bind_string(),
            format!("{}:/data", volume_name("press-07", "hist", "data"))
        );
        assert_eq!(spec.mounts[1].bind_string(), "/etc/plant:/etc/plant:ro");
        assert_eq!(
            stack_volumes(&stack).into_iter().collect::<Vec<_>>(),
            vec!["data"]
        );
    }
}
