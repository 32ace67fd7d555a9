//! Site and device variables (`edgefleet vars`), the values of `${VAR}` that a Compose file
//! resolved per device takes from its device and site (precedence:
//! `edgefleet_domain::variables`). Kept in memory (loaded at start, changed only here) so
//! documents are computed without reading the store; the store is written first, so a
//! failed write changes nothing. Recomputing the documents of the devices a change reaches
//! is the caller's (`Deployments::variables_changed`), as for labels.

use std::collections::BTreeMap;

use edgefleet_domain::interpolate::Variables as Values;
use edgefleet_domain::variables::{MAX_PER_SCOPE, Scope, ScopedVariables, validate};
use edgefleet_store::variables::VariableRow;
use edgefleet_store::{Store, StoreError};
use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VariablesError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Default)]
struct Inner {
    set: ScopedVariables,
    /// Who set each variable when: (scope, name) → (set_at, set_by).
    meta: BTreeMap<(Scope, String), (String, String)>,
}

pub struct Variables {
    store: Store,
    /// One lock for the values and who set them, so a reader sees both of one change.
    inner: RwLock<Inner>,
    /// Serializes changes: the store and memory change in the same order.
    change: tokio::sync::Mutex<()>,
}

/// Checks a scope's name: a site as a label value, a device as a device id.
pub fn validate_scope(scope: &Scope) -> Result<(), VariablesError> {
    match scope {
        Scope::Site(s) => edgefleet_protocol::ids::validate_label("site", s),
        Scope::Device(d) => edgefleet_protocol::ids::validate_device_id(d),
    }
    .map_err(|e| VariablesError::Invalid(e.to_string()))
}

impl Variables {
    pub async fn load(store: Store) -> Result<Self, StoreError> {
        let mut inner = Inner::default();
        for row in store.variables().await? {
            inner.set.set(
                &row.scope,
                &[(row.name.clone(), row.value)].into_iter().collect(),
            );
            inner
                .meta
                .insert((row.scope, row.name), (row.set_at, row.set_by));
        }
        Ok(Variables {
            store,
            inner: RwLock::new(inner),
            change: tokio::sync::Mutex::new(()),
        })
    }

    /// Every site's and device's variables, for computing documents (a short read lock:
    /// never hold it across an `.await`).
    pub fn read(&self) -> MappedRwLockReadGuard<'_, ScopedVariables> {
        RwLockReadGuard::map(self.inner.read(), |i| &i.set)
    }

    /// The variables of `scope` (every scope: `None`), with who set them when, by scope and
    /// name.
    pub fn rows(&self, scope: Option<&Scope>) -> Vec<VariableRow> {
        let inner = self.inner.read();
        let scopes: Vec<Scope> = match scope {
            Some(s) => vec![s.clone()],
            None => inner
                .set
                .sites
                .keys()
                .map(|s| Scope::Site(s.clone()))
                .chain(inner.set.devices.keys().map(|d| Scope::Device(d.clone())))
                .collect(),
        };
        let mut out = Vec::new();
        for scope in scopes {
            for (name, value) in inner.set.of(&scope) {
                let (set_at, set_by) = inner
                    .meta
                    .get(&(scope.clone(), name.clone()))
                    .cloned()
                    .unwrap_or_default();
                out.push(VariableRow {
                    scope: scope.clone(),
                    name,
                    value,
                    set_at,
                    set_by,
                });
            }
        }
        out
    }

    /// Sets `values` in `scope` (its other variables are kept).
    pub async fn set(
        &self,
        scope: &Scope,
        values: &Values,
        by: &str,
    ) -> Result<(), VariablesError> {
        validate_scope(scope)?;
        if values.is_empty() {
            return Err(VariablesError::Invalid(
                "nothing to set: give NAME=VALUE (e.g. LINE_IP=10.1.3.7)".into(),
            ));
        }
        for (k, v) in values {
            validate(k, v).map_err(VariablesError::Invalid)?;
        }
        let _change = self.change.lock().await;
        let count = {
            let current = self.inner.read().set.of(scope);
            current.len() + values.keys().filter(|k| !current.contains_key(*k)).count()
        };
        if count > MAX_PER_SCOPE {
            return Err(VariablesError::Invalid(format!(
                "{scope} would have {count} variables, at most {MAX_PER_SCOPE} are kept per site or device"
            )));
        }
        let now = edgefleet_protocol::now_rfc3339();
        self.store
            .set_variables(scope, values.clone(), by, &now)
            .await?;
        let mut inner = self.inner.write();
        inner.set.set(scope, values);
        for name in values.keys() {
            inner
                .meta
                .insert((scope.clone(), name.clone()), (now.clone(), by.to_owned()));
        }
        Ok(())
    }

    /// Removes `names` from `scope` (every variable of it when `names` is empty); returns
    /// the names that were set.
    pub async fn unset(
        &self,
        scope: &Scope,
        names: &[String],
    ) -> Result<Vec<String>, VariablesError> {
        validate_scope(scope)?;
        for n in names {
            edgefleet_domain::interpolate::validate_name(n).map_err(VariablesError::Invalid)?;
        }
        let _change = self.change.lock().await;
        self.store.unset_variables(scope, names.to_vec()).await?;
        let mut inner = self.inner.write();
        let removed = inner.set.unset(scope, names);
        for name in &removed {
            inner.meta.remove(&(scope.clone(), name.clone()));
        }
        Ok(removed)
    }
}
