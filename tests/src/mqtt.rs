//! The bus as an integrator sees it, through Debian's `mosquitto_sub` (a client nobody here
//! wrote).
//!
//! A gateway's plain listener takes only local MQTT users: [`crate::procs::Gateway::start`]
//! creates one with the `bridge` role and records it here by port ([`set_login`]), and every
//! helper of this module (and [`login_for`] for rumqttc clients) logs in with it. Ports
//! without a recorded login (an external Mosquitto, `edgefleet broker`) are anonymous.

use std::collections::HashMap;
use std::process::Command;

use parking_lot::Mutex;
use serde_json::Value;

static LOGINS: Mutex<Option<HashMap<u16, (String, String)>>> = Mutex::new(None);

/// Records the user name and password the listener on `port` takes.
pub fn set_login(port: u16, username: &str, password: &str) {
    LOGINS
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(port, (username.to_owned(), password.to_owned()));
}

/// The login recorded for `port`, if any.
pub fn login_for(port: u16) -> Option<(String, String)> {
    LOGINS.lock().as_ref().and_then(|m| m.get(&port).cloned())
}

/// `-u USER -P PASSWORD` for mosquitto clients, when `port` has a login.
pub fn login_args(port: u16) -> Vec<String> {
    login_for(port)
        .map(|(u, p)| vec!["-u".to_owned(), u, "-P".to_owned(), p])
        .unwrap_or_default()
}

/// The retained JSON document on `topic`, read with `mosquitto_sub -C 1` (waits at most
/// `wait_s` seconds). Err says what came back instead.
pub fn retained(port: u16, topic: &str, wait_s: u32) -> Result<Value, String> {
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            &wait_s.to_string(),
        ])
        .args(login_args(port))
        .output()
        .map_err(|e| format!("cannot run mosquitto_sub (Debian package mosquitto-clients): {e}"))?;
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("nothing retained as JSON on {topic} ({e}): {out:?}"))
}

/// The retained payload on `topic`, as raw bytes (empty when nothing arrived in `wait_s`).
pub fn retained_raw(port: u16, topic: &str, wait_s: u32) -> Vec<u8> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-C", "1", "-W", &wait_s.to_string(), "-N"])
        .args(login_args(port))
        .output()
        .expect("cannot run mosquitto_sub (Debian package mosquitto-clients)");
    out.stdout
}

/// Publishes `payload` (QoS 1) with `mosquitto_pub`, the way any client on the bus could.
pub fn publish(port: u16, topic: &str, payload: &[u8], retain: bool) {
    use std::io::Write;
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"]);
    cmd.args(["-t", topic, "-s"]);
    cmd.args(login_args(port));
    if retain {
        cmd.arg("-r");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run mosquitto_pub (Debian package mosquitto-clients)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(payload)
        .expect("write to mosquitto_pub");
    assert!(
        child.wait().expect("mosquitto_pub").success(),
        "mosquitto_pub failed"
    );
}
