//! Device identities at the gateway: enrollment tokens, redeeming them, revocation,
//! integrator credentials.
//!
//! - `edgefleet device add ID` ([`Identity::add_device`]) stores a one-time token (only its
//!   SHA-256) with the labels and an expiry, and prints the token.
//! - The agent posts the token to the enrollment listener ([`crate::http::enroll`]);
//!   [`Identity::redeem`] marks it used in the same transaction that checks it, issues the
//!   device certificate (CN = device id), records its serial, and answers with certificate,
//!   key, CA, the controller's signing key and the `mqtts://` URL.
//! - `edgefleet device revoke ID` ([`Identity::revoke_device`]) marks every certificate of the
//!   device revoked in the store, cancels its unused tokens, and tells the network front,
//!   which closes its live connections (the broker then fires its will: the device shows
//!   offline) and refuses those certificates from then on. Stored revocations are handed to
//!   the front at every start.
//!
//! - `edgefleet mqtt-user add NAME --role ROLE [--read F]… [--write F]…`
//!   ([`Identity::add_mqtt_user`]) creates a local MQTT user of the gateway's plain listener
//!   with a random password (shown once; the store keeps its SHA-256) and, for role `local`,
//!   the topic filters it may read and write, and hands the new set of users to the front;
//!   removing one closes its live connections.
//!
//! Every attempt is audited. No token, secret or key is ever logged. A controller on an
//! external broker has no front and no CA: every operation here then says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use edgefleet_broker::front::{FrontHandle, LocalUser};
use edgefleet_broker::pki::{IssuedCert, Pki};
use edgefleet_domain::audit::{Entry, Outcome};
use edgefleet_protocol::acl::{Identity as Who, LocalGrants};
use edgefleet_protocol::enrollment::{EnrollRequest, EnrollResponse, EnrollmentToken};
use edgefleet_store::identity::Refusal;
use edgefleet_store::mqtt_users::MqttUserRow;
use edgefleet_store::{Store, StoreError};
use thiserror::Error;

use super::audit::AuditLog;
use super::fleet::Fleet;
use super::users::{now_unix, token_digest};

/// Default validity of an enrollment token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Validity of device and integrator certificates.
pub const CERT_DAYS: u32 = 825;

/// What the gateway needs to enroll devices.
pub struct Security {
    pub pki: Pki,
    pub front: FrontHandle,
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
    #[error("integrator '{0}' has no certificate to revoke (see edgefleet integrator add)")]
    NoIntegrator(String),
    #[error("a local MQTT user named '{0}' already exists: remove it first to replace it")]
    MqttUserExists(String),
    #[error("no local MQTT user named '{0}'")]
    NoMqttUser(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot issue a certificate: {0}")]
    Pki(#[from] edgefleet_broker::pki::PkiError),
}

/// A token just created (the only time its text exists).
#[derive(Clone)]
pub struct NewToken {
    pub device: String,
    pub token: String,
    pub expires_at: i64,
    pub enroll_url: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("device", &self.device)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// An integrator's credentials just issued.
pub struct NewIntegrator {
    pub cert: IssuedCert,
    pub ca_pem: String,
    pub broker_url: String,
}

pub struct Identity {
    store: Store,
    fleet: Arc<Fleet>,
    audit: Arc<AuditLog>,
    outbox: Arc<super::outbox::Outbox>,
    vault: Arc<super::vault::Vault>,
    deployments: Arc<super::deployments::Deployments>,
    security: Option<Arc<Security>>,
}

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Identity {
    /// `security` is `None` on a controller without the gateway's front.
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        audit: Arc<AuditLog>,
        outbox: Arc<super::outbox::Outbox>,
        vault: Arc<super::vault::Vault>,
        deployments: Arc<super::deployments::Deployments>,
        security: Option<Arc<Security>>,
    ) -> Self {
        Identity {
            store,
            fleet,
            audit,
            outbox,
            vault,
            deployments,
            security,
        }
    }

    /// A revoked device is offline now, in the fleet view and retained on the bus for
    /// integrators, whatever its last presence said: its will fires only if it was
    /// connected at that moment, and a presence retained `online` would stay forever. Same
    /// session as its last presence, so the fleet takes it; a later enrollment's agent
    /// starts a newer session.
    fn mark_offline(&self, device: &str) {
        let Some(last) = self.fleet.get(device).and_then(|d| d.presence) else {
            return;
        };
        let offline = edgefleet_protocol::presence::DevicePresence {
            state: edgefleet_protocol::presence::PresenceState::Offline,
            since: edgefleet_protocol::now_rfc3339(),
            ..last
        };
        self.fleet.on_presence(offline.clone());
        self.outbox.queue_retained(
            edgefleet_protocol::topics::TopicKind::DevicePresence.for_device(device),
            edgefleet_protocol::codec::encode(&offline),
        );
    }

    /// The gateway's security services, when this controller runs inside a gateway.
    pub fn security(&self) -> Result<&Arc<Security>, EnrollError> {
        self.security.as_ref().ok_or(EnrollError::NoGateway)
    }

    /// Creates a one-time enrollment token for `device`.
    pub async fn add_device(
        &self,
        device: &str,
        labels: &BTreeMap<String, String>,
        ttl: Duration,
        by: &str,
    ) -> Result<NewToken, EnrollError> {
        let security = self.security()?;
        edgefleet_protocol::ids::validate_device_id(device)
            .map_err(|e| EnrollError::Invalid(e.to_string()))?;
        if device == edgefleet_protocol::acl::CONTROLLER_CLIENT_ID {
            // On a Mosquitto with use_username_as_clientid its client id would be the
            // controller's.
            return Err(EnrollError::Invalid(format!(
                "'{device}' is reserved (the controller's MQTT client id); choose another device id"
            )));
        }
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
        self.store
            .insert_enrollment(device, labels, &token_digest(&secret), expires_at, by)
            .await?;
        let token = EnrollmentToken {
            device: device.to_owned(),
            secret,
            ca_sha256: security.pki.ca_fingerprint(),
            url: security.enroll_url.clone(),
        };
        tracing::info!(device, expires_at, "enrollment token created");
        Ok(NewToken {
            device: device.to_owned(),
            token: token.encode(),
            expires_at,
            enroll_url: security.enroll_url.clone(),
        })
    }

    /// Exchanges a token for the device's identity (the enrollment listener's one job).
    pub async fn redeem(
        &self,
        request: &EnrollRequest,
    ) -> Result<Result<EnrollResponse, Refusal>, EnrollError> {
        let security = self.security()?.clone();
        if edgefleet_protocol::ids::validate_device_id(&request.device).is_err() {
            return Ok(Err(Refusal::Unknown));
        }
        let verdict = self
            .store
            .redeem_enrollment(&request.device, &token_digest(&request.secret), now_unix())
            .await?;
        let labels = match verdict {
            Ok(labels) => labels,
            Err(refusal) => {
                self.audit_enrollment(&request.device, Outcome::Refused, &refusal.to_string())
                    .await;
                return Ok(Err(refusal));
            }
        };
        let identity = Who::Device(request.device.clone());
        let cert = self.issue(&security, &identity).await?;
        // Enrolled again (`device add` for a known device, a replaced box): the device's
        // earlier certificates stop working now, and their connections close.
        let replaced = self
            .store
            .revoke_all_but(&identity.to_string(), &cert.serial)
            .await?;
        let closed: usize = replaced.iter().map(|s| security.front.revoke(s)).sum();
        let replaced_note = if replaced.is_empty() {
            String::new()
        } else {
            format!(
                "; {} earlier certificate(s) revoked ({closed} connection(s) closed)",
                replaced.len()
            )
        };
        self.audit_enrollment(
            &request.device,
            Outcome::Ok,
            &format!(
                "certificate {} issued (agent {}){replaced_note}",
                cert.serial, request.agent_version
            ),
        )
        .await;
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

    /// Issues a client certificate (key generation off the runtime) and records its serial.
    async fn issue(
        &self,
        security: &Arc<Security>,
        identity: &Who,
    ) -> Result<IssuedCert, EnrollError> {
        let (s, who) = (security.clone(), identity.clone());
        let cert = tokio::task::spawn_blocking(move || s.pki.issue_client(&who, CERT_DAYS))
            .await
            .map_err(|e| EnrollError::Invalid(format!("certificate issuing failed: {e}")))??;
        self.store
            .record_certificate(&identity.to_string(), &cert.serial, unix(cert.not_after))
            .await?;
        let public_key = hex::encode(&cert.public_key);
        self.store
            .set_certificate_key(&cert.serial, &public_key)
            .await?;
        if let Who::Device(device) = identity {
            // Secrets and registry credentials are sealed for this key from now on; a
            // device enrolled again gets its documents sealed anew.
            self.vault.note_device_key_hex(device, &public_key);
            self.deployments
                .refresh(std::slice::from_ref(device))
                .await?;
        }
        security.front.admit_serial(&cert.serial);
        Ok(cert)
    }

    async fn audit_enrollment(&self, device: &str, outcome: Outcome, message: &str) {
        let site = self.fleet.site_of(device).unwrap_or_default();
        self.audit
            .record(Entry {
                actor: format!("device:{device}"),
                role: "device".into(),
                action: "device.enroll".into(),
                target: device.to_owned(),
                site,
                outcome,
                status: None,
                detail: serde_json::json!({ "message": message }),
            })
            .await;
    }

    /// Revokes every certificate of `device` and disconnects it. Returns (certificates,
    /// live connections closed).
    pub async fn revoke_device(&self, device: &str) -> Result<(usize, usize), EnrollError> {
        let security = self.security()?;
        let identity = Who::Device(device.to_owned());
        let serials = self
            .store
            .revoke(&identity.to_string(), Some(device))
            .await?;
        if serials.is_empty() {
            return Err(EnrollError::NotEnrolled(device.to_owned()));
        }
        let closed: usize = serials.iter().map(|s| security.front.revoke(s)).sum();
        self.mark_offline(device);
        tracing::info!(
            device,
            certificates = serials.len(),
            closed,
            "device revoked"
        );
        Ok((serials.len(), closed))
    }

    /// Revokes every certificate of integrator `name` and disconnects it. Returns
    /// (certificates, live connections closed).
    pub async fn revoke_integrator(&self, name: &str) -> Result<(usize, usize), EnrollError> {
        let security = self.security()?;
        let identity = Who::Integrator(name.to_owned());
        let serials = self.store.revoke(&identity.to_string(), None).await?;
        if serials.is_empty() {
            return Err(EnrollError::NoIntegrator(name.to_owned()));
        }
        let closed: usize = serials.iter().map(|s| security.front.revoke(s)).sum();
        tracing::info!(
            integrator = name,
            certificates = serials.len(),
            closed,
            "integrator revoked"
        );
        Ok((serials.len(), closed))
    }

    /// Issues a read-only integrator certificate.
    pub async fn add_integrator(&self, name: &str) -> Result<NewIntegrator, EnrollError> {
        let security = self.security()?.clone();
        edgefleet_protocol::acl::validate_integrator_name(name)
            .map_err(|e| EnrollError::Invalid(e.to_string()))?;
        let cert = self
            .issue(&security, &Who::Integrator(name.to_owned()))
            .await?;
        Ok(NewIntegrator {
            cert,
            ca_pem: security.pki.ca_pem().to_owned(),
            broker_url: security.device_broker_url.clone(),
        })
    }
}

/// A local MQTT user's role as written (`local`, `bridge`, `device:<id>`,
/// `integrator:<name>`), as the identity the front confines it to.
pub fn mqtt_role(name: &str, role: &str) -> Result<Who, String> {
    let who = match role.split_once(':') {
        None if role == "local" => Who::Local(name.to_owned()),
        None if role == "bridge" => Who::Bridge(name.to_owned()),
        Some(("device", id)) => Who::Device(id.to_owned()),
        Some(("integrator", n)) => Who::Integrator(n.to_owned()),
        _ => {
            return Err(format!(
                "unknown role '{role}': use local (topics outside edgefleet/), bridge (every topic), device:ID or integrator:NAME"
            ));
        }
    };
    who.validate().map_err(|e| e.to_string())?;
    Ok(who)
}

/// A local MQTT user just created (the only time its password exists).
pub struct NewMqttUser {
    pub name: String,
    pub role: String,
    pub password: String,
    pub grants: LocalGrants,
}

impl Identity {
    /// Hands the stored local MQTT users to the front (at start and after every change).
    /// Returns how many live connections had to close.
    pub async fn load_mqtt_users(&self) -> Result<usize, EnrollError> {
        let security = self.security()?;
        let mut users = Vec::new();
        for row in self.store.mqtt_users().await? {
            match mqtt_role(&row.name, &row.role) {
                Ok(identity) => {
                    // Stored grants were checked when the user was made; if one no longer
                    // passes, the user gets none rather than more than it was given.
                    let grants = LocalGrants::new(row.read, row.write).unwrap_or_else(|e| {
                        tracing::error!(user = %row.name, "stored MQTT user's filters refused: {e}");
                        LocalGrants {
                            read: Vec::new(),
                            write: Vec::new(),
                        }
                    });
                    users.push(LocalUser {
                        name: row.name,
                        password_sha256: row.password_sha256,
                        identity,
                        grants,
                    });
                }
                Err(e) => tracing::error!(user = %row.name, "stored MQTT user skipped: {e}"),
            }
        }
        Ok(security.front.set_local_users(users))
    }

    /// Creates a local MQTT user with a random password. `read`/`write` (role `local` only;
    /// `None`: every topic outside edgefleet/) are the topic filters it may receive and
    /// publish.
    pub async fn add_mqtt_user(
        &self,
        name: &str,
        role: &str,
        read: Option<Vec<String>>,
        write: Option<Vec<String>>,
        by: &str,
    ) -> Result<NewMqttUser, EnrollError> {
        self.security()?;
        edgefleet_protocol::acl::validate_integrator_name(name)
            .map_err(|e| EnrollError::Invalid(format!("MQTT user {e}")))?;
        let who = mqtt_role(name, role).map_err(EnrollError::Invalid)?;
        if !matches!(who, Who::Local(_)) && (read.is_some() || write.is_some()) {
            return Err(EnrollError::Invalid(format!(
                "read and write filters apply only to role local; role {role} decides its own topics"
            )));
        }
        let all = LocalGrants::everything();
        let grants = LocalGrants::new(read.unwrap_or(all.read), write.unwrap_or(all.write))
            .map_err(EnrollError::Invalid)?;
        let password = hex::encode(rand::random::<[u8; 32]>());
        let row = MqttUserRow {
            name: name.to_owned(),
            role: role.to_owned(),
            password_sha256: LocalUser::hash_password(&password),
            created_at: edgefleet_protocol::now_rfc3339(),
            created_by: by.to_owned(),
            read: grants.read.clone(),
            write: grants.write.clone(),
        };
        if !self.store.insert_mqtt_user(row).await? {
            return Err(EnrollError::MqttUserExists(name.to_owned()));
        }
        self.load_mqtt_users().await?;
        Ok(NewMqttUser {
            name: name.to_owned(),
            role: role.to_owned(),
            password,
            grants,
        })
    }

    /// The local MQTT users (no password digests).
    pub async fn mqtt_users(&self) -> Result<Vec<MqttUserRow>, EnrollError> {
        Ok(self.store.mqtt_users().await?)
    }

    /// Removes a local MQTT user and closes its connections; returns how many closed.
    pub async fn remove_mqtt_user(&self, name: &str) -> Result<usize, EnrollError> {
        self.security()?;
        if !self.store.delete_mqtt_user(name).await? {
            return Err(EnrollError::NoMqttUser(name.to_owned()));
        }
        self.load_mqtt_users().await
    }
}
