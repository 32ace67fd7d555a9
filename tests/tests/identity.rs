//! Acceptance (security) through the gateway, with the real binaries: device enrollment works
//! once, a token pinned to another CA or expired is refused, a revoked device is cut off and
//! cannot come back, an enrolled device's certificate is confined to its own topics (shown
//! with Debian's mosquitto clients), and an integrator's certificate reads the read model and
//! writes nothing.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use edgefleet_protocol::enrollment::EnrollmentToken;
use edgefleet_protocol::topics::{self, TopicKind};
use edgefleet_tests::docker::Cleanup;
use edgefleet_tests::images::{self, APP_V1};
use edgefleet_tests::procs::{Agent, Gateway};
use edgefleet_tests::{mqtt, unique_id, wait};

const T: Duration = Duration::from_secs(60);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// How many audit records have exactly this action, actor, target and outcome (parsed
/// records, not a text search).
async fn audited(
    api: &edgefleet_tests::api::Api,
    action: &str,
    actor: &str,
    target: &str,
    outcome: &str,
) -> Result<usize, String> {
    let page = api.get("/api/v1/audit?limit=1000").await?;
    let records = page["records"]
        .as_array()
        .ok_or_else(|| format!("no records in {page}"))?;
    Ok(records
        .iter()
        .filter(|r| {
            r["action"] == action
                && r["actor"] == actor
                && r["target"] == target
                && r["outcome"] == outcome
        })
        .count())
}

/// Waits until the audit holds at least `n` such records.
async fn wait_audited(
    api: &edgefleet_tests::api::Api,
    (action, actor, target, outcome): (&str, &str, &str, &str),
    n: usize,
) {
    wait::until(
        &format!("{n} audit record(s) {action} {outcome} by {actor} on {target}"),
        T,
        || async {
            let got = audited(api, action, actor, target, outcome).await?;
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} so far"))
            }
        },
    )
    .await;
}

/// mosquitto_sub/pub TLS arguments with the credentials in `creds` (ca.pem, cert.pem, key.pem).
fn tls(port: u16, creds: &Path, client_id: &str) -> Vec<String> {
    let p = |f: &str| creds.join(f).display().to_string();
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        p("ca.pem"),
        "--cert".into(),
        p("cert.pem"),
        "--key".into(),
        p("key.pem"),
        "-i".into(),
        client_id.into(),
        "-V".into(),
        "mqttv311".into(),
    ]
}

fn run(program: &str, args: &[String]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (Debian mosquitto-clients): {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_works_once_and_a_revoked_device_cannot_come_back() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("enr");
    let _cleanup = Cleanup(vec![id.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();

    // A token pinned to another CA: the agent refuses to talk to this gateway.
    let token = gw.enrollment_token(&id, "site=e,line=1");
    let mut forged = EnrollmentToken::decode(&token).expect("token");
    forged.ca_sha256 = "0".repeat(64);
    let out = gw.enroll(&dir.join("forged"), &id, &forged.encode());
    assert!(
        !out.status.success(),
        "a token pinned to another CA must fail"
    );
    assert!(
        stderr(&out).contains("did not present the CA"),
        "unclear: {}",
        stderr(&out)
    );

    // The real token works once…
    let out = gw.enroll(dir, &id, &token);
    assert!(out.status.success(), "enrollment failed: {}", stderr(&out));
    {
        use std::os::unix::fs::PermissionsExt;
        let key = Agent::data_dir(dir, &id).join("identity/key.pem");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the device key must be private");
    }
    // …and never twice, even for another data dir.
    let again = gw.enroll(&dir.join("again"), &id, &token);
    assert!(!again.status.success(), "a used token must be refused");
    assert!(
        stderr(&again).contains("already used"),
        "unclear: {}",
        stderr(&again)
    );
    // An expired token is refused.
    let short = api.cli(&["device", "add", "late-dev", "--expires", "1s", "--json"]);
    assert!(short.success, "{short:?}");
    // Until the clock has passed its expiry (RFC 3339 UTC with milliseconds both: ordered as
    // text; the gateway runs on this clock).
    let expires = short.json()["expires_at"]
        .as_str()
        .expect("expires_at")
        .to_owned();
    wait::until("the token's expiry to pass", T, || async {
        let now = edgefleet_protocol::now_rfc3339();
        if now > expires { Ok(()) } else { Err(now) }
    })
    .await;
    let late = gw.enroll(dir, "late-dev", short.json()["token"].as_str().unwrap());
    assert!(
        !late.status.success() && stderr(&late).contains("expired"),
        "an expired token must be refused: {}",
        stderr(&late)
    );

    // The enrolled agent connects over TLS with its certificate and converges.
    let mut agent = Agent::enrolled(dir, &id);
    api.wait_connection(&id, "online", T).await;
    api.apply(
        dir,
        "web",
        &format!("id={id}"),
        &format!("services:\n  app:\n    image: {APP_V1}\n"),
    );
    wait::until("the enrolled device converges", T, || async {
        let d = api.device(&id).await?;
        if d["converged"] == true {
            Ok(())
        } else {
            Err(d["status"].to_string())
        }
    })
    .await;

    // Revoke: disconnected now (its will fires: offline), and it cannot reconnect.
    let t0 = Instant::now();
    let out = api.cli(&["device", "revoke", &id, "--json"]);
    assert!(out.success, "revoke failed: {out:?}");
    assert!(
        out.json()["connections_closed"].as_u64() >= Some(1),
        "{out:?}"
    );
    api.wait_connection(&id, "offline", Duration::from_secs(15))
        .await;
    eprintln!("revoked device shown offline after {:?}", t0.elapsed());
    // The agent keeps trying (jittered backoff); it must stay out: two more of its
    // reconnects fail (its log says so each time), and the device is still offline after.
    let attempts = |log: &str| {
        log.matches("broker closed the connection before CONNACK")
            .count()
            + log.matches("cannot connect to broker").count()
    };
    let at_revocation = attempts(&agent.proc.full_log());
    wait::until("two refused reconnects of the revoked agent", T, || async {
        let n = attempts(&agent.proc.full_log());
        if n >= at_revocation + 2 {
            Ok(())
        } else {
            Err(format!("{} so far", n - at_revocation))
        }
    })
    .await;
    assert!(
        agent.proc.alive(),
        "the agent should keep running and retrying"
    );
    let d = api.device(&id).await.expect("device");
    assert_eq!(d["online"], false, "a revoked device came back: {d}");
    let device_actor = format!("device:{id}");
    for (action, actor) in [
        ("device.add", "admin"),
        ("device.enroll", device_actor.as_str()),
        ("device.revoke", "admin"),
    ] {
        assert!(
            audited(&api, action, actor, &id, "ok")
                .await
                .expect("audit")
                >= 1,
            "{action} of {id} by {actor} is not audited"
        );
    }
    // A revoked device's token cannot be reused either, and a new one lets it back.
    let token = gw.enrollment_token(&id, "site=e,line=1");
    agent.proc.stop();
    let out = gw.enroll(dir, &id, &token);
    assert!(
        out.status.success(),
        "re-enrollment failed: {}",
        stderr(&out)
    );
    let _agent = Agent::enrolled(dir, &id);
    api.wait_connection(&id, "online", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_certificate_reaches_only_its_own_topics_and_integrators_only_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (a, b) = (unique_id("conf-a"), unique_id("conf-b"));
    let gw = Gateway::start(dir);
    let api = gw.api();
    for id in [&a, &b] {
        let token = gw.enrollment_token(id, "site=c");
        let out = gw.enroll(dir, id, &token);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // B is a running agent; A's credentials are used by hand with mosquitto clients.
    let _agent_b = Agent::enrolled(dir, &b);
    api.wait_connection(&b, "online", T).await;
    let creds_a = Agent::data_dir(dir, &a).join("identity");
    let a_client = edgefleet_protocol::acl::device_client_id(&a);
    let b_status = TopicKind::DeviceStatus.for_device(&b);
    let before = mqtt::retained(gw.mqtt_port, &b_status, 5).expect("B's retained status");

    // A cannot read B's desired state…
    let mut args = tls(gw.mqtts_port, &creds_a, &a_client);
    args.extend([
        "-t".into(),
        TopicKind::DeviceDesired.for_device(&b),
        "-C".into(),
        "1".into(),
        "-W".into(),
        "3".into(),
    ]);
    let sub = Command::new("mosquitto_sub")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    // Published once the front has refused the subscription (audited as it answers 0x80).
    let a_actor = format!("device:{a}");
    let b_desired = TopicKind::DeviceDesired.for_device(&b);
    wait_audited(&api, ("mqtt.subscribe", &a_actor, &b_desired, "refused"), 1).await;
    mqtt::publish(
        gw.mqtt_port,
        &TopicKind::DeviceDesired.for_device(&b),
        b"{\"probe\":1}",
        false,
    );
    let out = sub.wait_with_output().expect("mosquitto_sub");
    assert!(
        out.stdout.is_empty(),
        "device A read B's desired topic: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    // …nor publish B's status: the front closes the connection, B's status is unchanged.
    let mut args = tls(gw.mqtts_port, &creds_a, &a_client);
    args.extend([
        "-q".into(),
        "1".into(),
        "-r".into(),
        "-t".into(),
        b_status.clone(),
        "-m".into(),
        format!("{{\"schema\":1,\"device\":\"{b}\",\"forged\":true}}"),
    ]);
    let _ = run("mosquitto_pub", &args);
    // The front refuses (and audits) before anything reaches the broker.
    wait_audited(&api, ("mqtt.publish", &a_actor, &b_status, "refused"), 1).await;
    let after = mqtt::retained(gw.mqtt_port, &b_status, 5).expect("B's retained status");
    assert!(
        after.get("forged").is_none(),
        "A overwrote B's status: {after}"
    );
    assert_eq!(after["device"], before["device"]);
    // A can publish its own events.
    let mut args = tls(gw.mqtts_port, &creds_a, &a_client);
    args.extend([
        "-q".into(),
        "1".into(),
        "-t".into(),
        TopicKind::DeviceEvents.for_device(&a),
        "-m".into(),
        "{}".into(),
    ]);
    let own = run("mosquitto_pub", &args);
    assert!(own.status.success(), "A's own topic: {}", stderr(&own));

    // No certificate: no connection.
    let anon = run(
        "mosquitto_pub",
        &[
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            gw.mqtts_port.to_string(),
            "--cafile".into(),
            creds_a.join("ca.pem").display().to_string(),
            "-t".into(),
            b_status.clone(),
            "-m".into(),
            "x".into(),
        ],
    );
    assert!(
        !anon.status.success(),
        "a client without certificate connected"
    );

    // An integrator reads the read model and can publish nothing.
    let creds_i = dir.join("historian");
    let out = api.cli(&[
        "integrator",
        "add",
        "historian",
        "--out",
        &creds_i.display().to_string(),
    ]);
    assert!(out.success, "integrator add: {out:?}");
    let mut args = tls(gw.mqtts_port, &creds_i, "integrator:historian");
    args.extend([
        "-t".into(),
        topics::site_summary("c"),
        "-C".into(),
        "1".into(),
        "-W".into(),
        "10".into(),
    ]);
    let read = run("mosquitto_sub", &args);
    let summary: serde_json::Value = serde_json::from_slice(&read.stdout)
        .unwrap_or_else(|_| panic!("integrator read nothing: {}", stderr(&read)));
    assert!(summary["devices"].as_u64() >= Some(1), "{summary}");
    // Retained, so that had it gone through, the retained desired document would now be it.
    let mut args = tls(gw.mqtts_port, &creds_i, "integrator:historian");
    args.extend([
        "-q".into(),
        "1".into(),
        "-r".into(),
        "-t".into(),
        TopicKind::DeviceDesired.for_device(&b),
        "-m".into(),
        "{}".into(),
    ]);
    let _ = run("mosquitto_pub", &args);
    wait_audited(
        &api,
        (
            "mqtt.publish",
            "integrator:historian",
            &b_desired,
            "refused",
        ),
        1,
    )
    .await;
    let desired = mqtt::retained_raw(gw.mqtt_port, &b_desired, 3);
    assert_ne!(desired, b"{}", "an integrator published a desired document");
}

/// Logs on demand: the controller asks the enrolled agent (a signed command over the TLS
/// front), the agent reads its container's logs from the real engine and replies; the API and
/// the dashboard's page show the lines. A forged command gets no answer, only a security event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_logs_are_read_from_the_device_on_demand() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("logs");
    let _cleanup = Cleanup(vec![id.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();
    let _agent = gw.agent(dir, &id, "site=l");
    api.wait_connection(&id, "online", T).await;
    let compose = format!(
        "services:\n  app:\n    image: {APP_V1}\n    command: [\"/bin/sh\", \"-c\", \"echo first-line; echo 'second-line <b>'; while :; do sleep 1; done\"]\n"
    );
    api.apply(dir, "web", &format!("id={id}"), &compose);
    let path = format!("/api/v1/devices/{id}/logs?stack=web&service=app&tail=50");
    let t0 = Instant::now();
    let logs = wait::until("the service's logs", T, || async {
        let v = api.get(&path).await?;
        let lines: Vec<String> = serde_json::from_value(v["lines"].clone()).unwrap_or_default();
        if lines.iter().any(|l| l == "second-line <b>") {
            Ok(lines)
        } else {
            Err(format!("{v}"))
        }
    })
    .await;
    eprintln!(
        "logs read from the device in {:?} (incl. convergence)",
        t0.elapsed()
    );
    assert_eq!(logs[0], "first-line", "{logs:?}");
    let t1 = Instant::now();
    api.get(&path).await.expect("logs again");
    eprintln!(
        "one logs round trip through the TLS front: {:?}",
        t1.elapsed()
    );

    // The CLI uses the same API.
    let out = api.cli(&["logs", &id, "web", "app", "--tail", "5"]);
    assert!(
        out.success && out.stdout.contains("second-line <b>"),
        "{out:?}"
    );

    // Refusals say what is wrong.
    let err = api
        .get(&format!("/api/v1/devices/{id}/logs?stack=web&service=nope"))
        .await
        .expect_err("unknown service");
    assert!(err.contains("no container of service 'nope'"), "{err}");

    // The dashboard page, as plain HTML, escapes what the container wrote.
    let html = api
        .get_text(&format!("/devices/{id}/logs?stack=web&service=app"))
        .await;
    assert!(html.contains("second-line &lt;b&gt;"), "{html}");

    // A forged command on the privileged listener: no reply, a security event.
    let forged = format!(
        "{{\"schema\":1,\"device\":\"{id}\",\"request_id\":1,\"issued_at\":\"{}\",\"kind\":\"logs\",\"stack\":\"web\",\"service\":\"app\",\"tail\":5}}",
        edgefleet_protocol::now_rfc3339()
    );
    mqtt::publish(
        gw.mqtt_port,
        &TopicKind::DeviceCommands.for_device(&id),
        forged.as_bytes(),
        false,
    );
    wait::until("a security event for the unsigned command", T, || async {
        let d = api.device(&id).await?;
        let found = d["events"].as_array().into_iter().flatten().any(|e| {
            e["kind"] == "security_rejected"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("command refused"))
        });
        if found {
            Ok(())
        } else {
            Err("no event yet".to_owned())
        }
    })
    .await;
}

/// A local MQTT user made with `edgefleet mqtt-user add --read/--write`, driven with Debian's
/// mosquitto clients on the gateway's plain listener: subscribed to `#` it receives plant
/// messages its read filter matches and nothing of `edgefleet/` (the controller's retained
/// presence is there to be leaked); a read-only user's PUBLISH is acknowledged (the client
/// succeeds), dropped and audited; filters are refused for other roles and inside the
/// namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_mqtt_user_reads_and_writes_only_within_its_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let gw = Gateway::start(dir);
    let api = gw.api();
    let out = api.cli(&[
        "mqtt-user",
        "add",
        "hist",
        "--read",
        "plant/#",
        "--write",
        "none",
        "--json",
    ]);
    assert!(out.success, "{out:?}");
    let user = out.json();
    assert_eq!(user["read"], serde_json::json!(["plant/#"]), "{user}");
    assert_eq!(user["write"], serde_json::json!([]), "{user}");
    let password = user["password"].as_str().expect("password").to_owned();
    for (args, says) in [
        (
            vec!["mqtt-user", "add", "b2", "--role", "bridge", "--read", "#"],
            "apply only to role local",
        ),
        (
            vec!["mqtt-user", "add", "l2", "--read", "edgefleet/#"],
            "never reaches edgefleet/",
        ),
    ] {
        let out = api.cli(&args);
        assert!(
            !out.success && out.stderr.contains(says),
            "{args:?}: {out:?}"
        );
    }
    let listed = api.cli(&["mqtt-user", "list"]);
    assert!(
        listed
            .stdout
            .contains("hist  local; read plant/#; write none"),
        "{listed:?}"
    );

    // Retained: the controller's presence (edgefleet/), a plant value it may read, one it
    // may not (outside plant/).
    mqtt::publish(gw.mqtt_port, "plant/line3/temp", b"21", true);
    mqtt::publish(gw.mqtt_port, "office/printer", b"jam", true);
    let port = gw.mqtt_port.to_string();
    let login = ["-u", "hist", "-P", password.as_str()];
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "#",
            "-v",
            "-C",
            "2",
            "-W",
            "3",
        ])
        .args(login)
        .output()
        .expect("mosquitto_sub");
    let got = String::from_utf8_lossy(&sub.stdout);
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        ["plant/line3/temp 21"],
        "{sub:?}"
    );

    // A read-only user's PUBLISH: acknowledged (mosquitto_pub waits for the PUBACK and exits
    // 0), dropped (the retained value is unchanged), audited as refused.
    let publ = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-r"])
        .args(["-t", "plant/line3/temp", "-m", "99"])
        .args(login)
        .output()
        .expect("mosquitto_pub");
    assert!(publ.status.success(), "{publ:?}");
    wait_audited(
        &api,
        ("mqtt.publish", "local:hist", "plant/line3/temp", "refused"),
        1,
    )
    .await;
    assert_eq!(
        mqtt::retained_raw(gw.mqtt_port, "plant/line3/temp", 5),
        b"21"
    );
}

/// Revocation leaves nothing behind, and files holding secrets are private:
/// - a device enrolled again (a replaced box: `device add` + `enroll` into a new data dir)
///   makes the old box's certificate useless at once (its connection closes, it stays out);
/// - a revoked device whose retained presence still says `online` (no live connection, so no
///   will fires) is shown offline, on the bus and in the API;
/// - an integrator is revoked by name and cannot connect again;
/// - the gateway's data dir is 0700 and its store 0600; the agent's data dir 0700, its
///   state file 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_leaves_nothing_behind_and_secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("revo");
    let _cleanup = Cleanup(vec![id.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();
    let mut old_box = gw.agent(dir, &id, "site=r,line=1");
    api.wait_connection(&id, "online", T).await;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&gw.data_dir), 0o700, "gateway data dir");
    assert_eq!(
        mode(&gw.data_dir.join("edgefleet.db")),
        0o600,
        "gateway store"
    );
    let agent_dir = Agent::data_dir(dir, &id);
    assert_eq!(mode(&agent_dir), 0o700, "agent data dir");
    api.apply(
        dir,
        "web",
        &format!("id={id}"),
        &format!("services:\n  app:\n    image: {APP_V1}\n"),
    );
    wait::until("the agent saves its state", T, || async {
        let p = agent_dir.join("state.bin");
        if p.exists() {
            Ok(())
        } else {
            Err("no state.bin yet".into())
        }
    })
    .await;
    assert_eq!(
        mode(&agent_dir.join("state.bin")),
        0o600,
        "agent state file"
    );

    // A replaced box: enrolled again into a new data dir; the old box is cut off and stays
    // out (its reconnect is refused), the new one is the device now.
    let token = gw.enrollment_token(&id, "site=r,line=1");
    let new_dir = dir.join("new-box");
    let out = gw.enroll(&new_dir, &id, &token);
    assert!(out.status.success(), "re-enrollment: {}", stderr(&out));
    let failures = |log: &str| {
        log.matches("broker closed the connection before CONNACK")
            .count()
    };
    let before = failures(&old_box.proc.full_log());
    wait::until("the old box refused after re-enrollment", T, || async {
        let n = failures(&old_box.proc.full_log());
        if n > before {
            Ok(())
        } else {
            Err("no refused reconnect yet".to_owned())
        }
    })
    .await;
    let mut new_box = Agent::enrolled(&new_dir, &id);
    api.wait_connection(&id, "online", T).await;

    // Revoked while its retained presence says online and nothing is connected: stop the
    // agent (its last presence is offline), put back an `online` presence of the same
    // session as a stale retained one would be, then revoke.
    new_box.proc.stop();
    old_box.proc.stop();
    let presence_topic = TopicKind::DevicePresence.for_device(&id);
    let mut stale = mqtt::retained(gw.mqtt_port, &presence_topic, 5).expect("presence");
    stale["state"] = "online".into();
    mqtt::publish(
        gw.mqtt_port,
        &presence_topic,
        stale.to_string().as_bytes(),
        true,
    );
    api.wait_connection(&id, "online", T).await;
    let out = api.cli(&["device", "revoke", &id, "--json"]);
    assert!(out.success, "{out:?}");
    api.wait_connection(&id, "offline", T).await;
    wait::until("the retained presence says offline", T, || async {
        let p = mqtt::retained(gw.mqtt_port, &presence_topic, 5)?;
        if p["state"] == "offline" {
            Ok(())
        } else {
            Err(p.to_string())
        }
    })
    .await;

    // An integrator revoked by name.
    let creds = dir.join("scada");
    let out = api.cli(&[
        "integrator",
        "add",
        "scada",
        "--out",
        &creds.display().to_string(),
    ]);
    assert!(out.success, "{out:?}");
    let read = |wait: &str| {
        let mut args = tls(gw.mqtts_port, &creds, "integrator:scada");
        args.extend([
            "-t".into(),
            topics::controller_presence(),
            "-C".into(),
            "1".into(),
        ]);
        args.extend(["-W".into(), wait.into()]);
        run("mosquitto_sub", &args)
    };
    let before = read("10");
    assert!(
        before.status.success() && !before.stdout.is_empty(),
        "{before:?}"
    );
    let out = api.cli(&["integrator", "revoke", "scada", "--json"]);
    assert!(out.success, "{out:?}");
    assert_eq!(out.json()["certificates_revoked"], 1, "{out:?}");
    let after = read("5");
    assert!(
        after.stdout.is_empty(),
        "a revoked integrator read: {after:?}"
    );
    let again = api.cli(&["integrator", "revoke", "nobody"]);
    assert!(
        !again.success && again.stderr.contains("no certificate"),
        "{again:?}"
    );
}
