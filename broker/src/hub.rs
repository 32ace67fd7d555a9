//! Device sessions over a few shared upstream connections.
//!
//! Without the hub, every device is its own rumqttd connection: three descriptors per device
//! in the gateway's process (so 6,500 devices under a 20,000 limit), about 200 KiB of gateway
//! memory each, and rumqttd's router matching every device's filters against every topic
//! (reconnecting 5,000 devices took 54 s, BENCHMARKS.md). With it, the front terminates a
//! device's MQTT session itself (CONNACK, keepalive, SUBSCRIBE, acknowledgements, the last
//! will, a new connection taking over an old one) and rumqttd sees two connections:
//!
//! - **down**: subscribed at QoS 0 to every device's desired state and commands and to the
//!   controller's presence (QoS 0: rumqttd then replays every retained message, not the
//!   first 100). What arrives is routed to the device it names. Desired state and the
//!   controller's presence are retained topics (topics.md): the hub keeps the latest of
//!   each, and a device subscribing gets it at once, flagged retained, as from a broker.
//! - **up**: every device's PUBLISH (status, presence, events, sync, replies) and last will,
//!   with the device's QoS (at most 1) and retain flag.
//!
//! The topic rules are the front's, checked before anything reaches the hub. What the hub
//! gives up: a device's QoS 1 PUBLISH is acknowledged once it is queued on the up connection
//! (in this process), not once rumqttd has it; rumqttd is in the same process and keeps
//! nothing on disk either, so a crash loses the same messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use edgefleet_protocol::acl;
use edgefleet_protocol::topics::{self, TopicKind};
use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::InternalCredential;

/// Deliveries queued for one device before it counts as stuck (its session is then closed;
/// it reconnects and gets the retained state again).
const DEVICE_QUEUE: usize = 256;

/// A device session's deliveries, queued. Not a `tokio::sync::mpsc` channel: one of those
/// allocates its first block of 32 slots and its cache-padded state up front, 2.3 KiB per
/// device whether anything is queued or not (heaptrack, BENCHMARKS.md "Fleet"); an empty
/// `VecDeque` allocates nothing, and a device's queue is empty nearly all the time.
#[derive(Default)]
pub(crate) struct Deliveries {
    queue: Mutex<std::collections::VecDeque<Delivery>>,
    /// Notified after every push (one stored permit, so a push while nobody waits wakes the
    /// next wait).
    queued: tokio::sync::Notify,
}

impl Deliveries {
    /// Queues `d`; false if [`DEVICE_QUEUE`] deliveries are already waiting.
    fn push(&self, d: Delivery) -> bool {
        let mut queue = self.queue.lock();
        if queue.len() >= DEVICE_QUEUE {
            return false;
        }
        queue.push_back(d);
        drop(queue);
        self.queued.notify_one();
        true
    }

    /// Waits until something was queued since the last wait, then takes everything queued
    /// (possibly nothing, after a wake-up whose deliveries an earlier take already had).
    pub(crate) async fn next(&self) -> Vec<Delivery> {
        self.queued.notified().await;
        let mut queue = self.queue.lock();
        let taken = queue.drain(..).collect();
        // A burst (a replay) may have grown it: an idle session keeps no capacity.
        queue.shrink_to(4);
        taken
    }
}

/// One message for a device session to write.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub retain: bool,
    /// The QoS the device's subscription was granted (0 or 1).
    pub qos: u8,
}

/// A device session attached to the hub.
pub(crate) struct Slot {
    generation: u64,
    /// Filters the device subscribed to, with the QoS granted.
    subscriptions: Mutex<Vec<(String, u8)>>,
    pub(crate) deliveries: Deliveries,
    /// Cancelled to end the session (taken over, or stuck).
    pub cancel: CancellationToken,
    /// Cancelled by the session once it has ended and its will is published.
    pub ended: CancellationToken,
}

impl Slot {
    /// Queues `topic` for the device if one of its subscriptions matches; a full queue
    /// ends the session.
    /// The highest QoS among the device's subscriptions matching `topic`, if any.
    fn granted(&self, topic: &str) -> Option<u8> {
        self.subscriptions
            .lock()
            .iter()
            .filter(|(f, _)| acl::covers(f, topic))
            .map(|(_, q)| *q)
            .max()
    }

    fn offer(&self, topic: &Arc<str>, payload: &Bytes, retain: bool) {
        let Some(qos) = self.granted(topic) else {
            debug!(%topic, "not subscribed (yet): not delivered");
            return;
        };
        let delivery = Delivery {
            topic: topic.clone(),
            payload: payload.clone(),
            retain,
            qos,
        };
        if !self.deliveries.push(delivery) && !self.cancel.is_cancelled() {
            warn!(%topic, "a device does not read its messages: its session is closed");
            self.cancel.cancel();
        }
    }
}

/// See the module docs.
pub struct Hub {
    up: AsyncClient,
    sessions: Mutex<HashMap<String, Arc<Slot>>>,
    /// The latest desired document per device and the controller's presence, by topic.
    retained: Mutex<HashMap<Arc<str>, Bytes>>,
    generation: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.sessions())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Connects the hub's two upstream connections to rumqttd at `upstream` (they
    /// reconnect by themselves) and returns at once.
    pub fn start(
        upstream: SocketAddr,
        login: Option<&InternalCredential>,
        max_packet: usize,
        stop: CancellationToken,
    ) -> Arc<Hub> {
        let options = |id: &str| {
            let mut o = MqttOptions::new(id, upstream.ip().to_string(), upstream.port());
            o.set_keep_alive(Duration::from_secs(30));
            o.set_max_packet_size(max_packet, max_packet);
            o.set_clean_session(true);
            o.set_inflight(500);
            if let Some(c) = login {
                o.set_credentials(c.username.clone(), c.password.clone());
            }
            o
        };
        let (up, mut up_loop) = AsyncClient::new(options("edgefleet-front-hub-up"), 10_000);
        let (down, mut down_loop) = AsyncClient::new(options("edgefleet-front-hub-down"), 16);
        let hub = Arc::new(Hub {
            up,
            sessions: Mutex::new(HashMap::new()),
            retained: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        });
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = s.cancelled() => break,
                    polled = up_loop.poll() => if let Err(e) = polled {
                        warn!(error = %e, "the hub's upstream connection failed; reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let h = hub.clone();
        tokio::spawn(async move {
            loop {
                let polled = tokio::select! {
                    () = stop.cancelled() => break,
                    polled = down_loop.poll() => polled,
                };
                match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let filters = [
                            TopicKind::DeviceDesired.all_devices_filter(),
                            TopicKind::DeviceCommands.all_devices_filter(),
                            topics::controller_presence(),
                        ];
                        for f in filters {
                            let _ = down.subscribe(f, QoS::AtMostOnce).await;
                        }
                        info!("device hub connected to the broker");
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        h.route(&p.topic, p.payload);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "the hub's downstream connection failed; reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        hub
    }

    /// A message from rumqttd: kept if it is retained state, and offered to the device(s)
    /// it is for.
    fn route(&self, topic: &str, payload: Bytes) {
        let topic: Arc<str> = Arc::from(topic);
        let Some(parsed) = topics::parse(&topic) else {
            return;
        };
        let (kind, device) = (parsed.kind, parsed.device.map(str::to_owned));
        if matches!(
            kind,
            TopicKind::DeviceDesired | TopicKind::ControllerPresence
        ) {
            let mut retained = self.retained.lock();
            if payload.is_empty() {
                retained.remove(&topic);
            } else {
                retained.insert(topic.clone(), payload.clone());
            }
        }
        match device {
            None => {
                let slots: Vec<Arc<Slot>> = self.sessions.lock().values().cloned().collect();
                for slot in slots {
                    slot.offer(&topic, &payload, false);
                }
            }
            Some(id) => {
                let slot = self.sessions.lock().get(&id).cloned();
                match slot {
                    Some(slot) => slot.offer(&topic, &payload, false),
                    None => debug!(%topic, "no session of this device: not delivered"),
                }
            }
        }
    }

    /// Attaches a new session of `device`; returns it (its deliveries queue in
    /// [`Slot::deliveries`]) and the session it takes over (to be cancelled and waited for).
    pub(crate) fn attach(&self, device: &str) -> (Arc<Slot>, Option<Arc<Slot>>) {
        let slot = Arc::new(Slot {
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            subscriptions: Mutex::new(Vec::new()),
            deliveries: Deliveries::default(),
            cancel: CancellationToken::new(),
            ended: CancellationToken::new(),
        });
        let old = self.sessions.lock().insert(device.to_owned(), slot.clone());
        (slot, old)
    }

    /// Detaches `slot` unless a newer session of the device took its place.
    pub(crate) fn detach(&self, device: &str, slot: &Slot) {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(device)
            .is_some_and(|s| s.generation == slot.generation)
        {
            sessions.remove(device);
        }
        debug!(
            device,
            generation = slot.generation,
            "device session detached"
        );
    }

    /// Records a subscription and returns the retained messages it matches (to deliver
    /// now, flagged retained).
    pub(crate) fn subscribe(&self, slot: &Slot, filter: &str, qos: u8) -> Vec<Delivery> {
        {
            let mut subs = slot.subscriptions.lock();
            subs.retain(|(f, _)| f != filter);
            subs.push((filter.to_owned(), qos));
        }
        let to_delivery = |(t, p): (&Arc<str>, &Bytes)| Delivery {
            topic: t.clone(),
            payload: p.clone(),
            retain: true,
            qos,
        };
        let retained = self.retained.lock();
        // A device's filters are its own topics (the front's rules): a lookup, not a scan of
        // every device's document.
        let replay: Vec<Delivery> = if filter.contains(['+', '#']) {
            retained
                .iter()
                .filter(|(t, _)| acl::covers(filter, t))
                .map(to_delivery)
                .collect()
        } else {
            retained
                .get_key_value(filter)
                .map(to_delivery)
                .into_iter()
                .collect()
        };
        drop(retained);
        debug!(
            filter,
            generation = slot.generation,
            replayed = replay.len(),
            "device subscribed"
        );
        replay
    }

    /// The device's retained desired document, if it is subscribed to it: what a device
    /// asking for its desired state again (`sync`) gets from the hub at once, besides the
    /// controller's answer, so a delivery lost anywhere between here and the agent's intake
    /// is made good by the agent's own retry.
    pub(crate) fn desired_for(&self, slot: &Slot, device: &str) -> Option<Delivery> {
        let topic = TopicKind::DeviceDesired.for_device(device);
        let qos = slot.granted(&topic)?;
        let retained = self.retained.lock();
        let (t, p) = retained.get_key_value(topic.as_str())?;
        Some(Delivery {
            topic: t.clone(),
            payload: p.clone(),
            retain: true,
            qos,
        })
    }

    pub(crate) fn unsubscribe(&self, slot: &Slot, filter: &str) {
        slot.subscriptions.lock().retain(|(f, _)| f != filter);
    }

    /// Queues a device's PUBLISH (or will) on the up connection.
    pub(crate) async fn publish(
        &self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: Bytes,
    ) -> Result<(), String> {
        self.up
            .publish_bytes(topic, up_qos(qos), retain, payload)
            .await
            .map_err(|e| format!("the hub's upstream queue is closed: {e}"))
    }

    /// [`Hub::publish`] without waiting (from a drop): false if the queue is full.
    pub(crate) fn try_publish(&self, topic: &str, qos: u8, retain: bool, payload: Bytes) -> bool {
        self.up
            .try_publish(topic, up_qos(qos), retain, payload)
            .is_ok()
    }

    /// Device sessions attached now.
    pub fn sessions(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// The QoS a device's PUBLISH is carried at upstream: as sent, QoS 2 as 1 (the front
/// completes the device's QoS 2 exchange itself).
fn up_qos(qos: u8) -> QoS {
    if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// A PUBLISH packet for a device: `pkid` is used at QoS 1.
pub(crate) fn encode_publish(d: &Delivery, pkid: u16) -> Vec<u8> {
    let topic = d.topic.as_bytes();
    let mut body = Vec::with_capacity(2 + topic.len() + 2 + d.payload.len());
    body.extend_from_slice(&u16::try_from(topic.len()).unwrap_or(u16::MAX).to_be_bytes());
    body.extend_from_slice(topic);
    if d.qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(&d.payload);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0x30 | (d.qos.min(1) << 1) | u8::from(d.retain));
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_is_encoded_as_mqtt_3_1_1() {
        let d = Delivery {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"hi"),
            retain: true,
            qos: 1,
        };
        assert_eq!(
            encode_publish(&d, 7),
            vec![0x33, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i']
        );
        let big = Delivery {
            payload: Bytes::from(vec![0u8; 200]),
            qos: 0,
            retain: false,
            ..d
        };
        let out = encode_publish(&big, 1);
        // 2 + 3 + 200 = 205 = 0xCD 0x01 as a variable byte integer.
        assert_eq!(&out[..3], &[0x30, 0xCD, 0x01]);
        assert_eq!(out.len(), 3 + 205);
    }
}
