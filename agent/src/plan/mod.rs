//! The planner: a pure function from the desired state and what the engine holds to the
//! ordered actions that make the engine match. No I/O, no clock, no memory of earlier passes:
//! the reconciler calls it on a fresh observation every pass, so a restarted agent plans
//! exactly what a running one would (and an unchanged container is never recreated).
//!
//! A changed service is replaced in its `update_order`: `stop-first` (old out, new in) or
//! `start-first` (new in under a temporary name, wait until it is ready, old out, rename). An
//! action that may leave two versions running if it fails carries the `undo` that takes the
//! new one back, so a failed pass always ends with the old version alone.
//!
//! This file owns the plan's vocabulary ([`Observed`], [`Action`], [`Op`], [`Finding`],
//! [`Readiness`]) and [`plan`] itself: what is unwanted, which volumes are missing, and for
//! each service whether it is missing, changed, stopped or fine. How a changed service is
//! replaced lives in `replace.rs`; the table tests in `tests.rs`.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::spec::{DependsCondition, ServiceSpec, StackSpec, UpdateOrder};
use edgefleet_protocol::status::ContainerState;

use crate::container::{ContainerSpec, next_container_name, stack_volumes, volume_name};
use crate::runtime::ContainerInfo;

mod replace;

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
    /// Networks the agent created for this device.
    pub networks: BTreeSet<String>,
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
    /// Creates a stack's named volume with the file's `driver` and `driver_opts` (an NFS
    /// share, a tmpfs: where the data lives).
    EnsureVolume {
        name: String,
        options: edgefleet_protocol::spec::VolumeOptions,
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
    /// Removes a network this agent created that no desired service joins any more (a
    /// stack removed, a network dropped from one); best effort: a container someone else
    /// attached keeps it, and that fails nothing.
    RemoveNetwork {
        name: String,
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
    /// A network of this device that no desired service joins.
    UnwantedNetwork,
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
            Finding::UnwantedNetwork => write!(f, "network not in the desired state"),
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
            Op::EnsureVolume { name, .. } => write!(f, "volume {name}"),
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
            Op::RemoveNetwork { name } => write!(f, "remove network {name}"),
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
    // Last, once every container that could use them is gone.
    let wanted = crate::container::desired_networks(&desired.device, desired);
    for name in observed.networks.difference(&wanted) {
        p.push(
            "(networks)",
            None,
            Op::RemoveNetwork { name: name.clone() },
            Finding::UnwantedNetwork,
        );
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
            let options = stack
                .volume_options
                .get(volume)
                .cloned()
                .unwrap_or_default();
            if options.external {
                // Exists on the device under its own name; never created by the agent.
                continue;
            }
            let name = volume_name(self.device, stack_name, volume);
            if !self.observed.volumes.contains(&name) {
                self.push(
                    stack_name,
                    None,
                    Op::EnsureVolume { name, options },
                    Finding::VolumeMissing,
                );
            }
        }
        for service in order {
            if let Some(svc) = stack.services.get(service) {
                // Compose's `depends_on` conditions hold back a service's first container
                // until its dependencies are healthy (or have run to completion); the loop is
                // woken again by the engine's health events.
                if self
                    .observed
                    .service_containers(stack_name, service)
                    .is_empty()
                    && !self.dependencies_ready(stack_name, svc)
                {
                    continue;
                }
                self.service(stack_name, stack, service, svc);
            }
        }
    }

    fn dependencies_ready(&self, stack_name: &str, svc: &ServiceSpec) -> bool {
        svc.extra.depends_conditions.iter().all(|(dep, cond)| {
            self.observed
                .service_containers(stack_name, dep)
                .iter()
                .any(|c| match cond {
                    DependsCondition::ServiceHealthy => {
                        c.is_active() && c.health == edgefleet_protocol::status::Health::Healthy
                    }
                    DependsCondition::ServiceCompletedSuccessfully => {
                        c.state == ContainerState::Exited
                    }
                })
        })
    }

    fn service(&mut self, stack_name: &str, stack: &StackSpec, service: &str, svc: &ServiceSpec) {
        let want_hash = svc.config_hash();
        let want_name = ContainerSpec::docker_name(self.device, stack_name, service, svc);
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

#[cfg(test)]
mod tests;
