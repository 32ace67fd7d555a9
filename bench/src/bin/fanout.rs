//! Fan-out probe: how many of N per-device desired documents arrive, and how fast.
//!
//! `cargo run --release -p edgefleet-bench --bin fanout -- --clients 2000 --broker tuned`
//! prints one table row: broker, N, connect+subscribe time, delivered count, delivery time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use edgefleet_protocol::topics::TopicKind;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BrokerKind {
    /// Embedded rumqttd with rumqttd's sample config limits (inflight 100, outgoing 200, 1 ms accept delay).
    Sample,
    /// Embedded rumqttd with the gateway's limits (BrokerConfig::default).
    Tuned,
    /// An already running broker at --port (e.g. Mosquitto).
    External,
}

#[derive(Debug, Parser)]
#[command(about = "Desired-state fan-out probe (SPEC.md §11)")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, value_enum, default_value = "tuned")]
    broker: BrokerKind,
    /// Port of the external broker (required with `--broker external`). The embedded broker
    /// listens on this port if given, else on one the kernel picks.
    #[arg(long)]
    port: Option<u16>,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Label for the broker column.
    #[arg(long)]
    label: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let requested = std::net::SocketAddr::from(([127, 0, 0, 1], args.port.unwrap_or(0)));
    let embedded = match args.broker {
        BrokerKind::Sample => Some(edgefleet_broker::BrokerConfig {
            mqtt_listen: requested,
            max_inflight: 100,
            max_outgoing_packets: 200,
            next_connection_delay_ms: 1,
            ..Default::default()
        }),
        BrokerKind::Tuned => Some(edgefleet_broker::BrokerConfig {
            mqtt_listen: requested,
            ..Default::default()
        }),
        BrokerKind::External => None,
    };
    let port = match embedded {
        Some(cfg) => {
            let broker =
                tokio::task::spawn_blocking(move || edgefleet_broker::start(&cfg)).await??;
            // A broker that dies mid-run (SPEC.md §13: rumqttd's scheduler panicked in a 5k
            // storm) would otherwise only show up as missing deliveries.
            let stopped = broker.stopped();
            tokio::spawn(async move { eprintln!("embedded broker died: {}", stopped.await) });
            broker.connect_addr().port()
        }
        None => args
            .port
            .ok_or_else(|| anyhow::anyhow!("--broker external needs --port"))?,
    };
    let n = args.clients;
    let subscribed = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let reconnects = Arc::new(AtomicUsize::new(0));
    let all_subscribed = Arc::new(Notify::new());
    let start = Instant::now();
    for i in 0..n {
        let id = format!("probe-{i:05}");
        let (subscribed, delivered, reconnects, all_subscribed) = (
            subscribed.clone(),
            delivered.clone(),
            reconnects.clone(),
            all_subscribed.clone(),
        );
        tokio::spawn(async move {
            let mut opts = MqttOptions::new(&id, "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(30));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut el) = AsyncClient::new(opts, 10);
            let topic = TopicKind::DeviceDesired.for_device(&id);
            let (mut got, mut acked, mut connects) = (false, false, 0);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connects += 1;
                        if connects > 1 {
                            reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = client.try_subscribe(&topic, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) if !acked => {
                        acked = true;
                        if subscribed.fetch_add(1, Ordering::Relaxed) + 1 == n {
                            all_subscribed.notify_one();
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if !got && p.topic == topic => {
                        got = true;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
    }
    let limit = Duration::from_secs(args.timeout);
    let sub_ok = tokio::time::timeout(limit, all_subscribed.notified())
        .await
        .is_ok();
    let connect_time = start.elapsed();

    let mut opts = MqttOptions::new("probe-publisher", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(1000);
    let (publisher, mut el) = AsyncClient::new(opts, 1000);
    tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let payload = vec![b'x'; 600];
    let t0 = Instant::now();
    for i in 0..n {
        let topic = TopicKind::DeviceDesired.for_device(&format!("probe-{i:05}"));
        publisher
            .publish(topic, QoS::AtLeastOnce, true, payload.clone())
            .await?;
    }
    let mut all_in = None;
    while t0.elapsed() < limit {
        if delivered.load(Ordering::Relaxed) >= n {
            all_in = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let label = args
        .label
        .unwrap_or_else(|| format!("{:?}", args.broker).to_lowercase());
    println!(
        "| {label} | {n} | {} | {} / {n} | {} | {} |",
        if sub_ok {
            format!("{:.2} s", connect_time.as_secs_f64())
        } else {
            format!(
                "> {} s ({} subscribed)",
                args.timeout,
                subscribed.load(Ordering::Relaxed)
            )
        },
        delivered.load(Ordering::Relaxed),
        all_in.map_or_else(
            || format!("not all in {} s", args.timeout),
            |d| format!("{:.3} s", d.as_secs_f64())
        ),
        reconnects.load(Ordering::Relaxed),
    );
    Ok(())
}
