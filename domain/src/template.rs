//! Revisions resolved per device.
//!
//! A Compose file that refers only to variables given at apply is parsed once and every
//! device runs the same stack (the fast path). One that refers to anything else — a
//! built-in (`${EDGEFLEET_SITE}`), a site or device variable, or a variable left to its
//! default (a site may set it later) — is kept as a [`Template`]: its source text and its
//! apply variables. Each device's stack is then that file parsed with the device's variables
//! ([`crate::variables`] gives the precedence), every time the device's labels, its
//! variables or its site's change.
//!
//! A resolution depends only on the values of the names the file refers to, so
//! [`Resolutions`] keeps each result by (template, those values): devices of one site share
//! one parse unless the file names something of each device's own, and one stack too (the
//! same [`Arc`] goes into each of their documents).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use edgefleet_protocol::spec::StackSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::compose::{self, ComposeError};
use crate::interpolate::{BUILTIN_PREFIX, InterpolateError, Variables, device_builtins};
use crate::rollout::strategy::Strategy;
use crate::variables::{ScopedVariables, Source};

/// The stored form of a revision resolved per device: what "changed" compares (with the
/// target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// The Compose file, as applied.
    pub compose: String,
    /// The variables given at apply (`--var`, `--env-file`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: Variables,
    /// The content of the files its configs read (`file:`; configuration, in clear). The
    /// files of its secrets are never kept: the secrets are the same on every device, read
    /// once at apply and kept sealed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// The keyed digest of each secret (what its mounts carry).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl Template {
    /// The template of `compose`, if it refers to a variable `apply` does not give (it must
    /// then be resolved per device), with its rollout strategy; `None`: one parse serves
    /// every device. It keeps the apply variables the file refers to (another value of one
    /// it does not use is no new revision, as for an untemplated file). Refuses what can be
    /// refused without variables (YAML, top-level keys, interpolation syntax, the strategy).
    pub fn of(
        compose: &str,
        apply: &Variables,
    ) -> Result<Option<(Template, Option<Strategy>)>, ComposeError> {
        let scan = compose::scan(compose)?;
        if scan.references.iter().all(|n| apply.contains_key(n)) {
            return Ok(None);
        }
        Ok(Some((
            Template {
                compose: compose.to_owned(),
                variables: apply
                    .iter()
                    .filter(|(k, _)| scan.references.contains(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                files: BTreeMap::new(),
                secrets: BTreeMap::new(),
            },
            scan.rollout,
        )))
    }
}

/// Why a device's stack could not be resolved (the same for every device with the same
/// values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// A variable no scope sets, used without a default.
    Unset { name: String, path: String },
    /// `${NAME:?message}` with NAME set nowhere.
    Required {
        name: String,
        message: String,
        path: String,
    },
    /// The file, resolved, is refused (e.g. a value that is not a port).
    Invalid(String),
}

impl From<ComposeError> for Unresolved {
    fn from(e: ComposeError) -> Self {
        match e {
            ComposeError::Interpolate {
                path,
                source: InterpolateError::Unset(name),
            } => Unresolved::Unset { name, path },
            ComposeError::Interpolate {
                path,
                source: InterpolateError::Required { name, message },
            } => Unresolved::Required {
                name,
                message,
                path,
            },
            other => Unresolved::Invalid(other.to_string()),
        }
    }
}

/// A device whose stack of a deployment cannot be resolved, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ResolveError {
    pub device: String,
    /// The device's site (for the advice).
    pub site: Option<String>,
    pub error: Unresolved,
}

impl ResolveError {
    /// What to do about an unset `name`.
    fn advice(&self, name: &str) -> String {
        let d = &self.device;
        if let Some(label) = name.strip_prefix(BUILTIN_PREFIX) {
            let label = label.to_ascii_lowercase();
            return format!(
                "it is the built-in of the device's label '{label}', which the device does not have: label it ('edgefleet device label {d} {label}=…'), or give a default (${{{name}:-…}})"
            );
        }
        let site = self.site.as_deref().unwrap_or("SITE");
        format!(
            "set it with 'edgefleet vars set --device {d} {name}=…' or 'edgefleet vars set --site {site} {name}=…' (or 'apply --var {name}=…'), or give a default (${{{name}:-…}})"
        )
    }
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.device;
        match &self.error {
            Unresolved::Unset { name, path } => write!(
                f,
                "device '{d}': variable '{name}' is not set ({path}): {}",
                self.advice(name)
            ),
            Unresolved::Required {
                name,
                message,
                path,
            } => write!(
                f,
                "device '{d}': variable '{name}' is required ({path}): {message}; {}",
                self.advice(name)
            ),
            Unresolved::Invalid(e) => write!(f, "device '{d}': {e}"),
        }
    }
}

/// A variable a device's stack of a deployment refers to: its value for that device and
/// where the value comes from (`value: null`, `source: unset`: the file's default applies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedVariable {
    pub name: String,
    pub value: Option<String>,
    pub source: Source,
}

/// A templated revision as the book holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTemplate {
    pub deployment: String,
    pub revision: u64,
    pub template: Template,
    references: BTreeSet<String>,
    /// The references it cannot do without, with a path using each.
    required: BTreeMap<String, String>,
    /// Identifies the template's content in [`Resolutions`].
    digest: [u8; 32],
}

impl DeviceTemplate {
    pub fn new(deployment: &str, revision: u64, template: Template) -> Result<Self, ComposeError> {
        let scan = compose::scan(&template.compose)?;
        let digest = Sha256::digest(serde_json::to_vec(&template).unwrap_or_default()).into();
        Ok(DeviceTemplate {
            deployment: deployment.to_owned(),
            revision,
            template,
            references: scan.references,
            required: scan.required,
            digest,
        })
    }

    /// A variable the file cannot do without that no device could resolve: not a built-in,
    /// not given at apply, and kept for no site and no device (checked when no device is
    /// targeted yet, so a forgotten `--var` or a misspelt name is still refused at apply).
    pub fn unset_everywhere(&self, scoped: &ScopedVariables) -> Option<ComposeError> {
        let (name, path) = self.required.iter().find(|(name, _)| {
            !name.starts_with(BUILTIN_PREFIX)
                && !self.template.variables.contains_key(*name)
                && !scoped
                    .sites
                    .values()
                    .chain(scoped.devices.values())
                    .any(|vars| vars.contains_key(*name))
        })?;
        Some(ComposeError::Interpolate {
            path: path.clone(),
            source: InterpolateError::Unset(name.clone()),
        })
    }

    /// The variables the file refers to.
    pub fn references(&self) -> &BTreeSet<String> {
        &self.references
    }

    /// Identifies the template's content (what [`Resolutions::retain`] keeps).
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The values `device` resolves the file's variables with, and their sources.
    pub fn variables_for(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        scoped: &ScopedVariables,
    ) -> Vec<ResolvedVariable> {
        let builtins = device_builtins(device, labels);
        self.references
            .iter()
            .map(|name| {
                match scoped.lookup(name, device, &builtins, labels, &self.template.variables) {
                    Some((v, source)) => ResolvedVariable {
                        name: name.clone(),
                        value: Some(v.to_owned()),
                        source,
                    },
                    None => ResolvedVariable {
                        name: name.clone(),
                        value: None,
                        source: Source::Unset,
                    },
                }
            })
            .collect()
    }

    /// The stack `device` runs of this revision: the one every device resolving it with the
    /// same values gets (while `memo` keeps it).
    pub fn resolve(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        scoped: &ScopedVariables,
        memo: &mut Resolutions,
    ) -> Result<Arc<StackSpec>, ResolveError> {
        let builtins = device_builtins(device, labels);
        let values: Variables = self
            .references
            .iter()
            .filter_map(|name| {
                scoped
                    .lookup(name, device, &builtins, labels, &self.template.variables)
                    .map(|(v, _)| (name.clone(), v.to_owned()))
            })
            .collect();
        let resolved = memo.get_or_insert((self.digest, values), |values| {
            compose::parse_inputs(&self.template.compose, values, &self.template.files)
                .map(|mut s| {
                    s.set_secret_digests(&self.template.secrets);
                    Stamped(vec![Arc::new(
                        s.into_stack_spec(&self.deployment, self.revision),
                    )])
                })
                .map_err(Unresolved::from)
        });
        match resolved {
            Ok(stamped) => Ok(stamped.get(&self.deployment, self.revision)),
            Err(error) => Err(ResolveError {
                device: device.to_owned(),
                site: labels.get("site").cloned(),
                error: error.clone(),
            }),
        }
    }
}

/// One resolution's stack, as each (deployment, revision) with this template asked for it.
///
/// Revisions of one content share a digest (the apply checks a revision numbered `u64::MAX`
/// before recording it, a strategy-only change keeps the file), and a stack names its
/// deployment and revision; so the memo keeps one stack per name and number, handed out as
/// the same [`Arc`] to every device that asks.
#[derive(Debug)]
struct Stamped(Vec<Arc<StackSpec>>);

impl Stamped {
    /// Names and numbers kept at most per resolution; past it the oldest is forgotten
    /// (the documents holding it keep it; later devices get a new one).
    const MAX: usize = 4;

    /// The stack for `deployment` at `revision`: the one kept, else one made from another
    /// (renamed in place if no document holds it any more, so an apply's check and its
    /// refresh cost one stack, not two).
    fn get(&mut self, deployment: &str, revision: u64) -> Arc<StackSpec> {
        let mut at = self
            .0
            .iter()
            .position(|s| s.deployment == deployment && s.deployment_revision == revision);
        if at.is_none() {
            for (i, s) in self.0.iter_mut().enumerate() {
                if let Some(s) = Arc::get_mut(s) {
                    s.deployment.clear();
                    s.deployment.push_str(deployment);
                    s.deployment_revision = revision;
                    at = Some(i);
                    break;
                }
            }
        }
        let at = at.unwrap_or_else(|| {
            let mut stack = StackSpec::clone(&self.0[0]);
            stack.deployment = deployment.to_owned();
            stack.deployment_revision = revision;
            if self.0.len() >= Self::MAX {
                self.0.remove(0);
            }
            self.0.push(Arc::new(stack));
            self.0.len() - 1
        });
        Arc::clone(&self.0[at])
    }
}

/// Results of resolutions by (template, the values of the names it refers to), shared by
/// every device with those values. Bounded: emptied when full.
#[derive(Debug, Default)]
pub struct Resolutions {
    entries: HashMap<([u8; 32], Variables), Result<Stamped, Unresolved>>,
}

impl Resolutions {
    /// Entries kept at most (each one parse: a stack per deployment and revision asking).
    pub const MAX_ENTRIES: usize = 50_000;

    fn get_or_insert(
        &mut self,
        key: ([u8; 32], Variables),
        resolve: impl FnOnce(&Variables) -> Result<Stamped, Unresolved>,
    ) -> &mut Result<Stamped, Unresolved> {
        if self.entries.len() >= Self::MAX_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.clear();
        }
        match self.entries.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let value = resolve(&e.key().1);
                e.insert(value)
            }
        }
    }

    /// Keeps only the results of these templates (those still in force).
    pub fn retain(&mut self, live: &std::collections::HashSet<[u8; 32]>) {
        self.entries.retain(|(digest, _), _| live.contains(digest));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variables::Scope;

    fn vars(pairs: &[(&str, &str)]) -> Variables {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn labels(site: &str) -> BTreeMap<String, String> {
        [("site".to_string(), site.to_string())].into()
    }

    const FILE: &str = "services:\n  app:\n    image: \"app:${TAG}\"\n    environment:\n      SITE: \"${EDGEFLEET_SITE}\"\n      DEVICE: \"${EDGEFLEET_DEVICE}\"\n      LINE_IP: \"${LINE_IP}\"\n      MODE: \"${MODE:-eco}\"\n";

    #[test]
    fn only_files_with_per_device_references_are_templates() {
        let plain = "services:\n  app:\n    image: \"app:${TAG}\"\n";
        assert_eq!(Template::of(plain, &vars(&[("TAG", "1")])), Ok(None));
        let (t, rollout) = Template::of(FILE, &vars(&[("TAG", "1"), ("UNUSED", "x")]))
            .unwrap()
            .unwrap();
        assert_eq!(t.compose, FILE);
        assert_eq!(
            t.variables,
            vars(&[("TAG", "1")]),
            "only those it refers to"
        );
        assert_eq!(rollout, None);
        // A variable left to its default is a template too: a site may set it later.
        assert!(
            Template::of(
                "services:\n  a:\n    image: \"a:${T:-1}\"\n",
                &Variables::new()
            )
            .unwrap()
            .is_some()
        );
        assert!(Template::of("services: [", &Variables::new()).is_err());
    }

    #[test]
    fn each_device_resolves_with_its_own_values() {
        let (t, _) = Template::of(FILE, &vars(&[("TAG", "1"), ("LINE_IP", "apply")]))
            .unwrap()
            .unwrap();
        let t = DeviceTemplate::new("web", 3, t).unwrap();
        let mut scoped = ScopedVariables::default();
        scoped.set(
            &Scope::Site("lyon".into()),
            &vars(&[("LINE_IP", "10.1.0.1")]),
        );
        scoped.set(
            &Scope::Device("press-07".into()),
            &vars(&[("LINE_IP", "10.1.0.7"), ("MODE", "turbo")]),
        );
        let mut memo = Resolutions::default();
        let a = t
            .resolve("press-07", &labels("lyon"), &scoped, &mut memo)
            .unwrap();
        let b = t
            .resolve("press-08", &labels("paris"), &scoped, &mut memo)
            .unwrap();
        assert_eq!((a.deployment.as_str(), a.deployment_revision), ("web", 3));
        let env = |s: &StackSpec, k: &str| s.services["app"].environment[k].clone();
        assert_eq!(env(&a, "SITE"), "lyon");
        assert_eq!(env(&a, "DEVICE"), "press-07");
        assert_eq!(env(&a, "LINE_IP"), "10.1.0.7");
        assert_eq!(env(&a, "MODE"), "turbo");
        assert_eq!(env(&b, "SITE"), "paris");
        assert_eq!(env(&b, "LINE_IP"), "apply");
        assert_eq!(env(&b, "MODE"), "eco");
        assert_eq!(a.services["app"].image, "app:1");

        let shown = t.variables_for("press-07", &labels("lyon"), &scoped);
        let row = |name: &str| shown.iter().find(|v| v.name == name).unwrap().clone();
        assert_eq!(row("EDGEFLEET_SITE").source, Source::Builtin);
        assert_eq!(row("LINE_IP").value.as_deref(), Some("10.1.0.7"));
        assert_eq!(row("LINE_IP").source, Source::Device);
        assert_eq!(row("TAG").source, Source::Apply);
        let shown = t.variables_for("press-08", &labels("paris"), &scoped);
        let mode = shown.iter().find(|v| v.name == "MODE").unwrap();
        assert_eq!((mode.value.clone(), mode.source), (None, Source::Unset));
    }

    #[test]
    fn a_failure_names_the_device_and_the_variable() {
        let (t, _) = Template::of(FILE, &vars(&[("TAG", "1")])).unwrap().unwrap();
        let t = DeviceTemplate::new("web", 1, t).unwrap();
        let mut memo = Resolutions::default();
        let err = t
            .resolve(
                "press-07",
                &labels("lyon"),
                &ScopedVariables::default(),
                &mut memo,
            )
            .unwrap_err();
        assert_eq!(
            err.error,
            Unresolved::Unset {
                name: "LINE_IP".into(),
                path: "services.app.environment.LINE_IP".into()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("device 'press-07': variable 'LINE_IP' is not set")
                && msg.contains("edgefleet vars set --device press-07 LINE_IP=…")
                && msg.contains("--site lyon LINE_IP=…"),
            "{msg}"
        );
        // A built-in of a label the device lacks says to label it.
        let (t, _) = Template::of(
            "services:\n  a:\n    image: \"a:${EDGEFLEET_AREA}\"\n",
            &Variables::new(),
        )
        .unwrap()
        .unwrap();
        let t = DeviceTemplate::new("a", 1, t).unwrap();
        let msg = t
            .resolve("d", &labels("lyon"), &ScopedVariables::default(), &mut memo)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("edgefleet device label d area=…"), "{msg}");
        // A value that breaks the file is refused with the file's own message.
        let (t, _) = Template::of(
            "services:\n  a:\n    image: a\n    ports: [\"${PORT}:80\"]\n",
            &Variables::new(),
        )
        .unwrap()
        .unwrap();
        let t = DeviceTemplate::new("a", 1, t).unwrap();
        let mut scoped = ScopedVariables::default();
        scoped.set(&Scope::Device("d".into()), &vars(&[("PORT", "http")]));
        let err = t
            .resolve("d", &labels("lyon"), &scoped, &mut memo)
            .unwrap_err();
        assert!(matches!(err.error, Unresolved::Invalid(_)), "{err}");
    }

    #[test]
    fn a_variable_kept_nowhere_is_refused_before_any_device_is_there() {
        let (t, _) = Template::of(FILE, &vars(&[("TAG", "1")])).unwrap().unwrap();
        let t = DeviceTemplate::new("web", 1, t).unwrap();
        let mut scoped = ScopedVariables::default();
        let err = t.unset_everywhere(&scoped).unwrap().to_string();
        assert!(
            err.starts_with("services.app.environment.LINE_IP: variable 'LINE_IP' is not set"),
            "{err}"
        );
        scoped.set(&Scope::Site("paris".into()), &vars(&[("LINE_IP", "x")]));
        assert_eq!(t.unset_everywhere(&scoped), None, "MODE has a default");
    }

    #[test]
    fn devices_with_the_same_values_share_one_resolution() {
        let file = "services:\n  a:\n    image: \"a:${TAG}\"\n    environment: { S: \"${EDGEFLEET_SITE}\" }\n";
        let (t, _) = Template::of(file, &vars(&[("TAG", "1")])).unwrap().unwrap();
        let t = DeviceTemplate::new("a", 1, t).unwrap();
        let scoped = ScopedVariables::default();
        let mut memo = Resolutions::default();
        for i in 0..50 {
            let site = if i % 2 == 0 { "lyon" } else { "paris" };
            t.resolve(&format!("d{i}"), &labels(site), &scoped, &mut memo)
                .unwrap();
        }
        assert_eq!(
            memo.len(),
            2,
            "one per site: the file names no device's own"
        );
        memo.retain(&Default::default());
        assert!(memo.is_empty());
    }

    #[test]
    fn devices_with_the_same_values_share_one_stack_of_each_revision() {
        let file = "services:\n  a:\n    image: \"a:${TAG}\"\n    environment: { S: \"${EDGEFLEET_SITE}\" }\n";
        let (t, _) = Template::of(file, &vars(&[("TAG", "1")])).unwrap().unwrap();
        let at = |rev| DeviceTemplate::new("a", rev, t.clone()).unwrap();
        let (checked, v3, v4) = (at(u64::MAX), at(3), at(4));
        let scoped = ScopedVariables::default();
        let mut memo = Resolutions::default();
        let mut resolve = |t: &DeviceTemplate, id: &str, site: &str| {
            t.resolve(id, &labels(site), &scoped, &mut memo).unwrap()
        };

        // An apply's check (numbered u64::MAX), dropped, then the recorded revision: the
        // checked stack is renamed in place, not copied.
        let check = resolve(&checked, "d1", "lyon");
        let was = Arc::as_ptr(&check);
        drop(check);
        let a = resolve(&v3, "d1", "lyon");
        assert_eq!((a.deployment.as_str(), a.deployment_revision), ("a", 3));
        assert_eq!(Arc::as_ptr(&a), was);
        let b = resolve(&v3, "d2", "lyon");
        assert!(Arc::ptr_eq(&a, &b), "one stack for the site's devices");
        assert!(!Arc::ptr_eq(&a, &resolve(&v3, "d3", "paris")));

        // Two revisions of one file during a rollout: each its own stack, each shared.
        let c = resolve(&v4, "d2", "lyon");
        assert_eq!(c.deployment_revision, 4);
        assert_eq!(a.deployment_revision, 3, "the held one is not renamed");
        assert!(Arc::ptr_eq(&c, &resolve(&v4, "d5", "lyon")));
        assert!(Arc::ptr_eq(&a, &resolve(&v3, "d6", "lyon")));
        assert_eq!(c.services, a.services);
        assert_eq!(memo.len(), 2, "still one parse per site");
    }
}
