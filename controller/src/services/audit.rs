//! The audit log as the rest of the controller uses it: record an entry now (API calls,
//! rollout transitions, the front's refusals, enrollments), buffer device-reported outcomes
//! for the next flush, and verify the chain.
//!
//! Appends go to the store's single writer (one `IMMEDIATE` transaction each), so the chain
//! never forks. A failed append cannot undo what was done: it is logged as an error; buffered
//! outcomes that could not be written are kept for the next flush.
//!
//! Verification for the dashboard is incremental: the head verified last is remembered and
//! the next check walks only the records after it (and confirms that head is still there
//! unchanged, which also reveals a truncation). `verify_full` walks from the first record.
//!
//! The head is signed with the controller's key ([`SignedAuditHead`]), only once the chain
//! up to it verified, and published retained (`edgefleet/v1/audit/head`): once at start,
//! then after appends, at most once every [`HEAD_INTERVAL`] ([`AuditLog::head_due`], from
//! housekeeping), and again after every reconnect to the broker. A head someone saved
//! elsewhere is what reveals a truncation or a rehashed chain later (ARCHITECTURE.md,
//! "Audit log").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgefleet_domain::audit::{BadRecord, Entry, GENESIS, Outcome, Repeats, Verification};
use edgefleet_protocol::audit_head::SignedAuditHead;
use edgefleet_protocol::signing::DocumentSigner;
use edgefleet_store::{Store, StoreError};
use parking_lot::Mutex;

/// Device outcomes kept at most while the store refuses them (oldest dropped, logged).
const MAX_PENDING: usize = 100_000;
/// Refusals of one kind are written once per interval, then counted.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);
/// Kinds of refusal counted separately at most (then one catch-all count).
const REPEAT_KINDS: usize = 1024;
/// The signed head is published at most once per interval.
pub const HEAD_INTERVAL: Duration = Duration::from_secs(5);

/// Why no head was signed.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the audit log does not verify (first bad record #{}: {}), so no head is signed: run `edgefleet audit verify --data-dir DIR` and compare with a head saved earlier",
        .0.seq,
        .0.reason
    )]
    Broken(BadRecord),
}

/// The head last published.
struct Published {
    at: Instant,
    seq: u64,
    hash: String,
    payload: Vec<u8>,
}

pub struct AuditLog {
    store: Store,
    signer: Arc<DocumentSigner>,
    pending: Mutex<Vec<Entry>>,
    repeats: Mutex<Repeats>,
    /// The last head a walk found good: `(seq, hash)`.
    verified: tokio::sync::Mutex<(u64, String)>,
    /// Records were appended since the head was last signed for publication (true at start).
    appended: AtomicBool,
    published: Mutex<Option<Published>>,
}

impl AuditLog {
    /// The log over `store`; its head is signed with `signer` (the controller's key).
    pub fn new(store: Store, signer: Arc<DocumentSigner>) -> Self {
        AuditLog {
            store,
            signer,
            pending: Mutex::new(Vec::new()),
            repeats: Mutex::new(Repeats::new(REPEAT_INTERVAL, REPEAT_KINDS)),
            verified: tokio::sync::Mutex::new((0, GENESIS.to_owned())),
            appended: AtomicBool::new(true),
            published: Mutex::new(None),
        }
    }

    /// Appends entries now, in order, capped; a refusal repeated within the interval is
    /// only counted (see the module docs).
    pub async fn record_all(&self, entries: Vec<Entry>) {
        let now = Instant::now();
        let entries: Vec<Entry> = {
            let mut repeats = self.repeats.lock();
            entries
                .into_iter()
                .map(Entry::capped)
                .filter_map(|e| match e.outcome {
                    Outcome::Refused => repeats.admit(e, now),
                    _ => Some(e),
                })
                .collect()
        };
        self.append(entries).await;
    }

    /// Writes the aggregated counts of the intervals that ended (every one with `all`, at
    /// shutdown).
    pub async fn flush_repeats(&self, all: bool) {
        let due = self.repeats.lock().due(Instant::now(), all);
        self.append(due).await;
    }

    async fn append(&self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let n = entries.len();
        match self.store.append_audit(entries).await {
            Ok(_) => self.appended.store(true, Ordering::Relaxed),
            Err(e) => tracing::error!(records = n, "cannot append to the audit log: {e}"),
        }
    }

    pub async fn record(&self, entry: Entry) {
        self.record_all(vec![entry]).await;
    }

    /// Keeps an entry for the next [`AuditLog::flush`] (device outcomes, taken in on the bus
    /// where nothing may wait on the store).
    pub fn buffer(&self, entry: Entry) {
        let entry = entry.capped();
        let mut pending = self.pending.lock();
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
            tracing::error!(
                "audit buffer full while the store refuses writes: oldest outcome dropped"
            );
        }
        pending.push(entry);
    }

    /// Appends the buffered entries; on a store error they stay buffered for the next flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let entries = std::mem::take(&mut *self.pending.lock());
        if entries.is_empty() {
            return Ok(());
        }
        match self.store.append_audit(entries.clone()).await {
            Ok(_) => {
                self.appended.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let mut pending = self.pending.lock();
                let newer = std::mem::take(&mut *pending);
                *pending = entries;
                pending.extend(newer);
                Err(e)
            }
        }
    }

    /// Checks the records added since the last check (see the module docs).
    pub async fn verify_incremental(&self) -> Result<Verification, StoreError> {
        let mut verified = self.verified.lock().await;
        let v = self
            .store
            .audit_verify_after(verified.0, &verified.1, Some(self.signer.verifying_key()))
            .await?;
        if v.ok {
            *verified = (v.head_seq, v.head_hash.clone());
        }
        Ok(v)
    }

    /// Walks the whole chain from its first record.
    pub async fn verify_full(&self) -> Result<Verification, StoreError> {
        let v = self
            .store
            .audit_verify(Some(self.signer.verifying_key()))
            .await?;
        if v.ok {
            *self.verified.lock().await = (v.head_seq, v.head_hash.clone());
        }
        Ok(v)
    }

    /// The head of a verification that found the chain good, signed now; `None` for a broken
    /// chain (a signature must never vouch for one).
    pub fn sign_verified(&self, v: &Verification) -> Option<SignedAuditHead> {
        v.ok.then(|| {
            SignedAuditHead::sign(
                &self.signer,
                v.head_seq,
                &v.head_hash,
                edgefleet_protocol::now_rfc3339(),
            )
        })
    }

    /// The current head, verified (incrementally) and signed now: `GET /api/v1/audit/head`.
    pub async fn signed_head(&self) -> Result<SignedAuditHead, HeadError> {
        let v = self.verify_incremental().await?;
        match self.sign_verified(&v) {
            Some(head) => Ok(head),
            None => Err(HeadError::Broken(v.first_bad.unwrap_or(BadRecord {
                seq: v.head_seq,
                reason: "unknown".into(),
            }))),
        }
    }

    /// The signed head to publish now, if one is due: records were appended since the last
    /// one (or none was published since start), the last one is at least [`HEAD_INTERVAL`]
    /// old, and the chain verifies up to the new head. A broken chain is logged, not signed.
    pub async fn head_due(&self, now: Instant) -> Option<Vec<u8>> {
        if !self.appended.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(p) = &*self.published.lock()
            && now.saturating_duration_since(p.at) < HEAD_INTERVAL
        {
            return None;
        }
        self.appended.store(false, Ordering::Relaxed);
        let head = match self.signed_head().await {
            Ok(head) => head,
            Err(e) => {
                tracing::error!("the audit head is not published: {e}");
                return None;
            }
        };
        let mut published = self.published.lock();
        if let Some(p) = &*published
            && (p.seq, p.hash.as_str()) == (head.seq, head.hash.as_str())
        {
            return None;
        }
        let payload = head.encode();
        tracing::debug!(seq = head.seq, "publishing the signed audit head");
        *published = Some(Published {
            at: now,
            seq: head.seq,
            hash: head.hash,
            payload: payload.clone(),
        });
        Some(payload)
    }

    /// Retention: appends a signed checkpoint (of the verified head; none for a broken
    /// chain), then deletes the records before the newest checkpoint `keep` allows
    /// ([`Store::audit_prune`]) and records how many went (`audit.prune`). Returns how many.
    pub async fn retain(&self, keep: edgefleet_store::audit::Retention) -> Result<u64, HeadError> {
        // The chain must verify up to the head the checkpoint will vouch for.
        self.signed_head().await?;
        let signer = self.signer.clone();
        let checkpoint = self
            .store
            .append_audit_checkpoint(move |seq, hash| {
                let head =
                    SignedAuditHead::sign(&signer, seq, hash, edgefleet_protocol::now_rfc3339());
                serde_json::to_value(head).unwrap_or_default()
            })
            .await?;
        self.appended.store(true, Ordering::Relaxed);
        // Hold the incremental walk's lock across the prune: its remembered head may go.
        let mut verified = self.verified.lock().await;
        let (deleted, from) = self.store.audit_prune(keep).await?;
        if deleted > 0 {
            *verified = (0, GENESIS.to_owned());
            drop(verified);
            tracing::info!(
                deleted,
                checkpoint = from,
                "audit retention pruned the records before a signed checkpoint"
            );
            self.append(vec![Entry::system(
                "audit.prune",
                &format!("#{}", from.unwrap_or_default()),
                "",
                Outcome::Ok,
                serde_json::json!({ "deleted": deleted, "checkpoint": from, "newest_checkpoint": checkpoint }),
            )])
            .await;
        }
        Ok(deleted)
    }

    /// The head last published (republished after a reconnect: the broker may have lost it).
    pub fn published_head(&self) -> Option<Vec<u8>> {
        self.published.lock().as_ref().map(|p| p.payload.clone())
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_protocol::audit_head;

    use super::*;

    fn entry(n: u32) -> Entry {
        Entry::system(
            "test.entry",
            &n.to_string(),
            "",
            Outcome::Ok,
            serde_json::json!({}),
        )
    }

    #[tokio::test]
    async fn the_head_is_signed_once_at_start_then_after_appends_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let signer = Arc::new(DocumentSigner::from_secret(&[3; 32]));
        let log = AuditLog::new(store, signer.clone());
        log.record(entry(1)).await;
        let t0 = Instant::now();
        let first = log.head_due(t0).await.expect("a head at start");
        let head = audit_head::verify(&signer.verifying_key(), &first).unwrap();
        assert_eq!(head.seq, 1);
        assert_eq!(log.published_head(), Some(first));
        assert!(
            log.head_due(t0 + HEAD_INTERVAL).await.is_none(),
            "nothing new"
        );
        log.record(entry(2)).await;
        assert!(
            log.head_due(t0 + HEAD_INTERVAL / 2).await.is_none(),
            "rate-limited"
        );
        let next = log
            .head_due(t0 + HEAD_INTERVAL)
            .await
            .expect("after appends");
        let next = audit_head::verify(&signer.verifying_key(), &next).unwrap();
        assert_eq!(next.seq, 2);
        assert_eq!(log.signed_head().await.unwrap().hash, next.hash);
    }

    #[tokio::test]
    async fn retention_prunes_behind_its_checkpoints_and_the_log_still_verifies() {
        use edgefleet_store::audit::Retention;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let log = AuditLog::new(
            store.clone(),
            Arc::new(DocumentSigner::from_secret(&[3; 32])),
        );
        for n in 1..=5 {
            log.record(entry(n)).await;
        }
        assert!(log.verify_incremental().await.unwrap().ok);
        // The first run only writes a checkpoint (#6): nothing is behind an old enough one.
        let day = Duration::from_secs(86_400);
        assert_eq!(log.retain(Retention::Age(day)).await.unwrap(), 0);
        assert_eq!(log.retain(Retention::Count(2)).await.unwrap(), 5);
        let v = log.verify_incremental().await.unwrap();
        assert!(v.ok, "{v:?}");
        let full = log.verify_full().await.unwrap();
        assert!(full.ok, "{full:?}");
        // #6 and #7 checkpoints, then the audit.prune record.
        assert_eq!((full.records, full.head_seq), (3, 8));
        assert!(log.signed_head().await.is_ok());
    }

    #[tokio::test]
    async fn a_broken_chain_gets_no_signed_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).await.unwrap();
        let log = AuditLog::new(store, Arc::new(DocumentSigner::from_secret(&[3; 32])));
        for n in 1..=3 {
            log.record(entry(n)).await;
        }
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "DROP TRIGGER audit_no_update; UPDATE audit SET target = 'x' WHERE seq = 2;",
        )
        .unwrap();
        let err = log.signed_head().await.unwrap_err();
        assert!(matches!(&err, HeadError::Broken(b) if b.seq == 2), "{err}");
        assert!(log.head_due(Instant::now()).await.is_none());
        let v = log.verify_full().await.unwrap();
        assert!(log.sign_verified(&v).is_none());
    }
}
