//! The desired-state book: deployments in force and, from them, each device's desired
//! document.
//!
//! A device's stacks are those of every deployment whose selector matches it, each at the
//! latest revision, unless a rollout pinned the device to another revision of it. A
//! revision resolved per device ([`RevisionStack::PerDevice`]) is resolved with that
//! device's variables; one that cannot be resolved for it keeps what the device's current
//! document has of it ([`DeviceStacks::keeping`]). Whenever the computed stacks differ from
//! the device's current document, the device gets a new document with `revision + 1`;
//! otherwise nothing changes, so recomputing is always safe.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::spec::{StackSecret, StackSpec};

use crate::deployment::RevisionStack;
use crate::selector::Selector;
use crate::template::{Resolutions, ResolveError, ResolvedVariable};
use crate::variables::ScopedVariables;

/// A deployment in force, with its latest revision's stack.
#[derive(Debug, Clone)]
pub struct ActiveDeployment {
    pub name: String,
    pub selector: Selector,
    pub revision: u64,
    pub stack: RevisionStack,
}

#[derive(Debug, Default, Clone)]
pub struct Book {
    pub deployments: BTreeMap<String, ActiveDeployment>,
    /// (device, deployment) → revision the device runs instead of the latest (rollouts).
    pub pins: BTreeMap<(String, String), u64>,
    /// Stacks of pinned, non-latest revisions: (deployment, revision) → stack.
    pub pinned_stacks: BTreeMap<(String, u64), RevisionStack>,
}

/// What a device should run: its stacks, and the deployments that target it but could not
/// be resolved for it (deployment → why). A stack is the book's own (a shared revision's) or
/// the resolution's (a revision resolved per device): devices running the same one share it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStacks {
    pub stacks: BTreeMap<String, Arc<StackSpec>>,
    pub unresolved: BTreeMap<String, ResolveError>,
}

impl DeviceStacks {
    /// A deployment that could not be resolved keeps what `current` has of it, if anything:
    /// a missing variable never sends a stack with an empty value, nor takes a running one
    /// away.
    pub fn keeping(mut self, current: Option<&DesiredState>) -> Self {
        if let Some(cur) = current {
            for name in self.unresolved.keys() {
                if let Some(stack) = cur.stacks.get(name) {
                    self.stacks.insert(name.clone(), Arc::clone(stack));
                }
            }
        }
        self
    }
}

impl Book {
    /// The revision `device` runs of `d`: the one it is pinned to, else the latest.
    fn revision_for<'a>(&'a self, device: &str, d: &'a ActiveDeployment) -> &'a RevisionStack {
        self.pins
            .get(&(device.to_owned(), d.name.clone()))
            .filter(|rev| **rev != d.revision)
            .and_then(|rev| self.pinned_stacks.get(&(d.name.clone(), *rev)))
            .unwrap_or(&d.stack)
    }

    /// Stacks a device with these labels should run: each targeting deployment at its
    /// latest revision (or the one a rollout pinned it to), resolved with its variables.
    pub fn stacks_for(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        variables: &ScopedVariables,
        memo: &mut Resolutions,
    ) -> DeviceStacks {
        let mut out = DeviceStacks::default();
        for d in self
            .deployments
            .values()
            .filter(|d| d.selector.matches(device, labels))
        {
            match self.revision_for(device, d) {
                RevisionStack::Shared(stack) => {
                    out.stacks.insert(d.name.clone(), Arc::clone(stack));
                }
                RevisionStack::PerDevice(t) => match t.resolve(device, labels, variables, memo) {
                    Ok(stack) => {
                        out.stacks.insert(d.name.clone(), stack);
                    }
                    Err(e) => {
                        out.unresolved.insert(d.name.clone(), e);
                    }
                },
            }
        }
        out
    }

    /// For each deployment resolved per device that targets `device`: the variables its
    /// file refers to, with the device's values and where they come from.
    pub fn variables_for(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        variables: &ScopedVariables,
    ) -> BTreeMap<String, Vec<ResolvedVariable>> {
        self.deployments
            .values()
            .filter(|d| d.selector.matches(device, labels))
            .filter_map(|d| match self.revision_for(device, d) {
                RevisionStack::PerDevice(t) => {
                    Some((d.name.clone(), t.variables_for(device, labels, variables)))
                }
                RevisionStack::Shared(_) => None,
            })
            .collect()
    }

    /// The templates in force (latest and pinned revisions), by digest.
    pub fn templates(&self) -> HashSet<[u8; 32]> {
        self.deployments
            .values()
            .map(|d| &d.stack)
            .chain(self.pinned_stacks.values())
            .filter_map(|s| match s {
                RevisionStack::PerDevice(t) => Some(t.digest()),
                RevisionStack::Shared(_) => None,
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
    stacks: BTreeMap<String, Arc<StackSpec>>,
    registries: BTreeMap<String, StackSecret>,
) -> Option<DesiredState> {
    let revision = match current {
        // `Arc<StackSpec>`'s `==` (StackSpec is `Eq`) compares pointers first: a stack the
        // document already shares with the book costs no walk through its services.
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

    fn stack(name: &str, rev: u64) -> Arc<StackSpec> {
        Arc::new(StackSpec {
            deployment: name.into(),
            deployment_revision: rev,
            volumes: vec![],
            volume_options: Default::default(),
            networks: Default::default(),
            services: BTreeMap::new(),
            configs: Default::default(),
            secrets: Default::default(),
        })
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
                            stack: RevisionStack::Shared(stack(n, *rev)),
                        },
                    )
                })
                .collect(),
            ..Book::default()
        }
    }

    fn stacks(
        b: &Book,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> BTreeMap<String, Arc<StackSpec>> {
        let out = b.stacks_for(
            id,
            labels,
            &ScopedVariables::default(),
            &mut Resolutions::default(),
        );
        assert!(out.unresolved.is_empty());
        out.stacks
    }

    #[test]
    fn devices_get_the_stacks_that_target_them() {
        let b = book(&[("a", "site=lyon", 1), ("b", "id=d2", 3), ("c", "*", 2)]);
        let lyon: BTreeMap<_, _> = [("site".to_string(), "lyon".to_string())].into();
        let none = BTreeMap::new();
        assert_eq!(
            stacks(&b, "d1", &lyon).keys().collect::<Vec<_>>(),
            vec!["a", "c"]
        );
        assert_eq!(
            stacks(&b, "d2", &none).keys().collect::<Vec<_>>(),
            vec!["b", "c"]
        );
    }

    #[test]
    fn pins_hold_a_device_on_another_revision() {
        let mut b = book(&[("a", "*", 3)]);
        let none = BTreeMap::new();
        b.pins.insert(("d1".into(), "a".into()), 2);
        b.pinned_stacks
            .insert(("a".into(), 2), RevisionStack::Shared(stack("a", 2)));
        assert_eq!(stacks(&b, "d1", &none)["a"].deployment_revision, 2);
        assert_eq!(
            stacks(&b, "d2", &none)["a"].deployment_revision,
            3,
            "unpinned: latest"
        );
        b.pins.insert(("d1".into(), "a".into()), 3);
        assert_eq!(
            stacks(&b, "d1", &none)["a"].deployment_revision,
            3,
            "pinned to latest"
        );
    }

    #[test]
    fn devices_running_a_shared_revision_share_its_stack() {
        let mut b = book(&[("a", "*", 3), ("b", "site=lyon", 1)]);
        b.pins.insert(("d3".into(), "a".into()), 2);
        b.pins.insert(("d4".into(), "a".into()), 2);
        b.pinned_stacks
            .insert(("a".into(), 2), RevisionStack::Shared(stack("a", 2)));
        let lyon: BTreeMap<_, _> = [("site".to_string(), "lyon".to_string())].into();
        let (d1, d2) = (stacks(&b, "d1", &lyon), stacks(&b, "d2", &BTreeMap::new()));
        let RevisionStack::Shared(latest) = &b.deployments["a"].stack else {
            unreachable!()
        };
        // One allocation: the book's, in both devices' stacks (no copy per device).
        assert!(Arc::ptr_eq(&d1["a"], &d2["a"]));
        assert!(Arc::ptr_eq(&d1["a"], latest));
        // Devices pinned to another revision share that one.
        let (d3, d4) = (stacks(&b, "d3", &lyon), stacks(&b, "d4", &lyon));
        assert!(Arc::ptr_eq(&d3["a"], &d4["a"]));
        assert!(!Arc::ptr_eq(&d3["a"], &d1["a"]));
        assert!(Arc::ptr_eq(&d3["b"], &d1["b"]));
        // A document keeps sharing it: issued, then recomputed to the same stacks.
        let doc = next_document("d1", None, d1.clone(), BTreeMap::new()).unwrap();
        assert!(Arc::ptr_eq(&doc.stacks["a"], latest));
        assert!(next_document("d1", Some(&doc), d1, BTreeMap::new()).is_none());
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

    fn templated(name: &str, rev: u64, file: &str) -> RevisionStack {
        let (t, _) = crate::template::Template::of(file, &Default::default())
            .unwrap()
            .unwrap();
        RevisionStack::PerDevice(Arc::new(
            crate::template::DeviceTemplate::new(name, rev, t).unwrap(),
        ))
    }

    #[test]
    fn templated_revisions_are_resolved_per_device_and_keep_the_current_stack_on_failure() {
        use crate::variables::Scope;
        let mut b = book(&[("plain", "*", 1)]);
        b.deployments.insert(
            "t".into(),
            ActiveDeployment {
                name: "t".into(),
                selector: Selector::parse("*").unwrap(),
                revision: 2,
                stack: templated(
                    "t",
                    2,
                    "services:\n  a:\n    image: a\n    environment: { S: \"${EDGEFLEET_SITE}\", IP: \"${IP}\" }\n",
                ),
            },
        );
        let lyon: BTreeMap<_, _> = [("site".to_string(), "lyon".to_string())].into();
        let mut vars = ScopedVariables::default();
        vars.set(
            &Scope::Site("lyon".into()),
            &[("IP".to_string(), "10.0.0.1".to_string())].into(),
        );
        let mut memo = Resolutions::default();
        let got = b.stacks_for("d1", &lyon, &vars, &mut memo);
        assert!(got.unresolved.is_empty());
        assert_eq!(got.stacks["t"].services["a"].environment["S"], "lyon");
        assert_eq!(got.stacks["t"].deployment_revision, 2);
        // Another device of the site resolves to the same values: the same stack.
        let other = b.stacks_for("d9", &lyon, &vars, &mut memo);
        assert!(Arc::ptr_eq(&got.stacks["t"], &other.stacks["t"]));
        assert_eq!(
            b.variables_for("d1", &lyon, &vars)["t"]
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["EDGEFLEET_SITE", "IP"]
        );
        assert!(!b.variables_for("d1", &lyon, &vars).contains_key("plain"));
        assert_eq!(b.templates().len(), 1);

        // The site's variable is removed: the device keeps what its document has of `t`.
        let doc = DesiredState::new("d1", 4, got.stacks.clone());
        let none = ScopedVariables::default();
        let failed = b.stacks_for("d1", &lyon, &none, &mut memo);
        assert_eq!(failed.unresolved["t"].device, "d1");
        assert!(!failed.stacks.contains_key("t"));
        assert!(failed.stacks.contains_key("plain"), "others are unaffected");
        let kept = failed.keeping(Some(&doc));
        assert_eq!(kept.stacks, got.stacks);
        assert!(
            Arc::ptr_eq(&kept.stacks["t"], &doc.stacks["t"]),
            "kept, not copied"
        );
        assert!(next_document("d1", Some(&doc), kept.stacks, BTreeMap::new()).is_none());
        // A device without a document gets nothing of `t` (never an empty value).
        let fresh = b.stacks_for("d2", &lyon, &none, &mut memo).keeping(None);
        assert_eq!(fresh.stacks.keys().collect::<Vec<_>>(), ["plain"]);
    }
}
