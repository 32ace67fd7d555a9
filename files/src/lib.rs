//! # edgefleet-files
//!
//! Files that must survive a crash and may hold secrets: private keys, the signing key,
//! session tokens, the first admin's password, the agent's local state. One way to write
//! them, used by every crate:
//!
//! 1. a temporary file is created **in the same directory** with its final mode already set
//!    (`0600` for secrets: never readable by others, not even for an instant);
//! 2. the bytes are written and synced;
//! 3. it is renamed over the target (a crash leaves the old file or the new one, never half
//!    of one), and the directory is synced so the rename itself is durable.
//!
//! The temporary file comes from [`tempfile`] (unique name, removed if anything fails).
//! This is blocking I/O: async callers run it on a blocking thread.

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Who may read the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `0600`: keys, tokens, passwords.
    Private,
    /// `0644`: certificates, public keys, state that holds no secret.
    Public,
    /// Other bits (a config or secret file with the mode its Compose file asks for).
    Custom(u32),
}

impl Mode {
    /// The Unix permission bits.
    pub fn bits(self) -> u32 {
        match self {
            Mode::Private => 0o600,
            Mode::Public => 0o644,
            Mode::Custom(bits) => bits & 0o7777,
        }
    }
}

/// Writes `bytes` to `path` atomically and durably with `mode` (see the crate docs). The
/// directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(Permissions::from_mode(mode.bits()))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Makes the rename durable; not every filesystem allows syncing a directory, and the
    // file itself is already safe, so a failure here is not an error.
    let _ = File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// Creates `dir` (and missing parents, also `0700`) for files that hold secrets, and makes
/// it `0700` if it already existed wider: the gateway's and the agent's data dirs, keys,
/// the PKI. Only the owner may list or enter it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// [`write_atomic`] with [`Mode::Private`].
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, bytes, Mode::Private)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_dirs_are_0700_new_or_existing() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b");
        create_private_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        let wide = root.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        std::fs::set_permissions(&wide, Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&wide).unwrap();
        assert_eq!(mode(&wide), 0o700);
    }

    #[test]
    fn replaces_atomically_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(
            mode(&p),
            0o600,
            "an existing file does not keep its old mode"
        );
        write_atomic(&p, b"pub", Mode::Public).unwrap();
        assert_eq!(mode(&p), 0o644);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file left behind");
    }

    #[test]
    fn a_missing_directory_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").join("key.pem");
        assert!(write_private(&p, b"x").is_err());
        assert!(!p.exists());
    }
}
