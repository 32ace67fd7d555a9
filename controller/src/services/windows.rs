//! Maintenance windows per site: rollout waves wait for a site's window. Kept in memory
//! (loaded at start, changed only here) so the rollout loop never reads the store for them.

use std::collections::BTreeMap;

use edgefleet_domain::rollout::window::Window;
use edgefleet_store::{Store, StoreError};
use parking_lot::RwLock;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WindowError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One site's window as set: its text, time zone and parsed form.
#[derive(Debug, Clone)]
pub struct SiteWindow {
    pub spec: String,
    pub tz: String,
    pub window: Window,
}

pub struct Windows {
    store: Store,
    by_site: RwLock<BTreeMap<String, SiteWindow>>,
}

impl Windows {
    /// Loads the stored windows (an unreadable one is logged and ignored).
    pub async fn load(store: Store) -> Result<Self, StoreError> {
        let mut by_site = BTreeMap::new();
        for (site, spec, tz) in store.site_windows().await? {
            match Window::parse(&spec, &tz) {
                Ok(window) => {
                    by_site.insert(site, SiteWindow { spec, tz, window });
                }
                Err(e) => tracing::error!(site, "stored maintenance window ignored: {e}"),
            }
        }
        Ok(Windows {
            store,
            by_site: RwLock::new(by_site),
        })
    }

    /// Every site's window.
    pub fn all(&self) -> BTreeMap<String, SiteWindow> {
        self.by_site.read().clone()
    }

    /// Whether the window of `site` is open at `now` (true for a site without one).
    pub fn is_open(&self, site: &str, now: jiff::Timestamp) -> bool {
        self.by_site
            .read()
            .get(site)
            .is_none_or(|w| w.window.is_open(now))
    }

    /// Sets (`Some((spec, tz))`) or clears a site's window after validating it.
    pub async fn set(&self, site: &str, window: Option<(&str, &str)>) -> Result<(), WindowError> {
        edgefleet_protocol::ids::validate_label("site", site)
            .map_err(|e| WindowError::Invalid(e.to_string()))?;
        let parsed = window
            .map(|(spec, tz)| {
                Window::parse(spec, tz).map_err(|e| WindowError::Invalid(e.to_string()))
            })
            .transpose()?;
        self.store
            .set_site_window(site, window.map(|(s, t)| (s.to_owned(), t.to_owned())))
            .await?;
        let mut by_site = self.by_site.write();
        match (window, parsed) {
            (Some((spec, tz)), Some(w)) => {
                by_site.insert(
                    site.to_owned(),
                    SiteWindow {
                        spec: spec.to_owned(),
                        tz: tz.to_owned(),
                        window: w,
                    },
                );
            }
            _ => {
                by_site.remove(site);
            }
        }
        tracing::info!(site, ?window, "maintenance window set");
        Ok(())
    }
}
