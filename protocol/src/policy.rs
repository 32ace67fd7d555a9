//! Site workload policies: what the workloads of a site may do on its devices.
//!
//! One policy applies to a device: its site's, else the fleet default, else [`baseline`]
//! (`WorkloadPolicy::default()`), in the spirit of Kubernetes' Pod Security Standards
//! *baseline*: no privileged containers, no host network, no host devices, no host paths
//! outside the stack's own directory, no capabilities beyond the baseline set, no unconfined
//! seccomp or AppArmor, only the safe sysctls, only the `local` volume driver.
//!
//! The controller checks every stack against the policy of every device it targets at
//! `apply`; the policy also travels inside the signed desired document, and the agent checks
//! the stacks that document changes against it again (defence in depth).
//!
//! [`baseline`]: WorkloadPolicy::baseline

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{ServiceSpec, StackSpec, VolumeKind};

/// Capabilities a container may add under every policy: the Pod Security Standards'
/// baseline set (Docker's default set without `NET_RAW`).
pub const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls every policy allows (the Pod Security Standards' safe set).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_syncookies",
];

/// The log a container keeps when its service sets no `logging`: the agent's default
/// `json-file` rotation of 3 files of 10 MiB.
pub const DEFAULT_LOG_MAX_SIZE: &str = "10m";
pub const DEFAULT_LOG_MAX_FILE: &str = "3";

/// What the workloads of a site may do. Every field's default is the baseline's answer, and
/// fields at their default are left out of the document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPolicy {
    /// Registries images may come from (`registry.plant.local`, `host:5000`; `docker.io` for
    /// Docker Hub, which is where an image without a registry comes from). Absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registries: Option<Vec<String>>,
    /// Every image must be pinned by digest (`image@sha256:…`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_digest: bool,
    /// `privileged: true` allowed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// `network_mode: host` allowed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_network: bool,
    /// Host devices `devices` may map: paths, or prefixes ending in `*` (`/dev/ttyUSB*`);
    /// `*` allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Host paths bind mounts may use, each with everything below it (`/srv/data`); `/`
    /// allows any. The stack's own directory (relative bind mounts) is always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_paths: Vec<String>,
    /// Capabilities `cap_add` may add beyond [`BASELINE_CAPABILITIES`]; `ALL` allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// `security_opt` may turn seccomp, AppArmor or SELinux labelling off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unconfined: bool,
    /// Sysctls allowed beyond [`SAFE_SYSCTLS`]: names, or prefixes ending in `*`; `*`: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<String>,
    /// Volume drivers allowed beyond `local`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_drivers: Vec<String>,
    /// Every service must set a memory limit (`mem_limit` or `deploy.resources.limits`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_memory_limit: bool,
    /// Every service must set a CPU limit (`cpus` or `deploy.resources.limits`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_cpu_limit: bool,
    /// The most log a container may keep on the device, in bytes (`max-size` × `max-file`
    /// of the `json-file` or `local` driver; the agent's default rotation counts as 30 MiB).
    /// Absent: no cap beyond the rotation every log must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log_bytes: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One thing a stack does that its policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The service (or, for a volume's options, `volume <name>`).
    pub service: String,
    /// The Compose key at fault (`privileged`, `volumes`, `image`, …).
    pub key: String,
    /// The policy field that refuses it (`privileged`, `host_paths`, `registries`, …).
    pub rule: String,
    /// What exactly, in words.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service '{}', key '{}': {} (policy rule '{}')",
            self.service, self.key, self.detail, self.rule
        )
    }
}

impl WorkloadPolicy {
    /// The built-in policy of a site and a fleet that set none.
    pub fn baseline() -> Self {
        WorkloadPolicy::default()
    }

    /// Everything a stack of this file does that the policy does not allow (empty: allowed).
    pub fn check(&self, stack: &StackSpec) -> Vec<Violation> {
        let mut out = Vec::new();
        for (name, svc) in &stack.services {
            self.check_service(name, svc, &mut out);
        }
        for (name, opts) in &stack.volume_options {
            let subject = format!("volume {name}");
            if let Some(driver) = opts.driver.as_deref()
                && driver != "local"
                && !self.volume_drivers.iter().any(|d| d == driver)
            {
                out.push(v(
                    &subject,
                    "driver",
                    "volume_drivers",
                    format!(
                        "volume driver '{driver}' is not allowed (allowed: local{})",
                        list_tail(&self.volume_drivers)
                    ),
                ));
            }
            // The local driver with `o: bind` mounts a host directory: a host path in disguise.
            let binds = opts.driver_opts.get("o").is_some_and(|o| {
                o.split(',')
                    .any(|x| x.trim() == "bind" || x.trim() == "rbind")
            });
            if binds && let Some(device) = opts.driver_opts.get("device") {
                self.check_host_path(&subject, "driver_opts", device, &mut out);
            }
        }
        out
    }

    fn check_service(&self, name: &str, svc: &ServiceSpec, out: &mut Vec<Violation>) {
        let x = &svc.extra;
        if let Some(allowed) = &self.registries {
            let registry = registry_of(&svc.image);
            if !allowed.iter().any(|r| same_registry(r, &registry)) {
                out.push(v(
                    name,
                    "image",
                    "registries",
                    format!(
                        "image '{}' comes from registry '{registry}', which is not allowed (allowed: {})",
                        svc.image,
                        if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") }
                    ),
                ));
            }
        }
        if self.require_digest && !pinned_by_digest(&svc.image) {
            out.push(v(
                name,
                "image",
                "require_digest",
                format!(
                    "image '{}' is not pinned by digest (write it as name@sha256:<64 hex>)",
                    svc.image
                ),
            ));
        }
        if x.privileged && !self.privileged {
            out.push(v(
                name,
                "privileged",
                "privileged",
                "privileged containers are not allowed".into(),
            ));
        }
        if x.network_mode.as_deref() == Some("host") && !self.host_network {
            out.push(v(
                name,
                "network_mode",
                "host_network",
                "the host network (network_mode: host) is not allowed".into(),
            ));
        }
        for d in &x.devices {
            let host = d.split(':').next().unwrap_or_default();
            if !matches_any(&self.devices, host) {
                out.push(v(
                    name,
                    "devices",
                    "devices",
                    format!(
                        "host device '{host}' is not allowed (allowed: {})",
                        or_none(&self.devices)
                    ),
                ));
            }
        }
        // A cgroup rule opens device numbers (`c 188:* rmw`), not paths: only a policy that
        // allows any device allows it.
        if !x.device_cgroup_rules.is_empty() && !self.devices.iter().any(|d| d == "*") {
            out.push(v(
                name,
                "device_cgroup_rules",
                "devices",
                format!(
                    "device cgroup rules ({}) open host devices by number; only a policy with devices: ['*'] allows them",
                    x.device_cgroup_rules.join(", ")
                ),
            ));
        }
        for m in &svc.volumes {
            if m.kind == VolumeKind::Bind {
                self.check_host_path(name, "volumes", &m.source, out);
            }
        }
        for c in &x.cap_add {
            let cap = capability(c);
            let allowed = BASELINE_CAPABILITIES.contains(&cap.as_str())
                || self
                    .capabilities
                    .iter()
                    .any(|a| capability(a) == "ALL" || capability(a) == cap);
            if !allowed {
                out.push(v(
                    name,
                    "cap_add",
                    "capabilities",
                    format!("capability {cap} is beyond the baseline set and not allowed (allowed beyond it: {})", or_none(&self.capabilities)),
                ));
            }
        }
        if !self.unconfined {
            for o in &x.security_opt {
                if unconfines(o) {
                    out.push(v(
                        name,
                        "security_opt",
                        "unconfined",
                        format!("'{o}' turns a confinement off, which is not allowed"),
                    ));
                }
            }
        }
        for s in x.sysctls.keys() {
            if !SAFE_SYSCTLS.contains(&s.as_str()) && !matches_any(&self.sysctls, s) {
                out.push(v(
                    name,
                    "sysctls",
                    "sysctls",
                    format!("sysctl '{s}' is outside the safe set and not allowed"),
                ));
            }
        }
        if self.require_memory_limit && x.memory_bytes.is_none() {
            out.push(v(
                name,
                "mem_limit",
                "require_memory_limit",
                "a memory limit is required (mem_limit, or deploy.resources.limits.memory)".into(),
            ));
        }
        if self.require_cpu_limit && x.nano_cpus.is_none() {
            out.push(v(
                name,
                "cpus",
                "require_cpu_limit",
                "a CPU limit is required (cpus, or deploy.resources.limits.cpus)".into(),
            ));
        }
        if let Some(max) = self.max_log_bytes {
            match log_bytes(svc) {
                Some(bytes) if bytes <= max => {}
                Some(bytes) => out.push(v(
                    name,
                    "logging",
                    "max_log_bytes",
                    format!("the container may keep {bytes} bytes of log, above the {max} allowed (set logging.options max-size and max-file)"),
                )),
                None => out.push(v(
                    name,
                    "logging",
                    "max_log_bytes",
                    format!("the log is not size-capped (the json-file and local drivers need max-size, and max-file); at most {max} bytes are allowed"),
                )),
            }
        }
    }

    fn check_host_path(&self, subject: &str, key: &str, path: &str, out: &mut Vec<Violation>) {
        let Some(normal) = normalize(path) else {
            out.push(v(
                subject,
                key,
                "host_paths",
                format!("host path '{path}' is not an absolute path without '..'"),
            ));
            return;
        };
        let allowed = self.host_paths.iter().any(|p| {
            normalize(p)
                .is_some_and(|p| p == "/" || normal == p || normal.starts_with(&format!("{p}/")))
        });
        if !allowed {
            out.push(v(
                subject,
                key,
                "host_paths",
                format!(
                    "host path '{path}' is not allowed (allowed: {}; relative paths like ./data live in the stack's own directory and are always allowed)",
                    or_none(&self.host_paths)
                ),
            ));
        }
    }
}

fn v(service: &str, key: &str, rule: &str, detail: String) -> Violation {
    Violation {
        service: service.to_owned(),
        key: key.to_owned(),
        rule: rule.to_owned(),
        detail,
    }
}

fn or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

fn list_tail(list: &[String]) -> String {
    list.iter().map(|d| format!(", {d}")).collect()
}

/// `x` matches a pattern of the list: equal, a prefix ending in `*`, or `*`.
fn matches_any(patterns: &[String], x: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => x.starts_with(prefix),
        None => p == x,
    })
}

/// `cap_add` entries as Docker takes them: case-insensitive, with or without `CAP_`.
fn capability(c: &str) -> String {
    let up = c.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map(str::to_owned).unwrap_or(up)
}

fn unconfines(opt: &str) -> bool {
    let o = opt.trim().to_ascii_lowercase().replace(':', "=");
    matches!(
        o.as_str(),
        "seccomp=unconfined" | "apparmor=unconfined" | "label=disable" | "systempaths=unconfined"
    )
}

/// An absolute path with `.` and empty parts removed, or `None` if it is relative or has a
/// `..` part (which could climb out of an allowed directory).
fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The registry an image reference pulls from, as Docker reads it: the first part when it
/// has a `.` or a `:` or is `localhost`, else Docker Hub (`docker.io`).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_ascii_lowercase()
        }
        _ => "docker.io".to_owned(),
    }
}

fn same_registry(allowed: &str, registry: &str) -> bool {
    let hub = |r: &str| {
        let r = r.trim().to_ascii_lowercase();
        match r.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
                "docker.io".to_owned()
            }
            _ => r,
        }
    };
    hub(allowed) == hub(registry)
}

fn pinned_by_digest(image: &str) -> bool {
    image
        .rsplit_once("@sha256:")
        .is_some_and(|(_, hex)| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The most log bytes a container of this service keeps on the device, or `None` if
/// unbounded.
pub fn log_bytes(svc: &ServiceSpec) -> Option<u64> {
    let Some(logging) = &svc.extra.logging else {
        return Some(size(DEFAULT_LOG_MAX_SIZE)? * size(DEFAULT_LOG_MAX_FILE)?);
    };
    let driver = logging.driver.as_deref().unwrap_or("json-file");
    let opt = |k: &str| logging.options.get(k).map(String::as_str);
    match driver {
        "none" => Some(0),
        // The local driver rotates 5 files of 20 MiB unless told otherwise.
        "local" => {
            Some(size(opt("max-size").unwrap_or("20m"))? * size(opt("max-file").unwrap_or("5"))?)
        }
        "json-file" => Some(size(opt("max-size")?)? * size(opt("max-file").unwrap_or("1"))?),
        // Other drivers send the log off the container's disk (syslog, journald, fluentd…).
        _ => Some(0),
    }
}

/// Docker's size notation: a whole number with an optional `b`, `k`, `m` or `g` (binary
/// units: `10m` is 10 MiB).
pub fn size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, unit) = match s.char_indices().last()? {
        (i, 'k') => (&s[..i], 1u64 << 10),
        (i, 'm') => (&s[..i], 1 << 20),
        (i, 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::{Logging, VolumeMount, VolumeOptions};

    fn svc(image: &str) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({ "image": image })).unwrap()
    }

    fn stack(services: Vec<(&str, ServiceSpec)>) -> StackSpec {
        StackSpec {
            deployment: "app".into(),
            deployment_revision: 1,
            volumes: vec![],
            volume_options: BTreeMap::new(),
            networks: BTreeMap::new(),
            services: services
                .into_iter()
                .map(|(n, s)| (n.to_owned(), s))
                .collect(),
            configs: Default::default(),
            secrets: Default::default(),
        }
    }

    fn rules(p: &WorkloadPolicy, s: &StackSpec) -> Vec<String> {
        p.check(s)
            .into_iter()
            .map(|v| format!("{}:{}", v.key, v.rule))
            .collect()
    }

    #[test]
    fn baseline_refuses_what_gives_away_the_host() {
        let mut s = svc("nodered/node-red:3");
        s.extra.privileged = true;
        s.extra.network_mode = Some("host".into());
        s.extra.devices = vec!["/dev/ttyUSB0:/dev/ttyUSB0".into()];
        s.extra.device_cgroup_rules = vec!["c 188:* rmw".into()];
        s.extra.cap_add = vec!["cap_sys_admin".into(), "NET_BIND_SERVICE".into()];
        s.extra.security_opt = vec!["seccomp:unconfined".into(), "no-new-privileges:true".into()];
        s.extra.sysctls = BTreeMap::from([
            ("net.ipv4.tcp_syncookies".into(), "1".into()),
            ("kernel.msgmax".into(), "65536".into()),
        ]);
        s.volumes = vec![
            VolumeMount {
                kind: VolumeKind::Bind,
                source: "/".into(),
                target: "/host".into(),
                read_only: false,
            },
            VolumeMount {
                kind: VolumeKind::Stack,
                source: "data".into(),
                target: "/data".into(),
                read_only: false,
            },
            VolumeMount {
                kind: VolumeKind::Named,
                source: "db".into(),
                target: "/db".into(),
                read_only: false,
            },
        ];
        let got = rules(
            &WorkloadPolicy::baseline(),
            &stack(vec![("flows", s.clone())]),
        );
        assert_eq!(
            got,
            [
                "privileged:privileged",
                "network_mode:host_network",
                "devices:devices",
                "device_cgroup_rules:devices",
                "volumes:host_paths",
                "cap_add:capabilities",
                "security_opt:unconfined",
                "sysctls:sysctls",
            ]
        );
        let open = WorkloadPolicy {
            privileged: true,
            host_network: true,
            devices: vec!["/dev/ttyUSB*".into(), "*".into()],
            host_paths: vec!["/".into()],
            capabilities: vec!["SYS_ADMIN".into()],
            unconfined: true,
            sysctls: vec!["kernel.msg*".into()],
            ..WorkloadPolicy::default()
        };
        assert!(open.check(&stack(vec![("flows", s)])).is_empty());
        // A plain service passes the baseline.
        assert!(
            WorkloadPolicy::baseline()
                .check(&stack(vec![("web", svc("nginx"))]))
                .is_empty()
        );
    }

    #[test]
    fn host_paths_are_prefixes_and_never_climb() {
        let p = WorkloadPolicy {
            host_paths: vec!["/srv/data".into()],
            ..Default::default()
        };
        let bind = |src: &str| {
            let mut s = svc("a");
            s.volumes = vec![VolumeMount {
                kind: VolumeKind::Bind,
                source: src.into(),
                target: "/x".into(),
                read_only: true,
            }];
            p.check(&stack(vec![("a", s)])).len()
        };
        assert_eq!(bind("/srv/data"), 0);
        assert_eq!(bind("/srv/data/influx"), 0);
        assert_eq!(bind("/srv/data/./influx/"), 0);
        assert_eq!(bind("/srv/database"), 1);
        assert_eq!(bind("/srv/data/../../etc"), 1);
        assert_eq!(bind("/var/run/docker.sock"), 1);
    }

    #[test]
    fn a_local_volume_bound_to_a_host_directory_is_a_host_path() {
        let mut s = stack(vec![("a", svc("a"))]);
        s.volume_options.insert(
            "sneaky".into(),
            VolumeOptions {
                driver: Some("local".into()),
                driver_opts: BTreeMap::from([
                    ("type".into(), "none".into()),
                    ("o".into(), "bind".into()),
                    ("device".into(), "/etc".into()),
                ]),
                ..Default::default()
            },
        );
        s.volume_options.insert(
            "nfs".into(),
            VolumeOptions {
                driver: Some("rexray".into()),
                ..Default::default()
            },
        );
        let got = WorkloadPolicy::baseline().check(&s);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].rule, "volume_drivers");
        assert_eq!(got[1].rule, "host_paths");
        assert_eq!(got[1].service, "volume sneaky");
    }

    #[test]
    fn registries_digests_and_limits() {
        let p = WorkloadPolicy {
            registries: Some(vec!["registry.plant.local".into(), "docker.io".into()]),
            require_digest: true,
            require_memory_limit: true,
            require_cpu_limit: true,
            ..Default::default()
        };
        let digest = "a".repeat(64);
        let mut ok = svc(&format!("registry.plant.local/line/press@sha256:{digest}"));
        ok.extra.memory_bytes = Some(64 << 20);
        ok.extra.nano_cpus = Some(500_000_000);
        assert!(p.check(&stack(vec![("ok", ok.clone())])).is_empty());
        let mut hub = ok.clone();
        hub.image = format!("library/nginx@sha256:{digest}");
        assert!(p.check(&stack(vec![("hub", hub)])).is_empty());
        let foreign = svc("ghcr.io/evil/miner:latest");
        assert_eq!(
            rules(&p, &stack(vec![("x", foreign)])),
            [
                "image:registries",
                "image:require_digest",
                "mem_limit:require_memory_limit",
                "cpus:require_cpu_limit"
            ]
        );
        assert_eq!(registry_of("localhost:5000/app"), "localhost:5000");
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(
            registry_of("Registry.Plant.Local/a"),
            "registry.plant.local"
        );
    }

    #[test]
    fn log_size_counts_the_default_rotation_and_refuses_unbounded_logs() {
        let p = WorkloadPolicy {
            max_log_bytes: Some(50 << 20),
            ..Default::default()
        };
        assert!(
            p.check(&stack(vec![("a", svc("a"))])).is_empty(),
            "the default 3 × 10 MiB fits"
        );
        let with = |driver: &str, opts: &[(&str, &str)]| {
            let mut s = svc("a");
            s.extra.logging = Some(Logging {
                driver: Some(driver.into()),
                options: opts
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            });
            p.check(&stack(vec![("a", s)])).len()
        };
        assert_eq!(
            with("json-file", &[]),
            1,
            "json-file without max-size grows forever"
        );
        assert_eq!(
            with("json-file", &[("max-size", "20m"), ("max-file", "2")]),
            0
        );
        assert_eq!(
            with("json-file", &[("max-size", "20m"), ("max-file", "3")]),
            1
        );
        assert_eq!(with("local", &[]), 1, "local keeps 5 × 20 MiB");
        assert_eq!(with("syslog", &[]), 0);
        assert_eq!(size("1.5m"), None);
        assert_eq!(size("10MB"), Some(10 << 20));
    }

    #[test]
    fn the_policy_document_is_strict_and_small() {
        assert_eq!(
            serde_json::to_string(&WorkloadPolicy::baseline()).unwrap(),
            "{}"
        );
        let e = serde_json::from_str::<WorkloadPolicy>(r#"{"privilegd": true}"#).unwrap_err();
        assert!(e.to_string().contains("privilegd"), "{e}");
    }
}
