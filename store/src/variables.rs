//! Site and device variables: one row per scope and name, with who set it when.

use std::collections::BTreeMap;

use edgefleet_domain::variables::Scope;
use serde::Serialize;
use tokio_rusqlite::rusqlite::params;

use crate::{Store, StoreError};

/// One stored variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VariableRow {
    pub scope: Scope,
    pub name: String,
    pub value: String,
    pub set_at: String,
    pub set_by: String,
}

impl Store {
    /// Every stored variable, by scope then name. A row whose scope no longer reads is
    /// skipped.
    pub async fn variables(&self) -> Result<Vec<VariableRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT scope, name, value, set_at, set_by FROM variables ORDER BY scope, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (scope, name, value, set_at, set_by) = row?;
                if let Some(scope) = Scope::from_key(&scope) {
                    out.push(VariableRow {
                        scope,
                        name,
                        value,
                        set_at,
                        set_by,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// Sets `values` in a scope (others of the scope are kept), in one transaction.
    pub async fn set_variables(
        &self,
        scope: &Scope,
        values: BTreeMap<String, String>,
        by: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        let (scope, by, now) = (scope.key(), by.to_owned(), now.to_owned());
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut put = tx.prepare_cached(
                    "INSERT INTO variables (scope, name, value, set_at, set_by) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(scope, name) DO UPDATE SET value = ?3, set_at = ?4, set_by = ?5",
                )?;
                for (name, value) in &values {
                    put.execute(params![scope, name, value, now, by])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Removes `names` from a scope (every variable of it when `names` is empty).
    pub async fn unset_variables(
        &self,
        scope: &Scope,
        names: Vec<String>,
    ) -> Result<(), StoreError> {
        let scope = scope.key();
        self.write(move |c| {
            let tx = c.transaction()?;
            if names.is_empty() {
                tx.execute("DELETE FROM variables WHERE scope = ?1", [&scope])?;
            } else {
                let mut del =
                    tx.prepare_cached("DELETE FROM variables WHERE scope = ?1 AND name = ?2")?;
                for name in &names {
                    del.execute(params![scope, name])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::store;

    #[tokio::test]
    async fn variables_round_trip_per_scope() {
        let (_dir, s) = store().await;
        assert!(s.variables().await.unwrap().is_empty());
        let lyon = Scope::Site("lyon".into());
        let press = Scope::Device("press-07".into());
        let vals = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        s.set_variables(&lyon, vals(&[("A", "1"), ("B", "2")]), "ana", "t1")
            .await
            .unwrap();
        s.set_variables(&press, vals(&[("A", "7")]), "admin", "t1")
            .await
            .unwrap();
        s.set_variables(&lyon, vals(&[("B", "3")]), "bob", "t2")
            .await
            .unwrap();
        let rows = s.variables().await.unwrap();
        let shown: Vec<(String, &str, &str, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.scope.key(),
                    r.name.as_str(),
                    r.value.as_str(),
                    r.set_by.as_str(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("device:press-07".to_string(), "A", "7", "admin"),
                ("site:lyon".to_string(), "A", "1", "ana"),
                ("site:lyon".to_string(), "B", "3", "bob"),
            ]
        );
        assert_eq!(rows[2].set_at, "t2");
        s.unset_variables(&lyon, vec!["A".into(), "NOPE".into()])
            .await
            .unwrap();
        assert_eq!(s.variables().await.unwrap().len(), 2);
        s.unset_variables(&lyon, vec![]).await.unwrap();
        let rows = s.variables().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].scope, press);
        assert_eq!(
            serde_json::to_value(&rows[0]).unwrap()["scope"],
            "device:press-07"
        );
    }
}
