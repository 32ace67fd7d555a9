//! The operator's dashboard, served by the gateway itself: server-rendered HTML pages (readable
//! with JavaScript off), a small script and stylesheet shipped inside the binary, a session
//! cookie for browsers, one SSE stream per page for live updates, the compliance report and
//! the OpenAPI document of the HTTP API.
//!
//! ## Layout
//! - [`html`]: escaping and the page frame (every device- or user-provided string goes
//!   through [`html::esc`]).
//! - [`tile`]: a device's state as the dashboard shows it (online, degraded, offline since …,
//!   drifted, updating) and the alarm list.
//! - [`pages`]: the fleet, device, deployment, rollout and audit pages.
//! - [`stream`]: `GET /api/v1/events/stream`, the live updates (SSE).
//! - [`report`]: `GET /api/v1/reports/compliance?format=csv|json`.
//! - [`openapi`]: `GET /api/openapi.json`, the hand-written description of every API route
//!   (the pages are for browsers and not part of it).
//!
//! ## Browser authentication
//! `POST /login` (a plain form) checks the password exactly like `POST /api/v1/login`, puts
//! the session token in the cookie `edgefleet_session` (HttpOnly, SameSite=Strict, Path=/)
//! and redirects. The API middleware accepts that cookie instead of a Bearer header, but a
//! cookie-authenticated mutating request must also carry `X-Edgefleet-Csrf` (the dashboard's
//! script sends it; a cross-site form cannot, and a cross-site `fetch` with a custom header
//! needs a CORS preflight that the gateway never grants). `POST /logout` revokes the token
//! and clears the cookie.

pub mod html;
pub mod openapi;
pub mod pages;
pub mod report;
pub mod stream;
pub mod tile;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use axum_extra::extract::cookie::{Cookie, SameSite};
use edgefleet_domain::access::Caller;
use edgefleet_domain::audit::{Entry, Outcome};
use serde::Deserialize;

use crate::http::auth::{self, SESSION_COOKIE, session_token};
use crate::http::server::OverTls;
use crate::http::state::ApiState;

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The dashboard's routes, to be merged into the API router. Its own `/api/…` routes
/// (stream, compliance report) go through the same authentication middleware as the API.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/v1/events/stream", get(stream::stream))
        .route("/api/v1/reports/compliance", get(report::compliance))
        .layer(Extension(std::sync::Arc::new(stream::Slots::default())))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ));
    Router::new()
        .route("/", get(pages::fleet))
        .route("/devices/{id}", get(pages::device))
        .route("/devices/{id}/logs", get(pages::device_logs))
        .route("/deployments", get(pages::deployments))
        .route("/deployments/{name}", get(pages::deployment))
        .route("/rollouts", get(pages::rollouts))
        .route("/rollouts/{id}", get(pages::rollout))
        .route("/audit", get(pages::audit))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/openapi.json", get(openapi::document))
        .merge(api)
        .with_state(state)
}

/// The logged-in caller of a page request, from its session cookie.
pub async fn page_caller(state: &ApiState, headers: &HeaderMap) -> Option<Caller> {
    let token = session_token(headers)?;
    state.users.caller_of(&token).await.ok().flatten()
}

/// Where to send a visitor without a session.
pub fn to_login(next: &str) -> Response {
    Redirect::to(&format!("/login?next={}", html::url_component(next))).into_response()
}

/// Headers every page carries: no inline script or style may run, no framing.
pub fn page_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn asset(mime: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

#[derive(Deserialize, Default)]
pub struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

/// Only a local path is a place to go back to after login: it starts with one `/`, and has
/// no backslash, no space and no control character anywhere (browsers drop tabs and line
/// breaks from a URL, so `/<TAB>/evil.example` would become `//evil.example`, another host).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && n.len() <= 2048
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
                && !n[1..].starts_with('/') =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn login_form(next: &str, username: &str, error: Option<&str>) -> String {
    let mut b = String::new();
    b += "<main class=\"login\"><h1>edgefleet</h1><form method=\"post\" action=\"/login\" class=\"panel\">";
    b += &format!(
        "<input type=\"hidden\" name=\"next\" value=\"{}\">",
        html::esc(next)
    );
    b += &format!(
        "<label>User <input name=\"username\" id=\"username\" autocomplete=\"username\" required value=\"{}\"></label>",
        html::esc(username)
    );
    b += "<label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>";
    if let Some(e) = error {
        b += &format!(
            "<div class=\"err\" id=\"login-error\" data-for=\"password\">{}</div>",
            html::esc(e)
        );
    }
    b += "<button type=\"submit\" id=\"login-submit\">Log in</button></form></main>";
    html::frame("Log in", None, "login", &b)
}

async fn login_page(Query(q): Query<NextQuery>) -> Response {
    page_response(
        StatusCode::OK,
        login_form(&safe_next(q.next.as_deref()), "", None),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /login` (form): the same check as the API's login, then the session cookie
/// (`Secure` when the request came over HTTPS).
async fn login(
    State(state): State<ApiState>,
    over_tls: Option<Extension<OverTls>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    match state
        .users
        .password_login(&f.username, f.password, peer)
        .await
    {
        Ok(session) => {
            let cookie = Cookie::build((SESSION_COOKIE, session.token))
                .http_only(true)
                .secure(over_tls.is_some())
                .same_site(SameSite::Strict)
                .path("/")
                .max_age(time::Duration::seconds(session.lifetime_secs));
            let mut resp = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => {
            let e = crate::http::error::ApiError::from(e);
            let mut resp = page_response(
                e.status(),
                login_form(&next, &f.username, Some(e.message())),
            );
            if let Some(secs) = e.retry_after() {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            resp
        }
    }
}

/// `POST /logout`: revokes the session token and clears the cookie.
async fn logout(
    State(state): State<ApiState>,
    over_tls: Option<Extension<OverTls>>,
    headers: HeaderMap,
) -> Response {
    if let Some(caller) = page_caller(&state, &headers).await {
        if let Err(e) = state.users.revoke_token(&caller.token_digest).await {
            tracing::error!("cannot revoke a session at logout: {e}");
        }
        state
            .audit
            .record(Entry {
                actor: caller.username.clone(),
                role: caller.role.as_str().into(),
                action: "auth.logout".into(),
                target: caller.username.clone(),
                site: String::new(),
                outcome: Outcome::Ok,
                status: Some(303),
                detail: serde_json::json!({ "via": "dashboard" }),
            })
            .await;
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(if over_tls.is_some() {
            "edgefleet_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0"
        } else {
            "edgefleet_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        }),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/devices/a")), "/devices/a");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
        // Browsers drop tabs and line breaks from URLs: each of these would leave the site.
        for evil in [
            "/\t/evil.example",
            "/\r\n/evil.example",
            "/ /evil.example",
            "//evil.example",
            "/\\/evil.example",
            "evil.example",
            "",
            "/\u{3000}/evil.example",
        ] {
            assert_eq!(safe_next(Some(evil)), "/", "{evil:?}");
        }
        assert_eq!(safe_next(Some("/audit?q=a%20b")), "/audit?q=a%20b");
    }
}
