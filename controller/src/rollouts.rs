//! Running rollouts: start one, drive every active one a step each second (the gated loop),
//! and the operator's controls. The thinking is in [`crate::rollout`] (pure); this module
//! owns the state (in memory and in the store, written after every step, so a controller
//! restart resumes exactly where it was) and turns the steps' commands into pins.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::core::{Controller, PinError};
use crate::rollout::engine::{Command, DeviceSnapshot, Phase, Rollout, RolloutState};
use crate::rollout::strategy::{Amount, OnFailure, Strategy, StrategyError};
use crate::rollout::waves::{Candidate, plan_waves};
use crate::selector::Selector;
use crate::store::StoreError;

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
    #[serde(default)]
    pub revision: Option<u64>,
    /// Fields overriding the deployment file's `x-edgefleet-rollout` (or the defaults).
    #[serde(default)]
    pub strategy: Option<serde_json::Value>,
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub id: u64,
    pub created_by: String,
    #[serde(flatten)]
    pub rollout: Rollout,
    pub in_flight: usize,
    pub failures: usize,
    pub succeeded: usize,
}

fn state_name(s: &RolloutState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Active and finished rollouts of this controller run.
#[derive(Default)]
pub struct Rollouts {
    active: Mutex<BTreeMap<u64, (String, Rollout)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rollouts {
    /// Loads the active rollouts from the store (after a controller restart).
    pub fn load(store: &crate::store::Store) -> Result<Rollouts, StoreError> {
        let r = Rollouts::default();
        for row in store.rollouts(true)? {
            match serde_json::from_str::<Rollout>(&row.state_json) {
                Ok(rollout) => {
                    lock(&r.active).insert(row.id, (row.created_by, rollout));
                }
                Err(e) => tracing::error!(
                    rollout = row.id,
                    "stored rollout unreadable, not resumed: {e}"
                ),
            }
        }
        Ok(r)
    }

    pub fn start(
        &self,
        ctrl: &Controller,
        req: &StartRequest,
        by: &str,
    ) -> Result<RolloutView, RolloutError> {
        let dep = ctrl
            .store()
            .deployment(&req.deployment)?
            .ok_or_else(|| RolloutError::NoDeployment(req.deployment.clone()))?;
        let to = req.revision.unwrap_or(dep.revision);
        let rev = ctrl
            .store()
            .revision(&req.deployment, to)?
            .ok_or_else(|| RolloutError::NoRevision(req.deployment.clone(), to))?;
        if let Some((id, (_, r))) = lock(&self.active)
            .iter()
            .find(|(_, (_, r))| r.deployment == req.deployment)
        {
            return Err(RolloutError::Busy {
                id: *id,
                deployment: r.deployment.clone(),
                state: state_name(&r.state),
            });
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
        let mut from_counts: BTreeMap<u64, usize> = BTreeMap::new();
        let mut candidates = Vec::new();
        for id in ctrl.targets(&selector) {
            let Some(view) = ctrl.fleet.get(&id) else {
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
        let json = serde_json::to_string(&rollout).unwrap_or_default();
        let id = ctrl.store().insert_rollout(
            &req.deployment,
            &json,
            by,
            &edgefleet_protocol::now_rfc3339(),
        )?;
        tracing::info!(rollout = id, deployment = %req.deployment, from, to, devices = candidates.len(), by, "rollout started");
        audit_transition(ctrl, id, &rollout, None, by);
        lock(&self.active).insert(id, (by.to_owned(), rollout.clone()));
        let v = view(id, by, rollout);
        publish(ctrl, &v);
        Ok(v)
    }

    /// One pass of the gated loop over every active rollout.
    pub fn tick(&self, ctrl: &Controller) {
        let ids: Vec<u64> = lock(&self.active).keys().copied().collect();
        for id in ids {
            if let Err(e) = self.step_one(ctrl, id) {
                tracing::error!(rollout = id, "rollout step failed, retried next pass: {e}");
            }
        }
    }

    fn step_one(&self, ctrl: &Controller, id: u64) -> Result<(), RolloutError> {
        let Some((by, mut rollout)) = lock(&self.active).get(&id).cloned() else {
            return Ok(());
        };
        let before = rollout.clone();
        let windows = ctrl.site_windows()?;
        let fleet: BTreeMap<String, DeviceSnapshot> = rollout
            .devices
            .keys()
            .filter_map(|d| {
                let v = ctrl.fleet.get(d)?;
                Some((
                    d.clone(),
                    DeviceSnapshot {
                        online: v.connection == crate::fleet::Connection::Online,
                        desired_revision: v.desired_revision(),
                        status: v.status.clone(),
                        window_open: windows
                            .get(v.labels.get("site").map_or(
                                edgefleet_protocol::topics::UNASSIGNED_SITE,
                                String::as_str,
                            ))
                            .is_none_or(|w| w.is_open(jiff::Timestamp::now())),
                    },
                ))
            })
            .collect();
        let commands = rollout.step(&fleet, now_ms());
        for c in commands {
            match c {
                Command::Pin { device, revision } => {
                    ctrl.pin(&rollout.deployment, &[(device, Some(revision))])?
                }
                Command::Rollback { devices, revision } => {
                    if !devices.is_empty() {
                        self.start_rollback(
                            ctrl,
                            &rollout.deployment,
                            devices,
                            rollout.to_revision,
                            revision,
                            &by,
                        )?;
                    }
                }
            }
        }
        if rollout != before {
            self.save(ctrl, id, &by, rollout)?;
        }
        Ok(())
    }

    fn start_rollback(
        &self,
        ctrl: &Controller,
        deployment: &str,
        devices: Vec<String>,
        from: u64,
        to: u64,
        by: &str,
    ) -> Result<(), RolloutError> {
        // All at once, and a failure pauses it (rolling back a rollback would loop).
        let strategy = Strategy {
            canary: u32::try_from(devices.len()).unwrap_or(u32::MAX),
            batch: Amount::Percent(100),
            max_failures: Amount::Percent(100),
            on_failure: OnFailure::Pause,
            ..Strategy::default()
        };
        let rollout = Rollout::new(deployment, from, to, strategy, vec![devices]);
        let json = serde_json::to_string(&rollout).unwrap_or_default();
        let by = format!("rollback ({by})");
        let id = ctrl.store().insert_rollout(
            deployment,
            &json,
            &by,
            &edgefleet_protocol::now_rfc3339(),
        )?;
        tracing::warn!(rollout = id, deployment, to, "rollback started");
        audit_transition(ctrl, id, &rollout, None, &by);
        publish(ctrl, &view(id, &by, rollout.clone()));
        lock(&self.active).insert(id, (by, rollout));
        Ok(())
    }

    fn save(
        &self,
        ctrl: &Controller,
        id: u64,
        by: &str,
        rollout: Rollout,
    ) -> Result<(), RolloutError> {
        publish(ctrl, &view(id, by, rollout.clone()));
        let previous = lock(&self.active)
            .get(&id)
            .map(|(_, r)| state_name(&r.state));
        let finished = matches!(
            rollout.state,
            RolloutState::Succeeded | RolloutState::Failed { .. } | RolloutState::Aborted
        );
        let json = serde_json::to_string(&rollout).unwrap_or_default();
        ctrl.store()
            .update_rollout(id, !finished, &json, &edgefleet_protocol::now_rfc3339())?;
        if previous.as_deref() != Some(state_name(&rollout.state).as_str()) {
            audit_transition(ctrl, id, &rollout, previous.as_deref(), by);
        }
        let mut active = lock(&self.active);
        if finished {
            tracing::info!(rollout = id, state = %state_name(&rollout.state), "rollout finished");
            active.remove(&id);
            drop(active);
            if rollout.state == RolloutState::Succeeded {
                // Devices now on the latest revision need no pin: later applies move them.
                ctrl.release_pins_at_latest(&rollout.deployment)?;
            }
        } else {
            active.insert(id, (by.to_owned(), rollout));
        }
        Ok(())
    }

    /// Pause, resume or abort.
    pub fn control(
        &self,
        ctrl: &Controller,
        id: u64,
        action: &'static str,
    ) -> Result<RolloutView, RolloutError> {
        let (by, mut rollout) = match lock(&self.active).get(&id).cloned() {
            Some(r) => r,
            None => {
                let row = ctrl
                    .store()
                    .rollouts(false)?
                    .into_iter()
                    .find(|r| r.id == id)
                    .ok_or(RolloutError::NotFound(id))?;
                let r: Rollout = serde_json::from_str(&row.state_json)
                    .map_err(|_| RolloutError::NotFound(id))?;
                return Err(RolloutError::BadState {
                    id,
                    state: state_name(&r.state),
                    action,
                });
            }
        };
        let before = rollout.state.clone();
        match action {
            "pause" => rollout.pause("paused by an operator"),
            "resume" => rollout.resume(),
            _ => rollout.abort(),
        }
        if rollout.state == before {
            return Err(RolloutError::BadState {
                id,
                state: state_name(&before),
                action,
            });
        }
        tracing::info!(rollout = id, action, "rollout control");
        self.save(ctrl, id, &by, rollout.clone())?;
        Ok(view(id, &by, rollout))
    }

    /// Operator rollback: ends the rollout if it still runs, then returns every device it
    /// moved to the revision they came from, as a rollout of its own.
    pub fn rollback(
        &self,
        ctrl: &Controller,
        id: u64,
        by: &str,
    ) -> Result<RolloutView, RolloutError> {
        if lock(&self.active).contains_key(&id) {
            self.control(ctrl, id, "abort")?;
        }
        let r = self.get(ctrl, id)?;
        let devices: Vec<String> = r
            .rollout
            .devices
            .iter()
            .filter(|(_, p)| p.touched())
            .map(|(d, _)| d.clone())
            .collect();
        if devices.is_empty() {
            return Err(RolloutError::BadState {
                id,
                state: "without moved devices".into(),
                action: "roll back",
            });
        }
        if let Some((busy, _)) = lock(&self.active)
            .iter()
            .find(|(_, (_, a))| a.deployment == r.rollout.deployment)
        {
            return Err(RolloutError::Busy {
                id: *busy,
                deployment: r.rollout.deployment.clone(),
                state: "running".into(),
            });
        }
        self.start_rollback(
            ctrl,
            &r.rollout.deployment,
            devices,
            r.rollout.to_revision,
            r.rollout.from_revision,
            by,
        )?;
        let newest = lock(&self.active)
            .keys()
            .max()
            .copied()
            .ok_or(RolloutError::NotFound(id))?;
        self.get(ctrl, newest)
    }

    /// Every rollout of the store, newest first.
    pub fn list(&self, ctrl: &Controller) -> Result<Vec<RolloutView>, RolloutError> {
        Ok(ctrl
            .store()
            .rollouts(false)?
            .into_iter()
            .filter_map(|row| {
                serde_json::from_str::<Rollout>(&row.state_json)
                    .ok()
                    .map(|r| view(row.id, &row.created_by, r))
            })
            .collect())
    }

    /// Publishes the 20 newest rollouts again (after a reconnect: the broker may have lost
    /// its retained messages).
    pub fn publish_recent(&self, ctrl: &Controller) {
        match self.list(ctrl) {
            Ok(all) => all.iter().take(20).for_each(|v| publish(ctrl, v)),
            Err(e) => tracing::error!("cannot read rollouts to republish them: {e}"),
        }
    }

    pub fn get(&self, ctrl: &Controller, id: u64) -> Result<RolloutView, RolloutError> {
        if let Some((by, r)) = lock(&self.active).get(&id).cloned() {
            return Ok(view(id, &by, r));
        }
        self.list(ctrl)?
            .into_iter()
            .find(|v| v.id == id)
            .ok_or(RolloutError::NotFound(id))
    }
}

/// Records a rollout state change (`from` None: the rollout was just created) in the audit log.
fn audit_transition(ctrl: &Controller, id: u64, r: &Rollout, from: Option<&str>, by: &str) {
    let site = ctrl
        .store()
        .deployment(&r.deployment)
        .ok()
        .flatten()
        .and_then(|d| crate::auth::deployment_site(&d.target));
    ctrl.audit(crate::audit::Entry::system(
        "rollout.transition",
        &id.to_string(),
        site.as_deref().unwrap_or(""),
        crate::audit::Outcome::Ok,
        serde_json::json!({
            "deployment": r.deployment, "from": from, "to": state_name(&r.state), "state": r.state,
            "from_revision": r.from_revision, "to_revision": r.to_revision, "started_by": by,
        }),
    ));
}

/// Retained on `edgefleet/v1/rollouts/{id}/status`: the API's document plus `schema`.
fn publish(ctrl: &Controller, v: &RolloutView) {
    let mut doc = serde_json::to_value(v).unwrap_or_default();
    if let Some(m) = doc.as_object_mut() {
        m.insert(
            "schema".into(),
            serde_json::json!(edgefleet_protocol::SCHEMA_VERSION),
        );
        m.insert(
            "updated_at".into(),
            serde_json::json!(edgefleet_protocol::now_rfc3339()),
        );
    }
    ctrl.queue_retained(
        edgefleet_protocol::topics::rollout_status(v.id),
        edgefleet_protocol::codec::encode(&doc),
    );
}

fn view(id: u64, by: &str, rollout: Rollout) -> RolloutView {
    let succeeded = rollout
        .devices
        .values()
        .filter(|p| matches!(p, Phase::Succeeded))
        .count();
    RolloutView {
        id,
        created_by: by.to_owned(),
        in_flight: rollout.in_flight(),
        failures: rollout.failures(),
        succeeded,
        rollout,
    }
}
