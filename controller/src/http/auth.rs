//! Who may call the HTTP API: the role table ([`access`]), the authentication and audit
//! middleware, and the [`Auth`] extractor handlers take. Roles and site scope themselves are
//! `edgefleet_domain::access`.
//!
//! Every user may see who they are (`whoami`), create API tokens for themselves (`tokens`)
//! and log out. The role check is one table applied by the middleware before any handler
//! runs; site scope depends on the object, so handlers check it with [`Auth::check_site`]
//! and filter lists with `Caller::sees`.
//!
//! ## Browsers
//! Without an `Authorization` header the middleware takes the dashboard's session cookie
//! ([`SESSION_COOKIE`]); a POST/PUT/DELETE authenticated that way must also carry
//! [`CSRF_HEADER`], which a cross-site form cannot send.
//!
//! ## Audit
//! The middleware records every mutating call (POST/PUT/DELETE) and every refusal (401/403,
//! also of reads) in the audit log, after the handler ran, with the target and site the
//! handler noted ([`Auth::note`]) and the error message of a refusal — never a request body,
//! password or token. Logins are recorded by the login handler.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use edgefleet_domain::access::{Caller, Role};
use edgefleet_domain::audit::{Entry, Outcome};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::error::{ApiError, ErrorMessage};
use super::state::ApiState;

/// Base path of every API route (the role table reads paths below it).
pub const BASE: &str = "/api/v1";

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "edgefleet_session";
/// The header a cookie-authenticated mutating request must carry (any value).
pub const CSRF_HEADER: &str = "x-edgefleet-csrf";

/// The session token a browser sends in its cookie.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    CookieJar::from_headers(headers)
        .get(SESSION_COOKIE)
        .map(|c| c.value().trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Who may call a route, before site scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials needed (`health`, `login`).
    Public,
    /// Any authenticated user.
    Any,
    /// Only these roles.
    Roles(&'static [Role]),
}

const WRITERS: &[Role] = &[Role::Admin, Role::Operator];
const ADMINS: &[Role] = &[Role::Admin];
const AUDITORS: &[Role] = &[Role::Admin, Role::Auditor];

fn segments(path: &str) -> Vec<&str> {
    path.strip_prefix(BASE)
        .unwrap_or(path)
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

/// The role table: who may call `method path`.
pub fn access(method: &Method, path: &str) -> Access {
    let seg = segments(path);
    let read = matches!(*method, Method::GET | Method::HEAD);
    match seg.first().copied() {
        Some("health") => Access::Public,
        Some("login") if *method == Method::POST => Access::Public,
        Some("whoami" | "logout" | "tokens") => Access::Any,
        Some("users" | "integrators" | "mqtt-users") => Access::Roles(ADMINS),
        // Enrolling and revoking devices changes who may reach the bus: admins only.
        Some("devices") if !read => Access::Roles(ADMINS),
        // Workload policies say what every site's workloads may do: admins set them;
        // operators may check a file against them.
        Some("policies") if !read && seg.get(1) != Some(&"check") => Access::Roles(ADMINS),
        // Registry credentials open images to devices: admins set them.
        Some("registries") if !read => Access::Roles(ADMINS),
        Some("audit") => Access::Roles(AUDITORS),
        _ if read => Access::Any,
        _ => Access::Roles(WRITERS),
    }
}

/// The audit action and target a route stands for (handlers may refine the target).
pub fn action_of(method: &Method, path: &str) -> (String, String) {
    let seg = segments(path);
    let m = method.as_str();
    let (action, target): (String, &str) = match (m, seg.as_slice()) {
        ("POST", ["deployments"]) => ("deployment.apply".into(), ""),
        ("DELETE", ["deployments", name]) => ("deployment.delete".into(), name),
        ("PUT", ["windows", site]) => ("window.set".into(), site),
        ("DELETE", ["windows", site]) => ("window.clear".into(), site),
        ("PUT", ["policies", "sites", site]) => ("policy.set".into(), site),
        ("DELETE", ["policies", "sites", site]) => ("policy.clear".into(), site),
        ("PUT", ["policies", "fleet"]) => ("policy.set".into(), "fleet"),
        ("DELETE", ["policies", "fleet"]) => ("policy.clear".into(), "fleet"),
        ("POST", ["policies", "check"]) => ("policy.check".into(), ""),
        ("PUT", ["registries", host]) => ("registry.set".into(), host),
        ("DELETE", ["registries", host]) => ("registry.remove".into(), host),
        ("PUT", ["variables", _, name]) => ("variables.set".into(), name),
        ("DELETE", ["variables", _, name]) => ("variables.unset".into(), name),
        ("POST", ["rollouts"]) => ("rollout.start".into(), ""),
        ("POST", ["rollouts", id, act]) => (format!("rollout.{act}"), id),
        ("POST", ["users"]) => ("user.create".into(), ""),
        ("POST", ["devices", id, "enroll"]) => ("device.add".into(), id),
        ("POST", ["devices", id, "revoke"]) => ("device.revoke".into(), id),
        ("POST", ["integrators"]) => ("integrator.add".into(), ""),
        ("POST", ["integrators", name, "revoke"]) => ("integrator.revoke".into(), name),
        ("POST", ["mqtt-users"]) => ("mqtt_user.add".into(), ""),
        ("DELETE", ["mqtt-users", name]) => ("mqtt_user.remove".into(), name),
        ("PUT", ["devices", id, "labels"]) => ("device.label".into(), id),
        ("DELETE", ["users", name]) => ("user.remove".into(), name),
        ("POST", ["tokens"]) => ("token.create".into(), ""),
        ("DELETE", ["tokens", name]) => ("token.revoke".into(), name),
        ("POST", ["logout"]) => ("auth.logout".into(), ""),
        ("GET" | "HEAD", _) => ("api.read".into(), path),
        _ => (format!("api.{}", m.to_ascii_lowercase()), path),
    };
    (action, target.to_owned())
}

/// What a handler tells the audit log about its request.
#[derive(Debug, Default)]
struct Note {
    target: Option<String>,
    site: Option<String>,
    detail: Option<Value>,
    /// A read answered 404 because the object is outside the caller's sites (audited).
    hidden: bool,
}

/// The authenticated caller, as handlers take it (inserted by [`middleware`]).
#[derive(Debug, Clone)]
pub struct Auth {
    pub caller: Caller,
    note: Arc<Mutex<Note>>,
}

impl Auth {
    fn with_note<R>(&self, f: impl FnOnce(&mut Note) -> R) -> R {
        f(&mut self.note.lock())
    }

    /// Names the request's target and its site for the audit log.
    pub fn note(&self, target: &str, site: Option<&str>) {
        self.with_note(|n| {
            n.target = Some(target.to_owned());
            n.site = site.map(str::to_owned);
        });
    }

    /// Extra facts for the audit log (never a secret).
    pub fn detail(&self, detail: Value) {
        self.with_note(|n| n.detail = Some(detail));
    }

    /// 403 unless `what` (in `site`, or in no single site) is within the caller's scope.
    pub fn check_site(&self, what: &str, site: Option<&str>) -> Result<(), ApiError> {
        if self.caller.sees(site) {
            return Ok(());
        }
        self.with_note(|n| {
            if n.site.is_none() {
                n.site = site.map(str::to_owned);
            }
        });
        Err(ApiError::Forbidden(match site {
            Some(s) => format!(
                "{what} is in site '{s}', outside your scope ({}); it needs an admin or a user of site '{s}'",
                self.caller.scope_text()
            ),
            None => format!(
                "{what} is not confined to one site (no site=… in its target), outside your scope ({}); it needs an admin",
                self.caller.scope_text()
            ),
        }))
    }

    /// Like [`Auth::check_site`] for an object whose existence is not the caller's to know
    /// (another site's device, deployment or rollout): `not_found`, the very answer an
    /// object that does not exist gets, so a scoped user cannot enumerate other sites. The
    /// refusal is still audited.
    pub fn check_visible(&self, site: Option<&str>, not_found: ApiError) -> Result<(), ApiError> {
        if self.caller.sees(site) {
            return Ok(());
        }
        self.with_note(|n| {
            n.hidden = true;
            if n.site.is_none() {
                n.site = site.map(str::to_owned);
            }
        });
        Err(not_found)
    }

    pub fn username(&self) -> &str {
        &self.caller.username
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Auth>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized(not_logged_in().into()))
    }
}

fn not_logged_in() -> &'static str {
    "no credentials: log in with 'edgefleet login --user NAME' (scripts: send 'Authorization: Bearer TOKEN')"
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates every request but the public ones, applies the role table, and records
/// mutating calls and refusals in the audit log.
pub async fn middleware(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let need = access(&method, &path);
    if need == Access::Public {
        return next.run(req).await;
    }
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let (action, target) = action_of(&method, &path);
    let window_site = (action.starts_with("window.")).then(|| target.clone());
    let audit = state.audit.clone();
    let refuse =
        async |actor: &str, role: &str, err: ApiError| {
            let status = err.status().as_u16();
            audit.record(Entry {
            actor: actor.into(),
            role: role.into(),
            action: action.clone(),
            target: target.clone(),
            site: window_site.clone().unwrap_or_default(),
            outcome: Outcome::Refused,
            status: Some(status),
            detail: json!({ "error": err.message(), "method": method.as_str(), "path": path }),
        }).await;
            err.into_response()
        };
    // A browser sends its session in a cookie (EventSource cannot send headers); a change
    // made with a cookie must carry the dashboard's custom header (CSRF, see `web`).
    let (token, from_cookie) = match bearer(&req) {
        Some(t) => (Some(t.to_owned()), false),
        None => (session_token(req.headers()), true),
    };
    let caller = match token.as_deref() {
        None => {
            return refuse(
                "anonymous",
                "",
                ApiError::Unauthorized(not_logged_in().into()),
            )
            .await;
        }
        Some(token) => match state.users.caller_of(token).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return refuse(
                    "anonymous",
                    "",
                    ApiError::Unauthorized(
                        "invalid or expired token: log in again with 'edgefleet login --user NAME'"
                            .into(),
                    ),
                )
                .await;
            }
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    if from_cookie && mutating && !req.headers().contains_key(CSRF_HEADER) {
        return refuse(
            &caller.username,
            caller.role.as_str(),
            ApiError::Forbidden(
                "a change made with the dashboard's session cookie needs the X-Edgefleet-Csrf header (send it from the dashboard's own page, or use a Bearer token)".into(),
            ),
        )
        .await;
    }
    if let Access::Roles(roles) = need
        && !roles.contains(&caller.role)
    {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let msg = format!(
            "{action} needs the role {}; '{}' is {}",
            names.join(" or "),
            caller.username,
            caller.role
        );
        return refuse(
            &caller.username,
            caller.role.as_str(),
            ApiError::Forbidden(msg),
        )
        .await;
    }
    let note = Arc::new(Mutex::new(Note::default()));
    req.extensions_mut().insert(Auth {
        caller: caller.clone(),
        note: note.clone(),
    });
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let hidden = note.lock().hidden;
    if mutating || status == 401 || status == 403 || hidden {
        let n = std::mem::take(&mut *note.lock());
        let mut detail = n.detail.unwrap_or_else(|| json!({}));
        if let (Some(m), Some(ErrorMessage(err))) = (
            detail.as_object_mut(),
            resp.extensions().get::<ErrorMessage>(),
        ) {
            m.insert("error".into(), json!(err));
        }
        audit
            .record(Entry {
                actor: caller.username.clone(),
                role: caller.role.as_str().into(),
                action,
                target: n.target.unwrap_or(target),
                site: n.site.or(window_site).unwrap_or_default(),
                outcome: Outcome::of_status(status),
                status: Some(status),
                detail: if n.hidden {
                    let mut d = detail;
                    if let Some(m) = d.as_object_mut() {
                        m.insert("outside_scope".into(), json!(true));
                    }
                    d
                } else {
                    detail
                },
            })
            .await;
    }
    resp
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn role_table() {
        let cases = [
            (Method::GET, "/api/v1/health", Access::Public),
            (Method::POST, "/api/v1/login", Access::Public),
            (Method::GET, "/api/v1/whoami", Access::Any),
            (Method::POST, "/api/v1/tokens", Access::Any),
            (Method::GET, "/api/v1/devices", Access::Any),
            (Method::POST, "/api/v1/deployments", Access::Roles(WRITERS)),
            (
                Method::DELETE,
                "/api/v1/deployments/x",
                Access::Roles(WRITERS),
            ),
            (Method::PUT, "/api/v1/windows/lyon", Access::Roles(WRITERS)),
            (
                Method::PUT,
                "/api/v1/policies/sites/lyon",
                Access::Roles(ADMINS),
            ),
            (
                Method::DELETE,
                "/api/v1/policies/fleet",
                Access::Roles(ADMINS),
            ),
            (
                Method::POST,
                "/api/v1/policies/check",
                Access::Roles(WRITERS),
            ),
            (Method::GET, "/api/v1/policies/violations", Access::Any),
            (
                Method::PUT,
                "/api/v1/variables/sites/lyon",
                Access::Roles(WRITERS),
            ),
            (
                Method::DELETE,
                "/api/v1/variables/devices/press-07",
                Access::Roles(WRITERS),
            ),
            (Method::GET, "/api/v1/variables", Access::Any),
            (
                Method::POST,
                "/api/v1/rollouts/3/pause",
                Access::Roles(WRITERS),
            ),
            (Method::GET, "/api/v1/users", Access::Roles(ADMINS)),
            (Method::GET, "/api/v1/audit/verify", Access::Roles(AUDITORS)),
            (Method::GET, "/api/v1/audit/head", Access::Roles(AUDITORS)),
        ];
        for (m, p, want) in cases {
            assert_eq!(access(&m, p), want, "{m} {p}");
        }
        assert_eq!(
            action_of(&Method::POST, "/api/v1/rollouts/3/pause"),
            ("rollout.pause".into(), "3".into())
        );
        assert_eq!(
            action_of(&Method::DELETE, "/api/v1/deployments/web"),
            ("deployment.delete".into(), "web".into())
        );
        assert_eq!(
            action_of(&Method::PUT, "/api/v1/variables/sites/lyon"),
            ("variables.set".into(), "lyon".into())
        );
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; edgefleet_session=eft_abc ; b=2"),
        );
        assert_eq!(session_token(&h).as_deref(), Some("eft_abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("edgefleet_session="),
        );
        assert_eq!(session_token(&h), None);
    }
}
