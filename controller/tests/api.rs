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
    _dir: tempfile::TempDir,
}

/// An admin and a token of theirs, written straight into the store.
async fn admin_token(store: &Store) -> String {
    let user = User {
        username: "admin".into(),
        role: Role::Admin,
        sites: vec![],
        created_at: "t".into(),
        disabled: false,
        password_hash: String::new(),
    };
    store.insert_user(user).await.unwrap();
    let token = edgefleet_controller::services::users::new_token();
    let digest = edgefleet_controller::services::users::token_digest(&token);
    store
        .insert_token(&digest, "admin", "test", "t", i64::MAX, 0)
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
    let (_, list) = s
        .call(reqwest::Method::GET, "/api/v1/deployments", None)
        .await;
    assert_eq!(
        list["deployments"],
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
