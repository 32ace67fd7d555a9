//! Target selectors: which devices a deployment runs on.
//!
//! Syntax (what `--target` takes):
//! - `site=lyon,line=3`: devices carrying every listed label (AND);
//! - `id=press-07|press-08`: exactly these devices (the key `id` is reserved for this);
//! - both combined: `id=a|b,site=lyon` (listed AND labelled);
//! - `*`: every device.

use std::collections::BTreeMap;
use std::fmt;

use edgefleet_protocol::ids::{validate_device_id, validate_label};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error(
        "empty target: use '*' for every device, 'site=lyon,line=3' for labels or 'id=dev1|dev2' for devices"
    )]
    Empty,
    #[error("target term '{0}' is not key=value (example: 'site=lyon,line=3' or 'id=press-07')")]
    NotKeyValue(String),
    #[error("target term '{term}': {reason}")]
    Invalid { term: String, reason: String },
    #[error("target names label '{0}' twice")]
    Duplicate(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    /// Explicit device ids (`id=…`), if any.
    pub ids: Option<Vec<String>>,
    /// Labels every targeted device must carry.
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SelectorError::Empty);
        }
        let mut sel = Selector {
            ids: None,
            labels: BTreeMap::new(),
        };
        if s == "*" {
            return Ok(sel);
        }
        for term in s.split(',').map(str::trim) {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| SelectorError::NotKeyValue(term.to_owned()))?;
            let (k, v) = (k.trim(), v.trim());
            let invalid = |reason: String| SelectorError::Invalid {
                term: term.to_owned(),
                reason,
            };
            if k == "id" {
                if sel.ids.is_some() {
                    return Err(SelectorError::Duplicate("id".into()));
                }
                let ids: Vec<String> = v.split('|').map(|i| i.trim().to_owned()).collect();
                for id in &ids {
                    validate_device_id(id).map_err(|e| invalid(e.to_string()))?;
                }
                sel.ids = Some(ids);
            } else {
                validate_label(k, v).map_err(|e| invalid(e.to_string()))?;
                if sel.labels.insert(k.to_owned(), v.to_owned()).is_some() {
                    return Err(SelectorError::Duplicate(k.to_owned()));
                }
            }
        }
        Ok(sel)
    }

    pub fn matches(&self, device: &str, labels: &BTreeMap<String, String>) -> bool {
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i == device))
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms: Vec<String> = Vec::new();
        if let Some(ids) = &self.ids {
            terms.push(format!("id={}", ids.join("|")));
        }
        terms.extend(self.labels.iter().map(|(k, v)| format!("{k}={v}")));
        if terms.is_empty() {
            f.write_str("*")
        } else {
            f.write_str(&terms.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matching() {
        let l = labels(&[("site", "lyon"), ("line", "3")]);
        let cases = [
            ("*", "d1", true),
            ("site=lyon", "d1", true),
            ("site=lyon,line=3", "d1", true),
            ("site=lyon,line=4", "d1", false),
            ("area=x", "d1", false),
            ("id=d1|d2", "d1", true),
            ("id=d2", "d1", false),
            ("id=d1,site=paris", "d1", false),
        ];
        for (sel, dev, want) in cases {
            assert_eq!(
                Selector::parse(sel).unwrap().matches(dev, &l),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["*", "line=3,site=lyon", "id=a|b,site=x"] {
            assert_eq!(Selector::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn refusals() {
        for s in ["", "site", "site=", "a/b=c", "id=a/b", "site=a,site=b"] {
            assert!(Selector::parse(s).is_err(), "{s:?}");
        }
    }
}
