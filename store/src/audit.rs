//! The audit log's table (`audit`, migration 4): append-only (triggers refuse `UPDATE` and
//! `DELETE`), hash-chained. Appends run on the writer in one `IMMEDIATE` transaction that
//! reads the head and writes after it, so the chain never forks. Reads are paged by `seq`, so
//! an export or a walk of a large log is many short reads, never one long one.
//!
//! Retention (migration 8): a checkpoint record (`audit.checkpoint`) carries the signed head
//! of the record before it; records before the newest checkpoint may be deleted
//! ([`Store::audit_prune`]), nothing after it. A pruned log starts with a checkpoint, and a
//! walk starts there once its signature checks ([`walk_from`]).

use edgefleet_domain::audit::{
    BadRecord, CHECKPOINT_ACTION, ChainWalk, Entry, Filter, GENESIS, Outcome, Record, SinceError,
    Verification, chain_hash, parse_since, stored_ts_ago, walk_from,
};
use edgefleet_protocol::signing::VerifyingKey;
use tokio_rusqlite::rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::{Store, StoreError, i, u};

/// Records read per page (walks and exports).
pub const PAGE: u64 = 1000;

const COLUMNS: &str =
    "seq, ts, actor, role, action, target, site, outcome, status, detail, prev_hash, hash";

fn record(r: &Row<'_>) -> tokio_rusqlite::rusqlite::Result<Record> {
    Ok(Record {
        seq: u(r.get(0)?),
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

#[derive(Debug, thiserror::Error)]
pub enum AuditQueryError {
    #[error(transparent)]
    Since(#[from] SinceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the dashboard's audit page asks for: newest first, before `before` (a `seq`).
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    pub since: Option<String>,
    pub site: Option<String>,
    /// Text searched (case-insensitively) in actor, action, target, site, outcome, detail.
    pub text: Option<String>,
    /// Only records older than this `seq` (the next page).
    pub before: Option<u64>,
    pub limit: u64,
}

/// What retention keeps: records newer than an age, or at least a number of the newest.
/// Either way only records behind a checkpoint go ([`Store::audit_prune`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Age(std::time::Duration),
    Count(u64),
}

/// Appends entries in order, in one transaction, after the current head. Returns the last
/// sequence number written.
fn append(c: &mut Connection, entries: &[Entry]) -> Result<u64, StoreError> {
    append_with(c, |_, _| entries.to_vec())
}

/// Appends the entries `make` builds from the current head (`seq`, hash), in the transaction
/// that read it.
fn append_with(
    c: &mut Connection,
    make: impl FnOnce(u64, &str) -> Vec<Entry>,
) -> Result<u64, StoreError> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut seq, mut prev) = head(&tx)?;
    let entries = make(seq, &prev);
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO audit (seq, ts, actor, role, action, target, site, outcome, status, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for e in &entries {
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

/// The newest record's `seq` and hash (0 and [`GENESIS`] for an empty log).
fn head(c: &Connection) -> Result<(u64, String), StoreError> {
    let head: Option<(i64, String)> = c
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(head
        .map(|(s, h)| (u(s), h))
        .unwrap_or((0, GENESIS.to_owned())))
}

/// Records with `after < seq <= upto`, oldest first, at most `limit`, matching `since` and
/// `site` if given.
fn range(
    c: &Connection,
    after: u64,
    upto: u64,
    limit: u64,
    since: Option<&str>,
    site: Option<&str>,
) -> Result<Vec<Record>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit WHERE seq > ?1 AND seq <= ?2
           AND (?3 IS NULL OR ts >= ?3) AND (?4 IS NULL OR site = ?4)
         ORDER BY seq LIMIT ?5"
    ))?;
    let rows = stmt.query_map(params![i(after), i(upto), since, site, i(limit)], record)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The oldest record (record 1, or a retention checkpoint after pruning).
fn first(c: &Connection) -> Result<Option<Record>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM audit ORDER BY seq LIMIT 1"),
        [],
        record,
    )
    .optional()?)
}

fn one(c: &Connection, seq: u64) -> Result<Option<Record>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM audit WHERE seq = ?1"),
        [i(seq)],
        record,
    )
    .optional()?)
}

/// The newest record's `seq` and hash on one connection (blocking; for tools reading the file
/// with the gateway stopped).
pub fn head_connection(c: &Connection) -> Result<(u64, String), StoreError> {
    head(c)
}

/// Record `seq` on one connection, if it is there (blocking; as [`head_connection`]).
pub fn record_connection(c: &Connection, seq: u64) -> Result<Option<Record>, StoreError> {
    one(c, seq)
}

/// The oldest record on one connection (blocking; as [`head_connection`]).
pub fn first_connection(c: &Connection) -> Result<Option<Record>, StoreError> {
    first(c)
}

/// Where a whole walk starts: the genesis, or the retention checkpoint the log starts with
/// (checked with `key`; see [`walk_from`]). `Err` is a verification that failed there.
fn start(
    c: &Connection,
    key: Option<&VerifyingKey>,
) -> Result<Result<ChainWalk, Verification>, StoreError> {
    let Some(r) = first(c)? else {
        return Ok(Ok(ChainWalk::default()));
    };
    Ok(walk_from(&r, key).map_err(|bad| ChainWalk::default().verification(0, Some(bad))))
}

/// Walks the whole chain on one connection, page by page (blocking; for tools reading the
/// file with the gateway stopped). `key` (the controller's public key) checks the retention
/// checkpoint a pruned log starts with.
pub fn verify_connection(
    c: &Connection,
    key: Option<&VerifyingKey>,
) -> Result<Verification, StoreError> {
    let mut walk = match start(c, key)? {
        Ok(walk) => walk,
        Err(failed) => return Ok(failed),
    };
    loop {
        let (after, _) = walk.head();
        let page = range(c, after, u64::MAX >> 1, PAGE, None, None)?;
        if page.is_empty() {
            return Ok(walk.verification(walk.checked(), None));
        }
        for r in &page {
            if let Err(bad) = walk.check(r) {
                return Ok(walk.verification(walk.checked(), Some(bad)));
            }
        }
    }
}

impl Store {
    /// Appends entries (see the module docs). Returns the last `seq` written.
    pub async fn append_audit(&self, entries: Vec<Entry>) -> Result<u64, StoreError> {
        self.write(move |c| append(c, &entries)).await
    }

    /// The newest record's `seq` and hash.
    pub async fn audit_head(&self) -> Result<(u64, String), StoreError> {
        self.read(head).await
    }

    /// Appends a retention checkpoint: a record whose detail is `sign(seq, hash)` of the
    /// record right before it (the signed head), in the transaction that read that head.
    /// Returns the checkpoint's `seq`.
    pub async fn append_audit_checkpoint(
        &self,
        sign: impl FnOnce(u64, &str) -> serde_json::Value + Send + 'static,
    ) -> Result<u64, StoreError> {
        self.write(move |c| {
            append_with(c, |seq, hash| {
                vec![Entry::system(
                    CHECKPOINT_ACTION,
                    &format!("#{seq}"),
                    "",
                    Outcome::Ok,
                    sign(seq, hash),
                )]
            })
        })
        .await
    }

    /// Deletes every record before the newest checkpoint `keep` allows: one written before
    /// the age cut-off (so everything deleted is older than that), or one with at least
    /// `Count` records from it to the head. The log then starts with that checkpoint (and
    /// the store's trigger refuses to delete anything after the newest checkpoint). Returns
    /// the records deleted and the checkpoint the log now starts with.
    pub async fn audit_prune(&self, keep: Retention) -> Result<(u64, Option<u64>), StoreError> {
        let cutoff = match keep {
            Retention::Age(age) => Some(stored_ts_ago(age)),
            Retention::Count(_) => None,
        };
        let count = match keep {
            Retention::Count(n) => i(n.max(1)),
            Retention::Age(_) => 0,
        };
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let checkpoint: Option<i64> = tx.query_row(
                "SELECT MAX(seq) FROM audit WHERE action = ?1
                   AND (?2 IS NULL OR ts <= ?2)
                   AND (?2 IS NOT NULL OR seq <= (SELECT MAX(seq) FROM audit) - ?3 + 1)",
                params![CHECKPOINT_ACTION, cutoff, count],
                |r| r.get(0),
            )?;
            let Some(checkpoint) = checkpoint else {
                return Ok((0, None));
            };
            let deleted = tx.execute("DELETE FROM audit WHERE seq < ?1", [checkpoint])?;
            tx.commit()?;
            Ok((deleted as u64, Some(u(checkpoint))))
        })
        .await
    }

    /// Records matching `filter`, oldest first (with `limit`, the newest `limit` of them).
    pub async fn audit_records(&self, filter: &Filter) -> Result<Vec<Record>, AuditQueryError> {
        let since = filter.since.as_deref().map(parse_since).transpose()?;
        let site = filter.site.clone();
        let limit = filter.limit.map_or(-1, i);
        Ok(self
            .read(move |c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {COLUMNS} FROM audit WHERE (?1 IS NULL OR ts >= ?1) AND (?2 IS NULL OR site = ?2)
                     ORDER BY seq DESC LIMIT ?3"
                ))?;
                let mut rows: Vec<Record> = stmt
                    .query_map(params![since, site, limit], record)?
                    .collect::<Result<_, _>>()?;
                rows.reverse();
                Ok(rows)
            })
            .await?)
    }

    /// One page of the dashboard's audit log, newest first.
    pub async fn audit_page(&self, q: PageQuery) -> Result<Vec<Record>, AuditQueryError> {
        let since = q.since.as_deref().map(parse_since).transpose()?;
        let text = q.text.map(|t| {
            format!(
                "%{}%",
                t.to_lowercase().replace('%', "\\%").replace('_', "\\_")
            )
        });
        let before = q.before.map_or(i64::MAX, i);
        let limit = i(q.limit);
        Ok(self
            .read(move |c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {COLUMNS} FROM audit WHERE seq < ?1
                       AND (?2 IS NULL OR ts >= ?2) AND (?3 IS NULL OR site = ?3)
                       AND (?4 IS NULL OR lower(actor || ' ' || action || ' ' || target || ' ' || site || ' ' || outcome || ' ' || detail) LIKE ?4 ESCAPE '\\')
                     ORDER BY seq DESC LIMIT ?5"
                ))?;
                let rows = stmt.query_map(params![before, since, q.site, text, limit], record)?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?)
    }

    /// One page for an export: records with `after < seq <= upto` matching `since` (already
    /// parsed to a stored timestamp) and `site`, oldest first, at most [`PAGE`].
    pub async fn audit_export_page(
        &self,
        after: u64,
        upto: u64,
        since: Option<String>,
        site: Option<String>,
    ) -> Result<Vec<Record>, StoreError> {
        self.read(move |c| range(c, after, upto, PAGE, since.as_deref(), site.as_deref()))
            .await
    }

    /// Walks the chain after record `seq` (whose hash must still be `hash`: a record verified
    /// earlier that is gone or changed means the log was truncated or rewritten) to the head,
    /// page by page on the reader, so other reads interleave. From `(0, GENESIS)` it walks the
    /// whole chain. `records` in the result counts every record up to the head.
    pub async fn audit_verify_after(
        &self,
        seq: u64,
        hash: &str,
        key: Option<VerifyingKey>,
    ) -> Result<Verification, StoreError> {
        let mut walk = ChainWalk::resume(seq, hash);
        if seq == 0 {
            match self.read(move |c| start(c, key.as_ref())).await? {
                Ok(start) => walk = start,
                Err(failed) => return Ok(failed),
            }
        }
        if seq > 0 {
            let hash = hash.to_owned();
            let bad = self
                .read(move |c| {
                    Ok(match one(c, seq)? {
                        Some(r) if r.hash == hash => None,
                        Some(_) => {
                            Some(format!("record {seq}, verified earlier, has changed since"))
                        }
                        None => Some(format!(
                            "record {seq}, verified earlier, is gone: the log was truncated"
                        )),
                    })
                })
                .await?;
            if let Some(reason) = bad {
                return Ok(walk.verification(seq, Some(BadRecord { seq, reason })));
            }
        }
        loop {
            let (after, _) = walk.head();
            let page = self
                .read(move |c| range(c, after, u64::MAX >> 1, PAGE, None, None))
                .await?;
            if page.is_empty() {
                return Ok(walk.verification(seq + walk.checked(), None));
            }
            for r in &page {
                if let Err(bad) = walk.check(r) {
                    return Ok(walk.verification(seq + walk.checked(), Some(bad)));
                }
            }
        }
    }

    /// Walks the whole chain (from the retention checkpoint it starts with, if pruned,
    /// checked with `key`).
    pub async fn audit_verify(
        &self,
        key: Option<VerifyingKey>,
    ) -> Result<Verification, StoreError> {
        self.audit_verify_after(0, GENESIS, key).await
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_domain::audit::Outcome;

    use super::*;
    use crate::test_support::store;

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

    async fn store_with(n: u32) -> (tempfile::TempDir, Store) {
        let (dir, s) = store().await;
        for k in 1..=n {
            s.append_audit(vec![entry(k)]).await.unwrap();
        }
        (dir, s)
    }

    /// Tampering as someone who can write the file would: another connection, triggers
    /// dropped.
    fn tamper(dir: &tempfile::TempDir, sql: &str) {
        let c = Connection::open(dir.path().join("s.db")).unwrap();
        c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        c.execute_batch(sql).unwrap();
    }

    #[tokio::test]
    async fn an_untouched_chain_verifies_and_reports_its_head() {
        let (_d, s) = store_with(5).await;
        let v = s.audit_verify(None).await.unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.records, v.head_seq), (5, 5));
        let all = s.audit_records(&Filter::default()).await.unwrap();
        assert_eq!(all[0].prev_hash, GENESIS);
        assert_eq!(v.head_hash, all[4].hash);
        assert_eq!(all[3].hash, all[4].prev_hash);
    }

    #[tokio::test]
    async fn modified_removed_and_reordered_records_are_named() {
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
            let (d, s) = store_with(5).await;
            tamper(&d, sql);
            let v = s.audit_verify(None).await.unwrap();
            let bad = v.first_bad.unwrap_or_else(|| panic!("{sql}: not detected"));
            assert_eq!(bad.seq, *seq, "{sql}: {bad:?}");
            assert!(bad.reason.contains(why), "{sql}: {bad:?}");
            // The file-reading walk (`edgefleet audit verify`) agrees.
            let c = crate::open_read_only(&d.path().join("s.db")).unwrap();
            assert_eq!(
                verify_connection(&c, None).unwrap().first_bad.unwrap().seq,
                *seq
            );
        }
    }

    #[tokio::test]
    async fn a_walk_resumes_after_its_head_and_sees_a_truncation() {
        let (d, s) = store_with(3).await;
        let first = s.audit_verify(None).await.unwrap();
        for k in 4..=7 {
            s.append_audit(vec![entry(k)]).await.unwrap();
        }
        let next = s
            .audit_verify_after(first.head_seq, &first.head_hash, None)
            .await
            .unwrap();
        assert!(next.ok, "{next:?}");
        assert_eq!((next.records, next.head_seq), (7, 7));
        assert_eq!(
            next.head_hash,
            s.audit_verify(None).await.unwrap().head_hash
        );
        tamper(&d, "DELETE FROM audit WHERE seq >= 6");
        let cut = s
            .audit_verify_after(next.head_seq, &next.head_hash, None)
            .await
            .unwrap();
        let bad = cut.first_bad.expect("truncation detected");
        assert_eq!(bad.seq, 7);
        assert!(bad.reason.contains("truncated"), "{bad:?}");
        assert!(
            s.audit_verify(None).await.unwrap().ok,
            "a full walk alone cannot see a truncation"
        );
    }

    fn signer() -> edgefleet_protocol::signing::DocumentSigner {
        edgefleet_protocol::signing::DocumentSigner::from_secret(&[5; 32])
    }

    async fn checkpoint(s: &Store) -> u64 {
        let signer = signer();
        s.append_audit_checkpoint(move |seq, hash| {
            let head = edgefleet_protocol::audit_head::SignedAuditHead::sign(
                &signer,
                seq,
                hash,
                edgefleet_protocol::now_rfc3339(),
            );
            serde_json::to_value(head).unwrap()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn retention_prunes_only_behind_a_signed_checkpoint_and_the_walk_starts_there() {
        let (d, s) = store_with(5).await;
        let key = Some(signer().verifying_key());
        assert_eq!(s.audit_prune(Retention::Count(1)).await.unwrap(), (0, None));
        assert_eq!(checkpoint(&s).await, 6);
        for k in 7..=9 {
            s.append_audit(vec![entry(k)]).await.unwrap();
        }
        // The store refuses to delete the checkpoint or anything after it, even by hand.
        let c = Connection::open(d.path().join("s.db")).unwrap();
        assert!(c.execute("DELETE FROM audit WHERE seq = 6", []).is_err());
        assert!(c.execute("DELETE FROM audit WHERE seq = 9", []).is_err());
        // Keep at least 5: no checkpoint has 5 records from it on.
        assert_eq!(s.audit_prune(Retention::Count(5)).await.unwrap(), (0, None));
        // By age: the checkpoint is younger than a day.
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(s.audit_prune(Retention::Age(day)).await.unwrap(), (0, None));
        assert_eq!(
            s.audit_prune(Retention::Count(4)).await.unwrap(),
            (5, Some(6))
        );
        let v = s.audit_verify(key).await.unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.records, v.head_seq), (4, 9));
        let file = crate::open_read_only(&d.path().join("s.db")).unwrap();
        assert!(verify_connection(&file, key.as_ref()).unwrap().ok);
        assert_eq!(first_connection(&file).unwrap().unwrap().seq, 6);
        // Without the key the checkpoint cannot be trusted; with another key it is refused.
        let bad = s.audit_verify(None).await.unwrap().first_bad.unwrap();
        assert!(bad.reason.contains("public key"), "{bad:?}");
        let other = edgefleet_protocol::signing::DocumentSigner::from_secret(&[6; 32]);
        let bad = s
            .audit_verify(Some(other.verifying_key()))
            .await
            .unwrap()
            .first_bad
            .unwrap();
        assert!(bad.reason.contains("not valid"), "{bad:?}");
        // A second checkpoint later, pruned by age (everything older than now).
        assert_eq!(checkpoint(&s).await, 10);
        s.append_audit(vec![entry(11)]).await.unwrap();
        assert_eq!(
            s.audit_prune(Retention::Age(std::time::Duration::ZERO))
                .await
                .unwrap(),
            (4, Some(10))
        );
        assert!(s.audit_verify(key).await.unwrap().ok);
    }

    #[tokio::test]
    async fn a_log_cut_before_a_record_that_is_no_checkpoint_fails() {
        let (d, s) = store_with(5).await;
        tamper(&d, "DELETE FROM audit WHERE seq <= 2");
        let bad = s
            .audit_verify(Some(signer().verifying_key()))
            .await
            .unwrap()
            .first_bad
            .unwrap();
        assert_eq!(bad.seq, 1);
        assert!(bad.reason.contains("records 1 to 2 are missing"), "{bad:?}");
    }

    #[tokio::test]
    async fn the_store_refuses_updates_and_deletes() {
        let (d, s) = store_with(2).await;
        let c = Connection::open(d.path().join("s.db")).unwrap();
        assert!(c.execute("DELETE FROM audit WHERE seq = 1", []).is_err());
        assert!(
            c.execute("UPDATE audit SET actor = 'x' WHERE seq = 1", [])
                .is_err()
        );
        assert!(s.audit_verify(None).await.unwrap().ok);
    }

    #[tokio::test]
    async fn filters_pages_and_export_pages() {
        let (_d, s) = store_with(6).await;
        let lyon = s
            .audit_records(&Filter {
                site: Some("lyon".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(lyon.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 4, 6]);
        let last2 = s
            .audit_records(&Filter {
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(last2.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6]);
        let future = s
            .audit_records(&Filter {
                since: Some("2999-01-01T00:00:00Z".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(future.is_empty());
        assert_eq!(
            s.audit_records(&Filter {
                since: Some("1h".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
            6
        );
        assert!(
            s.audit_records(&Filter {
                since: Some("yesterday-ish".into()),
                ..Default::default()
            })
            .await
            .is_err()
        );
        let page = s
            .audit_page(PageQuery {
                text: Some("WEB5".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [5]);
        let older = s
            .audit_page(PageQuery {
                before: Some(4),
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(older.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 2]);
        let export = s
            .audit_export_page(1, 5, None, Some("lyon".into()))
            .await
            .unwrap();
        assert_eq!(export.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 4]);
    }
}
