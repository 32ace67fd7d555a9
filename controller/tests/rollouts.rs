//! Rollouts driven through the controller itself (store, pins, the loop's tick), with
//! simulated agents that answer every desired document with a status: the wiring between
//! the pure rollout engine and the controller, without a broker or Docker.

use std::collections::BTreeMap;

use edgefleet_controller::core::{ApplyRequest, Controller, Outgoing};
use edgefleet_controller::rollouts::StartRequest;
use edgefleet_controller::store::Store;
use edgefleet_protocol::codec::encode;
use edgefleet_protocol::status::{
    ContainerState, ConvergenceState, DeviceStatus, Health, ServiceStatus, StackStatus,
};
use edgefleet_protocol::topics::TopicKind;
use serde_json::json;

const N: usize = 5;

fn setup() -> (
    Controller,
    tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let (c, rx) = Controller::new(Store::open(&dir.path().join("s.db")).unwrap()).unwrap();
    for i in 0..N {
        let id = format!("d{i}");
        let p = json!({"schema": 1, "device": id, "state": "online", "session": 1, "labels": {"site": "lyon", "line": format!("{}", i % 2)},
                       "agent_version": "t", "since": "t"});
        c.on_message(
            &TopicKind::DevicePresence.for_device(&id),
            p.to_string().as_bytes(),
        );
    }
    (c, rx, dir)
}

fn compose(image: &str) -> String {
    format!(
        "services:\n  app:\n    image: {image}\nx-edgefleet-rollout:\n  canary: 1\n  batch: 2\n  soak: 0s\n  health_timeout: 60s\n"
    )
}

fn apply(c: &Controller, image: &str) -> serde_json::Value {
    let req = ApplyRequest {
        name: "web".into(),
        target: "site=lyon".into(),
        compose: compose(image),
    };
    serde_json::to_value(c.apply(&req, "test").unwrap()).unwrap()
}

/// Every device reports its current desired document as applied; images named `bad:*`
/// exit at start.
fn agents_report(c: &Controller) {
    for i in 0..N {
        let id = format!("d{i}");
        let Some(d) = c.fleet.get(&id).and_then(|v| v.desired) else {
            continue;
        };
        let stacks = d
            .stacks
            .iter()
            .map(|(name, st)| {
                let services = st
                    .services
                    .iter()
                    .map(|(s, spec)| {
                        let bad = spec.image.starts_with("bad");
                        (
                            s.clone(),
                            ServiceStatus {
                                image: spec.image.clone(),
                                image_id: None,
                                container_id: Some("c".into()),
                                state: if bad {
                                    ContainerState::Exited
                                } else {
                                    ContainerState::Running
                                },
                                health: Health::None,
                                restart_count: 0,
                                last_error: None,
                                config_hash: None,
                            },
                        )
                    })
                    .collect();
                (
                    name.clone(),
                    StackStatus {
                        deployment_revision: st.deployment_revision,
                        services,
                    },
                )
            })
            .collect();
        let status = DeviceStatus {
            schema: 1,
            device: id.clone(),
            observed_revision: d.revision,
            desired_revision: d.revision,
            state: ConvergenceState::Converged,
            stacks,
            last_error: None,
            agent_version: "t".into(),
            updated_at: "t".into(),
        };
        c.on_message(&TopicKind::DeviceStatus.for_device(&id), &encode(&status));
    }
}

/// `n` passes of the loop, the simulated agents answering after each.
fn passes(c: &Controller, n: usize) {
    for _ in 0..n {
        c.rollouts.tick(c);
        agents_report(c);
    }
}

fn running_revisions(c: &Controller) -> BTreeMap<String, u64> {
    (0..N)
        .map(|i| {
            let id = format!("d{i}");
            let rev = c.fleet.get(&id).unwrap().desired.unwrap().stacks["web"].deployment_revision;
            (id, rev)
        })
        .collect()
}

#[test]
fn staged_apply_holds_devices_and_a_rollout_moves_them_wave_by_wave() {
    let (c, mut rx, _dir) = setup();
    apply(&c, "app:1");
    agents_report(&c);
    let out = apply(&c, "app:2");
    assert_eq!(
        out["held"].as_array().map(Vec::len),
        Some(N),
        "staged: every device held on revision 1"
    );
    assert!(running_revisions(&c).values().all(|r| *r == 1));

    let view = c
        .rollouts
        .start(
            &c,
            &StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: None,
            },
            "test",
        )
        .unwrap();
    assert_eq!(
        view.rollout.waves.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1, 2, 2]
    );
    let busy = c.rollouts.start(
        &c,
        &StartRequest {
            deployment: "web".into(),
            revision: None,
            strategy: None,
        },
        "test",
    );
    assert!(
        busy.unwrap_err().to_string().contains("still running"),
        "no two rollouts of one deployment"
    );

    let mut max_moved_at_once = 0;
    let mut last = running_revisions(&c);
    for _ in 0..30 {
        c.rollouts.tick(&c);
        let now = running_revisions(&c);
        let moved = now.iter().filter(|(d, r)| last[*d] != **r).count();
        max_moved_at_once = max_moved_at_once.max(moved);
        last = now;
        agents_report(&c);
    }
    assert!(
        running_revisions(&c).values().all(|r| *r == 2),
        "{:?}",
        running_revisions(&c)
    );
    assert!(
        max_moved_at_once <= 2,
        "never more devices moved at once than a wave"
    );
    let done = c.rollouts.get(&c, view.id).unwrap();
    assert_eq!(
        serde_json::to_value(&done.rollout.state).unwrap()["state"],
        "succeeded"
    );
    // Every change went to the rollout's retained topic; the last one says it succeeded.
    let topic = edgefleet_protocol::topics::rollout_status(view.id);
    let mut published = Vec::new();
    while let Ok(job) = rx.try_recv() {
        if let Outgoing::Retained { topic: t, payload } = job
            && t == topic
        {
            published.push(serde_json::from_slice::<serde_json::Value>(&payload).unwrap());
        }
    }
    assert!(
        published.len() > 3,
        "{} progress documents",
        published.len()
    );
    assert_eq!(published.last().unwrap()["state"]["state"], "succeeded");
    // Every state change is in the audit log, and the chain holds.
    let transitions: Vec<(serde_json::Value, serde_json::Value)> = c
        .store()
        .audit_records(&Default::default())
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "rollout.transition" && r.target == view.id.to_string())
        .map(|r| {
            let d: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
            assert_eq!((r.actor.as_str(), r.site.as_str()), ("system", "lyon"));
            (d["from"].clone(), d["to"].clone())
        })
        .collect();
    assert_eq!(
        transitions,
        vec![
            (json!(null), json!("running")),
            (json!("running"), json!("succeeded"))
        ]
    );
    assert!(c.store().audit_verify().unwrap().ok);
}

#[test]
fn a_bad_revision_stops_after_the_canary_and_rolls_it_back() {
    let (c, _rx, _dir) = setup();
    apply(&c, "app:1");
    agents_report(&c);
    apply(&c, "bad:2");
    let view = c
        .rollouts
        .start(
            &c,
            &StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: None,
            },
            "test",
        )
        .unwrap();
    passes(&c, 30);
    let failed = c.rollouts.get(&c, view.id).unwrap();
    let state = serde_json::to_value(&failed.rollout.state).unwrap();
    assert_eq!(state["state"], "failed", "{state}");
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("container exited"),
        "{state}"
    );
    assert!(
        running_revisions(&c).values().all(|r| *r == 1),
        "canary rolled back, nobody else touched: {:?}",
        running_revisions(&c)
    );
    let all = c.rollouts.list(&c).unwrap();
    assert!(
        all.iter().any(|r| r.created_by.starts_with("rollback")),
        "the rollback is recorded as its own rollout"
    );
}

#[test]
fn nonsense_is_refused_and_nothing_changes() {
    let (c, _rx, _dir) = setup();
    apply(&c, "app:1");
    agents_report(&c);
    apply(&c, "app:2");
    for (req, needle) in [
        (
            StartRequest {
                deployment: "nope".into(),
                revision: None,
                strategy: None,
            },
            "no deployment",
        ),
        (
            StartRequest {
                deployment: "web".into(),
                revision: Some(9),
                strategy: None,
            },
            "no revision 9",
        ),
        (
            StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: Some(json!({"batch": "0"})),
            },
            "'batch'",
        ),
        (
            StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: Some(json!({"max_failures": "150%"})),
            },
            "'max_failures'",
        ),
        (
            StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: Some(json!({"on_failure": "panic"})),
            },
            "on_failure",
        ),
        (
            StartRequest {
                deployment: "web".into(),
                revision: Some(1),
                strategy: None,
            },
            "already runs revision 1",
        ),
    ] {
        let e = c.rollouts.start(&c, &req, "test").unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    assert!(c.rollouts.list(&c).unwrap().is_empty());
    assert!(running_revisions(&c).values().all(|r| *r == 1));
}

#[test]
fn a_closed_maintenance_window_holds_the_wave_until_it_opens() {
    let (c, _rx, _dir) = setup();
    apply(&c, "app:1");
    agents_report(&c);
    apply(&c, "app:2");
    let h = i32::from(
        jiff::Timestamp::now()
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .hour(),
    );
    let window = |from: i32, to: i32| {
        format!(
            "daily {:02}:00-{:02}:00",
            from.rem_euclid(24),
            to.rem_euclid(24)
        )
    };
    c.set_site_window("lyon", Some((&window(h + 2, h + 3), "UTC")))
        .unwrap();
    assert!(
        c.set_site_window("lyon", Some(("Someday 10:00-11:00", "UTC")))
            .is_err(),
        "invalid windows are refused"
    );
    let view = c
        .rollouts
        .start(
            &c,
            &StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: None,
            },
            "test",
        )
        .unwrap();
    passes(&c, 3);
    let waiting = c.rollouts.get(&c, view.id).unwrap();
    assert!(
        running_revisions(&c).values().all(|r| *r == 1),
        "nothing moves while the window is closed"
    );
    assert!(
        waiting
            .rollout
            .waiting
            .unwrap_or_default()
            .contains("maintenance window"),
        "the status says why it waits"
    );
    // The window opens.
    c.set_site_window("lyon", Some((&window(h - 1, h + 1), "UTC")))
        .unwrap();
    passes(&c, 30);
    assert!(running_revisions(&c).values().all(|r| *r == 2));
}

#[test]
fn pause_resume_and_an_operator_rollback() {
    let (c, _rx, _dir) = setup();
    apply(&c, "app:1");
    agents_report(&c);
    apply(&c, "app:2");
    let start = StartRequest {
        deployment: "web".into(),
        revision: None,
        strategy: None,
    };
    let id = c.rollouts.start(&c, &start, "test").unwrap().id;
    c.rollouts.control(&c, id, "pause").unwrap();
    passes(&c, 5);
    assert!(
        running_revisions(&c).values().all(|r| *r == 1),
        "a paused rollout moves nobody"
    );
    assert!(
        c.rollouts.control(&c, id, "pause").is_err(),
        "pausing twice is refused"
    );
    c.rollouts.control(&c, id, "resume").unwrap();
    passes(&c, 30);
    assert!(running_revisions(&c).values().all(|r| *r == 2));
    let back = c.rollouts.rollback(&c, id, "operator").unwrap();
    assert!(back.created_by.starts_with("rollback"));
    passes(&c, 10);
    assert!(
        running_revisions(&c).values().all(|r| *r == 1),
        "{:?}",
        running_revisions(&c)
    );
}
