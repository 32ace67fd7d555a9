//! Security acceptance with the real binaries: the audit log's tampering is caught by
//! `edgefleet audit verify` reading the store file (truncation and rehashing against a signed
//! head saved earlier), and no password or token ever reaches
//! the gateway's logs, even at `RUST_LOG=trace` — nor does an enrollment token or a private
//! key, in the gateway's or the agent's output.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use edgefleet_tests::api::{Api, CliOutput};
use edgefleet_tests::bins::bins;
use edgefleet_tests::procs::Gateway;

/// `edgefleet ARGS…` with a private config dir, no inherited token, `stdin` piped in.
fn edgefleet(args: &[&str], config: &Path, stdin: &str) -> CliOutput {
    let mut child = Command::new(&bins().edgefleet)
        .args(args)
        .env("EDGEFLEET_CONFIG_DIR", config)
        .env_remove("EDGEFLEET_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edgefleet");
    {
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("run edgefleet");
    CliOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn verify(data_dir: &Path, config: &Path) -> CliOutput {
    edgefleet(
        &[
            "audit",
            "verify",
            "--data-dir",
            &data_dir.display().to_string(),
        ],
        config,
        "",
    )
}

const STACK: &str = "services:\n  app:\n    image: app:1\n";

#[test]
fn audit_verify_names_an_edited_or_deleted_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cfg");
    let mut gw = Gateway::start(dir.path());
    let api = gw.api();
    // A few audited actions: logins, applies, a user, a refusal.
    for (name, target) in [("web", "site=lyon"), ("hmi", "site=paris")] {
        api.apply(dir.path(), name, target, STACK);
    }
    let added = api.cli(&[
        "--json", "user", "add", "ana", "--role", "viewer", "--site", "lyon",
    ]);
    assert!(added.success, "{added:?}");
    let anonymous = Api::new(gw.http_port).cli(&["get", "devices"]);
    assert!(!anonymous.success);
    assert!(
        anonymous.stderr.contains("edgefleet login"),
        "a refusal says how to log in: {anonymous:?}"
    );

    // While the gateway runs, and after it stopped: intact.
    let ok = verify(&gw.data_dir, &config);
    assert!(ok.success, "{ok:?}");
    assert!(ok.stdout.contains("audit log OK"), "{ok:?}");
    gw.proc.stop();
    let ok = verify(&gw.data_dir, &config);
    assert!(ok.success, "{ok:?}");
    let head = ok
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("head: #"))
        .expect("verify prints the head")
        .to_owned();
    let records: u64 = head.split(' ').next().unwrap().parse().unwrap();
    assert!(records >= 6, "{head}");

    let db = rusqlite::Connection::open(gw.data_dir.join("edgefleet.db")).expect("open store");
    assert!(
        db.execute("UPDATE audit SET actor = 'x' WHERE seq = 3", [])
            .is_err(),
        "the store itself refuses to rewrite the audit log"
    );
    // Someone with the file drops the guard and edits record 3's detail.
    db.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    let original: String = db
        .query_row("SELECT detail FROM audit WHERE seq = 3", [], |r| r.get(0))
        .unwrap();
    db.execute(
        "UPDATE audit SET detail = '{\"note\":\"nothing happened\"}' WHERE seq = 3",
        [],
    )
    .unwrap();
    let bad = verify(&gw.data_dir, &config);
    assert!(!bad.success, "an edited record must fail: {bad:?}");
    assert!(
        bad.stderr.contains("first bad record is #3") && bad.stderr.contains("modified"),
        "{bad:?}"
    );
    let json = edgefleet(
        &[
            "--json",
            "audit",
            "verify",
            "--data-dir",
            &gw.data_dir.display().to_string(),
        ],
        &config,
        "",
    );
    assert!(!json.success && json.stdout.contains("#3"), "{json:?}");

    // Put it back: intact again, same head.
    db.execute("UPDATE audit SET detail = ?1 WHERE seq = 3", [&original])
        .unwrap();
    let ok = verify(&gw.data_dir, &config);
    assert!(ok.success && ok.stdout.contains(&head), "{ok:?}");

    // A deleted record is named too.
    db.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
    let bad = verify(&gw.data_dir, &config);
    assert!(!bad.success, "a deleted record must fail: {bad:?}");
    assert!(
        bad.stderr.contains("#2") && bad.stderr.contains("missing"),
        "{bad:?}"
    );

    let none = verify(&dir.path().join("nowhere"), &config);
    assert!(
        !none.success && none.stderr.contains("--data-dir"),
        "{none:?}"
    );
}

fn verify_against(data_dir: &Path, config: &Path, saved: &Path, extra: &[&str]) -> CliOutput {
    let (data_dir, saved) = (data_dir.display().to_string(), saved.display().to_string());
    let mut args = vec![
        "audit",
        "verify",
        "--data-dir",
        &data_dir,
        "--against",
        &saved,
    ];
    args.extend_from_slice(extra);
    edgefleet(&args, config, "")
}

/// The newest record's `seq` in the store file.
fn newest(db: &rusqlite::Connection) -> u64 {
    db.query_row("SELECT MAX(seq) FROM audit", [], |r| r.get::<_, i64>(0))
        .expect("audit head") as u64
}

/// Rewrites record `seq`'s detail and recomputes its hash and every later one, as someone
/// with the file and the code would: the walk alone then finds nothing wrong.
fn rewrite_and_rehash(db: &rusqlite::Connection, seq: u64, detail: &str) {
    use edgefleet_domain::audit::Record;
    let mut stmt = db
        .prepare(
            "SELECT seq, ts, actor, role, action, target, site, outcome, status, detail, prev_hash, hash
             FROM audit WHERE seq >= ?1 - 1 ORDER BY seq",
        )
        .unwrap();
    let mut records: Vec<Record> = stmt
        .query_map([seq as i64], |r| {
            Ok(Record {
                seq: r.get::<_, i64>(0)? as u64,
                ts: r.get(1)?,
                actor: r.get(2)?,
                role: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                site: r.get(6)?,
                outcome: r.get(7)?,
                status: r.get(8)?,
                detail: r.get(9)?,
                prev_hash: r.get(10)?,
                hash: r.get(11)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = records[0].hash.clone();
    for r in records.iter_mut().skip(1) {
        if r.seq == seq {
            r.detail = detail.to_owned();
        }
        r.prev_hash = prev;
        r.hash = r.computed_hash();
        prev = r.hash.clone();
        db.execute(
            "UPDATE audit SET detail = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![r.detail, r.prev_hash, r.hash, r.seq as i64],
        )
        .unwrap();
    }
}

/// What the walk alone cannot see — the newest records deleted, a record rewritten with every
/// later hash recomputed — a signed head saved earlier reveals, whether it was saved from the
/// API (`audit head`) or from the retained topic; and a saved head whose signature does not
/// hold is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_signed_head_reveals_truncation_and_rehashing() {
    use edgefleet_protocol::{audit_head, topics};
    use edgefleet_tests::procs::controller_key;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cfg");
    let mut gw = Gateway::start(dir.path());
    let api = gw.api();
    let key = controller_key(dir.path());
    api.apply(dir.path(), "web", "site=lyon", STACK);

    // An early head, saved from the API.
    let early = api.cli(&["--json", "audit", "head"]);
    assert!(early.success, "{early:?}");
    let early_head = audit_head::verify(&key, early.stdout.as_bytes()).expect("a signed head");
    assert!(
        early_head.seq >= 2,
        "a login and an apply at least: {early_head:?}"
    );
    let early_file = dir.path().join("early-head.json");
    std::fs::write(&early_file, &early.stdout).unwrap();
    let human = api.cli(&["audit", "head"]);
    assert!(
        human.success && human.stdout.contains(&early_head.hash),
        "{human:?}"
    );

    // More than ten records later, the newest head: from the API and from the retained topic
    // (published within a few seconds of the appends, as an integrator would keep it).
    for n in 0..12 {
        api.apply(dir.path(), &format!("app{n}"), "site=lyon", STACK);
    }
    let late = api.cli(&["--json", "audit", "head"]);
    assert!(late.success, "{late:?}");
    let late_head = audit_head::verify(&key, late.stdout.as_bytes()).expect("a signed head");
    assert!(late_head.seq > early_head.seq + 10, "{late_head:?}");
    let late_file = dir.path().join("late-head.json");
    std::fs::write(&late_file, &late.stdout).unwrap();
    let mqtt_port = gw.mqtt_port;
    let retained = edgefleet_tests::wait::until(
        "the retained audit head to reach the newest record",
        Duration::from_secs(30),
        || async move {
            let payload = tokio::task::spawn_blocking(move || {
                edgefleet_tests::mqtt::retained_raw(mqtt_port, &topics::audit_head(), 2)
            })
            .await
            .map_err(|e| e.to_string())?;
            let head = audit_head::verify(&key, &payload)
                .map_err(|e| format!("{e}: {:?}", String::from_utf8_lossy(&payload)))?;
            if head.seq >= late_head.seq {
                Ok(payload)
            } else {
                Err(format!("retained head at #{}", head.seq))
            }
        },
    )
    .await;
    let retained_file = dir.path().join("retained-head.json");
    std::fs::write(&retained_file, &retained).unwrap();

    // The API's verify signs the head it reached too.
    let verified = api
        .get("/api/v1/audit/verify")
        .await
        .expect("verify through the API");
    let signed = serde_json::to_vec(&verified["signed_head"]).unwrap();
    let signed = audit_head::verify(&key, &signed).expect("the API's verify signs its head");
    assert_eq!(signed.seq, verified["head_seq"].as_u64().unwrap());

    gw.proc.stop();
    for saved in [&early_file, &late_file, &retained_file] {
        let ok = verify_against(&gw.data_dir, &config, saved, &[]);
        assert!(
            ok.success && ok.stdout.contains("still in the chain, unchanged"),
            "{saved:?}: {ok:?}"
        );
        assert!(ok.stdout.contains("signed head: {"), "{ok:?}");
    }

    // Someone with the file drops the guard and deletes the newest ten records.
    let db = rusqlite::Connection::open(gw.data_dir.join("edgefleet.db")).expect("open store");
    db.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    let head_before = newest(&db);
    db.execute(
        "DELETE FROM audit WHERE seq > ?1",
        [(head_before - 10) as i64],
    )
    .unwrap();
    let head_after = head_before - 10;
    let alone = verify(&gw.data_dir, &config);
    assert!(
        alone.success,
        "the walk alone cannot see a truncation: {alone:?}"
    );
    for saved in [&late_file, &retained_file] {
        let cut = verify_against(&gw.data_dir, &config, saved, &[]);
        assert!(!cut.success, "a truncation must fail: {cut:?}");
        let saved_seq = audit_head::verify(&key, &std::fs::read(saved).unwrap())
            .unwrap()
            .seq;
        assert!(
            cut.stderr.contains(&format!(
                "truncated: the saved head seq {saved_seq} is beyond the current head {head_after}"
            )),
            "{cut:?}"
        );
        assert!(!cut.stdout.contains("signed head"), "{cut:?}");
    }
    let json = edgefleet(
        &[
            "--json",
            "audit",
            "verify",
            "--data-dir",
            &gw.data_dir.display().to_string(),
            "--against",
            &late_file.display().to_string(),
        ],
        &config,
        "",
    );
    assert!(!json.success, "{json:?}");
    let report = json.json();
    assert_eq!(report["ok"], true, "the walk itself: {report}");
    assert_eq!(report["against"]["holds"], false, "{report}");
    assert_eq!(report["against"]["seq"], late_head.seq, "{report}");
    assert!(
        report["against"]["problem"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("truncated")),
        "{report}"
    );
    assert!(report["signed_head"].is_null(), "{report}");
    // The early head is still in what is left: it vouches for everything up to it.
    let ok = verify_against(&gw.data_dir, &config, &early_file, &[]);
    assert!(ok.success, "{ok:?}");

    // Rewrite record 2 (before the early head) and recompute every later hash: the walk
    // passes, the early head does not.
    rewrite_and_rehash(&db, 2, "{\"note\":\"nothing happened\"}");
    let alone = verify(&gw.data_dir, &config);
    assert!(alone.success, "a rehashed chain walks clean: {alone:?}");
    let rewritten = verify_against(&gw.data_dir, &config, &early_file, &[]);
    assert!(!rewritten.success, "a rehash must fail: {rewritten:?}");
    assert!(
        rewritten.stderr.contains(&format!(
            "rewritten: record {}'s hash differs from the saved head",
            early_head.seq
        )),
        "{rewritten:?}"
    );

    // A saved head whose fields were changed, or signed by another key, is refused.
    let mut forged: serde_json::Value = serde_json::from_str(&early.stdout).unwrap();
    forged["seq"] = (early_head.seq - 1).into();
    let forged_file = dir.path().join("forged-head.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let refused = verify_against(&gw.data_dir, &config, &forged_file, &[]);
    assert!(
        !refused.success
            && refused
                .stderr
                .contains("is refused: the head's signature does not match"),
        "{refused:?}"
    );
    let other = edgefleet_protocol::signing::DocumentSigner::from_secret(&[9; 32]);
    let other_key = edgefleet_protocol::signing::public_key_text(&other.verifying_key());
    let refused = verify_against(&gw.data_dir, &config, &early_file, &["--key", &other_key]);
    assert!(
        !refused.success
            && refused
                .stderr
                .contains("is refused: the head is signed by key"),
        "{refused:?}"
    );
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "not json").unwrap();
    let refused = verify_against(&gw.data_dir, &config, &garbage, &[]);
    assert!(
        !refused.success && refused.stderr.contains("not a signed audit head"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_token_in_the_gateway_logs_at_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_env(dir.path(), &[("RUST_LOG", "trace")]);
    let admin_password = std::fs::read_to_string(gw.data_dir.join("initial-admin-password"))
        .expect("initial admin password")
        .trim()
        .to_owned();
    let api = gw.api();
    let admin_token = api.token().expect("admin login").expect("a token");

    // A user with a chosen password, one with a generated password, an API token.
    let ana_password = "ana-chose-this-passphrase";
    let out = api.cli_stdin(
        &[
            "user",
            "add",
            "ana",
            "--role",
            "operator",
            "--site",
            "lyon",
            "--password-stdin",
        ],
        &format!("{ana_password}\n"),
    );
    assert!(out.success, "{out:?}");
    let out = api.cli(&["--json", "user", "add", "bob", "--role", "auditor"]);
    assert!(out.success, "{out:?}");
    let bob_password = out.json()["password"]
        .as_str()
        .expect("generated")
        .to_owned();
    let out = api.cli(&["--json", "token", "create", "ci-deploy", "--expires", "2d"]);
    assert!(out.success, "{out:?}");
    let api_token = out.json()["token"].as_str().expect("token").to_owned();

    // Use them: logins through the CLI, requests with each token, a wrong password.
    let server = format!("http://127.0.0.1:{}", gw.http_port);
    let ana_cfg = dir.path().join("ana-cfg");
    let login = edgefleet(
        &[
            "--server",
            &server,
            "login",
            "--user",
            "ana",
            "--password-stdin",
        ],
        &ana_cfg,
        &format!("{ana_password}\n"),
    );
    assert!(login.success, "{login:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(ana_cfg.join("token")).expect("stored token");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let ana_token = std::fs::read_to_string(ana_cfg.join("token"))
        .unwrap()
        .trim()
        .to_owned();
    let who = edgefleet(&["--server", &server, "--json", "whoami"], &ana_cfg, "");
    assert!(who.success, "{who:?}");
    assert_eq!(who.json()["sites"], serde_json::json!(["lyon"]));
    let bob_cfg = dir.path().join("bob-cfg");
    let login = edgefleet(
        &[
            "--server",
            &server,
            "login",
            "--user",
            "bob",
            "--password-stdin",
        ],
        &bob_cfg,
        &format!("{bob_password}\n"),
    );
    assert!(login.success, "{login:?}");
    let bob_token = std::fs::read_to_string(bob_cfg.join("token"))
        .unwrap()
        .trim()
        .to_owned();
    let wrong_password = "not-anas-password-at-all";
    let wrong = edgefleet(
        &[
            "--server",
            &server,
            "login",
            "--user",
            "ana",
            "--password-stdin",
        ],
        &dir.path().join("x-cfg"),
        &format!("{wrong_password}\n"),
    );
    assert!(
        !wrong.success && wrong.stderr.contains("wrong username or password"),
        "{wrong:?}"
    );
    for token in [&ana_token, &bob_token, &api_token] {
        Api::with_token(gw.http_port, token)
            .get("/api/v1/devices")
            .await
            .expect("a request with the token");
    }
    // The dashboard: a form login (and a wrong one), pages, the event stream and a refused
    // change, all with the session cookie.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let wrong_form_password = "not-bobs-dashboard-password";
    let refused = browser
        .post(format!("{server}/login"))
        .form(&[("username", "bob"), ("password", wrong_form_password)])
        .send()
        .await
        .expect("form login");
    assert_eq!(refused.status(), 401);
    let form = browser
        .post(format!("{server}/login"))
        .form(&[("username", "bob"), ("password", bob_password.as_str())])
        .send()
        .await
        .expect("form login");
    assert_eq!(form.status(), 303);
    let cookie = form.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie")
        .to_owned();
    let cookie_token = cookie
        .split_once('=')
        .map(|(_, v)| v.to_owned())
        .expect("token in cookie");
    for path in ["/", "/audit", "/deployments", "/api/v1/devices"] {
        let r = browser
            .get(format!("{server}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("page");
        assert_eq!(r.status(), 200, "{path}");
    }
    let mut stream = browser
        .get(format!("{server}/api/v1/events/stream"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("stream");
    let first = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .expect("a first event")
        .expect("stream body");
    assert!(first.is_some_and(|c| String::from_utf8_lossy(&c).contains("event: fleet")));
    drop(stream);
    let no_csrf = browser
        .post(format!("{server}/api/v1/tokens"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({ "name": "x" }))
        .send()
        .await
        .expect("post");
    assert_eq!(no_csrf.status(), 403);

    let audit = Api::with_token(gw.http_port, &bob_token)
        .get("/api/v1/audit?limit=500")
        .await
        .expect("auditor reads the audit log");
    let logout = edgefleet(&["--server", &server, "logout"], &ana_cfg, "");
    assert!(logout.success, "{logout:?}");

    // A device enrolls (agent at trace too): neither the token, its secret nor any private
    // key may show up in the gateway's or the agent's output.
    let enroll_token = gw.enrollment_token("trace-dev", "site=lyon");
    let enroll = Command::new(&bins().agent)
        .args(["enroll", "--token", &enroll_token, "--data-dir"])
        .arg(dir.path().join("agent-trace-dev"))
        .env("RUST_LOG", "trace")
        .output()
        .expect("edgefleet-agent enroll");
    assert!(enroll.status.success(), "{enroll:?}");
    let agent_log = format!(
        "{}{}",
        String::from_utf8_lossy(&enroll.stdout),
        String::from_utf8_lossy(&enroll.stderr)
    );
    let token_secret = edgefleet_protocol::enrollment::EnrollmentToken::decode(&enroll_token)
        .expect("token")
        .secret;
    let pem_body = |path: std::path::PathBuf| -> String {
        let text = std::fs::read_to_string(&path).expect("key file");
        // A line from the middle of the key: unique to it.
        text.lines().nth(1).expect("key body").to_owned()
    };
    let device_key = pem_body(dir.path().join("agent-trace-dev/identity/key.pem"));
    let ca_key = pem_body(gw.data_dir.join("pki/ca.key"));
    let signing_key = std::fs::read_to_string(gw.data_dir.join("signing/desired-signing.key"))
        .expect("signing key")
        .trim()
        .to_owned();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = gw.proc.full_log();
    for (what, secret) in [
        ("the enrollment token", enroll_token.as_str()),
        ("the enrollment secret", token_secret.as_str()),
        ("the device's private key", device_key.as_str()),
        ("the CA's private key", ca_key.as_str()),
        ("the desired-state signing key", signing_key.as_str()),
    ] {
        assert!(!log.contains(secret), "{what} is in the gateway's log");
        assert!(
            !agent_log.contains(secret),
            "{what} is in the agent's output"
        );
    }
    assert!(
        agent_log.contains("TRACE")
            || agent_log.contains("DEBUG")
            || agent_log.contains("enrolled"),
        "the agent produced no output; the check proves nothing"
    );
    assert!(
        log.contains("TRACE"),
        "the gateway did not log at trace level; the test proves nothing"
    );
    let secrets = [
        ("the initial admin password", admin_password.as_str()),
        ("ana's password", ana_password),
        ("bob's generated password", bob_password.as_str()),
        ("a wrong password", wrong_password),
        ("the admin's session token", admin_token.as_str()),
        ("ana's session token", ana_token.as_str()),
        ("bob's session token", bob_token.as_str()),
        ("the API token", api_token.as_str()),
        ("a wrong dashboard password", wrong_form_password),
        ("the dashboard's session cookie", cookie_token.as_str()),
    ];
    let audit_text = audit.to_string();
    for (what, secret) in secrets {
        assert!(!log.contains(secret), "{what} is in the gateway's log");
        assert!(!audit_text.contains(secret), "{what} is in the audit log");
    }
}

/// The gateway raises its open-files soft limit to the hard one at start and logs both
/// figures: started from a shell whose soft limit is 512 (the hard limit stays), it reports
/// `before` 512 and `now` the hard limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_raises_its_open_files_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hard: u64 = String::from_utf8(
        Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .expect("sh")
            .stdout,
    )
    .expect("utf-8")
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    let script = format!(
        "ulimit -Sn 512 && exec '{}' --log-format json gateway --data-dir '{}' --http-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 --mqtts-listen 127.0.0.1:0 --enroll-listen 127.0.0.1:0 --https-listen 127.0.0.1:0",
        bins().edgefleet.display(),
        dir.path().join("data").display()
    );
    let mut gw = edgefleet_tests::procs::Proc::spawn(
        "gateway-nofile",
        dir.path(),
        Path::new("/bin/sh"),
        &["-c".to_owned(), script],
    );
    let line =
        edgefleet_tests::wait::until("the open files line", Duration::from_secs(60), || async {
            gw.full_log()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| {
                    v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("open files limit"))
                })
                .ok_or_else(|| gw.log(5))
        })
        .await;
    assert_eq!(line["fields"]["before"], 512, "{line}");
    let now = line["fields"]["now"].as_u64().expect("now");
    assert!(
        now > 512 && now <= hard,
        "raised to the hard limit {hard}: {line}"
    );
    gw.stop();
}
