//! The control plane owns the inventory: a device's site comes from `edgefleet device add`
//! and `edgefleet device label`, never from what the device says. An enrolled agent
//! restarted with another site's labels (what any holder of its certificate could do) stays
//! in its enrolled site — not sent the other site's stacks, still in its own site's viewers'
//! scope — and raises an alarm; an admin's `device label` moves it, audited.

use std::time::Duration;

use edgefleet_tests::api::Api;
use edgefleet_tests::procs::{Agent, Gateway};
use edgefleet_tests::{unique_id, wait};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const STACK: &str = "services:\n  app:\n    image: edgefleet-inventory-missing:1\n";

/// The desired stacks the controller holds for `id`.
fn stacks(device: &Value) -> Vec<String> {
    device["desired"]["stacks"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// A user of `role` scoped to `site`, logged in over the API.
async fn scoped(gw: &Gateway, name: &str, role: &str, site: &str) -> Api {
    let admin = gw.api();
    let password = format!("{name}-password-123");
    let out = admin.cli_stdin(
        &[
            "user",
            "add",
            name,
            "--role",
            role,
            "--site",
            site,
            "--password-stdin",
        ],
        &format!("{password}\n"),
    );
    assert!(out.success, "user add {name}: {out:?}");
    let resp: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/v1/login", gw.http_port))
        .json(&json!({ "username": name, "password": password }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    Api::with_token(gw.http_port, resp["token"].as_str().expect("token"))
}

async fn sees(api: &Api, id: &str) -> bool {
    api.devices()
        .await
        .expect("device list")
        .iter()
        .any(|d| d["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_move_itself_to_another_site_and_an_admin_can() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let gw = Gateway::start(dir);
    let admin = gw.api();
    let id = unique_id("inv");
    let (lyon_site, paris_site) = (unique_id("lyon"), unique_id("paris"));
    let mut agent = gw.agent(dir, &id, &format!("site={lyon_site},line=1"));
    admin.wait_connection(&id, "online", T).await;
    let lyon = scoped(&gw, "lyon-viewer", "viewer", &lyon_site).await;
    let paris = scoped(&gw, "paris-viewer", "viewer", &paris_site).await;

    // Restarted with another site's labels: they are only "reported".
    agent.proc.kill9();
    let _agent = Agent::enrolled_with(
        dir,
        &id,
        &["--labels", &format!("site={paris_site},line=1")],
    );
    let d = wait::until("the other site's labels reported", T, || async {
        let d = admin.device(&id).await?;
        if d["reported_labels"]["site"] == paris_site.as_str() && d["online"] == true {
            Ok(d)
        } else {
            Err(d.to_string())
        }
    })
    .await;
    assert_eq!(d["labels"]["site"], lyon_site.as_str(), "{d}");
    let mismatch = d["label_mismatch"].as_str().expect("a label mismatch");
    assert!(
        mismatch.contains(&paris_site) && mismatch.contains("site"),
        "{mismatch}"
    );

    // Not sent the other site's stacks; its own site's stacks it gets.
    let to_paris = admin.apply(dir, "paris-app", &format!("site={paris_site}"), STACK);
    assert_eq!(to_paris["devices"], json!([]), "{to_paris}");
    let to_lyon = admin.apply(dir, "lyon-app", &format!("site={lyon_site}"), STACK);
    assert_eq!(to_lyon["devices"], json!([id]), "{to_lyon}");
    let d = wait::until("the lyon stack in its desired state", T, || async {
        let d = admin.device(&id).await?;
        if stacks(&d).contains(&"lyon-app".to_owned()) {
            Ok(d)
        } else {
            Err(d["desired"].to_string())
        }
    })
    .await;
    assert!(!stacks(&d).contains(&"paris-app".to_owned()), "{d}");
    // Still in its own site's scope, not in the other's.
    assert!(sees(&lyon, &id).await, "the lyon viewer lost the device");
    assert!(!sees(&paris, &id).await, "the paris viewer sees the device");
    // An alarm, on the dashboard's list.
    let page = admin.get_text("/").await;
    assert!(
        page.contains("reports other labels than the inventory"),
        "no label alarm on the dashboard"
    );
    // A viewer cannot relabel it.
    let refused = lyon.cli(&["device", "label", &id, &format!("site={paris_site}")]);
    assert!(
        !refused.success,
        "a viewer relabelled a device: {refused:?}"
    );

    // The admin moves it.
    let moved = admin.cli(&[
        "device",
        "label",
        &id,
        &format!("site={paris_site}"),
        "--json",
    ]);
    assert!(moved.success, "device label: {moved:?}");
    assert_eq!(moved.json()["labels"]["site"], paris_site.as_str());
    let d = wait::until("the paris stack in its desired state", T, || async {
        let d = admin.device(&id).await?;
        if stacks(&d).contains(&"paris-app".to_owned()) {
            Ok(d)
        } else {
            Err(d["desired"].to_string())
        }
    })
    .await;
    assert!(!stacks(&d).contains(&"lyon-app".to_owned()), "{d}");
    assert_eq!(d["label_mismatch"], Value::Null, "{d}");
    assert!(
        sees(&paris, &id).await,
        "the paris viewer does not see the moved device"
    );
    assert!(
        !sees(&lyon, &id).await,
        "the lyon viewer still sees the moved device"
    );
    // Audited, with before and after.
    let audit = admin.get("/api/v1/audit?limit=50").await.expect("audit");
    let records = audit
        .as_array()
        .or_else(|| audit["records"].as_array())
        .cloned()
        .unwrap_or_default();
    let record = records
        .iter()
        .find(|r| r["action"] == "device.label" && r["target"] == id.as_str() && r["status"] == 200)
        .unwrap_or_else(|| panic!("no device.label record: {audit}"));
    assert_eq!(
        record["detail"]["before"]["site"],
        lyon_site.as_str(),
        "{record}"
    );
    assert_eq!(
        record["detail"]["after"]["site"],
        paris_site.as_str(),
        "{record}"
    );
}
