//! Users, roles and site scope over real HTTP against an in-process controller: for each
//! role what it may and may not do (401 without credentials, 403 out of role, 403 out of
//! site scope), lists filtered to the caller's sites, and every refusal in the audit log.

use std::sync::Arc;

use edgefleet_controller::App;
use edgefleet_controller::services::users::INITIAL_ADMIN_FILE;
use edgefleet_protocol::topics::TopicKind;
use reqwest::Method;
use serde_json::{Value, json};

struct Server {
    base: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

async fn server() -> (Server, Arc<App>) {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = Arc::new(App::open(dir.path()).await.unwrap());
    // As if the broker link were up: health answers 200 only then.
    ctrl.link.set_connected(true);
    assert!(ctrl.users.ensure_initial_admin(dir.path()).await.unwrap());
    assert!(
        !ctrl.users.ensure_initial_admin(dir.path()).await.unwrap(),
        "only the first start creates an admin"
    );
    for (id, site) in [("d-lyon", "lyon"), ("d-paris", "paris")] {
        let p = json!({"schema": 1, "device": id, "state": "online", "session": 1,
                       "labels": {"site": site}, "agent_version": "t", "since": "t"});
        ctrl.intake
            .on_message(
                &TopicKind::DevicePresence.for_device(id),
                p.to_string().as_bytes(),
            )
            .await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = edgefleet_controller::http::router(ctrl.api_state());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (
        Server {
            base,
            http: reqwest::Client::new(),
            dir,
        },
        ctrl,
    )
}

impl Server {
    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn login(&self, user: &str, password: &str) -> String {
        let (status, body) = self
            .call(
                None,
                Method::POST,
                "/api/v1/login",
                Some(json!({ "username": user, "password": password })),
            )
            .await;
        assert_eq!(status, 200, "login {user}: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn add_user(&self, admin: &str, name: &str, role: &str, sites: &[&str]) -> String {
        let password = format!("{name}-password-123");
        let (status, body) = self
            .call(
                Some(admin),
                Method::POST,
                "/api/v1/users",
                Some(
                    json!({ "username": name, "role": role, "sites": sites, "password": password }),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert!(
            body.get("password").is_none(),
            "a given password is never echoed"
        );
        self.login(name, &password).await
    }
}

fn apply_body(name: &str, target: &str) -> Option<Value> {
    Some(
        json!({ "name": name, "target": target, "compose": "services:\n  app:\n    image: app:1\n" }),
    )
}

fn ids(list: &Value, key: &str, field: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[field].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts a refusal: the status and words of the message.
fn refused(what: &str, got: (u16, Value), status: u16, words: &[&str]) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    let msg = got.1["error"].as_str().unwrap_or_default();
    for w in words {
        assert!(msg.contains(w), "{what}: wanted {w:?} in {msg:?}");
    }
}

#[tokio::test]
async fn roles_and_site_scope_over_http_and_refusals_are_audited() {
    let (s, _ctrl) = server().await;
    let file = s.dir.path().join(INITIAL_ADMIN_FILE);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "the initial admin password is for the owner only"
        );
    }
    let admin_pw = std::fs::read_to_string(&file).unwrap().trim().to_owned();

    // No or bad credentials: 401 that says how to log in; health stays open.
    assert_eq!(
        s.call(None, Method::GET, "/api/v1/health", None).await.0,
        200
    );
    refused(
        "anonymous read",
        s.call(None, Method::GET, "/api/v1/devices", None).await,
        401,
        &["edgefleet login"],
    );
    refused(
        "anonymous apply",
        s.call(
            None,
            Method::POST,
            "/api/v1/deployments",
            apply_body("x", "site=lyon"),
        )
        .await,
        401,
        &["edgefleet login"],
    );
    refused(
        "bad token",
        s.call(Some("eft_nope"), Method::GET, "/api/v1/devices", None)
            .await,
        401,
        &["edgefleet login"],
    );
    refused(
        "wrong password",
        s.call(
            None,
            Method::POST,
            "/api/v1/login",
            Some(json!({"username": "admin", "password": "guess-guess-guess"})),
        )
        .await,
        401,
        &["wrong username or password"],
    );

    let admin = s.login("admin", &admin_pw).await;
    let op = s.add_user(&admin, "op-lyon", "operator", &["lyon"]).await;
    let viewer = s.add_user(&admin, "view-lyon", "viewer", &["lyon"]).await;
    let auditor = s.add_user(&admin, "audit", "auditor", &[]).await;
    refused(
        "operator without a site",
        s.call(
            Some(&admin),
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "x", "role": "operator"})),
        )
        .await,
        400,
        &["--site"],
    );
    let (status, generated) = s
        .call(
            Some(&admin),
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "gen", "role": "viewer", "sites": ["paris"]})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(generated["password"].as_str().map(str::len), Some(24));

    // Admin: everything, everywhere.
    for (name, target) in [
        ("web-lyon", "site=lyon"),
        ("web-paris", "site=paris"),
        ("web-all", "*"),
    ] {
        let (status, body) = s
            .call(
                Some(&admin),
                Method::POST,
                "/api/v1/deployments",
                apply_body(name, target),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    // Operator of lyon: changes lyon only.
    let (status, body) = s
        .call(
            Some(&op),
            Method::POST,
            "/api/v1/deployments",
            apply_body("op-app", "site=lyon,line=3"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, dep) = s
        .call(Some(&op), Method::GET, "/api/v1/deployments/op-app", None)
        .await;
    assert_eq!(
        dep["revisions"][0]["created_by"], "op-lyon",
        "the revision names its author"
    );
    refused(
        "operator applies to paris",
        s.call(
            Some(&op),
            Method::POST,
            "/api/v1/deployments",
            apply_body("x", "site=paris"),
        )
        .await,
        403,
        &["site 'paris'", "op-lyon"],
    );
    refused(
        "operator applies to every device",
        s.call(
            Some(&op),
            Method::POST,
            "/api/v1/deployments",
            apply_body("x", "*"),
        )
        .await,
        403,
        &["not confined to one site", "admin"],
    );
    refused(
        "operator takes over a paris deployment",
        s.call(
            Some(&op),
            Method::POST,
            "/api/v1/deployments",
            apply_body("web-paris", "site=lyon"),
        )
        .await,
        403,
        &["site 'paris'"],
    );
    refused(
        "operator deletes a paris deployment",
        s.call(
            Some(&op),
            Method::DELETE,
            "/api/v1/deployments/web-paris",
            None,
        )
        .await,
        404,
        &["no deployment 'web-paris'"],
    );
    refused(
        "operator starts a paris rollout",
        s.call(
            Some(&op),
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"deployment": "web-paris"})),
        )
        .await,
        404,
        &["web-paris"],
    );
    // A paris rollout is, to a lyon operator, one that does not exist (reading it, or
    // pausing it): the same answer as for an id nobody has.
    let staged = json!({ "name": "web-paris", "target": "site=paris",
        "compose": "services:\n  app:\n    image: app:2\nx-edgefleet-rollout:\n  canary: 1\n  soak: 0s\n" });
    let (status, body) = s
        .call(
            Some(&admin),
            Method::POST,
            "/api/v1/deployments",
            Some(staged),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, started) = s
        .call(
            Some(&admin),
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"deployment": "web-paris"})),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let id = started["id"].as_u64().expect("rollout id");
    for (method, path) in [
        (Method::GET, format!("/api/v1/rollouts/{id}")),
        (Method::POST, format!("/api/v1/rollouts/{id}/pause")),
        (Method::GET, "/api/v1/rollouts/999999".to_owned()),
    ] {
        refused(
            "operator reads or pauses a paris rollout",
            s.call(Some(&op), method, &path, None).await,
            404,
            &["no rollout"],
        );
    }
    let window = Some(json!({"window": "daily 22:00-04:00", "tz": "UTC"}));
    assert_eq!(
        s.call(
            Some(&op),
            Method::PUT,
            "/api/v1/windows/lyon",
            window.clone()
        )
        .await
        .0,
        200
    );
    refused(
        "operator sets the paris window",
        s.call(
            Some(&op),
            Method::PUT,
            "/api/v1/windows/paris",
            window.clone(),
        )
        .await,
        403,
        &["site 'paris'"],
    );
    refused(
        "operator lists users",
        s.call(Some(&op), Method::GET, "/api/v1/users", None).await,
        403,
        &["needs the role admin", "operator"],
    );
    refused(
        "operator reads the audit log",
        s.call(Some(&op), Method::GET, "/api/v1/audit", None).await,
        403,
        &["admin or auditor"],
    );
    let (_, devices) = s
        .call(Some(&op), Method::GET, "/api/v1/devices", None)
        .await;
    assert_eq!(ids(&devices, "devices", "id"), ["d-lyon"]);
    let (_, deps) = s
        .call(Some(&op), Method::GET, "/api/v1/deployments", None)
        .await;
    assert_eq!(ids(&deps, "deployments", "name"), ["op-app", "web-lyon"]);

    // Viewer of lyon: reads lyon, changes nothing.
    let (_, devices) = s
        .call(Some(&viewer), Method::GET, "/api/v1/devices", None)
        .await;
    assert_eq!(ids(&devices, "devices", "id"), ["d-lyon"]);
    refused(
        "viewer reads a paris device",
        s.call(Some(&viewer), Method::GET, "/api/v1/devices/d-paris", None)
            .await,
        404,
        &["no device 'd-paris'"],
    );
    // Another site's device answers exactly like one that does not exist: no enumeration.
    let (_, hidden) = s
        .call(Some(&viewer), Method::GET, "/api/v1/devices/d-paris", None)
        .await;
    let (_, missing) = s
        .call(
            Some(&viewer),
            Method::GET,
            "/api/v1/devices/d-nowhere",
            None,
        )
        .await;
    assert_eq!(
        hidden["error"].as_str().unwrap().replace("d-paris", "X"),
        missing["error"].as_str().unwrap().replace("d-nowhere", "X")
    );
    refused(
        "viewer applies in its own site",
        s.call(
            Some(&viewer),
            Method::POST,
            "/api/v1/deployments",
            apply_body("v", "site=lyon"),
        )
        .await,
        403,
        &["admin or operator", "viewer"],
    );
    refused(
        "viewer deletes",
        s.call(
            Some(&viewer),
            Method::DELETE,
            "/api/v1/deployments/web-lyon",
            None,
        )
        .await,
        403,
        &["admin or operator"],
    );
    let (_, windows) = s
        .call(Some(&viewer), Method::GET, "/api/v1/windows", None)
        .await;
    assert_eq!(ids(&windows, "windows", "site"), ["lyon"]);

    // An API token carries its owner's role and scope.
    let (status, tok) = s
        .call(
            Some(&viewer),
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "dashboard", "expires_in": "30d"})),
        )
        .await;
    assert_eq!(status, 201, "{tok}");
    let script = tok["token"].as_str().unwrap().to_owned();
    let (_, me) = s
        .call(Some(&script), Method::GET, "/api/v1/whoami", None)
        .await;
    assert_eq!(
        (
            me["username"].clone(),
            me["role"].clone(),
            me["sites"].clone(),
            me["token"]["name"].clone()
        ),
        (
            json!("view-lyon"),
            json!("viewer"),
            json!(["lyon"]),
            json!("dashboard")
        )
    );

    // Auditor: reads everything and the audit log, changes nothing.
    let (_, devices) = s
        .call(Some(&auditor), Method::GET, "/api/v1/devices", None)
        .await;
    assert_eq!(ids(&devices, "devices", "id"), ["d-lyon", "d-paris"]);
    refused(
        "auditor applies",
        s.call(
            Some(&auditor),
            Method::POST,
            "/api/v1/deployments",
            apply_body("a", "*"),
        )
        .await,
        403,
        &["admin or operator", "auditor"],
    );
    refused(
        "auditor adds a user",
        s.call(
            Some(&auditor),
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "x", "role": "admin"})),
        )
        .await,
        403,
        &["needs the role admin"],
    );

    // Logout revokes the session.
    assert_eq!(
        s.call(Some(&op), Method::POST, "/api/v1/logout", None)
            .await
            .0,
        200
    );
    refused(
        "revoked session",
        s.call(Some(&op), Method::GET, "/api/v1/devices", None)
            .await,
        401,
        &["log in again"],
    );

    // Every refusal above is in the audit log, with who, what, where and why.
    let (status, log) = s
        .call(
            Some(&auditor),
            Method::GET,
            "/api/v1/audit?limit=1000",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let records = log["records"].as_array().unwrap().clone();
    let has = |actor: &str, action: &str, outcome: &str, status: u64, site: &str| {
        records.iter().any(|r| {
            r["actor"] == actor
                && r["action"] == action
                && r["outcome"] == outcome
                && r["status"] == status
                && r["site"] == site
        })
    };
    let expected = [
        ("anonymous", "api.read", "refused", 401, ""),
        ("anonymous", "deployment.apply", "refused", 401, ""),
        ("anonymous", "auth.login", "refused", 401, ""),
        ("admin", "auth.login", "ok", 200, ""),
        ("admin", "user.create", "ok", 201, ""),
        ("admin", "deployment.apply", "ok", 201, "paris"),
        ("op-lyon", "deployment.apply", "ok", 201, "lyon"),
        ("op-lyon", "deployment.apply", "refused", 403, "paris"),
        ("op-lyon", "deployment.delete", "refused", 404, "paris"),
        ("op-lyon", "rollout.start", "refused", 404, "paris"),
        ("op-lyon", "window.set", "ok", 200, "lyon"),
        ("op-lyon", "window.set", "refused", 403, "paris"),
        ("op-lyon", "api.read", "refused", 403, ""),
        ("op-lyon", "auth.logout", "ok", 200, ""),
        ("view-lyon", "api.read", "refused", 404, "paris"),
        ("view-lyon", "deployment.apply", "refused", 403, ""),
        ("view-lyon", "token.create", "ok", 201, ""),
        ("audit", "deployment.apply", "refused", 403, ""),
        ("audit", "user.create", "refused", 403, ""),
    ];
    for (actor, action, outcome, status, site) in expected {
        assert!(
            has(actor, action, outcome, status, site),
            "no audit record {actor} {action} {outcome} {status} site={site:?} in:\n{}",
            serde_json::to_string_pretty(&records).unwrap()
        );
    }
    let refusal = records
        .iter()
        .find(|r| r["actor"] == "op-lyon" && r["status"] == 403 && r["site"] == "paris")
        .unwrap();
    assert!(
        refusal["detail"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("outside your scope"),
        "{refusal}"
    );
    // Never a secret in the log.
    let text = log.to_string();
    for secret in [admin_pw.as_str(), "op-lyon-password-123", &script, &admin] {
        assert!(!text.contains(secret), "a secret is in the audit log");
    }
    let (_, verified) = s
        .call(Some(&auditor), Method::GET, "/api/v1/audit/verify", None)
        .await;
    assert_eq!(verified["ok"], true, "{verified}");

    // Export: filtered by site, as CSV.
    let resp = s
        .http
        .get(format!(
            "{}/api/v1/audit/export?format=csv&site=paris&since=1h",
            s.base
        ))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csv = resp.text().await.unwrap();
    assert!(csv.starts_with(
        "seq,ts,actor,role,action,target,site,outcome,status,detail,prev_hash,hash\n"
    ));
    assert!(csv.lines().skip(1).all(|l| l.contains(",paris,")), "{csv}");
    assert!(csv.lines().count() > 3, "{csv}");

    // Admin housekeeping: the last admin stays, a user goes with their tokens.
    refused(
        "admin removes itself",
        s.call(Some(&admin), Method::DELETE, "/api/v1/users/admin", None)
            .await,
        409,
        &["yourself"],
    );
    assert_eq!(
        s.call(
            Some(&admin),
            Method::DELETE,
            "/api/v1/users/view-lyon",
            None
        )
        .await
        .0,
        200
    );
    refused(
        "token of a removed user",
        s.call(Some(&script), Method::GET, "/api/v1/whoami", None)
            .await,
        401,
        &[],
    );
}
