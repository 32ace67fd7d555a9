//! Running rollouts: start one, drive every active one a step when its devices change and at
//! least each second (the gated loop, [`Rollouts::run`]),
//! and the operator's controls. The thinking is in `edgefleet_domain::rollout` (pure); this
//! service owns the state (in memory and in the store, written after every step, so a
//! controller restart resumes exactly where it was) and turns the steps' commands into pins.
//!
//! It also keeps the newest rollouts' views in memory with a change counter
//! ([`Rollouts::subscribe`]), so the dashboard's streams never read the store to learn that
//! nothing changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgefleet_domain::audit::{Entry, Outcome};
use edgefleet_domain::deployment::RevisionSpec;
use edgefleet_domain::device::Connection;
use edgefleet_domain::rollout::engine::{self, Command, Rollout, RolloutState, Seen};
use edgefleet_domain::rollout::strategy::{Amount, OnFailure, Strategy, StrategyError};
use edgefleet_domain::rollout::view::{RolloutView, now_ms, state_name, view};
use edgefleet_domain::rollout::waves::{Candidate, plan_waves};
use edgefleet_domain::selector::Selector;
use edgefleet_store::{RolloutRow, Store, StoreError};
use parking_lot::Mutex;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::watch;

use super::audit::AuditLog;
use super::deployments::{ApplyError, Deployments, PinError};
use super::fleet::Fleet;
use super::outbox::Outbox;
use super::windows::Windows;

/// Rollouts kept in memory for the dashboard and republished after a reconnect.
pub const RECENT: usize = 200;
/// How long a pass waits after a device changed, to take in the rest of a burst.
pub const BURST: std::time::Duration = std::time::Duration::from_millis(20);
/// Rollouts republished after a reconnect (the broker may have lost its retained messages).
const REPUBLISHED: usize = 20;

#[derive(Debug, Error)]
pub enum RolloutError {
    #[error("no deployment '{0}'; list them with 'edgefleet get deployments'")]
    NoDeployment(String),
    #[error("deployment '{0}' has no revision {1}; list them with 'edgefleet get deployment {0}'")]
    NoRevision(String, u64),
    #[error(
        "rollout {id} of '{deployment}' is still {state}; pause, abort or wait for it before starting another"
    )]
    Busy {
        id: u64,
        deployment: String,
        state: String,
    },
    #[error("nothing to roll out: every device targeted by '{0}' already runs revision {1}")]
    Nothing(String, u64),
    #[error("no rollout {0}; list them with 'edgefleet rollout list'")]
    NotFound(u64),
    #[error("rollout {id} is {state}: cannot {action} it")]
    BadState {
        id: u64,
        state: String,
        action: &'static str,
    },
    #[error(
        "revision {revision} of '{deployment}' is no longer allowed where it would go: {reason}"
    )]
    Policy {
        deployment: String,
        revision: u64,
        reason: String,
    },
    #[error(
        "revision {revision} of '{deployment}' cannot be resolved for every device it would go to: {reason}"
    )]
    Unresolved {
        deployment: String,
        revision: u64,
        reason: String,
    },
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `POST /api/v1/rollouts`.
#[derive(Debug, Clone, Deserialize)]
pub struct StartRequest {
    pub deployment: String,
    /// Defaults to the deployment's latest revision.
    #[serde(default, deserialize_with = "whole_number")]
    pub revision: Option<u64>,
    /// Fields overriding the deployment file's `x-edgefleet-rollout` (or the defaults).
    #[serde(default)]
    pub strategy: Option<serde_json::Value>,
}

/// A revision number as JSON Schema counts integers: `2` or `2.0` (a whole number written
/// as a float, as some JSON encoders do); `2.5`, negatives and strings are refused.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("revision {n} is not a whole number >= 0")))
}

/// An operator's control of a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

impl Control {
    fn verb(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
        }
    }
}

pub struct Rollouts {
    store: Store,
    fleet: Arc<Fleet>,
    deployments: Arc<Deployments>,
    windows: Arc<Windows>,
    audit: Arc<AuditLog>,
    outbox: Arc<Outbox>,
    /// Active rollouts: id → (started by, state).
    active: Mutex<BTreeMap<u64, (String, Rollout)>>,
    /// The newest [`RECENT`] rollouts as the API shows them.
    recent: Mutex<BTreeMap<u64, RolloutView>>,
    /// Bumped whenever one of `recent` changes.
    changes: watch::Sender<u64>,
    /// The one writer of rollouts: held across a whole start (check "none active for this
    /// deployment", then record one), a whole step of the loop (snapshot, pins, save) and an
    /// operator's control, so none of them works on a copy another has made stale — a pause
    /// or abort issued during a step is never overwritten by the step's older copy.
    writer: tokio::sync::Mutex<()>,
    /// Test hook: awaited inside a step, between copying the rollout and saving it (widens
    /// the window in which an operator's control could race the step).
    step_hook: Mutex<Option<StepHook>>,
    /// Passes of the loop so far (`GET /api/v1/health` shows it: "the loop has looked at the
    /// rollouts again since …" is a condition a client can wait for).
    passes: std::sync::atomic::AtomicU64,
    /// Wakes the loop at once for a rollout started or resumed: its first wave goes out now,
    /// not at the loop's next once-a-second pass (up to 1 s of every rollout, measured).
    wake: tokio::sync::Notify,
    /// Per active rollout: when its record was last saved, what that save cost, and whether
    /// devices' progress since is only in memory ([`Rollouts::step_one`]).
    saved: Mutex<BTreeMap<u64, Saved>>,
    /// Per running rollout: what its last pass saw ([`Rollouts::step_one`]).
    looked: Mutex<BTreeMap<u64, Looked>>,
}

/// See [`Rollouts::looked`]: the fleet's change number the last pass started at, the wave it
/// looked at, and when it last looked at every device of that wave.
#[derive(Debug, Clone, Copy)]
struct Looked {
    seq: u64,
    wave: usize,
    whole_at: std::time::Instant,
}

/// A pass looks at the devices that changed since the last one; every device of the wave
/// is looked at by the first pass of a wave and at least this often (what only time moves:
/// soak, timeouts, maintenance windows). At 10,000 devices, stepping over the whole
/// 2,500-device wave on every pass was 9 % of the gateway's CPU samples (perf).
const WHOLE_PASS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// See [`Rollouts::saved`].
#[derive(Debug, Clone, Copy)]
struct Saved {
    at: std::time::Instant,
    cost: std::time::Duration,
    behind: bool,
}

/// A rollout's record (store row, API view, retained status) is rewritten whole; between two
/// passes that only moved devices' phases within a wave, it waits until this many times its
/// last write's cost has passed, so saving takes at most about a fifth of the loop's time
/// whatever the rollout's size (a few ms at 1,000 devices: every pass saves; tens of ms at
/// 10,000: some passes keep the progress in memory for the next).
const SAVE_SPACING: u32 = 4;

/// See [`Rollouts::set_step_hook`].
pub type StepHook =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

fn parse(row: &RolloutRow) -> Option<Rollout> {
    match serde_json::from_str::<Rollout>(&row.state_json) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(rollout = row.id, "stored rollout unreadable: {e}");
            None
        }
    }
}

/// The fleet view as a rollout pass reads it: one device at a time, borrowed while it is
/// judged (no copy of its status), with its site's maintenance window.
struct Looking<'a> {
    fleet: &'a Fleet,
    windows: &'a Windows,
    now: jiff::Timestamp,
}

impl engine::Fleet for Looking<'_> {
    fn look<R>(&self, device: &str, judge: impl FnOnce(Option<Seen<'_>>) -> R) -> R {
        let Some(v) = self.fleet.devices.get(device) else {
            return judge(None);
        };
        let site = v
            .labels
            .get("site")
            .map_or(edgefleet_protocol::topics::UNASSIGNED_SITE, String::as_str);
        judge(Some(Seen {
            online: v.connection == Connection::Online,
            desired_revision: v.desired_revision(),
            status: v.status.as_ref(),
            window_open: self.windows.is_open(site, self.now),
        }))
    }
}

impl Rollouts {
    /// Loads the active rollouts (after a controller restart they resume) and the newest
    /// ones' views.
    pub async fn load(
        store: Store,
        fleet: Arc<Fleet>,
        deployments: Arc<Deployments>,
        windows: Arc<Windows>,
        audit: Arc<AuditLog>,
        outbox: Arc<Outbox>,
    ) -> Result<Self, StoreError> {
        let mut active = BTreeMap::new();
        for row in store.rollouts(true, None).await? {
            if let Some(r) = parse(&row) {
                active.insert(row.id, (row.created_by, r));
            }
        }
        for (id, (_, r)) in &active {
            deployments.mark_rolling(&r.deployment, *id);
        }
        let mut recent = BTreeMap::new();
        for row in store.rollouts(false, Some(RECENT as u64)).await? {
            if let Some(r) = parse(&row) {
                recent.insert(row.id, view(row.id, &row.created_by, r));
            }
        }
        Ok(Rollouts {
            store,
            fleet,
            deployments,
            windows,
            audit,
            outbox,
            active: Mutex::new(active),
            recent: Mutex::new(recent),
            changes: watch::Sender::new(0),
            writer: tokio::sync::Mutex::new(()),
            step_hook: Mutex::new(None),
            passes: std::sync::atomic::AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            saved: Mutex::new(BTreeMap::new()),
            looked: Mutex::new(BTreeMap::new()),
        })
    }

    /// Tests only: `hook` is awaited in every step between copying a rollout and saving it.
    #[doc(hidden)]
    pub fn set_step_hook(&self, hook: Option<StepHook>) {
        *self.step_hook.lock() = hook;
    }

    /// Whether a rollout of `deployment` is active (running or paused): its id.
    pub fn active_for(&self, deployment: &str) -> Option<u64> {
        self.active
            .lock()
            .iter()
            .find(|(_, (_, r))| r.deployment == deployment)
            .map(|(id, _)| *id)
    }

    /// A receiver that changes whenever one of the newest rollouts does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The newest `max` rollouts, newest first, from memory.
    pub fn recent(&self, max: usize) -> Vec<RolloutView> {
        self.recent
            .lock()
            .values()
            .rev()
            .take(max)
            .cloned()
            .collect()
    }

    fn busy(&self, deployment: &str) -> Option<RolloutError> {
        let id = self.active_for(deployment)?;
        let state = self
            .active
            .lock()
            .get(&id)
            .map(|(_, r)| state_name(&r.state))?;
        Some(RolloutError::Busy {
            id,
            deployment: deployment.to_owned(),
            state,
        })
    }

    pub async fn start(&self, req: &StartRequest, by: &str) -> Result<RolloutView, RolloutError> {
        let _writer = self.writer.lock().await;
        // Apply and delete wait while this start checks and records: the rollout is recorded
        // against the revision that is latest when it starts, and they then see it active.
        let _changes = self.deployments.hold_changes().await;
        let dep = self
            .store
            .deployment(&req.deployment)
            .await?
            .ok_or_else(|| RolloutError::NoDeployment(req.deployment.clone()))?;
        let to = req.revision.unwrap_or(dep.revision);
        let rev = self
            .store
            .revision(&req.deployment, to)
            .await?
            .ok_or_else(|| RolloutError::NoRevision(req.deployment.clone(), to))?;
        if let Some(busy) = self.busy(&req.deployment) {
            return Err(busy);
        }
        // Strategy: the file's, then the request's overrides, validated as a whole.
        let base = serde_json::from_str::<serde_json::Value>(&rev.spec_json)
            .ok()
            .and_then(|v| v.get("rollout").cloned())
            .unwrap_or_else(|| serde_json::json!({}));
        let mut merged = base;
        if let (Some(m), Some(serde_json::Value::Object(o))) =
            (merged.as_object_mut(), &req.strategy)
        {
            for (k, v) in o {
                m.insert(k.clone(), v.clone());
            }
        } else if req.strategy.as_ref().is_some_and(|s| !s.is_object()) {
            return Err(
                StrategyError::Shape("the strategy must be an object of fields".into()).into(),
            );
        }
        let strategy = Strategy::from_yaml(&merged.to_string())?;
        // Devices to move: targeted ones not already on the target revision.
        let selector = Selector::parse(&dep.target)
            .map_err(|_| RolloutError::NoDeployment(req.deployment.clone()))?;
        // The revision was checked against the policies at apply; one may have been
        // tightened since. Refuse here rather than have every agent of the first wave refuse.
        // A revision resolved per device is checked on each device's stack, and refused
        // if one of them cannot be resolved (that device would never reach it).
        if let Ok(spec) = RevisionSpec::from_json(&rev.spec_json) {
            let refusals = self
                .deployments
                .check_stored(&req.deployment, to, spec, &selector)
                .map_err(|e| RolloutError::Unresolved {
                    deployment: req.deployment.clone(),
                    revision: to,
                    reason: e.to_string(),
                })?;
            if let Some((policy, violations)) = refusals.into_iter().next() {
                return Err(RolloutError::Policy {
                    deployment: req.deployment.clone(),
                    revision: to,
                    reason: ApplyError::Policy { policy, violations }.to_string(),
                });
            }
        }
        let mut from_counts: BTreeMap<u64, usize> = BTreeMap::new();
        let mut candidates = Vec::new();
        for id in self.fleet.targets(&selector) {
            // Borrowed: a copy of each targeted device's whole view is not needed here.
            let Some(view) = self.fleet.devices.get(&id) else {
                continue;
            };
            let current = view
                .desired
                .as_ref()
                .and_then(|d| d.stacks.get(&req.deployment))
                .map(|s| s.deployment_revision);
            if current == Some(to) {
                continue;
            }
            if let Some(c) = current {
                *from_counts.entry(c).or_default() += 1;
            }
            candidates.push(Candidate {
                id,
                labels: view.labels.clone(),
            });
        }
        if candidates.is_empty() {
            return Err(RolloutError::Nothing(req.deployment.clone(), to));
        }
        let from = from_counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or(to, |(r, _)| *r);
        let waves = plan_waves(&candidates, &strategy);
        let rollout = Rollout::new(&req.deployment, from, to, strategy, waves);
        let id = self.insert(&rollout, by).await?;
        tracing::info!(rollout = id, deployment = %req.deployment, from, to, devices = candidates.len(), by, "rollout started");
        let v = view(id, by, rollout);
        self.publish(&v);
        Ok(v)
    }

    /// Records a new rollout (store, audit, active set); returns its id.
    async fn insert(&self, rollout: &Rollout, by: &str) -> Result<u64, RolloutError> {
        let json = serde_json::to_string(rollout).unwrap_or_default();
        let id = self
            .store
            .insert_rollout(
                &rollout.deployment,
                json,
                by,
                &edgefleet_protocol::now_rfc3339(),
            )
            .await?;
        self.audit_transition(id, rollout, None, by).await;
        self.deployments.mark_rolling(&rollout.deployment, id);
        self.active
            .lock()
            .insert(id, (by.to_owned(), rollout.clone()));
        self.wake.notify_one();
        Ok(id)
    }

    /// The gated loop: a pass soon after any device changed (a status, a presence), so a
    /// wave moves on as soon as its devices are done, and at least once a second for what
    /// only time changes (soak, maintenance windows, timeouts). After a change it waits
    /// [`BURST`] so that a burst of statuses makes one pass, not one per status.
    pub async fn run(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = self.fleet.wait_changed() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(BURST) => {}
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            // A pass that closed a wave is followed by one that opens the next at once: it
            // used to wait for the next device change or the next second (60–100 ms of each
            // wave at 1,000 devices, measured).
            while self.tick().await && !shutdown.is_cancelled() {}
        }
    }

    /// One pass of the gated loop over every active rollout; true if a rollout moved on to
    /// its next wave (whose devices the next pass pins).
    pub async fn tick(&self) -> bool {
        let ids: Vec<u64> = self.active.lock().keys().copied().collect();
        let mut advanced = false;
        for id in ids {
            match self.step_one(id).await {
                Ok(a) => advanced |= a,
                Err(e) => {
                    tracing::error!(rollout = id, "rollout step failed, retried next pass: {e}")
                }
            }
        }
        self.passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        advanced
    }

    /// Completed passes of the loop since the controller started.
    pub fn passes(&self) -> u64 {
        self.passes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One rollout's pass; true if it moved on to a next wave and still runs.
    async fn step_one(&self, id: u64) -> Result<bool, RolloutError> {
        let _writer = self.writer.lock().await;
        // A cheap copy: the devices' phases are a persistent map shared with the active one.
        let Some((by, mut rollout)) = self.active.lock().get(&id).cloned() else {
            return Ok(false);
        };
        let (state_before, wave_before) = (rollout.state.clone(), rollout.current_wave);
        let started = std::time::Instant::now();
        let fleet = Looking {
            fleet: &self.fleet,
            windows: &self.windows,
            now: jiff::Timestamp::now(),
        };
        // The devices changed since the last pass, numbered before any is read: a change
        // made while this pass reads is numbered after and seen by the next.
        let last = self.looked.lock().get(&id).copied();
        let last = last.filter(|l| {
            rollout.state == RolloutState::Running
                && l.wave == wave_before
                && l.whole_at.elapsed() < WHOLE_PASS_EVERY
        });
        let (seq, only) = match last {
            Some(l) => {
                let (seq, ids) = self.fleet.changed_since(l.seq);
                (seq, Some(ids))
            }
            None => (self.fleet.change_seq(), None),
        };
        let pass = rollout.step_some(&fleet, only.as_deref(), now_ms());
        // Paused or ended: the first pass after a resume looks at every device again.
        if rollout.state == RolloutState::Running {
            let whole_at = last.map_or(started, |l| l.whole_at);
            let looked = Looked {
                seq,
                wave: wave_before,
                whole_at,
            };
            self.looked.lock().insert(id, looked);
        } else {
            self.looked.lock().remove(&id);
        }
        let stepped = started.elapsed();
        let hook = self.step_hook.lock().clone();
        if let Some(hook) = hook {
            hook().await;
        }
        // A wave's pins are one store write and one refresh, not one per device (a wave of
        // 2,500 devices used to be 2,500 transactions before the first desired document went
        // out). Pins are flushed before a rollback, to keep the commands' order.
        let mut pins: Vec<(String, Option<u64>)> = Vec::new();
        for c in pass.commands {
            match c {
                Command::Pin { device, revision } => pins.push((device, Some(revision))),
                Command::Rollback { devices, revision } => {
                    if !pins.is_empty() {
                        self.deployments
                            .pin(&rollout.deployment, &std::mem::take(&mut pins))
                            .await?;
                    }
                    if !devices.is_empty() {
                        self.start_rollback(
                            &rollout.deployment,
                            devices,
                            rollout.to_revision,
                            revision,
                            &by,
                        )
                        .await?;
                    }
                }
            }
        }
        let pinned = pins.len();
        if !pins.is_empty() {
            self.deployments.pin(&rollout.deployment, &pins).await?;
        }
        let pins_done = started.elapsed();
        let changed = pass.changed;
        let advanced =
            rollout.current_wave != wave_before && rollout.state == RolloutState::Running;
        // A new state, a new wave or new pins are saved at once; devices' phases within a
        // wave may wait (SAVE_SPACING): on a restart they are judged again from the devices'
        // statuses, and the pins they came from are in the store already.
        let moved_on = rollout.state != state_before || rollout.current_wave != wave_before;
        let saved = self.saved.lock().get(&id).copied();
        let behind = saved.is_some_and(|s| s.behind);
        if changed || behind {
            let due = saved.is_none_or(|s| s.at.elapsed() >= s.cost * SAVE_SPACING);
            if moved_on || pinned > 0 || due {
                let t = std::time::Instant::now();
                self.save(id, &by, rollout).await?;
                let cost = t.elapsed();
                let mut saved = self.saved.lock();
                if self.active.lock().contains_key(&id) {
                    let at = std::time::Instant::now();
                    saved.insert(
                        id,
                        Saved {
                            at,
                            cost,
                            behind: false,
                        },
                    );
                } else {
                    saved.remove(&id);
                }
            } else {
                self.active.lock().insert(id, (by.clone(), rollout));
                if let Some(s) = self.saved.lock().get_mut(&id) {
                    s.behind = true;
                }
            }
        }
        // Where a pass's time goes (BENCHMARKS.md, "Fleet"): snapshot and step, the pins
        // (store write, refresh, desired documents persisted and queued), the save.
        tracing::debug!(
            rollout = id,
            devices = pass.looked,
            whole = only.is_none(),
            pinned,
            changed,
            step_us = stepped.as_micros() as u64,
            pin_us = (pins_done - stepped).as_micros() as u64,
            save_us = (started.elapsed() - pins_done).as_micros() as u64,
            "rollout pass"
        );
        Ok(advanced)
    }

    async fn start_rollback(
        &self,
        deployment: &str,
        devices: Vec<String>,
        from: u64,
        to: u64,
        by: &str,
    ) -> Result<u64, RolloutError> {
        // All at once, and a failure pauses it (rolling back a rollback would loop).
        let strategy = Strategy {
            canary: u32::try_from(devices.len()).unwrap_or(u32::MAX),
            batch: Amount::Percent(100),
            max_failures: Amount::Percent(100),
            on_failure: OnFailure::Pause,
            ..Strategy::default()
        };
        let rollout = Rollout::new(deployment, from, to, strategy, vec![devices]);
        let by = format!("rollback ({by})");
        let id = self.insert(&rollout, &by).await?;
        tracing::warn!(rollout = id, deployment, to, "rollback started");
        self.publish(&view(id, &by, rollout));
        Ok(id)
    }

    async fn save(&self, id: u64, by: &str, rollout: Rollout) -> Result<(), RolloutError> {
        self.publish(&view(id, by, rollout.clone()));
        let previous = self
            .active
            .lock()
            .get(&id)
            .map(|(_, r)| state_name(&r.state));
        let finished = matches!(
            rollout.state,
            RolloutState::Succeeded | RolloutState::Failed { .. } | RolloutState::Aborted
        );
        let json = serde_json::to_string(&rollout).unwrap_or_default();
        self.store
            .update_rollout(id, !finished, json, &edgefleet_protocol::now_rfc3339())
            .await?;
        if previous.as_deref() != Some(state_name(&rollout.state).as_str()) {
            self.audit_transition(id, &rollout, previous.as_deref(), by)
                .await;
        }
        if finished {
            tracing::info!(rollout = id, state = %state_name(&rollout.state), "rollout finished");
            self.active.lock().remove(&id);
            // Finished by a pass or by an operator's abort: its save times go too.
            self.saved.lock().remove(&id);
            self.looked.lock().remove(&id);
            self.deployments.unmark_rolling(&rollout.deployment, id);
            if rollout.state == RolloutState::Succeeded {
                // Devices now on the latest revision need no pin: later applies move them.
                self.deployments
                    .release_pins_at_latest(&rollout.deployment)
                    .await?;
            }
        } else {
            self.active.lock().insert(id, (by.to_owned(), rollout));
        }
        Ok(())
    }

    /// Pause, resume or abort.
    pub async fn control(&self, id: u64, action: Control) -> Result<RolloutView, RolloutError> {
        let _writer = self.writer.lock().await;
        self.control_locked(id, action).await
    }

    /// [`Rollouts::control`] with the writer lock already held.
    async fn control_locked(&self, id: u64, action: Control) -> Result<RolloutView, RolloutError> {
        let current = self.active.lock().get(&id).cloned();
        let Some((by, mut rollout)) = current else {
            let row = self
                .store
                .rollout(id)
                .await?
                .ok_or(RolloutError::NotFound(id))?;
            let r = parse(&row).ok_or(RolloutError::NotFound(id))?;
            return Err(RolloutError::BadState {
                id,
                state: state_name(&r.state),
                action: action.verb(),
            });
        };
        let before = rollout.state.clone();
        match action {
            Control::Pause => rollout.pause("paused by an operator"),
            Control::Resume => rollout.resume(),
            Control::Abort => rollout.abort(),
        }
        if rollout.state == before {
            return Err(RolloutError::BadState {
                id,
                state: state_name(&before),
                action: action.verb(),
            });
        }
        tracing::info!(rollout = id, action = action.verb(), "rollout control");
        self.save(id, &by, rollout.clone()).await?;
        if matches!(action, Control::Resume) {
            self.wake.notify_one();
        }
        Ok(view(id, &by, rollout))
    }

    /// Operator rollback: ends the rollout if it still runs, then returns every device it
    /// moved to the revision they came from, as a rollout of its own.
    pub async fn rollback(&self, id: u64, by: &str) -> Result<RolloutView, RolloutError> {
        let _writer = self.writer.lock().await;
        if self.active.lock().contains_key(&id) {
            self.control_locked(id, Control::Abort).await?;
        }
        let r = self.get(id).await?;
        let devices: Vec<String> = r
            .rollout
            .devices
            .iter()
            .filter(|(_, p)| p.touched())
            .map(|(d, _)| d.to_string())
            .collect();
        if devices.is_empty() {
            return Err(RolloutError::BadState {
                id,
                state: "without moved devices".into(),
                action: "roll back",
            });
        }
        if let Some(RolloutError::Busy { id: busy, .. }) = self.busy(&r.rollout.deployment) {
            return Err(RolloutError::Busy {
                id: busy,
                deployment: r.rollout.deployment.clone(),
                state: "running".into(),
            });
        }
        let new = self
            .start_rollback(
                &r.rollout.deployment,
                devices,
                r.rollout.to_revision,
                r.rollout.from_revision,
                by,
            )
            .await?;
        self.get(new).await
    }

    /// Every rollout of the store, newest first.
    pub async fn list(&self) -> Result<Vec<RolloutView>, RolloutError> {
        Ok(self
            .store
            .rollouts(false, None)
            .await?
            .into_iter()
            .filter_map(|row| parse(&row).map(|r| view(row.id, &row.created_by, r)))
            .collect())
    }

    /// Publishes the newest rollouts again (after a reconnect: the broker may have lost its
    /// retained messages).
    pub fn publish_recent(&self) {
        for v in self.recent(REPUBLISHED) {
            self.queue_status(&v);
        }
    }

    pub async fn get(&self, id: u64) -> Result<RolloutView, RolloutError> {
        if let Some((by, r)) = self.active.lock().get(&id).cloned() {
            return Ok(view(id, &by, r));
        }
        if let Some(v) = self.recent.lock().get(&id).cloned() {
            return Ok(v);
        }
        let row = self
            .store
            .rollout(id)
            .await?
            .ok_or(RolloutError::NotFound(id))?;
        let r = parse(&row).ok_or(RolloutError::NotFound(id))?;
        Ok(view(id, &row.created_by, r))
    }

    /// Records a rollout state change (`from` None: the rollout was just created) in the
    /// audit log.
    async fn audit_transition(&self, id: u64, r: &Rollout, from: Option<&str>, by: &str) {
        let site = match self.deployments.site_of(&r.deployment).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(
                    rollout = id,
                    "cannot read the deployment's site for the audit: {e}"
                );
                None
            }
        };
        self.audit
            .record(Entry::system(
                "rollout.transition",
                &id.to_string(),
                site.as_deref().unwrap_or(""),
                Outcome::Ok,
                serde_json::json!({
                    "deployment": r.deployment, "from": from, "to": state_name(&r.state), "state": r.state,
                    "from_revision": r.from_revision, "to_revision": r.to_revision, "started_by": by,
                }),
            ))
            .await;
    }

    /// A changed view: kept among the recent ones (the dashboard learns it changed) and
    /// queued on its topic.
    fn publish(&self, v: &RolloutView) {
        {
            let mut recent = self.recent.lock();
            recent.insert(v.id, v.clone());
            while recent.len() > RECENT {
                recent.pop_first();
            }
        }
        self.changes.send_modify(|n| *n += 1);
        self.queue_status(v);
    }

    /// Retained on `edgefleet/v1/rollouts/{id}/status`: the API's document plus `schema`
    /// and `updated_at`, written straight from the view (at 10,000 devices a JSON value
    /// tree of the view cost more than the bytes).
    fn queue_status(&self, v: &RolloutView) {
        #[derive(serde::Serialize)]
        struct Retained<'a> {
            #[serde(flatten)]
            view: &'a RolloutView,
            schema: u32,
            updated_at: String,
        }
        self.outbox.queue_retained(
            edgefleet_protocol::topics::rollout_status(v.id),
            edgefleet_protocol::codec::encode(&Retained {
                view: v,
                schema: edgefleet_protocol::SCHEMA_VERSION,
                updated_at: edgefleet_protocol::now_rfc3339(),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(body: &str) -> Result<Option<u64>, serde_json::Error> {
        serde_json::from_str::<StartRequest>(body).map(|r| r.revision)
    }

    #[test]
    fn a_revision_is_any_whole_number_json_can_write() {
        assert_eq!(revision(r#"{"deployment":"d"}"#).unwrap(), None);
        assert_eq!(
            revision(r#"{"deployment":"d","revision":null}"#).unwrap(),
            None
        );
        assert_eq!(
            revision(r#"{"deployment":"d","revision":3}"#).unwrap(),
            Some(3)
        );
        assert_eq!(
            revision(r#"{"deployment":"d","revision":3.0}"#).unwrap(),
            Some(3)
        );
        for bad in ["3.5", "-1", "1e30"] {
            let e = revision(&format!(r#"{{"deployment":"d","revision":{bad}}}"#)).unwrap_err();
            assert!(e.to_string().contains("not a whole number"), "{bad}: {e}");
        }
        assert!(revision(r#"{"deployment":"d","revision":"3"}"#).is_err());
    }
}
