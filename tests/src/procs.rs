//! Child processes under test. Each is killed when its handle drops (also when a test
//! panics), and its log file is kept in the test's temp dir; [`Proc::log`] reads it for
//! failure messages.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bins::bins;
use crate::ports::{Reservation, port_of, wait_addresses};

pub struct Proc {
    name: String,
    cmd: Vec<String>,
    /// Environment over the defaults (e.g. `RUST_LOG`).
    envs: Vec<(String, String)>,
    log_path: PathBuf,
    child: Option<Child>,
    /// Ports this process listens on and must get back when restarted.
    ports: Vec<u16>,
    /// Held while the process is down, so nothing else takes them (see [`crate::ports`]).
    held: Vec<Reservation>,
}

impl Proc {
    /// Starts `program args…`, appending stdout and stderr to `<dir>/<name>.log`.
    pub fn spawn(name: &str, dir: &Path, program: &Path, args: &[String]) -> Proc {
        Self::spawn_env(name, dir, program, args, &[])
    }

    /// [`Proc::spawn`] with extra environment variables (they win over the defaults).
    pub fn spawn_env(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = vec![program.display().to_string()];
        cmd.extend(args.iter().cloned());
        let mut p = Proc {
            name: name.to_owned(),
            cmd,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log_path: dir.join(format!("{name}.log")),
            child: None,
            ports: Vec::new(),
            held: Vec::new(),
        };
        p.start();
        p
    }

    /// From now on the process keeps these listen addresses when restarted: each `flag`'s
    /// value becomes `127.0.0.1:port` (the port it got at its first start), and the ports are
    /// held from the moment it dies until it is dropped, so no other socket takes them.
    pub fn hold_ports(&mut self, flags: &[(&str, u16)]) {
        for (flag, port) in flags {
            if let Some(i) = self.cmd.iter().position(|a| a == flag) {
                self.cmd[i + 1] = format!("127.0.0.1:{port}");
            }
            self.ports.push(*port);
        }
    }

    /// Holds the process's ports while it is down (it binds them again with `SO_REUSEADDR`).
    fn hold(&mut self) {
        if !self.held.is_empty() {
            return;
        }
        for port in &self.ports {
            match Reservation::new(std::net::SocketAddr::from(([127, 0, 0, 1], *port))) {
                Ok(r) => self.held.push(r),
                Err(e) => eprintln!(
                    "cannot hold port {port} of {} while it restarts: {e}",
                    self.name
                ),
            }
        }
    }

    /// The whole log (stdout and stderr) so far.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .env("RUST_LOG", "info,rumqttd=warn,rumqttd::server::broker=off")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.cmd.join(" ")));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process gets no chance to say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.hold();
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let mut exited = false;
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.hold();
    }

    /// Sends a signal by name (`STOP`, `CONT`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string())
                .status();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Waits (at most `timeout`) for the process to exit on its own; its exit status, or
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `lines` lines of the log.
    pub fn log(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("CONT");
        if std::thread::panicking() {
            eprintln!(
                "----- last log lines of {} -----\n{}\n-----",
                self.name,
                self.log(40)
            );
        }
        self.kill9();
    }
}

/// The addresses file `path` of process `p` (waits for it; see [`wait_addresses`]).
fn addresses_of(p: &Proc, path: &Path, timeout: Duration) -> serde_json::Value {
    let pid = p.pid().expect("process running");
    wait_addresses(path, pid, timeout, || p.log(40))
}

/// A gateway (embedded broker + controller) on its own ports and data dir.
pub struct Gateway {
    pub proc: Proc,
    /// The plain loopback listener for local MQTT users; the tests log in as a `bridge`
    /// user the harness creates (see [`crate::mqtt::login_for`]): the privileged path.
    pub mqtt_port: u16,
    /// The embedded broker's own listener (internal credential only).
    pub internal_port: u16,
    pub http_port: u16,
    /// The HTTPS API and dashboard (the gateway's CA: `data_dir/pki/ca.pem`).
    pub https_port: u16,
    /// The TLS device listener (client certificates, confinement).
    pub mqtts_port: u16,
    /// The HTTPS enrollment listener.
    pub enroll_port: u16,
    /// Its `--data-dir` (holds edgefleet.db and initial-admin-password).
    pub data_dir: PathBuf,
}

impl Gateway {
    pub fn start(dir: &Path) -> Gateway {
        Self::start_env(dir, &[])
    }

    /// [`Gateway::start`] with extra environment variables (e.g. `RUST_LOG=trace`).
    /// Every listener on port 0; the ports it got come from its addresses file, and it gets
    /// the same ones back when restarted.
    pub fn start_env(dir: &Path, envs: &[(&str, &str)]) -> Gateway {
        Self::start_with(dir, envs, &[])
    }

    /// [`Gateway::start_env`] with extra flags (e.g. `--http-idle-timeout 2s`).
    pub fn start_with(dir: &Path, envs: &[(&str, &str)], extra: &[&str]) -> Gateway {
        let data_dir = dir.join("gateway-data");
        let _ = std::fs::remove_file(data_dir.join("addresses.json"));
        let any = "127.0.0.1:0".to_owned();
        let args: Vec<String> = vec![
            "gateway".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--mqtt-listen".into(),
            any.clone(),
            "--http-listen".into(),
            any.clone(),
            "--keepalive".into(),
            "5".into(),
            "--mqtts-listen".into(),
            any.clone(),
            "--enroll-listen".into(),
            any.clone(),
            "--https-listen".into(),
            any,
            "--public-host".into(),
            "127.0.0.1".into(),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
        let mut proc = Proc::spawn_env("gateway", dir, &bins().edgefleet, &args, envs);
        let a = addresses_of(
            &proc,
            &data_dir.join("addresses.json"),
            Duration::from_secs(60),
        );
        let (mqtt_port, http_port) = (port_of(&a, "mqtt"), port_of(&a, "http"));
        let internal_port = port_of(&a, "internal");
        let (mqtts_port, enroll_port) = (port_of(&a, "mqtts"), port_of(&a, "enroll"));
        let https_port = port_of(&a, "https");
        proc.hold_ports(&[
            ("--https-listen", https_port),
            ("--mqtt-listen", mqtt_port),
            ("--http-listen", http_port),
            ("--mqtts-listen", mqtts_port),
            ("--enroll-listen", enroll_port),
        ]);
        let gw = Gateway {
            proc,
            mqtt_port,
            http_port,
            https_port,
            mqtts_port,
            enroll_port,
            internal_port,
            data_dir,
        };
        gw.create_bridge_user();
        gw
    }

    /// Creates the harness's `bridge` MQTT user (every topic, as the controller) with
    /// `edgefleet mqtt-user add` and records its login for this gateway's plain port.
    fn create_bridge_user(&self) {
        let name = "tests-bridge";
        let api = self.api();
        let _ = api.cli(&["mqtt-user", "remove", name]);
        let out = api.cli(&["mqtt-user", "add", name, "--role", "bridge", "--json"]);
        assert!(out.success, "mqtt-user add failed: {out:?}");
        let password = out.json()["password"]
            .as_str()
            .expect("password in mqtt-user add output")
            .to_owned();
        crate::mqtt::set_login(self.mqtt_port, name, &password);
    }

    /// The embedded broker's internal password (what only the gateway itself holds).
    pub fn internal_password(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("broker-internal-password"))
            .expect("the gateway's internal broker password")
            .trim()
            .to_owned()
    }

    /// Waits until the (re)started gateway is up: its addresses file names this process, on
    /// the same ports.
    pub fn wait_ready(&self) {
        let a = addresses_of(
            &self.proc,
            &self.data_dir.join("addresses.json"),
            Duration::from_secs(60),
        );
        assert_eq!(
            (
                port_of(&a, "mqtt"),
                port_of(&a, "http"),
                port_of(&a, "mqtts")
            ),
            (self.mqtt_port, self.http_port, self.mqtts_port),
            "the restarted gateway must listen where it did"
        );
    }

    /// Creates an enrollment token for `id` (`edgefleet device add`), as admin.
    pub fn enrollment_token(&self, id: &str, labels: &str) -> String {
        let out = self
            .api()
            .cli(&["device", "add", id, "--labels", labels, "--json"]);
        assert!(out.success, "device add failed: {out:?}");
        out.json()["token"]
            .as_str()
            .expect("token in device add output")
            .to_owned()
    }

    /// Enrolls `id` with `edgefleet-agent enroll` into `dir/agent-<id>`; returns the output.
    pub fn enroll(&self, dir: &Path, id: &str, token: &str) -> std::process::Output {
        std::process::Command::new(&bins().agent)
            .args(["enroll", "--token", token, "--data-dir"])
            .arg(Agent::data_dir(dir, id))
            .env_remove("EDGEFLEET_ENROLL_TOKEN")
            .output()
            .expect("run edgefleet-agent enroll")
    }

    /// An agent enrolled the way a device is (token → certificate) and connected to the TLS
    /// front with its own certificate.
    pub fn agent(&self, dir: &Path, id: &str, labels: &str) -> Agent {
        self.agent_env(dir, id, labels, &[])
    }

    /// [`Gateway::agent`] with extra environment variables for the agent (e.g. `RUST_LOG`).
    pub fn agent_env(&self, dir: &Path, id: &str, labels: &str, envs: &[(&str, &str)]) -> Agent {
        let token = self.enrollment_token(id, labels);
        let out = self.enroll(dir, id, &token);
        assert!(
            out.status.success(),
            "enrollment of {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Agent::enrolled_env(dir, id, &[], envs)
    }

    pub fn broker_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port)
    }

    /// The gateway's CA certificate (what `edgefleet login --ca-file` pins).
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("pki").join("ca.pem")
    }

    /// The API, logged in as the first-start admin.
    pub fn api(&self) -> crate::api::Api {
        crate::api::Api::admin(self.http_port, &self.data_dir)
    }
}

/// The data dir [`controller`] gives the controller under `dir`.
pub fn controller_data_dir(dir: &Path) -> PathBuf {
    dir.join("controller-data")
}

/// A controller process against a broker at `mqtt_port` (external-broker deployment), HTTP
/// on port 0; returns it and its HTTP port (kept across restarts). Its API as admin:
/// `Api::admin(http_port, &controller_data_dir(dir))`.
pub fn controller(dir: &Path, mqtt_port: u16) -> (Proc, u16) {
    controller_with(dir, mqtt_port, &[])
}

/// [`controller`] with extra flags (e.g. `--broker-user`).
pub fn controller_with(dir: &Path, mqtt_port: u16, extra: &[&str]) -> (Proc, u16) {
    let data_dir = controller_data_dir(dir);
    let _ = std::fs::remove_file(data_dir.join("addresses.json"));
    let mut args: Vec<String> = vec![
        "controller".into(),
        "--broker".into(),
        format!("mqtt://127.0.0.1:{mqtt_port}"),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
        "--keepalive".into(),
        "5".into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let mut p = Proc::spawn("controller", dir, &bins().edgefleet, &args);
    let a = addresses_of(
        &p,
        &data_dir.join("addresses.json"),
        Duration::from_secs(60),
    );
    let http_port = port_of(&a, "http");
    p.hold_ports(&[("--http-listen", http_port)]);
    (p, http_port)
}

/// The embedded broker alone (`edgefleet broker`) on port 0; returns it and its port (kept
/// across restarts).
pub fn embedded_broker(dir: &Path) -> (Proc, u16) {
    let file = dir.join("broker-addresses.json");
    let _ = std::fs::remove_file(&file);
    let args = vec![
        "broker".into(),
        "--mqtt-listen".into(),
        "127.0.0.1:0".into(),
        "--addresses-file".into(),
        file.display().to_string(),
    ];
    let mut p = Proc::spawn("broker", dir, &bins().edgefleet, &args);
    let port = port_of(&addresses_of(&p, &file, Duration::from_secs(30)), "mqtt");
    p.hold_ports(&[("--mqtt-listen", port)]);
    (p, port)
}

/// Debian's Mosquitto on loopback, anonymous, with a packet limit large enough for desired
/// documents. Mosquitto cannot report a port it picked, so the port is held for it (see
/// [`crate::ports`]) until it listens; returns it and its port.
pub fn mosquitto(dir: &Path) -> (Proc, u16) {
    mosquitto_with(dir, "allow_anonymous true\n")
}

/// [`mosquitto`] with these configuration lines instead of `allow_anonymous true` (e.g. a
/// password_file).
pub fn mosquitto_with(dir: &Path, auth: &str) -> (Proc, u16) {
    let held = Reservation::loopback();
    let port = held.port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\n{auth}persistence false\nmax_packet_size 2000000\n"),
    )
    .expect("write mosquitto.conf");
    let p = Proc::spawn(
        "mosquitto",
        dir,
        Path::new("mosquitto"),
        &["-c".into(), conf.display().to_string()],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !held.is_listened_on() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not come up (is the mosquitto package installed?):\n{}",
            p.log(30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, port)
}

/// An agent process for one device.
pub struct Agent {
    pub id: String,
    pub proc: Proc,
}

impl Agent {
    /// The agent's `--data-dir` under `dir`.
    pub fn data_dir(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("agent-{id}"))
    }

    /// Starts an enrolled agent: `--data-dir` carries id, labels, broker and keys.
    pub fn enrolled(dir: &Path, id: &str) -> Agent {
        Agent::enrolled_with(dir, id, &[])
    }

    /// [`Agent::enrolled`] with extra flags (e.g. `--labels site=paris`: what it reports).
    pub fn enrolled_with(dir: &Path, id: &str, extra: &[&str]) -> Agent {
        Agent::enrolled_env(dir, id, extra, &[])
    }

    /// [`Agent::enrolled_with`] with extra environment variables (e.g. `RUST_LOG`).
    pub fn enrolled_env(dir: &Path, id: &str, extra: &[&str], envs: &[(&str, &str)]) -> Agent {
        let mut args = vec![
            "--data-dir".into(),
            Agent::data_dir(dir, id).display().to_string(),
            "--keepalive".into(),
            "4".into(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let proc = Proc::spawn_env(&format!("agent-{id}"), dir, &bins().agent, &args, envs);
        Agent {
            id: id.to_owned(),
            proc,
        }
    }

    /// Starts a plain-MQTT agent (external broker, or the gateway's loopback listener) that
    /// trusts the key of the gateway or controller started in `dir`.
    pub fn start(dir: &Path, id: &str, labels: &str, broker_url: &str) -> Agent {
        let mut args = vec![
            "--id".into(),
            id.to_owned(),
            "--broker".into(),
            broker_url.to_owned(),
            "--data-dir".into(),
            dir.join(format!("agent-{id}")).display().to_string(),
            "--keepalive".into(),
            "4".into(),
            "--controller-key".into(),
            controller_key_path(dir).display().to_string(),
        ];
        if !labels.is_empty() {
            args.extend(["--labels".into(), labels.to_owned()]);
        }
        let proc = Proc::spawn(&format!("agent-{id}"), dir, &bins().agent, &args);
        Agent {
            id: id.to_owned(),
            proc,
        }
    }
}

/// The desired-state signing key (public half) of the gateway or controller started in `dir`.
pub fn controller_key_path(dir: &Path) -> std::path::PathBuf {
    let candidates = ["gateway-data", "controller-data"]
        .map(|d| dir.join(d).join("signing").join("desired-signing.pub"));
    candidates
        .iter()
        .find(|p| p.exists())
        .unwrap_or(&candidates[0])
        .clone()
}

/// The controller's public key, parsed (for test clients that verify desired documents).
pub fn controller_key(dir: &Path) -> edgefleet_protocol::signing::VerifyingKey {
    let path = controller_key_path(dir);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    edgefleet_protocol::signing::parse_public_key(&text).expect("controller key")
}
