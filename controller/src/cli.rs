//! The `edgefleet` command line: server commands (`gateway`, `controller`, `broker`) and the
//! client commands that talk to the HTTP API (`apply`, `get`, `delete`). Client commands print
//! human tables by default and the API's JSON with `--json`.

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
    /// Address of the plain MQTT listener. Keep it on loopback unless the network is trusted.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
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

/// A thin client of the HTTP API.
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(server: &str) -> anyhow::Result<Self> {
        if !server.starts_with("http://") && !server.starts_with("https://") {
            bail!("--server '{server}' must be a URL like http://127.0.0.1:8080");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(ApiClient {
            base: server.trim_end_matches('/').to_owned(),
            http,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
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
            bail!("{msg}");
        }
        Ok(body)
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

/// Runs a client command; returns what to print.
pub async fn run_client(cli: &Cli) -> anyhow::Result<String> {
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
        Command::Gateway(_) | Command::Controller(_) | Command::Broker(_) => {
            bail!("not a client command")
        }
    };
    Ok(if cli.json {
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else {
        human(&value)
    })
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
