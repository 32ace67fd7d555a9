//! Local persistence in the data dir, so a rebooted device keeps running its last state with
//! the broker unreachable:
//! - `state.bin`: the last valid desired document and the revision last fully applied;
//! - `session.bin`: the MQTT session counter (one increment per connection attempt).
//!
//! Both are postcard, written to a temporary file, synced and renamed over the old one (a
//! crash or power cut leaves the old or the new file, never half of one). postcard is not
//! self-describing and `DesiredState` uses `skip_serializing_if`, so the document is stored
//! as its JSON text inside the postcard record rather than as postcard itself.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use edgefleet_protocol::desired::DesiredState;
use serde::{Deserialize, Serialize};
use thiserror::Error;

const STATE_FILE: &str = "state.bin";
const SESSION_FILE: &str = "session.bin";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateFileError {
    #[error("cannot create the data dir {path}: {source} (choose another one with --data-dir)")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source} (check the permissions of the data dir)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source} (is the disk full or read-only?)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The record in `state.bin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateRecord {
    format_version: u32,
    /// The desired document as received (re-encoded JSON), if any.
    desired_json: Option<String>,
    last_applied_revision: u64,
}

/// The record in `session.bin`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SessionRecord {
    format_version: u32,
    session: u64,
}

/// A state file that could not be read back, and where it was moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    pub reason: String,
    pub moved_to: Option<PathBuf>,
}

/// What `open` found on disk.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub desired: Option<DesiredState>,
    pub last_applied_revision: u64,
    pub corrupt: Option<Corrupt>,
}

/// The data dir of one device.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    record: Mutex<StateRecord>,
    session: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateFileError> {
    let err = |source| StateFileError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        // Makes the rename durable; not every filesystem allows it, and it is not fatal.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateFileError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn decode_state(bytes: &[u8], device: &str) -> Result<(StateRecord, Option<DesiredState>), String> {
    let (record, rest): (StateRecord, _) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("not a state record: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected trailing bytes", rest.len()));
    }
    if record.format_version != FORMAT_VERSION {
        return Err(format!(
            "format version {} is not {FORMAT_VERSION} (written by another agent version?)",
            record.format_version
        ));
    }
    let desired = match &record.desired_json {
        None => None,
        Some(json) => {
            let d: DesiredState = serde_json::from_str(json)
                .map_err(|e| format!("stored desired document is not valid: {e}"))?;
            if d.device != device {
                return Err(format!(
                    "stored desired document is for device '{}'",
                    d.device
                ));
            }
            Some(d)
        }
    };
    Ok((record, desired))
}

impl StateStore {
    /// Opens (creating) the data dir and loads what it holds. A corrupt `state.bin` is moved
    /// aside as `state.bin.corrupt-<unix seconds>` and reported in [`Loaded::corrupt`]; the
    /// agent then starts with no desired state (and touches nothing).
    pub fn open(dir: &Path, device: &str) -> Result<(StateStore, Loaded), StateFileError> {
        fs::create_dir_all(dir).map_err(|source| StateFileError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let state_path = dir.join(STATE_FILE);
        let mut loaded = Loaded::default();
        let mut record = StateRecord {
            format_version: FORMAT_VERSION,
            ..Default::default()
        };
        if let Some(bytes) = read_optional(&state_path)? {
            match decode_state(&bytes, device) {
                Ok((r, desired)) => {
                    loaded.desired = desired;
                    loaded.last_applied_revision = r.last_applied_revision;
                    record = r;
                }
                Err(reason) => {
                    let aside = dir.join(format!("{STATE_FILE}.corrupt-{}", unix_secs()));
                    let moved_to = fs::rename(&state_path, &aside).ok().map(|()| aside);
                    loaded.corrupt = Some(Corrupt { reason, moved_to });
                }
            }
        }
        let session_path = dir.join(SESSION_FILE);
        let session = match read_optional(&session_path)? {
            None => 0,
            Some(bytes) => match postcard::from_bytes::<SessionRecord>(&bytes) {
                Ok(r) if r.format_version == FORMAT_VERSION => r.session,
                // Unreadable counter: continue above any value it could have held.
                _ => {
                    tracing::warn!(path = %session_path.display(), "session counter unreadable; continuing from the clock");
                    unix_secs()
                }
            },
        };
        let store = StateStore {
            dir: dir.to_owned(),
            record: Mutex::new(record),
            session: Mutex::new(session),
        };
        Ok((store, loaded))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn save(&self, record: &StateRecord) -> Result<(), StateFileError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = postcard::to_stdvec(record).map_err(|e| StateFileError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes)
    }

    /// Persists a newly accepted desired document.
    pub fn save_desired(&self, desired: &DesiredState) -> Result<(), StateFileError> {
        let mut record = lock(&self.record);
        let mut next = record.clone();
        next.desired_json =
            Some(String::from_utf8_lossy(&edgefleet_protocol::codec::encode(desired)).into_owned());
        self.save(&next)?;
        *record = next;
        Ok(())
    }

    /// Persists the revision last fully applied.
    pub fn save_applied(&self, revision: u64) -> Result<(), StateFileError> {
        let mut record = lock(&self.record);
        let mut next = record.clone();
        next.last_applied_revision = revision;
        self.save(&next)?;
        *record = next;
        Ok(())
    }

    /// The session number for the next connection attempt: one more than the last one ever
    /// used. If it cannot be persisted, the number is still used (and a warning logged).
    pub fn next_session(&self) -> u64 {
        let mut session = lock(&self.session);
        *session = session.saturating_add(1);
        let path = self.dir.join(SESSION_FILE);
        let record = SessionRecord {
            format_version: FORMAT_VERSION,
            session: *session,
        };
        let result = postcard::to_stdvec(&record)
            .map_err(|e| StateFileError::Write {
                path: path.clone(),
                source: std::io::Error::other(e),
            })
            .and_then(|bytes| write_atomic(&path, &bytes));
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not persist the session counter");
        }
        *session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(revision: u64) -> DesiredState {
        let json = serde_json::json!({
            "schema": 1, "device": "press-07", "revision": revision, "issued_at": "2026-01-01T00:00:00.000Z",
            "stacks": {"app": {"deployment": "app", "deployment_revision": 2, "volumes": ["data"],
              "services": {
                "db": {"image": "db:1", "environment": {"A": "1"},
                       "volumes": [{"kind": "named", "source": "data", "target": "/d"}],
                       "healthcheck": {"test": ["CMD-SHELL", "true"], "interval_ms": 1000},
                       "restart": "unless-stopped"},
                "web": {"image": "web:1", "ports": [{"container_port": 80, "host_port": 8080}],
                        "depends_on": ["db"], "command": ["serve"]}
              }}}
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn round_trip_desired_applied_and_session() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = StateStore::open(dir.path(), "press-07").unwrap();
        assert!(loaded.desired.is_none() && loaded.corrupt.is_none());
        assert_eq!(store.next_session(), 1);
        assert_eq!(store.next_session(), 2);
        store.save_desired(&doc(5)).unwrap();
        store.save_applied(4).unwrap();
        drop(store);

        let (store, loaded) = StateStore::open(dir.path(), "press-07").unwrap();
        assert_eq!(loaded.desired, Some(doc(5)));
        assert_eq!(loaded.last_applied_revision, 4);
        assert_eq!(store.next_session(), 3);
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        for garbage in [
            &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
            b"",
            b"\x01\x01{",
        ] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(STATE_FILE), garbage).unwrap();
            let (store, loaded) = StateStore::open(dir.path(), "press-07").unwrap();
            let corrupt = loaded.corrupt.expect("reported corrupt");
            assert!(loaded.desired.is_none());
            let moved = corrupt.moved_to.expect("moved aside");
            assert!(
                moved
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("state.bin.corrupt-")
            );
            assert!(!dir.path().join(STATE_FILE).exists());
            // A new document can be stored afterwards.
            store.save_desired(&doc(1)).unwrap();
        }
    }

    #[test]
    fn document_of_another_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = StateStore::open(dir.path(), "press-07").unwrap();
        store.save_desired(&doc(1)).unwrap();
        let (_, loaded) = StateStore::open(dir.path(), "press-08").unwrap();
        assert!(loaded.corrupt.unwrap().reason.contains("press-07"));
        assert!(loaded.desired.is_none());
    }
}
