//! The simulated container engine: the agent's in-memory runtime with the time real engines
//! take (pull, start) and the failures they have (a start that fails; a service whose
//! healthcheck never passes). Every image "exists": a pull succeeds after its latency.

use std::collections::BTreeSet;
use std::time::Duration;

use edgefleet_agent::container::ContainerSpec;
use edgefleet_agent::runtime::{
    ContainerInfo, ContainerRuntime, EngineEvents, MemoryRuntime, RuntimeError,
};
use rand::Rng;

/// How a simulated engine behaves.
#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    pub pull: Duration,
    pub start: Duration,
    /// Probability that a container start fails.
    pub start_failure: f64,
    /// Whether healthchecks pass (decided once per device).
    pub healthy: bool,
}

/// One device's engine.
#[derive(Clone)]
pub struct SimRuntime {
    inner: MemoryRuntime,
    behaviour: Behaviour,
}

impl SimRuntime {
    pub fn new(behaviour: Behaviour) -> Self {
        let inner = MemoryRuntime::new();
        inner.set_auto_healthy(behaviour.healthy);
        SimRuntime { inner, behaviour }
    }

    /// The in-memory engine keeps a log of calls for tests; a simulator running for hours
    /// must not.
    fn forget_calls(&self) {
        self.inner.clear_calls();
    }
}

impl ContainerRuntime for SimRuntime {
    async fn list_containers(&self, device: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.inner.list_containers(device).await
    }

    async fn list_volumes(&self, device: &str) -> Result<BTreeSet<String>, RuntimeError> {
        self.inner.list_volumes(device).await
    }

    async fn list_networks(&self, device: &str) -> Result<BTreeSet<String>, RuntimeError> {
        self.inner.list_networks(device).await
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.inner.remove_network(name).await
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        self.inner.image_present(image).await
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        tokio::time::sleep(self.behaviour.pull).await;
        self.inner.add_to_registry(image);
        let pulled = self.inner.pull(image).await;
        self.forget_calls();
        pulled
    }

    async fn ensure_volume(
        &self,
        name: &str,
        device: &str,
        options: &edgefleet_protocol::spec::VolumeOptions,
    ) -> Result<(), RuntimeError> {
        self.inner.ensure_volume(name, device, options).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let created = self.inner.create(spec).await;
        self.forget_calls();
        created
    }

    async fn start(&self, container: &str) -> Result<(), RuntimeError> {
        tokio::time::sleep(self.behaviour.start).await;
        if self.behaviour.start_failure > 0.0
            && rand::rng().random_bool(self.behaviour.start_failure.min(1.0))
        {
            return Err(RuntimeError::Engine {
                op: "start",
                target: container.to_owned(),
                message: "simulated start failure (--start-failure)".into(),
            });
        }
        self.inner.start(container).await
    }

    async fn stop(&self, container: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.inner.stop(container, timeout).await
    }

    async fn remove(&self, container: &str) -> Result<(), RuntimeError> {
        let removed = self.inner.remove(container).await;
        self.forget_calls();
        removed
    }

    async fn inspect(&self, container: &str) -> Result<ContainerInfo, RuntimeError> {
        self.inner.inspect(container).await
    }

    async fn rename(&self, container: &str, new_name: &str) -> Result<(), RuntimeError> {
        self.inner.rename(container, new_name).await
    }

    async fn logs(&self, container: &str, tail: u32) -> Result<Vec<String>, RuntimeError> {
        self.inner.logs(container, tail).await
    }

    async fn events(&self, device: &str) -> Result<EngineEvents, RuntimeError> {
        self.inner.events(device).await
    }
}
