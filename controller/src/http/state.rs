//! What the HTTP handlers get: the services, built once by [`crate::app`]. A handler takes
//! only the services it uses (`State<Arc<Deployments>>`, …, through [`FromRef`]), so its
//! dependencies are in its signature.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::FromRef;
use edgefleet_store::Store;

use crate::services::audit::AuditLog;
use crate::services::commands::Commands;
use crate::services::deployments::Deployments;
use crate::services::fleet::Fleet;
use crate::services::identity::Identity;
use crate::services::link::Link;
use crate::services::policies::Policies;
use crate::services::rollouts::Rollouts;
use crate::services::users::Users;
use crate::services::variables::Variables;
use crate::services::windows::Windows;

/// The services behind the HTTP API and the dashboard.
#[derive(Clone)]
pub struct ApiState {
    /// Read-only queries (lists, pages, exports) go to the store's reader.
    pub store: Store,
    pub fleet: Arc<Fleet>,
    pub deployments: Arc<Deployments>,
    pub rollouts: Arc<Rollouts>,
    pub windows: Arc<Windows>,
    pub policies: Arc<Policies>,
    pub vault: Arc<crate::services::vault::Vault>,
    pub variables: Arc<Variables>,
    pub users: Arc<Users>,
    pub audit: Arc<AuditLog>,
    pub commands: Arc<Commands>,
    pub identity: Arc<Identity>,
    pub link: Arc<Link>,
    pub started: Instant,
}

macro_rules! from_ref {
    ($($field:ident: $ty:ty),* $(,)?) => {
        $(impl FromRef<ApiState> for $ty {
            fn from_ref(s: &ApiState) -> Self {
                s.$field.clone()
            }
        })*
    };
}

from_ref!(
    store: Store,
    fleet: Arc<Fleet>,
    deployments: Arc<Deployments>,
    rollouts: Arc<Rollouts>,
    windows: Arc<Windows>,
    policies: Arc<Policies>,
    vault: Arc<crate::services::vault::Vault>,
    variables: Arc<Variables>,
    users: Arc<Users>,
    audit: Arc<AuditLog>,
    commands: Arc<Commands>,
    identity: Arc<Identity>,
    link: Arc<Link>,
);
