//! The inventory: a device's labels (site, area, line…) are set by `edgefleet device add` and
//! changed by `edgefleet device label`, never by what the device reports. Both write the
//! device's row before answering, then recompute its desired document (its targets may have
//! changed), which the deployments service persists before it is published. The HTTP layer
//! audits both (`device.add`, `device.label`).

use std::collections::BTreeMap;

use edgefleet_store::{Store, StoreError};
use thiserror::Error;

use super::deployments::Deployments;
use super::fleet::Fleet;

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error("no device '{0}' in the inventory: add it with 'edgefleet device add {0} --labels …'")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A relabelling done: the labels before and after.
#[derive(Debug, Clone)]
pub struct Relabelled {
    pub before: BTreeMap<String, String>,
    pub after: BTreeMap<String, String>,
}

/// Checks every label (the same rules as at `device add`).
pub fn validate(labels: &BTreeMap<String, String>) -> Result<(), InventoryError> {
    for (k, v) in labels {
        edgefleet_protocol::ids::validate_label(k, v)
            .map_err(|e| InventoryError::Invalid(e.to_string()))?;
    }
    Ok(())
}

/// `device add`: the device is in the inventory with these labels from now on.
pub async fn register(
    store: &Store,
    fleet: &Fleet,
    deployments: &Deployments,
    id: &str,
    labels: BTreeMap<String, String>,
) -> Result<(), InventoryError> {
    validate(&labels)?;
    let view = fleet.register(id, labels);
    store
        .save_devices(vec![view], &edgefleet_protocol::now_rfc3339())
        .await?;
    deployments.refresh(&[id.to_owned()]).await?;
    Ok(())
}

/// `device label`: sets `set` and removes `remove` on a device of the inventory.
pub async fn relabel(
    store: &Store,
    fleet: &Fleet,
    deployments: &Deployments,
    id: &str,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<Relabelled, InventoryError> {
    validate(set)?;
    if set.is_empty() && remove.is_empty() {
        return Err(InventoryError::Invalid(
            "nothing to change: give key=value to set a label or key- to remove one".into(),
        ));
    }
    let (before, view) = fleet
        .relabel(id, set, remove)
        .ok_or_else(|| InventoryError::Unknown(id.to_owned()))?;
    let after = view.labels.clone();
    if let Err(e) = store
        .save_devices(vec![view], &edgefleet_protocol::now_rfc3339())
        .await
    {
        // Not stored: undo, so memory never runs ahead of the store.
        let back: Vec<String> = after.keys().cloned().collect();
        fleet.relabel(id, &before, &back);
        return Err(e.into());
    }
    deployments.refresh(&[id.to_owned()]).await?;
    Ok(Relabelled { before, after })
}
