//! Asking one agent for something now (today: a tail of a service's logs). The request goes
//! out signed on the device's `…/commands` topic; the answer comes back on `…/replies` and is
//! matched by `request_id`, and only to the request made of that device. Nothing is stored:
//! an unanswered request times out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use edgefleet_domain::device::Connection;
use edgefleet_protocol::command::{Command, CommandKind, MAX_TAIL, Reply};
use tokio::sync::oneshot;

use super::fleet::Fleet;
use super::outbox::Outbox;

/// How long a request waits for a device's answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Requests waiting for their reply.
pub struct Commands {
    fleet: Arc<Fleet>,
    outbox: Arc<Outbox>,
    next: AtomicU64,
    waiting: DashMap<u64, (String, oneshot::Sender<Reply>)>,
}

impl Commands {
    pub fn new(fleet: Arc<Fleet>, outbox: Arc<Outbox>) -> Self {
        // Ids start from the clock so a restarted controller never reuses a recent one.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1)
            << 8;
        Commands {
            fleet,
            outbox,
            next: AtomicU64::new(start),
            waiting: DashMap::new(),
        }
    }

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
        match self.fleet.devices.get(device).map(|d| d.connection) {
            None => return Err(CommandError::UnknownDevice(device.to_owned())),
            Some(c) if c != Connection::Online => {
                return Err(CommandError::Offline(device.to_owned()));
            }
            Some(_) => {}
        }
        let request_id = self.next.fetch_add(1, Ordering::Relaxed);
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
        self.waiting.insert(request_id, (device.to_owned(), tx));
        // Removes the entry however this ends: answered, timed out, or the caller gone (an
        // HTTP client that hung up drops this future mid-wait).
        let _waiting = Waiting {
            waiting: &self.waiting,
            request_id,
        };
        self.outbox
            .queue_command(device, edgefleet_protocol::codec::encode(&command));
        let answer = tokio::time::timeout(REPLY_TIMEOUT, rx).await;
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

/// A waiting request's entry, removed on drop.
struct Waiting<'a> {
    waiting: &'a DashMap<u64, (String, oneshot::Sender<Reply>)>,
    request_id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waiting.remove(&self.request_id);
    }
}

impl Commands {
    /// Requests waiting for a reply now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancelled_request_leaves_nothing_waiting() {
        let fleet = Arc::new(Fleet::default());
        fleet.update("d1", |d| d.connection = Connection::Online);
        let (outbox, _rx) = Outbox::new(fleet.clone());
        let p = Commands::new(fleet, Arc::new(outbox));
        let request = p.device_logs("d1", "web", "app", 10);
        // Polled once (the entry is in), then dropped as a hung-up HTTP client would.
        let cancelled = tokio::time::timeout(std::time::Duration::from_millis(1), request).await;
        assert!(cancelled.is_err());
        assert_eq!(p.waiting(), 0);
    }

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
        let fleet = Arc::new(Fleet::default());
        let (outbox, _rx) = Outbox::new(fleet.clone());
        let p = Commands::new(fleet, Arc::new(outbox));
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
