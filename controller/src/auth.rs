//! Who may call the HTTP API, and on what: roles, site scope, the authentication middleware
//! and the [`Auth`] extractor handlers take, and the first-start admin.
//!
//! ## Roles
//! | role | may |
//! |---|---|
//! | `admin` | everything, including users and the audit log |
//! | `operator` | read, apply/delete deployments, set windows, start/control rollouts — within its sites |
//! | `viewer` | read — within its sites |
//! | `auditor` | read everything and the audit log; change nothing |
//!
//! Every user may see who they are (`whoami`), create API tokens for themselves (`tokens`)
//! and log out. The role check is one table ([`access`]) applied by the middleware before
//! any handler runs; site scope depends on the object, so handlers check it with
//! [`Auth::check_site`] and filter lists with [`Caller::sees`].
//!
//! ## Site scope
//! Operators and viewers carry a list of sites. An object is **within site S** when:
//! a deployment's target pins `site=S` (`site=lyon,line=3`; a target without a `site=` term,
//! such as `*` or `id=a|b`, belongs to no single site and only unscoped roles reach it);
//! a maintenance window is the window of site S; a device carries the label `site=S`; a
//! rollout's deployment is within S. A change of target must stay within scope on both
//! sides (an operator of lyon cannot take over or give away a paris deployment).
//!
//! ## Browsers
//! Without an `Authorization` header the middleware takes the dashboard's session cookie
//! ([`crate::web::SESSION_COOKIE`]); a POST/PUT/DELETE authenticated that way must also carry
//! [`crate::web::CSRF_HEADER`], which a cross-site form cannot send.
//!
//! ## Audit
//! The middleware records every mutating call (POST/PUT/DELETE) and every refusal (401/403,
//! also of reads) in the audit log, after the handler ran, with the target and site the
//! handler noted ([`Auth::note`]) and the error message of a refusal — never a request body,
//! password or token. Logins are recorded by the login handler.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{ApiError, ErrorMessage};
use crate::audit::{Entry, Outcome};
use crate::core::Controller;
use crate::users::{self, User};

/// File in the data dir holding the first admin's password (mode 0600).
pub const INITIAL_ADMIN_FILE: &str = "initial-admin-password";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Viewer,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    /// Operators and viewers act only within their sites.
    pub fn scoped(self) -> bool {
        matches!(self, Role::Operator | Role::Viewer)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!(
                "unknown role '{other}': use admin, operator, viewer or auditor"
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub username: String,
    pub role: Role,
    pub sites: Vec<String>,
    /// Name of the token used (`login` for a login session).
    pub token_name: String,
    /// Unix seconds.
    pub expires_at: i64,
    #[serde(skip)]
    pub token_digest: String,
}

impl Caller {
    /// Whether an object of `site` (None: no single site) is within this caller's scope.
    pub fn sees(&self, site: Option<&str>) -> bool {
        !self.role.scoped() || site.is_some_and(|s| self.sites.iter().any(|m| m == s))
    }

    fn scope_text(&self) -> String {
        format!(
            "'{}' is {} of site(s) {}",
            self.username,
            self.role,
            self.sites.join(", ")
        )
    }
}

/// The site a deployment target pins (`site=S`), if any.
pub fn deployment_site(target: &str) -> Option<String> {
    crate::selector::Selector::parse(target)
        .ok()
        .and_then(|s| s.labels.get("site").cloned())
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
    path.strip_prefix(crate::api::BASE)
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
        Some("users" | "integrators") => Access::Roles(ADMINS),
        // Enrolling and revoking devices changes who may reach the bus: admins only.
        Some("devices") if !read => Access::Roles(ADMINS),
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
        ("POST", ["rollouts"]) => ("rollout.start".into(), ""),
        ("POST", ["rollouts", id, act]) => (format!("rollout.{act}"), id),
        ("POST", ["users"]) => ("user.create".into(), ""),
        ("POST", ["devices", id, "enroll"]) => ("device.add".into(), id),
        ("POST", ["devices", id, "revoke"]) => ("device.revoke".into(), id),
        ("POST", ["integrators"]) => ("integrator.add".into(), ""),
        ("DELETE", ["users", name]) => ("user.remove".into(), name),
        ("POST", ["tokens"]) => ("token.create".into(), ""),
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
}

/// The authenticated caller, as handlers take it (inserted by [`middleware`]).
#[derive(Debug, Clone)]
pub struct Auth {
    pub caller: Caller,
    note: Arc<Mutex<Note>>,
}

impl Auth {
    fn with_note<R>(&self, f: impl FnOnce(&mut Note) -> R) -> R {
        f(&mut self.note.lock().unwrap_or_else(|p| p.into_inner()))
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

/// Resolves a bearer token to its caller.
pub fn caller_of(ctrl: &Controller, token: &str) -> Result<Option<Caller>, ApiError> {
    let digest = users::token_digest(token);
    let owner = ctrl.store().token_owner(&digest, now_unix())?;
    Ok(owner.map(|o| Caller {
        username: o.user.username,
        role: o.user.role,
        sites: o.user.sites,
        token_name: o.token_name,
        expires_at: o.expires_at,
        token_digest: digest,
    }))
}

/// Authenticates every request but the public ones, applies the role table, and records
/// mutating calls and refusals in the audit log.
pub async fn middleware(
    State(ctrl): State<Arc<Controller>>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let need = access(&method, &path);
    if need == Access::Public {
        return next.run(req).await;
    }
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let (action, target) = action_of(&method, &path);
    let window_site = (action.starts_with("window.")).then(|| target.clone());
    let refuse = |actor: &str, role: &str, err: ApiError| {
        let status = err.status().as_u16();
        ctrl.audit(Entry {
            actor: actor.into(),
            role: role.into(),
            action: action.clone(),
            target: target.clone(),
            site: window_site.clone().unwrap_or_default(),
            outcome: Outcome::Refused,
            status: Some(status),
            detail: json!({ "error": err.message(), "method": method.as_str(), "path": path }),
        });
        err.into_response()
    };
    // A browser sends its session in a cookie (EventSource cannot send headers); a change
    // made with a cookie must carry the dashboard's custom header (CSRF, see `web`).
    let (token, from_cookie) = match bearer(&req) {
        Some(t) => (Some(t.to_owned()), false),
        None => (crate::web::session_token(req.headers()), true),
    };
    let caller = match token.as_deref() {
        None => {
            return refuse(
                "anonymous",
                "",
                ApiError::Unauthorized(not_logged_in().into()),
            );
        }
        Some(token) => match caller_of(&ctrl, token) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return refuse(
                    "anonymous",
                    "",
                    ApiError::Unauthorized(
                        "invalid or expired token: log in again with 'edgefleet login --user NAME'"
                            .into(),
                    ),
                );
            }
            Err(e) => return e.into_response(),
        },
    };
    if from_cookie && mutating && !req.headers().contains_key(crate::web::CSRF_HEADER) {
        return refuse(
            &caller.username,
            caller.role.as_str(),
            ApiError::Forbidden(
                "a change made with the dashboard's session cookie needs the X-Edgefleet-Csrf header (send it from the dashboard's own page, or use a Bearer token)".into(),
            ),
        );
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
        );
    }
    let note = Arc::new(Mutex::new(Note::default()));
    req.extensions_mut().insert(Auth {
        caller: caller.clone(),
        note: note.clone(),
    });
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    if mutating || status == 401 || status == 403 {
        let n = std::mem::take(&mut *note.lock().unwrap_or_else(|p| p.into_inner()));
        let mut detail = n.detail.unwrap_or_else(|| json!({}));
        if let (Some(m), Some(ErrorMessage(err))) = (
            detail.as_object_mut(),
            resp.extensions().get::<ErrorMessage>(),
        ) {
            m.insert("error".into(), json!(err));
        }
        ctrl.audit(Entry {
            actor: caller.username.clone(),
            role: caller.role.as_str().into(),
            action,
            target: n.target.unwrap_or(target),
            site: n.site.or(window_site).unwrap_or_default(),
            outcome: Outcome::of_status(status),
            status: Some(status),
            detail,
        });
    }
    resp
}

/// First start: when no user exists, creates `admin` with a random password, writes the
/// password to `<data_dir>/initial-admin-password` (0600) and tells on stderr how to log in.
/// Returns whether it did.
pub fn ensure_initial_admin(ctrl: &Controller, data_dir: &Path) -> anyhow::Result<bool> {
    use anyhow::Context;
    if ctrl.store().user_count()? > 0 {
        return Ok(false);
    }
    let password = users::new_password();
    let file = data_dir.join(INITIAL_ADMIN_FILE);
    write_secret(&file, &format!("{password}\n"))
        .with_context(|| format!("cannot write {}", file.display()))?;
    let user = User {
        username: "admin".into(),
        role: Role::Admin,
        sites: Vec::new(),
        created_at: edgefleet_protocol::now_rfc3339(),
        disabled: false,
        password_hash: users::hash_password(&password),
    };
    ctrl.store().insert_user(&user)?;
    ctrl.audit(Entry::system(
        "user.create",
        "admin",
        "",
        Outcome::Ok,
        json!({ "role": "admin", "reason": "first start: no user existed" }),
    ));
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

/// Writes a file only the owner can read (0600), replacing any previous one.
pub fn write_secret(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through open(): set it explicitly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
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
                Method::POST,
                "/api/v1/rollouts/3/pause",
                Access::Roles(WRITERS),
            ),
            (Method::GET, "/api/v1/users", Access::Roles(ADMINS)),
            (Method::GET, "/api/v1/audit/verify", Access::Roles(AUDITORS)),
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
    }

    #[test]
    fn site_scope() {
        let c = |role, sites: &[&str]| Caller {
            username: "u".into(),
            role,
            sites: sites.iter().map(|s| s.to_string()).collect(),
            token_name: "login".into(),
            expires_at: 0,
            token_digest: String::new(),
        };
        let op = c(Role::Operator, &["lyon"]);
        assert!(op.sees(Some("lyon")));
        assert!(!op.sees(Some("paris")));
        assert!(!op.sees(None));
        assert!(c(Role::Auditor, &[]).sees(None));
        assert!(c(Role::Admin, &[]).sees(Some("paris")));
        assert_eq!(deployment_site("site=lyon,line=3").as_deref(), Some("lyon"));
        assert_eq!(deployment_site("*"), None);
        assert_eq!(deployment_site("id=a|b"), None);
    }

    #[test]
    fn secrets_are_written_for_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&p, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
