//! Crash-only processes: a gateway whose embedded broker dies exits non-zero (so systemd or
//! Docker restarts it, and everything converges again), and a controller tells through
//! `GET /api/v1/health` when it has no broker link (503) and when it has one again (200).

use std::time::{Duration, Instant};

use edgefleet_tests::api::Api;
use edgefleet_tests::procs::{self, Gateway};
use edgefleet_tests::wait;

const T: Duration = Duration::from_secs(30);

#[test]
fn the_gateway_exits_non_zero_when_its_embedded_broker_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = Gateway::start(dir.path());
    // rumqttd 0.20 panics its router thread on a topic that starts with a multibyte
    // character (src/protocol/mod.rs:658 slices the first byte; SPEC.md §13) while any
    // subscription exists: after that no message moves. No client of the front can send one
    // any more (the front refuses such topics on every listener: broker/tests/front.rs), so
    // the only way left is the broker's own listener with the gateway's internal password,
    // which only the gateway's data dir holds: whoever can read it is as good as the
    // gateway. One QoS 0 publish there.
    for (port, login) in [
        (
            gw.mqtt_port,
            edgefleet_tests::mqtt::login_args(gw.mqtt_port),
        ),
        (gw.internal_port, Vec::new()),
    ] {
        // Refused on the plain listener (even for the bridge user) and, without the
        // password, on the internal one: the gateway keeps running.
        let _ = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(login)
            .args(["-q", "0", "-t", "é", "-m", "x"])
            .status()
            .expect("cannot run mosquitto_pub (Debian package mosquitto-clients)");
    }
    // The broker still moves messages (a retained one through the bridge user).
    edgefleet_tests::mqtt::publish(gw.mqtt_port, "plant/alive", b"yes", true);
    assert_eq!(
        edgefleet_tests::mqtt::retained_raw(gw.mqtt_port, "plant/alive", 5),
        b"yes",
        "the broker stopped serving after a refused publish:\n{}",
        gw.proc.log(30)
    );
    let published = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &gw.internal_port.to_string()])
        .args(["-u", "edgefleet-internal", "-P", &gw.internal_password()])
        .args(["-q", "0", "-t", "é", "-m", "x"])
        .status()
        .expect("cannot run mosquitto_pub (Debian package mosquitto-clients)");
    assert!(published.success());
    let since = Instant::now();
    let status = gw
        .proc
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the gateway is still running 10 s after its broker died:\n{}",
                gw.proc.log(30)
            )
        });
    assert!(
        !status.success(),
        "a gateway whose broker died must exit non-zero, got {status}"
    );
    let log = gw.proc.full_log();
    assert!(
        log.contains("the embedded MQTT broker stopped"),
        "the log says why it exits (after {:?}):\n{}",
        since.elapsed(),
        gw.proc.log(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_503_while_the_broker_link_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut broker, port) = procs::embedded_broker(dir.path());
    let (_controller, http) = procs::controller(dir.path(), port);
    let api = Api::new(http);
    let up = wait::until("health 200 with the broker up", T, || async {
        api.get("/api/v1/health").await
    })
    .await;
    assert_eq!(up["broker"]["connected"], true, "{up}");

    broker.kill9();
    let down = wait::until("health not 200 with the broker gone", T, || async {
        match api.get("/api/v1/health").await {
            Ok(v) => Err(format!("still 200: {v}")),
            Err(e) if e.starts_with("503") => Ok(e),
            Err(e) => Err(e),
        }
    })
    .await;
    assert!(
        down.contains("no connection to the MQTT broker"),
        "the 503 says why: {down}"
    );

    broker.start();
    let back = wait::until("health 200 once the broker is back", T, || async {
        api.get("/api/v1/health").await
    })
    .await;
    assert_eq!(back["status"], "ok", "{back}");
}

/// `edgefleet controller --broker-user U --broker-password-file F` against a Mosquitto that
/// takes only that user (password_file, no anonymous clients): with the password the link
/// comes up (health 200, broker connected); with a wrong one it stays down and the log
/// says the broker refused the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_logs_in_to_a_broker_that_requires_a_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = dir.path().join("mosquitto.passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["edgefleet-ctl", "s3cret-broker-pass"])
        .output()
        .expect("mosquitto_passwd (Debian package mosquitto)");
    assert!(made.status.success(), "{made:?}");
    let (_broker, port) = procs::mosquitto_with(
        dir.path(),
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    );
    let good = dir.path().join("broker-password");
    std::fs::write(&good, "s3cret-broker-pass\n").unwrap();
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "guess\n").unwrap();

    let run = dir.path().join("good");
    std::fs::create_dir(&run).unwrap();
    let login = ["--broker-user", "edgefleet-ctl", "--broker-password-file"];
    let (_ok, http) = procs::controller_with(
        &run,
        port,
        &[login[0], login[1], login[2], good.to_str().unwrap()],
    );
    let api = Api::new(http);
    let up = wait::until("health 200 with the right password", T, || async {
        api.get("/api/v1/health").await
    })
    .await;
    assert_eq!(up["broker"]["connected"], true, "{up}");

    let run = dir.path().join("wrong");
    std::fs::create_dir(&run).unwrap();
    let (refused, _http) = procs::controller_with(
        &run,
        port,
        &[login[0], login[1], login[2], wrong.to_str().unwrap()],
    );
    wait::until("the refused login in the log", T, || async {
        let log = refused.full_log();
        if log.contains("broker connection lost") && log.to_lowercase().contains("refused") {
            Ok(())
        } else {
            Err(refused.log(5))
        }
    })
    .await;
}
