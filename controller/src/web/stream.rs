//! `GET /api/v1/events/stream`: the dashboard's live updates, as Server-Sent Events. One
//! stream per page; the server pushes, the browser never polls.
//!
//! Every 500 ms the stream looks at what changed since its last look, and sends only that:
//! - `fleet`: `{full, tiles: [Tile…] (changed or new), removed: [id…], alarms: [AlarmLine…]}`
//!   (the first message is `full`: every tile). It asks the fleet for the devices changed
//!   since its last change number (a cost of what changed, not of the fleet's size), plus the
//!   few devices it shows as drifted, whose state ends with time.
//! - `rollouts`: `{rollouts: [RolloutView…]}` when the rollouts' change counter moved (they
//!   are kept in memory by the rollouts service; the store is not read to learn that nothing
//!   changed).
//!
//! A quiet fleet costs no store read and no bytes on the wire but a keep-alive comment. The
//! stream ends when the caller's token expires or is revoked (checked every 30 s);
//! `EventSource` then reconnects and gets a 401.
//!
//! One user holds at most [`MAX_STREAMS_PER_USER`] streams at once ([`Slots`]); another is
//! refused with 429 and `Retry-After`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use edgefleet_domain::access::Caller;
use edgefleet_domain::rollout::engine::RolloutState;
use edgefleet_domain::rollout::view::RolloutView;
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::watch;

use super::tile::{self, AlarmLine, Tile, TileState};
use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::state::ApiState;
use crate::services::deployments::Deployments;
use crate::services::fleet::Fleet;
use crate::services::rollouts::Rollouts;

/// Shortest time between two updates of one stream.
pub const PERIOD: Duration = Duration::from_millis(500);
/// Alarms shown (and sent) at most.
pub const MAX_ALARMS: usize = 100;
/// Rollouts sent on the stream (the newest).
const ROLLOUTS: usize = 20;
const RECHECK_TOKEN: Duration = Duration::from_secs(30);
/// Open streams one user may hold (a few browser tabs); each costs a task and a read every
/// 500 ms.
pub const MAX_STREAMS_PER_USER: usize = 16;

/// Open streams per user.
#[derive(Debug, Default)]
pub struct Slots {
    open: parking_lot::Mutex<HashMap<String, usize>>,
}

/// One open stream; frees its slot when the stream is dropped.
pub struct Slot {
    slots: std::sync::Arc<Slots>,
    user: String,
}

impl Slots {
    /// A slot for `user`, unless they hold [`MAX_STREAMS_PER_USER`] already.
    pub fn take(self: &std::sync::Arc<Self>, user: &str) -> Option<Slot> {
        let mut open = self.open.lock();
        let n = open.entry(user.to_owned()).or_insert(0);
        if *n >= MAX_STREAMS_PER_USER {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// The alarms of failed rollouts: the newest rollout of each deployment, if it failed, is an
/// alarm until a later one.
fn rollout_alarms(rollouts: &[RolloutView]) -> Vec<AlarmLine> {
    let mut seen = HashSet::new();
    let mut alarms = Vec::new();
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
    alarms
}

fn sort_tiles(tiles: &mut [Tile]) {
    tiles.sort_by(|a, b| {
        (&a.site, &a.area, &a.line, &a.id).cmp(&(&b.site, &b.area, &b.line, &b.id))
    });
}

/// The caller's view of the fleet: tiles sorted by site, area, line, id; the alarms.
pub fn fleet_snapshot(
    fleet: &Fleet,
    caller: &Caller,
    rollouts: &[RolloutView],
) -> (Vec<Tile>, Vec<AlarmLine>) {
    let now = jiff::Timestamp::now();
    let mut tiles = Vec::new();
    let mut alarms = Vec::new();
    for d in fleet.devices.iter() {
        if !caller.sees(d.labels.get("site").map(String::as_str)) {
            continue;
        }
        tiles.push(tile::tile(&d, now));
        alarms.extend(tile::device_alarms(&d, now));
    }
    alarms.extend(rollout_alarms(rollouts));
    sort_tiles(&mut tiles);
    tile::sort_alarms(&mut alarms, MAX_ALARMS);
    (tiles, alarms)
}

/// The newest rollouts the caller may see (from memory; the sites of their deployments
/// from the store's reader, each once).
pub async fn visible_rollouts(
    rollouts: &Rollouts,
    deployments: &Deployments,
    caller: &Caller,
    max: usize,
) -> Vec<RolloutView> {
    let recent = rollouts.recent(if caller.role.scoped() {
        crate::services::rollouts::RECENT
    } else {
        max
    });
    if !caller.role.scoped() {
        return recent;
    }
    let sites = match deployments
        .sites_of(
            recent
                .iter()
                .map(|r| r.rollout.deployment.clone())
                .collect(),
        )
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot read deployment sites for the dashboard: {e}");
            return Vec::new();
        }
    };
    recent
        .into_iter()
        .filter(|r| {
            caller.sees(
                sites
                    .get(&r.rollout.deployment)
                    .cloned()
                    .flatten()
                    .as_deref(),
            )
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
pub struct Sent {
    started: bool,
    /// The fleet's change number at the last look.
    seq: u64,
    tiles: HashMap<String, Tile>,
    device_alarms: HashMap<String, Vec<AlarmLine>>,
    rollout_alarms: Vec<AlarmLine>,
    alarms: Vec<AlarmLine>,
    rollouts: watch::Receiver<u64>,
    rollouts_text: String,
}

impl Sent {
    pub fn new(rollouts: &Rollouts) -> Self {
        Sent {
            started: false,
            seq: 0,
            tiles: HashMap::new(),
            device_alarms: HashMap::new(),
            rollout_alarms: Vec::new(),
            alarms: Vec::new(),
            rollouts: rollouts.subscribe(),
            rollouts_text: String::new(),
        }
    }

    /// The events to send now (none if nothing changed).
    pub async fn next(&mut self, state: &ApiState, caller: &Caller) -> Vec<Event> {
        let mut out = Vec::new();
        let full = !self.started;
        let rollouts_changed = full || self.rollouts.has_changed().unwrap_or(false);
        let rollouts = if rollouts_changed {
            self.rollouts.mark_unchanged();
            Some(visible_rollouts(&state.rollouts, &state.deployments, caller, ROLLOUTS).await)
        } else {
            None
        };
        let now = jiff::Timestamp::now();
        let (seq, mut ids) = if full {
            (state.fleet.change_seq(), state.fleet.ids())
        } else {
            state.fleet.changed_since(self.seq)
        };
        self.seq = seq;
        // A drifted tile turns back to online with time alone.
        ids.extend(
            self.tiles
                .values()
                .filter(|t| t.state == TileState::Drifted)
                .map(|t| t.id.clone()),
        );
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let mut alarms_changed = full;
        for id in ids.into_iter().collect::<HashSet<_>>() {
            let seen = state.fleet.devices.get(&id).and_then(|d| {
                caller
                    .sees(d.labels.get("site").map(String::as_str))
                    .then(|| (tile::tile(&d, now), tile::device_alarms(&d, now)))
            });
            match seen {
                Some((t, a)) => {
                    if self.device_alarms.get(&id) != Some(&a) {
                        alarms_changed = true;
                        self.device_alarms.insert(id.clone(), a);
                    }
                    if full || self.tiles.get(&id) != Some(&t) {
                        changed.push(t.clone());
                    }
                    self.tiles.insert(id, t);
                }
                None => {
                    if self.tiles.remove(&id).is_some() {
                        removed.push(id.clone());
                    }
                    alarms_changed |= self.device_alarms.remove(&id).is_some();
                }
            }
        }
        if let Some(r) = &rollouts {
            let a = rollout_alarms(r);
            if a != self.rollout_alarms {
                self.rollout_alarms = a;
                alarms_changed = true;
            }
        }
        if alarms_changed {
            let mut all: Vec<AlarmLine> = self
                .device_alarms
                .values()
                .flatten()
                .chain(self.rollout_alarms.iter())
                .cloned()
                .collect();
            tile::sort_alarms(&mut all, MAX_ALARMS);
            alarms_changed = all != self.alarms;
            self.alarms = all;
        }
        if full || !changed.is_empty() || !removed.is_empty() || alarms_changed {
            sort_tiles(&mut changed);
            let update = FleetUpdate {
                full,
                tiles: changed.iter().collect(),
                removed: removed.iter().map(String::as_str).collect(),
                alarms: &self.alarms,
            };
            if let Ok(e) = Event::default().event("fleet").json_data(&update) {
                out.push(e);
            }
        }
        if let Some(r) = rollouts {
            let text =
                serde_json::to_string(&serde_json::json!({ "rollouts": r })).unwrap_or_default();
            if full || text != self.rollouts_text {
                out.push(Event::default().event("rollouts").data(text.clone()));
                self.rollouts_text = text;
            }
        }
        self.started = true;
        out
    }
}

struct StreamState {
    state: ApiState,
    caller: Caller,
    sent: Sent,
    queue: std::collections::VecDeque<Event>,
    tick: tokio::time::Interval,
    checked: Instant,
    _slot: Slot,
}

impl StreamState {
    /// The next event to send; `None` ends the stream (the token is no longer valid).
    async fn step(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            self.tick.tick().await;
            if self.checked.elapsed() >= RECHECK_TOKEN {
                self.checked = Instant::now();
                let digest = self.caller.token_digest.clone();
                let valid = self.state.users.token_valid(&digest).await.unwrap_or(true);
                if !valid {
                    return None;
                }
            }
            let events = self.sent.next(&self.state, &self.caller).await;
            self.queue.extend(events);
        }
    }
}

pub async fn stream(
    State(state): State<ApiState>,
    axum::Extension(slots): axum::Extension<std::sync::Arc<Slots>>,
    auth: Auth,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = slots.take(auth.username()).ok_or_else(|| {
        ApiError::TooMany(
            format!(
                "'{}' has {MAX_STREAMS_PER_USER} live streams open already; close some dashboard tabs",
                auth.username()
            ),
            5,
        )
    })?;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let st = StreamState {
        sent: Sent::new(&state.rollouts),
        state,
        caller: auth.caller,
        queue: Default::default(),
        tick,
        checked: Instant::now(),
        _slot: slot,
    };
    let s = futures_util::stream::unfold(st, |mut st| async move {
        let event = st.step().await?;
        Some((Ok(event), st))
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
