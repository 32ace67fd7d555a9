//! The fleet benchmark (`bench/fleet.sh`): a real gateway (its own process, started and
//! SIGKILLed like a plant's) and N simulated devices in this process, each the real agent
//! code with its own enrolled certificate and its own MQTT session through the TLS front
//! (`edgefleet_sim`). Per device count it measures:
//!
//! 1. rollout fan-out: `rollout start` (canary 1, batch 25 %, soak 0) until every device is
//!    converged and healthy, per device and in total, over `--repeats` rollouts;
//! 2. reconnect storm: the gateway SIGKILLed and restarted on its ports, until every device
//!    is online again and the fleet view shows it converged on its desired revision;
//! 3. gateway RSS (broker + front + controller) per 1,000 devices, idle and after rollouts;
//! 4. an integrator's wildcard subscription to every device's retained status through the
//!    front (`mosquitto_sub --retained-only`): how many of N it receives;
//! 5. status fan-in: statuses offered at `--fanin-rate` by a bridge user, the time from
//!    publish to the fleet view (p50/p99 over each device's last status) and the rate the
//!    controller took in;
//! 6. the audit chain after it all (`edgefleet audit verify`).
//!
//! Then, in the same run, the peer: the same fleet and rollouts on Debian's Mosquitto with
//! `edgefleet controller`, the devices connecting over TLS with the same certificates to a
//! listener that requires them (`--no-mosquitto` skips it), ratios under `vs_mosquitto`.
//!
//! The simulated devices' data dirs are on tmpfs (/dev/shm) unless `--sim-on-disk`: each
//! real device writes its state on its own flash, not on one disk shared with thousands.
//!
//! Prints a table per device count and, as its last line, one JSON object with every figure.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use edgefleet_controller::services::users::ARGON2_CONCURRENT;
use edgefleet_sim::fleet::Shape;
use edgefleet_sim::{AgentOptions, Agents, Api, Broker, Rehearsal, enroll_all, ids, percentile};
use edgefleet_tests::bins::bins;
use edgefleet_tests::procs::Gateway;
use serde_json::{Value, json};

/// Fleet benchmark: rollout fan-out, reconnect storm, gateway memory and integrator replay
/// at N simulated devices against a real gateway.
#[derive(Debug, Parser)]
struct Args {
    /// Device counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    devices: Vec<usize>,
    /// Rollouts per device count (median and p99 over all of them).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Gateway restarts per device count.
    #[arg(long, default_value_t = 2)]
    storms: usize,
    /// Skip the peer (the same fleet on Mosquitto with `edgefleet controller`).
    #[arg(long)]
    no_mosquitto: bool,
    /// Small and fast: checks the pipeline, not the numbers (CI).
    #[arg(long)]
    quick: bool,
    /// Keep every run's temp dir (the gateway's log, the stores), not only a failed one's.
    #[arg(long)]
    keep: bool,
    /// Keep the simulated devices' data dirs on the disk the gateway's store is on, instead
    /// of on tmpfs (/dev/shm). A real device writes its state on its own flash; thousands of
    /// simulated ones fsyncing on one shared disk measure that disk, not the rollout.
    #[arg(long)]
    sim_on_disk: bool,

    /// Status fan-in: statuses offered per second (round-robin over the devices).
    #[arg(long, default_value_t = 20_000)]
    fanin_rate: usize,
    /// Status fan-in: for how long.
    #[arg(long, default_value_t = 3)]
    fanin_secs: u64,
    /// How long any one phase may take before the benchmark gives up.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

fn p99(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 99.0)
}

/// Each device's presence session number (it grows with every connect of the agent).
async fn sessions(api: &Api) -> anyhow::Result<HashMap<String, u64>> {
    let list = api.get("/api/v1/devices").await?;
    Ok(list["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d["id"].as_str()?.to_owned(), d["session"].as_u64()?)))
        .collect())
}

/// Waits until every device is online on a session newer than `before` (a reconnect, not
/// the fleet view's memory of the old one) and converged on its desired revision; the
/// seconds since `t0`.
async fn wait_fleet(
    api: &Api,
    ours: &HashSet<String>,
    before: &HashMap<String, u64>,
    t0: Instant,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let mut seen = (0, 0);
    loop {
        // The gateway may still be starting: a refused request is a wait, not a failure.
        if let Ok(list) = api.get("/api/v1/devices").await {
            let (mut online, mut converged) = (0, 0);
            for d in list["devices"].as_array().into_iter().flatten() {
                let Some(id) = d["id"].as_str().filter(|id| ours.contains(*id)) else {
                    continue;
                };
                let newer = d["session"].as_u64() > before.get(id).copied();
                online += usize::from(d["online"] == true && newer);
                converged += usize::from(
                    newer
                        && d["converged"] == true
                        && d["observed_revision"] == d["desired_revision"],
                );
            }
            if online == ours.len() && converged == ours.len() {
                return Ok(t0.elapsed().as_secs_f64());
            }
            seen = (online, converged);
        }
        if t0.elapsed() > timeout {
            bail!(
                "after {:.0} s only {} of {} devices are online again and {} converged",
                t0.elapsed().as_secs_f64(),
                seen.0,
                ours.len(),
                seen.1
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `--repeats` rehearsed rollouts (canary 1, batch 25 %, soak 0): each one's total, and
/// every device's time to done over all of them.
async fn rollouts(
    args: &Args,
    api: &Api,
    devices: &[edgefleet_sim::fleet::SimDevice],
    label: &str,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut totals = Vec::new();
    let mut device_times = Vec::new();
    for i in 0..args.repeats {
        eprintln!("{label} rollout {}/{}", i + 1, args.repeats);
        let r = edgefleet_sim::rehearse(
            api,
            &Rehearsal {
                deployment: "bench".into(),
                strategy: "canary=1,batch=25%,soak=0s".into(),
                timeout: args.timeout,
            },
            devices,
        )
        .await?;
        if r["state"] != "succeeded" {
            bail!("rollout {} ended {}", r["rollout"], r["state"]);
        }
        totals.push(r["total_s"].as_f64().unwrap_or(f64::NAN));
        device_times.extend(
            r["device_times_s"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64),
        );
    }
    Ok((totals, device_times))
}

/// Distinct retained device statuses an integrator receives on `…/devices/+/status`.
fn integrator_retained(gw: &Gateway, dir: &Path) -> anyhow::Result<usize> {
    let creds = dir.join("integrator");
    let out = gw.api().cli(&[
        "integrator",
        "add",
        "bench",
        "--out",
        &creds.display().to_string(),
    ]);
    if !out.success {
        bail!("integrator add failed: {out:?}");
    }
    let topic = edgefleet_protocol::topics::TopicKind::DeviceStatus.all_devices_filter();
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &gw.mqtts_port.to_string()])
        .arg("--cafile")
        .arg(creds.join("ca.pem"))
        .arg("--cert")
        .arg(creds.join("cert.pem"))
        .arg("--key")
        .arg(creds.join("key.pem"))
        .args(["-i", "integrator:bench", "-q", "1", "-t", &topic])
        .args(["--retained-only", "-W", "10", "-F", "%t"])
        .output()
        .context("cannot run mosquitto_sub (apt-get install mosquitto-clients)")?;
    let topics: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    Ok(topics.len())
}

/// FLEET_GATEWAY_ENV: extra `K=V` pairs (whitespace-separated) for the gateway's
/// environment only, e.g. a heap profiler's preload
/// (`LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so DUMP_HEAPTRACK_OUTPUT=/tmp/gw.$$`,
/// BENCHMARKS.md) or allocator settings (`MALLOC_ARENA_MAX=2`).
fn gateway_env() -> anyhow::Result<Vec<(String, String)>> {
    let Ok(text) = std::env::var("FLEET_GATEWAY_ENV") else {
        return Ok(Vec::new());
    };
    text.split_whitespace()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("FLEET_GATEWAY_ENV takes K=V pairs (got '{pair}')"))
        })
        .collect()
}

/// Logs in as the admin on every one of the gateway's password threads at once. Each keeps
/// its argon2 memory (19 MiB) for good once it has checked a password (`users.rs`, at most
/// four): a fixed cost of the gateway, which the benchmark's own logins after "empty" (its
/// token, the integrator's) used to count as the devices' (heaptrack: the fourth thread's
/// 19 MiB, 10 KiB per device at 2,000, arrived with `integrator add`).
fn warm_password_threads(gw: &Gateway, dir: &Path) -> anyhow::Result<()> {
    let logins: Vec<std::process::Child> = (0..ARGON2_CONCURRENT)
        .map(|i| {
            Command::new(&bins().edgefleet)
                .arg("--server")
                .arg(gw.api().url())
                .args(["login", "--user", "admin", "--password-file"])
                .arg(gw.data_dir.join("initial-admin-password"))
                .env("EDGEFLEET_CONFIG_DIR", dir.join(format!("warm-login-{i}")))
                .env_remove("EDGEFLEET_TOKEN")
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("cannot run edgefleet login")
        })
        .collect::<anyhow::Result<_>>()?;
    for mut login in logins {
        if !login.wait()?.success() {
            bail!("edgefleet login (warming the password threads) failed");
        }
    }
    Ok(())
}

/// Where the simulated devices keep their data dirs: tmpfs unless `--sim-on-disk` (or no
/// /dev/shm); and its name for the JSON.
fn sim_root(args: &Args, dir: &Path) -> anyhow::Result<(tempfile::TempDir, &'static str)> {
    let shm = Path::new("/dev/shm");
    let (base, kind) = if !args.sim_on_disk && shm.is_dir() {
        (shm, "tmpfs")
    } else {
        (dir, "disk")
    };
    let root = tempfile::Builder::new()
        .prefix("edgefleet-fleet-sim")
        .tempdir_in(base)
        .with_context(|| format!("cannot make a temp dir in {}", base.display()))?;
    Ok((root, kind))
}

/// One device count, in a temp dir that is kept (with the gateway's log) if it fails: the
/// gateway, then (unless `--no-mosquitto`) the peer with the same devices' identities.
async fn one_size(args: &Args, n: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let (sim, kind) = sim_root(args, dir.path())?;
    let result = measure(args, n, &dir, &sim.path().join("gateway"))
        .await
        .map(|mut r| {
            r["sim_data"] = json!(kind);
            r
        });
    let mut result = kept_on_failure(args, dir, result);
    if let (Ok(r), false) = (&mut result, args.no_mosquitto) {
        let dir = tempfile::tempdir().context("temp dir")?;
        let gateway = r["gateway_data"].as_str().map(std::path::PathBuf::from);
        let peer = match gateway {
            Some(gw) => measure_peer(args, n, &dir, &gw, &sim.path().join("gateway")).await,
            None => Err(anyhow::anyhow!("the gateway's data dir is gone")),
        };
        r["mosquitto"] = match kept_on_failure(args, dir, peer) {
            Ok(m) => {
                let ratio = |k: &str| r[k].as_f64().zip(m[k].as_f64()).map(|(a, b)| a / b);
                r["vs_mosquitto"] = json!({
                    "connect": ratio("connect_s"),
                    "rollout_p99": ratio("rollout_p99_s"),
                    "storm": ratio("storm_s"),
                });
                m
            }
            Err(e) => {
                eprintln!("fleet: {n} devices on Mosquitto: {e:#}");
                json!({ "error": format!("{e:#}") })
            }
        };
    }
    if let Some(Value::String(pki)) = result
        .as_mut()
        .ok()
        .and_then(|r| r.as_object_mut()?.remove("gateway_data"))
    {
        let _ = std::fs::remove_dir_all(pki);
    }
    result
}

/// `result`, with the temp dir (logs, stores) kept and named in the error if it failed.
fn kept_on_failure(
    args: &Args,
    dir: tempfile::TempDir,
    result: anyhow::Result<Value>,
) -> anyhow::Result<Value> {
    if args.keep && result.is_ok() {
        eprintln!("logs kept in {}", dir.keep().display());
        return result;
    }
    result.map_err(|e| {
        let kept = dir.keep();
        e.context(format!("logs kept in {}", kept.display()))
    })
}

/// The gateway's figures; the gateway's data dir (its CA and server certificate, for the
/// peer) is copied next to them under `gateway_data` before the gateway stops.
async fn measure(
    args: &Args,
    n: usize,
    dir: &tempfile::TempDir,
    sim_dir: &Path,
) -> anyhow::Result<Value> {
    eprintln!("[{n}] starting a gateway");
    // FLEET_GATEWAY_LOG: the gateway's RUST_LOG (e.g. `warn,edgefleet_broker::hub=debug`);
    // its log is kept in the run's temp dir.
    let log = std::env::var("FLEET_GATEWAY_LOG").unwrap_or_else(|_| "warn".to_owned());
    let mut envs = vec![("RUST_LOG".to_owned(), log)];
    envs.extend(gateway_env()?);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut gw = Gateway::start_with(dir.path(), &envs, &[]);
    let pid = gw.proc.pid().context("gateway pid")?;
    warm_password_threads(&gw, dir.path())?;
    let rss_empty = rss_kb(pid)?;
    let token = gw
        .api()
        .token()
        .map_err(|e| anyhow::anyhow!(e))?
        .context("no admin token")?;
    let api = Api::new(&gw.api().url(), Some(token), None)?;
    let devices = Shape::flat(n).devices()?;
    let ours = ids(&devices);
    eprintln!("[{n}] enrolling {n} devices");
    let enroll_s = enroll_all(&api, &devices, sim_dir, 16, false).await?;
    let options = AgentOptions {
        pull: Duration::from_millis(10),
        start: Duration::from_millis(10),
        start_failure: 0.0,
        unhealthy: 0.0,
        keepalive: Duration::from_secs(30),
        broker: Broker::Enrolled,
    };
    eprintln!("[{n}] connecting {n} devices");
    let t0 = Instant::now();
    let agents = Agents::start(&devices, sim_dir, &options)?;
    let connect_s = wait_fleet(&api, &ours, &HashMap::new(), t0, args.timeout).await?;
    let rss_idle = rss_kb(pid)?;

    let (rollouts, device_times) = rollouts(args, &api, &devices, &format!("[{n}]")).await?;
    let rss_after = rss_kb(pid)?;
    let integrator = integrator_retained(&gw, dir.path())?;

    let mut storms = Vec::new();
    for i in 0..args.storms {
        eprintln!(
            "[{n}] gateway SIGKILLed and restarted ({}/{})",
            i + 1,
            args.storms
        );
        let before = sessions(&api).await?;
        gw.proc.kill9();
        let t0 = Instant::now();
        gw.proc.start();
        gw.wait_ready();
        storms.push(wait_fleet(&api, &ours, &before, t0, args.timeout).await?);
    }
    agents.stop().await;
    eprintln!(
        "[{n}] status fan-in: {} msg/s for {} s",
        args.fanin_rate, args.fanin_secs
    );
    let id_list: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let fan = fanin(&api, &gw, &id_list, args.fanin_rate, args.fanin_secs).await?;
    let audit = Command::new(&bins().edgefleet)
        .args(["--json", "audit", "verify", "--data-dir"])
        .arg(&gw.data_dir)
        .output()
        .context("cannot run edgefleet audit verify")?;
    let audit_ok = audit.status.success();
    let per_1k = |kb: u64| (kb.saturating_sub(rss_empty) as f64) * 1000.0 / n as f64 / 1024.0;
    // The peer needs the gateway's CA and server certificate after this dir is gone.
    let pki = tempfile::Builder::new()
        .prefix("edgefleet-fleet-pki")
        .tempdir()?
        .keep();
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::copy(gw.data_dir.join("pki").join(f), pki.join(f))
            .with_context(|| format!("cannot copy the gateway's pki/{f}"))?;
    }
    Ok(json!({
        "gateway_data": pki.display().to_string(),
        "devices": n,
        "enroll_s": enroll_s,
        "connect_s": connect_s,
        "rollout_total_p50_s": median(&rollouts),
        "rollout_p50_s": median(&device_times),
        "rollout_p99_s": p99(&device_times),
        "rollouts": rollouts,
        "storm_s": median(&storms),
        "storm_p99_s": p99(&storms),
        "storms": storms,
        "gateway_rss_kb": { "empty": rss_empty, "idle": rss_idle, "after_rollouts": rss_after },
        "gateway_rss_kb_per_device": (rss_after.saturating_sub(rss_empty) as f64) / n as f64,
        "gateway_mb_per_1k_idle": per_1k(rss_idle),
        "gateway_mb_per_1k_after_rollouts": per_1k(rss_after),
        "integrator_retained": integrator,
        "audit_verifies": audit_ok,
        "fanin_msgs_per_s": fan["msgs_per_s"],
        "fanin_p50_ms": fan["p50_ms"],
        "fanin_p99_ms": fan["p99_ms"],
        "fanin": fan,
        "mosquitto": Value::Null,
    }))
}

/// The peer: the same fleet and the same rollouts on Debian's Mosquitto with `edgefleet
/// controller` (the external-broker deployment), like for like with the gateway's front:
/// devices connect over TLS with their enrolled certificates (the gateway's identities
/// copied, without their state) to a Mosquitto listener that requires a certificate of the
/// gateway's CA and presents the gateway's server certificate; the controller connects to a
/// plain loopback listener of the same Mosquitto. Devices verify desired state with the
/// peer controller's key and are adopted on their first presence. The "gateway" restarted
/// is Mosquitto and the controller, both SIGKILLed. Memory is the two processes' RSS.
async fn measure_peer(
    args: &Args,
    n: usize,
    dir: &tempfile::TempDir,
    gateway_pki: &Path,
    identities: &Path,
) -> anyhow::Result<Value> {
    use edgefleet_tests::procs;
    eprintln!(
        "[{n}] the same fleet on Mosquitto (TLS, client certificates) and edgefleet controller"
    );
    let tls = edgefleet_tests::ports::Reservation::loopback();
    let pki = |f: &str| gateway_pki.join(f).display().to_string();
    // Mosquitto keeps at most 1,000 queued messages per client by default and drops the
    // rest: the controller's subscription overflowed it as 1,000 devices announced
    // themselves (64 presences lost). Raised, as the gateway's own broker limits are. `user
    // root`: started as root, Mosquitto would otherwise drop to its own user, which cannot
    // read the run's (0700) temp dirs.
    let conf = format!(
        "allow_anonymous true\nmax_queued_messages 1000000\nuser root\n\
         listener {} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
         require_certificate true\nuse_identity_as_username true\n",
        tls.port(),
        pki("ca.pem"),
        pki("server.pem"),
        pki("server.key"),
    );
    let (mut mq, port) = procs::mosquitto_with(dir.path(), &conf);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tls.is_listened_on() {
        if Instant::now() > deadline {
            bail!("Mosquitto's TLS listener did not come up:\n{}", mq.log(30));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut ctl, http) = procs::controller(dir.path(), port);
    let admin = edgefleet_tests::api::Api::admin(http, &procs::controller_data_dir(dir.path()));
    let token = admin
        .token()
        .map_err(|e| anyhow::anyhow!(e))?
        .context("no admin token")?;
    let api = Api::new(&admin.url(), Some(token), None)?;
    let pids = |mq: &edgefleet_tests::procs::Proc, ctl: &edgefleet_tests::procs::Proc| {
        [mq.pid(), ctl.pid()]
            .into_iter()
            .flatten()
            .collect::<Vec<u32>>()
    };
    let rss = |pids: Vec<u32>| -> anyhow::Result<u64> {
        pids.into_iter().map(rss_kb).sum::<anyhow::Result<u64>>()
    };
    let rss_empty = rss(pids(&mq, &ctl))?;
    let devices = Shape::flat(n).devices()?;
    let ours = ids(&devices);
    let sim_dir = identities
        .parent()
        .context("the identities' dir has no parent")?
        .join("mosquitto");
    let mut host = None;
    for d in &devices {
        let from = identities.join(&d.id).join("identity");
        let to = sim_dir.join(&d.id).join("identity");
        std::fs::create_dir_all(&to)?;
        for f in std::fs::read_dir(&from).with_context(|| format!("{}", from.display()))? {
            let f = f?;
            std::fs::copy(f.path(), to.join(f.file_name()))?;
        }
        if host.is_none() {
            let file = to.join("device.json");
            let enrolled: Value = serde_json::from_slice(&std::fs::read(&file)?)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            // The host the server certificate was issued for (the gateway's), Mosquitto's port.
            let url = enrolled["broker_url"].as_str().unwrap_or_default();
            let addr = edgefleet_protocol::broker_url::BrokerAddr::parse(url)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            host = Some(addr.host);
        }
    }
    let host = host.context("no devices")?;
    let options = AgentOptions {
        pull: Duration::from_millis(10),
        start: Duration::from_millis(10),
        start_failure: 0.0,
        unhealthy: 0.0,
        keepalive: Duration::from_secs(30),
        broker: Broker::External {
            url: format!("mqtts://{host}:{}", tls.port()),
            controller_key: procs::controller_key_path(dir.path()),
        },
    };
    let t0 = Instant::now();
    let agents = Agents::start(&devices, &sim_dir, &options)?;
    let connect_s = wait_fleet(&api, &ours, &HashMap::new(), t0, args.timeout).await?;
    let rss_idle = rss(pids(&mq, &ctl))?;
    let (rollouts, device_times) =
        rollouts(args, &api, &devices, &format!("[{n}] Mosquitto:")).await?;
    let rss_after = rss(pids(&mq, &ctl))?;
    let mut storms = Vec::new();
    for i in 0..args.storms {
        eprintln!(
            "[{n}] Mosquitto and the controller SIGKILLed and restarted ({}/{})",
            i + 1,
            args.storms
        );
        let before = sessions(&api).await?;
        mq.kill9();
        ctl.kill9();
        let t0 = Instant::now();
        mq.start();
        ctl.start();
        storms.push(wait_fleet(&api, &ours, &before, t0, args.timeout).await?);
    }
    agents.stop().await;
    let per_1k = |kb: u64| (kb.saturating_sub(rss_empty) as f64) * 1000.0 / n as f64 / 1024.0;
    Ok(json!({
        "transport": "TLS, client certificates (require_certificate)",
        "connect_s": connect_s,
        "rollout_total_p50_s": median(&rollouts),
        "rollout_p50_s": median(&device_times),
        "rollout_p99_s": p99(&device_times),
        "storm_s": median(&storms),
        "storm_p99_s": p99(&storms),
        "storms": storms,
        "rss_kb": { "empty": rss_empty, "idle": rss_idle, "after_rollouts": rss_after },
        "mb_per_1k_idle": per_1k(rss_idle),
        "mb_per_1k_after_rollouts": per_1k(rss_after),
    }))
}

/// Status fan-in: `rate` statuses a second for `secs` seconds, round-robin over the fleet,
/// published QoS 1 by the harness's `bridge` user on the plain listener (the agents are
/// stopped first, so nothing else writes a status meanwhile). Each status carries a marker
/// in `last_error`; the fleet view's `last_seen` is when the controller took it in. The
/// latency is measured on each device's last status (the last round, when the queue is
/// longest): N samples.
async fn fanin(
    api: &Api,
    gw: &Gateway,
    ids: &[String],
    rate: usize,
    secs: u64,
) -> anyhow::Result<Value> {
    use edgefleet_protocol::status::{ConvergenceState, DeviceStatus};
    use edgefleet_protocol::topics::TopicKind;
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let (user, password) = edgefleet_tests::mqtt::login_for(gw.mqtt_port)
        .context("the harness's bridge user is missing")?;
    let mut o = MqttOptions::new("bench-fanin", "127.0.0.1", gw.mqtt_port);
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    let driver = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let total = rate * secs as usize;
    let per_tick = (rate / 100).max(1);
    let mut last: HashMap<String, (String, std::time::SystemTime)> = HashMap::new();
    let t0 = std::time::SystemTime::now();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut seq = 0usize;
    while seq < total {
        tick.tick().await;
        for _ in 0..per_tick.min(total - seq) {
            let id = &ids[seq % ids.len()];
            let marker = format!("fanin {seq}");
            let status = DeviceStatus {
                schema: 1,
                device: id.clone(),
                observed_revision: 1,
                desired_revision: 1,
                state: ConvergenceState::Converged,
                stacks: Default::default(),
                last_error: Some(marker.clone()),
                agent_version: "bench".into(),
                updated_at: edgefleet_protocol::now_rfc3339(),
                platform: None,
            };
            let payload = edgefleet_protocol::codec::encode(&status);
            client
                .publish(
                    TopicKind::DeviceStatus.for_device(id),
                    QoS::AtLeastOnce,
                    true,
                    payload,
                )
                .await
                .context("the fan-in publisher's queue closed")?;
            last.insert(id.clone(), (marker, std::time::SystemTime::now()));
            seq += 1;
        }
    }
    let published_s = start.elapsed().as_secs_f64();
    // Until every device's last status is in the fleet view.
    let mut latencies = Vec::with_capacity(last.len());
    let mut taken_in = t0;
    loop {
        let list = api.get("/api/v1/devices").await?;
        let mut missing = 0;
        latencies.clear();
        for d in list["devices"].as_array().into_iter().flatten() {
            let Some((marker, sent)) = d["id"].as_str().and_then(|id| last.get(id)) else {
                continue;
            };
            let seen = d["last_seen"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok());
            match seen {
                Some(seen) if d["last_error"].as_str() == Some(marker) => {
                    taken_in = taken_in.max(seen);
                    let ms = seen
                        .duration_since(*sent)
                        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
                    latencies.push(ms);
                }
                _ => missing += 1,
            }
        }
        if missing == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(secs + 60) {
            driver.abort();
            bail!("fan-in: {missing} devices' last status not in the fleet view after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver.abort();
    let took = taken_in
        .duration_since(t0)
        .map_or(f64::NAN, |d| d.as_secs_f64());
    Ok(json!({
        "messages": total,
        "offered_msgs_per_s": total as f64 / published_s,
        "msgs_per_s": total as f64 / took,
        "p50_ms": median(&latencies),
        "p99_ms": p99(&latencies),
    }))
}

fn print_peer_table(rows: &[Value]) {
    println!();
    println!(
        "| devices | broker | connect | rollout p50 / p99 (per device) | rollout total | storm median / p99 | MB per 1k (idle / after) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let m = &r["mosquitto"];
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | edgefleet gateway | {:.2} s | {:.2} s / {:.2} s | {:.2} s | {:.2} s / {:.2} s | {:.1} / {:.1} |",
            r["devices"],
            f(r, "connect_s"),
            f(r, "rollout_p50_s"),
            f(r, "rollout_p99_s"),
            f(r, "rollout_total_p50_s"),
            f(r, "storm_s"),
            f(r, "storm_p99_s"),
            f(r, "gateway_mb_per_1k_idle"),
            f(r, "gateway_mb_per_1k_after_rollouts"),
        );
        if m.is_null() {
            continue;
        }
        if let Some(e) = m["error"].as_str() {
            println!(
                "| {} | Mosquitto + controller | failed: {e} | | | | |",
                r["devices"]
            );
            continue;
        }
        println!(
            "| {} | Mosquitto + controller | {:.2} s | {:.2} s / {:.2} s | {:.2} s | {:.2} s / {:.2} s | {:.1} / {:.1} |",
            r["devices"],
            f(m, "connect_s"),
            f(m, "rollout_p50_s"),
            f(m, "rollout_p99_s"),
            f(m, "rollout_total_p50_s"),
            f(m, "storm_s"),
            f(m, "storm_p99_s"),
            f(m, "mb_per_1k_idle"),
            f(m, "mb_per_1k_after_rollouts"),
        );
    }
}

fn print_table(rows: &[Value]) {
    println!(
        "| devices | connect | rollout p50 / p99 (per device) | rollout total (median) | storm median / p99 | gateway MB per 1k (idle / after) | integrator retained | fan-in msg/s (p50 / p99 ms) | audit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {:.2} s | {:.2} s / {:.2} s | {:.2} s | {:.2} s / {:.2} s | {:.1} / {:.1} | {} / {} | {:.0} ({:.0} / {:.0}) | {} |",
            r["devices"],
            f("connect_s"),
            f("rollout_p50_s"),
            f("rollout_p99_s"),
            f("rollout_total_p50_s"),
            f("storm_s"),
            f("storm_p99_s"),
            f("gateway_mb_per_1k_idle"),
            f("gateway_mb_per_1k_after_rollouts"),
            r["integrator_retained"],
            r["devices"],
            f("fanin_msgs_per_s"),
            f("fanin_p50_ms"),
            f("fanin_p99_ms"),
            if r["audit_verifies"] == true {
                "verifies"
            } else {
                "FAILS"
            },
        );
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    // The simulated agents' own log (RUST_LOG, default: errors only), on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.quick {
        args.devices = vec![20];
        args.repeats = 1;
        args.storms = 1;
        args.fanin_rate = 2_000;
        args.fanin_secs = 1;
        args.timeout = args.timeout.min(Duration::from_secs(120));
    }
    if args.devices.is_empty() || args.devices.contains(&0) || args.repeats == 0 {
        eprintln!("fleet: --devices needs counts above 0 and --repeats at least 1");
        return std::process::ExitCode::from(2);
    }
    let mut rows = Vec::new();
    for &n in &args.devices {
        let r = match one_size(&args, n).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("fleet: {n} devices: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        };
        rows.push(r);
    }
    print_table(&rows);
    if !args.no_mosquitto {
        print_peer_table(&rows);
    }
    // Unmet targets are figures, not failures; a broken audit chain is a failure, and so, at
    // --quick's size (well under rumqttd's 100-message replay), is a missing status.
    let ok = rows.iter().all(|r| {
        r["audit_verifies"] == true
            && (!args.quick
                || (r["integrator_retained"] == r["devices"] && r["mosquitto"]["error"].is_null()))
    });
    println!("{}", json!({ "machine": machine(), "results": rows }));
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    json!({ "cores": cores, "profile": if cfg!(debug_assertions) { "debug" } else { "release" } })
}
