//! Reconciler passes against the in-memory engine: convergence, idempotence, drift, failures,
//! restarts.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::{EventKind, Severity};
use edgefleet_protocol::spec::{RestartPolicy, ServiceSpec, StackSpec};
use edgefleet_protocol::status::{ContainerState, ConvergenceState, Health};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::container::{ContainerSpec, LABEL_DEVICE};
use crate::outbox::RecordingOutbox;
use crate::runtime::MemoryRuntime;
use crate::runtime::memory::MemOp;

const DEV: &str = "press-07";

fn svc(value: serde_json::Value) -> ServiceSpec {
    serde_json::from_value(value).unwrap()
}

fn desired(revision: u64, services: Vec<(&str, ServiceSpec)>) -> DesiredState {
    let stack = StackSpec {
        volume_options: Default::default(),
        networks: Default::default(),
        deployment: "app".into(),
        deployment_revision: revision,
        volumes: vec!["data".into()],
        services: services
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect(),
        configs: Default::default(),
        secrets: Default::default(),
    };
    DesiredState::new(DEV, revision, [("app".to_string(), stack.into())].into())
}

fn two_services(revision: u64, web_image: &str) -> DesiredState {
    desired(
        revision,
        vec![
            (
                "db",
                svc(json!({"image": "db:1", "restart": "always",
                    "volumes": [{"kind": "named", "source": "data", "target": "/data"}],
                    "healthcheck": {"test": ["CMD-SHELL", "true"], "interval_ms": 1000}})),
            ),
            (
                "web",
                svc(json!({"image": web_image, "restart": "unless-stopped", "depends_on": ["db"]})),
            ),
        ],
    )
}

struct Harness {
    rt: MemoryRuntime,
    outbox: Arc<RecordingOutbox>,
    held: watch::Sender<HeldDesired>,
    store: Arc<StateStore>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = StateStore::open(dir.path(), DEV).unwrap();
        let (held, _) = watch::channel(None);
        let rt = MemoryRuntime::new();
        for image in ["db:1", "web:1"] {
            rt.add_image(image);
        }
        rt.add_to_registry("web:2");
        Harness {
            rt,
            outbox: Arc::default(),
            held,
            store: Arc::new(store),
            _dir: dir,
        }
    }

    fn reconciler(&self, last_applied: u64) -> Reconciler<MemoryRuntime> {
        Reconciler::new(
            DEV.into(),
            Arc::new(self.rt.clone()),
            self.held.subscribe(),
            self.outbox.clone(),
            self.store.clone(),
            last_applied,
        )
    }

    fn set(&self, d: DesiredState) {
        self.held.send_replace(Some(Arc::new(d)));
    }

    fn kinds(&self) -> Vec<EventKind> {
        self.outbox.events().iter().map(|e| e.kind).collect()
    }

    fn last_status(&self) -> edgefleet_protocol::status::DeviceStatus {
        self.outbox
            .statuses()
            .last()
            .cloned()
            .expect("a status was reported")
    }
}

#[tokio::test]
async fn converges_in_one_pass_then_does_nothing() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(two_services(1, "web:1"));

    let report = r.pass().await;
    assert_eq!(
        report,
        PassReport {
            actions: 5,
            failed: false
        }
    );
    assert_eq!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>(),
        vec![
            "volume ef-press-07-app-data",
            "create ef-press-07-app-db",
            "start ef-press-07-app-db",
            "create ef-press-07-app-web",
            "start ef-press-07-app-web",
        ]
    );
    let status = h.last_status();
    assert_eq!(status.state, ConvergenceState::Converged);
    assert_eq!((status.observed_revision, status.desired_revision), (1, 1));
    let db = &status.stacks["app"].services["db"];
    assert_eq!(db.state, ContainerState::Running);
    assert_eq!(db.health, Health::Starting);
    assert!(db.container_id.is_some() && db.image_id.is_some() && db.config_hash.is_some());
    assert_eq!(status.stacks["app"].services["web"].health, Health::None);
    let kinds = h.kinds();
    assert_eq!(
        kinds.iter().filter(|k| **k == EventKind::Converged).count(),
        1
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == EventKind::Started).count(),
        2
    );
    assert!(!kinds.contains(&EventKind::DriftDetected));
    assert!(h.store.dir().join("state.bin").exists());

    // Second pass: nothing to do, nothing said.
    h.rt.clear_calls();
    let (events, statuses) = (h.outbox.events().len(), h.outbox.statuses().len());
    assert_eq!(
        r.pass().await,
        PassReport {
            actions: 0,
            failed: false
        }
    );
    assert!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>()
            .is_empty()
    );
    assert_eq!(h.outbox.events().len(), events);
    assert_eq!(
        h.outbox.statuses().len(),
        statuses,
        "unchanged status is not republished"
    );

    // Health transition: event and new status.
    assert!(h.rt.set_health(
        &crate::container::container_name("press-07", "app", "db"),
        Health::Healthy
    ));
    r.pass().await;
    assert_eq!(h.kinds().last(), Some(&EventKind::Healthy));
    assert_eq!(
        h.last_status().stacks["app"].services["db"].health,
        Health::Healthy
    );
}

#[tokio::test]
async fn without_desired_state_nothing_is_touched() {
    let h = Harness::new();
    let d = two_services(1, "web:1");
    let spec = ContainerSpec::for_service(
        DEV,
        "app",
        &d.stacks["app"],
        "web",
        &d.stacks["app"].services["web"],
    );
    h.rt.insert(&spec, ContainerState::Running);
    let mut r = h.reconciler(0);
    assert_eq!(
        r.pass().await,
        PassReport {
            actions: 0,
            failed: false
        }
    );
    assert!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>()
            .is_empty()
    );
    assert_eq!(h.rt.containers().len(), 1);
    assert_eq!(h.last_status().state, ConvergenceState::Idle);
}

#[tokio::test]
async fn restores_drift_and_reports_it() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(two_services(1, "web:1"));
    r.pass().await;
    h.outbox.clear();

    // Someone stops one container and removes the other.
    assert!(h.rt.docker_stop(&crate::container::container_name("press-07", "app", "web")));
    assert!(h.rt.docker_rm(&crate::container::container_name("press-07", "app", "db")));
    h.rt.clear_calls();
    assert_eq!(
        r.pass().await,
        PassReport {
            actions: 3,
            failed: false
        }
    );
    assert_eq!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>(),
        vec![
            "create ef-press-07-app-db",
            "start ef-press-07-app-db",
            "start ef-press-07-app-web"
        ]
    );
    let drift: Vec<_> = h
        .outbox
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::DriftDetected)
        .collect();
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert!(
        drift
            .iter()
            .all(|e| e.severity == Severity::Warning && e.revision == Some(1))
    );
    assert!(
        drift[0].message.contains("app/db") && drift[0].message.contains("missing"),
        "{}",
        drift[0].message
    );
    assert!(
        drift[1].message.contains("app/web") && drift[1].message.contains("exited"),
        "{}",
        drift[1].message
    );
    assert!(
        !h.kinds().contains(&EventKind::Converged),
        "converged is announced once per revision"
    );
    assert!(
        h.rt.containers()
            .iter()
            .all(|c| c.state == ContainerState::Running)
    );

    // A config change behind our back (a container with other labels) is drift too.
    h.outbox.clear();
    let mut foreign =
        h.rt.container(&crate::container::container_name("press-07", "app", "web"))
            .unwrap();
    assert!(h.rt.docker_stop(&foreign.id) && h.rt.docker_rm(&foreign.id));
    foreign
        .labels
        .insert(crate::container::LABEL_CONFIG_HASH.into(), "0000".into());
    let spec = ContainerSpec {
        name: foreign.name.clone(),
        image: "web:1".into(),
        command: None,
        entrypoint: None,
        env: vec![],
        ports: vec![],
        mounts: vec![],
        restart: RestartPolicy::No,
        healthcheck: None,
        labels: foreign.labels.clone(),
        networks: vec![],
        network_mode: None,
        extra: Default::default(),
        files: Vec::new(),
    };
    h.rt.insert(&spec, ContainerState::Running);
    r.pass().await;
    let drift: Vec<_> = h
        .outbox
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::DriftDetected)
        .collect();
    assert_eq!(drift.len(), 1);
    assert!(
        drift[0].message.contains("config changed"),
        "{}",
        drift[0].message
    );
    assert_eq!(h.last_status().state, ConvergenceState::Converged);
}

#[tokio::test]
async fn restart_no_exited_container_is_left_alone() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(desired(1, vec![("job", svc(json!({"image": "web:1"})))]));
    r.pass().await;
    assert!(h.rt.crash(&crate::container::container_name("press-07", "app", "job")));
    h.rt.clear_calls();
    assert_eq!(r.pass().await.actions, 0);
    assert!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>()
            .is_empty()
    );
    let status = h.last_status();
    assert_eq!(
        status.stacks["app"].services["job"].state,
        ContainerState::Exited
    );
    assert_eq!(status.state, ConvergenceState::Converged);
}

#[tokio::test]
async fn failed_pull_is_reported_and_retried_until_it_works() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(two_services(1, "web:1"));
    r.pass().await;
    h.outbox.clear();

    // Revision 2 wants an image nobody can pull: the old web keeps running.
    h.set(two_services(2, "web:3"));
    let report = r.pass().await;
    assert!(report.failed);
    let status = h.last_status();
    assert_eq!(status.state, ConvergenceState::Failed);
    assert_eq!((status.observed_revision, status.desired_revision), (1, 2));
    let web = &status.stacks["app"].services["web"];
    let err = web.last_error.as_deref().unwrap_or_default();
    assert!(
        err.contains("image 'web:3' not present and pull failed") && err.contains("docker load"),
        "{err}"
    );
    assert_eq!(
        web.state,
        ContainerState::Running,
        "old version still running"
    );
    assert_eq!(
        h.rt.container(&crate::container::container_name("press-07", "app", "web"))
            .unwrap()
            .image,
        "web:1"
    );
    let failed: Vec<_> = h
        .outbox
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].service.as_deref(), Some("web"));

    // Retrying the same failure does not repeat the Failed event.
    assert!(r.pass().await.failed);
    assert_eq!(
        h.kinds()
            .iter()
            .filter(|k| **k == EventKind::Failed)
            .count(),
        1
    );

    // Revision 3 with a pullable image converges.
    h.set(two_services(3, "web:2"));
    h.rt.clear_calls();
    let report = r.pass().await;
    assert!(!report.failed);
    assert_eq!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>(),
        vec![
            "pull web:2",
            "stop ef-press-07-app-web",
            "remove ef-press-07-app-web",
            "create ef-press-07-app-web",
            "start ef-press-07-app-web"
        ]
    );
    let status = h.last_status();
    assert_eq!(status.state, ConvergenceState::Converged);
    assert_eq!(status.observed_revision, 3);
    assert!(status.stacks["app"].services["web"].last_error.is_none());
    let kinds = h.kinds();
    for k in [
        EventKind::Pulling,
        EventKind::Pulled,
        EventKind::Stopped,
        EventKind::Removed,
        EventKind::Created,
        EventKind::Started,
        EventKind::Converged,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
    }
}

#[tokio::test]
async fn stops_at_the_first_failure() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(two_services(1, "web:1"));
    h.rt.fail_next(MemOp::Start, "port 80 already allocated");
    let report = r.pass().await;
    assert!(report.failed);
    assert_eq!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>(),
        vec![
            "volume ef-press-07-app-data",
            "create ef-press-07-app-db",
            "start ef-press-07-app-db"
        ]
    );
    let status = h.last_status();
    assert!(
        status.stacks["app"].services["db"]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("port 80")
    );
    assert_eq!(
        status.stacks["app"].services["web"].state,
        ContainerState::Missing
    );
    // The next pass picks up where it stopped.
    h.rt.clear_calls();
    assert!(!r.pass().await.failed);
    assert_eq!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>(),
        vec![
            "start ef-press-07-app-db",
            "create ef-press-07-app-web",
            "start ef-press-07-app-web"
        ]
    );
}

#[tokio::test]
async fn engine_down_is_a_device_error() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(two_services(1, "web:1"));
    h.rt.set_unreachable(true);
    assert!(r.pass().await.failed);
    let status = h.last_status();
    assert_eq!(status.state, ConvergenceState::Failed);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("unreachable")
    );
    h.rt.set_unreachable(false);
    assert!(!r.pass().await.failed);
    assert_eq!(h.last_status().state, ConvergenceState::Converged);
    assert!(h.last_status().last_error.is_none());
}

#[tokio::test]
async fn restarted_agent_recreates_nothing() {
    let h = Harness::new();
    let d = two_services(1, "web:1");
    h.set(d.clone());
    h.reconciler(0).pass().await;
    let before = h.rt.containers();
    h.rt.clear_calls();
    h.outbox.clear();

    // A new reconciler, as after a restart, with the revision it had applied.
    let mut r = h.reconciler(1);
    assert_eq!(
        r.pass().await,
        PassReport {
            actions: 0,
            failed: false
        }
    );
    assert!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>()
            .is_empty()
    );
    assert_eq!(h.rt.containers(), before);
    assert!(!h.kinds().contains(&EventKind::Converged));
    assert_eq!(h.last_status().state, ConvergenceState::Converged);
}

#[tokio::test]
async fn only_this_devices_containers_are_touched() {
    let h = Harness::new();
    let other = DesiredState {
        device: "press-08".into(),
        ..two_services(1, "web:1")
    };
    let spec = ContainerSpec::for_service(
        "press-08",
        "app",
        &other.stacks["app"],
        "web",
        &other.stacks["app"].services["web"],
    );
    h.rt.insert(&spec, ContainerState::Running);
    let mut r = h.reconciler(0);
    h.set(DesiredState::new(DEV, 1, Default::default()));
    assert_eq!(r.pass().await.actions, 0);
    let c =
        h.rt.container(&crate::container::container_name("press-08", "app", "web"))
            .unwrap();
    assert_eq!(c.labels[LABEL_DEVICE], "press-08");
    assert_eq!(c.state, ContainerState::Running);
}

/// The stack's network goes with its containers (after them); its volume stays (data).
#[tokio::test]
async fn removed_stack_is_torn_down_but_volume_kept() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(two_services(1, "web:1"));
    r.pass().await;
    h.set(DesiredState::new(DEV, 2, Default::default()));
    h.rt.clear_calls();
    assert!(!r.pass().await.failed);
    assert_eq!(
        h.rt.calls()
            .iter()
            .map(|c| crate::container::unhash(c))
            .collect::<Vec<_>>(),
        vec![
            "stop ef-press-07-app-db",
            "remove ef-press-07-app-db",
            "stop ef-press-07-app-web",
            "remove ef-press-07-app-web",
            "remove network ef-press-07-app-default",
        ]
    );
    assert!(h.rt.containers().is_empty());
    assert_eq!(
        h.rt.volumes(),
        vec![crate::container::volume_name("press-07", "app", "data")]
    );
    assert_eq!(h.last_status().observed_revision, 2);
}

#[tokio::test]
async fn engine_events_wake_the_loop() {
    let h = Harness::new();
    h.set(two_services(1, "web:1"));
    let runtime = Arc::new(h.rt.clone());
    let wake = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let r = h.reconciler(0);
    let loop_task = tokio::spawn(r.run(wake.clone(), shutdown.clone()));
    let watch_task = tokio::spawn(watch_engine(runtime, DEV.into(), wake, shutdown.clone()));

    let running = |rt: &MemoryRuntime| {
        rt.container(&crate::container::container_name("press-07", "app", "web"))
            .is_some_and(|c| c.state == ContainerState::Running)
    };
    let wait = |what: &'static str| {
        let rt = h.rt.clone();
        async move {
            for _ in 0..200 {
                if running(&rt) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("not restored in time: {what}");
        }
    };
    wait("initial").await;
    // Behind the agent's back; well within the 10 s period, so only the event can wake it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.rt.docker_rm(&crate::container::container_name("press-07", "app", "web")));
    wait("after docker rm").await;
    assert!(h.rt.docker_stop(&crate::container::container_name("press-07", "app", "web")));
    wait("after docker stop").await;
    shutdown.cancel();
    loop_task.await.unwrap();
    watch_task.await.unwrap();
}

/// One service `web` on `image`, in `order`, with a healthcheck if `health`.
fn web(revision: u64, image: &str, order: &str, health: bool) -> DesiredState {
    let mut spec = json!({"image": image, "restart": "unless-stopped", "update_order": order});
    if health {
        spec["healthcheck"] =
            json!({"test": ["CMD-SHELL", "true"], "interval_ms": 1000, "retries": 2});
    }
    desired(revision, vec![("web", svc(spec))])
}

fn calls(h: &Harness) -> Vec<String> {
    h.rt.calls()
        .iter()
        .map(|c| crate::container::unhash(c))
        .collect()
}

fn web_name() -> String {
    crate::container::container_name(DEV, "app", "web")
}

fn next_name() -> String {
    crate::container::next_container_name(DEV, "app", "web")
}

#[tokio::test]
async fn stop_first_update_replaces_old_then_new() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(web(1, "web:1", "stop-first", false));
    assert!(!r.pass().await.failed);
    h.rt.clear_calls();
    h.set(web(2, "web:2", "stop-first", false));
    assert!(!r.pass().await.failed);
    assert_eq!(
        calls(&h),
        vec![
            "pull web:2",
            "stop ef-press-07-app-web",
            "remove ef-press-07-app-web",
            "create ef-press-07-app-web",
            "start ef-press-07-app-web",
        ]
    );
    let all = h.rt.containers();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].name.as_str(), all[0].image.as_str()),
        (web_name().as_str(), "web:2")
    );
    assert_eq!(h.last_status().state, ConvergenceState::Converged);
}

#[tokio::test]
async fn start_first_update_starts_new_before_stopping_old() {
    let h = Harness::new();
    h.rt.set_auto_healthy(true);
    let mut r = h.reconciler(0);
    h.set(web(1, "web:1", "start-first", true));
    assert!(!r.pass().await.failed);
    let old = h.rt.container(&web_name()).unwrap();

    // Only the order changed: same config hash, nothing recreated.
    h.rt.clear_calls();
    h.set(web(2, "web:1", "stop-first", true));
    assert_eq!(r.pass().await.actions, 0);
    h.set(web(3, "web:1", "start-first", true));
    assert_eq!(r.pass().await.actions, 0);

    // A leftover under the temporary name from an earlier, interrupted attempt.
    let stale = web(9, "web:1", "start-first", false);
    let mut spec = ContainerSpec::for_service(
        DEV,
        "app",
        &stale.stacks["app"],
        "web",
        &stale.stacks["app"].services["web"],
    );
    spec.name = next_name();
    h.rt.insert(&spec, ContainerState::Exited);

    h.outbox.clear();
    h.set(web(4, "web:2", "start-first", true));
    let report = r.pass().await;
    assert!(!report.failed, "{:?}", h.last_status());
    assert_eq!(
        calls(&h),
        vec![
            "pull web:2",
            "remove ef-press-07-app-web-next",
            "create ef-press-07-app-web-next",
            "start ef-press-07-app-web-next",
            "stop ef-press-07-app-web",
            "remove ef-press-07-app-web",
            "rename ef-press-07-app-web-next to ef-press-07-app-web",
        ]
    );
    let all = h.rt.containers();
    assert_eq!(all.len(), 1, "{all:?}");
    let new = &all[0];
    assert_eq!(
        (new.name.as_str(), new.image.as_str()),
        (web_name().as_str(), "web:2")
    );
    assert_ne!(new.id, old.id);
    assert_eq!(new.state, ContainerState::Running);
    let status = h.last_status();
    assert_eq!(status.state, ConvergenceState::Converged);
    assert_eq!(status.observed_revision, 4);
    assert_eq!(
        status.stacks["app"].services["web"].container_id.as_ref(),
        Some(&new.id)
    );
    let events = h.outbox.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Healthy && e.message.contains("-next' is healthy")),
        "{events:?}"
    );
    assert!(!h.kinds().contains(&EventKind::Failed));

    // Idempotent: the next pass does nothing.
    h.rt.clear_calls();
    assert_eq!(r.pass().await.actions, 0);
}

#[tokio::test]
async fn start_first_new_container_that_cannot_start_is_taken_back() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(web(1, "web:1", "start-first", false));
    assert!(!r.pass().await.failed);
    let old = h.rt.container(&web_name()).unwrap();

    h.rt.clear_calls();
    h.outbox.clear();
    h.rt.add_image("web:2");
    h.rt.fail_next(
        MemOp::Start,
        "driver failed programming external connectivity: Bind for 0.0.0.0:8080 failed: port is already allocated",
    );
    h.set(web(2, "web:2", "start-first", false));
    let report = r.pass().await;
    assert!(report.failed);
    assert_eq!(
        calls(&h),
        vec![
            "create ef-press-07-app-web-next",
            "start ef-press-07-app-web-next",
            "stop ef-press-07-app-web-next",
            "remove ef-press-07-app-web-next",
        ]
    );
    // The old version alone, untouched.
    assert_eq!(h.rt.containers(), vec![old.clone()]);
    let status = h.last_status();
    assert_eq!(status.state, ConvergenceState::Failed);
    assert_eq!((status.observed_revision, status.desired_revision), (1, 2));
    let web_status = &status.stacks["app"].services["web"];
    assert_eq!(web_status.state, ContainerState::Running);
    assert_eq!(web_status.container_id.as_ref(), Some(&old.id));
    let err = web_status.last_error.as_deref().unwrap_or_default();
    for needle in [
        "start-first update of app/web failed",
        "old one keeps running",
        "port is already allocated",
        "use update_order stop-first",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    let failed: Vec<_> = h
        .outbox
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].service.as_deref(), Some("web"));
    assert_eq!(failed[0].severity, Severity::Error);
    assert!(h.outbox.events().iter().any(
        |e| e.kind == EventKind::Removed && e.message.contains("start-first update abandoned")
    ));

    // Switching the service to stop-first lets the update through.
    h.set(web(3, "web:2", "stop-first", false));
    assert!(!r.pass().await.failed);
    let all = h.rt.containers();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].name.as_str(), all[0].image.as_str()),
        (web_name().as_str(), "web:2")
    );
    assert_eq!(h.last_status().state, ConvergenceState::Converged);
}

#[test]
fn same_failure_despite_new_engine_ids() {
    let a = "Bind failed on endpoint x-next (82a12860200d9e61bce5e5c5bab8c70c93377c319783e4f93d8346cc11904d22): port is already allocated";
    let b = "Bind failed on endpoint x-next (0b0f1d2a200d9e61bce5e5c5bab8c70c93377c319783e4f93d8346cc11904d22): port is already allocated";
    assert_eq!(without_ids(a), without_ids(b));
    assert_eq!(
        without_ids(a),
        "Bind failed on endpoint x-next (…): port is already allocated"
    );
    assert_eq!(
        without_ids("ef-d-app-web-aaa08e91 cafe"),
        "ef-d-app-web-aaa08e91 cafe"
    );
}

#[tokio::test]
async fn start_first_failure_repeated_is_reported_once() {
    let h = Harness::new();
    let mut r = h.reconciler(0);
    h.set(web(1, "web:1", "start-first", false));
    assert!(!r.pass().await.failed);
    h.rt.add_image("web:2");
    h.set(web(2, "web:2", "start-first", false));
    for id in [
        "82a12860200d9e61bce5e5c5bab8c70c",
        "0b0f1d2a200d9e61bce5e5c5bab8c70c",
    ] {
        h.rt.fail_next(
            MemOp::Start,
            &format!("endpoint web-next ({id}): port is already allocated"),
        );
        assert!(r.pass().await.failed);
    }
    assert_eq!(
        h.kinds()
            .iter()
            .filter(|k| **k == EventKind::Failed)
            .count(),
        1
    );
    assert_eq!(h.rt.containers().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn start_first_new_container_never_healthy_is_taken_back() {
    let h = Harness::new();
    h.rt.set_auto_healthy(true);
    let mut r = h.reconciler(0);
    h.set(web(1, "web:1", "start-first", true));
    assert!(!r.pass().await.failed);
    let old = h.rt.container(&web_name()).unwrap();

    // From now on new containers stay `starting`.
    h.rt.set_auto_healthy(false);
    h.rt.add_image("web:2");
    h.rt.clear_calls();
    h.set(web(2, "web:2", "start-first", true));
    let before = tokio::time::Instant::now();
    assert!(r.pass().await.failed);
    // (2 + 1) × (1 s + 30 s default timeout) + 5 s margin.
    assert!(
        before.elapsed() >= Duration::from_secs(98),
        "{:?}",
        before.elapsed()
    );
    assert_eq!(
        calls(&h),
        vec![
            "create ef-press-07-app-web-next",
            "start ef-press-07-app-web-next",
            "stop ef-press-07-app-web-next",
            "remove ef-press-07-app-web-next",
        ]
    );
    assert_eq!(h.rt.containers(), vec![old]);
    let err = h.last_status().stacks["app"].services["web"]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        err.contains("did not become ready: not healthy after 98 s"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn start_first_wait_gives_way_to_a_newer_desired_document() {
    let h = Harness::new();
    h.rt.set_auto_healthy(true);
    let mut r = h.reconciler(0);
    h.set(web(1, "web:1", "start-first", true));
    assert!(!r.pass().await.failed);
    h.rt.set_auto_healthy(false);
    h.rt.add_image("web:2");
    h.set(web(2, "web:2", "start-first", true));
    let held = h.held.clone();
    let newer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        held.send_replace(Some(Arc::new(web(3, "web:1", "start-first", true))));
    });
    let before = tokio::time::Instant::now();
    assert!(r.pass().await.failed);
    assert!(
        before.elapsed() < Duration::from_secs(5),
        "{:?}",
        before.elapsed()
    );
    newer.await.unwrap();
    assert_eq!(h.rt.containers().len(), 1);
    // Revision 3 is what runs already.
    assert!(!r.pass().await.failed);
    assert_eq!(h.last_status().observed_revision, 3);
    assert_eq!(h.rt.container(&web_name()).unwrap().image, "web:1");
}
