//! The gateway as a user sees it: its HTTP API (read side) and the `edgefleet` CLI, both
//! carrying a token. [`Api::admin`] logs in as the first-start admin the way a user would
//! (`edgefleet login --password-file <data-dir>/initial-admin-password`) and then sends that
//! token with every request and CLI run (`EDGEFLEET_TOKEN`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use parking_lot::Mutex;
use serde_json::Value;

use crate::bins::bins;

pub struct Api {
    pub port: u16,
    /// Where the API is reached: loopback, or a gateway host's address on a test network
    /// (it can change when that host restarts: [`Api::set_host`]).
    host: Mutex<String>,
    http: reqwest::Client,
    /// Where `initial-admin-password` is, to log in as admin on first use.
    data_dir: Option<PathBuf>,
    token: Mutex<Option<String>>,
    /// The gateway CA (PEM file) when the API is reached over HTTPS (another host: plain
    /// HTTP is served on loopback only).
    ca: Option<PathBuf>,
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
    /// Without credentials.
    pub fn new(port: u16) -> Api {
        Api {
            port,
            host: Mutex::new("127.0.0.1".to_owned()),
            http: reqwest::Client::new(),
            data_dir: None,
            token: Mutex::new(None),
            ca: None,
        }
    }

    /// As the first-start admin of a gateway on another host of a test network, over HTTPS
    /// checked against its CA (`DATA_DIR/pki/ca.pem`, which the test can read): what an
    /// operator's machine does, since plain HTTP is served on loopback only.
    pub fn admin_https_at(host: &str, port: u16, data_dir: &Path) -> Api {
        let ca = data_dir.join("pki").join("ca.pem");
        Api {
            data_dir: Some(data_dir.to_owned()),
            ca: Some(ca),
            ..Api::new(port)
        }
        .at(host)
    }

    fn at(self, host: &str) -> Api {
        self.set_host(host);
        self
    }

    /// The HTTP client: trusting only the gateway CA over HTTPS (read when first needed: the
    /// gateway writes its CA at first start).
    fn client(&self) -> Result<reqwest::Client, String> {
        let Some(ca) = &self.ca else {
            return Ok(self.http.clone());
        };
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert)
            .build()
            .map_err(|e| e.to_string())
    }

    /// As the first-start admin of the gateway or controller with this data dir (logs in on
    /// first use, with the real CLI).
    pub fn admin(port: u16, data_dir: &Path) -> Api {
        Api {
            data_dir: Some(data_dir.to_owned()),
            ..Api::new(port)
        }
    }

    /// As the first-start admin of a gateway reached at `host:port` (another host on a test
    /// network), whose data dir the test can read.
    pub fn admin_at(host: &str, port: u16, data_dir: &Path) -> Api {
        let api = Api::admin(port, data_dir);
        api.set_host(host);
        api
    }

    /// From now on requests go to `host` (a restarted gateway host got a new address).
    pub fn set_host(&self, host: &str) {
        *self.host.lock() = host.to_owned();
    }

    /// With a given token (another user's, an API token).
    pub fn with_token(port: u16, token: &str) -> Api {
        let api = Api::new(port);
        *api.token.lock() = Some(token.to_owned());
        api
    }

    /// The CLI's config dir for this API (where `edgefleet login` stores its token).
    pub fn config_dir(&self) -> PathBuf {
        match &self.data_dir {
            Some(d) => d.with_file_name(format!("cli-config-{}", self.port)),
            None => std::env::temp_dir().join(format!(
                "edgefleet-cli-{}-{}",
                std::process::id(),
                self.port
            )),
        }
    }

    /// The token requests carry: given, or obtained by logging in as admin.
    pub fn token(&self) -> Result<Option<String>, String> {
        let mut held = self.token.lock();
        if held.is_some() {
            return Ok(held.clone());
        }
        let Some(dir) = &self.data_dir else {
            return Ok(None);
        };
        let config = self.config_dir();
        let mut login = Command::new(&bins().edgefleet);
        login
            .arg("--server")
            .arg(self.url())
            .args(["login", "--user", "admin", "--password-file"])
            .arg(dir.join("initial-admin-password"));
        if let Some(ca) = &self.ca {
            login.arg("--ca-file").arg(ca);
        }
        let out = login
            .env("EDGEFLEET_CONFIG_DIR", &config)
            .env_remove("EDGEFLEET_TOKEN")
            .output()
            .map_err(|e| format!("cannot run edgefleet login: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "edgefleet login failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let token = std::fs::read_to_string(config.join("token"))
            .map_err(|e| format!("edgefleet login stored no token: {e}"))?
            .trim()
            .to_owned();
        *held = Some(token.clone());
        Ok(Some(token))
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host.lock(), self.port)
    }

    /// GET a path; Err with the reason if unreachable or not 2xx.
    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let mut req = self.client()?.get(format!("{}{path}", self.url()));
        if path != "/api/v1/health"
            && let Some(t) = self.token()?
        {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    }

    /// A dashboard page as HTML, with the session as the browser's cookie; panics unless 2xx.
    pub async fn get_text(&self, path: &str) -> String {
        let token = self.token().expect("login").expect("a token");
        let resp = self
            .http
            .get(format!("{}{path}", self.url()))
            .header("cookie", format!("edgefleet_session={token}"))
            .send()
            .await
            .expect("page");
        let status = resp.status();
        let text = resp.text().await.expect("page text");
        assert!(status.is_success(), "{path}: {status}: {text}");
        text
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
    /// The device's recent events of `kind` (`security_rejected`, …), oldest first, from
    /// its detail (empty if the device is unknown).
    pub async fn events_of(&self, id: &str, kind: &str) -> Vec<Value> {
        self.device(id)
            .await
            .map(|d| d["events"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

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

    /// Runs `edgefleet --server URL ARGS…` with the token in `EDGEFLEET_TOKEN`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_stdin(args, "")
    }

    /// [`Api::cli`] with `stdin` on standard input (e.g. `--password-stdin`).
    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> CliOutput {
        let token = self
            .token()
            .unwrap_or_else(|e| panic!("cannot log in as admin: {e}"));
        let mut cmd = Command::new(&bins().edgefleet);
        cmd.arg("--server")
            .arg(self.url())
            .args(args)
            .env_remove("EDGEFLEET_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Never the developer's own ~/.config/edgefleet: a config dir of this API's.
        cmd.env("EDGEFLEET_CONFIG_DIR", self.config_dir());
        if let Some(t) = token {
            cmd.env("EDGEFLEET_TOKEN", t);
        }
        let mut child = cmd.spawn().expect("run edgefleet CLI");
        {
            use std::io::Write;
            let mut input = child.stdin.take().expect("stdin");
            let _ = input.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().expect("run edgefleet CLI");
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
