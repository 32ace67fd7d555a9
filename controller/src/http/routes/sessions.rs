//! Login sessions and API tokens: `login`, `logout`, `whoami`, `tokens`.

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
use crate::services::users::{TOKEN_MAX_SECS, Users, rfc3339};

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
    let s = users.password_login(&body.username, body.password).await?;
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
    if b.name.is_empty() || b.name.chars().count() > 64 || b.name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "a token needs a name of 1-64 characters saying what uses it (e.g. 'ci-deploy')".into(),
        ));
    }
    let spec = b.expires_in.as_deref().unwrap_or(TOKEN_DEFAULT);
    let secs = humantime::parse_duration(spec)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .filter(|s| *s > 0 && *s <= TOKEN_MAX_SECS)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "expires_in '{spec}': give a duration between 1s and 366d, e.g. 30d"
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
