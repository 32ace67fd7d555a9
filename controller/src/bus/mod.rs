//! The controller's MQTT link: one task owns the rumqttc event loop ([`run_link`]), another
//! drains the publish queue ([`run_publisher`]). Works the same against the embedded broker
//! or any external MQTT 3.1.1 broker: nothing here depends on sharing a process with it.
//!
//! The link task never waits on the store or on a publish: incoming messages go to the
//! intake over a channel (it waits only if ten thousand are queued: back-pressure, not
//! loss), publishes come from the queue. On every CONNACK the controller subscribes to the
//! device topics, announces itself on its presence topic (agents answer a new session with a
//! full "rebirth") and republishes every device's desired document, every site summary,
//! the newest rollouts and the signed audit head, since a restarted broker holds no retained
//! messages.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_protocol::backoff::Backoff;
use edgefleet_protocol::codec::encode;
use edgefleet_protocol::presence::{ControllerPresence, PresenceState};
use edgefleet_protocol::signing::DocumentSigner;
use edgefleet_protocol::topics::{self, TopicKind};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::services::audit::AuditLog;
use crate::services::intake::Message;
use crate::services::link::Link;
use crate::services::outbox::{Outbox, Outgoing, SiteSummaries};
use crate::services::rollouts::Rollouts;

pub use edgefleet_protocol::broker_url::BrokerAddr;

/// Client id of the controller on the bus.
pub const CLIENT_ID: &str = edgefleet_protocol::acl::CONTROLLER_CLIENT_ID;
/// Messages queued between the link and the intake.
pub const INTAKE_CAPACITY: usize = 10_000;

fn presence(session: u64, state: PresenceState) -> Vec<u8> {
    encode(&ControllerPresence {
        schema: edgefleet_protocol::SCHEMA_VERSION,
        state,
        session,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        since: edgefleet_protocol::now_rfc3339(),
    })
}

/// Creates the MQTT client for the controller, with its last will.
pub fn client(
    broker: &BrokerAddr,
    login: Option<(String, String)>,
    keepalive: Duration,
    session: u64,
) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(CLIENT_ID, broker.host.clone(), broker.port);
    if let Some((username, password)) = login {
        opts.set_credentials(username, password);
    }
    opts.set_keep_alive(keepalive);
    opts.set_clean_session(true);
    let max = edgefleet_protocol::MAX_PAYLOAD_BYTES + 64 * 1024;
    opts.set_max_packet_size(max, max);
    opts.set_last_will(LastWill::new(
        topics::controller_presence(),
        presence(session, PresenceState::Offline),
        QoS::AtLeastOnce,
        true,
    ));
    AsyncClient::new(opts, 1024)
}

/// What the link republishes on every CONNACK.
#[derive(Clone)]
pub struct Republish {
    pub outbox: Arc<Outbox>,
    pub sites: Arc<SiteSummaries>,
    pub rollouts: Arc<Rollouts>,
    pub audit: Arc<AuditLog>,
}

/// The link task's parts.
pub struct LinkTask {
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    pub session: u64,
    pub broker: BrokerAddr,
    pub intake: mpsc::Sender<Message>,
    pub state: Arc<Link>,
    pub republish: Republish,
}

/// Owns the event loop until shutdown: hands incoming messages to the intake, re-announces
/// on every CONNACK, and backs off (jittered, exponential) after connection errors.
pub async fn run_link(task: LinkTask, shutdown: CancellationToken) {
    let LinkTask {
        client,
        mut eventloop,
        session,
        broker,
        intake,
        state,
        republish,
    } = task;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(%broker, session, "connected to the broker");
                backoff.reset();
                state.set_connected(true);
                tokio::spawn(announce(client.clone(), session, republish.clone()));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    sent = intake.send(msg) => if sent.is_err() { break },
                }
            }
            Ok(_) => {}
            Err(e) => {
                state.set_connected(false);
                let wait = backoff.next_delay();
                tracing::warn!(%broker, "broker connection lost: {e}; retrying in {wait:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    state.set_connected(false);
    // Clean goodbye: mark ourselves offline (the will only fires on an unclean loss).
    let _ = client.try_publish(
        topics::controller_presence(),
        QoS::AtLeastOnce,
        true,
        presence(session, PresenceState::Offline),
    );
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

async fn announce(client: AsyncClient, session: u64, republish: Republish) {
    let filters = [
        TopicKind::DevicePresence,
        TopicKind::DeviceStatus,
        TopicKind::DeviceEvents,
        TopicKind::DeviceSync,
        TopicKind::DeviceReplies,
    ]
    .map(|k| rumqttc::SubscribeFilter::new(k.all_devices_filter(), QoS::AtLeastOnce));
    if let Err(e) = client.subscribe_many(filters).await {
        tracing::error!("cannot subscribe to device topics: {e}");
        return;
    }
    if let Err(e) = client
        .publish(
            topics::controller_presence(),
            QoS::AtLeastOnce,
            true,
            presence(session, PresenceState::Online),
        )
        .await
    {
        tracing::error!("cannot publish controller presence: {e}");
    }
    republish.outbox.queue_all_desired();
    republish.sites.reset();
    republish.sites.queue_changed();
    republish.rollouts.publish_recent();
    if let Some(head) = republish.audit.published_head() {
        republish.outbox.queue_retained(topics::audit_head(), head);
    }
}

/// Drains the publish queue into the client until shutdown.
pub async fn run_publisher(
    outbox: Arc<Outbox>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    signer: Arc<DocumentSigner>,
    client: AsyncClient,
    shutdown: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            job = queue.recv() => match job { Some(j) => j, None => break },
        };
        let (topic, retain, payload) = match job {
            Outgoing::Desired(id) => {
                let Some(doc) = outbox.take_desired(&id) else {
                    continue;
                };
                tracing::debug!(device = %id, revision = doc.revision, "publishing desired state");
                (
                    TopicKind::DeviceDesired.for_device(&id),
                    true,
                    signer.sign(&doc),
                )
            }
            Outgoing::Retained(topic) => {
                let Some(payload) = outbox.take_retained(&topic) else {
                    continue;
                };
                (topic, true, payload)
            }
            Outgoing::Command { device, command } => (
                TopicKind::DeviceCommands.for_device(&device),
                false,
                signer.sign_bytes(&command),
            ),
        };
        // rumqttc drops the whole connection on a publish above the packet limit, and agents
        // refuse payloads above MAX_PAYLOAD_BYTES: such a message is never sent (apply
        // refuses documents that would exceed it; this catches what changed since).
        if payload.len() > edgefleet_protocol::MAX_PAYLOAD_BYTES {
            tracing::error!(
                topic,
                bytes = payload.len(),
                limit = edgefleet_protocol::MAX_PAYLOAD_BYTES,
                "message above the bus's payload limit not sent"
            );
            continue;
        }
        // The client's request queue is bounded: handing a message over waits while it is
        // full, but never past a shutdown.
        let handed = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = client.publish(topic.clone(), QoS::AtLeastOnce, retain, payload) => r,
        };
        if let Err(e) = handed {
            tracing::warn!(topic, "cannot hand a message to the MQTT client: {e}");
        }
    }
}
