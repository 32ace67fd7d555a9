//! Local persistence in the data dir, so a rebooted device keeps running its last state with
//! the broker unreachable:
//! - `state.bin`: the last valid desired document and the revision last fully applied
//!   (0600: a document's environment may carry credentials);
//! - `session.bin`: the MQTT session counter (one increment per connection attempt).
//!
//! Both are postcard, written through [`edgefleet_files::write_atomic`] (temporary file,
//! sync, rename, sync of the directory: a crash or power cut leaves the old or the new file,
//! never half of one). postcard is not self-describing and `DesiredState` uses
//! `skip_serializing_if`, so the document is stored as its JSON text inside the postcard
//! record rather than as postcard itself.
//!
//! # The writer thread
//! The agent runs on a current-thread runtime, where one `fsync` would stall every task (the
//! MQTT link among them). So a [`StateStore`] owns one dedicated std thread, the only code
//! that writes these files: callers send it a job over a channel and `await` its answer on a
//! [`tokio::sync::oneshot`]. Jobs run one at a time in the order sent, so the thread also owns
//! the in-memory copy of `state.bin`'s record (updated only once a write succeeded) and the
//! session numbers reach the disk in increasing order. [`StateStore::open`] reads the files
//! and starts the thread; it blocks, so async callers run it on a blocking thread. The
//! thread ends once the store is dropped and the jobs already sent are done
//! ([`StateStore::flush`] waits for them).
//!
//! Many stores in one process (the simulator's thousands of devices) share a few writer
//! threads instead ([`Writers`], [`StateStore::open_with`]): a store's jobs all go to one of
//! them, so they still run in the order sent. Ten thousand writer threads cost the simulator
//! a third of its CPU in waking them (`futex_wake` over their long wait queues, measured
//! with perf), time taken from the gateway it measures.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgefleet_files::{Mode, write_atomic};
use edgefleet_protocol::desired::DesiredState;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::oneshot;

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
    #[error("cannot start the thread that writes the local state: {0}")]
    StartWriter(std::io::Error),
    #[error(
        "the thread that writes the local state in {dir} has stopped, nothing more is saved (restart the agent)"
    )]
    WriterStopped { dir: PathBuf },
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

type Ack = oneshot::Sender<Result<(), StateFileError>>;

/// Work for a writer thread, for one store.
struct Addressed {
    store: u64,
    job: Job,
}

/// Work for the writer thread; each job is answered on its `done`.
enum Job {
    /// A store opened: where its files are and the record `state.bin` holds.
    Open {
        dir: PathBuf,
        record: Box<StateRecord>,
    },
    /// The store was dropped: a `state.bin` still unsaved is written a last time.
    Close,
    /// Store this desired document (its JSON text) in `state.bin`.
    Desired { json: String, done: Ack },
    /// Store this revision as the last fully applied one in `state.bin`.
    Applied { revision: u64, done: Ack },
    /// Write this session number to `session.bin`.
    Session { session: u64, done: Ack },
    /// Nothing to write: answered once every job sent before it is done.
    Flush { done: oneshot::Sender<()> },
}

/// The data dir of one device: reads at [`open`](Self::open), writes through its writer
/// thread (see the module docs).
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    /// This store's number on its writer thread.
    id: u64,
    jobs: mpsc::Sender<Addressed>,
    /// The last session number handed out. Held only while a job is queued (never across an
    /// `.await`), so the writer receives the numbers in increasing order.
    session: Mutex<u64>,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

/// Decodes a `state.bin` the way [`StateStore::open`] does: the desired document it holds,
/// or why the file is unusable. Never panics, whatever the bytes (fuzzed: `fuzz/`).
pub fn decode_state_file(bytes: &[u8], device: &str) -> Result<Option<DesiredState>, String> {
    decode_state(bytes, device).map(|(_, desired)| desired)
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

/// Encodes `value` with postcard and writes it atomically to `path` (blocking).
fn write_postcard<T: Serialize>(path: &Path, value: &T, mode: Mode) -> Result<(), StateFileError> {
    let err = |source| StateFileError::Write {
        path: path.to_owned(),
        source,
    };
    let bytes = postcard::to_stdvec(value).map_err(|e| err(std::io::Error::other(e)))?;
    write_atomic(path, &bytes, mode).map_err(err)
}

/// Applies `change` to a copy of `record`, writes it to `path`, and only then keeps it, so a
/// failed write is not carried into the next one.
/// Applies `change` to `record` (what the agent means to hold) and writes it. The record
/// changes even when the write fails: the next write, or the writer's retry, then carries it.
fn save_record(
    path: &Path,
    record: &mut StateRecord,
    change: impl FnOnce(&mut StateRecord),
) -> Result<(), StateFileError> {
    change(record);
    write_postcard(path, record, Mode::Private)
}

/// How often the writer retries a `state.bin` it could not write (a full disk, an I/O error).
const RETRY_UNSAVED: Duration = Duration::from_secs(5);

/// A writer thread: runs jobs in order until every store it serves (and its [`Writers`]) is
/// gone. When a write of a store's `state.bin` failed, it retries every [`RETRY_UNSAVED`]
/// until one succeeds, so once there is room again the file holds what the agent applied
/// (without it, a restart with the broker unreachable fell back to the older revision).
fn write_jobs(jobs: mpsc::Receiver<Addressed>) {
    struct Slot {
        state_path: PathBuf,
        session_path: PathBuf,
        record: StateRecord,
        unsaved: bool,
    }
    let mut slots: HashMap<u64, Slot> = HashMap::new();
    // Stores whose state.bin is unsaved (a count: a thread may serve 10,000 stores).
    let mut unsaved = 0usize;
    let retry = |slots: &mut HashMap<u64, Slot>, unsaved: &mut usize| {
        for slot in slots.values_mut().filter(|s| s.unsaved) {
            if write_postcard(&slot.state_path, &slot.record, Mode::Private).is_ok() {
                tracing::info!(path = %slot.state_path.display(), "state file saved again after an earlier failure");
                slot.unsaved = false;
                *unsaved -= 1;
            }
        }
    };
    loop {
        let Addressed { store, job } = if unsaved > 0 {
            match jobs.recv_timeout(RETRY_UNSAVED) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    retry(&mut slots, &mut unsaved);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    retry(&mut slots, &mut unsaved);
                    return;
                }
            }
        } else {
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let (slot, job) = match job {
            Job::Open { dir, record } => {
                slots.insert(
                    store,
                    Slot {
                        state_path: dir.join(STATE_FILE),
                        session_path: dir.join(SESSION_FILE),
                        record: *record,
                        unsaved: false,
                    },
                );
                continue;
            }
            Job::Close => {
                if let Some(slot) = slots.remove(&store)
                    && slot.unsaved
                {
                    unsaved -= 1;
                    let _ = write_postcard(&slot.state_path, &slot.record, Mode::Private);
                }
                continue;
            }
            // A store's Open is sent before anything else of it, on the same channel.
            job => match slots.get_mut(&store) {
                Some(slot) => (slot, job),
                None => continue,
            },
        };
        // An answer is lost only if its caller stopped waiting (cancelled): the job is done
        // anyway.
        let was_unsaved = slot.unsaved;
        match job {
            Job::Desired { json, done } => {
                let saved = save_record(&slot.state_path, &mut slot.record, |r| {
                    r.desired_json = Some(json)
                });
                slot.unsaved = saved.is_err();
                let _ = done.send(saved);
            }
            Job::Applied { revision, done } => {
                let saved = save_record(&slot.state_path, &mut slot.record, |r| {
                    r.last_applied_revision = revision
                });
                slot.unsaved = saved.is_err();
                let _ = done.send(saved);
            }
            Job::Session { session, done } => {
                let record = SessionRecord {
                    format_version: FORMAT_VERSION,
                    session,
                };
                let _ = done.send(write_postcard(&slot.session_path, &record, Mode::Public));
            }
            Job::Flush { done } => {
                let _ = done.send(());
            }
            Job::Open { .. } | Job::Close => {}
        }
        match (was_unsaved, slot.unsaved) {
            (false, true) => unsaved += 1,
            (true, false) => unsaved -= 1,
            _ => {}
        }
    }
}

/// Writer threads shared by the stores of one process ([`StateStore::open_with`]): stores
/// are spread over them in turn, each store's jobs on one thread. The threads end once this
/// and every store opened with it are dropped.
#[derive(Debug, Clone)]
pub struct Writers {
    threads: Arc<Vec<mpsc::Sender<Addressed>>>,
    next: Arc<AtomicU64>,
}

impl Writers {
    /// Starts `threads` writer threads (at least one).
    pub fn start(threads: usize) -> Result<Writers, StateFileError> {
        let mut senders = Vec::new();
        for _ in 0..threads.max(1) {
            let (jobs, queue) = mpsc::channel();
            std::thread::Builder::new()
                .name("state-writer".into())
                .spawn(move || write_jobs(queue))
                .map_err(StateFileError::StartWriter)?;
            senders.push(jobs);
        }
        Ok(Writers {
            threads: Arc::new(senders),
            next: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A new store's number and the channel of the thread that serves it.
    fn assign(&self) -> (u64, mpsc::Sender<Addressed>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let thread = usize::try_from(id).unwrap_or(0) % self.threads.len();
        (id, self.threads[thread].clone())
    }
}

impl Drop for StateStore {
    fn drop(&mut self) {
        let _ = self.jobs.send(Addressed {
            store: self.id,
            job: Job::Close,
        });
    }
}

impl StateStore {
    /// Opens (creating) the data dir, loads what it holds and starts the writer thread.
    /// Blocking: call it from a blocking thread (`spawn_blocking`) in async code. A corrupt
    /// `state.bin` is moved aside as `state.bin.corrupt-<unix seconds>` and reported in
    /// [`Loaded::corrupt`]; the agent then starts with no desired state (and touches nothing).
    pub fn open(dir: &Path, device: &str) -> Result<(StateStore, Loaded), StateFileError> {
        Self::open_with(dir, device, &Writers::start(1)?)
    }

    /// [`open`](Self::open), the writes going through one of `writers`' threads (shared with
    /// other stores) instead of a thread of its own.
    pub fn open_with(
        dir: &Path,
        device: &str,
        writers: &Writers,
    ) -> Result<(StateStore, Loaded), StateFileError> {
        edgefleet_files::create_private_dir(dir).map_err(|source| StateFileError::CreateDir {
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
        let (id, jobs) = writers.assign();
        let opened = jobs.send(Addressed {
            store: id,
            job: Job::Open {
                dir: dir.to_owned(),
                record: Box::new(record),
            },
        });
        if opened.is_err() {
            return Err(StateFileError::WriterStopped {
                dir: dir.to_owned(),
            });
        }
        let store = StateStore {
            dir: dir.to_owned(),
            id,
            jobs,
            session: Mutex::new(session),
        };
        Ok((store, loaded))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stopped(&self) -> StateFileError {
        StateFileError::WriterStopped {
            dir: self.dir.clone(),
        }
    }

    /// Hands `job` (built around its answer channel) to the writer; the receiver of the
    /// answer, or an error if the writer is gone.
    fn submit(
        &self,
        job: impl FnOnce(Ack) -> Job,
    ) -> oneshot::Receiver<Result<(), StateFileError>> {
        let (done, answer) = oneshot::channel();
        // On failure the job (and `done` inside it) is dropped: the receiver then reports
        // the writer as stopped.
        let _ = self.jobs.send(Addressed {
            store: self.id,
            job: job(done),
        });
        answer
    }

    async fn answer(
        &self,
        answer: oneshot::Receiver<Result<(), StateFileError>>,
    ) -> Result<(), StateFileError> {
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Persists a newly accepted desired document; returns once it is on disk (or failed).
    pub async fn save_desired(&self, desired: &DesiredState) -> Result<(), StateFileError> {
        let json =
            String::from_utf8_lossy(&edgefleet_protocol::codec::encode(desired)).into_owned();
        let answer = self.submit(|done| Job::Desired { json, done });
        self.answer(answer).await
    }

    /// Persists the revision last fully applied; returns once it is on disk (or failed).
    pub async fn save_applied(&self, revision: u64) -> Result<(), StateFileError> {
        let answer = self.submit(|done| Job::Applied { revision, done });
        self.answer(answer).await
    }

    /// The session number for the next connection attempt: one more than the last one ever
    /// used, returned once the writer has persisted it, so that a restarted agent continues
    /// above it. If it cannot be persisted, the number is still used (and a warning logged).
    pub async fn next_session(&self) -> u64 {
        let (session, answer) = {
            let mut last = self.session.lock();
            *last = last.saturating_add(1);
            let session = *last;
            // Queued under the lock: the file never goes back to a smaller number.
            (session, self.submit(|done| Job::Session { session, done }))
        };
        if let Err(e) = self.answer(answer).await {
            tracing::warn!(session, error = %e, "could not persist the session counter");
        }
        session
    }

    /// Waits until every write handed to the writer before this call is done.
    pub async fn flush(&self) {
        let (done, finished) = oneshot::channel();
        let flush = Addressed {
            store: self.id,
            job: Job::Flush { done },
        };
        if self.jobs.send(flush).is_ok() {
            let _ = finished.await;
        }
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

    #[tokio::test]
    async fn round_trip_desired_applied_and_session() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = StateStore::open(dir.path(), "press-07").unwrap();
        assert!(loaded.desired.is_none() && loaded.corrupt.is_none());
        assert_eq!(store.next_session().await, 1);
        assert_eq!(store.next_session().await, 2);
        store.save_desired(&doc(5)).await.unwrap();
        store.save_applied(4).await.unwrap();
        drop(store);

        let (store, loaded) = StateStore::open(dir.path(), "press-07").unwrap();
        assert_eq!(loaded.desired, Some(doc(5)));
        assert_eq!(loaded.last_applied_revision, 4);
        assert_eq!(store.next_session().await, 3);
        assert!(!dir.path().join("state.tmp").exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[tokio::test]
    async fn a_session_number_is_on_disk_before_it_is_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = StateStore::open(dir.path(), "press-07").unwrap();
        for want in 1..=3 {
            let session = store.next_session().await;
            assert_eq!(session, want);
            let bytes = fs::read(dir.path().join(SESSION_FILE)).unwrap();
            let record: SessionRecord = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(record.session, session);
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_saved_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (store, _) = StateStore::open(&data, "press-07").unwrap();
        store.save_desired(&doc(1)).await.unwrap();
        fs::remove_dir_all(&data).unwrap();

        let err = store.save_desired(&doc(2)).await.unwrap_err();
        assert!(
            matches!(&err, StateFileError::Write { path, .. } if path.ends_with(STATE_FILE)),
            "{err:?}"
        );
        // The session number is still used when it cannot be persisted.
        assert_eq!(store.next_session().await, 1);

        fs::create_dir_all(&data).unwrap();
        store.save_applied(1).await.unwrap();
        assert_eq!(store.next_session().await, 2);
        drop(store);
        let (_, loaded) = StateStore::open(&data, "press-07").unwrap();
        // Revision 2 is what the agent applied (it runs a document it could not save): the
        // next write that succeeds carries it, so a restart does not fall back to revision 1.
        assert_eq!(loaded.desired, Some(doc(2)));
        assert_eq!(loaded.last_applied_revision, 1);
    }

    #[tokio::test]
    async fn corrupt_file_is_moved_aside() {
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
            store.save_desired(&doc(1)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn stores_sharing_writer_threads_keep_their_own_files_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let writers = Writers::start(2).unwrap();
        let stores: Vec<StateStore> = (0..5)
            .map(|i| {
                let (store, _) =
                    StateStore::open_with(&dir.path().join(format!("d{i}")), "press-07", &writers)
                        .unwrap();
                store
            })
            .collect();
        for (i, store) in stores.iter().enumerate() {
            let i = i as u64;
            store.save_desired(&doc(10 + i)).await.unwrap();
            store.save_applied(i).await.unwrap();
            assert_eq!(store.next_session().await, 1);
        }
        drop(stores);
        drop(writers);
        for i in 0..5u64 {
            let (store, loaded) =
                StateStore::open(&dir.path().join(format!("d{i}")), "press-07").unwrap();
            assert_eq!(loaded.desired, Some(doc(10 + i)));
            assert_eq!(loaded.last_applied_revision, i);
            assert_eq!(store.next_session().await, 2);
        }
    }

    #[tokio::test]
    async fn document_of_another_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = StateStore::open(dir.path(), "press-07").unwrap();
        store.save_desired(&doc(1)).await.unwrap();
        let (_, loaded) = StateStore::open(dir.path(), "press-08").unwrap();
        assert!(loaded.corrupt.unwrap().reason.contains("press-07"));
        assert!(loaded.desired.is_none());
    }
}
