//! A real image registry for the tests: Debian's `docker-registry` (the CNCF distribution
//! registry) on loopback, storage in the test's temp dir. The engine pulls from it like from
//! any registry (`127.0.0.0/8` is trusted without TLS by default). It cannot report a port it
//! picked, so the port is held for it (see [`crate::ports`]), also while it is down.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ports::Reservation;
use crate::procs::Proc;

pub struct Registry {
    pub proc: Proc,
    pub port: u16,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        let held = Reservation::loopback();
        let port = held.port();
        let storage: PathBuf = dir.join("registry-storage");
        std::fs::create_dir_all(&storage).expect("registry storage");
        let conf = dir.join("registry.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .expect("write registry.yml");
        let mut proc = Proc::spawn(
            "registry",
            dir,
            Path::new("docker-registry"),
            &["serve".into(), conf.display().to_string()],
        );
        // Not a flag: the port is in the config file; held while the registry is down.
        proc.hold_ports(&[("--config-file-port", port)]);
        let r = Registry { proc, port };
        r.wait_up();
        drop(held);
        r
    }

    /// From now on the registry wants a login (`user`/`password`, htpasswd with bcrypt, as
    /// the distribution registry takes it): rewrites its configuration and restarts it on
    /// the same port and storage, so images pushed before stay there.
    pub fn require_login(&mut self, dir: &Path, user: &str, password: &str) {
        let htpasswd = dir.join("registry.htpasswd");
        let hash = bcrypt::hash(password, 5).expect("bcrypt");
        std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
        let conf = dir.join("registry.yml");
        let mut text = std::fs::read_to_string(&conf).expect("registry.yml");
        text.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: edgefleet-tests\n    path: {}\n",
            htpasswd.display()
        ));
        std::fs::write(&conf, text).expect("write registry.yml");
        self.proc.restart();
        self.wait_up();
    }

    /// Waits until it accepts connections on its port.
    pub fn wait_up(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come up on {addr} (Debian package docker-registry):\n{}",
                self.proc.log(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT/<name>`: a reference the engine pulls from this registry.
    pub fn reference(&self, name: &str) -> String {
        format!("127.0.0.1:{}/{name}", self.port)
    }

    /// Tags the local image `local` as `name` in this registry, pushes it, and removes the
    /// tag again, so the engine has to pull it by that reference.
    pub fn push(&self, local: &str, name: &str) -> String {
        let remote = self.reference(name);
        for args in [
            vec!["tag", local, remote.as_str()],
            vec!["push", remote.as_str()],
            vec!["rmi", remote.as_str()],
        ] {
            let out = std::process::Command::new("docker")
                .args(&args)
                .output()
                .expect("docker CLI");
            assert!(
                out.status.success(),
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        remote
    }
}

impl Drop for Registry {
    /// Removes the engine's tags of this registry's images (pulled by devices).
    fn drop(&mut self) {
        let prefix = format!("127.0.0.1:{}/", self.port);
        let out = std::process::Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output();
        if let Ok(out) = out {
            for image in String::from_utf8_lossy(&out.stdout).lines() {
                if image.starts_with(&prefix) {
                    let _ = std::process::Command::new("docker")
                        .args(["rmi", "-f", image])
                        .output();
                }
            }
        }
    }
}
