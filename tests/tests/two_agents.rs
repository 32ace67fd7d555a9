//! Acceptance: two agents with different labels against one control plane and the real
//! Docker engine — targeting, image change, agent restart without recreation, delete — over
//! the embedded broker and over Debian's Mosquitto. Also: an integrator's `mosquitto_sub`
//! receives the retained status documented in topics.md.

use std::path::Path;
use std::time::Duration;

use edgefleet_tests::api::{Api, service};
use edgefleet_tests::docker::{self, Cleanup};
use edgefleet_tests::images::{self, APP_V1, APP_V2};
use edgefleet_tests::procs::{self, Agent, Gateway, Proc};
use edgefleet_tests::{unique_id, wait};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

pub fn stack(image: &str) -> String {
    format!(
        "services:\n  app:\n    image: {image}\n    restart: unless-stopped\n    environment: {{ROLE: bridge}}\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1s\n      retries: 3\n"
    )
}

async fn wait_online(api: &Api, id: &str) -> Value {
    api.wait_connection(id, "online", T).await
}

/// Waits until the device reports its desired revision converged and its `web/app` service
/// running and healthy with `image`; returns the container id.
async fn wait_running(api: &Api, id: &str, image: &str) -> String {
    wait::until(&format!("{id} running {image} healthy"), T, || async {
        let d = api.device(id).await?;
        let svc = service(&d, "web", "app").ok_or("no web/app in status")?;
        let ok = d["converged"] == true
            && svc["image"] == image
            && svc["state"] == "running"
            && svc["health"] == "healthy";
        let running: Vec<_> = docker::containers(id)
            .into_iter()
            .filter(|c| c.state == "running")
            .collect();
        match (ok, running.as_slice()) {
            (true, [c]) if c.image == image && svc["container_id"] == c.id.as_str() => {
                Ok(c.id.clone())
            }
            _ => Err(format!("status {} / docker {:?}", d["status"], running)),
        }
    })
    .await
}

/// The JSON example under a topic's heading in topics.md.
fn documented_example(topic: &str) -> Value {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../topics.md"))
        .expect("topics.md");
    let at = doc
        .find(&format!("### `{topic}`"))
        .unwrap_or_else(|| panic!("topics.md does not document {topic}"));
    let rest = &doc[at..];
    let start = rest.find("```json").expect("example block") + "```json".len();
    let end = rest[start..].find("```").expect("end of example") + start;
    serde_json::from_str(&rest[start..end]).expect("topics.md example is valid JSON")
}

/// Every field received is documented, and every documented field is present (except
/// `last_error`, which is absent while there is no error).
fn same_fields(what: &str, got: &Value, documented: &Value) {
    let (got, doc) = (keys(got), keys(documented));
    let undocumented: Vec<_> = got.iter().filter(|k| !doc.contains(k)).collect();
    let missing: Vec<_> = doc
        .iter()
        .filter(|k| *k != "last_error" && !got.contains(k))
        .collect();
    assert!(
        undocumented.is_empty(),
        "{what} fields not in topics.md: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "{what} fields documented in topics.md but not sent: {missing:?}"
    );
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// A real integrator client subscribes to the status topic and gets the retained document,
/// shaped as topics.md documents it.
fn check_status_with_mosquitto_sub(mqtt_port: u16, device: &str) {
    let topic = edgefleet_protocol::topics::TopicKind::DeviceStatus.for_device(device);
    let got =
        edgefleet_tests::mqtt::retained(mqtt_port, &topic, 10).unwrap_or_else(|e| panic!("{e}"));
    let example = documented_example("edgefleet/v1/devices/{device}/status");
    assert_eq!(got["schema"], 1);
    assert_eq!(got["device"], device);
    assert_eq!(got["state"], "converged");
    same_fields("status", &got, &example);
    let svc = &got["stacks"]["web"]["services"]["app"];
    let doc_svc = example["stacks"]
        .as_object()
        .and_then(|s| s.values().next())
        .and_then(|s| s["services"].as_object())
        .and_then(|s| s.values().next())
        .cloned()
        .expect("topics.md status example has a service");
    same_fields("service status", svc, &doc_svc);
    assert_eq!(svc["state"], "running");
}

enum BrokerKind {
    Embedded,
    Mosquitto,
}

async fn two_agent_scenario(kind: BrokerKind) {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (lyon, paris) = (unique_id("lyon"), unique_id("paris"));
    let _cleanup = Cleanup(vec![lyon.clone(), paris.clone()]);

    let mut keep: Vec<Proc> = Vec::new();
    let (api, mqtt_port, gw) = match kind {
        BrokerKind::Embedded => {
            let gw = Gateway::start(dir);
            (gw.api(), gw.mqtt_port, Some(gw))
        }
        BrokerKind::Mosquitto => {
            let (mosquitto, port) = procs::mosquitto(dir);
            keep.push(mosquitto);
            let (controller, http) = procs::controller(dir, port);
            keep.push(controller);
            (
                Api::admin(http, &procs::controller_data_dir(dir)),
                port,
                None,
            )
        }
    };
    // With the gateway, agents enroll and connect to the TLS front with their own
    // certificate; with Mosquitto, they use plain MQTT and the controller key file.
    let url = format!("mqtt://127.0.0.1:{mqtt_port}");
    let start = |id: &str, labels: &str| match &gw {
        Some(gw) => gw.agent(dir, id, labels),
        None => Agent::start(dir, id, labels, &url),
    };
    let mut agent = start(&lyon, "site=lyon,line=1");
    let _other = start(&paris, "site=paris,line=1");
    wait_online(&api, &lyon).await;
    wait_online(&api, &paris).await;

    // A stack for site=lyon runs on the lyon device only.
    let applied = api.apply(dir, "web", "site=lyon", &stack(APP_V1));
    assert_eq!(applied["devices"], serde_json::json!([lyon]));
    let first = wait_running(&api, &lyon, APP_V1).await;
    wait::until("paris converged with nothing to run", T, || async {
        let d = api.device(&paris).await?;
        if d["converged"] == true && d["desired_revision"].as_u64() >= Some(1) {
            Ok(())
        } else {
            Err(d.to_string())
        }
    })
    .await;
    assert!(
        docker::containers(&paris).is_empty(),
        "the paris device must run nothing"
    );

    check_status_with_mosquitto_sub(mqtt_port, &lyon);

    // A new image tag replaces the container.
    let applied = api.apply(dir, "web", "site=lyon", &stack(APP_V2));
    assert_eq!(applied["revision"], 2);
    let second = wait_running(&api, &lyon, APP_V2).await;
    assert_ne!(first, second, "an image change must replace the container");
    assert_eq!(
        docker::containers(&lyon).len(),
        1,
        "the old container must be gone"
    );

    // Applying the same file again records nothing.
    assert_eq!(
        api.apply(dir, "web", "site=lyon", &stack(APP_V2))["changed"],
        false
    );

    // An agent restart recreates nothing.
    let session = api.device(&lyon).await.expect("device")["session"].as_u64();
    agent.proc.restart();
    wait::until("agent back with a new session", T, || async {
        let d = api.device(&lyon).await?;
        if d["online"] == true && d["session"].as_u64() > session {
            Ok(())
        } else {
            Err(d["session"].to_string())
        }
    })
    .await;
    let after = wait_running(&api, &lyon, APP_V2).await;
    assert_eq!(
        after, second,
        "an unchanged service must not be recreated when its agent restarts"
    );

    // Deleting the deployment removes its containers.
    let out = api.cli(&["--json", "delete", "deployment", "web"]);
    assert!(out.success, "{out:?}");
    wait::until("lyon containers removed", T, || async {
        let c = docker::containers(&lyon);
        if c.is_empty() {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    let list = api.cli(&["--json", "get", "deployments"]).json();
    assert_eq!(list["deployments"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_the_embedded_broker() {
    two_agent_scenario(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_mosquitto_as_external_broker() {
    two_agent_scenario(BrokerKind::Mosquitto).await;
}
