//! The HTTP client of the controller's API, and where the session token is kept.
//!
//! Credentials: `edgefleet login` stores a session token in `$EDGEFLEET_CONFIG_DIR/token`
//! (default `~/.config/edgefleet/token`, mode 0600); `EDGEFLEET_TOKEN` overrides it (for
//! scripts, with a token from `edgefleet token create`).
//!
//! HTTPS: the gateway's CA is pinned. `edgefleet login --ca-file DATA_DIR/pki/ca.pem` checks
//! the server against that CA only and keeps a copy next to the token (`ca.pem`); every later
//! command to an `https://` server trusts that CA and nothing else (`EDGEFLEET_CA_FILE`
//! overrides it). Certificate verification is never turned off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

/// Where `edgefleet login` keeps the token: `$EDGEFLEET_CONFIG_DIR/token`, else
/// `$XDG_CONFIG_HOME/edgefleet/token`, else `~/.config/edgefleet/token`.
pub fn token_file() -> anyhow::Result<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("EDGEFLEET_CONFIG_DIR") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        PathBuf::from(d).join("edgefleet")
    } else if let Some(h) = std::env::var_os("HOME") {
        PathBuf::from(h).join(".config").join("edgefleet")
    } else {
        bail!("no config directory: set EDGEFLEET_CONFIG_DIR (or HOME)");
    };
    Ok(dir.join("token"))
}

/// Where `edgefleet login --ca-file` keeps the pinned gateway CA: next to the token.
pub fn ca_file() -> anyhow::Result<PathBuf> {
    Ok(token_file()?.with_file_name("ca.pem"))
}

/// The CA an `https://` server is checked against: `explicit`, else `EDGEFLEET_CA_FILE`,
/// else the one `edgefleet login` pinned.
fn pinned_ca(explicit: Option<&Path>) -> anyhow::Result<(PathBuf, String)> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => match std::env::var_os("EDGEFLEET_CA_FILE") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => ca_file()?,
        },
    };
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        anyhow!(
            "no gateway CA to check the HTTPS server against ({}: {e}); log in once with 'edgefleet login --ca-file GATEWAY_DATA_DIR/pki/ca.pem' (copy that file from the gateway), or set EDGEFLEET_CA_FILE",
            path.display()
        )
    })?;
    Ok((path, pem))
}

/// A TLS client configuration that trusts exactly the CA in `pem`.
fn tls_trusting(pem: &str, path: &Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| anyhow!("{} is not a PEM certificate: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| anyhow!("{} holds an unusable CA certificate: {e}", path.display()))?;
        n += 1;
    }
    if n == 0 {
        bail!(
            "{} holds no certificate: give the gateway's DATA_DIR/pki/ca.pem",
            path.display()
        );
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| anyhow!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The token client commands send: `EDGEFLEET_TOKEN`, else the one `edgefleet login` stored.
pub fn stored_token() -> Option<String> {
    if let Ok(t) = std::env::var("EDGEFLEET_TOKEN")
        && !t.trim().is_empty()
    {
        return Some(t.trim().to_owned());
    }
    let text = std::fs::read_to_string(token_file().ok()?).ok()?;
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// A thin client of the HTTP API.
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// Turn a 401 without a token into "not logged in: run edgefleet login" (not for login itself).
    pub login_hint: bool,
}

impl ApiClient {
    pub fn new(server: &str) -> anyhow::Result<Self> {
        Self::with_token(server, stored_token())
    }

    pub fn with_token(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        Self::with_ca(server, token, None)
    }

    /// A client whose `https://` server is checked against the CA in `ca` (else the pinned
    /// one, see the module docs).
    pub fn with_ca(server: &str, token: Option<String>, ca: Option<&Path>) -> anyhow::Result<Self> {
        if !server.starts_with("http://") && !server.starts_with("https://") {
            bail!(
                "--server '{server}' must be a URL like https://gateway:8444 or http://127.0.0.1:8080"
            );
        }
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if server.starts_with("https://") {
            let (path, pem) = pinned_ca(ca)?;
            builder = builder.use_preconfigured_tls(tls_trusting(&pem, &path)?);
        }
        let http = builder.build()?;
        Ok(ApiClient {
            base: server.trim_end_matches('/').to_owned(),
            http,
            login_hint: token.is_none(),
            token,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            anyhow!("cannot reach the edgefleet API at {}: {e}\nIs the gateway running? Point to it with --server or EDGEFLEET_SERVER.", self.base)
        })?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|_| json!({ "error": format!("HTTP {status} with no JSON body") }));
        if !status.is_success() {
            let msg = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            if status == reqwest::StatusCode::UNAUTHORIZED && self.login_hint {
                bail!("not logged in: run 'edgefleet login --user NAME' (or set EDGEFLEET_TOKEN)");
            }
            bail!("{msg}");
        }
        Ok(body)
    }

    /// GET a route that answers with text (CSV export).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!("cannot reach the edgefleet API at {}: {e}\nIs the gateway running? Point to it with --server or EDGEFLEET_SERVER.", self.base)
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {status}"));
            bail!("{msg}");
        }
        Ok(text)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }
}

/// Reads a password from a file or the first line of standard input (trailing newline cut).
pub fn read_password(file: Option<&PathBuf>, stdin: bool) -> anyhow::Result<Option<String>> {
    let text = match (file, stdin) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the password file {}", f.display()))?,
        (None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line
        }
        (None, false) => return Ok(None),
    };
    let pw = text.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        bail!("the password is empty");
    }
    Ok(Some(pw))
}

/// What a query value keeps as it is: letters, digits and `- _ . ~` (RFC 3986 unreserved).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query value.
pub fn q(v: &str) -> String {
    utf8_percent_encode(v, QUERY_VALUE).to_string()
}

pub fn audit_query(since: &Option<String>, site: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(s) = since {
        out += &format!("&since={}", q(s));
    }
    if let Some(s) = site {
        out += &format!("&site={}", q(s));
    }
    out
}
