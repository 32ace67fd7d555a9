//! Platforms in OCI's `os/arch[/variant]` form: what a Compose service's `platform` asks for,
//! what a device's engine reports in its status (`linux/amd64`, `linux/arm64`, `linux/arm/v7`,
//! mapped by the agent from Docker's `info`), and whether
//! the one runs on the other, so that `apply` refuses an image a device can never run rather
//! than leave the device failing to start it.
//!
//! Names are normalized as containerd does (`x86_64` → `amd64`, `aarch64` → `arm64`, `arm`
//! alone → `arm/v7`, `arm64/v8` → `arm64`), and an engine runs what containerd's
//! `platforms.Only` lets it: its own platform, `386` on `amd64`, older `arm` variants on
//! `arm`, and `arm/v8`…`v5` on `arm64`.

use std::collections::BTreeMap;

use edgefleet_protocol::spec::ServiceSpec;

/// A normalized platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Reads `os/arch[/variant]` (case-insensitive, aliases normalized); `None` if it is not
    /// of that form.
    pub fn parse(text: &str) -> Option<Platform> {
        let lower = text.trim().to_ascii_lowercase();
        let mut parts = lower.split('/');
        let os = parts.next().filter(|s| !s.is_empty())?.to_owned();
        let arch = parts.next().filter(|s| !s.is_empty())?;
        let variant = parts.next().filter(|s| !s.is_empty());
        if parts.next().is_some() {
            return None;
        }
        let (arch, variant) = normalize(arch, variant);
        Some(Platform { os, arch, variant })
    }

    /// Whether an engine of platform `self` runs images built for `wanted`.
    pub fn runs(&self, wanted: &Platform) -> bool {
        if self.os != wanted.os {
            return false;
        }
        if self.arch == wanted.arch && self.variant == wanted.variant {
            return true;
        }
        let arm_at_most = |max: u32| {
            wanted.arch == "arm"
                && wanted
                    .variant
                    .as_deref()
                    .and_then(|v| v.strip_prefix('v'))
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| (5..=max).contains(&n))
        };
        match (self.arch.as_str(), self.variant.as_deref()) {
            ("amd64", _) => wanted.arch == "amd64" || wanted.arch == "386",
            ("arm64", _) => arm_at_most(8),
            ("arm", Some(v)) => v
                .strip_prefix('v')
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(arm_at_most),
            _ => false,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{v}", self.os, self.arch),
            None => write!(f, "{}/{}", self.os, self.arch),
        }
    }
}

fn normalize(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let (arch, variant) = match (arch, variant) {
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v.filter(|v| *v != "v1")),
        ("i386" | "i686" | "386", _) => ("386", None),
        ("aarch64" | "arm64", v) => ("arm64", v.filter(|v| *v != "v8")),
        ("armhf", _) => ("arm", Some("v7")),
        ("armel", _) => ("arm", Some("v6")),
        ("arm", None) => ("arm", Some("v7")),
        ("arm", Some(v)) => ("arm", Some(v.strip_suffix('l').unwrap_or(v))),
        (a, v) => (a, v),
    };
    (arch.to_owned(), variant.map(str::to_owned))
}

/// The first service (by name) whose `platform` an engine of platform `engine` cannot run:
/// its name and the platform it asks for. A `platform` that is not `os/arch[/variant]` is
/// left to the engine.
pub fn first_mismatch<'a>(
    services: &'a BTreeMap<String, ServiceSpec>,
    engine: &Platform,
) -> Option<(&'a str, &'a str)> {
    services.iter().find_map(|(name, svc)| {
        let wanted = svc.extra.platform.as_deref()?;
        let parsed = Platform::parse(wanted)?;
        (!engine.runs(&parsed)).then_some((name.as_str(), wanted))
    })
}

/// Whether any service asks for a platform.
pub fn any_platform(services: &BTreeMap<String, ServiceSpec>) -> bool {
    services.values().any(|s| s.extra.platform.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap_or_else(|| panic!("{s} parses"))
    }

    #[test]
    fn compose_platforms_are_normalized() {
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
        assert_eq!(p("Linux/X86_64"), p("linux/amd64"));
        assert_eq!(p("linux/arm"), p("linux/arm/v7"));
        assert_eq!(p("linux/armhf"), p("linux/arm/v7"));
        assert!(Platform::parse("amd64").is_none());
        assert!(Platform::parse("linux/arm/v7/x").is_none());
        assert!(Platform::parse("/amd64").is_none());
    }

    #[test]
    fn what_runs_where() {
        let runs = |engine: &str, wanted: &str| p(engine).runs(&p(wanted));
        // Its own platform, in any spelling.
        assert!(runs("linux/amd64", "linux/x86_64"));
        assert!(runs("linux/arm64", "linux/arm64/v8"));
        assert!(runs("linux/arm/v7", "linux/arm"));
        // What containerd's platforms.Only lets each run besides.
        assert!(runs("linux/amd64", "linux/386"));
        assert!(runs("linux/arm64", "linux/arm/v7"));
        assert!(runs("linux/arm64", "linux/arm/v6"));
        assert!(runs("linux/arm/v7", "linux/arm/v6"));
        // And what they cannot.
        assert!(!runs("linux/amd64", "linux/arm64"));
        assert!(!runs("linux/arm64", "linux/amd64"));
        assert!(!runs("linux/arm/v7", "linux/arm64"));
        assert!(!runs("linux/arm/v6", "linux/arm/v7"));
        assert!(!runs("linux/amd64", "windows/amd64"));
        assert!(!runs("linux/riscv64", "linux/arm64"));
    }

    #[test]
    fn the_first_service_an_engine_cannot_run() {
        let svc = |platform: Option<&str>| {
            let mut s: ServiceSpec = serde_json::from_str(r#"{"image":"a"}"#).unwrap();
            s.extra.platform = platform.map(str::to_owned);
            s
        };
        let services: BTreeMap<String, ServiceSpec> = [
            ("any".to_owned(), svc(None)),
            ("hmi".to_owned(), svc(Some("linux/arm64"))),
            ("plc".to_owned(), svc(Some("linux/arm/v7"))),
        ]
        .into();
        assert!(any_platform(&services));
        assert_eq!(first_mismatch(&services, &p("linux/arm64")), None);
        assert_eq!(
            first_mismatch(&services, &p("linux/amd64")),
            Some(("hmi", "linux/arm64"))
        );
        assert_eq!(
            first_mismatch(&services, &p("linux/arm/v7")),
            Some(("hmi", "linux/arm64"))
        );
    }
}
