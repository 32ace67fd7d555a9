//! What the controller takes from the bus, without a broker: presence creates devices,
//! strays are refused, and a device holding a newer revision than the store gets its
//! document reissued above it.

use edgefleet_controller::App;
use edgefleet_controller::services::deployments::ApplyRequest;
use edgefleet_controller::services::outbox::Outgoing;
use edgefleet_protocol::topics::{self, TopicKind};
use serde_json::json;

async fn controller() -> (
    App,
    tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = App::open(dir.path()).await.unwrap();
    let rx = c.outgoing.take().unwrap();
    (c, rx, dir)
}

fn presence(id: &str, site: &str) -> Vec<u8> {
    json!({"schema": 1, "device": id, "state": "online", "session": 1, "labels": {"site": site},
           "agent_version": "t", "since": "t"})
    .to_string()
    .into_bytes()
}

fn status(id: &str, desired: u64) -> Vec<u8> {
    json!({"schema": 1, "device": id, "observed_revision": desired, "desired_revision": desired,
           "state": "converged", "stacks": {}, "agent_version": "t", "updated_at": "t"})
    .to_string()
    .into_bytes()
}

fn event(id: &str) -> Vec<u8> {
    json!({"schema": 1, "device": id, "ts": "t", "kind": "started", "severity": "info",
           "message": "started"})
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn strays_are_refused_and_presence_creates_devices() {
    let (c, _rx, _dir) = controller().await;
    // Valid documents (the same ones are taken from a known device below), from a device
    // that never announced itself: refused because it is unknown, not because they are bad.
    c.intake
        .on_message(
            &TopicKind::DeviceStatus.for_device("ghost"),
            &status("ghost", 1),
        )
        .await;
    c.intake
        .on_message(
            &TopicKind::DeviceEvents.for_device("ghost"),
            &event("ghost"),
        )
        .await;
    assert!(
        c.fleet.get("ghost").is_none(),
        "status or events of an unknown device must not create it"
    );
    c.intake
        .on_message(
            &TopicKind::DevicePresence.for_device("d1"),
            &presence("d1", "lyon"),
        )
        .await;
    assert_eq!(c.fleet.get("d1").unwrap().desired_revision(), 1);
    // A payload naming another device than its topic is refused.
    c.intake
        .on_message(&TopicKind::DeviceStatus.for_device("d1"), &status("d2", 1))
        .await;
    assert!(c.fleet.get("d1").unwrap().status.is_none());
    // The documents the ghost sent are taken from a known device.
    c.intake
        .on_message(&TopicKind::DeviceStatus.for_device("d1"), &status("d1", 1))
        .await;
    c.intake
        .on_message(&TopicKind::DeviceEvents.for_device("d1"), &event("d1"))
        .await;
    let d1 = c.fleet.get("d1").unwrap();
    assert_eq!(d1.status.map(|s| s.desired_revision), Some(1));
    assert_eq!(d1.events.len(), 1);
}

#[tokio::test]
async fn device_outcomes_are_audited_progress_is_not() {
    let (c, _rx, _dir) = controller().await;
    c.intake
        .on_message(
            &TopicKind::DevicePresence.for_device("d1"),
            &presence("d1", "lyon"),
        )
        .await;
    for (kind, severity) in [
        ("pulling", "info"),
        ("converged", "info"),
        ("failed", "error"),
    ] {
        let e = json!({"schema": 1, "device": "d1", "ts": "t", "kind": kind, "severity": severity,
                       "revision": 1, "message": format!("{kind} happened")});
        c.intake
            .on_message(
                &TopicKind::DeviceEvents.for_device("d1"),
                e.to_string().as_bytes(),
            )
            .await;
    }
    c.intake.flush().await.unwrap();
    let got: Vec<(String, String, String, String)> = c
        .store
        .audit_records(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "device.outcome")
        .map(|r| (r.actor, r.site, r.outcome, r.detail))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str(), got[0].2.as_str()),
        ("device:d1", "lyon", "ok")
    );
    assert!(got[0].3.contains("converged happened"));
    assert_eq!(got[1].2, "failed");
}

#[tokio::test]
async fn a_device_ahead_of_the_store_gets_a_revision_above_its_own() {
    let (c, _rx, _dir) = controller().await;
    c.intake
        .on_message(
            &TopicKind::DevicePresence.for_device("d1"),
            &presence("d1", "lyon"),
        )
        .await;
    apply_web(&c, "a:1").await;
    assert_eq!(c.fleet.get("d1").unwrap().desired_revision(), 2);
    // The agent holds revision 7 (the store lost writes or was restored from a backup).
    c.intake
        .on_message(&TopicKind::DeviceStatus.for_device("d1"), &status("d1", 7))
        .await;
    let d = c.fleet.get("d1").unwrap();
    assert_eq!(
        d.desired_revision(),
        8,
        "reissued above what the agent holds"
    );
    assert!(
        d.desired.unwrap().stacks.contains_key("web"),
        "same content"
    );
    // And it is in the store: a restart keeps it.
    let stored = c.store.devices().await.unwrap();
    assert_eq!(
        stored
            .iter()
            .find(|r| r.id == "d1")
            .unwrap()
            .desired_revision(),
        8
    );
}

#[tokio::test]
async fn a_site_that_empties_gets_a_zeroed_summary() {
    let (c, mut rx, _dir) = controller().await;
    c.intake
        .on_message(
            &TopicKind::DevicePresence.for_device("d1"),
            &presence("d1", "lyon"),
        )
        .await;
    c.sites.queue_changed();
    // A presence claiming another site moves nothing: the labels are the inventory's.
    let mut claims = presence("d1", "paris");
    claims = String::from_utf8(claims)
        .unwrap()
        .replace("\"session\":1", "\"session\":2")
        .into_bytes();
    c.intake
        .on_message(&TopicKind::DevicePresence.for_device("d1"), &claims)
        .await;
    let d1 = c.fleet.get("d1").unwrap();
    assert_eq!(d1.labels["site"], "lyon");
    assert_eq!(d1.reported_labels()["site"], "paris");
    assert!(
        d1.label_mismatch()
            .unwrap()
            .contains("site: inventory lyon, reported paris")
    );
    // Relabelled by the inventory: lyon must be overwritten with zeros, not left stale.
    let set = std::collections::BTreeMap::from([("site".to_owned(), "paris".to_owned())]);
    edgefleet_controller::services::inventory::relabel(
        &c.store,
        &c.fleet,
        &c.deployments,
        "d1",
        &set,
        &[],
    )
    .await
    .unwrap();
    c.sites.queue_changed();
    let mut last = std::collections::BTreeMap::new();
    while let Ok(job) = rx.try_recv() {
        if let Outgoing::Retained(topic) = job {
            let payload = c.outbox.take_retained(&topic).unwrap();
            last.insert(
                topic,
                serde_json::from_slice::<serde_json::Value>(&payload).unwrap(),
            );
        }
    }
    assert_eq!(last[&topics::site_summary("lyon")]["devices"], 0);
    assert_eq!(last[&topics::site_summary("paris")]["devices"], 1);
    assert!(c.fleet.get("d1").unwrap().label_mismatch().is_none());
}

#[tokio::test]
async fn pins_hold_devices_on_a_revision_and_survive_a_restart() {
    let (c, _rx, dir) = controller().await;
    for d in ["d1", "d2"] {
        c.intake
            .on_message(
                &TopicKind::DevicePresence.for_device(d),
                &presence(d, "lyon"),
            )
            .await;
    }
    apply_web(&c, "a:1").await;
    apply_web(&c, "a:2").await;
    c.deployments
        .pin("web", &[("d1".into(), Some(1))])
        .await
        .unwrap();
    let rev_of = |c: &App, d: &str| {
        c.fleet.get(d).unwrap().desired.unwrap().stacks["web"].deployment_revision
    };
    assert_eq!((rev_of(&c, "d1"), rev_of(&c, "d2")), (1, 2));
    assert!(
        c.deployments
            .pin("web", &[("d1".into(), Some(9))])
            .await
            .unwrap_err()
            .to_string()
            .contains("no revision 9")
    );
    c.intake.flush().await.unwrap();
    drop(c);
    let c = App::open(dir.path()).await.unwrap();
    assert_eq!(rev_of(&c, "d1"), 1, "the pin survives a controller restart");
    c.deployments
        .pin("web", &[("d1".into(), None)])
        .await
        .unwrap();
    assert_eq!(rev_of(&c, "d1"), 2, "released to the latest");
    c.deployments
        .pin("web", &[("d2".into(), Some(1))])
        .await
        .unwrap();
    apply_web(&c, "a:3").await;
    assert_eq!(
        rev_of(&c, "d2"),
        3,
        "an apply that is not staged moves every device, pinned or not"
    );
}

/// Applies deployment `web` (one service running `image`) to every device.
async fn apply_web(c: &App, image: &str) {
    let req = ApplyRequest {
        variables: Default::default(),
        files: Default::default(),
        dry_run: false,
        name: "web".into(),
        target: "*".into(),
        compose: format!("services:\n  a:\n    image: {image}\n"),
    };
    c.deployments.apply(&req, "test").await.unwrap();
}

#[tokio::test]
async fn devices_share_one_stack_of_a_revision_also_after_a_restart() {
    let (c, _rx, dir) = controller().await;
    for d in ["d1", "d2", "d3"] {
        c.intake
            .on_message(
                &TopicKind::DevicePresence.for_device(d),
                &presence(d, "lyon"),
            )
            .await;
    }
    for image in ["a:1", "a:2"] {
        apply_web(&c, image).await;
    }
    c.deployments
        .pin("web", &[("d1".into(), Some(1)), ("d2".into(), Some(1))])
        .await
        .unwrap();
    let stack = |c: &App, d: &str| c.fleet.get(d).unwrap().desired.unwrap().stacks["web"].clone();
    let check = |c: &App| {
        let (d1, d2, d3) = (stack(c, "d1"), stack(c, "d2"), stack(c, "d3"));
        assert_eq!((d1.deployment_revision, d3.deployment_revision), (1, 2));
        // One allocation per revision, not one per device.
        assert!(std::sync::Arc::ptr_eq(&d1, &d2));
        assert!(!std::sync::Arc::ptr_eq(&d1, &d3));
    };
    check(&c);
    c.intake.flush().await.unwrap();
    drop(c);
    // Read back from the store, each document is its own copy until the book's is shared
    // again.
    let c = App::open(dir.path()).await.unwrap();
    check(&c);
    c.deployments
        .pin("web", &[("d1".into(), None)])
        .await
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&stack(&c, "d1"), &stack(&c, "d3")));
}
