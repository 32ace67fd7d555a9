//! `edgefleet-sim` as a library: the simulated fleet (enroll, run, count, rehearse a rollout)
//! for the `edgefleet-sim` binary and for the fleet benchmark (`bench/fleet.sh`), which runs
//! the same devices in its own process against a gateway it starts and restarts.

pub mod engine;
pub mod fleet;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use edgefleet_agent::config::{Cli as AgentCli, Config};
use edgefleet_protocol::enrollment::EnrollmentToken;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::engine::{Behaviour, SimRuntime};
use crate::fleet::SimDevice;

/// `canary=1,batch=25%` → `{"canary": 1, "batch": "25%"}` (numbers stay numbers).
pub fn strategy_object(text: &str) -> anyhow::Result<Value> {
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
pub struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    /// `token`: an admin or operator token, or `None` for the one `edgefleet login` stored.
    pub fn new(server: &str, token: Option<String>, ca_file: Option<&Path>) -> anyhow::Result<Api> {
        let token = match token {
            Some(t) => t,
            None => stored_token().context(
                "no token: run 'edgefleet login' first, or pass --token (or EDGEFLEET_TOKEN) with an admin or operator token",
            )?,
        };
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Api {
            base: server.trim_end_matches('/').to_owned(),
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

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

pub fn stored_token() -> Option<String> {
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
pub async fn ensure_enrolled(api: &Api, device: &SimDevice, dir: &Path) -> anyhow::Result<()> {
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

fn agent_config(
    dir: &Path,
    keepalive: Duration,
    device: &SimDevice,
    broker: &Broker,
) -> anyhow::Result<Config> {
    let mut args = vec![
        "edgefleet-agent".to_owned(),
        "--data-dir".to_owned(),
        dir.display().to_string(),
        "--keepalive".to_owned(),
        keepalive.as_secs().max(1).to_string(),
    ];
    if let Broker::External {
        url,
        controller_key,
    } = broker
    {
        args.extend([
            "--id".to_owned(),
            device.id.clone(),
            "--broker".to_owned(),
            url.clone(),
            "--controller-key".to_owned(),
            controller_key.display().to_string(),
            "--labels".to_owned(),
            device.labels_text(),
        ]);
    }
    let cli = AgentCli::try_parse_from(args)?;
    let (config, _) = Config::from_cli(cli).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(config)
}

/// How many devices of ours the gateway's device list shows online, and how many converged
/// (observed revision = desired revision): one request however large the fleet.
pub async fn counts(api: &Api, ours: &HashSet<String>) -> anyhow::Result<Counts> {
    let list = api.get("/api/v1/devices").await?;
    let devices = list["devices"]
        .as_array()
        .or(list.as_array())
        .cloned()
        .unwrap_or_default();
    let mut c = Counts::default();
    for d in devices
        .iter()
        .filter(|d| d["id"].as_str().is_some_and(|id| ours.contains(id)))
    {
        c.online += usize::from(d["online"] == true);
        c.converged +=
            usize::from(d["converged"] == true && d["observed_revision"] == d["desired_revision"]);
    }
    Ok(c)
}

/// What [`counts`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub online: usize,
    pub converged: usize,
}

/// Waits until every device of ours is online; the seconds it took.
pub async fn wait_online(
    api: &Api,
    ours: &HashSet<String>,
    timeout: Duration,
    progress: bool,
) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    loop {
        let n = counts(api, ours).await?.online;
        if progress {
            eprintln!("online {n}/{}", ours.len());
        }
        if n == ours.len() {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > timeout {
            bail!(
                "only {n} of {} devices came online within {}",
                ours.len(),
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(if progress { 500 } else { 100 })).await;
    }
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

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What [`rehearse`] rolls out: `strategy` as `k=v,k=v` (x-edgefleet-rollout fields).
#[derive(Debug, Clone)]
pub struct Rehearsal {
    pub deployment: String,
    pub strategy: String,
    pub timeout: Duration,
}

/// Applies revision 1 everywhere, then a staged revision 2, rolls it out and times it.
pub async fn rehearse(api: &Api, r: &Rehearsal, devices: &[SimDevice]) -> anyhow::Result<Value> {
    let strategy = strategy_object(&r.strategy)?;
    let ids: HashSet<String> = devices.iter().map(|d| d.id.clone()).collect();
    let apply = |rev: u32| json!({ "name": r.deployment, "target": "fleet=sim", "compose": stack(rev, &strategy) });
    // The baseline: the deployment as it is, or a first revision everyone gets at once
    // (nobody runs it yet, so nobody is held).
    let base = api
        .get(&format!("/api/v1/deployments/{}", r.deployment))
        .await
        .ok();
    let latest = match base.as_ref().and_then(|b| b["revision"].as_u64()) {
        Some(rev) => u32::try_from(rev).unwrap_or(u32::MAX - 1),
        None => {
            api.post("/api/v1/deployments", apply(1)).await?;
            1
        }
    };
    let deadline = Instant::now() + r.timeout;
    loop {
        let converged = counts(api, &ids).await?.converged;
        if converged == ids.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {converged} of {} devices converged on the baseline within the timeout",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let staged = api.post("/api/v1/deployments", apply(latest + 1)).await?;
    if staged["held"].as_array().map_or(0, Vec::len) == 0 {
        bail!("the new revision was not staged (no device held): the rollout has nothing to do");
    }
    let t0 = Instant::now();
    let started = api
        .post(
            "/api/v1/rollouts",
            json!({ "deployment": r.deployment, "strategy": strategy }),
        )
        .await?;
    let id = started["id"].as_u64().context("no rollout id")?;
    let waves: Vec<Vec<String>> =
        serde_json::from_value(started["waves"].clone()).unwrap_or_default();
    let mut done_at: std::collections::HashMap<String, f64> = Default::default();
    let mut wave_done: Vec<Option<f64>> = vec![None; waves.len()];
    let final_state = loop {
        let ro = api.get(&format!("/api/v1/rollouts/{id}")).await?;
        let now = t0.elapsed().as_secs_f64();
        if let Some(devs) = ro["devices"].as_object() {
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
        let state = ro["state"]["state"].as_str().unwrap_or_default().to_owned();
        if !matches!(state.as_str(), "running") {
            break state;
        }
        if Instant::now() > deadline {
            bail!("rollout {id} still {state} after the timeout");
        }
        // A device's time is when a poll first sees it done: read it every 25 ms (each read
        // is the whole rollout's view, so every 100 ms above 2,000 devices).
        let poll = if devices.len() <= 2000 { 25 } else { 100 };
        tokio::time::sleep(Duration::from_millis(poll)).await;
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
        "device_times_s": times,
        "waves": wave_rows,
    }))
}

/// Where the simulated agents connect.
#[derive(Debug, Clone, Default)]
pub enum Broker {
    /// The gateway each enrolled with: its TLS front, with the device's certificate.
    #[default]
    Enrolled,
    /// Another broker (an external-broker deployment, e.g. Mosquitto with `edgefleet
    /// controller`): the device is adopted on its first presence and checks desired state
    /// with that controller's public key. `mqtt://` is plain MQTT; `mqtts://` is TLS with the
    /// identity enrolled in the device's data dir (its certificate and the gateway CA), for
    /// a broker that requires client certificates from that CA.
    External {
        url: String,
        controller_key: PathBuf,
    },
}

/// How the simulated agents behave.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub pull: Duration,
    pub start: Duration,
    pub start_failure: f64,
    /// Share of devices whose healthchecks never pass (the first ones).
    pub unhealthy: f64,
    pub keepalive: Duration,
    pub broker: Broker,
}

/// Enrolls every device whose data dir has no identity yet, `parallel` at a time; the
/// seconds it took.
pub async fn enroll_all(
    api: &Api,
    devices: &[SimDevice],
    data_dir: &Path,
    parallel: usize,
    progress: bool,
) -> anyhow::Result<f64> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let t0 = Instant::now();
    let mut enrolled = 0usize;
    let mut stream = futures_util::stream::iter(devices.iter().cloned())
        .map(|d| {
            let dir = data_dir.join(&d.id);
            async move { ensure_enrolled(api, &d, &dir).await }
        })
        .buffer_unordered(parallel);
    while let Some(r) = stream.next().await {
        r?;
        enrolled += 1;
        if progress && (enrolled.is_multiple_of(100) || enrolled == devices.len()) {
            eprintln!("enrolled {enrolled}/{}", devices.len());
        }
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Writer threads for the simulated agents' local state files, shared by all of them.
const STATE_WRITERS: usize = 4;

/// The running simulated agents (each the real agent over a [`SimRuntime`]).
pub struct Agents {
    shutdown: CancellationToken,
    set: tokio::task::JoinSet<()>,
}

impl Agents {
    /// Starts one agent per device, with the identity enrolled in `data_dir/<id>`.
    pub fn start(
        devices: &[SimDevice],
        data_dir: &Path,
        options: &AgentOptions,
    ) -> anyhow::Result<Agents> {
        let shutdown = CancellationToken::new();
        let mut set = tokio::task::JoinSet::new();
        // The agents' local state through a few shared writer threads: one thread per
        // simulated device (the agent's own design, right for one device) spent a third of
        // the simulator's CPU waking 10,000 threads.
        let writers = edgefleet_agent::state_file::Writers::start(STATE_WRITERS)?;
        for (i, d) in devices.iter().enumerate() {
            let config =
                agent_config(&data_dir.join(&d.id), options.keepalive, d, &options.broker)?;
            let healthy = (i as f64 + 0.5) / devices.len() as f64 >= options.unhealthy;
            let runtime = SimRuntime::new(Behaviour {
                pull: options.pull,
                start: options.start,
                start_failure: options.start_failure,
                healthy,
            });
            let stop = shutdown.clone();
            let id = d.id.clone();
            let writers = Some(writers.clone());
            set.spawn(async move {
                let run = edgefleet_agent::run_sharing_writers(config, runtime, writers, stop);
                if let Err(e) = run.await {
                    tracing::error!(device = %id, "simulated agent stopped: {e:#}");
                }
            });
        }
        Ok(Agents { shutdown, set })
    }

    /// Stops every agent and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.set.join_next().await.is_some() {}
    }
}

/// The ids of `devices`, for [`counts`].
pub fn ids(devices: &[SimDevice]) -> HashSet<String> {
    devices.iter().map(|d| d.id.clone()).collect()
}
