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
