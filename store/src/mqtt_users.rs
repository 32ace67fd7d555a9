//! The gateway's local MQTT users (migrations 6 and 7): name, role, the SHA-256 of the
//! password (random, shown once at creation), who created it, and (role `local`) the topic
//! filters it may read and write. Changed only by admins through the
//! API; read at every gateway start and after every change, into the network front.

use tokio_rusqlite::rusqlite::{ErrorCode, params};

use crate::{Store, StoreError};

/// One local MQTT user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUserRow {
    pub name: String,
    /// `local`, `bridge`, `device:<id>` or `integrator:<name>`.
    pub role: String,
    pub password_sha256: String,
    pub created_at: String,
    pub created_by: String,
    /// Topic filters a `local` user may read (receive) and write (publish).
    pub read: Vec<String>,
    pub write: Vec<String>,
}

fn filters_json(filters: &[String]) -> String {
    serde_json::to_string(filters).unwrap_or_else(|_| "[]".to_owned())
}

/// A stored filter list; an unreadable one grants nothing (never more than was stored).
fn filters_of(column: String) -> Vec<String> {
    serde_json::from_str(&column).unwrap_or_default()
}

impl Store {
    /// Adds a user; `Ok(false)` if the name is taken.
    pub async fn insert_mqtt_user(&self, row: MqttUserRow) -> Result<bool, StoreError> {
        self.write(move |c| {
            let inserted = c.execute(
                "INSERT INTO mqtt_users (name, role, password_sha256, created_at, created_by,
                                         read_filters, write_filters)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    row.name,
                    row.role,
                    row.password_sha256,
                    row.created_at,
                    row.created_by,
                    filters_json(&row.read),
                    filters_json(&row.write),
                ],
            );
            match inserted {
                Ok(_) => Ok(true),
                Err(tokio_rusqlite::rusqlite::Error::SqliteFailure(e, _))
                    if e.code == ErrorCode::ConstraintViolation =>
                {
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Every user, by name.
    pub async fn mqtt_users(&self) -> Result<Vec<MqttUserRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name, role, password_sha256, created_at, created_by, read_filters, write_filters
                 FROM mqtt_users ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(MqttUserRow {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    password_sha256: r.get(2)?,
                    created_at: r.get(3)?,
                    created_by: r.get(4)?,
                    read: filters_of(r.get(5)?),
                    write: filters_of(r.get(6)?),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Removes a user; `false` if there was none of that name.
    pub async fn delete_mqtt_user(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |c| Ok(c.execute("DELETE FROM mqtt_users WHERE name = ?1", [name])? > 0))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn users_are_added_once_listed_and_removed() {
        let (_dir, store) = crate::test_support::store().await;
        let row = MqttUserRow {
            name: "paho".into(),
            role: "bridge".into(),
            password_sha256: "ab".repeat(32),
            created_at: "2026-01-01T00:00:00Z".into(),
            created_by: "admin".into(),
            read: vec!["plant/#".into(), "+/+".into()],
            write: vec![],
        };
        assert!(store.insert_mqtt_user(row.clone()).await.unwrap());
        assert!(!store.insert_mqtt_user(row.clone()).await.unwrap());
        assert_eq!(store.mqtt_users().await.unwrap(), vec![row]);
        assert!(store.delete_mqtt_user("paho").await.unwrap());
        assert!(!store.delete_mqtt_user("paho").await.unwrap());
        assert!(store.mqtt_users().await.unwrap().is_empty());
    }
}
