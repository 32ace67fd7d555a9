//! The device's identity: enrollment (a one-time token exchanged over HTTPS for a certificate
//! and key) and the files it leaves in `DATA_DIR/identity/`:
//!
//! | file | content | mode |
//! |---|---|---|
//! | `device.json` | device id, labels, `mqtts://` broker URL | 0644 |
//! | `cert.pem` | this device's certificate (CN = device id) | 0644 |
//! | `key.pem` | its private key | **0600** |
//! | `ca.pem` | the gateway CA | 0644 |
//! | `controller.pub` | the controller's desired-state signing key | 0644 |
//!
//! During enrollment the agent trusts nothing but the CA fingerprint carried by the token: the
//! gateway must present a certificate chain containing that CA, and its server certificate
//! must verify against it. No key, secret or token is ever logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use edgefleet_files::{Mode, write_atomic};
use edgefleet_protocol::enrollment::{ENROLL_PATH, EnrollRequest, EnrollResponse, EnrollmentToken};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the identity lives inside the data dir.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

/// The non-secret part of the identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    pub device: String,
    pub labels: BTreeMap<String, String>,
    pub broker_url: String,
}

/// Reads `device.json` if the device is enrolled.
/// The private key of the device's certificate as the key secrets are sealed for
/// ([`edgefleet_protocol::sealed`]), if the device is enrolled. Blocking.
pub fn load_opening_key(
    data_dir: &Path,
) -> anyhow::Result<Option<edgefleet_protocol::sealed::OpeningKey>> {
    use p256::pkcs8::DecodePrivateKey as _;
    let path = identity_dir(data_dir).join("key.pem");
    if !path.exists() {
        return Ok(None);
    }
    let pem = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let key = p256::SecretKey::from_pkcs8_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a P-256 private key ({e}): enroll the device again",
            path.display()
        )
    })?;
    let scalar = edgefleet_protocol::sealed::Plain::new(key.to_bytes().to_vec());
    Ok(Some(
        edgefleet_protocol::sealed::OpeningKey::from_scalar(scalar.bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
    ))
}

pub fn load_enrolled(data_dir: &Path) -> anyhow::Result<Option<Enrolled>> {
    let path = identity_dir(data_dir).join("device.json");
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is damaged: enroll the device again with a new token",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client configuration for the `mqtts://` broker: trusts only the gateway CA and
/// presents this device's certificate.
pub fn mqtt_tls_config(data_dir: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let dir = identity_dir(data_dir);
    let hint = "enroll the device first (edgefleet-agent enroll --token …)";
    let ca = CertificateDer::from_pem_file(dir.join("ca.pem"))
        .with_context(|| format!("cannot read {}: {hint}", dir.join("ca.pem").display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .and_then(|it| it.collect::<Result<_, _>>())
        .with_context(|| format!("cannot read {}: {hint}", dir.join("cert.pem").display()))?;
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem"))
        .with_context(|| format!("cannot read {}: {hint}", dir.join("key.pem").display()))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .context("the stored gateway CA is not a usable certificate: enroll again")?;
    let config = ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .context("the stored device certificate and key do not match: enroll again")?;
    Ok(Arc::new(config))
}

/// Accepts the gateway only if its chain contains the CA whose SHA-256 the token carries and
/// its certificate verifies against that CA (name, validity, signature).
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the gateway did not present the CA named in the enrollment token (wrong gateway, or a machine in between)".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Exchanges `token` for this device's identity and writes it under `data_dir`. `url`
/// overrides the enrollment URL in the token (a gateway reached under another name).
pub async fn enroll(
    token: &EnrollmentToken,
    url: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<Enrolled> {
    let base = url.unwrap_or(&token.url).trim_end_matches('/');
    if !base.starts_with("https://") {
        bail!("the enrollment URL must be https://HOST:PORT (got {base})");
    }
    let provider = crypto();
    let tls = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fingerprint: token.ca_sha256.clone(),
            provider,
        }))
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("cannot build the HTTPS client")?;
    let request = EnrollRequest {
        schema: edgefleet_protocol::SCHEMA_VERSION,
        device: token.device.clone(),
        secret: token.secret.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let url = format!("{base}{ENROLL_PATH}");
    let response = client
        .post(&url)
        .json(&request)
        .send()
        .await
        .map_err(|e| {
            // reqwest errors can include the URL, never the body: safe to show. The cause
            // (refused connection, TLS verification) sits in the source chain.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why.push_str(": ");
                why.push_str(&cause.to_string());
                source = cause.source();
            }
            anyhow::anyhow!(
                "cannot reach the gateway at {base}: {why} (check the address, or pass --url https://HOST:PORT)"
            )
        })?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let why = body["error"].as_str().unwrap_or("no reason given");
        bail!("the gateway refused the enrollment ({status}): {why}");
    }
    let reply: EnrollResponse = response
        .json()
        .await
        .context("the gateway's answer is not an enrollment response")?;
    if reply.device != token.device {
        bail!(
            "the gateway enrolled '{}' instead of '{}': refusing",
            reply.device,
            token.device
        );
    }
    edgefleet_protocol::signing::parse_public_key(&reply.controller_key)
        .map_err(|e| anyhow::anyhow!("the gateway sent an unusable controller key: {e}"))?;
    // Writing and syncing files is blocking I/O: off the runtime.
    let data_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || save(&reply, &data_dir))
        .await
        .context("the task writing the identity failed")?
}

/// Writes the identity files, each atomically (the key with 0600, created that way; the
/// rest 0644). Blocking.
pub fn save(reply: &EnrollResponse, data_dir: &Path) -> anyhow::Result<Enrolled> {
    let dir = identity_dir(data_dir);
    edgefleet_files::create_private_dir(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let enrolled = Enrolled {
        device: reply.device.clone(),
        labels: reply.labels.clone(),
        broker_url: reply.broker_url.clone(),
    };
    let write = |name: &str, contents: &[u8], mode: Mode| {
        let path = dir.join(name);
        write_atomic(&path, contents, mode)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write("key.pem", reply.key_pem.as_bytes(), Mode::Private)?;
    write("cert.pem", reply.cert_pem.as_bytes(), Mode::Public)?;
    write("ca.pem", reply.ca_pem.as_bytes(), Mode::Public)?;
    let controller = format!("{}\n", reply.controller_key);
    write("controller.pub", controller.as_bytes(), Mode::Public)?;
    write(
        "device.json",
        &serde_json::to_vec_pretty(&enrolled)?,
        Mode::Public,
    )?;
    Ok(enrolled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_identity_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let reply = EnrollResponse {
            schema: 1,
            device: "press-07".into(),
            labels: BTreeMap::from([("site".into(), "lyon".into())]),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            ca_pem: "CA".into(),
            controller_key: "PUB".into(),
            broker_url: "mqtts://gw:8883".into(),
        };
        let enrolled = save(&reply, dir.path()).unwrap();
        assert_eq!(load_enrolled(dir.path()).unwrap(), Some(enrolled));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| {
                std::fs::metadata(identity_dir(dir.path()).join(f))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("key.pem"), 0o600);
            assert_eq!(mode("cert.pem"), 0o644);
        }
        assert!(
            load_enrolled(&dir.path().join("nowhere"))
                .unwrap()
                .is_none()
        );
        // A damaged identity says what to do.
        let bad = mqtt_tls_config(dir.path()).unwrap_err().to_string();
        assert!(bad.contains("ca.pem") || bad.contains("enroll"), "{bad}");
    }
}
