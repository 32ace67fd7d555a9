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
    // character (src/protocol/mod.rs slices the first byte; SPEC.md §13): after that no
    // message moves. One QoS 0 publish on the plain listener, as any local client could.
    let published = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &gw.mqtt_port.to_string()])
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
