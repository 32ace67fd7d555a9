//! Deployments: applying and deleting them, the pins rollouts set, and from them every
//! device's desired document.
//!
//! Owns the desired-state book ([`Book`]: deployments in force at their latest revision, and
//! the pinned revisions' stacks) and the per-device resolutions of templated revisions
//! ([`Resolutions`]). Invariants kept here:
//! - a new revision is recorded only if the Compose spec or target changed;
//! - a revision resolved per device is resolved for every targeted device at apply (the
//!   first that fails refuses it, naming the device and the variable), and checked against
//!   each device's policy, platform and document size; a device that cannot be resolved
//!   later keeps what its document has of the deployment, with an alarm and an event;
//! - desired documents are **persisted before they are published**, and get a new revision
//!   only when a device's computed stacks change (recomputing is idempotent);
//! - apply, delete and pin are serialized (the store and the book change together), and so is
//!   the computation of desired revisions (numbers must not race).

use std::collections::BTreeMap;
use std::sync::Arc;

use edgefleet_domain::book::{ActiveDeployment, Book, next_document};
use edgefleet_domain::compose::ComposeError;
use edgefleet_domain::deployment::{RevisionSpec, RevisionStack};
use edgefleet_domain::device::DeviceView;
use edgefleet_domain::policy::PolicySource;
use edgefleet_domain::selector::{Selector, SelectorError};
use edgefleet_domain::template::{Resolutions, ResolveError, ResolvedVariable};
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::ids::validate_stack_name;
use edgefleet_protocol::policy::Violation;
use edgefleet_protocol::spec::StackSpec;
use edgefleet_store::deployments::NewRevision;
use edgefleet_store::{Store, StoreError};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::fleet::Fleet;
use super::outbox::Outbox;
use super::policies::Policies;
use super::variables::Variables;
use super::vault::{Vault, VaultError};

mod per_device;
use per_device::{Resolved, revision_of};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("{0}")]
    Name(String),
    #[error(transparent)]
    Target(#[from] SelectorError),
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(
        "deployment '{deployment}' has rollout {rollout} in progress; wait for it, or abort it ('edgefleet rollout abort {rollout}'), before changing or deleting the deployment"
    )]
    RolloutActive { deployment: String, rollout: u64 },
    #[error(
        "device '{device}' would receive a desired document of {bytes} bytes, above the {limit}-byte limit of the bus; make the stacks targeting it smaller (large files belong in images or volumes, not in environment variables)"
    )]
    TooLarge {
        device: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "the deployment breaks {policy}: {}; change the file, or ask an admin to change the policy (see 'edgefleet policy get')",
        violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; ")
    )]
    Policy {
        policy: PolicySource,
        violations: Vec<Violation>,
    },
    #[error(
        "service '{service}': key 'platform' ({wanted}) cannot run on device '{device}', whose engine is {engine}: target devices of that architecture, or drop 'platform' so each engine pulls its own (multi-architecture images)"
    )]
    Platform {
        service: String,
        wanted: String,
        device: String,
        engine: String,
    },
    #[error(
        "device '{device}' has no enrolled key to seal the deployment's secrets for (it was enrolled before edgefleet kept device keys): enroll it again ('edgefleet device enroll {device}'), or target devices enrolled since"
    )]
    NoDeviceKey { device: String },
    #[error(
        "secret '{secret}' comes from variable '{variable}', which the file also interpolates: its value would then be kept and sent in clear; use the variable for the secret only"
    )]
    SecretInterpolated { secret: String, variable: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one policy refuses of a stack.
pub type Refusals = (PolicySource, Vec<Violation>);

/// A deployment that breaks the policy its devices run under now (listed after a policy
/// change; never stopped for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyViolation {
    pub deployment: String,
    pub revision: u64,
    /// The site of the devices (or the site the deployment's target names).
    pub site: Option<String>,
    /// The policy broken: `site:<name>`, `fleet` or `baseline`.
    pub policy: PolicySource,
    #[serde(flatten)]
    pub violation: Violation,
    /// Devices that run this revision under that policy (none yet: the deployment targets
    /// the policy's site).
    pub devices: Vec<String>,
}

#[derive(Debug, Error)]
pub enum PinError {
    #[error("deployment '{0}' has no revision {1}; list them with 'edgefleet get deployment {0}'")]
    NoRevision(String, u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `apply` takes (the HTTP body of `POST /api/v1/deployments`).
#[derive(Debug, Clone, Deserialize)]
pub struct ApplyRequest {
    pub name: String,
    pub target: String,
    /// The Compose file, as text.
    pub compose: String,
    /// Values for `${VAR}` in the file (`apply --var`, `--env-file`).
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, String>,
    /// The files the file's configs and secrets name (`file:`), by the path as written:
    /// `edgefleet apply` reads them next to the Compose file.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
    /// Check everything and say what would happen, but record and send nothing
    /// (`apply --dry-run`).
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyOutcome {
    pub name: String,
    pub revision: u64,
    /// False when the file and target equal the latest revision (nothing was recorded).
    pub changed: bool,
    pub target: String,
    /// Known devices the deployment targets now.
    pub devices: Vec<String>,
    /// Staged apply (`x-edgefleet-rollout`): devices held on their current revision until a
    /// rollout moves them.
    pub held: Vec<String>,
    /// Nothing was recorded or sent: `revision`, `changed`, `devices` and `held` say what
    /// the apply would do.
    pub dry_run: bool,
    /// Targeted devices whose engine architecture is unknown (never reported) while a service
    /// sets `platform`: not refused, the engine decides at pull.
    pub architecture_unknown: Vec<String>,
    /// Dry run only: what every targeted device would run, resolved (variables
    /// interpolated, networks and volumes as the agent creates them), and the policy each
    /// targeted site runs under (all allow it, or the dry run would have been refused).
    /// (For a file resolved per device, `would_run` is absent and `would_run_per_device`
    /// and `variables_per_device` say it per targeted device.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_run: Option<Arc<StackSpec>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub would_run_per_device: BTreeMap<String, Arc<StackSpec>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub variables_per_device: BTreeMap<String, Vec<ResolvedVariable>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicySource>,
}

pub struct Deployments {
    store: Store,
    fleet: Arc<Fleet>,
    outbox: Arc<Outbox>,
    policies: Arc<Policies>,
    vault: Arc<Vault>,
    variables: Arc<Variables>,
    book: RwLock<Book>,
    /// Resolutions of the templated revisions in force, shared between devices with the
    /// same values (taken after `book` and `variables` when several are held).
    resolutions: parking_lot::Mutex<Resolutions>,
    /// Serializes apply/delete/pin: the store and the book must change together.
    change: tokio::sync::Mutex<()>,
    /// Serializes desired-document computation (revision numbers must not race).
    refresh: tokio::sync::Mutex<()>,
    /// Deployments with an active rollout (deployment → rollout ids), kept by the rollouts
    /// service; `apply` and `delete` refuse to change such a deployment under it.
    rolling: parking_lot::Mutex<BTreeMap<String, std::collections::BTreeSet<u64>>>,
}

/// The stack of a stored revision, or `None` (logged) if it is missing or unreadable.
async fn stored_stack(
    store: &Store,
    name: &str,
    revision: u64,
) -> Result<Option<RevisionStack>, StoreError> {
    let Some(row) = store.revision(name, revision).await? else {
        tracing::error!(deployment = name, revision, "stored revision missing");
        return Ok(None);
    };
    match RevisionSpec::from_json(&row.spec_json)
        .map_err(|e| e.to_string())
        .and_then(|spec| {
            spec.into_revision_stack(name, revision)
                .map_err(|e| e.to_string())
        }) {
        Ok(stack) => Ok(Some(stack)),
        Err(e) => {
            tracing::error!(
                deployment = name,
                revision,
                "stored revision unreadable: {e}"
            );
            Ok(None)
        }
    }
}

impl Deployments {
    /// Loads the deployments in force and the pins from the store.
    pub async fn load(
        store: Store,
        fleet: Arc<Fleet>,
        outbox: Arc<Outbox>,
        policies: Arc<Policies>,
        vault: Arc<Vault>,
        variables: Arc<Variables>,
    ) -> Result<Self, StoreError> {
        let mut book = Book::default();
        for dep in store.deployments().await? {
            let Some(stack) = stored_stack(&store, &dep.name, dep.revision).await? else {
                continue;
            };
            let selector = match Selector::parse(&dep.target) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(deployment = %dep.name, "stored target unreadable, deployment skipped: {e}");
                    continue;
                }
            };
            book.deployments.insert(
                dep.name.clone(),
                ActiveDeployment {
                    name: dep.name.clone(),
                    selector,
                    revision: dep.revision,
                    stack,
                },
            );
        }
        for (device, deployment, revision) in store.pins().await? {
            if let Some(stack) = stored_stack(&store, &deployment, revision).await? {
                book.pinned_stacks
                    .insert((deployment.clone(), revision), stack);
                book.pins.insert((device, deployment), revision);
            }
        }
        let deployments = Deployments {
            store,
            fleet,
            outbox,
            policies,
            vault,
            variables,
            book: RwLock::new(book),
            resolutions: parking_lot::Mutex::new(Resolutions::default()),
            change: tokio::sync::Mutex::new(()),
            refresh: tokio::sync::Mutex::new(()),
            rolling: parking_lot::Mutex::new(BTreeMap::new()),
        };
        deployments.settle_loaded_documents();
        Ok(deployments)
    }

    /// Holds off apply, delete and pins while the caller checks and records something that
    /// must not interleave with them (a rollout start).
    pub async fn hold_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.change.lock().await
    }

    /// The rollouts service's record of an active rollout of `name`.
    pub fn mark_rolling(&self, name: &str, rollout: u64) {
        self.rolling
            .lock()
            .entry(name.to_owned())
            .or_default()
            .insert(rollout);
    }

    /// A rollout of `name` finished.
    pub fn unmark_rolling(&self, name: &str, rollout: u64) {
        let mut rolling = self.rolling.lock();
        if let Some(ids) = rolling.get_mut(name) {
            ids.remove(&rollout);
            if ids.is_empty() {
                rolling.remove(name);
            }
        }
    }

    /// An active rollout of `name`, if any.
    fn rolling(&self, name: &str) -> Option<u64> {
        self.rolling
            .lock()
            .get(name)
            .and_then(|ids| ids.first().copied())
    }

    /// The first targeted device whose signed desired document would exceed the bus's
    /// payload limit if `name` ran `stack` on every device `selector` targets (pins ignored:
    /// a rollout may move any of them to it later). Checked before anything is recorded.
    fn oversized(
        &self,
        name: &str,
        selector: &Selector,
        stack: &RevisionStack,
    ) -> Option<(String, usize)> {
        let mut book = self.book.read().clone();
        book.pins.retain(|(_, dep), _| dep != name);
        book.deployments.insert(
            name.to_owned(),
            ActiveDeployment {
                name: name.to_owned(),
                selector: selector.clone(),
                revision: u64::MAX,
                stack: stack.clone(),
            },
        );
        let vars = self.variables.read();
        let mut memo = self.resolutions.lock();
        for d in self.fleet.devices.iter() {
            if !selector.matches(d.key(), &d.labels) {
                continue;
            }
            let stacks = book
                .stacks_for(d.key(), &d.labels, &vars, &mut memo)
                .keeping(d.desired.as_ref())
                .stacks;
            let doc = DesiredState::new(d.key(), u64::MAX, stacks)
                .with_policy(Some(self.policy_of(&d.labels).1));
            let bytes = edgefleet_protocol::signing::signed_len(
                edgefleet_protocol::codec::encode(&doc).len(),
            );
            if bytes > edgefleet_protocol::MAX_PAYLOAD_BYTES {
                return Some((d.key().clone(), bytes));
            }
        }
        None
    }

    /// The policy a device with these labels runs under.
    fn policy_of(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> (PolicySource, edgefleet_protocol::policy::WorkloadPolicy) {
        self.policies
            .effective(labels.get("site").map(String::as_str))
    }

    /// The policies of the devices `selector` targets and of the site it names.
    fn policies_reached(&self, selector: &Selector) -> Vec<PolicySource> {
        let set: std::collections::BTreeSet<PolicySource> = self
            .sites_reached(selector)
            .into_iter()
            .map(|site| self.policies.effective(site.as_deref()).0)
            .collect();
        set.into_iter().collect()
    }

    /// The sites of the devices `selector` targets and the site it names (`None`: devices
    /// without a site, or a target naming none and reaching no device).
    fn sites_reached(&self, selector: &Selector) -> std::collections::BTreeSet<Option<String>> {
        let mut sites: std::collections::BTreeSet<Option<String>> = self
            .fleet
            .devices
            .iter()
            .filter(|d| selector.matches(d.key(), &d.labels))
            .map(|d| d.labels.get("site").cloned())
            .collect();
        match selector.labels.get("site") {
            Some(site) => {
                sites.insert(Some(site.clone()));
            }
            None if sites.is_empty() => {
                sites.insert(None);
            }
            None => {}
        }
        sites
    }

    /// What `stack` would break, per policy, if it ran on every device `selector` targets
    /// (and on the site the selector names, devices or not). Empty: allowed everywhere.
    pub fn check_policies(&self, selector: &Selector, stack: &StackSpec) -> Vec<Refusals> {
        let sites = self.sites_reached(selector);
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for site in sites {
            let (source, policy) = self.policies.effective(site.as_deref());
            if !seen.insert(source.clone()) {
                continue;
            }
            let violations = policy.check(stack);
            if !violations.is_empty() {
                out.push((source, violations));
            }
        }
        out
    }

    /// `edgefleet policy check`: what a file would break where `target` points, without
    /// recording anything. Returns the devices targeted and the refusals per policy. A file
    /// resolved per device is checked on each device's stack; the first device it cannot be
    /// resolved for is the error.
    pub fn check_file(
        &self,
        req: &ApplyRequest,
    ) -> Result<(Vec<String>, Vec<Refusals>), ApplyError> {
        validate_stack_name(&req.name).map_err(|e| ApplyError::Name(e.to_string()))?;
        let selector = Selector::parse(&req.target)?;
        let (_, stack) = revision_of(req, &BTreeMap::new())?;
        let resolved = self.resolve_targets(&selector, &stack)?;
        Ok((
            self.fleet.targets(&selector),
            self.check_resolved(&selector, &resolved),
        ))
    }

    /// Every deployment that breaks the policy its devices run under now (or, with no
    /// device yet, the policy of the site its target names), one entry per deployment
    /// revision, site, service, key and rule. Sorted that way.
    pub fn violations(&self) -> Vec<PolicyViolation> {
        type Key = (String, u64, Option<String>, String, String, String);
        let mut found: BTreeMap<Key, (PolicySource, Violation, Vec<String>)> = BTreeMap::new();
        let mut cache: BTreeMap<(PolicySource, String, u64), Vec<Violation>> = BTreeMap::new();
        let mut note = |site: Option<&str>, stack: &StackSpec, device: Option<&str>| {
            let (source, policy) = self.policies.effective(site);
            let vs = cache
                .entry((
                    source.clone(),
                    stack.deployment.clone(),
                    stack.deployment_revision,
                ))
                .or_insert_with(|| policy.check(stack));
            for v in vs.iter() {
                let key = (
                    stack.deployment.clone(),
                    stack.deployment_revision,
                    site.map(str::to_owned),
                    v.service.clone(),
                    v.key.clone(),
                    v.rule.clone(),
                );
                let entry = found
                    .entry(key)
                    .or_insert_with(|| (source.clone(), v.clone(), Vec::new()));
                if let Some(d) = device {
                    entry.2.push(d.to_owned());
                }
            }
        };
        for d in self.fleet.devices.iter() {
            let Some(doc) = &d.desired else { continue };
            for stack in doc.stacks.values() {
                note(
                    d.labels.get("site").map(String::as_str),
                    stack,
                    Some(d.key()),
                );
            }
        }
        let book = self.book.read();
        for dep in book.deployments.values() {
            // A revision resolved per device is checked on the devices' documents only.
            if let RevisionStack::Shared(stack) = &dep.stack {
                let site = dep.selector.labels.get("site").map(String::as_str);
                note(site, stack, None);
            }
        }
        found
            .into_iter()
            .map(
                |((deployment, revision, site, ..), (policy, violation, mut devices))| {
                    devices.sort();
                    devices.dedup();
                    PolicyViolation {
                        deployment,
                        revision,
                        site,
                        policy,
                        violation,
                        devices,
                    }
                },
            )
            .collect()
    }

    /// Records a new revision of a deployment (or nothing, if unchanged) and recomputes the
    /// desired documents of every device.
    pub async fn apply(&self, req: &ApplyRequest, by: &str) -> Result<ApplyOutcome, ApplyError> {
        validate_stack_name(&req.name).map_err(|e| ApplyError::Name(e.to_string()))?;
        let selector = Selector::parse(&req.target)?;
        if let Some(k) = req
            .variables
            .keys()
            .find(|k| k.starts_with(edgefleet_domain::interpolate::BUILTIN_PREFIX))
        {
            return Err(ComposeError::Name(format!(
                "variable '{k}': names starting with EDGEFLEET_ are the per-device built-ins and cannot be set"
            ))
            .into());
        }
        for k in req.variables.keys() {
            edgefleet_domain::interpolate::validate_name(k).map_err(ComposeError::Name)?;
        }
        let secrets = self.secrets_of(req, &selector)?;
        let (spec, stack) = revision_of(req, &secrets.1)?;
        let target = selector.to_string();
        let _change = self.change.lock().await;
        if let Some(rollout) = self.rolling(&req.name)
            && !self.store.is_latest(&req.name, &target, &spec).await?
        {
            return Err(ApplyError::RolloutActive {
                deployment: req.name.clone(),
                rollout,
            });
        }
        let resolved = self.resolve_targets(&selector, &stack)?;
        if let Some((policy, violations)) =
            self.check_resolved(&selector, &resolved).into_iter().next()
        {
            return Err(ApplyError::Policy { policy, violations });
        }
        if let Some((device, bytes)) = self.oversized(&req.name, &selector, &stack) {
            return Err(ApplyError::TooLarge {
                device,
                bytes,
                limit: edgefleet_protocol::MAX_PAYLOAD_BYTES,
            });
        }
        let architecture_unknown = self.check_platforms(&selector, &resolved)?;
        if req.dry_run {
            let changed = !self.store.is_latest(&req.name, &target, &spec).await?;
            let latest = self
                .store
                .revisions(&req.name)
                .await?
                .last()
                .map_or(0, |r| r.revision);
            let held = if changed && spec.rollout.is_some() {
                self.would_hold(&req.name)
                    .into_iter()
                    .map(|(d, _, _)| d)
                    .collect()
            } else {
                Vec::new()
            };
            let revision = if changed { latest + 1 } else { latest };
            let (would_run, would_run_per_device) = match resolved {
                Resolved::Shared(mut s) => {
                    Arc::make_mut(&mut s).deployment_revision = revision;
                    (Some(s), BTreeMap::new())
                }
                Resolved::PerDevice(mut m) => {
                    m.values_mut()
                        .for_each(|s| Arc::make_mut(s).deployment_revision = revision);
                    (None, m)
                }
            };
            let variables_per_device = match &stack {
                RevisionStack::PerDevice(t) => {
                    let vars = self.variables.read();
                    would_run_per_device
                        .keys()
                        .filter_map(|id| {
                            let labels = self.fleet.devices.get(id)?.labels.clone();
                            Some((id.clone(), t.variables_for(id, &labels, &vars)))
                        })
                        .collect()
                }
                RevisionStack::Shared(_) => BTreeMap::new(),
            };
            return Ok(ApplyOutcome {
                name: req.name.clone(),
                revision,
                changed,
                target,
                devices: self.fleet.targets(&selector),
                held,
                dry_run: true,
                architecture_unknown,
                policies: self.policies_reached(&selector),
                would_run,
                would_run_per_device,
                variables_per_device,
            });
        }
        let staged = spec.rollout.is_some();
        let (revision, changed) = self
            .store
            .record_revision(NewRevision {
                name: req.name.clone(),
                target: target.clone(),
                compose: req.compose.clone(),
                spec: spec.clone(),
                by: by.to_owned(),
                now: edgefleet_protocol::now_rfc3339(),
            })
            .await?;
        if changed {
            let (contents, digests) = secrets;
            self.vault
                .keep_revision_secrets(&req.name, revision, &contents, &digests)
                .await?;
        }
        let mut held = Vec::new();
        if changed {
            tracing::info!(deployment = %req.name, revision, %target, by, "deployment revision recorded");
            if staged {
                held = self.hold_current(&req.name).await?;
            } else {
                // Not staged: every device moves to the new revision now.
                self.release_pins(&req.name, |_| true).await?;
            }
            self.book.write().deployments.insert(
                req.name.clone(),
                ActiveDeployment {
                    name: req.name.clone(),
                    selector: selector.clone(),
                    revision,
                    stack: spec.into_revision_stack(&req.name, revision)?,
                },
            );
        }
        self.refresh_all().await?;
        Ok(ApplyOutcome {
            name: req.name.clone(),
            revision,
            changed,
            target,
            devices: self.fleet.targets(&selector),
            held,
            dry_run: false,
            architecture_unknown,
            would_run: None,
            would_run_per_device: BTreeMap::new(),
            variables_per_device: BTreeMap::new(),
            policies: Vec::new(),
        })
    }

    /// Reads the content of the secrets the file's services mount, with the vault's keyed
    /// digest of each, and checks the secrets can reach every targeted device.
    #[allow(clippy::type_complexity)]
    fn secrets_of(
        &self,
        req: &ApplyRequest,
        selector: &Selector,
    ) -> Result<
        (
            BTreeMap<String, edgefleet_protocol::sealed::Plain>,
            BTreeMap<String, String>,
        ),
        ApplyError,
    > {
        let (sources, contents) =
            edgefleet_domain::compose::secrets_of(&req.compose, &req.variables, &req.files)?;
        for (secret, source) in &sources {
            if let edgefleet_domain::compose::SecretSource::Environment(variable) = source
                && edgefleet_domain::interpolate::references(&req.compose, variable)
            {
                return Err(ApplyError::SecretInterpolated {
                    secret: secret.clone(),
                    variable: variable.clone(),
                });
            }
        }
        let total: usize = contents.values().map(|c| c.bytes().len()).sum();
        if total > edgefleet_protocol::sealed::MAX_PLAINTEXT {
            return Err(ComposeError::Source(format!(
                "the secrets are {total} bytes together; at most {} per deployment reach a device (large files belong in images or volumes)",
                edgefleet_protocol::sealed::MAX_PLAINTEXT
            ))
            .into());
        }
        if !contents.is_empty()
            && let Some(device) = self
                .fleet
                .targets(selector)
                .into_iter()
                .find(|d| !self.vault.has_device_key(d))
        {
            return Err(ApplyError::NoDeviceKey { device });
        }
        let digests: BTreeMap<String, String> = contents
            .iter()
            .map(|(name, c)| (name.clone(), self.vault.digest(name, c)))
            .collect();
        Ok((contents, digests))
    }

    /// Refuses a service whose `platform` a targeted device's engine cannot run; returns the
    /// targeted devices that never reported their architecture (when a service sets one).
    fn check_platforms(
        &self,
        selector: &Selector,
        resolved: &Resolved,
    ) -> Result<Vec<String>, ApplyError> {
        use edgefleet_domain::platform::{self, Platform};
        let any = match resolved {
            Resolved::Shared(s) => platform::any_platform(&s.services),
            Resolved::PerDevice(m) => m.values().any(|s| platform::any_platform(&s.services)),
        };
        if !any {
            return Ok(Vec::new());
        }
        let mut unknown = Vec::new();
        for d in self.fleet.devices.iter() {
            if !selector.matches(d.key(), &d.labels) {
                continue;
            }
            let Some(stack) = resolved
                .for_device(d.key())
                .filter(|s| platform::any_platform(&s.services))
            else {
                continue;
            };
            let Some(engine) = d.platform().and_then(Platform::parse) else {
                unknown.push(d.key().clone());
                continue;
            };
            if let Some((service, wanted)) = platform::first_mismatch(&stack.services, &engine) {
                return Err(ApplyError::Platform {
                    service: service.to_owned(),
                    wanted: wanted.to_owned(),
                    device: d.key().clone(),
                    engine: engine.to_string(),
                });
            }
        }
        unknown.sort();
        Ok(unknown)
    }

    /// The devices a staged apply of `name` would hold, with the revision and stack each
    /// runs now: those running it and not pinned already (sorted by device).
    fn would_hold(&self, name: &str) -> Vec<(String, u64, Arc<StackSpec>)> {
        let book = self.book.read();
        let mut out: Vec<(String, u64, Arc<StackSpec>)> = self
            .fleet
            .devices
            .iter()
            .filter_map(|d| {
                let stack = d.desired.as_ref().and_then(|x| x.stacks.get(name))?;
                if book.pins.contains_key(&(d.key().clone(), name.to_owned())) {
                    return None;
                }
                Some((d.key().clone(), stack.deployment_revision, stack.clone()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Removes the pins of a deployment that `which(revision)` selects (store, then book).
    async fn release_pins(
        &self,
        name: &str,
        which: impl Fn(u64) -> bool,
    ) -> Result<(), StoreError> {
        let pins: Vec<(String, Option<u64>)> = self
            .book
            .read()
            .pins
            .iter()
            .filter(|((_, dep), rev)| dep == name && which(**rev))
            .map(|((device, _), _)| (device.clone(), None))
            .collect();
        if pins.is_empty() {
            return Ok(());
        }
        self.store.set_pins(name, pins.clone()).await?;
        let mut book = self.book.write();
        for (device, _) in &pins {
            book.pins.remove(&(device.clone(), name.to_owned()));
        }
        Ok(())
    }

    /// After a successful rollout to the latest revision: drop the pins that equal it.
    pub async fn release_pins_at_latest(&self, name: &str) -> Result<(), StoreError> {
        let _change = self.change.lock().await;
        let latest = self.book.read().deployments.get(name).map(|d| d.revision);
        if let Some(latest) = latest {
            self.release_pins(name, |rev| rev == latest).await?;
        }
        Ok(())
    }

    /// Staged apply: pins every device that runs the deployment to the revision it runs now,
    /// so the new revision reaches it only through a rollout. Returns the devices held.
    /// Called with `change` held, before the book moves to the new revision.
    async fn hold_current(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let mut pins = Vec::new();
        let mut stacks: BTreeMap<(String, u64), RevisionStack> = BTreeMap::new();
        for (device, rev, stack) in self.would_hold(name) {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                stacks.entry((name.to_owned(), rev))
            {
                // The revision as the book holds it (a templated one is each device's own),
                // else as stored, else as this device runs it.
                let known = {
                    let book = self.book.read();
                    book.deployments
                        .get(name)
                        .filter(|d| d.revision == rev)
                        .map(|d| d.stack.clone())
                        .or_else(|| book.pinned_stacks.get(slot.key()).cloned())
                };
                let held = match known {
                    Some(s) => s,
                    None => stored_stack(&self.store, name, rev)
                        .await?
                        .unwrap_or(RevisionStack::Shared(stack)),
                };
                slot.insert(held);
            }
            pins.push((device, Some(rev)));
        }
        if pins.is_empty() {
            return Ok(Vec::new());
        }
        self.store.set_pins(name, pins.clone()).await?;
        let mut book = self.book.write();
        book.pinned_stacks.extend(stacks);
        let mut held = Vec::new();
        for (device, rev) in pins {
            if let Some(r) = rev {
                book.pins.insert((device.clone(), name.to_owned()), r);
                held.push(device);
            }
        }
        held.sort();
        tracing::info!(
            deployment = name,
            devices = held.len(),
            "staged apply: devices held on their revision until a rollout"
        );
        Ok(held)
    }

    /// Deletes a deployment: its stacks leave every device's desired document. Returns the
    /// devices it was targeting, or `None` if there was no such deployment.
    pub async fn delete(&self, name: &str) -> Result<Option<Vec<String>>, ApplyError> {
        let _change = self.change.lock().await;
        if let Some(rollout) = self.rolling(name) {
            return Err(ApplyError::RolloutActive {
                deployment: name.to_owned(),
                rollout,
            });
        }
        if !self
            .store
            .delete_deployment(name, &edgefleet_protocol::now_rfc3339())
            .await?
        {
            return Ok(None);
        }
        self.release_pins(name, |_| true).await?;
        let removed = self.book.write().deployments.remove(name);
        tracing::info!(deployment = name, "deployment deleted");
        self.refresh_all().await?;
        Ok(Some(
            removed
                .map(|d| self.fleet.targets(&d.selector))
                .unwrap_or_default(),
        ))
    }

    /// Pins devices to a revision of a deployment (`Some`) or releases them to its latest
    /// (`None`), persists the pins, and recomputes those devices' desired documents.
    pub async fn pin(
        &self,
        deployment: &str,
        pins: &[(String, Option<u64>)],
    ) -> Result<(), PinError> {
        let _change = self.change.lock().await;
        let mut stacks = Vec::new();
        let revisions: std::collections::BTreeSet<u64> =
            pins.iter().filter_map(|(_, r)| *r).collect();
        for rev in revisions {
            let stack = stored_stack(&self.store, deployment, rev)
                .await?
                .ok_or_else(|| PinError::NoRevision(deployment.to_owned(), rev))?;
            stacks.push(((deployment.to_owned(), rev), stack));
        }
        self.store.set_pins(deployment, pins.to_vec()).await?;
        {
            let mut book = self.book.write();
            book.pinned_stacks.extend(stacks);
            for (device, rev) in pins {
                let key = (device.clone(), deployment.to_owned());
                match rev {
                    Some(r) => book.pins.insert(key, *r),
                    None => book.pins.remove(&key),
                };
            }
        }
        let ids: Vec<String> = pins.iter().map(|(d, _)| d.clone()).collect();
        Ok(self.refresh(&ids).await?)
    }

    /// Recomputes every device's desired document (and forgets the resolutions of
    /// revisions no longer in force).
    pub async fn refresh_all(&self) -> Result<(), StoreError> {
        let live = self.book.read().templates();
        self.resolutions.lock().retain(&live);
        self.refresh(&self.fleet.ids()).await
    }

    /// Recomputes the desired documents of these devices; changed ones get a new revision,
    /// are persisted before anything is published, and are queued for publishing. A
    /// deployment that cannot be resolved for a device keeps what its document has of it;
    /// that it cannot is recorded on the device ([`Deployments::note_unresolved`]).
    pub async fn refresh(&self, ids: &[String]) -> Result<(), StoreError> {
        let _serial = self.refresh.lock().await;
        let mut changed = Vec::new();
        let mut notes = Vec::new();
        {
            let book = self.book.read();
            let vars = self.variables.read();
            let mut memo = self.resolutions.lock();
            for id in ids {
                let Some(mut view) = self.fleet.get_without_events(id) else {
                    continue;
                };
                let computed = book
                    .stacks_for(id, &view.labels, &vars, &mut memo)
                    .keeping(view.desired.as_ref());
                let unresolved: BTreeMap<String, String> = computed
                    .unresolved
                    .iter()
                    .map(|(dep, e)| (dep.clone(), e.to_string()))
                    .collect();
                if unresolved != view.unresolved {
                    notes.push((id.clone(), view.unresolved.clone(), unresolved));
                }
                let mut stacks = computed.stacks;
                let current = view.desired.as_ref();
                self.vault.seal_stacks(id, &mut stacks, current);
                let registries = self.vault.registries_for(
                    id,
                    view.labels.get("site").map(String::as_str),
                    &stacks,
                    current,
                );
                if let Some(doc) = next_document(id, current, stacks, registries) {
                    // The document carries the policy its device runs under now; the agent
                    // checks the stacks it changes against it.
                    view.desired = Some(doc.with_policy(Some(self.policy_of(&view.labels).1)));
                    changed.push(view);
                }
            }
        }
        self.note_unresolved(notes).await;
        self.commit_documents(changed).await
    }

    /// Persists new desired documents, then (only then) makes them visible to the publisher
    /// and queues them. On a store error nothing changes in memory.
    async fn commit_documents(&self, changed: Vec<DeviceView>) -> Result<(), StoreError> {
        if changed.is_empty() {
            return Ok(());
        }
        self.store
            .save_devices(changed.clone(), &edgefleet_protocol::now_rfc3339())
            .await?;
        for view in changed {
            let Some(doc) = view.desired else { continue };
            tracing::info!(device = %view.id, revision = doc.revision, stacks = doc.stacks.len(), "new desired revision");
            self.fleet.update(&view.id, |d| d.desired = Some(doc));
            self.outbox.queue_desired(&view.id);
        }
        Ok(())
    }

    /// A device reports holding a desired revision newer than ours: the store lost writes
    /// (power loss) or was restored from a backup. Reissue the current document above it,
    /// or the agent would ignore it as a replay forever.
    pub async fn renumber_above(&self, id: &str, reported: u64) -> Result<(), StoreError> {
        let _serial = self.refresh.lock().await;
        let Some(mut view) = self.fleet.get(id) else {
            return Ok(());
        };
        let Some(cur) = view.desired.as_ref() else {
            return Ok(());
        };
        if reported <= cur.revision {
            return Ok(());
        }
        tracing::warn!(
            device = id,
            reported,
            stored = cur.revision,
            "device holds a newer desired revision than the store (lost writes or restored backup): reissuing above it"
        );
        let mut doc =
            DesiredState::new(id, reported + 1, cur.stacks.clone()).with_policy(cur.policy.clone());
        doc.registries = cur.registries.clone();
        view.desired = Some(doc);
        self.commit_documents(vec![view]).await
    }

    /// The site of a deployment (also of a deleted one: its last revision's target).
    pub async fn site_of(&self, name: &str) -> Result<Option<String>, StoreError> {
        let target = match self.store.deployment(name).await? {
            Some(d) => Some(d.target),
            None => self.store.revisions(name).await?.pop().map(|r| r.target),
        };
        Ok(target.and_then(|t| edgefleet_domain::access::deployment_site(&t)))
    }

    /// The sites of several deployments (each looked up once).
    pub async fn sites_of(
        &self,
        names: Vec<String>,
    ) -> Result<BTreeMap<String, Option<String>>, StoreError> {
        let names: std::collections::BTreeSet<String> = names.into_iter().collect();
        let mut out = BTreeMap::new();
        for name in names {
            let site = self.site_of(&name).await?;
            out.insert(name, site);
        }
        Ok(out)
    }
}
