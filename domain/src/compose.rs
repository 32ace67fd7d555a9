//! Compose files: the format users already have, reduced to the subset edgefleet runs.
//!
//! [`parse`] turns a Compose YAML document into normalized [`ServiceSpec`]s or an error that
//! names the service and key at fault. Any key outside the supported subset is refused here,
//! at `apply` time, never silently ignored and never discovered on a device.

use std::collections::BTreeMap;

use edgefleet_protocol::ids::{validate_service_name, validate_stack_name};
use edgefleet_protocol::spec::{
    HealthCheck, PortMapping, PortProtocol, RestartPolicy, ServiceSpec, StackSpec, UpdateOrder,
    VolumeKind, VolumeMount,
};
use serde_yaml::Value;
use thiserror::Error;

use crate::duration::parse_duration_ms;

/// Service keys edgefleet supports (`deploy` only for `update_config.order`).
pub const SUPPORTED_SERVICE_KEYS: [&str; 11] = [
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
];

/// Top-level keys accepted. `version` and `name` are informational in Compose and ignored.
const TOP_LEVEL_KEYS: [&str; 5] = ["services", "volumes", "version", "name", ROLLOUT_KEY];

/// Top-level extension key holding the deployment's rollout strategy. Its presence makes
/// `apply` staged: devices already running the deployment stay on their revision until a
/// rollout moves them.
pub const ROLLOUT_KEY: &str = "x-edgefleet-rollout";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ComposeError {
    #[error("the Compose file is not valid YAML: {0}")]
    Yaml(String),
    #[error("the Compose file must be a mapping with a 'services' key")]
    NotAMapping,
    #[error(
        "top-level key '{0}' is not supported (supported: services, volumes, x-edgefleet-rollout; version and name are ignored)"
    )]
    TopLevelKey(String),
    #[error("{ROLLOUT_KEY}: {0}")]
    Rollout(String),
    #[error("the Compose file defines no services")]
    NoServices,
    #[error("service '{service}': key '{key}' is not supported by edgefleet (supported: {supported})", supported = SUPPORTED_SERVICE_KEYS.join(", "))]
    UnsupportedKey { service: String, key: String },
    #[error("service '{service}': '{key}' {problem}")]
    Invalid {
        service: String,
        key: String,
        problem: String,
    },
    #[error("{0}")]
    Name(String),
    #[error(
        "volume '{volume}' used by service '{service}' is not declared under the top-level 'volumes' key"
    )]
    UndeclaredVolume { service: String, volume: String },
    #[error("{0}")]
    Order(String),
}

/// A parsed Compose file: services and declared named volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeStack {
    pub services: BTreeMap<String, ServiceSpec>,
    pub volumes: Vec<String>,
    /// The validated `x-edgefleet-rollout` strategy, if the file has one.
    pub rollout: Option<crate::rollout::strategy::Strategy>,
}

impl ComposeStack {
    /// The stack as it goes into a device's desired document.
    pub fn into_stack_spec(self, deployment: &str, revision: u64) -> StackSpec {
        StackSpec {
            deployment: deployment.to_owned(),
            deployment_revision: revision,
            volumes: self.volumes,
            services: self.services,
        }
    }
}

/// Parses and validates a Compose document.
pub fn parse(yaml: &str) -> Result<ComposeStack, ComposeError> {
    let doc: Value = serde_yaml::from_str(yaml).map_err(|e| ComposeError::Yaml(e.to_string()))?;
    let top = doc.as_mapping().ok_or(ComposeError::NotAMapping)?;
    for key in top.keys() {
        let key = key_str(key);
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            return Err(ComposeError::TopLevelKey(key));
        }
    }
    let volumes = match top.get("volumes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Mapping(m)) => {
            let mut names = Vec::new();
            for (k, v) in m {
                let name = key_str(k);
                validate_stack_name(&name)
                    .map_err(|e| ComposeError::Name(format!("top-level volume: {e}")))?;
                if !matches!(v, Value::Null) && v.as_mapping().is_none_or(|m| !m.is_empty()) {
                    return Err(ComposeError::Name(format!(
                        "top-level volume '{name}': options (driver, external, …) are not supported; declare it as '{name}: {{}}'"
                    )));
                }
                names.push(name);
            }
            names
        }
        Some(_) => {
            return Err(ComposeError::Name(
                "top-level 'volumes' must be a mapping".into(),
            ));
        }
    };
    let services_value = top.get("services").ok_or(ComposeError::NoServices)?;
    let services_map = services_value
        .as_mapping()
        .ok_or(ComposeError::NoServices)?;
    if services_map.is_empty() {
        return Err(ComposeError::NoServices);
    }
    let mut services = BTreeMap::new();
    for (name, body) in services_map {
        let name = key_str(name);
        validate_service_name(&name).map_err(|e| ComposeError::Name(e.to_string()))?;
        let svc = parse_service(&name, body)?;
        for v in &svc.volumes {
            if v.kind == VolumeKind::Named && !volumes.contains(&v.source) {
                return Err(ComposeError::UndeclaredVolume {
                    service: name.clone(),
                    volume: v.source.clone(),
                });
            }
        }
        services.insert(name, svc);
    }
    let rollout = match top.get(ROLLOUT_KEY) {
        None => None,
        Some(v) => {
            let text = serde_yaml::to_string(v).unwrap_or_default();
            Some(
                crate::rollout::strategy::Strategy::from_yaml(&text)
                    .map_err(|e| ComposeError::Rollout(e.to_string()))?,
            )
        }
    };
    let stack = ComposeStack {
        services,
        volumes,
        rollout,
    };
    stack
        .clone()
        .into_stack_spec("check", 0)
        .start_order()
        .map_err(|e| ComposeError::Order(e.to_string()))?;
    Ok(stack)
}

fn key_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

struct Ctx<'a> {
    service: &'a str,
    key: &'static str,
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

fn parse_service(service: &str, body: &Value) -> Result<ServiceSpec, ComposeError> {
    let map = body.as_mapping().ok_or_else(|| ComposeError::Invalid {
        service: service.to_owned(),
        key: "(service)".into(),
        problem: "must be a mapping of keys".into(),
    })?;
    for key in map.keys() {
        let key = key_str(key);
        if !SUPPORTED_SERVICE_KEYS.contains(&key.as_str()) {
            return Err(ComposeError::UnsupportedKey {
                service: service.to_owned(),
                key,
            });
        }
    }
    let ctx = |key| Ctx { service, key };
    let image = match map.get("image") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(_) => return Err(ctx("image").err("must be a non-empty string")),
        None => return Err(ctx("image").err("is required (edgefleet does not build images)")),
    };
    Ok(ServiceSpec {
        image,
        command: map
            .get("command")
            .map(|v| command(&ctx("command"), v))
            .transpose()?,
        entrypoint: map
            .get("entrypoint")
            .map(|v| command(&ctx("entrypoint"), v))
            .transpose()?,
        environment: map
            .get("environment")
            .map(|v| key_values(&ctx("environment"), v))
            .transpose()?
            .unwrap_or_default(),
        ports: map
            .get("ports")
            .map(|v| ports(&ctx("ports"), v))
            .transpose()?
            .unwrap_or_default(),
        volumes: map
            .get("volumes")
            .map(|v| volumes(&ctx("volumes"), v))
            .transpose()?
            .unwrap_or_default(),
        restart: map
            .get("restart")
            .map(|v| restart(&ctx("restart"), v))
            .transpose()?
            .unwrap_or_default(),
        healthcheck: map
            .get("healthcheck")
            .map(|v| healthcheck(&ctx("healthcheck"), v))
            .transpose()?
            .flatten(),
        labels: map
            .get("labels")
            .map(|v| key_values(&ctx("labels"), v))
            .transpose()?
            .unwrap_or_default(),
        depends_on: map
            .get("depends_on")
            .map(|v| depends_on(&ctx("depends_on"), v))
            .transpose()?
            .unwrap_or_default(),
        update_order: map
            .get("deploy")
            .map(|v| deploy(&ctx("deploy"), v))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `command`/`entrypoint`: a list of strings, or a string split on whitespace (Compose
/// uses shell-like splitting; quotes are not interpreted here, so a string with quotes is
/// refused with advice to use the list form).
fn command(ctx: &Ctx, v: &Value) -> Result<Vec<String>, ComposeError> {
    match v {
        Value::String(s) => {
            if s.contains('"') || s.contains('\'') {
                return Err(ctx.err("uses quotes in the string form: write it as a list, e.g. [\"sh\", \"-c\", \"echo hi\"]"));
            }
            Ok(s.split_whitespace().map(str::to_owned).collect())
        }
        Value::Sequence(items) => items
            .iter()
            .map(|i| scalar(i).ok_or_else(|| ctx.err("must be a list of strings")))
            .collect(),
        _ => Err(ctx.err("must be a string or a list of strings")),
    }
}

/// `environment`/`labels`: a map, or a list of `KEY=value`.
fn key_values(ctx: &Ctx, v: &Value) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                let key = key_str(k);
                let val = match val {
                    Value::Null => String::new(),
                    other => scalar(other)
                        .ok_or_else(|| ctx.err(format!("value of '{key}' must be a scalar")))?,
                };
                out.insert(key, val);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let s =
                    scalar(item).ok_or_else(|| ctx.err("list items must be KEY=value strings"))?;
                let (k, val) = s.split_once('=').unwrap_or((s.as_str(), ""));
                out.insert(k.to_owned(), val.to_owned());
            }
        }
        Value::Null => {}
        _ => return Err(ctx.err("must be a mapping or a list of KEY=value")),
    }
    if let Some(k) = out
        .keys()
        .find(|k| k.is_empty() || k.contains(char::is_whitespace))
    {
        return Err(ctx.err(format!("has an invalid key {k:?}")));
    }
    Ok(out)
}

fn ports(ctx: &Ctx, v: &Value) -> Result<Vec<PortMapping>, ComposeError> {
    let items = v
        .as_sequence()
        .ok_or_else(|| ctx.err("must be a list like [\"8080:80\"]"))?;
    items
        .iter()
        .map(|i| {
            let s = scalar(i).ok_or_else(|| {
                ctx.err(
                    "items must be strings like \"8080:80/tcp\" (the long syntax is not supported)",
                )
            })?;
            parse_port(&s).map_err(|p| ctx.err(format!("item {s:?}: {p}")))
        })
        .collect()
}

fn parse_port(s: &str) -> Result<PortMapping, String> {
    let (rest, protocol) = match s.rsplit_once('/') {
        Some((r, "tcp")) => (r, PortProtocol::Tcp),
        Some((r, "udp")) => (r, PortProtocol::Udp),
        Some((_, p)) => return Err(format!("protocol '{p}' is not tcp or udp")),
        None => (s, PortProtocol::Tcp),
    };
    let num = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "'{p}' is not a port number (ranges are not supported)"
            )),
        }
    };
    let parts: Vec<&str> = rest.rsplitn(3, ':').collect();
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [c] => (None, None, num(c)?),
        [c, h] => (None, Some(num(h)?), num(c)?),
        [c, h, ip] => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| format!("'{ip}' is not an IP address"))?;
            let host_port = if h.is_empty() { None } else { Some(num(h)?) };
            (Some(ip.to_owned()), host_port, num(c)?)
        }
        _ => return Err("expected [IP:][HOST:]CONTAINER[/tcp|udp]".into()),
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

fn volumes(ctx: &Ctx, v: &Value) -> Result<Vec<VolumeMount>, ComposeError> {
    let items = v
        .as_sequence()
        .ok_or_else(|| ctx.err("must be a list like [\"data:/var/lib/app\"]"))?;
    items
        .iter()
        .map(|i| {
            let s = scalar(i).ok_or_else(|| ctx.err("items must be strings like \"SOURCE:TARGET[:ro]\" (the long syntax is not supported)"))?;
            parse_volume(&s).map_err(|p| ctx.err(format!("item {s:?}: {p}")))
        })
        .collect()
}

fn parse_volume(s: &str) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [src, tgt] => (*src, *tgt, false),
        [src, tgt, "ro"] => (*src, *tgt, true),
        [src, tgt, "rw"] => (*src, *tgt, false),
        [_, _, mode] => return Err(format!("mode '{mode}' is not ro or rw")),
        [_] => {
            return Err("anonymous volumes are not supported: name it, e.g. \"data:/path\"".into());
        }
        _ => return Err("expected SOURCE:TARGET[:ro|rw]".into()),
    };
    if !target.starts_with('/') {
        return Err(format!(
            "target '{target}' must be an absolute path in the container"
        ));
    }
    let kind = if source.starts_with('/') {
        VolumeKind::Bind
    } else if source.starts_with('.') || source.starts_with('~') {
        return Err(format!(
            "relative bind source '{source}' cannot be resolved on a device: use an absolute host path"
        ));
    } else {
        validate_stack_name(source).map_err(|e| format!("volume name: {e}"))?;
        VolumeKind::Named
    };
    Ok(VolumeMount {
        kind,
        source: source.to_owned(),
        target: target.to_owned(),
        read_only,
    })
}

fn restart(ctx: &Ctx, v: &Value) -> Result<RestartPolicy, ComposeError> {
    match scalar(v).as_deref() {
        Some("no") | Some("false") => Ok(RestartPolicy::No),
        Some("always") => Ok(RestartPolicy::Always),
        Some("on-failure") => Ok(RestartPolicy::OnFailure),
        Some("unless-stopped") => Ok(RestartPolicy::UnlessStopped),
        _ => Err(ctx.err("must be one of: no, always, on-failure, unless-stopped")),
    }
}

const HEALTH_KEYS: [&str; 6] = [
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "disable",
];

fn healthcheck(ctx: &Ctx, v: &Value) -> Result<Option<HealthCheck>, ComposeError> {
    let m = v
        .as_mapping()
        .ok_or_else(|| ctx.err("must be a mapping with 'test'"))?;
    for k in m.keys() {
        let k = key_str(k);
        if !HEALTH_KEYS.contains(&k.as_str()) {
            return Err(ctx.err(format!(
                "key '{k}' is not supported (supported: {})",
                HEALTH_KEYS.join(", ")
            )));
        }
    }
    if matches!(m.get("disable"), Some(Value::Bool(true))) {
        return Ok(Some(HealthCheck {
            test: vec!["NONE".into()],
            interval_ms: None,
            timeout_ms: None,
            retries: None,
            start_period_ms: None,
        }));
    }
    let test = match m.get("test") {
        Some(Value::String(s)) => vec!["CMD-SHELL".to_owned(), s.clone()],
        Some(Value::Sequence(items)) => {
            let items: Vec<String> = items
                .iter()
                .map(|i| scalar(i).ok_or_else(|| ctx.err("'test' must be a list of strings")))
                .collect::<Result<_, _>>()?;
            match items.first().map(String::as_str) {
                Some("CMD") | Some("CMD-SHELL") if items.len() >= 2 => items,
                Some("NONE") => items,
                _ => return Err(ctx.err("'test' must start with CMD, CMD-SHELL or NONE")),
            }
        }
        _ => return Err(ctx.err("needs a 'test' (string or list)")),
    };
    let dur = |key: &str| -> Result<Option<u64>, ComposeError> {
        match m.get(key) {
            None => Ok(None),
            Some(v) => {
                let s = scalar(v).unwrap_or_default();
                parse_duration_ms(&s).map(Some).ok_or_else(|| {
                    ctx.err(format!(
                        "'{key}' value {s:?} is not a duration like 10s, 1m30s, 500ms"
                    ))
                })
            }
        }
    };
    let retries = match m.get("retries") {
        None => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ctx.err("'retries' must be a small whole number"))?,
        ),
        Some(_) => return Err(ctx.err("'retries' must be a whole number")),
    };
    Ok(Some(HealthCheck {
        test,
        interval_ms: dur("interval")?,
        timeout_ms: dur("timeout")?,
        retries,
        start_period_ms: dur("start_period")?,
    }))
}

/// `deploy`: of Compose's deploy section only `update_config.order` applies to one device;
/// everything else (replicas, resources, placement, …) is refused rather than ignored.
fn deploy(ctx: &Ctx, v: &Value) -> Result<UpdateOrder, ComposeError> {
    // The value of `path`'s only allowed key, refusing any other key.
    let only = |v: &Value, path: &str, allowed: &str| -> Result<Option<Value>, ComposeError> {
        let dotted = |k: &str| match path {
            "" => k.to_owned(),
            _ => format!("{path}.{k}"),
        };
        let m = match v {
            Value::Null => return Ok(None),
            Value::Mapping(m) => m,
            _ if path.is_empty() => return Err(ctx.err("must be a mapping")),
            _ => return Err(ctx.err(format!("key '{path}' must be a mapping"))),
        };
        for k in m.keys() {
            let k = key_str(k);
            if k != allowed {
                return Err(ctx.err(format!(
                    "key '{}' is not supported (supported: {})",
                    dotted(&k),
                    dotted(allowed)
                )));
            }
        }
        Ok(m.get(allowed).cloned())
    };
    let Some(update_config) = only(v, "", "update_config")? else {
        return Ok(UpdateOrder::default());
    };
    let Some(order) = only(&update_config, "update_config", "order")? else {
        return Ok(UpdateOrder::default());
    };
    match scalar(&order).as_deref() {
        Some("stop-first") => Ok(UpdateOrder::StopFirst),
        Some("start-first") => Ok(UpdateOrder::StartFirst),
        _ => Err(ctx.err("key 'update_config.order' must be start-first or stop-first")),
    }
}

fn depends_on(ctx: &Ctx, v: &Value) -> Result<Vec<String>, ComposeError> {
    let mut out = Vec::new();
    match v {
        Value::Sequence(items) => {
            for i in items {
                out.push(scalar(i).ok_or_else(|| ctx.err("must be a list of service names"))?);
            }
        }
        Value::Mapping(m) => {
            for (k, cond) in m {
                let name = key_str(k);
                if let Some(c) = cond.as_mapping().and_then(|c| c.get("condition")) {
                    let c = scalar(c).unwrap_or_default();
                    if c != "service_started" && c != "service_healthy" {
                        return Err(ctx.err(format!("condition '{c}' for '{name}' is not supported (service_started, service_healthy)")));
                    }
                }
                out.push(name);
            }
        }
        _ => return Err(ctx.err("must be a list or a mapping of service names")),
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
version: "3.8"
services:
  db:
    image: registry.local/db:1.2
    environment: ["A=1", "B=two"]
    volumes: ["data:/var/lib/db", "/etc/plant:/etc/plant:ro"]
    restart: unless-stopped
  web:
    image: web:2
    command: ["httpd", "-f"]
    entrypoint: /bin/sh -c
    environment: { MODE: prod, PORT: 8080 }
    ports: ["8080:80", "127.0.0.1:9000:9000/udp", "443"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1m30s
      timeout: 500ms
      retries: 3
      start_period: 2s
    labels: { team: ot }
    depends_on: { db: { condition: service_healthy } }
    deploy:
      update_config:
        order: start-first
volumes:
  data: {}
"#;

    #[test]
    fn parses_the_supported_subset() {
        let stack = parse(FULL).unwrap();
        assert_eq!(stack.volumes, vec!["data"]);
        let db = &stack.services["db"];
        assert_eq!(db.environment["B"], "two");
        assert_eq!(db.volumes[0].kind, VolumeKind::Named);
        assert!(db.volumes[1].read_only);
        assert_eq!(db.restart, RestartPolicy::UnlessStopped);
        let web = &stack.services["web"];
        assert_eq!(
            web.command.as_deref(),
            Some(&["httpd".to_owned(), "-f".to_owned()][..])
        );
        assert_eq!(web.entrypoint.as_ref().map(Vec::len), Some(2));
        assert_eq!(web.environment["PORT"], "8080");
        assert_eq!(web.ports[0].host_port, Some(8080));
        assert_eq!(web.ports[1].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(web.ports[1].protocol, PortProtocol::Udp);
        assert_eq!(web.ports[2].host_port, None);
        let hc = web.healthcheck.as_ref().unwrap();
        assert_eq!(hc.interval_ms, Some(90_000));
        assert_eq!(hc.timeout_ms, Some(500));
        assert_eq!(hc.retries, Some(3));
        assert_eq!(web.depends_on, vec!["db"]);
        assert_eq!(web.update_order, UpdateOrder::StartFirst);
        assert_eq!(db.update_order, UpdateOrder::StopFirst);
    }

    #[test]
    fn update_order_from_deploy_update_config() {
        let order = |deploy: &str| {
            parse(&format!(
                "services:\n  web:\n    image: a\n    deploy: {deploy}\n"
            ))
            .map(|s| s.services["web"].update_order)
        };
        assert_eq!(
            order("{ update_config: { order: start-first } }"),
            Ok(UpdateOrder::StartFirst)
        );
        assert_eq!(
            order("{ update_config: { order: stop-first } }"),
            Ok(UpdateOrder::StopFirst)
        );
        assert_eq!(order("{ update_config: {} }"), Ok(UpdateOrder::StopFirst));
        assert_eq!(order("{}"), Ok(UpdateOrder::StopFirst));
        // The default order leaves the spec (and its config hash) as without `deploy`.
        let plain = parse("services:\n  web:\n    image: a\n").unwrap();
        let stop = parse(
            "services:\n  web:\n    image: a\n    deploy: { update_config: { order: stop-first } }\n",
        )
        .unwrap();
        assert_eq!(plain, stop);
    }

    #[test]
    fn refusals_name_the_service_and_key() {
        let cases: &[(&str, &str)] = &[
            (
                "services:\n  web:\n    image: a\n    privileged: true\n",
                "service 'web': key 'privileged' is not supported",
            ),
            (
                "services:\n  web:\n    build: .\n",
                "key 'build' is not supported",
            ),
            ("services:\n  web:\n    command: x\n", "'image' is required"),
            (
                "networks: {}\nservices:\n  web:\n    image: a\n",
                "top-level key 'networks'",
            ),
            (
                "services:\n  web:\n    image: a\n    ports: [\"99999:1\"]\n",
                "service 'web': 'ports'",
            ),
            (
                "services:\n  web:\n    image: a\n    volumes: [\"./x:/x\"]\n",
                "absolute host path",
            ),
            (
                "services:\n  web:\n    image: a\n    volumes: [\"data:/x\"]\n",
                "not declared",
            ),
            (
                "services:\n  web:\n    image: a\n    restart: sometimes\n",
                "service 'web': 'restart'",
            ),
            (
                "services:\n  a:\n    image: a\n    depends_on: [b]\n  b:\n    image: b\n    depends_on: [a]\n",
                "cycle",
            ),
            (
                "services:\n  a:\n    image: a\n    depends_on: [zz]\n",
                "'zz'",
            ),
            (
                "services:\n  a:\n    image: a\n    healthcheck: { test: [\"CMD\", \"x\"], interval: soon }\n",
                "not a duration",
            ),
            ("services: {}\n", "no services"),
            ("- a\n- b\n", "mapping"),
            ("services:\n  web: [\n", "not valid YAML"),
            ("services:\n  \"a/b\":\n    image: a\n", "service name"),
            (
                "services:\n  web:\n    image: a\n    deploy: { replicas: 2 }\n",
                "service 'web': 'deploy' key 'replicas' is not supported (supported: update_config)",
            ),
            (
                "services:\n  web:\n    image: a\n    deploy: { update_config: { order: start-first, parallelism: 2 } }\n",
                "service 'web': 'deploy' key 'update_config.parallelism' is not supported (supported: update_config.order)",
            ),
            (
                "services:\n  web:\n    image: a\n    deploy: { update_config: { order: rolling } }\n",
                "service 'web': 'deploy' key 'update_config.order' must be start-first or stop-first",
            ),
            (
                "services:\n  web:\n    image: a\n    deploy: start-first\n",
                "service 'web': 'deploy' must be a mapping",
            ),
            (
                "services:\n  web:\n    image: a\n    deploy: { update_config: [order] }\n",
                "service 'web': 'deploy' key 'update_config' must be a mapping",
            ),
        ];
        for (yaml, needle) in cases {
            let err = parse(yaml).expect_err(yaml).to_string();
            assert!(
                err.contains(needle),
                "{yaml:?}: got {err:?}, wanted {needle:?}"
            );
        }
    }
}
