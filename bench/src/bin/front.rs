//! What the TLS network front costs, and how it compares with Mosquitto's TLS listener.
//!
//! `cargo run --release -p edgefleet-bench --bin front -- --connects 200 --messages 5000`
//!
//! Three paths, all on loopback, same certificates (our CA, an ECDSA P-256 device cert):
//! - `rumqttd plain`: straight to the embedded broker's loopback listener (no TLS, no rules);
//! - `edgefleet front`: TLS + client certificate + per-packet topic rules, relayed to rumqttd;
//! - `mosquitto TLS`: Debian's Mosquitto with `require_certificate true` (no ACL), the peer.
//!
//! For each: N sequential connects (TCP + TLS + CONNECT → CONNACK, one client at a time), then
//! M QoS 1 publishes from one device client to its own events topic, timed until a plain
//! subscriber has them all. Prints a Markdown table.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use edgefleet_broker::front::{self, FrontConfig, start_front};
use edgefleet_broker::pki::{IssuedCert, Pki};
use edgefleet_broker::reservation::PortReservation;
use edgefleet_protocol::acl::{Identity, device_client_id};
use edgefleet_protocol::topics::TopicKind;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, Parser)]
#[command(about = "Cost of the TLS network front vs plain rumqttd vs Mosquitto TLS")]
struct Args {
    /// Sequential connects per path.
    #[arg(long, default_value_t = 200)]
    connects: usize,
    /// QoS 1 messages per path.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Skip the Mosquitto peer (when the mosquitto package is not installed).
    #[arg(long)]
    no_mosquitto: bool,
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn tls_config(ca_pem: &str, cert: &IssuedCert) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())?],
            PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?,
        )?;
    Ok(Arc::new(config))
}

#[derive(Clone)]
struct Path_ {
    name: &'static str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Plain port of the same broker, for the subscriber.
    plain_port: u16,
}

fn options(path: &Path_, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", path.port);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some(tls) = &path.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    o
}

async fn connect_once(path: &Path_, client_id: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let (client, mut eventloop) = AsyncClient::new(options(path, client_id), 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("{}: connect failed: {e}", path.name),
            Err(_) => anyhow::bail!("{}: connect timed out", path.name),
        }
    }
    let elapsed = t0.elapsed();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    Ok(elapsed)
}

async fn throughput(path: &Path_, device: &str, messages: usize) -> anyhow::Result<Duration> {
    let topic = TopicKind::DeviceEvents.for_device(device);
    // The subscriber, on the broker's plain listener.
    let mut so = MqttOptions::new(
        format!("bench-sub-{}", path.port),
        "127.0.0.1",
        path.plain_port,
    );
    so.set_keep_alive(Duration::from_secs(30));
    let (sub, mut sub_loop) = AsyncClient::new(so, 100);
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await? {
            break;
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut got = 0;
        while let Ok(ev) = sub_loop.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = ev {
                got += 1;
                if got == messages {
                    let _ = tx.send(Instant::now());
                    break;
                }
            }
        }
    });
    let (publisher, mut pub_loop) =
        AsyncClient::new(options(path, &device_client_id(device)), 1000);
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    let payload = vec![b'x'; 220];
    let t0 = Instant::now();
    for _ in 0..messages {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
            .await?;
    }
    let done = tokio::time::timeout(Duration::from_secs(120), rx)
        .await
        .map_err(|_| anyhow::anyhow!("{}: not every message arrived in 120 s", path.name))??;
    Ok(done - t0)
}

/// Starts Mosquitto on two reserved ports and returns once it accepts on both. The
/// reservations (bound with SO_REUSEADDR, not listening: no one else can be given the ports,
/// and Mosquitto, which sets SO_REUSEADDR, binds over them) are released only then, so there
/// is no window in which another program could take a port (`edgefleet_broker::reservation`).
fn start_mosquitto(
    dir: &Path,
    pki: &Pki,
    tls: PortReservation,
    plain: PortReservation,
) -> anyhow::Result<KillOnDrop> {
    let (tls_port, plain_port) = (tls.addr().port(), plain.addr().port());
    let conf = dir.join("mosquitto.conf");
    let p = |f: &str| pki.dir().join(f).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "{}per_listener_settings true\npersistence false\nmax_queued_messages 100000\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\n\
             cafile {}\ncertfile {}\nkeyfile {}\n",
            // Run as root, Mosquitto drops to user `mosquitto`, which cannot read our 0600 keys.
            if std::env::var("USER").as_deref() == Ok("root")
                || std::env::var("HOME").as_deref() == Ok("/root")
            {
                "user root\n"
            } else {
                ""
            },
            p("ca.pem"),
            p("server.pem"),
            p("server.key")
        ),
    )?;
    let mut child = KillOnDrop(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stderr(std::fs::File::create(dir.join("mosquitto.log"))?)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start mosquitto (apt-get install mosquitto, or --no-mosquitto): {e}"
                )
            })?,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    for reservation in [&tls, &plain] {
        while !reservation.is_listened_on() {
            if let Some(status) = child.0.try_wait()? {
                anyhow::bail!(
                    "mosquitto exited ({status}) instead of listening on {}; see {}",
                    reservation.addr(),
                    dir.join("mosquitto.log").display()
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!("mosquitto did not come up on {}", reservation.addr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop((tls, plain));
    Ok(child)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let pki = Pki::load_or_create(&dir.path().join("pki"), &[])?;
    let device = "bench-dev-1";
    let cert = pki.issue_client(&Identity::Device(device.to_owned()), 1)?;
    let tls = tls_config(pki.ca_pem(), &cert)?;

    let cfg = edgefleet_broker::BrokerConfig {
        mqtt_listen: any_port(),
        ..Default::default()
    };
    let broker = tokio::task::spawn_blocking(move || edgefleet_broker::start(&cfg)).await??;
    let plain = broker.connect_addr();
    let front = start_front(
        front::bind(any_port()).await?,
        FrontConfig::new(plain),
        pki.server_tls_config(),
    )?;

    let mut paths = vec![
        Path_ {
            name: "rumqttd plain (loopback)",
            port: plain.port(),
            tls: None,
            plain_port: plain.port(),
        },
        Path_ {
            name: "edgefleet front (TLS + rules) → rumqttd",
            port: front.local_addr().port(),
            tls: Some(tls.clone()),
            plain_port: plain.port(),
        },
    ];
    let _mosquitto = if args.no_mosquitto {
        None
    } else {
        let (tls_reserved, plain_reserved) = (
            PortReservation::new(any_port())?,
            PortReservation::new(any_port())?,
        );
        let tls_port = tls_reserved.addr().port();
        let plain_port = plain_reserved.addr().port();
        let child = start_mosquitto(dir.path(), &pki, tls_reserved, plain_reserved)?;
        paths.push(Path_ {
            name: "mosquitto TLS (no ACL)",
            port: tls_port,
            tls: Some(tls.clone()),
            plain_port,
        });
        Some(child)
    };

    println!(
        "| path | connect p50 | connect p99 | {} QoS 1 msgs | msgs/s |",
        args.messages
    );
    println!("|---|---|---|---|---|");
    for path in &paths {
        let mut times = Vec::with_capacity(args.connects);
        for _ in 0..args.connects {
            times.push(connect_once(path, &device_client_id(device)).await?);
        }
        times.sort();
        let pct = |p: f64| times[((times.len() as f64 - 1.0) * p) as usize];
        let took = throughput(path, device, args.messages).await?;
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.3} s | {:.0} |",
            path.name,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            took.as_secs_f64(),
            args.messages as f64 / took.as_secs_f64()
        );
    }
    Ok(())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
