//! The device status document (the reported half of the shadow): built from the desired state
//! and the latest observation, and published only when its content changes (the timestamp
//! does not count) — plus on every (re)connect and controller rebirth, by the link.

use std::collections::BTreeMap;

use edgefleet_protocol::SCHEMA_VERSION;
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::status::{
    ContainerState, ConvergenceState, DeviceStatus, Health, ServiceStatus, StackStatus,
};

use crate::container::container_name;
use crate::plan::{Observed, current_container};
use crate::runtime::ContainerInfo;

/// Version reported in status and presence.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Per-service error text of the last pass, keyed by (stack, service).
pub type ServiceErrors = BTreeMap<(String, String), String>;

/// Everything a status document is built from.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    pub device: &'a str,
    pub desired: Option<&'a DesiredState>,
    /// The latest successful observation, if any.
    pub observed: Option<&'a Observed>,
    pub observed_revision: u64,
    /// Whether the last pass failed.
    pub failed: bool,
    /// Device-level error of the last pass.
    pub last_error: Option<&'a str>,
    pub service_errors: &'a ServiceErrors,
    /// The engine changed during the pass and more work is due: not converged yet.
    pub pending: bool,
    /// The engine's platform (`linux/arm64`), once it said.
    pub platform: Option<&'a str>,
}

/// The container reported for a service: the one with the desired config, else whichever
/// exists (preferring a running one), so an old version still running shows as such.
pub fn reported_container<'a>(
    observed: &'a Observed,
    device: &str,
    stack: &str,
    service: &str,
    want_hash: &str,
) -> Option<&'a ContainerInfo> {
    let mine = observed.service_containers(stack, service);
    current_container(&mine, want_hash, &container_name(device, stack, service))
        .or_else(|| mine.iter().copied().find(|c| c.is_active()))
        .or_else(|| mine.first().copied())
}

/// Builds the status document.
pub fn build(input: StatusInput<'_>) -> DeviceStatus {
    let desired_revision = input.desired.map_or(0, |d| d.revision);
    let state = match input.desired {
        None => ConvergenceState::Idle,
        Some(_) if input.failed => ConvergenceState::Failed,
        Some(d) if input.observed_revision == d.revision && !input.pending => {
            ConvergenceState::Converged
        }
        Some(_) => ConvergenceState::Converging,
    };
    let mut stacks = BTreeMap::new();
    for (stack_name, stack) in input.desired.map(|d| &d.stacks).into_iter().flatten() {
        let mut services = BTreeMap::new();
        for (service, svc) in &stack.services {
            let want_hash = svc.config_hash();
            let found = input
                .observed
                .and_then(|o| reported_container(o, input.device, stack_name, service, &want_hash));
            let last_error = input
                .service_errors
                .get(&(stack_name.clone(), service.clone()))
                .cloned();
            services.insert(
                service.clone(),
                ServiceStatus {
                    image: svc.image.clone(),
                    image_id: found.and_then(|c| c.image_id.clone()),
                    container_id: found.map(|c| c.id.clone()),
                    state: found.map_or(ContainerState::Missing, |c| c.state),
                    health: found.map_or(Health::None, |c| c.health),
                    restart_count: found.map_or(0, |c| c.restart_count),
                    last_error,
                    config_hash: found.and_then(|c| c.config_hash().map(str::to_owned)),
                },
            );
        }
        stacks.insert(
            stack_name.clone(),
            StackStatus {
                deployment_revision: stack.deployment_revision,
                services,
            },
        );
    }
    DeviceStatus {
        schema: SCHEMA_VERSION,
        device: input.device.to_owned(),
        observed_revision: input.observed_revision,
        desired_revision,
        state,
        stacks,
        last_error: input.last_error.map(str::to_owned),
        agent_version: AGENT_VERSION.to_owned(),
        updated_at: edgefleet_protocol::now_rfc3339(),
        platform: input.platform.map(str::to_owned),
    }
}

/// Whether two documents say the same thing (`updated_at` aside).
pub fn same_content(a: &DeviceStatus, b: &DeviceStatus) -> bool {
    a.schema == b.schema
        && a.device == b.device
        && a.observed_revision == b.observed_revision
        && a.desired_revision == b.desired_revision
        && a.state == b.state
        && a.stacks == b.stacks
        && a.last_error == b.last_error
        && a.agent_version == b.agent_version
        && a.platform == b.platform
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_without_desired_and_timestamp_does_not_count() {
        let errors = ServiceErrors::new();
        let input = StatusInput {
            device: "d",
            desired: None,
            observed: None,
            observed_revision: 0,
            failed: false,
            last_error: None,
            service_errors: &errors,
            pending: false,
            platform: None,
        };
        let a = build(input);
        assert_eq!(a.state, ConvergenceState::Idle);
        assert!(a.stacks.is_empty());
        let mut b = a.clone();
        b.updated_at = "2000-01-01T00:00:00.000Z".into();
        assert!(same_content(&a, &b));
        b.last_error = Some("x".into());
        assert!(!same_content(&a, &b));
    }

    #[test]
    fn missing_service_and_states() {
        let errors: ServiceErrors =
            [(("app".to_string(), "web".to_string()), "boom".to_string())].into();
        let svc = serde_json::from_value(serde_json::json!({"image": "app:1"})).unwrap();
        let stack = edgefleet_protocol::spec::StackSpec {
            deployment: "app".into(),
            deployment_revision: 3,
            volumes: vec![],
            volume_options: Default::default(),
            networks: Default::default(),
            services: [("web".to_string(), svc)].into(),
            configs: Default::default(),
            secrets: Default::default(),
        };
        let d = DesiredState::new("d", 7, [("app".to_string(), stack.into())].into());
        let observed = Observed::default();
        let mut input = StatusInput {
            device: "d",
            desired: Some(&d),
            observed: Some(&observed),
            observed_revision: 6,
            failed: true,
            last_error: Some("boom"),
            service_errors: &errors,
            pending: false,
            platform: None,
        };
        let s = build(input);
        assert_eq!(s.state, ConvergenceState::Failed);
        assert_eq!(s.desired_revision, 7);
        let web = &s.stacks["app"].services["web"];
        assert_eq!(web.state, ContainerState::Missing);
        assert_eq!(web.last_error.as_deref(), Some("boom"));
        assert_eq!(s.stacks["app"].deployment_revision, 3);
        input.failed = false;
        assert_eq!(build(input).state, ConvergenceState::Converging);
        input.observed_revision = 7;
        assert_eq!(build(input).state, ConvergenceState::Converged);
        input.pending = true;
        assert_eq!(build(input).state, ConvergenceState::Converging);
    }
}
