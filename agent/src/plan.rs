//! The planner: a pure function from the desired state and what the engine holds to the
//! ordered actions that make the engine match. No I/O, no clock, no memory of earlier passes:
//! the reconciler calls it on a fresh observation every pass, so a restarted agent plans
//! exactly what a running one would (and an unchanged container is never recreated).

use std::collections::BTreeSet;
use std::fmt;

use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::spec::{ServiceSpec, StackSpec};
use edgefleet_protocol::status::ContainerState;

use crate::container::{ContainerSpec, container_name, stack_volumes, volume_name};
use crate::runtime::ContainerInfo;

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
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::EnsureVolume { name } => write!(f, "volume {name}"),
            Op::Pull { image } => write!(f, "pull {image}"),
            Op::Create(spec) => write!(f, "create {}", spec.name),
            Op::Start { name, .. } => write!(f, "start {name}"),
            Op::Stop { name, .. } => write!(f, "stop {name}"),
            Op::Remove { name, .. } => write!(f, "remove {name}"),
        }
    }
}

/// Plans the actions that make `observed` match `desired`, in execution order:
/// 1. containers of this device that are not desired (or have no edgefleet labels) are
///    stopped and removed first, freeing names and ports;
/// 2. for each stack: missing named volumes are created (never removed: data), then each
///    service in dependency order is created, replaced or started as needed.
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
        self.actions.push(Action {
            stack: stack.to_owned(),
            service: service.map(str::to_owned),
            op,
            finding,
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
        let mine = self.observed.service_containers(stack_name, service);
        let Some(current) = current_container(&mine, &want_hash, &want_name) else {
            let finding = match mine.first() {
                None => Finding::Missing,
                Some(old) => Finding::Changed {
                    found: old.config_hash().map(str::to_owned),
                    want: want_hash.clone(),
                },
            };
            self.replace_stop_first(stack_name, stack, service, svc, &mine, finding);
            return;
        };
        for dup in mine.iter().filter(|c| c.id != current.id) {
            self.retire(stack_name, Some(service), dup, Finding::Duplicate);
        }
        let finding = Finding::NotRunning(current.state);
        match current.state {
            ContainerState::Created => self.start(stack_name, service, current, finding),
            ContainerState::Exited if svc.restart.keeps_running() => {
                self.start(stack_name, service, current, finding)
            }
            ContainerState::Dead => {
                self.replace_stop_first(stack_name, stack, service, svc, &[current], finding)
            }
            // Running/restarting/paused: the engine owns it. Exited with restart `no` or
            // `on-failure`: the service ended as its policy allows; report, do not restart.
            _ => {}
        }
    }

    /// Replaces a service's containers (`old`, possibly none) by one with the desired config:
    /// pull first (a failed pull leaves the old container running), then stop and remove the
    /// old ones, then create and start the new one. This is Compose's `stop-first` order;
    /// `start-first` (new healthy before old stops) plugs in here once the spec carries an
    /// update order, with the new container under a temporary name.
    fn replace_stop_first(
        &mut self,
        stack_name: &str,
        stack: &StackSpec,
        service: &str,
        svc: &ServiceSpec,
        old: &[&ContainerInfo],
        finding: Finding,
    ) {
        if !self.observed.images.contains(&svc.image) && self.pulls.insert(svc.image.clone()) {
            let op = Op::Pull {
                image: svc.image.clone(),
            };
            self.push(stack_name, Some(service), op, Finding::ImageMissing);
        }
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

    fn start(&mut self, stack: &str, service: &str, c: &ContainerInfo, finding: Finding) {
        let op = Op::Start {
            container: c.id.clone(),
            name: c.name.clone(),
        };
        self.push(stack, Some(service), op, finding);
    }

    /// Stops (if needed) and removes a container.
    fn retire(&mut self, stack: &str, service: Option<&str>, c: &ContainerInfo, finding: Finding) {
        if c.state == ContainerState::Removing {
            return;
        }
        if c.is_active() {
            let op = Op::Stop {
                container: c.id.clone(),
                name: c.name.clone(),
            };
            self.push(stack, service, op, finding.clone());
        }
        let op = Op::Remove {
            container: c.id.clone(),
            name: c.name.clone(),
        };
        self.push(stack, service, op, finding);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{LABEL_CONFIG_HASH, LABEL_SERVICE, LABEL_STACK};
    use edgefleet_protocol::spec::{RestartPolicy, VolumeKind, VolumeMount};
    use std::collections::BTreeMap;

    const DEV: &str = "dev";

    fn svc(image: &str) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({ "image": image })).unwrap()
    }

    fn with_restart(mut s: ServiceSpec, r: RestartPolicy) -> ServiceSpec {
        s.restart = r;
        s
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
        ];
        let mut failures = Vec::new();
        for (name, d, obs, want) in &cases {
            let got: Vec<String> = plan(d, obs)
                .iter()
                .map(|a| crate::container::unhash(&a.to_string()))
                .collect();
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
