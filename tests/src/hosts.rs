//! A plant of separate hosts: the gateway and each agent in a container of its own, on a
//! private Docker network the test creates, built from the images `scripts/images` makes
//! (busybox rootfs + our binary, no registry). Agents drive the host's engine through its
//! socket (their services run next to them, labelled with their device id, as on a device).
//! Faults come from outside, as a plant's network or power would deal them:
//! - the link: `nsenter -t PID -n iptables …` in the host's network namespace (every packet
//!   dropped, no FIN, no RST; or a share of them at random); latency through a delay line
//!   ([`Host::delayed`]: this kernel has no netem);
//! - the host itself: `docker kill -s KILL`, `docker start`.
//!
//! Every container and the network carry the label `io.edgefleet.hosts-run=<run>`; a
//! [`Plant`] removes them (and its devices' services) when dropped, also when the test fails,
//! and removes what a killed earlier test process left behind when created.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::api::Api;
use crate::bins::bins;
use crate::ports::wait_addresses;

pub const GATEWAY_IMAGE: &str = "edgefleet-gateway:local";
pub const AGENT_IMAGE: &str = "edgefleet-agent:local";
/// The label every container and network of a plant carries (value: the run).
const RUN_LABEL: &str = "io.edgefleet.hosts-run";
/// The test process that made them (to clean up after a killed one).
const PID_LABEL: &str = "io.edgefleet.hosts-pid";
/// Ports inside the gateway host (its own network namespace: nothing else binds there).
/// The gateway's HTTPS API (plain HTTP stays on the gateway host's loopback).
const HTTPS: u16 = 8444;
/// The gateway's MQTT over TLS listener, which agents connect to.
pub const MQTTS: u16 = 8883;
/// The agents' keepalive on these hosts (`--keepalive`).
pub const KEEPALIVE: Duration = Duration::from_secs(4);

/// Runs the docker CLI; Err with its stderr.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Builds the gateway and agent images once per test process with `scripts/images` from the
/// binaries under test.
pub fn ensure_images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let b = bins();
        let dir = b.edgefleet.parent().expect("binary dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/images");
        let out = Command::new(&script)
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/images failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Removes containers and networks left by test processes that no longer exist.
fn remove_orphans() {
    let filter = format!("label={PID_LABEL}");
    let fmt = format!("{{{{.ID}}}} {{{{.Label \"{PID_LABEL}\"}}}}");
    let dead = |line: &str| {
        let mut f = line.split_whitespace();
        let id = f.next()?.to_owned();
        let pid = f.next()?;
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(id)
    };
    if let Ok(list) = docker(&["ps", "-a", "--filter", &filter, "--format", &fmt]) {
        for id in list.lines().filter_map(dead) {
            let _ = docker(&["rm", "-f", &id]);
        }
    }
    if let Ok(list) = docker(&["network", "ls", "--filter", &filter, "--format", &fmt]) {
        for id in list.lines().filter_map(dead) {
            let _ = docker(&["network", "rm", &id]);
        }
    }
}

/// One container playing a host.
pub struct Host {
    pub name: String,
}

impl Host {
    /// The host's init process as the host sees it (for `nsenter`); panics if not running.
    pub fn pid(&self) -> u32 {
        must(&["inspect", "-f", "{{.State.Pid}}", &self.name])
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    /// Its address on the plant's network.
    pub fn ip(&self) -> String {
        must(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.name,
        ])
    }

    pub fn running(&self) -> bool {
        docker(&["inspect", "-f", "{{.State.Running}}", &self.name]).is_ok_and(|s| s == "true")
    }

    /// Runs a host-side tool (`iptables`, `ip`, `mosquitto_sub`) inside this host's network
    /// namespace; its stdout, Err with its stderr.
    pub fn in_netns(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let pid = self.pid().to_string();
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-n", program])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run nsenter: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn iptables(&self, args: &[&str]) {
        self.in_netns("iptables", args)
            .unwrap_or_else(|e| panic!("on {}: {e}", self.name));
    }

    /// Drops every packet in and out (no FIN, no RST: a cable pulled somewhere on the way).
    pub fn cut(&self) {
        self.iptables(&["-I", "INPUT", "-j", "DROP"]);
        self.iptables(&["-I", "OUTPUT", "-j", "DROP"]);
    }

    /// Undoes [`Host::cut`] or [`Host::lossy`]: the link is clean again.
    pub fn heal(&self) {
        self.iptables(&["-F", "INPUT"]);
        self.iptables(&["-F", "OUTPUT"]);
    }

    /// Drops each packet, in and out, with probability `p` (iptables' statistic match): every
    /// packet leaving (OUTPUT, loopback included, so a [`Host::delayed`] link loses its share
    /// too) and every packet arriving from outside (INPUT not on loopback: a looped-back
    /// packet is not lost twice).
    pub fn lossy(&self, p: f64) {
        let p = format!("{p}");
        let random = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "DROP",
        ];
        self.iptables(&[&["-I", "OUTPUT"][..], &random].concat());
        self.iptables(&[&["-I", "INPUT", "!", "-i", "lo"][..], &random].concat());
    }

    /// Adds `delay` each way to this host's TCP connections to `server` (a plant link's
    /// latency). This kernel has no netem (`tc qdisc add … netem` answers "Specified qdisc
    /// kind is unknown"), so the delay is made in user space: in this host's network
    /// namespace, connections to `server` are redirected (iptables `nat OUTPUT REDIRECT`) to
    /// a listener the test opened in that namespace (`setns(2)` on its own thread), which
    /// connects to `server` from the test machine and relays every chunk `delay` after it
    /// read it, both ways. A delay line, not a queue: throughput is kept, every byte is late.
    /// Connections made before it are reset at their next packet (a TCP RST, as after a
    /// router change), so the host reconnects through the line; [`Host::undelayed`] removes
    /// the redirection (connections through the line keep it until they close).
    pub fn delayed(&self, server: std::net::SocketAddr, delay: Duration) -> DelayLine {
        let listener = listener_in_netns(self.pid()).expect("a listener in the host's namespace");
        let port = listener
            .local_addr()
            .expect("its address")
            .port()
            .to_string();
        let (ip, dport) = (server.ip().to_string(), server.port().to_string());
        let to_server = ["-p", "tcp", "-d", ip.as_str(), "--dport", dport.as_str()];
        let redirect = ["-j", "REDIRECT", "--to-ports", port.as_str()];
        self.iptables(&[&["-t", "nat", "-A", "OUTPUT"][..], &to_server, &redirect].concat());
        // After the nat table, redirected packets are addressed to the line: only the old
        // direct connections still go to `server`.
        let reset = ["-j", "REJECT", "--reject-with", "tcp-reset"];
        self.iptables(&[&["-I", "OUTPUT"][..], &to_server, &reset].concat());
        let line = DelayLine::default();
        let relayed = line.relayed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                relayed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::spawn(move || {
                    let Ok(upstream) =
                        std::net::TcpStream::connect_timeout(&server, Duration::from_secs(5))
                    else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                        return;
                    };
                    let up = std::thread::spawn(move || delay_line(c2, u2, delay));
                    delay_line(upstream, client, delay);
                    let _ = up.join();
                });
            }
        });
        line
    }

    /// Removes [`Host::delayed`]'s redirections: new connections take the direct path.
    pub fn undelayed(&self) {
        self.iptables(&["-t", "nat", "-F", "OUTPUT"]);
    }

    /// SIGKILL to everything in the host: a power cut.
    pub fn kill(&self) {
        must(&["kill", "-s", "KILL", &self.name]);
        for _ in 0..100 {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} still running after SIGKILL", self.name);
    }

    /// Powers the host on again (same name, same data; maybe another address).
    pub fn start(&self) {
        must(&["start", &self.name]);
    }

    /// The last `lines` lines of its log.
    pub fn log(&self, lines: usize) -> String {
        let out = Command::new("docker")
            .args(["logs", "--tail", &lines.to_string(), &self.name])
            .output();
        out.map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default()
    }
}

/// The gateway host: its HTTPS API reached from the test through [`Forward`] (the server
/// certificate names `gateway` and loopback, not the host's address on the plant network).
pub struct GatewayHost {
    pub host: Host,
    /// Its `/data`, bind-mounted from the test's temp dir (store, admin password, addresses).
    pub data_dir: PathBuf,
    api: Api,
    forward: Forward,
    /// The local MQTT user (`bridge` role) the checks read retained state with: the plain
    /// listener takes only local users an admin created.
    mqtt_login: OnceLock<(String, String)>,
}

/// What [`Host::delayed`] made: how many connections went through the line.
#[derive(Default)]
pub struct DelayLine {
    relayed: Arc<std::sync::atomic::AtomicUsize>,
}

impl DelayLine {
    /// Connections the line has taken so far.
    pub fn connections(&self) -> usize {
        self.relayed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A listener on an unused port of the network namespace of process `pid` (a socket stays in
/// the namespace it was made in, whichever thread uses it later).
fn listener_in_netns(pid: u32) -> std::io::Result<std::net::TcpListener> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    // On a thread of its own: setns changes only the calling thread's namespace.
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        std::net::TcpListener::bind("0.0.0.0:0")
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// Copies `from` to `to`, each chunk written `delay` after it was read; then half-closes.
fn delay_line(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in rx {
            // The line's latency itself, not a wait for a condition.
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((std::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// A TCP forwarder on the test machine's loopback (port 0, held for the test's life) to the
/// gateway host's HTTPS port, following the host when it restarts with a new address. The
/// test and the CLI then reach `https://127.0.0.1:PORT`, a name the gateway's certificate
/// carries, and verify it against the gateway CA like any operator's machine.
pub struct Forward {
    pub port: u16,
    target: Arc<parking_lot::Mutex<Option<std::net::SocketAddr>>>,
}

impl Forward {
    fn start() -> Forward {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback forward");
        let port = listener.local_addr().expect("forward address").port();
        let target: Arc<parking_lot::Mutex<Option<std::net::SocketAddr>>> = Arc::default();
        let to = target.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Some(addr) = *to.lock() else { continue };
                std::thread::spawn(move || {
                    let Ok(server) =
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    else {
                        return;
                    };
                    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                        return;
                    };
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut s2);
                        let _ = s2.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut c, mut s) = (client, server);
                    let _ = std::io::copy(&mut s, &mut c);
                    let _ = c.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        Forward { port, target }
    }

    fn point_at(&self, ip: &str) {
        *self.target.lock() = format!("{ip}:{HTTPS}").parse().ok();
    }
}

impl GatewayHost {
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Waits until the gateway (re)started in the host has written its addresses file.
    pub fn wait_ready(&self) {
        // PID 1 in its own PID namespace, every time: the file of an earlier start was
        // removed before this one.
        wait_addresses(
            &self.data_dir.join("addresses.json"),
            1,
            Duration::from_secs(60),
            || self.host.log(40),
        );
        self.forward.point_at(&self.host.ip());
    }

    /// SIGKILL, then power on again and wait until it serves.
    pub fn kill_and_restart(&self) {
        self.host.kill();
        let _ = std::fs::remove_file(self.data_dir.join("addresses.json"));
        self.host.start();
        self.wait_ready();
    }

    /// A retained document on the gateway's own broker, read with `mosquitto_sub` on the
    /// gateway host's loopback (its plain listener never leaves it).
    pub fn retained(&self, topic: &str) -> Result<Value, String> {
        let (user, password) = self.mqtt_login.get_or_init(|| {
            let name = "checks-bridge";
            let out = self
                .api
                .cli(&["mqtt-user", "add", name, "--role", "bridge", "--json"]);
            assert!(out.success, "mqtt-user add failed: {out:?}");
            let password = out.json()["password"]
                .as_str()
                .expect("password in mqtt-user add output")
                .to_owned();
            (name.to_owned(), password)
        });
        let out = self.host.in_netns(
            "mosquitto_sub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-u",
                user,
                "-P",
                password,
                "-t",
                topic,
                "-C",
                "1",
                "-W",
                "3",
            ],
        )?;
        serde_json::from_str(&out).map_err(|e| format!("nothing retained on {topic} ({e})"))
    }

    /// `edgefleet audit verify` over the gateway's store (read-only, from outside the host).
    pub fn audit_verifies(&self) -> Result<Value, String> {
        let out = Command::new(&bins().edgefleet)
            .args(["--json", "audit", "verify", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .map_err(|e| format!("cannot run edgefleet audit verify: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            serde_json::from_str(&text).map_err(|e| format!("audit verify said {text}: {e}"))
        } else {
            Err(format!(
                "audit verify failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// An agent host: one device.
pub struct AgentHost {
    pub id: String,
    pub host: Host,
    /// Its `/data` (identity, state.bin), bind-mounted from the test's temp dir.
    pub data_dir: PathBuf,
}

impl AgentHost {
    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("state.bin")
    }
}

/// The private network, the gateway host and the agent hosts of one test.
pub struct Plant {
    pub run: String,
    pub network: String,
    dir: PathBuf,
    pub gateway: GatewayHost,
    pub agents: Vec<AgentHost>,
}

impl Plant {
    /// Creates the network and starts the gateway host; waits until its API answers.
    pub fn start(dir: &Path) -> Plant {
        ensure_images();
        remove_orphans();
        let run = crate::unique_id("hosts");
        let pid = std::process::id().to_string();
        let labels = [format!("{RUN_LABEL}={run}"), format!("{PID_LABEL}={pid}")];
        let network = format!("ef-{run}");
        must(&[
            "network", "create", "--label", &labels[0], "--label", &labels[1], &network,
        ]);
        let data_dir = dir.join("gateway-data");
        std::fs::create_dir_all(&data_dir).expect("gateway data dir");
        let name = format!("ef-{run}-gateway");
        let volume = format!("{}:/data", data_dir.display());
        // The plain MQTT listener and plain HTTP stay on the host's loopback; HTTPS listens on
        // the plant's private network, where the test (on the machine hosting it) reaches it.
        let https = format!("0.0.0.0:{HTTPS}");
        must(&[
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            "gateway",
            "--network",
            &network,
            "--network-alias",
            "gateway",
            "--label",
            &labels[0],
            "--label",
            &labels[1],
            "-e",
            "RUST_LOG=info,rumqttd=warn,rumqttd::server::broker=off",
            "-v",
            &volume,
            GATEWAY_IMAGE,
            "gateway",
            "--data-dir",
            "/data",
            "--http-listen",
            "127.0.0.1:8080",
            "--https-listen",
            &https,
            "--mqtt-listen",
            "127.0.0.1:1883",
            "--mqtts-listen",
            "0.0.0.0:8883",
            "--enroll-listen",
            "0.0.0.0:8443",
            "--public-host",
            "gateway",
            "--keepalive",
            "5",
        ]);
        let host = Host { name };
        let forward = Forward::start();
        let api = Api::admin_https_at("127.0.0.1", forward.port, &data_dir);
        let gateway = GatewayHost {
            host,
            data_dir,
            api,
            forward,
            mqtt_login: OnceLock::new(),
        };
        let plant = Plant {
            run,
            network,
            dir: dir.to_owned(),
            gateway,
            agents: Vec::new(),
        };
        plant.gateway.wait_ready();
        plant
    }

    fn labels(&self) -> [String; 2] {
        [
            format!("{RUN_LABEL}={}", self.run),
            format!("{PID_LABEL}={}", std::process::id()),
        ]
    }

    /// Adds a device (`edgefleet device add ID --labels …`), enrolls it from its own host
    /// with the token (`edgefleet-agent enroll`), then starts its agent there.
    pub fn add_agent(&mut self, id: &str, labels: &str) -> &AgentHost {
        let out = self
            .gateway
            .api()
            .cli(&["device", "add", id, "--labels", labels, "--json"]);
        assert!(out.success, "device add {id} failed: {out:?}");
        let token = out.json()["token"]
            .as_str()
            .expect("token in device add output")
            .to_owned();
        let data_dir = self.dir.join(format!("agent-{id}"));
        std::fs::create_dir_all(&data_dir).expect("agent data dir");
        let data = format!("{}:/data", data_dir.display());
        let l = self.labels();
        let enroll = docker(&[
            "run",
            "--rm",
            "--network",
            &self.network,
            "--label",
            &l[0],
            "--label",
            &l[1],
            "-e",
            &format!("EDGEFLEET_ENROLL_TOKEN={token}"),
            "-v",
            &data,
            AGENT_IMAGE,
            "enroll",
            "--data-dir",
            "/data",
        ]);
        if let Err(e) = enroll {
            panic!(
                "enrollment of {id} from its host failed: {e}\n{}",
                self.gateway.host.log(30)
            );
        }
        let name = format!("ef-{}-{id}", self.run);
        must(&[
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            id,
            "--network",
            &self.network,
            "--label",
            &l[0],
            "--label",
            &l[1],
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &data,
            AGENT_IMAGE,
            "--data-dir",
            "/data",
            "--keepalive",
            &KEEPALIVE.as_secs().to_string(),
        ]);
        self.agents.push(AgentHost {
            id: id.to_owned(),
            host: Host { name },
            data_dir,
        });
        self.agents.last().expect("just pushed")
    }

    pub fn agent(&self, id: &str) -> &AgentHost {
        self.agents
            .iter()
            .find(|a| a.id == id)
            .unwrap_or_else(|| panic!("no agent host {id}"))
    }

    pub fn ids(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.id.clone()).collect()
    }

    /// The last log lines of every host (for failure messages).
    pub fn logs(&self) -> String {
        let mut s = format!("----- gateway -----\n{}\n", self.gateway.host.log(40));
        for a in &self.agents {
            s.push_str(&format!("----- {} -----\n{}\n", a.id, a.host.log(25)));
        }
        s
    }
}

impl Drop for Plant {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let filter = format!("label={RUN_LABEL}={}", self.run);
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
            for id in ids.split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
        drop(crate::docker::Cleanup(self.ids()));
        let _ = docker(&["network", "rm", &self.network]);
    }
}
