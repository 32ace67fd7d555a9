//! API users and what a token resolves to. Passwords and tokens themselves never appear
//! here: only their hashes, kept by the store.

use serde::Serialize;

use crate::access::Role;

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

/// An API token as listed: never its digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub username: String,
    pub name: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// What a valid token resolves to.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user: User,
    pub token_name: String,
    pub expires_at: i64,
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

#[cfg(test)]
mod tests {
    use super::*;

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
