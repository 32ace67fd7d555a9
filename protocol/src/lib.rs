//! # edgefleet-protocol
//!
//! The wire contract between the controller, the agents and anyone else on the bus (SCADA,
//! integrators). `topics.md` at the repository root is the public description of everything
//! here; a test keeps the two in step.
//!
//! ## Layout
//! - [`topics`]: the topic tree. The only place in the workspace that knows topic strings.
//! - [`acl`]: identities (device / integrator) and who may publish or subscribe to what.
//! - [`ids`]: device ids and label keys/values that are safe to put in a topic.
//! - [`spec`]: the normalized service/stack spec the controller derives from Compose.
//! - [`desired`], [`status`], [`presence`], [`event`], [`sync`], [`site`]: payloads (JSON,
//!   versioned).
//! - [`broker_url`]: `mqtt://HOST:PORT` broker addresses (agent and controller agree).
//! - [`backoff`]: how every client of the bus paces its reconnects (jittered, exponential).
//! - [`codec`]: decoding untrusted bytes into payloads, with errors that say what is wrong.
//! - [`enrollment`]: the one-time enrollment token and the HTTPS exchange's payloads.
//! - [`command`]: signed on-demand requests to one agent (log tail) and its replies.
//! - [`signing`]: the signed envelope around desired documents (ed25519).
//! - [`sealed`]: secrets and registry credentials sealed for a device's enrolled key (HPKE).
//! - [`audit_head`]: the audit log's signed head, published for anyone to save.
//!
//! No I/O happens in this crate.

pub mod acl;
pub mod audit_head;
pub mod backoff;
pub mod broker_url;
pub mod codec;
pub mod command;
pub mod desired;
pub mod enrollment;
pub mod event;
pub mod ids;
pub mod policy;
pub mod presence;
pub mod sealed;
pub mod signing;
pub mod site;
pub mod spec;
pub mod status;
pub mod sync;
pub mod topics;

/// Schema version carried by every payload this crate defines (`"schema": 1`).
pub const SCHEMA_VERSION: u32 = 1;

/// Largest payload the agent and controller accept from the bus (1 MiB). Brokers and MQTT
/// clients must be configured to carry at least this much.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Current time as an RFC 3339 UTC timestamp with millisecond precision, the format of every
/// `ts`/`*_at` field on the wire.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
