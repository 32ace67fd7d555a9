//! API users and their tokens (login sessions and API tokens for scripts). Passwords are
//! kept only as argon2id PHC strings, tokens only as their SHA-256, so neither a copy of the
//! store nor a log line can be replayed as a credential.

use edgefleet_domain::access::Role;
use edgefleet_domain::user::{TokenInfo, TokenOwner, User};
use tokio_rusqlite::rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{Store, StoreError, u};

const USER_COLUMNS: &str = "username, role, sites_json, created_at, disabled, password_hash";

fn user_row(r: &Row<'_>) -> tokio_rusqlite::rusqlite::Result<User> {
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

fn user(c: &Connection, username: &str) -> Result<Option<User>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"),
        [username],
        user_row,
    )
    .optional()?)
}

/// What [`Store::delete_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    NoSuchUser,
    /// Refused: the user is the last enabled admin.
    LastAdmin,
}

impl Store {
    pub async fn user_count(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
            Ok(u(n))
        })
        .await
    }

    pub async fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        let username = username.to_owned();
        self.read(move |c| user(c, &username)).await
    }

    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {USER_COLUMNS} FROM users ORDER BY username"
            ))?;
            let rows = stmt.query_map([], user_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Adds a user; false if the name is taken.
    pub async fn insert_user(&self, user: User) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute(
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
        })
        .await
    }

    /// Removes a user and every token of theirs, unless it is the last enabled admin; the
    /// check and the removal are one transaction.
    pub async fn delete_user(&self, username: &str) -> Result<Removal, StoreError> {
        let username = username.to_owned();
        self.write(move |c| {
            let tx = c.transaction()?;
            let Some(target) = user(&tx, &username)? else {
                return Ok(Removal::NoSuchUser);
            };
            if target.role == Role::Admin {
                let admins: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0",
                    [],
                    |r| r.get(0),
                )?;
                if admins <= 1 {
                    return Ok(Removal::LastAdmin);
                }
            }
            tx.execute("DELETE FROM api_tokens WHERE username = ?1", [&username])?;
            tx.execute("DELETE FROM users WHERE username = ?1", [&username])?;
            tx.commit()?;
            Ok(Removal::Removed)
        })
        .await
    }

    /// Records a token by its digest, forgetting every token expired at `now` (unix seconds)
    /// in the same transaction.
    pub async fn insert_token(
        &self,
        digest: &str,
        username: &str,
        name: &str,
        created_at: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let (digest, username, name, created_at) = (
            digest.to_owned(),
            username.to_owned(),
            name.to_owned(),
            created_at.to_owned(),
        );
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM api_tokens WHERE expires_at <= ?1", [now])?;
            tx.execute(
                "INSERT INTO api_tokens (token_sha256, username, name, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![digest, username, name, created_at, expires_at],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The enabled user a token digest belongs to, if the token exists and has not expired at
    /// `now` (unix seconds). A read only: every API request asks.
    pub async fn token_owner(
        &self,
        digest: &str,
        now: i64,
    ) -> Result<Option<TokenOwner>, StoreError> {
        let digest = digest.to_owned();
        self.read(move |c| {
            let found: Option<(String, String, i64)> = c
                .query_row(
                    "SELECT username, name, expires_at FROM api_tokens WHERE token_sha256 = ?1 AND expires_at > ?2",
                    params![digest, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((username, token_name, expires_at)) = found else {
                return Ok(None);
            };
            Ok(user(c, &username)?
                .filter(|u| !u.disabled)
                .map(|user| TokenOwner {
                    user,
                    token_name,
                    expires_at,
                }))
        })
        .await
    }

    /// The unexpired tokens at `now` of `username` (every user's when `None`), by user and
    /// name. Never a digest.
    pub async fn tokens(
        &self,
        username: Option<&str>,
        now: i64,
    ) -> Result<Vec<TokenInfo>, StoreError> {
        let username = username.map(str::to_owned);
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT username, name, created_at, expires_at FROM api_tokens \
                 WHERE expires_at > ?1 AND (?2 IS NULL OR username = ?2) \
                 ORDER BY username, name, created_at",
            )?;
            let rows = st.query_map(params![now, username], |r| {
                Ok(TokenInfo {
                    username: r.get(0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                    expires_at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Revokes every token of `username` named `name`; how many there were.
    pub async fn delete_tokens_named(
        &self,
        username: &str,
        name: &str,
    ) -> Result<usize, StoreError> {
        let (username, name) = (username.to_owned(), name.to_owned());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM api_tokens WHERE username = ?1 AND name = ?2",
                params![username, name],
            )?)
        })
        .await
    }

    /// Revokes one token; false if it did not exist.
    pub async fn delete_token(&self, digest: &str) -> Result<bool, StoreError> {
        let digest = digest.to_owned();
        self.write(move |c| {
            Ok(c.execute("DELETE FROM api_tokens WHERE token_sha256 = ?1", [digest])? > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::store;

    fn ana(role: Role) -> User {
        User {
            username: "ana".into(),
            role,
            sites: vec!["lyon".into()],
            created_at: "t".into(),
            disabled: false,
            password_hash: "$argon2id$placeholder".into(),
        }
    }

    #[tokio::test]
    async fn tokens_resolve_to_enabled_users_until_they_expire() {
        let (_dir, s) = store().await;
        assert!(s.insert_user(ana(Role::Operator)).await.unwrap());
        assert!(
            !s.insert_user(ana(Role::Operator)).await.unwrap(),
            "names are unique"
        );
        s.insert_token("d1", "ana", "ci", "t", 2_000, 0)
            .await
            .unwrap();
        let owner = s.token_owner("d1", 1_000).await.unwrap().unwrap();
        assert_eq!(owner.user.sites, ["lyon"]);
        assert_eq!(owner.user.role, Role::Operator);
        assert!(
            s.token_owner("d1", 2_000).await.unwrap().is_none(),
            "expired"
        );
        s.insert_token("d2", "ana", "ci", "t", 9_000, 2_000)
            .await
            .unwrap();
        s.insert_token("d3", "ana", "deploy", "t", 9_000, 2_000)
            .await
            .unwrap();
        let names: Vec<String> = s
            .tokens(Some("ana"), 2_000)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["ci", "deploy"]);
        assert!(s.tokens(Some("bob"), 2_000).await.unwrap().is_empty());
        assert_eq!(s.delete_tokens_named("ana", "deploy").await.unwrap(), 1);
        assert_eq!(s.delete_tokens_named("ana", "deploy").await.unwrap(), 0);
        let left: i64 = s
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM api_tokens", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(left, 1, "issuing a token forgets the expired ones");
        assert_eq!(s.delete_user("ana").await.unwrap(), Removal::Removed);
        assert!(s.token_owner("d2", 1_000).await.unwrap().is_none());
        assert_eq!(s.delete_user("ana").await.unwrap(), Removal::NoSuchUser);
    }

    #[tokio::test]
    async fn the_last_admin_cannot_be_removed() {
        let (_dir, s) = store().await;
        s.insert_user(ana(Role::Admin)).await.unwrap();
        assert_eq!(s.delete_user("ana").await.unwrap(), Removal::LastAdmin);
        let mut bob = ana(Role::Admin);
        bob.username = "bob".into();
        s.insert_user(bob).await.unwrap();
        assert_eq!(s.delete_user("ana").await.unwrap(), Removal::Removed);
        assert_eq!(s.user_count().await.unwrap(), 1);
    }
}
