//! What the gateway keeps sealed: the secrets of deployment revisions and the registry
//! credentials, each as a [`Sealed`](edgefleet_protocol::sealed::Sealed) JSON for the
//! gateway's own key (the store never holds them in clear), and the public key of every
//! issued device certificate, which the gateway seals for.

use serde::Serialize;
use tokio_rusqlite::rusqlite::params;

use crate::{Store, StoreError};

/// One secret of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub deployment: String,
    pub revision: u64,
    pub name: String,
    pub digest: String,
    pub sealed_json: String,
}

/// One registry's credential (the password only sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryRow {
    pub host: String,
    /// Sites whose devices get it; empty: every site.
    pub sites: Vec<String>,
    pub username: String,
    pub digest: String,
    #[serde(skip)]
    pub sealed_json: String,
    pub set_at: String,
    pub set_by: String,
}

impl Store {
    /// Keeps the sealed secrets of a revision (replacing any of the same names).
    pub async fn put_revision_secrets(&self, rows: Vec<SecretRow>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write(move |c| {
            let tx = c.transaction()?;
            for r in &rows {
                tx.execute(
                    "INSERT INTO revision_secrets (deployment, revision, name, digest, sealed_json)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(deployment, revision, name) DO UPDATE SET digest = ?4, sealed_json = ?5",
                    params![r.deployment, r.revision as i64, r.name, r.digest, r.sealed_json],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Every kept secret.
    pub async fn revision_secrets(&self) -> Result<Vec<SecretRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT deployment, revision, name, digest, sealed_json FROM revision_secrets
                 ORDER BY deployment, revision, name",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(SecretRow {
                        deployment: r.get(0)?,
                        revision: r.get::<_, i64>(1)? as u64,
                        name: r.get(2)?,
                        digest: r.get(3)?,
                        sealed_json: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Every registry credential, by host.
    pub async fn registry_credentials(&self) -> Result<Vec<RegistryRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT host, sites_json, username, digest, sealed_json, set_at, set_by
                 FROM registry_credentials ORDER BY host",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    let sites: String = r.get(1)?;
                    Ok(RegistryRow {
                        host: r.get(0)?,
                        sites: serde_json::from_str(&sites).unwrap_or_default(),
                        username: r.get(2)?,
                        digest: r.get(3)?,
                        sealed_json: r.get(4)?,
                        set_at: r.get(5)?,
                        set_by: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Sets (`Some`) or removes (`None`) the credential of `host`; says whether one existed.
    pub async fn set_registry_credential(
        &self,
        host: &str,
        row: Option<RegistryRow>,
    ) -> Result<bool, StoreError> {
        let host = host.to_owned();
        self.write(move |c| {
            let existed: bool = c
                .query_row(
                    "SELECT COUNT(*) FROM registry_credentials WHERE host = ?1",
                    params![host],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)?;
            match row {
                Some(r) => {
                    c.execute(
                        "INSERT INTO registry_credentials (host, sites_json, username, digest, sealed_json, set_at, set_by)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT(host) DO UPDATE SET sites_json = ?2, username = ?3, digest = ?4,
                             sealed_json = ?5, set_at = ?6, set_by = ?7",
                        params![
                            host,
                            serde_json::to_string(&r.sites).unwrap_or_else(|_| "[]".into()),
                            r.username,
                            r.digest,
                            r.sealed_json,
                            r.set_at,
                            r.set_by
                        ],
                    )?;
                }
                None => {
                    c.execute(
                        "DELETE FROM registry_credentials WHERE host = ?1",
                        params![host],
                    )?;
                }
            }
            Ok(existed)
        })
        .await
    }

    /// Records the public key (hex SEC1) of an issued certificate.
    pub async fn set_certificate_key(
        &self,
        serial: &str,
        public_key_hex: &str,
    ) -> Result<(), StoreError> {
        let (serial, key) = (serial.to_owned(), public_key_hex.to_owned());
        self.write(move |c| {
            c.execute(
                "UPDATE certificates SET public_key = ?2 WHERE serial = ?1",
                params![serial, key],
            )?;
            Ok(())
        })
        .await
    }

    /// The public key of each identity's newest unrevoked certificate that has one:
    /// (identity, hex SEC1).
    pub async fn certificate_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT identity, public_key FROM certificates
                 WHERE revoked_at IS NULL AND public_key IS NOT NULL
                 ORDER BY identity, issued_at, rowid",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            // The newest wins: later rows overwrite earlier ones.
            let mut newest = std::collections::BTreeMap::new();
            for (identity, key) in rows {
                newest.insert(identity, key);
            }
            Ok(newest.into_iter().collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::store;

    #[tokio::test]
    async fn sealed_rows_and_certificate_keys_round_trip() {
        let (_dir, s) = store().await;
        s.put_revision_secrets(vec![SecretRow {
            deployment: "app".into(),
            revision: 2,
            name: "db".into(),
            digest: "d".into(),
            sealed_json: "{}".into(),
        }])
        .await
        .unwrap();
        assert_eq!(s.revision_secrets().await.unwrap()[0].revision, 2);
        let row = RegistryRow {
            host: "registry.plant.local".into(),
            sites: vec!["lyon".into()],
            username: "u".into(),
            digest: "d".into(),
            sealed_json: "{}".into(),
            set_at: "t".into(),
            set_by: "admin".into(),
        };
        assert!(
            !s.set_registry_credential("registry.plant.local", Some(row.clone()))
                .await
                .unwrap()
        );
        assert_eq!(s.registry_credentials().await.unwrap(), vec![row]);
        assert!(
            s.set_registry_credential("registry.plant.local", None)
                .await
                .unwrap()
        );
        assert!(s.registry_credentials().await.unwrap().is_empty());
        s.record_certificate("device:d1", "01", 0).await.unwrap();
        s.record_certificate("device:d1", "02", 0).await.unwrap();
        s.set_certificate_key("01", "aa").await.unwrap();
        s.set_certificate_key("02", "bb").await.unwrap();
        assert_eq!(
            s.certificate_keys().await.unwrap(),
            vec![("device:d1".to_string(), "bb".to_string())]
        );
    }
}
