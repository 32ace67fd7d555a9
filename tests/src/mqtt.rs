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
