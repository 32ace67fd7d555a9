//! The tamper-evident audit log: who did what, to what, in which site, and how it ended.
//!
//! One append-only table (`audit`, store migration 4). Each record carries the hash of the
//! previous one (`prev_hash`; the first record's is [`GENESIS`]) and its own `hash`, SHA-256
//! over a length-prefixed encoding of every field and `prev_hash` ([`chain_hash`]). Appends
//! are serialized: they happen under the controller's store lock, in an `IMMEDIATE` SQLite
//! transaction that reads the head and writes after it, so the chain never forks.
//!
//! [`verify`] walks the chain from the start and names the first bad record: a hash that does
//! not match its fields (modified), a gap in `seq` (removed), a `prev_hash` that is not the
//! previous record's hash (removed, replaced or reordered). What it cannot see on its own:
//! the newest records cut off at the end (truncation) — compare the head hash it prints with
//! one recorded elsewhere — and a whole chain recomputed by someone who can write the file.

use std::fmt::Write as _;
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Error)]
pub enum AuditError {
    #[error(
        "--since '{0}': give an RFC 3339 time (2026-03-01T08:00:00Z) or a duration back from now (2h, 7d)"
    )]
    Since(String),
    #[error("unknown export format '{0}': use csv or json")]
    Format(String),
    #[error("audit log: {0}")]
    Sql(#[from] rusqlite::Error),
}

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
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Appends entries in order, in one transaction, after the current head. Returns the last
/// sequence number written.
pub fn append(conn: &mut Connection, entries: &[Entry]) -> Result<u64, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let head: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (mut seq, mut prev) = head
        .map(|(s, h)| (u64::try_from(s).unwrap_or(0), h))
        .unwrap_or((0, GENESIS.to_owned()));
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO audit (seq, ts, actor, role, action, target, site, outcome, status, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for e in entries {
            seq += 1;
            let ts = edgefleet_protocol::now_rfc3339();
            let detail = e.detail.to_string();
            let outcome = e.outcome.as_str();
            let hash = chain_hash(
                seq,
                &ts,
                &[&e.actor, &e.role, &e.action, &e.target, &e.site, outcome],
                e.status,
                &detail,
                &prev,
            );
            ins.execute(params![
                i(seq),
                ts,
                e.actor,
                e.role,
                e.action,
                e.target,
                e.site,
                outcome,
                e.status,
                detail,
                prev,
                hash
            ])?;
            prev = hash;
        }
    }
    tx.commit()?;
    Ok(seq)
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
        ts: r.get(1)?,
        actor: r.get(2)?,
        role: r.get(3)?,
        action: r.get(4)?,
        target: r.get(5)?,
        site: r.get(6)?,
        outcome: r.get(7)?,
        status: r.get(8)?,
        detail: r.get(9)?,
        prev_hash: r.get(10)?,
        hash: r.get(11)?,
    })
}

const COLUMNS: &str =
    "seq, ts, actor, role, action, target, site, outcome, status, detail, prev_hash, hash";

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
pub fn parse_since(s: &str) -> Result<String, AuditError> {
    let at = if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        SystemTime::try_from(ts).map_err(|_| AuditError::Since(s.into()))?
    } else if let Ok(d) = humantime::parse_duration(s) {
        SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    } else {
        return Err(AuditError::Since(s.into()));
    };
    Ok(humantime::format_rfc3339_millis(at.max(SystemTime::UNIX_EPOCH)).to_string())
}

/// Records matching the filter, oldest first (with `limit`, the newest `limit` of them).
pub fn list(conn: &Connection, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let since = filter.since.as_deref().map(parse_since).transpose()?;
    let limit = filter.limit.map_or(-1, i);
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM audit WHERE (?1 IS NULL OR ts >= ?1) AND (?2 IS NULL OR site = ?2)
         ORDER BY seq DESC LIMIT ?3"
    ))?;
    let mut rows: Vec<Record> = stmt
        .query_map(params![since, filter.site, limit], record)?
        .collect::<Result<_, _>>()?;
    rows.reverse();
    Ok(rows)
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

/// Walks the whole chain from the first record; stops at the first bad one.
pub fn verify(conn: &Connection) -> Result<Verification, AuditError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut expected = 1u64;
    let mut prev = GENESIS.to_owned();
    let mut count = 0u64;
    let mut bad = None;
    while let Some(row) = rows.next()? {
        let r = record(row)?;
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
            bad = Some(BadRecord {
                seq: expected,
                reason,
            });
            break;
        }
        if r.prev_hash != prev {
            bad = Some(BadRecord {
                seq: r.seq,
                reason: format!(
                    "prev_hash does not match the hash of record {}: a record before it was modified and rehashed, replaced or reordered",
                    r.seq.saturating_sub(1)
                ),
            });
            break;
        }
        if r.computed_hash() != r.hash {
            bad = Some(BadRecord {
                seq: r.seq,
                reason: "hash mismatch: the record was modified after it was written".into(),
            });
            break;
        }
        prev = r.hash;
        expected += 1;
        count += 1;
    }
    Ok(Verification {
        ok: bad.is_none(),
        records: count,
        head_seq: expected - 1,
        head_hash: prev,
        first_bad: bad,
    })
}

/// Export as `csv` or `json` (an array of records).
pub fn export(records: &[Record], format: &str) -> Result<String, AuditError> {
    match format {
        "json" => Ok(serde_json::to_string_pretty(records).unwrap_or_default()),
        "csv" => {
            let mut out = format!("{}\n", COLUMNS.replace(' ', ""));
            for r in records {
                let status = r.status.map(|s| s.to_string()).unwrap_or_default();
                let fields = [
                    r.seq.to_string(),
                    r.ts.clone(),
                    r.actor.clone(),
                    r.role.clone(),
                    r.action.clone(),
                    r.target.clone(),
                    r.site.clone(),
                    r.outcome.clone(),
                    status,
                    r.detail.clone(),
                    r.prev_hash.clone(),
                    r.hash.clone(),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out += &line.join(",");
                out.push('\n');
            }
            Ok(out)
        }
        other => Err(AuditError::Format(other.into())),
    }
}

pub fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_owned()
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

impl crate::store::Store {
    /// Audit records matching `filter` (see [`list`]).
    pub fn audit_records(&self, filter: &Filter) -> Result<Vec<Record>, AuditError> {
        list(&self.conn, filter)
    }

    /// Walks the audit chain (see [`verify`]).
    pub fn audit_verify(&self) -> Result<Verification, AuditError> {
        verify(&self.conn)
    }
}

impl crate::core::Controller {
    /// Appends records now, under the store lock (the single writer). A failure cannot undo
    /// what was done: it is logged as an error.
    pub fn audit_all(&self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        if let Err(e) = append(&mut self.store().conn, entries) {
            tracing::error!(
                records = entries.len(),
                "cannot append to the audit log: {e}"
            );
        }
    }

    pub fn audit(&self, entry: Entry) {
        self.audit_all(std::slice::from_ref(&entry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn entry(n: u32) -> Entry {
        Entry {
            actor: "alice".into(),
            role: "operator".into(),
            action: "deployment.apply".into(),
            target: format!("web{n}"),
            site: if n.is_multiple_of(2) { "lyon" } else { "paris" }.into(),
            outcome: Outcome::Ok,
            status: Some(201),
            detail: serde_json::json!({ "n": n }),
        }
    }

    fn store_with(n: u32) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        for k in 1..=n {
            append(&mut s.conn, &[entry(k)]).unwrap();
        }
        (dir, s)
    }

    #[test]
    fn an_untouched_chain_verifies_and_reports_its_head() {
        let (_d, s) = store_with(5);
        let v = verify(&s.conn).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.records, v.head_seq), (5, 5));
        let all = list(&s.conn, &Filter::default()).unwrap();
        assert_eq!(all[0].prev_hash, GENESIS);
        assert_eq!(v.head_hash, all[4].hash);
        assert_eq!(all[3].hash, all[4].prev_hash);
    }

    #[test]
    fn modified_removed_and_reordered_records_are_named() {
        let cases: &[(&str, u64, &str)] = &[
            (
                "UPDATE audit SET detail = '{\"n\":99}' WHERE seq = 3",
                3,
                "modified",
            ),
            (
                "UPDATE audit SET actor = 'mallory' WHERE seq = 1",
                1,
                "modified",
            ),
            ("DELETE FROM audit WHERE seq = 2", 2, "record 2 is missing"),
            ("DELETE FROM audit WHERE seq IN (2, 3)", 2, "records 2 to 3"),
            ("DELETE FROM audit WHERE seq = 1", 1, "missing"),
            (
                "UPDATE audit SET seq = 100 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;
                 UPDATE audit SET seq = 3 WHERE seq = 100;",
                2,
                "prev_hash",
            ),
        ];
        for (sql, seq, why) in cases {
            let (_d, s) = store_with(5);
            s.conn
                .execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
                .unwrap();
            s.conn.execute_batch(sql).unwrap();
            let v = verify(&s.conn).unwrap();
            let bad = v.first_bad.unwrap_or_else(|| panic!("{sql}: not detected"));
            assert_eq!(bad.seq, *seq, "{sql}: {bad:?}");
            assert!(bad.reason.contains(why), "{sql}: {bad:?}");
        }
    }

    #[test]
    fn the_store_refuses_updates_and_deletes() {
        let (_d, s) = store_with(2);
        assert!(
            s.conn
                .execute("DELETE FROM audit WHERE seq = 1", [])
                .is_err()
        );
        assert!(
            s.conn
                .execute("UPDATE audit SET actor = 'x' WHERE seq = 1", [])
                .is_err()
        );
        assert!(verify(&s.conn).unwrap().ok);
    }

    #[test]
    fn filters_and_exports() {
        let (_d, s) = store_with(6);
        let lyon = list(
            &s.conn,
            &Filter {
                site: Some("lyon".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(lyon.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 4, 6]);
        let last2 = list(
            &s.conn,
            &Filter {
                limit: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(last2.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6]);
        let future = list(
            &s.conn,
            &Filter {
                since: Some("2999-01-01T00:00:00Z".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(future.is_empty());
        assert_eq!(
            list(
                &s.conn,
                &Filter {
                    since: Some("1h".into()),
                    ..Default::default()
                }
            )
            .unwrap()
            .len(),
            6
        );
        assert!(parse_since("yesterday-ish").is_err());
        let csv = export(&lyon, "csv").unwrap();
        assert!(csv.starts_with("seq,ts,actor,"), "{csv}");
        assert!(csv.contains(",\"{\"\"n\"\":2}\","), "{csv}");
        let json: Value = serde_json::from_str(&export(&lyon, "json").unwrap()).unwrap();
        assert_eq!(json[0]["detail"]["n"], 2);
        assert!(export(&lyon, "xml").is_err());
    }
}
