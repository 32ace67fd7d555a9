//! The MQTT link: one task owns rumqttc's `EventLoop::poll()`, never blocks, and fans
//! incoming messages out over channels; [`Bus`] is the non-blocking publishing side every
//! other task uses.
//!
//! "Never blocks": the link does no file I/O and never waits on another task while a
//! connection is up. Incoming messages are handed on with `try_send` (dropped with a warning
//! when the receiver is busy), publishes are queued with `try_publish`. The one thing it
//! awaits outside `poll()` is the session number before a connection attempt, which the
//! state file's writer thread persists ([`StateStore::next_session`]): at that moment there
//! is no connection to keep alive.
//!
//! rumqttc reconnects immediately after an error and never resubscribes, so the link adds:
//! - jittered exponential backoff between connection attempts;
//! - a new session number for every attempt (persisted), carried by the `offline` last will
//!   set just before connecting and by the `online` presence published after the ConnAck;
//! - on every ConnAck: subscriptions, presence, the current status, and buffered events;
//! - a "rebirth" (presence + status again) when a controller comes online with a new session;
//! - a clear log line when the broker keeps closing the connection before its CONNACK.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_protocol::codec::{decode, encode};
use edgefleet_protocol::event::DeviceEvent;
use edgefleet_protocol::presence::{ControllerPresence, DevicePresence, PresenceState};
use edgefleet_protocol::status::DeviceStatus;
use edgefleet_protocol::sync::SyncRequest;
use edgefleet_protocol::topics::{TopicKind, controller_presence};
use edgefleet_protocol::{MAX_PAYLOAD_BYTES, SCHEMA_VERSION, now_rfc3339};
use parking_lot::Mutex;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing,
    Publish, QoS, StateError, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::desired::Inbound;
use crate::outbox::Outbox;
use crate::state_file::StateStore;
use crate::status::AGENT_VERSION;
use edgefleet_protocol::backoff::Backoff;

/// Largest MQTT packet sent or accepted: the largest payload plus room for the topic and
/// headers. rumqttc's default (10 KiB) would tear the connection down on a large document.
pub const MAX_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES + 4096;
/// Capacity of the request channel between the [`Bus`] and the event loop.
const REQUEST_CAPACITY: usize = 256;
/// Events kept while disconnected (oldest dropped first).
const EVENT_BUFFER: usize = 128;
/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// Consecutive closes before CONNACK after which the likely cause is logged.
const SILENT_CLOSES_BEFORE_HINT: u32 = 3;
/// How long a clean shutdown waits for the final presence and DISCONNECT to go out.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

/// Topics of one device.
#[derive(Debug, Clone)]
struct Topics {
    desired: String,
    status: String,
    presence: String,
    events: String,
    sync: String,
    commands: String,
    replies: String,
    controller: String,
}

impl Topics {
    fn new(device: &str) -> Self {
        Topics {
            desired: TopicKind::DeviceDesired.for_device(device),
            status: TopicKind::DeviceStatus.for_device(device),
            presence: TopicKind::DevicePresence.for_device(device),
            events: TopicKind::DeviceEvents.for_device(device),
            sync: TopicKind::DeviceSync.for_device(device),
            commands: TopicKind::DeviceCommands.for_device(device),
            replies: TopicKind::DeviceReplies.for_device(device),
            controller: controller_presence(),
        }
    }
}

#[derive(Debug, Default)]
struct BusState {
    connected: bool,
    session: u64,
    since: String,
    status: Option<DeviceStatus>,
    events: VecDeque<DeviceEvent>,
}

/// The publishing side of the link. Never blocks: publishes are queued to the event loop
/// (and dropped with a warning if its queue is full); while disconnected, the status is kept
/// for the next ConnAck and events are buffered.
pub struct Bus {
    client: AsyncClient,
    device: String,
    labels: BTreeMap<String, String>,
    topics: Topics,
    state: Mutex<BusState>,
}

impl Bus {
    /// Hands a message to the MQTT client; false if it was dropped (queue full).
    fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) -> bool {
        if payload.is_empty() {
            // An empty payload would clear a retained topic.
            error!(topic, "refusing to publish an empty payload");
            return false;
        }
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => true,
            Err(e) => {
                warn!(topic, error = %e, "MQTT request queue full: message dropped");
                false
            }
        }
    }

    fn presence(&self, state: PresenceState, session: u64, since: String) -> DevicePresence {
        DevicePresence {
            schema: SCHEMA_VERSION,
            device: self.device.clone(),
            state,
            session,
            labels: self.labels.clone(),
            agent_version: AGENT_VERSION.to_owned(),
            since,
        }
    }

    /// Publishes presence `online` and the current status (after a ConnAck or a rebirth).
    fn announce(&self) {
        let (presence, status) = {
            let s = self.state.lock();
            (
                self.presence(PresenceState::Online, s.session, s.since.clone()),
                s.status.clone(),
            )
        };
        self.publish(&self.topics.presence, true, encode(&presence));
        if let Some(status) = status {
            self.publish(&self.topics.status, true, encode(&status));
        }
    }

    fn on_connected(&self, session: u64) {
        let buffered = {
            let mut s = self.state.lock();
            s.connected = true;
            s.session = session;
            s.since = now_rfc3339();
            std::mem::take(&mut s.events)
        };
        for topic in [
            &self.topics.desired,
            &self.topics.commands,
            &self.topics.controller,
        ] {
            if let Err(e) = self.client.try_subscribe(topic.as_str(), QoS::AtLeastOnce) {
                warn!(topic, error = %e, "cannot queue subscription");
            }
        }
        self.announce();
        for event in buffered {
            self.publish(&self.topics.events, false, encode(&event));
        }
    }

    fn on_disconnected(&self) {
        self.state.lock().connected = false;
    }

    pub fn is_connected(&self) -> bool {
        self.state.lock().connected
    }
}

impl Outbox for Bus {
    fn reply(&self, reply: &edgefleet_protocol::command::Reply) {
        self.publish(&self.topics.replies, false, encode(reply));
    }

    fn event(&self, event: DeviceEvent) {
        {
            let mut s = self.state.lock();
            if !s.connected {
                if s.events.len() >= EVENT_BUFFER {
                    s.events.pop_front();
                }
                s.events.push_back(event);
                return;
            }
        }
        self.publish(&self.topics.events, false, encode(&event));
    }

    fn status(&self, status: &DeviceStatus) -> bool {
        let connected = {
            let mut s = self.state.lock();
            s.status = Some(status.clone());
            s.connected
        };
        // While disconnected the status goes out on the next ConnAck.
        !connected || self.publish(&self.topics.status, true, encode(status))
    }

    fn sync_request(&self, request: SyncRequest) {
        if self.is_connected() {
            self.publish(&self.topics.sync, false, encode(&request));
        }
    }
}

/// The task that owns the event loop.
pub struct Link {
    eventloop: EventLoop,
    bus: Arc<Bus>,
    store: Arc<StateStore>,
    inbound: mpsc::Sender<Inbound>,
    /// Signed controller commands, for the command task.
    commands: Option<mpsc::Sender<Vec<u8>>>,
    broker: String,
    /// Session of the current (or next) connection attempt.
    session: u64,
    last_controller_session: Option<u64>,
}

impl Link {
    /// Sends payloads from this device's commands topic to `tx` (the command task).
    pub fn with_commands(mut self, tx: mpsc::Sender<Vec<u8>>) -> Self {
        self.commands = Some(tx);
        self
    }
}

/// Creates the link for `config`: the [`Bus`] to publish through and the [`Link`] task.
/// Messages for the desired-state intake go to `inbound`.
pub fn link(
    config: &Config,
    store: Arc<StateStore>,
    inbound: mpsc::Sender<Inbound>,
) -> (Arc<Bus>, Link) {
    let mut options = MqttOptions::new(
        format!("edgefleet-agent-{}", config.device_id),
        config.broker.host.clone(),
        config.broker.port,
    );
    options
        .set_keep_alive(config.keepalive)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some(tls) = &config.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let bus = Arc::new(Bus {
        client,
        device: config.device_id.clone(),
        labels: config.labels.clone(),
        topics: Topics::new(&config.device_id),
        state: Mutex::new(BusState::default()),
    });
    let link = Link {
        eventloop,
        bus: bus.clone(),
        store,
        inbound,
        commands: None,
        broker: config.broker.to_string(),
        session: 0,
        last_controller_session: None,
    };
    (bus, link)
}

/// Whether an error before the ConnAck means the broker accepted the TCP connection and then
/// closed it (failed authentication, an ACL, a TLS/plain mismatch, an oversize packet…).
fn closed_before_connack(e: &ConnectionError) -> bool {
    use std::io::ErrorKind;
    let io_closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
        )
    };
    match e {
        ConnectionError::MqttState(StateError::ConnectionAborted) => true,
        ConnectionError::MqttState(StateError::Io(io)) | ConnectionError::Io(io) => io_closed(io),
        ConnectionError::MqttState(StateError::Deserialization(_)) => true,
        ConnectionError::NotConnAck(_) => true,
        _ => false,
    }
}

impl Link {
    /// Runs until `shutdown`, then publishes presence `offline` and disconnects cleanly.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut silent_closes = 0u32;
        let mut connected_at: Option<Instant> = None;
        loop {
            if self.eventloop.network.is_none() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = self.prepare_connect() => {}
                }
            }
            let polled = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    info!(broker = %self.broker, session = self.session, "connected to broker");
                    silent_closes = 0;
                    connected_at = Some(Instant::now());
                    self.bus.on_connected(self.session);
                    self.forward(Inbound::Connected);
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => self.route(p),
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        error!(
                            "broker refused a subscription: check the broker's ACL for this device"
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(at) = connected_at.take() {
                        warn!(error = %e, "connection to broker lost; reconnecting");
                        self.bus.on_disconnected();
                        self.forward(Inbound::Disconnected);
                        if at.elapsed() >= STABLE_CONNECTION {
                            backoff.reset();
                        }
                    } else if let ConnectionError::ConnectionRefused(code) = &e {
                        error!(broker = %self.broker, code = ?code, "broker refused the connection: check the device id and credentials");
                    } else if closed_before_connack(&e) {
                        silent_closes += 1;
                        if silent_closes >= SILENT_CLOSES_BEFORE_HINT {
                            error!(
                                broker = %self.broker,
                                attempts = silent_closes,
                                "broker closed the connection before CONNACK: check the broker address, credentials/certificate"
                            );
                        } else {
                            warn!(broker = %self.broker, error = %e, "broker closed the connection before CONNACK");
                        }
                    } else {
                        warn!(broker = %self.broker, error = %e, "cannot connect to broker");
                    }
                    let delay = backoff.next_delay();
                    debug!(?delay, "next connection attempt");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.goodbye(connected_at.is_some()).await;
    }

    /// New session number, and the last will that carries it, before each connection attempt.
    ///
    /// Awaits the state file's writer thread (the link itself does no file I/O). That wait
    /// stalls nothing: this runs only when the event loop has no network, so no connection is
    /// live whose keepalive or inbound traffic could be held up, and publishes queue meanwhile.
    async fn prepare_connect(&mut self) {
        self.session = self.store.next_session().await;
        let offline = self
            .bus
            .presence(PresenceState::Offline, self.session, now_rfc3339());
        let will = LastWill::new(
            &self.bus.topics.presence,
            encode(&offline),
            QoS::AtLeastOnce,
            true,
        );
        self.eventloop.mqtt_options.set_last_will(will);
        debug!(session = self.session, broker = %self.broker, "connecting");
    }

    fn forward(&self, msg: Inbound) {
        if let Err(e) = self.inbound.try_send(msg) {
            warn!(error = %e, "desired-state intake is busy: message dropped (the agent asks for its desired state again)");
        }
    }

    fn route(&mut self, p: Publish) {
        if p.topic == self.bus.topics.desired {
            self.forward(Inbound::Desired(p.payload.to_vec()));
        } else if p.topic == self.bus.topics.commands {
            if let Some(tx) = &self.commands
                && tx.try_send(p.payload.to_vec()).is_err()
            {
                warn!(
                    "busy with earlier commands: one dropped (the controller's request times out)"
                );
            }
        } else if p.topic == self.bus.topics.controller {
            if p.payload.is_empty() {
                return;
            }
            match decode::<ControllerPresence>(&p.payload) {
                Ok(c) if c.state == PresenceState::Online => {
                    let previous = self.last_controller_session.replace(c.session);
                    // Also the first time: an agent that connected while no controller was
                    // up must still introduce itself to the one that comes.
                    if previous != Some(c.session) {
                        info!(
                            session = c.session,
                            "controller (re)started: republishing presence and status"
                        );
                        self.bus.announce();
                    }
                }
                Ok(_) => info!("controller is offline"),
                Err(e) => warn!(error = %e, "ignoring an invalid controller presence"),
            }
        } else {
            debug!(topic = %p.topic, "ignoring message on an unexpected topic");
        }
    }

    /// Final presence `offline` (same session) and a clean DISCONNECT.
    async fn goodbye(mut self, connected: bool) {
        if !connected {
            return;
        }
        let offline = self
            .bus
            .presence(PresenceState::Offline, self.session, now_rfc3339());
        self.bus.on_disconnected();
        self.bus
            .publish(&self.bus.topics.presence, true, encode(&offline));
        if let Err(e) = self.bus.client.try_disconnect() {
            warn!(error = %e, "cannot queue DISCONNECT");
        }
        let drained = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        match drained {
            Ok(()) => info!("disconnected from broker"),
            Err(_) => warn!("broker did not take the final presence in time"),
        }
    }
}
