//! The devices' last-known state (labels, presence, status, desired document), so the fleet
//! view survives a controller restart, and their recent events.

use std::collections::BTreeSet;

use edgefleet_domain::device::DeviceView;
use serde::Serialize;
use tokio_rusqlite::rusqlite::params;

use crate::{Store, StoreError, i};

fn json<T: Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref().and_then(|v| serde_json::to_string(v).ok())
}

/// A stored column that does not decode loses only that part (logged), never the device.
fn parse<T: serde::de::DeserializeOwned>(id: &str, what: &str, s: Option<String>) -> Option<T> {
    let s = s?;
    match edgefleet_protocol::codec::decode(s.as_bytes()) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(device = id, "stored {what} unreadable, dropped: {e}");
            None
        }
    }
}

impl Store {
    /// Every stored device, by id.
    pub async fn devices(&self) -> Result<Vec<DeviceView>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, labels_json, desired_json, presence_json, status_json, last_seen
                 FROM devices ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, labels, desired, presence, status, last_seen) = row?;
                let mut v = DeviceView::new(&id);
                v.labels = serde_json::from_str(&labels).unwrap_or_default();
                v.desired = parse(&id, "desired document", desired);
                v.presence = parse(&id, "presence", presence);
                v.status = parse(&id, "status", status);
                v.last_seen = last_seen;
                out.push(v);
            }
            Ok(out)
        })
        .await
    }

    /// Writes several devices' last-known state in one transaction.
    pub async fn save_devices(&self, views: Vec<DeviceView>, now: &str) -> Result<(), StoreError> {
        if views.is_empty() {
            return Ok(());
        }
        let now = now.to_owned();
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO devices (id, labels_json, desired_revision, desired_json, presence_json, status_json, last_seen, first_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(id) DO UPDATE SET labels_json = ?2, desired_revision = ?3, desired_json = ?4,
                       presence_json = ?5, status_json = ?6, last_seen = ?7",
                )?;
                for d in &views {
                    stmt.execute(params![
                        d.id,
                        serde_json::to_string(&d.labels).unwrap_or_else(|_| "{}".into()),
                        i(d.desired_revision()),
                        json(&d.desired),
                        json(&d.presence),
                        json(&d.status),
                        d.last_seen,
                        now
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Appends device events `(device, ts, json)` and keeps at most `keep_per_device` per
    /// device.
    pub async fn append_events(
        &self,
        events: Vec<(String, String, String)>,
        keep_per_device: u64,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut ins =
                    tx.prepare_cached("INSERT INTO events (device, ts, json) VALUES (?1, ?2, ?3)")?;
                for (device, ts, json) in &events {
                    ins.execute(params![device, ts, json])?;
                }
                let mut trim = tx.prepare_cached(
                    "DELETE FROM events WHERE device = ?1 AND seq <= (SELECT seq FROM events WHERE device = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                )?;
                let mut seen = BTreeSet::new();
                for (device, _, _) in &events {
                    if seen.insert(device) {
                        trim.execute(params![device, i(keep_per_device)])?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The newest `limit` events of a device, oldest first (JSON documents).
    pub async fn events(&self, device: &str, limit: u64) -> Result<Vec<String>, StoreError> {
        let device = device.to_owned();
        self.read(move |c| {
            let mut stmt =
                c.prepare("SELECT json FROM events WHERE device = ?1 ORDER BY seq DESC LIMIT ?2")?;
            let mut rows: Vec<String> = stmt
                .query_map(params![device, i(limit)], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            rows.reverse();
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::store;

    #[tokio::test]
    async fn events_are_trimmed_per_device() {
        let (_dir, s) = store().await;
        let evs: Vec<_> = (0..10)
            .map(|n| ("d1".to_string(), "t".to_string(), format!("{n}")))
            .collect();
        s.append_events(evs, 4).await.unwrap();
        assert_eq!(s.events("d1", 100).await.unwrap(), vec!["6", "7", "8", "9"]);
    }

    #[tokio::test]
    async fn devices_round_trip_and_bad_columns_lose_only_themselves() {
        let (_dir, s) = store().await;
        let mut d = DeviceView::new("d1");
        d.labels.insert("site".into(), "lyon".into());
        d.last_seen = Some("t".into());
        s.save_devices(vec![d], "now").await.unwrap();
        s.write(|c| {
            c.execute(
                "UPDATE devices SET status_json = '{not json' WHERE id = 'd1'",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
        let back = s.devices().await.unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].labels["site"], "lyon");
        assert!(back[0].status.is_none());
    }
}
