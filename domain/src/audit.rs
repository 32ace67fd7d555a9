//! The tamper-evident audit log's records and chain, as pure code: who did what, to what, in
//! which site, and how it ended ([`Entry`], [`Record`]), the hash that chains each record to
//! the previous one ([`chain_hash`]), and the walk that checks a chain ([`ChainWalk`]).
//!
//! Each record carries the hash of the previous one (`prev_hash`; the first record's is
//! [`GENESIS`]) and its own `hash`, SHA-256 over a length-prefixed encoding of every field
//! and `prev_hash`. A walk names the first bad record: a hash that does not match its fields
//! (modified), a gap in `seq` (removed), a `prev_hash` that is not the previous record's hash
//! (removed, replaced or reordered). What it cannot see on its own: the newest records cut
//! off at the end (truncation) — compare the head hash it reports with one recorded
//! elsewhere — and a whole chain recomputed by someone who can write the file. A walk can
//! start from any record already verified ([`ChainWalk::resume`]), so checking a growing log
//! costs only its new records.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

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

impl Entry {
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

/// Which records to list or export.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// RFC 3339 time, or a duration back from now (`2h`).
    pub since: Option<String>,
    pub site: Option<String>,
    /// At most this many (the newest).
    pub limit: Option<u64>,
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
