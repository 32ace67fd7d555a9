//! The planner: a pure function from the desired state and what the engine holds to the
//! ordered actions that make the engine match. No I/O, no clock, no memory of earlier passes:
//! the reconciler calls it on a fresh observation every pass, so a restarted agent plans
//! exactly what a running one would (and an unchanged container is never recreated).
//!
//! A changed service is replaced in its `update_order`: `stop-first` (old out, new in) or
//! `start-first` (new in under a temporary name, wait until it is ready, old out, rename). An
//! action that may leave two versions running if it fails carries the `undo` that takes the
//! new one back, so a failed pass always ends with the old version alone.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::spec::{ServiceSpec, StackSpec, UpdateOrder};
use edgefleet_protocol::status::ContainerState;

use crate::container::{
    ContainerSpec, container_name, next_container_name, stack_volumes, volume_name,
};
use crate::runtime::ContainerInfo;

/// A new container without a healthcheck is ready once it has run this long without exiting
/// or restarting (catches a program that dies at start).
pub const RUNNING_SETTLE: Duration = Duration::from_secs(1);
/// Longest wait for a new container to become healthy, whatever its healthcheck says.
pub const HEALTHY_WAIT_MAX: Duration = Duration::from_secs(300);
/// Added to the healthcheck's own worst case (image start, engine latency).
pub const HEALTHY_WAIT_MARGIN: Duration = Duration::from_secs(5);
/// Docker's defaults for healthcheck fields left unset.
const DOCKER_HEALTH_INTERVAL_MS: u64 = 30_000;
const DOCKER_HEALTH_TIMEOUT_MS: u64 = 30_000;
const DOCKER_HEALTH_RETRIES: u32 = 3;

/// When the new container of a `start-first` update counts as ready to take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// No healthcheck: running, never restarted, for at least this long.
    Running { for_at_least: Duration },
    /// Healthcheck: reported healthy within this long (unhealthy, exited or restarted before
    /// that fails at once).
    Healthy { within: Duration },
}

impl Readiness {
    /// For a service: with a healthcheck, the time Docker needs at worst to judge it
    /// (`start_period + (retries + 1) × (interval + timeout)`, plus a margin), capped at
    /// [`HEALTHY_WAIT_MAX`].
    pub fn for_service(svc: &ServiceSpec) -> Readiness {
        let Some(hc) = svc
            .healthcheck
            .as_ref()
            .filter(|h| h.test.first().map(String::as_str) != Some("NONE"))
        else {
            return Readiness::Running {
                for_at_least: RUNNING_SETTLE,
            };
        };
        let probe = hc
            .interval_ms
            .unwrap_or(DOCKER_HEALTH_INTERVAL_MS)
            .saturating_add(hc.timeout_ms.unwrap_or(DOCKER_HEALTH_TIMEOUT_MS));
        let worst = u64::from(hc.retries.unwrap_or(DOCKER_HEALTH_RETRIES))
            .saturating_add(1)
            .saturating_mul(probe)
            .saturating_add(hc.start_period_ms.unwrap_or(0));
        let within = Duration::from_millis(worst).saturating_add(HEALTHY_WAIT_MARGIN);
        Readiness::Healthy {
            within: within.min(HEALTHY_WAIT_MAX),
        }
    }
}

/// What the engine holds for this device, gathered at the start of a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every container labelled with this device, running or not.
    pub containers: Vec<ContainerInfo>,
    /// Desired images that are present locally.
    pub images: BTreeSet<String>,
    /// Volumes labelled with this device.
    pub volumes: BTreeSet<String>,
}

impl Observed {
    /// Containers labelled as `stack`/`service`, by name then id.
    pub fn service_containers(&self, stack: &str, service: &str) -> Vec<&ContainerInfo> {
        let mut found: Vec<&ContainerInfo> = self
            .containers
            .iter()
            .filter(|c| c.stack() == Some(stack) && c.service() == Some(service))
            .collect();
        found.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        found
    }
}

/// Among a service's containers, the one created from the desired config (hash), preferring
/// the expected name, then a running one. `None` when no container has the desired config.
pub fn current_container<'a>(
    candidates: &[&'a ContainerInfo],
    want_hash: &str,
    want_name: &str,
) -> Option<&'a ContainerInfo> {
    candidates
        .iter()
        .copied()
        .filter(|c| c.config_hash() == Some(want_hash) && c.state != ContainerState::Removing)
        .max_by_key(|c| {
            (
                c.name == want_name,
                c.is_active(),
                std::cmp::Reverse(c.id.clone()),
            )
        })
}

/// One engine operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    EnsureVolume {
        name: String,
    },
    Pull {
        image: String,
    },
    Create(Box<ContainerSpec>),
    /// `container` is an id, or the name of a container created earlier in the same plan.
    Start {
        container: String,
        name: String,
    },
    Stop {
        container: String,
        name: String,
    },
    Remove {
        container: String,
        name: String,
    },
    /// Waits until a just-started container is ready (`start-first`); fails with
    /// [`crate::runtime::RuntimeError::NotReady`].
    AwaitReady {
        container: String,
        name: String,
        readiness: Readiness,
    },
    Rename {
        container: String,
        from: String,
        to: String,
    },
}

/// Why an action is needed: what the planner found. When the revision was already converged,
/// these are the drift findings reported to the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// No container for a desired service.
    Missing,
    /// The container was created from another config.
    Changed {
        found: Option<String>,
        want: String,
    },
    /// The container exists with the desired config but is not running.
    NotRunning(ContainerState),
    /// A container of this device that the desired state does not contain.
    Unwanted,
    /// A second container for the same service.
    Duplicate,
    ImageMissing,
    VolumeMissing,
    /// A container with the desired config under the temporary name of a `start-first`
    /// update that did not finish (the agent stopped or failed midway).
    Unfinished,
    /// Taking back the new container of a `start-first` update that failed.
    Abandoned,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Missing => write!(f, "container missing"),
            Finding::Changed { found, want } => write!(
                f,
                "container config changed (found {}, desired {want})",
                found.as_deref().unwrap_or("no config hash")
            ),
            Finding::NotRunning(state) => write!(f, "container {}", state_name(*state)),
            Finding::Unwanted => write!(f, "container not in the desired state"),
            Finding::Duplicate => write!(f, "duplicate container"),
            Finding::ImageMissing => write!(f, "image not present"),
            Finding::VolumeMissing => write!(f, "volume missing"),
            Finding::Unfinished => write!(f, "unfinished start-first update"),
            Finding::Abandoned => write!(
                f,
                "start-first update abandoned, the old container keeps running"
            ),
        }
    }
}

/// Docker's spelling of a state (`exited`).
pub fn state_name(state: ContainerState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{state:?}"))
}

/// One step of a plan, attributed to a stack and (except for volumes) a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub stack: String,
    pub service: Option<String>,
    pub op: Op,
    pub finding: Finding,
    /// Run (best effort) if this action fails, before the pass stops: takes back the new
    /// container of a `start-first` update so the old version is left running alone.
    pub undo: Vec<Op>,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.op.fmt(f)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::EnsureVolume { name } => write!(f, "volume {name}"),
            Op::Pull { image } => write!(f, "pull {image}"),
            Op::Create(spec) => write!(f, "create {}", spec.name),
            Op::Start { name, .. } => write!(f, "start {name}"),
            Op::Stop { name, .. } => write!(f, "stop {name}"),
            Op::Remove { name, .. } => write!(f, "remove {name}"),
            Op::AwaitReady {
                name, readiness, ..
            } => match readiness {
                Readiness::Running { .. } => write!(f, "await running {name}"),
                Readiness::Healthy { .. } => write!(f, "await healthy {name}"),
            },
            Op::Rename { from, to, .. } => write!(f, "rename {from} to {to}"),
        }
    }
}

/// Plans the actions that make `observed` match `desired`, in execution order:
/// 1. containers of this device that are not desired (or have no edgefleet labels) are
///    stopped and removed first, freeing names and ports;
/// 2. for each stack: missing named volumes are created (never removed: data), then each
///    service in dependency order is created, replaced (in its update order) or started as
///    needed.
pub fn plan(desired: &DesiredState, observed: &Observed) -> Vec<Action> {
    let mut p = Planner {
        device: &desired.device,
        observed,
        actions: Vec::new(),
        pulls: BTreeSet::new(),
    };
    let mut all: Vec<&ContainerInfo> = observed.containers.iter().collect();
    all.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    for c in all {
        let wanted = match (c.stack(), c.service()) {
            (Some(stack), Some(service)) => desired
                .stacks
                .get(stack)
                .is_some_and(|s| s.services.contains_key(service)),
            _ => false,
        };
        if !wanted {
            let stack = c.stack().unwrap_or("(unlabelled)").to_owned();
            p.retire(&stack, c.service(), c, Finding::Unwanted);
        }
    }
    for (stack_name, stack) in &desired.stacks {
        p.stack(stack_name, stack);
    }
    p.actions
}

struct Planner<'a> {
    device: &'a str,
    observed: &'a Observed,
    actions: Vec<Action>,
    /// Images already pulled earlier in this plan.
    pulls: BTreeSet<String>,
}

impl Planner<'_> {
    fn push(&mut self, stack: &str, service: Option<&str>, op: Op, finding: Finding) {
        self.push_undoable(stack, service, op, finding, Vec::new());
    }

    fn push_undoable(
        &mut self,
        stack: &str,
        service: Option<&str>,
        op: Op,
        finding: Finding,
        undo: Vec<Op>,
    ) {
        self.actions.push(Action {
            stack: stack.to_owned(),
            service: service.map(str::to_owned),
            op,
            finding,
            undo,
        });
    }

    fn stack(&mut self, stack_name: &str, stack: &StackSpec) {
        // A held document always has an order (validated on receipt); never guess one.
        let Ok(order) = stack.start_order() else {
            return;
        };
        for volume in stack_volumes(stack) {
            let name = volume_name(self.device, stack_name, volume);
            if !self.observed.volumes.contains(&name) {
                self.push(
                    stack_name,
                    None,
                    Op::EnsureVolume { name },
                    Finding::VolumeMissing,
                );
            }
        }
        for service in order {
            if let Some(svc) = stack.services.get(service) {
                self.service(stack_name, stack, service, svc);
            }
        }
    }

    fn service(&mut self, stack_name: &str, stack: &StackSpec, service: &str, svc: &ServiceSpec) {
        let want_hash = svc.config_hash();
        let want_name = container_name(self.device, stack_name, service);
        let next_name = next_container_name(self.device, stack_name, service);
        let mine = self.observed.service_containers(stack_name, service);
        // A dead container under the temporary name is a leftover like any other.
        let current = current_container(&mine, &want_hash, &want_name)
            .filter(|c| !(c.name == next_name && c.state == ContainerState::Dead));
        let Some(current) = current else {
            let finding = match mine.first() {
                None => Finding::Missing,
                Some(old) => Finding::Changed {
                    found: old.config_hash().map(str::to_owned),
                    want: want_hash.clone(),
                },
            };
            // Start-first only matters when an old version is serving; otherwise there is
            // nothing to keep up and the plain order is simpler.
            let serving = mine.iter().any(|c| c.is_active() && c.name != next_name);
            if svc.update_order == UpdateOrder::StartFirst && serving {
                self.replace_start_first(stack_name, stack, service, svc, &mine, finding);
            } else {
                self.replace_stop_first(stack_name, stack, service, svc, &mine, finding);
            }
            return;
        };
        if current.name == next_name {
            self.finish_start_first(stack_name, service, svc, current, &mine);
            return;
        }
        for dup in mine.iter().filter(|c| c.id != current.id) {
            self.retire(stack_name, Some(service), dup, Finding::Duplicate);
        }
        match current.state {
            ContainerState::Dead => {
                let finding = Finding::NotRunning(current.state);
                self.replace_stop_first(stack_name, stack, service, svc, &[current], finding)
            }
            _ => self.resume(stack_name, service, svc, current),
        }
    }

    /// Starts a container with the desired config that is not running and should be.
    fn resume(&mut self, stack_name: &str, service: &str, svc: &ServiceSpec, c: &ContainerInfo) {
        let finding = Finding::NotRunning(c.state);
        match c.state {
            ContainerState::Created => self.start(stack_name, service, c, finding),
            ContainerState::Exited if svc.restart.keeps_running() => {
                self.start(stack_name, service, c, finding)
            }
            // Running/restarting/paused: the engine owns it. Exited with restart `no` or
            // `on-failure`: the service ended as its policy allows; report, do not restart.
            _ => {}
        }
    }

    /// Pulls the service's image unless present or already pulled in this plan.
    fn pull_if_missing(&mut self, stack_name: &str, service: &str, svc: &ServiceSpec) {
        if !self.observed.images.contains(&svc.image) && self.pulls.insert(svc.image.clone()) {
            let op = Op::Pull {
                image: svc.image.clone(),
            };
            self.push(stack_name, Some(service), op, Finding::ImageMissing);
        }
    }

    /// Replaces a service's containers (`old`, possibly none) by one with the desired config:
    /// pull first (a failed pull leaves the old container running), then stop and remove the
    /// old ones, then create and start the new one. Compose's `stop-first` order.
    fn replace_stop_first(
        &mut self,
        stack_name: &str,
        stack: &StackSpec,
        service: &str,
        svc: &ServiceSpec,
        old: &[&ContainerInfo],
        finding: Finding,
    ) {
        self.pull_if_missing(stack_name, service, svc);
        for c in old {
            self.retire(stack_name, Some(service), c, finding.clone());
        }
        let spec = ContainerSpec::for_service(self.device, stack_name, stack, service, svc);
        let name = spec.name.clone();
        self.push(
            stack_name,
            Some(service),
            Op::Create(Box::new(spec)),
            finding.clone(),
        );
        let op = Op::Start {
            container: name.clone(),
            name,
        };
        self.push(stack_name, Some(service), op, finding);
    }

    /// Compose's `start-first` order, while an old version is serving: pull; remove what
    /// does not serve (including a leftover under the temporary name); create and start the
    /// new container under the temporary name; wait until it is ready; stop and remove the
    /// old ones; rename the new one to the service's name. Until the old ones are stopped,
    /// a failure takes the new one back (`undo`), so the old version keeps running alone.
    fn replace_start_first(
        &mut self,
        stack_name: &str,
        stack: &StackSpec,
        service: &str,
        svc: &ServiceSpec,
        old: &[&ContainerInfo],
        finding: Finding,
    ) {
        let next_name = next_container_name(self.device, stack_name, service);
        self.pull_if_missing(stack_name, service, svc);
        let (serving, leftovers): (Vec<&ContainerInfo>, Vec<&ContainerInfo>) = old
            .iter()
            .copied()
            .partition(|c| c.is_active() && c.name != next_name);
        for c in leftovers {
            self.retire(stack_name, Some(service), c, finding.clone());
        }
        let mut spec = ContainerSpec::for_service(self.device, stack_name, stack, service, svc);
        let want_name = std::mem::replace(&mut spec.name, next_name.clone());
        self.push(
            stack_name,
            Some(service),
            Op::Create(Box::new(spec)),
            finding.clone(),
        );
        let undo = discard(&next_name, &next_name);
        let op = Op::Start {
            container: next_name.clone(),
            name: next_name.clone(),
        };
        self.push_undoable(stack_name, Some(service), op, finding.clone(), undo);
        let new = (next_name.as_str(), next_name.as_str());
        self.take_over(stack_name, service, svc, new, &serving, &finding);
        let op = Op::Rename {
            container: next_name.clone(),
            from: next_name,
            to: want_name,
        };
        self.push(stack_name, Some(service), op, finding);
    }

    /// The `new` container (id or name, and name) has been started: wait until it is ready,
    /// then stop and remove the `serving` old ones; both undo the new container on failure.
    fn take_over(
        &mut self,
        stack_name: &str,
        service: &str,
        svc: &ServiceSpec,
        (container, name): (&str, &str),
        serving: &[&ContainerInfo],
        finding: &Finding,
    ) {
        let undo = discard(container, name);
        let op = Op::AwaitReady {
            container: container.to_owned(),
            name: name.to_owned(),
            readiness: Readiness::for_service(svc),
        };
        self.push_undoable(stack_name, Some(service), op, finding.clone(), undo.clone());
        for c in serving {
            self.retire_undoable(stack_name, Some(service), c, finding.clone(), undo.clone());
        }
    }

    /// A container with the desired config is under the temporary name: a `start-first`
    /// update stopped midway (agent restart, failed removal or rename). Finish it: with an
    /// old version still serving (and `start-first` still wanted), make sure the new one is
    /// ready before retiring the old one; then give the new one the service's name.
    fn finish_start_first(
        &mut self,
        stack_name: &str,
        service: &str,
        svc: &ServiceSpec,
        current: &ContainerInfo,
        mine: &[&ContainerInfo],
    ) {
        let finding = Finding::Unfinished;
        let others: Vec<&ContainerInfo> = mine
            .iter()
            .copied()
            .filter(|c| c.id != current.id)
            .collect();
        let (serving, idle): (Vec<&ContainerInfo>, Vec<&ContainerInfo>) =
            others.iter().copied().partition(|c| c.is_active());
        let start_first = svc.update_order == UpdateOrder::StartFirst && !serving.is_empty();
        for c in if start_first { &idle } else { &others } {
            self.retire(stack_name, Some(service), c, finding.clone());
        }
        if start_first {
            if !current.is_active() {
                let op = Op::Start {
                    container: current.id.clone(),
                    name: current.name.clone(),
                };
                let undo = discard(&current.id, &current.name);
                self.push_undoable(stack_name, Some(service), op, finding.clone(), undo);
            }
            let new = (current.id.as_str(), current.name.as_str());
            self.take_over(stack_name, service, svc, new, &serving, &finding);
        }
        let want_name = container_name(self.device, stack_name, service);
        let op = Op::Rename {
            container: current.id.clone(),
            from: current.name.clone(),
            to: want_name.clone(),
        };
        self.push(stack_name, Some(service), op, finding);
        if !start_first {
            let renamed = ContainerInfo {
                name: want_name,
                ..current.clone()
            };
            self.resume(stack_name, service, svc, &renamed);
        }
    }

    fn start(&mut self, stack: &str, service: &str, c: &ContainerInfo, finding: Finding) {
        let op = Op::Start {
            container: c.id.clone(),
            name: c.name.clone(),
        };
        self.push(stack, Some(service), op, finding);
    }

    /// Stops (if needed) and removes a container.
    fn retire(&mut self, stack: &str, service: Option<&str>, c: &ContainerInfo, finding: Finding) {
        self.retire_undoable(stack, service, c, finding, Vec::new());
    }

    /// [`Self::retire`], with `undo` should the stop fail (the old container may still run).
    fn retire_undoable(
        &mut self,
        stack: &str,
        service: Option<&str>,
        c: &ContainerInfo,
        finding: Finding,
        undo: Vec<Op>,
    ) {
        if c.state == ContainerState::Removing {
            return;
        }
        if c.is_active() {
            let op = Op::Stop {
                container: c.id.clone(),
                name: c.name.clone(),
            };
            self.push_undoable(stack, service, op, finding.clone(), undo);
        }
        let op = Op::Remove {
            container: c.id.clone(),
            name: c.name.clone(),
        };
        self.push(stack, service, op, finding);
    }
}

/// Stop and remove a container: the undo of a `start-first` update's new container.
fn discard(container: &str, name: &str) -> Vec<Op> {
    vec![
        Op::Stop {
            container: container.to_owned(),
            name: name.to_owned(),
        },
        Op::Remove {
            container: container.to_owned(),
            name: name.to_owned(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{LABEL_CONFIG_HASH, LABEL_SERVICE, LABEL_STACK};
    use edgefleet_protocol::spec::{HealthCheck, RestartPolicy, VolumeKind, VolumeMount};
    use std::collections::BTreeMap;

    const DEV: &str = "dev";

    fn svc(image: &str) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({ "image": image })).unwrap()
    }

    fn with_restart(mut s: ServiceSpec, r: RestartPolicy) -> ServiceSpec {
        s.restart = r;
        s
    }

    fn start_first(mut s: ServiceSpec) -> ServiceSpec {
        s.update_order = UpdateOrder::StartFirst;
        s
    }

    fn with_healthcheck(mut s: ServiceSpec) -> ServiceSpec {
        s.healthcheck = Some(HealthCheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval_ms: Some(1000),
            timeout_ms: Some(500),
            retries: Some(3),
            start_period_ms: Some(2000),
        });
        s
    }

    /// An action as the table spells it: `stop x`, or `start x [undo: stop x, remove x]`.
    fn describe(a: &Action) -> String {
        let unhash = |op: &Op| crate::container::unhash(&op.to_string());
        if a.undo.is_empty() {
            unhash(&a.op)
        } else {
            let undo: Vec<String> = a.undo.iter().map(unhash).collect();
            format!("{} [undo: {}]", unhash(&a.op), undo.join(", "))
        }
    }

    fn with_deps(mut s: ServiceSpec, deps: &[&str]) -> ServiceSpec {
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        s
    }

    fn with_volume(mut s: ServiceSpec, vol: &str) -> ServiceSpec {
        s.volumes.push(VolumeMount {
            kind: VolumeKind::Named,
            source: vol.into(),
            target: "/data".into(),
            read_only: false,
        });
        s
    }

    fn stack(services: Vec<(&str, ServiceSpec)>) -> StackSpec {
        let volumes: BTreeSet<String> = services
            .iter()
            .flat_map(|(_, s)| s.volumes.iter().map(|v| v.source.clone()))
            .collect();
        StackSpec {
            deployment: "app".into(),
            deployment_revision: 1,
            volumes: volumes.into_iter().collect(),
            services: services
                .into_iter()
                .map(|(n, s)| (n.to_string(), s))
                .collect(),
        }
    }

    fn desired(stacks: Vec<(&str, StackSpec)>) -> DesiredState {
        let stacks: BTreeMap<String, StackSpec> = stacks
            .into_iter()
            .map(|(n, mut s)| {
                s.deployment = n.to_string();
                (n.to_string(), s)
            })
            .collect();
        DesiredState::new(DEV, 1, stacks)
    }

    /// A container as the planner would have created it for `stack`/`service` of `d`.
    fn container(
        d: &DesiredState,
        stack: &str,
        service: &str,
        state: ContainerState,
    ) -> ContainerInfo {
        let st = &d.stacks[stack];
        let spec = ContainerSpec::for_service(DEV, stack, st, service, &st.services[service]);
        ContainerInfo {
            id: format!("id-{}", spec.name),
            name: spec.name.clone(),
            image: spec.image.clone(),
            image_id: Some("sha256:1".into()),
            state,
            health: edgefleet_protocol::status::Health::None,
            restart_count: 0,
            labels: spec.labels,
        }
    }

    fn renamed(mut c: ContainerInfo, name: &str) -> ContainerInfo {
        c.id = format!("id-{name}");
        c.name = name.into();
        c
    }

    fn observed(containers: Vec<ContainerInfo>, images: &[&str], volumes: &[&str]) -> Observed {
        Observed {
            containers,
            images: images.iter().map(|s| s.to_string()).collect(),
            volumes: volumes.iter().map(|s| s.to_string()).collect(),
        }
    }

    use ContainerState::{Created, Dead, Exited, Paused, Running};

    #[test]
    fn plan_table() {
        let one = desired(vec![("app", stack(vec![("web", svc("app:1"))]))]);
        let v2 = desired(vec![("app", stack(vec![("web", svc("app:2"))]))]);
        let always = desired(vec![(
            "app",
            stack(vec![(
                "web",
                with_restart(svc("app:1"), RestartPolicy::Always),
            )]),
        )]);
        let unless = desired(vec![(
            "app",
            stack(vec![(
                "web",
                with_restart(svc("app:1"), RestartPolicy::UnlessStopped),
            )]),
        )]);
        let on_failure = desired(vec![(
            "app",
            stack(vec![(
                "web",
                with_restart(svc("app:1"), RestartPolicy::OnFailure),
            )]),
        )]);
        let empty = desired(vec![]);
        let two_services = desired(vec![(
            "app",
            stack(vec![("web", svc("app:1")), ("worker", svc("app:1"))]),
        )]);
        let deps = desired(vec![(
            "app",
            stack(vec![
                ("web", with_deps(svc("web:1"), &["db", "cache"])),
                ("db", svc("db:1")),
                ("cache", with_deps(svc("cache:1"), &["db"])),
            ]),
        )]);
        let vol = desired(vec![(
            "app",
            stack(vec![("db", with_volume(svc("db:1"), "data"))]),
        )]);
        let two_stacks = desired(vec![
            ("app", stack(vec![("web", svc("app:1"))])),
            ("hist", stack(vec![("db", svc("db:1"))])),
        ]);
        let mut unlabelled = container(&one, "app", "web", Running);
        unlabelled.labels.remove(LABEL_STACK);
        unlabelled.labels.remove(LABEL_SERVICE);
        let unlabelled = renamed(unlabelled, "stray");
        let mut no_hash = container(&one, "app", "web", Running);
        no_hash.labels.remove(LABEL_CONFIG_HASH);
        let sf1 = desired(vec![(
            "app",
            stack(vec![("web", start_first(svc("app:1")))]),
        )]);
        let sf2 = desired(vec![(
            "app",
            stack(vec![("web", start_first(svc("app:2")))]),
        )]);
        let sf2_health = desired(vec![(
            "app",
            stack(vec![("web", start_first(with_healthcheck(svc("app:2"))))]),
        )]);
        let sf3 = desired(vec![(
            "app",
            stack(vec![("web", start_first(svc("app:3")))]),
        )]);
        let next = crate::container::next_container_name(DEV, "app", "web");
        // What an interrupted start-first update leaves under the temporary name.
        let next_of = |d: &DesiredState, state| renamed(container(d, "app", "web", state), &next);
        let undo = "[undo: stop ef-dev-app-web-next, remove ef-dev-app-web-next]";
        let start_next = format!("start ef-dev-app-web-next {undo}");
        let await_next = format!("await running ef-dev-app-web-next {undo}");
        let await_healthy_next = format!("await healthy ef-dev-app-web-next {undo}");
        let stop_old = format!("stop ef-dev-app-web {undo}");

        let cases: Vec<(&str, &DesiredState, Observed, Vec<&str>)> = vec![
            (
                "fresh install, image present",
                &one,
                observed(vec![], &["app:1"], &[]),
                vec!["create ef-dev-app-web", "start ef-dev-app-web"],
            ),
            (
                "fresh install, image missing: pull first",
                &one,
                observed(vec![], &[], &[]),
                vec![
                    "pull app:1",
                    "create ef-dev-app-web",
                    "start ef-dev-app-web",
                ],
            ),
            (
                "unchanged running container: nothing",
                &one,
                observed(
                    vec![container(&one, "app", "web", Running)],
                    &["app:1"],
                    &[],
                ),
                vec![],
            ),
            (
                "unchanged, image since deleted: still nothing",
                &one,
                observed(vec![container(&one, "app", "web", Running)], &[], &[]),
                vec![],
            ),
            (
                "image change: stop-first replace",
                &v2,
                observed(
                    vec![container(&one, "app", "web", Running)],
                    &["app:2"],
                    &[],
                ),
                vec![
                    "stop ef-dev-app-web",
                    "remove ef-dev-app-web",
                    "create ef-dev-app-web",
                    "start ef-dev-app-web",
                ],
            ),
            (
                "image change, new image missing: pull before touching the old one",
                &v2,
                observed(
                    vec![container(&one, "app", "web", Running)],
                    &["app:1"],
                    &[],
                ),
                vec![
                    "pull app:2",
                    "stop ef-dev-app-web",
                    "remove ef-dev-app-web",
                    "create ef-dev-app-web",
                    "start ef-dev-app-web",
                ],
            ),
            (
                "container without a config hash is replaced",
                &one,
                observed(vec![no_hash], &["app:1"], &[]),
                vec![
                    "stop ef-dev-app-web",
                    "remove ef-dev-app-web",
                    "create ef-dev-app-web",
                    "start ef-dev-app-web",
                ],
            ),
            (
                "removed stack: stop and remove",
                &empty,
                observed(
                    vec![container(&one, "app", "web", Running)],
                    &["app:1"],
                    &[],
                ),
                vec!["stop ef-dev-app-web", "remove ef-dev-app-web"],
            ),
            (
                "removed stack, container already exited: remove only",
                &empty,
                observed(vec![container(&one, "app", "web", Exited)], &[], &[]),
                vec!["remove ef-dev-app-web"],
            ),
            (
                "removed service, others untouched",
                &one,
                observed(
                    vec![
                        container(&two_services, "app", "web", Running),
                        container(&two_services, "app", "worker", Running),
                    ],
                    &["app:1"],
                    &[],
                ),
                vec!["stop ef-dev-app-worker", "remove ef-dev-app-worker"],
            ),
            (
                "container without edgefleet stack/service labels is removed",
                &one,
                observed(
                    vec![container(&one, "app", "web", Running), unlabelled],
                    &["app:1"],
                    &[],
                ),
                vec!["stop stray", "remove stray"],
            ),
            (
                "stopped container, restart always (drift): start",
                &always,
                observed(
                    vec![container(&always, "app", "web", Exited)],
                    &["app:1"],
                    &[],
                ),
                vec!["start ef-dev-app-web"],
            ),
            (
                "stopped container, restart unless-stopped (drift): start",
                &unless,
                observed(
                    vec![container(&unless, "app", "web", Exited)],
                    &["app:1"],
                    &[],
                ),
                vec!["start ef-dev-app-web"],
            ),
            (
                "exited container, restart no: left alone",
                &one,
                observed(vec![container(&one, "app", "web", Exited)], &["app:1"], &[]),
                vec![],
            ),
            (
                "exited container, restart on-failure: left alone",
                &on_failure,
                observed(
                    vec![container(&on_failure, "app", "web", Exited)],
                    &["app:1"],
                    &[],
                ),
                vec![],
            ),
            (
                "created but never started: start",
                &one,
                observed(
                    vec![container(&one, "app", "web", Created)],
                    &["app:1"],
                    &[],
                ),
                vec!["start ef-dev-app-web"],
            ),
            (
                "paused by someone: left alone",
                &always,
                observed(
                    vec![container(&always, "app", "web", Paused)],
                    &["app:1"],
                    &[],
                ),
                vec![],
            ),
            (
                "dead container: remove and recreate",
                &one,
                observed(vec![container(&one, "app", "web", Dead)], &["app:1"], &[]),
                vec![
                    "remove ef-dev-app-web",
                    "create ef-dev-app-web",
                    "start ef-dev-app-web",
                ],
            ),
            (
                "removed container (drift): recreate",
                &always,
                observed(vec![], &["app:1"], &[]),
                vec!["create ef-dev-app-web", "start ef-dev-app-web"],
            ),
            (
                "duplicate with the same config: keep the expected name, remove the copy",
                &one,
                observed(
                    vec![
                        renamed(container(&one, "app", "web", Running), "a-copy"),
                        container(&one, "app", "web", Running),
                    ],
                    &["app:1"],
                    &[],
                ),
                vec!["stop a-copy", "remove a-copy"],
            ),
            (
                "old and new version side by side: remove the old one",
                &v2,
                observed(
                    vec![
                        renamed(container(&one, "app", "web", Running), "old-web"),
                        container(&v2, "app", "web", Running),
                    ],
                    &["app:2"],
                    &[],
                ),
                vec!["stop old-web", "remove old-web"],
            ),
            (
                "depends_on: dependencies first",
                &deps,
                observed(vec![], &["web:1", "db:1", "cache:1"], &[]),
                vec![
                    "create ef-dev-app-db",
                    "start ef-dev-app-db",
                    "create ef-dev-app-cache",
                    "start ef-dev-app-cache",
                    "create ef-dev-app-web",
                    "start ef-dev-app-web",
                ],
            ),
            (
                "two services, one missing image: pulled once",
                &two_services,
                observed(vec![], &[], &[]),
                vec![
                    "pull app:1",
                    "create ef-dev-app-web",
                    "start ef-dev-app-web",
                    "create ef-dev-app-worker",
                    "start ef-dev-app-worker",
                ],
            ),
            (
                "named volume missing: created before the container",
                &vol,
                observed(vec![], &["db:1"], &[]),
                vec![
                    "volume ef-dev-app-data",
                    "create ef-dev-app-db",
                    "start ef-dev-app-db",
                ],
            ),
            (
                "named volume present: not touched",
                &vol,
                observed(
                    vec![container(&vol, "app", "db", Running)],
                    &["db:1"],
                    &[&crate::container::volume_name("dev", "app", "data")],
                ),
                vec![],
            ),
            (
                "removed stack's volume is kept (data)",
                &empty,
                observed(
                    vec![],
                    &[],
                    &[&crate::container::volume_name("dev", "app", "data")],
                ),
                vec![],
            ),
            (
                "two stacks: unwanted first, then stacks by name",
                &two_stacks,
                observed(
                    vec![container(&two_services, "app", "worker", Running)],
                    &["app:1", "db:1"],
                    &[],
                ),
                vec![
                    "stop ef-dev-app-worker",
                    "remove ef-dev-app-worker",
                    "create ef-dev-app-web",
                    "start ef-dev-app-web",
                    "create ef-dev-hist-db",
                    "start ef-dev-hist-db",
                ],
            ),
            (
                "start-first change: new one ready before the old one stops, then renamed",
                &sf2,
                observed(
                    vec![container(&one, "app", "web", Running)],
                    &["app:2"],
                    &[],
                ),
                vec![
                    "create ef-dev-app-web-next",
                    &start_next,
                    &await_next,
                    &stop_old,
                    "remove ef-dev-app-web",
                    "rename ef-dev-app-web-next to ef-dev-app-web",
                ],
            ),
            (
                "start-first with a healthcheck: waits for healthy; image pulled first",
                &sf2_health,
                observed(
                    vec![container(&one, "app", "web", Running)],
                    &["app:1"],
                    &[],
                ),
                vec![
                    "pull app:2",
                    "create ef-dev-app-web-next",
                    &start_next,
                    &await_healthy_next,
                    &stop_old,
                    "remove ef-dev-app-web",
                    "rename ef-dev-app-web-next to ef-dev-app-web",
                ],
            ),
            (
                "start-first, fresh install: plain create",
                &sf1,
                observed(vec![], &["app:1"], &[]),
                vec!["create ef-dev-app-web", "start ef-dev-app-web"],
            ),
            (
                "start-first, old version not running: nothing to keep up, plain replace",
                &sf2,
                observed(vec![container(&one, "app", "web", Exited)], &["app:2"], &[]),
                vec![
                    "remove ef-dev-app-web",
                    "create ef-dev-app-web",
                    "start ef-dev-app-web",
                ],
            ),
            (
                "start-first, only the update order changed: nothing",
                &sf1,
                observed(
                    vec![container(&one, "app", "web", Running)],
                    &["app:1"],
                    &[],
                ),
                vec![],
            ),
            (
                "start-first, leftover new container (created, agent stopped): start, check, finish",
                &sf2,
                observed(
                    vec![
                        container(&one, "app", "web", Running),
                        next_of(&sf2, Created),
                    ],
                    &["app:2"],
                    &[],
                ),
                vec![
                    &start_next,
                    &await_next,
                    &stop_old,
                    "remove ef-dev-app-web",
                    "rename ef-dev-app-web-next to ef-dev-app-web",
                ],
            ),
            (
                "start-first, leftover new container running next to the old: check, finish",
                &sf2,
                observed(
                    vec![
                        container(&one, "app", "web", Running),
                        next_of(&sf2, Running),
                    ],
                    &["app:2"],
                    &[],
                ),
                vec![
                    &await_next,
                    &stop_old,
                    "remove ef-dev-app-web",
                    "rename ef-dev-app-web-next to ef-dev-app-web",
                ],
            ),
            (
                "start-first, old one gone but not yet renamed: rename",
                &sf2,
                observed(vec![next_of(&sf2, Running)], &["app:2"], &[]),
                vec!["rename ef-dev-app-web-next to ef-dev-app-web"],
            ),
            (
                "start-first, old one stopped but not removed: remove it, rename",
                &sf2,
                observed(
                    vec![
                        container(&one, "app", "web", Exited),
                        next_of(&sf2, Running),
                    ],
                    &["app:2"],
                    &[],
                ),
                vec![
                    "remove ef-dev-app-web",
                    "rename ef-dev-app-web-next to ef-dev-app-web",
                ],
            ),
            (
                "stop-first now, leftover new container of an earlier start-first: keep it",
                &v2,
                observed(
                    vec![
                        container(&one, "app", "web", Running),
                        next_of(&v2, Created),
                    ],
                    &["app:2"],
                    &[],
                ),
                vec![
                    "stop ef-dev-app-web",
                    "remove ef-dev-app-web",
                    "rename ef-dev-app-web-next to ef-dev-app-web",
                    "start ef-dev-app-web",
                ],
            ),
            (
                "start-first, leftover of an older attempt (other config): replaced, old kept up",
                &sf3,
                observed(
                    vec![
                        container(&one, "app", "web", Running),
                        next_of(&sf2, Running),
                    ],
                    &["app:3"],
                    &[],
                ),
                vec![
                    "stop ef-dev-app-web-next",
                    "remove ef-dev-app-web-next",
                    "create ef-dev-app-web-next",
                    &start_next,
                    &await_next,
                    &stop_old,
                    "remove ef-dev-app-web",
                    "rename ef-dev-app-web-next to ef-dev-app-web",
                ],
            ),
            (
                "start-first, dead leftover with the desired config: removed, started over",
                &sf2,
                observed(
                    vec![container(&one, "app", "web", Running), next_of(&sf2, Dead)],
                    &["app:2"],
                    &[],
                ),
                vec![
                    "remove ef-dev-app-web-next",
                    "create ef-dev-app-web-next",
                    &start_next,
                    &await_next,
                    &stop_old,
                    "remove ef-dev-app-web",
                    "rename ef-dev-app-web-next to ef-dev-app-web",
                ],
            ),
            (
                "start-first, converged with a stale copy under the temporary name: removed",
                &sf2,
                observed(
                    vec![
                        container(&sf2, "app", "web", Running),
                        next_of(&one, Running),
                    ],
                    &["app:2"],
                    &[],
                ),
                vec!["stop ef-dev-app-web-next", "remove ef-dev-app-web-next"],
            ),
        ];
        let mut failures = Vec::new();
        for (name, d, obs, want) in &cases {
            let got: Vec<String> = plan(d, obs).iter().map(describe).collect();
            if got != *want {
                failures.push(format!("{name}:\n  want {want:?}\n  got  {got:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn findings_describe_drift() {
        let always = desired(vec![(
            "app",
            stack(vec![(
                "web",
                with_restart(svc("app:1"), RestartPolicy::Always),
            )]),
        )]);
        let stopped = plan(
            &always,
            &observed(
                vec![container(&always, "app", "web", Exited)],
                &["app:1"],
                &[],
            ),
        );
        assert_eq!(stopped[0].finding, Finding::NotRunning(Exited));
        assert_eq!(stopped[0].finding.to_string(), "container exited");
        assert_eq!(stopped[0].service.as_deref(), Some("web"));
        let removed = plan(&always, &observed(vec![], &["app:1"], &[]));
        assert!(removed.iter().all(|a| a.finding == Finding::Missing));
        let v2 = desired(vec![("app", stack(vec![("web", svc("app:2"))]))]);
        let changed = plan(
            &v2,
            &observed(
                vec![container(&always, "app", "web", Running)],
                &["app:2"],
                &[],
            ),
        );
        assert!(
            matches!(changed[0].finding, Finding::Changed { .. }),
            "{changed:?}"
        );
    }

    #[test]
    fn readiness_follows_the_healthcheck() {
        let secs = Duration::from_secs;
        assert_eq!(
            Readiness::for_service(&svc("a")),
            Readiness::Running {
                for_at_least: RUNNING_SETTLE
            }
        );
        // start_period 2 s + (3 + 1) × (1 s + 0.5 s) + margin 5 s.
        assert_eq!(
            Readiness::for_service(&with_healthcheck(svc("a"))),
            Readiness::Healthy { within: secs(13) }
        );
        let mut defaults = with_healthcheck(svc("a"));
        defaults.healthcheck = Some(HealthCheck {
            test: vec!["CMD", "true"].into_iter().map(String::from).collect(),
            interval_ms: None,
            timeout_ms: None,
            retries: None,
            start_period_ms: None,
        });
        // Docker's defaults: (3 + 1) × (30 s + 30 s) + 5 s.
        assert_eq!(
            Readiness::for_service(&defaults),
            Readiness::Healthy { within: secs(245) }
        );
        let mut slow = defaults.clone();
        if let Some(hc) = slow.healthcheck.as_mut() {
            hc.start_period_ms = Some(600_000);
        }
        assert_eq!(
            Readiness::for_service(&slow),
            Readiness::Healthy {
                within: HEALTHY_WAIT_MAX
            }
        );
        let mut disabled = defaults;
        if let Some(hc) = disabled.healthcheck.as_mut() {
            hc.test = vec!["NONE".into()];
        }
        assert!(matches!(
            Readiness::for_service(&disabled),
            Readiness::Running { .. }
        ));
    }

    #[test]
    fn start_first_new_container_carries_the_desired_config() {
        let one = desired(vec![("app", stack(vec![("web", svc("app:1"))]))]);
        let sf2 = desired(vec![(
            "app",
            stack(vec![("web", start_first(svc("app:2")))]),
        )]);
        let actions = plan(
            &sf2,
            &observed(
                vec![container(&one, "app", "web", Running)],
                &["app:2"],
                &[],
            ),
        );
        let Op::Create(spec) = &actions[0].op else {
            panic!("{actions:?}")
        };
        assert_eq!(
            spec.name,
            crate::container::next_container_name(DEV, "app", "web")
        );
        assert_eq!(
            spec.labels[LABEL_CONFIG_HASH],
            sf2.stacks["app"].services["web"].config_hash()
        );
        assert!(actions.iter().all(|a| a.service.as_deref() == Some("web")));
        assert!(
            actions
                .iter()
                .all(|a| matches!(a.finding, Finding::Changed { .. }))
        );
    }

    #[test]
    fn created_container_carries_the_desired_config() {
        let d = desired(vec![("app", stack(vec![("web", svc("app:1"))]))]);
        let actions = plan(&d, &observed(vec![], &["app:1"], &[]));
        let Op::Create(spec) = &actions[0].op else {
            panic!("{actions:?}")
        };
        assert_eq!(
            spec.labels[LABEL_CONFIG_HASH],
            d.stacks["app"].services["web"].config_hash()
        );
        assert_eq!(spec.image, "app:1");
    }
}
