//! Workload policies as operators write them (`edgefleet policy set SITE -f policy.yml`), and
//! which one applies where: a site's own, else the fleet default, else the baseline.
//!
//! The policy itself and its check live in the protocol crate
//! ([`edgefleet_protocol::policy`]), because the agent checks it again.

use std::collections::BTreeMap;

use edgefleet_protocol::policy::{WorkloadPolicy, size};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy: {0}")]
    Shape(String),
    #[error("policy field '{field}': {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field,
        reason: reason.into(),
    }
}

/// Reads a policy file: YAML or JSON with the fields of [`WorkloadPolicy`], except that the
/// log cap is written `max_log_size: 100m` (Docker's size notation). Unknown fields are
/// refused, so a misspelt rule never leaves a site open. Read by the same bounded reader as
/// Compose files.
pub fn from_yaml(text: &str) -> Result<WorkloadPolicy, PolicyError> {
    let tree = crate::compose::load_yaml(text).map_err(|e| PolicyError::Shape(e.to_string()))?;
    let mut tree = match tree {
        Value::Object(m) => m,
        Value::Null => serde_json::Map::new(),
        _ => {
            return Err(PolicyError::Shape(
                "the file must be a mapping of rules".into(),
            ));
        }
    };
    if let Some(v) = tree.remove("max_log_size") {
        let text = match &v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(field("max_log_size", "must be a size such as 50m")),
        };
        let bytes = size(&text).ok_or_else(|| {
            field(
                "max_log_size",
                format!("'{text}' is not a size (write 50m, 1g, 500k)"),
            )
        })?;
        tree.insert("max_log_bytes".into(), bytes.into());
    }
    let policy: WorkloadPolicy = serde_path_to_error::deserialize(Value::Object(tree))
        .map_err(|e| PolicyError::Shape(format!("{}: {}", e.path(), e.inner())))?;
    validate(&policy)?;
    Ok(policy)
}

/// Refuses rules that could not mean what they say.
pub fn validate(p: &WorkloadPolicy) -> Result<(), PolicyError> {
    if let Some(regs) = &p.registries {
        for r in regs {
            if r.is_empty() || r.contains('/') || r.chars().any(|c| c.is_whitespace()) {
                return Err(field(
                    "registries",
                    format!(
                        "'{r}' is not a registry host (write registry.plant.local or host:5000, without a path)"
                    ),
                ));
            }
        }
    }
    for d in &p.devices {
        if d != "*" && !d.starts_with("/dev/") {
            return Err(field(
                "devices",
                format!("'{d}' is not a device path under /dev/ (or *)"),
            ));
        }
    }
    for h in &p.host_paths {
        if !h.starts_with('/') || h.split('/').any(|part| part == "..") {
            return Err(field(
                "host_paths",
                format!("'{h}' must be an absolute path without '..'"),
            ));
        }
    }
    for c in &p.capabilities {
        let ok = !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !ok {
            return Err(field(
                "capabilities",
                format!("'{c}' is not a capability name"),
            ));
        }
    }
    for s in p.sysctls.iter().chain(&p.volume_drivers) {
        if s.is_empty() || s.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(field("sysctls", format!("'{s}' is not a name")));
        }
    }
    if p.max_log_bytes == Some(0) {
        return Err(field(
            "max_log_size",
            "must be above 0 (use logging driver none per service to keep no log)",
        ));
    }
    Ok(())
}

/// Where the policy of a device comes from. Written `site:<name>`, `fleet` or `baseline`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub enum PolicySource {
    Site(String),
    Fleet,
    Baseline,
}

impl From<PolicySource> for String {
    fn from(s: PolicySource) -> String {
        match s {
            PolicySource::Site(site) => format!("site:{site}"),
            PolicySource::Fleet => "fleet".into(),
            PolicySource::Baseline => "baseline".into(),
        }
    }
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicySource::Site(s) => write!(f, "the policy of site '{s}'"),
            PolicySource::Fleet => f.write_str("the fleet's default policy"),
            PolicySource::Baseline => f.write_str("the baseline policy"),
        }
    }
}

/// The policies set: per site, and a fleet default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    pub fleet: Option<WorkloadPolicy>,
    pub sites: BTreeMap<String, WorkloadPolicy>,
}

impl PolicySet {
    /// The policy that applies to a device of `site` (`None`: a device without a site).
    pub fn effective(&self, site: Option<&str>) -> (PolicySource, WorkloadPolicy) {
        if let Some(site) = site
            && let Some(p) = self.sites.get(site)
        {
            return (PolicySource::Site(site.to_owned()), p.clone());
        }
        match &self.fleet {
            Some(p) => (PolicySource::Fleet, p.clone()),
            None => (PolicySource::Baseline, WorkloadPolicy::baseline()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_policy_file() {
        let p = from_yaml(
            "registries: [registry.plant.local]\nrequire_digest: true\nhost_paths: [/srv/data]\ndevices: ['/dev/ttyUSB*']\nmax_log_size: 50m\nrequire_memory_limit: true\n",
        )
        .unwrap();
        assert_eq!(
            p.registries.as_deref(),
            Some(&["registry.plant.local".to_owned()][..])
        );
        assert_eq!(p.max_log_bytes, Some(50 << 20));
        assert!(p.require_digest && p.require_memory_limit && !p.privileged);
        assert_eq!(from_yaml("").unwrap(), WorkloadPolicy::baseline());
        assert_eq!(from_yaml("{}").unwrap(), WorkloadPolicy::baseline());
    }

    #[test]
    fn nonsense_is_refused_with_the_field_named() {
        for (text, needle) in [
            ("privilegd: true", "privilegd"),
            ("privileged: maybe", "privileged"),
            ("registries: [registry.plant.local/team]", "'registries'"),
            ("host_paths: [srv]", "'host_paths'"),
            ("host_paths: [/srv/../etc]", "'host_paths'"),
            ("devices: [ttyUSB0]", "'devices'"),
            ("capabilities: ['SYS ADMIN']", "'capabilities'"),
            ("max_log_size: lots", "'max_log_size'"),
            ("max_log_size: 0", "'max_log_size'"),
            ("max_log_bytes: -1", "max_log_bytes"),
            ("- a list", "mapping"),
            ("a: &a [*a]", "policy"),
        ] {
            let e = from_yaml(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn a_site_policy_wins_over_the_fleet_default_over_the_baseline() {
        let mut set = PolicySet::default();
        assert_eq!(set.effective(Some("lyon")).0, PolicySource::Baseline);
        set.fleet = Some(WorkloadPolicy {
            privileged: true,
            ..Default::default()
        });
        assert_eq!(set.effective(Some("lyon")).0, PolicySource::Fleet);
        assert_eq!(set.effective(None).0, PolicySource::Fleet);
        set.sites.insert(
            "lyon".into(),
            WorkloadPolicy {
                host_network: true,
                ..Default::default()
            },
        );
        let (src, p) = set.effective(Some("lyon"));
        assert_eq!(src, PolicySource::Site("lyon".into()));
        assert!(
            p.host_network && !p.privileged,
            "a site's policy replaces the default, it does not merge"
        );
        assert_eq!(set.effective(Some("paris")).0, PolicySource::Fleet);
    }
}
