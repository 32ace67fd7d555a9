//! Variables the controller keeps per site and per device (`edgefleet vars set --site lyon
//! K=V`, `--device press-07`), and the order in which a device's `${VAR}`s are looked up.
//!
//! **Precedence, highest first:** the device's built-ins (`EDGEFLEET_DEVICE`,
//! `EDGEFLEET_<LABEL>`: they cannot be overridden, and no other scope may use the prefix) >
//! the device's variables > its site's variables > the variables given at apply
//! (`--var`, `--env-file`). A name no scope sets takes the file's default, or the device's
//! resolution fails naming it (see [`crate::template`]).
//!
//! Variables are configuration, not secrets: their values are shown on the device page and
//! may be audited.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::interpolate::{BUILTIN_PREFIX, Variables, validate_name};

/// Longest value a site or device variable may have (a value is configuration: an address,
/// a tag, a line number; files belong in images or volumes).
pub const MAX_VALUE_BYTES: usize = 4096;

/// Most variables one site or device may have.
pub const MAX_PER_SCOPE: usize = 256;

/// Where a variable is kept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The variables of every device whose `site` label is this.
    Site(String),
    /// The variables of one device.
    Device(String),
}

impl Scope {
    /// The store's key: `site:lyon`, `device:press-07`.
    pub fn key(&self) -> String {
        match self {
            Scope::Site(s) => format!("site:{s}"),
            Scope::Device(d) => format!("device:{d}"),
        }
    }

    /// The scope of a store key (`None`: not one).
    pub fn from_key(key: &str) -> Option<Scope> {
        if let Some(s) = key.strip_prefix("site:") {
            Some(Scope::Site(s.to_owned()))
        } else {
            key.strip_prefix("device:")
                .map(|d| Scope::Device(d.to_owned()))
        }
    }

    /// `site` or `device`.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Site(_) => "site",
            Scope::Device(_) => "device",
        }
    }

    /// The site's name or the device's id.
    pub fn name(&self) -> &str {
        match self {
            Scope::Site(s) | Scope::Device(s) => s,
        }
    }
}

/// Serialized as its key (`site:lyon`).
impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.key())
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} '{}'", self.kind(), self.name())
    }
}

/// Where the value a device resolves a variable with comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `EDGEFLEET_DEVICE` or one of the device's labels.
    Builtin,
    Device,
    Site,
    /// Given at apply (`--var`, `--env-file`).
    Apply,
    /// Set nowhere: the file's default (or alternative) applies.
    Unset,
}

/// Checks a site or device variable: a variable name outside the built-ins' prefix, and a
/// value of bounded size without NUL.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    validate_name(name)?;
    if name.starts_with(BUILTIN_PREFIX) {
        return Err(format!(
            "'{name}': names starting with {BUILTIN_PREFIX} are the per-device built-ins (EDGEFLEET_DEVICE and one per label) and cannot be set"
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "'{name}': the value is {} bytes, at most {MAX_VALUE_BYTES} are taken (files belong in images or volumes)",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!("'{name}': the value contains a NUL character"));
    }
    Ok(())
}

/// Every site's and device's variables, as the controller keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopedVariables {
    pub sites: BTreeMap<String, Variables>,
    pub devices: BTreeMap<String, Variables>,
}

impl ScopedVariables {
    fn map(&self, scope: &Scope) -> &BTreeMap<String, Variables> {
        match scope {
            Scope::Site(_) => &self.sites,
            Scope::Device(_) => &self.devices,
        }
    }

    fn map_mut(&mut self, scope: &Scope) -> &mut BTreeMap<String, Variables> {
        match scope {
            Scope::Site(_) => &mut self.sites,
            Scope::Device(_) => &mut self.devices,
        }
    }

    /// The variables of one scope (empty when it has none).
    pub fn of(&self, scope: &Scope) -> Variables {
        self.map(scope)
            .get(scope.name())
            .cloned()
            .unwrap_or_default()
    }

    /// Sets `values` in a scope, keeping its other variables.
    pub fn set(&mut self, scope: &Scope, values: &Variables) {
        self.map_mut(scope)
            .entry(scope.name().to_owned())
            .or_default()
            .extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Removes `names` from a scope (every variable of it when `names` is empty); returns
    /// the names removed.
    pub fn unset(&mut self, scope: &Scope, names: &[String]) -> Vec<String> {
        let map = self.map_mut(scope);
        let Some(vars) = map.get_mut(scope.name()) else {
            return Vec::new();
        };
        let removed = if names.is_empty() {
            std::mem::take(vars).into_keys().collect()
        } else {
            names
                .iter()
                .filter(|n| vars.remove(n.as_str()).is_some())
                .cloned()
                .collect()
        };
        if vars.is_empty() {
            map.remove(scope.name());
        }
        removed
    }

    /// The value `device` (with these labels and its deployment's apply variables) resolves
    /// `name` with, and where it comes from — in the order of precedence.
    pub fn lookup<'a>(
        &'a self,
        name: &str,
        device: &str,
        builtins: &'a Variables,
        labels: &BTreeMap<String, String>,
        apply: &'a Variables,
    ) -> Option<(&'a str, Source)> {
        if let Some(v) = builtins.get(name) {
            return Some((v, Source::Builtin));
        }
        if let Some(v) = self.devices.get(device).and_then(|m| m.get(name)) {
            return Some((v, Source::Device));
        }
        if let Some(v) = labels
            .get("site")
            .and_then(|s| self.sites.get(s))
            .and_then(|m| m.get(name))
        {
            return Some((v, Source::Site));
        }
        apply.get(name).map(|v| (v.as_str(), Source::Apply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interpolate::device_builtins;

    fn vars(pairs: &[(&str, &str)]) -> Variables {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn precedence_builtins_device_site_apply() {
        let mut scoped = ScopedVariables::default();
        scoped.set(
            &Scope::Site("lyon".into()),
            &vars(&[("TAG", "site"), ("LINE_IP", "10.0.0.1"), ("ONLY_SITE", "s")]),
        );
        scoped.set(
            &Scope::Device("press-07".into()),
            &vars(&[("LINE_IP", "10.0.0.7")]),
        );
        let labels: BTreeMap<String, String> = [("site".to_string(), "lyon".to_string())].into();
        let apply = vars(&[("TAG", "apply"), ("ONLY_APPLY", "a"), ("LINE_IP", "x")]);
        let builtins = device_builtins("press-07", &labels);
        let look = |name: &str, device: &str| {
            scoped
                .lookup(name, device, &builtins, &labels, &apply)
                .map(|(v, s)| (v.to_owned(), s))
        };
        assert_eq!(
            look("EDGEFLEET_SITE", "press-07"),
            Some(("lyon".into(), Source::Builtin))
        );
        assert_eq!(
            look("LINE_IP", "press-07"),
            Some(("10.0.0.7".into(), Source::Device)),
            "the device's own wins over its site's and apply's"
        );
        assert_eq!(
            look("LINE_IP", "press-08"),
            Some(("10.0.0.1".into(), Source::Site))
        );
        assert_eq!(look("TAG", "press-07"), Some(("site".into(), Source::Site)));
        assert_eq!(
            look("ONLY_APPLY", "press-07"),
            Some(("a".into(), Source::Apply))
        );
        assert_eq!(look("NOWHERE", "press-07"), None);
    }

    #[test]
    fn set_unset_and_validation() {
        let mut scoped = ScopedVariables::default();
        let lyon = Scope::Site("lyon".into());
        scoped.set(&lyon, &vars(&[("A", "1"), ("B", "2")]));
        scoped.set(&lyon, &vars(&[("B", "3")]));
        assert_eq!(scoped.of(&lyon), vars(&[("A", "1"), ("B", "3")]));
        assert_eq!(scoped.unset(&lyon, &["B".into(), "C".into()]), ["B"]);
        assert_eq!(scoped.unset(&lyon, &[]), ["A"]);
        assert!(scoped.sites.is_empty(), "an emptied scope is gone");
        assert!(scoped.unset(&lyon, &[]).is_empty());

        assert!(validate("LINE_IP", "10.0.0.7").is_ok());
        assert!(
            validate("EDGEFLEET_SITE", "x")
                .unwrap_err()
                .contains("built-ins")
        );
        assert!(validate("1A", "x").is_err());
        assert!(validate("A", &"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert!(validate("A", "a\0b").is_err());

        let dev = Scope::Device("press-07".into());
        assert_eq!(dev.key(), "device:press-07");
        assert_eq!(Scope::from_key("device:press-07"), Some(dev.clone()));
        assert_eq!(Scope::from_key("site:lyon"), Some(lyon));
        assert_eq!(Scope::from_key("fleet"), None);
        assert_eq!(dev.to_string(), "device 'press-07'");
    }
}
