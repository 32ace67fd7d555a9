//! The desired-state book: deployments in force and, from them, each device's desired
//! document.
//!
//! A device's stacks are those of every deployment whose selector matches it, each at the
//! latest revision, unless a rollout pinned the device to another revision of it. Whenever the computed stacks differ from the
//! device's current document, the device gets a new document with `revision + 1`; otherwise
//! nothing changes, so recomputing is always safe.

use std::collections::BTreeMap;

use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::spec::{StackSecret, StackSpec};

use crate::selector::Selector;

/// A deployment in force, with its latest revision's stack.
#[derive(Debug, Clone)]
pub struct ActiveDeployment {
    pub name: String,
    pub selector: Selector,
    pub revision: u64,
    pub stack: StackSpec,
}

#[derive(Debug, Default, Clone)]
pub struct Book {
    pub deployments: BTreeMap<String, ActiveDeployment>,
    /// (device, deployment) → revision the device runs instead of the latest (rollouts).
    pub pins: BTreeMap<(String, String), u64>,
    /// Stacks of pinned, non-latest revisions: (deployment, revision) → stack.
    pub pinned_stacks: BTreeMap<(String, u64), StackSpec>,
}

impl Book {
    /// Stacks a device with these labels should run: each targeting deployment at its latest
    /// revision. This is the seam for rollouts, which will pin devices to other revisions.
    pub fn stacks_for(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
    ) -> BTreeMap<String, StackSpec> {
        self.deployments
            .values()
            .filter(|d| d.selector.matches(device, labels))
            .map(|d| {
                let pinned = self
                    .pins
                    .get(&(device.to_owned(), d.name.clone()))
                    .filter(|rev| **rev != d.revision)
                    .and_then(|rev| self.pinned_stacks.get(&(d.name.clone(), *rev)));
                (d.name.clone(), pinned.unwrap_or(&d.stack).clone())
            })
            .collect()
    }

    /// Devices among `devices` that a deployment targets.
    pub fn targets<'a>(
        selector: &Selector,
        devices: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
    ) -> Vec<String> {
        devices
            .into_iter()
            .filter(|(id, l)| selector.matches(id, l))
            .map(|(id, _)| id.to_owned())
            .collect()
    }
}

/// The next desired document for a device, or `None` when `current` already says the same
/// (stacks and registry credentials).
pub fn next_document(
    device: &str,
    current: Option<&DesiredState>,
    stacks: BTreeMap<String, StackSpec>,
    registries: BTreeMap<String, StackSecret>,
) -> Option<DesiredState> {
    let revision = match current {
        Some(cur) if cur.stacks == stacks && cur.registries == registries => return None,
        Some(cur) => cur.revision + 1,
        None => 1,
    };
    let mut doc = DesiredState::new(device, revision, stacks);
    doc.registries = registries;
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(name: &str, rev: u64) -> StackSpec {
        StackSpec {
            deployment: name.into(),
            deployment_revision: rev,
            volumes: vec![],
            volume_options: Default::default(),
            networks: Default::default(),
            services: BTreeMap::new(),
            configs: Default::default(),
            secrets: Default::default(),
        }
    }

    fn book(entries: &[(&str, &str, u64)]) -> Book {
        Book {
            deployments: entries
                .iter()
                .map(|(n, sel, rev)| {
                    (
                        n.to_string(),
                        ActiveDeployment {
                            name: n.to_string(),
                            selector: Selector::parse(sel).unwrap(),
                            revision: *rev,
                            stack: stack(n, *rev),
                        },
                    )
                })
                .collect(),
            ..Book::default()
        }
    }

    #[test]
    fn devices_get_the_stacks_that_target_them() {
        let b = book(&[("a", "site=lyon", 1), ("b", "id=d2", 3), ("c", "*", 2)]);
        let lyon: BTreeMap<_, _> = [("site".to_string(), "lyon".to_string())].into();
        let none = BTreeMap::new();
        assert_eq!(
            b.stacks_for("d1", &lyon).keys().collect::<Vec<_>>(),
            vec!["a", "c"]
        );
        assert_eq!(
            b.stacks_for("d2", &none).keys().collect::<Vec<_>>(),
            vec!["b", "c"]
        );
    }

    #[test]
    fn pins_hold_a_device_on_another_revision() {
        let mut b = book(&[("a", "*", 3)]);
        let none = BTreeMap::new();
        b.pins.insert(("d1".into(), "a".into()), 2);
        b.pinned_stacks.insert(("a".into(), 2), stack("a", 2));
        assert_eq!(b.stacks_for("d1", &none)["a"].deployment_revision, 2);
        assert_eq!(
            b.stacks_for("d2", &none)["a"].deployment_revision,
            3,
            "unpinned: latest"
        );
        b.pins.insert(("d1".into(), "a".into()), 3);
        assert_eq!(
            b.stacks_for("d1", &none)["a"].deployment_revision,
            3,
            "pinned to latest"
        );
    }

    #[test]
    fn revisions_only_move_on_change() {
        let s: BTreeMap<_, _> = [("a".to_string(), stack("a", 1))].into();
        let first = next_document("d1", None, s.clone(), BTreeMap::new()).unwrap();
        assert_eq!(first.revision, 1);
        assert!(next_document("d1", Some(&first), s, BTreeMap::new()).is_none());
        let s2: BTreeMap<_, _> = [("a".to_string(), stack("a", 2))].into();
        assert_eq!(
            next_document("d1", Some(&first), s2, BTreeMap::new())
                .unwrap()
                .revision,
            2
        );
        assert_eq!(
            next_document("d1", Some(&first), BTreeMap::new(), BTreeMap::new())
                .unwrap()
                .revision,
            2
        );
    }
}
