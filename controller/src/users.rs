//! API users and their tokens, in the store (migration 4).
//!
//! Passwords are kept only as argon2id PHC strings; tokens (login sessions and API tokens for
//! scripts) only as their SHA-256, so neither a copy of the store nor a log line can be
//! replayed as a credential. Roles and site scope are in [`crate::auth`].

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use rand::RngCore;
use rand::distr::{Alphanumeric, SampleString};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Role;
use crate::store::{Store, StoreError};

/// A user as stored (the password hash never leaves this module's callers' process).
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub username: String,
    pub role: Role,
    pub sites: Vec<String>,
    pub created_at: String,
    pub disabled: bool,
    #[serde(skip)]
    pub password_hash: String,
}

/// What a valid token resolves to.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user: User,
    pub token_name: String,
    pub expires_at: i64,
}

/// Hashes a password (argon2id, random salt) into a PHC string. Slow on purpose: call it off
/// the async runtime (`spawn_blocking`).
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

/// A hash no password matches: verified against for unknown users, so a login takes as long
/// for an unknown user as for a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&new_password()))
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
    format!("eft_{}", crate::audit::hex(&b))
}

/// What the store keeps of a token.
pub fn token_digest(token: &str) -> String {
    crate::audit::hex(&Sha256::digest(token.as_bytes()))
}

/// Usernames: 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit; `system`,
/// `anonymous` and `device:*` are taken by the audit log.
pub fn validate_username(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        return Err(format!(
            "username '{name}': use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        ));
    }
    if matches!(name, "system" | "anonymous") {
        return Err(format!(
            "username '{name}' is reserved for the audit log; choose another"
        ));
    }
    Ok(())
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    let role: String = r.get(1)?;
    let sites: String = r.get(2)?;
    Ok(User {
        username: r.get(0)?,
        role: role.parse().unwrap_or(Role::Viewer),
        sites: serde_json::from_str(&sites).unwrap_or_default(),
        created_at: r.get(3)?,
        disabled: r.get(4)?,
        password_hash: r.get(5)?,
    })
}

const USER_COLUMNS: &str = "username, role, sites_json, created_at, disabled, password_hash";

impl Store {
    pub fn user_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"),
                [username],
                user_from_row,
            )
            .optional()?)
    }

    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username"
        ))?;
        let rows = stmt.query_map([], user_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds a user; false if the name is taken.
    pub fn insert_user(&self, user: &User) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO users (username, password_hash, role, sites_json, created_at, disabled)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(username) DO NOTHING",
            params![
                user.username,
                user.password_hash,
                user.role.as_str(),
                serde_json::to_string(&user.sites).unwrap_or_else(|_| "[]".into()),
                user.created_at,
                user.disabled
            ],
        )?;
        Ok(n > 0)
    }

    /// Removes a user and every token of theirs; false if there was no such user.
    pub fn delete_user(&mut self, username: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM api_tokens WHERE username = ?1", [username])?;
        let n = tx.execute("DELETE FROM users WHERE username = ?1", [username])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Forgets tokens expired at `now` (called when a token is issued).
    pub fn purge_expired_tokens(&self, now: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM api_tokens WHERE expires_at <= ?1", [now])?)
    }

    /// Records a token by its digest.
    pub fn insert_token(
        &self,
        digest: &str,
        username: &str,
        name: &str,
        created_at: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO api_tokens (token_sha256, username, name, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![digest, username, name, created_at, expires_at],
        )?;
        Ok(())
    }

    /// The enabled user a token digest belongs to, if the token exists and has not expired at
    /// `now` (unix seconds). A read only: every API request asks.
    pub fn token_owner(&self, digest: &str, now: i64) -> Result<Option<TokenOwner>, StoreError> {
        let found: Option<(String, String, i64)> = self
            .conn
            .query_row(
                "SELECT username, name, expires_at FROM api_tokens WHERE token_sha256 = ?1 AND expires_at > ?2",
                params![digest, now],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((username, token_name, expires_at)) = found else {
            return Ok(None);
        };
        Ok(self
            .user(&username)?
            .filter(|u| !u.disabled)
            .map(|user| TokenOwner {
                user,
                token_name,
                expires_at,
            }))
    }

    /// Revokes one token; false if it did not exist.
    pub fn delete_token(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM api_tokens WHERE token_sha256 = ?1", [digest])?
            > 0)
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
        assert!(!verify_password("x", decoy_hash()));

        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        let user = User {
            username: "ana".into(),
            role: Role::Operator,
            sites: vec!["lyon".into()],
            created_at: "t".into(),
            disabled: false,
            password_hash: phc,
        };
        assert!(s.insert_user(&user).unwrap());
        assert!(!s.insert_user(&user).unwrap(), "names are unique");
        let token = new_token();
        assert_eq!(token.len(), 4 + 64);
        s.insert_token(&token_digest(&token), "ana", "ci", "t", 2_000)
            .unwrap();
        let owner = s
            .token_owner(&token_digest(&token), 1_000)
            .unwrap()
            .unwrap();
        assert_eq!(owner.user.sites, ["lyon"]);
        assert_eq!(owner.user.role, Role::Operator);
        let stored: String = s
            .conn
            .query_row("SELECT token_sha256 FROM api_tokens", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, token);
        assert!(
            s.token_owner(&token_digest(&token), 2_000)
                .unwrap()
                .is_none(),
            "expired"
        );
        assert_eq!(s.purge_expired_tokens(2_000).unwrap(), 1);
        s.insert_token(&token_digest(&token), "ana", "ci", "t", 9_000)
            .unwrap();
        assert!(s.delete_user("ana").unwrap());
        assert!(
            s.token_owner(&token_digest(&token), 1_000)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn usernames() {
        for ok in ["admin", "ana.b", "op-1", "x"] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Ana",
            "device:x",
            "a b",
            "system",
            "anonymous",
            "-x",
            &"a".repeat(65),
        ] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }
}
