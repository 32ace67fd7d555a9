//! API users (admin only): list, create, remove.

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
use crate::http::extract::Path;
use crate::services::users::{NewUser, Users};

pub async fn list(State(users): State<Arc<Users>>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "users": users.list().await? })))
}

#[derive(Deserialize)]
pub struct UserBody {
    username: String,
    role: String,
    #[serde(default)]
    sites: Vec<String>,
    /// Generated (and returned once) when absent.
    #[serde(default)]
    password: Option<String>,
}

pub async fn create(
    State(users): State<Arc<Users>>,
    auth: Auth,
    body: Result<Json<UserBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    auth.note(&b.username, None);
    let (user, generated) = users
        .create(NewUser {
            username: b.username,
            role: b.role,
            sites: b.sites,
            password: b.password,
        })
        .await?;
    auth.detail(json!({ "role": user.role, "sites": user.sites, "password": if generated.is_some() { "generated" } else { "given" } }));
    let mut out = serde_json::to_value(&user).unwrap_or_default();
    if let (Some(m), Some(p)) = (out.as_object_mut(), generated) {
        m.insert("password".into(), json!(p));
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub async fn remove(
    State(users): State<Arc<Users>>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.note(&name, None);
    users.remove(&name, auth.username()).await?;
    Ok(Json(json!({ "username": name, "removed": true })))
}
