//! Login sessions and API tokens: `login`, `logout`, `whoami`, `tokens` (create, list,
//! revoke by name).
//!
//! Token lifetimes are capped per role ([`token_max_secs`]): a viewer's token lives at most
//! 31 days, any other role's 366 days.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::http::auth::Auth;
use crate::http::error::ApiError;
use crate::http::extract::{Path, Query};
use std::net::SocketAddr;

use axum::Extension;
use axum::extract::ConnectInfo;

use crate::services::users::{Users, rfc3339, token_max_secs};

/// Default lifetime of an API token.
const TOKEN_DEFAULT: &str = "90d";

#[derive(Deserialize)]
pub struct LoginBody {
    username: String,
    password: String,
}

/// `POST /api/v1/login {username, password}` → a session token. Argon2 runs off the runtime.
pub async fn login(
    State(users): State<Arc<Users>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            users
                .login_refused("", 400, "the request body could not be read")
                .await;
            return Err(ApiError::BadBody(format!(
                "request body: {}; send {{\"username\": …, \"password\": …}}",
                e.status()
            )));
        }
    };
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let s = users
        .password_login(&body.username, body.password, peer)
        .await?;
    Ok(Json(json!({
        "token": s.token,
        "username": s.user.username,
        "expires_at": rfc3339(s.expires_at),
        "role": s.user.role,
        "sites": s.user.sites,
    })))
}

/// Revokes the token the request carries.
pub async fn logout(
    State(users): State<Arc<Users>>,
    auth: Auth,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.note(auth.username(), None);
    let revoked = users.revoke_token(&auth.caller.token_digest).await?;
    Ok(Json(
        json!({ "username": auth.username(), "revoked": revoked }),
    ))
}

pub async fn whoami(auth: Auth) -> Json<serde_json::Value> {
    let c = &auth.caller;
    Json(json!({
        "username": c.username,
        "role": c.role,
        "sites": c.sites,
        "token": { "name": c.token_name, "expires_at": rfc3339(c.expires_at) },
    }))
}

#[derive(Deserialize)]
pub struct TokenBody {
    name: String,
    /// A duration (`30d`, `12h`); default 90 days, at most 366 days.
    #[serde(default)]
    expires_in: Option<String>,
}

/// `POST /api/v1/tokens {name, expires_in}`: an API token for the caller, with the caller's
/// role and sites, shown once.
pub async fn create_token(
    State(users): State<Arc<Users>>,
    auth: Auth,
    body: Result<Json<TokenBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    auth.note(&format!("{}/{}", auth.username(), b.name), None);
    check_token_name(&b.name)?;
    let role = auth.caller.role;
    let max = token_max_secs(role);
    let spec = b.expires_in.as_deref().unwrap_or(if max < 90 * 86_400 {
        "30d"
    } else {
        TOKEN_DEFAULT
    });
    let max_text = format!("{}d", max / 86_400);
    let secs = humantime::parse_duration(spec)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .filter(|s| *s > 0 && *s <= max)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "expires_in '{spec}': a {role}'s token lives between 1s and {max_text}; give e.g. 30d"
            ))
        })?;
    let (token, expires_at) = users.issue_token(auth.username(), &b.name, secs).await?;
    auth.detail(json!({ "name": b.name, "expires_at": rfc3339(expires_at) }));
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "name": b.name,
            "username": auth.username(),
            "role": auth.caller.role,
            "sites": auth.caller.sites,
            "expires_at": rfc3339(expires_at),
        })),
    )
        .into_response())
}

/// A token's name: 1-64 printable characters; `login` is what sessions are called.
fn check_token_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest(
            "a token needs a name of 1-64 characters saying what uses it (e.g. 'ci-deploy')".into(),
        ));
    }
    if name == "login" {
        return Err(ApiError::BadRequest(
            "'login' names the sessions 'edgefleet login' opens; choose another name".into(),
        ));
    }
    Ok(())
}

#[derive(Deserialize, Default)]
pub struct TokensQuery {
    /// Another user's tokens (admins only).
    #[serde(default)]
    user: Option<String>,
    /// Every user's tokens (admins only).
    #[serde(default)]
    all: bool,
}

/// The user a token route acts on: the caller, or (admins only) `?user=`.
fn token_owner(auth: &Auth, q: &TokensQuery) -> Result<Option<String>, ApiError> {
    let other = q.all || q.user.as_deref().is_some_and(|u| u != auth.username());
    if other && auth.caller.role != edgefleet_domain::access::Role::Admin {
        return Err(ApiError::Forbidden(
            "only an admin sees or revokes other users' tokens; drop ?user= / ?all=".into(),
        ));
    }
    Ok(if q.all {
        None
    } else {
        Some(q.user.clone().unwrap_or_else(|| auth.username().to_owned()))
    })
}

/// `GET /api/v1/tokens[?user=NAME|?all=true]`: unexpired tokens by name (sessions are named
/// `login`), never their secret.
pub async fn list_tokens(
    State(users): State<Arc<Users>>,
    auth: Auth,
    Query(q): Query<TokensQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let owner = token_owner(&auth, &q)?;
    let tokens: Vec<_> = users
        .tokens(owner.as_deref())
        .await?
        .into_iter()
        .map(|t| {
            json!({
                "username": t.username,
                "name": t.name,
                "created_at": t.created_at,
                "expires_at": rfc3339(t.expires_at),
            })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /api/v1/tokens/{name}[?user=NAME]`: revokes every token of that name (yours, or
/// an admin's pick of user's). 404 if there is none.
pub async fn revoke_token(
    State(users): State<Arc<Users>>,
    auth: Auth,
    Path(name): Path<String>,
    Query(q): Query<TokensQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if q.all {
        return Err(ApiError::BadRequest(
            "revoke one user's tokens at a time: ?user=NAME".into(),
        ));
    }
    let owner = token_owner(&auth, &q)?.unwrap_or_default();
    auth.note(&format!("{owner}/{name}"), None);
    let revoked = users.revoke_named(&owner, &name).await?;
    if revoked == 0 {
        return Err(ApiError::NotFound(format!(
            "user '{owner}' has no token named '{name}'; list them with 'edgefleet token list'"
        )));
    }
    auth.detail(json!({ "revoked": revoked }));
    Ok(Json(
        json!({ "username": owner, "name": name, "revoked": revoked }),
    ))
}
