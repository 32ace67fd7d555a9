//! The HTTP side under abuse and at its edges, over real HTTP against an in-process
//! controller served the way the gateway serves it (`http::server::serve`, with the peer
//! address and timeouts): token hygiene, login backoff, the open-redirect shapes of
//! `POST /login`, cross-site history, idle sockets, SSE streams per user, and the audit
//! log's size under a flood of refusals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_controller::App;
use edgefleet_controller::http::server::{self, Limits};
use edgefleet_controller::services::users::INITIAL_ADMIN_FILE;
use edgefleet_protocol::topics::TopicKind;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

async fn server_with(limits: Limits) -> (Server, Arc<App>) {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = Arc::new(App::open(dir.path()).await.unwrap());
    ctrl.link.set_connected(true);
    assert!(ctrl.users.ensure_initial_admin(dir.path()).await.unwrap());
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
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(
        listener,
        None,
        ctrl.router(),
        limits,
        stop.clone(),
    ));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (
        Server {
            base: format!("http://{addr}"),
            addr,
            http,
            dir,
            _stop: stop.drop_guard(),
        },
        ctrl,
    )
}

async fn server() -> (Server, Arc<App>) {
    server_with(Limits::default()).await
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

    async fn admin(&self) -> String {
        let pw = std::fs::read_to_string(self.dir.path().join(INITIAL_ADMIN_FILE)).unwrap();
        self.login("admin", pw.trim()).await
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
        self.login(name, &password).await
    }

    /// The dashboard's form login: the session cookie.
    async fn form_login(&self, user: &str, password: &str, next: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/login", self.base))
            .form(&[("username", user), ("password", password), ("next", next)])
            .send()
            .await
            .unwrap()
    }

    async fn audit(&self, admin: &str) -> Vec<Value> {
        let (status, log) = self
            .call(Some(admin), Method::GET, "/api/v1/audit?limit=5000", None)
            .await;
        assert_eq!(status, 200, "{log}");
        log["records"].as_array().unwrap().clone()
    }
}

fn names(v: &Value) -> Vec<String> {
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn tokens_are_listed_and_revoked_by_name_with_a_lifetime_cap_per_role() {
    let (s, _ctrl) = server().await;
    let admin = s.admin().await;
    let viewer = s.add_user(&admin, "view-lyon", "viewer", &["lyon"]).await;

    // A viewer cannot mint a long-lived token; within its cap it can.
    let (status, body) = s
        .call(
            Some(&viewer),
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "wall", "expires_in": "90d"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("between 1s and 31d"),
        "{body}"
    );
    let (status, body) = s
        .call(
            Some(&viewer),
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "wall"})),
        )
        .await;
    assert_eq!(
        status, 201,
        "a viewer's default lifetime fits its cap: {body}"
    );
    let wall = body["token"].as_str().unwrap().to_owned();
    let (status, body) = s
        .call(
            Some(&admin),
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "ci", "expires_in": "366d"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = s
        .call(
            Some(&admin),
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "ci", "expires_in": "367d"})),
        )
        .await;
    assert_eq!(status, 400, "nobody's token lives past 366 days");

    // Listed by name, never with the secret.
    let (status, mine) = s
        .call(Some(&viewer), Method::GET, "/api/v1/tokens", None)
        .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(names(&mine), ["login", "wall"]);
    assert!(!mine.to_string().contains(&wall), "no secret in the list");
    let (status, _) = s
        .call(
            Some(&viewer),
            Method::GET,
            "/api/v1/tokens?user=admin",
            None,
        )
        .await;
    assert_eq!(status, 403, "only an admin lists other users' tokens");
    let (_, all) = s
        .call(Some(&admin), Method::GET, "/api/v1/tokens?all=true", None)
        .await;
    assert_eq!(names(&all), ["ci", "login", "login", "wall"]);

    // Revoked by name: the token stops working at once; the revocation is audited.
    let (status, _) = s
        .call(Some(&wall), Method::GET, "/api/v1/whoami", None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .call(Some(&viewer), Method::DELETE, "/api/v1/tokens/wall", None)
        .await;
    assert_eq!((status, body["revoked"].clone()), (200, json!(1)), "{body}");
    let (status, _) = s
        .call(Some(&wall), Method::GET, "/api/v1/whoami", None)
        .await;
    assert_eq!(status, 401, "a revoked token is refused");
    let (status, _) = s
        .call(Some(&viewer), Method::DELETE, "/api/v1/tokens/wall", None)
        .await;
    assert_eq!(status, 404);
    let (status, body) = s
        .call(
            Some(&admin),
            Method::DELETE,
            "/api/v1/tokens/login?user=view-lyon",
            None,
        )
        .await;
    assert_eq!(
        status, 200,
        "an admin revokes another user's sessions: {body}"
    );
    let (status, _) = s
        .call(Some(&viewer), Method::GET, "/api/v1/whoami", None)
        .await;
    assert_eq!(status, 401);
    let records = s.audit(&admin).await;
    assert!(
        records.iter().any(|r| r["action"] == "token.revoke"
            && r["actor"] == "view-lyon"
            && r["target"] == "view-lyon/wall"
            && r["outcome"] == "ok"),
        "token.revoke is audited"
    );
}

#[tokio::test]
async fn failed_logins_back_off_per_user_without_running_argon2() {
    let (s, _ctrl) = server().await;
    let admin = s.admin().await;
    s.add_user(&admin, "ana", "operator", &["lyon"]).await;
    let attempt = |pw: &'static str| {
        s.http
            .post(format!("{}/api/v1/login", s.base))
            .json(&json!({"username": "ana", "password": pw}))
            .send()
    };
    // Five free failures, and a sixth that starts the backoff.
    for _ in 0..6 {
        assert_eq!(attempt("wrong").await.unwrap().status(), 401);
    }
    let t = Instant::now();
    let r = attempt("ana-password-123").await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "even the right password waits out the backoff"
    );
    assert!(t.elapsed() < Duration::from_millis(200), "no argon2 run");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another user is not affected.
    let pw = std::fs::read_to_string(s.dir.path().join(INITIAL_ADMIN_FILE)).unwrap();
    s.login("admin", pw.trim()).await;
    // After the wait, the right password works and clears the count.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = attempt("ana-password-123").await.unwrap();
    assert_eq!(r.status(), 200);
    let records = s.audit(&admin).await;
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "auth.login" && r["status"] == 429 && r["target"] == "ana")
    );
}

#[tokio::test]
async fn login_redirects_only_to_local_paths() {
    let (s, _ctrl) = server().await;
    let pw = std::fs::read_to_string(s.dir.path().join(INITIAL_ADMIN_FILE)).unwrap();
    let pw = pw.trim();
    for evil in [
        "/\t/evil.example",
        "/\r\n/evil.example",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/ /evil.example",
    ] {
        let r = s.form_login("admin", pw, evil).await;
        assert_eq!(r.status(), 303, "{evil:?}");
        assert_eq!(
            r.headers()["location"],
            "/",
            "{evil:?} must not be followed"
        );
    }
    // The raw form body with %09, as a browser would send it.
    let r = s
        .http
        .post(format!("{}/login", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username=admin&password={pw}&next=/%09/evil.example"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/");
    let r = s.form_login("admin", pw, "/devices/d-lyon").await;
    assert_eq!(r.headers()["location"], "/devices/d-lyon");
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        !cookie.contains("Secure"),
        "plain loopback HTTP: no Secure flag (the browser would drop it)"
    );
}

#[tokio::test]
async fn an_old_revision_of_another_site_stays_hidden() {
    let (s, _ctrl) = server().await;
    let admin = s.admin().await;
    let op = s.add_user(&admin, "op-lyon", "operator", &["lyon"]).await;
    let compose = |secret: &str| {
        format!("services:\n  app:\n    image: app:1\n    environment:\n      TOKEN: {secret}\n")
    };
    let (status, body) = s
        .call(
            Some(&admin),
            Method::POST,
            "/api/v1/deployments",
            Some(
                json!({"name": "hist", "target": "site=paris", "compose": compose("PARIS-SECRET")}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = s
        .call(
            Some(&admin),
            Method::DELETE,
            "/api/v1/deployments/hist",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .call(
            Some(&op),
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"name": "hist", "target": "site=lyon", "compose": compose("lyon")})),
        )
        .await;
    assert_eq!(status, 201, "the name is free again: {body}");
    assert_eq!(body["revision"], 2, "{body}");

    for path in [
        "/api/v1/deployments/hist/diff?from=1&to=2",
        "/api/v1/deployments/hist/revisions/1",
    ] {
        let (status, body) = s.call(Some(&op), Method::GET, path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.to_string().contains("PARIS-SECRET"));
    }
    let (status, body) = s
        .call(
            Some(&op),
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"deployment": "hist", "revision": 1})),
        )
        .await;
    assert_eq!(status, 404, "rolling out paris's revision: {body}");
    let (status, body) = s
        .call(Some(&op), Method::GET, "/api/v1/deployments/hist", None)
        .await;
    assert_eq!(status, 200);
    let revs: Vec<u64> = body["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revs, [2], "only lyon's revision is listed: {body}");
    // The admin still sees both.
    let (status, body) = s
        .call(
            Some(&admin),
            Method::GET,
            "/api/v1/deployments/hist/diff?from=1&to=2",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(body["diff"].as_str().unwrap().contains("PARIS-SECRET"));

    // The dashboard's diff page, as op-lyon.
    let r = s.form_login("op-lyon", "op-lyon-password-123", "/").await;
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = s
        .http
        .get(format!("{}/deployments/hist?from=1&to=2", s.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Deployment hist"), "{page}");
    assert!(!page.contains("PARIS-SECRET"), "{page}");
    assert!(!page.contains("site=paris"), "{page}");
}

#[tokio::test]
async fn idle_sockets_are_closed_after_the_header_read_timeout() {
    assert_eq!(
        server::DEFAULT_HEADER_READ_TIMEOUT,
        Duration::from_secs(30),
        "the documented default of --http-idle-timeout"
    );
    let limits = Limits {
        header_read_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let (s, _ctrl) = server_with(limits).await;
    let mut idle = Vec::new();
    for i in 0..1100 {
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        if i % 2 == 0 {
            // Half send part of a request head and stop (slowloris).
            use tokio::io::AsyncWriteExt;
            sock.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(sock);
    }
    let t = Instant::now();
    let r = s
        .http
        .get(format!("{}/api/v1/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "served while 1,100 sockets sit idle");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let deadline = Duration::from_secs(20);
    let started = Instant::now();
    let mut closed = 0;
    for mut sock in idle {
        let left = deadline.saturating_sub(started.elapsed());
        let mut buf = [0u8; 1024];
        // Closed: EOF (or a reset, or hyper's 408 then EOF) within the deadline.
        let done = tokio::time::timeout(left, async {
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        if done.is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 1100, "every idle socket closed within {deadline:?}");
    println!(
        "1,100 idle sockets closed after {:?} (timeout 2 s)",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_user_holds_a_bounded_number_of_live_streams() {
    let (s, _ctrl) = server().await;
    let admin = s.admin().await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let r = s
            .http
            .get(format!("{}/api/v1/events/stream", s.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let r = s
        .http
        .get(format!("{}/api/v1/events/stream", s.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    drop(open.pop());
    // The slot frees when the stream's connection ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = s
            .http
            .get(format!("{}/api/v1/events/stream", s.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn store_bytes(dir: &std::path::Path) -> u64 {
    ["edgefleet.db", "edgefleet.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn a_flood_of_refused_requests_with_long_paths_keeps_the_audit_log_small() {
    let (s, ctrl) = server().await;
    let admin = s.admin().await;
    let before_records = s.audit(&admin).await.len();
    let before = store_bytes(s.dir.path());
    let path = format!("/api/v1/devices/{}", "a".repeat(60 * 1024));
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    let t = Instant::now();
    for _ in 0..10_000 {
        let (http, url, sem) = (s.http.clone(), format!("{}{path}", s.base), sem.clone());
        tasks.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            http.get(url).send().await.unwrap().status().as_u16()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 401);
    }
    let took = t.elapsed();
    ctrl.audit.flush_repeats(true).await;
    let after = store_bytes(s.dir.path());
    let records = s.audit(&admin).await;
    let grown = after.saturating_sub(before);
    println!(
        "10,000 refused requests with 60 KB paths in {took:?}: store +{grown} bytes, +{} audit records",
        records.len() - before_records
    );
    assert!(grown < 1024 * 1024, "the store grew by {grown} bytes");
    let summary = records
        .iter()
        .find(|r| r["detail"]["repeated"].as_u64().is_some())
        .expect("an aggregated record");
    assert_eq!(
        summary["detail"]["repeated"].as_u64().unwrap()
            + records
                .iter()
                .filter(|r| r["actor"] == "anonymous" && r["status"] == 401)
                .count() as u64
            - 1,
        10_000,
        "every refusal is counted: {summary}"
    );
    for r in &records {
        assert!(r.to_string().len() < 8 * 1024, "a capped record: {r}");
    }
    let (_, v) = s
        .call(Some(&admin), Method::GET, "/api/v1/audit/verify", None)
        .await;
    assert_eq!(v["ok"], true, "{v}");
}
