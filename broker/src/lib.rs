//! # edgefleet-broker
//!
//! rumqttd embedded in-process, configured from code (no TOML file): one plain MQTT v3.1.1
//! listener with deliberately chosen limits, kept on loopback; and the network front devices
//! and integrators connect to: TLS with client certificates from our own CA, every packet
//! checked against the confinement rules of `edgefleet_protocol::acl`, then relayed to the
//! plain listener (see ARCHITECTURE.md, "Network front").
//!
//! ## Layout
//! - [`BrokerConfig`]: the knobs we expose, with the values we chose and why.
//! - [`start`]: starts the broker on its own thread and waits until the listener accepts.
//! - [`pki`]: the gateway's CA, server certificate and client certificates.
//! - [`front`]: the TLS listener that confines each identity to its topics.
//!
//! rumqttd's `Broker::start()` blocks forever and has no shutdown API, so the broker lives as
//! long as the process that started it.

pub mod front;
pub mod pki;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(
        "cannot listen for MQTT on {addr}: {source} (is another broker already running there? choose another address with --mqtt-listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the MQTT listener on {0} did not come up within 10 s; see the broker log above")]
    NotReady(SocketAddr),
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

/// Broker limits. The defaults are chosen for a plant gateway with up to ~10k agents; see
/// ARCHITECTURE.md ("Broker settings") for the measurements behind them.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Plain MQTT listener. Keep it on loopback unless the network is trusted.
    pub mqtt_listen: SocketAddr,
    /// Most concurrent connections the router accepts.
    pub max_connections: usize,
    /// Largest PUBLISH payload accepted (a desired document with many stacks can be large).
    pub max_payload_bytes: usize,
    /// Unacknowledged QoS1 messages per connection. rumqttd's sample default (100) lost
    /// fan-out at 2k+ subscribers in our probe (SPEC.md §11); 1000 did not at 2k.
    pub max_inflight: usize,
    /// Messages the router forwards to one connection per scheduling round (sample: 200).
    pub max_outgoing_packets: u64,
    /// Pause after every accepted connection. rumqttd's sample config uses 1 ms, which caps
    /// the accept rate of a reconnect storm; we use 0.
    pub next_connection_delay_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_connections: 20_000,
            max_payload_bytes: edgefleet_protocol::MAX_PAYLOAD_BYTES + 64 * 1024,
            max_inflight: 1000,
            max_outgoing_packets: 5000,
            next_connection_delay_ms: 0,
        }
    }
}

impl BrokerConfig {
    fn to_rumqttd(&self) -> Config {
        let connections = ConnectionSettings {
            // Time a client has to send CONNECT after TCP accept.
            connection_timeout_ms: 10_000,
            max_payload_size: self.max_payload_bytes,
            max_inflight_count: self.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = ServerSettings {
            name: "edgefleet-v4".to_owned(),
            listen: self.mqtt_listen,
            tls: None,
            next_connection_delay_ms: self.next_connection_delay_ms,
            connections,
        };
        let router = RouterConfig {
            max_connections: self.max_connections,
            max_outgoing_packet_count: self.max_outgoing_packets,
            // Each filter keeps a commit log of at most count × size bytes in memory.
            max_segment_size: 8 * 1024 * 1024,
            max_segment_count: 4,
            ..RouterConfig::default()
        };
        Config {
            id: 0,
            router,
            v4: Some(HashMap::from([("1".to_owned(), server)])),
            ..Config::default()
        }
    }
}

/// A running embedded broker.
#[derive(Debug)]
pub struct BrokerHandle {
    listen: SocketAddr,
}

impl BrokerHandle {
    /// Address clients should connect to (loopback when listening on all interfaces).
    pub fn connect_addr(&self) -> SocketAddr {
        connect_addr(self.listen)
    }
}

/// Address a local client uses to reach a listener (`0.0.0.0` → `127.0.0.1`).
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// Starts the broker on a dedicated thread and returns once its listener accepts TCP
/// connections.
pub fn start(config: &BrokerConfig) -> Result<BrokerHandle, BrokerError> {
    let addr = config.mqtt_listen;
    // rumqttd binds inside its own thread and only logs a failure; probe first so the user
    // gets a clear error instead of a silent gateway.
    drop(TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?);
    let rumqttd_config = config.to_rumqttd();
    thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(rumqttd_config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let target = connect_addr(addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            tracing::info!(%addr, "embedded MQTT broker listening");
            return Ok(BrokerHandle { listen: addr });
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotReady(addr))
}
