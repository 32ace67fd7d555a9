//! Workload policies: the fleet default and each site's. Kept in memory (loaded at start,
//! changed only here) so documents and applies never read the store for them; the store
//! is written first, so a failed write changes nothing.

use edgefleet_domain::policy::{PolicySet, PolicySource, validate};
use edgefleet_protocol::policy::WorkloadPolicy;
use edgefleet_store::{Store, StoreError};
use parking_lot::RwLock;
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored policy with who set it and when.
#[derive(Debug, Clone, Serialize)]
pub struct SetPolicy {
    pub policy: WorkloadPolicy,
    pub set_at: String,
    pub set_by: String,
}

pub struct Policies {
    store: Store,
    set: RwLock<PolicySet>,
    /// Who set each one (`None`: the fleet default).
    meta: RwLock<std::collections::BTreeMap<Option<String>, (String, String)>>,
}

impl Policies {
    /// Loads the stored policies. One that no longer reads is logged and its scope falls
    /// back to the next policy up, never to "anything goes": the baseline is the floor.
    pub async fn load(store: Store) -> Result<Self, StoreError> {
        let mut set = PolicySet::default();
        let mut meta = std::collections::BTreeMap::new();
        for row in store.policies().await? {
            match serde_json::from_str::<WorkloadPolicy>(&row.policy_json) {
                Ok(p) => {
                    meta.insert(row.site.clone(), (row.set_at, row.set_by));
                    match row.site {
                        Some(site) => {
                            set.sites.insert(site, p);
                        }
                        None => set.fleet = Some(p),
                    }
                }
                Err(e) => {
                    tracing::error!(site = ?row.site, "stored workload policy unreadable, ignored: {e}")
                }
            }
        }
        Ok(Policies {
            store,
            set: RwLock::new(set),
            meta: RwLock::new(meta),
        })
    }

    /// The policy a device of `site` runs under, and where it comes from.
    pub fn effective(&self, site: Option<&str>) -> (PolicySource, WorkloadPolicy) {
        self.set.read().effective(site)
    }

    /// Every policy set.
    pub fn all(&self) -> PolicySet {
        self.set.read().clone()
    }

    /// Who set the policy of `site` (`None`: the fleet default) and when.
    pub fn set_by(&self, site: Option<&str>) -> Option<(String, String)> {
        self.meta.read().get(&site.map(str::to_owned)).cloned()
    }

    /// Sets (`Some`) or clears the policy of a site (`None`: the fleet default).
    pub async fn set(
        &self,
        site: Option<&str>,
        policy: Option<WorkloadPolicy>,
        by: &str,
    ) -> Result<(), PolicyError> {
        if let Some(site) = site {
            edgefleet_protocol::ids::validate_label("site", site)
                .map_err(|e| PolicyError::Invalid(e.to_string()))?;
        }
        if let Some(p) = &policy {
            validate(p).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        }
        let json = policy
            .as_ref()
            .map(|p| serde_json::to_string(p).unwrap_or_default());
        let now = edgefleet_protocol::now_rfc3339();
        self.store.set_policy(site, json, by, &now).await?;
        let mut set = self.set.write();
        let mut meta = self.meta.write();
        let key = site.map(str::to_owned);
        match (site, policy) {
            (Some(site), Some(p)) => {
                set.sites.insert(site.to_owned(), p);
                meta.insert(key, (now, by.to_owned()));
            }
            (Some(site), None) => {
                set.sites.remove(site);
                meta.remove(&key);
            }
            (None, Some(p)) => {
                set.fleet = Some(p);
                meta.insert(key, (now, by.to_owned()));
            }
            (None, None) => {
                set.fleet = None;
                meta.remove(&key);
            }
        }
        Ok(())
    }
}
