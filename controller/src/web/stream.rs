//! `GET /api/v1/events/stream`: the dashboard's live updates, as Server-Sent Events. One
//! stream per page; the server pushes, the browser never polls.
//!
//! Every 500 ms the stream computes the caller's view of the fleet (tiles of the devices in
//! its sites, the alarm list) and of the 20 newest rollouts, and sends only what changed:
//! - `fleet`: `{full, tiles: [Tile…] (changed or new), removed: [id…], alarms: [AlarmLine…]}`
//!   (the first message is `full`: every tile);
//! - `rollouts`: `{rollouts: [RolloutView…]}` when any of them changed.
//!
//! A quiet fleet costs one comparison per device per half second and no bytes on the wire
//! but a keep-alive comment. The stream ends when the caller's token expires or is revoked
//! (checked every 30 s); `EventSource` then reconnects and gets a 401.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;

use super::tile::{self, AlarmLine, Tile};
use crate::auth::{Auth, Caller};
use crate::core::Controller;
use crate::rollout::engine::RolloutState;
use crate::rollouts::RolloutView;

/// Shortest time between two updates of one stream.
pub const PERIOD: Duration = Duration::from_millis(500);
/// Alarms shown (and sent) at most.
pub const MAX_ALARMS: usize = 100;
/// Rollouts sent on the stream (the newest).
const ROLLOUTS: usize = 20;
const RECHECK_TOKEN: Duration = Duration::from_secs(30);

/// The caller's view of the fleet: tiles sorted by site, area, line, id; the alarms.
pub fn fleet_snapshot(
    ctrl: &Controller,
    caller: &Caller,
    rollouts: &[RolloutView],
) -> (Vec<Tile>, Vec<AlarmLine>) {
    let now = jiff::Timestamp::now();
    let mut tiles = Vec::new();
    let mut alarms = Vec::new();
    for d in ctrl.fleet.devices.iter() {
        if !caller.sees(d.labels.get("site").map(String::as_str)) {
            continue;
        }
        tiles.push(tile::tile(&d, now));
        alarms.extend(tile::device_alarms(&d, now));
    }
    // The newest rollout of each deployment, if it failed, is an alarm until a later one.
    let mut seen = std::collections::HashSet::new();
    for r in rollouts {
        if !seen.insert(r.rollout.deployment.clone()) {
            continue;
        }
        if let RolloutState::Failed { reason, .. } = &r.rollout.state {
            alarms.push(AlarmLine {
                severity: edgefleet_protocol::event::Severity::Error,
                kind: "rollout failed".into(),
                subject: format!("rollout {}", r.id),
                href: format!("/rollouts/{}", r.id),
                since: None,
                message: format!("{}: {reason}", r.rollout.deployment),
            });
        }
    }
    tiles.sort_by(|a, b| {
        (&a.site, &a.area, &a.line, &a.id).cmp(&(&b.site, &b.area, &b.line, &b.id))
    });
    tile::sort_alarms(&mut alarms, MAX_ALARMS);
    (tiles, alarms)
}

/// The newest rollouts the caller may see.
pub fn visible_rollouts(ctrl: &Controller, caller: &Caller, max: usize) -> Vec<RolloutView> {
    let all = match ctrl.rollouts.list(ctrl) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("cannot read rollouts for the dashboard: {e}");
            return Vec::new();
        }
    };
    let mut sites: HashMap<String, Option<String>> = HashMap::new();
    all.into_iter()
        .filter(|r| {
            if !caller.role.scoped() {
                return true;
            }
            let site = sites
                .entry(r.rollout.deployment.clone())
                .or_insert_with(|| {
                    crate::api::site_of_deployment(ctrl, &r.rollout.deployment)
                        .ok()
                        .flatten()
                })
                .clone();
            caller.sees(site.as_deref())
        })
        .take(max)
        .collect()
}

#[derive(Serialize)]
struct FleetUpdate<'a> {
    full: bool,
    tiles: Vec<&'a Tile>,
    removed: Vec<&'a str>,
    alarms: &'a [AlarmLine],
}

/// What one stream remembers of what it sent.
#[derive(Default)]
pub struct Sent {
    started: bool,
    tiles: HashMap<String, Tile>,
    alarms: Vec<AlarmLine>,
    rollouts: String,
}

impl Sent {
    /// The events to send now (none if nothing changed).
    pub fn next(&mut self, ctrl: &Controller, caller: &Caller) -> Vec<Event> {
        let mut out = Vec::new();
        let rollouts = visible_rollouts(ctrl, caller, ROLLOUTS);
        let (tiles, alarms) = fleet_snapshot(ctrl, caller, &rollouts);
        let full = !self.started;
        let changed: Vec<&Tile> = tiles
            .iter()
            .filter(|t| full || self.tiles.get(&t.id) != Some(*t))
            .collect();
        let now: std::collections::HashSet<&str> = tiles.iter().map(|t| t.id.as_str()).collect();
        let removed: Vec<&str> = self
            .tiles
            .keys()
            .map(String::as_str)
            .filter(|id| !now.contains(id))
            .collect();
        if full || !changed.is_empty() || !removed.is_empty() || alarms != self.alarms {
            let update = FleetUpdate {
                full,
                tiles: changed,
                removed,
                alarms: &alarms,
            };
            if let Ok(e) = Event::default().event("fleet").json_data(&update) {
                out.push(e);
            }
        }
        self.tiles = tiles.into_iter().map(|t| (t.id.clone(), t)).collect();
        self.alarms = alarms;
        let text =
            serde_json::to_string(&serde_json::json!({ "rollouts": rollouts })).unwrap_or_default();
        if full || text != self.rollouts {
            out.push(Event::default().event("rollouts").data(text.clone()));
            self.rollouts = text;
        }
        self.started = true;
        out
    }
}

struct StreamState {
    ctrl: Arc<Controller>,
    caller: Caller,
    sent: Sent,
    queue: std::collections::VecDeque<Event>,
    tick: tokio::time::Interval,
    checked: Instant,
}

pub async fn stream(
    State(ctrl): State<Arc<Controller>>,
    auth: Auth,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = StreamState {
        ctrl,
        caller: auth.caller,
        sent: Sent::default(),
        queue: Default::default(),
        tick,
        checked: Instant::now(),
    };
    let s = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.queue.pop_front() {
                return Some((Ok(e), st));
            }
            st.tick.tick().await;
            if st.checked.elapsed() >= RECHECK_TOKEN {
                st.checked = Instant::now();
                let valid = st
                    .ctrl
                    .store()
                    .token_owner(&st.caller.token_digest, crate::auth::now_unix())
                    .map_or(true, |o| o.is_some());
                if !valid {
                    return None;
                }
            }
            let events = st.sent.next(&st.ctrl, &st.caller);
            st.queue.extend(events);
        }
    });
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
