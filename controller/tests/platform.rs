//! `platform` checked at apply against the architecture each targeted device's engine
//! reported in its status: a service no targeted engine can run is refused before anything is
//! recorded, naming service, key and device; a device that never reported one is not refused,
//! and the answer lists it.

use edgefleet_controller::App;
use edgefleet_controller::services::deployments::{ApplyError, ApplyRequest};
use edgefleet_protocol::codec::encode;
use edgefleet_protocol::status::{ConvergenceState, DeviceStatus};
use edgefleet_protocol::topics::TopicKind;
use serde_json::json;

/// Devices `amd` (reports linux/amd64), `arm` (linux/arm64) and `new` (no status yet).
async fn setup() -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let c = App::open(dir.path()).await.unwrap();
    for (id, platform) in [
        ("amd", Some("linux/amd64")),
        ("arm", Some("linux/arm64")),
        ("new", None),
    ] {
        let p = json!({"schema": 1, "device": id, "state": "online", "session": 1,
                       "labels": {"site": "lyon"}, "agent_version": "t", "since": "t"});
        c.intake
            .on_message(
                &TopicKind::DevicePresence.for_device(id),
                p.to_string().as_bytes(),
            )
            .await;
        let Some(platform) = platform else { continue };
        let status = DeviceStatus {
            schema: 1,
            device: id.into(),
            observed_revision: 0,
            desired_revision: 0,
            state: ConvergenceState::Idle,
            stacks: Default::default(),
            last_error: None,
            agent_version: "t".into(),
            updated_at: "t".into(),
            platform: Some(platform.into()),
        };
        c.intake
            .on_message(&TopicKind::DeviceStatus.for_device(id), &encode(&status))
            .await;
    }
    (c, dir)
}

fn req(target: &str, platform: &str, dry_run: bool) -> ApplyRequest {
    ApplyRequest {
        name: "hmi".into(),
        target: target.into(),
        compose: format!(
            "services:\n  panel:\n    image: panel:1\n  gateway:\n    image: gw:1\n    platform: {platform}\n"
        ),
        variables: Default::default(),
        files: Default::default(),
        dry_run,
    }
}

#[tokio::test]
async fn apply_refuses_a_platform_a_targeted_engine_cannot_run() {
    let (c, _dir) = setup().await;
    assert_eq!(
        c.fleet.get("arm").unwrap().summary().platform.as_deref(),
        Some("linux/arm64"),
        "the device view keeps the reported platform"
    );

    for dry_run in [true, false] {
        let err = c
            .deployments
            .apply(&req("site=lyon", "linux/arm64", dry_run), "test")
            .await
            .expect_err("amd64 cannot run an arm64 image");
        assert!(matches!(err, ApplyError::Platform { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "service 'gateway': key 'platform' (linux/arm64) cannot run on device 'amd', whose engine is linux/amd64: target devices of that architecture, or drop 'platform' so each engine pulls its own (multi-architecture images)"
        );
    }
    assert!(
        c.store.deployment("hmi").await.unwrap().is_none(),
        "nothing recorded"
    );

    // The devices that can, and one that never said: not refused, the answer names it.
    let dry = c
        .deployments
        .apply(&req("id=arm|new", "linux/arm64/v8", true), "test")
        .await
        .unwrap();
    assert_eq!(dry.architecture_unknown, vec!["new"]);
    let real = c
        .deployments
        .apply(&req("id=arm|new", "linux/arm64", false), "test")
        .await
        .unwrap();
    assert!(real.changed && real.architecture_unknown == vec!["new"]);

    // arm64 engines run 32-bit ARM images; amd64 ones run 386.
    c.deployments
        .apply(&req("id=arm", "linux/arm/v7", true), "test")
        .await
        .unwrap();
    c.deployments
        .apply(&req("id=amd", "linux/386", true), "test")
        .await
        .unwrap();

    // No `platform` in the file: nothing to check, nothing listed.
    let mut plain = req("site=lyon", "linux/arm64", true);
    plain.compose = "services:\n  panel:\n    image: panel:1\n".into();
    let plain = c.deployments.apply(&plain, "test").await.unwrap();
    assert!(plain.architecture_unknown.is_empty(), "{plain:?}");
}
