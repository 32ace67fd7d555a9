//! The gateway as a user sees it: its HTTP API (read side) and the `edgefleet` CLI.

use std::process::Command;

use serde_json::Value;

use crate::bins::bins;

pub struct Api {
    pub port: u16,
    http: reqwest::Client,
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("CLI output is not JSON ({e}): {self:?}"))
    }
}

impl Api {
    pub fn new(port: u16) -> Api {
        Api {
            port,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// GET a path; Err with the reason if unreachable or not 2xx.
    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    }

    pub async fn devices(&self) -> Result<Vec<Value>, String> {
        Ok(self.get("/api/v1/devices").await?["devices"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    pub async fn device(&self, id: &str) -> Result<Value, String> {
        self.get(&format!("/api/v1/devices/{id}")).await
    }

    /// Waits until the device's `connection` is `want` (`online`, `offline`); returns the
    /// device document.
    pub async fn wait_connection(
        &self,
        id: &str,
        want: &str,
        timeout: std::time::Duration,
    ) -> Value {
        crate::wait::until(&format!("{id} {want}"), timeout, || async {
            let d = self.device(id).await?;
            if d["connection"] == want {
                Ok(d)
            } else {
                Err(d["connection"].to_string())
            }
        })
        .await
    }

    /// Runs `edgefleet --server URL ARGS…`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let out = Command::new(&bins().edgefleet)
            .arg("--server")
            .arg(self.url())
            .args(args)
            .output()
            .expect("run edgefleet CLI");
        CliOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `edgefleet apply` with a Compose file written to `dir`; panics if it fails.
    pub fn apply(&self, dir: &std::path::Path, name: &str, target: &str, compose: &str) -> Value {
        let out = self.try_apply(dir, name, target, compose);
        assert!(out.success, "apply failed: {out:?}");
        out.json()
    }

    pub fn try_apply(
        &self,
        dir: &std::path::Path,
        name: &str,
        target: &str,
        compose: &str,
    ) -> CliOutput {
        let file = dir.join(format!("{name}.yml"));
        std::fs::write(&file, compose).expect("write compose file");
        self.cli(&[
            "--json",
            "apply",
            "-f",
            &file.display().to_string(),
            "--name",
            name,
            "--target",
            target,
        ])
    }
}

/// Service `svc` of stack `stack` in a device detail document's status.
pub fn service<'a>(device: &'a Value, stack: &str, svc: &str) -> Option<&'a Value> {
    device.pointer(&format!("/status/stacks/{stack}/services/{svc}"))
}
