//! The controller's MQTT link: one task owns the rumqttc event loop; another drains the
//! publish queue. Works the same against the embedded broker or any external MQTT 3.1.1
//! broker: nothing here depends on sharing a process with the broker.
//!
//! On every CONNACK the controller subscribes to the device topics, announces itself on its
//! presence topic (agents answer a new session with a full "rebirth") and republishes every
//! device's desired document, since a restarted broker holds no retained messages.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_protocol::codec::encode;
use edgefleet_protocol::presence::{ControllerPresence, PresenceState};
use edgefleet_protocol::signing::DocumentSigner;
use edgefleet_protocol::topics::{self, TopicKind};
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::{Controller, Outgoing};

pub use edgefleet_protocol::broker_url::BrokerAddr;

/// Client id of the controller on the bus.
pub const CLIENT_ID: &str = "edgefleet-controller";

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
pub fn client(broker: &BrokerAddr, keepalive: Duration, session: u64) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(CLIENT_ID, broker.host.clone(), broker.port);
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

/// Owns the event loop until shutdown: dispatches incoming messages, re-announces on every
/// CONNACK, and backs off (jittered, exponential) after connection errors.
pub async fn run_link(
    ctrl: Arc<Controller>,
    client: AsyncClient,
    mut eventloop: EventLoop,
    session: u64,
    broker: BrokerAddr,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(%broker, session, "connected to the broker");
                backoff = Duration::from_millis(200);
                tokio::spawn(announce(ctrl.clone(), client.clone(), session));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => ctrl.on_message(&p.topic, &p.payload),
            Ok(_) => {}
            Err(e) => {
                let wait = jitter(backoff);
                tracing::warn!(%broker, "broker connection lost: {e}; retrying in {wait:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
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

fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.7..1.3);
    d.mul_f64(factor)
}

async fn announce(ctrl: Arc<Controller>, client: AsyncClient, session: u64) {
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
    ctrl.queue_all_desired();
}

/// Drains the publish queue into the client until shutdown.
pub async fn run_publisher(
    ctrl: Arc<Controller>,
    signer: Arc<DocumentSigner>,
    client: AsyncClient,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    shutdown: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            job = queue.recv() => match job { Some(j) => j, None => break },
        };
        match job {
            Outgoing::Desired(id) => {
                let Some(doc) = ctrl.take_queued_desired(&id) else {
                    continue;
                };
                let topic = TopicKind::DeviceDesired.for_device(&id);
                tracing::debug!(device = %id, revision = doc.revision, "publishing desired state");
                if let Err(e) = client
                    .publish(topic, QoS::AtLeastOnce, true, signer.sign(&doc))
                    .await
                {
                    tracing::warn!(device = %id, "cannot hand desired state to the MQTT client: {e}");
                }
            }
            Outgoing::Retained { topic, payload } => {
                if let Err(e) = client
                    .publish(topic.clone(), QoS::AtLeastOnce, true, payload)
                    .await
                {
                    tracing::warn!(topic, "cannot hand a summary to the MQTT client: {e}");
                }
            }
            Outgoing::Command { device, command } => {
                let topic = TopicKind::DeviceCommands.for_device(&device);
                if let Err(e) = client
                    .publish(topic, QoS::AtLeastOnce, false, signer.sign_bytes(&command))
                    .await
                {
                    tracing::warn!(%device, "cannot hand a command to the MQTT client: {e}");
                }
            }
        }
    }
}
