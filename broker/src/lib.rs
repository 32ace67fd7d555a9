//! # edgefleet-broker
//!
//! rumqttd embedded in-process, configured from code (no TOML file): one internal MQTT v3.1.1
//! listener with deliberately chosen limits, on loopback, that (in the gateway) takes only
//! connections presenting the [`InternalCredential`]; and the network front every other
//! client connects to: TLS with client certificates from our own CA, or plain TCP on
//! loopback with a local user's password, every packet checked against the confinement rules
//! and topic shapes of `edgefleet_protocol::acl`, then relayed to the internal listener (see
//! ARCHITECTURE.md, "Network front" and "Threat model").
//!
//! ## Layout
//! - [`BrokerConfig`]: the knobs we expose, with the values we chose and why.
//! - [`InternalCredential`]: the secret of the internal listener (generated at first start,
//!   `0600` in the data dir), used by the controller and the front's upstream connections.
//! - [`start`]: starts the broker on its own thread (any address, port 0 included) and waits
//!   until its listener accepts; the [`BrokerHandle`] reports the real address and when the
//!   broker died ([`BrokerHandle::stopped`]).
//! - [`reservation`]: holds an address for a listener that binds it itself (rumqttd,
//!   Mosquitto), which is how port 0 works without a bind-and-release race.
//! - `supervision`: the stop signals, and the panic hook that recognizes the broker's threads.
//! - [`pki`]: the gateway's CA, server certificate and client certificates.
//! - [`front`]: the TLS listener that confines each identity to its topics.
//!
//! ## How to wire (gateway)
//!
//! ```text
//! let broker = spawn_blocking(move || edgefleet_broker::start(&broker_config)).await??;
//! report(broker.listen_addr());                       // the real port when given port 0
//! let listener = front::bind(config.mqtts_listen).await?;
//! report(listener.local_addr()?);
//! let front = start_front(listener, FrontConfig::new(broker.connect_addr()), tls)?;
//! tokio::select! {                                    // essential: either ending ends the process
//!     reason = broker.stopped() => exit(reason),
//!     reason = front.stopped() => exit(reason),
//!     _ = shutdown.cancelled() => {}
//! }
//! ```
//!
//! rumqttd's `Broker::start()` blocks forever and has no shutdown API, so the broker lives as
//! long as the process that started it. Nor does it notice its own death: a panic on its
//! router thread leaves the listener accepting and no message moving (SPEC.md §13). So
//! [`BrokerHandle::stopped`] resolves when any of the broker's threads panics or when
//! `Broker::start()` returns, and the process is meant to exit then and be restarted. Panics
//! are seen through a process-wide panic hook installed by the first [`start`]; a hook set
//! later must chain to the one it replaces (`std::panic::take_hook`), or broker panics go
//! unnoticed again.

pub mod front;
pub mod hub;
pub mod pki;
pub mod reservation;
mod supervision;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use thiserror::Error;

use crate::reservation::PortReservation;
use crate::supervision::{BrokerThreads, StopSignal};

/// How long [`start`] waits for rumqttd's listener.
const READY_WITHIN: Duration = Duration::from_secs(10);

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
    #[error("the embedded MQTT broker on {addr} stopped while starting: {reason}")]
    Stopped { addr: SocketAddr, reason: String },
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
}

/// The user name and password rumqttd's internal listener requires (rumqttd's static
/// connection auth). Only the controller and the front's upstream connections hold it: no
/// other client can connect to the internal listener at all.
#[derive(Clone, PartialEq, Eq)]
pub struct InternalCredential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for InternalCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InternalCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl InternalCredential {
    /// The user name the controller and the front present.
    pub const USERNAME: &'static str = "edgefleet-internal";
    /// The file (in the data dir) that holds the password.
    pub const FILE: &'static str = "broker-internal-password";

    /// Reads the password from `dir`/[`Self::FILE`], or creates it (256 random bits, hex,
    /// `0600`, written atomically) on first start. `dir` must exist.
    pub fn load_or_create(dir: &Path) -> std::io::Result<InternalCredential> {
        let path = dir.join(Self::FILE);
        let password = match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().len() >= 32 => text.trim().to_owned(),
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is too short to be a broker password: delete it and restart (a new one is generated)",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let password = hex::encode(rand::random::<[u8; 32]>());
                edgefleet_files::write_private(&path, password.as_bytes())?;
                password
            }
            Err(e) => return Err(e),
        };
        Ok(InternalCredential {
            username: Self::USERNAME.to_owned(),
            password,
        })
    }
}

/// Broker limits. The defaults are chosen for a plant gateway with up to ~10k agents; see
/// ARCHITECTURE.md ("Broker settings") for the measurements behind them.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// rumqttd's own listener. Keep it on loopback. Port 0 lets the kernel pick one;
    /// [`BrokerHandle::listen_addr`] tells which.
    pub mqtt_listen: SocketAddr,
    /// Required of every client by rumqttd (CONNACK 4 otherwise). `None`: anonymous clients
    /// are accepted (`edgefleet broker`, benchmarks); the gateway always sets it.
    pub credential: Option<InternalCredential>,
    /// Most concurrent connections the router accepts.
    pub max_connections: usize,
    /// Largest PUBLISH payload accepted (a desired document with many stacks can be large).
    pub max_payload_bytes: usize,
    /// Unacknowledged QoS1 messages per connection. rumqttd's sample default (100) lost
    /// fan-out at 2k+ subscribers in our probe (SPEC.md §11); 1000 did not at 2k.
    pub max_inflight: usize,
    /// Messages the router forwards to one connection per scheduling round (sample: 200).
    /// For a QoS 0 subscription it is also the most retained messages rumqttd replays on
    /// subscribe (a QoS 1 one gets at most 100, a constant): the front carries integrators'
    /// subscriptions at QoS 0, so this is how many retained statuses an integrator sees.
    pub max_outgoing_packets: u64,
    /// Pause after every accepted connection. rumqttd's sample config uses 1 ms, which caps
    /// the accept rate of a reconnect storm; we use 0.
    pub next_connection_delay_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            credential: None,
            max_connections: 20_000,
            max_payload_bytes: edgefleet_protocol::MAX_PAYLOAD_BYTES + 64 * 1024,
            max_inflight: 1000,
            max_outgoing_packets: 20_000,
            next_connection_delay_ms: 0,
        }
    }
}

impl BrokerConfig {
    /// rumqttd's configuration for listening on `listen` (the reserved address, real port)
    /// with the thread names of `threads`.
    fn to_rumqttd(&self, listen: SocketAddr, threads: &BrokerThreads) -> Config {
        let connections = ConnectionSettings {
            // Time a client has to send CONNECT after TCP accept.
            connection_timeout_ms: 10_000,
            max_payload_size: self.max_payload_bytes,
            max_inflight_count: self.max_inflight,
            auth: self
                .credential
                .as_ref()
                .map(|c| HashMap::from([(c.username.clone(), c.password.clone())])),
            external_auth: None,
            dynamic_filters: true,
        };
        let server = ServerSettings {
            name: threads.server(),
            listen,
            tls: None,
            next_connection_delay_ms: self.next_connection_delay_ms,
            connections,
        };
        let router = RouterConfig {
            max_connections: self.max_connections,
            max_outgoing_packet_count: self.max_outgoing_packets,
            // Each filter keeps a commit log of at most count × size bytes in memory, and every
            // message in it also pins the 8 KiB read chunk of rumqttd's that it was parsed
            // from. At 8 MiB × 4 the logs held every status and event of a rollout: 16 KiB
            // per device after one rollout at 2,000 devices (heaptrack, BENCHMARKS.md
            // "Fleet"). 2 MiB × 4 bounds a filter at 8 MiB: a consumer that falls further
            // behind on one filter loses the oldest messages, 0.6 s of lag at 20,000 statuses
            // a second, against a fan-in p99 of 5–64 ms measured at that rate.
            max_segment_size: 2 * 1024 * 1024,
            max_segment_count: 4,
            ..RouterConfig::default()
        };
        Config {
            id: threads.router_id(),
            router,
            v4: Some(HashMap::from([("1".to_owned(), server)])),
            ..Config::default()
        }
    }
}

/// A running embedded broker. Cloning it is cheap; dropping it changes nothing (the broker
/// lives as long as the process).
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    listen: SocketAddr,
    signal: Arc<StopSignal>,
}

impl BrokerHandle {
    /// The address the listener is bound to, with the real port when started on port 0.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Address clients should connect to (loopback when listening on all interfaces).
    pub fn connect_addr(&self) -> SocketAddr {
        connect_addr(self.listen)
    }

    /// Resolves, with the reason, once the broker is dead: one of its threads panicked (the
    /// router, the listener and its connections, or the thread running `Broker::start()`), or
    /// every listener ended. It never comes back: exit the process. Resolves at once if that
    /// already happened; any number of these futures may wait.
    pub fn stopped(&self) -> impl Future<Output = String> + Send + 'static {
        self.signal.stopped()
    }
}

/// Address a local client uses to reach a listener (`0.0.0.0` → `127.0.0.1`, `::` → `::1`).
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    match addr {
        SocketAddr::V4(_) if addr.ip().is_unspecified() => {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        SocketAddr::V6(_) if addr.ip().is_unspecified() => {
            addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into());
        }
        _ => {}
    }
    addr
}

/// Starts the broker on a dedicated thread and returns once its listener accepts TCP
/// connections. `config.mqtt_listen` may have port 0. Blocking (up to 10 s): call it from a
/// blocking context (`spawn_blocking`).
///
/// rumqttd binds its listener itself, so the address is first held by a
/// [`PortReservation`] (bound, `SO_REUSEADDR`, not listening) that rumqttd can bind over and
/// nobody else can take, and released once rumqttd accepts on it. An address something
/// already listens on is refused at once with [`BrokerError::Bind`].
pub fn start(config: &BrokerConfig) -> Result<BrokerHandle, BrokerError> {
    let requested = config.mqtt_listen;
    let reservation = PortReservation::new(requested).map_err(|source| BrokerError::Bind {
        addr: requested,
        source,
    })?;
    let listen = reservation.addr();
    let threads = BrokerThreads::next();
    launch(config.to_rumqttd(listen, &threads), &threads, reservation)
}

/// Runs rumqttd with `rumqttd_config` (which listens on `reservation`'s address) under
/// supervision, and waits until it accepts.
fn launch(
    rumqttd_config: Config,
    threads: &BrokerThreads,
    reservation: PortReservation,
) -> Result<BrokerHandle, BrokerError> {
    let listen = reservation.addr();
    let signal = StopSignal::new();
    // Before any of the threads exists: rumqttd's router starts in `Broker::new`.
    supervision::watch_broker_threads(threads, &signal);
    let on_exit = signal.clone();
    thread::Builder::new()
        .name(threads.supervisor())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(rumqttd_config);
            // Returns only once every listener thread has ended (rumqttd logs why).
            let reason = match broker.start() {
                Ok(()) => "every listener of the embedded broker ended".to_owned(),
                // rumqttd's `Display` drops the detail (`Error::Config` says "Invalid configuration").
                Err(e) => format!("the embedded broker could not run: {e:?}"),
            };
            tracing::error!(%reason, "embedded MQTT broker stopped");
            on_exit.stop(reason);
        })
        .map_err(BrokerError::Thread)?;
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some(reason) = signal.reason() {
            return Err(BrokerError::Stopped {
                addr: listen,
                reason,
            });
        }
        if reservation.is_listened_on() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(BrokerError::NotReady(listen));
        }
        thread::sleep(Duration::from_millis(20));
    }
    // rumqttd listens: from now on the address is in use for everyone else.
    drop(reservation);
    tracing::info!(%listen, "embedded MQTT broker listening");
    Ok(BrokerHandle { listen, signal })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_addr_goes_to_loopback_for_unspecified_addresses() {
        let v4: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(connect_addr(v4), "127.0.0.1:1883".parse().unwrap());
        let v6: SocketAddr = "[::]:1883".parse().unwrap();
        assert_eq!(connect_addr(v6), "[::1]:1883".parse().unwrap());
        let given: SocketAddr = "10.0.0.5:1883".parse().unwrap();
        assert_eq!(connect_addr(given), given);
    }

    /// A rumqttd whose `Broker::start()` returns (here: no listener configured, so it returns
    /// at once) is reported as stopped, and `start` says so instead of waiting 10 s.
    #[test]
    fn a_broker_whose_listeners_end_is_stopped() {
        let threads = BrokerThreads::next();
        let reservation = PortReservation::new("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = Config {
            id: threads.router_id(),
            v4: None,
            ..Config::default()
        };
        let started = Instant::now();
        let err = launch(config, &threads, reservation).unwrap_err();
        assert!(
            started.elapsed() < READY_WITHIN / 2,
            "{:?}",
            started.elapsed()
        );
        match err {
            BrokerError::Stopped { reason, .. } => {
                assert!(reason.contains("Atleast one server config"), "{reason}");
            }
            other => panic!("expected Stopped, got {other}"),
        }
    }
}
