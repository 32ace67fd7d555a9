//! API users and their credentials: passwords (argon2id), login sessions and API tokens,
//! the first-start admin.
//!
//! Passwords are kept only as argon2id PHC strings, tokens only as their SHA-256, so neither
//! a copy of the store nor a log line can be replayed as a credential. Hashing a password is
//! slow on purpose, so it always runs on a blocking thread, never on an async worker — also
//! the decoy hash an unknown user is checked against (so both failures take as long) and
//! the first admin's at start.
//!
//! ## Bounded abuse
//! - At most [`ARGON2_CONCURRENT`] password checks run at once (each holds ~19 MiB), on as
//!   many threads of their own ([`PasswordThreads`]); a login that cannot get a slot within
//!   [`ARGON2_WAIT`] is refused with 503 and `Retry-After`, so a flood of logins (unknown
//!   users too, through the decoy hash) cannot push the gateway out of memory. Own threads,
//!   not tokio's blocking pool: glibc keeps a freed 19 MiB block in the arena of the thread
//!   that freed it, so argon2 runs spread over many pool threads held ~600 MB after 600
//!   logins (measured); on 4 threads they hold at most 4 blocks.
//! - [`Backoff`]: after [`FREE_FAILURES_PER_USER`] failed logins for one user name, or
//!   [`FREE_FAILURES_PER_ADDRESS`] from one address, further attempts are refused with 429
//!   and `Retry-After` without running argon2, for a delay doubling from 1 s up to
//!   [`MAX_BACKOFF`]. A success clears the user's count. Refusals are audited like any
//!   failed login (the audit log aggregates repeats).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash};
use edgefleet_domain::access::{Caller, Role};
use edgefleet_domain::audit::{Entry, Outcome};
use edgefleet_domain::user::{User, validate_username};
use edgefleet_store::users::Removal;
use edgefleet_store::{Store, StoreError};
use parking_lot::Mutex;
use rand::RngCore;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use thiserror::Error;

use super::audit::AuditLog;

/// File in the data dir holding the first admin's password (mode 0600).
pub const INITIAL_ADMIN_FILE: &str = "initial-admin-password";
/// A login session lasts this long.
pub const SESSION_SECS: i64 = 12 * 3600;
/// Longest lifetime of an API token (admins, operators, auditors).
pub const TOKEN_MAX_SECS: i64 = 366 * 24 * 3600;
/// Longest lifetime of a viewer's API token: read access for a script, renewed monthly.
pub const VIEWER_TOKEN_MAX_SECS: i64 = 31 * 24 * 3600;

/// The longest API token `role` may mint.
pub fn token_max_secs(role: Role) -> i64 {
    match role {
        Role::Viewer => VIEWER_TOKEN_MAX_SECS,
        _ => TOKEN_MAX_SECS,
    }
}

/// Password checks (argon2, ~19 MiB each) running at once, at most.
pub const ARGON2_CONCURRENT: usize = 4;
/// How long a login waits for a password-check slot before a 503.
pub const ARGON2_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Failed logins for one user name before backoff starts.
pub const FREE_FAILURES_PER_USER: u32 = 5;
/// Failed logins from one address before backoff starts.
pub const FREE_FAILURES_PER_ADDRESS: u32 = 20;
/// The longest backoff.
pub const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);
/// Keys (user names, addresses) the backoff remembers at most; beyond, the idle are forgotten.
const BACKOFF_KEYS: usize = 10_000;

thread_local! {
    /// Each password thread's argon2 memory, allocated once and reused (see the module docs).
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest argon2 memory a stored hash may ask for (ours use 19 MiB).
const MAX_ARGON2_BLOCKS: usize = 64 * 1024;

/// Runs argon2 with `a`'s parameters in this thread's reused memory.
fn argon2_into(
    a: &Argon2<'_>,
    blocks: usize,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> bool {
    if blocks > MAX_ARGON2_BLOCKS {
        return false;
    }
    ARGON2_MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() != blocks {
            *m = vec![argon2::Block::default(); blocks];
        }
        a.hash_password_into_with_memory(password, salt, out, &mut m[..])
            .is_ok()
    })
}

/// Hashes a password (argon2id, random salt) into a PHC string. Slow on purpose: call it on a
/// password thread.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    // 16 bytes always encode; an empty hash (never verifies) is the safe answer otherwise.
    let Ok(salt_text) = SaltString::encode_b64(&salt) else {
        return String::new();
    };
    let a = Argon2::default();
    let params = a.params().clone();
    let mut out = [0u8; 32];
    if !argon2_into(
        &a,
        params.block_count(),
        password.as_bytes(),
        &salt,
        &mut out,
    ) {
        return String::new();
    }
    let (Ok(output), Ok(params)) = (
        argon2::password_hash::Output::new(&out),
        argon2::password_hash::ParamsString::try_from(&params),
    ) else {
        return String::new();
    };
    PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params,
        salt: Some(salt_text.as_salt()),
        hash: Some(output),
    }
    .to_string()
}

/// Checks a password against a PHC string (constant-time comparison). Slow on purpose, like
/// [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(alg), Ok(params), Some(salt), Some(expected)) = (
        argon2::Algorithm::try_from(h.algorithm),
        argon2::Params::try_from(&h),
        h.salt,
        h.hash,
    ) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    let a = Argon2::new(alg, version, params);
    let mut out = vec![0u8; expected.len()];
    argon2_into(&a, blocks, password.as_bytes(), salt, &mut out)
        && argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

/// A new random password (24 letters and digits, ~142 bits).
pub fn new_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// A new bearer token: `eft_` + 32 random bytes in hex (the prefix lets secret scanners
/// recognize it).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("eft_{}", hex::encode(b))
}

/// What the store keeps of a token (and of an enrollment secret).
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(unix: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[derive(Debug, Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    /// Too many failed logins: wait this many seconds.
    #[error("{0}")]
    Backoff(String, u64),
    /// Every password-check slot is taken: retry after this many seconds.
    #[error("{0}")]
    Busy(String, u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Failed-login counts per key (a user name or an address), with the time until which the
/// key must wait.
#[derive(Default)]
pub struct Backoff {
    keys: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Backoff {
    /// How long `key` must still wait, if at all.
    pub fn wait(&self, key: &str, now: Instant) -> Option<std::time::Duration> {
        let keys = self.keys.lock();
        let (_, until) = keys.get(key)?;
        (*until > now).then(|| *until - now)
    }

    /// Counts a failure of `key`; past `free` failures the key waits, doubling from 1 s.
    pub fn fail(&self, key: &str, free: u32, now: Instant) {
        let mut keys = self.keys.lock();
        if keys.len() >= BACKOFF_KEYS && !keys.contains_key(key) {
            keys.retain(|_, (_, until)| *until + MAX_BACKOFF > now);
            if keys.len() >= BACKOFF_KEYS {
                return;
            }
        }
        let (n, until) = keys.entry(key.to_owned()).or_insert((0, now));
        *n = n.saturating_add(1);
        if *n > free {
            let exp = (*n - free - 1).min(6);
            *until = now + (std::time::Duration::from_secs(1 << exp)).min(MAX_BACKOFF);
        }
    }

    pub fn clear(&self, key: &str) {
        self.keys.lock().remove(key);
    }
}

/// A login session just issued.
pub struct Session {
    pub token: String,
    pub user: User,
    pub expires_at: i64,
    pub lifetime_secs: i64,
}

/// What `POST /api/v1/users` asks for.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub role: String,
    pub sites: Vec<String>,
    /// Generated (and returned once) when absent.
    pub password: Option<String>,
}

/// A password hash or check to run.
type PasswordJob = Box<dyn FnOnce() + Send>;

/// Threads that run password hashes and checks, [`ARGON2_CONCURRENT`] of them.
pub struct PasswordThreads {
    jobs: Mutex<Option<std::sync::mpsc::Sender<PasswordJob>>>,
}

impl PasswordThreads {
    fn start(n: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<PasswordJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a password-check thread: {e}");
            }
        }
        PasswordThreads {
            jobs: Mutex::new(Some(tx)),
        }
    }

    /// Runs `f` on one of the threads; its result, or `None` if it panicked or no thread runs.
    async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: PasswordJob = Box::new(move || {
            let _ = tx.send(f());
        });
        let sent = match &*self.jobs.lock() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return None;
        }
        rx.await.ok()
    }
}

impl Drop for PasswordThreads {
    fn drop(&mut self) {
        // Closing the channel ends the threads.
        self.jobs.lock().take();
    }
}

pub struct Users {
    store: Store,
    audit: Arc<AuditLog>,
    decoy: tokio::sync::OnceCell<String>,
    argon2: Arc<tokio::sync::Semaphore>,
    threads: PasswordThreads,
    backoff: Backoff,
}

impl Users {
    pub fn new(store: Store, audit: Arc<AuditLog>) -> Self {
        Users {
            store,
            audit,
            decoy: tokio::sync::OnceCell::new(),
            argon2: Arc::new(tokio::sync::Semaphore::new(ARGON2_CONCURRENT)),
            threads: PasswordThreads::start(ARGON2_CONCURRENT),
            backoff: Backoff::default(),
        }
    }

    /// Runs a password check (or hash) when a slot is free, waiting at most [`ARGON2_WAIT`].
    async fn argon2<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, UserError> {
        let permit = tokio::time::timeout(ARGON2_WAIT, self.argon2.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                UserError::Busy(
                    "the gateway is busy checking other logins; retry in a second".into(),
                    1,
                )
            })?;
        let r = self.threads.run(f).await;
        drop(permit);
        r.ok_or_else(|| {
            UserError::Busy(
                "the password check did not run (see the gateway log); retry".into(),
                1,
            )
        })
    }

    /// A hash no password matches, computed once, off the runtime.
    async fn decoy(&self) -> String {
        self.decoy
            .get_or_init(|| async {
                self.threads
                    .run(|| hash_password(&new_password()))
                    .await
                    .unwrap_or_default()
            })
            .await
            .clone()
    }

    /// Resolves a bearer token to its caller.
    pub async fn caller_of(&self, token: &str) -> Result<Option<Caller>, StoreError> {
        let digest = token_digest(token);
        let owner = self.store.token_owner(&digest, now_unix()).await?;
        Ok(owner.map(|o| Caller {
            username: o.user.username,
            role: o.user.role,
            sites: o.user.sites,
            token_name: o.token_name,
            expires_at: o.expires_at,
            token_digest: digest,
        }))
    }

    /// Whether a token digest still names a valid token (streams recheck theirs).
    pub async fn token_valid(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.store.token_owner(digest, now_unix()).await?.is_some())
    }

    /// Issues a token and records it (by digest only); returns the token and its expiry.
    pub async fn issue_token(
        &self,
        username: &str,
        name: &str,
        lifetime_secs: i64,
    ) -> Result<(String, i64), StoreError> {
        let token = new_token();
        let now = now_unix();
        let expires_at = now.saturating_add(lifetime_secs);
        self.store
            .insert_token(
                &token_digest(&token),
                username,
                name,
                &edgefleet_protocol::now_rfc3339(),
                expires_at,
                now,
            )
            .await?;
        Ok((token, expires_at))
    }

    /// Records a refused login (also an unreadable request).
    pub async fn login_refused(&self, who: &str, status: u16, why: &str) {
        self.audit
            .record(Entry {
                actor: "anonymous".into(),
                role: String::new(),
                action: "auth.login".into(),
                target: edgefleet_domain::audit::cap_field(who),
                site: String::new(),
                outcome: Outcome::Refused,
                status: Some(status),
                detail: json!({ "error": why }),
            })
            .await;
    }

    /// Checks a password (argon2 off the runtime, bounded, a decoy hash for unknown users),
    /// issues a session token and audits the outcome. Shared by the API's and the
    /// dashboard's login; `peer` is the client's address (backoff per address).
    pub async fn password_login(
        &self,
        username: &str,
        password: String,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Session, UserError> {
        // A user name is at most 64 characters: a longer one is unknown, and keyed cut.
        let user_key = format!("user:{}", username.chars().take(64).collect::<String>());
        let addr_key = peer.map(|p| format!("addr:{p}"));
        let now = Instant::now();
        let wait = [Some(&user_key), addr_key.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|k| self.backoff.wait(k, now))
            .max();
        if let Some(wait) = wait {
            let secs = wait.as_secs().max(1);
            self.login_refused(username, 429, "too many failed logins: backing off")
                .await;
            return Err(UserError::Backoff(
                format!(
                    "too many failed logins for this user or from this address; retry in {secs} s"
                ),
                secs,
            ));
        }
        let user = self.store.user(username).await?;
        let phc = match &user {
            Some(u) => u.password_hash.clone(),
            None => self.decoy().await,
        };
        let matches = match self.argon2(move || verify_password(&password, &phc)).await {
            Ok(m) => m,
            Err(e) => {
                self.login_refused(username, 503, "password checks saturated")
                    .await;
                return Err(e);
            }
        };
        let user = match user {
            Some(u) if matches && !u.disabled => u,
            _ => {
                let now = Instant::now();
                self.backoff.fail(&user_key, FREE_FAILURES_PER_USER, now);
                if let Some(k) = &addr_key {
                    self.backoff.fail(k, FREE_FAILURES_PER_ADDRESS, now);
                }
                self.login_refused(username, 401, "wrong username or password")
                    .await;
                return Err(UserError::Unauthorized(
                    "wrong username or password; check them and run 'edgefleet login' again".into(),
                ));
            }
        };
        self.backoff.clear(&user_key);
        let (token, expires_at) = self
            .issue_token(&user.username, "login", SESSION_SECS)
            .await?;
        self.audit
            .record(Entry {
                actor: user.username.clone(),
                role: user.role.as_str().into(),
                action: "auth.login".into(),
                target: user.username.clone(),
                site: String::new(),
                outcome: Outcome::Ok,
                status: Some(200),
                detail: json!({ "expires_at": rfc3339(expires_at) }),
            })
            .await;
        Ok(Session {
            token,
            user,
            expires_at,
            lifetime_secs: SESSION_SECS,
        })
    }

    /// The unexpired tokens of `username` (everyone's when `None`), by name.
    pub async fn tokens(
        &self,
        username: Option<&str>,
    ) -> Result<Vec<edgefleet_domain::user::TokenInfo>, StoreError> {
        self.store.tokens(username, now_unix()).await
    }

    /// Revokes every token of `username` named `name`; how many.
    pub async fn revoke_named(&self, username: &str, name: &str) -> Result<usize, StoreError> {
        self.store.delete_tokens_named(username, name).await
    }

    /// Revokes one token by digest; false if it did not exist.
    pub async fn revoke_token(&self, digest: &str) -> Result<bool, StoreError> {
        self.store.delete_token(digest).await
    }

    pub async fn list(&self) -> Result<Vec<User>, StoreError> {
        self.store.users().await
    }

    /// Creates a user; returns it and the generated password (if none was given).
    pub async fn create(&self, new: NewUser) -> Result<(User, Option<String>), UserError> {
        validate_username(&new.username).map_err(UserError::Invalid)?;
        let role: Role = new.role.parse().map_err(UserError::Invalid)?;
        let mut sites = new.sites.clone();
        sites.sort();
        sites.dedup();
        for s in &sites {
            edgefleet_protocol::ids::validate_label("site", s)
                .map_err(|e| UserError::Invalid(e.to_string()))?;
        }
        match (role.scoped(), sites.is_empty()) {
            (true, true) => {
                return Err(UserError::Invalid(format!(
                    "a {role} acts only within sites: give at least one (--site lyon)"
                )));
            }
            (false, false) => {
                return Err(UserError::Invalid(format!(
                    "an {role} is not limited to sites: drop --site (or make the user an operator or viewer)"
                )));
            }
            _ => {}
        }
        if let Some(p) = &new.password
            && p.chars().count() < 12
        {
            return Err(UserError::Invalid(
                "the password is too short: use at least 12 characters, or omit it to get a generated one".into(),
            ));
        }
        if self.store.user(&new.username).await?.is_some() {
            return Err(UserError::Conflict(format!(
                "user '{}' exists; remove it first with 'edgefleet user remove {}'",
                new.username, new.username
            )));
        }
        let generated = new.password.is_none().then(new_password);
        let password = new
            .password
            .clone()
            .or_else(|| generated.clone())
            .unwrap_or_default();
        let hash = self.argon2(move || hash_password(&password)).await?;
        let user = User {
            username: new.username.clone(),
            role,
            sites,
            created_at: edgefleet_protocol::now_rfc3339(),
            disabled: false,
            password_hash: hash,
        };
        if !self.store.insert_user(user.clone()).await? {
            return Err(UserError::Conflict(format!(
                "user '{}' exists",
                new.username
            )));
        }
        Ok((user, generated))
    }

    /// Removes a user and every token of theirs (never oneself, never the last admin).
    pub async fn remove(&self, name: &str, by: &str) -> Result<(), UserError> {
        if name == by {
            return Err(UserError::Conflict(
                "you cannot remove yourself; ask another admin".into(),
            ));
        }
        match self.store.delete_user(name).await? {
            Removal::Removed => Ok(()),
            Removal::NoSuchUser => Err(UserError::NotFound(format!(
                "no user '{name}'; list them with 'edgefleet user list'"
            ))),
            Removal::LastAdmin => Err(UserError::Conflict(format!(
                "'{name}' is the last admin; create another admin first"
            ))),
        }
    }

    /// First start: when no user exists, creates `admin` with a random password, writes the
    /// password to `<data_dir>/initial-admin-password` (0600) and tells on stderr how to log
    /// in. Returns whether it did.
    pub async fn ensure_initial_admin(&self, data_dir: &Path) -> anyhow::Result<bool> {
        if self.store.user_count().await? > 0 {
            return Ok(false);
        }
        let password = new_password();
        let file = data_dir.join(INITIAL_ADMIN_FILE);
        let (path, text) = (file.clone(), format!("{password}\n"));
        blocking(move || edgefleet_files::write_private(&path, text.as_bytes()))
            .await
            .with_context(|| format!("cannot write {}", file.display()))?;
        let hash = self
            .threads
            .run(move || hash_password(&password))
            .await
            .context("the password-hashing threads are not running")?;
        let user = User {
            username: "admin".into(),
            role: Role::Admin,
            sites: Vec::new(),
            created_at: edgefleet_protocol::now_rfc3339(),
            disabled: false,
            password_hash: hash,
        };
        self.store.insert_user(user).await?;
        self.audit
            .record(Entry::system(
                "user.create",
                "admin",
                "",
                Outcome::Ok,
                json!({ "role": "admin", "reason": "first start: no user existed" }),
            ))
            .await;
        // Straight to stderr, not through tracing: this is for the person starting the gateway,
        // and it names where the password is, never the password.
        eprintln!(
            "edgefleet: first start: created the user 'admin'; its password is in {} (readable only by you).\n\
             Log in with:\n    edgefleet login --user admin --password-file {}\n\
             then create personal users with 'edgefleet user add' and delete that file.",
            file.display(),
            file.display()
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_kept_only_as_hashes() {
        let phc = hash_password("correct horse");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("correct horsE", &phc));
        assert!(!verify_password("x", "not a phc string"));
        // Hashes made by the argon2 crate's own API (every stored hash so far) still verify.
        use argon2::PasswordHasher;
        let theirs = Argon2::default()
            .hash_password(
                b"old password",
                &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
            )
            .unwrap()
            .to_string();
        assert!(verify_password("old password", &theirs));
        assert!(!verify_password("old passworD", &theirs));
        let token = new_token();
        assert_eq!(token.len(), 4 + 64);
        assert_ne!(token_digest(&token), token);
        assert_eq!(token_digest(&token).len(), 64);
    }

    #[test]
    fn backoff_starts_after_the_free_failures_and_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let t = Instant::now();
        for _ in 0..3 {
            b.fail("user:ana", 3, t);
        }
        assert_eq!(b.wait("user:ana", t), None, "three free failures");
        b.fail("user:ana", 3, t);
        assert_eq!(
            b.wait("user:ana", t),
            Some(std::time::Duration::from_secs(1))
        );
        b.fail("user:ana", 3, t);
        assert_eq!(
            b.wait("user:ana", t),
            Some(std::time::Duration::from_secs(2))
        );
        for _ in 0..20 {
            b.fail("user:ana", 3, t);
        }
        assert_eq!(b.wait("user:ana", t), Some(MAX_BACKOFF));
        assert_eq!(b.wait("user:ana", t + MAX_BACKOFF), None);
        assert_eq!(b.wait("user:bob", t), None, "keys are separate");
        b.clear("user:ana");
        assert_eq!(b.wait("user:ana", t), None);
    }

    #[tokio::test]
    async fn the_first_admin_is_created_once_with_a_private_password_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let signer = edgefleet_protocol::signing::DocumentSigner::from_secret(&[1; 32]);
        let users = Users::new(
            store.clone(),
            Arc::new(AuditLog::new(store, Arc::new(signer))),
        );
        assert!(users.ensure_initial_admin(dir.path()).await.unwrap());
        assert!(!users.ensure_initial_admin(dir.path()).await.unwrap());
        let file = dir.path().join(INITIAL_ADMIN_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();
        let s = users.password_login("admin", password, None).await.unwrap();
        assert!(users.caller_of(&s.token).await.unwrap().is_some());
        assert!(
            users
                .password_login("nobody", "x".into(), None)
                .await
                .is_err()
        );
    }
}
