//! Workload policies: the fleet default and each site's. Kept in memory (loaded at start,
//! changed only here) so documents and applies never read the store for them; the store
//! is written first, so a failed write changes nothing.

use std::collections::BTreeMap;

use edgefleet_domain::policy::{PolicySet, PolicySource, validate};
use edgefleet_protocol::policy::WorkloadPolicy;
use edgefleet_store::{Store, StoreError};
use parking_lot::RwLock;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The policy a device of a site runs under, where it comes from, and who set it when
/// (`None` for the baseline).
#[derive(Debug, Clone)]
pub struct Effective {
    pub source: PolicySource,
    pub policy: WorkloadPolicy,
    /// (set_at, set_by)
    pub set: Option<(String, String)>,
}

#[derive(Default)]
struct Inner {
    set: PolicySet,
    /// Who set each policy and when, by scope (`None`: the fleet default).
    meta: BTreeMap<Option<String>, (String, String)>,
}

pub struct Policies {
    store: Store,
    /// One lock for the policies and who set them, so a reader sees both of one change.
    inner: RwLock<Inner>,
}

impl Policies {
    /// Loads the stored policies. One that no longer reads is logged and its scope falls
    /// back to the next policy up, never to "anything goes": the baseline is the floor.
    pub async fn load(store: Store) -> Result<Self, StoreError> {
        let mut inner = Inner::default();
        for row in store.policies().await? {
            match serde_json::from_str::<WorkloadPolicy>(&row.policy_json) {
                Ok(p) => inner.put(row.site.as_deref(), Some((p, row.set_at, row.set_by))),
                Err(e) => {
                    tracing::error!(site = ?row.site, "stored workload policy unreadable, ignored: {e}")
                }
            }
        }
        Ok(Policies {
            store,
            inner: RwLock::new(inner),
        })
    }

    /// The policy a device of `site` runs under, and where it comes from.
    pub fn effective(&self, site: Option<&str>) -> (PolicySource, WorkloadPolicy) {
        self.inner.read().set.effective(site)
    }

    /// [`Policies::effective`] with who set it.
    pub fn shown(&self, site: Option<&str>) -> Effective {
        let inner = self.inner.read();
        let (source, policy) = inner.set.effective(site);
        let set = match &source {
            PolicySource::Site(s) => inner.meta.get(&Some(s.clone())).cloned(),
            PolicySource::Fleet => inner.meta.get(&None).cloned(),
            PolicySource::Baseline => None,
        };
        Effective {
            source,
            policy,
            set,
        }
    }

    /// Every policy set.
    pub fn all(&self) -> PolicySet {
        self.inner.read().set.clone()
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
        self.inner
            .write()
            .put(site, policy.map(|p| (p, now, by.to_owned())));
        Ok(())
    }
}

impl Inner {
    /// Sets (`Some((policy, set_at, set_by))`) or clears one scope.
    fn put(&mut self, site: Option<&str>, value: Option<(WorkloadPolicy, String, String)>) {
        let key = site.map(str::to_owned);
        match value {
            Some((p, at, by)) => {
                match site {
                    Some(s) => {
                        self.set.sites.insert(s.to_owned(), p);
                    }
                    None => self.set.fleet = Some(p),
                }
                self.meta.insert(key, (at, by));
            }
            None => {
                match site {
                    Some(s) => {
                        self.set.sites.remove(s);
                    }
                    None => self.set.fleet = None,
                }
                self.meta.remove(&key);
            }
        }
    }
}
