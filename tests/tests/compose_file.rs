//! Acceptance: the top-level `docker-compose.yml` runs on a machine with no registry. With
//! the images `scripts/images` builds, `docker-compose up` starts a gateway and two agents
//! that enroll with one-time tokens and connect over TLS; a stack applied with the CLI in the
//! gateway container runs on both; no plain listener leaves the gateway's loopback and no
//! agent mounts the gateway's data.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use edgefleet_tests::docker::{self, Cleanup};
use edgefleet_tests::hosts::{self, docker as docker_cli};
use edgefleet_tests::images::{self, APP_V1};
use edgefleet_tests::{unique_id, wait};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);
const DEVICES: [&str; 2] = ["press-07", "press-08"];

/// `docker compose` (the plugin) where there is one, else Debian's `docker-compose`.
fn compose_program() -> Vec<&'static str> {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if plugin {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    }
}

struct Project {
    name: String,
    file: std::path::PathBuf,
    program: Vec<&'static str>,
}

impl Project {
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(self.program[0])
            .args(&self.program[1..])
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            // Any free port on the host's loopback for the published TLS listeners.
            .env("EDGEFLEET_PUBLISH_MQTTS", "127.0.0.1:0")
            .env("EDGEFLEET_PUBLISH_ENROLL", "127.0.0.1:0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.join(" ")));
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes());
        child.wait_with_output().expect("compose")
    }

    /// `exec -T gateway edgefleet ARGS…`: the CLI next to the API, on the gateway's loopback.
    fn cli(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut all = vec!["exec", "-T", "gateway", "edgefleet"];
        all.extend_from_slice(args);
        let out = self.run(&all, stdin);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "edgefleet {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn container(&self, service: &str) -> String {
        let out = self.run(&["ps", "-q", service], "");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self.run(&["logs", "--tail", "30"], "");
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "2"], "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_up_starts_a_gateway_and_agents_that_enroll_with_tokens() {
    hosts::ensure_images();
    images::ensure();
    let _services = Cleanup(DEVICES.iter().map(|d| d.to_string()).collect());
    let project = Project {
        name: unique_id("compose"),
        file: Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml"),
        program: compose_program(),
    };
    let up = project.run(&["up", "-d"], "");
    assert!(
        up.status.success(),
        "compose up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    wait::until("admin login in the gateway container", T, || async {
        project.cli(
            &[
                "login",
                "--user",
                "admin",
                "--password-file",
                "/data/initial-admin-password",
            ],
            "",
        )
    })
    .await;
    wait::until("both agents enrolled and online over TLS", T, || async {
        let text = project.cli(&["--json", "get", "devices"], "")?;
        let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let devices = v["devices"].as_array().cloned().unwrap_or_default();
        let online = DEVICES.iter().all(|id| {
            devices
                .iter()
                .any(|d| d["id"] == *id && d["online"] == true && d["labels"]["site"] == "lyon")
        });
        if online { Ok(()) } else { Err(text) }
    })
    .await;

    let stack = format!("services:\n  app:\n    image: {APP_V1}\n    restart: unless-stopped\n");
    project
        .cli(
            &[
                "--json",
                "apply",
                "-f",
                "-",
                "--name",
                "web",
                "--target",
                "site=lyon",
            ],
            &stack,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    wait::until("the stack running on both devices", T, || async {
        let running: Vec<_> = DEVICES
            .iter()
            .map(|id| {
                docker::containers(id)
                    .into_iter()
                    .filter(|c| c.state == "running" && c.image == APP_V1)
                    .count()
            })
            .collect();
        if running == [1, 1] {
            Ok(())
        } else {
            Err(format!("{running:?}"))
        }
    })
    .await;

    // Only TLS listeners leave the gateway's loopback (127.0.0.11 is Docker's resolver).
    let gateway = project.container("gateway");
    let pid = docker_cli(&["inspect", "-f", "{{.State.Pid}}", &gateway]).expect("gateway pid");
    let ss = Command::new("nsenter")
        .args(["-t", &pid, "-n", "ss", "-Hltn"])
        .output()
        .expect("ss (iproute2) in the gateway's network namespace");
    let listeners = String::from_utf8_lossy(&ss.stdout).into_owned();
    let mut public = Vec::new();
    for l in listeners.lines() {
        let local = l.split_whitespace().nth(3).unwrap_or_default();
        let (ip, port) = local.rsplit_once(':').unwrap_or_default();
        if !ip.starts_with("127.") {
            public.push(port.to_owned());
        }
    }
    public.sort();
    // 8883 MQTT over TLS, 8443 enrollment (HTTPS), and 8444 the HTTPS API where the gateway
    // has one; nothing in clear.
    assert!(
        public
            .iter()
            .all(|p| ["8443", "8444", "8883"].contains(&p.as_str()))
            && public.iter().any(|p| p == "8883")
            && public.iter().any(|p| p == "8443"),
        "only the TLS listeners may leave loopback: {public:?}\n{listeners}"
    );

    // No agent sees the gateway's data (keys, store, admin password).
    for id in DEVICES {
        let c = project.container(id);
        let mounts = docker_cli(&["inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", &c])
            .expect("mounts");
        assert!(
            !mounts.contains("gateway-data"),
            "{id} mounts the gateway's data volume: {mounts}"
        );
    }
}
