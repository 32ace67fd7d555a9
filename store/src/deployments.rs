//! Deployments and their immutable revisions (the configuration history), the pins that
//! hold devices on a revision during a rollout, and the sites' maintenance windows.

use edgefleet_domain::deployment::RevisionSpec;
use serde::Serialize;
use tokio_rusqlite::rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{Store, StoreError, i, u};

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentRow {
    pub name: String,
    pub target: String,
    pub revision: u64,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevisionRow {
    pub deployment: String,
    pub revision: u64,
    pub target: String,
    pub created_at: String,
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose: Option<String>,
    #[serde(skip)]
    pub spec_json: String,
}

fn deployment_row(r: &Row<'_>) -> tokio_rusqlite::rusqlite::Result<DeploymentRow> {
    Ok(DeploymentRow {
        name: r.get(0)?,
        target: r.get(1)?,
        revision: u(r.get(2)?),
        updated_at: r.get(3)?,
    })
}

fn revision_row(r: &Row<'_>) -> tokio_rusqlite::rusqlite::Result<RevisionRow> {
    Ok(RevisionRow {
        deployment: r.get(0)?,
        revision: u(r.get(1)?),
        target: r.get(2)?,
        created_at: r.get(3)?,
        created_by: r.get(4)?,
        compose: Some(r.get(5)?),
        spec_json: r.get(6)?,
    })
}

fn deployment(c: &Connection, name: &str) -> Result<Option<DeploymentRow>, StoreError> {
    Ok(c.query_row(
        "SELECT name, target, latest_revision, updated_at FROM deployments WHERE name = ?1 AND deleted = 0",
        [name],
        deployment_row,
    )
    .optional()?)
}

/// The latest revision of `name`, if it has exactly this target and spec (applying them
/// again records nothing).
fn latest_matching(
    c: &Connection,
    name: &str,
    target: &str,
    spec: &RevisionSpec,
) -> Result<Option<u64>, StoreError> {
    let Some(d) = deployment(c, name)? else {
        return Ok(None);
    };
    let same = d.target == target
        && revision(c, name, d.revision)?
            .is_some_and(|r| RevisionSpec::from_json(&r.spec_json).ok().as_ref() == Some(spec));
    Ok(same.then_some(d.revision))
}

fn revision(c: &Connection, name: &str, revision: u64) -> Result<Option<RevisionRow>, StoreError> {
    Ok(c.query_row(
        "SELECT deployment, revision, target, created_at, created_by, compose, spec_json
         FROM revisions WHERE deployment = ?1 AND revision = ?2",
        params![name, i(revision)],
        revision_row,
    )
    .optional()?)
}

/// What [`Store::record_revision`] takes.
#[derive(Debug, Clone)]
pub struct NewRevision {
    pub name: String,
    pub target: String,
    pub compose: String,
    pub spec: RevisionSpec,
    pub by: String,
    pub now: String,
}

impl Store {
    pub async fn deployments(&self) -> Result<Vec<DeploymentRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name, target, latest_revision, updated_at FROM deployments WHERE deleted = 0 ORDER BY name",
            )?;
            let rows = stmt.query_map([], deployment_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Whether `name`'s latest revision already has this target and spec, as
    /// [`Store::record_revision`] decides it.
    pub async fn is_latest(
        &self,
        name: &str,
        target: &str,
        spec: &RevisionSpec,
    ) -> Result<bool, StoreError> {
        let (name, target, spec) = (name.to_owned(), target.to_owned(), spec.clone());
        self.read(move |c| Ok(latest_matching(c, &name, &target, &spec)?.is_some()))
            .await
    }

    pub async fn deployment(&self, name: &str) -> Result<Option<DeploymentRow>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| deployment(c, &name)).await
    }

    /// Every revision of a deployment (also of a deleted one), oldest first.
    pub async fn revisions(&self, name: &str) -> Result<Vec<RevisionRow>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT deployment, revision, target, created_at, created_by, compose, spec_json
                 FROM revisions WHERE deployment = ?1 ORDER BY revision",
            )?;
            let rows = stmt.query_map([name], revision_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn revision(
        &self,
        name: &str,
        number: u64,
    ) -> Result<Option<RevisionRow>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| revision(c, &name, number)).await
    }

    /// Records a new immutable revision and makes it the deployment's latest, unless the
    /// latest revision has the same target and spec. Returns its number and whether it is
    /// new. The comparison and the insert are one transaction on the writer. Numbering
    /// continues across delete and re-create of the same name.
    pub async fn record_revision(&self, new: NewRevision) -> Result<(u64, bool), StoreError> {
        self.write(move |c| {
            let tx = c.transaction()?;
            if let Some(latest) = latest_matching(&tx, &new.name, &new.target, &new.spec)? {
                return Ok((latest, false));
            }
            let last: Option<i64> = tx.query_row(
                "SELECT MAX(revision) FROM revisions WHERE deployment = ?1",
                [&new.name],
                |r| r.get(0),
            )?;
            let number = u(last.unwrap_or(0)) + 1;
            tx.execute(
                "INSERT INTO revisions (deployment, revision, target, compose, spec_json, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![new.name, i(number), new.target, new.compose, new.spec.to_json(), new.now, new.by],
            )?;
            tx.execute(
                "INSERT INTO deployments (name, target, latest_revision, deleted, updated_at) VALUES (?1, ?2, ?3, 0, ?4)
                 ON CONFLICT(name) DO UPDATE SET target = ?2, latest_revision = ?3, deleted = 0, updated_at = ?4",
                params![new.name, new.target, i(number), new.now],
            )?;
            tx.commit()?;
            Ok((number, true))
        })
        .await
    }

    /// Marks a deployment deleted (its revisions stay as history). False if it did not exist.
    pub async fn delete_deployment(&self, name: &str, now: &str) -> Result<bool, StoreError> {
        let (name, now) = (name.to_owned(), now.to_owned());
        self.write(move |c| {
            let n = c.execute(
                "UPDATE deployments SET deleted = 1, updated_at = ?2 WHERE name = ?1 AND deleted = 0",
                params![name, now],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Every pin: (device, deployment) → the deployment revision the device must run instead
    /// of the latest (set by rollouts).
    pub async fn pins(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT device, deployment, revision FROM pins")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, u(r.get(2)?))))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Sets (`Some`) or clears (`None`) the pins of several devices for one deployment.
    pub async fn set_pins(
        &self,
        deployment: &str,
        pins: Vec<(String, Option<u64>)>,
    ) -> Result<(), StoreError> {
        let deployment = deployment.to_owned();
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut set = tx.prepare_cached(
                    "INSERT INTO pins (device, deployment, revision) VALUES (?1, ?2, ?3)
                     ON CONFLICT(device, deployment) DO UPDATE SET revision = ?3",
                )?;
                let mut clear =
                    tx.prepare_cached("DELETE FROM pins WHERE device = ?1 AND deployment = ?2")?;
                for (device, rev) in &pins {
                    match rev {
                        Some(r) => set.execute(params![device, deployment, i(*r)])?,
                        None => clear.execute(params![device, deployment])?,
                    };
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Maintenance windows per site: (site, spec, time zone).
    pub async fn site_windows(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT site, spec, tz FROM site_windows ORDER BY site")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Sets (`Some((spec, tz))`) or removes (`None`) a site's maintenance window.
    pub async fn set_site_window(
        &self,
        site: &str,
        window: Option<(String, String)>,
    ) -> Result<(), StoreError> {
        let site = site.to_owned();
        self.write(move |c| {
            match window {
                Some((spec, tz)) => c.execute(
                    "INSERT INTO site_windows (site, spec, tz) VALUES (?1, ?2, ?3)
                     ON CONFLICT(site) DO UPDATE SET spec = ?2, tz = ?3",
                    params![site, spec, tz],
                )?,
                None => c.execute("DELETE FROM site_windows WHERE site = ?1", [site])?,
            };
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::test_support::store;

    fn new(name: &str, target: &str, compose: &str, image: &str, by: &str) -> NewRevision {
        let spec: RevisionSpec = serde_json::from_value(serde_json::json!({
            "volumes": [], "services": {"app": {"image": image}}
        }))
        .unwrap();
        NewRevision {
            name: name.into(),
            target: target.into(),
            compose: compose.into(),
            spec,
            by: by.into(),
            now: "t".into(),
        }
    }

    #[tokio::test]
    async fn revisions_are_immutable_and_numbering_survives_delete() {
        let (_dir, s) = store().await;
        assert_eq!(
            s.record_revision(new("web", "*", "a", "a:1", "alice"))
                .await
                .unwrap(),
            (1, true)
        );
        assert_eq!(
            s.record_revision(new("web", "*", "a again", "a:1", "alice"))
                .await
                .unwrap(),
            (1, false),
            "same target and spec: nothing recorded"
        );
        assert_eq!(
            s.record_revision(new("web", "site=x", "b", "a:1", "bob"))
                .await
                .unwrap(),
            (2, true)
        );
        assert!(s.delete_deployment("web", "t3").await.unwrap());
        assert!(!s.delete_deployment("web", "t3").await.unwrap());
        assert!(s.deployment("web").await.unwrap().is_none());
        assert_eq!(s.revisions("web").await.unwrap().len(), 2);
        assert_eq!(
            s.record_revision(new("web", "*", "c", "c:1", "carol"))
                .await
                .unwrap(),
            (3, true)
        );
        assert_eq!(s.deployment("web").await.unwrap().unwrap().revision, 3);
        assert_eq!(
            s.revision("web", 1)
                .await
                .unwrap()
                .unwrap()
                .compose
                .as_deref(),
            Some("a")
        );
        assert_eq!(s.deployments().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn pins_and_windows() {
        let (_dir, s) = store().await;
        s.set_pins("web", vec![("d1".into(), Some(1)), ("d2".into(), Some(1))])
            .await
            .unwrap();
        s.set_pins("web", vec![("d1".into(), Some(2)), ("d2".into(), None)])
            .await
            .unwrap();
        assert_eq!(
            s.pins().await.unwrap(),
            vec![("d1".to_string(), "web".to_string(), 2)]
        );
        s.set_site_window("lyon", Some(("daily 22:00-04:00".into(), "UTC".into())))
            .await
            .unwrap();
        let w: BTreeMap<_, _> = s
            .site_windows()
            .await
            .unwrap()
            .into_iter()
            .map(|(site, spec, _)| (site, spec))
            .collect();
        assert_eq!(w["lyon"], "daily 22:00-04:00");
        s.set_site_window("lyon", None).await.unwrap();
        assert!(s.site_windows().await.unwrap().is_empty());
    }
}
