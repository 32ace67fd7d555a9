//! The reconciler: a level-triggered loop. A new desired document, an engine event about this
//! device's containers, or the periodic timer only *wake* it; each pass then observes
//! everything, asks the pure planner ([`crate::plan::plan`]) what to do, executes the actions
//! in order (stopping at the first failure, retried later with backoff), and reports status
//! and events. It is never told why it runs, so every pass is idempotent.
//!
//! A failed action's `undo` runs before the pass stops: a `start-first` update whose new
//! container does not start or become ready is taken back, leaving the old version running
//! alone. Waiting for readiness is bounded ([`crate::plan::Readiness`]) and gives up early
//! when a newer desired document arrives.
//!
//! Without any desired document the agent does nothing at all: it never removes containers
//! it has no instructions about.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::{DeviceEvent, EventKind, Severity};
use edgefleet_protocol::sealed::{OpeningKey, Plain, Sealed, registry_info, secret_info};
use edgefleet_protocol::status::{ContainerState, DeviceStatus, Health};
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, instrument, warn};

use crate::container::{ContainerSpec, FileKind};
use crate::desired::HeldDesired;
use crate::outbox::Outbox;
use crate::plan::{Action, Finding, Observed, Op, Readiness, plan, state_name};
use crate::runtime::{ContainerRuntime, RegistryAuth, RuntimeError};
use crate::state_file::StateStore;
use crate::status::{self, ServiceErrors, StatusInput, reported_container};
use edgefleet_protocol::backoff::Backoff;

/// A pass runs at least this often, to catch what no event announced.
pub const PERIOD: Duration = Duration::from_secs(10);
/// First retry after a failed pass; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Grace period given to a container's main process on stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a new container is inspected while waiting for it to become ready.
pub const READY_POLL: Duration = Duration::from_millis(250);

/// Observes what the engine holds for `desired.device`: its containers, its volumes and which
/// desired images are present.
pub async fn observe<R: ContainerRuntime>(
    runtime: &R,
    desired: &DesiredState,
) -> Result<Observed, RuntimeError> {
    let containers = runtime.list_containers(&desired.device).await?;
    let volumes = runtime.list_volumes(&desired.device).await?;
    let networks = runtime.list_networks(&desired.device).await?;
    let wanted: BTreeSet<&str> = desired
        .stacks
        .values()
        .flat_map(|s| s.services.values().map(|svc| svc.image.as_str()))
        .collect();
    let mut images = BTreeSet::new();
    for image in wanted {
        if runtime.image_present(image).await? {
            images.insert(image.to_owned());
        }
    }
    Ok(Observed {
        containers,
        images,
        volumes,
        networks,
    })
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Actions planned (and attempted, up to the first failure).
    pub actions: usize,
    pub failed: bool,
}

/// The reconciler of one device.
pub struct Reconciler<R> {
    device: String,
    runtime: Arc<R>,
    desired: watch::Receiver<HeldDesired>,
    outbox: Arc<dyn Outbox>,
    store: Arc<StateStore>,
    /// Revision of the last desired document for which every action succeeded.
    observed_revision: u64,
    /// Last revision announced as converged (persisted as "last applied").
    converged_revision: u64,
    last_observed: Option<Observed>,
    health: BTreeMap<(String, String), Health>,
    drift_reported: BTreeSet<String>,
    last_failure: Option<String>,
    last_status: Option<DeviceStatus>,
    /// The engine's platform, asked until it answers once (it does not change under us).
    platform: Option<String>,
    /// The device's key, which opens the secrets and registry credentials of its desired
    /// documents (none: not enrolled, such documents fail).
    opening: Option<Arc<OpeningKey>>,
}

impl<R: ContainerRuntime> Reconciler<R> {
    /// `last_applied_revision` comes from the state file, so that drift found right after a
    /// restart is reported as drift and a converged revision is not announced twice.
    pub fn new(
        device: String,
        runtime: Arc<R>,
        desired: watch::Receiver<HeldDesired>,
        outbox: Arc<dyn Outbox>,
        store: Arc<StateStore>,
        last_applied_revision: u64,
    ) -> Self {
        Reconciler {
            device,
            runtime,
            desired,
            outbox,
            store,
            observed_revision: last_applied_revision,
            converged_revision: last_applied_revision,
            last_observed: None,
            health: BTreeMap::new(),
            drift_reported: BTreeSet::new(),
            last_failure: None,
            last_status: None,
            platform: None,
            opening: None,
        }
    }

    /// Gives the reconciler the device's key (see [`Reconciler::opening`]).
    pub fn with_opening_key(mut self, key: Option<Arc<OpeningKey>>) -> Self {
        self.opening = key;
        self
    }

    /// Opens a value sealed for this device.
    fn open(&self, info: &str, sealed: Option<&Sealed>, what: &str) -> Result<Plain, RuntimeError> {
        let fail = |message: String| RuntimeError::Engine {
            op: "open a sealed value",
            target: what.to_owned(),
            message,
        };
        let sealed = sealed.ok_or_else(|| {
            fail("the desired document carries it unsealed: the gateway has no key for this device; enroll it again".into())
        })?;
        let key = self.opening.as_ref().ok_or_else(|| {
            fail("this agent has no device key (identity/key.pem): enroll it".into())
        })?;
        key.open(info, sealed).map_err(|e| {
            fail(format!(
                "{e}; enrolling the device again makes the gateway seal it anew"
            ))
        })
    }

    /// Writes the config and secret files a container mounts, before it is created.
    async fn write_files(
        &self,
        desired: &DesiredState,
        spec: &ContainerSpec,
    ) -> Result<(), RuntimeError> {
        let Some(stack_name) = spec.labels.get(crate::container::LABEL_STACK) else {
            return Ok(());
        };
        let stack = desired.stacks.get(stack_name);
        for file in &spec.files {
            let what =
                format!("{:?} '{}' of stack '{stack_name}'", file.kind, file.source).to_lowercase();
            let content = match file.kind {
                FileKind::Config => Plain::new(
                    stack
                        .and_then(|s| s.configs.get(&file.source))
                        .map(|c| c.content.clone().into_bytes())
                        .ok_or_else(|| RuntimeError::Engine {
                            op: "write a config",
                            target: what.clone(),
                            message: "the desired document does not carry it".into(),
                        })?,
                ),
                FileKind::Secret => {
                    let sealed = stack
                        .and_then(|s| s.secrets.get(&file.source))
                        .and_then(|s| s.sealed.as_ref());
                    self.open(
                        &secret_info(&self.device, stack_name, &file.source),
                        sealed,
                        &what,
                    )?
                }
            };
            self.runtime.write_file(file, content.bytes()).await?;
        }
        Ok(())
    }

    /// The login for the registry `image` comes from, if the document carries one.
    fn registry_auth(
        &self,
        desired: &DesiredState,
        image: &str,
    ) -> Result<Option<RegistryAuth>, RuntimeError> {
        let host = edgefleet_protocol::spec::registry_host(image);
        let Some(entry) = desired.registries.get(host) else {
            return Ok(None);
        };
        let what = format!("the credential of registry '{host}'");
        let plain = self.open(
            &registry_info(&self.device, host),
            entry.sealed.as_ref(),
            &what,
        )?;
        serde_json::from_slice(plain.bytes())
            .map(Some)
            .map_err(|_| RuntimeError::Engine {
                op: "open a sealed value",
                target: what,
                message: "it does not hold a username and password".into(),
            })
    }

    /// Runs passes until `shutdown`: after a wake-up (`wake`, a new desired document), every
    /// [`PERIOD`], or sooner with backoff after a failure.
    pub async fn run(mut self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let mut retry = Backoff::new(RETRY_MIN, RETRY_MAX);
        loop {
            let report = tokio::select! {
                _ = shutdown.cancelled() => return,
                report = self.pass() => report,
            };
            let delay = if report.failed {
                retry.next_delay()
            } else {
                retry.reset();
                PERIOD
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = wake.notified() => {}
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One pass: observe, plan, execute, report.
    #[instrument(name = "reconcile", skip_all, fields(device = %self.device, revision = tracing::field::Empty))]
    pub async fn pass(&mut self) -> PassReport {
        if self.platform.is_none() {
            self.platform = self.runtime.platform().await.ok().flatten();
        }
        let held = self.desired.borrow_and_update().clone();
        let Some(desired) = held else {
            debug!("no desired state held: nothing to do");
            self.report_status(None, false, None, &ServiceErrors::new(), false);
            return PassReport {
                actions: 0,
                failed: false,
            };
        };
        tracing::Span::current().record("revision", desired.revision);
        let observed = match observe(&*self.runtime, &desired).await {
            Ok(observed) => observed,
            Err(e) => {
                let message = e.to_string();
                warn!(error = %message, "cannot observe the container engine");
                self.failure_event(&desired, None, &message);
                self.report_status(
                    Some(&desired),
                    true,
                    Some(message),
                    &ServiceErrors::new(),
                    false,
                );
                return PassReport {
                    actions: 0,
                    failed: true,
                };
            }
        };
        let actions = plan(&desired, &observed);
        let was_converged = self.observed_revision == desired.revision;
        if actions.is_empty() {
            self.drift_reported.clear();
        } else if was_converged {
            self.report_drift(&desired, &actions);
        } else if self.last_failure.is_none() {
            info!(actions = actions.len(), "applying desired revision");
            // Let the fleet see the work start before a long pull (not again on each retry).
            self.last_observed = Some(observed.clone());
            self.report_status(Some(&desired), false, None, &ServiceErrors::new(), true);
        }

        let mut service_errors = ServiceErrors::new();
        let mut device_error = None;
        let mut failed = false;
        for action in &actions {
            if let Err(e) = self.execute(&desired, action).await {
                failed = true;
                let message = if action.undo.is_empty() {
                    e.to_string()
                } else {
                    self.undo(&desired, action).await;
                    abandoned_message(action, &e)
                };
                self.failure_event(&desired, Some(action), &message);
                match &action.service {
                    Some(service) if !matches!(e, RuntimeError::Unreachable(_)) => {
                        service_errors.insert((action.stack.clone(), service.clone()), message);
                    }
                    _ => device_error = Some(message),
                }
                break;
            }
        }
        if !failed {
            self.last_failure = None;
            self.observed_revision = desired.revision;
            if self.converged_revision != desired.revision {
                self.converged(&desired).await;
            }
        }
        let observed = if actions.is_empty() {
            observed
        } else {
            observe(&*self.runtime, &desired).await.unwrap_or(observed)
        };
        self.health_events(&desired, &observed);
        // Something changed during the pass (the engine event has already woken the next one):
        // do not claim convergence meanwhile.
        let pending = !failed && !actions.is_empty() && !plan(&desired, &observed).is_empty();
        self.last_observed = Some(observed);
        self.report_status(
            Some(&desired),
            failed,
            device_error,
            &service_errors,
            pending,
        );
        PassReport {
            actions: actions.len(),
            failed,
        }
    }

    fn event(
        &self,
        desired: &DesiredState,
        action: Option<&Action>,
        kind: EventKind,
        severity: Severity,
        message: String,
    ) {
        let mut event =
            DeviceEvent::new(&self.device, kind, severity, message).with_revision(desired.revision);
        if let Some(action) = action {
            event.stack = Some(action.stack.clone());
            event.service = action.service.clone();
        }
        self.outbox.event(event);
    }

    /// Executes one action and reports it.
    #[instrument(skip_all, err(Display), fields(stack = %action.stack, service = action.service.as_deref().unwrap_or(""), action = %action))]
    async fn execute(&self, desired: &DesiredState, action: &Action) -> Result<(), RuntimeError> {
        let rt = &*self.runtime;
        let (kind, message) = match &action.op {
            Op::EnsureVolume { name, options } => {
                rt.ensure_volume(name, &self.device, options).await?;
                (EventKind::Created, format!("created volume '{name}'"))
            }
            Op::Pull { image } => {
                if !self.retrying(action) {
                    let msg = format!("pulling image '{image}'");
                    self.event(
                        desired,
                        Some(action),
                        EventKind::Pulling,
                        Severity::Info,
                        msg,
                    );
                }
                let auth = self.registry_auth(desired, image)?;
                rt.pull_with(image, auth.as_ref()).await?;
                (EventKind::Pulled, format!("pulled image '{image}'"))
            }
            Op::Create(spec) => {
                self.write_files(desired, spec).await?;
                let id = rt.create(spec).await?;
                let short: String = id.chars().take(12).collect();
                (
                    EventKind::Created,
                    format!(
                        "created container '{}' ({short}) from image '{}'",
                        spec.name, spec.image
                    ),
                )
            }
            Op::Start { container, name } => {
                rt.start(container).await?;
                let message = match &action.finding {
                    Finding::NotRunning(_) => {
                        format!("started container '{name}' ({})", action.finding)
                    }
                    _ => format!("started container '{name}'"),
                };
                (EventKind::Started, message)
            }
            Op::Stop { container, name } => {
                match rt.stop(container, STOP_TIMEOUT).await {
                    Err(RuntimeError::NotFound { .. }) => return Ok(()),
                    other => other?,
                }
                (
                    EventKind::Stopped,
                    format!("stopped container '{name}' ({})", action.finding),
                )
            }
            Op::Remove { container, name } => {
                match rt.remove(container).await {
                    Err(RuntimeError::NotFound { .. }) => return Ok(()),
                    other => other?,
                }
                (
                    EventKind::Removed,
                    format!("removed container '{name}' ({})", action.finding),
                )
            }
            Op::AwaitReady {
                container,
                name,
                readiness,
            } => {
                self.await_ready(container, name, *readiness).await?;
                if let Readiness::Running { .. } = readiness {
                    info!("new container '{name}' is running");
                    return Ok(());
                }
                (
                    EventKind::Healthy,
                    format!("new container '{name}' is healthy"),
                )
            }
            Op::Rename {
                container,
                from,
                to,
            } => {
                rt.rename(container, to).await?;
                info!("renamed container '{from}' to '{to}' ({})", action.finding);
                return Ok(());
            }
            Op::RemoveNetwork { name } => {
                // Best effort: a container attached by someone else keeps the network, and
                // the device is converged anyway (the next pass tries again).
                match rt.remove_network(name).await {
                    Ok(()) => info!("removed network '{name}' ({})", action.finding),
                    Err(e) => {
                        warn!(network = %name, error = %e, "could not remove a network no service uses")
                    }
                }
                return Ok(());
            }
        };
        info!("{message}");
        self.event(desired, Some(action), kind, Severity::Info, message);
        Ok(())
    }

    /// Runs a failed action's undo, best effort: every step is tried and reported.
    async fn undo(&self, desired: &DesiredState, failed: &Action) {
        for op in &failed.undo {
            let action = Action {
                stack: failed.stack.clone(),
                service: failed.service.clone(),
                op: op.clone(),
                finding: Finding::Abandoned,
                undo: Vec::new(),
            };
            if let Err(e) = self.execute(desired, &action).await {
                warn!(action = %action, error = %e, "could not take back a failed start-first update");
            }
        }
    }

    /// Waits until `container` is ready per `readiness`: running without a restart (and
    /// healthy, when it has a healthcheck). Fails at once when it stops, restarts or reports
    /// unhealthy, when the bound passes, or when a newer desired document arrives (the next
    /// pass plans for that one instead).
    async fn await_ready(
        &self,
        container: &str,
        name: &str,
        readiness: Readiness,
    ) -> Result<(), RuntimeError> {
        let started = tokio::time::Instant::now();
        let not_ready = |reason: String| RuntimeError::NotReady {
            name: name.to_owned(),
            reason,
        };
        loop {
            let c = self.runtime.inspect(container).await?;
            let waited = started.elapsed();
            if c.restart_count > 0 {
                return Err(not_ready(format!(
                    "it restarted {} time(s): its main process exits",
                    c.restart_count
                )));
            }
            if c.state != ContainerState::Running {
                return Err(not_ready(format!(
                    "it is {} instead of running",
                    state_name(c.state)
                )));
            }
            match readiness {
                Readiness::Running { for_at_least } if waited >= for_at_least => return Ok(()),
                Readiness::Running { .. } => {}
                Readiness::Healthy { .. } if c.health == Health::Healthy => return Ok(()),
                Readiness::Healthy { .. } if c.health == Health::Unhealthy => {
                    return Err(not_ready("its healthcheck reports unhealthy".into()));
                }
                Readiness::Healthy { within } if waited >= within => {
                    return Err(not_ready(format!(
                        "not healthy after {} s (its healthcheck has not passed yet)",
                        within.as_secs()
                    )));
                }
                Readiness::Healthy { .. } => {}
            }
            if self.desired.has_changed().unwrap_or(false) {
                return Err(not_ready(
                    "a newer desired revision arrived while waiting".into(),
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Whether `action` is the one the previous pass failed on.
    fn retrying(&self, action: &Action) -> bool {
        self.last_failure
            .as_deref()
            .is_some_and(|k| k.starts_with(&format!("{action}|")))
    }

    /// A Failed event, unless the previous pass failed the same way (no event storm while
    /// retrying a pull against an unreachable registry).
    fn failure_event(&mut self, desired: &DesiredState, action: Option<&Action>, message: &str) {
        let key = format!(
            "{}|{}",
            action.map(|a| a.to_string()).unwrap_or_default(),
            without_ids(message)
        );
        if self.last_failure.as_deref() == Some(key.as_str()) {
            debug!(error = message, "same failure as the last pass");
            return;
        }
        self.last_failure = Some(key);
        self.event(
            desired,
            action,
            EventKind::Failed,
            Severity::Error,
            message.to_owned(),
        );
    }

    /// DriftDetected events for what was found changed while the revision was converged, once
    /// per finding until a pass finds nothing to do.
    fn report_drift(&mut self, desired: &DesiredState, actions: &[Action]) {
        let mut found: BTreeMap<(&str, Option<&str>), BTreeSet<String>> = BTreeMap::new();
        for a in actions
            .iter()
            .filter(|a| a.finding != Finding::ImageMissing)
        {
            found
                .entry((&a.stack, a.service.as_deref()))
                .or_default()
                .insert(a.finding.to_string());
        }
        for ((stack, service), findings) in found {
            let what = findings.into_iter().collect::<Vec<_>>().join(", ");
            let target = match service {
                Some(service) => format!("{stack}/{service}"),
                None => stack.to_owned(),
            };
            let key = format!("{target}: {what}");
            if !self.drift_reported.insert(key) {
                continue;
            }
            warn!(target = %target, found = %what, "drift detected; restoring");
            let mut event = DeviceEvent::new(
                &self.device,
                EventKind::DriftDetected,
                Severity::Warning,
                format!(
                    "drift on {target}: {what}; restoring desired revision {}",
                    desired.revision
                ),
            )
            .with_revision(desired.revision);
            event.stack = Some(stack.to_owned());
            event.service = service.map(str::to_owned);
            self.outbox.event(event);
        }
    }

    async fn converged(&mut self, desired: &DesiredState) {
        info!("desired revision converged");
        self.converged_revision = desired.revision;
        if let Err(e) = self.store.save_applied(desired.revision).await {
            warn!(error = %e, "could not persist the applied revision");
        }
        let msg = format!("desired revision {} applied", desired.revision);
        self.event(desired, None, EventKind::Converged, Severity::Info, msg);
        // Stacks no longer desired have no container left: their config and secret files go.
        let keep: BTreeSet<String> = desired.stacks.keys().cloned().collect();
        if let Err(e) = self.runtime.prune_files(&keep).await {
            warn!(error = %e, "could not remove the files of stacks no longer desired");
        }
    }

    /// Healthy/Unhealthy events on health transitions of desired services.
    fn health_events(&mut self, desired: &DesiredState, observed: &Observed) {
        let mut seen = BTreeMap::new();
        for (stack_name, stack) in &desired.stacks {
            for (service, svc) in &stack.services {
                let health = reported_container(
                    observed,
                    &self.device,
                    stack_name,
                    service,
                    &svc.config_hash(),
                )
                .map_or(Health::None, |c| c.health);
                let key = (stack_name.clone(), service.clone());
                let before = self.health.get(&key).copied().unwrap_or(Health::None);
                seen.insert(key, health);
                let (kind, severity) = match health {
                    Health::Healthy => (EventKind::Healthy, Severity::Info),
                    Health::Unhealthy => (EventKind::Unhealthy, Severity::Warning),
                    _ => continue,
                };
                if before != health {
                    let event = DeviceEvent::new(
                        &self.device,
                        kind,
                        severity,
                        format!(
                            "service {stack_name}/{service} is {}",
                            if health == Health::Healthy {
                                "healthy"
                            } else {
                                "unhealthy"
                            }
                        ),
                    )
                    .with_service(stack_name, service)
                    .with_revision(desired.revision);
                    self.outbox.event(event);
                }
            }
        }
        self.health = seen;
    }

    fn report_status(
        &mut self,
        desired: Option<&DesiredState>,
        failed: bool,
        last_error: Option<String>,
        service_errors: &ServiceErrors,
        pending: bool,
    ) {
        let status = status::build(StatusInput {
            pending,
            device: &self.device,
            desired,
            observed: self.last_observed.as_ref(),
            observed_revision: self.observed_revision,
            failed,
            last_error: last_error.as_deref(),
            service_errors,
            platform: self.platform.as_deref(),
        });
        if self
            .last_status
            .as_ref()
            .is_some_and(|last| status::same_content(last, &status))
        {
            return;
        }
        debug!(state = ?status.state, observed_revision = status.observed_revision, "status changed");
        if self.outbox.status(&status) {
            self.last_status = Some(status);
        }
    }
}

/// `message` with engine object ids (runs of 32+ hex digits) blanked: Docker names a new
/// endpoint or container id in each attempt's error, which does not make it a new failure.
fn without_ids(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut run = String::new();
    for c in message.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() >= 32 { "…" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// The error reported when a `start-first` update failed and its new container was taken
/// back, with advice when the cause is a host port the old container still holds.
fn abandoned_message(action: &Action, e: &RuntimeError) -> String {
    let service = match &action.service {
        Some(service) => format!("{}/{service}", action.stack),
        None => action.stack.clone(),
    };
    let error = e.to_string();
    let mut message = format!(
        "start-first update of {service} failed, the new container was removed and the old one keeps running: {error}"
    );
    if ["port is already allocated", "address already in use"]
        .iter()
        .any(|m| error.contains(m))
    {
        message.push_str(
            " — the old container still holds this host port, so both cannot run at once: use update_order stop-first (Compose deploy.update_config.order) for a service that publishes a fixed host port",
        );
    }
    message
}

/// Turns engine events about `device`'s containers into wake-ups, resubscribing with backoff
/// when the engine connection drops (and waking once after each resubscription, since events
/// may have been missed).
pub async fn watch_engine<R: ContainerRuntime>(
    runtime: Arc<R>,
    device: String,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let span = info_span!("engine_events", device = %device);
    async move {
        loop {
            match runtime.events(&device).await {
                Ok(mut events) => {
                    wake.notify_one();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            item = events.next() => match item {
                                Some(Ok(())) => {
                                    backoff.reset();
                                    wake.notify_one();
                                }
                                Some(Err(e)) => {
                                    warn!(error = %e, "engine event stream failed");
                                    break;
                                }
                                None => {
                                    debug!("engine event stream ended");
                                    break;
                                }
                            },
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot watch engine events"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests;
