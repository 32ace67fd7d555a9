//! The front against a real rumqttd (started with `edgefleet_broker::start`, with an
//! internal credential as in the gateway) and real clients: rumqttc over rustls, mosquitto_pub
//! / mosquitto_sub, and raw TLS or TCP sockets for packets no well-behaved client sends. Both
//! listeners: TLS (client certificates) and plain (local users). Every wait polls with a
//! deadline. Every listener is on port 0 and asked for its real address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use edgefleet_broker::front::{
    self, FrontConfig, FrontEvent, FrontEventKind, FrontHandle, LocalUser, start_front,
};
use edgefleet_broker::pki::{IssuedCert, Pki};
use edgefleet_broker::{BrokerConfig, BrokerHandle, InternalCredential, start};
use edgefleet_protocol::acl::{Action, Identity, LocalGrants};
use edgefleet_protocol::topics::{self, TopicKind};
use futures_util::FutureExt;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill,
    MqttOptions, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Connect, Packet, Protocol};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};

const WAIT: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A broker, a PKI and a front, each test its own.
struct Gateway {
    _dir: tempfile::TempDir,
    files: PathBuf,
    pki: Pki,
    broker: SocketAddr,
    handle: BrokerHandle,
    credential: InternalCredential,
    front: FrontHandle,
    /// The front's plain listener (local users).
    plain: SocketAddr,
}

impl Gateway {
    async fn start() -> Gateway {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tune: impl FnOnce(&mut FrontConfig)) -> Gateway {
        let listener = front::bind(any_port()).await.unwrap();
        Self::start_on(listener, tune)
    }

    /// The front on a listener the test bound itself.
    fn start_on(listener: tokio::net::TcpListener, tune: impl FnOnce(&mut FrontConfig)) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let credential = InternalCredential::load_or_create(dir.path()).unwrap();
        let broker = start(&BrokerConfig {
            mqtt_listen: any_port(),
            credential: Some(credential.clone()),
            ..BrokerConfig::default()
        })
        .expect("broker starts");
        let pki = Pki::load_or_create(&dir.path().join("pki"), &[]).unwrap();
        let mut config = FrontConfig::new(broker.connect_addr());
        config.upstream_login = Some(credential.clone());
        tune(&mut config);
        let front = start_front(listener, config, pki.server_tls_config()).unwrap();
        let plain = std::net::TcpListener::bind(any_port()).unwrap();
        plain.set_nonblocking(true).unwrap();
        let plain = front
            .serve_plain(tokio::net::TcpListener::from_std(plain).unwrap())
            .unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        std::fs::write(files.join("ca.pem"), pki.ca_pem()).unwrap();
        Gateway {
            _dir: dir,
            files,
            pki,
            broker: broker.connect_addr(),
            handle: broker,
            credential,
            front,
            plain,
        }
    }

    /// Creates local users (replacing any) and returns their passwords, by name.
    fn local_users(&self, users: &[(&str, Identity)]) -> std::collections::HashMap<String, String> {
        let all: Vec<_> = users
            .iter()
            .map(|(name, identity)| (*name, identity.clone(), LocalGrants::everything()))
            .collect();
        self.local_users_with(&all)
    }

    /// As [`Self::local_users`], each with its read and write filters.
    fn local_users_with(
        &self,
        users: &[(&str, Identity, LocalGrants)],
    ) -> std::collections::HashMap<String, String> {
        let mut passwords = std::collections::HashMap::new();
        let list = users
            .iter()
            .map(|(name, identity, grants)| {
                let password = format!("pw-{name}-{}", rand_suffix());
                let user = LocalUser {
                    name: (*name).to_owned(),
                    password_sha256: LocalUser::hash_password(&password),
                    identity: identity.clone(),
                    grants: grants.clone(),
                };
                passwords.insert((*name).to_owned(), password);
                user
            })
            .collect();
        self.front.set_local_users(list);
        passwords
    }

    fn port(&self) -> u16 {
        self.front.local_addr().port()
    }

    fn issue(&self, identity: &Identity) -> IssuedCert {
        self.pki.issue_client(identity, 1).unwrap()
    }

    /// Writes a certificate and key for mosquitto clients; returns (cert, key) paths.
    fn write_cert(&self, name: &str, cert: &IssuedCert) -> (PathBuf, PathBuf) {
        let c = self.files.join(format!("{name}.pem"));
        let k = self.files.join(format!("{name}.key"));
        std::fs::write(&c, &cert.cert_pem).unwrap();
        std::fs::write(&k, &cert.key_pem).unwrap();
        (c, k)
    }

    fn ca_file(&self) -> PathBuf {
        self.files.join("ca.pem")
    }
}

fn device(id: &str) -> Identity {
    Identity::Device(id.to_owned())
}

fn client_tls(ca_pem: &str, cert: Option<&IssuedCert>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some(cert) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// An MQTT client whose events (and final error) arrive on a channel. It never reconnects:
/// after the first error the event loop stops, so tests see disconnections.
struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
}

impl Client {
    fn spawn(options: MqttOptions) -> Client {
        let (client, eventloop) = AsyncClient::new(options, 32);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(drive(eventloop, tx));
        Client { client, events }
    }

    /// A client on the broker's internal listener (not through the front), with the
    /// internal credential: what the controller is.
    fn loopback(gw: &Gateway, id: &str) -> Client {
        let mut o = MqttOptions::new(id, gw.broker.ip().to_string(), gw.broker.port());
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_credentials(&gw.credential.username, &gw.credential.password);
        Client::spawn(o)
    }

    /// A client of the front's plain listener, as local user `user`.
    fn plain(gw: &Gateway, client_id: &str, user: &str, password: &str) -> Client {
        let mut o = MqttOptions::new(client_id, gw.plain.ip().to_string(), gw.plain.port());
        o.set_credentials(user, password);
        Client::spawn(o)
    }

    fn tls_options(gw: &Gateway, client_id: &str, cert: Option<&IssuedCert>) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, "localhost", gw.port());
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            client_tls(gw.pki.ca_pem(), cert),
        )));
        o
    }

    fn tls(gw: &Gateway, client_id: &str, cert: &IssuedCert) -> Client {
        Client::spawn(Self::tls_options(gw, client_id, Some(cert)))
    }

    /// Next event matching `pred` within [`WAIT`]; panics on an error or the deadline.
    async fn expect<T>(&mut self, what: &str, mut pred: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("timed out waiting for {what}"),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e}"),
                Ok(Some(Ok(event))) => {
                    if let Some(t) = pred(&event) {
                        return t;
                    }
                }
            }
        }
    }

    async fn connected(&mut self) {
        self.expect("CONNACK", |e| match e {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                Some(())
            }
            _ => None,
        })
        .await;
    }

    /// Waits for the connection to fail or close; returns the error.
    async fn closed(&mut self, what: &str) -> ConnectionError {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("timed out waiting for {what}"),
                Ok(None) => panic!("event loop ended without an error ({what})"),
                Ok(Some(Err(e))) => return e,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection. Dropping the
    /// socket right after DISCONNECT instead races inside rumqttd 0.20: its router frees the
    /// connection id on the DISCONNECT, then the link, seeing the socket closed, reports a
    /// disconnect for that id, which by then may belong to the next client (seen here: a
    /// `writer-8` cut off right after its CONNACK by `writer-7`'s late report).
    async fn disconnect(&mut self) {
        self.client.disconnect().await.unwrap();
        self.closed("the broker closing the connection after DISCONNECT")
            .await;
    }

    async fn suback(&mut self) -> Vec<SubscribeReasonCode> {
        self.expect("SUBACK", |e| match e {
            Event::Incoming(Incoming::SubAck(ack)) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Next PUBLISH received on `topic`.
    async fn message(&mut self, topic: &str) -> Vec<u8> {
        self.expect(&format!("a message on {topic}"), |e| match e {
            Event::Incoming(Incoming::Publish(p)) if p.topic == topic => Some(p.payload.to_vec()),
            _ => None,
        })
        .await
    }

    /// Messages on any topic received within `window` (for asserting an absence, after a
    /// positive control proved delivery works).
    async fn messages_within(&mut self, window: Duration) -> Vec<String> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if let Ok(Event::Incoming(Incoming::Publish(p))) = event {
                got.push(p.topic.clone());
            }
        }
        got
    }
}

async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Result<Event, ConnectionError>>,
) {
    loop {
        let event = eventloop.poll().await;
        let stop = event.is_err();
        if tx.send(event).is_err() || stop {
            return;
        }
    }
}

/// The retained payload of `topic`, read through the loopback listener.
async fn retained(gw: &Gateway, topic: &str) -> Vec<u8> {
    let mut reader = Client::loopback(gw, &format!("reader-{}", rand_suffix()));
    reader.connected().await;
    reader
        .client
        .subscribe(topic, QoS::AtMostOnce)
        .await
        .unwrap();
    let payload = reader.message(topic).await;
    reader.disconnect().await;
    payload
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn publish_loopback(gw: &Gateway, topic: &str, payload: &str, retain: bool) {
    let mut writer = Client::loopback(gw, &format!("writer-{}", rand_suffix()));
    writer.connected().await;
    writer
        .client
        .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
        .await
        .unwrap();
    writer
        .expect("PUBACK", |e| {
            matches!(e, Event::Incoming(Incoming::PubAck(_))).then_some(())
        })
        .await;
    writer.disconnect().await;
}

/// Next front event matching `pred` within [`WAIT`].
async fn front_event(
    events: &mut broadcast::Receiver<FrontEvent>,
    what: &str,
    mut pred: impl FnMut(&FrontEvent) -> bool,
) -> FrontEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("timed out waiting for front event: {what}"),
            Ok(Err(e)) => panic!("front events: {e}"),
            Ok(Ok(event)) if pred(&event) => return event,
            Ok(Ok(_)) => {}
        }
    }
}

fn mosquitto(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (apt-get install mosquitto-clients): {e}")
        });
    eprintln!(
        "{program} {args:?} → {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tls_args<'a>(
    gw_port: &'a str,
    ca: &'a Path,
    cert: Option<&'a (PathBuf, PathBuf)>,
) -> Vec<&'a str> {
    let mut v = vec![
        "-h",
        "localhost",
        "-p",
        gw_port,
        "--cafile",
        ca.to_str().unwrap(),
    ];
    if let Some((c, k)) = cert {
        v.extend(["--cert", c.to_str().unwrap(), "--key", k.to_str().unwrap()]);
    }
    v
}

/// A raw TLS connection for packets no well-behaved client sends.
async fn raw_tls(gw: &Gateway, cert: &IssuedCert) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(gw.pki.ca_pem(), Some(cert)));
    let tcp = TcpStream::connect(gw.front.local_addr()).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

fn connect_packet(client_id: &str) -> BytesMut {
    let mut out = BytesMut::new();
    V4.write(
        Packet::Connect(
            Connect {
                keep_alive: 30,
                client_id: client_id.to_owned(),
                clean_session: true,
            },
            None,
            None,
            None,
            None,
        ),
        &mut out,
    )
    .unwrap();
    out
}

/// Reads until the peer closes (Ok) or the deadline passes (Err); returns the bytes read.
async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(rd: &mut R) -> Result<Vec<u8>, ()> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => return Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reads_and_writes_only_its_own_topics() {
    let gw = Gateway::start().await;
    let mut events = gw.front.subscribe_events();
    let a_cert = gw.issue(&device("press-a"));
    let a_desired = TopicKind::DeviceDesired.for_device("press-a");
    let b_desired = TopicKind::DeviceDesired.for_device("press-b");
    let a_status = TopicKind::DeviceStatus.for_device("press-a");
    let b_status = TopicKind::DeviceStatus.for_device("press-b");
    publish_loopback(&gw, &b_status, "b-original", true).await;

    let mut a = Client::tls(&gw, "edgefleet-agent-press-a", &a_cert);
    a.connected().await;
    // One SUBSCRIBE, allowed and refused filters mixed: codes come back in order.
    a.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new(b_desired.clone(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(a_desired.clone(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(
                "edgefleet/v1/devices/+/desired".into(),
                QoS::AtLeastOnce,
            ),
            rumqttc::SubscribeFilter::new(topics::controller_presence(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        a.suback().await,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtMostOnce),
        ]
    );
    let refused = front_event(&mut events, "subscribe refusal", |e| {
        matches!(
            &e.kind,
            FrontEventKind::Refused {
                action: Action::Subscribe,
                ..
            }
        )
    })
    .await;
    assert_eq!(refused.identity, Some(device("press-a")));

    // B's desired state is published first, A's second; A gets its own and never B's.
    publish_loopback(&gw, &b_desired, "{\"for\":\"b\"}", true).await;
    publish_loopback(&gw, &a_desired, "{\"for\":\"a\"}", true).await;
    assert_eq!(a.message(&a_desired).await, b"{\"for\":\"a\"}");
    let late = a.messages_within(Duration::from_millis(500)).await;
    assert!(
        !late.contains(&b_desired),
        "A received B's desired state: {late:?}"
    );

    // A publishes its own status (retained): visible on the loopback listener.
    a.client
        .publish(&a_status, QoS::AtLeastOnce, true, b"a-status".to_vec())
        .await
        .unwrap();
    a.expect("PUBACK", |e| {
        matches!(e, Event::Incoming(Incoming::PubAck(_))).then_some(())
    })
    .await;
    assert_eq!(retained(&gw, &a_status).await, b"a-status");

    // A publishing B's status is disconnected; B's retained status is unchanged.
    a.client
        .publish(&b_status, QoS::AtLeastOnce, true, b"forged".to_vec())
        .await
        .unwrap();
    a.closed("disconnect after a forged publish").await;
    front_event(&mut events, "publish refusal", |e| {
        matches!(&e.kind, FrontEventKind::Refused { action: Action::Publish, topic, .. } if topic == &b_status)
    })
    .await;
    assert_eq!(retained(&gw, &b_status).await, b"b-original");

    // An empty retained payload on its own state topic would erase it: refused too.
    let mut a = Client::tls(&gw, "edgefleet-agent-press-a", &a_cert);
    a.connected().await;
    a.client
        .publish(&a_status, QoS::AtLeastOnce, true, Vec::new())
        .await
        .unwrap();
    a.closed("disconnect after an empty state payload").await;
    assert_eq!(retained(&gw, &a_status).await, b"a-status");

    // Nobody can take another client's session: A's cert with B's (or the controller's) id.
    for id in ["edgefleet-agent-press-b", "edgefleet-controller"] {
        let mut wrong = Client::tls(&gw, id, &a_cert);
        let err = wrong.closed("refused client id").await;
        assert!(
            matches!(
                err,
                ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId)
            ),
            "{err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_are_confined_too() {
    let gw = Gateway::start().await;
    let port = gw.port().to_string();
    let ca = gw.ca_file();
    let a = gw.write_cert("a", &gw.issue(&device("press-a")));
    let scada = gw.write_cert(
        "scada",
        &gw.issue(&Identity::Integrator("scada".to_owned())),
    );
    let a_status = TopicKind::DeviceStatus.for_device("press-a");

    let mut args = tls_args(&port, &ca, Some(&a));
    args.extend([
        "-i",
        "edgefleet-agent-press-a",
        "-q",
        "1",
        "-r",
        "-t",
        &a_status,
        "-m",
        "from-mosquitto",
    ]);
    assert!(mosquitto("mosquitto_pub", &args).status.success());
    assert_eq!(retained(&gw, &a_status).await, b"from-mosquitto");

    // Subscribing to another device's desired state: every filter refused.
    let b_desired = TopicKind::DeviceDesired.for_device("press-b");
    let mut args = tls_args(&port, &ca, Some(&a));
    args.extend([
        "-i",
        "edgefleet-agent-press-a",
        "-t",
        &b_desired,
        "-C",
        "1",
        "-W",
        "5",
    ]);
    let out = mosquitto("mosquitto_sub", &args);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("All subscription requests were denied"),
        "mosquitto_sub must see its only filter refused (SUBACK 0x80)"
    );
    assert!(out.stdout.is_empty());

    // The integrator reads every device's status (retained replay) through the front.
    let mut args = tls_args(&port, &ca, Some(&scada));
    args.extend([
        "-i",
        "integrator:scada",
        "-t",
        "edgefleet/v1/devices/+/status",
        "-C",
        "1",
        "-W",
        "5",
        "-v",
    ]);
    let out = mosquitto("mosquitto_sub", &args);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{a_status} from-mosquitto")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_or_a_foreign_ca_cannot_connect() {
    let gw = Gateway::start().await;
    let mut events = gw.front.subscribe_events();
    let port = gw.port().to_string();
    let ca = gw.ca_file();
    let a_status = TopicKind::DeviceStatus.for_device("press-a");

    let mut args = tls_args(&port, &ca, None);
    args.extend([
        "-i",
        "edgefleet-agent-press-a",
        "-t",
        &a_status,
        "-m",
        "x",
        "-r",
    ]);
    assert!(!mosquitto("mosquitto_pub", &args).status.success());
    front_event(&mut events, "handshake without certificate", |e| {
        matches!(e.kind, FrontEventKind::HandshakeFailed { .. })
    })
    .await;

    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(other_dir.path(), &[]).unwrap();
    let foreign = gw.write_cert(
        "foreign",
        &other.issue_client(&device("press-a"), 1).unwrap(),
    );
    let mut args = tls_args(&port, &ca, Some(&foreign));
    args.extend([
        "-i",
        "edgefleet-agent-press-a",
        "-t",
        &a_status,
        "-m",
        "x",
        "-r",
    ]);
    assert!(!mosquitto("mosquitto_pub", &args).status.success());
    let failed = front_event(&mut events, "handshake with a foreign certificate", |e| {
        matches!(e.kind, FrontEventKind::HandshakeFailed { .. })
    })
    .await;
    assert_eq!(failed.identity, None);

    // rumqttc without a client certificate fails too, and nothing reached the broker.
    let mut anonymous = Client::spawn(Client::tls_options(&gw, "edgefleet-agent-press-a", None));
    anonymous.closed("refused handshake").await;
    publish_loopback(&gw, &a_status, "control", true).await;
    assert_eq!(retained(&gw, &a_status).await, b"control");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_delay_a_device() {
    let handshake_timeout = Duration::from_secs(3);
    let gw = Gateway::start_with(|c| c.handshake_timeout = handshake_timeout).await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(gw.front.local_addr()).await.unwrap());
    }
    let cert = gw.issue(&device("press-a"));
    let started = Instant::now();
    let mut a = Client::tls(&gw, "edgefleet-agent-press-a", &cert);
    a.connected().await;
    let elapsed = started.elapsed();
    println!("device TLS+MQTT connect with 50 idle sockets open: {elapsed:?}");
    eprintln!("device TLS+MQTT connect with 50 idle sockets open: {elapsed:?}");
    assert!(
        elapsed < handshake_timeout / 4,
        "connect took {elapsed:?} with 50 idle sockets (handshake timeout {handshake_timeout:?})"
    );
    // The idle sockets are closed once their handshake time is up.
    let started = Instant::now();
    for socket in &mut idle {
        read_until_closed(socket)
            .await
            .expect("idle socket closed by the front");
    }
    let waited = started.elapsed();
    println!("50 idle sockets closed after a further {waited:?}");
    assert!(waited < handshake_timeout + Duration::from_secs(2));
}

/// With no waiting room, a socket beyond the pending handshakes is closed at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_beyond_the_pending_handshake_cap_are_closed_at_once() {
    let gw = Gateway::start_with(|c| {
        c.max_pending_handshakes = 2;
        c.max_waiting_handshakes = 0;
        c.handshake_timeout = Duration::from_secs(3);
    })
    .await;
    let mut events = gw.front.subscribe_events();
    let _held = [
        TcpStream::connect(gw.front.local_addr()).await.unwrap(),
        TcpStream::connect(gw.front.local_addr()).await.unwrap(),
    ];
    // The held sockets may still be in the accept queue: a third socket is closed at accept
    // once both hold their place (reported so), whichever attempt that is.
    wait_until_closed_at_accept(&mut events, gw.front.local_addr(), "already pending").await;
    // Once the held sockets time out (each reported), devices connect again.
    for n in 0..2 {
        front_event(&mut events, &format!("held socket {n} timing out"), |e| {
            matches!(&e.kind, FrontEventKind::HandshakeFailed { reason } if reason.contains("no TLS handshake within"))
        })
        .await;
    }
    let cert = gw.issue(&device("press-cap"));
    let mut a = Client::tls(&gw, "edgefleet-agent-press-cap", &cert);
    a.connected().await;
}

/// Connects to `addr` until a socket is closed by the front within a second of connecting
/// and the front reports why (`reason` in it): the held sockets ahead of it may still be in
/// the accept queue on the first attempts.
async fn wait_until_closed_at_accept(
    events: &mut broadcast::Receiver<FrontEvent>,
    addr: SocketAddr,
    reason: &str,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no socket was closed at accept");
        let mut probe = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let closed =
            tokio::time::timeout(Duration::from_secs(1), read_until_closed(&mut probe)).await;
        if closed.is_ok() && started.elapsed() < Duration::from_secs(1) {
            front_event(events, "the socket over the cap is reported", |e| {
                matches!(&e.kind, FrontEventKind::HandshakeFailed { reason: r } if r.contains(reason))
            })
            .await;
            return;
        }
    }
}

/// A TCP connection to `addr` from the loopback address `from` (e.g. 127.0.0.2: another
/// host, as far as the front's per-address share is concerned).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A device's full MQTT connect over TLS from `from`: TLS handshake, CONNECT, CONNACK 0.
async fn device_connects_from(gw: &Gateway, from: [u8; 4], id: &str) {
    let cert = gw.issue(&device(id));
    let connector = tokio_rustls::TlsConnector::from(client_tls(gw.pki.ca_pem(), Some(&cert)));
    let tcp = connect_from(from, gw.front.local_addr()).await;
    let mut tls = tokio::time::timeout(
        WAIT,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("a TLS handshake in time")
    .expect("TLS handshake");
    tls.write_all(&connect_packet(&format!("edgefleet-agent-{id}")))
        .await
        .unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, tls.read_exact(&mut ack))
        .await
        .expect("a CONNACK in time")
        .unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
}

/// One address filling its share of the pending handshakes and its waiting room does not
/// lock out another: with a share of 2 and room for 1 waiting, a fourth idle socket from
/// 127.0.0.1 is closed at accept (reported with the address) while a device from 127.0.0.2
/// connects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_takes_only_its_share_of_pending_handshakes() {
    let gw = Gateway::start_with(|c| {
        c.max_pending_handshakes = 8;
        c.max_pending_per_address = 2;
        c.max_waiting_per_address = 1;
    })
    .await;
    let mut events = gw.front.subscribe_events();
    let _held = [
        TcpStream::connect(gw.front.local_addr()).await.unwrap(),
        TcpStream::connect(gw.front.local_addr()).await.unwrap(),
        TcpStream::connect(gw.front.local_addr()).await.unwrap(),
    ];
    wait_until_closed_at_accept(&mut events, gw.front.local_addr(), "waiting from 127.0.0.1").await;
    let started = Instant::now();
    device_connects_from(&gw, [127, 0, 0, 2], "press-share").await;
    let took = started.elapsed();
    // The held sockets keep 127.0.0.1's places for their whole 5 s handshake time.
    assert!(
        took < Duration::from_secs(4),
        "a device from another address waited {took:?}"
    );
}

/// A device over its address's share (a plant behind one NAT address, reconnecting after a
/// gateway restart) waits for a place instead of being closed at accept: with a share of 2
/// held by two idle sockets from 127.0.0.1, a device from 127.0.0.1 connects once they time
/// out (1 s), and nothing was closed at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_addresss_share_waits_for_a_place() {
    let handshake_timeout = Duration::from_secs(1);
    let gw = Gateway::start_with(|c| {
        c.max_pending_per_address = 2;
        c.handshake_timeout = handshake_timeout;
    })
    .await;
    let mut events = gw.front.subscribe_events();
    let held = [
        TcpStream::connect(gw.front.local_addr()).await.unwrap(),
        TcpStream::connect(gw.front.local_addr()).await.unwrap(),
    ];
    // The kernel hands connections to accept in the order they arrived, and the accept loop
    // gives the free places in that order: the held sockets take both, the device waits.
    let started = Instant::now();
    device_connects_from(&gw, [127, 0, 0, 1], "press-wait").await;
    let took = started.elapsed();
    eprintln!("a device behind two idle sockets of its address connected after {took:?}");
    assert!(
        took >= handshake_timeout - Duration::from_millis(100),
        "the device connected after {took:?}: it did not wait for the held places"
    );
    let mut timed_out = 0;
    while let Ok(e) = events.try_recv() {
        if let FrontEventKind::HandshakeFailed { reason } = &e.kind {
            assert!(!reason.contains("closed at accept"), "{reason}");
            timed_out += usize::from(reason.contains("no TLS handshake within"));
        }
    }
    assert_eq!(timed_out, held.len(), "both held sockets timed out");
}

/// 1,100 idle sockets from one address on each listener (TLS and plain), the defaults
/// otherwise: a device and a local user from another address connect at once, and every
/// idle socket is closed by the front within 60 s (the handshake and CONNECT timeouts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_sockets_per_listener_are_closed_and_devices_still_connect() {
    const IDLE: usize = 1100;
    let gw = Gateway::start().await;
    let users = gw.local_users(&[("historian", Identity::Local("historian".into()))]);
    let mut idle = Vec::with_capacity(2 * IDLE);
    for addr in [gw.front.local_addr(), gw.plain] {
        for _ in 0..IDLE {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
    }
    let started = Instant::now();
    device_connects_from(&gw, [127, 0, 0, 2], "press-idle").await;
    let mut local = connect_from([127, 0, 0, 2], gw.plain).await;
    local
        .write_all(&raw_connect(
            "historian",
            &users["historian"],
            "historian-idle",
            30,
            true,
        ))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    match next_packet(&mut local, &mut buf).await {
        Packet::ConnAck(ack, _) => {
            assert_eq!(ack.code, rumqttd::protocol::ConnectReturnCode::Success)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    eprintln!(
        "device and local user connected {:?} after the idle sockets",
        started.elapsed()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (n, mut socket) in idle.into_iter().enumerate() {
        let mut byte = [0u8; 1];
        match tokio::time::timeout_at(deadline, socket.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("idle socket {n} was sent data"),
            Err(_) => panic!("idle socket {n} still open after 60 s"),
        }
    }
    eprintln!(
        "all {} idle sockets closed {:?} after they opened",
        2 * IDLE,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_client_is_refused_and_others_keep_working() {
    let gw = Gateway::start().await;
    let port = gw.port().to_string();
    let ca = gw.ca_file();
    let b_cert = gw.issue(&device("press-b"));
    let b_desired = TopicKind::DeviceDesired.for_device("press-b");
    let mut b = Client::tls(&gw, "edgefleet-agent-press-b", &b_cert);
    b.connected().await;
    b.client
        .subscribe(&b_desired, QoS::AtLeastOnce)
        .await
        .unwrap();
    b.suback().await;

    let a = gw.write_cert("a", &gw.issue(&device("press-a")));
    let a_status = TopicKind::DeviceStatus.for_device("press-a");
    let mut args = tls_args(&port, &ca, Some(&a));
    args.extend([
        "-V",
        "mqttv5",
        "-D",
        "publish",
        "user-property",
        "a",
        "b",
        "-i",
        "edgefleet-agent-press-a",
        "-q",
        "1",
        "-t",
        &a_status,
        "-m",
        "v5",
    ]);
    let out = mosquitto("mosquitto_pub", &args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unsupported Protocol Version"),
        "mosquitto_pub should report the refused protocol version"
    );

    // The broker still serves the connected device and new v3.1.1 connections.
    publish_loopback(&gw, &b_desired, "after-v5", true).await;
    assert_eq!(b.message(&b_desired).await, b"after-v5");
    let mut args = tls_args(&port, &ca, Some(&a));
    args.extend([
        "-i",
        "edgefleet-agent-press-a",
        "-q",
        "1",
        "-r",
        "-t",
        &a_status,
        "-m",
        "v4",
    ]);
    assert!(mosquitto("mosquitto_pub", &args).status.success());
    assert_eq!(retained(&gw, &a_status).await, b"v4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversize_packets_close_only_their_connection() {
    let gw = Gateway::start_with(|c| c.max_packet_bytes = 64 * 1024).await;
    let b_cert = gw.issue(&device("press-b"));
    let b_events = TopicKind::DeviceEvents.for_device("press-b");
    let mut reader = Client::loopback(&gw, "events-reader");
    reader.connected().await;
    reader
        .client
        .subscribe(&b_events, QoS::AtLeastOnce)
        .await
        .unwrap();
    reader.suback().await;
    let mut b = Client::tls(&gw, "edgefleet-agent-press-b", &b_cert);
    b.connected().await;

    let c_cert = gw.issue(&device("press-c"));
    let cases: [(&str, Vec<u8>); 4] = [
        ("reserved packet type", vec![0xF0, 0x00]),
        (
            "remaining length over 4 bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        ),
        // PUBLISH announcing 10 MiB: refused from the header, before reading the body.
        ("oversize publish", vec![0x30, 0x80, 0x80, 0x80, 0x05]),
        (
            "publish with QoS 3",
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        ),
    ];
    for (i, (what, garbage)) in cases.into_iter().enumerate() {
        let mut raw = raw_tls(&gw, &c_cert).await;
        raw.write_all(&connect_packet("edgefleet-agent-press-c"))
            .await
            .unwrap();
        let mut connack = [0u8; 4];
        raw.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "{what}");
        raw.write_all(&garbage).await.unwrap();
        raw.flush().await.unwrap();
        read_until_closed(&mut raw)
            .await
            .unwrap_or_else(|()| panic!("{what}: connection not closed"));

        // B is still connected and its events still reach the broker.
        let payload = format!("{{\"n\":{i}}}");
        b.client
            .publish(
                &b_events,
                QoS::AtLeastOnce,
                false,
                payload.clone().into_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(
            reader.message(&b_events).await,
            payload.as_bytes(),
            "after {what}"
        );
    }

    // A last will on another device's topic is refused at CONNECT (CONNACK 5).
    let mut raw = raw_tls(&gw, &c_cert).await;
    let mut connect = BytesMut::new();
    V4.write(
        Packet::Connect(
            Connect {
                keep_alive: 30,
                client_id: "edgefleet-agent-press-c".to_owned(),
                clean_session: true,
            },
            None,
            Some(rumqttd::protocol::LastWill {
                topic: TopicKind::DevicePresence.for_device("press-b").into(),
                message: "offline".into(),
                qos: rumqttd::protocol::QoS::AtLeastOnce,
                retain: true,
            }),
            None,
            None,
        ),
        &mut connect,
    )
    .unwrap();
    raw.write_all(&connect).await.unwrap();
    let answer = read_until_closed(&mut raw)
        .await
        .expect("closed after the refusal");
    assert_eq!(answer, [0x20, 0x02, 0x00, 0x05]);

    // A first packet that is not CONNECT is closed too.
    let mut raw = raw_tls(&gw, &c_cert).await;
    raw.write_all(&[0xC0, 0x00]).await.unwrap();
    read_until_closed(&mut raw)
        .await
        .expect("PINGREQ before CONNECT closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_reads_the_read_model_and_writes_nothing() {
    let gw = Gateway::start().await;
    let mut events = gw.front.subscribe_events();
    let cert = gw.issue(&Identity::Integrator("scada".to_owned()));
    let a_status = TopicKind::DeviceStatus.for_device("press-a");
    let a_desired = TopicKind::DeviceDesired.for_device("press-a");
    let site = topics::site_summary("lyon");

    let mut scada = Client::tls(&gw, "integrator:scada:hmi-1", &cert);
    scada.connected().await;
    scada
        .client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("#".into(), QoS::AtMostOnce),
            rumqttc::SubscribeFilter::new(
                TopicKind::DeviceStatus.all_devices_filter(),
                QoS::AtMostOnce,
            ),
            rumqttc::SubscribeFilter::new(topics::fleet_filter(), QoS::AtMostOnce),
            rumqttc::SubscribeFilter::new(
                TopicKind::DeviceDesired.all_devices_filter(),
                QoS::AtMostOnce,
            ),
            rumqttc::SubscribeFilter::new(a_desired.clone(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        scada.suback().await,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
        ]
    );
    // Only `#` refused alone: answered by the front, nothing forwarded.
    scada.client.subscribe("#", QoS::AtMostOnce).await.unwrap();
    assert_eq!(scada.suback().await, vec![SubscribeReasonCode::Failure]);

    publish_loopback(&gw, &a_desired, "secret", true).await;
    publish_loopback(&gw, &a_status, "a-status", true).await;
    publish_loopback(&gw, &site, "lyon-summary", true).await;
    assert_eq!(scada.message(&a_status).await, b"a-status");
    assert_eq!(scada.message(&site).await, b"lyon-summary");
    let late = scada.messages_within(Duration::from_millis(300)).await;
    assert!(
        !late.contains(&a_desired),
        "integrator got desired state: {late:?}"
    );

    // Publishing anything, even a read-model topic, disconnects it.
    scada
        .client
        .publish(&site, QoS::AtLeastOnce, true, b"forged".to_vec())
        .await
        .unwrap();
    scada.closed("disconnect after publishing").await;
    front_event(&mut events, "integrator publish refusal", |e| {
        matches!(
            &e.kind,
            FrontEventKind::Refused {
                action: Action::Publish,
                ..
            }
        )
    })
    .await;
    assert_eq!(retained(&gw, &site).await, b"lyon-summary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_off_and_its_will_fires() {
    let gw = Gateway::start().await;
    let mut events = gw.front.subscribe_events();
    let cert = gw.issue(&device("press-a"));
    let presence = TopicKind::DevicePresence.for_device("press-a");
    let mut watcher = Client::loopback(&gw, "presence-watcher");
    watcher.connected().await;
    watcher
        .client
        .subscribe(&presence, QoS::AtLeastOnce)
        .await
        .unwrap();
    watcher.suback().await;

    let mut options = Client::tls_options(&gw, "edgefleet-agent-press-a", Some(&cert));
    options.set_last_will(LastWill::new(&presence, "offline", QoS::AtLeastOnce, true));
    let mut a = Client::spawn(options.clone());
    a.connected().await;
    a.client
        .publish(&presence, QoS::AtLeastOnce, true, b"online".to_vec())
        .await
        .unwrap();
    assert_eq!(watcher.message(&presence).await, b"online");

    assert_eq!(gw.front.connections_of(&device("press-a")), 1);
    assert_eq!(gw.front.revoke(&cert.serial), 1);
    a.closed("disconnect on revocation").await;
    assert_eq!(
        watcher.message(&presence).await,
        b"offline",
        "the will fires"
    );

    let mut again = Client::spawn(options);
    again.closed("revoked certificate refused").await;
    let refused = front_event(&mut events, "revoked connect refused", |e| {
        matches!(
            &e.kind,
            FrontEventKind::Refused {
                action: Action::Connect,
                ..
            }
        )
    })
    .await;
    assert_eq!(refused.identity, Some(device("press-a")));

    // Revoking an identity refuses every certificate it has, including new ones.
    let b = device("press-b");
    let mut b_client = Client::tls(&gw, "edgefleet-agent-press-b", &gw.issue(&b));
    b_client.connected().await;
    assert_eq!(gw.front.revoke_identity(&b), 1);
    b_client.closed("disconnect on identity revocation").await;
    let mut b_new = Client::tls(&gw, "edgefleet-agent-press-b", &gw.issue(&b));
    b_new.closed("revoked identity refused").await;
    assert_eq!(gw.front.connections_of(&b), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_error_says_what_to_do() {
    let gw = Gateway::start().await;
    let err = front::bind(gw.front.local_addr()).await.unwrap_err();
    assert!(err.to_string().contains("choose another address"), "{err}");
}

/// A front that serves is not stopped; dropping its handle stops it (and closes the relayed
/// connections, as before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_front_is_not_stopped_and_a_dropped_one_is() {
    let gw = Gateway::start().await;
    let mut stopped = Box::pin(gw.front.stopped());
    assert!((&mut stopped).now_or_never().is_none());
    let cert = gw.issue(&device("press-a"));
    let a_status = TopicKind::DeviceStatus.for_device("press-a");
    let mut a = Client::tls(&gw, "edgefleet-agent-press-a", &cert);
    a.connected().await;
    a.client
        .publish(
            &a_status,
            QoS::AtLeastOnce,
            true,
            b"through-the-front".to_vec(),
        )
        .await
        .unwrap();
    a.expect("PUBACK", |e| {
        matches!(e, Event::Incoming(Incoming::PubAck(_))).then_some(())
    })
    .await;
    assert_eq!(retained(&gw, &a_status).await, b"through-the-front");
    assert!(
        (&mut stopped).now_or_never().is_none(),
        "a front that just relayed a round trip is not stopped"
    );

    let Gateway { front, .. } = gw;
    drop(front);
    let reason = tokio::time::timeout(WAIT, stopped)
        .await
        .expect("dropping the handle stops the front");
    // Both accept loops (TLS and plain) are shut down; the first one reported wins.
    assert!(
        reason == "the TLS front's accept loop was shut down"
            || reason == "the plain MQTT front's accept loop was shut down",
        "{reason}"
    );
    a.closed("relayed connection closed with the front").await;
}

/// When the listening socket fails for good (here: shut down through a duplicate of its
/// descriptor, after which accept(2) gives EINVAL), the accept loop ends and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_whose_listener_fails_is_stopped() {
    let listener = std::net::TcpListener::bind(any_port()).unwrap();
    listener.set_nonblocking(true).unwrap();
    let duplicate = listener.try_clone().unwrap();
    let gw = Gateway::start_on(tokio::net::TcpListener::from_std(listener).unwrap(), |_| {});
    let stopped = gw.front.stopped();
    let mut a = Client::tls(
        &gw,
        "edgefleet-agent-press-a",
        &gw.issue(&device("press-a")),
    );
    a.connected().await;

    let socket = std::net::TcpStream::from(std::os::fd::OwnedFd::from(duplicate));
    socket.shutdown(std::net::Shutdown::Read).unwrap();
    let reason = tokio::time::timeout(WAIT, stopped)
        .await
        .expect("the accept loop's end is reported");
    assert!(
        reason.starts_with("the TLS front's accept loop ended: the listener failed: "),
        "{reason}"
    );
    let refused = TcpStream::connect(gw.front.local_addr()).await;
    assert!(refused.is_err(), "nothing listens any more");
}

/// After forwarding a client's DISCONNECT the front leaves the upstream connection open until
/// the broker closes it: rumqttd 0.20 frees the connection id on the DISCONNECT, and if the
/// socket closed first its link would report the disconnect again, under an id that may
/// already be the next client's (seen in this suite: a client cut off right after CONNACK).
/// A fake upstream shows it: what it sends after the DISCONNECT still reaches the client,
/// which is only possible if the front has not closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clean_disconnect_the_broker_closes_first() {
    let upstream = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let fake = upstream.local_addr().unwrap();
    // Without an upstream login, the CONNECT the fake broker reads is the client's own.
    // The proxied path (integrators, local users; devices without the hub): the hub's own
    // connections would reach the fake broker first.
    let gw = Gateway::start_with(|c| {
        c.upstream = fake;
        c.upstream_login = None;
        c.device_hub = false;
    })
    .await;
    let mut events = gw.front.subscribe_events();
    let mut raw = raw_tls(&gw, &gw.issue(&device("press-a"))).await;
    raw.write_all(&connect_packet("edgefleet-agent-press-a"))
        .await
        .unwrap();

    let (mut broker, _) = upstream.accept().await.unwrap();
    let connect = connect_packet("edgefleet-agent-press-a");
    let mut got = vec![0u8; connect.len()];
    broker.read_exact(&mut got).await.unwrap();
    assert_eq!(got, &connect[..], "the CONNECT reaches the broker");
    broker.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    let mut connack = [0u8; 4];
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);

    raw.write_all(&[0xE0, 0x00]).await.unwrap();
    raw.flush().await.unwrap();
    let mut disconnect = [0u8; 2];
    broker.read_exact(&mut disconnect).await.unwrap();
    assert_eq!(disconnect, [0xE0, 0x00], "the DISCONNECT is forwarded");
    // A PINGRESP after the DISCONNECT, then the broker closes.
    broker.write_all(&[0xD0, 0x00]).await.unwrap();
    drop(broker);
    let after = read_until_closed(&mut raw)
        .await
        .expect("the front closes once the broker has");
    assert_eq!(after, [0xD0, 0x00], "the front was still relaying");
    let ended = front_event(&mut events, "the clean disconnect", |e| {
        matches!(e.kind, FrontEventKind::Disconnected { .. })
    })
    .await;
    assert_eq!(
        ended.kind,
        FrontEventKind::Disconnected {
            reason: "client sent DISCONNECT".to_owned()
        }
    );
}

/// Without the internal credential nobody gets onto rumqttd's own listener: no login, a
/// wrong password, mosquitto_sub anonymous. With it (the controller's way) it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_listener_takes_only_the_internal_credential() {
    let gw = Gateway::start().await;
    let mut anonymous = Client::spawn(MqttOptions::new(
        "anonymous",
        gw.broker.ip().to_string(),
        gw.broker.port(),
    ));
    let err = anonymous.closed("anonymous client refused").await;
    assert!(
        !matches!(
            err,
            ConnectionError::ConnectionRefused(ConnectReturnCode::Success)
        ),
        "{err:?}"
    );
    let mut o = MqttOptions::new("guesser", gw.broker.ip().to_string(), gw.broker.port());
    o.set_credentials(InternalCredential::USERNAME, "not-the-password");
    let mut wrong = Client::spawn(o);
    wrong.closed("wrong password refused").await;
    let port = gw.broker.port().to_string();
    let out = mosquitto(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "#",
            "-C",
            "1",
            "-W",
            "3",
        ],
    );
    assert!(!out.status.success(), "anonymous mosquitto_sub got in");
    let mut ok = Client::loopback(&gw, "with-credential");
    ok.connected().await;
    ok.disconnect().await;
    // The password file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(gw._dir.path().join(InternalCredential::FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A device publishes its status through the TLS front and a client with the internal
/// credential (the controller's place) receives it within 2 s: the broker serves.
async fn assert_broker_serves(gw: &Gateway, device_cert: &IssuedCert, round: &str) {
    assert!(
        gw.handle.stopped().now_or_never().is_none(),
        "the broker died ({round})"
    );
    let status = TopicKind::DeviceStatus.for_device("press-ok");
    let mut controller = Client::loopback(gw, &format!("controller-{}", rand_suffix()));
    controller.connected().await;
    controller
        .client
        .subscribe(&status, QoS::AtMostOnce)
        .await
        .unwrap();
    controller.suback().await;
    let mut dev = Client::tls(gw, "edgefleet-agent-press-ok", device_cert);
    dev.connected().await;
    let started = Instant::now();
    let body = format!("status after {round}");
    dev.client
        .publish(&status, QoS::AtLeastOnce, false, body.clone().into_bytes())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), controller.message(&status))
        .await
        .unwrap_or_else(|_| panic!("no status within 2 s after {round}"));
    assert_eq!(got, body.as_bytes());
    eprintln!("{round}: status relayed in {:?}", started.elapsed());
    dev.disconnect().await;
    controller.disconnect().await;
}

/// Every topic and filter shape that panicked rumqttd 0.20 in our probes, sent on both
/// listeners by the most privileged client each allows, while a subscription exists (the
/// panics are in matching): each is refused at the front, and the broker goes on serving.
/// Shapes (probed against a bare `edgefleet broker`): a PUBLISH to `é` (router thread,
/// `protocol/mod.rs:658`, with any subscription present); a last will on `é` (the same, when
/// it fires); non-ASCII first characters in general.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_that_panic_rumqttd_never_reach_it() {
    let gw = Gateway::start().await;
    let ok_cert = gw.issue(&device("press-ok"));
    let dev_cert = gw.issue(&device("press-e"));
    let users = gw.local_users(&[
        ("bridge", Identity::Bridge("bridge".into())),
        ("local", Identity::Local("local".into())),
    ]);
    // A subscription that matches nothing we send: matching itself is what panics.
    let mut sub = Client::loopback(&gw, "matcher");
    sub.connected().await;
    sub.client.subscribe("x/+", QoS::AtMostOnce).await.unwrap();
    sub.suback().await;
    assert_broker_serves(&gw, &ok_cert, "start").await;

    let plain_port = gw.plain.port().to_string();
    let tls_port = gw.port().to_string();
    let ca = gw.ca_file();
    let dev_files = gw.write_cert("press-e", &dev_cert);
    for topic in ["é", "éa/b", "\u{1}x"] {
        // mosquitto_pub on the plain listener, as the bridge (allowed every topic).
        let bridge_pw = &users["bridge"];
        let out = mosquitto(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &plain_port,
                "-u",
                "bridge",
                "-P",
                bridge_pw,
                "-i",
                "bridge-1",
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                "x",
            ],
        );
        let _ = out;
        assert_broker_serves(&gw, &ok_cert, &format!("plain publish to {topic:?}")).await;
        // The same on the TLS listener with a device certificate.
        let mut args = tls_args(&tls_port, &ca, Some(&dev_files));
        args.extend([
            "-i",
            "edgefleet-agent-press-e",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            "x",
        ]);
        let _ = mosquitto("mosquitto_pub", &args);
        assert_broker_serves(&gw, &ok_cert, &format!("TLS publish to {topic:?}")).await;
        // As a last will, on both listeners: refused at CONNECT.
        let mut o = MqttOptions::new("bridge-will", gw.plain.ip().to_string(), gw.plain.port());
        o.set_credentials("bridge", bridge_pw);
        o.set_last_will(LastWill::new(topic, "bye", QoS::AtMostOnce, false));
        let mut will = Client::spawn(o);
        let err = will.closed("will refused").await;
        assert!(
            matches!(
                err,
                ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
            ),
            "{err:?}"
        );
        let mut o = Client::tls_options(&gw, "edgefleet-agent-press-e", Some(&dev_cert));
        o.set_last_will(LastWill::new(topic, "bye", QoS::AtMostOnce, false));
        let mut will = Client::spawn(o);
        will.closed("will refused").await;
        assert_broker_serves(&gw, &ok_cert, &format!("wills on {topic:?}")).await;
        // As a filter: refused in SUBACK, never forwarded.
        let mut b = Client::plain(&gw, "bridge-sub", "bridge", bridge_pw);
        b.connected().await;
        b.client.subscribe(topic, QoS::AtMostOnce).await.unwrap();
        assert_eq!(b.suback().await, vec![SubscribeReasonCode::Failure]);
        b.disconnect().await;
    }
    // A raw PUBLISH to `é` as the bridge: the connection is closed.
    let mut raw = TcpStream::connect(gw.plain).await.unwrap();
    let mut connect = BytesMut::new();
    V4.write(
        Packet::Connect(
            Connect {
                keep_alive: 30,
                client_id: "bridge-raw".into(),
                clean_session: true,
            },
            None,
            None,
            None,
            Some(rumqttd::protocol::Login {
                username: "bridge".into(),
                password: users["bridge"].clone(),
            }),
        ),
        &mut connect,
    )
    .unwrap();
    raw.write_all(&connect).await.unwrap();
    let mut publish = vec![0x30, 0x05, 0x00, 0x02];
    publish.extend_from_slice("é".as_bytes());
    publish.push(b'x');
    raw.write_all(&publish).await.unwrap();
    let answer = read_until_closed(&mut raw)
        .await
        .expect("connection closed");
    assert_eq!(
        &answer[..4],
        &[0x20, 0x02, 0x00, 0x00],
        "CONNACK, then closed"
    );
    assert_broker_serves(&gw, &ok_cert, "raw publish to é").await;
}

/// The plain listener: no user, an unknown one or a wrong password never get in; a local
/// user stays outside edgefleet/, a bridge reads everything; removing a user cuts it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_listener_takes_only_local_users_confined_by_role() {
    let gw = Gateway::start().await;
    let users = gw.local_users(&[
        ("historian", Identity::Local("historian".into())),
        ("bridge", Identity::Bridge("bridge".into())),
        ("press-p", device("press-p")),
    ]);
    let mut none = Client::spawn(MqttOptions::new(
        "nobody",
        gw.plain.ip().to_string(),
        gw.plain.port(),
    ));
    let err = none.closed("no credentials").await;
    assert!(
        matches!(
            err,
            ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
        ),
        "{err:?}"
    );
    let mut wrong = Client::plain(&gw, "guess", "historian", "guess");
    let err = wrong.closed("wrong password").await;
    assert!(
        matches!(
            err,
            ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword)
        ),
        "{err:?}"
    );

    let mut h = Client::plain(&gw, "historian-1", "historian", &users["historian"]);
    h.connected().await;
    h.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("plant/#".into(), QoS::AtMostOnce),
            rumqttc::SubscribeFilter::new("#".into(), QoS::AtMostOnce),
            rumqttc::SubscribeFilter::new(topics::controller_presence(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    // `#` is granted (the front drops what the historian may not read); a filter that can
    // match only edgefleet/ topics is refused.
    assert_eq!(
        h.suback().await,
        vec![
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::Failure,
        ]
    );
    let mut b = Client::plain(&gw, "bridge-1", "bridge", &users["bridge"]);
    b.connected().await;
    b.client.subscribe("#", QoS::AtMostOnce).await.unwrap();
    assert_eq!(
        b.suback().await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    // The device-role user publishes its own status; the bridge sees it.
    let status = TopicKind::DeviceStatus.for_device("press-p");
    let mut p = Client::plain(&gw, "edgefleet-agent-press-p", "press-p", &users["press-p"]);
    p.connected().await;
    p.client
        .publish(&status, QoS::AtLeastOnce, false, b"up".to_vec())
        .await
        .unwrap();
    assert_eq!(b.message(&status).await, b"up");
    // The historian publishing into edgefleet/ is acknowledged, dropped and audited; it stays
    // connected, and the bridge never sees the forgery (the next message it gets is the
    // historian's allowed one, sent after it).
    let mut events = gw.front.subscribe_events();
    h.client
        .publish(&status, QoS::AtLeastOnce, false, b"forged".to_vec())
        .await
        .unwrap();
    h.expect("PUBACK of the dropped PUBLISH", |e| {
        matches!(e, Event::Incoming(Incoming::PubAck(_))).then_some(())
    })
    .await;
    front_event(&mut events, "the refusal", |e| {
        matches!(&e.kind, FrontEventKind::Refused { action: Action::Publish, topic, .. } if *topic == status)
    })
    .await;
    h.client
        .publish("plant/line3/temp", QoS::AtLeastOnce, false, b"21".to_vec())
        .await
        .unwrap();
    let next = b
        .expect("the historian's next message", |e| match e {
            Event::Incoming(Incoming::Publish(p)) => Some((p.topic.clone(), p.payload.to_vec())),
            _ => None,
        })
        .await;
    assert_eq!(next, ("plant/line3/temp".to_owned(), b"21".to_vec()));
    // The historian got its own plant message, and none of the device's.
    assert_eq!(h.message("plant/line3/temp").await, b"21");
    // Removing the bridge closes its connection.
    gw.local_users(&[("historian", Identity::Local("historian".into()))]);
    b.closed("removed user cut off").await;
    let mut again = Client::plain(&gw, "bridge-2", "bridge", &users["bridge"]);
    again.closed("removed user refused").await;
}

/// rumqttd 0.20 poisons its will-handler lock when a connection is reset right after CONNECT
/// and its client id comes back (upstream #1062; reproduced on a bare rumqttd: every later
/// connection panics). The front never closes an upstream socket between CONNECT and CONNACK,
/// so 1,000 devices that CONNECT through the front and reset at once, then come back, leave
/// it accepting everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_then_reset_storms_leave_the_front_accepting_everyone() {
    const DEVICES: usize = 1000;
    let gw = Gateway::start().await;
    let ok_cert = gw.issue(&device("press-ok"));
    let names: Vec<String> = (0..DEVICES).map(|i| format!("storm-{i}")).collect();
    let users: Vec<(&str, Identity)> = names.iter().map(|n| (n.as_str(), device(n))).collect();
    let passwords = gw.local_users(&users);
    // Plain listener: 1,000 devices at once, CONNECT then RST.
    let mut storm = tokio::task::JoinSet::new();
    for name in &names {
        let (addr, name, password) = (gw.plain, name.clone(), passwords[name].clone());
        storm.spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let mut connect = BytesMut::new();
            V4.write(
                Packet::Connect(
                    Connect {
                        keep_alive: 30,
                        client_id: format!("edgefleet-agent-{name}"),
                        clean_session: true,
                    },
                    None,
                    None,
                    None,
                    Some(rumqttd::protocol::Login {
                        username: name,
                        password,
                    }),
                ),
                &mut connect,
            )
            .unwrap();
            tcp.write_all(&connect).await.unwrap();
            tcp.set_zero_linger().unwrap();
            drop(tcp); // RST
        });
    }
    while let Some(r) = storm.join_next().await {
        r.unwrap();
    }
    // TLS listener: 200 devices with certificates, the same.
    let mut storm = tokio::task::JoinSet::new();
    for i in 0..200 {
        let id = format!("tls-storm-{i}");
        let cert = gw.issue(&device(&id));
        let tls = raw_tls(&gw, &cert).await;
        storm.spawn(async move {
            let mut tls = tls;
            tls.write_all(&connect_packet(&format!("edgefleet-agent-{id}")))
                .await
                .unwrap();
            tls.flush().await.unwrap();
            tls.get_ref().0.set_zero_linger().unwrap();
            drop(tls);
        });
    }
    while let Some(r) = storm.join_next().await {
        r.unwrap();
    }
    // Everyone comes back with the same client ids (the #1062 trigger), then someone new.
    let started = Instant::now();
    for name in names.iter().step_by(10) {
        let mut c = Client::plain(
            &gw,
            &format!("edgefleet-agent-{name}"),
            name,
            &passwords[name],
        );
        c.connected().await;
        c.disconnect().await;
    }
    for i in (0..200).step_by(20) {
        let id = format!("tls-storm-{i}");
        let cert = gw.issue(&device(&id));
        let mut c = Client::tls(&gw, &format!("edgefleet-agent-{id}"), &cert);
        c.connected().await;
        c.disconnect().await;
    }
    eprintln!(
        "110 reconnections after the storms in {:?}",
        started.elapsed()
    );
    assert_broker_serves(&gw, &ok_cert, "the CONNECT-then-reset storms").await;
}

/// A raw CONNECT as a local user, with this keepalive, client id and clean-session flag.
fn raw_connect(
    user: &str,
    password: &str,
    client_id: &str,
    keep_alive: u16,
    clean: bool,
) -> BytesMut {
    let mut out = BytesMut::new();
    V4.write(
        Packet::Connect(
            Connect {
                keep_alive,
                client_id: client_id.into(),
                clean_session: clean,
            },
            None,
            None,
            None,
            Some(rumqttd::protocol::Login {
                username: user.into(),
                password: password.into(),
            }),
        ),
        &mut out,
    )
    .unwrap();
    out
}

/// The next whole packet from `rd` (waits at most `WAIT`).
async fn next_packet(rd: &mut TcpStream, buf: &mut BytesMut) -> Packet {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut copy = buf.clone();
        match V4.read_mut(&mut copy, 1 << 20) {
            Ok(p) => {
                *buf = copy;
                return p;
            }
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("unreadable packet from the front: {e}"),
        }
        let n = tokio::time::timeout_at(deadline, rd.read_buf(buf))
            .await
            .expect("a packet in time")
            .unwrap();
        assert!(n > 0, "the front closed the connection");
    }
}

/// MQTT 3.1.1 allows keepalive 0 (no keepalive); rumqttd 0.20 closes such a CONNECT without
/// CONNACK. Through the front the client gets its CONNACK and, silent for longer than the
/// keepalive the front asks of rumqttd, keeps its session (the front pings upstream itself and
/// never shows the client those PINGRESPs). Caught by the Eclipse Paho interoperability tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_keepalive_is_served_and_kept() {
    let gw = Gateway::start_with(|c| c.keepalive_for_silent = Duration::from_secs(2)).await;
    let users = gw.local_users(&[("historian", Identity::Local("historian".into()))]);
    let mut raw = TcpStream::connect(gw.plain).await.unwrap();
    raw.write_all(&raw_connect(
        "historian",
        &users["historian"],
        "silent",
        0,
        true,
    ))
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    assert!(matches!(
        next_packet(&mut raw, &mut buf).await,
        Packet::ConnAck(..)
    ));
    // Silent for twice what rumqttd would tolerate of a 2 s keepalive (1.5 × 2 s): this is the
    // scenario itself, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut subscribe = BytesMut::new();
    V4.write(
        Packet::Subscribe(
            rumqttd::protocol::Subscribe {
                pkid: 7,
                filters: vec![rumqttd::protocol::Filter {
                    path: "plant/#".into(),
                    qos: rumqttd::protocol::QoS::AtMostOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: rumqttd::protocol::RetainForwardRule::OnEverySubscribe,
                }],
            },
            None,
        ),
        &mut subscribe,
    )
    .unwrap();
    raw.write_all(&subscribe).await.unwrap();
    // The next packet is the SUBACK: the session lived, and no PINGRESP of the front's own
    // pings reached the client.
    match next_packet(&mut raw, &mut buf).await {
        Packet::SubAck(ack, _) => assert_eq!(ack.pkid, 7),
        other => panic!("expected the SUBACK, got {other:?}"),
    }
    // Its own PINGREQ still gets its PINGRESP.
    raw.write_all(&[0xC0, 0x00]).await.unwrap();
    assert!(matches!(
        next_packet(&mut raw, &mut buf).await,
        Packet::PingResp(_)
    ));
}

/// MQTT 3.1.1, 3.1.3-7/8: a zero-length client id is refused (CONNACK 2) without a clean
/// session and given one by the server with it. Caught by the Paho tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_length_client_id_needs_a_clean_session_and_then_gets_one() {
    let gw = Gateway::start().await;
    let users = gw.local_users(&[("historian", Identity::Local("historian".into()))]);
    let pw = &users["historian"];
    let mut raw = TcpStream::connect(gw.plain).await.unwrap();
    raw.write_all(&raw_connect("historian", pw, "", 30, false))
        .await
        .unwrap();
    let answer = read_until_closed(&mut raw).await.expect("closed");
    assert_eq!(answer, vec![0x20, 0x02, 0x00, 0x02], "identifier rejected");
    let mut raw = TcpStream::connect(gw.plain).await.unwrap();
    raw.write_all(&raw_connect("historian", pw, "", 30, true))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    match next_packet(&mut raw, &mut buf).await {
        Packet::ConnAck(ack, _) => {
            assert_eq!(ack.code, rumqttd::protocol::ConnectReturnCode::Success)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A local user's read and write filters, as the Paho interoperability suite exercises them:
/// broad subscriptions (`#`, `+/+`) are granted and filtered delivery by delivery (never an
/// edgefleet/ or `$` topic, never one outside its read filters); a filter matching nothing it
/// may read gets 0x80; a PUBLISH it may not write (`$` topics, edgefleet/, outside its write
/// filters) is acknowledged and dropped at every QoS, and the session goes on. The front
/// acknowledges the deliveries it drops: after more dropped QoS 1 and QoS 2 deliveries than
/// rumqttd keeps in flight (1,000), an allowed one still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_user_reads_and_writes_only_within_its_filters() {
    let gw = Gateway::start().await;
    let grants = LocalGrants::new(
        vec!["TopicA/#".into(), "Topic/#".into()],
        vec!["TopicA/#".into(), "Topic/#".into()],
    )
    .unwrap();
    let users = gw.local_users_with(&[
        ("paho", Identity::Local("paho".into()), grants),
        (
            "bridge",
            Identity::Bridge("bridge".into()),
            LocalGrants::everything(),
        ),
    ]);
    let status = TopicKind::DeviceStatus.for_device("press-g");
    publish_loopback(&gw, &status, "retained-status", true).await;
    publish_loopback(&gw, "test/x", "retained-test", true).await;
    publish_loopback(&gw, "TopicA/B", "retained-a", true).await;

    let mut l = Client::plain(&gw, "paho-1", "paho", &users["paho"]);
    l.connected().await;
    l.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("#".into(), QoS::ExactlyOnce),
            rumqttc::SubscribeFilter::new("+/+".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("test/nosubscribe".into(), QoS::ExactlyOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        l.suback().await,
        vec![
            SubscribeReasonCode::Success(QoS::ExactlyOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ]
    );
    // Of the three retained messages only TopicA/B is readable: it is the first (and, the
    // two filters overlapping, possibly the second) PUBLISH to arrive.
    let first = l
        .expect("a retained message", |e| match e {
            Event::Incoming(Incoming::Publish(p)) => Some(p.topic.clone()),
            _ => None,
        })
        .await;
    assert_eq!(first, "TopicA/B");

    // More unreadable QoS 1 and QoS 2 deliveries than rumqttd keeps in flight, then a
    // readable one: it arrives only if the front acknowledged every dropped one.
    let mut writer = Client::loopback(&gw, "writer-flood");
    writer.connected().await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for i in 0..1100 {
            let topic = if i % 2 == 0 {
                "test/x"
            } else {
                status.as_str()
            };
            writer
                .client
                .publish(topic, qos, false, b"no".to_vec())
                .await
                .unwrap();
        }
    }
    writer
        .client
        .publish("Topic/C", QoS::ExactlyOnce, false, b"yes".to_vec())
        .await
        .unwrap();
    let next = l
        .expect("the readable message after the flood", |e| match e {
            Event::Incoming(Incoming::Publish(p)) if p.topic != "TopicA/B" => {
                Some((p.topic.clone(), p.payload.to_vec()))
            }
            _ => None,
        })
        .await;
    assert_eq!(next, ("Topic/C".to_owned(), b"yes".to_vec()));

    // Refused PUBLISHes at QoS 1 and 2: acknowledged (PUBACK; PUBREC then PUBCOMP), dropped.
    let mut b = Client::plain(&gw, "bridge-1", "bridge", &users["bridge"]);
    b.connected().await;
    b.client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    b.suback().await;
    // A `$` filter (rumqttd 0.20 closes the connection on one) is refused with 0x80 even for
    // a bridge, which stays connected.
    b.client
        .subscribe("$TopicA/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(b.suback().await, vec![SubscribeReasonCode::Failure]);
    l.client
        .publish("$TopicA/B", QoS::AtLeastOnce, false, b"dollar".to_vec())
        .await
        .unwrap();
    l.expect("PUBACK of the $ topic", |e| {
        matches!(e, Event::Incoming(Incoming::PubAck(_))).then_some(())
    })
    .await;
    for topic in [status.as_str(), "plant/line3/temp"] {
        l.client
            .publish(topic, QoS::ExactlyOnce, false, b"refused".to_vec())
            .await
            .unwrap();
        l.expect("PUBCOMP of the refused QoS 2 PUBLISH", |e| {
            matches!(e, Event::Incoming(Incoming::PubComp(_))).then_some(())
        })
        .await;
    }
    // Then an allowed one: the bridge's next message, so none of the refused ones got through.
    l.client
        .publish("TopicA/C", QoS::ExactlyOnce, false, b"allowed".to_vec())
        .await
        .unwrap();
    let got = b
        .expect("the allowed message", |e| match e {
            Event::Incoming(Incoming::Publish(p)) if !p.retain => {
                Some((p.topic.clone(), p.payload.to_vec()))
            }
            _ => None,
        })
        .await;
    assert_eq!(got, ("TopicA/C".to_owned(), b"allowed".to_vec()));
    assert_eq!(retained(&gw, &status).await, b"retained-status");
}

/// MQTT-3.1.0-2: a second CONNECT on one connection is a protocol violation and the server
/// closes it (rumqttd 0.20 ignores it; Paho's basic test checks this). The client's session
/// is not harmed: the same client id connects again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_closes_the_connection() {
    let gw = Gateway::start().await;
    let users = gw.local_users(&[("historian", Identity::Local("historian".into()))]);
    let pw = &users["historian"];
    for round in 0..2 {
        let mut raw = TcpStream::connect(gw.plain).await.unwrap();
        raw.write_all(&raw_connect("historian", pw, "twice", 30, true))
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        match next_packet(&mut raw, &mut buf).await {
            Packet::ConnAck(ack, _) => {
                assert_eq!(
                    ack.code,
                    rumqttd::protocol::ConnectReturnCode::Success,
                    "round {round}"
                )
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw.write_all(&raw_connect("historian", pw, "twice", 30, true))
            .await
            .unwrap();
        let rest = read_until_closed(&mut raw).await.expect("closed");
        assert!(
            rest.is_empty(),
            "nothing answers the second CONNECT: {rest:?}"
        );
    }
}

/// With [`FrontConfig::issued_serials`] set (as the gateway sets it from its store), a
/// certificate the CA signed but the store never recorded is refused — it could never be
/// revoked — until the serial is admitted; local users are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certificates_the_store_recorded_are_admitted() {
    let gw = Gateway::start_with(|c| c.issued_serials = Some(vec![])).await;
    let mut events = gw.front.subscribe_events();
    let cert = gw.issue(&device("press-u"));
    let mut unknown = Client::tls(&gw, "edgefleet-agent-press-u", &cert);
    unknown.closed("a certificate missing from the store").await;
    let refused = front_event(&mut events, "the refusal", |e| {
        matches!(
            &e.kind,
            FrontEventKind::Refused {
                action: Action::Connect,
                ..
            }
        )
    })
    .await;
    match refused.kind {
        FrontEventKind::Refused { reason, .. } => {
            assert!(
                reason.contains("unknown to this gateway's store"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    gw.front.admit_serial(&cert.serial);
    let mut admitted = Client::tls(&gw, "edgefleet-agent-press-u", &cert);
    admitted.connected().await;
    let users = gw.local_users(&[("historian", Identity::Local("historian".into()))]);
    let mut local = Client::plain(&gw, "historian-1", "historian", &users["historian"]);
    local.connected().await;
}

/// A device's TLS handshake, CONNECT and CONNACK 0, or why not.
async fn try_device_connect(gw: &Gateway, cert: &IssuedCert, id: &str) -> Result<(), String> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(gw.pki.ca_pem(), Some(cert)));
    let tcp = TcpStream::connect(gw.front.local_addr())
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(
        WAIT,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .map_err(|_| "no TLS handshake in time".to_owned())?
    .map_err(|e| format!("TLS handshake: {e}"))?;
    tls.write_all(&connect_packet(&format!("edgefleet-agent-{id}")))
        .await
        .map_err(|e| e.to_string())?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, tls.read_exact(&mut ack))
        .await
        .map_err(|_| "no CONNACK in time".to_owned())?
        .map_err(|e| format!("no CONNACK: {e}"))?;
    if ack == [0x20, 0x02, 0x00, 0x00] {
        Ok(())
    } else {
        Err(format!("CONNACK {ack:?}"))
    }
}

/// The front's sessions hold at most `max_open_files` descriptors (the gateway sizes it from
/// its open-files limit; a device on the hub holds one): one more connection is closed at
/// accept, before any handshake; once a session ends, a device connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_session_limit_are_closed_at_accept() {
    let gw = Gateway::start_with(|c| c.max_open_files = 2).await;
    let a_cert = gw.issue(&device("cap-a"));
    let b_cert = gw.issue(&device("cap-b"));
    let c_cert = gw.issue(&device("cap-c"));
    let mut a = Client::tls(&gw, "edgefleet-agent-cap-a", &a_cert);
    a.connected().await;
    let mut b = Client::tls(&gw, "edgefleet-agent-cap-b", &b_cert);
    b.connected().await;
    // The handshake timeout is 5 s: a socket held for a handshake would stay open that long.
    let mut probe = TcpStream::connect(gw.front.local_addr()).await.unwrap();
    let started = Instant::now();
    let sent = read_until_closed(&mut probe)
        .await
        .expect("closed by the front");
    assert!(
        sent.is_empty(),
        "nothing is said to a connection over the limit"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed at accept, not after a handshake timeout ({:?})",
        started.elapsed()
    );
    let err = try_device_connect(&gw, &c_cert, "cap-c").await;
    assert!(err.is_err(), "a third session was carried: {err:?}");
    b.client.disconnect().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match try_device_connect(&gw, &c_cert, "cap-c").await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no session freed when one ended: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An integrator asking for QoS 1 is served at QoS 0 (its SUBACK says so), because that is
/// how rumqttd replays every retained message rather than the first 100: 250 devices'
/// retained statuses all arrive. A refused filter next to it keeps its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_gets_every_retained_status_not_the_first_hundred() {
    const DEVICES: usize = 250;
    let gw = Gateway::start().await;
    let mut writer = Client::loopback(&gw, "writer-many");
    writer.connected().await;
    for i in 0..DEVICES {
        let topic = TopicKind::DeviceStatus.for_device(&format!("press-{i:03}"));
        writer
            .client
            .publish(
                topic,
                QoS::AtLeastOnce,
                true,
                format!("status-{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < DEVICES {
        writer
            .expect("PUBACK", |e| {
                matches!(e, Event::Incoming(Incoming::PubAck(_))).then_some(())
            })
            .await;
        acked += 1;
    }
    let cert = gw.issue(&Identity::Integrator("historian".to_owned()));
    let mut historian = Client::tls(&gw, "integrator:historian", &cert);
    historian.connected().await;
    historian
        .client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new(
                TopicKind::DeviceStatus.all_devices_filter(),
                QoS::AtLeastOnce,
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        historian.suback().await,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtMostOnce),
        ]
    );
    let mut seen = std::collections::HashSet::new();
    while seen.len() < DEVICES {
        let topic = historian
            .expect(
                &format!("retained status {} of {DEVICES}", seen.len() + 1),
                |e| match e {
                    Event::Incoming(Incoming::Publish(p)) => {
                        assert!(p.retain, "a replayed status is flagged retained");
                        assert_eq!(p.qos, QoS::AtMostOnce);
                        Some(p.topic.clone())
                    }
                    _ => None,
                },
            )
            .await;
        seen.insert(topic);
    }
}

/// On the hub a device that asks for its desired state again (`sync`) gets the retained
/// document at once from the hub, flagged retained, besides the controller's own answer: a
/// delivery lost anywhere before the agent's intake is made good by the agent's retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_asking_for_its_desired_state_gets_it_again() {
    let gw = Gateway::start().await;
    let desired = TopicKind::DeviceDesired.for_device("press-sync");
    publish_loopback(&gw, &desired, "desired-7", true).await;
    let cert = gw.issue(&device("press-sync"));
    let mut a = Client::tls(&gw, "edgefleet-agent-press-sync", &cert);
    a.connected().await;
    a.client
        .subscribe(desired.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    // The first copy: the retained replay on subscribe (the hub may still be taking the
    // loopback publish in: then it comes live).
    assert_eq!(a.message(&desired).await, b"desired-7");
    a.client
        .publish(
            TopicKind::DeviceSync.for_device("press-sync"),
            QoS::AtLeastOnce,
            false,
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    // A live copy of the first publish may still be on its way (the hub took it in while
    // the device subscribed); the answer to the sync is the next copy flagged retained.
    let again = a
        .expect("the desired document again", |e| match e {
            Event::Incoming(Incoming::Publish(p)) if p.topic == desired && p.retain => {
                Some(p.payload.to_vec())
            }
            _ => None,
        })
        .await;
    assert_eq!(again, b"desired-7");
}
