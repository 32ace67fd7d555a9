//! The gateway's own certificate authority: it issues the TLS server certificate of the
//! network front and one client certificate per device or integrator.
//!
//! Files in the PKI directory (created with mode 0700; keys with mode 0600; every file replaced
//! atomically and durably through `edgefleet_files`):
//! - `ca.pem`, `ca.key`: the CA, created on first start, ECDSA P-256, valid 20 years;
//! - `server.pem`, `server.key`: the front's certificate, reissued at start when missing,
//!   expiring within 30 days, not signed by the current CA, or when the configured names change.
//!
//! The identity of a client is the subject common name of its certificate: the device id for a
//! device, `integrator:<name>` for an integrator ([`Identity::common_name`]). Serial numbers are
//! 16 random bytes, shown as lowercase hex; revocation is by serial or by identity
//! ([`crate::front::FrontHandle`]). Keys are never logged; [`IssuedCert`]'s `Debug` hides the
//! private key.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgefleet_files::{Mode, write_atomic};
use edgefleet_protocol::acl::Identity;
use edgefleet_protocol::ids::IdError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use thiserror::Error;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";
const CA_VALID_DAYS: i64 = 20 * 365;
const SERVER_VALID_DAYS: i64 = 397;
const SERVER_RENEW_BEFORE_DAYS: i64 = 30;
/// Certificates start being valid this long before issue, for devices whose clock lags.
const BACKDATE: time::Duration = time::Duration::hours(1);
/// Names every server certificate carries, so local clients and tests can connect.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("cannot {action} {path}: {source} (check the PKI directory and its permissions)")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a usable {what}: {reason} (restore it from a backup; delete ca.pem and ca.key only if every device certificate may be reissued)"
    )]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot issue a certificate for '{name}': {source}")]
    InvalidIdentity { name: String, source: IdError },
    #[error("invalid server name '{0}': use a DNS name or an IP address")]
    InvalidServerName(String),
    #[error("the client certificate is not an edgefleet identity: {0}")]
    BadClientCert(String),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A client certificate and its private key, ready to hand to a device or integrator.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// Lowercase hex, unique; what [`crate::front::FrontHandle::revoke`] takes.
    pub serial: String,
    pub not_after: SystemTime,
    /// The certificate's public key (P-256, uncompressed SEC1): what the gateway seals a
    /// device's secrets for.
    pub public_key: Vec<u8>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The loaded CA and server certificate.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca_key: KeyPair,
    tls: Arc<ServerConfig>,
    https: Arc<ServerConfig>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("ca_fingerprint", &self.ca_fingerprint())
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the CA and server certificate from `dir`, creating what is missing (see the
    /// module docs). `server_names` are extra DNS names or IP addresses devices use to reach
    /// the gateway; `localhost`, `127.0.0.1` and `::1` are always included.
    pub fn load_or_create(dir: &Path, server_names: &[String]) -> Result<Pki, PkiError> {
        let names = server_name_set(server_names)?;
        create_dir(dir)?;
        let ca_cert_path = dir.join(CA_CERT);
        let ca_key_path = dir.join(CA_KEY);
        let (ca_pem, ca_key) = if ca_cert_path.exists() || ca_key_path.exists() {
            let pem = read(&ca_cert_path)?;
            let key = read(&ca_key_path)?;
            let key = KeyPair::from_pem(&key).map_err(|e| PkiError::Corrupt {
                path: ca_key_path.clone(),
                what: "CA key",
                reason: e.to_string(),
            })?;
            (pem, key)
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write(&ca_key_path, &key.serialize_pem(), Mode::Private)?;
            write(&ca_cert_path, &cert.pem(), Mode::Public)?;
            tracing::info!(dir = %dir.display(), "created the gateway's certificate authority");
            (cert.pem(), key)
        };
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| PkiError::Corrupt {
                path: ca_cert_path.clone(),
                what: "CA certificate",
                reason: e.to_string(),
            })?
            .into_owned();
        let ca = parse_cert(&ca_der).map_err(|reason| PkiError::Corrupt {
            path: ca_cert_path.clone(),
            what: "CA certificate",
            reason,
        })?;
        if ca.public_key().raw != ca_key.subject_public_key_info().as_slice() {
            return Err(PkiError::Corrupt {
                path: ca_key_path,
                what: "CA key",
                reason: "it does not belong to ca.pem".to_owned(),
            });
        }

        let server_cert_path = dir.join(SERVER_CERT);
        let server_key_path = dir.join(SERVER_KEY);
        let reason = server_cert_outdated(&server_cert_path, &server_key_path, &ca, &names);
        if let Some(reason) = reason {
            let key = KeyPair::generate()?;
            let issuer = Issuer::from_ca_cert_der(&ca_der, &ca_key)?;
            let cert = server_params(&names)?.signed_by(&key, &issuer)?;
            write(&server_key_path, &key.serialize_pem(), Mode::Private)?;
            write(&server_cert_path, &cert.pem(), Mode::Public)?;
            tracing::info!(%reason, names = ?names, "issued the front's server certificate");
        }
        let server_chain = vec![
            CertificateDer::from_pem_file(&server_cert_path)
                .map_err(|e| PkiError::Corrupt {
                    path: server_cert_path.clone(),
                    what: "server certificate",
                    reason: e.to_string(),
                })?
                .into_owned(),
            ca_der.clone(),
        ];
        let server_key =
            PrivateKeyDer::from_pem_file(&server_key_path).map_err(|e| PkiError::Corrupt {
                path: server_key_path.clone(),
                what: "server key",
                reason: e.to_string(),
            })?;
        let https = https_config(server_chain.clone(), server_key.clone_key())?;
        let tls = server_config(&ca_der, server_chain, server_key)?;
        drop(ca);
        Ok(Pki {
            dir: dir.to_owned(),
            ca_pem,
            ca_der,
            ca_key,
            tls,
            https,
        })
    }

    /// The CA certificate, PEM: what devices and integrators trust (`--cafile`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex (64 characters), to compare out of
    /// band when enrolling.
    pub fn ca_fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.ca_der.as_ref()))
    }

    /// Issues a client certificate for `identity`, valid from now (backdated one hour for
    /// clock skew) for `valid_days` days. Nothing is stored: keep the serial to revoke it.
    pub fn issue_client(
        &self,
        identity: &Identity,
        valid_days: u32,
    ) -> Result<IssuedCert, PkiError> {
        identity
            .validate()
            .map_err(|source| PkiError::InvalidIdentity {
                name: identity.to_string(),
                source,
            })?;
        let serial_bytes = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&identity.common_name());
        params.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + time::Duration::days(i64::from(valid_days));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_ca_cert_der(&self.ca_der, &self.ca_key)?;
        let cert = params.signed_by(&key, &issuer)?;
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(params.not_after.unix_timestamp()).unwrap_or(0));
        let serial = hex::encode(serial_bytes);
        tracing::info!(%identity, %serial, valid_days, "issued a client certificate");
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
            not_after,
            public_key: key.public_key_raw().to_vec(),
        })
    }

    /// TLS configuration for the front: our server certificate, and client certificates
    /// required and verified against our CA (TLS 1.2 and 1.3, ring provider).
    pub fn server_tls_config(&self) -> Arc<ServerConfig> {
        self.tls.clone()
    }

    /// TLS configuration for the enrollment HTTPS listener: the same server certificate and
    /// chain (which includes the CA, so a device can match the fingerprint in its token), no
    /// client certificate (a device enrolling has none yet).
    pub fn https_tls_config(&self) -> Arc<ServerConfig> {
        self.https.clone()
    }

    /// The directory the PKI lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads the identity and serial (lowercase hex) of a client certificate (DER), e.g. the one a
/// TLS peer presented. Does not verify the certificate: the TLS handshake did.
pub fn identity_from_cert(der: &[u8]) -> Result<(Identity, String), PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadClientCert(format!("unparsable certificate: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| PkiError::BadClientCert("no subject common name".to_owned()))?
        .as_str()
        .map_err(|e| PkiError::BadClientCert(format!("common name is not text: {e}")))?;
    let identity = Identity::from_common_name(cn)
        .map_err(|e| PkiError::BadClientCert(format!("common name '{cn}': {e}")))?;
    Ok((identity, hex::encode(cert.raw_serial())))
}

fn https_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn server_config(
    ca_der: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("edgefleet gateway CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::days(CA_VALID_DAYS);
    Ok(params)
}

fn server_params(names: &BTreeSet<String>) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("edgefleet gateway");
    params.subject_alt_names = names
        .iter()
        .map(|n| san(n))
        .collect::<Result<Vec<_>, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::days(SERVER_VALID_DAYS);
    Ok(params)
}

fn san(name: &str) -> Result<SanType, PkiError> {
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => {
            Ok(SanType::DnsName(name.to_owned().try_into().map_err(
                |_| PkiError::InvalidServerName(name.to_owned()),
            )?))
        }
    }
}

/// The normalized set of names for the server certificate.
fn server_name_set(extra: &[String]) -> Result<BTreeSet<String>, PkiError> {
    let mut names: BTreeSet<String> = LOCAL_NAMES.iter().map(|s| (*s).to_owned()).collect();
    for name in extra {
        let name = name.trim();
        let normalized = match name.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => {
                let ok = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '*');
                if !ok {
                    return Err(PkiError::InvalidServerName(name.to_owned()));
                }
                name.to_ascii_lowercase()
            }
        };
        names.insert(normalized);
    }
    Ok(names)
}

/// Why the server certificate must be (re)issued, or `None` if it is fine.
fn server_cert_outdated(
    cert_path: &Path,
    key_path: &Path,
    ca: &X509Certificate<'_>,
    names: &BTreeSet<String>,
) -> Option<String> {
    if !cert_path.exists() || !key_path.exists() {
        return Some("missing".to_owned());
    }
    let Ok(der) = CertificateDer::from_pem_file(cert_path) else {
        return Some("unreadable".to_owned());
    };
    let Ok(cert) = parse_cert(&der) else {
        return Some("unparsable".to_owned());
    };
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Some("not signed by the current CA".to_owned());
    }
    let renew_at = OffsetDateTime::now_utc() + time::Duration::days(SERVER_RENEW_BEFORE_DAYS);
    if cert.validity().not_after.timestamp() < renew_at.unix_timestamp() {
        return Some("expiring".to_owned());
    }
    let mut have = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(n) => {
                    have.insert(n.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        have.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if &have != names {
        return Some("server names changed".to_owned());
    }
    None
}

fn parse_cert<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| e.to_string())
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "edgefleet");
    dn
}

/// 16 random bytes, first byte in 0x40..=0x7f: positive and without a leading zero, so the
/// DER integer holds exactly these bytes and reads back as the same hex.
fn random_serial() -> [u8; 16] {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    bytes
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Replaces `path` atomically and durably, `mode` set from creation (`edgefleet_files`).
fn write(path: &Path, contents: &str, mode: Mode) -> Result<(), PkiError> {
    write_atomic(path, contents.as_bytes(), mode).map_err(|source| PkiError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_then_loads_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        let first = Pki::load_or_create(&pki_dir, &[]).unwrap();
        assert_eq!(mode(&pki_dir.join(CA_KEY)), 0o600);
        assert_eq!(mode(&pki_dir.join(SERVER_KEY)), 0o600);
        assert_eq!(mode(&pki_dir), 0o700);
        let fp = first.ca_fingerprint();
        assert_eq!(fp.len(), 64);
        assert!(
            fp.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let server_before = fs::read_to_string(pki_dir.join(SERVER_CERT)).unwrap();

        let again = Pki::load_or_create(&pki_dir, &[]).unwrap();
        assert_eq!(again.ca_fingerprint(), fp);
        assert_eq!(again.ca_pem(), first.ca_pem());
        let server_same = fs::read_to_string(pki_dir.join(SERVER_CERT)).unwrap();
        assert_eq!(
            server_same, server_before,
            "unchanged names keep the server cert"
        );

        let renamed = Pki::load_or_create(
            &pki_dir,
            &["gw.plant.example".to_owned(), "10.0.0.5".to_owned()],
        )
        .unwrap();
        assert_eq!(renamed.ca_fingerprint(), fp);
        let server_after = fs::read_to_string(pki_dir.join(SERVER_CERT)).unwrap();
        assert_ne!(
            server_after, server_before,
            "new names reissue the server cert"
        );
        let der = CertificateDer::from_pem_slice(server_after.as_bytes()).unwrap();
        let cert = parse_cert(&der).unwrap();
        let sans = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            sans.contains("gw.plant.example") && sans.contains("localhost"),
            "{sans}"
        );

        fs::remove_file(pki_dir.join(SERVER_CERT)).unwrap();
        Pki::load_or_create(
            &pki_dir,
            &["gw.plant.example".to_owned(), "10.0.0.5".to_owned()],
        )
        .unwrap();
        assert!(pki_dir.join(SERVER_CERT).exists());
    }

    #[test]
    fn issued_certs_carry_identity_and_unique_serials() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let mut serials = BTreeSet::new();
        for identity in [
            Identity::Device("press-07".to_owned()),
            Identity::Integrator("scada".to_owned()),
            Identity::Device("press-07".to_owned()),
        ] {
            let issued = pki.issue_client(&identity, 30).unwrap();
            assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
            let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
            let (got, serial) = identity_from_cert(&der).unwrap();
            assert_eq!(got, identity);
            assert_eq!(serial, issued.serial);
            assert_eq!(serial.len(), 32);
            assert!(serials.insert(serial));
            let days = issued
                .not_after
                .duration_since(SystemTime::now())
                .unwrap()
                .as_secs()
                / 86_400;
            assert!((29..=30).contains(&days));
            let cert = parse_cert(&der).unwrap();
            let ca = CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap();
            let ca = parse_cert(&ca).unwrap();
            cert.verify_signature(Some(ca.public_key())).unwrap();
        }
        assert!(
            pki.issue_client(&Identity::Device("a/b".to_owned()), 1)
                .is_err()
        );
    }

    #[test]
    fn refuses_a_key_that_is_not_the_cas() {
        let dir = tempfile::tempdir().unwrap();
        Pki::load_or_create(dir.path(), &[]).unwrap();
        write(
            &dir.path().join(CA_KEY),
            &KeyPair::generate().unwrap().serialize_pem(),
            Mode::Private,
        )
        .unwrap();
        let err = Pki::load_or_create(dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(Pki::load_or_create(dir.path(), &["bad name!".to_owned()]).is_err());
    }
}
