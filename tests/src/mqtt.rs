//! The bus as an integrator sees it, through Debian's `mosquitto_sub` (a client nobody here
//! wrote).

use std::process::Command;

use serde_json::Value;

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
