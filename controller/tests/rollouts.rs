//! Rollouts driven through the controller itself (store, pins, the loop's tick), with
//! simulated agents that answer every desired document with a status: the wiring between
//! the pure rollout engine and the controller, without a broker or Docker.

use std::collections::BTreeMap;

use edgefleet_controller::App;
use edgefleet_controller::services::deployments::ApplyRequest;
use edgefleet_controller::services::outbox::Outgoing;
use edgefleet_controller::services::rollouts::{Control, StartRequest};
use edgefleet_protocol::codec::encode;
use edgefleet_protocol::status::{
    ContainerState, ConvergenceState, DeviceStatus, Health, ServiceStatus, StackStatus,
};
use edgefleet_protocol::topics::TopicKind;
use serde_json::json;

const N: usize = 5;

async fn setup() -> (
    App,
    tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = App::open(dir.path()).await.unwrap();
    let rx = c.outgoing.take().unwrap();
    for i in 0..N {
        let id = format!("d{i}");
        let p = json!({"schema": 1, "device": id, "state": "online", "session": 1, "labels": {"site": "lyon", "line": format!("{}", i % 2)},
                       "agent_version": "t", "since": "t"});
        c.intake
            .on_message(
                &TopicKind::DevicePresence.for_device(&id),
                p.to_string().as_bytes(),
            )
            .await;
    }
    (c, rx, dir)
}

fn compose(image: &str) -> String {
    format!(
        "services:\n  app:\n    image: {image}\nx-edgefleet-rollout:\n  canary: 1\n  batch: 2\n  soak: 0s\n  health_timeout: 60s\n"
    )
}

async fn apply(c: &App, image: &str) -> serde_json::Value {
    let req = ApplyRequest {
        variables: Default::default(),
        files: Default::default(),
        dry_run: false,
        name: "web".into(),
        target: "site=lyon".into(),
        compose: compose(image),
    };
    serde_json::to_value(c.deployments.apply(&req, "test").await.unwrap()).unwrap()
}

/// Every device reports its current desired document as applied; images named `bad:*`
/// exit at start.
async fn agents_report(c: &App) {
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
            platform: None,
        };
        c.intake
            .on_message(&TopicKind::DeviceStatus.for_device(&id), &encode(&status))
            .await;
    }
}

/// `n` passes of the loop, the simulated agents answering after each.
async fn passes(c: &App, n: usize) {
    for _ in 0..n {
        c.rollouts.tick().await;
        agents_report(c).await;
    }
}

fn running_revisions(c: &App) -> BTreeMap<String, u64> {
    (0..N)
        .map(|i| {
            let id = format!("d{i}");
            let rev = c.fleet.get(&id).unwrap().desired.unwrap().stacks["web"].deployment_revision;
            (id, rev)
        })
        .collect()
}

#[tokio::test]
async fn staged_apply_holds_devices_and_a_rollout_moves_them_wave_by_wave() {
    let (c, mut rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    agents_report(&c).await;
    let out = apply(&c, "app:2").await;
    assert_eq!(
        out["held"].as_array().map(Vec::len),
        Some(N),
        "staged: every device held on revision 1"
    );
    assert!(running_revisions(&c).values().all(|r| *r == 1));

    let view = c
        .rollouts
        .start(
            &StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: None,
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(
        view.rollout.waves.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1, 2, 2]
    );
    let busy = c
        .rollouts
        .start(
            &StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: None,
            },
            "test",
        )
        .await;
    assert!(
        busy.unwrap_err().to_string().contains("still running"),
        "no two rollouts of one deployment"
    );

    let mut max_moved_at_once = 0;
    let mut last = running_revisions(&c);
    for _ in 0..30 {
        c.rollouts.tick().await;
        let now = running_revisions(&c);
        let moved = now.iter().filter(|(d, r)| last[*d] != **r).count();
        max_moved_at_once = max_moved_at_once.max(moved);
        last = now;
        agents_report(&c).await;
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
    let done = c.rollouts.get(view.id).await.unwrap();
    assert_eq!(
        serde_json::to_value(&done.rollout.state).unwrap()["state"],
        "succeeded"
    );
    // The rollout's retained topic is queued once however often it changed while nothing was
    // sent (the queue coalesces), and what goes out is the latest state: succeeded.
    let topic = edgefleet_protocol::topics::rollout_status(view.id);
    let mut queued = 0;
    while let Ok(job) = rx.try_recv() {
        if let Outgoing::Retained(t) = job
            && t == topic
        {
            queued += 1;
        }
    }
    assert_eq!(queued, 1, "coalesced while unsent");
    let published: serde_json::Value =
        serde_json::from_slice(&c.outbox.take_retained(&topic).unwrap()).unwrap();
    assert_eq!(published["state"]["state"], "succeeded");
    assert!(c.outbox.take_retained(&topic).is_none());
    // Every state change is in the audit log, and the chain holds.
    let transitions: Vec<(serde_json::Value, serde_json::Value)> = c
        .store
        .audit_records(&Default::default())
        .await
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
    assert!(c.audit.verify_full().await.unwrap().ok);
}

#[tokio::test]
async fn a_bad_revision_stops_after_the_canary_and_rolls_it_back() {
    let (c, _rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    agents_report(&c).await;
    apply(&c, "bad:2").await;
    let view = c
        .rollouts
        .start(
            &StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: None,
            },
            "test",
        )
        .await
        .unwrap();
    passes(&c, 30).await;
    let failed = c.rollouts.get(view.id).await.unwrap();
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
    let all = c.rollouts.list().await.unwrap();
    assert!(
        all.iter().any(|r| r.created_by.starts_with("rollback")),
        "the rollback is recorded as its own rollout"
    );
}

#[tokio::test]
async fn nonsense_is_refused_and_nothing_changes() {
    let (c, _rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    agents_report(&c).await;
    apply(&c, "app:2").await;
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
        let e = c
            .rollouts
            .start(&req, "test")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    assert!(c.rollouts.list().await.unwrap().is_empty());
    assert!(running_revisions(&c).values().all(|r| *r == 1));
}

#[tokio::test]
async fn a_closed_maintenance_window_holds_the_wave_until_it_opens() {
    let (c, _rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    agents_report(&c).await;
    apply(&c, "app:2").await;
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
    c.windows
        .set("lyon", Some((&window(h + 2, h + 3), "UTC")))
        .await
        .unwrap();
    assert!(
        c.windows
            .set("lyon", Some(("Someday 10:00-11:00", "UTC")))
            .await
            .is_err(),
        "invalid windows are refused"
    );
    let view = c
        .rollouts
        .start(
            &StartRequest {
                deployment: "web".into(),
                revision: None,
                strategy: None,
            },
            "test",
        )
        .await
        .unwrap();
    passes(&c, 3).await;
    let waiting = c.rollouts.get(view.id).await.unwrap();
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
    c.windows
        .set("lyon", Some((&window(h - 1, h + 1), "UTC")))
        .await
        .unwrap();
    passes(&c, 30).await;
    assert!(running_revisions(&c).values().all(|r| *r == 2));
}

#[tokio::test]
async fn pause_resume_and_an_operator_rollback() {
    let (c, _rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    agents_report(&c).await;
    apply(&c, "app:2").await;
    let start = StartRequest {
        deployment: "web".into(),
        revision: None,
        strategy: None,
    };
    let id = c.rollouts.start(&start, "test").await.unwrap().id;
    c.rollouts.control(id, Control::Pause).await.unwrap();
    passes(&c, 5).await;
    assert!(
        running_revisions(&c).values().all(|r| *r == 1),
        "a paused rollout moves nobody"
    );
    assert!(
        c.rollouts.control(id, Control::Pause).await.is_err(),
        "pausing twice is refused"
    );
    c.rollouts.control(id, Control::Resume).await.unwrap();
    passes(&c, 30).await;
    assert!(running_revisions(&c).values().all(|r| *r == 2));
    let back = c.rollouts.rollback(id, "operator").await.unwrap();
    assert!(back.created_by.starts_with("rollback"));
    passes(&c, 10).await;
    assert!(
        running_revisions(&c).values().all(|r| *r == 1),
        "{:?}",
        running_revisions(&c)
    );
}

fn start_latest() -> StartRequest {
    StartRequest {
        deployment: "web".into(),
        revision: None,
        strategy: None,
    }
}

fn state_of(v: &edgefleet_domain::rollout::view::RolloutView) -> String {
    serde_json::to_value(v).unwrap()["state"].to_string()
}

/// The loop's step and an operator's pause or abort, 100 times, with the step held open
/// between copying the rollout and saving it: the operator's action is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_pause_or_abort_during_a_step_is_never_lost() {
    let (c, _rx, _dir) = setup().await;
    apply(&c, "app:0").await;
    agents_report(&c).await;
    let c = std::sync::Arc::new(c);
    c.rollouts.set_step_hook(Some(std::sync::Arc::new(|| {
        Box::pin(async {
            // Widens the window: without one writer, the control lands here and the step
            // then saves its older copy over it.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        })
    })));
    for i in 1..=100 {
        apply(&c, &format!("app:{i}")).await;
        let id = c.rollouts.start(&start_latest(), "test").await.unwrap().id;
        let action = if i % 2 == 0 {
            Control::Pause
        } else {
            Control::Abort
        };
        let stepper = {
            let c = c.clone();
            tokio::spawn(async move { c.rollouts.tick().await })
        };
        // Let the step take its copy first (sometimes), then act.
        if i % 3 != 0 {
            tokio::task::yield_now().await;
        }
        c.rollouts.control(id, action).await.unwrap();
        stepper.await.unwrap();
        c.rollouts.tick().await;
        let now = c.rollouts.get(id).await.unwrap();
        match action {
            Control::Pause => {
                assert!(state_of(&now).contains("paused"), "iteration {i}: {now:?}");
                c.rollouts.control(id, Control::Abort).await.unwrap();
            }
            _ => assert!(state_of(&now).contains("aborted"), "iteration {i}: {now:?}"),
        }
        assert_eq!(c.rollouts.active_for("web"), None, "iteration {i}");
        agents_report(&c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_starts_give_one_rollout_and_one_conflict() {
    let (c, _rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    agents_report(&c).await;
    apply(&c, "app:2").await;
    let req = start_latest();
    let (a, b) = tokio::join!(c.rollouts.start(&req, "ana"), c.rollouts.start(&req, "bob"));
    let (ok, busy): (Vec<_>, Vec<_>) = [a, b].into_iter().partition(Result::is_ok);
    assert_eq!(ok.len(), 1);
    let err = busy.into_iter().next().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            edgefleet_controller::services::rollouts::RolloutError::Busy { .. }
        ),
        "{err}"
    );
    let api: edgefleet_controller::http::error::ApiError = err.into();
    assert_eq!(api.status(), axum::http::StatusCode::CONFLICT);
}

#[tokio::test]
async fn apply_and_delete_wait_for_an_active_rollout() {
    use edgefleet_controller::services::deployments::ApplyError;
    let (c, _rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    agents_report(&c).await;
    apply(&c, "app:2").await;
    let id = c.rollouts.start(&start_latest(), "test").await.unwrap().id;
    passes(&c, 2).await;
    let before = running_revisions(&c);
    let req = |image: &str| ApplyRequest {
        name: "web".into(),
        target: "site=lyon".into(),
        compose: compose(image),
        variables: Default::default(),
        files: Default::default(),
        dry_run: false,
    };
    match c.deployments.apply(&req("app:3"), "test").await {
        Err(ApplyError::RolloutActive { rollout, .. }) => assert_eq!(rollout, id),
        other => panic!("apply during a rollout: {other:?}"),
    }
    // The same file again changes nothing, so it is fine.
    let same = c.deployments.apply(&req("app:2"), "test").await.unwrap();
    assert!(!same.changed);
    assert!(matches!(
        c.deployments.delete("web").await,
        Err(ApplyError::RolloutActive { .. })
    ));
    assert_eq!(running_revisions(&c), before, "nothing moved");
    assert_eq!(
        c.store.deployment("web").await.unwrap().unwrap().revision,
        2
    );
    c.rollouts.control(id, Control::Abort).await.unwrap();
    assert!(
        c.deployments
            .apply(&req("app:3"), "test")
            .await
            .unwrap()
            .changed
    );
    assert!(c.deployments.delete("web").await.unwrap().is_some());
}

#[tokio::test]
async fn an_apply_whose_document_would_not_fit_on_the_bus_is_refused() {
    use edgefleet_controller::services::deployments::ApplyError;
    let (c, mut rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    while rx.try_recv().is_ok() {}
    // Each file is well within what apply takes; together they are more than the bus carries
    // to one device.
    let big = |name: &str| ApplyRequest {
        name: name.into(),
        target: "site=lyon".into(),
        compose: format!(
            "services:\n  app:\n    image: app:2\n    environment:\n      BLOB: {}\n",
            "x".repeat(400 * 1024)
        ),
        variables: Default::default(),
        files: Default::default(),
        dry_run: false,
    };
    c.deployments.apply(&big("blob-a"), "test").await.unwrap();
    c.deployments.apply(&big("blob-b"), "test").await.unwrap();
    while rx.try_recv().is_ok() {}
    let req = big("web");
    match c.deployments.apply(&req, "test").await {
        Err(e @ ApplyError::TooLarge { .. }) => {
            let text = e.to_string();
            assert!(text.contains("device 'd"), "names the device: {text}");
            let api: edgefleet_controller::http::error::ApiError = e.into();
            assert_eq!(api.status(), axum::http::StatusCode::BAD_REQUEST);
        }
        other => panic!("oversized apply: {other:?}"),
    }
    assert_eq!(
        c.store.deployment("web").await.unwrap().unwrap().revision,
        1
    );
    assert!(rx.try_recv().is_err(), "nothing queued for the bus");
    assert!(running_revisions(&c).values().all(|r| *r == 1));
}

/// An agent that refuses its desired revision is not sent it again every 10 s.
#[tokio::test]
async fn a_refused_revision_is_not_republished_by_the_watchdog() {
    let (c, _rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    for i in 0..N {
        c.fleet.mark_published(&format!("d{i}"));
    }
    let lagging = c.fleet.lagging(std::time::Duration::ZERO);
    assert_eq!(lagging.len(), N, "no device reported: all lag");
    let rev = c.fleet.get("d0").unwrap().desired_revision();
    let refusal = json!({"schema": 1, "device": "d0", "ts": "t", "kind": "desired_rejected", "severity": "error",
                         "revision": rev, "message": "desired document rejected: too large"});
    c.intake
        .on_message(
            &TopicKind::DeviceEvents.for_device("d0"),
            refusal.to_string().as_bytes(),
        )
        .await;
    let lagging = c.fleet.lagging(std::time::Duration::ZERO);
    assert!(!lagging.contains(&"d0".to_owned()), "{lagging:?}");
    assert_eq!(lagging.len(), N - 1);
    assert_eq!(c.fleet.get("d0").unwrap().refused_revision, Some(rev));
}

/// `apply --dry-run`: checked like an apply (a refused file is still refused), answered with
/// what would happen — the next revision, the devices, the devices a staged change would hold —
/// and nothing recorded, pinned or sent: the real apply afterwards records that very revision.
#[tokio::test]
async fn a_dry_run_says_what_an_apply_would_do_and_changes_nothing() {
    let (c, mut rx, _dir) = setup().await;
    apply(&c, "app:1").await;
    agents_report(&c).await;
    while rx.try_recv().is_ok() {}
    let req = |image: &str, dry_run: bool| ApplyRequest {
        name: "web".into(),
        target: "site=lyon".into(),
        compose: compose(image),
        variables: Default::default(),
        files: Default::default(),
        dry_run,
    };
    let before = running_revisions(&c);
    let dry = c
        .deployments
        .apply(&req("app:2", true), "test")
        .await
        .unwrap();
    assert!(dry.dry_run && dry.changed, "{dry:?}");
    assert_eq!(dry.revision, 2);
    assert_eq!(dry.devices.len(), N, "{dry:?}");
    assert_eq!(
        dry.held.len(),
        N,
        "a staged change would hold every device: {dry:?}"
    );
    assert_eq!(
        c.store.deployment("web").await.unwrap().unwrap().revision,
        1
    );
    assert_eq!(running_revisions(&c), before, "nothing moved");
    assert!(rx.try_recv().is_err(), "nothing was queued for the bus");
    let same = c
        .deployments
        .apply(&req("app:1", true), "test")
        .await
        .unwrap();
    assert!(
        same.dry_run && !same.changed && same.revision == 1,
        "{same:?}"
    );
    let mut bad = req("app:2", true);
    bad.compose = "services:\n  app:\n    image: app:2\n    pid: host\n".into();
    c.deployments
        .apply(&bad, "test")
        .await
        .expect_err("refused in a dry run too");
    let real = c
        .deployments
        .apply(&req("app:2", false), "test")
        .await
        .unwrap();
    assert!(
        !real.dry_run && real.changed && real.revision == dry.revision,
        "{real:?}"
    );
    assert_eq!(real.held, dry.held);
}
