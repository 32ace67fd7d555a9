//! The gateway's HTTP side with the real binaries: the API and dashboard over HTTPS with the
//! gateway's CA, plain HTTP refused off loopback, the CLI logging in over HTTPS with the CA
//! pinned, idle sockets closed on every HTTP listener, and a login storm that neither blows
//! up the gateway's memory nor stalls `/api/v1/health`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_tests::api::CliOutput;
use edgefleet_tests::bins::bins;
use edgefleet_tests::procs::Gateway;
use serde_json::json;

/// `edgefleet ARGS…` with a private config dir and no inherited token or CA.
fn edgefleet(args: &[&str], config: &Path) -> CliOutput {
    let out = Command::new(&bins().edgefleet)
        .args(args)
        .env("EDGEFLEET_CONFIG_DIR", config)
        .env_remove("EDGEFLEET_TOKEN")
        .env_remove("EDGEFLEET_CA_FILE")
        .env_remove("EDGEFLEET_SERVER")
        .stdin(Stdio::null())
        .output()
        .expect("run edgefleet");
    CliOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A client that trusts exactly the CA in `ca_pem` (and never anything else).
fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn admin_password(gw: &Gateway) -> String {
    std::fs::read_to_string(gw.data_dir.join("initial-admin-password"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_and_dashboard_answer_over_https_and_the_cli_pins_the_gateway_ca() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path());
    let ca = std::fs::read(gw.ca_file()).unwrap();
    let https = format!("https://127.0.0.1:{}", gw.https_port);
    let client = client_trusting(&ca);

    let health = client
        .get(format!("{https}/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // A client that trusts another CA (here: the server's own leaf as if it were a CA) is
    // refused by its TLS stack: the gateway's certificate is only good with its CA.
    let leaf = std::fs::read(gw.data_dir.join("pki").join("server.pem")).unwrap();
    let wrong = client_trusting(&leaf)
        .get(format!("{https}/api/v1/health"))
        .send()
        .await;
    assert!(wrong.is_err(), "verified against the wrong CA: {wrong:?}");

    // The dashboard's login over HTTPS sets a Secure cookie, and the page loads with it.
    let pw = admin_password(&gw);
    let r = client
        .post(format!("{https}/login"))
        .form(&[
            ("username", "admin"),
            ("password", pw.as_str()),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let page = client
        .get(format!("{https}/"))
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("edgefleet"));

    // The CLI: without a CA it refuses to talk HTTPS and says how to pin one.
    let config = dir.path().join("cli");
    let pw_file = gw.data_dir.join("initial-admin-password");
    let pw_file = pw_file.to_str().unwrap();
    let out = edgefleet(
        &[
            "--server",
            &https,
            "login",
            "--user",
            "admin",
            "--password-file",
            pw_file,
        ],
        &config,
    );
    assert!(!out.success, "{out:?}");
    assert!(out.stderr.contains("--ca-file"), "{out:?}");
    // With a CA that is not the gateway's, the handshake fails: never a silent fallback.
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, &leaf).unwrap();
    let out = edgefleet(
        &[
            "--server",
            &https,
            "login",
            "--user",
            "admin",
            "--password-file",
            pw_file,
            "--ca-file",
            wrong_ca.to_str().unwrap(),
        ],
        &config,
    );
    assert!(!out.success, "{out:?}");
    // With the gateway's CA: logged in, and the CA is pinned next to the token.
    let ca_file = gw.ca_file();
    let out = edgefleet(
        &[
            "--json",
            "--server",
            &https,
            "login",
            "--user",
            "admin",
            "--password-file",
            pw_file,
            "--ca-file",
            ca_file.to_str().unwrap(),
        ],
        &config,
    );
    assert!(out.success, "{out:?}");
    assert_eq!(std::fs::read(config.join("ca.pem")).unwrap(), ca);
    let out = edgefleet(&["--json", "--server", &https, "whoami"], &config);
    assert!(out.success, "later commands use the pinned CA: {out:?}");
    assert_eq!(out.json()["username"], "admin");
    let out = edgefleet(&["--json", "--server", &https, "token", "list"], &config);
    assert!(out.success, "{out:?}");
    assert_eq!(out.json()["tokens"][0]["name"], "login");
}

#[test]
fn plain_http_off_loopback_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for args in [
        vec![
            "gateway",
            "--data-dir",
            data,
            "--http-listen",
            "0.0.0.0:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--mqtts-listen",
            "127.0.0.1:0",
            "--enroll-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ],
        vec![
            "controller",
            "--data-dir",
            data,
            "--http-listen",
            "0.0.0.0:0",
            "--broker",
            "mqtt://127.0.0.1:1",
        ],
    ] {
        let t = Instant::now();
        let out = Command::new(&bins().edgefleet)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started: {stderr}");
        assert!(
            stderr.contains("plain HTTP is served only on loopback"),
            "{args:?}: {stderr}"
        );
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}

/// Opens `n` sockets to `port` that never send a whole request head; returns them.
async fn idle_sockets(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        if i % 2 == 1 {
            use tokio::io::AsyncWriteExt;
            // Half a head (or half a TLS hello on the TLS listeners): slowloris.
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        }
        out.push(s);
    }
    out
}

/// Waits until every socket is closed by the server; how long that took.
async fn all_closed(socks: Vec<tokio::net::TcpStream>, within: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in socks {
        tasks.spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
    tokio::time::timeout(within, async { while tasks.join_next().await.is_some() {} })
        .await
        .expect("every idle socket is closed in time");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_sockets_are_closed_on_every_http_listener() {
    // The default is documented where operators look.
    let help = Command::new(&bins().edgefleet)
        .args(["gateway", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--http-idle-timeout"), "{help}");
    assert!(help.contains("[default: 30s]"), "{help}");

    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(dir.path(), &[], &["--http-idle-timeout", "3s"]);
    let ca = std::fs::read(gw.ca_file()).unwrap();
    for (name, port) in [
        ("http", gw.http_port),
        ("https", gw.https_port),
        ("enroll", gw.enroll_port),
    ] {
        let socks = idle_sockets(port, 1100).await;
        // Still serving while they sit there.
        let health = format!("http://127.0.0.1:{}/api/v1/health", gw.http_port);
        let t = Instant::now();
        let r = reqwest::get(&health).await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{name}: {:?}",
            t.elapsed()
        );
        let took = all_closed(socks, Duration::from_secs(60)).await;
        println!("{name}: 1,100 idle sockets closed after {took:?} (timeout 3 s)");
    }
    let r = client_trusting(&ca)
        .get(format!("https://127.0.0.1:{}/api/v1/health", gw.https_port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the HTTPS listener serves after the storm");
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_hundred_concurrent_logins_keep_memory_bounded_and_health_answering() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path());
    let pid = gw.proc.pid().unwrap();
    let base = format!("http://127.0.0.1:{}", gw.http_port);
    let pw = admin_password(&gw);
    let before = rss_kib(pid, "VmRSS:");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(601));
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..600 {
        let (client, url, start) = (
            client.clone(),
            format!("{base}/api/v1/login"),
            start.clone(),
        );
        // Half the real admin (argon2 against its hash), half unknown users (the decoy hash).
        let body = if i % 2 == 0 {
            json!({"username": "admin", "password": pw})
        } else {
            json!({"username": format!("nobody{i}"), "password": "wrong-password"})
        };
        logins.spawn(async move {
            start.wait().await;
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        });
    }
    start.wait().await;
    let storm = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut peak = 0;
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    while !logins.is_empty() && storm.elapsed() < Duration::from_secs(120) {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            client.get(format!("{base}/api/v1/health")).send(),
        )
        .await;
        let took = t.elapsed();
        assert!(
            matches!(&r, Ok(Ok(resp)) if resp.status() == 200),
            "health did not answer within 1 s during the storm: {r:?}"
        );
        slowest = slowest.max(took);
        peak = peak.max(rss_kib(pid, "VmRSS:"));
        while let Some(done) = logins.try_join_next() {
            *statuses.entry(done.unwrap()).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Some(s) = logins.join_next().await {
        *statuses.entry(s.unwrap()).or_default() += 1;
    }
    let hwm = rss_kib(pid, "VmHWM:");
    println!(
        "600 concurrent logins in {:?}: statuses {statuses:?}; RSS before {before} KiB, peak sampled {peak} KiB, high-water mark {hwm} KiB; slowest health {slowest:?}",
        storm.elapsed()
    );
    assert!(hwm < 300 * 1024, "RSS high-water mark {hwm} KiB");
    assert!(
        statuses.keys().all(|s| [200, 401, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
}
