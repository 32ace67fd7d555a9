//! `edgefleet-sim`: a fleet of simulated devices against a real gateway.
//!
//! Each device is the real agent (link, signed desired-state checks, planner, reconciler,
//! status), enrolled through the gateway's enrollment listener with its own certificate and
//! connected through the TLS front as its own MQTT session; only the container engine is
//! simulated (`engine.rs`). With `--rehearse` it rolls a new revision out over the fleet and
//! prints how long each wave took.

mod engine;
mod fleet;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use edgefleet_agent::config::{Cli as AgentCli, Config};
use edgefleet_protocol::enrollment::EnrollmentToken;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::engine::{Behaviour, SimRuntime};
use crate::fleet::{Shape, SimDevice};

/// Simulate a fleet of edge devices against a running gateway.
///
/// Every simulated device runs the real agent code over an in-memory container engine, with
/// its own certificate (enrolled with the gateway like a real device, once: identities are
/// kept in --data-dir and reused) and its own MQTT session through the TLS front. Use it to
/// load-test a gateway, or to rehearse a rollout strategy on a fleet shaped like yours.
///
/// Examples:
///   edgefleet login --user admin --password-file ./data/initial-admin-password
///   edgefleet-sim --devices 200                                   # run until Ctrl-C
///   edgefleet-sim --fleet plant.toml --rehearse --strategy canary=1,batch=25%,soak=30s
#[derive(Debug, Parser)]
#[command(name = "edgefleet-sim", version, verbatim_doc_comment)]
struct Args {
    /// The gateway's HTTP API.
    #[arg(
        long,
        env = "EDGEFLEET_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// An admin or operator token (default: the one `edgefleet login` stored, or
    /// EDGEFLEET_TOKEN).
    #[arg(long, env = "EDGEFLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The gateway CA (PEM) when --server is https://.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Number of devices, on one site `sim` (ignored with --fleet).
    #[arg(long, default_value_t = 10, value_name = "N")]
    devices: usize,
    /// A fleet file: sites × areas × lines (see the crate docs; example in BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    fleet: Option<PathBuf>,
    /// Where identities and agent state are kept (reused across runs).
    #[arg(long, default_value = "./sim-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// Simulated image pull time.
    #[arg(long, default_value = "200ms", value_parser = humantime_duration)]
    pull: Duration,
    /// Simulated container start time.
    #[arg(long, default_value = "50ms", value_parser = humantime_duration)]
    start: Duration,
    /// Probability (0..1) that a container start fails.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    start_failure: f64,
    /// Share (0..1) of devices whose healthchecks never pass.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    unhealthy: f64,
    /// MQTT keepalive of each simulated agent.
    #[arg(long, default_value = "30s", value_parser = humantime_duration)]
    keepalive: Duration,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    parallel: usize,
    /// After the fleet is online, roll a new revision out over it and print the waves.
    #[arg(long)]
    rehearse: bool,
    /// Rollout strategy fields for --rehearse (as in x-edgefleet-rollout), k=v,k=v.
    #[arg(
        long,
        default_value = "canary=1,batch=25%,soak=0s",
        value_name = "FIELDS"
    )]
    strategy: String,
    /// Deployment name used by --rehearse.
    #[arg(long, default_value = "sim-rehearsal", value_name = "NAME")]
    deployment: String,
    /// How long to wait for the fleet to come online and for a rehearsal to finish.
    #[arg(long, default_value = "10m", value_parser = humantime_duration)]
    timeout: Duration,
    /// Print one JSON object (figures) instead of tables.
    #[arg(long)]
    json: bool,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 200ms, 5s or 2m: {e}"))
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        for (name, p) in [
            ("--start-failure", self.start_failure),
            ("--unhealthy", self.unhealthy),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} is a probability between 0 and 1 (got {p})");
            }
        }
        if self.parallel == 0 || self.parallel > 256 {
            bail!("--parallel must be between 1 and 256");
        }
        if self.keepalive < Duration::from_secs(1) {
            bail!("--keepalive must be at least 1s");
        }
        strategy_object(&self.strategy)?;
        Ok(())
    }
}

/// `canary=1,batch=25%` → `{"canary": 1, "batch": "25%"}` (numbers stay numbers).
fn strategy_object(text: &str) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("--strategy takes k=v pairs separated by commas (got '{part}')");
        };
        let value = v
            .parse::<u64>()
            .map_or_else(|_| json!(v.trim()), |n| json!(n));
        out.insert(k.trim().to_owned(), value);
    }
    Ok(Value::Object(out))
}

/// The API, authenticated.
struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn new(args: &Args) -> anyhow::Result<Api> {
        let token = match &args.token {
            Some(t) => t.clone(),
            None => stored_token().context(
                "no token: run 'edgefleet login' first, or pass --token (or EDGEFLEET_TOKEN) with an admin or operator token",
            )?,
        };
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &args.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Api {
            base: args.server.trim_end_matches('/').to_owned(),
            http: builder.build().context("cannot build the HTTP client")?,
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the gateway at {} (is it running? --server)",
                self.base
            )
        })?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{path}: {status}: {}",
                value["error"].as_str().unwrap_or("no reason given")
            );
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

fn stored_token() -> Option<String> {
    let dir = if let Some(d) = std::env::var_os("EDGEFLEET_CONFIG_DIR") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        PathBuf::from(d).join("edgefleet")
    } else {
        PathBuf::from(std::env::var_os("HOME")?)
            .join(".config")
            .join("edgefleet")
    };
    let text = std::fs::read_to_string(dir.join("token")).ok()?;
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// Enrolls `device` unless its data dir already holds its identity.
async fn ensure_enrolled(api: &Api, device: &SimDevice, dir: &Path) -> anyhow::Result<()> {
    if edgefleet_agent::identity::load_enrolled(dir)?.is_some() {
        return Ok(());
    }
    let answer = api
        .post(
            &format!("/api/v1/devices/{}/enroll", device.id),
            json!({ "labels": device.labels_text(), "expires": "1h" }),
        )
        .await
        .with_context(|| format!("device add {}", device.id))?;
    let token = answer["token"]
        .as_str()
        .context("the gateway's device add answer has no token")?;
    let token = EnrollmentToken::decode(token).map_err(|e| anyhow::anyhow!("{e}"))?;
    edgefleet_agent::identity::enroll(&token, None, dir)
        .await
        .with_context(|| format!("enrolling {}", device.id))?;
    Ok(())
}

fn agent_config(dir: &Path, keepalive: Duration) -> anyhow::Result<Config> {
    let cli = AgentCli::try_parse_from([
        "edgefleet-agent".to_owned(),
        "--data-dir".to_owned(),
        dir.display().to_string(),
        "--keepalive".to_owned(),
        keepalive.as_secs().max(1).to_string(),
    ])?;
    let (config, _) = Config::from_cli(cli).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(config)
}

/// How many devices of ours the gateway's device list shows with `field` true (`online`,
/// `converged`): one request however large the fleet.
async fn count_ours(
    api: &Api,
    ours: &std::collections::HashSet<String>,
    field: &str,
) -> anyhow::Result<usize> {
    let list = api.get("/api/v1/devices").await?;
    let devices = list["devices"]
        .as_array()
        .or(list.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(devices
        .iter()
        .filter(|d| d[field] == true && d["id"].as_str().is_some_and(|id| ours.contains(id)))
        .count())
}

fn stack(revision: u32, strategy: &Value) -> String {
    let mut text = format!(
        "services:\n  app:\n    image: sim/app:{revision}\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1s\nx-edgefleet-rollout:\n"
    );
    if let Some(fields) = strategy.as_object() {
        for (k, v) in fields {
            let v = v
                .as_str()
                .map_or_else(|| v.to_string(), |s| format!("\"{s}\""));
            text.push_str(&format!("  {k}: {v}\n"));
        }
    }
    text
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Applies revision 1 everywhere, then a staged revision 2, rolls it out and times it.
async fn rehearse(api: &Api, args: &Args, devices: &[SimDevice]) -> anyhow::Result<Value> {
    let strategy = strategy_object(&args.strategy)?;
    let ids: std::collections::HashSet<String> = devices.iter().map(|d| d.id.clone()).collect();
    let apply = |rev: u32| json!({ "name": args.deployment, "target": "fleet=sim", "compose": stack(rev, &strategy) });
    // The baseline: the deployment as it is, or a first revision everyone gets at once
    // (nobody runs it yet, so nobody is held).
    let base = api
        .get(&format!("/api/v1/deployments/{}", args.deployment))
        .await
        .ok();
    let latest = match base.as_ref().and_then(|b| b["revision"].as_u64()) {
        Some(r) => u32::try_from(r).unwrap_or(u32::MAX - 1),
        None => {
            api.post("/api/v1/deployments", apply(1)).await?;
            1
        }
    };
    let deadline = Instant::now() + args.timeout;
    loop {
        let converged = count_ours(api, &ids, "converged").await?;
        if converged == ids.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {converged} of {} devices converged on the baseline within --timeout",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let staged = api.post("/api/v1/deployments", apply(latest + 1)).await?;
    if staged["held"].as_array().map_or(0, Vec::len) == 0 {
        bail!("the new revision was not staged (no device held): the rollout has nothing to do");
    }
    let t0 = Instant::now();
    let started = api
        .post(
            "/api/v1/rollouts",
            json!({ "deployment": args.deployment, "strategy": strategy }),
        )
        .await?;
    let id = started["id"].as_u64().context("no rollout id")?;
    let waves: Vec<Vec<String>> =
        serde_json::from_value(started["waves"].clone()).unwrap_or_default();
    let mut done_at: std::collections::HashMap<String, f64> = Default::default();
    let mut wave_done: Vec<Option<f64>> = vec![None; waves.len()];
    let final_state = loop {
        let r = api.get(&format!("/api/v1/rollouts/{id}")).await?;
        let now = t0.elapsed().as_secs_f64();
        if let Some(devs) = r["devices"].as_object() {
            for (d, p) in devs {
                let phase = p["phase"].as_str().unwrap_or_default();
                if matches!(phase, "succeeded" | "failed" | "skipped") {
                    done_at.entry(d.clone()).or_insert(now);
                }
            }
        }
        for (i, wave) in waves.iter().enumerate() {
            if wave_done[i].is_none() && wave.iter().all(|d| done_at.contains_key(d)) {
                wave_done[i] = Some(now);
            }
        }
        let state = r["state"]["state"].as_str().unwrap_or_default().to_owned();
        if !matches!(state.as_str(), "running") {
            break state;
        }
        if Instant::now() > deadline {
            bail!("rollout {id} still {state} after --timeout");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total = t0.elapsed().as_secs_f64();
    let mut times: Vec<f64> = done_at.values().copied().collect();
    times.sort_by(f64::total_cmp);
    let mut previous = 0.0;
    let wave_rows: Vec<Value> = waves
        .iter()
        .zip(&wave_done)
        .enumerate()
        .map(|(i, (w, t))| {
            let end = t.unwrap_or(total);
            let row = json!({ "wave": i + 1, "devices": w.len(), "done_s": end, "took_s": end - previous });
            previous = end;
            row
        })
        .collect();
    Ok(json!({
        "rollout": id,
        "state": final_state,
        "devices": times.len(),
        "total_s": total,
        "device_p50_s": percentile(&times, 50.0),
        "device_p99_s": percentile(&times, 99.0),
        "waves": wave_rows,
    }))
}

async fn run(args: Args) -> anyhow::Result<()> {
    args.check()?;
    let shape = match &args.fleet {
        Some(path) => Shape::load(path)?,
        None => Shape::flat(args.devices),
    };
    let devices = shape.devices()?;
    let api = Arc::new(Api::new(&args)?);
    api.get("/api/v1/whoami")
        .await
        .context("the token is not accepted")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;

    let t0 = Instant::now();
    let mut enrolled = 0usize;
    let mut stream = futures_util::stream::iter(devices.iter().cloned())
        .map(|d| {
            let api = api.clone();
            let dir = args.data_dir.join(&d.id);
            async move { ensure_enrolled(&api, &d, &dir).await }
        })
        .buffer_unordered(args.parallel);
    while let Some(r) = stream.next().await {
        r?;
        enrolled += 1;
        if !args.json && (enrolled.is_multiple_of(100) || enrolled == devices.len()) {
            eprintln!("enrolled {enrolled}/{}", devices.len());
        }
    }
    drop(stream);
    let enroll_s = t0.elapsed().as_secs_f64();

    let shutdown = CancellationToken::new();
    let mut agents = tokio::task::JoinSet::new();
    let t1 = Instant::now();
    for (i, d) in devices.iter().enumerate() {
        let config = agent_config(&args.data_dir.join(&d.id), args.keepalive)?;
        let healthy = (i as f64 + 0.5) / devices.len() as f64 >= args.unhealthy;
        let runtime = SimRuntime::new(Behaviour {
            pull: args.pull,
            start: args.start,
            start_failure: args.start_failure,
            healthy,
        });
        let stop = shutdown.clone();
        let id = d.id.clone();
        agents.spawn(async move {
            if let Err(e) = edgefleet_agent::run_with_runtime(config, runtime, stop).await {
                tracing::error!(device = %id, "simulated agent stopped: {e:#}");
            }
        });
    }
    let ours: std::collections::HashSet<String> = devices.iter().map(|d| d.id.clone()).collect();
    let deadline = Instant::now() + args.timeout;
    loop {
        let n = count_ours(&api, &ours, "online").await?;
        if !args.json {
            eprintln!("online {n}/{}", devices.len());
        }
        if n == devices.len() {
            break;
        }
        if Instant::now() > deadline {
            shutdown.cancel();
            bail!(
                "only {n} of {} devices came online within --timeout",
                devices.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let online_s = t1.elapsed().as_secs_f64();
    let mut report = json!({
        "devices": devices.len(),
        "enroll_s": enroll_s,
        "online_s": online_s,
    });
    if args.rehearse {
        let r = rehearse(&api, &args, &devices).await;
        shutdown.cancel();
        let r = r?;
        report["rehearsal"] = r;
    } else {
        if !args.json {
            eprintln!(
                "{} simulated devices online; Ctrl-C stops them",
                devices.len()
            );
        }
        tokio::signal::ctrl_c().await.ok();
        shutdown.cancel();
    }
    while agents.join_next().await.is_some() {}
    print_report(&report, args.json);
    Ok(())
}

fn print_report(report: &Value, json: bool) {
    if json {
        println!("{report}");
        return;
    }
    println!(
        "devices {}  enrolled in {:.1} s  online in {:.1} s",
        report["devices"],
        report["enroll_s"].as_f64().unwrap_or(0.0),
        report["online_s"].as_f64().unwrap_or(0.0)
    );
    let r = &report["rehearsal"];
    if r.is_object() {
        println!(
            "rollout {} {}: {} devices in {:.2} s (per device p50 {:.2} s, p99 {:.2} s)",
            r["rollout"],
            r["state"].as_str().unwrap_or_default(),
            r["devices"],
            r["total_s"].as_f64().unwrap_or(0.0),
            r["device_p50_s"].as_f64().unwrap_or(0.0),
            r["device_p99_s"].as_f64().unwrap_or(0.0)
        );
        println!(
            "{:>5} {:>8} {:>9} {:>8}",
            "wave", "devices", "done at", "took"
        );
        for w in r["waves"].as_array().into_iter().flatten() {
            println!(
                "{:>5} {:>8} {:>8.2}s {:>7.2}s",
                w["wave"].as_u64().unwrap_or(0),
                w["devices"].as_u64().unwrap_or(0),
                w["done_s"].as_f64().unwrap_or(0.0),
                w["took_s"].as_f64().unwrap_or(0.0)
            );
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgefleet-sim: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgefleet-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
