//! Device enrollment: the one-time token an operator hands to a device, and the HTTPS
//! exchange that turns it into the device's own certificate and key.
//!
//! `edgefleet device add press-07` prints a token. It carries the device id, a random
//! one-time secret, the SHA-256 fingerprint of the gateway's CA and the enrollment URL. The
//! agent (`edgefleet-agent enroll --token …`) connects to that URL over TLS, trusting only a
//! server certificate issued by the CA with that fingerprint (so nothing on the path can
//! impersonate the gateway), posts an [`EnrollRequest`] and receives an [`EnrollResponse`]:
//! its certificate and key, the CA, the controller's desired-state signing key to pin, and
//! the `mqtts://` broker URL. The gateway stores only a hash of the secret; a used or expired
//! token is refused.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Every token starts with this, so a pasted token is recognisable (and greppable in a leak
/// scanner).
pub const TOKEN_PREFIX: &str = "efenroll1_";

/// Path of the enrollment endpoint on the gateway's HTTPS listener.
pub const ENROLL_PATH: &str = "/enroll/v1";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "this is not an edgefleet enrollment token (it must start with '{TOKEN_PREFIX}'): copy the whole token printed by 'edgefleet device add'"
    )]
    Prefix,
    #[error(
        "the enrollment token is damaged ({0}): copy the whole token printed by 'edgefleet device add'"
    )]
    Damaged(String),
}

/// What the token carries. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentToken {
    /// Device id the token enrolls.
    pub device: String,
    /// One-time secret (base64url of 32 random bytes).
    pub secret: String,
    /// SHA-256 of the gateway CA certificate (DER), lowercase hex.
    pub ca_sha256: String,
    /// `https://HOST:PORT` of the gateway's enrollment listener.
    pub url: String,
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("device", &self.device)
            .field("ca_sha256", &self.ca_sha256)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl EnrollmentToken {
    /// The text form handed to people.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", B64URL.encode(json))
    }

    pub fn decode(text: &str) -> Result<EnrollmentToken, TokenError> {
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Prefix)?;
        let json = B64URL
            .decode(body)
            .map_err(|e| TokenError::Damaged(e.to_string()))?;
        let token: EnrollmentToken =
            serde_json::from_slice(&json).map_err(|e| TokenError::Damaged(e.to_string()))?;
        crate::ids::validate_device_id(&token.device)
            .map_err(|e| TokenError::Damaged(e.to_string()))?;
        let fp_ok = token.ca_sha256.len() == 64
            && token
                .ca_sha256
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !fp_ok {
            return Err(TokenError::Damaged("bad CA fingerprint".into()));
        }
        if !token.url.starts_with("https://") {
            return Err(TokenError::Damaged(
                "the enrollment URL is not https://".into(),
            ));
        }
        Ok(token)
    }
}

/// Agent → gateway, `POST {url}/enroll/v1`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub schema: u32,
    pub device: String,
    pub secret: String,
    /// Agent version, for the audit log.
    pub agent_version: String,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("device", &self.device)
            .field("agent_version", &self.agent_version)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Gateway → agent: everything the device needs to connect and to trust the controller.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub schema: u32,
    pub device: String,
    pub labels: BTreeMap<String, String>,
    /// The device's certificate (PEM), CN = device id.
    pub cert_pem: String,
    /// Its private key (PEM). Stored by the agent with 0600 permissions, never logged.
    pub key_pem: String,
    /// The gateway CA (PEM) the broker's certificate is checked against.
    pub ca_pem: String,
    /// The controller's desired-state signing key (base64), pinned by the agent.
    pub controller_key: String,
    /// `mqtts://HOST:PORT` of the gateway's device listener.
    pub broker_url: String,
}

impl fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("device", &self.device)
            .field("labels", &self.labels)
            .field("broker_url", &self.broker_url)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> EnrollmentToken {
        EnrollmentToken {
            device: "press-07".into(),
            secret: "c2VjcmV0LXNlY3JldC1zZWNyZXQ".into(),
            ca_sha256: "ab".repeat(32),
            url: "https://gateway:8443".into(),
        }
    }

    #[test]
    fn tokens_round_trip_and_never_show_the_secret() {
        let t = token();
        let text = t.encode();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert_eq!(EnrollmentToken::decode(&format!("  {text}\n")).unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn damaged_tokens_say_so() {
        assert_eq!(EnrollmentToken::decode("hello"), Err(TokenError::Prefix));
        let text = token().encode();
        let cut = &text[..text.len() - 5];
        assert!(matches!(
            EnrollmentToken::decode(cut),
            Err(TokenError::Damaged(_))
        ));
        let mut bad = token();
        bad.url = "http://gateway".into();
        assert!(
            EnrollmentToken::decode(&bad.encode())
                .unwrap_err()
                .to_string()
                .contains("https")
        );
        let mut bad = token();
        bad.device = "a/b".into();
        assert!(EnrollmentToken::decode(&bad.encode()).is_err());
    }
}
