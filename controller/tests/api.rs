//! The HTTP API on a real socket, without a broker: every refusal is a 4xx with a sentence
//! saying what to change, and a refused request records nothing.

use edgefleet_controller::App;
use edgefleet_domain::access::Role;
use edgefleet_domain::user::User;
use edgefleet_store::Store;
use serde_json::{Value, json};

struct Server {
    base: String,
    http: reqwest::Client,
    token: String,
    fleet: std::sync::Arc<edgefleet_controller::services::fleet::Fleet>,
    vault: std::sync::Arc<edgefleet_controller::services::vault::Vault>,
    store: Store,
    _dir: tempfile::TempDir,
}

/// An admin and a token of theirs, written straight into the store.
async fn admin_token(store: &Store) -> String {
    user_token(store, "admin", Role::Admin, &[]).await
}

/// A user of `role` in `sites` and a token of theirs, written straight into the store.
async fn user_token(store: &Store, name: &str, role: Role, sites: &[&str]) -> String {
    let user = User {
        username: name.into(),
        role,
        sites: sites.iter().map(|s| s.to_string()).collect(),
        created_at: "t".into(),
        disabled: false,
        password_hash: String::new(),
    };
    store.insert_user(user).await.unwrap();
    let token = edgefleet_controller::services::users::new_token();
    let digest = edgefleet_controller::services::users::token_digest(&token);
    store
        .insert_token(&digest, name, "test", "t", i64::MAX, 0)
        .await
        .unwrap();
    token
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = App::open(dir.path()).await.unwrap();
    let token = admin_token(&ctrl.store).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = edgefleet_controller::http::router(ctrl.api_state());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        base,
        http: reqwest::Client::new(),
        token,
        fleet: ctrl.fleet.clone(),
        vault: ctrl.vault.clone(),
        store: ctrl.store.clone(),
        _dir: dir,
    }
}

impl Server {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET /api/v1/deployments`: the list.
    async fn deployments(&self) -> Value {
        let (_, list) = self
            .call(reqwest::Method::GET, "/api/v1/deployments", None)
            .await;
        list["deployments"].clone()
    }

    /// A device of `site` in the fleet view, as if it had been enrolled and reported.
    fn add_device(&self, id: &str, site: &str) {
        let mut d = edgefleet_domain::device::DeviceView::new(id);
        d.labels.insert("site".into(), site.into());
        self.fleet.devices.insert(id.into(), d);
    }

    /// `PUT /api/v1/policies/sites/{site}` with `text` as the policy file.
    async fn set_policy(&self, site: &str, text: &str) -> (u16, Value) {
        let body = json!({ "policy": text }).to_string();
        let path = format!("/api/v1/policies/sites/{site}");
        self.call(reqwest::Method::PUT, &path, Some(&body)).await
    }

    async fn apply(&self, name: &str, target: &str, compose: &str) -> (u16, Value) {
        let body = json!({ "name": name, "target": target, "compose": compose }).to_string();
        self.call(reqwest::Method::POST, "/api/v1/deployments", Some(&body))
            .await
    }
}

const GOOD: &str = "services:\n  app:\n    image: app:1\n";

#[tokio::test]
async fn refusals_are_clear_and_record_nothing() {
    let s = server().await;
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "web",
            "site=lyon",
            "services:\n  app:\n    image: a\n    blkio_config: {}\n",
            "key 'blkio_config' is not supported",
        ),
        ("web/x", "*", GOOD, "deployment name"),
        ("web", "site", GOOD, "not key=value"),
        ("web", "", GOOD, "empty target"),
        ("web", "*", "services: [", "not valid YAML"),
    ];
    for (name, target, compose, needle) in cases {
        let (status, body) = s.apply(name, target, compose).await;
        assert_eq!(status, 400, "{name} {target}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "wanted {needle:?} in {msg:?}");
    }
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some("{\"name\": 5"),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("request body"),
        "{body}"
    );
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some("{\"name\": \"x\"}"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        s.deployments().await,
        json!([]),
        "refused requests must record nothing"
    );
}

#[tokio::test]
async fn apply_variables_are_interpolated_and_builtins_reserved() {
    let s = server().await;
    let file = "services:\n  app:\n    image: \"app:${TAG}\"\n    environment: { MODE: \"${MODE:-eco}\" }\n";
    let post = |vars: Value| {
        json!({ "name": "vars", "target": "*", "compose": file, "variables": vars }).to_string()
    };
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(&post(json!({}))),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("services.app.image") && msg.contains("'TAG' is not set"),
        "{msg}"
    );
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(&post(json!({ "EDGEFLEET_SITE": "x", "TAG": "1" }))),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("EDGEFLEET_"),
        "{body}"
    );
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(&post(json!({ "TAG": "1.4" }))),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The values are part of the revision: same file, same values → unchanged; another
    // value → a new revision.
    for (tag, status_want, changed) in [("1.4", 200, false), ("1.5", 201, true)] {
        let (status, body) = s
            .call(
                reqwest::Method::POST,
                "/api/v1/deployments",
                Some(&post(json!({ "TAG": tag }))),
            )
            .await;
        assert_eq!(status, status_want, "{tag}: {body}");
        assert_eq!(body["changed"], json!(changed), "{tag}: {body}");
    }
}

#[tokio::test]
async fn revisions_history_and_delete() {
    let s = server().await;
    let (status, body) = s.apply("web", "site=lyon", GOOD).await;
    assert_eq!(
        (status, body["revision"].clone(), body["changed"].clone()),
        (201, json!(1), json!(true))
    );
    let (status, body) = s.apply("web", "site=lyon", GOOD).await;
    assert_eq!(
        (status, body["revision"].clone(), body["changed"].clone()),
        (200, json!(1), json!(false))
    );
    let (status, body) = s.apply("web", "site=paris", GOOD).await;
    assert_eq!(
        (status, body["revision"].clone()),
        (201, json!(2)),
        "a new target is a new revision"
    );

    let (_, dep) = s
        .call(reqwest::Method::GET, "/api/v1/deployments/web", None)
        .await;
    assert_eq!(dep["revisions"].as_array().map(Vec::len), Some(2));
    assert_eq!(dep["compose"], GOOD);
    let (status, rev) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/deployments/web/revisions/1",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(rev["revision"]["target"], "site=lyon");
    assert_eq!(rev["spec"]["services"]["app"]["image"], "app:1");
    let (status, _) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/deployments/web/revisions/9",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/deployments/web/revisions/latest",
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("whole number"),
        "{body}"
    );

    let (status, diff) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/deployments/web/diff?from=1&to=2",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let text = diff["diff"].as_str().unwrap_or_default();
    assert!(
        text.contains("-# target: site=lyon") && text.contains("+# target: site=paris"),
        "{text}"
    );
    let (status, _) = s
        .call(
            reqwest::Method::GET,
            "/api/v1/deployments/web/diff?from=1",
            None,
        )
        .await;
    assert_eq!(status, 400);

    let (status, _) = s
        .call(reqwest::Method::DELETE, "/api/v1/deployments/web", None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .call(reqwest::Method::DELETE, "/api/v1/deployments/web", None)
        .await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no deployment 'web'")
    );
    let (status, _) = s
        .call(reqwest::Method::GET, "/api/v1/devices/nope", None)
        .await;
    assert_eq!(status, 404);
    let (status, body) = s.call(reqwest::Method::GET, "/api/v1/nothing", None).await;
    assert_eq!(status, 404, "{body}");
}

/// Site workload policies: the baseline refuses at apply naming service, key and rule; an
/// admin opens a site; the desired document carries its device's policy; tightening lists
/// the violators (audited) and stops nothing; operators may check but not set.
#[tokio::test]
async fn workload_policies_refuse_at_apply_and_list_violators_after_a_change() {
    let s = server().await;
    for (id, site) in [("press-01", "lyon"), ("press-02", "paris")] {
        s.add_device(id, site);
    }
    let svc = |extra: &str| format!("services:\n  flows:\n    image: nodered/node-red:3\n{extra}");
    let refused: &[(&str, String, &[&str])] = &[
        (
            "site=lyon",
            svc("    privileged: true\n"),
            &[
                "the baseline policy",
                "service 'flows', key 'privileged'",
                "policy rule 'privileged'",
            ],
        ),
        (
            "site=lyon",
            svc("    volumes: [\"/:/host\"]\n"),
            &["key 'volumes'", "host path '/'", "rule 'host_paths'"],
        ),
        (
            "site=lyon",
            svc("    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n"),
            &["rule 'host_paths'"],
        ),
        (
            "site=lyon",
            svc("    network_mode: host\n"),
            &["rule 'host_network'"],
        ),
        (
            "site=lyon",
            svc("    devices: [\"/dev/null:/dev/foo\"]\n"),
            &["host device '/dev/null'", "rule 'devices'"],
        ),
        (
            "site=lyon",
            svc("    cap_add: [SYS_ADMIN]\n"),
            &["capability SYS_ADMIN", "rule 'capabilities'"],
        ),
    ];
    for (target, file, needles) in refused {
        let (status, body) = s.apply("flows", target, file).await;
        assert_eq!(status, 400, "{file}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        for n in *needles {
            assert!(msg.contains(n), "wanted {n:?} in {msg:?}");
        }
    }
    assert_eq!(
        s.deployments().await,
        json!([]),
        "a refused apply records nothing"
    );

    // Lyon: privileged, host network and /dev/null allowed; images from two registries only,
    // with a memory limit.
    let lyon = "privileged: true\nhost_network: true\ndevices: ['/dev/null']\nregistries: [registry.plant.local, docker.io]\nrequire_memory_limit: true\nmax_log_size: 50m\n";
    let put = |p: &str| json!({ "policy": p }).to_string();
    let (status, body) = s.set_policy("lyon", lyon).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "site:lyon");
    assert_eq!(body["policy"]["max_log_bytes"], 50 << 20);
    assert_eq!(body["violations"], json!([]));
    let open = svc(
        "    privileged: true\n    network_mode: host\n    devices: [\"/dev/null:/dev/foo\"]\n    mem_limit: 256m\n",
    );
    // A dry run shows what each device would run, resolved, and the policies that allow it.
    let dry = json!({ "name": "flows", "target": "site=lyon", "compose": open, "dry_run": true })
        .to_string();
    let (status, body) = s
        .call(reqwest::Method::POST, "/api/v1/deployments", Some(&dry))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policies"], json!(["site:lyon"]), "{body}");
    assert_eq!(
        body["would_run"]["services"]["flows"]["privileged"], true,
        "{body}"
    );
    assert_eq!(
        body["would_run"]["services"]["flows"]["memory_bytes"],
        256 << 20,
        "{body}"
    );
    let (status, body) = s.apply("flows", "site=lyon", &open).await;
    assert_eq!(status, 201, "{body}");
    let doc = s.fleet.get("press-01").unwrap().desired.unwrap();
    assert!(doc.stacks.contains_key("flows"));
    let carried = doc
        .policy
        .expect("the document carries its device's policy");
    assert!(carried.privileged && carried.host_network);
    for (file, needle) in [
        (
            svc("    image: ghcr.io/x/miner:1\n    mem_limit: 64m\n")
                .replace("    image: nodered/node-red:3\n", ""),
            "rule 'registries'",
        ),
        (svc(""), "rule 'require_memory_limit'"),
    ] {
        let (status, body) = s.apply("other", "site=lyon", &file).await;
        assert_eq!(status, 400, "{file}: {body}");
        assert!(
            body["error"].as_str().unwrap_or_default().contains(needle),
            "{needle}: {body}"
        );
    }
    // Paris still runs under the baseline: the same file is refused there.
    let (status, body) = s.apply("flows-paris", "site=paris", &open).await;
    assert_eq!(status, 400, "{body}");
    // ... and `policy check` lists every refusal without recording anything.
    let check =
        json!({ "name": "flows-paris", "target": "site=paris", "compose": open }).to_string();
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/policies/check",
            Some(&check),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["allowed"], false);
    assert_eq!(body["devices"], json!(["press-02"]));
    let rules: Vec<&str> = body["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["privileged", "host_network", "devices"], "{body}");

    // Tightening Lyon back to the baseline lists the running deployment; it keeps running.
    let (status, body) = s.set_policy("lyon", "{}").await;
    assert_eq!(status, 200, "{body}");
    let violations = body["violations"].as_array().unwrap();
    let rules: Vec<&str> = violations
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["devices", "host_network", "privileged"], "{body}");
    assert!(
        violations
            .iter()
            .all(|v| v["deployment"] == "flows" && v["devices"] == json!(["press-01"])),
        "{body}"
    );
    assert!(
        s.fleet
            .get("press-01")
            .unwrap()
            .desired
            .unwrap()
            .stacks
            .contains_key("flows"),
        "nothing is stopped"
    );
    let (_, listed) = s
        .call(reqwest::Method::GET, "/api/v1/policies/violations", None)
        .await;
    assert_eq!(
        listed["violations"].as_array().unwrap().len(),
        3,
        "{listed}"
    );
    let audit = s
        .store
        .audit_page(edgefleet_store::audit::PageQuery {
            since: None,
            site: None,
            text: None,
            before: None,
            limit: 1000,
        })
        .await
        .unwrap();
    let mut set: Vec<_> = audit.iter().filter(|r| r.action == "policy.set").collect();
    set.sort_by_key(|r| r.seq);
    assert_eq!(set.len(), 2, "both changes are audited");
    let last: Value = serde_json::from_str(&set[1].detail).unwrap();
    assert_eq!(last["violations"], 3, "{last}");
    assert_eq!(set[1].site, "lyon");

    // Operators of Lyon may check and read, not set; nonsense is refused naming the field.
    let op = user_token(&s.store, "ana", Role::Operator, &["lyon"]).await;
    let resp = s
        .http
        .put(format!("{}/api/v1/policies/sites/lyon", s.base))
        .bearer_auth(&op)
        .header("content-type", "application/json")
        .body(put("privileged: true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let (status, body) = s.set_policy("lyon", "privilegd: true").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("privilegd"),
        "{body}"
    );
    let (status, body) = s
        .call(reqwest::Method::DELETE, "/api/v1/policies/sites/lyon", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source"], "baseline");
}

/// A staged revision applied while the site's policy allowed it cannot be rolled out once the
/// policy forbids it: the start is refused naming the rule, before any agent is sent it.
#[tokio::test]
async fn a_rollout_start_rechecks_the_policy() {
    let s = server().await;
    s.add_device("press-01", "lyon");
    let (status, _) = s.set_policy("lyon", "privileged: true").await;
    assert_eq!(status, 200);
    let staged = "x-edgefleet-rollout: { canary: 1 }\nservices:\n  app:\n    image: app:1\n";
    assert_eq!(s.apply("app", "site=lyon", staged).await.0, 201);
    let v2 = staged.replace("image: app:1", "image: app:2\n    privileged: true");
    let (status, body) = s.apply("app", "site=lyon", &v2).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["held"], json!(["press-01"]), "{body}");
    let (status, _) = s.set_policy("lyon", "{}").await;
    assert_eq!(status, 200);
    let start = json!({ "deployment": "app" }).to_string();
    let (status, body) = s
        .call(reqwest::Method::POST, "/api/v1/rollouts", Some(&start))
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("revision 2 of 'app' is no longer allowed")
            && msg.contains("rule 'privileged'"),
        "{msg}"
    );
}

/// Secrets and registry credentials through the API: sealed for each device's enrolled key
/// in its document (only the device opens them), refused for a device the gateway has no key
/// for, never shown by the API; registry credentials reach only their sites' devices, and
/// only admins set them.
#[tokio::test]
async fn secrets_and_registry_credentials_are_sealed_for_each_device() {
    use edgefleet_protocol::sealed::{OpeningKey, registry_info, secret_info};
    let s = server().await;
    s.add_device("d1", "lyon");
    s.add_device("d2", "lyon");
    let key = OpeningKey::generate();
    s.vault
        .note_device_key_hex("d1", &hex::encode(key.sealing_key().to_sec1()));
    let file = "services:\n  app:\n    image: registry.plant.local/app:1\n    secrets: [db]\nsecrets:\n  db:\n    file: ./db.txt\n";
    let post = |target: &str| {
        json!({ "name": "vault", "target": target, "compose": file, "files": { "./db.txt": "hunter2" } })
            .to_string()
    };
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(&post("id=d2")),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("device 'd2' has no enrolled key"),
        "{body}"
    );
    let (status, body) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(&post("id=d1")),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(!body.to_string().contains("hunter2"), "{body}");
    let doc = s.fleet.get("d1").unwrap().desired.unwrap();
    let sealed = doc.stacks["vault"].secrets["db"]
        .sealed
        .clone()
        .expect("sealed");
    assert_eq!(
        key.open(&secret_info("d1", "vault", "db"), &sealed)
            .unwrap()
            .bytes(),
        b"hunter2"
    );
    assert!(!serde_json::to_string(&doc).unwrap().contains("hunter2"));
    let digest = &doc.stacks["vault"].services["app"].extra.secrets[0].digest;
    assert!(!digest.is_empty());
    let (_, detail) = s
        .call(reqwest::Method::GET, "/api/v1/devices/d1", None)
        .await;
    let (_, deployment) = s
        .call(reqwest::Method::GET, "/api/v1/deployments/vault", None)
        .await;
    for shown in [&detail, &deployment] {
        assert!(!shown.to_string().contains("hunter2"), "{shown}");
    }
    // A file resolved per device keeps its configs' files and its secrets' digests, never
    // the secrets' content: each device's stack still mounts both.
    let templated = "services:\n  app:\n    image: \"app:${EDGEFLEET_SITE}\"\n    secrets: [db]\n    configs: [conf]\nsecrets:\n  db:\n    file: ./db.txt\nconfigs:\n  conf:\n    file: ./conf.ini\n";
    let body = json!({ "name": "per-site", "target": "id=d1", "compose": templated,
        "files": { "./db.txt": "hunter2", "./conf.ini": "[plant]" } })
    .to_string();
    let (status, out) = s
        .call(reqwest::Method::POST, "/api/v1/deployments", Some(&body))
        .await;
    assert_eq!(status, 201, "{out}");
    let doc = s.fleet.get("d1").unwrap().desired.unwrap();
    let stack = &doc.stacks["per-site"];
    assert_eq!(stack.services["app"].image, "app:lyon");
    assert_eq!(stack.configs["conf"].content, "[plant]");
    let sealed = stack.secrets["db"]
        .sealed
        .clone()
        .expect("sealed per device");
    assert_eq!(
        key.open(&secret_info("d1", "per-site", "db"), &sealed)
            .unwrap()
            .bytes(),
        b"hunter2"
    );
    let (_, revisions) = s
        .call(reqwest::Method::GET, "/api/v1/deployments/per-site", None)
        .await;
    assert!(!revisions.to_string().contains("hunter2"), "{revisions}");
    let stored = s.store.revisions("per-site").await.unwrap();
    assert!(stored.iter().all(|r| !r.spec_json.contains("hunter2")));

    // The same file and content again: nothing new; another content: a new revision.
    let (status, _) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(&post("id=d1")),
        )
        .await;
    assert_eq!(status, 200);
    let revision = s.fleet.get("d1").unwrap().desired_revision();

    // Registry credentials: admins only; paris' does not reach a lyon device, lyon's does.
    let operator = user_token(&s.store, "op", Role::Operator, &[]).await;
    let put = |sites: Value| {
        json!({ "username": "plant", "password": "s3cret-pw", "sites": sites }).to_string()
    };
    let resp = s
        .http
        .put(format!("{}/api/v1/registries/registry.plant.local", s.base))
        .bearer_auth(&operator)
        .header("content-type", "application/json")
        .body(put(json!(["lyon"])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let path = "/api/v1/registries/registry.plant.local";
    let (status, body) = s
        .call(reqwest::Method::PUT, path, Some(&put(json!(["paris"]))))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        s.fleet
            .get("d1")
            .unwrap()
            .desired
            .unwrap()
            .registries
            .is_empty()
    );
    assert_eq!(s.fleet.get("d1").unwrap().desired_revision(), revision);
    let (status, body) = s
        .call(reqwest::Method::PUT, path, Some(&put(json!(["lyon"]))))
        .await;
    assert_eq!(status, 200, "{body}");
    let doc = s.fleet.get("d1").unwrap().desired.unwrap();
    assert_eq!(
        doc.revision,
        revision + 1,
        "the credential comes with a new document"
    );
    let login = key
        .open(
            &registry_info("d1", "registry.plant.local"),
            doc.registries["registry.plant.local"]
                .sealed
                .as_ref()
                .unwrap(),
        )
        .unwrap();
    assert!(String::from_utf8_lossy(login.bytes()).contains("s3cret-pw"));
    let (_, list) = s
        .call(reqwest::Method::GET, "/api/v1/registries", None)
        .await;
    assert_eq!(list["registries"][0]["sites"], json!(["lyon"]));
    assert!(!list.to_string().contains("s3cret-pw"), "{list}");
    for bad in [
        json!({ "username": "u", "password": "p" }),
        json!({ "username": "u", "password": "p", "sites": ["lyon"], "all_sites": true }),
    ] {
        let (status, body) = s
            .call(reqwest::Method::PUT, path, Some(&bad.to_string()))
            .await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, _) = s
        .call(
            reqwest::Method::PUT,
            "/api/v1/registries/HTTPS:%2F%2Fx",
            Some(&put(json!(["lyon"]))),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s.call(reqwest::Method::DELETE, path, None).await;
    assert_eq!(status, 200);
    assert!(
        s.fleet
            .get("d1")
            .unwrap()
            .desired
            .unwrap()
            .registries
            .is_empty()
    );
}

/// A file using `${EDGEFLEET_SITE}`, `${EDGEFLEET_DEVICE}` and a site variable is resolved per
/// device: refused at apply naming the first device that cannot be resolved, shown per device
/// by a dry run, each device's document its own; a device variable re-resolves that device
/// only; a variable unset later leaves the device on what it has, with an alarm and an event.
#[tokio::test]
async fn per_device_variables_resolve_each_device_and_follow_changes() {
    use reqwest::Method;
    let s = server().await;
    s.add_device("press-07", "lyon");
    s.add_device("press-21", "paris");
    let file = "services:\n  bridge:\n    image: \"bridge:${TAG}\"\n    environment:\n      SITE: \"${EDGEFLEET_SITE}\"\n      DEVICE: \"${EDGEFLEET_DEVICE}\"\n      LINE_IP: \"${LINE_IP}\"\n";
    let post = |dry: bool| {
        json!({ "name": "bridge", "target": "*", "compose": file, "variables": { "TAG": "2" }, "dry_run": dry })
            .to_string()
    };
    let put = |vars: Value| json!({ "variables": vars }).to_string();
    let env = |id: &str| {
        let doc = s.fleet.get(id).unwrap().desired.unwrap();
        (
            doc.revision,
            doc.stacks["bridge"].services["bridge"].environment.clone(),
        )
    };

    // LINE_IP is kept nowhere: refused naming the first device and the variable.
    let (status, body) = s
        .call(Method::POST, "/api/v1/deployments", Some(&post(false)))
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("device 'press-07': variable 'LINE_IP' is not set")
            && msg.contains("edgefleet vars set --device press-07 LINE_IP=")
            && msg.contains("--site lyon"),
        "{msg}"
    );
    let (status, body) = s
        .call(Method::POST, "/api/v1/policies/check", Some(&post(false)))
        .await;
    assert_eq!(status, 400, "policy check resolves per device too: {body}");
    assert_eq!(s.deployments().await, json!([]), "nothing recorded");

    for (site, ip) in [("lyon", "10.1.0.1"), ("paris", "10.2.0.1")] {
        let (status, body) = s
            .call(
                Method::PUT,
                &format!("/api/v1/variables/sites/{site}"),
                Some(&put(json!({ "LINE_IP": ip }))),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["scope"], format!("site:{site}"));
        assert_eq!(body["variables"][0]["value"], ip, "{body}");
    }
    let (status, body) = s
        .call(
            Method::PUT,
            "/api/v1/variables/sites/lyon",
            Some(&put(json!({ "EDGEFLEET_SITE": "x" }))),
        )
        .await;
    assert_eq!(status, 400, "built-ins cannot be set: {body}");

    // A dry run shows each device's stack and values; it records nothing.
    let (status, body) = s
        .call(Method::POST, "/api/v1/deployments", Some(&post(true)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("would_run").is_none(), "{body}");
    let per = &body["would_run_per_device"];
    assert_eq!(
        per["press-07"]["services"]["bridge"]["environment"]["SITE"],
        "lyon"
    );
    assert_eq!(
        per["press-21"]["services"]["bridge"]["environment"]["LINE_IP"],
        "10.2.0.1"
    );
    assert_eq!(per["press-21"]["deployment_revision"], 1);
    let vars07 = body["variables_per_device"]["press-07"].as_array().unwrap();
    assert!(
        vars07.contains(&json!({ "name": "EDGEFLEET_SITE", "value": "lyon", "source": "builtin" }))
            && vars07
                .contains(&json!({ "name": "LINE_IP", "value": "10.1.0.1", "source": "site" }))
            && vars07.contains(&json!({ "name": "TAG", "value": "2", "source": "apply" })),
        "{body}"
    );
    assert_eq!(
        s.deployments().await,
        json!([]),
        "a dry run records nothing"
    );

    // Apply: the two documents differ by device and site.
    let (status, body) = s
        .call(Method::POST, "/api/v1/deployments", Some(&post(false)))
        .await;
    assert_eq!(status, 201, "{body}");
    let (rev07, env07) = env("press-07");
    let (rev21, env21) = env("press-21");
    assert_eq!(
        (
            env07["SITE"].as_str(),
            env07["DEVICE"].as_str(),
            env07["LINE_IP"].as_str()
        ),
        ("lyon", "press-07", "10.1.0.1")
    );
    assert_eq!(
        (
            env21["SITE"].as_str(),
            env21["DEVICE"].as_str(),
            env21["LINE_IP"].as_str()
        ),
        ("paris", "press-21", "10.2.0.1")
    );
    let (status, body) = s
        .call(Method::POST, "/api/v1/deployments", Some(&post(false)))
        .await;
    assert_eq!(
        (status, body["changed"].clone()),
        (200, json!(false)),
        "same source, same apply values: unchanged"
    );

    // A device variable wins over its site's and moves only that device.
    let (status, body) = s
        .call(
            Method::PUT,
            "/api/v1/variables/devices/press-07",
            Some(&put(json!({ "LINE_IP": "10.1.0.7" }))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"], json!(["press-07"]));
    assert_eq!(body["unresolved"], json!({}));
    let (rev, env07) = env("press-07");
    assert_eq!((rev, env07["LINE_IP"].as_str()), (rev07 + 1, "10.1.0.7"));
    assert_eq!(env("press-21").0, rev21, "the other device is untouched");
    let (_, detail) = s.call(Method::GET, "/api/v1/devices/press-07", None).await;
    let shown = detail["variables"]["bridge"].as_array().unwrap();
    assert!(
        shown.contains(&json!({ "name": "LINE_IP", "value": "10.1.0.7", "source": "device" }))
            && shown.contains(
                &json!({ "name": "EDGEFLEET_DEVICE", "value": "press-07", "source": "builtin" })
            ),
        "{detail}"
    );
    assert_eq!(detail["unresolved"], json!({}));

    // Unset the device's and the site's: press-07 can no longer be resolved; it keeps what
    // it has (no new revision, never an empty value), with an alarm and an error event.
    let (status, _) = s
        .call(Method::DELETE, "/api/v1/variables/devices/press-07", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        env("press-07").1["LINE_IP"],
        "10.1.0.1",
        "back to the site's"
    );
    let before = env("press-07");
    let (status, body) = s
        .call(
            Method::DELETE,
            "/api/v1/variables/sites/lyon?names=LINE_IP",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], json!(["LINE_IP"]));
    let why = body["unresolved"]["press-07"]["bridge"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("'LINE_IP' is not set"), "{body}");
    assert_eq!(env("press-07"), before, "it keeps what it has");
    let view = s.fleet.get("press-07").unwrap();
    assert!(view.unresolved.contains_key("bridge"));
    let event = view.events.back().expect("an event");
    assert_eq!(
        (
            event.stack.as_deref(),
            serde_json::to_value(event.severity).unwrap()
        ),
        (Some("bridge"), json!("error"))
    );
    assert!(
        edgefleet_domain::sites::alarms(&view)
            .iter()
            .any(|a| a.kind == "variables" && a.message.contains("LINE_IP")),
        "an alarm"
    );
    let (_, detail) = s.call(Method::GET, "/api/v1/devices/press-07", None).await;
    assert!(detail["unresolved"]["bridge"].is_string(), "{detail}");

    // A device joining Lyon now gets nothing of it (and the alarm); set again, both resolve.
    s.add_device("press-08", "lyon");
    let (status, _) = s
        .call(
            Method::PUT,
            "/api/v1/devices/press-08/labels",
            Some(&json!({ "set": { "line": "3" } }).to_string()),
        )
        .await;
    assert_eq!(status, 200);
    let joined = s.fleet.get("press-08").unwrap();
    assert!(
        joined
            .desired
            .as_ref()
            .is_none_or(|d| !d.stacks.contains_key("bridge"))
            && joined.unresolved.contains_key("bridge")
    );
    let (status, body) = s
        .call(
            Method::PUT,
            "/api/v1/variables/sites/lyon",
            Some(&put(json!({ "LINE_IP": "10.1.0.1" }))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"], json!(["press-07", "press-08"]));
    assert_eq!(body["unresolved"], json!({}));
    assert_eq!(env("press-07"), before, "the same values: no new revision");
    assert_eq!(env("press-08").1["DEVICE"], "press-08");
    assert!(s.fleet.get("press-07").unwrap().unresolved.is_empty());

    // Operators set variables within their sites only; every change is audited.
    let op = user_token(&s.store, "ana", Role::Operator, &["paris"]).await;
    for (path, want) in [
        ("/api/v1/variables/sites/lyon", 403),
        ("/api/v1/variables/devices/press-07", 404),
        ("/api/v1/variables/sites/paris", 200),
    ] {
        let resp = s
            .http
            .put(format!("{}{path}", s.base))
            .bearer_auth(&op)
            .header("content-type", "application/json")
            .body(put(json!({ "MODE": "eco" })))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{path}");
    }
    let (_, listed) = s.call(Method::GET, "/api/v1/variables", None).await;
    assert_eq!(listed["variables"].as_array().unwrap().len(), 3, "{listed}");
    let audit = s
        .store
        .audit_page(edgefleet_store::audit::PageQuery {
            since: None,
            site: None,
            text: None,
            before: None,
            limit: 1000,
        })
        .await
        .unwrap();
    let count = |action: &str, outcome: &str| {
        audit
            .iter()
            .filter(|r| r.action == action && r.outcome == outcome)
            .count()
    };
    assert_eq!(count("variables.set", "ok"), 5, "{audit:?}");
    assert_eq!(count("variables.unset", "ok"), 2);
    let lyon_set = audit
        .iter()
        .find(|r| r.action == "variables.set" && r.target == "site:lyon" && r.outcome == "ok")
        .unwrap();
    assert_eq!(lyon_set.site, "lyon");
    assert!(lyon_set.detail.contains("10.1.0.1"), "{}", lyon_set.detail);
}
