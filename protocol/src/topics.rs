//! The topic tree. Every topic string in the workspace is built and parsed here.
//!
//! Everything a device may touch lives under its own prefix `edgefleet/v1/devices/{device}/`,
//! so a broker front (or a Mosquitto ACL with `%c`) can confine a device to that prefix. The
//! controller's own presence lives outside it and is read-only for devices.

use crate::ids::validate_device_id;

/// Root of every edgefleet topic; the `v1` is the topic-tree version (payloads carry their own
/// `schema`).
pub const ROOT: &str = "edgefleet/v1";

/// Who publishes on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ControllerToAgent,
    AgentToAll,
    AgentToController,
    ControllerToAll,
}

/// Every kind of topic the code builds. `topics.md` documents each [`TopicKind::template`];
/// `tests/topics_doc.rs` fails if one is missing there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    DeviceDesired,
    DeviceStatus,
    DevicePresence,
    DeviceEvents,
    DeviceSync,
    DeviceCommands,
    DeviceReplies,
    ControllerPresence,
    SiteSummary,
    RolloutStatus,
    AuditHead,
}

impl TopicKind {
    pub const ALL: [TopicKind; 11] = [
        TopicKind::DeviceDesired,
        TopicKind::DeviceStatus,
        TopicKind::DevicePresence,
        TopicKind::DeviceEvents,
        TopicKind::DeviceSync,
        TopicKind::DeviceCommands,
        TopicKind::DeviceReplies,
        TopicKind::ControllerPresence,
        TopicKind::SiteSummary,
        TopicKind::RolloutStatus,
        TopicKind::AuditHead,
    ];

    /// The topic with `{device}` as placeholder, as written in topics.md.
    pub fn template(self) -> &'static str {
        match self {
            TopicKind::DeviceDesired => "edgefleet/v1/devices/{device}/desired",
            TopicKind::DeviceStatus => "edgefleet/v1/devices/{device}/status",
            TopicKind::DevicePresence => "edgefleet/v1/devices/{device}/presence",
            TopicKind::DeviceEvents => "edgefleet/v1/devices/{device}/events",
            TopicKind::DeviceSync => "edgefleet/v1/devices/{device}/sync",
            TopicKind::DeviceCommands => "edgefleet/v1/devices/{device}/commands",
            TopicKind::DeviceReplies => "edgefleet/v1/devices/{device}/replies",
            TopicKind::ControllerPresence => "edgefleet/v1/controller/presence",
            TopicKind::SiteSummary => "edgefleet/v1/fleet/sites/{site}/summary",
            TopicKind::RolloutStatus => "edgefleet/v1/rollouts/{rollout}/status",
            TopicKind::AuditHead => "edgefleet/v1/audit/head",
        }
    }

    /// Whether messages on this topic are published with the retain flag.
    pub fn retained(self) -> bool {
        matches!(
            self,
            TopicKind::DeviceDesired
                | TopicKind::DeviceStatus
                | TopicKind::DevicePresence
                | TopicKind::ControllerPresence
                | TopicKind::SiteSummary
                | TopicKind::RolloutStatus
                | TopicKind::AuditHead
        )
    }

    pub fn direction(self) -> Direction {
        match self {
            TopicKind::DeviceDesired | TopicKind::DeviceCommands => Direction::ControllerToAgent,
            TopicKind::DeviceStatus | TopicKind::DevicePresence | TopicKind::DeviceEvents => {
                Direction::AgentToAll
            }
            TopicKind::DeviceSync | TopicKind::DeviceReplies => Direction::AgentToController,
            TopicKind::ControllerPresence
            | TopicKind::SiteSummary
            | TopicKind::RolloutStatus
            | TopicKind::AuditHead => Direction::ControllerToAll,
        }
    }

    fn leaf(self) -> Option<&'static str> {
        match self {
            TopicKind::DeviceDesired => Some("desired"),
            TopicKind::DeviceStatus => Some("status"),
            TopicKind::DevicePresence => Some("presence"),
            TopicKind::DeviceEvents => Some("events"),
            TopicKind::DeviceSync => Some("sync"),
            TopicKind::DeviceCommands => Some("commands"),
            TopicKind::DeviceReplies => Some("replies"),
            TopicKind::ControllerPresence
            | TopicKind::SiteSummary
            | TopicKind::RolloutStatus
            | TopicKind::AuditHead => None,
        }
    }

    /// The concrete topic for one device. `device` must be a valid device id; kinds that are
    /// not per-device ignore it (use [`site_summary`] for per-site topics).
    pub fn for_device(self, device: &str) -> String {
        debug_assert!(
            validate_device_id(device).is_ok(),
            "invalid device id {device:?}"
        );
        match self.leaf() {
            Some(leaf) => format!("{ROOT}/devices/{device}/{leaf}"),
            None => self.template().to_owned(),
        }
    }

    /// Subscription filter matching this kind for every device (`…/devices/+/status`).
    pub fn all_devices_filter(self) -> String {
        match self.leaf() {
            Some(leaf) => format!("{ROOT}/devices/+/{leaf}"),
            None => self.template().to_owned(),
        }
    }
}

impl TopicKind {
    /// Subscription filter matching every topic of this kind: each `{…}` placeholder of the
    /// template becomes `+` (`edgefleet/v1/rollouts/+/status`).
    pub fn any_filter(self) -> String {
        self.template()
            .split('/')
            .map(|level| {
                if level.starts_with('{') && level.ends_with('}') {
                    "+"
                } else {
                    level
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Filter covering every fleet-wide aggregate the controller publishes (site summaries
/// today; anything added under `edgefleet/v1/fleet/` is read-model too).
pub fn fleet_filter() -> String {
    format!("{ROOT}/fleet/#")
}

/// Topic of the controller's presence.
pub fn controller_presence() -> String {
    TopicKind::ControllerPresence.template().to_owned()
}

/// Topic of a site's retained summary. `site` is a label value (validated like an id);
/// devices without a `site` label count under [`UNASSIGNED_SITE`].
pub fn site_summary(site: &str) -> String {
    TopicKind::SiteSummary.template().replace("{site}", site)
}

/// Topic of a rollout's retained progress document.
pub fn rollout_status(id: u64) -> String {
    TopicKind::RolloutStatus
        .template()
        .replace("{rollout}", &id.to_string())
}

/// Topic of the audit log's signed head (retained; see [`crate::audit_head`]).
pub fn audit_head() -> String {
    TopicKind::AuditHead.template().to_owned()
}

/// Site name used for devices that carry no `site` label.
pub const UNASSIGNED_SITE: &str = "unassigned";

/// A parsed topic: its kind and, for per-device topics, the device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTopic<'a> {
    pub kind: TopicKind,
    pub device: Option<&'a str>,
}

/// Parses a topic received from the bus. Returns `None` for anything that is not an edgefleet
/// topic or carries an invalid device id.
pub fn parse(topic: &str) -> Option<ParsedTopic<'_>> {
    if topic == TopicKind::ControllerPresence.template() {
        return Some(ParsedTopic {
            kind: TopicKind::ControllerPresence,
            device: None,
        });
    }
    let rest = topic.strip_prefix(ROOT)?.strip_prefix("/devices/")?;
    let (device, leaf) = rest.split_once('/')?;
    validate_device_id(device).ok()?;
    let kind = TopicKind::ALL
        .into_iter()
        .find(|k| k.leaf() == Some(leaf))?;
    Some(ParsedTopic {
        kind,
        device: Some(device),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_parse_round_trip() {
        for kind in TopicKind::ALL.into_iter().filter(|k| {
            !matches!(
                k,
                TopicKind::SiteSummary | TopicKind::RolloutStatus | TopicKind::AuditHead
            )
        }) {
            let topic = kind.for_device("press-07");
            let parsed = parse(&topic).expect("parses");
            assert_eq!(parsed.kind, kind);
            if kind != TopicKind::ControllerPresence {
                assert_eq!(parsed.device, Some("press-07"));
                assert_eq!(topic, kind.template().replace("{device}", "press-07"));
            }
        }
    }

    #[test]
    fn refuses_foreign_and_malformed_topics() {
        for t in [
            "edgefleet/v1/devices/a/b/status",
            "edgefleet/v1/devices/+/status",
            "edgefleet/v1/devices/x/unknown",
            "other/v1/devices/x/status",
            "edgefleet/v1/devices//status",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
    }

    #[test]
    fn any_filter_replaces_placeholders() {
        assert_eq!(
            TopicKind::RolloutStatus.any_filter(),
            "edgefleet/v1/rollouts/+/status"
        );
        assert_eq!(
            TopicKind::SiteSummary.any_filter(),
            "edgefleet/v1/fleet/sites/+/summary"
        );
        assert_eq!(
            TopicKind::DeviceDesired.any_filter(),
            TopicKind::DeviceDesired.all_devices_filter()
        );
        assert_eq!(
            TopicKind::ControllerPresence.any_filter(),
            controller_presence()
        );
        assert!(site_summary("lyon").starts_with(fleet_filter().trim_end_matches('#')));
        assert_eq!(TopicKind::AuditHead.any_filter(), audit_head());
        assert_eq!(audit_head(), "edgefleet/v1/audit/head");
    }

    #[test]
    fn wildcard_filters() {
        assert_eq!(
            TopicKind::DeviceStatus.all_devices_filter(),
            "edgefleet/v1/devices/+/status"
        );
    }
}
