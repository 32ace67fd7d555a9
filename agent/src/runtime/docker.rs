//! [`ContainerRuntime`] on the local Docker engine, through bollard.
//!
//! The client negotiates the API version with the engine on first use (the engine may be
//! older than bollard's default, e.g. 20.10 speaks 1.41) and again after a failed
//! negotiation, so an agent started before dockerd simply reports "engine unreachable" until
//! the engine comes up.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, DeviceMapping, EndpointIpamConfig,
    EndpointSettings, HealthConfig, HostConfig, HostConfigLogConfig, Ipam, IpamConfig,
    NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig, PortBinding, ResourcesUlimits,
    RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use edgefleet_protocol::spec::RestartPolicy;
use edgefleet_protocol::status::{ContainerState, Health};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use super::{ContainerInfo, ContainerRuntime, EngineEvents, RuntimeError};
use crate::container::{ContainerSpec, LABEL_DEVICE, LABEL_STACK, NetworkAttach};
use edgefleet_protocol::spec::VolumeKind;

/// The default log rotation (`json-file`, 3 files of 10 MiB; the figure workload policies
/// count with): a chatty container cannot fill a device's flash. A service's own `logging`
/// replaces it.
pub use edgefleet_protocol::policy::{DEFAULT_LOG_MAX_FILE, DEFAULT_LOG_MAX_SIZE};

/// The Docker engine behind the local socket (`DOCKER_HOST` is honoured).
pub struct DockerRuntime {
    docker: Docker,
    negotiated: OnceCell<Docker>,
    /// Where relative bind mounts live: `<root>/<stack>/<path>` (the agent passes
    /// `<data dir>/stacks`).
    stack_root: Option<PathBuf>,
}

impl DockerRuntime {
    /// Prepares a client for the local engine. Does no I/O: the engine may still be down.
    pub fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        Ok(DockerRuntime {
            docker,
            negotiated: OnceCell::new(),
            stack_root: None,
        })
    }

    /// Sets the directory under which each stack's relative bind mounts are created.
    pub fn with_stack_root(mut self, root: PathBuf) -> Self {
        self.stack_root = Some(root);
        self
    }

    /// The stack root, or the error naming what needs it (`what`) for `target`.
    fn stack_root(&self, what: &str, target: &str) -> Result<&std::path::Path, RuntimeError> {
        self.stack_root
            .as_deref()
            .ok_or_else(|| RuntimeError::Engine {
                op: "create container",
                target: target.to_owned(),
                message: format!("this agent has no stack directory for {what}"),
            })
    }

    /// Resolves `stack`-kind mounts to host paths under the stack root, creating the
    /// directories (mode 0755, owned by the agent's user) the first time.
    fn resolve_stack_mounts(&self, spec: &ContainerSpec) -> Result<ContainerSpec, RuntimeError> {
        let mut spec = spec.clone();
        for m in spec
            .mounts
            .iter_mut()
            .filter(|m| m.kind == VolumeKind::Stack)
        {
            let root = self.stack_root("relative bind mounts", &spec.name)?;
            let path = root.join(&m.source);
            std::fs::create_dir_all(&path).map_err(|e| RuntimeError::Engine {
                op: "create the stack directory",
                target: path.display().to_string(),
                message: format!("{e}: check the agent's data dir is writable"),
            })?;
            m.source = path.display().to_string();
            m.kind = VolumeKind::Bind;
        }
        if !spec.files.is_empty() {
            let root = self.stack_root("configs and secrets", &spec.name)?;
            for f in &mut spec.files {
                f.path = root.join(&f.path).display().to_string();
            }
        }
        Ok(spec)
    }

    /// Creates a stack network if it is missing; refuses one of the same name that this
    /// device's stack does not own (nothing is changed then).
    async fn ensure_network(
        &self,
        docker: &Docker,
        net: &NetworkAttach,
        spec: &ContainerSpec,
    ) -> Result<(), RuntimeError> {
        let device = spec.labels.get(LABEL_DEVICE).cloned().unwrap_or_default();
        let stack = spec.labels.get(LABEL_STACK).cloned().unwrap_or_default();
        match docker.inspect_network(&net.name, None).await {
            Ok(found) => {
                if net.spec.external {
                    return Ok(());
                }
                let labels = found.labels.unwrap_or_default();
                if labels.get(LABEL_DEVICE) != Some(&device) || labels.get(LABEL_STACK) != Some(&stack)
                {
                    return Err(RuntimeError::Engine {
                        op: "create network",
                        target: net.name.clone(),
                        message: format!(
                            "a network of that name exists and does not belong to stack '{stack}' of this device: remove or rename it"
                        ),
                    });
                }
                Ok(())
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) if net.spec.external => Err(RuntimeError::Engine {
                op: "join network",
                target: net.name.clone(),
                message: "the stack declares it external, but it does not exist on this device: create it (docker network create) first".into(),
            }),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let request = NetworkCreateRequest {
                    name: net.name.clone(),
                    driver: Some(net.spec.driver.clone().unwrap_or_else(|| "bridge".into())),
                    internal: Some(net.spec.internal),
                    options: (!net.spec.driver_opts.is_empty()).then(|| {
                        net.spec
                            .driver_opts
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    }),
                    labels: Some(HashMap::from([
                        (LABEL_DEVICE.to_owned(), device),
                        (LABEL_STACK.to_owned(), stack),
                    ])),
                    ipam: (!net.spec.ipam.is_empty()).then(|| Ipam {
                        driver: Some("default".into()),
                        config: Some(
                            net.spec
                                .ipam
                                .iter()
                                .map(|p| IpamConfig {
                                    subnet: p.subnet.clone(),
                                    ip_range: p.ip_range.clone(),
                                    gateway: p.gateway.clone(),
                                    auxiliary_addresses: (!p.aux_addresses.is_empty()).then(
                                        || {
                                            p.aux_addresses
                                                .iter()
                                                .map(|(k, v)| (k.clone(), v.clone()))
                                                .collect()
                                        },
                                    ),
                                })
                                .collect(),
                        ),
                        options: None,
                    }),
                    ..Default::default()
                };
                docker
                    .create_network(request)
                    .await
                    .map_err(|e| unreachable_or(e, "create network", &net.name))?;
                Ok(())
            }
            Err(e) => Err(unreachable_or(e, "inspect network", &net.name)),
        }
    }

    async fn client(&self) -> Result<&Docker, RuntimeError> {
        self.negotiated
            .get_or_try_init(|| async {
                self.docker
                    .clone()
                    .negotiate_version()
                    .await
                    .map_err(|e| RuntimeError::Unreachable(e.to_string()))
            })
            .await
    }
}

/// Whether a bollard error means the engine could not be reached at all.
fn is_connection_error(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::IOError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::SocketNotFoundError(_)
            | BollardError::RequestTimeoutError
            | BollardError::APIVersionParseError {}
    )
}

fn unreachable_or(e: BollardError, op: &'static str, target: &str) -> RuntimeError {
    if is_connection_error(&e) {
        return RuntimeError::Unreachable(e.to_string());
    }
    let message = match e {
        BollardError::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    };
    RuntimeError::Engine {
        op,
        target: target.to_owned(),
        message,
    }
}

/// Maps an error of an operation on an existing container.
fn container_err(e: BollardError, op: &'static str, target: &str) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => RuntimeError::NotFound {
            what: "container",
            target: target.to_owned(),
        },
        other => unreachable_or(other, op, target),
    }
}

/// Splits `repo[:tag]` for the pull API, which pulls *every* tag when none is given.
fn pull_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        (image, None)
    } else {
        (image, Some("latest"))
    }
}

/// Writes one config or secret under the stack root: the directories private to the
/// agent (0700), the file atomically with its mode, then its owner when the mount sets one.
fn write_stack_file(
    root: &std::path::Path,
    file: &crate::container::StackFile,
    content: &[u8],
) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let path = root.join(&file.path);
    let fail = |op: &'static str, e: std::io::Error| RuntimeError::Engine {
        op,
        target: path.display().to_string(),
        message: format!("{e}: check the agent's data dir is writable"),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("create the stack's file directory", e))?;
        // Only the agent walks into .edgefleet/ (secrets sit there); Docker's daemon runs
        // as root and mounts the file itself.
        let private = root
            .join(file.path.split('/').next().unwrap_or_default())
            .join(".edgefleet");
        let _ = std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700));
    }
    let mode = if file.mode & 0o200 != 0 {
        file.mode & !0o222
    } else {
        file.mode
    };
    edgefleet_files::write_atomic(&path, content, edgefleet_files::Mode::Custom(mode))
        .map_err(|e| fail("write a config or secret", e))?;
    if file.uid.is_some() || file.gid.is_some() {
        std::os::unix::fs::chown(&path, file.uid, file.gid).map_err(|e| {
            fail(
                "set the owner of a config or secret (uid/gid need the agent to run as root)",
                e,
            )
        })?;
    }
    Ok(())
}

fn nanos(ms: Option<u64>) -> Option<i64> {
    ms.map(|ms| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX))
}

/// The Docker create request for a [`ContainerSpec`].
pub fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.container_port, p.protocol.as_str());
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_default()
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
            });
    }
    let restart = match spec.restart {
        RestartPolicy::No => RestartPolicyNameEnum::NO,
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
    };
    let mut binds: Vec<String> = spec.mounts.iter().map(|m| m.bind_string()).collect();
    binds.extend(
        spec.files
            .iter()
            .map(|f| format!("{}:{}:ro", f.path, f.target)),
    );
    let x = &spec.extra;
    for e in &x.expose {
        if !exposed.contains(e) {
            exposed.push(e.clone());
        }
    }
    let log_config = match &x.logging {
        Some(l) => HostConfigLogConfig {
            typ: l.driver.clone(),
            config: (!l.options.is_empty()).then(|| {
                l.options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
        },
        None => HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), DEFAULT_LOG_MAX_SIZE.to_owned()),
                ("max-file".to_owned(), DEFAULT_LOG_MAX_FILE.to_owned()),
            ])),
        },
    };
    let devices: Vec<DeviceMapping> = x
        .devices
        .iter()
        .map(|d| {
            let mut parts = d.splitn(3, ':');
            let host = parts.next().unwrap_or_default().to_owned();
            let container = parts
                .next()
                .map(str::to_owned)
                .unwrap_or_else(|| host.clone());
            DeviceMapping {
                path_on_host: Some(host),
                path_in_container: Some(container),
                cgroup_permissions: Some(parts.next().unwrap_or("rwm").to_owned()),
            }
        })
        .collect();
    let tmpfs: HashMap<String, String> = x
        .tmpfs
        .iter()
        .map(|t| match t.split_once(':') {
            Some((path, opts)) => (path.to_owned(), opts.to_owned()),
            None => (t.clone(), String::new()),
        })
        .collect();
    let network_mode = spec
        .network_mode
        .clone()
        .or_else(|| spec.networks.first().map(|n| n.name.clone()));
    let networking_config = spec.networks.first().map(|n| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(n.name.clone(), endpoint(n))])),
    });
    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    ContainerCreateBody {
        hostname: x.hostname.clone(),
        user: x.user.clone(),
        working_dir: x.working_dir.clone(),
        stop_signal: x.stop_signal.clone(),
        stop_timeout: x
            .stop_grace_period_ms
            .map(|ms| i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)),
        tty: x.tty.then_some(true),
        open_stdin: x.stdin_open.then_some(true),
        networking_config,
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        labels: Some(
            spec.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        healthcheck: spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: nanos(h.interval_ms),
            timeout: nanos(h.timeout_ms),
            retries: h.retries.map(i64::from),
            start_period: nanos(h.start_period_ms),
            start_interval: None,
        }),
        host_config: Some(HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            network_mode,
            privileged: x.privileged.then_some(true),
            cap_add: some_vec(&x.cap_add),
            cap_drop: some_vec(&x.cap_drop),
            security_opt: some_vec(&x.security_opt),
            extra_hosts: some_vec(&x.extra_hosts),
            dns: some_vec(&x.dns),
            sysctls: (!x.sysctls.is_empty()).then(|| {
                x.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            ulimits: (!x.ulimits.is_empty()).then(|| {
                x.ulimits
                    .iter()
                    .map(|(name, u)| ResourcesUlimits {
                        name: Some(name.clone()),
                        soft: Some(u.soft),
                        hard: Some(u.hard),
                    })
                    .collect()
            }),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            readonly_rootfs: x.read_only.then_some(true),
            shm_size: x.shm_size.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            init: x.init.then_some(true),
            log_config: Some(log_config),
            memory: x.memory_bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            nano_cpus: x.nano_cpus.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            devices: (!devices.is_empty()).then_some(devices),
            device_cgroup_rules: some_vec(&x.device_cgroup_rules),
            restart_policy: Some(DockerRestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Docker's `OSType` and `Architecture` (`linux`, `x86_64` / `aarch64` / `armv7l`, as
/// `uname -m` says) in OCI form: `linux/amd64`, `linux/arm64`, `linux/arm/v7`.
pub fn engine_platform(os_type: &str, architecture: &str) -> Option<String> {
    let os = os_type.trim().to_ascii_lowercase();
    let (arch, variant) = match architecture.trim().to_ascii_lowercase().as_str() {
        "" => return None,
        "x86_64" | "amd64" => ("amd64".to_owned(), None),
        "aarch64" | "arm64" => ("arm64".to_owned(), None),
        "i386" | "i686" => ("386".to_owned(), None),
        "armv5l" | "armv5tel" | "armv5tejl" => ("arm".to_owned(), Some("v5")),
        "armv6l" => ("arm".to_owned(), Some("v6")),
        "armv7l" | "armhf" => ("arm".to_owned(), Some("v7")),
        "armv8l" => ("arm".to_owned(), Some("v8")),
        other => (other.to_owned(), None),
    };
    if os.is_empty() {
        return None;
    }
    Some(match variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

/// How a container joins one network: its DNS names and fixed addresses.
fn endpoint(net: &NetworkAttach) -> EndpointSettings {
    let fixed = net.ipv4_address.is_some() || net.ipv6_address.is_some();
    EndpointSettings {
        aliases: Some(net.aliases.clone()),
        ipam_config: fixed.then(|| EndpointIpamConfig {
            ipv4_address: net.ipv4_address.clone(),
            ipv6_address: net.ipv6_address.clone(),
            link_local_ips: None,
        }),
        ..Default::default()
    }
}

fn container_info(c: ContainerInspectResponse) -> Option<ContainerInfo> {
    let state = c.state.as_ref();
    let config = c.config.as_ref();
    Some(ContainerInfo {
        id: c.id.clone()?,
        name: c
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image: config.and_then(|k| k.image.clone()).unwrap_or_default(),
        image_id: c.image.clone(),
        state: state
            .and_then(|s| s.status)
            .map(|s| ContainerState::from_docker(s.as_ref()))
            .unwrap_or(ContainerState::Dead),
        health: state
            .and_then(|s| s.health.as_ref())
            .and_then(|h| h.status)
            .map(|s| Health::from_docker(s.as_ref()))
            .unwrap_or(Health::None),
        restart_count: c
            .restart_count
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        labels: config
            .and_then(|k| k.labels.as_ref())
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    })
}

/// Engine events that can change what a pass observes.
const STATE_EVENTS: [&str; 11] = [
    "create",
    "start",
    "restart",
    "die",
    "stop",
    "kill",
    "destroy",
    "pause",
    "unpause",
    "rename",
    "health_status",
];

fn device_filter(device: &str) -> HashMap<&'static str, Vec<String>> {
    HashMap::from([("label", vec![format!("{LABEL_DEVICE}={device}")])])
}

impl ContainerRuntime for DockerRuntime {
    async fn platform(&self) -> Result<Option<String>, RuntimeError> {
        let docker = self.client().await?;
        let info = docker
            .info()
            .await
            .map_err(|e| unreachable_or(e, "read engine info", "docker"))?;
        Ok(engine_platform(
            info.os_type.as_deref().unwrap_or("linux"),
            info.architecture.as_deref().unwrap_or_default(),
        ))
    }

    async fn list_containers(&self, device: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let docker = self.client().await?;
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&device_filter(device))
            .build();
        let summaries = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| unreachable_or(e, "list containers of device", device))?;
        let mut out = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|s| s.id) {
            match docker.inspect_container(&id, None).await {
                Ok(c) => out.extend(container_info(c)),
                // Removed between list and inspect: it is gone, which is what we would see.
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(unreachable_or(e, "inspect container", &id)),
            }
        }
        // A container relabelled behind our back must not slip through the filter.
        out.retain(|c| c.labels.get(LABEL_DEVICE).map(String::as_str) == Some(device));
        Ok(out)
    }

    async fn list_volumes(&self, device: &str) -> Result<BTreeSet<String>, RuntimeError> {
        let docker = self.client().await?;
        let options = ListVolumesOptionsBuilder::default()
            .filters(&device_filter(device))
            .build();
        let list = docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| unreachable_or(e, "list volumes of device", device))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    async fn list_networks(&self, device: &str) -> Result<BTreeSet<String>, RuntimeError> {
        let docker = self.client().await?;
        let options = ListNetworksOptionsBuilder::default()
            .filters(&device_filter(device))
            .build();
        let list = docker
            .list_networks(Some(options))
            .await
            .map_err(|e| unreachable_or(e, "list networks of device", device))?;
        Ok(list
            .into_iter()
            // Relabelled behind our back: not ours to remove.
            .filter(|n| {
                n.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_DEVICE))
                    .is_some_and(|d| d == device)
            })
            .filter_map(|n| n.name)
            .collect())
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        match docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(unreachable_or(e, "remove network", name)),
        }
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        let docker = self.client().await?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(unreachable_or(e, "inspect image", image)),
        }
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        self.pull_with(image, None).await
    }

    async fn write_file(
        &self,
        file: &crate::container::StackFile,
        content: &[u8],
    ) -> Result<(), RuntimeError> {
        let root = self
            .stack_root("configs and secrets", &file.path)?
            .to_path_buf();
        let (file, content) = (file.clone(), content.to_vec());
        tokio::task::spawn_blocking(move || write_stack_file(&root, &file, &content))
            .await
            .map_err(|e| RuntimeError::Engine {
                op: "write a config or secret",
                target: String::new(),
                message: e.to_string(),
            })?
    }

    async fn prune_files(&self, keep: &BTreeSet<String>) -> Result<(), RuntimeError> {
        let Some(root) = self.stack_root.clone() else {
            return Ok(());
        };
        let keep = keep.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&root) else {
                return Ok(());
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let files = e.path().join(".edgefleet");
                if !keep.contains(&name) && files.is_dir() {
                    std::fs::remove_dir_all(&files).map_err(|err| RuntimeError::Engine {
                        op: "remove a stack's config and secret files",
                        target: files.display().to_string(),
                        message: err.to_string(),
                    })?;
                    tracing::info!(stack = %name, "removed the config and secret files of a stack no longer desired");
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| RuntimeError::Engine {
            op: "remove a stack's config and secret files",
            target: String::new(),
            message: e.to_string(),
        })?
    }

    async fn pull_with(
        &self,
        image: &str,
        auth: Option<&super::RegistryAuth>,
    ) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let (from_image, tag) = pull_reference(image);
        let mut options = CreateImageOptionsBuilder::default().from_image(from_image);
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let pull_err = |e: BollardError| {
            let reason = match e {
                BollardError::DockerResponseServerError { message, .. } => message,
                BollardError::DockerStreamError { error } => error,
                other => other.to_string(),
            };
            RuntimeError::Pull {
                image: image.to_owned(),
                reason,
            }
        };
        let credentials = auth.map(|a| bollard::auth::DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(edgefleet_protocol::spec::registry_host(image).to_owned()),
            ..Default::default()
        });
        docker
            .create_image(Some(options.build()), None, credentials)
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(pull_err)
    }

    async fn ensure_volume(
        &self,
        name: &str,
        device: &str,
        options: &edgefleet_protocol::spec::VolumeOptions,
    ) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            driver: options.driver.clone(),
            driver_opts: (!options.driver_opts.is_empty()).then(|| {
                options
                    .driver_opts
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            labels: Some(HashMap::from([(
                LABEL_DEVICE.to_owned(),
                device.to_owned(),
            )])),
            ..Default::default()
        };
        docker
            .create_volume(request)
            .await
            .map_err(|e| unreachable_or(e, "create volume", name))?;
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let docker = self.client().await?;
        let spec = &self.resolve_stack_mounts(spec)?;
        for net in &spec.networks {
            self.ensure_network(docker, net, spec).await?;
        }
        let mut options = CreateContainerOptionsBuilder::default().name(&spec.name);
        if let Some(p) = &spec.extra.platform {
            options = options.platform(p);
        }
        match docker
            .create_container(Some(options.build()), create_body(spec))
            .await
        {
            Ok(created) => {
                // The first network is joined at create; the others now.
                for net in spec.networks.iter().skip(1) {
                    let request = NetworkConnectRequest {
                        container: created.id.clone(),
                        endpoint_config: Some(endpoint(net)),
                    };
                    if let Err(e) = docker.connect_network(&net.name, request).await {
                        let _ = docker.remove_container(&created.id, None).await;
                        return Err(unreachable_or(e, "connect to network", &net.name));
                    }
                }
                Ok(created.id)
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(RuntimeError::NameConflict {
                name: spec.name.clone(),
            }),
            Err(e) => Err(unreachable_or(e, "create container", &spec.name)),
        }
    }

    async fn start(&self, container: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        docker
            .start_container(container, None)
            .await
            .map_err(|e| container_err(e, "start", container))
    }

    async fn stop(&self, container: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let secs = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        docker
            .stop_container(container, Some(options))
            .await
            .map_err(|e| container_err(e, "stop", container))
    }

    async fn remove(&self, container: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let options = RemoveContainerOptionsBuilder::default()
            .force(false)
            .build();
        docker
            .remove_container(container, Some(options))
            .await
            .map_err(|e| container_err(e, "remove", container))
    }

    async fn inspect(&self, container: &str) -> Result<ContainerInfo, RuntimeError> {
        let docker = self.client().await?;
        let c = docker
            .inspect_container(container, None)
            .await
            .map_err(|e| container_err(e, "inspect", container))?;
        container_info(c).ok_or_else(|| RuntimeError::NotFound {
            what: "container",
            target: container.to_owned(),
        })
    }

    async fn logs(&self, container: &str, tail: u32) -> Result<Vec<String>, RuntimeError> {
        let docker = self.client().await?;
        let options = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        let chunks: Vec<_> = docker
            .logs(container, Some(options))
            .try_collect()
            .await
            .map_err(|e| container_err(e, "read the logs of", container))?;
        let text: String = chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.clone().into_bytes()).into_owned())
            .collect();
        Ok(text.lines().map(str::to_owned).collect())
    }

    async fn rename(&self, container: &str, new_name: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let options = RenameContainerOptionsBuilder::default()
            .name(new_name)
            .build();
        match docker.rename_container(container, options).await {
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(RuntimeError::NameConflict {
                name: new_name.to_owned(),
            }),
            other => other.map_err(|e| container_err(e, "rename", container)),
        }
    }

    async fn events(&self, device: &str) -> Result<EngineEvents, RuntimeError> {
        let docker = self.client().await?;
        let mut filters = device_filter(device);
        filters.insert("type", vec!["container".to_owned()]);
        // Not exec_* (every healthcheck run is one) nor attach/resize/top: they change nothing.
        filters.insert(
            "event",
            STATE_EVENTS.iter().map(|e| (*e).to_owned()).collect(),
        );
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let device = device.to_owned();
        Ok(docker
            .events(Some(options))
            .filter_map(move |item| {
                let wake = match item {
                    // `health_status: healthy` → `health_status`.
                    Ok(msg) => msg
                        .action
                        .as_deref()
                        .map(|a| a.split(':').next().unwrap_or(a))
                        .is_some_and(|a| STATE_EVENTS.contains(&a))
                        .then_some(Ok(())),
                    Err(e) => Some(Err(unreachable_or(e, "watch events of", &device))),
                };
                std::future::ready(wake)
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn engines_report_their_platform_in_oci_form() {
        let cases = [
            ("linux", "x86_64", "linux/amd64"),
            ("linux", "aarch64", "linux/arm64"),
            ("linux", "armv7l", "linux/arm/v7"),
            ("linux", "armv6l", "linux/arm/v6"),
            ("linux", "i686", "linux/386"),
            ("linux", "riscv64", "linux/riscv64"),
        ];
        for (os, arch, want) in cases {
            assert_eq!(
                super::engine_platform(os, arch).as_deref(),
                Some(want),
                "{arch}"
            );
        }
        assert_eq!(super::engine_platform("linux", ""), None);
    }

    use super::*;
    use edgefleet_protocol::spec::{HealthCheck, PortMapping, PortProtocol, VolumeKind};

    use crate::container::Mount;

    #[test]
    fn create_body_maps_compose_fields() {
        let spec = ContainerSpec {
            name: "ef-d-s-web".into(),
            image: "app:1".into(),
            command: Some(vec!["serve".into()]),
            entrypoint: None,
            env: vec!["A=1".into()],
            ports: vec![
                PortMapping {
                    host_ip: None,
                    host_port: Some(8080),
                    container_port: 80,
                    protocol: PortProtocol::Tcp,
                },
                PortMapping {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: None,
                    container_port: 80,
                    protocol: PortProtocol::Tcp,
                },
                PortMapping {
                    host_ip: None,
                    host_port: Some(5353),
                    container_port: 53,
                    protocol: PortProtocol::Udp,
                },
            ],
            mounts: vec![Mount {
                kind: VolumeKind::Named,
                source: "ef-d-s-data".into(),
                target: "/data".into(),
                read_only: true,
            }],
            restart: RestartPolicy::UnlessStopped,
            healthcheck: Some(HealthCheck {
                test: vec!["CMD-SHELL".into(), "true".into()],
                interval_ms: Some(1500),
                timeout_ms: None,
                retries: Some(3),
                start_period_ms: None,
            }),
            labels: [("k".to_string(), "v".to_string())].into(),
            networks: vec![],
            network_mode: None,
            extra: Default::default(),
            files: Vec::new(),
        };
        let body = create_body(&spec);
        assert_eq!(
            body.exposed_ports,
            Some(vec!["80/tcp".to_string(), "53/udp".to_string()])
        );
        let host = body.host_config.unwrap();
        let web = host.port_bindings.as_ref().unwrap()["80/tcp"]
            .as_ref()
            .unwrap();
        assert_eq!(web.len(), 2);
        assert_eq!(web[0].host_port.as_deref(), Some("8080"));
        assert_eq!(web[1].host_port.as_deref(), Some(""));
        assert_eq!(web[1].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(host.binds, Some(vec!["ef-d-s-data:/data:ro".to_string()]));
        assert_eq!(
            host.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        let hc = body.healthcheck.unwrap();
        assert_eq!(hc.interval, Some(1_500_000_000));
        assert_eq!(hc.retries, Some(3));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        assert_eq!(body.cmd, Some(vec!["serve".to_string()]));
        assert_eq!(body.labels.unwrap()["k"], "v");
    }

    #[test]
    fn pull_reference_never_pulls_all_tags() {
        assert_eq!(pull_reference("app"), ("app", Some("latest")));
        assert_eq!(
            pull_reference("reg:5000/app"),
            ("reg:5000/app", Some("latest"))
        );
        assert_eq!(pull_reference("reg:5000/app:2"), ("reg:5000/app:2", None));
        assert_eq!(pull_reference("app@sha256:abc"), ("app@sha256:abc", None));
    }
}
