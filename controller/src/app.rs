//! The composition root: builds every service once, in dependency order ([`App::open`]),
//! and runs the controller's tasks under one supervisor ([`App::run`]).
//!
//! ## Crash-only
//! The MQTT link, the publisher, the intake, the housekeeping loop and the HTTP server are
//! essential, and so are the gateway's broker, TLS front and enrollment listener
//! ([`crate::gateway`]). If one of them ends or panics while no shutdown was asked for, the
//! supervisor logs which one and why, stops the others, and `run` returns an error, so the
//! process exits non-zero and systemd or Docker restarts it. Agents and the controller
//! converge again after such a restart (desired documents are republished, agents rebirth).
//!
//! ## Listeners handed in
//! The caller binds every listener (port 0 allowed) and passes it in; once everything is up,
//! the addresses really bound are written to `DATA_DIR/addresses.json` ([`Addresses`]), so
//! scripts and tests never guess a free port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use edgefleet_protocol::signing::DocumentSigner;
use edgefleet_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, BrokerAddr, LinkTask, Republish};
use crate::http::state::ApiState;
use crate::services::audit::AuditLog;
use crate::services::commands::Commands;
use crate::services::deployments::Deployments;
use crate::services::fleet::Fleet;
use crate::services::identity::{Identity, Security};
use crate::services::intake::{Intake, Message};
use crate::services::keys;
use crate::services::link::Link;
use crate::services::outbox::{Outbox, Outgoing, SiteSummaries};
use crate::services::policies::Policies;
use crate::services::rollouts::Rollouts;
use crate::services::users::Users;
use crate::services::variables::Variables;
use crate::services::vault::{Vault, VaultKeys};
use crate::services::windows::Windows;

/// File in the data dir naming the addresses the running process listens on.
pub const ADDRESSES_FILE: &str = "addresses.json";

/// Everything the controller needs, validated before [`App::run`].
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    pub broker: BrokerAddr,
    /// User name and password for the broker, if it requires them (the gateway's internal
    /// listener always does: `edgefleet_broker::InternalCredential`).
    pub broker_login: Option<(String, String)>,
    /// MQTT keepalive of the controller's own connection.
    pub keepalive: Duration,
    /// A device that reports an older desired revision than the one published this long ago
    /// gets its document again (convergence never rests on one delivery).
    pub republish_after: Duration,
    /// After a controller start, devices not heard from within this time are shown offline.
    pub presence_grace: Duration,
    /// Timeouts and connection cap of every HTTP listener.
    pub http_limits: crate::http::server::Limits,
    /// Audit retention: prune records behind a signed checkpoint, hourly (`None`: keep all).
    pub audit_retention: Option<edgefleet_store::audit::Retention>,
}

impl ControllerConfig {
    pub fn new(data_dir: PathBuf, broker: BrokerAddr) -> Self {
        ControllerConfig {
            data_dir,
            broker,
            broker_login: None,
            keepalive: Duration::from_secs(10),
            republish_after: Duration::from_secs(10),
            presence_grace: Duration::from_secs(30),
            http_limits: Default::default(),
            audit_retention: None,
        }
    }
}

/// `DATA_DIR/addresses.json`: what a running gateway or controller listens on (the real
/// ports, also when it was asked for port 0), and its process id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    pub schema: u32,
    pub pid: u32,
    /// The HTTP API and dashboard.
    pub http: Option<SocketAddr>,
    /// The plain MQTT listener: the gateway's front for local users, or `edgefleet broker`'s
    /// own listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<SocketAddr>,
    /// The gateway's internal broker listener (loopback, internal credential only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<SocketAddr>,
    /// The TLS device listener (gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtts: Option<SocketAddr>,
    /// The HTTPS enrollment listener (gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll: Option<SocketAddr>,
    /// The HTTPS API and dashboard (gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<SocketAddr>,
}

impl Addresses {
    pub fn new() -> Self {
        Addresses {
            schema: edgefleet_protocol::SCHEMA_VERSION,
            pid: std::process::id(),
            ..Default::default()
        }
    }

    /// Writes the file atomically (a reader never sees half of it). Blocking.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        edgefleet_files::write_atomic(path, &json, edgefleet_files::Mode::Public)
    }
}

/// Every service, built once.
pub struct App {
    pub store: Store,
    /// The controller's key: signs desired documents, commands and the audit head.
    pub signer: Arc<DocumentSigner>,
    pub fleet: Arc<Fleet>,
    pub link: Arc<Link>,
    pub outbox: Arc<Outbox>,
    pub sites: Arc<SiteSummaries>,
    pub audit: Arc<AuditLog>,
    pub windows: Arc<Windows>,
    pub policies: Arc<Policies>,
    pub vault: Arc<Vault>,
    pub variables: Arc<Variables>,
    pub deployments: Arc<Deployments>,
    pub commands: Arc<Commands>,
    pub rollouts: Arc<Rollouts>,
    pub intake: Arc<Intake>,
    pub users: Arc<Users>,
    pub identity: Arc<Identity>,
    /// The publish queue's receiving end, until [`App::run`] hands it to the publisher.
    pub outgoing: Option<mpsc::UnboundedReceiver<Outgoing>>,
    pub started: Instant,
}

impl App {
    /// Opens the store in `data_dir`, loads (or creates) the signing key there, and builds
    /// every service over them (the fleet view, deployments, pins, windows and active
    /// rollouts are loaded from the store).
    pub async fn open(data_dir: &Path) -> anyhow::Result<App> {
        let dir = data_dir.to_owned();
        tokio::task::spawn_blocking(move || edgefleet_files::create_private_dir(&dir))
            .await?
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
        let store = Store::open(&data_dir.join("edgefleet.db")).await?;
        let signer = signer(data_dir).await?;
        let fleet = Arc::new(Fleet::load(store.devices().await?));
        let (outbox, outgoing) = Outbox::new(fleet.clone());
        let outbox = Arc::new(outbox);
        let sites = Arc::new(SiteSummaries::new(fleet.clone(), outbox.clone()));
        let audit = Arc::new(AuditLog::new(store.clone(), signer.clone()));
        let windows = Arc::new(Windows::load(store.clone()).await?);
        let policies = Arc::new(Policies::load(store.clone()).await?);
        let dir = data_dir.to_owned();
        let vault_keys =
            tokio::task::spawn_blocking(move || VaultKeys::load_or_create(&dir)).await??;
        let vault = Arc::new(Vault::load(store.clone(), vault_keys).await?);
        let variables = Arc::new(Variables::load(store.clone()).await?);
        let deployments = Arc::new(
            Deployments::load(
                store.clone(),
                fleet.clone(),
                outbox.clone(),
                policies.clone(),
                vault.clone(),
                variables.clone(),
            )
            .await?,
        );
        let commands = Arc::new(Commands::new(fleet.clone(), outbox.clone()));
        let rollouts = Arc::new(
            Rollouts::load(
                store.clone(),
                fleet.clone(),
                deployments.clone(),
                windows.clone(),
                audit.clone(),
                outbox.clone(),
            )
            .await?,
        );
        let intake = Arc::new(Intake::new(
            store.clone(),
            fleet.clone(),
            deployments.clone(),
            commands.clone(),
            audit.clone(),
            outbox.clone(),
        ));
        let users = Arc::new(Users::new(store.clone(), audit.clone()));
        let identity = Arc::new(Identity::new(
            store.clone(),
            fleet.clone(),
            audit.clone(),
            outbox.clone(),
            vault.clone(),
            deployments.clone(),
            None,
        ));
        Ok(App {
            store,
            signer,
            fleet,
            link: Arc::new(Link::default()),
            outbox,
            sites,
            audit,
            windows,
            policies,
            vault,
            variables,
            deployments,
            commands,
            rollouts,
            intake,
            users,
            identity,
            outgoing: Some(outgoing),
            started: Instant::now(),
        })
    }

    /// Gives the app the gateway's device identities (CA, front, enrollment URLs).
    pub fn with_security(mut self, security: Arc<Security>) -> Self {
        self.identity = Arc::new(Identity::new(
            self.store.clone(),
            self.fleet.clone(),
            self.audit.clone(),
            self.outbox.clone(),
            self.vault.clone(),
            self.deployments.clone(),
            Some(security),
        ));
        self
    }

    /// What the HTTP API and the dashboard are served from.
    pub fn api_state(&self) -> ApiState {
        ApiState {
            store: self.store.clone(),
            fleet: self.fleet.clone(),
            deployments: self.deployments.clone(),
            rollouts: self.rollouts.clone(),
            windows: self.windows.clone(),
            policies: self.policies.clone(),
            vault: self.vault.clone(),
            variables: self.variables.clone(),
            users: self.users.clone(),
            audit: self.audit.clone(),
            commands: self.commands.clone(),
            identity: self.identity.clone(),
            link: self.link.clone(),
            started: self.started,
        }
    }

    /// The HTTP API and the dashboard, one router.
    pub fn router(&self) -> axum::Router {
        let state = self.api_state();
        crate::http::router(state.clone()).merge(crate::web::router(state))
    }

    /// Runs the controller until `shutdown` is cancelled or an essential task ends: the MQTT
    /// link, the publisher, the intake, housekeeping and the HTTP server on `http`, plus
    /// `extra` essential tasks (the gateway's). `addresses` is written to the data dir once
    /// everything runs.
    pub async fn run(
        mut self,
        config: ControllerConfig,
        http: tokio::net::TcpListener,
        mut addresses: Addresses,
        extra: Essentials,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let session = self.store.next_counter("controller_session").await?;
        let token = extra.token.clone();
        let mut tasks = extra;
        let (client, eventloop) = bus::client(
            &config.broker,
            config.broker_login.clone(),
            config.keepalive,
            session,
        );
        let (intake_tx, intake_rx) = mpsc::channel::<Message>(bus::INTAKE_CAPACITY);
        let link = LinkTask {
            client: client.clone(),
            eventloop,
            session,
            broker: config.broker.clone(),
            intake: intake_tx,
            state: self.link.clone(),
            republish: Republish {
                outbox: self.outbox.clone(),
                sites: self.sites.clone(),
                rollouts: self.rollouts.clone(),
                audit: self.audit.clone(),
            },
        };
        let t = token.clone();
        tasks.spawn("the MQTT link", async move {
            bus::run_link(link, t).await;
            Ok(())
        });
        let outgoing = self
            .outgoing
            .take()
            .context("the publish queue was taken already")?;
        let (outbox, t, signer) = (self.outbox.clone(), token.clone(), self.signer.clone());
        tasks.spawn("the MQTT publisher", async move {
            bus::run_publisher(outbox, outgoing, signer, client, t).await;
            Ok(())
        });
        let (intake, t) = (self.intake.clone(), token.clone());
        tasks.spawn("the bus intake", async move {
            intake.run(intake_rx, t).await;
            Ok(())
        });
        let hk = Housekeeping {
            fleet: self.fleet.clone(),
            audit: self.audit.clone(),
            intake: self.intake.clone(),
            sites: self.sites.clone(),
            outbox: self.outbox.clone(),
            started: self.started,
            config: config.clone(),
        };
        let (rollouts, t) = (self.rollouts.clone(), token.clone());
        tasks.spawn("the rollout loop", async move {
            rollouts.run(t).await;
            Ok(())
        });
        let t = token.clone();
        tasks.spawn("housekeeping", async move {
            hk.run(t).await;
            Ok(())
        });
        let http_addr = http.local_addr()?;
        let (app, t, limits) = (self.router(), token.clone(), config.http_limits);
        tasks.spawn("the HTTP server", async move {
            crate::http::serve(http, app, limits, t).await;
            Ok(())
        });
        addresses.http = Some(http_addr);
        let file = config.data_dir.join(ADDRESSES_FILE);
        let (path, a) = (file.clone(), addresses.clone());
        tokio::task::spawn_blocking(move || a.write(&path))
            .await?
            .with_context(|| format!("cannot write {}", file.display()))?;
        tracing::info!(http = %http_addr, broker = %config.broker, data_dir = %config.data_dir.display(), session, addresses = %file.display(), "controller running");

        let result = tasks.supervise(shutdown).await;
        if let Err(e) = self.intake.flush().await {
            tracing::error!("final flush of the fleet view failed: {e}");
        }
        result
    }
}

/// The essential tasks of a process and their supervisor (see the module docs).
pub struct Essentials {
    set: JoinSet<(&'static str, Result<(), String>)>,
    /// Cancelled to stop every task (a shutdown, or an essential task ended).
    pub token: CancellationToken,
}

impl Essentials {
    pub fn new(shutdown: &CancellationToken) -> Self {
        Essentials {
            set: JoinSet::new(),
            token: shutdown.child_token(),
        }
    }

    /// Spawns an essential task named `name` (used in the log and the error).
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), String>> + Send + 'static,
    ) {
        self.set.spawn(async move { (name, task.await) });
    }

    /// Watches a part that runs elsewhere (a thread, a task it owns): `stopped` resolves with
    /// the reason it died. Ends quietly at shutdown.
    pub fn watch(
        &mut self,
        name: &'static str,
        stopped: impl Future<Output = String> + Send + 'static,
    ) {
        let token = self.token.clone();
        self.spawn(name, async move {
            tokio::select! {
                why = stopped => Err(why),
                _ = token.cancelled() => Ok(()),
            }
        });
    }

    /// Waits until `shutdown` is cancelled (then `Ok`) or any task ends (then the error says
    /// which and why); either way stops the others, waiting at most 5 s for them.
    pub async fn supervise(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let ended = tokio::select! {
            _ = shutdown.cancelled() => None,
            ended = self.set.join_next() => ended,
        };
        let failure = match ended {
            None => None,
            Some(Ok((name, Ok(())))) if shutdown.is_cancelled() => {
                tracing::debug!(task = name, "task ended at shutdown");
                None
            }
            Some(Ok((name, Ok(())))) => Some(format!("{name} stopped unexpectedly")),
            Some(Ok((name, Err(why)))) => Some(format!("{name} stopped: {why}")),
            Some(Err(e)) if e.is_panic() => Some(format!("an essential task panicked: {e}")),
            Some(Err(e)) => Some(format!("an essential task was cancelled: {e}")),
        };
        if let Some(why) = &failure {
            tracing::error!(
                "{why}; stopping everything (the process exits non-zero, to be restarted)"
            );
        }
        self.token.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("some tasks did not stop within 5 s");
            self.set.abort_all();
        }
        match failure {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(()),
        }
    }
}

/// Housekeeping ticks (seconds) between two audit retention runs (the first a minute after
/// start): each writes a signed checkpoint and prunes behind an older one.
const RETENTION_EVERY: u64 = 3600;

/// The once-a-second work: flush the fleet view, publish changed site summaries, publish the signed audit head when one is due, run audit retention (hourly, if
/// configured), republish to lagging devices (every 5 s), expire stale presence after start.
struct Housekeeping {
    fleet: Arc<Fleet>,
    audit: Arc<AuditLog>,
    intake: Arc<Intake>,
    sites: Arc<SiteSummaries>,
    outbox: Arc<Outbox>,
    started: Instant,
    config: ControllerConfig,
}

impl Housekeeping {
    async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expired = false;
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            n += 1;
            if let Err(e) = self.intake.flush().await {
                tracing::error!("cannot save the fleet view: {e}");
            }
            self.sites.queue_changed();
            self.audit.flush_repeats(false).await;
            if let Some(head) = self.audit.head_due(Instant::now()).await {
                self.outbox
                    .queue_retained(edgefleet_protocol::topics::audit_head(), head);
            }
            if let Some(keep) = self.config.audit_retention
                && n % RETENTION_EVERY == 60
            {
                match self.audit.retain(keep).await {
                    Ok(_) => {}
                    Err(e) => tracing::error!("audit retention did not run: {e}"),
                }
            }
            if n.is_multiple_of(5) {
                for id in self.fleet.lagging(self.config.republish_after) {
                    tracing::info!(device = %id, "device has not reported its desired revision: republishing");
                    self.outbox.queue_desired(&id);
                }
            }
            if !expired && self.started.elapsed() >= self.config.presence_grace {
                self.fleet.expire_unknown();
                expired = true;
            }
        }
        self.audit.flush_repeats(true).await;
    }
}

/// Loads (or creates, 0600) the desired-state signing key, off the runtime.
pub async fn signer(data_dir: &Path) -> anyhow::Result<Arc<DocumentSigner>> {
    let dir = data_dir.to_owned();
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || keys::load_or_create_signer(&dir)).await??,
    ))
}

/// `edgefleet controller`: the controller against an external broker, HTTP on `http`.
pub async fn run_controller(
    config: ControllerConfig,
    http: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = App::open(&config.data_dir).await?;
    app.users.ensure_initial_admin(&config.data_dir).await?;
    let essentials = Essentials::new(&shutdown);
    app.run(config, http, Addresses::new(), essentials, shutdown)
        .await
}
