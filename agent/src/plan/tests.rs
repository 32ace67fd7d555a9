//! The planner's table tests: what each observation of the engine plans, drift findings,
//! readiness bounds and the config a created container carries.

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
        volume_options: Default::default(),
        networks: Default::default(),
        deployment: "app".into(),
        deployment_revision: 1,
        volumes: volumes.into_iter().collect(),
        services: services
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect(),
        configs: Default::default(),
        secrets: Default::default(),
    }
}

fn desired(stacks: Vec<(&str, StackSpec)>) -> DesiredState {
    let stacks: BTreeMap<String, std::sync::Arc<StackSpec>> = stacks
        .into_iter()
        .map(|(n, mut s)| {
            s.deployment = n.to_string();
            (n.to_string(), s.into())
        })
        .collect();
    DesiredState::new(DEV, 1, stacks)
}

/// A container as the planner would have created it for `stack`/`service` of `d`.
fn container(d: &DesiredState, stack: &str, service: &str, state: ContainerState) -> ContainerInfo {
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
        networks: Default::default(),
    }
}

/// A network this agent created that no desired service joins any more (the stack was
/// removed, or the network dropped from it) is removed last, after the containers; one a
/// desired service still joins, and external ones (never listed: not ours), are kept.
#[test]
fn networks_no_desired_service_joins_are_removed_last() {
    let one = desired(vec![("app", stack(vec![("web", svc("app:1"))]))]);
    let keep = crate::container::network_name(DEV, "app", "default");
    let gone = crate::container::network_name(DEV, "old", "default");
    let mut seen = observed(Vec::new(), &["app:1"], &[]);
    seen.networks = [keep.clone(), gone.clone()].into();
    let actions = plan(&one, &seen);
    let removals: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a.op, Op::RemoveNetwork { .. }))
        .collect();
    assert_eq!(removals.len(), 1, "{actions:?}");
    assert_eq!(removals[0].op, Op::RemoveNetwork { name: gone });
    assert!(
        matches!(
            actions.last().map(|a| &a.op),
            Some(Op::RemoveNetwork { .. })
        ),
        "network removal comes last: {actions:?}"
    );
    assert_eq!(crate::container::desired_networks(DEV, &one), [keep].into());
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

/// A named volume is created with the file's driver options; an external one is never
/// created by the agent (it exists on the device under its own name).
#[test]
fn volumes_carry_their_driver_options_and_external_ones_are_left_alone() {
    use edgefleet_protocol::spec::VolumeOptions;
    let mut st = stack(vec![("web", svc("app:1"))]);
    st.volumes = vec!["nfs".into(), "plant".into()];
    let nfs = VolumeOptions {
        driver: Some("local".into()),
        driver_opts: [("type".to_owned(), "nfs".to_owned())].into(),
        ..Default::default()
    };
    st.volume_options.insert("nfs".into(), nfs.clone());
    st.volume_options.insert(
        "plant".into(),
        VolumeOptions {
            external: true,
            name: Some("plantdata".into()),
            ..Default::default()
        },
    );
    let d = desired(vec![("app", st)]);
    let actions = plan(&d, &observed(Vec::new(), &["app:1"], &[]));
    let volumes: Vec<_> = actions
        .iter()
        .filter_map(|a| match &a.op {
            Op::EnsureVolume { name, options } => Some((name.clone(), options.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        volumes,
        vec![(crate::container::volume_name(DEV, "app", "nfs"), nfs)],
        "{actions:?}"
    );
}
