//! Persistent counters in the `meta` table (the controller's session number).

use tokio_rusqlite::rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

impl Store {
    /// Increments and returns a persistent counter (e.g. the controller's session number).
    pub async fn next_counter(&self, key: &str) -> Result<u64, StoreError> {
        let key = key.to_owned();
        self.write(move |c| {
            let current: Option<String> = c
                .query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| r.get(0))
                .optional()?;
            let next = current.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![key, next.to_string()],
            )?;
            Ok(next)
        })
        .await
    }
}
