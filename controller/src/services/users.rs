//! API users and their credentials: passwords (argon2id), login sessions and API tokens,
//! the first-start admin.
//!
//! Passwords are kept only as argon2id PHC strings, tokens only as their SHA-256, so neither
//! a copy of the store nor a log line can be replayed as a credential. Hashing a password is
//! slow on purpose, so it always runs on a blocking thread, never on an async worker — also
//! the decoy hash an unknown user is checked against (so both failures take as long) and
//! the first admin's at start.

use std::path::Path;

use anyhow::Context;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use edgefleet_domain::access::{Caller, Role};
use edgefleet_domain::audit::{Entry, Outcome};
use edgefleet_domain::user::{User, validate_username};
use edgefleet_store::users::Removal;
use edgefleet_store::{Store, StoreError};
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
/// Longest lifetime of an API token.
pub const TOKEN_MAX_SECS: i64 = 366 * 24 * 3600;

/// Hashes a password (argon2id, random salt) into a PHC string. Slow on purpose: call it on a
/// blocking thread.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    // 16 bytes always encode; an empty hash (never verifies) is the safe answer otherwise.
    let Ok(salt) = SaltString::encode_b64(&salt) else {
        return String::new();
    };
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// Checks a password against a PHC string. Slow on purpose, like [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
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
    #[error(transparent)]
    Store(#[from] StoreError),
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

pub struct Users {
    store: Store,
    audit: Arc<AuditLog>,
    decoy: tokio::sync::OnceCell<String>,
}

impl Users {
    pub fn new(store: Store, audit: Arc<AuditLog>) -> Self {
        Users {
            store,
            audit,
            decoy: tokio::sync::OnceCell::new(),
        }
    }

    /// A hash no password matches, computed once, off the runtime.
    async fn decoy(&self) -> String {
        self.decoy
            .get_or_init(|| blocking(|| hash_password(&new_password())))
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
                target: who.into(),
                site: String::new(),
                outcome: Outcome::Refused,
                status: Some(status),
                detail: json!({ "error": why }),
            })
            .await;
    }

    /// Checks a password (argon2 off the runtime, a decoy hash for unknown users), issues a
    /// session token and audits the outcome. Shared by the API's and the dashboard's login.
    pub async fn password_login(
        &self,
        username: &str,
        password: String,
    ) -> Result<Session, UserError> {
        let user = self.store.user(username).await?;
        let phc = match &user {
            Some(u) => u.password_hash.clone(),
            None => self.decoy().await,
        };
        let matches = blocking(move || verify_password(&password, &phc)).await;
        let user = match user {
            Some(u) if matches && !u.disabled => u,
            _ => {
                self.login_refused(username, 401, "wrong username or password")
                    .await;
                return Err(UserError::Unauthorized(
                    "wrong username or password; check them and run 'edgefleet login' again".into(),
                ));
            }
        };
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
        let hash = blocking(move || hash_password(&password)).await;
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
        let hash = blocking(move || hash_password(&password)).await;
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
        let token = new_token();
        assert_eq!(token.len(), 4 + 64);
        assert_ne!(token_digest(&token), token);
        assert_eq!(token_digest(&token).len(), 64);
    }

    #[tokio::test]
    async fn the_first_admin_is_created_once_with_a_private_password_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let users = Users::new(store.clone(), Arc::new(AuditLog::new(store)));
        assert!(users.ensure_initial_admin(dir.path()).await.unwrap());
        assert!(!users.ensure_initial_admin(dir.path()).await.unwrap());
        let file = dir.path().join(INITIAL_ADMIN_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let password = std::fs::read_to_string(&file).unwrap().trim().to_owned();
        let s = users.password_login("admin", password).await.unwrap();
        assert!(users.caller_of(&s.token).await.unwrap().is_some());
        assert!(users.password_login("nobody", "x".into()).await.is_err());
    }
}
