//! The generated Mosquitto ACL (`edgefleet_protocol::acl`) confines the same way as the front:
//! a real Mosquitto with TLS client certificates from our PKI and the generated `acl_file`,
//! driven with mosquitto_pub / mosquitto_sub.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edgefleet_broker::pki::{IssuedCert, Pki};
use edgefleet_broker::reservation::PortReservation;
use edgefleet_protocol::acl::{Identity, mosquitto_acl_with_integrators};
use edgefleet_protocol::topics::TopicKind;

/// Kills the Mosquitto this test started when the test ends, pass or fail.
struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn write_cert(dir: &Path, name: &str, cert: &IssuedCert) -> (PathBuf, PathBuf) {
    let c = dir.join(format!("{name}.pem"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, &cert.cert_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    (c, k)
}

fn run(program: &str, args: &[String]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (apt-get install mosquitto-clients): {e}")
        });
    eprintln!(
        "{program} {args:?} → {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn generated_acl_confines_devices_and_integrators_on_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_create(&dir.path().join("pki"), &[]).unwrap();
    let files = dir.path();
    let ca = files.join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let acl = files.join("acl");
    std::fs::write(
        &acl,
        mosquitto_acl_with_integrators(&["scada".to_owned()]).unwrap(),
    )
    .unwrap();
    // Mosquitto cannot listen on port 0 and tell us which port it got, so each port is
    // reserved (bound with SO_REUSEADDR, not listening) and held until Mosquitto accepts on
    // it. No race: while held, neither bind(0) nor an outgoing connection can be given the
    // port, and Mosquitto (which sets SO_REUSEADDR before bind, checked with strace on 2.0.11)
    // binds over the reservation. See `edgefleet_broker::reservation`.
    let tls_port = PortReservation::new(any_port()).unwrap();
    let admin_port = PortReservation::new(any_port()).unwrap();
    let (addr, admin_addr) = (tls_port.addr(), admin_port.addr());
    let conf = files.join("mosquitto.conf");
    // Like the gateway: a TLS listener under the ACL for devices and integrators, and a plain
    // loopback listener without it for the controller (here: the test's publisher).
    std::fs::write(
        &conf,
        format!(
            "user root\npersistence false\nper_listener_settings true\n\
             listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\nacl_file {acl}\n\
             listener {admin} 127.0.0.1\nallow_anonymous true\n",
            port = addr.port(),
            admin = admin_addr.port(),
            ca = ca.display(),
            cert = pki.dir().join("server.pem").display(),
            key = pki.dir().join("server.key").display(),
            acl = acl.display(),
        ),
    )
    .unwrap();
    let spawn = |program: &str| {
        Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let child = spawn("mosquitto")
        .or_else(|_| spawn("/usr/sbin/mosquitto"))
        .expect("mosquitto is installed (apt-get install mosquitto)");
    let mut mosquitto = Mosquitto(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    for reservation in [&tls_port, &admin_port] {
        while !reservation.is_listened_on() {
            if let Some(status) = mosquitto.0.try_wait().unwrap() {
                panic!(
                    "mosquitto exited ({status}) instead of listening on {}",
                    reservation.addr()
                );
            }
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Mosquitto listens on both: the ports are in use for everyone else from now on.
    drop((tls_port, admin_port));

    let issue = |name: &str, identity: Identity| {
        write_cert(files, name, &pki.issue_client(&identity, 1).unwrap())
    };
    let a = issue("a", Identity::Device("press-a".to_owned()));
    let b = issue("b", Identity::Device("press-b".to_owned()));
    let scada = issue("scada", Identity::Integrator("scada".to_owned()));
    let port = addr.port().to_string();
    let admin_port = admin_addr.port().to_string();
    let tls = |cert: &(PathBuf, PathBuf), extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "-h",
            "localhost",
            "-p",
            port.as_str(),
            "--cafile",
            ca.to_str().unwrap(),
            "--cert",
            cert.0.to_str().unwrap(),
            "--key",
            cert.1.to_str().unwrap(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let admin = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            admin_port.clone(),
        ];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let stdout = |out: &Output| String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let a_status = TopicKind::DeviceStatus.for_device("press-a");
    let b_status = TopicKind::DeviceStatus.for_device("press-b");
    let a_desired = TopicKind::DeviceDesired.for_device("press-a");
    let b_desired = TopicKind::DeviceDesired.for_device("press-b");

    // The controller's documents, retained.
    for (topic, doc) in [(&a_desired, "a-doc"), (&b_desired, "b-secret")] {
        let publish = admin(&["-q", "1", "-r", "-t", topic, "-m", doc]);
        assert!(run("mosquitto_pub", &publish).status.success());
    }
    // Each device publishes its own status; forged publishes are dropped by Mosquitto.
    for (cert, topic, msg) in [
        (&b, &b_status, "b-original"),
        (&a, &a_status, "a-own"),
        (&a, &b_status, "forged-by-a"),
        (&scada, &a_status, "forged-by-scada"),
    ] {
        run(
            "mosquitto_pub",
            &tls(cert, &["-q", "1", "-r", "-t", topic, "-m", msg]),
        );
    }
    let read = admin(&[
        "-t",
        "edgefleet/v1/devices/+/status",
        "-C",
        "2",
        "-W",
        "5",
        "-v",
    ]);
    let mut lines: Vec<String> = stdout(&run("mosquitto_sub", &read))
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            format!("{a_status} a-own"),
            format!("{b_status} b-original")
        ]
    );

    // A reads its own desired state, never B's, even through a wildcard.
    let own = tls(&a, &["-t", &a_desired, "-C", "1", "-W", "5"]);
    assert_eq!(stdout(&run("mosquitto_sub", &own)), "a-doc");
    let spy = tls(
        &a,
        &[
            "-t",
            "edgefleet/v1/devices/+/desired",
            "-C",
            "2",
            "-W",
            "3",
            "-v",
        ],
    );
    assert_eq!(
        stdout(&run("mosquitto_sub", &spy)),
        format!("{a_desired} a-doc"),
        "device A must receive no other device's desired state"
    );

    // The integrator reads statuses, never desired state.
    let statuses = tls(
        &scada,
        &["-t", "edgefleet/v1/devices/+/status", "-C", "2", "-W", "5"],
    );
    assert_eq!(stdout(&run("mosquitto_sub", &statuses)).lines().count(), 2);
    let spy = tls(
        &scada,
        &["-t", "edgefleet/v1/devices/+/desired", "-C", "1", "-W", "3"],
    );
    assert_eq!(stdout(&run("mosquitto_sub", &spy)), "");
}
