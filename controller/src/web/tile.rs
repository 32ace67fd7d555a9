//! A device as a dashboard tile: one state out of online, degraded, offline (since …),
//! drifted, updating or unknown, shown by colour **and** by an icon and a word; and the
//! fleet's alarm list (offline devices, unhealthy services, drift, failed rollouts) sorted by
//! severity, then age.

use edgefleet_protocol::event::{EventKind, Severity};
use edgefleet_protocol::status::ConvergenceState;
use serde::Serialize;

use edgefleet_domain::device::{Connection, DeviceView};

/// A drift report keeps a device shown as drifted this long (the agent restores it).
const DRIFT_SHOWN_SECS: i64 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TileState {
    Online,
    Degraded,
    Offline,
    Drifted,
    Updating,
    Unknown,
}

impl TileState {
    pub fn as_str(self) -> &'static str {
        match self {
            TileState::Online => "online",
            TileState::Degraded => "degraded",
            TileState::Offline => "offline",
            TileState::Drifted => "drifted",
            TileState::Updating => "updating",
            TileState::Unknown => "unknown",
        }
    }

    fn icon(self) -> &'static str {
        match self {
            TileState::Online => "✔",
            TileState::Degraded => "▲",
            TileState::Offline => "✖",
            TileState::Drifted => "≠",
            TileState::Updating => "⟳",
            TileState::Unknown => "?",
        }
    }
}

/// What a tile shows; the live stream sends exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tile {
    pub id: String,
    pub site: String,
    pub area: String,
    pub line: String,
    pub state: TileState,
    /// Icon and words, e.g. `✖ OFFLINE since 05:40:12`.
    pub text: String,
    /// `rev 3` or `rev 2→3`.
    pub rev: String,
}

fn label(d: &DeviceView, key: &str) -> String {
    d.labels.get(key).cloned().unwrap_or_else(|| "–".into())
}

/// `HH:MM:SS` of an RFC 3339 time (UTC), or the text itself.
pub fn clock(ts: &str) -> String {
    ts.get(11..19).unwrap_or(ts).to_owned()
}

fn recent_drift(d: &DeviceView, now: jiff::Timestamp) -> bool {
    let last_drift = d
        .events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::DriftDetected);
    last_drift
        .and_then(|e| e.ts.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| now.as_second() - t.as_second() < DRIFT_SHOWN_SECS)
}

pub fn state_of(d: &DeviceView, now: jiff::Timestamp) -> TileState {
    match d.connection {
        Connection::Offline => return TileState::Offline,
        Connection::Unknown => return TileState::Unknown,
        Connection::Online => {}
    }
    let s = d.summary();
    let failed = d
        .status
        .as_ref()
        .is_some_and(|st| st.state == ConvergenceState::Failed);
    if failed || s.services_unhealthy > 0 {
        TileState::Degraded
    } else if d.desired.is_some() && !s.converged {
        TileState::Updating
    } else if recent_drift(d, now) {
        TileState::Drifted
    } else {
        TileState::Online
    }
}

pub fn tile(d: &DeviceView, now: jiff::Timestamp) -> Tile {
    let state = state_of(d, now);
    let word = state.as_str().to_uppercase();
    let text = match state {
        TileState::Offline => format!(
            "{} {word} since {}",
            state.icon(),
            d.last_seen.as_deref().map_or("?".into(), clock)
        ),
        _ => format!("{} {word}", state.icon()),
    };
    let desired = d.desired_revision();
    let observed = d.status.as_ref().map_or(0, |s| s.observed_revision);
    let rev = if desired == observed || desired == 0 {
        format!("rev {observed}")
    } else {
        format!("rev {observed}→{desired}")
    };
    Tile {
        id: d.id.clone(),
        site: label(d, "site"),
        area: label(d, "area"),
        line: label(d, "line"),
        state,
        text,
        rev,
    }
}

/// One line of the alarm list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlarmLine {
    pub severity: Severity,
    pub kind: String,
    /// Device id, or `rollout N`.
    pub subject: String,
    /// Where the subject's page is.
    pub href: String,
    pub since: Option<String>,
    pub message: String,
}

/// Alarms of one device: the site summaries' (offline, failed, unhealthy) plus drift.
pub fn device_alarms(d: &DeviceView, now: jiff::Timestamp) -> Vec<AlarmLine> {
    let href = format!("/devices/{}", super::html::seg(&d.id));
    let mut out: Vec<AlarmLine> = edgefleet_domain::sites::alarms(d)
        .into_iter()
        .map(|a| AlarmLine {
            severity: a.severity,
            kind: a.kind,
            subject: a.device,
            href: href.clone(),
            since: a.since,
            message: a.message,
        })
        .collect();
    if d.connection == Connection::Online && recent_drift(d, now) {
        let e = d
            .events
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::DriftDetected);
        out.push(AlarmLine {
            severity: Severity::Warning,
            kind: "drift".into(),
            subject: d.id.clone(),
            href,
            since: e.map(|e| e.ts.clone()),
            message: e.map_or_else(|| "drift detected".into(), |e| e.message.clone()),
        });
    }
    out
}

/// Most severe first, then oldest first; at most `max`.
pub fn sort_alarms(alarms: &mut Vec<AlarmLine>, max: usize) {
    let rank = |s: Severity| match s {
        Severity::Error => 0,
        Severity::Warning => 1,
        Severity::Info => 2,
    };
    alarms.sort_by(|a, b| {
        rank(a.severity)
            .cmp(&rank(b.severity))
            .then_with(|| match (&a.since, &b.since) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| a.subject.cmp(&b.subject))
    });
    alarms.truncate(max);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_says_so_in_words_with_the_time() {
        let mut d = DeviceView::new("press-07");
        d.connection = Connection::Offline;
        d.last_seen = Some("2026-11-27T05:40:12.000Z".into());
        let t = tile(&d, jiff::Timestamp::now());
        assert_eq!(t.state, TileState::Offline);
        assert_eq!(t.text, "✖ OFFLINE since 05:40:12");
        d.connection = Connection::Online;
        assert_eq!(tile(&d, jiff::Timestamp::now()).text, "✔ ONLINE");
    }

    #[test]
    fn alarms_sort_by_severity_then_age() {
        let a = |sev, since: Option<&str>, who: &str| AlarmLine {
            severity: sev,
            kind: "k".into(),
            subject: who.into(),
            href: String::new(),
            since: since.map(str::to_owned),
            message: String::new(),
        };
        let mut v = vec![
            a(Severity::Warning, Some("2026-01-01T00:00:00Z"), "w-old"),
            a(Severity::Error, Some("2026-01-02T00:00:00Z"), "e-new"),
            a(Severity::Error, Some("2026-01-01T00:00:00Z"), "e-old"),
            a(Severity::Error, None, "e-none"),
        ];
        sort_alarms(&mut v, 3);
        let order: Vec<&str> = v.iter().map(|x| x.subject.as_str()).collect();
        assert_eq!(order, vec!["e-old", "e-new", "e-none"]);
    }
}
