//! # edgefleet-controller
//!
//! The control plane: holds deployments and their revisions, computes and publishes each
//! device's desired document, aggregates what agents report into a live fleet view, and
//! serves the HTTP API. `edgefleet gateway` runs it next to the embedded broker; `edgefleet
//! controller` runs it against any external MQTT broker.
//!
//! ## Layout
//! - [`compose`]: Compose files → normalized service specs (the supported subset).
//! - [`selector`]: deployment targets (`site=lyon,line=3`, `id=a|b`, `*`).
//! - [`store`]: SQLite store with migrations (deployments, revisions, devices, events).
//! - [`book`]: which stacks each device should run; new desired revisions.
//! - [`fleet`]: the live fleet view (DashMap), flushed to the store.
//! - [`sites`]: per-site summaries (counts, alarms) for SCADA screens.
//! - [`core`]: the controller's operations (apply, delete, refresh, take in bus messages).
//! - [`rollout`] (pure: strategy, windows, waves, gate, state machine) and [`rollouts`]
//!   (running them: persisted state, the gated loop, operator controls).
//! - [`bus`]: the MQTT link and publish queue.
//! - [`api`]: the HTTP JSON API; [`auth`]: roles, site scope, the authentication
//!   middleware, the first-start admin; [`users`]: users and API tokens (hashed) in the store.
//! - [`audit`]: the hash-chained, append-only audit log (append, verify, export).
//! - [`web`]: the dashboard (server-rendered pages, session cookie, live updates over SSE),
//!   the compliance report and the OpenAPI document.
//! - [`cli`]: the `edgefleet` client commands (talk to the API).
//! - [`run`] / [`run_gateway`]: start everything; return when `shutdown` is cancelled.

pub mod api;
pub mod audit;
pub mod auth;
pub mod book;
pub mod bus;
pub mod cli;
pub mod commands;
pub mod compose;
pub mod core;
pub mod enroll;
pub mod fleet;
pub mod keys;
pub mod rollout;
pub mod rollouts;
pub mod selector;
pub mod sites;
pub mod store;
pub mod users;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::BrokerAddr;
use crate::core::Controller;

/// Everything the controller needs, validated before [`run`].
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    pub broker: BrokerAddr,
    pub http_listen: SocketAddr,
    /// MQTT keepalive of the controller's own connection.
    pub keepalive: Duration,
    /// A device that reports an older desired revision than the one published this long ago
    /// gets its document again (convergence never rests on one delivery).
    pub republish_after: Duration,
    /// After a controller start, devices not heard from within this time are shown offline.
    pub presence_grace: Duration,
    /// Inside a gateway: the device-facing TLS front and the enrollment listener.
    pub gateway: Option<GatewayTls>,
}

/// The gateway's device-facing listeners.
#[derive(Debug, Clone)]
pub struct GatewayTls {
    /// The TLS MQTT listener devices and integrators connect to (client certificates).
    pub mqtts_listen: SocketAddr,
    /// The HTTPS listener agents enroll at.
    pub enroll_listen: SocketAddr,
    /// The name or address devices reach the gateway at (in URLs and the server certificate).
    pub public_host: String,
}

impl ControllerConfig {
    pub fn new(data_dir: PathBuf, broker: BrokerAddr, http_listen: SocketAddr) -> Self {
        ControllerConfig {
            data_dir,
            broker,
            http_listen,
            keepalive: Duration::from_secs(10),
            republish_after: Duration::from_secs(10),
            presence_grace: Duration::from_secs(30),
            gateway: None,
        }
    }
}

/// Runs the controller until `shutdown` is cancelled or an essential task fails.
pub async fn run(config: ControllerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    let store = store::Store::open(&config.data_dir.join("edgefleet.db"))?;
    let session = store.next_counter("controller_session")?;
    let (ctrl, queue) = Controller::new(store)?;
    let ctrl = Arc::new(ctrl);
    let signer = Arc::new(keys::load_or_create_signer(&config.data_dir)?);
    auth::ensure_initial_admin(&ctrl, &config.data_dir)?;
    let token = shutdown.child_token();
    let mut tasks = JoinSet::new();
    if let Some(gw) = &config.gateway {
        start_gateway_security(&ctrl, &config, gw, &signer, &mut tasks, &token).await?;
    }
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {}: choose another address with --http-listen",
                config.http_listen
            )
        })?;
    let http_addr = http.local_addr()?;

    let (client, eventloop) = bus::client(&config.broker, config.keepalive, session);
    tasks.spawn(bus::run_link(
        ctrl.clone(),
        client.clone(),
        eventloop,
        session,
        config.broker.clone(),
        token.clone(),
    ));
    tasks.spawn(bus::run_publisher(
        ctrl.clone(),
        signer.clone(),
        client,
        queue,
        token.clone(),
    ));
    tasks.spawn(housekeeping(ctrl.clone(), config.clone(), token.clone()));
    let app = api::router(ctrl.clone()).merge(web::router(ctrl.clone()));
    let http_token = token.clone();
    tasks.spawn(async move {
        if let Err(e) = axum::serve(http, app)
            .with_graceful_shutdown(http_token.cancelled_owned())
            .await
        {
            tracing::error!("HTTP server failed: {e}");
        }
    });
    tracing::info!(http = %http_addr, broker = %config.broker, data_dir = %config.data_dir.display(), session, "controller running");

    // Any task ending (they only end on shutdown or fatal error) stops the rest.
    tasks.join_next().await;
    token.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some tasks did not stop within 5 s");
    }
    ctrl.flush().context("final flush of the fleet view")?;
    Ok(())
}

/// Periodic work: flush the fleet view, republish to lagging devices, expire stale presence.
async fn housekeeping(
    ctrl: Arc<Controller>,
    config: ControllerConfig,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut expired = false;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        if let Err(e) = ctrl.flush() {
            tracing::error!("cannot save the fleet view: {e}");
        }
        ctrl.queue_site_summaries();
        ctrl.rollouts.tick(&ctrl);
        if n.is_multiple_of(5) {
            for id in ctrl.lagging(config.republish_after) {
                tracing::info!(device = %id, "device has not reported its desired revision: republishing");
                ctrl.queue_desired(&id);
            }
        }
        if !expired && ctrl.started.elapsed() >= config.presence_grace {
            ctrl.expire_unknown();
            expired = true;
        }
    }
}

/// Loads the PKI, starts the TLS front (with the stored revocations) and the enrollment
/// listener, and audits what the front refuses.
async fn start_gateway_security(
    ctrl: &Arc<Controller>,
    config: &ControllerConfig,
    gw: &GatewayTls,
    signer: &edgefleet_protocol::signing::DocumentSigner,
    tasks: &mut JoinSet<()>,
    token: &CancellationToken,
) -> anyhow::Result<()> {
    use edgefleet_broker::front::{FrontConfig, FrontEventKind, start_front};
    use edgefleet_broker::pki::Pki;
    let pki_dir = config.data_dir.join("pki");
    let names = vec![gw.public_host.clone()];
    let pki = tokio::task::spawn_blocking(move || Pki::load_or_create(&pki_dir, &names))
        .await?
        .context("cannot set up the gateway's certificate authority")?;
    let upstream = std::net::SocketAddr::new(
        config
            .broker
            .host
            .parse()
            .context("the embedded broker address is not an IP address")?,
        config.broker.port,
    );
    let mut front_config = FrontConfig::new(gw.mqtts_listen, upstream);
    front_config.revoked_serials = ctrl.store().revoked_serials()?;
    let front = start_front(front_config, pki.server_tls_config()).await?;
    let mqtts_port = front.local_addr().port();
    let mut events = front.subscribe_events();
    let audit_ctrl = ctrl.clone();
    let audit_token = token.clone();
    tasks.spawn(async move {
        loop {
            let event = tokio::select! {
                _ = audit_token.cancelled() => return,
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
                audit_ctrl.audit(crate::audit::Entry {
                    actor,
                    role: "mqtt".into(),
                    action: format!("mqtt.{}", format!("{action:?}").to_ascii_lowercase()),
                    target: topic.clone(),
                    site: String::new(),
                    outcome: crate::audit::Outcome::Refused,
                    status: None,
                    detail: serde_json::json!({ "reason": reason, "peer": event.peer.to_string() }),
                });
            }
        }
    });
    let enroll = tokio::net::TcpListener::bind(gw.enroll_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for enrollment on {}: choose another address with --enroll-listen",
                gw.enroll_listen
            )
        })?;
    let enroll_port = enroll.local_addr()?.port();
    let host = if gw.public_host.contains(':') {
        format!("[{}]", gw.public_host)
    } else {
        gw.public_host.clone()
    };
    tasks.spawn(enroll::serve(
        enroll,
        pki.https_tls_config(),
        enroll::router(ctrl.clone()),
        token.clone(),
    ));
    tracing::info!(
        mqtts = %gw.mqtts_listen,
        enroll = %gw.enroll_listen,
        ca_sha256 = %pki.ca_fingerprint(),
        "device listeners up"
    );
    let security = enroll::Security {
        pki,
        front: Some(front),
        enroll_url: format!("https://{host}:{enroll_port}"),
        device_broker_url: format!("mqtts://{host}:{mqtts_port}"),
        controller_key: signer.public_key_text(),
    };
    let _ = ctrl.security.set(Arc::new(security));
    Ok(())
}

/// The gateway: embedded broker plus controller in one process.
pub async fn run_gateway(
    broker: edgefleet_broker::BrokerConfig,
    config: ControllerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = tokio::task::spawn_blocking(move || edgefleet_broker::start(&broker)).await??;
    let addr = handle.connect_addr();
    let config = ControllerConfig {
        broker: BrokerAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: false,
        },
        ..config
    };
    run(config, shutdown).await
}
