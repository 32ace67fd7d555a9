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
    /// The external broker, as mqtt://HOST:PORT.
    #[arg(long)]
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
