//! `DockerRuntime` against the real Docker engine (no registry: the test builds its own image
//! from a static busybox rootfs with `docker import`). Every container, volume and image it
//! makes carries a unique name/label and is removed by a drop guard, even when a test fails.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgefleet_agent::container::{
    ContainerSpec, LABEL_CONFIG_HASH, LABEL_DEVICE, LABEL_SERVICE, LABEL_STACK, Mount,
};
use edgefleet_agent::outbox::RecordingOutbox;
use edgefleet_agent::reconcile::{PassReport, Reconciler};
use edgefleet_agent::runtime::{ContainerRuntime, DockerRuntime, RuntimeError};
use edgefleet_agent::state_file::StateStore;
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::event::EventKind;
use edgefleet_protocol::spec::{HealthCheck, RestartPolicy, VolumeKind};
use edgefleet_protocol::status::{ContainerState, ConvergenceState, Health};
use futures_util::StreamExt;
use tokio::sync::watch;

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

/// A unique device id and a freshly imported busybox image; removes everything on drop.
struct Fixture {
    device: String,
    other_device: String,
    image: String,
    _root: tempfile::TempDir,
}

impl Fixture {
    fn new(test: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let unique = format!("{test}-{}-{nanos}", std::process::id());
        let root = tempfile::tempdir().unwrap();
        let fixture = Fixture {
            device: format!("rt-{unique}"),
            other_device: format!("rt-other-{unique}"),
            image: format!("edgefleet-test/agent-rt:{unique}"),
            _root: root,
        };
        fixture.import_image(fixture._root.path());
        fixture
    }

    fn import_image(&self, dir: &Path) {
        let rootfs = dir.join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
        for applet in ["sh", "sleep", "true", "echo", "cat"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let tar = dir.join("rootfs.tar");
        let out = Command::new("tar")
            .args([
                "-C",
                rootfs.to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                ".",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = docker(&[
            "import",
            "--change",
            r#"CMD ["/bin/sh","-c","sleep 3600"]"#,
            tar.to_str().unwrap(),
            &self.image,
        ]);
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spec(&self, device: &str, service: &str) -> ContainerSpec {
        ContainerSpec {
            name: format!("ef-{device}-app-{service}"),
            image: self.image.clone(),
            command: None,
            entrypoint: None,
            env: vec!["MODE=test".into()],
            ports: vec![],
            mounts: vec![],
            restart: RestartPolicy::No,
            healthcheck: None,
            labels: [
                (LABEL_DEVICE.to_string(), device.to_string()),
                (LABEL_STACK.to_string(), "app".to_string()),
                (LABEL_SERVICE.to_string(), service.to_string()),
                (LABEL_CONFIG_HASH.to_string(), "test".to_string()),
            ]
            .into(),
            networks: vec![],
            network_mode: None,
            extra: Default::default(),
            files: Vec::new(),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for device in [&self.device, &self.other_device] {
            let filter = format!("label={LABEL_DEVICE}={device}");
            let ids = docker(&["ps", "-aq", "--filter", &filter]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                docker(&["rm", "-f", id]);
            }
            let vols = docker(&["volume", "ls", "-q", "--filter", &filter]);
            for v in String::from_utf8_lossy(&vols.stdout).split_whitespace() {
                docker(&["volume", "rm", "-f", v]);
            }
            let nets = docker(&["network", "ls", "-q", "--filter", &filter]);
            for n in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
                docker(&["network", "rm", n]);
            }
        }
        docker(&["rmi", "-f", &self.image]);
    }
}

async fn wait_for<F: Fn(&[edgefleet_agent::runtime::ContainerInfo]) -> bool>(
    rt: &DockerRuntime,
    device: &str,
    what: &str,
    done: F,
) {
    for _ in 0..300 {
        let list = rt.list_containers(device).await.unwrap();
        if done(&list) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn docker_runtime_lifecycle() {
    let fx = Fixture::new("life");
    let rt = DockerRuntime::connect().unwrap();

    assert!(rt.image_present(&fx.image).await.unwrap());
    let missing = "edgefleet-test/absent:nope";
    assert!(!rt.image_present(missing).await.unwrap());
    let err = rt.pull(missing).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Pull { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("image 'edgefleet-test/absent:nope' not present and pull failed"),
        "{msg}"
    );
    assert!(msg.contains("docker load"), "{msg}");

    assert!(rt.list_containers(&fx.device).await.unwrap().is_empty());
    let mut events = rt.events(&fx.device).await.unwrap();

    let volume = format!("ef-{}-app-data", fx.device);
    let none = edgefleet_protocol::spec::VolumeOptions::default();
    rt.ensure_volume(&volume, &fx.device, &none).await.unwrap();
    rt.ensure_volume(&volume, &fx.device, &none).await.unwrap();
    assert!(rt.list_volumes(&fx.device).await.unwrap().contains(&volume));
    // The file's driver options reach the engine (a local tmpfs volume, as `driver_opts:
    // {type: tmpfs, device: tmpfs, o: size=1m}` in a Compose file).
    let tmpfs = format!("ef-{}-app-scratch", fx.device);
    let options = edgefleet_protocol::spec::VolumeOptions {
        driver: Some("local".into()),
        driver_opts: [
            ("type".to_owned(), "tmpfs".to_owned()),
            ("device".to_owned(), "tmpfs".to_owned()),
            ("o".to_owned(), "size=1m".to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    rt.ensure_volume(&tmpfs, &fx.device, &options)
        .await
        .unwrap();
    let inspect = docker(&["volume", "inspect", "-f", "{{json .Options}}", &tmpfs]);
    let opts: serde_json::Value =
        serde_json::from_slice(&inspect.stdout).expect("volume options as JSON");
    assert_eq!(
        opts,
        serde_json::json!({"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}),
        "{inspect:?}"
    );

    let mut spec = fx.spec(&fx.device, "web");
    spec.restart = RestartPolicy::UnlessStopped;
    spec.healthcheck = Some(HealthCheck {
        test: vec!["CMD-SHELL".into(), "true".into()],
        interval_ms: Some(500),
        timeout_ms: Some(2000),
        retries: Some(3),
        start_period_ms: None,
    });
    spec.mounts = vec![Mount {
        kind: VolumeKind::Named,
        source: volume.clone(),
        target: "/data".into(),
        read_only: false,
    }];
    let id = rt.create(&spec).await.unwrap();
    let conflict = rt.create(&spec).await.unwrap_err();
    assert_eq!(
        conflict,
        RuntimeError::NameConflict {
            name: spec.name.clone()
        }
    );

    // Another device's container on the same engine is invisible to this device.
    let other = fx.spec(&fx.other_device, "web");
    let other_id = rt.create(&other).await.unwrap();

    let list = rt.list_containers(&fx.device).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].name, spec.name);
    assert_eq!(list[0].state, ContainerState::Created);
    assert_eq!(list[0].image, fx.image);
    assert!(
        list[0]
            .image_id
            .as_deref()
            .unwrap_or("")
            .starts_with("sha256:")
    );
    assert_eq!(list[0].labels[LABEL_SERVICE], "web");

    rt.start(&id).await.unwrap();
    rt.start(&id).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), events.next()).await;
    assert!(
        matches!(woke, Ok(Some(Ok(())))),
        "an engine event for this device: {woke:?}"
    );
    wait_for(&rt, &fx.device, "healthy", |l| {
        l.first()
            .is_some_and(|c| c.state == ContainerState::Running && c.health == Health::Healthy)
    })
    .await;

    rt.stop(&id, Duration::from_secs(1)).await.unwrap();
    rt.stop(&id, Duration::from_secs(1)).await.unwrap();
    let list = rt.list_containers(&fx.device).await.unwrap();
    assert_eq!(list[0].state, ContainerState::Exited);
    rt.remove(&id).await.unwrap();
    assert!(rt.list_containers(&fx.device).await.unwrap().is_empty());
    assert!(matches!(
        rt.remove(&id).await,
        Err(RuntimeError::NotFound { .. })
    ));
    assert!(matches!(
        rt.start(&id).await,
        Err(RuntimeError::NotFound { .. })
    ));

    // The other device's container was never touched.
    let others = rt.list_containers(&fx.other_device).await.unwrap();
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].id, other_id);
    assert_eq!(others[0].state, ContainerState::Created);
}

/// A main process that exits on SIGTERM (a shell as PID 1 ignores it and waits for the kill).
const QUICK_STOP: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

fn desired(fx: &Fixture, revision: u64, with_stack: bool) -> DesiredState {
    let doc = serde_json::json!({
        "schema": 1, "device": fx.device, "revision": revision, "issued_at": "2026-01-01T00:00:00.000Z",
        "stacks": if with_stack { serde_json::json!({"app": {
            "deployment": "app", "deployment_revision": revision, "volumes": ["data"],
            "services": {
                "db": {"image": fx.image, "restart": "unless-stopped", "command": ["/bin/sh", "-c", QUICK_STOP],
                       "volumes": [{"kind": "named", "source": "data", "target": "/data"}],
                       "healthcheck": {"test": ["CMD-SHELL", "true"], "interval_ms": 500}},
                "web": {"image": fx.image, "restart": "always", "depends_on": ["db"],
                        "command": ["/bin/sh", "-c", QUICK_STOP],
                        "environment": {"MODE": "test"}}
            }}}) } else { serde_json::json!({}) }
    });
    serde_json::from_value(doc).unwrap()
}

#[tokio::test]
async fn reconciler_converges_on_the_real_engine() {
    let fx = Fixture::new("rec");
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = StateStore::open(dir.path(), &fx.device).unwrap();
    let outbox = Arc::new(RecordingOutbox::default());
    let (held, held_rx) = watch::channel(Some(Arc::new(desired(&fx, 1, true))));
    let runtime = Arc::new(DockerRuntime::connect().unwrap());
    let mut r = Reconciler::new(
        fx.device.clone(),
        runtime.clone(),
        held_rx,
        outbox.clone(),
        Arc::new(store),
        0,
    );

    assert_eq!(
        r.pass().await,
        PassReport {
            actions: 5,
            failed: false
        }
    );
    let status = outbox.statuses().last().cloned().unwrap();
    assert_eq!(status.state, ConvergenceState::Converged);
    assert_eq!(
        status.stacks["app"].services["web"].state,
        ContainerState::Running
    );
    assert!(runtime.list_volumes(&fx.device).await.unwrap().contains(
        &edgefleet_agent::container::volume_name(&fx.device, "app", "data")
    ));

    // Idempotent: nothing recreated.
    let before = runtime.list_containers(&fx.device).await.unwrap();
    assert_eq!(
        r.pass().await,
        PassReport {
            actions: 0,
            failed: false
        }
    );
    let after = runtime.list_containers(&fx.device).await.unwrap();
    let ids = |l: &[edgefleet_agent::runtime::ContainerInfo]| {
        let mut v: Vec<String> = l.iter().map(|c| c.id.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&before), ids(&after));

    // `docker stop` by hand: drift, restored.
    let web = edgefleet_agent::container::container_name(&fx.device, "app", "web");
    assert!(docker(&["stop", "-t", "1", &web]).status.success());
    assert_eq!(
        r.pass().await,
        PassReport {
            actions: 1,
            failed: false
        }
    );
    assert!(
        outbox
            .events()
            .iter()
            .any(|e| e.kind == EventKind::DriftDetected)
    );
    wait_for(&runtime, &fx.device, "web running again", |l| {
        l.iter()
            .any(|c| c.name == web && c.state == ContainerState::Running)
    })
    .await;

    // The stack is removed from the desired state: containers go, then its network; the
    // volume stays.
    let networks = runtime.list_networks(&fx.device).await.unwrap();
    assert_eq!(networks.len(), 1, "the stack's network: {networks:?}");
    held.send_replace(Some(Arc::new(desired(&fx, 2, false))));
    assert_eq!(
        r.pass().await,
        PassReport {
            actions: 5,
            failed: false
        }
    );
    assert!(
        runtime
            .list_containers(&fx.device)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(runtime.list_volumes(&fx.device).await.unwrap().len(), 1);
    assert!(runtime.list_networks(&fx.device).await.unwrap().is_empty());
    for name in networks {
        let inspect = docker(&["network", "inspect", &name]);
        assert!(!inspect.status.success(), "network {name} still exists");
    }
}

/// The host port `container` publishes its port 8080/tcp on (the first binding listed).
fn published_port(container: &str) -> u16 {
    let out = docker(&["port", container, "8080/tcp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|line| line.rsplit(':').next())
        .and_then(|port| port.trim().parse().ok())
        .filter(|port| *port != 0)
        .unwrap_or_else(|| panic!("no host port published for {container}: {out:?}"))
}

/// One service `web` (`MODE=mode`) in `order`, publishing container port 8080 on `host_port`
/// (`None`: an ephemeral host port) and, without a fixed port, with a quick healthcheck.
fn web_service(
    fx: &Fixture,
    revision: u64,
    order: &str,
    mode: &str,
    host_port: Option<u16>,
) -> DesiredState {
    let mut web = serde_json::json!({
        "image": fx.image, "restart": "unless-stopped", "update_order": order,
        "command": ["/bin/sh", "-c", QUICK_STOP],
        "environment": {"MODE": mode},
        "ports": [{"container_port": 8080, "protocol": "tcp"}],
    });
    match host_port {
        Some(port) => web["ports"][0]["host_port"] = port.into(),
        None => {
            web["healthcheck"] =
                serde_json::json!({"test": ["CMD-SHELL", "true"], "interval_ms": 500, "retries": 3})
        }
    }
    let doc = serde_json::json!({
        "schema": 1, "device": fx.device, "revision": revision, "issued_at": "2026-01-01T00:00:00.000Z",
        "stacks": {"app": {"deployment": "app", "deployment_revision": revision, "services": {"web": web}}}
    });
    serde_json::from_value(doc).unwrap()
}

/// A reconciler for `fx.device` on the real engine, and the sender of its desired state.
fn docker_reconciler(
    fx: &Fixture,
    dir: &Path,
    first: DesiredState,
) -> (
    Reconciler<DockerRuntime>,
    watch::Sender<edgefleet_agent::desired::HeldDesired>,
    Arc<RecordingOutbox>,
    Arc<DockerRuntime>,
) {
    let (store, _) = StateStore::open(dir, &fx.device).unwrap();
    let outbox = Arc::new(RecordingOutbox::default());
    let (held, held_rx) = watch::channel(Some(Arc::new(first)));
    let runtime = Arc::new(DockerRuntime::connect().unwrap());
    let r = Reconciler::new(
        fx.device.clone(),
        runtime.clone(),
        held_rx,
        outbox.clone(),
        Arc::new(store),
        0,
    );
    (r, held, outbox, runtime)
}

fn desired_hash(d: &DesiredState) -> String {
    d.stacks["app"].services["web"].config_hash()
}

#[tokio::test]
async fn fixed_host_port_updates_stop_first_but_not_start_first() {
    let fx = Fixture::new("port");
    let dir = tempfile::tempdir().unwrap();
    // Revision 1 publishes on a host port Docker chooses; the following revisions fix that
    // port, which the running container holds all along: no port is picked by binding and
    // releasing it (another process could take it in between).
    let (mut r, held, outbox, rt) = docker_reconciler(
        &fx,
        dir.path(),
        web_service(&fx, 1, "stop-first", "a", None),
    );
    let name = edgefleet_agent::container::container_name(&fx.device, "app", "web");
    assert!(!r.pass().await.failed, "{:?}", outbox.statuses().last());
    let first = rt.inspect(&name).await.unwrap();
    assert_eq!(first.state, ContainerState::Running);
    let port = published_port(&name);

    // Stop-first: the old container frees the port before the new one binds it.
    let rev2 = web_service(&fx, 2, "stop-first", "b", Some(port));
    held.send_replace(Some(Arc::new(rev2.clone())));
    assert!(!r.pass().await.failed, "{:?}", outbox.statuses().last());
    let second = rt.inspect(&name).await.unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(second.state, ContainerState::Running);
    assert_eq!(second.config_hash(), Some(desired_hash(&rev2).as_str()));
    let published = docker(&["port", &name, "8080/tcp"]);
    assert!(
        String::from_utf8_lossy(&published.stdout).contains(&format!(":{port}")),
        "{published:?}"
    );

    // Start-first: the new container cannot bind the port the old one holds.
    held.send_replace(Some(Arc::new(web_service(
        &fx,
        3,
        "start-first",
        "c",
        Some(port),
    ))));
    assert!(r.pass().await.failed);
    let status = outbox.statuses().last().cloned().unwrap();
    assert_eq!(status.state, ConvergenceState::Failed);
    assert_eq!(status.observed_revision, 2);
    let web = &status.stacks["app"].services["web"];
    let err = web.last_error.as_deref().unwrap_or_default();
    assert!(
        err.contains("start-first update of app/web failed")
            && (err.contains("port is already allocated")
                || err.contains("address already in use"))
            && err.contains("use update_order stop-first"),
        "{err}"
    );
    assert!(
        outbox
            .events()
            .iter()
            .any(|e| e.kind == EventKind::Failed && e.service.as_deref() == Some("web")),
        "{:?}",
        outbox.events()
    );
    // The old container keeps running unchanged, alone.
    let list = rt.list_containers(&fx.device).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let kept = &list[0];
    assert_eq!(
        (kept.id.as_str(), kept.name.as_str()),
        (second.id.as_str(), name.as_str())
    );
    assert_eq!(kept.state, ContainerState::Running);
    assert_eq!(kept.config_hash(), second.config_hash());
    assert_eq!(kept.restart_count, 0);
    assert_eq!(web.container_id.as_deref(), Some(second.id.as_str()));
}

#[tokio::test]
async fn start_first_without_host_port_replaces_once_the_new_one_is_healthy() {
    let fx = Fixture::new("sf");
    let dir = tempfile::tempdir().unwrap();
    let (mut r, held, outbox, rt) = docker_reconciler(
        &fx,
        dir.path(),
        web_service(&fx, 1, "start-first", "a", None),
    );
    let name = edgefleet_agent::container::container_name(&fx.device, "app", "web");
    let next = edgefleet_agent::container::next_container_name(&fx.device, "app", "web");
    assert!(!r.pass().await.failed, "{:?}", outbox.statuses().last());
    let old = rt.inspect(&name).await.unwrap();

    // A leftover under the temporary name, as an agent killed mid-update would leave.
    let stale = web_service(&fx, 1, "start-first", "stale", None);
    let mut spec = ContainerSpec::for_service(
        &fx.device,
        "app",
        &stale.stacks["app"],
        "web",
        &stale.stacks["app"].services["web"],
    );
    spec.name = next.clone();
    rt.create(&spec).await.unwrap();

    let rev2 = web_service(&fx, 2, "start-first", "b", None);
    held.send_replace(Some(Arc::new(rev2.clone())));
    assert!(!r.pass().await.failed, "{:?}", outbox.statuses().last());
    let list = rt.list_containers(&fx.device).await.unwrap();
    assert_eq!(
        list.len(),
        1,
        "old and leftover containers are gone: {list:?}"
    );
    let new = &list[0];
    assert_eq!(new.name, name);
    assert_ne!(new.id, old.id);
    assert_eq!(new.state, ContainerState::Running);
    assert_eq!(new.health, Health::Healthy);
    assert_eq!(new.config_hash(), Some(desired_hash(&rev2).as_str()));
    assert!(matches!(
        rt.inspect(&old.id).await,
        Err(RuntimeError::NotFound { .. })
    ));
    assert!(matches!(
        rt.inspect(&next).await,
        Err(RuntimeError::NotFound { .. })
    ));
    let status = outbox.statuses().last().cloned().unwrap();
    assert_eq!(status.state, ConvergenceState::Converged);
    assert_eq!(status.observed_revision, 2);
    assert!(
        outbox
            .events()
            .iter()
            .any(|e| e.kind == EventKind::Healthy && e.message.contains(&next)),
        "{:?}",
        outbox.events()
    );
    // Nothing left to do.
    assert_eq!(r.pass().await.actions, 0);
}

/// A network of the name a stack would use, owned by someone else, is a clear error: no
/// container is created and the foreign network is left as it was.
#[tokio::test]
async fn network_name_collision_is_refused_and_changes_nothing() {
    let fx = Fixture::new("netcol");
    let rt = DockerRuntime::connect().unwrap();
    let name = edgefleet_agent::container::network_name(&fx.device, "app", "default");
    let created = docker(&["network", "create", "--label", "owner=someone-else", &name]);
    assert!(created.status.success(), "{created:?}");
    let mut spec = fx.spec(&fx.device, "web");
    spec.networks = vec![edgefleet_agent::container::NetworkAttach {
        name: name.clone(),
        aliases: vec!["web".into()],
        spec: Default::default(),
        ipv4_address: None,
        ipv6_address: None,
    }];
    let err = rt.create(&spec).await.unwrap_err().to_string();
    assert!(
        err.contains(&name) && err.contains("does not belong to stack 'app'"),
        "{err}"
    );
    assert!(rt.list_containers(&fx.device).await.unwrap().is_empty());
    let labels = docker(&["network", "inspect", "-f", "{{json .Labels}}", &name]);
    assert!(
        String::from_utf8_lossy(&labels.stdout).contains("someone-else"),
        "the foreign network is untouched"
    );
    docker(&["network", "rm", &name]);
}

/// A stack network with a fixed subnet (Compose `ipam.config`) is created with it, a service
/// gets its fixed `ipv4_address` and its `device_cgroup_rules`; a second stack network of the
/// same subnet on the same device is the engine's refusal, reported with the network's name.
#[tokio::test]
async fn ipam_subnet_fixed_address_and_device_cgroup_rules_reach_the_engine() {
    let fx = Fixture::new("ipam");
    let rt = DockerRuntime::connect().unwrap();
    // A subnet of this run only, so parallel runs on one engine do not meet.
    let third = std::process::id() % 200 + 20;
    let subnet = format!("10.213.{third}.0/24");
    let address = format!("10.213.{third}.7");
    let net = |stack: &str| edgefleet_agent::container::NetworkAttach {
        name: edgefleet_agent::container::network_name(&fx.device, stack, "dns-net"),
        aliases: vec!["web".into()],
        spec: edgefleet_protocol::spec::NetworkSpec {
            ipam: vec![edgefleet_protocol::spec::IpamPool {
                subnet: Some(subnet.clone()),
                gateway: Some(format!("10.213.{third}.1")),
                ..Default::default()
            }],
            ..Default::default()
        },
        ipv4_address: Some(address.clone()),
        ipv6_address: None,
    };
    let mut spec = fx.spec(&fx.device, "web");
    spec.networks = vec![net("app")];
    spec.extra.device_cgroup_rules = vec!["c 188:* rw".into()];
    let id = rt.create(&spec).await.unwrap();
    rt.start(&id).await.unwrap();

    let inspect = |format: &str, target: &str| {
        let out = docker(&["inspect", "-f", format, target]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let net_name = &spec.networks[0].name;
    assert_eq!(
        inspect(
            "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}",
            net_name
        ),
        format!("{subnet} 10.213.{third}.1")
    );
    assert_eq!(
        inspect(
            &format!("{{{{(index .NetworkSettings.Networks \"{net_name}\").IPAddress}}}}"),
            &id
        ),
        address
    );
    assert_eq!(
        inspect("{{json .HostConfig.DeviceCgroupRules}}", &id),
        r#"["c 188:* rw"]"#
    );

    // The same subnet for another stack on this device: Docker refuses the overlap.
    let mut other = fx.spec(&fx.device, "web2");
    other.name = format!("ef-{}-app2-web", fx.device);
    other.labels.insert(LABEL_STACK.into(), "app2".into());
    other.networks = vec![net("app2")];
    other.networks[0].ipv4_address = None;
    let err = rt.create(&other).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RuntimeError::Engine { .. })
            && text.contains(&other.networks[0].name)
            && text.contains("overlap"),
        "{text}"
    );
}

/// The engine's platform, as the status reports it: `linux/<arch>` in OCI form.
#[tokio::test]
async fn the_engine_reports_its_platform() {
    let rt = DockerRuntime::connect().unwrap();
    let platform = rt
        .platform()
        .await
        .unwrap()
        .expect("Docker says its architecture");
    let arch = String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout).unwrap();
    let want = match arch.trim() {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        "armv7l" => "linux/arm/v7",
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(platform, want);
}
