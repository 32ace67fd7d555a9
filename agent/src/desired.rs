//! Receiving desired-state documents. Every payload on the desired topic is untrusted: it is
//! decoded, checked against this device, validated (names, mounts, dependency order) and
//! compared with the revision held. A rejected document changes nothing — the agent keeps its
//! current desired state, keeps running and stays connected — and says why in an event.
//!
//! The intake task also asks the controller for the document (a [`SyncRequest`]) when none
//! arrived within a few seconds of a (re)connect, so convergence never rests on one retained
//! delivery.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_protocol::SCHEMA_VERSION;
use edgefleet_protocol::codec::{DecodeError, check_device};
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::{DeviceEvent, EventKind, Severity};
use edgefleet_protocol::ids::{validate_service_name, validate_stack_name};
use edgefleet_protocol::policy::Violation;
use edgefleet_protocol::signing::{SignatureError, VerifyingKey, verify};
use edgefleet_protocol::spec::{OrderError, ServiceSpec, StackSpec, VolumeKind};
use edgefleet_protocol::sync::SyncRequest;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::outbox::Outbox;
use crate::state_file::StateStore;

/// First sync request this long after a ConnAck without a desired document.
pub const SYNC_AFTER_CONNECT: Duration = Duration::from_secs(5);
/// Then again at this interval while still none.
pub const SYNC_REPEAT: Duration = Duration::from_secs(15);

/// The desired state the agent holds (`None`: never received one — touch nothing).
pub type HeldDesired = Option<Arc<DesiredState>>;

/// What the link forwards to the intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A ConnAck: a new connection (and subscription) is up.
    Connected,
    Disconnected,
    /// A payload from this device's desired topic.
    Desired(Vec<u8>),
}

/// Why a desired document was rejected.
#[derive(Debug, Error)]
pub enum Rejection {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Signature(SignatureError),
    #[error(
        "revision {got} is older than the revision {held} already applied: a replayed document"
    )]
    Replayed { got: u64, held: u64 },
    #[error(
        "revision {revision} is already applied with different content: a replayed or forged document"
    )]
    Conflicting { revision: u64 },
    #[error("revision 0 is not a valid desired revision (revisions start at 1)")]
    ZeroRevision,
    #[error("stack '{stack}': {reason}")]
    Stack { stack: String, reason: String },
    #[error("stack '{stack}', service '{service}': {reason}")]
    Service {
        stack: String,
        service: String,
        reason: String,
    },
    #[error("stack '{stack}': {source}")]
    Order { stack: String, source: OrderError },
    #[error(
        "stack '{stack}' breaks the workload policy the document carries: {}",
        violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; ")
    )]
    Policy {
        stack: String,
        violations: Vec<Violation>,
    },
}

impl From<SignatureError> for Rejection {
    fn from(e: SignatureError) -> Self {
        match e {
            SignatureError::Decode(d) => Rejection::Decode(d),
            other => Rejection::Signature(other),
        }
    }
}

impl Rejection {
    /// Whether someone published a document the controller did not sign, or replayed an old
    /// one: reported as a security event rather than as a malformed document.
    pub fn is_security(&self) -> bool {
        matches!(
            self,
            Rejection::Signature(_)
                | Rejection::Replayed { .. }
                | Rejection::Conflicting { .. }
                | Rejection::Policy { .. }
        )
    }
}

/// What to do with a well-formed, correctly signed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than what is held: apply it.
    Accept(Box<DesiredState>),
    /// The document already held (a retained copy delivered again on reconnect).
    Replay,
}

/// Judges one payload from the desired topic of `device`: the signature against the pinned
/// controller key first, then the document, then its revision against the one held.
pub fn judge(
    device: &str,
    trusted: &VerifyingKey,
    payload: &[u8],
    held: Option<&DesiredState>,
) -> Result<Verdict, Rejection> {
    let doc = verify(trusted, payload)?;
    check_device(device, &doc.device)?;
    if doc.revision == 0 {
        return Err(Rejection::ZeroRevision);
    }
    if let Some(held) = held {
        if doc.revision == held.revision {
            // The controller may re-issue the same revision (a restart re-signs it with a new
            // `issued_at`); only the content has to match.
            if doc.stacks == held.stacks {
                return Ok(Verdict::Replay);
            }
            return Err(Rejection::Conflicting {
                revision: doc.revision,
            });
        }
        if doc.revision < held.revision {
            return Err(Rejection::Replayed {
                got: doc.revision,
                held: held.revision,
            });
        }
    }
    for (name, stack) in &doc.stacks {
        validate_stack(name, stack)?;
    }
    // Defence in depth: the controller checked every stack against the policy at apply; a
    // stack this document adds or changes must still keep the policy the document carries.
    // A stack already held runs on (a tightened policy lists it, never stops it).
    if let Some(policy) = &doc.policy {
        for (name, stack) in &doc.stacks {
            if held.is_some_and(|h| h.stacks.get(name) == Some(stack)) {
                continue;
            }
            let violations = policy.check(stack);
            if !violations.is_empty() {
                return Err(Rejection::Policy {
                    stack: name.clone(),
                    violations,
                });
            }
        }
    }
    Ok(Verdict::Accept(Box::new(doc)))
}

fn validate_stack(name: &str, stack: &StackSpec) -> Result<(), Rejection> {
    let stack_err = |reason: String| Rejection::Stack {
        stack: name.to_owned(),
        reason,
    };
    validate_stack_name(name).map_err(|e| stack_err(e.to_string()))?;
    if stack.deployment != name {
        return Err(stack_err(format!(
            "carries deployment '{}'",
            stack.deployment
        )));
    }
    for volume in &stack.volumes {
        validate_stack_name(volume).map_err(|e| stack_err(format!("volume name: {e}")))?;
    }
    for (service, svc) in &stack.services {
        validate_service(stack, service, svc).map_err(|reason| Rejection::Service {
            stack: name.to_owned(),
            service: service.clone(),
            reason,
        })?;
    }
    stack.start_order().map_err(|source| Rejection::Order {
        stack: name.to_owned(),
        source,
    })?;
    Ok(())
}

fn validate_service(stack: &StackSpec, name: &str, svc: &ServiceSpec) -> Result<(), String> {
    validate_service_name(name).map_err(|e| e.to_string())?;
    if svc.image.trim().is_empty()
        || svc
            .image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("image reference {:?} is not valid", svc.image));
    }
    for (key, value) in &svc.environment {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(format!("environment variable {key:?} is not valid"));
        }
    }
    for m in &svc.volumes {
        if !m.target.starts_with('/') || m.target.contains(':') {
            return Err(format!(
                "mount target {:?} must be an absolute path without ':'",
                m.target
            ));
        }
        match m.kind {
            VolumeKind::Named if !stack.volumes.contains(&m.source) => {
                return Err(format!(
                    "volume '{}' is not declared under the stack's top-level volumes",
                    m.source
                ));
            }
            VolumeKind::Bind if !m.source.starts_with('/') || m.source.contains(':') => {
                return Err(format!(
                    "bind mount source {:?} must be an absolute host path without ':'",
                    m.source
                ));
            }
            _ => {}
        }
    }
    if let Some(p) = svc.ports.iter().find(|p| p.container_port == 0) {
        return Err(format!("port mapping {p:?} has container port 0"));
    }
    if let Some(hc) = &svc.healthcheck {
        match hc.test.first().map(String::as_str) {
            Some("NONE") => {}
            Some("CMD" | "CMD-SHELL") if hc.test.len() > 1 => {}
            _ => {
                return Err(format!(
                    "healthcheck test {:?} must be [\"CMD\", prog, args…], [\"CMD-SHELL\", command] or [\"NONE\"]",
                    hc.test
                ));
            }
        }
    }
    Ok(())
}

/// The task that receives desired documents and asks for them when they do not come.
pub struct Intake {
    device: String,
    trusted: VerifyingKey,
    held: watch::Sender<HeldDesired>,
    store: Arc<StateStore>,
    outbox: Arc<dyn Outbox>,
    inbound: mpsc::Receiver<Inbound>,
}

impl Intake {
    pub fn new(
        device: String,
        trusted: VerifyingKey,
        held: watch::Sender<HeldDesired>,
        store: Arc<StateStore>,
        outbox: Arc<dyn Outbox>,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Self {
        Intake {
            device,
            trusted,
            held,
            store,
            outbox,
            inbound,
        }
    }

    fn held_revision(&self) -> Option<u64> {
        self.held.borrow().as_ref().map(|d| d.revision)
    }

    /// Runs until `shutdown` or until the link goes away.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Whether a usable desired document arrived on the current connection.
        let mut received = false;
        let mut sync_at: Option<Instant> = None;
        loop {
            let sync_due = async {
                match sync_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                msg = self.inbound.recv() => match msg {
                    None => return,
                    Some(Inbound::Connected) => {
                        received = false;
                        sync_at = Some(Instant::now() + SYNC_AFTER_CONNECT);
                    }
                    Some(Inbound::Disconnected) => sync_at = None,
                    Some(Inbound::Desired(payload)) => received |= self.handle(&payload).await,
                },
                _ = sync_due => {
                    let held = self.held_revision();
                    if received && held.is_some() {
                        sync_at = None;
                    } else {
                        let reason = if held.is_none() {
                            "the agent holds no desired state"
                        } else {
                            "no desired document received since connecting"
                        };
                        info!(have_revision = held.unwrap_or(0), reason, "requesting desired state");
                        self.outbox.sync_request(SyncRequest {
                            schema: SCHEMA_VERSION,
                            device: self.device.clone(),
                            have_revision: held.unwrap_or(0),
                            reason: reason.to_owned(),
                        });
                        sync_at = Some(Instant::now() + SYNC_REPEAT);
                    }
                }
            }
        }
    }

    /// Handles one payload; returns whether it counts as having the desired document. An
    /// accepted document is persisted first (awaiting the state file's writer thread).
    pub async fn handle(&self, payload: &[u8]) -> bool {
        let held_doc = self.held.borrow().clone();
        let held = held_doc.as_ref().map(|d| d.revision);
        let event = |kind, severity, message: String| {
            DeviceEvent::new(&self.device, kind, severity, message)
        };
        match judge(&self.device, &self.trusted, payload, held_doc.as_deref()) {
            Ok(Verdict::Accept(doc)) => {
                let revision = doc.revision;
                info!(
                    revision,
                    stacks = doc.stacks.len(),
                    "accepted desired state"
                );
                if let Err(e) = self.store.save_desired(&doc).await {
                    warn!(revision, error = %e, "could not persist desired state");
                    self.outbox.event(
                        event(
                            EventKind::Failed,
                            Severity::Warning,
                            format!("desired revision {revision} is applied but could not be saved locally, so a restart without the broker would lose it: {e}"),
                        )
                        .with_revision(revision),
                    );
                }
                self.outbox.event(
                    event(
                        EventKind::DesiredReceived,
                        Severity::Info,
                        format!(
                            "desired revision {revision} received ({} stack(s))",
                            doc.stacks.len()
                        ),
                    )
                    .with_revision(revision),
                );
                self.held.send_replace(Some(Arc::new(*doc)));
                true
            }
            Ok(Verdict::Replay) => {
                debug!(revision = held, "desired revision already held");
                true
            }
            Err(rejection) if rejection.is_security() => {
                warn!(error = %rejection, "refused a desired document (unsigned, replayed, or against its own policy); nothing changes");
                let mut ev = event(
                    EventKind::SecurityRejected,
                    Severity::Error,
                    format!(
                        "desired document refused: {rejection}; nothing was changed on this device"
                    ),
                );
                ev.revision = claimed_revision(payload);
                self.outbox.event(ev);
                // A replay still leaves this device holding a valid document.
                matches!(rejection, Rejection::Replayed { .. }) && held.is_some()
            }
            Err(rejection) => {
                warn!(error = %rejection, "rejected desired document; keeping the current desired state");
                let mut ev = event(
                    EventKind::DesiredRejected,
                    Severity::Error,
                    format!(
                        "desired document rejected: {rejection}; keeping the current desired state"
                    ),
                );
                ev.revision = claimed_revision(payload);
                self.outbox.event(ev);
                false
            }
        }
    }
}

/// The revision a payload claims (inside the signed envelope, or bare), for the event only:
/// never trusted for anything else.
fn claimed_revision(payload: &[u8]) -> Option<u64> {
    let v = serde_json::from_slice::<serde_json::Value>(payload).ok()?;
    v.get("document")
        .unwrap_or(&v)
        .get("revision")
        .and_then(|r| r.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::RecordingOutbox;
    use serde_json::json;

    use edgefleet_protocol::signing::DocumentSigner;

    /// The controller key these tests trust, and a key nobody trusts.
    fn controller() -> DocumentSigner {
        DocumentSigner::from_secret(&[1; 32])
    }
    fn forger() -> DocumentSigner {
        DocumentSigner::from_secret(&[2; 32])
    }

    fn bare(device: &str, revision: u64, stacks: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schema": 1, "device": device, "revision": revision,
            "issued_at": "2026-01-01T00:00:00.000Z", "stacks": stacks
        }))
        .unwrap()
    }

    /// A document signed by the trusted controller key.
    fn doc(device: &str, revision: u64, stacks: serde_json::Value) -> Vec<u8> {
        controller().sign_bytes(&bare(device, revision, stacks))
    }

    /// A signed document for device `d` carrying a workload policy.
    fn doc_with_policy(
        revision: u64,
        stacks: serde_json::Value,
        policy: serde_json::Value,
    ) -> Vec<u8> {
        let mut v: serde_json::Value =
            serde_json::from_slice(&bare("d", revision, stacks)).unwrap();
        v["policy"] = policy;
        controller().sign_bytes(&serde_json::to_vec(&v).unwrap())
    }

    fn held(revision: u64, stacks: serde_json::Value) -> DesiredState {
        serde_json::from_slice(&bare("d", revision, stacks)).unwrap()
    }

    fn app(services: serde_json::Value) -> serde_json::Value {
        json!({"app": {"deployment": "app", "deployment_revision": 1, "volumes": ["data"], "services": services}})
    }

    #[test]
    fn judge_table() {
        let ok = app(json!({"web": {"image": "app:1"}}));
        type Case = (
            &'static str,
            Vec<u8>,
            Option<DesiredState>,
            Result<&'static str, &'static str>,
        );
        let h2 = || Some(held(2, ok.clone()));
        let cases: Vec<Case> = vec![
            ("new document", doc("d", 1, ok.clone()), None, Ok("accept")),
            (
                "newer revision",
                doc("d", 3, ok.clone()),
                h2(),
                Ok("accept"),
            ),
            (
                "same document again",
                doc("d", 2, ok.clone()),
                h2(),
                Ok("replay"),
            ),
            (
                "older revision (replay)",
                doc("d", 1, ok.clone()),
                h2(),
                Err("security: revision 1 is older than the revision 2"),
            ),
            (
                "same revision, other content",
                doc("d", 2, app(json!({"web": {"image": "evil:1"}}))),
                h2(),
                Err("security: revision 2 is already applied with different content"),
            ),
            (
                "unsigned",
                bare("d", 3, ok.clone()),
                h2(),
                Err("security: the document is not signed"),
            ),
            (
                "signed by another key",
                forger().sign_bytes(&bare("d", 3, ok.clone())),
                h2(),
                Err("security: the document is signed by key"),
            ),
            (
                "forged under our key id",
                String::from_utf8(forger().sign_bytes(&bare("d", 3, ok.clone())))
                    .unwrap()
                    .replace(forger().key_id(), controller().key_id())
                    .into_bytes(),
                h2(),
                Err("security: the signature does not match"),
            ),
            ("empty payload", vec![], None, Err("empty")),
            ("not JSON", b"{oops".to_vec(), None, Err("not valid JSON")),
            (
                "wrong schema",
                controller().sign_bytes(br#"{"schema":2}"#),
                None,
                Err("schema 2"),
            ),
            (
                "other device",
                doc("other", 1, ok.clone()),
                None,
                Err("'other'"),
            ),
            (
                "revision 0",
                doc("d", 0, ok.clone()),
                None,
                Err("revision 0"),
            ),
            (
                "bad stack name",
                doc(
                    "d",
                    1,
                    json!({"a/b": {"deployment": "a/b", "deployment_revision": 1, "services": {}}}),
                ),
                None,
                Err("'/'"),
            ),
            (
                "deployment mismatch",
                doc(
                    "d",
                    1,
                    json!({"a": {"deployment": "b", "deployment_revision": 1, "services": {}}}),
                ),
                None,
                Err("carries deployment 'b'"),
            ),
            (
                "bad service name",
                doc("d", 1, app(json!({".x": {"image": "i"}}))),
                None,
                Err("service name"),
            ),
            (
                "empty image",
                doc("d", 1, app(json!({"web": {"image": " "}}))),
                None,
                Err("image reference"),
            ),
            (
                "cycle",
                doc(
                    "d",
                    1,
                    app(
                        json!({"a": {"image": "i", "depends_on": ["b"]}, "b": {"image": "i", "depends_on": ["a"]}}),
                    ),
                ),
                None,
                Err("cycle"),
            ),
            (
                "unknown dependency",
                doc(
                    "d",
                    1,
                    app(json!({"a": {"image": "i", "depends_on": ["zz"]}})),
                ),
                None,
                Err("'zz'"),
            ),
            (
                "undeclared volume",
                doc(
                    "d",
                    1,
                    app(
                        json!({"a": {"image": "i", "volumes": [{"kind": "named", "source": "other", "target": "/x"}]}}),
                    ),
                ),
                None,
                Err("not declared"),
            ),
            (
                "relative bind",
                doc(
                    "d",
                    1,
                    app(
                        json!({"a": {"image": "i", "volumes": [{"kind": "bind", "source": "etc", "target": "/x"}]}}),
                    ),
                ),
                None,
                Err("absolute host path"),
            ),
            (
                "bad env",
                doc(
                    "d",
                    1,
                    app(json!({"a": {"image": "i", "environment": {"A=B": "1"}}})),
                ),
                None,
                Err("environment"),
            ),
            (
                "bad healthcheck",
                doc(
                    "d",
                    1,
                    app(json!({"a": {"image": "i", "healthcheck": {"test": ["true"]}}})),
                ),
                None,
                Err("healthcheck"),
            ),
            (
                "a new stack against the policy it carries",
                doc_with_policy(
                    3,
                    app(json!({"web": {"image": "app:1", "privileged": true}})),
                    json!({}),
                ),
                h2(),
                Err(
                    "security: stack 'app' breaks the workload policy the document carries: service 'web', key 'privileged'",
                ),
            ),
            (
                "a new stack the policy it carries allows",
                doc_with_policy(
                    3,
                    app(json!({"web": {"image": "app:1", "privileged": true}})),
                    json!({"privileged": true}),
                ),
                h2(),
                Ok("accept"),
            ),
            (
                "a stack held already runs on under a tightened policy",
                doc_with_policy(
                    3,
                    json!({
                        "app": {"deployment": "app", "deployment_revision": 1, "volumes": ["data"], "services": {"web": {"image": "app:1"}}},
                        "other": {"deployment": "other", "deployment_revision": 1, "services": {"x": {"image": "x:1"}}}
                    }),
                    json!({"registries": ["registry.plant.local"]}),
                ),
                h2(),
                Err(
                    "security: stack 'other' breaks the workload policy the document carries: service 'x', key 'image'",
                ),
            ),
            (
                "unknown policy field",
                doc_with_policy(3, ok.clone(), json!({"privilegd": true})),
                h2(),
                Err("privilegd"),
            ),
            (
                "unknown field type",
                doc("d", 1, app(json!({"a": {"image": 5}}))),
                None,
                Err("not valid JSON"),
            ),
        ];
        let key = controller().verifying_key();
        for (name, payload, held, want) in cases {
            let got = judge("d", &key, &payload, held.as_ref());
            match (want, got) {
                (Ok("accept"), Ok(Verdict::Accept(_))) | (Ok("replay"), Ok(Verdict::Replay)) => {}
                (Err(needle), Err(e)) => {
                    let shown = if e.is_security() {
                        format!("security: {e}")
                    } else {
                        e.to_string()
                    };
                    assert!(
                        shown.contains(needle),
                        "{name}: {shown} does not contain {needle:?}"
                    )
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    fn intake(
        dir: &std::path::Path,
    ) -> (Intake, Arc<RecordingOutbox>, watch::Receiver<HeldDesired>) {
        let (store, _) = StateStore::open(dir, "d").unwrap();
        let outbox = Arc::new(RecordingOutbox::default());
        let (tx, rx) = watch::channel(None);
        let (_in_tx, in_rx) = mpsc::channel(4);
        (
            Intake::new(
                "d".into(),
                controller().verifying_key(),
                tx,
                Arc::new(store),
                outbox.clone(),
                in_rx,
            ),
            outbox,
            rx,
        )
    }

    #[tokio::test]
    async fn rejected_documents_keep_the_current_state() {
        let dir = tempfile::tempdir().unwrap();
        let (intake, outbox, held) = intake(dir.path());
        let good = doc("d", 2, app(json!({"web": {"image": "app:1"}})));
        assert!(intake.handle(&good).await);
        assert_eq!(held.borrow().as_ref().map(|d| d.revision), Some(2));
        assert!(
            !intake
                .handle(&doc("d", 3, app(json!({"web": {"image": ""}}))))
                .await
        );
        assert!(!intake.handle(b"").await);
        assert!(intake.handle(&good).await);
        assert!(intake.handle(&doc("d", 1, app(json!({})))).await);
        assert!(
            !intake
                .handle(&bare("d", 5, app(json!({"web": {"image": "evil:1"}}))))
                .await
        );
        assert!(
            !intake
                .handle(&forger().sign_bytes(&bare("d", 6, app(json!({})))))
                .await
        );
        assert_eq!(held.borrow().as_ref().map(|d| d.revision), Some(2));

        let events = outbox.events();
        let kinds: Vec<(EventKind, Severity)> =
            events.iter().map(|e| (e.kind, e.severity)).collect();
        assert_eq!(
            kinds,
            vec![
                (EventKind::DesiredReceived, Severity::Info),
                (EventKind::DesiredRejected, Severity::Error),
                (EventKind::DesiredRejected, Severity::Error),
                (EventKind::SecurityRejected, Severity::Error),
                (EventKind::SecurityRejected, Severity::Error),
                (EventKind::SecurityRejected, Severity::Error),
            ]
        );
        assert_eq!(events[1].revision, Some(3));
        assert!(
            events[3].message.contains("replayed"),
            "{}",
            events[3].message
        );
        assert_eq!(events[4].revision, Some(5));
        assert!(
            events[4].message.contains("not signed"),
            "{}",
            events[4].message
        );
        assert!(
            events[5].message.contains("signed by key"),
            "{}",
            events[5].message
        );
        // Persisted: a restarted agent finds revision 2.
        let (_, loaded) = StateStore::open(dir.path(), "d").unwrap();
        assert_eq!(loaded.desired.map(|d| d.revision), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn asks_for_desired_state_when_none_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = StateStore::open(dir.path(), "d").unwrap();
        let outbox = Arc::new(RecordingOutbox::default());
        let (tx, mut held) = watch::channel(None);
        let (in_tx, in_rx) = mpsc::channel(4);
        let intake = Intake::new(
            "d".into(),
            controller().verifying_key(),
            tx,
            Arc::new(store),
            outbox.clone(),
            in_rx,
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(intake.run(shutdown.clone()));

        in_tx.send(Inbound::Connected).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(outbox.syncs().is_empty());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(outbox.syncs().len(), 1);
        assert_eq!(outbox.syncs()[0].have_revision, 0);
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(outbox.syncs().len(), 2);

        in_tx
            .send(Inbound::Desired(doc("d", 1, app(json!({})))))
            .await
            .unwrap();
        // Accepting it waits (in real time) for the state file's writer thread; the paused
        // clock must not run ahead meanwhile, so let the intake finish first.
        held.changed().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            outbox.syncs().len(),
            2,
            "no more requests once a document is held"
        );

        // A reconnect whose retained replay brings the document: no request.
        in_tx.send(Inbound::Connected).await.unwrap();
        in_tx
            .send(Inbound::Desired(doc("d", 1, app(json!({})))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(outbox.syncs().len(), 2);

        // A reconnect without it: one request, naming the revision held.
        in_tx.send(Inbound::Connected).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(outbox.syncs().len(), 3);
        assert_eq!(outbox.syncs()[2].have_revision, 1);
        shutdown.cancel();
        task.await.unwrap();
    }
}
