//! Device events (not retained): what an agent did or refused, for people and the audit trail.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DesiredReceived,
    DesiredRejected,
    /// A desired document that was unsigned, forged, signed by another key or replayed.
    SecurityRejected,
    Pulling,
    Pulled,
    Created,
    Started,
    Stopped,
    Removed,
    Healthy,
    Unhealthy,
    Failed,
    DriftDetected,
    Converged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// `edgefleet/v1/devices/{device}/events`, QoS 1, not retained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEvent {
    pub schema: u32,
    pub device: String,
    pub ts: String,
    pub kind: EventKind,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Desired revision the event relates to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    pub message: String,
}

impl DeviceEvent {
    pub fn new(
        device: &str,
        kind: EventKind,
        severity: Severity,
        message: impl Into<String>,
    ) -> Self {
        DeviceEvent {
            schema: crate::SCHEMA_VERSION,
            device: device.to_owned(),
            ts: crate::now_rfc3339(),
            kind,
            severity,
            stack: None,
            service: None,
            revision: None,
            message: message.into(),
        }
    }

    pub fn with_service(mut self, stack: &str, service: &str) -> Self {
        self.stack = Some(stack.to_owned());
        self.service = Some(service.to_owned());
        self
    }

    pub fn with_revision(mut self, revision: u64) -> Self {
        self.revision = Some(revision);
        self
    }
}
