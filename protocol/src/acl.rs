//! Who may publish and subscribe to what: the confinement rules the gateway's network front
//! enforces for every packet, and the equivalent Mosquitto ACL for external brokers.
//!
//! Two kinds of identity come from a client certificate (see [`Identity::from_common_name`]):
//! - a **device** may publish only its own `status`, `presence`, `events` and `sync` topics,
//!   and subscribe only to its own `desired` and to the controller's presence;
//! - an **integrator** (SCADA, MES, dashboards) publishes nothing and subscribes only to the
//!   read model: every device's `status`, `presence`, `events`, the fleet aggregates
//!   (`edgefleet/v1/fleet/#`), rollout progress, the controller's presence and the audit
//!   log's signed head (so each integrator can keep its own copy), or any more specific
//!   filter of those. Never `desired`, never `sync`, never `#`.
//!
//! Two more come from a local MQTT user an admin created (`edgefleet mqtt-user add`) on the
//! gateway's plain loopback listener:
//! - a **local** user (no role) publishes and reads only outside the product's namespace:
//!   never a topic whose first level is `edgefleet` or starts with `$`, and within the rest
//!   only what its [`LocalGrants`] allow (everything, unless the admin narrowed it). Unlike
//!   the other identities it may subscribe with a filter broader than what it may read (`#`,
//!   `+/+`, as plant MQTT tools do): the front then drops every delivery it may not read
//!   ([`LocalGrants::may_read`]). A filter that can only match topics it may not read is
//!   refused;
//! - a **bridge** user (role `bridge`) may use every topic, as the controller does: for a
//!   trusted bridge (a historian mirroring the bus) and for test harnesses. It cannot take the
//!   controller's client id.
//!
//! A local user may also be given a device or integrator role, and is then exactly that
//! identity.
//!
//! A subscription filter is allowed only if **every** topic it can match is allowed (a filter
//! is checked for being covered by an allowed filter, wildcard by wildcard). Every rule is
//! derived from [`crate::topics`]; no topic string is written here.
//!
//! Every topic, filter and client id is also checked for shapes the embedded broker
//! (rumqttd 0.20) cannot handle ([`validate_topic_name`], [`validate_filter`],
//! [`check_client_id`]): nothing that could reach one of its panics gets past the front.

use std::fmt;

use thiserror::Error;

use crate::ids::{IdError, validate_device_id};
use crate::topics::{self, TopicKind};

/// Prefix of an integrator's certificate common name and MQTT client id.
pub const INTEGRATOR_PREFIX: &str = "integrator:";

/// Prefix of a device's MQTT client id (the agent connects as `edgefleet-agent-{device}`).
pub const DEVICE_CLIENT_ID_PREFIX: &str = "edgefleet-agent-";

/// Longest topic or filter accepted, in bytes (MQTT's own limit is 65,535; ours are < 200).
pub const MAX_TOPIC_BYTES: usize = 1024;

/// Longest client id accepted, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// The controller's MQTT client id (no other identity may take it).
pub const CONTROLLER_CLIENT_ID: &str = "edgefleet-controller";

/// First level of every topic of the product (see [`crate::topics::ROOT`]).
const NAMESPACE: &str = "edgefleet";

/// Kinds a device publishes on its own prefix.
const DEVICE_PUBLISHES: [TopicKind; 5] = [
    TopicKind::DeviceStatus,
    TopicKind::DevicePresence,
    TopicKind::DeviceEvents,
    TopicKind::DeviceSync,
    TopicKind::DeviceReplies,
];

/// Per-device kinds an integrator may read for every device.
const INTEGRATOR_READS_PER_DEVICE: [TopicKind; 3] = [
    TopicKind::DeviceStatus,
    TopicKind::DevicePresence,
    TopicKind::DeviceEvents,
];

/// Who is on the other end of a connection, as proven by its client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An edge device running the agent; the string is its device id.
    Device(String),
    /// A read-only consumer of the read model; the string is its name.
    Integrator(String),
    /// A local MQTT user without a role: topics outside `edgefleet/` only.
    Local(String),
    /// A local MQTT user with the `bridge` role: every topic (not the controller's client id).
    Bridge(String),
}

impl Identity {
    /// Parses a certificate subject common name: `integrator:<name>` is an integrator,
    /// anything else must be a valid device id (which can never contain `:`).
    pub fn from_common_name(cn: &str) -> Result<Identity, IdError> {
        match cn.strip_prefix(INTEGRATOR_PREFIX) {
            Some(name) => {
                validate_integrator_name(name)?;
                Ok(Identity::Integrator(name.to_owned()))
            }
            None => {
                validate_device_id(cn)?;
                Ok(Identity::Device(cn.to_owned()))
            }
        }
    }

    /// The certificate subject common name encoding this identity (inverse of
    /// [`Identity::from_common_name`]).
    /// Local users have no certificate: their "common name" is their display form, which
    /// [`Identity::from_common_name`] refuses.
    pub fn common_name(&self) -> String {
        match self {
            Identity::Device(id) => id.clone(),
            Identity::Integrator(name) => format!("{INTEGRATOR_PREFIX}{name}"),
            Identity::Local(_) | Identity::Bridge(_) => self.to_string(),
        }
    }

    /// Checks that the id or name is one [`Identity::from_common_name`] would accept (local
    /// user names follow the same rules).
    pub fn validate(&self) -> Result<(), IdError> {
        match self {
            Identity::Device(id) => validate_device_id(id),
            Identity::Integrator(name) | Identity::Local(name) | Identity::Bridge(name) => {
                validate_integrator_name(name)
            }
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Device(id) => write!(f, "device:{id}"),
            Identity::Integrator(name) => write!(f, "integrator:{name}"),
            Identity::Local(name) => write!(f, "local:{name}"),
            Identity::Bridge(name) => write!(f, "bridge:{name}"),
        }
    }
}

/// Whether `topic_or_filter`'s first level is the product's namespace or a `$` topic, or
/// (for a filter) a wildcard that could match one.
fn reaches_namespace(topic_or_filter: &str) -> bool {
    let first = topic_or_filter.split('/').next().unwrap_or("");
    first == NAMESPACE || first.starts_with('$') || first == "+" || first == "#"
}

/// Whether a filter can match only topics of the product's namespace or `$` topics (its
/// first level is the literal `edgefleet` or starts with `$`).
fn only_namespace(filter: &str) -> bool {
    let first = filter.split('/').next().unwrap_or("");
    first == NAMESPACE || first.starts_with('$')
}

/// What a local MQTT user without a role may write (publish) and read (receive), as topic
/// filters, always within the topics outside `edgefleet/` and `$`. An admin sets them when
/// creating the user (`edgefleet mqtt-user add NAME --read plant/# --write plant/line3/#`);
/// [`LocalGrants::everything`] is the default. An empty list grants nothing (a read-only
/// user has no write filters).
///
/// How the front applies them, as Mosquitto applies its ACLs to MQTT 3.1.1 clients (which
/// have no way to be told "refused" for a PUBLISH):
/// - a PUBLISH it may not write is acknowledged and dropped (and audited as refused);
/// - a SUBSCRIBE filter that overlaps no read filter gets the failure return code 0x80;
///   one that does is granted, and every delivery it may not read is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalGrants {
    pub read: Vec<String>,
    pub write: Vec<String>,
}

impl LocalGrants {
    /// Every topic outside `edgefleet/` and `$`, both ways.
    pub fn everything() -> LocalGrants {
        LocalGrants {
            read: vec!["#".to_owned()],
            write: vec!["#".to_owned()],
        }
    }

    /// Checked grants: every entry a well-formed filter that can match some topic outside
    /// the namespace.
    pub fn new(read: Vec<String>, write: Vec<String>) -> Result<LocalGrants, String> {
        for (what, filters) in [("read", &read), ("write", &write)] {
            if filters.len() > MAX_GRANT_FILTERS {
                return Err(format!(
                    "at most {MAX_GRANT_FILTERS} {what} filters per MQTT user"
                ));
            }
            for filter in filters {
                validate_filter(filter).map_err(|e| format!("{what} filter '{filter}': {e}"))?;
                if only_namespace(filter) {
                    return Err(format!(
                        "{what} filter '{filter}': a local MQTT user never reaches edgefleet/ or $ topics (give it the bridge or integrator role instead)"
                    ));
                }
            }
        }
        Ok(LocalGrants { read, write })
    }

    /// Whether a delivery on `topic` may reach the user.
    pub fn may_read(&self, topic: &str) -> bool {
        !reaches_namespace(topic) && self.read.iter().any(|f| covers(f, topic))
    }

    /// Whether the user may publish on `topic` (refusal as for [`check_publish`]).
    pub fn check_write(&self, identity: &Identity, topic: &str) -> Result<(), Denied> {
        if self.write.iter().any(|f| covers(f, topic)) {
            Ok(())
        } else {
            Err(denied(
                identity,
                Action::Publish,
                topic,
                "outside this MQTT user's write filters",
            ))
        }
    }

    /// Whether a SUBSCRIBE with `filter` is granted: it must overlap a read filter.
    pub fn check_subscribe(&self, identity: &Identity, filter: &str) -> Result<(), Denied> {
        if self.read.iter().any(|f| overlaps(f, filter)) {
            Ok(())
        } else {
            Err(denied(
                identity,
                Action::Subscribe,
                filter,
                "matches nothing this MQTT user may read",
            ))
        }
    }
}

/// Most read or write filters one local MQTT user may have.
pub const MAX_GRANT_FILTERS: usize = 64;

/// Whether some topic matches both filters (wildcards on either side; a filter whose first
/// level is a wildcard matches no `$` topic).
pub fn overlaps(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    let wild = |l: &str| l == "+" || l == "#";
    if (a[0].starts_with('$') && wild(b[0])) || (b[0].starts_with('$') && wild(a[0])) {
        return false;
    }
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            // `#` matches its parent level and everything below it.
            (Some(&"#"), _) | (_, Some(&"#")) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(&"+"), Some(_)) | (Some(_), Some(&"+")) => {}
            (Some(x), Some(y)) => {
                if x != y {
                    return false;
                }
            }
        }
        i += 1;
    }
}

/// Integrator names follow the device id rules (letters, digits, `-`, `_`, `.`).
pub fn validate_integrator_name(name: &str) -> Result<(), IdError> {
    validate_device_id(name).map_err(|e| match e {
        IdError::Empty { .. } => IdError::Empty {
            what: "integrator name",
        },
        IdError::TooLong { value, max, .. } => IdError::TooLong {
            what: "integrator name",
            value,
            max,
        },
        IdError::BadChar { value, ch, .. } => IdError::BadChar {
            what: "integrator name",
            value,
            ch,
        },
    })
}

/// The MQTT client id a device must connect with.
pub fn device_client_id(device: &str) -> String {
    format!("{DEVICE_CLIENT_ID_PREFIX}{device}")
}

/// What was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Connect,
    Publish,
    Subscribe,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Connect => "connect as",
            Action::Publish => "publish to",
            Action::Subscribe => "subscribe to",
        })
    }
}

/// A refused action, with a message naming identity, action and topic.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{identity} may not {action} '{topic}': {reason}")]
pub struct Denied {
    /// `device:<id>` or `integrator:<name>`.
    pub identity: String,
    pub action: Action,
    /// Topic, filter or (for [`Action::Connect`]) client id; cut to 200 characters.
    pub topic: String,
    pub reason: String,
}

fn denied(identity: &Identity, action: Action, topic: &str, reason: impl Into<String>) -> Denied {
    let mut shown: String = topic.chars().take(200).collect();
    if shown.len() < topic.len() {
        shown.push('…');
    }
    Denied {
        identity: identity.to_string(),
        action,
        topic: shown,
        reason: reason.into(),
    }
}

/// Whether `identity` may publish on `topic`.
pub fn check_publish(identity: &Identity, topic: &str) -> Result<(), Denied> {
    let deny = |reason: &str| Err(denied(identity, Action::Publish, topic, reason));
    if let Err(e) = validate_topic_name(topic) {
        return deny(e);
    }
    if let Err(e) = identity.validate() {
        return deny(&format!("invalid identity ({e})"));
    }
    match identity {
        Identity::Integrator(_) => deny("integrators are read-only"),
        Identity::Bridge(_) => Ok(()),
        Identity::Local(_) if reaches_namespace(topic) => deny(
            "a local MQTT user without a role publishes only outside edgefleet/ (and not to $ topics)",
        ),
        Identity::Local(_) => Ok(()),
        Identity::Device(id) => {
            if DEVICE_PUBLISHES
                .iter()
                .any(|kind| kind.for_device(id) == topic)
            {
                Ok(())
            } else {
                deny("a device publishes only its own status, presence, events and sync topics")
            }
        }
    }
}

/// Whether a PUBLISH with this payload size is acceptable on `topic` (already allowed by
/// [`check_publish`]): an empty payload on a state (retained) topic would erase it.
pub fn check_payload(identity: &Identity, topic: &str, payload_len: usize) -> Result<(), Denied> {
    let state_topic = topics::parse(topic).is_some_and(|t| t.kind.retained());
    if payload_len == 0 && state_topic {
        return Err(denied(
            identity,
            Action::Publish,
            topic,
            "an empty payload would erase a retained state topic",
        ));
    }
    Ok(())
}

/// Whether `identity` may subscribe with `filter`: allowed iff every topic the filter can
/// match is allowed.
pub fn check_subscribe(identity: &Identity, filter: &str) -> Result<(), Denied> {
    let deny = |reason: &str| Err(denied(identity, Action::Subscribe, filter, reason));
    if let Err(e) = validate_filter(filter) {
        return deny(e);
    }
    if filter.starts_with('$') && !filter.starts_with("$share/") {
        // rumqttd 0.20 closes the connection on any other `$` filter (it has no `$SYS`).
        return deny("the broker has no $ topics (only $share/GROUP/FILTER shared subscriptions)");
    }
    if let Err(e) = identity.validate() {
        return deny(&format!("invalid identity ({e})"));
    }
    match identity {
        Identity::Bridge(_) => return Ok(()),
        Identity::Local(_) if only_namespace(filter) => {
            return deny(
                "a local MQTT user without a role reads only outside edgefleet/ (and no $ topics)",
            );
        }
        Identity::Local(_) => return Ok(()),
        Identity::Device(_) | Identity::Integrator(_) => {}
    }
    if readable_filters(identity)
        .iter()
        .any(|allowed| covers(allowed, filter))
    {
        return Ok(());
    }
    match identity {
        Identity::Device(_) => {
            deny("a device reads only its own desired state and the controller's presence")
        }
        Identity::Integrator(_) => deny(
            "integrators read only device status/presence/events, fleet summaries, rollout status, controller presence and the audit head",
        ),
        Identity::Local(_) | Identity::Bridge(_) => deny("not allowed"),
    }
}

/// Whether `topic_or_filter` may be the argument of an UNSUBSCRIBE: any well-formed filter
/// (unsubscribing from something never subscribed changes nothing, but rumqttd must never
/// see a malformed one).
pub fn check_unsubscribe(identity: &Identity, filter: &str) -> Result<(), Denied> {
    validate_filter(filter).map_err(|e| denied(identity, Action::Subscribe, filter, e))
}

/// Whether `client_id` is one `identity` may use. Devices must use
/// [`device_client_id`]; integrators `integrator:<name>`, optionally followed by a suffix that
/// starts with a character a name cannot contain (`integrator:scada:2`); a local user any id
/// that does not start with `edgefleet-` (a bridge: any id but the controller's). So no
/// identity can take over another one's session (the broker drops an existing session when a
/// client connects with the same id).
///
/// For everyone: no `/`, `+` or `#` (rumqttd 0.20 closes such a connection without CONNACK),
/// no control character, at most [`MAX_CLIENT_ID_BYTES`] bytes. Only local users may leave
/// it empty (the broker then assigns a unique one).
pub fn check_client_id(identity: &Identity, client_id: &str) -> Result<(), Denied> {
    let refuse = |reason: String| Err(denied(identity, Action::Connect, client_id, reason));
    if client_id.is_empty() {
        // MQTT 3.1.1 lets a clean-session client leave the id to the broker (mosquitto_pub
        // does by default); it then gets a fresh, unique one: no session can be taken.
        return match identity {
            Identity::Local(_) | Identity::Bridge(_) => Ok(()),
            _ => refuse("an empty client id is not accepted: connect with an explicit one".into()),
        };
    }
    if client_id.len() > MAX_CLIENT_ID_BYTES {
        return refuse(format!("client id longer than {MAX_CLIENT_ID_BYTES} bytes"));
    }
    if client_id.contains(['/', '+', '#']) || client_id.chars().any(char::is_control) {
        return refuse("a client id cannot contain '/', '+', '#' or control characters".into());
    }
    let ok = match identity {
        Identity::Device(id) => client_id == device_client_id(id),
        Identity::Integrator(name) => {
            let own = identity.common_name();
            debug_assert!(own.ends_with(name.as_str()));
            match client_id.strip_prefix(own.as_str()) {
                Some("") => true,
                Some(rest) => rest.chars().next().is_some_and(|c| {
                    !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                }),
                None => false,
            }
        }
        Identity::Local(_) => !client_id.starts_with("edgefleet-"),
        Identity::Bridge(_) => client_id != CONTROLLER_CLIENT_ID,
    };
    if ok {
        Ok(())
    } else {
        let expected = match identity {
            Identity::Device(id) => format!("client id must be '{}'", device_client_id(id)),
            Identity::Integrator(_) => format!(
                "client id must be '{}' or start with it followed by ':'",
                identity.common_name()
            ),
            Identity::Local(_) => {
                "a local MQTT user's client id cannot start with 'edgefleet-'".to_owned()
            }
            Identity::Bridge(_) => format!("'{CONTROLLER_CLIENT_ID}' is the controller's"),
        };
        refuse(expected)
    }
}

/// Filters whose topics `identity` may read.
fn readable_filters(identity: &Identity) -> Vec<String> {
    match identity {
        Identity::Device(id) => vec![
            TopicKind::DeviceDesired.for_device(id),
            TopicKind::DeviceCommands.for_device(id),
            topics::controller_presence(),
        ],
        Identity::Integrator(_) => {
            let mut v: Vec<String> = INTEGRATOR_READS_PER_DEVICE
                .iter()
                .map(|k| k.any_filter())
                .collect();
            v.push(topics::fleet_filter());
            v.push(TopicKind::RolloutStatus.any_filter());
            v.push(topics::controller_presence());
            v.push(topics::audit_head());
            v
        }
        // Handled by rule in `check_subscribe`, not by filter.
        Identity::Local(_) | Identity::Bridge(_) => Vec::new(),
    }
}

/// Checks a topic name as a PUBLISH or a will carries it: see [`validate_filter`] for the
/// rules, and no `+` or `#` at all.
pub fn validate_topic_name(topic: &str) -> Result<(), &'static str> {
    validate_topic(topic, false)
}

/// Checks a subscription filter. Beyond MQTT 3.1.1's rules (not empty, at most
/// [`MAX_TOPIC_BYTES`], no NUL, `+` and `#` fill a whole level, `#` last), refuses what the
/// embedded broker (rumqttd 0.20) cannot handle or what no edgefleet client needs:
/// - a first character that is not ASCII: rumqttd slices the first byte of every topic and
///   filter it matches (`protocol/mod.rs:658`, `topic[..1]`) and its router thread panics;
/// - control characters (MQTT 3.1.1 §1.5.3 says they should not be used; they make audit
///   records and logs unreadable).
pub fn validate_filter(filter: &str) -> Result<(), &'static str> {
    validate_topic(filter, true)
}

fn validate_topic(topic: &str, filter: bool) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("empty topic");
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err("topic too long");
    }
    if topic.contains('\0') {
        return Err("topic contains NUL");
    }
    if !topic.as_bytes()[0].is_ascii() {
        return Err("a topic or filter must start with an ASCII character");
    }
    if topic.chars().any(char::is_control) {
        return Err("topic contains a control character");
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wild = level.contains('+') || level.contains('#');
        if !wild {
            continue;
        }
        if !filter {
            return Err("a topic name cannot contain '+' or '#'");
        }
        let ok = *level == "+" || (*level == "#" && i == levels.len() - 1);
        if !ok {
            return Err("'+' and '#' must fill a whole level, and '#' must be the last one");
        }
    }
    Ok(())
}

/// Whether every topic matched by filter `specific` is also matched by filter `general`.
/// Both must be valid filters. Topics starting with `$` are never matched by a leading
/// wildcard, so they are only covered by a filter with the same literal first level.
pub fn covers(general: &str, specific: &str) -> bool {
    let g: Vec<&str> = general.split('/').collect();
    let s: Vec<&str> = specific.split('/').collect();
    if s[0].starts_with('$') && g[0] != s[0] {
        return false;
    }
    let mut i = 0;
    loop {
        match (g.get(i), s.get(i)) {
            // `a/#` matches `a` and everything below it; covers any rest of `specific`.
            (Some(&"#"), _) => return true,
            // `specific` matches everything here and below; only `#` covers that.
            (_, Some(&"#")) => return false,
            (None, None) => return true,
            // `specific` is longer (or ends earlier than a non-`#` level of `general`).
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(&"+"), Some(_)) => {}
            (Some(_), Some(&"+")) => return false,
            (Some(a), Some(b)) => {
                if a != b {
                    return false;
                }
            }
        }
        i += 1;
    }
}

/// The Mosquitto ACL equivalent to these rules for devices, for a Mosquitto started with
/// `require_certificate true` and `use_identity_as_username true` (certificate CN = username).
///
/// Mosquitto cannot select rules by username prefix, so integrators need one `user` block
/// each: this file carries them as a commented template; use
/// [`mosquitto_acl_with_integrators`] to emit real blocks for known integrators.
pub fn mosquitto_acl() -> String {
    let mut out = mosquitto_header();
    out.push_str(&mosquitto_device_patterns());
    out.push_str(
        "\n# Integrators (certificate CN `integrator:<name>`): one block each, read-only.\n\
         # Uncomment and repeat per integrator, or generate with the integrator names.\n",
    );
    for line in mosquitto_integrator_block("<name>").lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// [`mosquitto_acl`] with one read-only `user` block per integrator name.
pub fn mosquitto_acl_with_integrators(names: &[String]) -> Result<String, IdError> {
    let mut out = mosquitto_header();
    out.push_str(&mosquitto_device_patterns());
    for name in names {
        validate_integrator_name(name)?;
        out.push('\n');
        out.push_str(&mosquitto_integrator_block(name));
    }
    Ok(out)
}

fn mosquitto_header() -> String {
    "# edgefleet ACL for Mosquitto, generated by `edgefleet acl export --format mosquitto`.\n\
     # For the TLS listener devices and integrators use (with per_listener_settings true):\n\
     # require_certificate true, use_identity_as_username true, use_username_as_clientid true,\n\
     # acl_file <this file>.\n\
     # The username is the certificate CN: the device id for a device, `integrator:<name>`\n\
     # for an integrator. use_username_as_clientid binds the client id to it: without it any\n\
     # certificate could connect as `edgefleet-controller` (or as another device) and take\n\
     # over that session. Not expressible in a Mosquitto ACL: an empty retained PUBLISH on a\n\
     # device's own status or presence erases it (the gateway's front refuses those). Anything not granted here is denied (Mosquitto may grant a\n\
     # SUBSCRIBE but then delivers only messages the client may read). The controller\n\
     # connects to a separate listener on loopback without this file, as in the gateway.\n\
     # The device patterns also apply to integrators with %u = `integrator:<name>`, which is\n\
     # never a device id (':' is not allowed in one), so they reach no device's topics.\n\n\
     # Devices: publish own status/presence/events/sync, read own desired and controller presence.\n"
        .to_owned()
}

fn mosquitto_device_patterns() -> String {
    let mut out = String::new();
    for kind in DEVICE_PUBLISHES {
        out.push_str(&format!(
            "pattern write {}\n",
            kind.for_device_pattern("%u")
        ));
    }
    for kind in [TopicKind::DeviceDesired, TopicKind::DeviceCommands] {
        out.push_str(&format!("pattern read {}\n", kind.for_device_pattern("%u")));
    }
    out.push_str(&format!("pattern read {}\n", topics::controller_presence()));
    out
}

fn mosquitto_integrator_block(name: &str) -> String {
    let identity = Identity::Integrator(name.to_owned());
    let mut out = format!("user {}\n", identity.common_name());
    for filter in readable_filters(&identity) {
        out.push_str(&format!("topic read {filter}\n"));
    }
    out
}

/// Builds a per-device topic with a placeholder (`%u`) instead of a device id.
trait DevicePattern {
    fn for_device_pattern(self, placeholder: &str) -> String;
}

impl DevicePattern for TopicKind {
    fn for_device_pattern(self, placeholder: &str) -> String {
        self.template().replace("{device}", placeholder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> Identity {
        Identity::Device(id.to_owned())
    }

    fn integ(name: &str) -> Identity {
        Identity::Integrator(name.to_owned())
    }

    #[test]
    fn identity_display_and_common_name_round_trip() {
        assert_eq!(dev("press-07").to_string(), "device:press-07");
        assert_eq!(integ("scada").to_string(), "integrator:scada");
        for id in [dev("press-07"), integ("scada")] {
            assert_eq!(
                Identity::from_common_name(&id.common_name()),
                Ok(id.clone())
            );
        }
        assert!(Identity::from_common_name("integrator:").is_err());
        assert!(Identity::from_common_name("integrator:a:b").is_err());
        assert!(Identity::from_common_name("a/b").is_err());
        assert!(Identity::from_common_name("").is_err());
        assert!(Identity::from_common_name("press+").is_err());
    }

    #[test]
    fn device_publishes_only_its_own_state() {
        let a = dev("press-07");
        for kind in DEVICE_PUBLISHES {
            check_publish(&a, &kind.for_device("press-07")).unwrap();
            assert!(check_publish(&a, &kind.for_device("press-08")).is_err());
        }
        for topic in [
            TopicKind::DeviceDesired.for_device("press-07"),
            topics::controller_presence(),
            topics::site_summary("lyon"),
            topics::rollout_status(1),
            "edgefleet/v1/devices/press-07/status/x".to_owned(),
            "edgefleet/v1/devices/press-07/+".to_owned(),
            "edgefleet/v1/devices/+/status".to_owned(),
            "edgefleet/v1/devices/press-07/#".to_owned(),
            "#".to_owned(),
            "$SYS/broker".to_owned(),
            String::new(),
            "/".to_owned(),
            "edgefleet/v1/devices/press-07/status\0".to_owned(),
            format!("edgefleet/v1/devices/press-07/status{}", "/".repeat(2000)),
        ] {
            let err = check_publish(&a, &topic).expect_err(&topic);
            assert!(
                err.to_string()
                    .starts_with("device:press-07 may not publish to")
            );
        }
    }

    #[test]
    fn invalid_identity_is_denied_everything() {
        let bad = dev("a/b");
        assert!(check_publish(&bad, "edgefleet/v1/devices/a/b/status").is_err());
        assert!(check_subscribe(&bad, "edgefleet/v1/devices/a/b/desired").is_err());
        let bad = dev("+");
        assert!(check_subscribe(&bad, "edgefleet/v1/devices/+/desired").is_err());
    }

    #[test]
    fn device_subscribes_only_to_its_desired_and_controller_presence() {
        let a = dev("press-07");
        check_subscribe(&a, &TopicKind::DeviceDesired.for_device("press-07")).unwrap();
        check_subscribe(&a, &topics::controller_presence()).unwrap();
        for filter in [
            "#",
            "+",
            "+/#",
            "edgefleet/#",
            "edgefleet/v1/#",
            "edgefleet/v1/devices/#",
            "edgefleet/v1/devices/+/desired",
            "edgefleet/v1/devices/press-08/desired",
            "edgefleet/v1/devices/press-07/#",
            "edgefleet/v1/devices/press-07/+",
            "edgefleet/v1/devices/press-07/status",
            "edgefleet/v1/devices/press-07/desired/#",
            "edgefleet/v1/devices/press-07/desired/+",
            "+/v1/devices/press-07/desired",
            "edgefleet/+/devices/press-07/desired",
            "edgefleet/v1/+/press-07/desired",
            "edgefleet/v1/controller/#",
            "edgefleet/v1/controller/+",
            "edgefleet/v1/+/presence",
            "$SYS/#",
            "$share/g/edgefleet/v1/devices/press-07/desired",
            "edgefleet/v1/devices/press-07/desired#",
            "edgefleet/v1/devices/press-07/desire+",
            "edgefleet/v1/devices/press-07//desired",
            "edgefleet//v1/devices/press-07/desired",
            "",
        ] {
            let err = check_subscribe(&a, filter).expect_err(filter);
            assert_eq!(err.action, Action::Subscribe);
        }
    }

    #[test]
    fn integrator_reads_the_read_model_only() {
        let i = integ("scada");
        for filter in [
            "edgefleet/v1/devices/+/status",
            "edgefleet/v1/devices/+/presence",
            "edgefleet/v1/devices/+/events",
            "edgefleet/v1/devices/press-07/status",
            "edgefleet/v1/fleet/#",
            "edgefleet/v1/fleet/sites/+/summary",
            "edgefleet/v1/fleet/sites/lyon/summary",
            "edgefleet/v1/fleet/sites/#",
            "edgefleet/v1/fleet",
            "edgefleet/v1/rollouts/+/status",
            "edgefleet/v1/rollouts/3/status",
            "edgefleet/v1/controller/presence",
            "edgefleet/v1/audit/head",
        ] {
            check_subscribe(&i, filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        }
        for filter in [
            "#",
            "+/#",
            "edgefleet/#",
            "edgefleet/v1/#",
            "edgefleet/v1/+/#",
            "edgefleet/v1/devices/#",
            "edgefleet/v1/devices/+/+",
            "edgefleet/v1/devices/+/desired",
            "edgefleet/v1/devices/press-07/desired",
            "edgefleet/v1/devices/press-07/sync",
            "edgefleet/v1/devices/+/sync",
            "edgefleet/v1/devices/press-07/#",
            "edgefleet/v1/devices/+/status/#",
            "edgefleet/v1/+/+/status",
            "edgefleet/v1/rollouts/#",
            "edgefleet/v1/rollouts/+/+",
            "edgefleet/v1/controller/#",
            "edgefleet/v1/audit/#",
            "edgefleet/v1/audit/+",
            "+/v1/fleet/#",
            "$SYS/#",
            "$SYS/broker/clients",
        ] {
            check_subscribe(&i, filter).expect_err(filter);
        }
        for kind in TopicKind::ALL {
            assert!(check_publish(&i, &kind.for_device("press-07")).is_err());
        }
        assert!(check_publish(&i, &topics::site_summary("lyon")).is_err());
    }

    #[test]
    fn covers_handles_wildcards_at_every_position() {
        let yes = [
            ("#", "a"),
            ("#", "a/b/#"),
            ("a/#", "a"),
            ("a/#", "a/b/c"),
            ("a/#", "a/+/#"),
            ("a/+/c", "a/b/c"),
            ("a/+/c", "a/+/c"),
            ("+/+/+", "a/+/c"),
            ("a/b", "a/b"),
            ("a//b", "a//b"),
            ("a/+/b", "a//b"),
            ("$SYS/#", "$SYS/x"),
        ];
        for (g, s) in yes {
            assert!(covers(g, s), "{g} should cover {s}");
        }
        let no = [
            ("a", "a/#"),
            ("a/+", "a/#"),
            ("a/+", "a"),
            ("a/+/c", "a/#"),
            ("a/+/c", "a/b/+"),
            ("a/b", "a/+"),
            ("a/b", "a/b/c"),
            ("a/b/c", "a/b"),
            ("a/+/#", "a"),
            ("a//b", "a/b"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("+/#", "$SYS"),
        ];
        for (g, s) in no {
            assert!(!covers(g, s), "{g} should not cover {s}");
        }
    }

    #[test]
    fn empty_payloads_are_refused_on_state_topics_only() {
        let a = dev("press-07");
        for kind in [TopicKind::DeviceStatus, TopicKind::DevicePresence] {
            assert!(check_payload(&a, &kind.for_device("press-07"), 0).is_err());
            check_payload(&a, &kind.for_device("press-07"), 1).unwrap();
        }
        check_payload(&a, &TopicKind::DeviceEvents.for_device("press-07"), 0).unwrap();
    }

    #[test]
    fn client_ids_cannot_take_over_another_identity() {
        let a = dev("press-07");
        check_client_id(&a, "edgefleet-agent-press-07").unwrap();
        for id in [
            "press-07",
            "edgefleet-agent-press-08",
            "edgefleet-agent-press-07x",
            "edgefleet-controller",
            "",
        ] {
            check_client_id(&a, id).expect_err(id);
        }
        let i = integ("scada");
        for id in ["integrator:scada", "integrator:scada:2"] {
            check_client_id(&i, id).unwrap();
        }
        for id in [
            "integrator:scada/hmi",
            "integrator:scada:#",
            "integrator:scada:+",
            "integrator:scada:\u{7}",
            "integrator:scada2",
            "integrator:scad",
            "integrator:scada.x",
            "scada",
            "edgefleet-agent-scada",
        ] {
            check_client_id(&i, id).expect_err(id);
        }
        // A device whose id is the controller's client id cannot kick the controller.
        check_client_id(&dev("edgefleet-controller"), "edgefleet-controller").unwrap_err();
        let l = Identity::Local("historian".into());
        check_client_id(&l, "historian-1").unwrap();
        for id in ["edgefleet-controller", "edgefleet-agent-press-07", "a/b"] {
            check_client_id(&l, id).expect_err(id);
        }
        // mosquitto 2 clients send an empty id by default: a local user may (the front
        // assigns one, or refuses it without a clean session, MQTT 3.1.3-8).
        check_client_id(&l, "").unwrap();
        let b = Identity::Bridge("paho".into());
        check_client_id(&b, "edgefleet-agent-press-07").unwrap();
        check_client_id(&b, CONTROLLER_CLIENT_ID).unwrap_err();
        check_client_id(&b, &"x".repeat(MAX_CLIENT_ID_BYTES + 1)).unwrap_err();
    }

    #[test]
    fn local_users_stay_outside_the_namespace_unless_bridges() {
        let l = Identity::Local("historian".into());
        check_publish(&l, "plant/line3/temp").unwrap();
        check_subscribe(&l, "plant/#").unwrap();
        check_subscribe(&l, "plant/+/temp").unwrap();
        for topic in [
            TopicKind::DevicePresence.for_device("press-07"),
            topics::controller_presence(),
            "$SYS/x".to_owned(),
        ] {
            check_publish(&l, &topic).expect_err(&topic);
            check_subscribe(&l, &topic).expect_err(&topic);
        }
        // Broad filters are granted: the front drops the deliveries a local user may not
        // read (`LocalGrants::may_read`). Only filters that can match nothing else are not.
        for filter in ["#", "+/v1/devices/+/status", "+", "+/+"] {
            check_subscribe(&l, filter).unwrap();
        }
        for filter in ["$SYS/#", "edgefleet/#", "edgefleet", "$x"] {
            check_subscribe(&l, filter).expect_err(filter);
        }
        let all = LocalGrants::everything();
        assert!(all.may_read("plant/line3/temp"));
        for topic in [
            TopicKind::DeviceStatus.for_device("press-07"),
            "edgefleet".to_owned(),
            "$SYS/x".to_owned(),
            "$TopicA/B".to_owned(),
        ] {
            assert!(!all.may_read(&topic), "{topic}");
        }
        let b = Identity::Bridge("paho".into());
        check_publish(&b, &TopicKind::DeviceDesired.for_device("press-07")).unwrap();
        check_subscribe(&b, "#").unwrap();
        check_subscribe(&b, "$share/historians/plant/#").unwrap();
        check_subscribe(&b, "$TopicA/#").unwrap_err();
        check_subscribe(&b, "$SYS/#").unwrap_err();
        check_publish(&b, "é").unwrap_err();
    }

    #[test]
    fn grants_narrow_a_local_user() {
        let l = Identity::Local("historian".into());
        let g = LocalGrants::new(
            vec!["TopicA/#".into(), "Topic/#".into(), "/#".into()],
            vec!["plant/line3/#".into()],
        )
        .unwrap();
        for filter in ["#", "+/+", "TopicA/+", "TopicA", "+/C", "/+"] {
            g.check_subscribe(&l, filter).expect(filter);
        }
        for filter in ["test/nosubscribe", "plant/#", "Topicx", "test/+", "x/+/y"] {
            g.check_subscribe(&l, filter).expect_err(filter);
        }
        assert!(g.may_read("TopicA"));
        assert!(g.may_read("Topic/C"));
        assert!(!g.may_read("test/nosubscribe"));
        assert!(g.may_read("Topic"));
        assert!(!g.may_read("Topicx/C"));
        g.check_write(&l, "plant/line3/temp").unwrap();
        g.check_write(&l, "plant/line4/temp").unwrap_err();
        for bad in ["edgefleet/#", "$SYS/#", "a/#/b", ""] {
            LocalGrants::new(vec![bad.into()], vec![]).expect_err(bad);
            LocalGrants::new(vec![], vec![bad.into()]).expect_err(bad);
        }
        LocalGrants::new(vec!["a".into(); MAX_GRANT_FILTERS + 1], vec![]).unwrap_err();
        // A read-only user.
        let ro = LocalGrants::new(vec!["#".into()], vec![]).unwrap();
        ro.check_write(&l, "plant/x").unwrap_err();
    }

    #[test]
    fn overlaps_is_symmetric_and_respects_dollar_topics() {
        let yes = [
            ("#", "a"),
            ("a/#", "a"),
            ("a/+", "+/b"),
            ("+/+", "a/b"),
            ("a/b/c", "a/+/#"),
            ("$SYS/#", "$SYS/+"),
            ("a//b", "a/+/b"),
        ];
        let no = [
            ("a", "b"),
            ("a/+", "a"),
            ("a/b", "a/b/c"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a/+/c", "a/b/d"),
        ];
        for (a, b) in yes {
            assert!(overlaps(a, b) && overlaps(b, a), "{a} ~ {b}");
        }
        for (a, b) in no {
            assert!(!overlaps(a, b) && !overlaps(b, a), "{a} !~ {b}");
        }
    }

    /// Shapes rumqttd 0.20 cannot take (see `validate_filter`) are refused for every
    /// identity, whatever its rights.
    #[test]
    fn topics_rumqttd_cannot_handle_are_refused_for_everyone() {
        let everyone = [
            dev("press-07"),
            integ("scada"),
            Identity::Local("l".into()),
            Identity::Bridge("b".into()),
        ];
        for who in &everyone {
            for topic in ["é", "éa/b", "\u{1}a", "a\u{0}", "a/\u{7f}", ""] {
                check_publish(who, topic).expect_err(topic);
                check_subscribe(who, topic).expect_err(topic);
                check_unsubscribe(who, topic).expect_err(topic);
            }
            for filter in ["a/#/b", "a+", "#a", "a/b#"] {
                check_subscribe(who, filter).expect_err(filter);
                check_unsubscribe(who, filter).expect_err(filter);
            }
            check_publish(who, &"a".repeat(MAX_TOPIC_BYTES + 1)).unwrap_err();
        }
        // Non-ASCII after the first character is fine for rumqttd.
        check_publish(&Identity::Local("l".into()), "plant/é").unwrap();
        check_subscribe(&integ("scada"), "edgefleet/v1/devices/+/status").unwrap();
    }

    #[test]
    fn mosquitto_acl_is_stable_and_complete() {
        let acl = mosquitto_acl();
        assert_eq!(acl, mosquitto_acl());
        assert!(
            acl.contains("use_username_as_clientid true"),
            "the client id must be bound to the certificate: {acl}"
        );
        for line in [
            "pattern write edgefleet/v1/devices/%u/status",
            "pattern write edgefleet/v1/devices/%u/presence",
            "pattern write edgefleet/v1/devices/%u/events",
            "pattern write edgefleet/v1/devices/%u/sync",
            "pattern read edgefleet/v1/devices/%u/desired",
            "pattern read edgefleet/v1/controller/presence",
            "# user integrator:<name>",
            "# topic read edgefleet/v1/devices/+/status",
            "# topic read edgefleet/v1/fleet/#",
        ] {
            assert!(acl.lines().any(|l| l == line), "missing {line:?} in\n{acl}");
        }
        assert!(
            !acl.lines()
                .any(|l| !l.starts_with('#') && l.contains("desired") && l.contains('+'))
        );
        let with = mosquitto_acl_with_integrators(&["scada".to_owned()]).unwrap();
        assert!(
            with.contains("\nuser integrator:scada\ntopic read edgefleet/v1/devices/+/status\n")
        );
        assert!(with.contains("topic read edgefleet/v1/rollouts/+/status\n"));
        assert!(with.contains("topic read edgefleet/v1/audit/head\n"));
        assert!(
            !with.contains("pattern read edgefleet/v1/audit/head"),
            "devices have no use for the audit head"
        );
        assert!(!with.contains("topic read edgefleet/v1/devices/+/desired"));
        assert!(mosquitto_acl_with_integrators(&["a b\nuser x".to_owned()]).is_err());
    }
}
