//! Revisions resolved per device (`edgefleet_domain::template`), as the deployments
//! service checks and computes them: each targeted device's stack at apply (refused at the
//! first device that cannot be resolved, naming it and the variable), the policy check on
//! each device's own stack, and the record on a device of what cannot be resolved for it
//! later (an alarm, an error event, a log line: it keeps what its document has).

use std::collections::BTreeMap;
use std::sync::Arc;

use edgefleet_domain::compose;
use edgefleet_domain::deployment::{RevisionSpec, RevisionStack};
use edgefleet_domain::selector::Selector;
use edgefleet_domain::template::{DeviceTemplate, ResolvedVariable, Template};
use edgefleet_domain::variables::Scope;
use edgefleet_protocol::event::{DeviceEvent, EventKind, Severity};
use edgefleet_protocol::spec::StackSpec;
use edgefleet_store::StoreError;

use super::{ApplyError, ApplyRequest, Deployments, PolicySource, Refusals};

/// What cannot be resolved for one device: deployment → why.
pub(super) type Unresolved = BTreeMap<String, String>;

/// A revision's stacks on the devices it targets: one for all, or one each.
pub(super) enum Resolved {
    Shared(Arc<StackSpec>),
    /// Targeted device → its stack.
    PerDevice(BTreeMap<String, Arc<StackSpec>>),
}

impl Resolved {
    pub(super) fn for_device(&self, id: &str) -> Option<&StackSpec> {
        match self {
            Resolved::Shared(s) => Some(s),
            Resolved::PerDevice(m) => m.get(id).map(|s| &**s),
        }
    }
}

/// What an apply would record, and its stack as the book will hold it (revision `u64::MAX`
/// until recorded); `secrets` are the keyed digests of the file's secrets.
pub(super) fn revision_of(
    req: &ApplyRequest,
    secrets: &BTreeMap<String, String>,
) -> Result<(RevisionSpec, RevisionStack), ApplyError> {
    Ok(match Template::of(&req.compose, &req.variables)? {
        None => {
            let mut parsed = compose::parse_inputs(&req.compose, &req.variables, &req.files)?;
            parsed.set_secret_digests(secrets);
            let spec = RevisionSpec::of(&parsed);
            let stack =
                RevisionStack::Shared(Arc::new(spec.clone().into_stack(&req.name, u64::MAX)));
            (spec, stack)
        }
        Some((mut template, rollout)) => {
            // The configs' files travel with the template (they are configuration); the
            // secrets' never do, only their digests.
            template.files = compose::config_file_sources(&req.compose)
                .into_iter()
                .filter_map(|p| req.files.get(&p).map(|c| (p, c.clone())))
                .collect();
            template.secrets = secrets.clone();
            let t = DeviceTemplate::new(&req.name, u64::MAX, template.clone())?;
            (
                RevisionSpec::templated(template, rollout),
                RevisionStack::PerDevice(Arc::new(t)),
            )
        }
    })
}

impl Deployments {
    /// At start: which devices cannot be resolved for which deployment (an alarm; the
    /// event was raised when it started), and the documents read from the store made to
    /// share the book's stacks again (each was read as its own copy). A document's content
    /// is not changed: a stack is swapped only for an equal one.
    pub(super) fn settle_loaded_documents(&self) {
        let book = self.book.read();
        let templated = !book.templates().is_empty();
        let vars = self.variables.read();
        let mut memo = self.resolutions.lock();
        for mut d in self.fleet.devices.iter_mut() {
            let (id, labels) = (d.key().clone(), d.labels.clone());
            let computed = book.stacks_for(&id, &labels, &vars, &mut memo);
            if let Some(doc) = d.desired.as_mut() {
                for (name, stack) in doc.stacks.iter_mut() {
                    if let Some(shared) = computed.stacks.get(name)
                        && shared == stack
                    {
                        *stack = Arc::clone(shared);
                    }
                }
            }
            if templated {
                d.unresolved = computed
                    .unresolved
                    .into_iter()
                    .map(|(dep, e)| (dep, e.to_string()))
                    .collect();
            }
        }
    }

    /// What each device's own stack breaks under its site's policy, per policy (each
    /// violation once). Linear in the devices; the site's policy is looked up once.
    fn check_per_device(&self, stacks: &BTreeMap<String, Arc<StackSpec>>) -> Vec<Refusals> {
        type Policy = (PolicySource, edgefleet_protocol::policy::WorkloadPolicy);
        let mut by_site: BTreeMap<Option<String>, Policy> = BTreeMap::new();
        let mut out: Vec<Refusals> = Vec::new();
        for (id, stack) in stacks {
            let site = self.fleet.site_of(id);
            let (source, policy) = by_site
                .entry(site.clone())
                .or_insert_with(|| self.policies.effective(site.as_deref()));
            let violations = policy.check(stack);
            if violations.is_empty() {
                continue;
            }
            let i = match out.iter().position(|(s, _)| s == source) {
                Some(i) => i,
                None => {
                    out.push((source.clone(), Vec::new()));
                    out.len() - 1
                }
            };
            for v in violations {
                if !out[i].1.contains(&v) {
                    out[i].1.push(v);
                }
            }
        }
        out
    }

    /// The policy refusals of a revision's stacks where `selector` points.
    pub(super) fn check_resolved(&self, selector: &Selector, resolved: &Resolved) -> Vec<Refusals> {
        match resolved {
            Resolved::Shared(stack) => self.check_policies(selector, stack),
            Resolved::PerDevice(stacks) => self.check_per_device(stacks),
        }
    }

    /// A revision's stack on every device `selector` targets: the shared one, or each
    /// device's own (in device order; the first that cannot be resolved is the error). With
    /// no device targeted yet, a variable the file needs that nothing keeps is the error.
    pub(super) fn resolve_targets(
        &self,
        selector: &Selector,
        stack: &RevisionStack,
    ) -> Result<Resolved, ApplyError> {
        let t = match stack {
            RevisionStack::Shared(s) => return Ok(Resolved::Shared(Arc::clone(s))),
            RevisionStack::PerDevice(t) => t,
        };
        let mut targets: Vec<(String, BTreeMap<String, String>)> = self
            .fleet
            .devices
            .iter()
            .filter(|d| selector.matches(d.key(), &d.labels))
            .map(|d| (d.key().clone(), d.labels.clone()))
            .collect();
        targets.sort();
        let vars = self.variables.read();
        if targets.is_empty()
            && let Some(e) = t.unset_everywhere(&vars)
        {
            return Err(e.into());
        }
        let mut memo = self.resolutions.lock();
        let mut out = BTreeMap::new();
        for (id, labels) in targets {
            let resolved = t.resolve(&id, &labels, &vars, &mut memo)?;
            out.insert(id, resolved);
        }
        Ok(Resolved::PerDevice(out))
    }

    /// The policy refusals of a stored revision where `selector` points now (a rollout's
    /// start checks again); a device it cannot be resolved for is the error.
    pub fn check_stored(
        &self,
        name: &str,
        revision: u64,
        spec: RevisionSpec,
        selector: &Selector,
    ) -> Result<Vec<Refusals>, ApplyError> {
        let stack = spec.into_revision_stack(name, revision)?;
        let resolved = self.resolve_targets(selector, &stack)?;
        Ok(self.check_resolved(selector, &resolved))
    }

    /// Records on each device which deployments cannot be resolved for it now (an alarm),
    /// with an error event and a log line when one starts failing or fails otherwise.
    /// `notes`: (device, before, after), deployment → why.
    pub(super) async fn note_unresolved(&self, notes: Vec<(String, Unresolved, Unresolved)>) {
        let mut stored = Vec::new();
        for (id, before, after) in notes {
            for (dep, why) in &after {
                if before.get(dep) == Some(why) {
                    continue;
                }
                tracing::warn!(device = %id, deployment = %dep, "deployment not resolved for the device, it keeps what it has of it: {why}");
                let mut event = DeviceEvent::new(
                    &id,
                    EventKind::Failed,
                    Severity::Error,
                    format!(
                        "deployment '{dep}' not resolved, the device keeps what it has of it: {why}"
                    ),
                );
                event.stack = Some(dep.clone());
                if let Ok(json) = serde_json::to_string(&event) {
                    stored.push((id.clone(), event.ts.clone(), json));
                }
                self.fleet.controller_event(event);
            }
            for dep in before.keys().filter(|d| !after.contains_key(*d)) {
                tracing::info!(device = %id, deployment = %dep, "deployment resolved again for the device");
            }
            self.fleet.update_known(&id, |d| d.unresolved = after);
        }
        if let Err(e) = self
            .store
            .append_events(stored, edgefleet_domain::device::STORED_EVENTS)
            .await
        {
            tracing::error!("cannot store the devices' resolution events: {e}");
        }
    }

    /// After a site's or device's variables changed: recomputes the documents of the
    /// devices it reaches. Returns those devices and, among them, the deployments that
    /// cannot be resolved for them now (device → deployment → why).
    pub async fn variables_changed(
        &self,
        scope: &Scope,
    ) -> Result<(Vec<String>, BTreeMap<String, Unresolved>), StoreError> {
        let mut ids: Vec<String> = match scope {
            Scope::Site(site) => self
                .fleet
                .devices
                .iter()
                .filter(|d| d.labels.get("site") == Some(site))
                .map(|d| d.key().clone())
                .collect(),
            Scope::Device(id) if self.fleet.contains(id) => vec![id.clone()],
            Scope::Device(_) => Vec::new(),
        };
        ids.sort();
        // Only a revision resolved per device reads variables.
        if !self.book.read().templates().is_empty() {
            self.refresh(&ids).await?;
        }
        let unresolved = ids
            .iter()
            .filter_map(|id| {
                let d = self.fleet.devices.get(id)?;
                (!d.unresolved.is_empty()).then(|| (id.clone(), d.unresolved.clone()))
            })
            .collect();
        Ok((ids, unresolved))
    }

    /// For each deployment resolved per device that targets `id`: the variables its file
    /// refers to, with the device's values and where each comes from.
    pub fn variables_of(&self, id: &str) -> BTreeMap<String, Vec<ResolvedVariable>> {
        let Some(labels) = self.fleet.devices.get(id).map(|d| d.labels.clone()) else {
            return BTreeMap::new();
        };
        let book = self.book.read();
        let vars = self.variables.read();
        book.variables_for(id, &labels, &vars)
    }
}
