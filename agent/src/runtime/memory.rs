//! An in-memory container engine: the [`ContainerRuntime`] for planner and reconciler tests
//! and for the scale simulator. It models what the reconciler relies on — container states and
//! their transitions, restart policies, health, images present locally versus pullable, named
//! volumes, one-shot failures — and lets a test act "behind the agent's back" like an operator
//! typing `docker stop` or `docker rm`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_protocol::spec::RestartPolicy;
use edgefleet_protocol::status::{ContainerState, Health};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::{ContainerInfo, ContainerRuntime, EngineEvents, RuntimeError};
use crate::container::{ContainerSpec, LABEL_DEVICE};

/// An operation whose next call can be made to fail with [`MemoryRuntime::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemOp {
    List,
    Pull,
    Volume,
    Create,
    Start,
    Stop,
    Remove,
    Rename,
}

#[derive(Debug)]
struct Stored {
    info: ContainerInfo,
    restart: RestartPolicy,
    has_healthcheck: bool,
}

#[derive(Debug, Default)]
struct Engine {
    containers: BTreeMap<String, Stored>,
    images: BTreeSet<String>,
    registry: BTreeSet<String>,
    volumes: BTreeMap<String, String>,
    /// Networks the containers' specs named (not external), by name: their device.
    networks: BTreeMap<String, String>,
    next_id: u64,
    failures: Vec<(MemOp, String)>,
    calls: Vec<String>,
    auto_healthy: bool,
    unreachable: bool,
    /// Config and secret files written, by path: (content, mode).
    files: BTreeMap<String, (Vec<u8>, u32)>,
    /// Registry logins pulls used: (image, username).
    logins: Vec<(String, String)>,
}

impl Engine {
    fn find(&self, key: &str) -> Option<String> {
        if self.containers.contains_key(key) {
            return Some(key.to_owned());
        }
        self.containers
            .values()
            .find(|c| c.info.name == key)
            .map(|c| c.info.id.clone())
    }

    /// Records a call, naming the container by name when it exists.
    fn record(&mut self, op: &str, key: &str) {
        let name = self
            .find(key)
            .and_then(|id| self.containers.get(&id))
            .map_or(key.to_owned(), |c| c.info.name.clone());
        self.calls.push(format!("{op} {name}"));
    }

    fn check(&mut self, op: MemOp) -> Result<(), RuntimeError> {
        if self.unreachable {
            return Err(RuntimeError::Unreachable(
                "memory engine switched off".into(),
            ));
        }
        if let Some(i) = self.failures.iter().position(|(o, _)| *o == op) {
            let (_, message) = self.failures.remove(i);
            return Err(RuntimeError::Engine {
                op: "run",
                target: format!("{op:?}"),
                message,
            });
        }
        Ok(())
    }

    fn started_health(&self, has_healthcheck: bool) -> Health {
        match (has_healthcheck, self.auto_healthy) {
            (false, _) => Health::None,
            (true, true) => Health::Healthy,
            (true, false) => Health::Starting,
        }
    }
}

fn image_id(image: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    image.hash(&mut h);
    format!("sha256:{:016x}", h.finish())
}

/// The in-memory engine. Clones share the same engine.
#[derive(Debug, Clone)]
pub struct MemoryRuntime {
    engine: Arc<Mutex<Engine>>,
    events: broadcast::Sender<String>,
}

impl Default for MemoryRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRuntime {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        MemoryRuntime {
            engine: Arc::default(),
            events,
        }
    }

    fn notify(&self, device: Option<String>) {
        if let Some(device) = device {
            let _ = self.events.send(device);
        }
    }

    /// Makes `image` present locally (like `docker load`).
    pub fn add_image(&self, image: &str) {
        self.engine.lock().images.insert(image.to_owned());
    }

    /// Makes `image` pullable.
    pub fn add_to_registry(&self, image: &str) {
        self.engine.lock().registry.insert(image.to_owned());
    }

    /// Started containers with a healthcheck become healthy at once (for the simulator)
    /// instead of `starting`.
    pub fn set_auto_healthy(&self, on: bool) {
        self.engine.lock().auto_healthy = on;
    }

    /// Simulates the engine being down (every call fails with `Unreachable`).
    pub fn set_unreachable(&self, down: bool) {
        self.engine.lock().unreachable = down;
    }

    /// The next call of `op` fails with `message`.
    pub fn fail_next(&self, op: MemOp, message: &str) {
        self.engine.lock().failures.push((op, message.to_owned()));
    }

    /// Mutating calls made so far (`pull x`, `create name`, `start name`, …).
    /// The config and secret files written, by path under the stack root: (content, mode).
    pub fn files(&self) -> BTreeMap<String, (Vec<u8>, u32)> {
        self.engine.lock().files.clone()
    }

    /// The registry logins pulls used: (image, username).
    pub fn logins(&self) -> Vec<(String, String)> {
        self.engine.lock().logins.clone()
    }

    pub fn calls(&self) -> Vec<String> {
        self.engine.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.engine.lock().calls.clear();
    }

    /// Every container, of every device.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.engine
            .lock()
            .containers
            .values()
            .map(|c| c.info.clone())
            .collect()
    }

    /// One container by id or name.
    pub fn container(&self, key: &str) -> Option<ContainerInfo> {
        let e = self.engine.lock();
        e.find(key)
            .and_then(|id| e.containers.get(&id))
            .map(|c| c.info.clone())
    }

    pub fn volumes(&self) -> Vec<String> {
        self.engine.lock().volumes.keys().cloned().collect()
    }

    fn mutate(&self, key: &str, f: impl FnOnce(&mut Stored, &Engine)) -> bool {
        let device = {
            let mut e = self.engine.lock();
            let Some(id) = e.find(key) else { return false };
            let Some(mut c) = e.containers.remove(&id) else {
                return false;
            };
            f(&mut c, &e);
            let device = c.info.labels.get(LABEL_DEVICE).cloned();
            e.containers.insert(id, c);
            device
        };
        self.notify(device);
        true
    }

    /// `docker stop` behind the agent's back. Returns false if there is no such container.
    pub fn docker_stop(&self, key: &str) -> bool {
        self.mutate(key, |c, _| {
            if c.info.is_active() {
                c.info.state = ContainerState::Exited;
            }
        })
    }

    /// `docker rm -f` behind the agent's back.
    pub fn docker_rm(&self, key: &str) -> bool {
        let device = {
            let mut e = self.engine.lock();
            let Some(id) = e.find(key) else { return false };
            e.containers
                .remove(&id)
                .and_then(|c| c.info.labels.get(LABEL_DEVICE).cloned())
        };
        self.notify(device);
        true
    }

    /// The main process exits: the engine restarts it per its restart policy (counting the
    /// restart), otherwise it stays exited.
    pub fn crash(&self, key: &str) -> bool {
        self.mutate(key, |c, _| {
            if c.restart == RestartPolicy::No {
                c.info.state = ContainerState::Exited;
            } else {
                c.info.restart_count += 1;
                c.info.state = ContainerState::Running;
            }
        })
    }

    /// Sets a container's health as its healthcheck would.
    pub fn set_health(&self, key: &str, health: Health) -> bool {
        self.mutate(key, |c, _| c.info.health = health)
    }

    /// Puts a container in the engine directly (a leftover, a duplicate, another device's
    /// container), in the given state. Returns its id.
    pub fn insert(&self, spec: &ContainerSpec, state: ContainerState) -> String {
        let id = {
            let mut e = self.engine.lock();
            e.next_id += 1;
            let id = format!("mem{:08}", e.next_id);
            let info = ContainerInfo {
                id: id.clone(),
                name: spec.name.clone(),
                image: spec.image.clone(),
                image_id: Some(image_id(&spec.image)),
                state,
                health: Health::None,
                restart_count: 0,
                labels: spec.labels.clone(),
            };
            let stored = Stored {
                info,
                restart: spec.restart,
                has_healthcheck: spec
                    .healthcheck
                    .as_ref()
                    .is_some_and(|h| h.test != ["NONE"]),
            };
            e.containers.insert(id.clone(), stored);
            id
        };
        self.notify(spec.labels.get(LABEL_DEVICE).cloned());
        id
    }
}

impl ContainerRuntime for MemoryRuntime {
    async fn list_containers(&self, device: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut e = self.engine.lock();
        e.check(MemOp::List)?;
        Ok(e.containers
            .values()
            .filter(|c| c.info.labels.get(LABEL_DEVICE).map(String::as_str) == Some(device))
            .map(|c| c.info.clone())
            .collect())
    }

    async fn list_volumes(&self, device: &str) -> Result<BTreeSet<String>, RuntimeError> {
        let mut e = self.engine.lock();
        e.check(MemOp::List)?;
        Ok(e.volumes
            .iter()
            .filter(|(_, d)| *d == device)
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn list_networks(&self, device: &str) -> Result<BTreeSet<String>, RuntimeError> {
        let mut e = self.engine.lock();
        e.check(MemOp::List)?;
        Ok(e.networks
            .iter()
            .filter(|(_, d)| *d == device)
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        let mut e = self.engine.lock();
        e.calls.push(format!("remove network {name}"));
        e.networks.remove(name);
        Ok(())
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        let mut e = self.engine.lock();
        e.check(MemOp::List)?;
        Ok(e.images.contains(image))
    }

    async fn pull_with(
        &self,
        image: &str,
        auth: Option<&super::RegistryAuth>,
    ) -> Result<(), RuntimeError> {
        if let Some(a) = auth {
            self.engine
                .lock()
                .logins
                .push((image.to_owned(), a.username.clone()));
        }
        self.pull(image).await
    }

    async fn write_file(
        &self,
        file: &crate::container::StackFile,
        content: &[u8],
    ) -> Result<(), RuntimeError> {
        self.engine
            .lock()
            .files
            .insert(file.path.clone(), (content.to_vec(), file.mode));
        Ok(())
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        let mut e = self.engine.lock();
        e.calls.push(format!("pull {image}"));
        e.check(MemOp::Pull).map_err(|err| RuntimeError::Pull {
            image: image.to_owned(),
            reason: err.to_string(),
        })?;
        if !e.registry.contains(image) {
            return Err(RuntimeError::Pull {
                image: image.to_owned(),
                reason: "manifest unknown (not in the memory registry)".into(),
            });
        }
        e.images.insert(image.to_owned());
        Ok(())
    }

    async fn ensure_volume(
        &self,
        name: &str,
        device: &str,
        _options: &edgefleet_protocol::spec::VolumeOptions,
    ) -> Result<(), RuntimeError> {
        let mut e = self.engine.lock();
        e.calls.push(format!("volume {name}"));
        e.check(MemOp::Volume)?;
        e.volumes
            .entry(name.to_owned())
            .or_insert_with(|| device.to_owned());
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        {
            let mut e = self.engine.lock();
            e.calls.push(format!("create {}", spec.name));
            e.check(MemOp::Create)?;
            if !e.images.contains(&spec.image) {
                return Err(RuntimeError::Engine {
                    op: "create container",
                    target: spec.name.clone(),
                    message: format!("No such image: {}", spec.image),
                });
            }
            if e.find(&spec.name).is_some() {
                return Err(RuntimeError::NameConflict {
                    name: spec.name.clone(),
                });
            }
            // As the Docker runtime does: a stack's network is created with its first
            // container.
            let device = spec.labels.get(LABEL_DEVICE).cloned().unwrap_or_default();
            for net in spec.networks.iter().filter(|n| !n.spec.external) {
                e.networks.insert(net.name.clone(), device.clone());
            }
        }
        Ok(self.insert(spec, ContainerState::Created))
    }

    async fn start(&self, container: &str) -> Result<(), RuntimeError> {
        let result = {
            let mut e = self.engine.lock();
            e.record("start", container);
            e.check(MemOp::Start)?;
            let id = e.find(container).ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                target: container.to_owned(),
            })?;
            let health = e
                .containers
                .get(&id)
                .map(|c| e.started_health(c.has_healthcheck));
            match e.containers.get_mut(&id) {
                Some(c) if c.info.state == ContainerState::Dead => Err(RuntimeError::Engine {
                    op: "start",
                    target: container.to_owned(),
                    message: "container is marked for removal and cannot be started".into(),
                }),
                Some(c) if c.info.state == ContainerState::Running => Ok(None),
                Some(c) => {
                    c.info.state = ContainerState::Running;
                    c.info.health = health.unwrap_or(Health::None);
                    Ok(c.info.labels.get(LABEL_DEVICE).cloned())
                }
                None => Ok(None),
            }
        };
        self.notify(result?);
        Ok(())
    }

    async fn stop(&self, container: &str, _timeout: Duration) -> Result<(), RuntimeError> {
        {
            let mut e = self.engine.lock();
            e.record("stop", container);
            e.check(MemOp::Stop)?;
            if e.find(container).is_none() {
                return Err(RuntimeError::NotFound {
                    what: "container",
                    target: container.to_owned(),
                });
            }
        }
        self.docker_stop(container);
        Ok(())
    }

    async fn remove(&self, container: &str) -> Result<(), RuntimeError> {
        {
            let mut e = self.engine.lock();
            e.record("remove", container);
            e.check(MemOp::Remove)?;
            let id = e.find(container).ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                target: container.to_owned(),
            })?;
            if e.containers.get(&id).is_some_and(|c| c.info.is_active()) {
                return Err(RuntimeError::Engine {
                    op: "remove",
                    target: container.to_owned(),
                    message: "cannot remove a running container: stop it first".into(),
                });
            }
        }
        self.docker_rm(container);
        Ok(())
    }

    async fn logs(&self, container: &str, tail: u32) -> Result<Vec<String>, RuntimeError> {
        let e = self.engine.lock();
        let id = e.find(container).ok_or_else(|| RuntimeError::NotFound {
            what: "container",
            target: container.to_owned(),
        })?;
        // The in-memory engine runs nothing; it reports one line per start.
        let starts = e.containers.get(&id).map(|c| c.info.name.clone());
        let lines: Vec<String> = starts.into_iter().map(|n| format!("{n} started")).collect();
        let skip = lines.len().saturating_sub(tail as usize);
        Ok(lines.into_iter().skip(skip).collect())
    }

    async fn inspect(&self, container: &str) -> Result<ContainerInfo, RuntimeError> {
        let mut e = self.engine.lock();
        e.check(MemOp::List)?;
        e.find(container)
            .and_then(|id| e.containers.get(&id))
            .map(|c| c.info.clone())
            .ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                target: container.to_owned(),
            })
    }

    async fn rename(&self, container: &str, new_name: &str) -> Result<(), RuntimeError> {
        {
            let mut e = self.engine.lock();
            let from = e
                .find(container)
                .and_then(|id| e.containers.get(&id))
                .map_or(container.to_owned(), |c| c.info.name.clone());
            e.calls.push(format!("rename {from} to {new_name}"));
            e.check(MemOp::Rename)?;
            let id = e.find(container).ok_or_else(|| RuntimeError::NotFound {
                what: "container",
                target: container.to_owned(),
            })?;
            if e.find(new_name).is_some_and(|other| other != id) {
                return Err(RuntimeError::NameConflict {
                    name: new_name.to_owned(),
                });
            }
        }
        let new_name = new_name.to_owned();
        self.mutate(container, move |c, _| c.info.name = new_name);
        Ok(())
    }

    async fn events(&self, device: &str) -> Result<EngineEvents, RuntimeError> {
        self.engine.lock().check(MemOp::List)?;
        let device = device.to_owned();
        let rx = self.events.subscribe();
        Ok(futures_util::stream::unfold(rx, move |mut rx| {
            let device = device.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(d) if d == device => return Some((Ok(()), rx)),
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return Some((Ok(()), rx)),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed())
    }
}
