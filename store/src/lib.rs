//! # edgefleet-store
//!
//! The controller's embedded store: one SQLite file in the data dir (`edgefleet.db`), WAL
//! mode, `synchronous=FULL` (a committed desired revision survives a power cut).
//!
//! ## Who touches the file
//! - **One writer**: a dedicated thread owns the read-write connection
//!   ([`tokio_rusqlite`]); every change is a closure sent to it, so writes are serialized and
//!   no fsync ever runs on an async worker. Callers `await` the result.
//! - **One reader**: a second connection on its own thread, `query_only`, for lists, pages,
//!   exports (read page by page) and the audit walk. WAL lets it read while the writer
//!   writes, and a long read never holds the writer up.
//! - A read that must see the writer's newest state in the same transaction as a write (a
//!   compare-then-insert) runs on the writer.
//!
//! Schema changes are numbered migrations applied at open ([`migrations`]).
//!
//! ## Layout (one file per table family)
//! - [`deployments`]: deployments, their immutable revisions, pins, maintenance windows.
//! - [`devices`]: the devices' last-known state and their recent events.
//! - [`rollouts`]: rollout state.
//! - [`users`]: API users and tokens (digests only).
//! - [`audit`]: the append-only, hash-chained audit log.
//! - [`identity`]: enrollment tokens (digests) and issued certificates.
//! - [`mqtt_users`]: the gateway's local MQTT users (password digests).
//! - [`policies`]: workload policies per site and the fleet default.
//! - [`variables`]: variables kept per site and per device.
//! - [`meta`]: persistent counters (the controller session).
//!
//! This crate knows SQL and the domain's types, nothing above them.

pub mod audit;
pub mod deployments;
pub mod devices;
pub mod identity;
pub mod meta;
pub mod migrations;
pub mod mqtt_users;
pub mod policies;
pub mod rollouts;
pub mod users;
pub mod variables;
pub mod vault;

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio_rusqlite::rusqlite::{self, Connection};

pub use deployments::{DeploymentRow, RevisionRow};
pub use rollouts::RolloutRow;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(
        "store holds schema version {0}, newer than this controller understands; upgrade edgefleet"
    )]
    TooNew(i64),
    #[error("store: its connection thread has stopped")]
    Closed,
    #[error("store: {0}")]
    Thread(String),
    #[error("store {path}: cannot make it private (0600): {source}")]
    Private {
        path: String,
        source: std::io::Error,
    },
}

/// The store holds enrollment digests, password hashes and every deployment's environment:
/// the file is created `0600` (and an older, wider one is narrowed) before SQLite opens it.
/// SQLite gives its `-wal` and `-shm` files the database file's mode.
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| StoreError::Private {
        path: path.display().to_string(),
        source,
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    let mode = std::fs::metadata(path).map_err(err)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}

impl From<tokio_rusqlite::Error<StoreError>> for StoreError {
    fn from(e: tokio_rusqlite::Error<StoreError>) -> Self {
        match e {
            tokio_rusqlite::Error::Error(e) => e,
            tokio_rusqlite::Error::Close((_, e)) => StoreError::Sql(e),
            _ => StoreError::Closed,
        }
    }
}

/// The store: its writer and its reader (cheap to clone).
#[derive(Clone)]
pub struct Store {
    writer: tokio_rusqlite::Connection,
    reader: tokio_rusqlite::Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

pub(crate) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Opens the writer's connection and applies the migrations (blocking).
fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    make_private(path)?;
    let mut conn = open_connection(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed desired revision must survive a power cut (with NORMAL a WAL commit
    // can be lost, and the agent would then ignore a reused revision number).
    conn.pragma_update(None, "synchronous", "FULL")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = i64::try_from(migrations::MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StoreError::TooNew(version));
    }
    for (n, sql) in migrations::MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(n + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
        tracing::info!(version = n + 1, "store migrated");
    }
    Ok(())
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Thread(e.to_string()))?
}

impl Store {
    /// Opens (creating) the store at `path`, applies migrations, and starts the writer's and
    /// the reader's threads. Must be called within a tokio runtime.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let p = path.to_owned();
        let writer = blocking(move || open_writer(&p)).await?;
        let p = path.to_owned();
        let reader = blocking(move || {
            let conn = open_connection(&p)?;
            // The reader can never change anything, whatever a caller sends it.
            conn.pragma_update(None, "query_only", true)?;
            Ok(conn)
        })
        .await?;
        Ok(Store {
            writer: writer.into(),
            reader: reader.into(),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer's thread (serialized with every other write).
    pub async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        Ok(self.writer.call(f).await?)
    }

    /// Runs `f` on the reader's thread (`query_only`).
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        Ok(self.reader.call(move |c| f(c)).await?)
    }
}

/// Opens a store file read-only, without starting any thread, for tools that read it while
/// the gateway is stopped (`edgefleet audit verify --data-dir`). Blocking.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
        |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        },
    )
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).await.unwrap();
        (dir, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopening_applies_no_migration_twice_and_the_reader_cannot_write() {
        let (dir, s) = test_support::store().await;
        assert_eq!(s.next_counter("session").await.unwrap(), 1);
        drop(s);
        let s = Store::open(&dir.path().join("s.db")).await.unwrap();
        assert_eq!(s.next_counter("session").await.unwrap(), 2);
        let refused = s
            .read(|c| Ok(c.execute("DELETE FROM meta", [])?))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
    }

    #[tokio::test]
    async fn the_store_and_its_wal_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Store::open(&path).await.unwrap();
        s.next_counter("session").await.unwrap();
        for file in ["e.db", "e.db-wal", "e.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}
