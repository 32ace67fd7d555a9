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

use std::time::{Duration, Instant};

use edgefleet_domain::audit::{Entry, GENESIS, Outcome, Repeats, Verification};
use edgefleet_store::{Store, StoreError};
use parking_lot::Mutex;

/// Device outcomes kept at most while the store refuses them (oldest dropped, logged).
const MAX_PENDING: usize = 100_000;
/// Refusals of one kind are written once per interval, then counted.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);
/// Kinds of refusal counted separately at most (then one catch-all count).
const REPEAT_KINDS: usize = 1024;

pub struct AuditLog {
    store: Store,
    pending: Mutex<Vec<Entry>>,
    repeats: Mutex<Repeats>,
    /// The last head a walk found good: `(seq, hash)`.
    verified: tokio::sync::Mutex<(u64, String)>,
}

impl AuditLog {
    pub fn new(store: Store) -> Self {
        AuditLog {
            store,
            pending: Mutex::new(Vec::new()),
            repeats: Mutex::new(Repeats::new(REPEAT_INTERVAL, REPEAT_KINDS)),
            verified: tokio::sync::Mutex::new((0, GENESIS.to_owned())),
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
        if let Err(e) = self.store.append_audit(entries).await {
            tracing::error!(records = n, "cannot append to the audit log: {e}");
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
            Ok(_) => Ok(()),
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
            .audit_verify_after(verified.0, &verified.1)
            .await?;
        if v.ok {
            *verified = (v.head_seq, v.head_hash.clone());
        }
        Ok(v)
    }

    /// Walks the whole chain from its first record.
    pub async fn verify_full(&self) -> Result<Verification, StoreError> {
        let v = self.store.audit_verify().await?;
        if v.ok {
            *self.verified.lock().await = (v.head_seq, v.head_hash.clone());
        }
        Ok(v)
    }
}
