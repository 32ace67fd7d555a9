//! Device identities at the gateway: enrollment tokens, the HTTPS enrollment listener,
//! revocation, integrator credentials.
//!
//! - `edgefleet device add ID` ([`Controller::add_device`]) stores a one-time token (only its
//!   SHA-256) with the labels and an expiry, and prints the token.
//! - The agent posts the token to the enrollment listener ([`serve`], HTTPS with the gateway's
//!   server certificate); [`Controller::redeem`] marks it used in the same transaction that
//!   checks it, issues the device certificate (CN = device id), records its serial, and
//!   answers with certificate, key, CA, the controller's signing key and the `mqtts://` URL.
//! - `edgefleet device revoke ID` ([`Controller::revoke_device`]) marks every certificate of
//!   the device revoked in the store, cancels its unused tokens, and tells the network front,
//!   which closes its live connections (the broker then fires its will: the device shows
//!   offline) and refuses those certificates from then on. Stored revocations are handed to
//!   the front at every start.
//!
//! Every attempt is audited. No token, secret or key is ever logged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use edgefleet_broker::front::FrontHandle;
use edgefleet_broker::pki::{IssuedCert, Pki};
use edgefleet_protocol::acl::Identity;
use edgefleet_protocol::enrollment::{ENROLL_PATH, EnrollRequest, EnrollResponse, EnrollmentToken};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::audit::{Entry, Outcome};
use crate::auth::now_unix;
use crate::core::Controller;
use crate::store::{Store, StoreError};

/// Default validity of an enrollment token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Validity of device and integrator certificates.
pub const CERT_DAYS: u32 = 825;

/// What the gateway needs to enroll devices; absent on a controller without the gateway's
/// front (external broker).
pub struct Security {
    pub pki: Pki,
    pub front: Option<FrontHandle>,
    /// `https://HOST:PORT` agents reach the enrollment listener at.
    pub enroll_url: String,
    /// `mqtts://HOST:PORT` agents reach the device listener at.
    pub device_broker_url: String,
    /// The controller's desired-state signing key (base64), pinned by agents.
    pub controller_key: String,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("enroll_url", &self.enroll_url)
            .field("device_broker_url", &self.device_broker_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Error)]
pub enum EnrollError {
    #[error(
        "enrollment needs the gateway's TLS front: run 'edgefleet gateway' (a controller on an external broker cannot issue device certificates)"
    )]
    NoGateway,
    #[error("{0}")]
    Invalid(String),
    #[error("device '{0}' has no certificate to revoke (it was never enrolled)")]
    NotEnrolled(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot issue a certificate: {0}")]
    Pki(#[from] edgefleet_broker::pki::PkiError),
}

/// Why a token was refused at the enrollment listener (said to the agent as is).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("unknown enrollment token: ask for a new one with 'edgefleet device add'")]
    Unknown,
    #[error(
        "this enrollment token was already used: ask for a new one with 'edgefleet device add'"
    )]
    Used,
    #[error("this enrollment token has expired: ask for a new one with 'edgefleet device add'")]
    Expired,
}

/// A token just created (the only time its text exists).
#[derive(Clone)]
pub struct NewToken {
    pub device: String,
    pub token: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("device", &self.device)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Tokens and enrollment secrets are stored the same way: their SHA-256 only.
use crate::users::token_digest as digest;

impl Store {
    fn insert_enrollment(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        secret_sha256: &str,
        expires_at: i64,
        created_by: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO enrollments (device, labels_json, secret_sha256, created_at, expires_at, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                device,
                serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()),
                secret_sha256,
                edgefleet_protocol::now_rfc3339(),
                expires_at,
                created_by
            ],
        )?;
        Ok(())
    }

    /// Checks and consumes a token in one transaction: a token can be redeemed once.
    fn redeem_enrollment(
        &mut self,
        device: &str,
        secret_sha256: &str,
        now: i64,
    ) -> Result<Result<BTreeMap<String, String>, Refusal>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(i64, String, i64, Option<String>)> = tx
            .query_row(
                "SELECT id, labels_json, expires_at, used_at FROM enrollments
                 WHERE device = ?1 AND secret_sha256 = ?2",
                params![device, secret_sha256],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let verdict = match row {
            None => Err(Refusal::Unknown),
            Some((_, _, _, Some(_))) => Err(Refusal::Used),
            Some((_, _, expires, None)) if expires <= now => Err(Refusal::Expired),
            Some((id, labels, _, None)) => {
                tx.execute(
                    "UPDATE enrollments SET used_at = ?1 WHERE id = ?2",
                    params![edgefleet_protocol::now_rfc3339(), id],
                )?;
                Ok(serde_json::from_str(&labels).unwrap_or_default())
            }
        };
        tx.commit()?;
        Ok(verdict)
    }

    fn record_certificate(&self, identity: &str, cert: &IssuedCert) -> Result<(), StoreError> {
        let not_after = cert
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.conn.execute(
            "INSERT INTO certificates (serial, identity, issued_at, not_after) VALUES (?1, ?2, ?3, ?4)",
            params![cert.serial, identity, edgefleet_protocol::now_rfc3339(), not_after],
        )?;
        Ok(())
    }

    /// Marks every certificate of `identity` revoked and cancels its unused tokens; returns
    /// all its serials (revoked now or before).
    fn revoke(&mut self, identity: &str, device: Option<&str>) -> Result<Vec<String>, StoreError> {
        let tx = self.conn.transaction()?;
        let now = edgefleet_protocol::now_rfc3339();
        tx.execute(
            "UPDATE certificates SET revoked_at = ?1 WHERE identity = ?2 AND revoked_at IS NULL",
            params![now, identity],
        )?;
        if let Some(device) = device {
            tx.execute(
                "UPDATE enrollments SET used_at = ?1 WHERE device = ?2 AND used_at IS NULL",
                params![now, device],
            )?;
        }
        let serials = {
            let mut stmt = tx.prepare("SELECT serial FROM certificates WHERE identity = ?1")?;
            stmt.query_map([identity], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(serials)
    }

    /// Serials of every revoked certificate (handed to the front at start).
    pub fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")?;
        let serials = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(serials)
    }
}

/// The labels of `device add --labels site=lyon,line=3`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("label '{item}' is not key=value (example: site=lyon)"))?;
        let (k, v) = (k.trim(), v.trim());
        edgefleet_protocol::ids::validate_label(k, v).map_err(|e| e.to_string())?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(labels)
}

impl Controller {
    /// The gateway's security services, when this controller runs inside a gateway.
    pub fn security(&self) -> Result<&Arc<Security>, EnrollError> {
        self.security.get().ok_or(EnrollError::NoGateway)
    }

    /// Creates a one-time enrollment token for `device`.
    pub fn add_device(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        ttl: Duration,
        by: &str,
    ) -> Result<(NewToken, String), EnrollError> {
        let security = self.security()?;
        edgefleet_protocol::ids::validate_device_id(device)
            .map_err(|e| EnrollError::Invalid(e.to_string()))?;
        for (k, v) in labels {
            edgefleet_protocol::ids::validate_label(k, v)
                .map_err(|e| EnrollError::Invalid(e.to_string()))?;
        }
        if ttl.is_zero() || ttl > Duration::from_secs(30 * 24 * 3600) {
            return Err(EnrollError::Invalid(
                "a token must expire within 30 days (e.g. --expires 24h)".into(),
            ));
        }
        let secret = B64URL.encode(rand::random::<[u8; 32]>());
        let expires_at = now_unix() + ttl.as_secs() as i64;
        self.store()
            .insert_enrollment(device, labels, &digest(&secret), expires_at, by)?;
        let token = EnrollmentToken {
            device: device.to_owned(),
            secret,
            ca_sha256: security.pki.ca_fingerprint(),
            url: security.enroll_url.clone(),
        };
        tracing::info!(device, expires_at, "enrollment token created");
        Ok((
            NewToken {
                device: device.to_owned(),
                token: token.encode(),
                expires_at,
            },
            security.enroll_url.clone(),
        ))
    }

    /// Exchanges a token for the device's identity (the enrollment listener's one job).
    pub fn redeem(
        &self,
        request: &EnrollRequest,
    ) -> Result<Result<EnrollResponse, Refusal>, EnrollError> {
        let security = self.security()?;
        if edgefleet_protocol::ids::validate_device_id(&request.device).is_err() {
            return Ok(Err(Refusal::Unknown));
        }
        let verdict = self.store().redeem_enrollment(
            &request.device,
            &digest(&request.secret),
            now_unix(),
        )?;
        let labels = match verdict {
            Ok(labels) => labels,
            Err(refusal) => {
                self.audit_enrollment(&request.device, Outcome::Refused, &refusal.to_string());
                return Ok(Err(refusal));
            }
        };
        let identity = Identity::Device(request.device.clone());
        let cert = security.pki.issue_client(&identity, CERT_DAYS)?;
        self.store()
            .record_certificate(&identity.to_string(), &cert)?;
        self.audit_enrollment(
            &request.device,
            Outcome::Ok,
            &format!(
                "certificate {} issued (agent {})",
                cert.serial, request.agent_version
            ),
        );
        Ok(Ok(EnrollResponse {
            schema: edgefleet_protocol::SCHEMA_VERSION,
            device: request.device.clone(),
            labels,
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            ca_pem: security.pki.ca_pem().to_owned(),
            controller_key: security.controller_key.clone(),
            broker_url: security.device_broker_url.clone(),
        }))
    }

    fn audit_enrollment(&self, device: &str, outcome: Outcome, message: &str) {
        let site = self.fleet.site_of(device).unwrap_or_default();
        self.audit(Entry {
            actor: format!("device:{device}"),
            role: "device".into(),
            action: "device.enroll".into(),
            target: device.to_owned(),
            site,
            outcome,
            status: None,
            detail: serde_json::json!({ "message": message }),
        });
    }

    /// Revokes every certificate of `device` and disconnects it. Returns (certificates,
    /// live connections closed).
    pub fn revoke_device(&self, device: &str) -> Result<(usize, usize), EnrollError> {
        let security = self.security()?;
        let identity = Identity::Device(device.to_owned());
        let serials = self.store().revoke(&identity.to_string(), Some(device))?;
        if serials.is_empty() {
            return Err(EnrollError::NotEnrolled(device.to_owned()));
        }
        let mut closed = 0;
        if let Some(front) = &security.front {
            for serial in &serials {
                closed += front.revoke(serial);
            }
        }
        tracing::info!(
            device,
            certificates = serials.len(),
            closed,
            "device revoked"
        );
        Ok((serials.len(), closed))
    }

    /// Issues a read-only integrator certificate.
    pub fn add_integrator(&self, name: &str) -> Result<IssuedCert, EnrollError> {
        let security = self.security()?;
        edgefleet_protocol::acl::validate_integrator_name(name)
            .map_err(|e| EnrollError::Invalid(e.to_string()))?;
        let identity = Identity::Integrator(name.to_owned());
        let cert = security.pki.issue_client(&identity, CERT_DAYS)?;
        self.store()
            .record_certificate(&identity.to_string(), &cert)?;
        Ok(cert)
    }
}

impl From<EnrollError> for crate::api::ApiError {
    fn from(e: EnrollError) -> Self {
        use crate::api::ApiError;
        match e {
            EnrollError::NoGateway => ApiError::Conflict(e.to_string()),
            EnrollError::Invalid(m) => ApiError::BadRequest(m),
            EnrollError::NotEnrolled(_) => ApiError::NotFound(e.to_string()),
            EnrollError::Store(s) => s.into(),
            EnrollError::Pki(p) => ApiError::Internal(format!("cannot issue a certificate: {p}")),
        }
    }
}

#[derive(serde::Deserialize, Default)]
struct AddDeviceBody {
    /// `site=lyon,line=3`
    #[serde(default)]
    labels: String,
    /// `24h`, `7d` (humantime); default 24 h.
    #[serde(default)]
    expires: Option<String>,
}

async fn api_add_device(
    State(ctrl): State<Arc<Controller>>,
    auth: crate::auth::Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Result<Json<AddDeviceBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, crate::api::ApiError> {
    use crate::api::ApiError;
    let Json(body) = body?;
    let labels = parse_labels(&body.labels).map_err(ApiError::BadRequest)?;
    auth.note(&id, labels.get("site").map(String::as_str));
    let ttl = match &body.expires {
        None => DEFAULT_TOKEN_TTL,
        Some(t) => humantime::parse_duration(t).map_err(|e| {
            ApiError::BadRequest(format!(
                "expires '{t}' is not a duration like 24h or 7d: {e}"
            ))
        })?,
    };
    auth.detail(serde_json::json!({ "labels": labels, "expires_in_s": ttl.as_secs() }));
    let by = auth.caller.username.clone();
    let (token, url) = ctrl.add_device(&id, &labels, ttl, &by)?;
    let expires_at = std::time::UNIX_EPOCH + Duration::from_secs(token.expires_at.max(0) as u64);
    Ok(Json(serde_json::json!({
        "device": token.device,
        "labels": labels,
        "token": token.token,
        "expires_at": humantime::format_rfc3339_seconds(expires_at).to_string(),
        "enroll_url": url,
    })))
}

async fn api_revoke_device(
    State(ctrl): State<Arc<Controller>>,
    auth: crate::auth::Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, crate::api::ApiError> {
    let site = ctrl.fleet.site_of(&id);
    auth.note(&id, site.as_deref());
    let (certificates, disconnected) = ctrl.revoke_device(&id)?;
    Ok(Json(serde_json::json!({
        "device": id, "certificates_revoked": certificates, "connections_closed": disconnected,
    })))
}

#[derive(serde::Deserialize)]
struct AddIntegratorBody {
    name: String,
}

async fn api_add_integrator(
    State(ctrl): State<Arc<Controller>>,
    auth: crate::auth::Auth,
    body: Result<Json<AddIntegratorBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, crate::api::ApiError> {
    let Json(body) = body?;
    auth.note(&body.name, None);
    let cert = ctrl.add_integrator(&body.name)?;
    let security = ctrl.security()?;
    auth.detail(serde_json::json!({ "serial": cert.serial }));
    Ok(Json(serde_json::json!({
        "name": body.name,
        "client_id": edgefleet_protocol::acl::Identity::Integrator(body.name.clone()).common_name(),
        "serial": cert.serial,
        "cert_pem": cert.cert_pem,
        "key_pem": cert.key_pem,
        "ca_pem": security.pki.ca_pem(),
        "broker_url": security.device_broker_url,
    })))
}

#[derive(serde::Deserialize)]
struct AclQuery {
    #[serde(default)]
    format: Option<String>,
    /// Comma-separated integrator names to write user blocks for.
    #[serde(default)]
    integrators: Option<String>,
}

async fn api_acl(
    axum::extract::Query(q): axum::extract::Query<AclQuery>,
) -> Result<String, crate::api::ApiError> {
    use crate::api::ApiError;
    match q.format.as_deref().unwrap_or("mosquitto") {
        "mosquitto" => {}
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown ACL format '{other}': the only format is 'mosquitto'"
            )));
        }
    }
    let names: Vec<String> = q
        .integrators
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    edgefleet_protocol::acl::mosquitto_acl_with_integrators(&names)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The HTTP API routes for identities (merged into [`crate::api::router`]).
pub fn api_routes() -> Router<Arc<Controller>> {
    Router::new()
        .route("/api/v1/devices/{id}/enroll", post(api_add_device))
        .route("/api/v1/devices/{id}/revoke", post(api_revoke_device))
        .route("/api/v1/integrators", post(api_add_integrator))
        .route("/api/v1/acl", axum::routing::get(api_acl))
}

/// The enrollment listener's router: one route.
pub fn router(ctrl: Arc<Controller>) -> Router {
    Router::new()
        .route(ENROLL_PATH, post(enroll))
        .with_state(ctrl)
}

async fn enroll(State(ctrl): State<Arc<Controller>>, body: axum::body::Bytes) -> Response {
    let error = |status: StatusCode, message: String| {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    };
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not an enrollment request: {e}"),
            );
        }
    };
    let result = tokio::task::spawn_blocking(move || ctrl.redeem(&request)).await;
    match result {
        Ok(Ok(Ok(response))) => Json(response).into_response(),
        Ok(Ok(Err(refusal))) => error(StatusCode::UNAUTHORIZED, refusal.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Serves the enrollment router over TLS until `shutdown`: each connection in its own task,
/// the handshake under a timeout (an idle socket delays nobody).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (socket, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("enrollment listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(socket))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "enrollment TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "enrollment TLS handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            let conn = Builder::new(TokioExecutor::new());
            let serving = conn.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = serving => if let Err(e) = r {
                    tracing::debug!(%peer, "enrollment connection ended: {e}");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_refuse_nonsense() {
        let l = parse_labels("site=lyon, line=3").unwrap();
        assert_eq!(l["site"], "lyon");
        assert_eq!(l["line"], "3");
        assert!(parse_labels("site").unwrap_err().contains("key=value"));
        assert!(parse_labels("").unwrap().is_empty());
    }

    #[test]
    fn a_token_is_redeemed_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let labels = BTreeMap::from([("site".to_owned(), "lyon".to_owned())]);
        store
            .insert_enrollment("d1", &labels, &digest("s1"), 1000, "admin")
            .unwrap();
        store
            .insert_enrollment("d2", &labels, &digest("s2"), 1000, "admin")
            .unwrap();
        assert_eq!(
            store.redeem_enrollment("d1", &digest("wrong"), 10).unwrap(),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            store.redeem_enrollment("d2", &digest("s1"), 10).unwrap(),
            Err(Refusal::Unknown),
            "a token is bound to its device"
        );
        assert_eq!(
            store.redeem_enrollment("d1", &digest("s1"), 10).unwrap(),
            Ok(labels)
        );
        assert_eq!(
            store.redeem_enrollment("d1", &digest("s1"), 10).unwrap(),
            Err(Refusal::Used)
        );
        assert_eq!(
            store.redeem_enrollment("d2", &digest("s2"), 1000).unwrap(),
            Err(Refusal::Expired)
        );
    }
}
