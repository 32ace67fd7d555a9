//! Asking one agent for something now (today: a tail of a service's logs). The request goes
//! out signed on the device's `…/commands` topic; the answer comes back on `…/replies` and is
//! matched by `request_id`. Nothing is stored: an unanswered request times out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use dashmap::DashMap;
use edgefleet_protocol::command::{Command, CommandKind, MAX_TAIL, Reply};
use tokio::sync::oneshot;

use crate::api::ApiError;
use crate::auth::Auth;
use crate::core::{Controller, Outgoing};

/// How long the API waits for a device's answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests waiting for their reply.
#[derive(Debug)]
pub struct Pending {
    next: AtomicU64,
    waiting: DashMap<u64, (String, oneshot::Sender<Reply>)>,
}

impl Default for Pending {
    fn default() -> Self {
        // Ids start from the clock so a restarted controller never reuses a recent one.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1)
            << 8;
        Pending {
            next: AtomicU64::new(start),
            waiting: DashMap::new(),
        }
    }
}

impl Pending {
    /// A reply from the bus: hands it to its waiting request (a reply nobody waits for, or
    /// from another device than the one asked, is dropped).
    pub fn on_reply(&self, reply: Reply) {
        let mine = self
            .waiting
            .remove_if(&reply.request_id, |_, (device, _)| *device == reply.device);
        match mine {
            Some((_, (_, tx))) => {
                let _ = tx.send(reply);
            }
            None => tracing::debug!(
                device = %reply.device,
                request = reply.request_id,
                "reply nobody waits for (or to another device's request): dropped"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("device '{0}' is not known")]
    UnknownDevice(String),
    #[error("device '{0}' is offline: its logs can be read when it is back")]
    Offline(String),
    #[error(
        "device '{0}' did not answer within {1} s (it may have just gone offline, or run an older agent)"
    )]
    Timeout(String, u64),
    #[error("{0}")]
    Invalid(String),
    #[error("the device could not read the logs: {0}")]
    Device(String),
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownDevice(_) => ApiError::NotFound(e.to_string()),
            CommandError::Invalid(m) => ApiError::BadRequest(m),
            CommandError::Offline(_) | CommandError::Device(_) => ApiError::Conflict(e.to_string()),
            CommandError::Timeout(..) => ApiError::Conflict(e.to_string()),
        }
    }
}

impl Controller {
    /// The last `tail` lines of one service's container on `device`, asked of its agent.
    pub async fn device_logs(
        &self,
        device: &str,
        stack: &str,
        service: &str,
        tail: u32,
    ) -> Result<Vec<String>, CommandError> {
        edgefleet_protocol::ids::validate_stack_name(stack)
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        edgefleet_protocol::ids::validate_service_name(service)
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        match self.fleet.devices.get(device) {
            None => return Err(CommandError::UnknownDevice(device.to_owned())),
            Some(d) if d.connection != crate::fleet::Connection::Online => {
                return Err(CommandError::Offline(device.to_owned()));
            }
            Some(_) => {}
        }
        let request_id = self.commands.next.fetch_add(1, Ordering::Relaxed);
        let command = Command {
            schema: edgefleet_protocol::SCHEMA_VERSION,
            device: device.to_owned(),
            request_id,
            issued_at: edgefleet_protocol::now_rfc3339(),
            kind: CommandKind::Logs {
                stack: stack.to_owned(),
                service: service.to_owned(),
                tail: tail.clamp(1, MAX_TAIL),
            },
        };
        let (tx, rx) = oneshot::channel();
        self.commands
            .waiting
            .insert(request_id, (device.to_owned(), tx));
        self.send_outgoing(Outgoing::Command {
            device: device.to_owned(),
            command: edgefleet_protocol::codec::encode(&command),
        });
        let answer = tokio::time::timeout(REPLY_TIMEOUT, rx).await;
        self.commands.waiting.remove(&request_id);
        match answer {
            Ok(Ok(reply)) => match reply.error {
                Some(e) => Err(CommandError::Device(e)),
                None => Ok(reply.lines),
            },
            _ => Err(CommandError::Timeout(
                device.to_owned(),
                REPLY_TIMEOUT.as_secs(),
            )),
        }
    }
}

#[derive(serde::Deserialize)]
pub struct LogsQuery {
    pub stack: String,
    pub service: String,
    #[serde(default)]
    pub tail: Option<u32>,
}

async fn api_logs(
    State(ctrl): State<Arc<Controller>>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let site = ctrl.fleet.site_of(&id);
    auth.check_site(&format!("device '{id}'"), site.as_deref())?;
    let tail = q.tail.unwrap_or(100);
    let lines = ctrl.device_logs(&id, &q.stack, &q.service, tail).await?;
    Ok(Json(serde_json::json!({
        "device": id, "stack": q.stack, "service": q.service, "lines": lines,
    })))
}

/// `GET /api/v1/devices/{id}/logs?stack&service&tail` (merged into [`crate::api::router`]).
pub fn api_routes() -> Router<Arc<Controller>> {
    Router::new().route("/api/v1/devices/{id}/logs", get(api_logs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(device: &str, id: u64) -> Reply {
        Reply {
            schema: 1,
            device: device.into(),
            request_id: id,
            lines: vec!["x".into()],
            error: None,
        }
    }

    #[test]
    fn replies_reach_only_their_own_request() {
        let p = Pending::default();
        let (tx, mut rx) = oneshot::channel();
        p.waiting.insert(5, ("d1".into(), tx));
        p.on_reply(reply("d2", 5));
        assert!(
            rx.try_recv().is_err(),
            "another device cannot answer d1's request"
        );
        p.on_reply(reply("d1", 6));
        assert!(rx.try_recv().is_err());
        p.on_reply(reply("d1", 5));
        assert_eq!(rx.try_recv().unwrap().lines, vec!["x".to_owned()]);
        assert!(p.waiting.is_empty());
    }
}
