//! The controller's desired-state signing key: created on first start in the data dir and
//! never printed. The public half sits next to it (and in every enrollment bundle) for agents
//! to pin. It also signs the audit log's head (`edgefleet_protocol::audit_head`). Blocking
//! file I/O: called once at start, on a blocking thread.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use edgefleet_protocol::signing::DocumentSigner;

/// Where the key pair lives inside the data dir.
pub fn signing_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("signing")
}

/// Path of the public key (base64 text) that agents pin.
pub fn public_key_path(data_dir: &Path) -> PathBuf {
    signing_dir(data_dir).join("desired-signing.pub")
}

/// Path of the private key (base64 text, 0600).
pub fn secret_key_path(data_dir: &Path) -> PathBuf {
    signing_dir(data_dir).join("desired-signing.key")
}

/// Loads the signing key if it exists, creating nothing: for tools reading a data dir
/// (`edgefleet audit verify --data-dir` signs the head it verified). Blocking.
pub fn load_signer(data_dir: &Path) -> anyhow::Result<Option<DocumentSigner>> {
    let secret_path = secret_key_path(data_dir);
    if !secret_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&secret_path)
        .with_context(|| format!("cannot read the signing key {}", secret_path.display()))?;
    let bytes = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok());
    let Some(secret) = bytes else {
        anyhow::bail!(
            "the signing key {} is damaged (expected 32 bytes of base64). Restore it from a backup: a new key would make every enrolled agent refuse this gateway",
            secret_path.display()
        );
    };
    Ok(Some(DocumentSigner::from_secret(&secret)))
}

/// Loads the signing key, creating it (0600) on first start.
pub fn load_or_create_signer(data_dir: &Path) -> anyhow::Result<DocumentSigner> {
    let dir = signing_dir(data_dir);
    edgefleet_files::create_private_dir(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let signer = match load_signer(data_dir)? {
        Some(signer) => signer,
        None => {
            let secret: [u8; 32] = rand::random();
            let secret_path = secret_key_path(data_dir);
            edgefleet_files::write_private(&secret_path, B64.encode(secret).as_bytes())
                .with_context(|| format!("cannot write {}", secret_path.display()))?;
            let signer = DocumentSigner::from_secret(&secret);
            tracing::info!(
                key_id = signer.key_id(),
                "created the desired-state signing key"
            );
            signer
        }
    };
    let public = public_key_path(data_dir);
    edgefleet_files::write_atomic(
        &public,
        format!("{}\n", signer.public_key_text()).as_bytes(),
        edgefleet_files::Mode::Public,
    )
    .with_context(|| format!("cannot write {}", public.display()))?;
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_signer(dir.path()).unwrap();
        let again = load_or_create_signer(dir.path()).unwrap();
        assert_eq!(first.key_id(), again.key_id());
        let read = load_signer(dir.path()).unwrap().expect("the key is there");
        assert_eq!(read.key_id(), first.key_id());
        assert!(
            load_signer(&dir.path().join("elsewhere"))
                .unwrap()
                .is_none()
        );
        let public = std::fs::read_to_string(public_key_path(dir.path())).unwrap();
        assert_eq!(public.trim(), first.public_key_text());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(signing_dir(dir.path()).join("desired-signing.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create_signer(dir.path()).unwrap();
        std::fs::write(signing_dir(dir.path()).join("desired-signing.key"), "short").unwrap();
        let err = load_or_create_signer(dir.path()).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }
}
