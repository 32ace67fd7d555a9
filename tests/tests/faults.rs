//! Acceptance: faults and bad input with the real engine — agent SIGKILL, gateway restart,
//! malformed desired payloads, unsupported Compose keys, and drift made by hand.

use std::time::{Duration, Instant};

use edgefleet_tests::api::{Api, service};
use edgefleet_tests::docker::{self, Cleanup};
use edgefleet_tests::images::{self, APP_V1, APP_V2};
use edgefleet_tests::procs::Gateway;
use edgefleet_tests::{mqtt, unique_id, wait};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
/// The agents' keepalive in the harness (`--keepalive 4`).
const KEEPALIVE: Duration = Duration::from_secs(4);

fn stack(image: &str) -> String {
    format!("services:\n  app:\n    image: {image}\n    restart: unless-stopped\n")
}

async fn wait_converged_running(api: &Api, id: &str, image: &str) -> (Value, String) {
    wait::until(&format!("{id} converged running {image}"), T, || async {
        let d = api.device(id).await?;
        let svc = service(&d, "web", "app").ok_or("no web/app")?.clone();
        let running: Vec<_> = docker::containers(id)
            .into_iter()
            .filter(|c| c.state == "running")
            .collect();
        match running.as_slice() {
            [c] if d["online"] == true
                && d["converged"] == true
                && svc["image"] == image
                && c.image == image =>
            {
                Ok((d.clone(), c.id.clone()))
            }
            _ => Err(format!("{} / {running:?}", d["status"])),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_goes_offline_within_keepalive_and_comes_back_converged() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("kill");
    let _cleanup = Cleanup(vec![id.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();
    let mut agent = gw.agent(dir, &id, "site=a");
    api.apply(dir, "web", &format!("id={id}"), &stack(APP_V1));
    let (_, container) = wait_converged_running(&api, &id, APP_V1).await;

    agent.proc.kill9();
    let killed = Instant::now();
    api.wait_connection(&id, "offline", KEEPALIVE * 3).await;
    let took = killed.elapsed();
    eprintln!("measured: killed agent shown offline after {took:?} (keepalive {KEEPALIVE:?})");
    assert!(
        took <= KEEPALIVE.mul_f64(1.5),
        "offline after {took:?}, more than 1.5 × keepalive"
    );
    // The container keeps running while its agent is dead.
    assert_eq!(
        docker::containers(&id)
            .iter()
            .filter(|c| c.state == "running")
            .count(),
        1
    );

    agent.proc.start();
    let (_, again) = wait_converged_running(&api, &id, APP_V1).await;
    assert_eq!(
        again, container,
        "nothing may be recreated by an agent restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_republishes_desired_state_and_recreates_nothing() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (a, b) = (unique_id("gwa"), unique_id("gwb"));
    let _cleanup = Cleanup(vec![a.clone(), b.clone()]);
    let mut gw = Gateway::start(dir);
    let api = gw.api();
    let _agents = [gw.agent(dir, &a, "site=x"), gw.agent(dir, &b, "site=x")];
    api.apply(dir, "web", "site=x", &stack(APP_V1));
    let (da, ca) = wait_converged_running(&api, &a, APP_V1).await;
    let (db, cb) = wait_converged_running(&api, &b, APP_V1).await;

    gw.proc.kill9();
    gw.proc.start();
    gw.wait_ready();

    // The restarted broker held nothing; a retained desired document there now means the
    // controller republished it.
    let topic = edgefleet_protocol::topics::TopicKind::DeviceDesired.for_device(&a);
    let desired: Value = wait::until("desired republished after gateway restart", T, || async {
        edgefleet_tests::mqtt::retained(gw.mqtt_port, &topic, 2)
    })
    .await;
    assert_eq!(
        desired["document"]["revision"], da["desired_revision"],
        "same desired revision after restart"
    );

    for (id, before, container) in [(&a, &da, &ca), (&b, &db, &cb)] {
        let after = wait::until("agent reconnected with a new session", T, || async {
            let d = api.device(id).await?;
            if d["online"] == true && d["session"].as_u64() > before["session"].as_u64() {
                Ok(d)
            } else {
                Err(d.to_string())
            }
        })
        .await;
        assert_eq!(
            after["desired_revision"], before["desired_revision"],
            "a restart is not a change"
        );
        let (_, now) = wait_converged_running(&api, id, APP_V1).await;
        assert_eq!(&now, container, "a gateway restart must recreate nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_desired_payloads_and_unsupported_compose_keys_change_nothing() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("bad");
    let _cleanup = Cleanup(vec![id.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();
    let _agent = gw.agent(dir, &id, "site=a");
    api.apply(dir, "web", &format!("id={id}"), &stack(APP_V1));
    let (before, container) = wait_converged_running(&api, &id, APP_V1).await;

    let topic = edgefleet_protocol::topics::TopicKind::DeviceDesired.for_device(&id);
    let garbage = [
        "{not json".to_owned(),
        r#"{"schema":99,"device":"x"}"#.to_owned(),
        r#"{"schema":1,"device":"someone-else","revision":999,"issued_at":"t","stacks":{}}"#
            .to_owned(),
        format!(r#"{{"schema":1,"device":"{id}","revision":"many","stacks":[]}}"#),
    ];
    for payload in &garbage {
        mqtt::publish(gw.mqtt_port, &topic, payload.as_bytes(), false);
    }
    // Not JSON: a malformed document. JSON without a controller signature: a security matter.
    wait::until("a rejection event per bad payload", T, || async {
        let malformed = api.events_of(&id, "desired_rejected").await.len();
        let refused = api.events_of(&id, "security_rejected").await.len();
        let n = malformed + refused;
        if malformed >= 1 && n >= garbage.len() {
            Ok(())
        } else {
            Err(format!("{n} rejections"))
        }
    })
    .await;
    let d = api.device(&id).await.expect("device");
    assert_eq!(d["online"], true, "the agent must stay connected");
    assert_eq!(
        d["session"], before["session"],
        "the agent must not have reconnected"
    );
    let (_, still) = wait_converged_running(&api, &id, APP_V1).await;
    assert_eq!(
        still, container,
        "bad input must not touch the running container"
    );

    // An unsupported Compose key is refused at apply, naming service and key; nothing changes.
    let bad = format!("services:\n  app:\n    image: {APP_V2}\n    pid: host\n");
    let out = api.try_apply(dir, "web", &format!("id={id}"), &bad);
    assert!(!out.success, "apply must fail: {out:?}");
    let msg = out.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("service 'app'") && msg.contains("'pid'"),
        "unclear message: {msg}"
    );
    let human = api.cli(&[
        "apply",
        "-f",
        &dir.join("web.yml").display().to_string(),
        "--name",
        "web",
        "--target",
        "*",
    ]);
    assert!(
        !human.success && human.stderr.contains("'pid' is not supported"),
        "{human:?}"
    );
    let dep = api
        .get("/api/v1/deployments/web")
        .await
        .expect("deployment");
    assert_eq!(
        dep["revision"], 1,
        "a refused apply must not record a revision"
    );
    assert_eq!(
        api.device(&id).await.expect("device")["desired_revision"],
        before["desired_revision"]
    );

    // And the agent still takes a good change.
    api.apply(dir, "web", &format!("id={id}"), &stack(APP_V2));
    wait_converged_running(&api, &id, APP_V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_by_hand_is_reported_and_restored() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("drift");
    let _cleanup = Cleanup(vec![id.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();
    let _agent = gw.agent(dir, &id, "site=a");
    api.apply(dir, "web", &format!("id={id}"), &stack(APP_V1));
    let (_, container) = wait_converged_running(&api, &id, APP_V1).await;

    docker::stop(&container);
    wait::until("drift reported", T, || async {
        let n = api.events_of(&id, "drift_detected").await.len();
        if n >= 1 {
            Ok(())
        } else {
            Err("no drift_detected event".into())
        }
    })
    .await;
    let (_, restored) = wait_converged_running(&api, &id, APP_V1).await;
    assert_eq!(
        restored, container,
        "a stopped container is restarted, not replaced"
    );

    docker::remove(&container);
    wait::until("second drift reported", T, || async {
        let n = api.events_of(&id, "drift_detected").await.len();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} drift events"))
        }
    })
    .await;
    let (_, recreated) = wait_converged_running(&api, &id, APP_V1).await;
    assert_ne!(recreated, container, "a removed container is recreated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarted_while_the_gateway_is_down_keeps_running_from_local_state() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("alone");
    let _cleanup = Cleanup(vec![id.clone()]);
    let mut gw = Gateway::start(dir);
    let api = gw.api();
    let mut agent = gw.agent(dir, &id, "site=a");
    api.apply(dir, "web", &format!("id={id}"), &stack(APP_V1));
    let (_, container) = wait_converged_running(&api, &id, APP_V1).await;

    gw.proc.kill9();
    let log = agent.proc.full_log();
    let (loaded, tried) = (
        log.matches("loaded desired state").count(),
        log.matches("cannot connect to broker").count(),
    );
    agent.proc.restart();
    // Alone, the agent keeps the container and still restores drift from its local state:
    // once the restarted agent has loaded its state and failed to reach the gateway (a
    // teardown would be caught below too: the drift check wants this very container back).
    wait::until("the restarted agent running alone", T, || async {
        let log = agent.proc.full_log();
        let now = (
            log.matches("loaded desired state").count(),
            log.matches("cannot connect to broker").count(),
        );
        if now.0 > loaded && now.1 > tried {
            Ok(())
        } else {
            Err(format!("{now:?} (was {:?})", (loaded, tried)))
        }
    })
    .await;
    assert!(
        agent.proc.alive(),
        "the agent must keep running without its gateway"
    );
    let running: Vec<_> = docker::containers(&id)
        .into_iter()
        .filter(|c| c.state == "running")
        .collect();
    assert_eq!(
        running.len(),
        1,
        "nothing may be torn down while the gateway is away"
    );
    assert_eq!(running[0].id, container);
    docker::stop(&container);
    wait::until("drift restored without a gateway", T, || async {
        let c = docker::containers(&id);
        match c.as_slice() {
            [c] if c.state == "running" && c.id == container => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    gw.proc.start();
    gw.wait_ready();
    let (_, after) = wait_converged_running(&api, &id, APP_V1).await;
    assert_eq!(after, container);
}

/// A frozen agent (SIGSTOP: process alive, TCP connection open, nothing sent — what a cut
/// cable looks like to the broker) is shown offline once the broker's 1.5 × keepalive
/// expires, and comes back by itself when it thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_goes_offline_after_one_and_a_half_keepalives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("frozen");
    let gw = Gateway::start(dir);
    let api = gw.api();
    let agent = gw.agent(dir, &id, "site=a");
    api.wait_connection(&id, "online", T).await;
    let session = api.device(&id).await.expect("device")["session"].as_u64();

    agent.proc.signal("STOP");
    let frozen = Instant::now();
    api.wait_connection(&id, "offline", KEEPALIVE * 3).await;
    let took = frozen.elapsed();
    eprintln!("measured: silent agent shown offline after {took:?} (keepalive {KEEPALIVE:?})");
    // The broker counts 1.5 × keepalive from the agent's last packet, which came at most one
    // keepalive before the freeze; allow 1 s for polling.
    assert!(
        took <= KEEPALIVE.mul_f64(1.5) + Duration::from_secs(1),
        "offline only after {took:?}"
    );

    agent.proc.signal("CONT");
    wait::until("thawed agent back online with a new session", T, || async {
        let d = api.device(&id).await?;
        if d["online"] == true && d["session"].as_u64() > session {
            Ok(())
        } else {
            Err(d.to_string())
        }
    })
    .await;
}

/// Acceptance (security): a document nobody signed, one signed by another key, one altered
/// after signing and a replay of an older signed revision all reach the agent through the
/// privileged loopback listener. The agent refuses each with a security event and its
/// container is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forged_and_replayed_desired_documents_are_refused() {
    use edgefleet_protocol::signing::DocumentSigner;
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("sig");
    let _cleanup = Cleanup(vec![id.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();
    let _agent = gw.agent(dir, &id, "site=a");
    let topic = edgefleet_protocol::topics::TopicKind::DeviceDesired.for_device(&id);

    api.apply(dir, "web", &format!("id={id}"), &stack(APP_V1));
    wait_converged_running(&api, &id, APP_V1).await;
    let old_signed = mqtt::retained_raw(gw.mqtt_port, &topic, 5);
    assert!(!old_signed.is_empty(), "no retained desired document");
    let old: Value = serde_json::from_slice(&old_signed).expect("envelope");
    let old_rev = old["document"]["revision"].as_u64().expect("revision");

    api.apply(dir, "web", &format!("id={id}"), &stack(APP_V2));
    let (before, container) = wait_converged_running(&api, &id, APP_V2).await;

    // The current document, retargeted at the v1 image by someone without the key.
    let current = mqtt::retained_raw(gw.mqtt_port, &topic, 5);
    let current: Value = serde_json::from_slice(&current).expect("envelope");
    let mut evil_doc = current["document"].clone();
    let next = evil_doc["revision"].as_u64().expect("revision") + 1;
    evil_doc["revision"] = next.into();
    evil_doc["stacks"]["web"]["services"]["app"]["image"] = APP_V1.into();
    let evil_bytes = serde_json::to_vec(&evil_doc).expect("json");
    let forger = DocumentSigner::from_secret(&[42; 32]);
    let mut altered = current.clone();
    altered["document"] = evil_doc.clone();
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("unsigned", evil_bytes.clone()),
        ("signed by another key", forger.sign_bytes(&evil_bytes)),
        (
            "altered after signing",
            serde_json::to_vec(&altered).expect("json"),
        ),
        ("replay of an older revision", old_signed.clone()),
    ];
    for (what, payload) in &attacks {
        mqtt::publish(gw.mqtt_port, &topic, payload, false);
        eprintln!("published: {what}");
    }
    let refused = wait::until("a security_rejected event per attack", T, || async {
        let ev = api.events_of(&id, "security_rejected").await;
        if ev.len() >= attacks.len() {
            Ok(ev)
        } else {
            Err(format!("{} security events", ev.len()))
        }
    })
    .await;
    let messages: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    for needle in [
        "not signed",
        "signed by key",
        "does not match",
        "older than",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(needle)),
            "no security event saying {needle:?}: {messages:?}"
        );
    }
    assert!(
        refused.iter().any(|e| e["revision"] == old_rev),
        "the replay event names the replayed revision {old_rev}: {refused:?}"
    );
    let d = api.device(&id).await.expect("device");
    assert_eq!(
        d["session"], before["session"],
        "the agent must stay connected"
    );
    let (_, still) = wait_converged_running(&api, &id, APP_V2).await;
    assert_eq!(
        still, container,
        "no attack may touch the running container"
    );
}
