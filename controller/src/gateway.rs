//! `edgefleet gateway`: the embedded broker, the device-facing TLS front, the enrollment
//! listener and the controller in one process, each listener handed in bound.
//!
//! Essential here, on top of the controller's tasks ([`crate::app`]): the embedded broker
//! (its thread ending or any of its threads panicking), the front's accept loop and the
//! enrollment listener. If one of them stops, the process exits non-zero.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use edgefleet_broker::front::{FrontConfig, FrontEventKind, FrontHandle, start_front};
use edgefleet_broker::pki::Pki;
use edgefleet_broker::{BrokerHandle, InternalCredential};
use edgefleet_domain::audit::{Entry, Outcome};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{Addresses, App, ControllerConfig, Essentials};
use crate::bus::BrokerAddr;
use crate::services::audit::AuditLog;
use crate::services::identity::Security;

/// The gateway's configuration beyond the controller's.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `broker` is ignored: the controller connects to the embedded broker.
    pub controller: ControllerConfig,
    /// The name or address devices reach the gateway at (in URLs and the server certificate).
    pub public_host: String,
    /// The embedded broker's credential (the broker was started with it).
    pub internal_credential: InternalCredential,
    /// Open files the front's sessions may hold (see `FrontConfig::max_open_files`).
    pub max_open_files: usize,
}

/// The gateway's listeners, bound by the caller (port 0 allowed).
pub struct GatewayListeners {
    /// Plain HTTP API and dashboard: loopback only (the caller checks).
    pub http: TcpListener,
    /// The HTTPS API and dashboard, with the gateway's server certificate.
    pub https: TcpListener,
    /// The plain MQTT listener for local users (`edgefleet mqtt-user add`); loopback.
    pub mqtt: TcpListener,
    /// The TLS MQTT listener devices and integrators connect to (client certificates).
    pub mqtts: TcpListener,
    /// The HTTPS listener agents enroll at.
    pub enroll: TcpListener,
}

/// `host` as it goes into a URL (IPv6 in brackets).
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Audits what the front refuses, until `shutdown`.
async fn audit_front(front: &FrontHandle, audit: Arc<AuditLog>, shutdown: CancellationToken) {
    let mut events = front.subscribe_events();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.recv() => e,
        };
        let event = match event {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "the audit fell behind the network front's events"
                );
                continue;
            }
            Err(_) => return,
        };
        if let FrontEventKind::Refused {
            action,
            topic,
            reason,
        } = &event.kind
        {
            let actor = event
                .identity
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_else(|| "anonymous".into());
            audit
                .record(Entry {
                    actor,
                    role: "mqtt".into(),
                    action: format!("mqtt.{}", format!("{action:?}").to_ascii_lowercase()),
                    target: topic.clone(),
                    site: String::new(),
                    outcome: Outcome::Refused,
                    status: None,
                    detail: serde_json::json!({ "reason": reason, "peer": event.peer.to_string() }),
                })
                .await;
        }
    }
}

/// Runs the gateway until `shutdown` or until an essential part stops (then an error).
pub async fn run_gateway(
    config: GatewayConfig,
    broker: BrokerHandle,
    listeners: GatewayListeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let upstream = broker.connect_addr();
    let mut controller = config.controller.clone();
    controller.broker = BrokerAddr {
        host: upstream.ip().to_string(),
        port: upstream.port(),
        tls: false,
    };
    let credential = config.internal_credential.clone();
    controller.broker_login = Some((credential.username.clone(), credential.password.clone()));
    let app = App::open(&controller.data_dir).await?;
    app.users.ensure_initial_admin(&controller.data_dir).await?;

    let pki_dir = controller.data_dir.join("pki");
    let names = vec![config.public_host.clone()];
    let pki = tokio::task::spawn_blocking(move || Pki::load_or_create(&pki_dir, &names))
        .await?
        .context("cannot set up the gateway's certificate authority")?;
    let mqtts: SocketAddr = listeners.mqtts.local_addr()?;
    let enroll: SocketAddr = listeners.enroll.local_addr()?;
    let mut front_config = FrontConfig::new(upstream);
    front_config.upstream_login = Some(credential);
    front_config.max_open_files = config.max_open_files;
    front_config.revoked_serials = app.store.revoked_serials().await?;
    // Only certificates the store knows: one it lost could never be revoked.
    front_config.issued_serials = Some(app.store.issued_serials().await?);
    let front = start_front(listeners.mqtts, front_config, pki.server_tls_config())
        .context("cannot start the MQTT TLS front")?;
    let mqtt = front
        .serve_plain(listeners.mqtt)
        .context("cannot start the plain MQTT front")?;
    let host = url_host(&config.public_host);
    tracing::info!(
        %mqtts,
        %enroll,
        ca_sha256 = %pki.ca_fingerprint(),
        "device listeners up"
    );
    let https_tls = pki.https_tls_config();
    let front_stopped = front.stopped();
    let security = Arc::new(Security {
        pki,
        front,
        enroll_url: format!("https://{host}:{}", enroll.port()),
        device_broker_url: format!("mqtts://{host}:{}", mqtts.port()),
        controller_key: app.signer.public_key_text(),
    });
    let app = app.with_security(security.clone());
    app.identity
        .load_mqtt_users()
        .await
        .context("cannot load the local MQTT users")?;

    let mut essentials = Essentials::new(&shutdown);
    essentials.watch("the embedded MQTT broker", broker.stopped());
    essentials.watch("the MQTT TLS front", front_stopped);
    let (s, audit, t) = (
        security.clone(),
        app.audit.clone(),
        essentials.token.clone(),
    );
    essentials.spawn("the front's audit", async move {
        audit_front(&s.front, audit, t).await;
        Ok(())
    });
    let limits = controller.http_limits;
    let (router, t, tls) = (
        crate::http::enroll::router(app.identity.clone()),
        essentials.token.clone(),
        https_tls.clone(),
    );
    essentials.spawn("the enrollment listener", async move {
        crate::http::enroll::serve(listeners.enroll, tls, router, limits, t).await;
        Ok(())
    });
    let https: SocketAddr = listeners.https.local_addr()?;
    let (router, t) = (app.router(), essentials.token.clone());
    essentials.spawn("the HTTPS server", async move {
        crate::http::server::serve(listeners.https, Some(https_tls), router, limits, t).await;
        Ok(())
    });

    let mut addresses = Addresses::new();
    addresses.mqtt = Some(mqtt);
    addresses.internal = Some(broker.listen_addr());
    addresses.mqtts = Some(mqtts);
    addresses.enroll = Some(enroll);
    addresses.https = Some(https);
    app.run(controller, listeners.http, addresses, essentials, shutdown)
        .await
}
