//! The rollout state machine: one pure `step` per pass of the periodic, gated loop. Each pass
//! looks at a fresh fleet snapshot, advances devices of the current wave through the gate,
//! and returns the pins to make (device → deployment revision). Because the state it keeps is
//! small and serializable, and `step` rebuilds every judgement from the snapshot, a controller
//! that restarts mid-rollout resumes exactly where it was: no device is pinned twice, none is
//! skipped. (The loop that persists [`Rollout`] and applies the pins comes next.)

use std::collections::BTreeMap;
use std::sync::Arc;

use edgefleet_protocol::status::DeviceStatus;
use serde::{Deserialize, Serialize};

use super::gate::{Assignment, Verdict, judge};
use super::strategy::{OfflinePolicy, OnFailure, Strategy};

/// What the loop knows about one device at the time of a pass, borrowed for the time of the
/// device's judgement (a pass over a 2,500-device wave copies no status).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub online: bool,
    /// The device's current desired revision as the controller published it.
    pub desired_revision: u64,
    pub status: Option<&'a DeviceStatus>,
    /// Whether the maintenance window of the device's site is open (true if it has none).
    pub window_open: bool,
}

/// Where a pass looks its devices up, one at a time: the controller's fleet view, or a map of
/// [`DeviceSnapshot`]s.
pub trait Fleet {
    /// Calls `judge` with what is known of `device` (`None`: nothing, it is not in the fleet).
    fn look<R>(&self, device: &str, judge: impl FnOnce(Option<Seen<'_>>) -> R) -> R;
}

/// An owned [`Seen`]: a fleet kept in a map (tests, the rehearsal).
#[derive(Debug, Clone)]
pub struct DeviceSnapshot {
    pub online: bool,
    pub desired_revision: u64,
    pub status: Option<DeviceStatus>,
    pub window_open: bool,
}

impl Fleet for BTreeMap<String, DeviceSnapshot> {
    fn look<R>(&self, device: &str, judge: impl FnOnce(Option<Seen<'_>>) -> R) -> R {
        judge(self.get(device).map(|s| Seen {
            online: s.online,
            desired_revision: s.desired_revision,
            status: s.status.as_ref(),
            window_open: s.window_open,
        }))
    }
}

/// Reasons a wave is not moving named in [`Rollout::waiting`]; the rest are counted (a
/// 2,500-device wave's every device named made a 100 KB line, rebuilt each pass).
const WAITING_NAMED: usize = 5;

/// A pass's reasons for waiting: the first [`WAITING_NAMED`], then a count.
#[derive(Debug, Default)]
struct Waiting {
    named: Vec<String>,
    more: usize,
}

impl Waiting {
    fn push(&mut self, reason: impl FnOnce() -> String) {
        if self.named.len() < WAITING_NAMED {
            self.named.push(reason());
        } else {
            self.more += 1;
        }
    }

    fn text(self) -> Option<String> {
        if self.named.is_empty() {
            return None;
        }
        let mut text = self.named.join("; ");
        if self.more > 0 {
            text.push_str(&format!("; and {} more device(s)", self.more));
        }
        Some(text)
    }
}

/// What one pass did: the commands for the controller, and whether the rollout changed.
#[derive(Debug, Default)]
pub struct Pass {
    pub commands: Vec<Command>,
    /// Something of the rollout changed (a device's phase, the wave, the state or why it
    /// waits): its record is to be written again.
    pub changed: bool,
    /// Devices looked up (the current wave's that were not done).
    pub looked: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Pending,
    /// Offline when its wave came (policy `wait`), since this time.
    WaitingOnline {
        since_ms: u64,
    },
    Updating {
        assigned_at_ms: u64,
        restarts_at_start: u64,
    },
    Soaking {
        assigned_at_ms: u64,
        restarts_at_start: u64,
        healthy_since_ms: u64,
    },
    Succeeded,
    Failed {
        reason: String,
    },
    Skipped {
        reason: String,
    },
}

impl Phase {
    pub fn terminal(&self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed { .. } | Phase::Skipped { .. }
        )
    }

    /// Whether the device was moved to the target revision (and so must be rolled back).
    pub fn touched(&self) -> bool {
        matches!(
            self,
            Phase::Updating { .. } | Phase::Soaking { .. } | Phase::Succeeded
        ) || matches!(self, Phase::Failed { reason } if !reason.starts_with("offline"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Paused {
        reason: String,
    },
    Succeeded,
    /// Stopped by failures; `rollback` tells whether a rollback rollout was started.
    Failed {
        reason: String,
        rollback: bool,
    },
    Aborted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub deployment: String,
    pub from_revision: u64,
    pub to_revision: u64,
    pub strategy: Strategy,
    /// Fixed when the rollout starts; shared, so that the controller's copy of a rollout for
    /// each pass and its comparison with the pass's result do not copy or compare every
    /// device id (10,000 strings a pass at 10,000 devices).
    pub waves: Arc<Vec<Vec<String>>>,
    pub current_wave: usize,
    /// Every device of the rollout and its phase. A persistent map: copies of the rollout
    /// (each pass's, the API's and the recent list's) share its nodes, and a pass that moves
    /// a few devices copies only their paths.
    pub devices: imbl::OrdMap<Arc<str>, Phase>,
    pub state: RolloutState,
    /// Why the current wave is not moving, for `rollout status` (maintenance window, offline
    /// devices, soak…).
    pub waiting: Option<String>,
    /// Which wave each device is in, built from `waves` when a pass first needs it.
    #[serde(skip)]
    wave_of: WaveIndex,
}

/// Device → wave number, built once per rollout (shared by its copies; not part of its
/// record or of its equality).
#[derive(Clone, Default)]
struct WaveIndex(Arc<std::sync::OnceLock<std::collections::HashMap<Arc<str>, usize>>>);

impl PartialEq for WaveIndex {
    fn eq(&self, _: &WaveIndex) -> bool {
        true
    }
}

impl Eq for WaveIndex {}

impl std::fmt::Debug for WaveIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WaveIndex")
    }
}

/// What a pass asks the controller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Make the device run this revision of the deployment.
    Pin { device: String, revision: u64 },
    /// Start a rollback rollout of these devices to `from_revision`.
    Rollback { devices: Vec<String>, revision: u64 },
}

fn restarts(status: Option<&DeviceStatus>, deployment: &str) -> u64 {
    status
        .and_then(|s| s.stacks.get(deployment))
        .map_or(0, |st| st.services.values().map(|s| s.restart_count).sum())
}

impl Rollout {
    pub fn new(
        deployment: &str,
        from: u64,
        to: u64,
        strategy: Strategy,
        waves: Vec<Vec<String>>,
    ) -> Rollout {
        let devices = waves
            .iter()
            .flatten()
            .map(|d| (Arc::from(d.as_str()), Phase::Pending))
            .collect();
        Rollout {
            deployment: deployment.to_owned(),
            from_revision: from,
            to_revision: to,
            strategy,
            waves: Arc::new(waves),
            current_wave: 0,
            devices,
            state: RolloutState::Running,
            waiting: None,
            wave_of: WaveIndex::default(),
        }
    }

    /// The wave `device` is in.
    fn wave_of(&self, device: &str) -> Option<usize> {
        let index = self.wave_of.0.get_or_init(|| {
            let mut index = std::collections::HashMap::new();
            for (n, wave) in self.waves.iter().enumerate() {
                for d in wave {
                    index.insert(Arc::from(d.as_str()), n);
                }
            }
            index
        });
        index.get(device).copied()
    }

    pub fn failures(&self) -> usize {
        self.devices
            .values()
            .filter(|p| matches!(p, Phase::Failed { .. }))
            .count()
    }

    /// Devices currently moving (pinned, not yet judged).
    pub fn in_flight(&self) -> usize {
        self.devices
            .values()
            .filter(|p| matches!(p, Phase::Updating { .. } | Phase::Soaking { .. }))
            .count()
    }

    /// The devices a pass looks at: the current wave's that are not done yet. A pass looks
    /// up these only (a done device's phase never changes), so its cost follows the devices
    /// still moving, not the rollout's size.
    pub fn watched(&self) -> impl Iterator<Item = &String> {
        let wave = match self.state {
            RolloutState::Running => self.waves.get(self.current_wave),
            _ => None,
        };
        wave.into_iter()
            .flatten()
            .filter(|d| !self.devices.get(d.as_str()).is_some_and(Phase::terminal))
    }

    /// One pass of the loop: the current wave's devices that are not done are looked up in
    /// `fleet` and moved on.
    pub fn step(&mut self, fleet: &impl Fleet, now_ms: u64) -> Pass {
        self.step_some(fleet, None, now_ms)
    }

    /// A pass over some devices only: of `only`, those of the current wave not done (the
    /// devices that changed since the last pass; a device that did not change and whose
    /// time-bound judgement — soak, timeouts, windows — may move is judged by the next whole
    /// pass, [`Rollout::step`], which the loop makes at least once a second and for every new
    /// wave). `waiting` is rewritten by whole passes only.
    pub fn step_some(&mut self, fleet: &impl Fleet, only: Option<&[String]>, now_ms: u64) -> Pass {
        let mut pass = Pass::default();
        if self.state != RolloutState::Running {
            return pass;
        }
        let whole = only.is_none();
        let (wave_before, waiting_before) = (self.current_wave, self.waiting.clone());
        let mut waiting = Waiting::default();
        let waves = self.waves.clone();
        let wave: &[String] = waves.get(self.current_wave).map_or(&[], Vec::as_slice);
        let ids: &[String] = only.unwrap_or(wave);
        // Whether a device became done (the wave may be complete) or failed (the failure
        // budget may be spent) in this pass.
        let (mut finished, mut failed) = (whole, whole);
        for id in ids {
            if !whole && self.wave_of(id) != Some(self.current_wave) {
                continue;
            }
            let phase = self
                .devices
                .get(id.as_str())
                .cloned()
                .unwrap_or(Phase::Pending);
            if phase.terminal() {
                continue;
            }
            pass.looked += 1;
            let next = fleet.look(id, |snap| {
                self.advance(id, &phase, snap, now_ms, &mut pass.commands, &mut waiting)
            });
            if next != phase {
                finished |= next.terminal();
                failed |= matches!(next, Phase::Failed { .. });
                // Only a phase that moved touches the map (and copies its path if shared).
                match self.devices.get_mut(id.as_str()) {
                    Some(p) => *p = next,
                    None => {
                        self.devices.insert(Arc::from(id.as_str()), next);
                    }
                }
                pass.changed = true;
            }
        }
        let total = self.devices.len();
        if failed && self.strategy.too_many_failures(self.failures(), total) {
            let reason = format!(
                "{} of {total} device(s) failed (max_failures {}): {}",
                self.failures(),
                self.strategy.max_failures,
                self.failure_reasons()
            );
            match self.strategy.on_failure {
                OnFailure::Pause => self.state = RolloutState::Paused { reason },
                OnFailure::Rollback => {
                    let devices: Vec<String> = self
                        .devices
                        .iter()
                        .filter(|(_, p)| p.touched())
                        .map(|(d, _)| d.to_string())
                        .collect();
                    pass.commands.push(Command::Rollback {
                        devices,
                        revision: self.from_revision,
                    });
                    self.state = RolloutState::Failed {
                        reason,
                        rollback: true,
                    };
                }
            }
            self.waiting = None;
            pass.changed = true;
            return pass;
        }
        if finished
            && wave
                .iter()
                .all(|d| self.devices.get(d.as_str()).is_some_and(Phase::terminal))
        {
            self.current_wave += 1;
            if self.current_wave >= self.waves.len() {
                self.state = RolloutState::Succeeded;
                self.waiting = None;
                pass.changed = true;
                return pass;
            }
            // The next wave starts on the next pass, so a wave boundary is always visible.
            self.waiting = None;
        } else if whole {
            self.waiting = waiting.text();
        }
        pass.changed |= self.current_wave != wave_before || self.waiting != waiting_before;
        pass
    }

    fn advance(
        &self,
        id: &str,
        phase: &Phase,
        snap: Option<Seen<'_>>,
        now: u64,
        commands: &mut Vec<Command>,
        waiting: &mut Waiting,
    ) -> Phase {
        let online = snap.is_some_and(|s| s.online);
        let phase = phase.clone();
        match phase {
            Phase::Pending | Phase::WaitingOnline { .. } if !online => {
                match self.strategy.offline {
                    OfflinePolicy::Skip => Phase::Skipped {
                        reason: "offline when its wave came".into(),
                    },
                    OfflinePolicy::Fail => Phase::Failed {
                        reason: "offline when its wave came".into(),
                    },
                    OfflinePolicy::Wait => {
                        let since_ms = match phase {
                            Phase::WaitingOnline { since_ms } => since_ms,
                            _ => now,
                        };
                        let limit = u64::try_from(self.strategy.offline_timeout.as_millis())
                            .unwrap_or(u64::MAX);
                        if now.saturating_sub(since_ms) >= limit {
                            Phase::Failed {
                                reason: format!(
                                    "offline for more than {}",
                                    humantime::format_duration(self.strategy.offline_timeout)
                                ),
                            }
                        } else {
                            waiting.push(|| format!("{id} offline"));
                            Phase::WaitingOnline { since_ms }
                        }
                    }
                }
            }
            Phase::Pending | Phase::WaitingOnline { .. } => {
                if !snap.is_some_and(|s| s.window_open) {
                    waiting.push(|| format!("{id} outside its site's maintenance window"));
                    return Phase::Pending;
                }
                commands.push(Command::Pin {
                    device: id.to_owned(),
                    revision: self.to_revision,
                });
                Phase::Updating {
                    assigned_at_ms: now,
                    restarts_at_start: restarts(snap.and_then(|s| s.status), &self.deployment),
                }
            }
            Phase::Updating {
                assigned_at_ms,
                restarts_at_start,
            }
            | Phase::Soaking {
                assigned_at_ms,
                restarts_at_start,
                ..
            } => {
                let since = match phase {
                    Phase::Soaking {
                        healthy_since_ms, ..
                    } => Some(healthy_since_ms),
                    _ => None,
                };
                let a = Assignment {
                    deployment: &self.deployment,
                    deployment_revision: self.to_revision,
                    desired_revision: snap.map_or(0, |s| s.desired_revision),
                    assigned_at_ms,
                    restarts_at_start,
                };
                match judge(&a, snap.and_then(|s| s.status), since, now, &self.strategy) {
                    Verdict::Waiting(why) => {
                        waiting.push(|| format!("{id}: {why}"));
                        Phase::Updating {
                            assigned_at_ms,
                            restarts_at_start,
                        }
                    }
                    Verdict::Soaking { healthy_since_ms } => {
                        waiting.push(|| format!("{id} soaking"));
                        Phase::Soaking {
                            assigned_at_ms,
                            restarts_at_start,
                            healthy_since_ms,
                        }
                    }
                    Verdict::Succeeded => Phase::Succeeded,
                    Verdict::Failed(reason) => Phase::Failed { reason },
                }
            }
            terminal => terminal,
        }
    }

    fn failure_reasons(&self) -> String {
        self.devices
            .iter()
            .filter_map(|(d, p)| match p {
                Phase::Failed { reason } => Some(format!("{d}: {reason}")),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn pause(&mut self, reason: &str) {
        if self.state == RolloutState::Running {
            self.state = RolloutState::Paused {
                reason: reason.to_owned(),
            };
        }
    }

    pub fn resume(&mut self) {
        if matches!(self.state, RolloutState::Paused { .. }) {
            self.state = RolloutState::Running;
        }
    }

    /// Stops pinning further devices; devices already pinned finish converging, so every
    /// device ends on one consistent revision (old or new), never half-updated.
    pub fn abort(&mut self) {
        if matches!(
            self.state,
            RolloutState::Running | RolloutState::Paused { .. }
        ) {
            self.state = RolloutState::Aborted;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use edgefleet_protocol::status::{
        ContainerState, ConvergenceState, Health, ServiceStatus, StackStatus,
    };

    use super::*;
    use crate::rollout::strategy::Amount;

    /// A small simulated fleet: pinned devices converge (or crash) on the next pass.
    struct Sim {
        fleet: BTreeMap<String, DeviceSnapshot>,
        bad: bool,
        now: u64,
        pins: Vec<(String, u64)>,
    }

    impl Sim {
        fn new(n: usize, bad: bool) -> Sim {
            let fleet = (0..n)
                .map(|i| {
                    (
                        format!("d{i}"),
                        DeviceSnapshot {
                            online: true,
                            desired_revision: 1,
                            status: Some(status(1, 1, false)),
                            window_open: true,
                        },
                    )
                })
                .collect();
            Sim {
                fleet,
                bad,
                now: 0,
                pins: Vec::new(),
            }
        }

        /// A pass as the controller makes it: with snapshots of the watched devices only.
        fn pass(&mut self, r: &mut Rollout) -> Vec<Command> {
            let watched: BTreeMap<String, DeviceSnapshot> = r
                .watched()
                .filter_map(|d| Some((d.clone(), self.fleet.get(d)?.clone())))
                .collect();
            assert!(watched.len() <= r.waves.get(r.current_wave).map_or(0, Vec::len));
            let cmds = r.step(&watched, self.now).commands;
            for c in &cmds {
                if let Command::Pin { device, revision } = c {
                    self.pins.push((device.clone(), *revision));
                    let d = self.fleet.get_mut(device).unwrap();
                    d.desired_revision += 1;
                    d.status = Some(status(
                        d.desired_revision,
                        *revision,
                        self.bad && *revision == 2,
                    ));
                }
            }
            self.now += 5_000;
            cmds
        }
    }

    fn status(rev: u64, dep_rev: u64, crashed: bool) -> DeviceStatus {
        DeviceStatus {
            schema: 1,
            device: "d".into(),
            observed_revision: rev,
            desired_revision: rev,
            state: ConvergenceState::Converged,
            stacks: BTreeMap::from([(
                "web".to_string(),
                StackStatus {
                    deployment_revision: dep_rev,
                    services: BTreeMap::from([(
                        "app".to_string(),
                        ServiceStatus {
                            image: format!("app:{dep_rev}"),
                            image_id: None,
                            container_id: Some("c".into()),
                            state: if crashed {
                                ContainerState::Exited
                            } else {
                                ContainerState::Running
                            },
                            health: Health::None,
                            restart_count: 0,
                            last_error: None,
                            config_hash: None,
                        },
                    )]),
                },
            )]),
            last_error: None,
            agent_version: "t".into(),
            updated_at: "t".into(),
            platform: None,
        }
    }

    fn strategy() -> Strategy {
        Strategy {
            canary: 1,
            batch: Amount::Count(2),
            soak: Duration::from_secs(9),
            ..Strategy::default()
        }
    }

    fn rollout(n: usize, s: Strategy) -> Rollout {
        let devices: Vec<_> = (0..n)
            .map(|i| super::super::waves::Candidate {
                id: format!("d{i}"),
                labels: BTreeMap::new(),
            })
            .collect();
        let waves = super::super::waves::plan_waves(&devices, &s);
        Rollout::new("web", 1, 2, s, waves)
    }

    #[test]
    fn good_revision_completes_wave_by_wave_never_exceeding_the_wave_size() {
        let mut sim = Sim::new(5, false);
        let mut r = rollout(5, strategy());
        let mut first_batch_pin_at = None;
        for _ in 0..100 {
            sim.pass(&mut r);
            assert!(r.in_flight() <= 2, "never more in flight than a wave");
            if first_batch_pin_at.is_none() && sim.pins.len() > 1 {
                first_batch_pin_at = Some(sim.now);
                assert_eq!(
                    r.devices["d0"],
                    Phase::Succeeded,
                    "canary healthy before batch 1 starts"
                );
            }
            if r.state != RolloutState::Running {
                break;
            }
        }
        assert_eq!(r.state, RolloutState::Succeeded);
        let mut pinned: Vec<_> = sim.pins.iter().map(|(d, _)| d.clone()).collect();
        pinned.sort();
        assert_eq!(
            pinned,
            vec!["d0", "d1", "d2", "d3", "d4"],
            "each device pinned exactly once"
        );
    }

    #[test]
    fn bad_revision_stops_after_the_canary_and_rolls_it_back() {
        let mut sim = Sim::new(5, true);
        let mut r = rollout(5, strategy());
        let mut rollback = None;
        for _ in 0..20 {
            for c in sim.pass(&mut r) {
                if let Command::Rollback { devices, revision } = c {
                    rollback = Some((devices, revision));
                }
            }
            if r.state != RolloutState::Running {
                break;
            }
        }
        assert!(
            matches!(&r.state, RolloutState::Failed { rollback: true, reason } if reason.contains("d0: service 'app': container exited")),
            "{:?}",
            r.state
        );
        assert_eq!(rollback, Some((vec!["d0".to_string()], 1)));
        assert_eq!(
            sim.pins,
            vec![("d0".to_string(), 2)],
            "no other device was touched"
        );
    }

    #[test]
    fn pause_policy_pauses_and_resume_continues() {
        let mut sim = Sim::new(3, true);
        let mut r = rollout(
            3,
            Strategy {
                on_failure: OnFailure::Pause,
                ..strategy()
            },
        );
        for _ in 0..5 {
            sim.pass(&mut r);
        }
        assert!(matches!(r.state, RolloutState::Paused { .. }));
        assert!(sim.pass(&mut r).is_empty(), "a paused rollout pins nothing");
        r.resume();
        // Still over the failure budget: it pauses again at once instead of going on.
        sim.pass(&mut r);
        assert!(matches!(r.state, RolloutState::Paused { .. }));
        r.abort();
        assert_eq!(r.state, RolloutState::Aborted);
        assert!(sim.pass(&mut r).is_empty());
    }

    #[test]
    fn offline_policies() {
        for (policy, want) in [
            (OfflinePolicy::Skip, "skipped"),
            (OfflinePolicy::Fail, "failed"),
            (OfflinePolicy::Wait, "failed after timeout"),
        ] {
            let mut sim = Sim::new(3, false);
            sim.fleet.get_mut("d1").unwrap().online = false;
            let s = Strategy {
                offline: policy,
                offline_timeout: Duration::from_secs(20),
                max_failures: Amount::Count(1),
                on_failure: OnFailure::Pause,
                ..strategy()
            };
            let mut r = rollout(3, s);
            let mut saw_wait = false;
            for _ in 0..30 {
                sim.pass(&mut r);
                saw_wait |= r
                    .waiting
                    .as_deref()
                    .unwrap_or_default()
                    .contains("d1 offline");
            }
            assert_eq!(
                saw_wait,
                policy == OfflinePolicy::Wait,
                "{want}: status says the wave waits for d1"
            );
            assert_eq!(
                r.state,
                RolloutState::Succeeded,
                "{want}: one failure is within max_failures"
            );
            match (policy, &r.devices["d1"]) {
                (OfflinePolicy::Skip, Phase::Skipped { .. }) => {}
                (OfflinePolicy::Fail, Phase::Failed { .. }) => {}
                (OfflinePolicy::Wait, Phase::Failed { reason })
                    if reason.contains("offline for more than 20s") => {}
                (_, other) => panic!("{want}: {other:?}"),
            }
            assert!(
                !sim.pins.iter().any(|(d, _)| d == "d1"),
                "an offline device is never pinned"
            );
        }
    }

    #[test]
    fn closed_maintenance_window_holds_the_wave_then_proceeds() {
        let mut sim = Sim::new(2, false);
        sim.fleet.get_mut("d0").unwrap().window_open = false;
        let mut r = rollout(2, strategy());
        sim.pass(&mut r);
        assert!(sim.pins.is_empty());
        assert!(
            r.waiting
                .as_deref()
                .unwrap_or_default()
                .contains("maintenance window"),
            "{:?}",
            r.waiting
        );
        sim.fleet.get_mut("d0").unwrap().window_open = true;
        for _ in 0..20 {
            sim.pass(&mut r);
        }
        assert_eq!(r.state, RolloutState::Succeeded);
    }

    #[test]
    fn a_wide_wave_names_a_few_waiting_devices_and_counts_the_rest() {
        let mut sim = Sim::new(13, false);
        for d in sim.fleet.values_mut() {
            d.window_open = false;
        }
        let mut r = rollout(
            13,
            Strategy {
                canary: 12,
                ..strategy()
            },
        );
        let pass = r.step(&sim.fleet, 0);
        assert!(pass.commands.is_empty() && pass.changed, "{pass:?}");
        assert_eq!(pass.looked, 12);
        let waiting = r.waiting.clone().unwrap_or_default();
        assert_eq!(waiting.matches("maintenance window").count(), WAITING_NAMED);
        assert!(waiting.ends_with("; and 7 more device(s)"), "{waiting}");
        // The same pass again changes nothing: the record is not rewritten.
        assert!(!r.step(&sim.fleet, 0).changed);
    }

    #[test]
    fn a_pass_over_the_changed_devices_moves_only_those_of_the_current_wave() {
        let mut sim = Sim::new(5, false);
        let mut r = rollout(5, strategy());
        sim.pass(&mut r); // the canary d0 pinned (a whole pass)
        assert_eq!(r.current_wave, 0);
        // d0 converged and soaked, but only d3 (a later wave's) is said to have changed.
        sim.now += 20_000;
        let d3 = vec!["d3".to_string()];
        let pass = r.step_some(&sim.fleet, Some(&d3), sim.now);
        assert_eq!(pass.looked, 0, "{pass:?}");
        assert!(!pass.changed && pass.commands.is_empty());
        assert!(matches!(r.devices["d0"], Phase::Updating { .. }));
        // Told that d0 changed, a pass judges it, then closes the wave.
        let d0 = vec!["d0".to_string(), "nobody".to_string()];
        let first = r.step_some(&sim.fleet, Some(&d0), sim.now);
        assert_eq!(first.looked, 1);
        let second = r.step_some(&sim.fleet, Some(&d0), sim.now + 10_000);
        assert!(first.changed && second.changed);
        assert_eq!(r.devices["d0"], Phase::Succeeded);
        assert_eq!(r.current_wave, 1, "{:?}", r.devices);
        // The next wave's devices are pinned by a whole pass.
        let pass = r.step(&sim.fleet, sim.now + 10_000);
        assert_eq!(pass.commands.len(), 2, "{pass:?}");
    }

    #[test]
    fn state_survives_serialization_mid_rollout() {
        let mut sim = Sim::new(5, false);
        let mut r = rollout(5, strategy());
        for _ in 0..4 {
            sim.pass(&mut r);
        }
        // A controller restart: the persisted rollout comes back and resumes.
        let mut r: Rollout = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        for _ in 0..100 {
            sim.pass(&mut r);
            if r.state != RolloutState::Running {
                break;
            }
        }
        assert_eq!(r.state, RolloutState::Succeeded);
        assert_eq!(
            sim.pins.len(),
            5,
            "no device pinned twice across the restart"
        );
    }
}
