//! A rollout strategy: how many devices move at once, what counts as success, and what
//! happens on failure. Parsed from the deployment file (`x-edgefleet-rollout:`) or the
//! command line, and validated as a whole: a strategy that makes no sense is refused with a
//! message that says which field and why, before anything moves.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StrategyError {
    #[error("rollout strategy: '{field}' {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("rollout strategy: {0}")]
    Shape(String),
}

fn field(field: &'static str, problem: impl Into<String>) -> StrategyError {
    StrategyError::Field {
        field,
        problem: problem.into(),
    }
}

/// A number of devices, absolute or as a share of the rollout's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AmountText", into = "String")]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// The amount out of `total` devices (percentages round up, so 10 % of 5 is 1).
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

impl FromStr for Amount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p
                .trim()
                .parse()
                .map_err(|_| format!("'{s}' is not a percentage like 25%"))?;
            Ok(Amount::Percent(p))
        } else {
            s.parse()
                .map(Amount::Count)
                .map_err(|_| format!("'{s}' is not a count like 2 or a percentage like 25%"))
        }
    }
}

impl TryFrom<String> for Amount {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// An amount as a file or a request writes it: a bare number (`batch: 2`, which JSON and
/// typed YAML loaders give as a number) or text (`"2"`, `"25%"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum AmountText {
    Number(u64),
    Text(String),
}

impl TryFrom<AmountText> for Amount {
    type Error = String;
    fn try_from(raw: AmountText) -> Result<Self, Self::Error> {
        match raw {
            AmountText::Number(n) => u32::try_from(n)
                .map(Amount::Count)
                .map_err(|_| format!("{n} devices is more than any fleet")),
            AmountText::Text(t) => t.parse(),
        }
    }
}

impl From<Amount> for String {
    fn from(a: Amount) -> String {
        a.to_string()
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    Pause,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflinePolicy {
    /// Wait for the device up to `offline_timeout`, then count it failed.
    Wait,
    /// Leave it out of the rollout (reported as skipped).
    Skip,
    /// Count it failed at once.
    Fail,
}

/// Level of the site hierarchy (ISA-95 style labels `site`, `area`, `line`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Site,
    Area,
    Line,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Site => "site",
            Level::Area => "area",
            Level::Line => "line",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Strategy {
    /// Devices in the first wave; the rest waits until they all succeed.
    pub canary: u32,
    /// Devices per following wave.
    pub batch: Amount,
    /// Failures tolerated before `on_failure` applies (0: the first failure stops it).
    pub max_failures: Amount,
    /// Time a device has to converge and become healthy.
    #[serde(with = "secs")]
    pub health_timeout: Duration,
    /// How long a device must stay healthy to count as a success.
    #[serde(with = "secs")]
    pub soak: Duration,
    pub on_failure: OnFailure,
    pub offline: OfflinePolicy,
    #[serde(with = "secs")]
    pub offline_timeout: Duration,
    /// Order devices by this level of the site hierarchy (then by id).
    pub order_by: Option<Level>,
    /// Never two devices sharing this level's label in one wave (e.g. `line`).
    pub one_per: Option<Level>,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            canary: 1,
            batch: Amount::Percent(25),
            max_failures: Amount::Count(0),
            health_timeout: Duration::from_secs(300),
            soak: Duration::from_secs(30),
            on_failure: OnFailure::Rollback,
            offline: OfflinePolicy::Wait,
            offline_timeout: Duration::from_secs(600),
            order_by: None,
            one_per: None,
        }
    }
}

/// Durations as whole seconds or Compose-style strings (`90`, `"1m30s"`).
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => crate::duration::parse_duration_ms(&t)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("'{t}' is not a duration like 30s or 5m"))
                }),
        }
    }
}

impl Strategy {
    /// Parses a strategy from YAML or JSON (unknown fields and values are refused) and
    /// validates it. The YAML goes through the same bounded reader as Compose files
    /// ([`crate::compose::load_yaml`]: serde-saphyr under a budget), never the deprecated
    /// serde_yaml.
    pub fn from_yaml(text: &str) -> Result<Strategy, StrategyError> {
        let tree =
            crate::compose::load_yaml(text).map_err(|e| StrategyError::Shape(e.to_string()))?;
        // With the path of the field that is wrong ("on_failure: unknown variant …").
        let s: Strategy = serde_path_to_error::deserialize(tree)
            .map_err(|e| StrategyError::Shape(format!("{}: {}", e.path(), e.inner())))?;
        s.validate()?;
        Ok(s)
    }

    /// Refuses strategies that make no sense.
    pub fn validate(&self) -> Result<(), StrategyError> {
        match self.batch {
            Amount::Count(0) | Amount::Percent(0) => {
                return Err(field("batch", "must move at least one device"));
            }
            Amount::Percent(p) if p > 100 => {
                return Err(field("batch", format!("{p}% is more than all devices")));
            }
            _ => {}
        }
        if let Amount::Percent(p) = self.max_failures
            && p > 100
        {
            return Err(field("max_failures", format!("{p}% is more than 100%")));
        }
        if self.health_timeout.is_zero() {
            return Err(field("health_timeout", "must be longer than 0 s"));
        }
        if self.soak >= self.health_timeout {
            return Err(field(
                "soak",
                "must be shorter than health_timeout (a device must be healthy for soak within health_timeout)",
            ));
        }
        if self.offline == OfflinePolicy::Wait && self.offline_timeout.is_zero() {
            return Err(field(
                "offline_timeout",
                "must be longer than 0 s with offline: wait",
            ));
        }
        Ok(())
    }

    /// Whether `failed` failures out of `total` devices exceed the tolerance.
    pub fn too_many_failures(&self, failed: usize, total: usize) -> bool {
        failed > self.max_failures.of(total).min(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_units() {
        let s = Strategy::from_yaml(
            "canary: 2\nbatch: 50%\nsoak: 1m\nhealth_timeout: 600\none_per: line\n",
        )
        .unwrap();
        assert_eq!(s.canary, 2);
        assert_eq!(s.batch, Amount::Percent(50));
        assert_eq!(s.soak, Duration::from_secs(60));
        assert_eq!(s.health_timeout, Duration::from_secs(600));
        assert_eq!(s.one_per, Some(Level::Line));
        assert_eq!(s.on_failure, OnFailure::Rollback);
        assert_eq!(Strategy::from_yaml("{}").unwrap(), Strategy::default());
    }

    #[test]
    fn nonsense_is_refused_with_the_field_named() {
        let cases = [
            ("batch: 0", "'batch'"),
            ("batch: 0%", "'batch'"),
            ("batch: 150%", "'batch'"),
            ("max_failures: 101%", "'max_failures'"),
            ("on_failure: explode", "on_failure"),
            ("offline: maybe", "offline"),
            ("batch: lots", "not a count"),
            ("soak: 10m\nhealth_timeout: 5m", "'soak'"),
            ("surge: 3", "surge"),
            ("soak: soon", "not a duration"),
        ];
        for (yaml, needle) in cases {
            let e = Strategy::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }

    #[test]
    fn amounts() {
        assert_eq!(Amount::Percent(10).of(5), 1);
        assert_eq!(Amount::Percent(50).of(5), 3);
        assert_eq!(Amount::Count(2).of(5), 2);
        let s = Strategy {
            max_failures: Amount::Percent(20),
            ..Strategy::default()
        };
        assert!(!s.too_many_failures(2, 10));
        assert!(s.too_many_failures(3, 10));
        assert!(Strategy::default().too_many_failures(1, 10));
    }
}

#[cfg(test)]
mod amount_tests {
    use super::*;

    #[test]
    fn amounts_read_as_numbers_or_text() {
        let s: Strategy = serde_json::from_value(
            serde_json::json!({"canary": 1, "batch": 2, "max_failures": "10%", "soak": "0s"}),
        )
        .unwrap();
        assert_eq!(s.batch, Amount::Count(2));
        assert_eq!(s.max_failures, Amount::Percent(10));
    }
}
