//! The embedded broker on port 0 and explicit ports, refused addresses, and supervision: a
//! real rumqttd, real MQTT clients (rumqttc, and raw bytes for what rumqttc would not send).
//! Every wait has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use edgefleet_broker::reservation::PortReservation;
use edgefleet_broker::{BrokerConfig, BrokerError, BrokerHandle, start};
use futures_util::FutureExt;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `start` blocks until rumqttd listens: keep it off the runtime's workers.
async fn start_on(addr: SocketAddr) -> Result<BrokerHandle, BrokerError> {
    tokio::task::spawn_blocking(move || {
        start(&BrokerConfig {
            mqtt_listen: addr,
            ..BrokerConfig::default()
        })
    })
    .await
    .unwrap()
}

/// Subscribes, publishes QoS 1 and waits for the message to come back: proof that an MQTT
/// broker answers on `addr`.
async fn round_trip(addr: SocketAddr, topic: &str) {
    let client_id = format!("probe-{}", topic.replace('/', "-"));
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    client
        .publish(topic, QoS::AtLeastOnce, false, b"ping".to_vec())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => panic!("no message back from the broker on {addr}"),
            Ok(Err(e)) => panic!("broker on {addr}: {e}"),
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) if p.topic == topic => break,
            Ok(Ok(_)) => {}
        }
    }
    // Let the broker close first: dropping the socket right after DISCONNECT can make
    // rumqttd 0.20 disconnect the next client given the same connection id.
    client.disconnect().await.unwrap();
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => panic!("the broker on {addr} did not close after DISCONNECT"),
            Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_is_served_by_rumqttd_which_stays_up() {
    let broker = start_on(any_port()).await.expect("broker starts on port 0");
    let addr = broker.listen_addr();
    assert_ne!(addr.port(), 0, "the real port is reported");
    assert_eq!(broker.connect_addr(), addr);
    let mut stopped = Box::pin(broker.stopped());
    assert!((&mut stopped).now_or_never().is_none());

    round_trip(broker.connect_addr(), "probe/port-zero").await;
    // rumqttd listens there now, and the reservation is gone: nobody else can bind it.
    let in_use = PortReservation::new(addr).unwrap_err();
    assert_eq!(in_use.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        (&mut stopped).now_or_never().is_none(),
        "a broker that just relayed a round trip is not stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_port_works_and_one_in_use_is_refused() {
    // An explicit port, known free because this test holds it too: reservations coexist
    // (neither listens), and rumqttd binds over both.
    let held = PortReservation::new(any_port()).unwrap();
    let broker = start_on(held.addr())
        .await
        .expect("broker starts on an explicit port");
    assert_eq!(broker.listen_addr(), held.addr());
    round_trip(broker.connect_addr(), "probe/explicit").await;

    // A second broker on the first one's address.
    let err = start_on(broker.listen_addr()).await.unwrap_err();
    assert!(matches!(err, BrokerError::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains("choose another address"), "{err}");

    // Any other listener.
    let other = std::net::TcpListener::bind(any_port()).unwrap();
    let err = start_on(other.local_addr().unwrap()).await.unwrap_err();
    assert!(matches!(err, BrokerError::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains("Address already in use"), "{err}");

    // The first broker is unaffected.
    round_trip(broker.connect_addr(), "probe/explicit-after").await;
    let stopped = broker.stopped().now_or_never();
    assert!(stopped.is_none(), "{stopped:?}");
}

/// SPEC.md §13: a PUBLISH whose topic starts with a multibyte character panics rumqttd's
/// router thread (`protocol/mod.rs:658` slices the topic's first byte) once any filter exists,
/// and the process stays up with no message moving. `stopped()` must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_panics_rumqttd_resolves_stopped() {
    let broker = start_on(any_port()).await.expect("broker starts");
    let stopped = broker.stopped();
    let mut raw = TcpStream::connect(broker.connect_addr()).await.unwrap();

    // CONNECT: MQTT 3.1.1, clean session, keepalive 30 s, client id "poison".
    raw.write_all(&[
        0x10, 18, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 6, b'p', b'o', b'i', b's', b'o',
        b'n',
    ])
    .await
    .unwrap();
    let mut connack = [0u8; 4];
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // SUBSCRIBE "#" QoS 0, packet id 1: the filter the router will match the topic against.
    raw.write_all(&[0x82, 6, 0, 1, 0, 1, b'#', 0])
        .await
        .unwrap();
    let mut suback = [0u8; 5];
    raw.read_exact(&mut suback).await.unwrap();
    assert_eq!(suback, [0x90, 3, 0, 1, 0]);
    // PUBLISH QoS 0 on topic "é" (UTF-8 C3 A9), payload "x".
    raw.write_all(&[0x30, 5, 0, 2, 0xC3, 0xA9, b'x'])
        .await
        .unwrap();
    raw.flush().await.unwrap();

    let reason = tokio::time::timeout(WAIT, stopped)
        .await
        .expect("the router's panic is reported");
    assert!(
        reason.starts_with("broker thread 'router-")
            && reason.contains("panicked at ")
            && reason.contains("protocol/mod.rs")
            && reason.contains("is not a char boundary"),
        "{reason}"
    );
    // Every later waiter gets the same reason at once.
    assert_eq!(broker.stopped().now_or_never(), Some(reason));
}
