//! # edgefleet-agent
//!
//! The edge agent: one per device. It connects outbound to the broker, receives the device's
//! desired state (one retained document), and reconciles it continuously against the local
//! Docker engine, reporting retained status and presence and non-retained events. It keeps
//! running its last state when the broker is unreachable and after a reboot.
//!
//! # Layout
//! - [`config`]: command line, config file, the validated [`config::Config`].
//! - [`mqtt`]: the link task that owns the MQTT event loop, and the [`mqtt::Bus`] others
//!   publish through.
//! - [`desired`]: receiving and validating desired documents; sync requests.
//! - [`reconcile`]: the level-triggered loop: observe → [`plan`] → execute → report.
//! - [`plan`]: the pure planner (desired × observed → actions).
//! - [`container`]: container/volume names, ownership labels, the container spec.
//! - [`runtime`]: the [`runtime::ContainerRuntime`] trait, with Docker (bollard) and
//!   in-memory implementations.
//! - [`status`]: building the status document.
//! - [`state_file`]: the local state (last desired document, session counter), written by
//!   its own thread.
//! - [`outbox`]: what the agent publishes, as a trait.
//!
//! Tasks: the link, the desired-state intake, the command handler, the reconciler and the
//! engine-event watcher run under one [`CancellationToken`]; if one ends, the others are
//! cancelled. The runtime is single-threaded, so nothing on it does blocking file I/O: the
//! state file is read on a blocking thread at start and written by the
//! [`StateStore`](state_file::StateStore)'s own writer thread, which callers await.

pub mod commands;
pub mod config;
pub mod container;
pub mod desired;
pub mod identity;
pub mod mqtt;
pub mod outbox;
pub mod plan;
pub mod reconcile;
pub mod runtime;
pub mod state_file;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgefleet_protocol::event::{DeviceEvent, EventKind, Severity};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::Config;
use crate::desired::Intake;
use crate::outbox::Outbox;
use crate::reconcile::{Reconciler, watch_engine};
use crate::runtime::{ContainerRuntime, DockerRuntime};
use crate::state_file::{StateStore, Writers};

/// How long the tasks get to finish after shutdown (the link needs ≤ 3 s for its goodbye).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Desired-topic messages queued between the link and the intake.
const INBOUND_CAPACITY: usize = 16;
/// How long a stopping agent waits for state-file writes still queued (one whose caller was
/// cancelled by the shutdown, e.g. the applied revision).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the agent against the local Docker engine until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let runtime = DockerRuntime::connect()
        .context("cannot set up the Docker client")?
        .with_stack_root(config.data_dir.join("stacks"));
    run_with_runtime(config, runtime, shutdown).await
}

/// Runs the agent with any container runtime (the simulator uses the in-memory one).
pub async fn run_with_runtime<R: ContainerRuntime>(
    config: Config,
    runtime: R,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_sharing_writers(config, runtime, None, shutdown).await
}

/// [`run_with_runtime`], the local state written by `writers` (threads shared by the agents
/// of one process, the simulator's) instead of a writer thread of its own.
pub async fn run_sharing_writers<R: ContainerRuntime>(
    config: Config,
    runtime: R,
    writers: Option<Writers>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let span = info_span!("agent", device = %config.device_id);
    async move {
        // Reading (and moving aside a corrupt file) is blocking I/O: off the runtime.
        let (dir, device) = (config.data_dir.clone(), config.device_id.clone());
        let (store, loaded) = tokio::task::spawn_blocking(move || match writers {
            Some(writers) => StateStore::open_with(&dir, &device, &writers),
            None => StateStore::open(&dir, &device),
        })
        .await
        .context("the task opening the local state failed")??;
        let store = Arc::new(store);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let (bus, link) = mqtt::link(&config, store.clone(), inbound_tx);
        let (commands_tx, commands_rx) = mpsc::channel(8);
        let link = link.with_commands(commands_tx);
        let outbox: Arc<dyn Outbox> = bus;

        if let Some(corrupt) = &loaded.corrupt {
            let moved = corrupt
                .moved_to
                .as_ref()
                .map_or("it could not be moved aside".to_owned(), |p| format!("moved to {}", p.display()));
            error!(reason = %corrupt.reason, %moved, "local state file is corrupt; starting without desired state");
            outbox.event(DeviceEvent::new(
                &config.device_id,
                EventKind::Failed,
                Severity::Error,
                format!(
                    "local state file was corrupt ({}; {moved}): starting without desired state, nothing is changed until the controller sends one",
                    corrupt.reason
                ),
            ));
        }
        match &loaded.desired {
            Some(d) => info!(revision = d.revision, applied = loaded.last_applied_revision, data_dir = %store.dir().display(), "loaded desired state"),
            None => info!(data_dir = %store.dir().display(), "no desired state held yet"),
        }

        let (held_tx, held_rx) = watch::channel(loaded.desired.map(Arc::new));
        let runtime = Arc::new(runtime);
        let wake = Arc::new(Notify::new());
        let tasks_done = shutdown.child_token();
        let mut tasks = JoinSet::new();
        tasks.spawn(link.run(tasks_done.clone()).in_current_span());
        let intake = Intake::new(
            config.device_id.clone(),
            config.trusted_key,
            held_tx,
            store.clone(),
            outbox.clone(),
            inbound_rx,
        );
        tasks.spawn(intake.run(tasks_done.clone()).in_current_span());
        tasks.spawn(
            commands::run(
                config.device_id.clone(),
                config.trusted_key,
                runtime.clone(),
                outbox.clone(),
                commands_rx,
                tasks_done.clone(),
            )
            .in_current_span(),
        );
        let dir = config.data_dir.clone();
        let opening = tokio::task::spawn_blocking(move || identity::load_opening_key(&dir))
            .await
            .context("the task reading the device key failed")??;
        let reconciler = Reconciler::new(
            config.device_id.clone(),
            runtime.clone(),
            held_rx,
            outbox.clone(),
            store.clone(),
            loaded.last_applied_revision,
        )
        .with_opening_key(opening.map(Arc::new));
        tasks.spawn(reconciler.run(wake.clone(), tasks_done.clone()).in_current_span());
        tasks.spawn(
            watch_engine(runtime, config.device_id.clone(), wake, tasks_done.clone())
                .in_current_span(),
        );
        info!(broker = %config.broker, "agent started");

        // Every task is essential: the first to end (normally: all, on shutdown) stops the rest.
        let mut failure = None;
        if let Some(result) = tasks.join_next().await {
            if !tasks_done.is_cancelled() {
                error!("an agent task ended unexpectedly; shutting down");
                failure = Some(anyhow::anyhow!("an agent task ended unexpectedly"));
            }
            if let Err(e) = result {
                failure = Some(anyhow::anyhow!("an agent task failed: {e}"));
            }
        }
        tasks_done.cancel();
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(result) = tasks.join_next().await {
                if let Err(e) = result {
                    error!(error = %e, "agent task failed during shutdown");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!("tasks did not stop in time; aborting them");
            tasks.abort_all();
        }
        if tokio::time::timeout(FLUSH_TIMEOUT, store.flush()).await.is_err() {
            warn!(data_dir = %store.dir().display(), "local state writes did not finish in time");
        }
        info!("agent stopped");
        failure.map_or(Ok(()), Err)
    }
    .instrument(span)
    .await
}
