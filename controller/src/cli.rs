//! The `edgefleet` command line: server commands (`gateway`, `controller`, `broker`) and the
//! client commands that talk to the HTTP API (`apply`, `get`, `delete`, `login`, `user`,
//! `audit`, …). Client commands print human tables by default and the API's JSON with
//! `--json`.
//!
//! Credentials: `edgefleet login` stores a session token in `$EDGEFLEET_CONFIG_DIR/token`
//! (default `~/.config/edgefleet/token`, mode 0600); `EDGEFLEET_TOKEN` overrides it (for
//! scripts, with a token from `edgefleet token create`). `audit verify` reads the store file
//! itself (`--data-dir`), so it works with the gateway stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};

use crate::bus::BrokerAddr;

#[derive(Debug, Parser)]
#[command(
    name = "edgefleet",
    version,
    about = "edgefleet: one control plane for containerised apps on a fleet of edge devices",
    long_about = "edgefleet runs containerised apps on a fleet of edge devices over MQTT.\n\n\
        Start the control plane with `edgefleet gateway --data-dir ./data` (embedded MQTT broker + controller + HTTP API),\n\
        run `edgefleet-agent --id ID --broker mqtt://GATEWAY:1883` on each device, then deploy a Compose file with\n\
        `edgefleet apply -f stack.yml --name NAME --target 'site=lyon,line=3'` and watch with `edgefleet get devices`."
)]
pub struct Cli {
    /// HTTP API of the controller, for client commands.
    #[arg(
        long,
        global = true,
        env = "EDGEFLEET_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Print the API's JSON instead of tables (client commands).
    #[arg(long, global = true)]
    pub json: bool,
    /// Log format of server commands: text or json. Log level comes from RUST_LOG (default info).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: embedded MQTT broker + controller + HTTP API in one process.
    Gateway(GatewayArgs),
    /// Run the controller against an external MQTT broker (Mosquitto, EMQX, …).
    Controller(ControllerArgs),
    /// Run only the embedded MQTT broker (e.g. to run the controller as a separate process).
    Broker(BrokerArgs),
    /// Create or update a deployment from a Compose file (a new revision if anything changed).
    Apply(ApplyArgs),
    /// Show devices or deployments.
    #[command(subcommand)]
    Get(GetCommand),
    /// Delete a deployment: its containers are removed from every device it targets.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// A deployment's revisions with who and when; `--diff A B` shows what changed between two.
    History {
        deployment: String,
        /// Two revisions to compare, e.g. `--diff 3 4`.
        #[arg(long, num_args = 2, value_names = ["FROM", "TO"])]
        diff: Option<Vec<u64>>,
    },
    /// Maintenance windows per site: rollout waves wait for them.
    #[command(subcommand)]
    Window(WindowCommand),
    /// Staged rollouts: start one, watch it, pause, resume or abort it.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Log in to the API; the session token is kept in the config dir (0600) for 12 h.
    Login(LoginArgs),
    /// Revoke the stored session token and forget it.
    Logout,
    /// Who the stored token (or EDGEFLEET_TOKEN) belongs to: user, role, sites.
    Whoami,
    /// API users (admin only).
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens for scripts (EDGEFLEET_TOKEN), with your role and sites.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The tamper-evident audit log: verify it, list or export records.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Device identities: enroll a device (one-time token) or revoke it (admin only).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Read-only MQTT credentials for integrators (SCADA, historians), admin only.
    #[command(subcommand)]
    Integrator(IntegratorCommand),
    /// The confinement rules for an external broker.
    #[command(subcommand)]
    Acl(AclCommand),
    /// The last lines a service wrote on a device, read from the device now.
    #[command(after_help = "Example:\n  edgefleet logs press-07 opcua-bridge bridge --tail 200")]
    Logs {
        device: String,
        stack: String,
        service: String,
        /// How many lines (1 to 1000).
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create a one-time enrollment token for a device (printed once; expires).
    ///
    /// On the device run `edgefleet-agent enroll --token TOKEN`: the agent gets its own
    /// certificate and key and pins this gateway's CA and signing key. A token works once.
    #[command(
        after_help = "Example:\n  edgefleet device add press-07 --labels site=lyon,area=stamping,line=3 --expires 2h"
    )]
    Add {
        id: String,
        /// Labels the device starts with, key=value comma-separated (site, area, line…).
        #[arg(long, default_value = "")]
        labels: String,
        /// How long the token stays valid (e.g. 2h, 7d; at most 30d).
        #[arg(long, default_value = "24h")]
        expires: String,
    },
    /// Revoke every certificate of a device: it is disconnected now and cannot reconnect.
    /// Enroll it again (device add) to let it back.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum IntegratorCommand {
    /// Issue a read-only certificate: status, presence, events, site summaries and rollout
    /// status; it can publish nothing. Writes cert.pem, key.pem (0600) and ca.pem to --out.
    #[command(
        after_help = "Then, e.g.:\n  mosquitto_sub -h GATEWAY -p 8883 --cafile OUT/ca.pem --cert OUT/cert.pem --key OUT/key.pem \\\n    -i integrator:NAME -t 'edgefleet/v1/fleet/#' -v"
    )]
    Add {
        name: String,
        /// Directory to write the credentials to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Print the ACL file that gives an external broker the same confinement as the gateway.
    Export {
        /// Broker flavour.
        #[arg(long, default_value = "mosquitto", value_parser = ["mosquitto"])]
        format: String,
        /// Integrator names to write read-only user blocks for (repeat for several).
        #[arg(long = "integrator")]
        integrators: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User to log in as.
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// Read the password from this file (e.g. <data-dir>/initial-admin-password).
    #[arg(long, conflicts_with = "password_stdin")]
    pub password_file: Option<PathBuf>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. Without --password-stdin a password is generated and printed once.
    Add {
        name: String,
        /// admin, operator, viewer or auditor.
        #[arg(long)]
        role: String,
        /// A site the user may act on (operators and viewers; repeat for several).
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// All users with their role and sites.
    List,
    /// Remove a user and revoke every token of theirs.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for yourself; it is printed once. Use it as EDGEFLEET_TOKEN.
    Create {
        /// What uses it, e.g. ci-deploy.
        name: String,
        /// Lifetime, e.g. 30d or 12h (at most 366d).
        #[arg(long, default_value = "90d")]
        expires: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain in the store file; exits non-zero and names the first bad record.
    /// Reads the file directly, so it works with the gateway stopped.
    Verify {
        /// The gateway's data directory (holding edgefleet.db).
        #[arg(long, default_value = "./edgefleet-data")]
        data_dir: PathBuf,
    },
    /// Audit records, oldest first (admin, auditor).
    List {
        /// RFC 3339 time or a duration back from now (2h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        site: Option<String>,
        /// At most this many, the newest.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Export records as CSV or JSON (admin, auditor).
    Export {
        /// csv or json.
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
        /// RFC 3339 time or a duration back from now (2h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        site: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Directory for the store (edgefleet.db). Created if missing.
    #[arg(long, default_value = "./edgefleet-data")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// MQTT keepalive of the controller's connection, in seconds.
    #[arg(long, default_value_t = 10)]
    pub keepalive: u64,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Address of the plain MQTT listener (no identity, no confinement): for the controller
    /// and local tools. Keep it on loopback; any other address is accepted with a warning.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// Address of the TLS MQTT listener devices and integrators connect to, with the
    /// certificate they got at enrollment (`mqtts://`).
    #[arg(long, default_value = "0.0.0.0:8883")]
    pub mqtts_listen: SocketAddr,
    /// Address of the HTTPS listener agents enroll at (`edgefleet-agent enroll`).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub enroll_listen: SocketAddr,
    /// Name or address devices reach this gateway at: goes into enrollment tokens and the
    /// gateway's server certificate. Default: this machine's host name.
    #[arg(long, value_name = "HOST")]
    pub public_host: Option<String>,
}

impl GatewayArgs {
    /// The device-facing listeners, with the public host resolved.
    pub fn gateway_tls(&self) -> crate::GatewayTls {
        let public_host = self.public_host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".to_owned())
        });
        crate::GatewayTls {
            mqtts_listen: self.mqtts_listen,
            enroll_listen: self.enroll_listen,
            public_host,
        }
    }
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The external broker, as mqtt://HOST:PORT (plain MQTT: run the controller next to the
    /// broker or on a trusted network; devices use the broker's TLS listener).
    #[arg(long, value_parser = plain_broker)]
    pub broker: BrokerAddr,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Address of the plain MQTT listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Compose file to deploy ('-' reads standard input).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Deployment name (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub name: String,
    /// Devices to run it on: 'site=lyon,line=3' (labels), 'id=press-07|press-08' (devices), or '*'.
    #[arg(long)]
    pub target: String,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// All devices with their connection, revision and service health.
    Devices,
    /// One device: status of every stack and service, recent events.
    Device { id: String },
    /// All deployments with their target and latest revision.
    Deployments,
    /// One deployment: its revisions and current Compose file.
    Deployment { name: String },
}

#[derive(Debug, Subcommand)]
pub enum WindowCommand {
    /// Set a site's window, e.g. `edgefleet window set lyon 'Mon-Fri 22:00-04:00' --tz Europe/Paris`.
    /// A window ending before it starts runs past midnight.
    Set {
        site: String,
        /// DAYS HH:MM-HH:MM (days: Mon-Fri, Sat,Sun, daily).
        window: String,
        /// IANA time zone of the site.
        #[arg(long, default_value = "UTC")]
        tz: String,
    },
    /// Remove a site's window (its devices can be updated at any time).
    Clear { site: String },
    /// List the windows and whether each is open now.
    List,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Move a deployment's devices to a revision in waves, gated on container health.
    /// Strategy flags override the deployment file's `x-edgefleet-rollout`.
    Start(Box<RolloutStart>),
    /// Progress of a rollout, wave by wave (`--watch`: follow it live until it ends or pauses).
    Status {
        id: u64,
        /// Follow the rollout (progress bar on a terminal) until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// All rollouts, newest first.
    List,
    /// Stop moving further devices; devices in flight finish.
    Pause { id: u64 },
    /// Continue a paused rollout.
    Resume { id: u64 },
    /// End the rollout: no further device moves; every device stays on one consistent revision.
    Abort { id: u64 },
    /// Return every device the rollout moved to the revision it came from (a rollout of its own).
    Rollback { id: u64 },
}

#[derive(Debug, Args)]
pub struct RolloutStart {
    /// Deployment to roll out.
    pub deployment: String,
    /// Target revision (default: the latest).
    #[arg(long)]
    pub revision: Option<u64>,
    /// Devices in the first wave.
    #[arg(long)]
    pub canary: Option<u32>,
    /// Devices per following wave: a count (2) or a share (25%).
    #[arg(long)]
    pub batch: Option<String>,
    /// Failures tolerated before --on-failure applies: a count or a share.
    #[arg(long)]
    pub max_failures: Option<String>,
    /// Time a device has to become healthy (e.g. 5m).
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// How long a device must stay healthy to count as a success (e.g. 30s).
    #[arg(long)]
    pub soak: Option<String>,
    /// On too many failures: pause or rollback.
    #[arg(long)]
    pub on_failure: Option<String>,
    /// A device offline when its wave comes: wait, skip or fail.
    #[arg(long)]
    pub offline: Option<String>,
    /// How long `--offline wait` waits (e.g. 10m).
    #[arg(long)]
    pub offline_timeout: Option<String>,
    /// Order devices by site, area or line.
    #[arg(long)]
    pub order_by: Option<String>,
    /// Never two devices of the same site, area or line in one wave.
    #[arg(long)]
    pub one_per: Option<String>,
}

impl RolloutStart {
    /// The strategy overrides as the API takes them (only the flags given).
    pub fn overrides(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(c) = self.canary {
            m.insert("canary".into(), json!(c));
        }
        let text = [
            ("batch", &self.batch),
            ("max_failures", &self.max_failures),
            ("health_timeout", &self.health_timeout),
            ("soak", &self.soak),
            ("on_failure", &self.on_failure),
            ("offline", &self.offline),
            ("offline_timeout", &self.offline_timeout),
            ("order_by", &self.order_by),
            ("one_per", &self.one_per),
        ];
        for (k, v) in text {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }
}

#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete a deployment (its revisions stay in the history).
    Deployment { name: String },
}

impl ServerArgs {
    pub fn controller_config(&self, broker: BrokerAddr) -> crate::ControllerConfig {
        let mut c = crate::ControllerConfig::new(self.data_dir.clone(), broker, self.http_listen);
        c.keepalive = Duration::from_secs(self.keepalive.max(1));
        c
    }
}

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
    login_hint: bool,
}

impl ApiClient {
    pub fn new(server: &str) -> anyhow::Result<Self> {
        Self::with_token(server, stored_token())
    }

    pub fn with_token(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        if !server.starts_with("http://") && !server.starts_with("https://") {
            bail!("--server '{server}' must be a URL like http://127.0.0.1:8080");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
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
fn read_password(file: Option<&PathBuf>, stdin: bool) -> anyhow::Result<Option<String>> {
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

/// Percent-encodes a query value.
fn q(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn audit_query(since: &Option<String>, site: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(s) = since {
        out += &format!("&since={}", q(s));
    }
    if let Some(s) = site {
        out += &format!("&site={}", q(s));
    }
    out
}

/// `edgefleet audit verify`: walks the chain in the store file, read-only.
pub fn verify_store(data_dir: &std::path::Path) -> anyhow::Result<crate::audit::Verification> {
    let db = data_dir.join("edgefleet.db");
    if !db.exists() {
        bail!(
            "no store at {}: point --data-dir at the gateway's data directory",
            db.display()
        );
    }
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open {} read-only", db.display()))?;
    crate::audit::verify(&conn).map_err(|e| {
        anyhow!("{e}: is {} an edgefleet store of schema 4 or later? (start the gateway once to migrate it)", db.display())
    })
}

/// Runs a client command; returns what to print.
pub async fn run_client(cli: &Cli) -> anyhow::Result<String> {
    if let Command::Audit(AuditCommand::Verify { data_dir }) = &cli.command {
        let v = verify_store(data_dir)?;
        if let Some(bad) = &v.first_bad {
            bail!(
                "audit log TAMPERED: first bad record is #{}: {} ({} record(s) before it verify; their head is #{} {})",
                bad.seq,
                bad.reason,
                v.records,
                v.head_seq,
                v.head_hash
            );
        }
        return Ok(if cli.json {
            serde_json::to_string_pretty(&v).unwrap_or_default()
        } else {
            format!(
                "audit log OK: {} record(s), chain intact\nhead: #{} {}\n(keep the head hash elsewhere: removing the newest records is only detectable against it)",
                v.records, v.head_seq, v.head_hash
            )
        });
    }
    if let Command::Audit(AuditCommand::Export {
        format,
        since,
        site,
        output,
    }) = &cli.command
    {
        let api = ApiClient::new(&cli.server)?;
        let text = api
            .get_text(&format!(
                "/api/v1/audit/export?format={format}{}",
                audit_query(since, site)
            ))
            .await?;
        return match output {
            Some(path) => {
                std::fs::write(path, &text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(if cli.json {
                    json!({ "file": path.display().to_string(), "format": format }).to_string()
                } else {
                    format!("audit export ({format}) written to {}", path.display())
                })
            }
            None => Ok(text.trim_end().to_owned()),
        };
    }
    if let Command::Login(a) = &cli.command {
        return login(cli, a).await;
    }
    if let Command::Acl(AclCommand::Export {
        format,
        integrators,
    }) = &cli.command
    {
        // The rules are the code's own; no gateway needed.
        let _ = format;
        let text = edgefleet_protocol::acl::mosquitto_acl_with_integrators(integrators)
            .map_err(|e| anyhow!("{e}"))?;
        return Ok(if cli.json {
            json!({ "format": "mosquitto", "acl": text }).to_string()
        } else {
            text.trim_end().to_owned()
        });
    }
    if let Command::Integrator(IntegratorCommand::Add { name, out }) = &cli.command {
        let api = ApiClient::new(&cli.server)?;
        let v = api
            .post("/api/v1/integrators", &json!({ "name": name }))
            .await?;
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        crate::keys::write_private(&out.join("key.pem"), s(&v, "key_pem").as_bytes())?;
        std::fs::write(out.join("cert.pem"), s(&v, "cert_pem"))?;
        std::fs::write(out.join("ca.pem"), s(&v, "ca_pem"))?;
        return Ok(if cli.json {
            json!({
                "name": name, "client_id": v["client_id"], "serial": v["serial"],
                "broker_url": v["broker_url"], "dir": out.display().to_string(),
            })
            .to_string()
        } else {
            format!(
                "integrator {name}: credentials in {} (key.pem is private); connect to {} with client id '{}' (or that id followed by ':' and a suffix)",
                out.display(),
                s(&v, "broker_url"),
                s(&v, "client_id")
            )
        });
    }
    if let Command::Logout = &cli.command {
        return logout(cli).await;
    }
    let api = ApiClient::new(&cli.server)?;
    let (value, human): (Value, fn(&Value) -> String) = match &cli.command {
        Command::Apply(a) => {
            let compose = if a.file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("cannot read the Compose file from standard input")?
            } else {
                std::fs::read_to_string(&a.file)
                    .with_context(|| format!("cannot read the Compose file {}", a.file.display()))?
            };
            let body = json!({ "name": a.name, "target": a.target, "compose": compose });
            (api.post("/api/v1/deployments", &body).await?, render_apply)
        }
        Command::Get(GetCommand::Devices) => (api.get("/api/v1/devices").await?, render_devices),
        Command::Get(GetCommand::Device { id }) => (
            api.get(&format!("/api/v1/devices/{id}")).await?,
            render_device,
        ),
        Command::Get(GetCommand::Deployments) => {
            (api.get("/api/v1/deployments").await?, render_deployments)
        }
        Command::Get(GetCommand::Deployment { name }) => (
            api.get(&format!("/api/v1/deployments/{name}")).await?,
            render_deployment,
        ),
        Command::Delete(DeleteCommand::Deployment { name }) => (
            api.delete(&format!("/api/v1/deployments/{name}")).await?,
            render_delete,
        ),
        Command::Rollout(RolloutCommand::Start(r)) => {
            let body = json!({ "deployment": r.deployment, "revision": r.revision, "strategy": r.overrides() });
            (api.post("/api/v1/rollouts", &body).await?, render_rollout)
        }
        Command::Rollout(RolloutCommand::Status { id, watch: false }) => (
            api.get(&format!("/api/v1/rollouts/{id}")).await?,
            render_rollout,
        ),
        Command::Rollout(RolloutCommand::Status { id, watch: true }) => {
            (watch_rollout(&api, *id, cli.json).await?, render_rollout)
        }
        Command::Window(WindowCommand::Set { site, window, tz }) => (
            api.put(
                &format!("/api/v1/windows/{site}"),
                &json!({ "window": window, "tz": tz }),
            )
            .await?,
            |v: &Value| {
                format!(
                    "site {}: maintenance window '{}' ({})",
                    s(v, "site"),
                    s(v, "window"),
                    s(v, "tz")
                )
            },
        ),
        Command::Window(WindowCommand::Clear { site }) => (
            api.delete(&format!("/api/v1/windows/{site}")).await?,
            |v: &Value| format!("site {}: no maintenance window", s(v, "site")),
        ),
        Command::Window(WindowCommand::List) => (api.get("/api/v1/windows").await?, render_windows),
        Command::History {
            deployment,
            diff: Some(revs),
        } => {
            let (from, to) = (
                revs.first().copied().unwrap_or(0),
                revs.get(1).copied().unwrap_or(0),
            );
            (
                api.get(&format!(
                    "/api/v1/deployments/{deployment}/diff?from={from}&to={to}"
                ))
                .await?,
                |v: &Value| {
                    let d = s(v, "diff");
                    if d.is_empty() {
                        "no difference".to_owned()
                    } else {
                        d.to_owned()
                    }
                },
            )
        }
        Command::History {
            deployment,
            diff: None,
        } => (
            api.get(&format!("/api/v1/deployments/{deployment}"))
                .await?,
            render_deployment,
        ),
        Command::Rollout(RolloutCommand::List) => {
            (api.get("/api/v1/rollouts").await?, render_rollouts)
        }
        Command::Rollout(RolloutCommand::Pause { id }) => (
            api.post(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
                .await?,
            render_rollout,
        ),
        Command::Rollout(RolloutCommand::Resume { id }) => (
            api.post(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
                .await?,
            render_rollout,
        ),
        Command::Rollout(RolloutCommand::Rollback { id }) => (
            api.post(&format!("/api/v1/rollouts/{id}/rollback"), &json!({}))
                .await?,
            render_rollout,
        ),
        Command::Rollout(RolloutCommand::Abort { id }) => (
            api.post(&format!("/api/v1/rollouts/{id}/abort"), &json!({}))
                .await?,
            render_rollout,
        ),
        Command::Device(DeviceCommand::Add {
            id,
            labels,
            expires,
        }) => (
            api.post(
                &format!("/api/v1/devices/{id}/enroll"),
                &json!({ "labels": labels, "expires": expires }),
            )
            .await?,
            |v: &Value| {
                format!(
                    "enrollment token for {} (valid until {}, works once):\n\n  {}\n\non the device run:\n  edgefleet-agent enroll --token <the token above>\n(it connects to {}; add --url https://HOST:PORT if the device reaches the gateway under another name)",
                    s(v, "device"),
                    s(v, "expires_at"),
                    s(v, "token"),
                    s(v, "enroll_url")
                )
            },
        ),
        Command::Device(DeviceCommand::Revoke { id }) => (
            api.post(&format!("/api/v1/devices/{id}/revoke"), &json!({}))
                .await?,
            |v: &Value| {
                format!(
                    "{} revoked: {} certificate(s) refused from now on, {} live connection(s) closed",
                    s(v, "device"),
                    v["certificates_revoked"],
                    v["connections_closed"]
                )
            },
        ),
        Command::Logs {
            device,
            stack,
            service,
            tail,
        } => (
            api.get(&format!(
                "/api/v1/devices/{device}/logs?stack={stack}&service={service}&tail={tail}"
            ))
            .await?,
            |v: &Value| list(v, "lines").join("\n"),
        ),
        Command::Whoami => (api.get("/api/v1/whoami").await?, |v: &Value| {
            format!(
                "{} ({}{}) — token '{}' valid until {}",
                s(v, "username"),
                s(v, "role"),
                scope(v),
                v.pointer("/token/name")
                    .and_then(Value::as_str)
                    .unwrap_or("-"),
                v.pointer("/token/expires_at")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
            )
        }),
        Command::User(UserCommand::Add {
            name,
            role,
            sites,
            password_stdin,
        }) => {
            let password = read_password(None, *password_stdin)?;
            let body =
                json!({ "username": name, "role": role, "sites": sites, "password": password });
            (api.post("/api/v1/users", &body).await?, |v: &Value| {
                let mut out = format!(
                    "user {} created: {}{}",
                    s(v, "username"),
                    s(v, "role"),
                    scope(v)
                );
                if let Some(p) = v.get("password").and_then(Value::as_str) {
                    out += &format!("\npassword (shown only now, hand it over safely): {p}");
                }
                out
            })
        }
        Command::User(UserCommand::List) => (api.get("/api/v1/users").await?, |v: &Value| {
            let mut t = table(&["USER", "ROLE", "SITES", "CREATED"]);
            let all = v
                .get("users")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for u in &all {
                t.add_row(vec![
                    s(u, "username").to_owned(),
                    s(u, "role").to_owned(),
                    list(u, "sites").join(","),
                    s(u, "created_at").to_owned(),
                ]);
            }
            format!("{t}\n{} user(s)", all.len())
        }),
        Command::User(UserCommand::Remove { name }) => (
            api.delete(&format!("/api/v1/users/{name}")).await?,
            |v: &Value| {
                format!(
                    "user {} removed; their tokens are revoked",
                    s(v, "username")
                )
            },
        ),
        Command::Token(TokenCommand::Create { name, expires }) => (
            api.post(
                "/api/v1/tokens",
                &json!({ "name": name, "expires_in": expires }),
            )
            .await?,
            |v: &Value| {
                format!(
                    "token '{}' for {} ({}{}), valid until {} — shown only now:\n{}",
                    s(v, "name"),
                    s(v, "username"),
                    s(v, "role"),
                    scope(v),
                    s(v, "expires_at"),
                    s(v, "token")
                )
            },
        ),
        Command::Audit(AuditCommand::List { since, site, limit }) => (
            api.get(&format!(
                "/api/v1/audit?limit={limit}{}",
                audit_query(since, site)
            ))
            .await?,
            render_audit,
        ),
        Command::Audit(AuditCommand::Verify { .. } | AuditCommand::Export { .. })
        | Command::Login(_)
        | Command::Logout
        | Command::Integrator(_)
        | Command::Acl(_)
        | Command::Gateway(_)
        | Command::Controller(_)
        | Command::Broker(_) => {
            bail!("not a client command")
        }
    };
    Ok(if cli.json {
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else {
        human(&value)
    })
}

/// `edgefleet login`: exchanges the password for a session token and stores it (0600).
async fn login(cli: &Cli, a: &LoginArgs) -> anyhow::Result<String> {
    let password = read_password(a.password_file.as_ref(), a.password_stdin)?.ok_or_else(|| {
        anyhow!("give the password with --password-file FILE or --password-stdin (first start: the file is <data-dir>/initial-admin-password)")
    })?;
    let mut api = ApiClient::with_token(&cli.server, None)?;
    api.login_hint = false;
    let v = api
        .post(
            "/api/v1/login",
            &json!({ "username": a.user, "password": password }),
        )
        .await?;
    let token = v
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the API answered the login without a token"))?;
    let file = token_file()?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    crate::auth::write_secret(&file, &format!("{token}\n"))
        .with_context(|| format!("cannot write the token to {}", file.display()))?;
    let mut shown = v.clone();
    if let Some(m) = shown.as_object_mut() {
        m.remove("token");
        m.insert("token_file".into(), json!(file.display().to_string()));
    }
    Ok(if cli.json {
        serde_json::to_string_pretty(&shown).unwrap_or_default()
    } else {
        let mut out = format!(
            "logged in to {} as {} ({}{}) until {}; token saved in {}",
            cli.server,
            s(&v, "username"),
            s(&v, "role"),
            scope(&v),
            s(&v, "expires_at"),
            file.display()
        );
        if std::env::var_os("EDGEFLEET_TOKEN").is_some() {
            out += "\nnote: EDGEFLEET_TOKEN is set and takes precedence over the stored token";
        }
        out
    })
}

/// `edgefleet logout`: revokes the stored session at the API (if reachable) and deletes it.
async fn logout(cli: &Cli) -> anyhow::Result<String> {
    let file = token_file()?;
    let stored = std::fs::read_to_string(&file)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let revoked = match &stored {
        Some(t) => ApiClient::with_token(&cli.server, Some(t.clone()))?
            .post("/api/v1/logout", &json!({}))
            .await
            .is_ok(),
        None => false,
    };
    if stored.is_some() {
        std::fs::remove_file(&file).with_context(|| format!("cannot remove {}", file.display()))?;
    }
    let v = json!({ "logged_out": stored.is_some(), "revoked": revoked, "token_file": file.display().to_string() });
    Ok(if cli.json {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else if stored.is_none() {
        format!("not logged in (no token in {})", file.display())
    } else {
        format!(
            "logged out{}; removed {}",
            if revoked {
                " and the session revoked"
            } else {
                " (the API was not reachable to revoke the session; it expires on its own)"
            },
            file.display()
        )
    })
}

/// ` of lyon,paris` for scoped users.
fn scope(v: &Value) -> String {
    let sites = list(v, "sites");
    if sites.is_empty() {
        String::new()
    } else {
        format!(" of {}", sites.join(","))
    }
}

fn render_audit(v: &Value) -> String {
    let mut t = table(&[
        "SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "SITE", "OUTCOME", "DETAIL",
    ]);
    let all = v
        .get("records")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in &all {
        let outcome = match r.get("status").and_then(Value::as_u64) {
            Some(code) => format!("{} {code}", s(r, "outcome")),
            None => s(r, "outcome").to_owned(),
        };
        let detail = r
            .get("detail")
            .map(|d| match d.get("error").and_then(Value::as_str) {
                Some(e) => e.to_owned(),
                None => d.to_string(),
            })
            .unwrap_or_default();
        t.add_row(vec![
            n(r, "seq").to_string(),
            s(r, "ts").to_owned(),
            s(r, "actor").to_owned(),
            s(r, "action").to_owned(),
            s(r, "target").to_owned(),
            s(r, "site").to_owned(),
            outcome,
            detail.chars().take(80).collect(),
        ]);
    }
    format!("{t}\n{} record(s)", all.len())
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn list(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn labels(v: &Value) -> String {
    v.get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn render_apply(v: &Value) -> String {
    let devices = list(v, "devices");
    let what = if v.get("changed").and_then(Value::as_bool).unwrap_or(false) {
        format!("revision {} recorded", n(v, "revision"))
    } else {
        format!("unchanged (still revision {})", n(v, "revision"))
    };
    format!(
        "deployment {}: {what}; target '{}' matches {} device(s){}{}",
        s(v, "name"),
        s(v, "target"),
        devices.len(),
        if devices.is_empty() { "" } else { ": " },
        devices.join(", ")
    )
}

fn connection(d: &Value) -> String {
    match s(d, "connection") {
        "online" => "● online".into(),
        "offline" => "○ OFFLINE".into(),
        other => format!("? {other}"),
    }
}

fn render_devices(v: &Value) -> String {
    let mut t = table(&[
        "DEVICE",
        "CONNECTION",
        "REVISION",
        "STATE",
        "SERVICES",
        "LABELS",
        "LAST SEEN",
    ]);
    let devices = v
        .get("devices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for d in &devices {
        let unhealthy = n(d, "services_unhealthy");
        t.add_row(vec![
            s(d, "id").to_owned(),
            connection(d),
            format!("{}/{}", n(d, "observed_revision"), n(d, "desired_revision")),
            s(d, "state").to_owned(),
            format!(
                "{}/{} running{}",
                n(d, "services_running"),
                n(d, "services_total"),
                if unhealthy > 0 {
                    format!(", {unhealthy} unhealthy")
                } else {
                    String::new()
                }
            ),
            labels(d),
            s(d, "last_seen").to_owned(),
        ]);
    }
    format!("{t}\n{} device(s)", devices.len())
}

fn render_device(v: &Value) -> String {
    let mut out = format!(
        "device {}  {}  revision {}/{} ({})  labels: {}\nagent {}  last seen {}\n",
        s(v, "id"),
        connection(v),
        n(v, "observed_revision"),
        n(v, "desired_revision"),
        s(v, "state"),
        labels(v),
        s(v, "agent_version"),
        s(v, "last_seen"),
    );
    if let Some(err) = v.get("last_error").and_then(Value::as_str) {
        out += &format!("last error: {err}\n");
    }
    let mut t = table(&[
        "STACK",
        "SERVICE",
        "IMAGE",
        "STATE",
        "HEALTH",
        "RESTARTS",
        "CONTAINER",
        "LAST ERROR",
    ]);
    if let Some(stacks) = v.pointer("/status/stacks").and_then(Value::as_object) {
        for (stack, st) in stacks {
            for (svc, sv) in st
                .get("services")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                t.add_row(vec![
                    stack.clone(),
                    svc.clone(),
                    s(sv, "image").to_owned(),
                    s(sv, "state").to_owned(),
                    s(sv, "health").to_owned(),
                    n(sv, "restart_count").to_string(),
                    s(sv, "container_id").chars().take(12).collect(),
                    s(sv, "last_error").to_owned(),
                ]);
            }
        }
    }
    out += &t.to_string();
    let events = v
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !events.is_empty() {
        out += "\n\nrecent events:\n";
        for e in events.iter().rev().take(10).rev() {
            out += &format!(
                "  {} {:<8} {:<16} {}\n",
                s(e, "ts"),
                s(e, "severity"),
                s(e, "kind"),
                s(e, "message")
            );
        }
    }
    out
}

fn render_deployments(v: &Value) -> String {
    let mut t = table(&["NAME", "REVISION", "TARGET", "DEVICES", "UPDATED"]);
    let deps = v
        .get("deployments")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for d in &deps {
        t.add_row(vec![
            s(d, "name").to_owned(),
            n(d, "revision").to_string(),
            s(d, "target").to_owned(),
            list(d, "devices").len().to_string(),
            s(d, "updated_at").to_owned(),
        ]);
    }
    format!("{t}\n{} deployment(s)", deps.len())
}

fn render_deployment(v: &Value) -> String {
    let mut out = format!(
        "deployment {}  revision {}  target '{}'  devices: {}\n",
        s(v, "name"),
        n(v, "revision"),
        s(v, "target"),
        list(v, "devices").join(", ")
    );
    let mut t = table(&["REVISION", "TARGET", "CREATED", "BY"]);
    for r in v
        .get("revisions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        t.add_row(vec![
            n(r, "revision").to_string(),
            s(r, "target").to_owned(),
            s(r, "created_at").to_owned(),
            s(r, "created_by").to_owned(),
        ]);
    }
    out += &t.to_string();
    if let Some(c) = v.get("compose").and_then(Value::as_str) {
        out += &format!("\n\ncompose (revision {}):\n{c}", n(v, "revision"));
    }
    out
}

fn render_delete(v: &Value) -> String {
    let devices = list(v, "devices");
    format!(
        "deployment {} deleted; its containers are being removed from {} device(s)",
        s(v, "name"),
        devices.len()
    )
}

fn rollout_state(v: &Value) -> String {
    let state = v
        .pointer("/state/state")
        .and_then(Value::as_str)
        .unwrap_or("-");
    match v.pointer("/state/reason").and_then(Value::as_str) {
        Some(r) => format!("{state}: {r}"),
        None => state.to_owned(),
    }
}

fn render_rollout(v: &Value) -> String {
    let mut out = format!(
        "rollout {}  {} revision {} → {}  {}\n{} succeeded, {} failed, {} in flight",
        n(v, "id"),
        s(v, "deployment"),
        n(v, "from_revision"),
        n(v, "to_revision"),
        rollout_state(v),
        n(v, "succeeded"),
        n(v, "failures"),
        n(v, "in_flight"),
    );
    if let Some(w) = v.get("waiting").and_then(Value::as_str) {
        out += &format!("\nwaiting: {w}");
    }
    let mut t = table(&["WAVE", "DEVICE", "PHASE", "REASON"]);
    let current = n(v, "current_wave");
    for (i, wave) in v
        .get("waves")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for d in wave
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let phase = v
                .pointer(&format!("/devices/{d}"))
                .cloned()
                .unwrap_or_default();
            let label = if i == 0 {
                "canary".to_owned()
            } else {
                format!("{i}{}", if i as u64 == current { " ◀" } else { "" })
            };
            t.add_row(vec![
                label,
                d.to_owned(),
                s(&phase, "phase").to_owned(),
                s(&phase, "reason").to_owned(),
            ]);
        }
    }
    format!("{out}\n{t}")
}

fn render_rollouts(v: &Value) -> String {
    let mut t = table(&["ID", "DEPLOYMENT", "REVISIONS", "STATE", "DEVICES", "BY"]);
    let all = v
        .get("rollouts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in &all {
        let devices = r
            .get("devices")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        t.add_row(vec![
            n(r, "id").to_string(),
            s(r, "deployment").to_owned(),
            format!("{} → {}", n(r, "from_revision"), n(r, "to_revision")),
            rollout_state(r),
            devices.to_string(),
            s(r, "created_by").to_owned(),
        ]);
    }
    format!("{t}\n{} rollout(s)", all.len())
}

/// Follows a rollout until it stops running (ends or pauses): a progress bar on a terminal, one line per change
/// otherwise (or nothing until the end with --json). Returns the final state.
async fn watch_rollout(api: &ApiClient, id: u64, json_out: bool) -> anyhow::Result<Value> {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal() && !json_out;
    let bar = indicatif::ProgressBar::new(0);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} devices  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last = String::new();
    loop {
        let v = api.get(&format!("/api/v1/rollouts/{id}")).await?;
        let total = v
            .get("devices")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len() as u64);
        let done = v.get("devices").and_then(Value::as_object).map_or(0, |m| {
            m.values()
                .filter(|p| matches!(s(p, "phase"), "succeeded" | "failed" | "skipped"))
                .count() as u64
        });
        let line = format!(
            "wave {}  {}{}",
            n(&v, "current_wave"),
            rollout_state(&v),
            v.get("waiting")
                .and_then(Value::as_str)
                .map(|w| format!("  ({w})"))
                .unwrap_or_default()
        );
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(line.clone());
        if !tty && !json_out && line != last {
            eprintln!("{done}/{total} devices  {line}");
        }
        last = line;
        let state = v
            .pointer("/state/state")
            .and_then(Value::as_str)
            .unwrap_or("");
        if state != "running" {
            bar.finish();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn render_windows(v: &Value) -> String {
    let mut t = table(&["SITE", "WINDOW", "TIME ZONE", "NOW", "NEXT OPENS"]);
    let all = v
        .get("windows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for w in &all {
        let open = match w.get("open_now").and_then(Value::as_bool) {
            Some(true) => "open",
            Some(false) => "closed",
            None => "invalid",
        };
        t.add_row(vec![
            s(w, "site").to_owned(),
            s(w, "window").to_owned(),
            s(w, "tz").to_owned(),
            open.to_owned(),
            s(w, "next_open").to_owned(),
        ]);
    }
    format!("{t}\n{} window(s)", all.len())
}

/// The controller's own broker connection is plain MQTT (loopback or a trusted network).
fn plain_broker(s: &str) -> Result<BrokerAddr, String> {
    let addr = BrokerAddr::parse(s).map_err(|e| e.to_string())?;
    if addr.tls {
        return Err(
            "the controller connects to its broker with plain MQTT (mqtt://HOST:PORT); run it next to the broker, devices use the broker's TLS listener".to_owned(),
        );
    }
    Ok(addr)
}
