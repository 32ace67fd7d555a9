//! Device identities (migration 5): one-time enrollment tokens (only the SHA-256 of their
//! secret, with the labels and expiry) and every issued client certificate's serial, with
//! its revocation.

use std::collections::BTreeMap;

use thiserror::Error;
use tokio_rusqlite::rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::{Store, StoreError};

/// Why a token was refused at the enrollment listener (said to the agent as is).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("unknown enrollment token: ask for a new one with 'edgefleet device add'")]
    Unknown,
    #[error(
        "this enrollment token was already used: ask for a new one with 'edgefleet device add'"
    )]
    Used,
    #[error("this enrollment token has expired: ask for a new one with 'edgefleet device add'")]
    Expired,
}

impl Store {
    pub async fn insert_enrollment(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        secret_sha256: &str,
        expires_at: i64,
        created_by: &str,
    ) -> Result<(), StoreError> {
        let (device, secret, by) = (
            device.to_owned(),
            secret_sha256.to_owned(),
            created_by.to_owned(),
        );
        let labels = serde_json::to_string(labels).unwrap_or_else(|_| "{}".into());
        self.write(move |c| {
            c.execute(
                "INSERT INTO enrollments (device, labels_json, secret_sha256, created_at, expires_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![device, labels, secret, edgefleet_protocol::now_rfc3339(), expires_at, by],
            )?;
            Ok(())
        })
        .await
    }

    /// Checks and consumes a token in one transaction: a token can be redeemed once. Returns
    /// the device's labels, or why the token is refused.
    pub async fn redeem_enrollment(
        &self,
        device: &str,
        secret_sha256: &str,
        now: i64,
    ) -> Result<Result<BTreeMap<String, String>, Refusal>, StoreError> {
        let (device, secret) = (device.to_owned(), secret_sha256.to_owned());
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(i64, String, i64, Option<String>)> = tx
                .query_row(
                    "SELECT id, labels_json, expires_at, used_at FROM enrollments
                     WHERE device = ?1 AND secret_sha256 = ?2",
                    params![device, secret],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let verdict = match row {
                None => Err(Refusal::Unknown),
                Some((_, _, _, Some(_))) => Err(Refusal::Used),
                Some((_, _, expires, None)) if expires <= now => Err(Refusal::Expired),
                Some((id, labels, _, None)) => {
                    tx.execute(
                        "UPDATE enrollments SET used_at = ?1 WHERE id = ?2",
                        params![edgefleet_protocol::now_rfc3339(), id],
                    )?;
                    Ok(serde_json::from_str(&labels).unwrap_or_default())
                }
            };
            tx.commit()?;
            Ok(verdict)
        })
        .await
    }

    /// Records an issued certificate (`not_after` in unix seconds).
    pub async fn record_certificate(
        &self,
        identity: &str,
        serial: &str,
        not_after: i64,
    ) -> Result<(), StoreError> {
        let (identity, serial) = (identity.to_owned(), serial.to_owned());
        self.write(move |c| {
            c.execute(
                "INSERT INTO certificates (serial, identity, issued_at, not_after) VALUES (?1, ?2, ?3, ?4)",
                params![serial, identity, edgefleet_protocol::now_rfc3339(), not_after],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks every certificate of `identity` revoked and cancels the unused tokens of
    /// `device`; returns all its serials (revoked now or before).
    pub async fn revoke(
        &self,
        identity: &str,
        device: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let (identity, device) = (identity.to_owned(), device.map(str::to_owned));
        self.write(move |c| {
            let tx = c.transaction()?;
            let now = edgefleet_protocol::now_rfc3339();
            tx.execute(
                "UPDATE certificates SET revoked_at = ?1 WHERE identity = ?2 AND revoked_at IS NULL",
                params![now, identity],
            )?;
            if let Some(device) = &device {
                tx.execute(
                    "UPDATE enrollments SET used_at = ?1 WHERE device = ?2 AND used_at IS NULL",
                    params![now, device],
                )?;
            }
            let serials = {
                let mut stmt = tx.prepare("SELECT serial FROM certificates WHERE identity = ?1")?;
                stmt.query_map([&identity], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?
            };
            tx.commit()?;
            Ok(serials)
        })
        .await
    }

    /// Serials of every revoked certificate (handed to the front at start).
    /// Every serial this store recorded at issue (revoked ones included): what the network
    /// front admits.
    pub async fn issued_serials(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT serial FROM certificates")?;
            let serials = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(serials)
        })
        .await
    }

    /// Marks revoked every certificate of `identity` but `keep` (a device enrolled again:
    /// its earlier certificates stop working); returns the serials revoked now.
    pub async fn revoke_all_but(
        &self,
        identity: &str,
        keep: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (identity, keep) = (identity.to_owned(), keep.to_owned());
        self.write(move |c| {
            let tx = c.transaction()?;
            let serials = {
                let mut stmt = tx.prepare(
                    "SELECT serial FROM certificates
                     WHERE identity = ?1 AND serial != ?2 AND revoked_at IS NULL",
                )?;
                stmt.query_map(params![identity, keep], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?
            };
            tx.execute(
                "UPDATE certificates SET revoked_at = ?1
                 WHERE identity = ?2 AND serial != ?3 AND revoked_at IS NULL",
                params![edgefleet_protocol::now_rfc3339(), identity, keep],
            )?;
            tx.commit()?;
            Ok(serials)
        })
        .await
    }

    pub async fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")?;
            let serials = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(serials)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::store;

    #[tokio::test]
    async fn a_token_is_redeemed_once_and_expires() {
        let (_dir, store) = store().await;
        let labels = BTreeMap::from([("site".to_owned(), "lyon".to_owned())]);
        store
            .insert_enrollment("d1", &labels, "s1", 1000, "admin")
            .await
            .unwrap();
        store
            .insert_enrollment("d2", &labels, "s2", 1000, "admin")
            .await
            .unwrap();
        assert_eq!(
            store.redeem_enrollment("d1", "wrong", 10).await.unwrap(),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            store.redeem_enrollment("d2", "s1", 10).await.unwrap(),
            Err(Refusal::Unknown),
            "a token is bound to its device"
        );
        assert_eq!(
            store.redeem_enrollment("d1", "s1", 10).await.unwrap(),
            Ok(labels)
        );
        assert_eq!(
            store.redeem_enrollment("d1", "s1", 10).await.unwrap(),
            Err(Refusal::Used)
        );
        assert_eq!(
            store.redeem_enrollment("d2", "s2", 1000).await.unwrap(),
            Err(Refusal::Expired)
        );
    }

    #[tokio::test]
    async fn revocation_covers_every_certificate_of_an_identity() {
        let (_dir, store) = store().await;
        store.record_certificate("d1", "aa", 10).await.unwrap();
        store.record_certificate("d1", "bb", 10).await.unwrap();
        store.record_certificate("d2", "cc", 10).await.unwrap();
        let mut serials = store.revoke("d1", Some("d1")).await.unwrap();
        serials.sort();
        assert_eq!(serials, ["aa", "bb"]);
        let mut revoked = store.revoked_serials().await.unwrap();
        revoked.sort();
        assert_eq!(revoked, ["aa", "bb"]);
    }
}
