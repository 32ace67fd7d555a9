//! `edgefleet-sim`: a fleet of simulated devices against a real gateway.
//!
//! Each device is the real agent (link, signed desired-state checks, planner, reconciler,
//! status), enrolled through the gateway's enrollment listener with its own certificate and
//! connected through the TLS front as its own MQTT session; only the container engine is
//! simulated (`engine.rs`). With `--rehearse` it rolls a new revision out over the fleet and
//! prints how long each wave took.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use edgefleet_sim::fleet::Shape;
use edgefleet_sim::{
    AgentOptions, Agents, Api, Rehearsal, enroll_all, ids, rehearse, strategy_object, wait_online,
};
use serde_json::{Value, json};

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

async fn run(args: Args) -> anyhow::Result<()> {
    args.check()?;
    let shape = match &args.fleet {
        Some(path) => Shape::load(path)?,
        None => Shape::flat(args.devices),
    };
    let devices = shape.devices()?;
    let api = Api::new(&args.server, args.token.clone(), args.ca_file.as_deref())?;
    api.get("/api/v1/whoami")
        .await
        .context("the token is not accepted")?;
    let enroll_s = enroll_all(&api, &devices, &args.data_dir, args.parallel, !args.json).await?;
    let agents = Agents::start(
        &devices,
        &args.data_dir,
        &AgentOptions {
            pull: args.pull,
            start: args.start,
            start_failure: args.start_failure,
            unhealthy: args.unhealthy,
            keepalive: args.keepalive,
            broker: edgefleet_sim::Broker::Enrolled,
        },
    )?;
    let online_s = match wait_online(&api, &ids(&devices), args.timeout, !args.json).await {
        Ok(s) => s,
        Err(e) => {
            agents.stop().await;
            return Err(e);
        }
    };
    let mut report = json!({
        "devices": devices.len(),
        "enroll_s": enroll_s,
        "online_s": online_s,
    });
    if args.rehearse {
        let rehearsal = Rehearsal {
            deployment: args.deployment.clone(),
            strategy: args.strategy.clone(),
            timeout: args.timeout,
        };
        let r = rehearse(&api, &rehearsal, &devices).await;
        agents.stop().await;
        report["rehearsal"] = r?;
    } else {
        if !args.json {
            eprintln!(
                "{} simulated devices online; Ctrl-C stops them",
                devices.len()
            );
        }
        tokio::signal::ctrl_c().await.ok();
        agents.stop().await;
    }
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
