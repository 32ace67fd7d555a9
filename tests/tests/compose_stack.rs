//! Acceptance: a real Compose stack on a real agent and Docker engine, as `docker compose up`
//! would run it — `web` → `api` → `db` by service name on the stack's own network, a named
//! volume, a relative bind mount under the agent's stack directory, `expose`,
//! `container_name`, `depends_on: condition: service_healthy`, `${VAR:-default}` resolved at
//! apply. What `web` reaches is read from inside the containers (logs, exec), not from our
//! status.

use std::time::Duration;

use edgefleet_tests::docker::{self, Cleanup};
use edgefleet_tests::images::{self, APP_V1};
use edgefleet_tests::procs::{Agent, Gateway};
use edgefleet_tests::{unique_id, wait};

const T: Duration = Duration::from_secs(90);

fn stack(api_name: &str) -> String {
    format!(
        r#"
x-health: &health
  interval: 1s
  timeout: 2s
  retries: 30
services:
  db:
    image: {APP_V1}
    command: ["sh", "-c", "mkdir -p /www && echo db-ok > /www/index.html && echo persisted > /data/mark && exec httpd -f -p ${{DB_PORT:-5432}} -h /www"]
    volumes: ["dbdata:/data"]
    expose: ["5432"]
    healthcheck:
      <<: *health
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:5432/"]
  api:
    image: {APP_V1}
    container_name: {api_name}
    command: ["sh", "-c", "mkdir -p /www && until wget -q -O /www/db.txt http://db:5432/; do sleep 1; done; echo api-ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    volumes: ["./conf:/conf:ro"]
    expose: ["8080"]
    depends_on:
      db: {{ condition: service_healthy }}
    healthcheck:
      <<: *health
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
    x-note: ignored, as the Compose spec says
  web:
    image: {APP_V1}
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do wget -q -O - http://api:8080/ || echo UNREACHABLE; sleep 1 & wait $$!; done"]
    depends_on:
      api: {{ condition: service_healthy }}
volumes:
  dbdata: {{}}
"#
    )
}

fn container_of(device: &str, service: &str) -> Option<String> {
    let filter_dev = format!("label=io.edgefleet.device={device}");
    let filter_svc = format!("label=io.edgefleet.service={service}");
    let out = docker::docker(&[
        "ps",
        "-q",
        "--filter",
        &filter_dev,
        "--filter",
        &filter_svc,
        "--filter",
        "status=running",
    ]);
    out.split_whitespace().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_reach_each_other_by_name() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("cmp");
    let _cleanup = Cleanup(vec![id.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();
    let _agent = gw.agent(dir, &id, "site=lyon");
    api.wait_connection(&id, "online", T).await;

    let api_name = format!("{id}-api");
    api.apply(dir, "plant", &format!("id={id}"), &stack(&api_name));

    // `web` reads `api` by service name; `api` read `db` by service name.
    let web = wait::until("web reaches api by name", T, || async {
        let web = container_of(&id, "web").ok_or("web not running")?;
        let logs = docker::docker(&["logs", "--tail", "5", &web]);
        if logs.contains("api-ok") {
            Ok(web)
        } else {
            Err(format!("web logs: {logs:?}"))
        }
    })
    .await;
    let api_c = container_of(&id, "api").expect("api running");
    assert_eq!(
        docker::docker(&["exec", &api_c, "cat", "/www/db.txt"]).trim(),
        "db-ok",
        "api fetched db by service name"
    );
    // container_name is the Docker name and a DNS name on the stack's network.
    assert_eq!(
        docker::docker(&["inspect", "-f", "{{.Name}}", &api_c]).trim(),
        format!("/{api_name}")
    );
    assert_eq!(
        docker::docker(&[
            "exec",
            &web,
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{api_name}:8080/")
        ])
        .trim(),
        "api-ok"
    );
    // The services share one network of this stack, created by the agent.
    let nets = docker::docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        &web,
    ]);
    assert!(
        nets.trim().starts_with(&format!("ef-{id}-plant-default-")),
        "{nets}"
    );
    // The relative bind mount lives in the agent's stack directory.
    let conf = Agent::data_dir(dir, &id).join("stacks/plant/conf");
    assert!(conf.is_dir(), "{} missing", conf.display());
    std::fs::write(conf.join("settings"), "from-host\n").expect("write conf");
    assert_eq!(
        docker::docker(&["exec", &api_c, "cat", "/conf/settings"]).trim(),
        "from-host"
    );
    // The named volume is mounted in db; the default log rotation is size-capped.
    let db = container_of(&id, "db").expect("db running");
    assert_eq!(
        docker::docker(&["exec", &db, "cat", "/data/mark"]).trim(),
        "persisted"
    );
    let log = docker::docker(&["inspect", "-f", "{{json .HostConfig.LogConfig}}", &db]);
    assert!(log.contains("\"max-size\":\"10m\""), "{log}");
    let exposed = docker::docker(&["inspect", "-f", "{{json .Config.ExposedPorts}}", &db]);
    assert!(exposed.contains("5432/tcp"), "{exposed}");
}

/// Site workload policies on a real agent and engine: `network_mode: host` and a host device
/// are refused at apply under the baseline, run where the site's policy allows them (read
/// from `docker inspect` and from inside the container), and are refused for another site;
/// the agent refuses a correctly signed document whose new stack breaks the policy it
/// carries; tightening the policy lists the running deployment and stops nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_policies_decide_what_runs_and_the_agent_checks_them_again() {
    use base64::Engine;
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("pol");
    let _cleanup = Cleanup(vec![id.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();
    let _agent = gw.agent(dir, &id, "site=lyon");
    api.wait_connection(&id, "online", T).await;

    let file = format!(
        "services:\n  probe:\n    image: {APP_V1}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n    network_mode: host\n    devices: [\"/dev/null:/dev/foo\"]\n"
    );
    let refused = api.try_apply(dir, "probe", &format!("id={id}"), &file);
    assert!(!refused.success, "the baseline must refuse: {refused:?}");
    // With --json the CLI prints the error as {"error": …} on standard output.
    let why = refused.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for needle in [
        "the baseline policy",
        "rule 'host_network'",
        "rule 'devices'",
        "service 'probe'",
    ] {
        assert!(why.contains(needle), "wanted {needle:?}: {why}");
    }

    // `edgefleet policy set lyon -f FILE` with `text` as the file; its JSON answer.
    let set_lyon = |text: &str| {
        let file = dir.join("lyon.yml");
        std::fs::write(&file, text).expect("write");
        let set = api.cli(&[
            "--json",
            "policy",
            "set",
            "lyon",
            "-f",
            &file.display().to_string(),
        ]);
        assert!(set.success, "{set:?}");
        set.json()
    };
    assert_eq!(
        set_lyon("host_network: true\ndevices: ['/dev/null']\n")["source"],
        "site:lyon"
    );
    let shown = api.cli(&["policy", "get", "lyon"]);
    assert!(
        shown.success && shown.stdout.contains("host_network") && shown.stdout.contains("allowed"),
        "{shown:?}"
    );

    api.apply(dir, "probe", &format!("id={id}"), &file);
    let c = wait::until("the probe runs", T, || async {
        container_of(&id, "probe").ok_or_else(|| "not running".to_owned())
    })
    .await;
    assert_eq!(
        docker::docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &c]).trim(),
        "host"
    );
    let dev = docker::docker(&["exec", &c, "ls", "-l", "/dev/foo"]);
    assert!(
        dev.starts_with('c'),
        "/dev/foo is a character device in the container: {dev}"
    );

    // Paris has no policy of its own: the baseline refuses the same file there.
    let paris = api.try_apply(dir, "probe-paris", "site=paris", &file);
    assert!(
        !paris.success && paris.stdout.contains("rule 'host_network'"),
        "{paris:?}"
    );
    let check = dir.join("probe.yml");
    let dry = api.cli(&[
        "--json",
        "policy",
        "check",
        "-f",
        &check.display().to_string(),
        "--target",
        "site=paris",
    ]);
    assert!(dry.success, "{dry:?}");
    assert_eq!(dry.json()["allowed"], false);

    // A document signed with the controller's own key whose new stack is privileged, while
    // the policy it carries (Lyon's) does not allow that: the agent refuses it.
    let topic = edgefleet_protocol::topics::TopicKind::DeviceDesired.for_device(&id);
    let current: serde_json::Value = serde_json::from_slice(&edgefleet_tests::mqtt::retained_raw(
        gw.mqtt_port,
        &topic,
        5,
    ))
    .expect("envelope");
    let mut doc = current["document"].clone();
    assert_eq!(
        doc["policy"]["host_network"], true,
        "the document carries Lyon's policy: {doc}"
    );
    doc["revision"] = (doc["revision"].as_u64().expect("revision") + 1).into();
    doc["stacks"]["rogue"] = serde_json::json!({
        "deployment": "rogue", "deployment_revision": 1,
        "services": { "root": { "image": APP_V1, "privileged": true } }
    });
    let key =
        std::fs::read_to_string(gw.data_dir.join("signing/desired-signing.key")).expect("key");
    let secret: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .expect("base64")
        .try_into()
        .expect("32 bytes");
    let signer = edgefleet_protocol::signing::DocumentSigner::from_secret(&secret);
    edgefleet_tests::mqtt::publish(
        gw.mqtt_port,
        &topic,
        &signer.sign_bytes(&serde_json::to_vec(&doc).expect("json")),
        false,
    );
    let ev = wait::until("the agent refuses the rogue stack", T, || async {
        let ev = api.events_of(&id, "security_rejected").await;
        ev.into_iter()
            .find(|e| {
                e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("breaks the workload policy")
            })
            .ok_or_else(|| "no security_rejected event yet".to_owned())
    })
    .await;
    let msg = ev["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("stack 'rogue'") && msg.contains("rule 'privileged'"),
        "{msg}"
    );
    assert!(
        container_of(&id, "root").is_none(),
        "the rogue stack must not run"
    );

    // Back to the baseline: the probe is listed as a violator and keeps running.
    let set = set_lyon("{}\n");
    let rules: Vec<String> = set["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .filter(|v| v["deployment"] == "probe")
        .map(|v| v["rule"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(rules, ["devices", "host_network"], "{set}");
    let listed = api.cli(&["policy", "violations"]);
    assert!(
        listed.success && listed.stdout.contains("probe"),
        "{listed:?}"
    );
    assert_eq!(
        container_of(&id, "probe").as_deref(),
        Some(c.as_str()),
        "a policy change stops nothing"
    );
}

/// Every file under `root` (skipping `skip`), as bytes: where a value must not appear.
fn files_under(root: &std::path::Path, skip: Option<&std::path::Path>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        if Some(d.as_path()) == skip {
            continue;
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p.display().to_string(), bytes));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Acceptance: a Compose secret reaches the container as a file, and is in clear nowhere
/// else — not in the gateway's store or data dir, not in the retained desired document as
/// the broker holds it, not in the agent's state file, not in either log at `trace`. A
/// config arrives too; a changed secret recreates the container with the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_container_and_nothing_else_holds_it() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("sec");
    let _cleanup = Cleanup(vec![id.clone()]);
    let trace = [("RUST_LOG", "trace")];
    let gw = Gateway::start_env(dir, &trace);
    let api = gw.api();
    let _agent = gw.agent_env(dir, &id, "site=lyon", &trace);
    api.wait_connection(&id, "online", T).await;

    let secret = format!("pw-{}-Zq9", id.replace('-', ""));
    std::fs::create_dir_all(dir.join("secrets")).expect("mkdir");
    std::fs::write(dir.join("secrets/db.txt"), &secret).expect("write secret");
    let file = format!(
        r#"
services:
  app:
    image: {APP_V1}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    secrets:
      - db_password
    configs:
      - source: banner
        target: /etc/banner
secrets:
  db_password:
    file: ./secrets/db.txt
configs:
  banner:
    content: "line ${{LINE:-7}}"
"#
    );
    let applied = api.apply(dir, "vault", &format!("id={id}"), &file);
    assert_eq!(applied["revision"], 1, "{applied}");
    let c = wait::until("the app runs", T, || async {
        container_of(&id, "app").ok_or_else(|| "not running".to_owned())
    })
    .await;
    assert_eq!(
        docker::docker(&["exec", &c, "cat", "/run/secrets/db_password"]),
        secret,
        "the secret is a file in the container"
    );
    assert_eq!(
        docker::docker(&["exec", &c, "cat", "/etc/banner"]),
        "line 7"
    );

    // Nowhere else in clear.
    let topic = edgefleet_protocol::topics::TopicKind::DeviceDesired.for_device(&id);
    let retained = edgefleet_tests::mqtt::retained_raw(gw.mqtt_port, &topic, 5);
    assert!(
        contains(&retained, "\"sealed\""),
        "the document carries it sealed"
    );
    assert!(!contains(&retained, &secret), "retained desired document");
    let agent_dir = Agent::data_dir(dir, &id);
    let stacks = agent_dir.join("stacks");
    let mut places = files_under(&gw.data_dir, None);
    places.extend(files_under(&agent_dir, Some(&stacks)));
    assert!(
        places.iter().any(|(p, _)| p.ends_with("edgefleet.db")),
        "the store was searched: {:?}",
        places.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    assert!(places.iter().any(|(p, _)| p.ends_with("state.bin")));
    for (path, bytes) in &places {
        assert!(
            !contains(bytes, &secret),
            "the secret is in clear in {path}"
        );
    }
    let logs = [gw.proc.full_log(), _agent.proc.full_log()];
    assert!(
        logs[1].contains("TRACE") || logs[1].contains("trace"),
        "agent logs at trace"
    );
    for log in &logs {
        assert!(!log.contains(&secret), "the secret is in a log");
    }
    // The agent's copy (what Docker mounts) sits in its private stack directory.
    use std::os::unix::fs::PermissionsExt;
    let private = stacks.join("vault/.edgefleet");
    assert_eq!(
        std::fs::metadata(&private)
            .expect("stack files")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // A new secret: a new revision, the container recreated with the new file.
    let secret2 = format!("{secret}-2");
    std::fs::write(dir.join("secrets/db.txt"), &secret2).expect("write secret");
    assert_eq!(
        api.apply(dir, "vault", &format!("id={id}"), &file)["revision"],
        2
    );
    wait::until("the new secret is mounted", T, || async {
        let c2 = container_of(&id, "app").ok_or("not running")?;
        let got = docker::docker(&["exec", &c2, "cat", "/run/secrets/db_password"]);
        if c2 != c && got == secret2 {
            Ok(())
        } else {
            Err(format!("{c2}: {got:?}"))
        }
    })
    .await;

    // A secret from a variable the file also interpolates would be kept in clear: refused.
    let leaky = format!(
        "services:\n  app:\n    image: {APP_V1}\n    environment: [\"T=${{TOKEN}}\"]\n    secrets: [tok]\nsecrets:\n  tok:\n    environment: TOKEN\n"
    );
    let file = dir.join("leaky.yml");
    std::fs::write(&file, &leaky).expect("write");
    let out = api.cli(&[
        "--json",
        "apply",
        "-f",
        &file.display().to_string(),
        "--name",
        "leaky",
        "--target",
        &format!("id={id}"),
        "--var",
        "TOKEN=abc",
    ]);
    assert!(
        !out.success && out.stdout.contains("would then be kept and sent in clear"),
        "{out:?}"
    );

    // The deployment deleted: its container goes, and with it the agent's copy of the secret.
    let deleted = api.cli(&["delete", "deployment", "vault"]);
    assert!(deleted.success, "{deleted:?}");
    wait::until("the stack's secret files are removed", T, || async {
        if private.exists() {
            Err(format!("{} still there", private.display()))
        } else {
            Ok(())
        }
    })
    .await;
}

/// Private registries: an image behind a registry login is pulled once an admin sets the
/// credential for the device's site — and only then; the password is in clear neither in
/// the store, the retained document, the agent's state file nor the logs, and `registry
/// list` never shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_credential_reaches_only_its_sites_devices() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let id = unique_id("reg");
    let _cleanup = Cleanup(vec![id.clone()]);
    let mut registry = edgefleet_tests::registry::Registry::start(dir);
    let image = registry.push(APP_V1, &format!("{id}/app:v1"));
    let password = format!("rp-{}-K7", id.replace('-', ""));
    registry.require_login(dir, "plant", &password);

    let trace = [("RUST_LOG", "trace")];
    let gw = Gateway::start_env(dir, &trace);
    let api = gw.api();
    let _agent = gw.agent_env(dir, &id, "site=lyon", &trace);
    api.wait_connection(&id, "online", T).await;

    let file = format!(
        "services:\n  app:\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n"
    );
    api.apply(dir, "private", &format!("id={id}"), &file);
    // Without a credential the registry refuses the pull.
    wait::until("the pull is refused", T, || async {
        let failed = api.events_of(&id, "failed").await;
        let pulls: Vec<_> = failed
            .iter()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| m.contains(&image))
            .collect();
        if pulls.is_empty() {
            Err("no failed pull yet".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    assert!(container_of(&id, "app").is_none());

    // Scoped to another site: still nothing for this device.
    let host = image.split('/').next().expect("host").to_owned();
    let set = |site: &str| {
        let pw = dir.join("pw");
        std::fs::write(&pw, &password).expect("write");
        let out = api.cli(&[
            "--json",
            "registry",
            "set",
            &host,
            "--username",
            "plant",
            "--password-file",
            &pw.display().to_string(),
            "--site",
            site,
        ]);
        assert!(out.success, "{out:?}");
        assert!(!out.stdout.contains(&password), "{out:?}");
    };
    set("paris");
    let doc = api.device(&id).await.expect("device");
    assert!(
        doc.pointer("/desired/registries")
            .is_none_or(|r| r.as_object().is_none_or(|m| m.is_empty())),
        "paris' credential must not reach a lyon device: {doc}"
    );
    set("lyon");
    let c = wait::until("the app runs from the private registry", T, || async {
        container_of(&id, "app").ok_or_else(|| "not running".to_owned())
    })
    .await;
    assert_eq!(
        docker::docker(&["inspect", "-f", "{{.Config.Image}}", &c]).trim(),
        image
    );
    let listed = api.cli(&["registry", "list"]);
    assert!(
        listed.success && listed.stdout.contains(&host) && listed.stdout.contains("lyon"),
        "{listed:?}"
    );
    assert!(!listed.stdout.contains(&password));

    let topic = edgefleet_protocol::topics::TopicKind::DeviceDesired.for_device(&id);
    let retained = edgefleet_tests::mqtt::retained_raw(gw.mqtt_port, &topic, 5);
    assert!(
        contains(&retained, "\"registries\""),
        "the document carries the credential"
    );
    let agent_dir = Agent::data_dir(dir, &id);
    let mut places = files_under(&gw.data_dir, None);
    places.extend(files_under(&agent_dir, None));
    places.push(("retained desired document".into(), retained));
    places.push(("gateway log".into(), gw.proc.full_log().into_bytes()));
    places.push(("agent log".into(), _agent.proc.full_log().into_bytes()));
    for (path, bytes) in &places {
        assert!(
            !contains(bytes, &password),
            "the registry password is in clear in {path}"
        );
    }
    let audit = api.cli(&["--json", "audit", "list"]);
    assert!(
        audit.success && audit.stdout.contains("registry.set"),
        "{audit:?}"
    );
    assert!(!audit.stdout.contains(&password));
}

/// Acceptance: one file, resolved per device on real agents and engines — `${VAR:-x}` takes
/// a site's variable where the site keeps one and the default elsewhere, the built-ins give
/// each device its own id and site; a device variable changes only that device's container.
/// Read from the containers' environment (`docker inspect`), not from our status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_resolves_per_device_on_real_agents() {
    images::ensure();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let lyon = unique_id("pdl");
    let paris = unique_id("pdp");
    let _cleanup = Cleanup(vec![lyon.clone(), paris.clone()]);
    let gw = Gateway::start(dir);
    let api = gw.api();
    let _a = gw.agent(dir, &lyon, "site=lyon");
    let _b = gw.agent(dir, &paris, "site=paris");
    api.wait_connection(&lyon, "online", T).await;
    api.wait_connection(&paris, "online", T).await;

    let set = api.cli(&["vars", "set", "--site", "lyon", "GREETING=bonjour"]);
    assert!(set.success, "{set:?}");
    let file = format!(
        "services:\n  app:\n    image: {APP_V1}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n    environment:\n      MSG: \"${{GREETING:-hello}} from ${{EDGEFLEET_DEVICE}} at ${{EDGEFLEET_SITE}}\"\n"
    );
    let target = format!("id={lyon}|{paris}");
    api.apply(dir, "greet", &target, &file);
    let msg_of = |device: String| async move {
        let c = container_of(&device, "app").ok_or("not running")?;
        let env = docker::docker(&["inspect", "-f", "{{json .Config.Env}}", &c]);
        env.split('"')
            .find_map(|e| e.strip_prefix("MSG=").map(str::to_owned))
            .map(|m| (c, m))
            .ok_or_else(|| format!("no MSG in {env}"))
    };
    let (lyon_c, lyon_msg) = wait::until("lyon's app runs", T, || msg_of(lyon.clone())).await;
    let (_, paris_msg) = wait::until("paris' app runs", T, || msg_of(paris.clone())).await;
    assert_eq!(lyon_msg, format!("bonjour from {lyon} at lyon"));
    assert_eq!(paris_msg, format!("hello from {paris} at paris"));

    // A device variable: only that device's container changes.
    let set = api.cli(&["vars", "set", "--device", &paris, "GREETING=salut"]);
    assert!(set.success, "{set:?}");
    wait::until("paris' container has the device's value", T, || async {
        let (_, m) = msg_of(paris.clone()).await?;
        if m == format!("salut from {paris} at paris") {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await;
    assert_eq!(
        container_of(&lyon, "app").as_deref(),
        Some(lyon_c.as_str()),
        "lyon's container is untouched"
    );
}
