//! The gateway's vault: Compose secrets and private-registry credentials, which must reach
//! devices and appear in clear nowhere on the way.
//!
//! - **At rest** every value is sealed ([`edgefleet_protocol::sealed`], HPKE) for the
//!   gateway's own key, kept in `DATA_DIR/vault/vault.key` (0600, created on first start);
//!   the store holds only the sealed JSON and a keyed digest.
//! - **On the bus** each value is sealed again, per device, for the P-256 key of the device's
//!   enrolled certificate (its public half recorded at enrollment): the retained desired
//!   document and the agent's state file carry only that.
//! - **Digests** are HMAC-SHA256 under a key of the vault: a changed secret changes the
//!   services' config hash (the container is recreated) without the document telling
//!   anything about the content, not even that two devices' passwords are equal.
//!
//! The opened values live in this process's memory (to seal for devices that join later);
//! `Debug` of every type here is redacted and nothing here logs a value.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dashmap::DashMap;
use edgefleet_protocol::desired::DesiredState;
use edgefleet_protocol::sealed::{
    OpeningKey, Plain, Sealed, SealingKey, registry_info, secret_info,
};
use edgefleet_protocol::spec::{StackSecret, StackSpec};
use edgefleet_store::vault::{RegistryRow, SecretRow};
use edgefleet_store::{Store, StoreError};
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Where the vault's key lives inside the data dir (0600; back it up with the store: the
/// store's sealed values are useless without it).
pub fn key_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("vault").join("vault.key")
}

/// The vault's keys: the HPKE key values at rest are sealed for, and the digest key.
pub struct VaultKeys {
    opening: OpeningKey,
    digest: Plain,
}

impl VaultKeys {
    /// Loads the keys, creating them (0600) on first start. Blocking.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<VaultKeys> {
        let path = key_path(data_dir);
        if let Some(dir) = path.parent() {
            edgefleet_files::create_private_dir(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the vault key {}", path.display()))?;
            let mut lines = text.lines();
            let parse = |line: Option<&str>| line.and_then(|l| hex::decode(l.trim()).ok());
            let (Some(scalar), Some(digest)) = (parse(lines.next()), parse(lines.next())) else {
                anyhow::bail!(
                    "the vault key {} is damaged (two hex lines expected). Restore it from the backup taken with the store: without it the store's secrets and registry credentials cannot be opened",
                    path.display()
                );
            };
            let opening = OpeningKey::from_scalar(&scalar)
                .map_err(|e| anyhow::anyhow!("the vault key {}: {e}", path.display()))?;
            return Ok(VaultKeys {
                opening,
                digest: Plain::new(digest),
            });
        }
        let opening = OpeningKey::generate();
        let digest: [u8; 32] = rand::random();
        let text = format!(
            "{}\n{}\n",
            hex::encode(opening.to_scalar().bytes()),
            hex::encode(digest)
        );
        edgefleet_files::write_private(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!(key = opening.sealing_key().id(), "created the vault key");
        Ok(VaultKeys {
            opening,
            digest: Plain::new(digest.to_vec()),
        })
    }
}

/// What a registry credential opens to.
#[derive(Clone, Serialize, Deserialize)]
pub struct RegistryLogin {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryLogin({}, <redacted>)", self.username)
    }
}

/// A registry credential as the API shows it (never the password).
#[derive(Debug, Clone, Serialize)]
pub struct RegistryView {
    pub host: String,
    /// Sites whose devices get it; empty: every site.
    pub sites: Vec<String>,
    pub username: String,
    pub set_at: String,
    pub set_by: String,
}

struct Registry {
    view: RegistryView,
    digest: String,
    /// The JSON of a [`RegistryLogin`].
    plain: Plain,
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Vault {
    store: Store,
    keys: VaultKeys,
    /// Device id → the public key of its newest certificate.
    devices: DashMap<String, SealingKey>,
    /// (deployment, revision, secret) → content.
    secrets: RwLock<BTreeMap<(String, u64, String), Plain>>,
    registries: RwLock<BTreeMap<String, Registry>>,
}

fn at_rest_secret(deployment: &str, revision: u64, name: &str) -> String {
    format!("edgefleet/v1 at-rest secret {deployment}/{revision}/{name}")
}

fn at_rest_registry(host: &str) -> String {
    format!("edgefleet/v1 at-rest registry {host}")
}

pub use edgefleet_protocol::spec::registry_host as registry_of;

/// A registry host as `registry set` takes it: `name[:port]`, lowercase.
pub fn validate_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(format!(
            "'{host}' is not a registry host: write it as images name it, e.g. registry.plant.local:5000 (lowercase, no scheme, no path)"
        ))
    }
}

impl Vault {
    /// Builds the vault over its keys, opening what the store keeps. A value that does not
    /// open (a store restored without its vault key) is logged and left out: the apply that
    /// needs it is refused, nothing else stops.
    pub async fn load(store: Store, keys: VaultKeys) -> Result<Vault, StoreError> {
        let vault = Vault {
            store,
            keys,
            devices: DashMap::new(),
            secrets: RwLock::new(BTreeMap::new()),
            registries: RwLock::new(BTreeMap::new()),
        };
        for row in vault.store.revision_secrets().await? {
            let info = at_rest_secret(&row.deployment, row.revision, &row.name);
            match vault.open_at_rest(&info, &row.sealed_json) {
                Ok(plain) => {
                    vault
                        .secrets
                        .write()
                        .insert((row.deployment, row.revision, row.name), plain);
                }
                Err(e) => tracing::error!(
                    deployment = %row.deployment,
                    revision = row.revision,
                    secret = %row.name,
                    "a stored secret does not open with this gateway's vault key: {e}"
                ),
            }
        }
        for row in vault.store.registry_credentials().await? {
            match vault.open_at_rest(&at_rest_registry(&row.host), &row.sealed_json) {
                Ok(plain) => {
                    vault.registries.write().insert(
                        row.host.clone(),
                        Registry {
                            digest: row.digest.clone(),
                            plain,
                            view: RegistryView {
                                host: row.host,
                                sites: row.sites,
                                username: row.username,
                                set_at: row.set_at,
                                set_by: row.set_by,
                            },
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(host = %row.host, "a stored registry credential does not open with this gateway's vault key: {e}")
                }
            }
        }
        for (identity, key) in vault.store.certificate_keys().await? {
            if let Some(device) = identity.strip_prefix("device:") {
                vault.note_device_key_hex(device, &key);
            }
        }
        Ok(vault)
    }

    /// Opens a value the store keeps sealed for the vault's key.
    fn open_at_rest(&self, info: &str, sealed_json: &str) -> Result<Plain, String> {
        let sealed: Sealed = serde_json::from_str(sealed_json).map_err(|e| e.to_string())?;
        self.keys
            .opening
            .open(info, &sealed)
            .map_err(|e| e.to_string())
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.keys.digest.bytes()) else {
            return String::new();
        };
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The keyed digest of a secret's content.
    pub fn digest(&self, name: &str, content: &Plain) -> String {
        self.mac(&[b"secret", name.as_bytes(), content.bytes()])
    }

    /// Records the public key (hex SEC1) of a device's newest certificate.
    pub fn note_device_key_hex(&self, device: &str, hex_key: &str) {
        match hex::decode(hex_key)
            .map_err(|e| e.to_string())
            .and_then(|b| SealingKey::from_sec1(&b).map_err(|e| e.to_string()))
        {
            Ok(key) => {
                self.devices.insert(device.to_owned(), key);
            }
            Err(e) => tracing::error!(device, "stored device key unusable: {e}"),
        }
    }

    /// Whether values can be sealed for `device` (its certificate's key is known).
    pub fn has_device_key(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    /// Keeps the secrets of a new revision: sealed for the vault's key in the store, then
    /// in memory.
    pub async fn keep_revision_secrets(
        &self,
        deployment: &str,
        revision: u64,
        contents: &BTreeMap<String, Plain>,
        digests: &BTreeMap<String, String>,
    ) -> Result<(), VaultError> {
        let mut rows = Vec::new();
        for (name, content) in contents {
            let sealed = self
                .keys
                .opening
                .sealing_key()
                .seal(&at_rest_secret(deployment, revision, name), content.bytes())
                .map_err(|e| VaultError::Invalid(format!("secret '{name}': {e}")))?;
            rows.push(SecretRow {
                deployment: deployment.to_owned(),
                revision,
                name: name.clone(),
                digest: digests.get(name).cloned().unwrap_or_default(),
                sealed_json: serde_json::to_string(&sealed).unwrap_or_default(),
            });
        }
        self.store.put_revision_secrets(rows).await?;
        let mut secrets = self.secrets.write();
        for (name, content) in contents {
            secrets.insert(
                (deployment.to_owned(), revision, name.clone()),
                content.clone(),
            );
        }
        Ok(())
    }

    /// Seals every secret of `stacks` for `device`. A value the device's current document
    /// already carries for the same content and key is kept as it is (so recomputing a
    /// document changes nothing); a secret that cannot be sealed (no device key, content
    /// missing) stays unsealed and is logged: the agent reports the stack as failing.
    ///
    /// A stack is copied (out of the book's, which every device shares) only if one of its
    /// values changes: sealed values are each device's own, the rest stays shared.
    pub fn seal_stacks(
        &self,
        device: &str,
        stacks: &mut BTreeMap<String, Arc<StackSpec>>,
        current: Option<&DesiredState>,
    ) {
        if stacks.values().all(|s| s.secrets.is_empty()) {
            return;
        }
        let key = self.devices.get(device).map(|k| k.clone());
        let secrets = self.secrets.read();
        for (name, stack) in stacks.iter_mut() {
            let mut sealed_now = Vec::new();
            for (secret, value) in &stack.secrets {
                let kept = current
                    .and_then(|c| c.stacks.get(name))
                    .and_then(|s| s.secrets.get(secret))
                    .filter(|s| s.digest == value.digest)
                    .and_then(|s| s.sealed.clone())
                    .filter(|s| key.as_ref().is_some_and(|k| k.id() == s.key));
                let sealed = match kept {
                    Some(sealed) => sealed,
                    None => {
                        let Some(key) = key.as_ref() else {
                            tracing::error!(device, stack = %name, secret = %secret, "no enrolled key to seal the secret for: re-enroll the device");
                            continue;
                        };
                        let Some(content) =
                            secrets.get(&(name.clone(), stack.deployment_revision, secret.clone()))
                        else {
                            tracing::error!(device, stack = %name, secret = %secret, revision = stack.deployment_revision, "the secret's content is not in the vault");
                            continue;
                        };
                        match key.seal(&secret_info(device, name, secret), content.bytes()) {
                            Ok(sealed) => sealed,
                            Err(e) => {
                                tracing::error!(device, stack = %name, secret = %secret, "cannot seal: {e}");
                                continue;
                            }
                        }
                    }
                };
                if value.sealed.as_ref() != Some(&sealed) {
                    sealed_now.push((secret.clone(), sealed));
                }
            }
            if sealed_now.is_empty() {
                continue;
            }
            let stack = Arc::make_mut(stack);
            for (secret, sealed) in sealed_now {
                if let Some(value) = stack.secrets.get_mut(&secret) {
                    value.sealed = Some(sealed);
                }
            }
        }
    }

    /// The credentials a device gets: those of the registries its stacks' images come
    /// from, scoped to its site (or to every site), each sealed for it (kept from `current`
    /// when unchanged).
    pub fn registries_for(
        &self,
        device: &str,
        site: Option<&str>,
        stacks: &BTreeMap<String, Arc<StackSpec>>,
        current: Option<&DesiredState>,
    ) -> BTreeMap<String, StackSecret> {
        let registries = self.registries.read();
        if registries.is_empty() {
            return BTreeMap::new();
        }
        let key = self.devices.get(device).map(|k| k.clone());
        let mut out = BTreeMap::new();
        for svc in stacks.values().flat_map(|s| s.services.values()) {
            let host = registry_of(&svc.image);
            if out.contains_key(host) {
                continue;
            }
            let Some(reg) = registries.get(host) else {
                continue;
            };
            let in_scope = reg.view.sites.is_empty()
                || site.is_some_and(|s| reg.view.sites.iter().any(|x| x == s));
            if !in_scope {
                continue;
            }
            let Some(key) = key.as_ref() else {
                tracing::error!(
                    device,
                    host,
                    "no enrolled key to seal the registry credential for: re-enroll the device"
                );
                continue;
            };
            let kept = current
                .and_then(|c| c.registries.get(host))
                .filter(|r| r.digest == reg.digest)
                .and_then(|r| r.sealed.clone())
                .filter(|s| s.key == key.id());
            let sealed = match kept {
                Some(s) => s,
                None => match key.seal(&registry_info(device, host), reg.plain.bytes()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(device, host, "cannot seal: {e}");
                        continue;
                    }
                },
            };
            out.insert(
                host.to_owned(),
                StackSecret {
                    digest: reg.digest.clone(),
                    sealed: Some(sealed),
                },
            );
        }
        out
    }

    /// Every registry credential (no passwords).
    pub fn registries(&self) -> Vec<RegistryView> {
        self.registries
            .read()
            .values()
            .map(|r| r.view.clone())
            .collect()
    }

    /// Sets the credential of a registry host for `sites` (empty: every site).
    pub async fn set_registry(
        &self,
        host: &str,
        sites: Vec<String>,
        login: RegistryLogin,
        by: &str,
    ) -> Result<RegistryView, VaultError> {
        validate_host(host).map_err(VaultError::Invalid)?;
        for s in &sites {
            edgefleet_protocol::ids::validate_label("site", s)
                .map_err(|e| VaultError::Invalid(format!("site '{s}': {e}")))?;
        }
        if login.username.is_empty() || login.password.is_empty() {
            return Err(VaultError::Invalid(
                "both a username and a password are needed".into(),
            ));
        }
        let plain = Plain::new(serde_json::to_vec(&login).unwrap_or_default());
        let digest = self.mac(&[b"registry", host.as_bytes(), plain.bytes()]);
        let sealed = self
            .keys
            .opening
            .sealing_key()
            .seal(&at_rest_registry(host), plain.bytes())
            .map_err(|e| VaultError::Invalid(e.to_string()))?;
        let view = RegistryView {
            host: host.to_owned(),
            sites,
            username: login.username.clone(),
            set_at: edgefleet_protocol::now_rfc3339(),
            set_by: by.to_owned(),
        };
        self.store
            .set_registry_credential(
                host,
                Some(RegistryRow {
                    host: host.to_owned(),
                    sites: view.sites.clone(),
                    username: view.username.clone(),
                    digest: digest.clone(),
                    sealed_json: serde_json::to_string(&sealed).unwrap_or_default(),
                    set_at: view.set_at.clone(),
                    set_by: view.set_by.clone(),
                }),
            )
            .await?;
        self.registries.write().insert(
            host.to_owned(),
            Registry {
                view: view.clone(),
                digest,
                plain,
            },
        );
        Ok(view)
    }

    /// Removes the credential of a registry host; says whether there was one.
    pub async fn remove_registry(&self, host: &str) -> Result<bool, VaultError> {
        let existed = self.store.set_registry_credential(host, None).await?;
        self.registries.write().remove(host);
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_as_docker_reads_references() {
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("library/nginx:1"), "docker.io");
        assert_eq!(
            registry_of("registry.plant.local/app:1"),
            "registry.plant.local"
        );
        assert_eq!(registry_of("localhost:5000/app"), "localhost:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert!(validate_host("registry.plant.local:5000").is_ok());
        for bad in ["", "https://x", "X.local", "a/b", "a:0", "a:99999", "-a.b"] {
            assert!(validate_host(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn keys_persist_and_values_seal_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let keys = VaultKeys::load_or_create(dir.path()).unwrap();
        let id = keys.opening.sealing_key().id().to_owned();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = VaultKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(again.opening.sealing_key().id(), id);

        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let vault = Vault::load(store.clone(), keys).await.unwrap();
        let device = OpeningKey::generate();
        vault.note_device_key_hex("d1", &hex::encode(device.sealing_key().to_sec1()));
        let content = Plain::new(b"hunter2".to_vec());
        let digest = vault.digest("db", &content);
        vault
            .keep_revision_secrets(
                "app",
                1,
                &[("db".to_string(), content)].into(),
                &[("db".to_string(), digest.clone())].into(),
            )
            .await
            .unwrap();
        // The book's stack, shared by every device's document until sealed for one.
        let book = Arc::new(StackSpec {
            deployment: "app".into(),
            deployment_revision: 1,
            volumes: vec![],
            volume_options: Default::default(),
            networks: Default::default(),
            services: Default::default(),
            configs: Default::default(),
            secrets: [(
                "db".to_string(),
                StackSecret {
                    digest,
                    sealed: None,
                },
            )]
            .into(),
        });
        let untouched = Arc::new(StackSpec {
            deployment: "plain".into(),
            secrets: Default::default(),
            ..StackSpec::clone(&book)
        });
        let mut stacks: BTreeMap<String, Arc<StackSpec>> = [
            ("app".to_string(), Arc::clone(&book)),
            ("plain".to_string(), Arc::clone(&untouched)),
        ]
        .into();
        vault.seal_stacks("d1", &mut stacks, None);
        let sealed = stacks["app"].secrets["db"].sealed.clone().unwrap();
        let opened = device
            .open(&secret_info("d1", "app", "db"), &sealed)
            .unwrap();
        assert_eq!(opened.bytes(), b"hunter2");
        // Sealed in the device's own copy; the book's stays unsealed, and a stack without
        // secrets is still the shared one.
        assert!(book.secrets["db"].sealed.is_none());
        assert!(!Arc::ptr_eq(&stacks["app"], &book));
        assert!(Arc::ptr_eq(&stacks["plain"], &untouched));
        // A device the vault cannot seal for keeps sharing the book's stack (no copy).
        let mut keyless: BTreeMap<String, Arc<StackSpec>> =
            [("app".to_string(), Arc::clone(&book))].into();
        vault.seal_stacks("d2", &mut keyless, None);
        assert!(Arc::ptr_eq(&keyless["app"], &book));
        // Recomputed against the issued document: the same sealed value, no churn.
        let doc = DesiredState::new("d1", 1, stacks.clone());
        let mut again = stacks.clone();
        again.insert("app".to_string(), Arc::clone(&book));
        vault.seal_stacks("d1", &mut again, Some(&doc));
        assert_eq!(again, stacks);
        // The store holds no clear text; a restart opens what it keeps.
        let dump = format!("{:?}", store.revision_secrets().await.unwrap());
        assert!(!dump.contains("hunter2"));
        let keys = VaultKeys::load_or_create(dir.path()).unwrap();
        let reloaded = Vault::load(store, keys).await.unwrap();
        assert_eq!(reloaded.secrets.read().len(), 1);
    }
}
