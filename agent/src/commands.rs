//! Controller commands (today: a tail of one service's logs). Like desired state they are
//! untrusted until their signature checks out against the pinned controller key; a command
//! for another device or older than [`MAX_COMMAND_AGE_SECS`] is refused. Forged or replayed
//! commands get no reply, only a `security_rejected` event; a valid one always gets a reply,
//! with the lines or with the reason it could not be carried out.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgefleet_protocol::SCHEMA_VERSION;
use edgefleet_protocol::command::{Command, CommandKind, MAX_COMMAND_AGE_SECS, MAX_TAIL, Reply};
use edgefleet_protocol::event::{DeviceEvent, EventKind, Severity};
use edgefleet_protocol::signing::{VerifyingKey, verify_as};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::outbox::Outbox;
use crate::runtime::ContainerRuntime;

/// Checks one payload: signature, device, age.
pub fn judge(
    device: &str,
    trusted: &VerifyingKey,
    payload: &[u8],
    now: SystemTime,
) -> Result<Command, String> {
    let command: Command = verify_as(trusted, payload).map_err(|e| e.to_string())?;
    if command.device != device {
        return Err(format!(
            "the command is for device '{}', not this one",
            command.device
        ));
    }
    let issued = humantime::parse_rfc3339_weak(&command.issued_at)
        .map_err(|e| format!("the command's issued_at is not a time: {e}"))?;
    let max_age = Duration::from_secs(MAX_COMMAND_AGE_SECS);
    let too_old = now.duration_since(issued).is_ok_and(|age| age > max_age);
    let too_new = issued
        .duration_since(now)
        .is_ok_and(|ahead| ahead > max_age);
    if too_old || too_new {
        return Err(format!(
            "the command was issued at {} (more than {MAX_COMMAND_AGE_SECS} s from this device's clock): a replay, or a clock to fix",
            command.issued_at
        ));
    }
    Ok(command)
}

/// Carries out a valid command.
pub async fn execute<R: ContainerRuntime>(runtime: &R, device: &str, command: &Command) -> Reply {
    let mut reply = Reply {
        schema: SCHEMA_VERSION,
        device: device.to_owned(),
        request_id: command.request_id,
        lines: Vec::new(),
        error: None,
    };
    let CommandKind::Logs {
        stack,
        service,
        tail,
    } = &command.kind;
    let containers = match runtime.list_containers(device).await {
        Ok(c) => c,
        Err(e) => {
            reply.error = Some(e.to_string());
            return reply;
        }
    };
    let mut matching: Vec<_> = containers
        .into_iter()
        .filter(|c| c.stack() == Some(stack) && c.service() == Some(service))
        .collect();
    // The active one first (a `-next` container may sit beside it during an update).
    matching.sort_by_key(|c| !c.is_active());
    let Some(container) = matching.first() else {
        reply.error = Some(format!(
            "no container of service '{service}' in stack '{stack}' on this device"
        ));
        return reply;
    };
    match runtime
        .logs(&container.id, (*tail).clamp(1, MAX_TAIL))
        .await
    {
        Ok(lines) => reply.lines = lines,
        Err(e) => reply.error = Some(e.to_string()),
    }
    reply
}

/// Runs until `shutdown`: one command at a time.
pub async fn run<R: ContainerRuntime>(
    device: String,
    trusted: VerifyingKey,
    runtime: Arc<R>,
    outbox: Arc<dyn Outbox>,
    mut commands: mpsc::Receiver<Vec<u8>>,
    shutdown: CancellationToken,
) {
    loop {
        let payload = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = commands.recv() => match p { Some(p) => p, None => return },
        };
        match judge(&device, &trusted, &payload, SystemTime::now()) {
            Ok(command) => {
                info!(request = command.request_id, kind = ?command.kind, "command from the controller");
                let reply = execute(runtime.as_ref(), &device, &command).await;
                outbox.reply(&reply);
            }
            Err(reason) => {
                warn!(%reason, "refused a command");
                outbox.event(DeviceEvent::new(
                    &device,
                    EventKind::SecurityRejected,
                    Severity::Error,
                    format!("command refused: {reason}; nothing was done"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_protocol::signing::DocumentSigner;

    fn command(device: &str, issued_at: SystemTime) -> Vec<u8> {
        let c = Command {
            schema: 1,
            device: device.into(),
            request_id: 7,
            issued_at: humantime::format_rfc3339_millis(issued_at).to_string(),
            kind: CommandKind::Logs {
                stack: "web".into(),
                service: "app".into(),
                tail: 10,
            },
        };
        DocumentSigner::from_secret(&[1; 32]).sign_bytes(&serde_json::to_vec(&c).unwrap())
    }

    #[test]
    fn only_signed_recent_commands_for_this_device_pass() {
        let key = DocumentSigner::from_secret(&[1; 32]).verifying_key();
        let now = SystemTime::now();
        assert_eq!(
            judge("d", &key, &command("d", now), now)
                .unwrap()
                .request_id,
            7
        );
        let cases = [
            (command("other", now), "not this one"),
            (command("d", now - Duration::from_secs(600)), "replay"),
            (command("d", now + Duration::from_secs(600)), "replay"),
            (b"{\"schema\":1,\"device\":\"d\"}".to_vec(), "not signed"),
            (
                DocumentSigner::from_secret(&[2; 32]).sign_bytes(b"{\"schema\":1}"),
                "signed by key",
            ),
        ];
        for (payload, needle) in cases {
            let e = judge("d", &key, &payload, now).unwrap_err();
            assert!(e.contains(needle), "{e} does not contain {needle:?}");
        }
    }
}
