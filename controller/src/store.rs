//! The controller's embedded store: one SQLite file in the data dir.
//!
//! Owns deployments and their immutable revisions (the configuration history), the devices'
//! last-known state (labels, presence, status, desired document) and recent device events;
//! users and API tokens ([`crate::users`]) and the audit log ([`crate::audit`]).
//! Schema changes are numbered migrations applied at open (`PRAGMA user_version`).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "store holds schema version {0}, newer than this controller understands; upgrade edgefleet"
    )]
    TooNew(i64),
}

/// Numbered migrations; index + 1 is the schema version after applying it.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE deployments (
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    latest_revision INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE TABLE revisions (
    deployment TEXT NOT NULL,
    revision INTEGER NOT NULL,
    target TEXT NOT NULL,
    compose TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (deployment, revision)
);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    labels_json TEXT NOT NULL,
    desired_revision INTEGER NOT NULL DEFAULT 0,
    desired_json TEXT,
    presence_json TEXT,
    status_json TEXT,
    last_seen TEXT,
    first_seen TEXT NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    ts TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX events_by_device ON events (device, seq);
"#,
    r#"
CREATE TABLE pins (
    device TEXT NOT NULL,
    deployment TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (device, deployment)
);
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL,
    active INTEGER NOT NULL,
    state_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX rollouts_active ON rollouts (active, deployment);
"#,
    r#"
CREATE TABLE site_windows (
    site TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    tz TEXT NOT NULL
);
"#,
    // 4: API users, API tokens (only their SHA-256), the hash-chained audit log.
    r#"
CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    sites_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE api_tokens (
    token_sha256 TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX api_tokens_by_user ON api_tokens (username);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    site TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_by_ts ON audit (ts);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    // 5: device enrollment tokens (only their SHA-256) and issued client certificates.
    r#"
CREATE TABLE enrollments (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    used_at TEXT
);
CREATE INDEX enrollments_by_device ON enrollments (device);
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    revoked_at TEXT
);
CREATE INDEX certificates_by_identity ON certificates (identity);
"#,
];

pub struct Store {
    pub(crate) conn: Connection,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentRow {
    pub name: String,
    pub target: String,
    pub revision: u64,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevisionRow {
    pub deployment: String,
    pub revision: u64,
    pub target: String,
    pub created_at: String,
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose: Option<String>,
    #[serde(skip)]
    pub spec_json: String,
}

/// A rollout as stored; `state_json` is the serialized `rollout::engine::Rollout`.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: u64,
    pub deployment: String,
    pub active: bool,
    pub state_json: String,
    pub created_at: String,
    pub created_by: String,
    pub updated_at: String,
}

/// A device's last-known state as persisted.
#[derive(Debug, Clone, Default)]
pub struct DeviceRow {
    pub id: String,
    pub labels_json: String,
    pub desired_revision: u64,
    pub desired_json: Option<String>,
    pub presence_json: Option<String>,
    pub status_json: Option<String>,
    pub last_seen: Option<String>,
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed desired revision must survive a power cut (with NORMAL a WAL commit
        // can be lost, and the agent would then ignore a reused revision number).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if version > known {
            return Err(StoreError::TooNew(version));
        }
        for (n, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(n + 1).unwrap_or(i64::MAX),
            )?;
            tx.commit()?;
            tracing::info!(version = n + 1, "store migrated");
        }
        Ok(())
    }

    /// Increments and returns a persistent counter (e.g. the controller's session number).
    pub fn next_counter(&self, key: &str) -> Result<u64, StoreError> {
        let current: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        let next = current.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![key, next.to_string()],
        )?;
        Ok(next)
    }

    pub fn deployments(&self) -> Result<Vec<DeploymentRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, target, latest_revision, updated_at FROM deployments WHERE deleted = 0 ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeploymentRow {
                name: r.get(0)?,
                target: r.get(1)?,
                revision: u(r.get(2)?),
                updated_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn deployment(&self, name: &str) -> Result<Option<DeploymentRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, target, latest_revision, updated_at FROM deployments WHERE name = ?1 AND deleted = 0",
                [name],
                |r| Ok(DeploymentRow { name: r.get(0)?, target: r.get(1)?, revision: u(r.get(2)?), updated_at: r.get(3)? }),
            )
            .optional()?)
    }

    fn revision_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RevisionRow> {
        Ok(RevisionRow {
            deployment: r.get(0)?,
            revision: u(r.get(1)?),
            target: r.get(2)?,
            created_at: r.get(3)?,
            created_by: r.get(4)?,
            compose: Some(r.get(5)?),
            spec_json: r.get(6)?,
        })
    }

    /// Every revision of a deployment (also of a deleted one), oldest first.
    pub fn revisions(&self, name: &str) -> Result<Vec<RevisionRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT deployment, revision, target, created_at, created_by, compose, spec_json
             FROM revisions WHERE deployment = ?1 ORDER BY revision",
        )?;
        let rows = stmt.query_map([name], Self::revision_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn revision(&self, name: &str, revision: u64) -> Result<Option<RevisionRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT deployment, revision, target, created_at, created_by, compose, spec_json
                 FROM revisions WHERE deployment = ?1 AND revision = ?2",
                params![name, i(revision)],
                Self::revision_from_row,
            )
            .optional()?)
    }

    /// Records a new immutable revision and makes it the deployment's latest. Returns its
    /// number (numbering continues across delete and re-create of the same name).
    pub fn insert_revision(
        &mut self,
        name: &str,
        target: &str,
        compose: &str,
        spec_json: &str,
        created_by: &str,
        now: &str,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let last: Option<i64> = tx.query_row(
            "SELECT MAX(revision) FROM revisions WHERE deployment = ?1",
            [name],
            |r| r.get(0),
        )?;
        let revision = u(last.unwrap_or(0)) + 1;
        tx.execute(
            "INSERT INTO revisions (deployment, revision, target, compose, spec_json, created_at, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![name, i(revision), target, compose, spec_json, now, created_by],
        )?;
        tx.execute(
            "INSERT INTO deployments (name, target, latest_revision, deleted, updated_at) VALUES (?1, ?2, ?3, 0, ?4)
             ON CONFLICT(name) DO UPDATE SET target = ?2, latest_revision = ?3, deleted = 0, updated_at = ?4",
            params![name, target, i(revision), now],
        )?;
        tx.commit()?;
        Ok(revision)
    }

    /// Marks a deployment deleted (its revisions stay as history). False if it did not exist.
    pub fn delete_deployment(&self, name: &str, now: &str) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE deployments SET deleted = 1, updated_at = ?2 WHERE name = ?1 AND deleted = 0",
            params![name, now],
        )?;
        Ok(n > 0)
    }

    pub fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, labels_json, desired_revision, desired_json, presence_json, status_json, last_seen
             FROM devices ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeviceRow {
                id: r.get(0)?,
                labels_json: r.get(1)?,
                desired_revision: u(r.get(2)?),
                desired_json: r.get(3)?,
                presence_json: r.get(4)?,
                status_json: r.get(5)?,
                last_seen: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes several devices' last-known state in one transaction.
    pub fn save_devices(&mut self, rows: &[DeviceRow], now: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO devices (id, labels_json, desired_revision, desired_json, presence_json, status_json, last_seen, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET labels_json = ?2, desired_revision = ?3, desired_json = ?4,
                   presence_json = ?5, status_json = ?6, last_seen = ?7",
            )?;
            for d in rows {
                stmt.execute(params![
                    d.id,
                    d.labels_json,
                    i(d.desired_revision),
                    d.desired_json,
                    d.presence_json,
                    d.status_json,
                    d.last_seen,
                    now
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every pin: (device, deployment) → the deployment revision the device must run instead
    /// of the latest (set by rollouts).
    pub fn pins(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT device, deployment, revision FROM pins")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, u(r.get(2)?))))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets (`Some`) or clears (`None`) the pins of several devices for one deployment.
    pub fn set_pins(
        &mut self,
        deployment: &str,
        pins: &[(String, Option<u64>)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut set = tx.prepare_cached(
                "INSERT INTO pins (device, deployment, revision) VALUES (?1, ?2, ?3)
                 ON CONFLICT(device, deployment) DO UPDATE SET revision = ?3",
            )?;
            let mut clear =
                tx.prepare_cached("DELETE FROM pins WHERE device = ?1 AND deployment = ?2")?;
            for (device, rev) in pins {
                match rev {
                    Some(r) => set.execute(params![device, deployment, i(*r)])?,
                    None => clear.execute(params![device, deployment])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Maintenance windows per site: (site, spec, time zone).
    pub fn site_windows(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT site, spec, tz FROM site_windows ORDER BY site")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets (`Some((spec, tz))`) or removes (`None`) a site's maintenance window.
    pub fn set_site_window(
        &self,
        site: &str,
        window: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        match window {
            Some((spec, tz)) => self.conn.execute(
                "INSERT INTO site_windows (site, spec, tz) VALUES (?1, ?2, ?3)
                 ON CONFLICT(site) DO UPDATE SET spec = ?2, tz = ?3",
                params![site, spec, tz],
            )?,
            None => self
                .conn
                .execute("DELETE FROM site_windows WHERE site = ?1", [site])?,
        };
        Ok(())
    }

    /// Records a new rollout; returns its id.
    pub fn insert_rollout(
        &self,
        deployment: &str,
        state_json: &str,
        by: &str,
        now: &str,
    ) -> Result<u64, StoreError> {
        self.conn.execute(
            "INSERT INTO rollouts (deployment, active, state_json, created_at, created_by, updated_at)
             VALUES (?1, 1, ?2, ?3, ?4, ?3)",
            params![deployment, state_json, now, by],
        )?;
        Ok(u(self.conn.last_insert_rowid()))
    }

    pub fn update_rollout(
        &self,
        id: u64,
        active: bool,
        state_json: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE rollouts SET active = ?2, state_json = ?3, updated_at = ?4 WHERE id = ?1",
            params![i(id), active, state_json, now],
        )?;
        Ok(())
    }

    /// Rollouts, newest first: (id, deployment, active, state_json, created_at, created_by).
    pub fn rollouts(&self, only_active: bool) -> Result<Vec<RolloutRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, deployment, active, state_json, created_at, created_by, updated_at FROM rollouts
             WHERE active = 1 OR ?1 = 0 ORDER BY id DESC",
        )?;
        let rows = stmt.query_map([only_active], |r| {
            Ok(RolloutRow {
                id: u(r.get(0)?),
                deployment: r.get(1)?,
                active: r.get(2)?,
                state_json: r.get(3)?,
                created_at: r.get(4)?,
                created_by: r.get(5)?,
                updated_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Appends device events (JSON) and keeps at most `keep_per_device` per device.
    pub fn append_events(
        &mut self,
        events: &[(String, String, String)],
        keep_per_device: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut ins =
                tx.prepare_cached("INSERT INTO events (device, ts, json) VALUES (?1, ?2, ?3)")?;
            for (device, ts, json) in events {
                ins.execute(params![device, ts, json])?;
            }
            let mut trim = tx.prepare_cached(
                "DELETE FROM events WHERE device = ?1 AND seq <= (SELECT seq FROM events WHERE device = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )?;
            let mut seen = std::collections::BTreeSet::new();
            for (device, _, _) in events {
                if seen.insert(device) {
                    trim.execute(params![device, i(keep_per_device)])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The newest `limit` events of a device, oldest first (JSON documents).
    pub fn events(&self, device: &str, limit: u64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT json FROM events WHERE device = ?1 ORDER BY seq DESC LIMIT ?2")?;
        let mut rows: Vec<String> = stmt
            .query_map(params![device, i(limit)], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        rows.reverse();
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_immutable_and_numbering_survives_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(
            s.insert_revision("web", "*", "a", "{}", "alice", "t1")
                .unwrap(),
            1
        );
        assert_eq!(
            s.insert_revision("web", "site=x", "b", "{}", "bob", "t2")
                .unwrap(),
            2
        );
        assert!(s.delete_deployment("web", "t3").unwrap());
        assert!(!s.delete_deployment("web", "t3").unwrap());
        assert!(s.deployment("web").unwrap().is_none());
        assert_eq!(s.revisions("web").unwrap().len(), 2);
        assert_eq!(
            s.insert_revision("web", "*", "c", "{}", "carol", "t4")
                .unwrap(),
            3
        );
        assert_eq!(s.deployment("web").unwrap().unwrap().revision, 3);
        assert_eq!(
            s.revision("web", 1).unwrap().unwrap().compose.as_deref(),
            Some("a")
        );
        drop(s);
        // Reopening applies no migration twice and keeps everything.
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(s.deployments().unwrap().len(), 1);
        assert_eq!(s.next_counter("session").unwrap(), 1);
        assert_eq!(s.next_counter("session").unwrap(), 2);
    }

    #[test]
    fn pins_and_rollouts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        s.set_pins("web", &[("d1".into(), Some(1)), ("d2".into(), Some(1))])
            .unwrap();
        s.set_pins("web", &[("d1".into(), Some(2)), ("d2".into(), None)])
            .unwrap();
        assert_eq!(
            s.pins().unwrap(),
            vec![("d1".to_string(), "web".to_string(), 2)]
        );
        let id = s.insert_rollout("web", "{}", "alice", "t1").unwrap();
        assert_eq!(s.rollouts(true).unwrap().len(), 1);
        s.update_rollout(id, false, "{\"done\":true}", "t2")
            .unwrap();
        assert!(s.rollouts(true).unwrap().is_empty());
        assert_eq!(s.rollouts(false).unwrap()[0].state_json, "{\"done\":true}");
    }

    #[test]
    fn events_are_trimmed_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        let evs: Vec<_> = (0..10)
            .map(|n| ("d1".to_string(), "t".to_string(), format!("{n}")))
            .collect();
        s.append_events(&evs, 4).unwrap();
        assert_eq!(s.events("d1", 100).unwrap(), vec!["6", "7", "8", "9"]);
    }
}
