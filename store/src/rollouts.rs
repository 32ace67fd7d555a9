//! Rollout state, written after every step so a restarted controller resumes exactly where
//! it was.

use tokio_rusqlite::rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError, i, u};

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

const COLUMNS: &str = "id, deployment, active, state_json, created_at, created_by, updated_at";

fn row(r: &Row<'_>) -> tokio_rusqlite::rusqlite::Result<RolloutRow> {
    Ok(RolloutRow {
        id: u(r.get(0)?),
        deployment: r.get(1)?,
        active: r.get(2)?,
        state_json: r.get(3)?,
        created_at: r.get(4)?,
        created_by: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

impl Store {
    /// Records a new rollout; returns its id.
    pub async fn insert_rollout(
        &self,
        deployment: &str,
        state_json: String,
        by: &str,
        now: &str,
    ) -> Result<u64, StoreError> {
        let (deployment, by, now) = (deployment.to_owned(), by.to_owned(), now.to_owned());
        self.write(move |c| {
            c.execute(
                "INSERT INTO rollouts (deployment, active, state_json, created_at, created_by, updated_at)
                 VALUES (?1, 1, ?2, ?3, ?4, ?3)",
                params![deployment, state_json, now, by],
            )?;
            Ok(u(c.last_insert_rowid()))
        })
        .await
    }

    pub async fn update_rollout(
        &self,
        id: u64,
        active: bool,
        state_json: String,
        now: &str,
    ) -> Result<(), StoreError> {
        let now = now.to_owned();
        self.write(move |c| {
            c.execute(
                "UPDATE rollouts SET active = ?2, state_json = ?3, updated_at = ?4 WHERE id = ?1",
                params![i(id), active, state_json, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Rollouts, newest first; only the active ones if `only_active`, at most `limit`.
    pub async fn rollouts(
        &self,
        only_active: bool,
        limit: Option<u64>,
    ) -> Result<Vec<RolloutRow>, StoreError> {
        let limit = limit.map_or(-1, i);
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM rollouts WHERE active = 1 OR ?1 = 0 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![only_active, limit], row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn rollout(&self, id: u64) -> Result<Option<RolloutRow>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM rollouts WHERE id = ?1"),
                [i(id)],
                row,
            )
            .optional()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::store;

    #[tokio::test]
    async fn rollouts_are_recorded_and_finish() {
        let (_dir, s) = store().await;
        let id = s
            .insert_rollout("web", "{}".into(), "alice", "t1")
            .await
            .unwrap();
        assert_eq!(s.rollouts(true, None).await.unwrap().len(), 1);
        s.update_rollout(id, false, "{\"done\":true}".into(), "t2")
            .await
            .unwrap();
        assert!(s.rollouts(true, None).await.unwrap().is_empty());
        assert_eq!(
            s.rollouts(false, None).await.unwrap()[0].state_json,
            "{\"done\":true}"
        );
        assert_eq!(s.rollout(id).await.unwrap().unwrap().created_by, "alice");
        assert!(s.rollout(id + 1).await.unwrap().is_none());
    }
}
