//! On-demand requests from the controller to one agent, and the agent's replies.
//!
//! A [`Command`] travels on `edgefleet/v1/devices/{device}/commands` inside the same signed
//! envelope as desired state ([`crate::signing`]): an agent answers only what its controller
//! signed, for itself, recently. The answer is a [`Reply`] on `…/replies`, matched by
//! `request_id`. Today the one command is a tail of a service's logs.

use serde::{Deserialize, Serialize};

/// A command older than this (by `issued_at`) is refused as a replay.
pub const MAX_COMMAND_AGE_SECS: u64 = 300;
/// Most log lines one request may ask for.
pub const MAX_TAIL: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandKind {
    /// The last `tail` lines (stdout and stderr) of one service's container.
    Logs {
        stack: String,
        service: String,
        tail: u32,
    },
}

/// Controller → agent (signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub schema: u32,
    pub device: String,
    pub request_id: u64,
    pub issued_at: String,
    #[serde(flatten)]
    pub kind: CommandKind,
}

/// Agent → controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub schema: u32,
    pub device: String,
    pub request_id: u64,
    /// The lines asked for (empty on error).
    #[serde(default)]
    pub lines: Vec<String>,
    /// Why the command could not be carried out, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
