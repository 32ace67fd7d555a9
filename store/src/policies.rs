//! Workload policies: the fleet default and each site's, as their JSON, with who set them.

use serde::Serialize;
use tokio_rusqlite::rusqlite::params;

use crate::{Store, StoreError};

/// One stored policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRow {
    /// `None`: the fleet default.
    pub site: Option<String>,
    pub policy_json: String,
    pub set_at: String,
    pub set_by: String,
}

fn scope(site: Option<&str>) -> String {
    match site {
        Some(s) => format!("site:{s}"),
        None => "fleet".to_owned(),
    }
}

impl Store {
    /// Every stored policy (the fleet default first, then sites by name).
    pub async fn policies(&self) -> Result<Vec<PolicyRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT scope, policy_json, set_at, set_by FROM workload_policies ORDER BY scope",
            )?;
            let rows = stmt.query_map([], |r| {
                let scope: String = r.get(0)?;
                Ok(PolicyRow {
                    site: scope.strip_prefix("site:").map(str::to_owned),
                    policy_json: r.get(1)?,
                    set_at: r.get(2)?,
                    set_by: r.get(3)?,
                })
            })?;
            let mut rows: Vec<PolicyRow> = rows.collect::<Result<_, _>>()?;
            rows.sort_by(|a, b| a.site.cmp(&b.site));
            Ok(rows)
        })
        .await
    }

    /// Sets (`Some(json)`) or removes (`None`) the policy of a site (`None`: the fleet
    /// default).
    pub async fn set_policy(
        &self,
        site: Option<&str>,
        policy_json: Option<String>,
        by: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        let (scope, by, now) = (scope(site), by.to_owned(), now.to_owned());
        self.write(move |c| {
            match policy_json {
                Some(json) => c.execute(
                    "INSERT INTO workload_policies (scope, policy_json, set_at, set_by)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(scope) DO UPDATE SET policy_json = ?2, set_at = ?3, set_by = ?4",
                    params![scope, json, now, by],
                )?,
                None => c.execute("DELETE FROM workload_policies WHERE scope = ?1", [scope])?,
            };
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[tokio::test]
    async fn policies_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).await.unwrap();
        assert!(s.policies().await.unwrap().is_empty());
        s.set_policy(
            Some("lyon"),
            Some(r#"{"privileged":true}"#.into()),
            "admin",
            "t1",
        )
        .await
        .unwrap();
        s.set_policy(None, Some("{}".into()), "admin", "t1")
            .await
            .unwrap();
        s.set_policy(
            Some("lyon"),
            Some(r#"{"host_network":true}"#.into()),
            "ops",
            "t2",
        )
        .await
        .unwrap();
        let rows = s.policies().await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].site, None);
        assert_eq!(rows[1].site.as_deref(), Some("lyon"));
        assert_eq!(rows[1].policy_json, r#"{"host_network":true}"#);
        assert_eq!(rows[1].set_by, "ops");
        s.set_policy(Some("lyon"), None, "admin", "t3")
            .await
            .unwrap();
        assert_eq!(s.policies().await.unwrap().len(), 1);
    }
}
