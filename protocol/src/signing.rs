//! Signed desired state. The controller signs every desired document with its ed25519 key;
//! an agent verifies it against the controller key it pinned at enrollment before it looks at
//! anything else in the document. Whoever can publish on a device's desired topic (a broker
//! misconfiguration, a leaked loopback port, a replayed capture) still cannot make it run
//! anything.
//!
//! On the wire the document travels inside an envelope, byte for byte as it was signed:
//!
//! ```json
//! {"schema":1,"key_id":"3f2a…","signature":"<base64>","document":{"schema":1,"device":"press-07",…}}
//! ```
//!
//! The signature covers the exact bytes of `document` (kept as raw JSON on both sides, never
//! re-serialized), so a verifier does not depend on field order or on knowing every field.
//! The document names its device and revision, so a document signed for one device or an
//! older revision cannot be replayed elsewhere or later: the agent refuses anything that is not
//! newer than what it holds.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::codec::{self, DecodeError};
use crate::desired::DesiredState;

/// Why a signed desired document was not accepted. Every variant except `Decode` is a
/// security matter: someone published something the controller did not sign.
#[derive(Debug, Error)]
pub enum SignatureError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the document is not signed: an agent accepts only documents signed by its controller")]
    Unsigned,
    #[error(
        "the document is signed by key {found}, but this agent trusts only key {trusted}: re-enroll the device if the gateway's key was replaced"
    )]
    UnknownKey { found: String, trusted: String },
    #[error("the signature does not match the document: it was forged or altered in transit")]
    BadSignature,
}

impl SignatureError {
    /// Whether this is a security matter (rather than a malformed payload).
    pub fn is_security(&self) -> bool {
        !matches!(self, SignatureError::Decode(_))
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    schema: u32,
    key_id: &'a str,
    signature: String,
    document: &'a RawValue,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    document: Option<Box<RawValue>>,
}

/// Length of the envelope [`DocumentSigner::sign_bytes`] makes around a JSON document of
/// `document_len` bytes (exact: the key id and the signature have fixed lengths), so a
/// document's size on the bus is known before it is signed.
pub fn signed_len(document_len: usize) -> usize {
    static OVERHEAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let overhead = *OVERHEAD.get_or_init(|| {
        let key_id = "0".repeat(16);
        let document = serde_json::from_str::<&RawValue>("0");
        document.map_or(256, |document| {
            codec::encode(&EnvelopeOut {
                schema: crate::SCHEMA_VERSION,
                key_id: &key_id,
                signature: B64.encode([0u8; 64]),
                document,
            })
            .len()
                - 1
        })
    });
    document_len + overhead
}

/// Short, stable name of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// The controller's side: holds the private key and signs documents.
pub struct DocumentSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for DocumentSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("DocumentSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl DocumentSigner {
    /// A signer from a 32-byte ed25519 secret.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(secret);
        let key_id = key_id(&key.verifying_key());
        DocumentSigner { key, key_id }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key in the text form agents pin (base64 of the 32 raw bytes).
    pub fn public_key_text(&self) -> String {
        public_key_text(&self.verifying_key())
    }

    /// Serializes and signs a desired document: the payload to publish.
    pub fn sign(&self, doc: &DesiredState) -> Vec<u8> {
        let document = codec::encode(doc);
        self.sign_bytes(&document)
    }

    /// Signs already-serialized document bytes (must be one JSON value).
    pub fn sign_bytes(&self, document: &[u8]) -> Vec<u8> {
        let signature = B64.encode(self.key.sign(document).to_bytes());
        let raw = std::str::from_utf8(document)
            .ok()
            .and_then(|s| serde_json::from_str::<&RawValue>(s).ok());
        let Some(raw) = raw else {
            // Our own encoder always yields one JSON value; anything else is a bug upstream.
            return b"{\"error\":\"document to sign is not JSON\"}".to_vec();
        };
        codec::encode(&EnvelopeOut {
            schema: crate::SCHEMA_VERSION,
            key_id: &self.key_id,
            signature,
            document: raw,
        })
    }
}

impl DocumentSigner {
    /// Signs a statement that is not a JSON document (base64 signature). Statements start
    /// with a fixed text tag, never with `{`, so a signed statement can never pass for a
    /// signed document, nor a document for a statement (see [`crate::audit_head`]).
    pub(crate) fn sign_statement(&self, statement: &[u8]) -> String {
        debug_assert!(statement.first() != Some(&b'{'));
        B64.encode(self.key.sign(statement).to_bytes())
    }
}

/// Whether `signature` (base64) is `trusted`'s signature over `statement`.
pub(crate) fn verify_statement(trusted: &VerifyingKey, statement: &[u8], signature: &str) -> bool {
    B64.decode(signature.trim())
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .is_some_and(|s| trusted.verify(statement, &s).is_ok())
}

/// The public key as text (base64 of its 32 bytes).
pub fn public_key_text(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Parses a public key from its text form (surrounding whitespace ignored).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "an ed25519 public key has 32 bytes, this has {}",
            bytes.len()
        )
    })?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// The agent's side: checks the envelope against the pinned key, then decodes the document.
/// Nothing in the document is looked at before its signature has been checked.
pub fn verify(trusted: &VerifyingKey, payload: &[u8]) -> Result<DesiredState, SignatureError> {
    verify_as(trusted, payload)
}

/// [`verify`] for any signed payload type (desired state, commands).
pub fn verify_as<T: serde::de::DeserializeOwned>(
    trusted: &VerifyingKey,
    payload: &[u8],
) -> Result<T, SignatureError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty.into());
    }
    if payload.len() > crate::MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(payload.len()).into());
    }
    let envelope: EnvelopeIn = serde_json::from_slice(payload).map_err(DecodeError::Json)?;
    let (Some(found), Some(signature), Some(document)) =
        (envelope.key_id, envelope.signature, envelope.document)
    else {
        return Err(SignatureError::Unsigned);
    };
    let trusted_id = key_id(trusted);
    if found != trusted_id {
        return Err(SignatureError::UnknownKey {
            found,
            trusted: trusted_id,
        });
    }
    let signature = B64
        .decode(signature.trim())
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(SignatureError::BadSignature)?;
    trusted
        .verify(document.get().as_bytes(), &signature)
        .map_err(|_| SignatureError::BadSignature)?;
    Ok(codec::decode(document.get().as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn signer(seed: u8) -> DocumentSigner {
        DocumentSigner::from_secret(&[seed; 32])
    }

    fn doc(revision: u64) -> DesiredState {
        DesiredState::new("press-07", revision, BTreeMap::new())
    }

    #[test]
    fn signed_len_is_the_exact_size_of_a_signed_document() {
        for seed in [1, 2, 9] {
            let s = signer(seed);
            for d in [doc(1), doc(u64::MAX)] {
                let document = codec::encode(&d);
                assert_eq!(signed_len(document.len()), s.sign(&d).len());
            }
        }
    }

    #[test]
    fn signed_documents_verify_and_round_trip() {
        let s = signer(1);
        let original = doc(3);
        let got = verify(&s.verifying_key(), &s.sign(&original)).unwrap();
        assert_eq!(got, original);
        let key = parse_public_key(&s.public_key_text()).unwrap();
        assert_eq!(key, s.verifying_key());
    }

    #[test]
    fn refuses_unsigned_forged_altered_and_foreign_key() {
        let s = signer(1);
        let trusted = s.verifying_key();
        // A bare document, as published before signing existed.
        let bare = codec::encode(&doc(3));
        assert!(matches!(
            verify(&trusted, &bare),
            Err(SignatureError::Unsigned)
        ));
        // Signed by another key that claims our key id.
        let forger = signer(2);
        let forged = String::from_utf8(forger.sign(&doc(3)))
            .unwrap()
            .replace(forger.key_id(), s.key_id());
        assert!(matches!(
            verify(&trusted, forged.as_bytes()),
            Err(SignatureError::BadSignature)
        ));
        // Signed by another key, honestly named.
        assert!(matches!(
            verify(&trusted, &forger.sign(&doc(3))),
            Err(SignatureError::UnknownKey { .. })
        ));
        // Our signature, document altered afterwards.
        let altered = String::from_utf8(s.sign(&doc(3)))
            .unwrap()
            .replace("\"revision\":3", "\"revision\":4");
        assert!(matches!(
            verify(&trusted, altered.as_bytes()),
            Err(SignatureError::BadSignature)
        ));
        // Garbage signature, garbage JSON.
        let garbage = String::from_utf8(s.sign(&doc(3))).unwrap();
        let sig_start = garbage.find("\"signature\":\"").unwrap() + 13;
        let mut bad = garbage.clone();
        bad.replace_range(sig_start..sig_start + 4, "!!!!");
        assert!(verify(&trusted, bad.as_bytes()).unwrap_err().is_security());
        assert!(!verify(&trusted, b"{nope").unwrap_err().is_security());
        assert!(!verify(&trusted, b"").unwrap_err().is_security());
    }

    #[test]
    fn the_signature_covers_the_exact_bytes() {
        // Whitespace changes inside the document break the signature: nothing is
        // re-serialized before verification.
        let s = signer(1);
        let payload = String::from_utf8(s.sign(&doc(3))).unwrap();
        let spaced = payload.replace("\"revision\":3", "\"revision\": 3");
        assert!(matches!(
            verify(&s.verifying_key(), spaced.as_bytes()),
            Err(SignatureError::BadSignature)
        ));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", signer(7));
        assert!(shown.contains("key_id"));
        assert!(!shown.contains("[7, 7"));
    }

    #[test]
    fn parse_public_key_says_what_is_wrong() {
        assert!(parse_public_key("???").unwrap_err().contains("base64"));
        assert!(parse_public_key("AAAA").unwrap_err().contains("32 bytes"));
    }
}
