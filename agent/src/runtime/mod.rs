//! The container engine behind a small trait, so the reconciler never knows whether it drives
//! Docker ([`docker::DockerRuntime`]) or an in-memory model ([`memory::MemoryRuntime`], for
//! planner tests and the scale simulator).
//!
//! Every method is scoped to one device: listing filters on the `io.edgefleet.device` label,
//! and the reconciler only ever passes ids and names it found through that filter or created
//! itself.

pub mod docker;
pub mod memory;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use edgefleet_protocol::status::{ContainerState, Health};
use futures_util::stream::BoxStream;
use thiserror::Error;

use crate::container::{ContainerSpec, LABEL_CONFIG_HASH, LABEL_SERVICE, LABEL_STACK};

pub use docker::DockerRuntime;
pub use memory::MemoryRuntime;

/// What went wrong talking to the engine. Messages name the object and suggest a fix.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RuntimeError {
    #[error(
        "docker engine unreachable: {0} (is dockerd running, and may the agent's user open /var/run/docker.sock?)"
    )]
    Unreachable(String),
    #[error(
        "image '{image}' not present and pull failed: {reason} — push it to a registry the device can reach or load it with docker load"
    )]
    Pull { image: String, reason: String },
    #[error(
        "container name '{name}' is already taken by another container: remove or rename that container"
    )]
    NameConflict { name: String },
    #[error("{what} '{target}' not found")]
    NotFound { what: &'static str, target: String },
    /// A started container that did not become ready (running, and healthy if it has a
    /// healthcheck) in time.
    #[error("container '{name}' did not become ready: {reason}")]
    NotReady { name: String, reason: String },
    #[error("docker could not {op} '{target}': {message}")]
    Engine {
        op: &'static str,
        target: String,
        message: String,
    },
}

/// One container of this device as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    /// Image reference the container was created from.
    pub image: String,
    /// Image id (`sha256:…`).
    pub image_id: Option<String>,
    pub state: ContainerState,
    pub health: Health,
    pub restart_count: u64,
    pub labels: BTreeMap<String, String>,
}

impl ContainerInfo {
    pub fn stack(&self) -> Option<&str> {
        self.labels.get(LABEL_STACK).map(String::as_str)
    }

    pub fn service(&self) -> Option<&str> {
        self.labels.get(LABEL_SERVICE).map(String::as_str)
    }

    pub fn config_hash(&self) -> Option<&str> {
        self.labels.get(LABEL_CONFIG_HASH).map(String::as_str)
    }

    /// Running, or about to be (the engine is restarting it), or paused by someone.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            ContainerState::Running | ContainerState::Restarting | ContainerState::Paused
        )
    }
}

/// A registry login (opened from the desired document): redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryAuth({}, <redacted>)", self.username)
    }
}

/// A wake-up from the engine: something happened to one of this device's containers.
pub type EngineEvents = BoxStream<'static, Result<(), RuntimeError>>;

/// The operations the reconciler needs from a container engine.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Every container (running or not) labelled with `device`.
    fn list_containers(
        &self,
        device: &str,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;

    /// Names of the volumes labelled with `device`.
    fn list_volumes(
        &self,
        device: &str,
    ) -> impl Future<Output = Result<BTreeSet<String>, RuntimeError>> + Send;

    /// Names of the networks this agent created for `device` (labelled with it; never an
    /// external network).
    fn list_networks(
        &self,
        device: &str,
    ) -> impl Future<Output = Result<BTreeSet<String>, RuntimeError>> + Send;

    /// Removes network `name` (it must have no container attached any more).
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The engine's platform in OCI form (`linux/amd64`, `linux/arm64`, `linux/arm/v7`), or
    /// `None` when it does not say.
    fn platform(&self) -> impl Future<Output = Result<Option<String>, RuntimeError>> + Send {
        async { Ok(None) }
    }

    /// Whether `image` is present locally.
    fn image_present(&self, image: &str)
    -> impl Future<Output = Result<bool, RuntimeError>> + Send;

    /// Pulls `image`; fails with [`RuntimeError::Pull`].
    fn pull(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Pulls `image` logging in to its registry with `auth` (a private registry's
    /// credential from the desired document). Runtimes without registries ignore `auth`.
    fn pull_with(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = auth;
        self.pull(image)
    }

    /// Removes the config and secret files of every stack not in `keep` (their containers
    /// are gone). Runtimes without a file system keep nothing.
    fn prune_files(
        &self,
        keep: &BTreeSet<String>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = keep;
        async { Ok(()) }
    }

    /// Writes a config or secret file at `path` under the stack root (atomically, with
    /// `mode`, owned by `uid`/`gid` when given), for a container to mount. Runtimes without
    /// a file system keep nothing.
    fn write_file(
        &self,
        file: &crate::container::StackFile,
        content: &[u8],
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = (file, content);
        async { Ok(()) }
    }

    /// Creates volume `name` labelled with `device`, with `options`' driver and driver
    /// options (no-op if it exists).
    fn ensure_volume(
        &self,
        name: &str,
        device: &str,
        options: &edgefleet_protocol::spec::VolumeOptions,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates a container; returns its id.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Starts a container by id or name (no-op if running).
    fn start(&self, container: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops a container, killing it after `timeout` (no-op if stopped).
    fn stop(
        &self,
        container: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes a stopped container.
    fn remove(&self, container: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// One container by id or name; [`RuntimeError::NotFound`] if there is none.
    fn inspect(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send;

    /// Renames a container (by id or name) to `new_name`; [`RuntimeError::NameConflict`] if
    /// the name is taken.
    fn rename(
        &self,
        container: &str,
        new_name: &str,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The last `tail` lines a container wrote (stdout and stderr, in order).
    fn logs(
        &self,
        container: &str,
        tail: u32,
    ) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;

    /// A stream yielding one item per engine event about `device`'s containers. It ends or
    /// errors when the engine connection is lost; the caller subscribes again.
    fn events(
        &self,
        device: &str,
    ) -> impl Future<Output = Result<EngineEvents, RuntimeError>> + Send;
}
