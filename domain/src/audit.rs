//! The tamper-evident audit log's records and chain, as pure code: who did what, to what, in
//! which site, and how it ended ([`Entry`], [`Record`]), the hash that chains each record to
//! the previous one ([`chain_hash`]), and the walk that checks a chain ([`ChainWalk`]).
//!
//! Each record carries the hash of the previous one (`prev_hash`; the first record's is
//! [`GENESIS`]) and its own `hash`, SHA-256 over a length-prefixed encoding of every field
//! and `prev_hash`. A walk names the first bad record: a hash that does not match its fields
//! (modified), a gap in `seq` (removed), a `prev_hash` that is not the previous record's hash
//! (removed, replaced or reordered). What it cannot see on its own: the newest records cut
//! off at the end (truncation) and a whole chain recomputed by someone who can write the
//! file — for those, a head saved elsewhere (signed by the controller:
//! `edgefleet_protocol::audit_head`) is compared with the chain ([`check_saved_head`]). A walk can
//! start from any record already verified ([`ChainWalk::resume`]), so checking a growing log
//! costs only its new records.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest text field (actor, role, action, target, site) a record keeps, in bytes; longer
/// values are cut (on a character boundary) and marked with `…`.
pub const MAX_FIELD_BYTES: usize = 256;
/// Longest string inside a record's detail, in bytes (device event messages, paths).
pub const MAX_DETAIL_STRING_BYTES: usize = 512;
/// Longest detail a record keeps, as compact JSON; a longer one is replaced by its head.
pub const MAX_DETAIL_BYTES: usize = 4096;

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "--since '{0}': give an RFC 3339 time (2026-03-01T08:00:00Z) or a duration back from now (2h, 7d)"
)]
pub struct SinceError(pub String);

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// Refused before anything changed (authentication, role, site scope, bad request).
    Refused,
    /// Tried and failed (server error, device-reported failure).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    /// The outcome of an HTTP response status.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            s if s < 400 => Outcome::Ok,
            s if s < 500 => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }
}

/// What to append: everything but the sequence number, time and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// A username, `device:<id>`, `system`, or `anonymous` (no valid credentials).
    pub actor: String,
    /// The actor's role (`admin`, `operator`, …, `device`, `system`, or empty).
    pub role: String,
    /// `deployment.apply`, `rollout.pause`, `rollout.transition`, `device.outcome`, `auth.login`…
    pub action: String,
    pub target: String,
    /// The site the target belongs to, or empty.
    pub site: String,
    pub outcome: Outcome,
    /// The HTTP status of an API call.
    pub status: Option<u16>,
    /// Extra facts (never a password or token).
    pub detail: Value,
}

/// `v` cut to at most `max` bytes on a character boundary, `…` marking a cut.
pub fn cap_to(v: &str, max: usize) -> String {
    if v.len() <= max {
        return v.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &v[..end])
}

/// A text field as a record keeps it ([`MAX_FIELD_BYTES`]).
pub fn cap_field(v: &str) -> String {
    cap_to(v, MAX_FIELD_BYTES)
}

fn cap_value(v: &mut Value) {
    match v {
        Value::String(s) if s.len() > MAX_DETAIL_STRING_BYTES => {
            *s = cap_to(s, MAX_DETAIL_STRING_BYTES);
        }
        Value::Array(a) => a.iter_mut().for_each(cap_value),
        Value::Object(o) => o.values_mut().for_each(cap_value),
        _ => {}
    }
}

impl Entry {
    /// The entry with every field within the caps: untrusted input (paths, user names,
    /// device messages) cannot make a record large.
    pub fn capped(mut self) -> Entry {
        for f in [
            &mut self.actor,
            &mut self.role,
            &mut self.action,
            &mut self.target,
            &mut self.site,
        ] {
            if f.len() > MAX_FIELD_BYTES {
                *f = cap_field(f);
            }
        }
        cap_value(&mut self.detail);
        let len = serde_json::to_string(&self.detail).map_or(0, |t| t.len());
        if len > MAX_DETAIL_BYTES {
            let text = self.detail.to_string();
            self.detail = serde_json::json!({
                "truncated": cap_to(&text, MAX_DETAIL_BYTES / 2),
                "bytes": len,
            });
        }
        self
    }

    /// What repeats of a refusal have in common: who, what, and how it ended (not the
    /// target: a flood varies paths and names).
    pub fn repeat_key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{:?}",
            self.actor, self.role, self.action, self.site, self.status
        )
    }

    pub fn system(action: &str, target: &str, site: &str, outcome: Outcome, detail: Value) -> Self {
        Entry {
            actor: "system".into(),
            role: "system".into(),
            action: action.into(),
            target: target.into(),
            site: site.into(),
            outcome,
            status: None,
            detail,
        }
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub seq: u64,
    pub ts: String,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub site: String,
    pub outcome: String,
    pub status: Option<u16>,
    /// The detail as stored (compact JSON text; the hash covers exactly this text).
    #[serde(serialize_with = "detail_as_json")]
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

fn detail_as_json<S: serde::Serializer>(d: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<Value>(d) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(d),
    }
}

impl Record {
    /// The hash this record's fields and `prev_hash` give.
    pub fn computed_hash(&self) -> String {
        chain_hash(
            self.seq,
            &self.ts,
            &[
                &self.actor,
                &self.role,
                &self.action,
                &self.target,
                &self.site,
                &self.outcome,
            ],
            self.status,
            &self.detail,
            &self.prev_hash,
        )
    }
}

/// SHA-256 (hex) over `seq`, `ts`, the text fields, `status`, `detail` and `prev_hash`, each
/// written as `<byte length>:<bytes>\n` so no two different records encode alike.
pub fn chain_hash(
    seq: u64,
    ts: &str,
    text: &[&str; 6],
    status: Option<u16>,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    let mut field = |v: &str| {
        h.update(format!("{}:", v.len()).as_bytes());
        h.update(v.as_bytes());
        h.update(b"\n");
    };
    field("edgefleet-audit-v1");
    field(&seq.to_string());
    field(ts);
    for t in text {
        field(t);
    }
    field(&status.map(|s| s.to_string()).unwrap_or_default());
    field(detail);
    field(prev_hash);
    hex::encode(h.finalize())
}

/// Aggregates repeated refusals: the first [`REPEATS_IN_FULL`] of a kind
/// ([`Entry::repeat_key`]) in an interval are recorded as they are, later ones only counted; at the end of the interval one record
/// says how many came and the last target. Memory is bounded: past `max_keys` kinds, new
/// kinds share one catch-all count.
#[derive(Debug)]
pub struct Repeats {
    interval: std::time::Duration,
    max_keys: usize,
    open: std::collections::HashMap<String, Repeat>,
}

#[derive(Debug)]
struct Repeat {
    since: std::time::Instant,
    first: Entry,
    written: u64,
    count: u64,
    last_target: String,
}

/// Refusals of one kind recorded in full per interval before they are only counted.
pub const REPEATS_IN_FULL: u64 = 10;

/// The catch-all kind once [`Repeats`] holds `max_keys` kinds.
const OTHER_REFUSALS: &str = "\u{0}other";

impl Repeats {
    pub fn new(interval: std::time::Duration, max_keys: usize) -> Self {
        Repeats {
            interval,
            max_keys,
            open: std::collections::HashMap::new(),
        }
    }

    /// Takes a refusal: returns it if it is to be recorded now (the first of its kind in
    /// the interval), `None` if it was counted.
    pub fn admit(&mut self, e: Entry, now: std::time::Instant) -> Option<Entry> {
        let mut key = e.repeat_key();
        if !self.open.contains_key(&key) && self.open.len() >= self.max_keys {
            key = OTHER_REFUSALS.to_owned();
        }
        match self.open.get_mut(&key) {
            Some(r) if r.written < REPEATS_IN_FULL && key != OTHER_REFUSALS => {
                r.written += 1;
                Some(e)
            }
            Some(r) => {
                r.count += 1;
                r.last_target = e.target;
                None
            }
            None => {
                self.open.insert(
                    key,
                    Repeat {
                        since: now,
                        first: e.clone(),
                        written: 1,
                        count: 0,
                        last_target: String::new(),
                    },
                );
                Some(e)
            }
        }
    }

    /// Closes the intervals that ended by `now` (all with `all`): one summary record per
    /// kind that repeated.
    pub fn due(&mut self, now: std::time::Instant, all: bool) -> Vec<Entry> {
        let interval = self.interval;
        let ended: Vec<String> = self
            .open
            .iter()
            .filter(|(_, r)| all || now.duration_since(r.since) >= interval)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in ended {
            let Some(r) = self.open.remove(&k) else {
                continue;
            };
            if r.count == 0 {
                continue;
            }
            let mut e = r.first;
            if k == OTHER_REFUSALS {
                e.actor = "various".into();
                e.action = "various".into();
            }
            e.detail = serde_json::json!({
                "repeated": r.count,
                "interval_secs": now.duration_since(r.since).as_secs(),
                "last_target": r.last_target,
                "note": "more refusals of this actor and action in the interval, counted, not recorded one by one",
            });
            e.target = String::new();
            out.push(e.capped());
        }
        out
    }
}

/// Which records to list or export.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// RFC 3339 time, or a duration back from now (`2h`).
    pub since: Option<String>,
    pub site: Option<String>,
    /// At most this many (the newest).
    pub limit: Option<u64>,
}

/// The time `age` ago, as a stored timestamp (compares as text with a record's `ts`).
pub fn stored_ts_ago(age: std::time::Duration) -> String {
    let at = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(at.max(SystemTime::UNIX_EPOCH)).to_string()
}

/// `--since`: an RFC 3339 time or a humantime duration back from now, as a stored timestamp.
pub fn parse_since(s: &str) -> Result<String, SinceError> {
    let at = if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        SystemTime::try_from(ts).map_err(|_| SinceError(s.into()))?
    } else if let Ok(d) = humantime::parse_duration(s) {
        SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    } else {
        return Err(SinceError(s.into()));
    };
    Ok(humantime::format_rfc3339_millis(at.max(SystemTime::UNIX_EPOCH)).to_string())
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub records: u64,
    /// The newest record: record its hash elsewhere to detect a truncation later.
    pub head_seq: u64,
    pub head_hash: String,
    pub first_bad: Option<BadRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRecord {
    pub seq: u64,
    pub reason: String,
}

/// Checks a chain record by record, oldest first. Feed it records in `seq` order with
/// [`ChainWalk::check`]; the first bad one stops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainWalk {
    /// The next `seq` expected.
    expected: u64,
    /// The hash the next record's `prev_hash` must equal.
    prev: String,
    /// Records checked by this walk (not counting where it resumed from).
    checked: u64,
}

impl Default for ChainWalk {
    fn default() -> Self {
        ChainWalk::resume(0, GENESIS)
    }
}

impl ChainWalk {
    /// A walk continuing after record `seq` whose hash is `hash` (0 and [`GENESIS`]: the start).
    pub fn resume(seq: u64, hash: &str) -> Self {
        ChainWalk {
            expected: seq + 1,
            prev: hash.to_owned(),
            checked: 0,
        }
    }

    /// The last good record: its `seq` and `hash` (0 and [`GENESIS`] before any).
    pub fn head(&self) -> (u64, &str) {
        (self.expected - 1, &self.prev)
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Checks the next record; on success it becomes the head.
    pub fn check(&mut self, r: &Record) -> Result<(), BadRecord> {
        let expected = self.expected;
        if r.seq != expected {
            let reason = if r.seq > expected {
                let missing = if r.seq - expected == 1 {
                    format!("record {expected} is missing")
                } else {
                    format!("records {expected} to {} are missing", r.seq - 1)
                };
                format!("{missing} (removed from the log)")
            } else {
                format!(
                    "sequence number {} out of order (expected {expected})",
                    r.seq
                )
            };
            return Err(BadRecord {
                seq: expected,
                reason,
            });
        }
        if r.prev_hash != self.prev {
            return Err(BadRecord {
                seq: r.seq,
                reason: format!(
                    "prev_hash does not match the hash of record {}: a record before it was modified and rehashed, replaced or reordered",
                    r.seq.saturating_sub(1)
                ),
            });
        }
        if r.computed_hash() != r.hash {
            return Err(BadRecord {
                seq: r.seq,
                reason: "hash mismatch: the record was modified after it was written".into(),
            });
        }
        self.prev = r.hash.clone();
        self.expected += 1;
        self.checked += 1;
        Ok(())
    }

    /// The verification this walk amounts to, `records` being how many records it covers.
    pub fn verification(&self, records: u64, first_bad: Option<BadRecord>) -> Verification {
        let (head_seq, head_hash) = self.head();
        Verification {
            ok: first_bad.is_none(),
            records,
            head_seq,
            head_hash: head_hash.to_owned(),
            first_bad,
        }
    }
}

/// `action` of a retention checkpoint: a record whose detail is the signed head
/// (`edgefleet_protocol::audit_head`) of the record right before it. Records before a
/// checkpoint may be pruned; the walk then starts from it ([`walk_from`]).
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";

/// Where a walk over a chain whose oldest record is `first` starts: at the genesis when
/// `first` is record 1; otherwise `first` must be a retention checkpoint whose signed head
/// (checked with `key`, the controller's public key) names the record before it, with
/// exactly `first`'s `prev_hash`. The walk returned still has to check `first` itself.
pub fn walk_from(
    first: &Record,
    key: Option<&edgefleet_protocol::signing::VerifyingKey>,
) -> Result<ChainWalk, BadRecord> {
    if first.seq <= 1 {
        return Ok(ChainWalk::default());
    }
    let bad = |reason: String| BadRecord {
        seq: first.seq,
        reason,
    };
    if first.action != CHECKPOINT_ACTION {
        let missing = if first.seq == 2 {
            "record 1 is missing".to_owned()
        } else {
            format!("records 1 to {} are missing", first.seq - 1)
        };
        return Err(BadRecord {
            seq: 1,
            reason: format!(
                "{missing} (removed from the log; pruning keeps a signed checkpoint first, and record {} is none)",
                first.seq
            ),
        });
    }
    let Some(key) = key else {
        return Err(bad(
            "the log starts at a retention checkpoint, which cannot be checked without the controller's public key".into(),
        ));
    };
    let head = edgefleet_protocol::audit_head::verify(key, first.detail.as_bytes())
        .map_err(|e| bad(format!("the retention checkpoint is not valid: {e}")))?;
    if head.seq + 1 != first.seq || head.hash != first.prev_hash {
        return Err(bad(format!(
            "the retention checkpoint vouches for record {} with hash {}, not for the record before it (#{} with hash {})",
            head.seq,
            head.hash,
            first.seq - 1,
            first.prev_hash
        )));
    }
    Ok(ChainWalk::resume(first.seq - 1, &first.prev_hash))
}

/// Whether the chain still holds a head saved earlier (record `seq` with hash `hash`, from a
/// signed head already checked): `found` is record `seq`'s hash now (`None`: no such record),
/// `first_seq` and `head_seq` the oldest and newest records' `seq` now (the oldest is above 1
/// after retention pruned the log). `None` when it holds; otherwise the record that betrays
/// the cut or the rewrite. A head behind the retention checkpoint can no longer be checked,
/// which is a failure too: check against a newer saved head.
pub fn check_saved_head(
    seq: u64,
    hash: &str,
    found: Option<&str>,
    first_seq: u64,
    head_seq: u64,
) -> Option<BadRecord> {
    if seq == 0 {
        // The empty log's head: every chain starts after it.
        return (hash != GENESIS).then(|| BadRecord {
            seq,
            reason: "the saved head of an empty log names a hash other than the genesis hash"
                .into(),
        });
    }
    let reason = match found {
        Some(h) if h == hash => return None,
        Some(h) => format!(
            "rewritten: record {seq}'s hash differs from the saved head (saved {hash}, now {h}): the chain was rewritten and rehashed from there, or before"
        ),
        None if head_seq < seq => format!(
            "truncated: the saved head seq {seq} is beyond the current head {head_seq}: the newest records were cut off"
        ),
        None if seq < first_seq => format!(
            "pruned: the saved head seq {seq} is behind the log's retention checkpoint (#{first_seq}), so it can no longer be checked: check against a newer saved head"
        ),
        None => format!("removed: record {seq} of the saved head is gone from the log"),
    };
    Some(BadRecord { seq, reason })
}

/// The audit record of a device-reported outcome (`converged`, `desired_rejected`, `failed`,
/// `drift_detected`), or `None` for progress events (pulling, started, healthy…).
pub fn device_outcome(e: &edgefleet_protocol::event::DeviceEvent, site: &str) -> Option<Entry> {
    use edgefleet_protocol::event::EventKind;
    let outcome = match e.kind {
        EventKind::Converged => Outcome::Ok,
        EventKind::DesiredRejected | EventKind::SecurityRejected => Outcome::Refused,
        EventKind::Failed | EventKind::DriftDetected => Outcome::Failed,
        _ => return None,
    };
    let kind = serde_json::to_value(e.kind).unwrap_or_default();
    Some(Entry {
        actor: format!("device:{}", e.device),
        role: "device".into(),
        action: "device.outcome".into(),
        target: e.device.clone(),
        site: site.into(),
        outcome,
        status: None,
        detail: serde_json::json!({
            "kind": kind, "revision": e.revision, "stack": e.stack, "service": e.service,
            "message": e.message, "device_ts": e.ts,
        }),
    })
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    fn refused(actor: &str, target: &str) -> Entry {
        Entry {
            actor: actor.into(),
            role: String::new(),
            action: "api.read".into(),
            target: target.into(),
            site: String::new(),
            outcome: Outcome::Refused,
            status: Some(401),
            detail: serde_json::json!({ "path": target }),
        }
    }

    #[test]
    fn untrusted_fields_are_capped_on_character_boundaries() {
        let long = "é".repeat(40_000);
        let e = refused(&long, &long).capped();
        assert!(e.actor.len() <= MAX_FIELD_BYTES && e.actor.ends_with('…'));
        assert!(e.target.len() <= MAX_FIELD_BYTES);
        let d = e.detail.to_string();
        assert!(d.len() <= MAX_DETAIL_STRING_BYTES + 32, "{}", d.len());
        let many: Vec<String> = (0..1000)
            .map(|i| format!("{i}{}", "x".repeat(400)))
            .collect();
        let mut e = refused("a", "b");
        e.detail = serde_json::json!({ "list": many });
        let e = e.capped();
        assert!(
            e.detail.to_string().len() <= MAX_DETAIL_BYTES,
            "{}",
            e.detail
        );
        assert_eq!(cap_to("short", 10), "short");
    }

    #[test]
    fn repeated_refusals_become_one_record_per_interval() {
        let t = std::time::Instant::now();
        let mut r = Repeats::new(std::time::Duration::from_secs(60), 2);
        for i in 0..REPEATS_IN_FULL {
            let kept = r.admit(refused("anonymous", &format!("/first{i}")), t);
            assert!(kept.is_some(), "the first ones are kept");
        }
        for i in 0..9_999 {
            assert!(r.admit(refused("anonymous", &format!("/{i}")), t).is_none());
        }
        assert!(r.admit(refused("bob", "/x"), t).is_some(), "another actor");
        assert!(
            r.admit(refused("eve", "/y"), t).is_some(),
            "first of the catch-all"
        );
        assert!(
            r.admit(refused("mallory", "/z"), t).is_none(),
            "counted in the catch-all"
        );
        assert!(
            r.due(t + std::time::Duration::from_secs(59), false)
                .is_empty()
        );
        let out = r.due(t + std::time::Duration::from_secs(60), false);
        assert_eq!(out.len(), 2, "{out:?}");
        let anon = out.iter().find(|e| e.actor == "anonymous").unwrap();
        assert_eq!(anon.detail["repeated"], 9_999);
        assert_eq!(anon.detail["last_target"], "/9998");
        let other = out.iter().find(|e| e.actor == "various").unwrap();
        assert_eq!(other.detail["repeated"], 1);
        assert!(
            r.admit(refused("anonymous", "/a"), t).is_some(),
            "a new interval"
        );
    }
}

#[cfg(test)]
mod saved_head_tests {
    use super::*;

    #[test]
    fn a_saved_head_names_truncation_rewrite_and_removal() {
        let h = "a".repeat(64);
        assert_eq!(check_saved_head(5, &h, Some(&h), 1, 9), None);
        assert_eq!(check_saved_head(5, &h, Some(&h), 1, 5), None);
        let cut = check_saved_head(15, &h, None, 1, 5).expect("truncation");
        assert_eq!(cut.seq, 15);
        assert!(
            cut.reason
                .starts_with("truncated: the saved head seq 15 is beyond the current head 5"),
            "{cut:?}"
        );
        let other = "b".repeat(64);
        let rewritten = check_saved_head(5, &h, Some(&other), 1, 9).expect("rewrite");
        assert!(
            rewritten
                .reason
                .starts_with("rewritten: record 5's hash differs from the saved head"),
            "{rewritten:?}"
        );
        let gone = check_saved_head(5, &h, None, 1, 9).expect("removal");
        assert!(gone.reason.starts_with("removed"), "{gone:?}");
        let pruned = check_saved_head(5, &h, None, 7, 9).expect("pruned");
        assert!(pruned.reason.starts_with("pruned"), "{pruned:?}");
        assert_eq!(check_saved_head(0, GENESIS, None, 1, 0), None);
        assert!(check_saved_head(0, &h, None, 1, 3).is_some());
    }
}
