//! The network front: the TLS listener devices and integrators connect to (default `:8883`),
//! and the plain loopback listener local MQTT users connect to ([`FrontHandle::serve_plain`]).
//!
//! It terminates TLS (client certificate required, signed by our CA: [`crate::pki`]) and takes
//! the identity from the certificate — or, on the plain listener, from the local user named
//! in CONNECT — and relays MQTT v3.1.1 to rumqttd's internal loopback listener (presenting
//! [`FrontConfig::upstream_login`]), checking every packet from the client against
//! `edgefleet_protocol::acl` (rules and the topic shapes rumqttd cannot take):
//! - the TLS handshake runs in the connection's own task under `handshake_timeout`: an idle
//!   socket never delays anyone else (rumqttd's own TLS listener handshakes inside its accept
//!   loop, so one idle socket stalls every new connection);
//! - CONNECT must arrive within `connect_timeout`, be MQTT 3.1.1 (anything else gets CONNACK
//!   "unacceptable protocol version" and is closed, so a v5 packet never reaches rumqttd), use
//!   the identity's client id (`acl::check_client_id`) and carry an allowed will; username and
//!   password are stripped;
//! - a PUBLISH outside the identity's topics, or with an empty payload on a state topic, closes
//!   the connection (MQTT 3.1.1 has no negative PUBACK) — except for a local user without a
//!   role, whose refused PUBLISH is acknowledged and dropped, as Mosquitto does; refused
//!   SUBSCRIBE filters get return code 0x80 and never reach the broker; an oversize or
//!   malformed packet closes that connection only;
//! - a local user without a role may subscribe more broadly than it may read (`#`): every
//!   delivery it may not read ([`acl::LocalGrants::may_read`]: never `edgefleet/` or `$`) is
//!   acknowledged to rumqttd by the front and never reaches it;
//! - the CONNECT is relayed, and nothing else happens until rumqttd's CONNACK is read: the
//!   upstream socket is never closed between the two (rumqttd 0.20 issue #1062);
//! - when the client goes away without DISCONNECT (or is refused or revoked), the upstream
//!   socket is dropped without DISCONNECT, so rumqttd fires the client's last will (device
//!   presence relies on it); a DISCONNECT from the client is forwarded, and then rumqttd
//!   closes the upstream connection first (if the front closed it first, rumqttd 0.20 could
//!   report that disconnect again under a connection id already given to the next client,
//!   and cut that client off).
//!
//! rumqttd keeps all session handling (keepalive, wills, retained messages, QoS). Why a proxy
//! and not a link into rumqttd's router: ARCHITECTURE.md, "Network front".
//!
//! ## How to wire (gateway)
//!
//! Keep the embedded broker's plain listener on loopback, load the PKI, bind the TLS listener
//! (port 0 allowed: report `local_addr()`), start the front on the same tokio runtime,
//! re-apply stored revocations through [`FrontConfig`], audit [`FrontEvent`]s, and treat the
//! front as essential:
//!
//! ```text
//! let broker = spawn_blocking(move || edgefleet_broker::start(&BrokerConfig { mqtt_listen: "127.0.0.1:0".parse()?, ..Default::default() })).await??;
//! let pki = Pki::load_or_create(&data_dir.join("pki"), &config.server_names)?;
//! let listener = front::bind(config.mqtts_listen).await?;   // FrontError::Bind says what to do
//! let mqtts_addr = listener.local_addr()?;                   // the real port
//! let mut front_config = FrontConfig::new(broker.connect_addr());
//! front_config.revoked_serials = store.revoked_serials()?;
//! let front = start_front(listener, front_config, pki.server_tls_config())?;
//! let mut events = front.subscribe_events(); // audit FrontEventKind::Refused
//! let front_stopped = front.stopped();          // 'static: spawn it, select on it
//! tasks.spawn(async move { let reason = front_stopped.await; /* log it, cancel the rest */ });
//! // enrolling: pki.issue_client(&Identity::Device(id), 365)?  → hand out cert, key, ca_pem
//! // decommissioning: store the serial, then front.revoke(&serial)
//! ```
//!
//! Supervised: the accept loop. [`FrontHandle::stopped`] resolves if it ends (the listener
//! failed for good: `EINVAL`, e.g. it was shut down) or panics; a transient accept error (out
//! of file descriptors, …) is retried after 100 ms. One connection's task failing ends only
//! that connection.
//!
//! Revocations live in memory only: the caller persists them. Dropping the [`FrontHandle`]
//! stops accepting and closes every relayed connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgefleet_protocol::acl::{self, Action, Denied, Identity};
use parking_lot::Mutex;
use rumqttd::protocol::v4::{self, V4};
use rumqttd::protocol::{
    Error as CodecError, Packet, Protocol, SubAck, Subscribe, SubscribeReasonCode,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::pki::identity_from_cert;
use crate::supervision::{self, StopSignal};

/// Largest packet accepted from rumqttd towards a client (the broker is trusted; this only
/// bounds memory if it misbehaves).
const MAX_UPSTREAM_PACKET: usize = 64 * 1024 * 1024;
/// The front's accept backlog. `TcpListener::bind` (mio) listens with 128, which a reconnect
/// storm of a few thousand devices overflows: the kernel then drops their SYNs and each client
/// retries after 1, 3, 7 s. The kernel caps it at `net.core.somaxconn` (4096 on current Linux).
const LISTEN_BACKLOG: u32 = 4096;
/// CONNACK return codes of MQTT 3.1.1.
const CONNACK_BAD_PROTOCOL: u8 = 0x01;
const CONNACK_BAD_CLIENT_ID: u8 = 0x02;
const CONNACK_UNAVAILABLE: u8 = 0x03;
const CONNACK_BAD_LOGIN: u8 = 0x04;
const CONNACK_NOT_AUTHORIZED: u8 = 0x05;
const SUBACK_FAILURE: u8 = 0x80;
/// After forwarding a client's DISCONNECT, how long the front waits for rumqttd to close the
/// upstream connection before closing it itself.
const DISCONNECT_GRACE: Duration = Duration::from_secs(5);
/// A client connection's read buffer to start with. A device's packets are small (a status is
/// well under 1 KiB) and the buffer grows for a larger one (`read_frame`); 4 KiB per device
/// was 10 % of a connected device's cost in the gateway (BENCHMARKS.md "Fleet").
const READ_BUFFER: usize = 512;

/// How the front treats clients, and where it relays them. The TLS listener itself is bound
/// by the caller and handed to [`start_front`] (see [`bind`]).
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// rumqttd's internal listener (loopback) every accepted connection is relayed to.
    pub upstream: SocketAddr,
    /// The internal listener's credential, put into every CONNECT relayed upstream (the
    /// client's own user name and password never reach rumqttd). `None`: the broker takes
    /// anonymous connections (a broker started without [`crate::BrokerConfig::credential`]).
    pub upstream_login: Option<crate::InternalCredential>,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has, after the handshake, to send CONNECT.
    pub connect_timeout: Duration,
    /// Largest packet (remaining length) accepted from a client; larger closes the connection.
    pub max_packet_bytes: usize,
    /// Certificate serials (lowercase hex) refused from the start.
    pub revoked_serials: Vec<String>,
    /// Identities refused from the start, whatever their certificate.
    pub revoked_identities: Vec<Identity>,
    /// `Some`: only certificates with one of these serials (lowercase hex) are admitted — the
    /// serials the gateway's store recorded when it issued them; more are added with
    /// [`FrontHandle::admit_serial`]. A certificate signed by the CA but missing from the
    /// store (its record lost, or a store restored from an older backup) could never be
    /// revoked, so it is refused. `None`: any certificate of the CA (tests, tools).
    pub issued_serials: Option<Vec<String>>,
    /// Most TLS handshakes in progress at once (on the plain listener: connections that have
    /// not sent CONNECT yet). A connection beyond it waits for a place (see
    /// `max_waiting_handshakes`), so a flood of idle sockets costs a bounded amount of memory;
    /// each pending one still waits at most `handshake_timeout` (plain: `connect_timeout`).
    pub max_pending_handshakes: usize,
    /// Of those, most from one source address: one host opening idle sockets (a scanner, a
    /// broken client refreshing them) fills its share and no more, so devices elsewhere
    /// still get a handshake.
    pub max_pending_per_address: usize,
    /// Connections over those caps wait for a place, first come first served, for at most
    /// `max_handshake_wait`: a plant behind one NAT address reconnecting after a gateway
    /// restart is served as fast as the handshakes run, instead of being closed at accept
    /// and sent to its next back-off round. At most this many wait per listener …
    pub max_waiting_handshakes: usize,
    /// … and at most this many from one address; a connection beyond these is closed at
    /// accept (reported). One host holds at most `max_pending_per_address` +
    /// `max_waiting_per_address` of the front's open files, each for at most
    /// `max_handshake_wait` + `handshake_timeout`.
    pub max_waiting_per_address: usize,
    /// How long a connection waits for a place among the pending handshakes before it is
    /// closed (reported).
    pub max_handshake_wait: Duration,
    /// A client may ask for no keepalive (0, legal in MQTT 3.1.1); rumqttd 0.20 closes such a
    /// CONNECT without CONNACK. The front then asks rumqttd for this keepalive instead and
    /// keeps the upstream session alive itself (a PINGREQ every half of it, whose PINGRESP
    /// the client never sees), so the client gets what it asked for.
    pub keepalive_for_silent: Duration,
    /// Open files the front's client sessions may hold at once, over all its listeners: a
    /// device on the hub holds one (its socket), a relayed client three in this process
    /// (its socket, the front's upstream socket and rumqttd's end of it). A connection
    /// that does not fit is closed at accept, before any handshake (a relayed one that fits
    /// its socket but not its upstream gets CONNACK 0x03), with one warning per 10 s
    /// however many. The gateway sets it from its open-files limit; without it, the
    /// process runs out of descriptors and rumqttd's accept loop spins on EMFILE.
    pub max_open_files: usize,
    /// Devices' sessions are terminated by the front and carried over the hub's two shared
    /// upstream connections (`hub.rs`) instead of one rumqttd connection each.
    pub device_hub: bool,
}

/// A local MQTT user an admin created, for the plain listener ([`FrontHandle::serve_plain`]):
/// its name (the CONNECT user name), the SHA-256 of its password (lowercase hex; passwords
/// are random, 256 bits, so a fast hash is enough), the identity it acts as and, for a user
/// without a role ([`Identity::Local`]), what it may read and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub name: String,
    pub password_sha256: String,
    pub identity: Identity,
    /// Applied only to [`Identity::Local`] (see [`acl::LocalGrants`]).
    pub grants: acl::LocalGrants,
}

impl LocalUser {
    /// The SHA-256 of `password` as [`LocalUser::password_sha256`] holds it.
    pub fn hash_password(password: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(password.as_bytes()))
    }

    /// The revocation key of this user's connections (see [`FrontHandle::revoke`]).
    fn serial(name: &str) -> String {
        format!("{}{name}", Self::SERIAL_PREFIX)
    }

    /// What [`LocalUser::serial`] starts with (no certificate serial does: those are hex).
    const SERIAL_PREFIX: &str = "local-user:";
}

impl FrontConfig {
    /// Defaults: 5 s handshake, 10 s to CONNECT, packets up to 1 MiB + 64 KiB (the broker's
    /// payload limit), nothing revoked.
    pub fn new(upstream: SocketAddr) -> FrontConfig {
        FrontConfig {
            upstream,
            upstream_login: None,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            max_packet_bytes: edgefleet_protocol::MAX_PAYLOAD_BYTES + 64 * 1024,
            revoked_serials: Vec::new(),
            revoked_identities: Vec::new(),
            issued_serials: None,
            max_pending_handshakes: 1024,
            max_pending_per_address: 256,
            max_waiting_handshakes: 16_384,
            max_waiting_per_address: 4096,
            max_handshake_wait: Duration::from_secs(10),
            keepalive_for_silent: Duration::from_secs(60),
            max_open_files: 150_000,
            device_hub: true,
        }
    }
}

impl Default for FrontConfig {
    /// Relayed to `127.0.0.1:1883`.
    fn default() -> Self {
        FrontConfig::new(SocketAddr::from(([127, 0, 0, 1], 1883)))
    }
}

#[derive(Debug, Error)]
pub enum FrontError {
    #[error(
        "cannot listen for MQTT over TLS on {addr}: {source} (is another broker already running there? choose another address with --mqtts-listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the TLS listener handed to the front is unusable: {0}")]
    Listener(std::io::Error),
}

/// Something that happened on the front, for audit (see [`FrontHandle::subscribe_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontEvent {
    /// `None` until the peer certificate has been read.
    pub identity: Option<Identity>,
    pub peer: SocketAddr,
    pub kind: FrontEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontEventKind {
    /// CONNECT passed the policy and was relayed to the broker.
    Connected,
    /// A relayed connection ended; `reason` says how (client closed, refused, revoked, …).
    Disconnected { reason: String },
    /// The policy refused something. `topic` is the topic, filter or (for
    /// [`Action::Connect`]) client id or serial. A refused CONNECT or PUBLISH also closes the
    /// connection; a refused SUBSCRIBE filter only gets return code 0x80.
    Refused {
        action: Action,
        topic: String,
        reason: String,
    },
    /// No usable TLS session: timeout, no or untrusted certificate, not an edgefleet identity.
    HandshakeFailed { reason: String },
}

/// The running front. Dropping it stops accepting and closes every relayed connection.
#[derive(Debug)]
pub struct FrontHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    config: Arc<FrontConfig>,
    accepts: Mutex<Vec<AbortHandle>>,
    signal: Arc<StopSignal>,
}

impl FrontHandle {
    /// The address the TLS listener is bound to (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Resolves, with the reason, once the accept loop is gone: it ended because the listener
    /// failed for good, it panicked, or this handle was dropped. No new client can connect
    /// after that; the gateway should exit. Resolves at once if that already happened.
    pub fn stopped(&self) -> impl Future<Output = String> + Send + 'static {
        self.signal.stopped()
    }

    /// Refuses the certificate with this serial (lowercase hex, as in
    /// [`crate::pki::IssuedCert::serial`]) from now on, and closes its live connections
    /// without DISCONNECT, so the broker publishes their wills. Returns how many were closed.
    pub fn revoke(&self, serial: &str) -> usize {
        let serial = serial.to_ascii_lowercase();
        let mut state = self.shared.state.lock();
        let closed = state.close_where(|live| live.serial == serial);
        state.revoked_serials.insert(serial);
        closed
    }

    /// Admits the certificate with this serial from now on (when the front checks issued
    /// serials: [`FrontConfig::issued_serials`]); the caller records it in its store first.
    pub fn admit_serial(&self, serial: &str) {
        if let Some(issued) = &mut self.shared.state.lock().issued_serials {
            issued.insert(serial.to_ascii_lowercase());
        }
    }

    /// Refuses every certificate of `identity` from now on and closes its live connections
    /// (wills fire). Returns how many were closed.
    pub fn revoke_identity(&self, identity: &Identity) -> usize {
        let mut state = self.shared.state.lock();
        let closed = state.close_where(|live| &live.identity == identity);
        state.revoked_identities.insert(identity.clone());
        closed
    }

    /// Connections currently relayed for `identity`.
    pub fn connections_of(&self, identity: &Identity) -> usize {
        self.shared
            .state
            .lock()
            .live
            .values()
            .filter(|l| &l.identity == identity)
            .count()
    }

    /// Events from now on. A receiver that falls more than 1024 events behind loses the
    /// oldest (`RecvError::Lagged`).
    pub fn subscribe_events(&self) -> broadcast::Receiver<FrontEvent> {
        self.shared.events.subscribe()
    }

    /// Also serves `listener` (bound by the caller, normally on loopback) as a **plain** MQTT
    /// listener: no TLS; each client proves who it is with the user name and password of a
    /// [`LocalUser`] (see [`FrontHandle::set_local_users`]) in its CONNECT, and is then
    /// confined exactly like a TLS client of that identity. A CONNECT without a known user
    /// gets CONNACK 4 (bad user name or password) or 5 (no credentials) and is closed. Its
    /// accept loop is supervised like the TLS one ([`FrontHandle::stopped`]).
    pub fn serve_plain(&self, listener: TcpListener) -> Result<SocketAddr, FrontError> {
        let addr = listener.local_addr().map_err(FrontError::Listener)?;
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::new(Entry::Plain),
            self.config.clone(),
            self.shared.clone(),
        ));
        self.accepts.lock().push(task.abort_handle());
        supervision::supervise_task(
            "the plain MQTT front's accept loop",
            task,
            self.signal.clone(),
        );
        info!(%addr, "MQTT plain front listening (local users only)");
        Ok(addr)
    }

    /// Replaces the local users the plain listener accepts. Live connections of a user that
    /// is gone, or whose password or identity changed, are closed (wills fire).
    pub fn set_local_users(&self, users: Vec<LocalUser>) -> usize {
        let mut state = self.shared.state.lock();
        let new: HashMap<String, LocalUser> =
            users.into_iter().map(|u| (u.name.clone(), u)).collect();
        let stale: HashSet<String> = state
            .local_users
            .iter()
            .filter(|(name, old)| new.get(*name) != Some(old))
            .map(|(name, _)| LocalUser::serial(name))
            .collect();
        state.local_users = new;
        state.close_where(|live| stale.contains(&live.serial))
    }
}

impl Drop for FrontHandle {
    fn drop(&mut self) {
        for accept in self.accepts.lock().drain(..) {
            accept.abort();
        }
        self.shared.stop.cancel();
        let mut state = self.shared.state.lock();
        state.closed = true;
        state.close_where(|_| true);
    }
}

/// Binds the TLS listener for [`start_front`] (port 0: the kernel picks one; read it with
/// `local_addr()`) on a deep accept backlog (4096), with an error that tells the operator what
/// to do.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, FrontError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().map_err(|source| FrontError::Bind { addr, source })
}

/// Starts accepting on `listener` (bound by the caller, e.g. with [`bind`]). `tls` must
/// require client certificates ([`crate::pki::Pki::server_tls_config`]). Must be called
/// within a tokio runtime: the accept loop and each connection are tasks on it.
pub fn start_front(
    listener: TcpListener,
    config: FrontConfig,
    tls: Arc<rustls::ServerConfig>,
) -> Result<FrontHandle, FrontError> {
    let local_addr = listener.local_addr().map_err(FrontError::Listener)?;
    let stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            revoked_serials: config
                .revoked_serials
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            revoked_identities: config.revoked_identities.iter().cloned().collect(),
            issued_serials: config
                .issued_serials
                .as_ref()
                .map(|s| s.iter().map(|s| s.to_ascii_lowercase()).collect()),
            local_users: HashMap::new(),
            live: HashMap::new(),
            next_id: 0,
            closed: false,
        }),
        events: broadcast::channel(1024).0,
        sessions: Arc::new(tokio::sync::Semaphore::new(
            config
                .max_open_files
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
        full: Mutex::new((0, None)),
        hub: config.device_hub.then(|| {
            crate::hub::Hub::start(
                config.upstream,
                config.upstream_login.as_ref(),
                config.max_packet_bytes,
                stop.clone(),
            )
        }),
        stop,
    });
    let entry = Arc::new(Entry::Tls(TlsAcceptor::from(tls)));
    let config = Arc::new(config);
    let accept = tokio::spawn(accept_loop(listener, entry, config.clone(), shared.clone()));
    let abort = accept.abort_handle();
    let signal = StopSignal::new();
    supervision::supervise_task("the TLS front's accept loop", accept, signal.clone());
    info!(%local_addr, "MQTT TLS front listening");
    Ok(FrontHandle {
        local_addr,
        shared,
        config,
        accepts: Mutex::new(vec![abort]),
        signal,
    })
}

#[derive(Debug)]
struct Shared {
    /// `parking_lot`: no poisoning, so a panic in one connection's task (which never holds
    /// this across anything that can leave the sets half-changed) does not stop the others.
    state: Mutex<State>,
    events: broadcast::Sender<FrontEvent>,
    /// One permit per open file of a client session ([`FrontConfig::max_open_files`]).
    sessions: Arc<tokio::sync::Semaphore>,
    /// Connections closed at the session limit since the last warning, and when that was.
    full: Mutex<(u64, Option<std::time::Instant>)>,
    /// Carries device sessions when [`FrontConfig::device_hub`].
    hub: Option<Arc<crate::hub::Hub>>,
    /// Stops the hub's connections when the front goes.
    stop: CancellationToken,
}

#[derive(Debug)]
struct State {
    revoked_serials: HashSet<String>,
    /// See [`FrontConfig::issued_serials`].
    issued_serials: Option<HashSet<String>>,
    revoked_identities: HashSet<Identity>,
    /// The plain listener's users, by name.
    local_users: HashMap<String, LocalUser>,
    live: HashMap<u64, Live>,
    next_id: u64,
    /// Set when the handle is dropped: handshakes still in flight are not admitted.
    closed: bool,
}

#[derive(Debug)]
struct Live {
    identity: Identity,
    serial: String,
    cancel: CancellationToken,
}

impl State {
    fn close_where(&mut self, mut pred: impl FnMut(&Live) -> bool) -> usize {
        let mut n = 0;
        for live in self.live.values().filter(|l| pred(l)) {
            live.cancel.cancel();
            n += 1;
        }
        n
    }
}

impl Shared {
    /// A session permit, or `None` at the limit (counted, and warned about at most once
    /// every 10 s: a storm at the limit must not become a log storm).
    fn session_permit(&self, n: u32, max: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(p) = self.sessions.clone().try_acquire_many_owned(n) {
            return Some(p);
        }
        let mut full = self.full.lock();
        full.0 += 1;
        let now = std::time::Instant::now();
        if full
            .1
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            warn!(
                limit = max,
                closed = full.0,
                "the front's sessions hold all the open files it may use: connections closed (the limit follows the open-files limit: raise LimitNOFILE / ulimit -Hn for more)"
            );
            *full = (0, Some(now));
        }
        None
    }

    fn emit(&self, identity: Option<&Identity>, peer: SocketAddr, kind: FrontEventKind) {
        let who = identity.map_or_else(|| "unknown".to_owned(), ToString::to_string);
        match &kind {
            FrontEventKind::Connected => info!(identity = %who, %peer, "client connected"),
            FrontEventKind::Disconnected { reason } => {
                info!(identity = %who, %peer, %reason, "client disconnected");
            }
            FrontEventKind::Refused {
                action,
                topic,
                reason,
            } => warn!(identity = %who, %peer, %action, %topic, %reason, "refused"),
            FrontEventKind::HandshakeFailed { reason } => {
                warn!(%peer, %reason, "TLS handshake failed");
            }
        }
        let _ = self.events.send(FrontEvent {
            identity: identity.cloned(),
            peer,
            kind,
        });
    }

    fn refused(&self, identity: &Identity, peer: SocketAddr, denied: Denied) {
        self.emit(
            Some(identity),
            peer,
            FrontEventKind::Refused {
                action: denied.action,
                topic: denied.topic,
                reason: denied.reason,
            },
        );
    }

    /// Registers a live connection, unless its serial or identity is revoked. Checked and
    /// inserted under one lock, so a revocation cannot slip between the two.
    fn register(
        self: &Arc<Self>,
        identity: &Identity,
        serial: &str,
    ) -> Result<Registration, &'static str> {
        let mut state = self.state.lock();
        if state.closed {
            return Err("the front is shutting down");
        }
        if state.revoked_serials.contains(serial) {
            return Err("certificate revoked");
        }
        let local = serial.starts_with(LocalUser::SERIAL_PREFIX);
        if !local
            && state
                .issued_serials
                .as_ref()
                .is_some_and(|issued| !issued.contains(serial))
        {
            return Err("certificate unknown to this gateway's store (enroll the device again)");
        }
        if state.revoked_identities.contains(identity) {
            return Err("identity revoked");
        }
        let id = state.next_id;
        state.next_id += 1;
        let cancel = CancellationToken::new();
        state.live.insert(
            id,
            Live {
                identity: identity.clone(),
                serial: serial.to_owned(),
                cancel: cancel.clone(),
            },
        );
        Ok(Registration {
            shared: self.clone(),
            id,
            cancel,
        })
    }
}

/// A live connection's entry; removed when the connection task ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
    cancel: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.state.lock().live.remove(&self.id);
    }
}

/// Accepts until the listener fails for good; returns why.
async fn accept_loop(
    listener: TcpListener,
    entry: Arc<Entry>,
    config: Arc<FrontConfig>,
    shared: Arc<Shared>,
) -> String {
    let pending = Arc::new(Pending::new(config.max_pending_handshakes));
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let Some(session) = shared.session_permit(1, config.max_open_files) else {
                    drop(tcp);
                    continue;
                };
                let ticket = match pending.admit(peer, &config) {
                    Ok(ticket) => ticket,
                    Err(reason) => {
                        drop(tcp);
                        shared.emit(None, peer, FrontEventKind::HandshakeFailed { reason });
                        continue;
                    }
                };
                // Never await anything per connection here: the wait for a place and the
                // handshake run in the connection's task.
                let (config, shared, entry) = (config.clone(), shared.clone(), entry.clone());
                tokio::spawn(async move {
                    let slot = match ticket.slot(config.max_handshake_wait).await {
                        Ok(slot) => slot,
                        Err(reason) => {
                            drop(tcp);
                            shared.emit(None, peer, FrontEventKind::HandshakeFailed { reason });
                            return;
                        }
                    };
                    match &*entry {
                        Entry::Tls(acceptor) => {
                            let acceptor = acceptor.clone();
                            Box::pin(serve(tcp, peer, acceptor, config, shared, (slot, session)))
                                .await
                        }
                        Entry::Plain => {
                            Box::pin(serve_plain(tcp, peer, config, shared, (slot, session))).await
                        }
                    }
                });
            }
            // EINVAL: the socket is not listening any more (shut down); nothing will ever be
            // accepted again.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                warn!(error = %e, "the TLS front's listener failed; no more connections");
                return format!("the listener failed: {e}");
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                warn!(error = %e, "cannot accept a connection on the TLS front");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The pending handshakes of one listener (on the plain listener: connections that have not
/// sent CONNECT yet) and the connections waiting for a place among them.
struct Pending {
    /// Places among the listener's pending handshakes.
    slots: Arc<tokio::sync::Semaphore>,
    queue: Mutex<Queue>,
}

/// Who holds or waits for a place, per source address.
#[derive(Default)]
struct Queue {
    /// Each address's share of the places, and how many of its connections hold or wait
    /// for one.
    by_address: HashMap<std::net::IpAddr, (Arc<tokio::sync::Semaphore>, usize)>,
    /// Connections holding or waiting for a place, over all addresses.
    members: usize,
}

impl Pending {
    fn new(places: usize) -> Pending {
        Pending {
            slots: Arc::new(tokio::sync::Semaphore::new(places)),
            queue: Mutex::default(),
        }
    }

    /// Admits a connection just accepted to the queue for a place, or says why it is closed
    /// at once: its address, or the listener, already has as many connections pending and
    /// waiting as it may.
    fn admit(self: &Arc<Self>, peer: SocketAddr, config: &FrontConfig) -> Result<Ticket, String> {
        let ip = peer.ip();
        let mut queue = self.queue.lock();
        if queue.members >= config.max_pending_handshakes + config.max_waiting_handshakes {
            return Err(format!(
                "{} handshakes already pending and {} waiting: connection closed at accept",
                config.max_pending_handshakes, config.max_waiting_handshakes
            ));
        }
        let (share, members) = queue.by_address.entry(ip).or_insert_with(|| {
            let share = tokio::sync::Semaphore::new(config.max_pending_per_address);
            (Arc::new(share), 0)
        });
        if *members >= config.max_pending_per_address + config.max_waiting_per_address {
            return Err(format!(
                "{} handshakes already pending and {} waiting from {ip}: connection closed at accept",
                config.max_pending_per_address, config.max_waiting_per_address
            ));
        }
        *members += 1;
        let share = share.clone();
        queue.members += 1;
        // The places free now are taken here, in the order the kernel handed the connections
        // to accept; only a connection that finds none waits, in its own task.
        let address = share.clone().try_acquire_owned().ok();
        let listener = address
            .as_ref()
            .and_then(|_| self.slots.clone().try_acquire_owned().ok());
        Ok(Ticket {
            pending: self.clone(),
            ip,
            share,
            address,
            listener,
        })
    }
}

/// A connection's membership of its listener's queue, given back when dropped: after the
/// handshake (or CONNECT, on the plain listener), or when it fails or gives up waiting.
struct Ticket {
    pending: Arc<Pending>,
    ip: std::net::IpAddr,
    share: Arc<tokio::sync::Semaphore>,
    /// Places taken at accept, if they were free.
    address: Option<tokio::sync::OwnedSemaphorePermit>,
    listener: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Ticket {
    /// The places taken at accept, or waits, first come first served, for those missing: a
    /// place in the address's share and then in the listener's, at most `wait`.
    async fn slot(mut self, wait: Duration) -> Result<PendingSlot, String> {
        let (address, listener) = (self.address.take(), self.listener.take());
        let (share, slots) = (self.share.clone(), self.pending.slots.clone());
        let take = async move {
            let address = match address {
                Some(p) => p,
                None => share.acquire_owned().await.ok()?,
            };
            let listener = match listener {
                Some(p) => p,
                None => slots.acquire_owned().await.ok()?,
            };
            Some((address, listener))
        };
        match timeout(wait, take).await {
            Ok(Some((address, listener))) => Ok(PendingSlot {
                _places: (address, listener),
                _ticket: self,
            }),
            _ => Err(format!(
                "no place among the pending handshakes within {} ms (from {}): connection closed",
                wait.as_millis(),
                self.ip
            )),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut queue = self.pending.queue.lock();
        queue.members -= 1;
        if let Some((_, members)) = queue.by_address.get_mut(&self.ip) {
            *members -= 1;
            if *members == 0 {
                queue.by_address.remove(&self.ip);
            }
        }
    }
}

/// A connection's place among the pending handshakes (its address's share and the
/// listener's), given back when dropped.
struct PendingSlot {
    _places: (
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    ),
    _ticket: Ticket,
}

/// How clients come in on a listener.
enum Entry {
    /// TLS with a client certificate: the identity is the certificate's.
    Tls(TlsAcceptor),
    /// Plain TCP: the identity is the local user named in CONNECT.
    Plain,
}

/// A client stream the front relays (TLS or plain TCP).
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for S {}

/// How a relayed connection ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT (forwarded): no will.
    Clean,
    /// Anything else: the upstream socket is dropped without DISCONNECT, the will fires.
    Dropped(String),
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    config: Arc<FrontConfig>,
    shared: Arc<Shared>,
    (pending, _session): (PendingSlot, tokio::sync::OwnedSemaphorePermit),
) {
    let _ = tcp.set_nodelay(true);
    // Boxed, here and below: a connection's task is allocated once at the size of its largest
    // state, and it lives as long as the device is connected. Inline, the handshake's and the
    // relayed path's states made every device's task 8.4 KiB (heaptrack, BENCHMARKS.md
    // "Fleet"); boxed, each costs only while it runs.
    let handshake = timeout(config.handshake_timeout, Box::pin(acceptor.accept(tcp))).await;
    drop(pending);
    let tls = match handshake {
        Err(_) => {
            let reason = format!(
                "no TLS handshake within {} ms",
                config.handshake_timeout.as_millis()
            );
            shared.emit(None, peer, FrontEventKind::HandshakeFailed { reason });
            return;
        }
        Ok(Err(e)) => {
            let reason = e.to_string();
            shared.emit(None, peer, FrontEventKind::HandshakeFailed { reason });
            return;
        }
        Ok(Ok(tls)) => tls,
    };
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| identity_from_cert(c.as_ref()));
    let (identity, serial) = match peer_cert {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            let reason = e.to_string();
            shared.emit(None, peer, FrontEventKind::HandshakeFailed { reason });
            return;
        }
        None => {
            let reason = "no client certificate".to_owned();
            shared.emit(None, peer, FrontEventKind::HandshakeFailed { reason });
            return;
        }
    };
    let registration = match shared.register(&identity, &serial) {
        Ok(r) => r,
        Err(reason) => {
            let kind = FrontEventKind::Refused {
                action: Action::Connect,
                topic: format!("certificate {serial}"),
                reason: reason.to_owned(),
            };
            shared.emit(Some(&identity), peer, kind);
            return;
        }
    };
    let session = Session {
        identity,
        grants: None,
        peer,
        config,
        shared: shared.clone(),
    };
    relay(
        session,
        registration,
        Box::new(tls),
        BytesMut::with_capacity(READ_BUFFER),
    )
    .await;
}

/// The hub carrying device sessions, when this is a device and the front has one.
fn hub_for(session: &Session) -> Option<(Arc<crate::hub::Hub>, String)> {
    match &session.identity {
        Identity::Device(id) => Some((session.shared.hub.clone()?, id.clone())),
        _ => None,
    }
}

/// A plain-listener connection: its CONNECT names a local user, whose identity it gets.
async fn serve_plain(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Arc<FrontConfig>,
    shared: Arc<Shared>,
    (pending, _session): (PendingSlot, tokio::sync::OwnedSemaphorePermit),
) {
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let connect = timeout(
        config.connect_timeout,
        read_frame(&mut tcp, &mut buf, config.max_packet_bytes),
    )
    .await;
    drop(pending);
    let frame = match connect {
        Err(_) => {
            let reason = format!(
                "no CONNECT within {} ms",
                config.connect_timeout.as_millis()
            );
            shared.emit(None, peer, FrontEventKind::HandshakeFailed { reason });
            return;
        }
        Ok(Err(reason)) => {
            shared.emit(None, peer, FrontEventKind::HandshakeFailed { reason });
            return;
        }
        Ok(Ok(frame)) => frame,
    };
    let user = match local_user_of(&shared, &frame, config.max_packet_bytes) {
        Ok(user) => user,
        Err((code, reason)) => {
            if let Some(code) = code {
                let _ = write_flush(&mut tcp, &[0x20, 0x02, 0x00, code]).await;
            }
            shared.emit(None, peer, FrontEventKind::HandshakeFailed { reason });
            return;
        }
    };
    let registration = match shared.register(&user.identity, &LocalUser::serial(&user.name)) {
        Ok(r) => r,
        Err(reason) => {
            let _ = write_flush(&mut tcp, &[0x20, 0x02, 0x00, CONNACK_NOT_AUTHORIZED]).await;
            let kind = FrontEventKind::Refused {
                action: Action::Connect,
                topic: format!("local user {}", user.name),
                reason: reason.to_owned(),
            };
            shared.emit(Some(&user.identity), peer, kind);
            return;
        }
    };
    let grants = matches!(user.identity, Identity::Local(_)).then_some(user.grants);
    let session = Session {
        identity: user.identity,
        grants,
        peer,
        config,
        shared: shared.clone(),
    };
    // The CONNECT goes back in front of whatever followed it: the session reads it again.
    let mut first = frame;
    first.unsplit(buf);
    relay(session, registration, tcp, first).await;
}

/// The local user a plain CONNECT logs in as, or the CONNACK code (if any) and why not.
fn local_user_of(
    shared: &Shared,
    frame: &BytesMut,
    max: usize,
) -> Result<LocalUser, (Option<u8>, String)> {
    let mut copy = frame.clone();
    let login = match V4.read_mut(&mut copy, max) {
        Ok(Packet::Connect(_, _, _, _, login)) => login,
        Ok(_) => return Err((None, "first packet is not CONNECT".to_owned())),
        Err(CodecError::InvalidProtocolLevel(level)) => {
            return Err((
                Some(CONNACK_BAD_PROTOCOL),
                format!("MQTT protocol level {level} refused: only MQTT 3.1.1 is served"),
            ));
        }
        Err(e) => return Err((None, format!("malformed CONNECT: {e}"))),
    };
    let Some(login) = login else {
        return Err((
            Some(CONNACK_NOT_AUTHORIZED),
            "no user name and password: this listener takes only local MQTT users (edgefleet mqtt-user add)".to_owned(),
        ));
    };
    let state = shared.state.lock();
    match state.local_users.get(&login.username) {
        Some(user) if user.password_sha256 == LocalUser::hash_password(&login.password) => {
            Ok(user.clone())
        }
        _ => {
            let mut name: String = login.username.chars().take(64).collect();
            name.retain(|c| !c.is_control());
            Err((
                Some(CONNACK_BAD_LOGIN),
                format!("unknown local MQTT user '{name}' or wrong password"),
            ))
        }
    }
}

/// Relays an admitted connection until it ends or is revoked, then reports how it ended.
async fn relay<S: ClientStream>(
    session: Session,
    registration: Registration,
    stream: S,
    buf: BytesMut,
) {
    let cancel = registration.cancel.clone();
    let peer = session.peer;
    let shared = session.shared.clone();
    let end = match hub_for(&session) {
        Some((hub, device)) => tokio::select! {
            end = Box::pin(session.run_on_hub(&hub, &device, stream, buf)) => end,
            () = cancel.cancelled() => Some(End::Dropped("certificate or user revoked".to_owned())),
        },
        None => tokio::select! {
            end = Box::pin(session.run(stream, buf)) => end,
            () = cancel.cancelled() => Some(End::Dropped("certificate or user revoked".to_owned())),
        },
    };
    drop(registration);
    // Both sockets are closed by now (dropped with the futures above).
    if let Some(end) = end {
        let reason = match end {
            End::Clean => "client sent DISCONNECT".to_owned(),
            End::Dropped(reason) => reason,
        };
        shared.emit(
            Some(&session.identity),
            peer,
            FrontEventKind::Disconnected { reason },
        );
    }
}

struct Session {
    identity: Identity,
    /// A local user's read and write filters (`None`: a certificate or a role decides).
    grants: Option<acl::LocalGrants>,
    peer: SocketAddr,
    config: Arc<FrontConfig>,
    shared: Arc<Shared>,
}

/// Publishes a device session's last will when the session ends without DISCONNECT, however
/// it ends (also when its future is dropped: a revocation), detaches it from the hub and
/// tells a session waiting to take over that it may go on.
struct HubGuard {
    hub: Arc<crate::hub::Hub>,
    device: String,
    slot: Arc<crate::hub::Slot>,
    will: Option<rumqttd::protocol::LastWill>,
}

impl Drop for HubGuard {
    fn drop(&mut self) {
        self.hub.detach(&self.device, &self.slot);
        if let Some(will) = self.will.take() {
            let topic = String::from_utf8_lossy(&will.topic).into_owned();
            let qos = will.qos as u8;
            if !self.hub.try_publish(&topic, qos, will.retain, will.message) {
                warn!(device = %self.device, "the hub's queue is full: a last will was not published");
            }
        }
        self.slot.ended.cancel();
    }
}

impl Session {
    /// A device's session terminated here and carried over the hub (see `hub.rs`): CONNACK,
    /// keepalive, SUBSCRIBE and the acknowledgements are the front's; the device's PUBLISHes
    /// and will go up the hub's shared connection, its deliveries come from the hub.
    async fn run_on_hub<S: ClientStream>(
        &self,
        hub: &Arc<crate::hub::Hub>,
        device: &str,
        stream: S,
        buf: BytesMut,
    ) -> Option<End> {
        let (mut client_rd, mut client_wr) = tokio::io::split(stream);
        let mut buf = buf;
        let max = self.config.max_packet_bytes;
        let frame = self.read_connect(&mut client_rd, &mut buf).await?;
        let (connect, will) = match self.checked_connect(frame) {
            Ok((connect, will, _)) => (connect, will),
            Err((code, reason)) => {
                if let Some(code) = code {
                    let _ = write_flush(&mut client_wr, &[0x20, 0x02, 0x00, code]).await;
                }
                self.dropped_early(reason);
                return None;
            }
        };
        let (slot, old) = hub.attach(device);
        let mut guard = HubGuard {
            hub: hub.clone(),
            device: device.to_owned(),
            slot: slot.clone(),
            will,
        };
        if let Some(old) = old {
            // MQTT: a new connection with the same client id ends the old one. Its will goes
            // out before this session's CONNACK, so the device's next presence wins.
            old.cancel.cancel();
            let _ = timeout(Duration::from_secs(2), old.ended.cancelled()).await;
        }
        if let Err(e) = write_flush(&mut client_wr, &[0x20, 0x02, 0x00, 0x00]).await {
            return Some(End::Dropped(format!("client connection lost: {e}")));
        }
        self.shared
            .emit(Some(&self.identity), self.peer, FrontEventKind::Connected);
        // MQTT 3.1.1: one and a half keepalives without a packet and the session is over.
        let silence = (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
        let mut next_pkid: u16 = 0;
        let mut qos2_in = HashSet::new();
        let sync_topic = edgefleet_protocol::topics::TopicKind::DeviceSync.for_device(device);
        let mut last_heard = tokio::time::Instant::now();
        let end = loop {
            let read = async {
                match silence {
                    Some(limit) => tokio::time::timeout_at(
                        last_heard + limit,
                        read_frame(&mut client_rd, &mut buf, max),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "no packet within 1.5 × the keepalive of {} s",
                            connect.keep_alive
                        ))
                    }),
                    None => read_frame(&mut client_rd, &mut buf, max).await,
                }
            };
            let frame = tokio::select! {
                () = slot.cancel.cancelled() => {
                    break End::Dropped("a new connection of this device took over, or it read nothing".to_owned());
                }
                queued = slot.deliveries.next() => {
                    if queued.is_empty() {
                        continue;
                    }
                    // Everything queued goes in one write.
                    let mut out = Vec::new();
                    for d in &queued {
                        next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                        out.extend_from_slice(&crate::hub::encode_publish(d, next_pkid));
                    }
                    drop(queued);
                    if let Err(e) = write_flush(&mut client_wr, &out).await {
                        break End::Dropped(format!("client connection lost: {e}"));
                    }
                    continue;
                }
                f = read => match f {
                    Ok(f) => f,
                    Err(reason) => break End::Dropped(reason),
                },
            };
            last_heard = tokio::time::Instant::now();
            let raw = frame.clone().freeze();
            let mut frame = frame;
            let packet = match V4.read_mut(&mut frame, max) {
                Ok(p) => p,
                Err(e) => break End::Dropped(format!("malformed packet: {e}")),
            };
            let answer: Option<Vec<u8>> = match packet {
                Packet::Publish(publish, _) => {
                    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                        break End::Dropped("malformed packet: topic is not UTF-8".to_owned());
                    };
                    if let Err(denied) = self.check_publish(topic, publish.payload.len()) {
                        let reason = denied.to_string();
                        self.shared.refused(&self.identity, self.peer, denied);
                        break End::Dropped(reason);
                    }
                    let head = v4::check(raw.iter(), max).ok().and_then(|h| {
                        publish_head(&raw, h.fixed_header_len).map(|(q, _, p)| (q, p))
                    });
                    let Some((qos, pkid)) = head else {
                        break End::Dropped("malformed PUBLISH".to_owned());
                    };
                    if qos == 2 && !qos2_in.insert(pkid) {
                        // A resent QoS 2 PUBLISH we already took: only answer it again.
                        Some(ack_packet(PUBREC, pkid).to_vec())
                    } else {
                        if let Err(e) = hub
                            .publish(topic, qos, publish.retain, publish.payload.clone())
                            .await
                        {
                            break End::Dropped(e);
                        }
                        let mut out = match qos {
                            1 => ack_packet(PUBACK, pkid).to_vec(),
                            2 => ack_packet(PUBREC, pkid).to_vec(),
                            _ => Vec::new(),
                        };
                        if topic == sync_topic
                            && let Some(d) = hub.desired_for(&slot, device)
                        {
                            next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                            out.extend_from_slice(&crate::hub::encode_publish(&d, next_pkid));
                        }
                        (!out.is_empty()).then_some(out)
                    }
                }
                Packet::PubRel(pubrel, _) => {
                    qos2_in.remove(&pubrel.pkid);
                    Some(ack_packet(PUBCOMP, pubrel.pkid).to_vec())
                }
                Packet::Subscribe(subscribe, _) => {
                    let mut codes = Vec::with_capacity(subscribe.filters.len());
                    let mut replay = Vec::new();
                    for filter in &subscribe.filters {
                        match acl::check_subscribe(&self.identity, &filter.path) {
                            Ok(()) => {
                                let qos = (filter.qos as u8).min(1);
                                replay.extend(hub.subscribe(&slot, &filter.path, qos));
                                codes.push(Some(qos));
                            }
                            Err(denied) => {
                                self.shared.refused(&self.identity, self.peer, denied);
                                codes.push(Some(SUBACK_FAILURE));
                            }
                        }
                    }
                    let mut out = encode_suback(subscribe.pkid, &codes).to_vec();
                    for d in &replay {
                        next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                        out.extend_from_slice(&crate::hub::encode_publish(d, next_pkid));
                    }
                    Some(out)
                }
                Packet::Unsubscribe(unsubscribe, _) => {
                    if let Err(reason) = self.check_unsubscribe(&unsubscribe) {
                        break End::Dropped(reason);
                    }
                    for f in &unsubscribe.filters {
                        hub.unsubscribe(&slot, f);
                    }
                    let [hi, lo] = unsubscribe.pkid.to_be_bytes();
                    Some(vec![0xB0, 0x02, hi, lo])
                }
                Packet::PingReq(_) => Some(vec![0xD0, 0x00]),
                // Acknowledgements of the hub's deliveries: nothing waits for them.
                Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..) => None,
                Packet::Disconnect(..) => {
                    guard.will = None;
                    break End::Clean;
                }
                Packet::Connect(..) => {
                    break End::Dropped("protocol violation: second CONNECT".to_owned());
                }
                Packet::ConnAck(..)
                | Packet::SubAck(..)
                | Packet::UnsubAck(..)
                | Packet::PingResp(_) => {
                    break End::Dropped(
                        "protocol violation: server-only packet from client".to_owned(),
                    );
                }
            };
            if let Some(answer) = answer
                && let Err(e) = write_flush(&mut client_wr, &answer).await
            {
                break End::Dropped(format!("client connection lost: {e}"));
            }
        };
        drop(guard);
        Some(end)
    }
}

/// Refused SUBSCRIBEs waiting for the broker's SUBACK: per packet id, the return codes in the
/// client's order, `None` where the broker's codes go.
type PendingSubAcks = Mutex<HashMap<u16, Vec<Option<u8>>>>;

impl Session {
    /// Runs one connection until it ends; `buf` holds what was already read from the client.
    /// `None` when it ended before being relayed (the refusal was already reported).
    async fn run<S: ClientStream>(&self, stream: S, buf: BytesMut) -> Option<End> {
        let (mut client_rd, mut client_wr) = tokio::io::split(stream);
        let mut buf = buf;
        let frame = self.read_connect(&mut client_rd, &mut buf).await?;
        let (upstream_connect, front_pings) = match self.check_connect(frame) {
            Ok(checked) => checked,
            Err((code, reason)) => {
                if let Some(code) = code {
                    let _ = write_flush(&mut client_wr, &[0x20, 0x02, 0x00, code]).await;
                }
                self.dropped_early(reason);
                return None;
            }
        };
        // The upstream socket and rumqttd's end of it: two more open files.
        let Some(_upstream_files) = self.shared.session_permit(2, self.config.max_open_files)
        else {
            let error = "no open files left for another upstream connection".to_owned();
            return Some(self.unavailable(&mut client_wr, error).await);
        };
        let upstream = match timeout(
            self.config.connect_timeout,
            TcpStream::connect(self.config.upstream),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Some(self.unavailable(&mut client_wr, e.to_string()).await),
            Err(_) => return Some(self.unavailable(&mut client_wr, "timeout".to_owned()).await),
        };
        let _ = upstream.set_nodelay(true);
        let (mut up_rd, mut up_wr) = upstream.into_split();
        if let Err(e) = write_flush(&mut up_wr, &upstream_connect).await {
            return Some(self.unavailable(&mut client_wr, e.to_string()).await);
        }
        // Nothing else happens until rumqttd has answered: the upstream socket is never
        // closed between its CONNECT and its CONNACK, whatever the client does meanwhile.
        // (rumqttd 0.20 leaves a dead entry in its will handlers when writing the CONNACK
        // fails, and the next CONNECT with that client id then panics under their lock and
        // poisons it: every later connection of the listener panics. Upstream issue #1062.)
        let mut up_buf = BytesMut::with_capacity(16 * 1024);
        let connack = timeout(
            self.config.connect_timeout,
            read_frame(&mut up_rd, &mut up_buf, MAX_UPSTREAM_PACKET),
        )
        .await;
        let connack = match connack {
            Ok(Ok(frame)) if frame.len() == 4 && frame[0] == 0x20 => frame,
            Ok(Ok(_)) => {
                let error = "the broker did not answer CONNECT with CONNACK".to_owned();
                return Some(self.unavailable(&mut client_wr, error).await);
            }
            Ok(Err(e)) => {
                // rumqttd closes without CONNACK when the credential is wrong.
                let error = format!(
                    "the broker closed the connection before CONNACK (is the front's internal credential the broker's?): {e}"
                );
                return Some(self.unavailable(&mut client_wr, error).await);
            }
            Err(_) => {
                let error = "no CONNACK from the broker in time".to_owned();
                return Some(self.unavailable(&mut client_wr, error).await);
            }
        };
        match connack[3] {
            0 => {}
            CONNACK_BAD_LOGIN | CONNACK_NOT_AUTHORIZED => {
                let error = "the broker refused the front's internal credential".to_owned();
                return Some(self.unavailable(&mut client_wr, error).await);
            }
            code => {
                let _ = write_flush(&mut client_wr, &connack).await;
                return Some(End::Dropped(format!(
                    "the broker refused CONNECT (code {code})"
                )));
            }
        }
        if let Err(e) = write_flush(&mut client_wr, &connack).await {
            // The link exists in rumqttd now: dropping the socket ends it the normal way.
            return Some(End::Dropped(format!("client connection lost: {e}")));
        }
        self.shared
            .emit(Some(&self.identity), self.peer, FrontEventKind::Connected);

        let client_wr = tokio::sync::Mutex::new(client_wr);
        let up_wr = tokio::sync::Mutex::new(up_wr);
        let pending = PendingSubAcks::default();
        let own_pings = std::sync::atomic::AtomicUsize::new(0);
        let acks = Mutex::new(AckOrder::default());
        let to_client = broker_to_client(
            up_rd,
            up_buf,
            &client_wr,
            &up_wr,
            &pending,
            &own_pings,
            self.grants.as_ref().map(|g| (g, &acks)),
        );
        tokio::pin!(to_client);
        let end = tokio::select! {
            end = self.client_to_broker(client_rd, buf, &up_wr, &client_wr, &pending, &acks) => end,
            end = &mut to_client => end,
            end = ping_upstream(front_pings, &up_wr, &own_pings) => end,
        };
        if let End::Clean = end {
            // The DISCONNECT is forwarded: let rumqttd close first. Its router frees the
            // connection id on the DISCONNECT; if our socket closed before the link saw the
            // router let go, the link would report a disconnect for that id too, and by then
            // the id may belong to the next client, which rumqttd 0.20 would cut off (and fire
            // its will). `up_wr` is still open here; the broker closing ends `to_client`.
            let _ = timeout(DISCONNECT_GRACE, &mut to_client).await;
        }
        Some(end)
    }

    /// The client's first packet within the connect timeout, or `None` once the reason it
    /// did not come is reported.
    async fn read_connect<R: AsyncRead + Unpin>(
        &self,
        client_rd: &mut R,
        buf: &mut BytesMut,
    ) -> Option<BytesMut> {
        let connect = timeout(
            self.config.connect_timeout,
            read_frame(client_rd, buf, self.config.max_packet_bytes),
        )
        .await;
        match connect {
            Err(_) => {
                self.dropped_early(format!(
                    "no CONNECT within {} ms",
                    self.config.connect_timeout.as_millis()
                ));
                None
            }
            Ok(Err(e)) => {
                self.dropped_early(e);
                None
            }
            Ok(Ok(frame)) => Some(frame),
        }
    }

    fn dropped_early(&self, reason: String) {
        self.shared.emit(
            Some(&self.identity),
            self.peer,
            FrontEventKind::Disconnected { reason },
        );
    }

    async fn unavailable<S: ClientStream>(
        &self,
        client_wr: &mut WriteHalf<S>,
        error: String,
    ) -> End {
        let _ = write_flush(client_wr, &[0x20, 0x02, 0x00, CONNACK_UNAVAILABLE]).await;
        warn!(upstream = %self.config.upstream, %error, "cannot reach the broker behind the front");
        End::Dropped(format!("broker unreachable: {error}"))
    }

    /// Checks the CONNECT and returns it re-encoded for the broker (v3.1.1, the internal
    /// login) with how often the front must ping upstream itself (a client without
    /// keepalive), or the CONNACK code to answer (if any) and the reason.
    #[allow(clippy::type_complexity)]
    fn check_connect(
        &self,
        frame: BytesMut,
    ) -> Result<(BytesMut, Option<Duration>), (Option<u8>, String)> {
        let (connect, will, front_pings) = self.checked_connect(frame)?;
        let login = self
            .config
            .upstream_login
            .as_ref()
            .map(|c| rumqttd::protocol::Login {
                username: c.username.clone(),
                password: c.password.clone(),
            });
        let mut out = BytesMut::new();
        V4.write(Packet::Connect(connect, None, will, None, login), &mut out)
            .map_err(|e| (None, format!("cannot re-encode CONNECT: {e}")))?;
        Ok((out, front_pings))
    }

    /// The CONNECT, checked (client id, will), with a client id assigned if it had none and
    /// how often the front must ping upstream for a client without keepalive.
    #[allow(clippy::type_complexity)]
    fn checked_connect(
        &self,
        frame: BytesMut,
    ) -> Result<
        (
            rumqttd::protocol::Connect,
            Option<rumqttd::protocol::LastWill>,
            Option<Duration>,
        ),
        (Option<u8>, String),
    > {
        let mut frame = frame;
        let packet = match V4.read_mut(&mut frame, self.config.max_packet_bytes) {
            Ok(p) => p,
            Err(CodecError::InvalidProtocolLevel(level)) => {
                return Err((
                    Some(CONNACK_BAD_PROTOCOL),
                    format!("MQTT protocol level {level} refused: only MQTT 3.1.1 is served"),
                ));
            }
            Err(CodecError::InvalidProtocol) => {
                return Err((
                    Some(CONNACK_BAD_PROTOCOL),
                    "not MQTT 3.1.1 (protocol name is not MQTT)".to_owned(),
                ));
            }
            Err(e) => return Err((None, format!("malformed CONNECT: {e}"))),
        };
        let Packet::Connect(mut connect, _, will, _, _client_login) = packet else {
            return Err((None, "first packet is not CONNECT".to_owned()));
        };
        if connect.client_id.is_empty() {
            // MQTT-3.1.3-7/8: a zero-byte client id only with a clean session, and the server
            // then assigns one.
            if !connect.clean_session {
                return Err((
                    Some(CONNACK_BAD_CLIENT_ID),
                    "a zero-length client id needs a clean session (MQTT 3.1.1, 3.1.3-8)"
                        .to_owned(),
                ));
            }
            connect.client_id = format!("auto-{:016x}", rand::random::<u64>());
        }
        let front_pings = (connect.keep_alive == 0).then(|| {
            let secs = self.config.keepalive_for_silent.as_secs().clamp(2, 65_535);
            connect.keep_alive = u16::try_from(secs).unwrap_or(u16::MAX);
            Duration::from_secs(secs / 2)
        });
        if let Err(denied) = acl::check_client_id(&self.identity, &connect.client_id) {
            let reason = denied.to_string();
            self.shared.refused(&self.identity, self.peer, denied);
            return Err((Some(CONNACK_BAD_CLIENT_ID), reason));
        }
        if let Some(will) = &will {
            let topic = std::str::from_utf8(&will.topic)
                .map_err(|_| (None, "will topic is not UTF-8".to_owned()))?;
            if let Err(denied) = self.check_publish(topic, will.message.len()) {
                let reason = format!("last will refused: {denied}");
                self.shared.refused(&self.identity, self.peer, denied);
                return Err((Some(CONNACK_NOT_AUTHORIZED), reason));
            }
        }
        Ok((connect, will, front_pings))
    }

    async fn client_to_broker<S: ClientStream>(
        &self,
        mut client_rd: ReadHalf<S>,
        mut buf: BytesMut,
        up_wr: &tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
        client_wr: &tokio::sync::Mutex<WriteHalf<S>>,
        pending: &PendingSubAcks,
        acks: &Mutex<AckOrder>,
    ) -> End {
        let max = self.config.max_packet_bytes;
        // Packet ids of a local user's refused QoS 2 PUBLISHes, answered PUBREC by the front:
        // their PUBREL is answered here too, and never reaches the broker.
        let mut dropped_qos2 = HashSet::new();
        loop {
            let frame = match read_frame(&mut client_rd, &mut buf, max).await {
                Ok(f) => f,
                Err(reason) => return End::Dropped(reason),
            };
            let raw = frame.clone().freeze();
            let mut frame = frame;
            let packet = match V4.read_mut(&mut frame, max) {
                Ok(p) => p,
                Err(e) => return End::Dropped(format!("malformed packet: {e}")),
            };
            let forward: Bytes = match packet {
                Packet::Publish(publish, _) => {
                    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                        return End::Dropped("malformed packet: topic is not UTF-8".to_owned());
                    };
                    if let Err(denied) = self.check_publish(topic, publish.payload.len()) {
                        let reason = denied.to_string();
                        self.shared.refused(&self.identity, self.peer, denied);
                        if self.grants.is_none() {
                            return End::Dropped(reason);
                        }
                        // A local user's refused PUBLISH is acknowledged and dropped, as
                        // Mosquitto does: MQTT 3.1.1 has no refusal code for a PUBLISH.
                        let head = v4::check(raw.iter(), max)
                            .ok()
                            .and_then(|h| publish_head(&raw, h.fixed_header_len));
                        let ack = match head {
                            Some((1, _, pkid)) => ack_packet(PUBACK, pkid),
                            Some((2, _, pkid)) => {
                                dropped_qos2.insert(pkid);
                                ack_packet(PUBREC, pkid)
                            }
                            _ => continue,
                        };
                        if let Err(e) = write_flush(&mut *client_wr.lock().await, &ack).await {
                            return End::Dropped(format!("client connection lost: {e}"));
                        }
                        continue;
                    }
                    raw
                }
                Packet::PubRel(pubrel, _) if dropped_qos2.remove(&pubrel.pkid) => {
                    let ack = ack_packet(PUBCOMP, pubrel.pkid);
                    if let Err(e) = write_flush(&mut *client_wr.lock().await, &ack).await {
                        return End::Dropped(format!("client connection lost: {e}"));
                    }
                    continue;
                }
                Packet::Subscribe(subscribe, _) => {
                    match self.police_subscribe(subscribe, pending) {
                        SubscribeVerdict::Forward(None) => raw,
                        SubscribeVerdict::Forward(Some(bytes)) => bytes,
                        SubscribeVerdict::Answer(suback) => {
                            let mut client_wr = client_wr.lock().await;
                            if let Err(e) = write_flush(&mut *client_wr, &suback).await {
                                return End::Dropped(format!("client connection lost: {e}"));
                            }
                            continue;
                        }
                    }
                }
                Packet::Disconnect(..) => {
                    let _ = write_flush(&mut *up_wr.lock().await, &raw).await;
                    return End::Clean;
                }
                Packet::Unsubscribe(unsubscribe, _) => {
                    if let Err(reason) = self.check_unsubscribe(&unsubscribe) {
                        return End::Dropped(reason);
                    }
                    raw
                }
                Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..)
                    if self.grants.is_some() =>
                {
                    // A local user's acknowledgement of a delivery: sent on in the broker's
                    // order, among the front's own for the deliveries it dropped.
                    let mut up_wr = up_wr.lock().await;
                    let mut out = BytesMut::new();
                    {
                        let mut acks = acks.lock();
                        if !acks.client_ack(&raw) {
                            out.extend_from_slice(&raw);
                        }
                        acks.ready(&mut out);
                    }
                    if let Err(e) = write_flush(&mut *up_wr, &out).await {
                        return End::Dropped(format!("broker connection lost: {e}"));
                    }
                    continue;
                }
                Packet::PingReq(_)
                | Packet::PubAck(..)
                | Packet::PubRec(..)
                | Packet::PubRel(..)
                | Packet::PubComp(..) => raw,
                Packet::Connect(..) => {
                    return End::Dropped("protocol violation: second CONNECT".to_owned());
                }
                Packet::ConnAck(..)
                | Packet::SubAck(..)
                | Packet::UnsubAck(..)
                | Packet::PingResp(_) => {
                    return End::Dropped(
                        "protocol violation: server-only packet from client".to_owned(),
                    );
                }
            };
            if let Err(e) = write_flush(&mut *up_wr.lock().await, &forward).await {
                return End::Dropped(format!("broker connection lost: {e}"));
            }
        }
    }

    /// MQTT 3.1.1's UNSUBACK has no failure code: a malformed filter is refused (reported)
    /// and the connection closes, for the reason returned.
    fn check_unsubscribe(
        &self,
        unsubscribe: &rumqttd::protocol::Unsubscribe,
    ) -> Result<(), String> {
        let bad = unsubscribe
            .filters
            .iter()
            .find_map(|f| acl::check_unsubscribe(&self.identity, f).err());
        match bad {
            Some(denied) => {
                let reason = denied.to_string();
                self.shared.refused(&self.identity, self.peer, denied);
                Err(reason)
            }
            None => Ok(()),
        }
    }

    /// Whether this client may publish `len` bytes on `topic` (also its last will): the
    /// identity's rules, then a local user's write filters.
    fn check_publish(&self, topic: &str, len: usize) -> Result<(), Denied> {
        acl::check_publish(&self.identity, topic)
            .and_then(|()| acl::check_payload(&self.identity, topic, len))
            .and_then(|()| match &self.grants {
                Some(grants) => grants.check_write(&self.identity, topic),
                None => Ok(()),
            })
    }

    fn police_subscribe(&self, subscribe: Subscribe, pending: &PendingSubAcks) -> SubscribeVerdict {
        let total = subscribe.filters.len();
        let mut codes = Vec::with_capacity(total);
        let mut allowed = Vec::with_capacity(total);
        // An integrator's subscriptions are carried at QoS 0: rumqttd 0.20 replays at most
        // 100 retained messages to a new QoS 1 or 2 subscription (its in-flight window, a
        // constant) and all of them to a QoS 0 one, and an integrator subscribes to see the
        // whole fleet. rumqttd's SUBACK then grants QoS 0, which is what it gets.
        let downgrade = matches!(self.identity, Identity::Integrator(_));
        let mut rewritten = false;
        for mut filter in subscribe.filters {
            if downgrade && filter.qos != rumqttd::protocol::QoS::AtMostOnce {
                filter.qos = rumqttd::protocol::QoS::AtMostOnce;
                rewritten = true;
            }
            let checked = acl::check_subscribe(&self.identity, &filter.path).and_then(|()| {
                match &self.grants {
                    Some(grants) => grants.check_subscribe(&self.identity, &filter.path),
                    None => Ok(()),
                }
            });
            match checked {
                Ok(()) => {
                    codes.push(None);
                    allowed.push(filter);
                }
                Err(denied) => {
                    self.shared.refused(&self.identity, self.peer, denied);
                    codes.push(Some(SUBACK_FAILURE));
                }
            }
        }
        if allowed.len() == total && !rewritten {
            return SubscribeVerdict::Forward(None);
        }
        if allowed.is_empty() {
            return SubscribeVerdict::Answer(encode_suback(subscribe.pkid, &codes));
        }
        if allowed.len() < total {
            pending.lock().insert(subscribe.pkid, codes);
        }
        let mut out = BytesMut::new();
        let packet = Packet::Subscribe(
            Subscribe {
                pkid: subscribe.pkid,
                filters: allowed,
            },
            None,
        );
        match V4.write(packet, &mut out) {
            Ok(_) => SubscribeVerdict::Forward(Some(out.freeze())),
            // Cannot happen for a packet we just decoded with fewer filters; refuse all.
            Err(_) => {
                pending.lock().remove(&subscribe.pkid);
                let codes = vec![Some(SUBACK_FAILURE); total];
                SubscribeVerdict::Answer(encode_suback(subscribe.pkid, &codes))
            }
        }
    }
}

enum SubscribeVerdict {
    /// Forward the original packet (`None`) or this rewritten one.
    Forward(Option<Bytes>),
    /// Every filter refused: answer this SUBACK, forward nothing.
    Answer(Bytes),
}

/// Broker → client: copied packet by packet, except SUBACKs of partly refused SUBSCRIBEs,
/// whose return codes are put back in the client's order, and, for a local user (`grants`),
/// deliveries it may not read: those are acknowledged to the broker by the front (PUBACK,
/// or PUBREC then PUBCOMP) and never reach the client.
#[allow(clippy::too_many_arguments)]
async fn broker_to_client<S: ClientStream>(
    mut up_rd: tokio::net::tcp::OwnedReadHalf,
    buf: BytesMut,
    client_wr: &tokio::sync::Mutex<WriteHalf<S>>,
    up_wr: &tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
    pending: &PendingSubAcks,
    own_pings: &std::sync::atomic::AtomicUsize,
    grants: Option<(&acl::LocalGrants, &Mutex<AckOrder>)>,
) -> End {
    use std::sync::atomic::Ordering;
    let mut buf = buf;
    let mut first = !buf.is_empty();
    // Packet ids of QoS 2 deliveries the front dropped (it answered PUBREC): their PUBREL is
    // the front's to complete.
    let mut dropped_qos2 = HashSet::new();
    loop {
        let read = if first {
            first = false;
            Ok(buf.len())
        } else {
            up_rd.read_buf(&mut buf).await
        };
        match read {
            Ok(0) => return End::Dropped("broker closed the connection".to_owned()),
            Ok(_) => {}
            Err(e) => return End::Dropped(format!("broker connection lost: {e}")),
        }
        let mut out = BytesMut::new();
        loop {
            match v4::check(buf.iter(), MAX_UPSTREAM_PACKET) {
                Ok(header) => {
                    let frame = buf.split_to(header.frame_length());
                    if let Some((grants, acks)) = grants {
                        match header.byte1 >> 4 {
                            3 => {
                                let Some((qos, topic, pkid)) =
                                    publish_head(&frame, header.fixed_header_len)
                                else {
                                    return End::Dropped(
                                        "unreadable PUBLISH from broker".to_owned(),
                                    );
                                };
                                let readable =
                                    std::str::from_utf8(topic).is_ok_and(|t| grants.may_read(t));
                                let ack = match qos {
                                    1 => Some(ack_packet(PUBACK, pkid)),
                                    2 => Some(ack_packet(PUBREC, pkid)),
                                    _ => None,
                                };
                                if let Some(ack) = ack {
                                    acks.lock().delivered(pkid, (!readable).then_some(ack));
                                }
                                if !readable {
                                    if qos == 2 {
                                        dropped_qos2.insert(pkid);
                                    }
                                    continue;
                                }
                            }
                            6 if frame.len() == 4 => {
                                let pkid = u16::from_be_bytes([frame[2], frame[3]]);
                                let ours = dropped_qos2.remove(&pkid);
                                acks.lock()
                                    .released(pkid, ours.then_some(ack_packet(PUBCOMP, pkid)));
                                if ours {
                                    continue;
                                }
                            }
                            _ => {}
                        }
                    }
                    let is_suback = header.byte1 >> 4 == 9;
                    let is_pingresp = header.byte1 >> 4 == 13;
                    if is_pingresp
                        && own_pings
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            })
                            .is_ok()
                    {
                        // The answer to the front's own PINGREQ: not the client's.
                        continue;
                    }
                    if is_suback && !pending.lock().is_empty() {
                        out.extend_from_slice(&merge_suback(frame, pending));
                    } else {
                        out.extend_from_slice(&frame);
                    }
                }
                Err(CodecError::InsufficientBytes(n)) => {
                    buf.reserve(n);
                    break;
                }
                Err(e) => return End::Dropped(format!("unreadable packet from broker: {e}")),
            }
        }
        if let Some((_, acks)) = grants {
            let mut up_wr = up_wr.lock().await;
            let mut ready = BytesMut::new();
            acks.lock().ready(&mut ready);
            if !ready.is_empty()
                && let Err(e) = write_flush(&mut *up_wr, &ready).await
            {
                return End::Dropped(format!("broker connection lost: {e}"));
            }
        }
        if !out.is_empty() {
            let mut client_wr = client_wr.lock().await;
            if let Err(e) = write_flush(&mut *client_wr, &out).await {
                return End::Dropped(format!("client connection lost: {e}"));
            }
        }
    }
}

/// A local user's deliveries and releases awaiting acknowledgement, in the broker's order.
/// rumqttd 0.20 takes acknowledgements only in the order it sent the packets (an
/// out-of-order PUBACK, PUBREC or PUBCOMP closes the connection: `register_ack`), and the
/// front answers the deliveries it drops at once while the client answers its own later: so
/// every acknowledgement waits here until those before it are given.
#[derive(Default)]
struct AckOrder {
    /// QoS 1 and 2 deliveries: packet id, and its PUBACK or PUBREC once given (the front's
    /// at once for a dropped delivery; the client's when it comes).
    deliveries: VecDeque<(u16, Option<[u8; 4]>)>,
    /// QoS 2 releases (the broker's PUBREL), the same way for their PUBCOMP.
    releases: VecDeque<(u16, Option<[u8; 4]>)>,
}

impl AckOrder {
    fn delivered(&mut self, pkid: u16, ack: Option<[u8; 4]>) {
        self.deliveries.push_back((pkid, ack));
    }

    fn released(&mut self, pkid: u16, comp: Option<[u8; 4]>) {
        self.releases.push_back((pkid, comp));
    }

    /// Records the client's PUBACK, PUBREC or PUBCOMP (a 4-byte frame); `false` if nothing
    /// waits for it (it is then sent on as it is, and rumqttd decides).
    fn client_ack(&mut self, frame: &[u8]) -> bool {
        let Ok(ack) = <[u8; 4]>::try_from(frame) else {
            return false;
        };
        let pkid = u16::from_be_bytes([ack[2], ack[3]]);
        let queue = if ack[0] >> 4 == 7 {
            &mut self.releases
        } else {
            &mut self.deliveries
        };
        match queue
            .iter_mut()
            .find(|(id, given)| *id == pkid && given.is_none())
        {
            Some((_, given)) => {
                *given = Some(ack);
                true
            }
            None => false,
        }
    }

    /// Moves every acknowledgement whose predecessors are all given into `out`, in order.
    fn ready(&mut self, out: &mut BytesMut) {
        for queue in [&mut self.deliveries, &mut self.releases] {
            while let Some((_, Some(ack))) = queue.front() {
                out.extend_from_slice(ack);
                queue.pop_front();
            }
        }
    }
}

const PUBACK: u8 = 0x40;
const PUBREC: u8 = 0x50;
const PUBCOMP: u8 = 0x70;

/// A PUBACK, PUBREC or PUBCOMP for `pkid`.
fn ack_packet(kind: u8, pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [kind, 0x02, hi, lo]
}

/// A PUBLISH frame's QoS, topic and packet id (0 at QoS 0), or `None` if it is too short
/// for what its header says.
fn publish_head(frame: &[u8], header_len: usize) -> Option<(u8, &[u8], u16)> {
    let qos = (frame.first()? >> 1) & 3;
    let body = frame.get(header_len..)?;
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = body.get(2..2 + len)?;
    let pkid = if qos > 0 {
        let id = body.get(2 + len..4 + len)?;
        u16::from_be_bytes([id[0], id[1]])
    } else {
        0
    };
    Some((qos, topic, pkid))
}

/// For a client without keepalive: a PINGREQ upstream every `every`, so rumqttd keeps the
/// session (see [`FrontConfig::keepalive_for_silent`]). Never ends for other clients.
async fn ping_upstream(
    every: Option<Duration>,
    up_wr: &tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
    own_pings: &std::sync::atomic::AtomicUsize,
) -> End {
    let Some(every) = every else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        own_pings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = write_flush(&mut *up_wr.lock().await, &[0xC0, 0x00]).await {
            return End::Dropped(format!("broker connection lost: {e}"));
        }
    }
}

/// Puts the broker's return codes for the forwarded filters back among the refusals.
fn merge_suback(frame: BytesMut, pending: &PendingSubAcks) -> Bytes {
    let original = frame.clone().freeze();
    let mut frame = frame;
    let Ok(Packet::SubAck(suback, _)) = V4.read_mut(&mut frame, MAX_UPSTREAM_PACKET) else {
        return original;
    };
    let Some(template) = pending.lock().remove(&suback.pkid) else {
        return original;
    };
    let mut from_broker = suback.return_codes.iter().map(|c| match c {
        SubscribeReasonCode::Success(qos) => *qos as u8,
        SubscribeReasonCode::QoS0 => 0,
        SubscribeReasonCode::QoS1 => 1,
        SubscribeReasonCode::QoS2 => 2,
        _ => SUBACK_FAILURE,
    });
    let codes: Vec<Option<u8>> = template
        .into_iter()
        .map(|code| code.or_else(|| from_broker.next()).or(Some(SUBACK_FAILURE)))
        .collect();
    encode_suback(suback.pkid, &codes)
}

fn encode_suback(pkid: u16, codes: &[Option<u8>]) -> Bytes {
    let return_codes = codes
        .iter()
        .map(|c| match c.unwrap_or(SUBACK_FAILURE) {
            0 => SubscribeReasonCode::Success(rumqttd::protocol::QoS::AtMostOnce),
            1 => SubscribeReasonCode::Success(rumqttd::protocol::QoS::AtLeastOnce),
            2 => SubscribeReasonCode::Success(rumqttd::protocol::QoS::ExactlyOnce),
            _ => SubscribeReasonCode::Failure,
        })
        .collect();
    let mut out = BytesMut::new();
    // Encoding a SUBACK cannot fail (its length always fits).
    let _ = V4.write(
        Packet::SubAck(SubAck { pkid, return_codes }, None),
        &mut out,
    );
    out.freeze()
}

/// Reads one whole packet (fixed header + remaining length ≤ `max`) from `rd`, keeping any
/// bytes after it in `buf`. Errors say why the connection must close.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<BytesMut, String> {
    loop {
        match v4::check(buf.iter(), max) {
            Ok(header) => return Ok(buf.split_to(header.frame_length())),
            Err(CodecError::InsufficientBytes(n)) => buf.reserve(n),
            Err(CodecError::PayloadSizeLimitExceeded(len)) => {
                return Err(format!(
                    "packet of {len} bytes exceeds the {max}-byte limit"
                ));
            }
            Err(e) => return Err(format!("malformed packet: {e}")),
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Err("client closed the connection without DISCONNECT".to_owned()),
            Ok(_) => {}
            Err(e) => return Err(format!("client connection lost: {e}")),
        }
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{Filter, QoS, RetainForwardRule};

    fn filter(path: &str) -> Filter {
        Filter {
            path: path.to_owned(),
            qos: QoS::AtLeastOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        }
    }

    #[test]
    fn merged_suback_keeps_the_clients_order() {
        let pending = PendingSubAcks::default();
        pending
            .lock()
            .insert(7, vec![Some(0x80), None, Some(0x80), None]);
        let broker = encode_suback(7, &[Some(1), Some(0)]);
        let merged = merge_suback(BytesMut::from(&broker[..]), &pending);
        assert_eq!(
            &merged[..],
            &[0x90, 0x06, 0x00, 0x07, 0x80, 0x01, 0x80, 0x00]
        );
        assert!(pending.lock().is_empty());
        // A SUBACK nobody waits for passes unchanged.
        let other = encode_suback(8, &[Some(1)]);
        assert_eq!(merge_suback(BytesMut::from(&other[..]), &pending), other);
    }

    /// Client bytes go through rumqttd's V4 decoder; random and mutated packets must give
    /// errors, never a panic (a panic would only end that connection's task, but still).
    #[test]
    fn the_decoder_never_panics_on_hostile_bytes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut valid = BytesMut::new();
        V4.write(
            Packet::Subscribe(
                Subscribe {
                    pkid: 1,
                    filters: vec![filter("a/+")],
                },
                None,
            ),
            &mut valid,
        )
        .unwrap();
        let seeds: Vec<Vec<u8>> = vec![
            valid.to_vec(),
            vec![
                0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 0,
            ],
            vec![0x30, 0x05, 0, 1, b'a', b'x', b'y'],
            vec![0x82, 0x04, 0, 1, 0, 0],
        ];
        for i in 0..20_000 {
            let mut bytes = if i % 2 == 0 {
                let len = rng.random_range(0..32);
                (0..len).map(|_| rng.random::<u8>()).collect::<Vec<u8>>()
            } else {
                let mut b = seeds[i % seeds.len()].clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b
            };
            bytes.truncate(64);
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(header) = v4::check(buf.iter(), 1024) {
                let mut frame = buf.split_to(header.frame_length());
                let _ = V4.read_mut(&mut frame, 1024);
            }
        }
    }

    #[test]
    fn subscribe_reencoding_round_trips() {
        let mut out = BytesMut::new();
        let sub = Subscribe {
            pkid: 3,
            filters: vec![filter("a/b"), filter("c/+")],
        };
        V4.write(Packet::Subscribe(sub.clone(), None), &mut out)
            .unwrap();
        let Packet::Subscribe(back, _) = V4.read_mut(&mut out, 1024).unwrap() else {
            panic!("not a subscribe");
        };
        assert_eq!(back.pkid, 3);
        assert_eq!(back.filters, sub.filters);
    }
}
