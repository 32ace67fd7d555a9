//! Compose files: the format users already have, turned into the normalized specs a device runs.
//!
//! [`parse_with`] reads a Compose document the way `docker compose` does and either returns
//! normalized [`ServiceSpec`]s or an error naming the service and key at fault. Any key outside
//! what edgefleet runs is refused here, at `apply` time, never silently ignored and never
//! discovered on a device. The steps:
//!
//! 1. **Bounded YAML.** At most [`MAX_COMPOSE_BYTES`]; parsed by `serde-saphyr` (a maintained,
//!    panic-free YAML parser) under a budget on events, aliases, anchors and depth, so an alias
//!    bomb ("billion laughs") or an enormous file is a clear error, not a memory blow-up. The
//!    deprecated `serde_yaml` never sees the file.
//! 2. **Extensions.** `x-*` keys are dropped wherever they appear (the Compose specification
//!    says tools ignore them), except `x-edgefleet-rollout` at the top.
//! 3. **Interpolation** of every string value ([`crate::interpolate`]).
//! 4. **Keys.** Unsupported keys are refused by name; `build` is refused with how to get the
//!    image onto the device instead.
//! 5. **Typed model.** Each service is deserialized into `compose_spec`'s model of the Compose
//!    specification (short and long syntaxes of ports, volumes, depends_on, … parsed and
//!    validated there), then mapped to [`ServiceSpec`].

use std::collections::BTreeMap;

use compose_spec::service::{
    ByteValue, Command, Condition, Healthcheck, Limit, NetworkConfig, Restart,
    healthcheck::Test,
    network_config::NetworkMode,
    ports::{self, Protocol},
    volumes::{self, Mount},
};
use compose_spec::{ListOrMap, Resource, ShortOrLong};
use edgefleet_protocol::ids::{validate_service_name, validate_stack_name};
use edgefleet_protocol::sealed::Plain;
use edgefleet_protocol::spec::{
    DependsCondition, FileMount, HealthCheck, IpamPool, Logging, NetworkSpec, PortMapping,
    PortProtocol, RestartPolicy, ServiceExtra, ServiceNetwork, ServiceSpec, StackConfig,
    StackSecret, StackSpec, Ulimit, UpdateOrder, VolumeKind, VolumeMount, VolumeOptions,
};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::interpolate::{self, InterpolateError, Variables};

/// Largest Compose file `apply` takes. Real stack files are a few KiB; this leaves room for
/// generated ones while keeping a hostile upload cheap to refuse.
pub const MAX_COMPOSE_BYTES: usize = 512 * 1024;

/// Service keys edgefleet runs. `deploy` only for `update_config.order` and
/// `resources.limits.{cpus,memory}`.
pub const SUPPORTED_SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "ports",
    "volumes",
    "restart",
    "healthcheck",
    "labels",
    "depends_on",
    "deploy",
    "container_name",
    "hostname",
    "user",
    "working_dir",
    "expose",
    "network_mode",
    "networks",
    "devices",
    "device_cgroup_rules",
    "privileged",
    "cap_add",
    "cap_drop",
    "security_opt",
    "extra_hosts",
    "dns",
    "sysctls",
    "ulimits",
    "tmpfs",
    "read_only",
    "shm_size",
    "init",
    "stop_signal",
    "stop_grace_period",
    "logging",
    "mem_limit",
    "cpus",
    "tty",
    "stdin_open",
    "platform",
    "configs",
    "secrets",
];

/// Why some well-known keys are refused (the message says what to do instead).
fn refusal_advice(key: &str) -> Option<&'static str> {
    Some(match key {
        "build" => {
            "edgefleet does not build images on devices: build it once, push it to a registry the devices can reach and set 'image:' to it (or 'docker save' it and 'docker load' it on each device)"
        }
        "env_file" => {
            "the file is not on the device: pass it at apply with 'edgefleet apply --env-file FILE' and reference its variables as ${VAR} in 'environment'"
        }
        "extends" | "include" => "merge the files before applying (e.g. 'docker compose config')",
        "profiles" => "apply only the services you want on the devices",
        "links" | "external_links" => {
            "services of a stack reach each other by service name on the stack's network"
        }
        "pid" | "ipc" | "userns_mode" | "uts" | "cgroup" | "cgroup_parent" => {
            "host namespaces and cgroup placement are not supported"
        }
        "volumes_from" => "share a named volume between the services instead",
        "scale" => "one container per service runs on each device",
        _ => return None,
    })
}

/// Top-level keys taken. `version` and `name` are informational in Compose and ignored.
const TOP_LEVEL_KEYS: [&str; 7] = [
    "services", "volumes", "networks", "configs", "secrets", "version", "name",
];

/// Top-level extension key holding the deployment's rollout strategy. Its presence makes
/// `apply` staged: devices already running the deployment stay on their revision until a
/// rollout moves them.
pub const ROLLOUT_KEY: &str = "x-edgefleet-rollout";

/// The network `docker compose` gives every project, joined by services that name none.
pub const DEFAULT_NETWORK: &str = "default";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ComposeError {
    #[error("the Compose file is not valid YAML: {0}")]
    Yaml(String),
    #[error(
        "the Compose file is {0} bytes; at most {MAX_COMPOSE_BYTES} are taken (split the stack into several deployments)"
    )]
    TooLarge(usize),
    #[error("the Compose file must be a mapping with a 'services' key")]
    NotAMapping,
    #[error(
        "top-level key '{0}' is not supported (supported: services, volumes, networks, configs, secrets, x-*; version and name are ignored)"
    )]
    TopLevelKey(String),
    #[error("{ROLLOUT_KEY}: {0}")]
    Rollout(String),
    #[error("the Compose file defines no services")]
    NoServices,
    #[error("service '{service}': key '{key}' is not supported by edgefleet (supported: {supported})", supported = SUPPORTED_SERVICE_KEYS.join(", "))]
    UnsupportedKey { service: String, key: String },
    #[error("service '{service}': key '{key}' is not supported: {advice}")]
    Refused {
        service: String,
        key: String,
        advice: String,
    },
    #[error("service '{service}': '{key}' {problem}")]
    Invalid {
        service: String,
        key: String,
        problem: String,
    },
    #[error("{path}: {source}")]
    Interpolate {
        path: String,
        source: InterpolateError,
    },
    #[error("{0}")]
    Name(String),
    #[error(
        "volume '{volume}' used by service '{service}' is not declared under the top-level 'volumes' key"
    )]
    UndeclaredVolume { service: String, volume: String },
    #[error(
        "network '{network}' used by service '{service}' is not declared under the top-level 'networks' key"
    )]
    UndeclaredNetwork { service: String, network: String },
    #[error("{0}")]
    Order(String),
    #[error("{0}")]
    Source(String),
}

/// A parsed Compose file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeStack {
    pub services: BTreeMap<String, ServiceSpec>,
    pub volumes: Vec<String>,
    pub volume_options: BTreeMap<String, VolumeOptions>,
    pub networks: BTreeMap<String, NetworkSpec>,
    /// The validated `x-edgefleet-rollout` strategy, if the file has one.
    pub rollout: Option<crate::rollout::strategy::Strategy>,
    /// Top-level `configs`, with their content (from `content`, an apply variable or a file
    /// sent with the apply).
    pub configs: BTreeMap<String, StackConfig>,
    /// Top-level `secrets`: where each one's content comes from. The content itself never
    /// enters the parsed stack ([`secret_contents`] reads it at apply); the services' secret
    /// mounts carry the keyed digest [`ComposeStack::set_secret_digests`] gives them.
    pub secret_sources: BTreeMap<String, SecretSource>,
}

/// Where a Compose secret's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file next to the Compose file, sent with the apply (`edgefleet apply` reads it).
    File(String),
    /// An apply variable (`--var`, `--env-file`, or the CLI's own environment).
    Environment(String),
}

impl ComposeStack {
    /// The stack as it goes into a device's desired document (secrets unsealed: the
    /// controller seals them per device).
    pub fn into_stack_spec(self, deployment: &str, revision: u64) -> StackSpec {
        let secrets = self.secret_digests();
        StackSpec {
            deployment: deployment.to_owned(),
            deployment_revision: revision,
            volumes: self.volumes,
            volume_options: self.volume_options,
            networks: self.networks,
            services: self.services,
            configs: self.configs,
            secrets,
        }
    }

    /// The stack's secrets with the digest their mounts carry (empty until
    /// [`ComposeStack::set_secret_digests`]).
    pub fn secret_digests(&self) -> BTreeMap<String, StackSecret> {
        self.secret_sources
            .keys()
            .map(|name| {
                let digest = self
                    .services
                    .values()
                    .flat_map(|s| &s.extra.secrets)
                    .find(|m| &m.source == name)
                    .map(|m| m.digest.clone())
                    .unwrap_or_default();
                (
                    name.clone(),
                    StackSecret {
                        digest,
                        sealed: None,
                    },
                )
            })
            .filter(|(_, s)| !s.digest.is_empty())
            .collect()
    }

    /// Gives every secret mount the digest of its secret's content (a keyed digest the
    /// controller computes: a changed secret changes the service's config hash).
    pub fn set_secret_digests(&mut self, digests: &BTreeMap<String, String>) {
        for svc in self.services.values_mut() {
            for m in &mut svc.extra.secrets {
                if let Some(d) = digests.get(&m.source) {
                    m.digest = d.clone();
                }
            }
        }
    }
}

/// The content of each secret a service of `stack` mounts, from the apply's `files` and
/// variables (secrets no service mounts are not read).
pub fn secret_contents(
    stack: &ComposeStack,
    vars: &Variables,
    files: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Plain>, ComposeError> {
    let used: std::collections::BTreeSet<String> = stack
        .services
        .values()
        .flat_map(|s| &s.extra.secrets)
        .map(|m| m.source.clone())
        .collect();
    read_secrets(&stack.secret_sources, &used, vars, files)
}

/// [`secret_contents`] read from the document itself, without resolving the rest of it: a
/// file resolved per device has the same secrets on every device. Also returns where each
/// secret comes from.
#[allow(clippy::type_complexity)]
pub fn secrets_of(
    yaml: &str,
    vars: &Variables,
    files: &BTreeMap<String, String>,
) -> Result<(BTreeMap<String, SecretSource>, BTreeMap<String, Plain>), ComposeError> {
    let (top, _) = prepare(yaml)?;
    let sources = top_secrets(top.get("secrets"))?;
    let mut used = std::collections::BTreeSet::new();
    if let Some(Value::Object(services)) = top.get("services") {
        for body in services.values() {
            if let Some(Value::Array(items)) = body.get("secrets") {
                for item in items {
                    match item {
                        Value::String(name) => {
                            used.insert(name.clone());
                        }
                        Value::Object(m) => {
                            if let Some(Value::String(name)) = m.get("source") {
                                used.insert(name.clone());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let contents = read_secrets(&sources, &used, vars, files)?;
    Ok((sources, contents))
}

fn read_secrets(
    sources: &BTreeMap<String, SecretSource>,
    used: &std::collections::BTreeSet<String>,
    vars: &Variables,
    files: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Plain>, ComposeError> {
    let mut out = BTreeMap::new();
    for (name, source) in sources {
        if !used.contains(name) {
            continue;
        }
        let content = match source {
            SecretSource::File(path) => file_content(files, path, "secret", name)?,
            SecretSource::Environment(var) => vars.get(var).cloned().ok_or_else(|| {
                ComposeError::Source(format!(
                    "secret '{name}': variable '{var}' is not set: give it with --var {var}=… or --env-file, or export it where you run edgefleet apply"
                ))
            })?,
        };
        if content.len() > edgefleet_protocol::sealed::MAX_PLAINTEXT {
            return Err(ComposeError::Source(format!(
                "secret '{name}' is {} bytes; at most {} are taken",
                content.len(),
                edgefleet_protocol::sealed::MAX_PLAINTEXT
            )));
        }
        out.insert(name.clone(), Plain::new(content.into_bytes()));
    }
    Ok(out)
}

/// The files the document's top-level configs read (`file:`), as written: configuration, kept
/// with a revision resolved per device (secrets' files never are).
pub fn config_file_sources(yaml: &str) -> Vec<String> {
    sources_of(yaml, &["configs"], "file")
}

/// The files a Compose document's top-level configs and secrets read (`file:`), as written:
/// what `edgefleet apply` reads next to the Compose file and sends with it. A document that
/// does not parse as YAML lists none (apply then says what is wrong).
pub fn file_sources(yaml: &str) -> Vec<String> {
    sources_of(yaml, &["configs", "secrets"], "file")
}

/// The environment variables a Compose document's top-level configs and secrets read
/// (`environment:`): `edgefleet apply` takes them from `--var`, `--env-file` or its own
/// environment, as `docker compose` takes them from its environment.
pub fn environment_sources(yaml: &str) -> Vec<String> {
    sources_of(yaml, &["configs", "secrets"], "environment")
}

fn sources_of(yaml: &str, keys: &[&str], field: &str) -> Vec<String> {
    let Ok(Value::Object(top)) = load_yaml(yaml) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for key in keys {
        if let Some(Value::Object(m)) = top.get(*key) {
            for body in m.values() {
                if let Some(Value::String(f)) = body.get(field) {
                    out.push(f.clone());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn file_content(
    files: &BTreeMap<String, String>,
    path: &str,
    kind: &str,
    name: &str,
) -> Result<String, ComposeError> {
    files.get(path).cloned().ok_or_else(|| {
        ComposeError::Source(format!(
            "{kind} '{name}': file '{path}' was not sent with the apply (edgefleet apply reads it relative to the Compose file; with the API, put its content in 'files' under that path)"
        ))
    })
}

/// Parses and validates a Compose document without variables (any `${VAR}` without a
/// default is refused).
pub fn parse(yaml: &str) -> Result<ComposeStack, ComposeError> {
    parse_with(yaml, &Variables::new())
}

/// Reads YAML text into a JSON-shaped tree under a strict budget.
pub fn load_yaml(yaml: &str) -> Result<Value, ComposeError> {
    if yaml.len() > MAX_COMPOSE_BYTES {
        return Err(ComposeError::TooLarge(yaml.len()));
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 200_000;
    budget.max_aliases = 2_000;
    budget.max_anchors = 2_000;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_recorded_anchor_bytes = 4 * 1024 * 1024;
    budget.max_depth = 64;
    budget.max_documents = 1;
    let options = serde_saphyr::options! { budget: Some(budget) };
    serde_saphyr::from_str_with_options::<Value>(yaml, options).map_err(|e| {
        let text = e.to_string();
        // Keep the message short: the first lines say what and where.
        ComposeError::Yaml(text.lines().take(6).collect::<Vec<_>>().join(" "))
    })
}

/// Parses and validates a Compose document, interpolating `vars` (configs from files are
/// refused: they need [`parse_inputs`]).
pub fn parse_with(yaml: &str, vars: &Variables) -> Result<ComposeStack, ComposeError> {
    parse_inputs(yaml, vars, &BTreeMap::new())
}

/// The document's top level before interpolation: `x-*` keys dropped at every level, the
/// top-level keys checked, and the `x-edgefleet-rollout` value taken out.
fn prepare(yaml: &str) -> Result<(Value, Option<Value>), ComposeError> {
    let doc = load_yaml(yaml)?;
    let Value::Object(mut top) = doc else {
        return Err(ComposeError::NotAMapping);
    };
    let rollout_value = top.remove(ROLLOUT_KEY);
    top.retain(|k, _| !k.starts_with("x-"));
    if let Some(key) = top.keys().find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
        return Err(match key.as_str() {
            "include" => ComposeError::Refused {
                service: "(top level)".into(),
                key: key.clone(),
                advice: refusal_advice(key).unwrap_or_default().to_owned(),
            },
            _ => ComposeError::TopLevelKey(key.clone()),
        });
    }
    let mut top = Value::Object(top);
    strip_extensions(&mut top);
    Ok((top, rollout_value))
}

/// The validated `x-edgefleet-rollout` strategy (it is never interpolated).
fn rollout_strategy(
    value: Option<Value>,
) -> Result<Option<crate::rollout::strategy::Strategy>, ComposeError> {
    let Some(v) = value else { return Ok(None) };
    let s: crate::rollout::strategy::Strategy =
        serde_json::from_value(v).map_err(|e| ComposeError::Rollout(e.to_string()))?;
    s.validate()
        .map_err(|e| ComposeError::Rollout(e.to_string()))?;
    Ok(Some(s))
}

/// What a document needs before it can be resolved, read without any variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Every variable the document refers to: in its strings (every branch of
    /// `${A:-${B}}`) and as a bare `environment`/`labels` key, which takes the variable of
    /// that name. Parsing with exactly these (those that are set) gives the same stack as
    /// parsing with every variable.
    pub references: std::collections::BTreeSet<String>,
    /// The references without which the document cannot be parsed (`${A}`, `${A:?…}`, not
    /// inside a default), each with the first path using it.
    pub required: BTreeMap<String, String>,
    /// The `x-edgefleet-rollout` strategy, validated.
    pub rollout: Option<crate::rollout::strategy::Strategy>,
}

/// Reads a document's variable references and rollout strategy, checking its YAML, its
/// top-level keys and its interpolation syntax (everything that needs no variable).
pub fn scan(yaml: &str) -> Result<Scan, ComposeError> {
    let (top, rollout_value) = prepare(yaml)?;
    let mut references = std::collections::BTreeSet::new();
    let mut required = BTreeMap::new();
    scan_tree(&top, &mut references, &mut required, &mut String::new())?;
    if let Some(Value::Object(services)) = top.get("services") {
        for (service, body) in services {
            for key in ["environment", "labels"] {
                match body.get(key) {
                    Some(Value::Array(items)) => {
                        for item in items.iter().filter_map(Value::as_str) {
                            if item.contains('=') {
                                continue;
                            }
                            // A bare NAME takes the variable NAME: a name made by a variable
                            // would take one nobody can tell before resolving.
                            if item.contains('$') {
                                return Err(ComposeError::Invalid {
                                    service: service.clone(),
                                    key: key.to_owned(),
                                    problem: format!(
                                        "has the entry {item:?} without '=', whose name is made by a variable: write NAME=${{VALUE}} (a bare NAME takes the variable NAME)"
                                    ),
                                });
                            }
                            if interpolate::validate_name(item.trim()).is_ok() {
                                references.insert(item.trim().to_owned());
                            }
                        }
                    }
                    Some(Value::Object(m)) => references.extend(
                        m.iter()
                            .filter(|(k, v)| v.is_null() && interpolate::validate_name(k).is_ok())
                            .map(|(k, _)| k.clone()),
                    ),
                    _ => {}
                }
            }
        }
    }
    // A config's `environment:` names the variable its content comes from: a reference
    // (a site or device may keep it). A secret's never is: its content is read at apply only.
    if let Some(Value::Object(configs)) = top.get("configs") {
        for body in configs.values() {
            if let Some(Value::String(var)) = body.get("environment") {
                references.insert(var.clone());
                required
                    .entry(var.clone())
                    .or_insert_with(|| "configs".to_owned());
            }
        }
    }
    Ok(Scan {
        references,
        required,
        rollout: rollout_strategy(rollout_value)?,
    })
}

/// [`interpolate::collect_references`] of every string in the tree, errors at their path.
fn scan_tree(
    v: &Value,
    out: &mut std::collections::BTreeSet<String>,
    required: &mut BTreeMap<String, String>,
    path: &mut String,
) -> Result<(), ComposeError> {
    match v {
        Value::String(s) if s.contains('$') => {
            let here = path.trim_start_matches('.').to_owned();
            let mut needs = std::collections::BTreeSet::new();
            interpolate::collect_references(s, out, &mut needs).map_err(|source| {
                ComposeError::Interpolate {
                    path: here.clone(),
                    source,
                }
            })?;
            for name in needs {
                required.entry(name).or_insert_with(|| here.clone());
            }
        }
        Value::Object(m) => {
            for (k, child) in m {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                scan_tree(child, out, required, path)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                scan_tree(child, out, required, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses and validates a Compose document, interpolating `vars`; `files` holds the content
/// of the files its configs and secrets name (by the path as written).
pub fn parse_inputs(
    yaml: &str,
    vars: &Variables,
    files: &BTreeMap<String, String>,
) -> Result<ComposeStack, ComposeError> {
    let (mut top, rollout_value) = prepare(yaml)?;
    interpolate_tree(&mut top, vars, &mut String::new())?;
    let Value::Object(top) = top else {
        return Err(ComposeError::NotAMapping);
    };

    let (volumes, volume_options) = top_volumes(top.get("volumes"))?;
    let mut networks = top_networks(top.get("networks"))?;
    let configs = top_configs(top.get("configs"), vars, files)?;
    let secret_sources = top_secrets(top.get("secrets"))?;

    let services_map = match top.get("services") {
        Some(Value::Object(m)) if !m.is_empty() => m,
        _ => return Err(ComposeError::NoServices),
    };
    let mut services = BTreeMap::new();
    for (name, body) in services_map {
        validate_service_name(name).map_err(|e| ComposeError::Name(e.to_string()))?;
        let svc = parse_service(name, body, vars)?;
        for v in &svc.volumes {
            if v.kind == VolumeKind::Named && !volumes.contains(&v.source) {
                return Err(ComposeError::UndeclaredVolume {
                    service: name.clone(),
                    volume: v.source.clone(),
                });
            }
        }
        for net in svc.extra.networks.keys() {
            if net != DEFAULT_NETWORK && !networks.contains_key(net) {
                return Err(ComposeError::UndeclaredNetwork {
                    service: name.clone(),
                    network: net.clone(),
                });
            }
        }
        check_fixed_addresses(name, &svc, &networks)?;
        for m in &svc.extra.configs {
            if !configs.contains_key(&m.source) {
                return Err(ComposeError::Invalid {
                    service: name.clone(),
                    key: "configs".into(),
                    problem: format!(
                        "config '{}' is not declared under the top-level 'configs' key",
                        m.source
                    ),
                });
            }
        }
        for m in &svc.extra.secrets {
            if !secret_sources.contains_key(&m.source) {
                return Err(ComposeError::Invalid {
                    service: name.clone(),
                    key: "secrets".into(),
                    problem: format!(
                        "secret '{}' is not declared under the top-level 'secrets' key",
                        m.source
                    ),
                });
            }
        }
        services.insert(name.clone(), svc);
    }
    for (name, svc) in &services {
        if let Some(other) = svc
            .extra
            .network_mode
            .as_deref()
            .and_then(|m| m.strip_prefix("service:"))
            && !services.contains_key(other)
        {
            return Err(ComposeError::Invalid {
                service: name.clone(),
                key: "network_mode".into(),
                problem: format!("names '{other}', which is not a service of this stack"),
            });
        }
    }
    // The stack's own network, as `docker compose` makes one per project.
    let uses_default = services.values().any(|s| {
        s.extra.network_mode.is_none()
            && (s.extra.networks.is_empty() || s.extra.networks.contains_key(DEFAULT_NETWORK))
    });
    if uses_default {
        networks.entry(DEFAULT_NETWORK.to_owned()).or_default();
    }
    let rollout = rollout_strategy(rollout_value)?;
    for svc in services.values_mut() {
        for m in &mut svc.extra.configs {
            if let Some(c) = configs.get(&m.source) {
                m.digest = content_digest(c.content.as_bytes());
            }
        }
    }
    let stack = ComposeStack {
        services,
        volumes,
        volume_options,
        networks,
        rollout,
        configs,
        secret_sources,
    };
    stack
        .clone()
        .into_stack_spec("check", 0)
        .start_order()
        .map_err(|e| ComposeError::Order(e.to_string()))?;
    Ok(stack)
}

/// Drops `x-*` keys at every level (Compose: "tools ignore x- fields").
fn strip_extensions(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with("x-"));
            m.values_mut().for_each(strip_extensions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_extensions),
        _ => {}
    }
}

/// Interpolates every string value; `path` names where a failure happened.
fn interpolate_tree(
    v: &mut Value,
    vars: &Variables,
    path: &mut String,
) -> Result<(), ComposeError> {
    match v {
        Value::String(s) if s.contains('$') => {
            *s = interpolate::interpolate(s, vars).map_err(|source| ComposeError::Interpolate {
                path: path.trim_start_matches('.').to_owned(),
                source,
            })?;
        }
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                interpolate_tree(child, vars, path)?;
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate_tree(child, vars, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Digest of a config's content (it is in clear in the document anyway).
fn content_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(bytes)[..8])
}

/// The entries of a top-level `configs` or `secrets` mapping (`kind` is `config` or
/// `secret`), each name checked and each body read as Compose's `Resource<T>`.
fn top_resources<T: serde::de::DeserializeOwned>(
    v: Option<&Value>,
    kind: &str,
) -> Result<Vec<(String, Resource<T>)>, ComposeError> {
    let m = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ComposeError::Source(format!(
                "top-level '{kind}s' must be a mapping"
            )));
        }
    };
    m.iter()
        .map(|(name, body)| {
            validate_stack_name(name)
                .map_err(|e| ComposeError::Source(format!("top-level {kind}: {e}")))?;
            let parsed = serde_json::from_value(body.clone())
                .map_err(|e| ComposeError::Source(format!("{kind} '{name}': {e}")))?;
            Ok((name.clone(), parsed))
        })
        .collect()
}

/// Top-level `configs`: `content`, `environment` (an apply variable) or `file` (sent with
/// the apply); `external` is refused (there is no swarm to hold it).
fn top_configs(
    v: Option<&Value>,
    vars: &Variables,
    files: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, StackConfig>, ComposeError> {
    let mut out = BTreeMap::new();
    for (name, parsed) in top_resources::<compose_spec::Config>(v, "config")? {
        let bad = |p: String| ComposeError::Source(format!("config '{name}': {p}"));
        let content = match parsed {
            Resource::External { .. } => {
                return Err(bad("'external' configs live in a swarm; edgefleet delivers the content itself: give it as 'content', 'file' or 'environment'".into()));
            }
            Resource::Compose(c) => match c.source {
                compose_spec::config::Source::Content(text) => text,
                compose_spec::config::Source::Environment(var) => {
                    vars.get(&var).cloned().ok_or_else(|| {
                        bad(format!(
                            "variable '{var}' is not set: give it with --var {var}=… or --env-file"
                        ))
                    })?
                }
                compose_spec::config::Source::File(path) => {
                    file_content(files, &path.display().to_string(), "config", &name)?
                }
            },
        };
        if content.len() > edgefleet_protocol::sealed::MAX_PLAINTEXT {
            return Err(bad(format!(
                "{} bytes; at most {} are taken (large files belong in images or volumes)",
                content.len(),
                edgefleet_protocol::sealed::MAX_PLAINTEXT
            )));
        }
        out.insert(name, StackConfig { content });
    }
    Ok(out)
}

/// Top-level `secrets`: `file` or `environment`; `external` and drivers are refused.
fn top_secrets(v: Option<&Value>) -> Result<BTreeMap<String, SecretSource>, ComposeError> {
    let mut out = BTreeMap::new();
    for (name, parsed) in top_resources::<compose_spec::Secret>(v, "secret")? {
        let bad = |p: String| ComposeError::Source(format!("secret '{name}': {p}"));
        let source = match parsed {
            Resource::External { .. } => {
                return Err(bad("'external' secrets live in a swarm; edgefleet delivers the content itself, sealed for each device: give it as 'file' or 'environment'".into()));
            }
            Resource::Compose(s) => {
                if s.driver.is_some() || !s.driver_opts.is_empty() {
                    return Err(bad("secret drivers are not supported: give the content as 'file' or 'environment'".into()));
                }
                match s.source {
                    compose_spec::secret::Source::File(p) => {
                        SecretSource::File(p.display().to_string())
                    }
                    compose_spec::secret::Source::Environment(var) => {
                        SecretSource::Environment(var)
                    }
                }
            }
        };
        out.insert(name, source);
    }
    Ok(out)
}

/// A service's `configs:` or `secrets:` (short or long form) as file mounts: a config lands
/// at `/<source>` unless `target` says otherwise, a secret under `/run/secrets/`.
fn file_mounts(
    ctx: &Ctx,
    items: Vec<ShortOrLong<compose_spec::Identifier, compose_spec::service::ConfigOrSecret>>,
    secret: bool,
) -> Result<Vec<FileMount>, ComposeError> {
    let mut out: Vec<FileMount> = Vec::new();
    for item in items {
        let long = item.into_long();
        let source = long.source.to_string();
        let target = match &long.target {
            None if secret => format!("/run/secrets/{source}"),
            None => format!("/{source}"),
            Some(t) => {
                let t = t.display().to_string();
                if t.starts_with('/') {
                    t
                } else if secret {
                    format!("/run/secrets/{t}")
                } else {
                    format!("/{t}")
                }
            }
        };
        if target.split('/').any(|p| p == "..") {
            return Err(ctx.err(format!("target '{target}' must not contain '..'")));
        }
        if out.iter().any(|m| m.target == target) {
            return Err(ctx.err(format!("two entries mount onto '{target}'")));
        }
        let mode = long
            .mode
            .map(octal_mode)
            .transpose()
            .map_err(|p| ctx.err(p))?;
        out.push(FileMount {
            source,
            target,
            uid: long.uid,
            gid: long.gid,
            mode,
            digest: String::new(),
        });
    }
    Ok(out)
}

/// A `mode` as Compose users write it: `0440` means octal (the YAML reader hands it over
/// as the number 440, or a string), `0o440` and `288` are numbers already.
fn file_mode(v: &Value) -> Result<Value, String> {
    let octal = |digits: &str| {
        u32::from_str_radix(digits.trim_start_matches("0o"), 8)
            .map_err(|_| format!("mode {digits:?} is not an octal file mode (e.g. 0440)"))
    };
    let mode = match v {
        Value::String(s) => octal(s)?,
        Value::Number(n) => match n.as_u64() {
            Some(i) => u32::try_from(i).map_err(|_| format!("mode {i} is not a file mode"))?,
            None => {
                // `0440` read as a decimal 440.0: the digits were meant in octal.
                let f = n.as_f64().unwrap_or(-1.0);
                if f.fract() != 0.0 || !(0.0..=7777.0).contains(&f) {
                    return Err(format!("mode {f} is not a file mode (e.g. 0440)"));
                }
                octal(&format!("{}", f as u32))?
            }
        },
        _ => return Err("mode must be a number such as 0440".into()),
    };
    Ok(Value::from(mode))
}

/// A file mode: at most 0o7777 (YAML's `0o440`, and `0440`, which the YAML reader takes as
/// octal as Compose does).
fn octal_mode(m: u32) -> Result<u32, String> {
    if m <= 0o7777 {
        Ok(m)
    } else {
        Err(format!(
            "mode {m} is not a file mode (write it in octal, e.g. 0o440)"
        ))
    }
}

fn string_map(m: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// Serializes a `compose_spec` value and returns it as text (for types that are strings in
/// Compose and carry no accessor).
fn text<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn top_volumes(
    v: Option<&Value>,
) -> Result<(Vec<String>, BTreeMap<String, VolumeOptions>), ComposeError> {
    let mut names = Vec::new();
    let mut options = BTreeMap::new();
    let m = match v {
        None | Some(Value::Null) => return Ok((names, options)),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ComposeError::Name(
                "top-level 'volumes' must be a mapping".into(),
            ));
        }
    };
    for (name, body) in m {
        validate_stack_name(name)
            .map_err(|e| ComposeError::Name(format!("top-level volume: {e}")))?;
        let bad =
            |problem: String| ComposeError::Name(format!("top-level volume '{name}': {problem}"));
        let parsed: Option<Resource<compose_spec::Volume>> =
            serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))?;
        let opts = match parsed {
            None => VolumeOptions::default(),
            Some(Resource::External { name }) => VolumeOptions {
                external: true,
                name,
                ..VolumeOptions::default()
            },
            Some(Resource::Compose(vol)) => {
                if vol.name.is_some() {
                    return Err(bad(
                        "'name' is only supported with 'external: true' (edgefleet names the volumes it creates per device and stack)".into(),
                    ));
                }
                if !vol.labels.is_empty() {
                    return Err(bad("'labels' is not supported".into()));
                }
                if let Some(d) = vol.driver.as_deref()
                    && d != "local"
                {
                    return Err(bad(format!(
                        "driver '{d}' is not supported (only 'local', with driver_opts)"
                    )));
                }
                VolumeOptions {
                    driver: vol.driver,
                    driver_opts: string_map(
                        vol.driver_opts
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string())),
                    ),
                    external: false,
                    name: None,
                }
            }
        };
        if opts != VolumeOptions::default() {
            options.insert(name.clone(), opts);
        }
        names.push(name.clone());
    }
    Ok((names, options))
}

fn top_networks(v: Option<&Value>) -> Result<BTreeMap<String, NetworkSpec>, ComposeError> {
    let mut out = BTreeMap::new();
    let m = match v {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ComposeError::Name(
                "top-level 'networks' must be a mapping".into(),
            ));
        }
    };
    for (name, body) in m {
        validate_stack_name(name)
            .map_err(|e| ComposeError::Name(format!("top-level network: {e}")))?;
        let bad =
            |problem: String| ComposeError::Name(format!("top-level network '{name}': {problem}"));
        let parsed: Option<Resource<compose_spec::Network>> =
            serde_json::from_value(body.clone()).map_err(|e| bad(e.to_string()))?;
        let spec = match parsed {
            None => NetworkSpec::default(),
            Some(Resource::External { name }) => NetworkSpec {
                external: true,
                name,
                ..NetworkSpec::default()
            },
            Some(Resource::Compose(net)) => {
                let ipam = match &net.ipam {
                    None => Vec::new(),
                    Some(i) => ipam_pools(i).map_err(bad)?,
                };
                if net.name.is_some() {
                    return Err(bad("'name' is only supported with 'external: true' (edgefleet names the networks it creates per stack)".into()));
                }
                let driver = net.driver.as_ref().map(|d| d.as_str().to_owned());
                if let Some(d) = driver.as_deref()
                    && !matches!(d, "bridge" | "macvlan" | "ipvlan")
                {
                    return Err(bad(format!(
                        "driver '{d}' is not supported (bridge, macvlan, ipvlan; use network_mode: host for the host network)"
                    )));
                }
                NetworkSpec {
                    driver,
                    driver_opts: string_map(
                        net.driver_opts
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string())),
                    ),
                    internal: net.internal,
                    external: false,
                    name: None,
                    ipam,
                }
            }
        };
        out.insert(name.clone(), spec);
    }
    Ok(out)
}

/// A network's `ipam`: Docker's default driver with fixed pools (`ipam: { driver: default }`,
/// as IOTstack writes it, says nothing).
fn ipam_pools(ipam: &compose_spec::network::Ipam) -> Result<Vec<IpamPool>, String> {
    if let Some(d) = ipam.driver.as_deref()
        && d != "default"
    {
        return Err(format!(
            "ipam driver '{d}' is not supported (only Docker's default IPAM driver, with 'config')"
        ));
    }
    if !ipam.options.is_empty() {
        return Err("ipam 'options' (options of a custom IPAM driver) are not supported".into());
    }
    Ok(ipam
        .config
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| IpamPool {
            subnet: c.subnet.map(|n| n.to_string()),
            ip_range: c.ip_range.map(|n| n.to_string()),
            gateway: c.gateway.map(|g| g.to_string()),
            aux_addresses: c
                .aux_addresses
                .iter()
                .map(|(host, ip)| (host.to_string(), ip.to_string()))
                .collect(),
        })
        .collect())
}

/// Whether `addr` lies in `subnet` (`a.b.c.d/len` or an IPv6 one).
fn in_subnet(addr: std::net::IpAddr, subnet: &str) -> bool {
    use std::net::IpAddr;
    let Some((net, len)) = subnet.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    let (a, n, bits) = match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (
            u128::from(u32::from(a)) << 96,
            u128::from(u32::from(n)) << 96,
            32,
        ),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    if len > bits {
        return false;
    }
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    a & mask == n & mask
}

/// A service's fixed addresses (`networks.NAME.ipv4_address`) must lie in a subnet the
/// network's `ipam` declares: Docker gives fixed addresses only on such networks.
fn check_fixed_addresses(
    service: &str,
    svc: &ServiceSpec,
    networks: &BTreeMap<String, NetworkSpec>,
) -> Result<(), ComposeError> {
    for (net, how) in &svc.extra.networks {
        for addr in [&how.ipv4_address, &how.ipv6_address].into_iter().flatten() {
            let problem = |p: String| ComposeError::Invalid {
                service: service.to_owned(),
                key: "networks".into(),
                problem: format!("network '{net}': {p}"),
            };
            let ip: std::net::IpAddr = addr
                .parse()
                .map_err(|_| problem(format!("'{addr}' is not an IP address")))?;
            let spec = networks.get(net);
            if spec.is_some_and(|s| s.external) {
                continue; // Its subnets are the device's business.
            }
            let inside = spec.is_some_and(|s| {
                s.ipam
                    .iter()
                    .filter_map(|p| p.subnet.as_deref())
                    .any(|sub| in_subnet(ip, sub))
            });
            if !inside {
                return Err(problem(format!(
                    "fixed address {addr} is in no subnet of the network's 'ipam.config' (Docker gives fixed addresses only on a network with a configured subnet: declare one that holds it)"
                )));
            }
        }
    }
    Ok(())
}

struct Ctx<'a> {
    service: &'a str,
    key: &'a str,
}

impl Ctx<'_> {
    fn err(&self, problem: impl Into<String>) -> ComposeError {
        ComposeError::Invalid {
            service: self.service.to_owned(),
            key: self.key.to_owned(),
            problem: problem.into(),
        }
    }
}

/// `deploy` paths edgefleet applies on one device.
const DEPLOY_PATHS: [&str; 3] = [
    "update_config.order",
    "resources.limits.cpus",
    "resources.limits.memory",
];

fn check_deploy(ctx: &Ctx, v: &Value, path: &str) -> Result<(), ComposeError> {
    let Value::Object(m) = v else {
        if path.is_empty() {
            return Err(ctx.err("must be a mapping"));
        }
        if DEPLOY_PATHS.contains(&path) {
            return Ok(());
        }
        return Err(ctx.err(format!("key '{path}' must be a mapping")));
    };
    for (k, child) in m {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if !DEPLOY_PATHS
            .iter()
            .any(|d| *d == p || d.starts_with(&format!("{p}.")))
        {
            return Err(ctx.err(format!(
                "key '{p}' is not supported (supported: {})",
                DEPLOY_PATHS.join(", ")
            )));
        }
        if !child.is_null() {
            check_deploy(ctx, child, &p)?;
        }
    }
    Ok(())
}

fn parse_service(
    service: &str,
    body: &Value,
    vars: &Variables,
) -> Result<ServiceSpec, ComposeError> {
    let Value::Object(map) = body else {
        return Err(ComposeError::Invalid {
            service: service.to_owned(),
            key: "(service)".into(),
            problem: "must be a mapping of keys".into(),
        });
    };
    for key in map.keys() {
        if let Some(advice) = refusal_advice(key) {
            return Err(ComposeError::Refused {
                service: service.to_owned(),
                key: key.clone(),
                advice: advice.to_owned(),
            });
        }
        if !SUPPORTED_SERVICE_KEYS.contains(&key.as_str()) {
            return Err(ComposeError::UnsupportedKey {
                service: service.to_owned(),
                key: key.clone(),
            });
        }
    }
    let ctx = |key| Ctx { service, key };
    match map.get("image") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(_) => return Err(ctx("image").err("must be a non-empty string")),
        None => return Err(ctx("image").err("is required (edgefleet does not build images)")),
    }
    if let Some(d) = map.get("deploy")
        && !d.is_null()
    {
        check_deploy(&ctx("deploy"), d, "")?;
    }
    if let Some(Value::Array(items)) = map.get("volumes")
        && let Some(home) = items
            .iter()
            .filter_map(Value::as_str)
            .find(|s| s.starts_with('~'))
    {
        let source = home.split(':').next().unwrap_or(home);
        bind_source(source).map_err(|p| ctx("volumes").err(p))?;
    }
    // `extra_hosts` is read here: compose_spec types its values as IP addresses, which
    // refuses Docker's `host-gateway`.
    let extra_hosts = map
        .get("extra_hosts")
        .map(|v| extra_hosts(&ctx("extra_hosts"), v))
        .transpose()?
        .unwrap_or_default();
    let mut map = map.clone();
    map.remove("extra_hosts");
    for key in ["configs", "secrets"] {
        if let Some(Value::Array(items)) = map.get_mut(key) {
            for item in items {
                if let Some(mode) = item.get_mut("mode") {
                    *mode = file_mode(mode).map_err(|p| ctx(key).err(p))?;
                }
            }
        }
    }
    let body = &Value::Object(map.clone());
    // Each key on its own first, so that a type error names its key.
    for (key, value) in &map {
        let one: Map<String, Value> = [(key.clone(), value.clone())].into_iter().collect();
        serde_json::from_value::<compose_spec::Service>(Value::Object(one))
            .map_err(|e| ctx(key).err(format!("is not valid: {e}")))?;
    }
    let svc: compose_spec::Service = serde_json::from_value(body.clone())
        .map_err(|e| ctx("(service)").err(format!("is not valid: {e}")))?;
    let mut spec = map_service(service, svc, vars)?;
    spec.extra.extra_hosts = extra_hosts;
    Ok(spec)
}

/// `extra_hosts`: a list of `host:ip` / `host=ip`, or a mapping; the address is an IP or
/// Docker's `host-gateway`.
fn extra_hosts(ctx: &Ctx, v: &Value) -> Result<Vec<String>, ComposeError> {
    let pairs: Vec<(String, String)> = match v {
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let s = i
                    .as_str()
                    .ok_or_else(|| ctx.err("items must be strings like \"plc:10.0.0.5\""))?;
                let at = s
                    .find(['=', ':'])
                    .ok_or_else(|| ctx.err(format!("item {s:?} is not HOST:IP")))?;
                Ok((s[..at].to_owned(), s[at + 1..].to_owned()))
            })
            .collect::<Result<_, ComposeError>>()?,
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let ip = v
                    .as_str()
                    .ok_or_else(|| ctx.err(format!("value of '{k}' must be an address")))?;
                Ok((k.clone(), ip.to_owned()))
            })
            .collect::<Result<_, ComposeError>>()?,
        Value::Null => Vec::new(),
        _ => return Err(ctx.err("must be a list of HOST:IP or a mapping")),
    };
    pairs
        .into_iter()
        .map(|(host, ip)| {
            let bare = ip.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty()
                || (ip != "host-gateway" && bare.parse::<std::net::IpAddr>().is_err())
            {
                return Err(ctx.err(format!(
                    "entry '{host}:{ip}' needs a host name and an IP address (or host-gateway)"
                )));
            }
            Ok(format!("{host}:{bare}"))
        })
        .collect()
}

fn command(ctx: &Ctx, c: Command) -> Result<Vec<String>, ComposeError> {
    match c {
        Command::List(items) => Ok(items),
        Command::String(s) => shlex::split(&s).ok_or_else(|| {
            ctx.err("has unbalanced quotes: close them or write it as a list, e.g. [\"sh\", \"-c\", \"echo hi\"]")
        }),
    }
}

/// `environment`/`labels`: list `KEY=value` or map. A key without a value takes the apply
/// variable of that name, or is left out (as Compose leaves out an unset shell variable).
fn key_values(
    ctx: &Ctx,
    v: ListOrMap,
    vars: &Variables,
) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut out = BTreeMap::new();
    let map = v
        .into_map()
        .map_err(|e| ctx.err(format!("has an invalid key: {e}")))?;
    for (k, val) in map {
        let key = k.to_string();
        match val {
            Some(val) => {
                out.insert(key, val.to_string());
            }
            None => {
                if let Some(val) = vars.get(&key) {
                    out.insert(key, val.clone());
                }
            }
        }
    }
    if let Some(k) = out
        .keys()
        .find(|k| k.is_empty() || k.contains(char::is_whitespace))
    {
        return Err(ctx.err(format!("has an invalid key {k:?}")));
    }
    Ok(out)
}

/// Docker's (go-units) sizes: `512m` is 512 MiB.
fn bytes(b: ByteValue) -> Option<u64> {
    match b {
        ByteValue::Bytes(n) => Some(n),
        ByteValue::Kilobytes(n) => n.checked_mul(1 << 10),
        ByteValue::Megabytes(n) => n.checked_mul(1 << 20),
        ByteValue::Gigabytes(n) => n.checked_mul(1 << 30),
    }
}

fn limit(l: Limit<u64>) -> i64 {
    match l {
        Limit::Value(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Limit::Unlimited => -1,
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn map_service(
    service: &str,
    svc: compose_spec::Service,
    vars: &Variables,
) -> Result<ServiceSpec, ComposeError> {
    let ctx = |key| Ctx { service, key };
    let image = svc
        .image
        .as_ref()
        .map(|i| i.as_str().to_owned())
        .ok_or_else(|| ctx("image").err("is required (edgefleet does not build images)"))?;

    let mut ports_out = Vec::new();
    for p in ports::into_long_iter(svc.ports) {
        let pc = ctx("ports");
        let protocol = match &p.protocol {
            None | Some(Protocol::Tcp) => PortProtocol::Tcp,
            Some(Protocol::Udp) => PortProtocol::Udp,
            Some(other) => {
                return Err(pc.err(format!("protocol '{other}' is not tcp or udp")));
            }
        };
        let host_port = match p.published {
            None => None,
            Some(r) if r.end().is_some_and(|e| e != r.start()) => {
                return Err(pc.err(format!(
                    "published range '{r}' for container port {} is not supported: publish one host port per container port",
                    p.target
                )));
            }
            Some(r) => Some(r.start()),
        };
        if p.target == 0 || host_port == Some(0) {
            return Err(pc.err("port 0 is not a port"));
        }
        ports_out.push(PortMapping {
            host_ip: p.host_ip.map(|ip| ip.to_string()),
            host_port,
            container_port: p.target,
            protocol,
        });
    }

    let mut mounts = Vec::new();
    let mut tmpfs: Vec<String> = svc
        .tmpfs
        .map(|t| {
            t.into_list()
                .into_iter()
                .map(|p| p.as_path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    for m in volumes::into_long_iter(svc.volumes) {
        let vc = ctx("volumes");
        match m {
            Mount::Volume(v) => {
                let Some(source) = v.source else {
                    return Err(vc.err(format!(
                        "anonymous volume at '{}' is not supported: name it, e.g. \"data:{}\", and declare it under the top-level 'volumes'",
                        v.common.target.as_path().display(),
                        v.common.target.as_path().display()
                    )));
                };
                if v.volume.as_ref().is_some_and(|o| !o.is_empty()) {
                    return Err(vc.err("volume options (nocopy, subpath) are not supported"));
                }
                mounts.push(VolumeMount {
                    kind: VolumeKind::Named,
                    source: source.to_string(),
                    target: v.common.target.as_path().display().to_string(),
                    read_only: v.common.read_only,
                });
            }
            Mount::Bind(b) => {
                // The short syntax implies create_host_path; the agent creates stack
                // directories itself and never creates host paths outside them.
                if b.bind
                    .as_ref()
                    .is_some_and(|o| o.propagation.is_some() || o.selinux.is_some())
                {
                    return Err(
                        vc.err("bind options propagation and selinux (:z, :Z) are not supported")
                    );
                }
                let source = b.source.as_path().display().to_string();
                let (kind, source) = bind_source(&source).map_err(|p| vc.err(p))?;
                mounts.push(VolumeMount {
                    kind,
                    source,
                    target: b.common.target.as_path().display().to_string(),
                    read_only: b.common.read_only,
                });
            }
            Mount::Tmpfs(t) => {
                let target = t.common.target.as_path().display().to_string();
                match t.tmpfs.and_then(|o| o.size) {
                    Some(size) => {
                        tmpfs.push(format!("{target}:size={}", bytes(size).unwrap_or(u64::MAX)))
                    }
                    None => tmpfs.push(target),
                }
            }
            Mount::NamedPipe(_) | Mount::Cluster(_) => {
                return Err(vc.err("npipe and cluster mounts are not supported"));
            }
        }
    }

    let restart = match svc.restart {
        None | Some(Restart::No) => RestartPolicy::No,
        Some(Restart::Always) => RestartPolicy::Always,
        Some(Restart::OnFailure) => RestartPolicy::OnFailure,
        Some(Restart::UnlessStopped) => RestartPolicy::UnlessStopped,
    };

    let healthcheck = match svc.healthcheck {
        None => None,
        Some(Healthcheck::Disable) => Some(HealthCheck {
            test: vec!["NONE".into()],
            interval_ms: None,
            timeout_ms: None,
            retries: None,
            start_period_ms: None,
        }),
        Some(Healthcheck::Command(c)) => {
            let test = match c.test {
                Some(Test::ShellCommand(s)) => vec!["CMD-SHELL".to_owned(), s],
                // compose_spec keeps the arguments of `["CMD", …]` without the `CMD`.
                Some(Test::Command(items)) => {
                    std::iter::once("CMD".to_owned()).chain(items).collect()
                }
                None => return Err(ctx("healthcheck").err("needs a 'test'")),
            };
            Some(HealthCheck {
                test,
                interval_ms: c.interval.map(ms),
                timeout_ms: c.timeout.map(ms),
                retries: c
                    .retries
                    .map(|r| {
                        u32::try_from(r)
                            .map_err(|_| ctx("healthcheck").err("'retries' must be a small number"))
                    })
                    .transpose()?,
                start_period_ms: c.start_period.map(ms),
            })
        }
    };

    let mut depends_on = Vec::new();
    let mut depends_conditions = BTreeMap::new();
    match svc.depends_on {
        ShortOrLong::Short(names) => depends_on.extend(names.iter().map(|n| n.to_string())),
        ShortOrLong::Long(deps) => {
            for (name, dep) in deps {
                let name = name.to_string();
                match dep.condition {
                    Condition::ServiceStarted => {}
                    Condition::ServiceHealthy => {
                        depends_conditions.insert(name.clone(), DependsCondition::ServiceHealthy);
                    }
                    Condition::ServiceCompletedSuccessfully => {
                        depends_conditions
                            .insert(name.clone(), DependsCondition::ServiceCompletedSuccessfully);
                    }
                }
                depends_on.push(name);
            }
        }
    }
    depends_on.sort();
    depends_on.dedup();

    let mut update_order = UpdateOrder::default();
    let mut memory_bytes = svc.mem_limit.and_then(bytes);
    let mut nano_cpus = svc.cpus.map(|c| (f64::from(c) * 1e9) as u64);
    if let Some(deploy) = svc.deploy {
        if let Some(order) = deploy.update_config.and_then(|u| u.order) {
            update_order = match text(&order).as_str() {
                "start-first" => UpdateOrder::StartFirst,
                _ => UpdateOrder::StopFirst,
            };
        }
        if let Some(limits) = deploy.resources.and_then(|r| r.limits) {
            if let Some(m) = limits.memory {
                memory_bytes = bytes(m);
            }
            if let Some(c) = limits.cpus {
                nano_cpus = Some((f64::from(c) * 1e9) as u64);
            }
        }
    }

    let (network_mode, networks) = match svc.network_config {
        None => (None, BTreeMap::new()),
        Some(NetworkConfig::NetworkMode(mode)) => {
            let m = match mode {
                NetworkMode::Host => "host".to_owned(),
                NetworkMode::None => "none".to_owned(),
                NetworkMode::Service(s) => format!("service:{s}"),
                NetworkMode::Other(o) if o == "bridge" => "bridge".to_owned(),
                other => {
                    return Err(ctx("network_mode").err(format!(
                        "'{other}' is not supported (host, none, bridge, service:NAME)"
                    )));
                }
            };
            (Some(m), BTreeMap::new())
        }
        Some(NetworkConfig::Networks(nets)) => {
            let mut out = BTreeMap::new();
            match nets {
                ShortOrLong::Short(names) => {
                    for n in names {
                        out.insert(n.to_string(), ServiceNetwork::default());
                    }
                }
                ShortOrLong::Long(m) => {
                    for (n, opts) in m {
                        let mut sn = ServiceNetwork::default();
                        if let Some(o) = opts {
                            if !o.link_local_ips.is_empty()
                                || o.mac_address.is_some()
                                || !o.driver_opts.is_empty()
                                || o.priority.is_some()
                            {
                                return Err(ctx("networks").err(format!(
                                    "network '{n}': only 'aliases', 'ipv4_address' and 'ipv6_address' are supported"
                                )));
                            }
                            sn.aliases = o.aliases.iter().map(|a| a.to_string()).collect();
                            sn.ipv4_address = o.ipv4_address.map(|a| a.to_string());
                            sn.ipv6_address = o.ipv6_address.map(|a| a.to_string());
                        }
                        out.insert(n.to_string(), sn);
                    }
                }
            }
            (None, out)
        }
    };

    let ulimits = svc
        .ulimits
        .into_iter()
        .map(|(name, l)| {
            let (soft, hard) = match l {
                ShortOrLong::Short(v) => (limit(v), limit(v)),
                ShortOrLong::Long(u) => (limit(u.soft), limit(u.hard)),
            };
            (name.to_string(), Ulimit { soft, hard })
        })
        .collect();

    let sysctls = svc
        .sysctls
        .into_map()
        .map_err(|e| ctx("sysctls").err(e.to_string()))?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(|v| v.to_string()).unwrap_or_default()))
        .collect();

    let logging = svc.logging.map(|l| Logging {
        driver: l.driver,
        options: l
            .options
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.map(|v| v.to_string()).unwrap_or_default()))
            .collect(),
    });

    let expose = svc
        .expose
        .iter()
        .flat_map(|e| {
            let proto = e
                .protocol
                .as_ref()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "tcp".into());
            let start = e.range.start();
            let end = e.range.end().unwrap_or(start);
            (start..=end).map(move |p| format!("{p}/{proto}"))
        })
        .collect();

    let container_name = svc.container_name.map(|c| c.to_string());
    if container_name.is_some() && update_order == UpdateOrder::StartFirst {
        return Err(ctx("container_name").err(
            "cannot be combined with deploy.update_config.order: start-first (two containers cannot hold one name)",
        ));
    }
    if update_order == UpdateOrder::StartFirst
        && networks
            .values()
            .any(|n| n.ipv4_address.is_some() || n.ipv6_address.is_some())
    {
        return Err(ctx("networks").err(
            "a fixed ipv4_address/ipv6_address cannot be combined with deploy.update_config.order: start-first (two containers cannot hold one address)",
        ));
    }

    let extra = ServiceExtra {
        container_name,
        hostname: svc.hostname.map(|h| h.to_string()),
        user: svc.user.map(|u| u.to_string()),
        working_dir: svc.working_dir.map(|w| w.as_path().display().to_string()),
        expose,
        network_mode,
        networks,
        devices: svc.devices.iter().map(|d| d.to_string()).collect(),
        device_cgroup_rules: svc
            .device_cgroup_rules
            .iter()
            .map(|r| r.to_string())
            .collect(),
        privileged: svc.privileged,
        cap_add: svc.cap_add.into_iter().collect(),
        cap_drop: svc.cap_drop.into_iter().collect(),
        security_opt: svc.security_opt.into_iter().collect(),
        extra_hosts: Vec::new(),
        dns: svc
            .dns
            .map(|d| d.into_list().into_iter().map(|ip| ip.to_string()).collect())
            .unwrap_or_default(),
        sysctls,
        ulimits,
        tmpfs,
        read_only: svc.read_only,
        shm_size: svc.shm_size.and_then(bytes),
        init: svc.init,
        stop_signal: svc.stop_signal,
        stop_grace_period_ms: svc.stop_grace_period.map(ms),
        logging,
        memory_bytes,
        nano_cpus,
        tty: svc.tty,
        stdin_open: svc.stdin_open,
        platform: svc.platform.as_ref().map(text),
        depends_conditions,
        configs: file_mounts(&ctx("configs"), svc.configs, false)?,
        secrets: file_mounts(&ctx("secrets"), svc.secrets, true)?,
    };

    Ok(ServiceSpec {
        image,
        command: svc
            .command
            .map(|c| command(&ctx("command"), c))
            .transpose()?,
        entrypoint: svc
            .entrypoint
            .map(|c| command(&ctx("entrypoint"), c))
            .transpose()?,
        environment: key_values(&ctx("environment"), svc.environment, vars)?,
        ports: ports_out,
        volumes: mounts,
        restart,
        healthcheck,
        labels: key_values(&ctx("labels"), svc.labels, vars)?,
        depends_on,
        update_order,
        extra,
    })
}

/// A bind mount's source: absolute host path, or a path relative to the stack directory.
fn bind_source(source: &str) -> Result<(VolumeKind, String), String> {
    if source.starts_with('/') {
        return Ok((VolumeKind::Bind, source.to_owned()));
    }
    if source.starts_with('~') {
        return Err(format!(
            "source '{source}': a home directory means nothing on a device: use a relative path (./{}) for the stack's directory, or an absolute host path",
            source.trim_start_matches("~/")
        ));
    }
    let mut parts = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "source '{source}' leaves the stack directory ('..'): use an absolute host path"
                ));
            }
            p => parts.push(p),
        }
    }
    Ok((VolumeKind::Stack, parts.join("/")))
}

#[cfg(test)]
mod tests;
