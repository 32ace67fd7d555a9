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
