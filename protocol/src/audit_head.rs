//! The audit log's signed head: the controller's statement "the audit chain, verified, ended at
//! record `seq` whose hash is `hash`, at time `ts`", signed with its ed25519 key (the one that
//! signs desired documents, whose public half every agent and integrator already has).
//!
//! The hash chain alone cannot show that its newest records were cut off, or that the whole
//! chain was recomputed by someone who can write the store file. A signed head saved outside
//! the gateway can: a later chain must still hold record `seq` with exactly `hash`. The
//! controller publishes it retained on [`crate::topics::audit_head`]; `edgefleet audit head`
//! fetches it from the API; `edgefleet audit verify --against FILE` checks a saved one.
//!
//! The document is flat JSON, and the signature covers a statement built from its fields, not
//! its bytes, so a saved head survives pretty-printing or `jq`:
//!
//! ```json
//! {"schema":1,"kind":"audit_head","seq":42,"hash":"9f…","ts":"2026-11-27T09:14:05.871Z","key_id":"3f2a…","signature":"<base64>"}
//! ```
//!
//! The statement starts with the tag `edgefleet-audit-head-v1`, never with `{`: a signature
//! over a desired document or a command (which covers JSON bytes) can never verify as a head,
//! nor a head's as a document.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::codec::{self, DecodeError};
use crate::signing::{DocumentSigner, VerifyingKey, key_id, verify_statement};

/// The `kind` of a signed audit head.
pub const KIND: &str = "audit_head";

/// Tag the signed statement starts with.
const TAG: &str = "edgefleet-audit-head-v1";

/// A signed audit head, as published and as saved by an operator or integrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAuditHead {
    pub schema: u32,
    /// Always [`KIND`].
    pub kind: String,
    /// The newest record's sequence number (0: an empty log).
    pub seq: u64,
    /// That record's chain hash (64 hex digits; the genesis hash for an empty log).
    pub hash: String,
    /// When the controller verified the chain up to `seq` and signed this.
    pub ts: String,
    /// First 16 hex digits of SHA-256 of the signing public key.
    pub key_id: String,
    /// base64 ed25519 signature over the statement made of `seq`, `hash` and `ts`.
    pub signature: String,
}

/// Why a saved or received head is not accepted.
#[derive(Debug, Error)]
pub enum HeadError {
    #[error("not a signed audit head: {0}")]
    Decode(#[from] DecodeError),
    #[error("not a signed audit head: its kind is '{0}', expected '{KIND}'")]
    NotAHead(String),
    #[error("not a signed audit head: {0}")]
    Malformed(&'static str),
    #[error(
        "the head is signed by key {found}, not by the trusted controller key {trusted}: it comes from another gateway, or this gateway's key was replaced since it was saved (compare with the key you pinned; give it with --key)"
    )]
    UnknownKey { found: String, trusted: String },
    #[error(
        "the head's signature does not match its seq, hash and ts: it was forged or altered after it was signed"
    )]
    BadSignature,
}

/// The signed bytes: the tag and each field as `<byte length>:<bytes>\n` (as the chain hash
/// encodes records), so no two heads make the same statement.
fn statement(seq: u64, hash: &str, ts: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for field in [TAG, &seq.to_string(), hash, ts] {
        out.extend_from_slice(format!("{}:", field.len()).as_bytes());
        out.extend_from_slice(field.as_bytes());
        out.push(b'\n');
    }
    out
}

fn is_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl SignedAuditHead {
    /// Signs the head `(seq, hash)` at `ts`.
    pub fn sign(signer: &DocumentSigner, seq: u64, hash: &str, ts: String) -> Self {
        SignedAuditHead {
            schema: crate::SCHEMA_VERSION,
            kind: KIND.to_owned(),
            seq,
            hash: hash.to_owned(),
            signature: signer.sign_statement(&statement(seq, hash, &ts)),
            ts,
            key_id: signer.key_id().to_owned(),
        }
    }

    /// The payload to publish (compact JSON).
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }
}

/// Decodes a head (size limit, JSON, schema) and checks it against the trusted key. Nothing
/// but its shape is looked at before the signature has been checked.
pub fn verify(trusted: &VerifyingKey, payload: &[u8]) -> Result<SignedAuditHead, HeadError> {
    let head: SignedAuditHead = codec::decode(payload)?;
    if head.kind != KIND {
        return Err(HeadError::NotAHead(head.kind));
    }
    if !is_hash(&head.hash) {
        return Err(HeadError::Malformed(
            "its hash is not 64 lowercase hex digits",
        ));
    }
    let trusted_id = key_id(trusted);
    if head.key_id != trusted_id {
        return Err(HeadError::UnknownKey {
            found: head.key_id,
            trusted: trusted_id,
        });
    }
    if !verify_statement(
        trusted,
        &statement(head.seq, &head.hash, &head.ts),
        &head.signature,
    ) {
        return Err(HeadError::BadSignature);
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::DesiredState;

    fn signer(seed: u8) -> DocumentSigner {
        DocumentSigner::from_secret(&[seed; 32])
    }

    const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn a_signed_head_verifies_also_reformatted() {
        let s = signer(1);
        let head = SignedAuditHead::sign(&s, 42, H, "2026-11-27T09:14:05.871Z".into());
        let got = verify(&s.verifying_key(), &head.encode()).unwrap();
        assert_eq!(got, head);
        // Pretty-printed (as `jq` or an editor would save it): still the same statement.
        let pretty = serde_json::to_vec_pretty(&head).unwrap();
        assert_eq!(verify(&s.verifying_key(), &pretty).unwrap(), head);
    }

    #[test]
    fn altered_forged_foreign_and_malformed_heads_are_refused() {
        let s = signer(1);
        let trusted = s.verifying_key();
        let head = SignedAuditHead::sign(&s, 42, H, "2026-11-27T09:14:05.871Z".into());
        let mut later = head.clone();
        later.seq = 41;
        assert!(matches!(
            verify(&trusted, &later.encode()),
            Err(HeadError::BadSignature)
        ));
        let mut other_hash = head.clone();
        other_hash.hash = H.replace('9', "8");
        assert!(matches!(
            verify(&trusted, &other_hash.encode()),
            Err(HeadError::BadSignature)
        ));
        let mut moved = head.clone();
        moved.ts = "2027-01-01T00:00:00.000Z".into();
        assert!(matches!(
            verify(&trusted, &moved.encode()),
            Err(HeadError::BadSignature)
        ));
        // Another key claiming ours, and another key honestly named.
        let mut forged = SignedAuditHead::sign(&signer(2), 42, H, head.ts.clone());
        assert!(matches!(
            verify(&trusted, &forged.encode()),
            Err(HeadError::UnknownKey { .. })
        ));
        forged.key_id = head.key_id.clone();
        assert!(matches!(
            verify(&trusted, &forged.encode()),
            Err(HeadError::BadSignature)
        ));
        let mut garbage = head.clone();
        garbage.signature = "!!!!".into();
        assert!(matches!(
            verify(&trusted, &garbage.encode()),
            Err(HeadError::BadSignature)
        ));
        let mut upper = head.clone();
        upper.hash = H.to_uppercase();
        assert!(matches!(
            verify(&trusted, &upper.encode()),
            Err(HeadError::Malformed(_))
        ));
        let mut kind = head.clone();
        kind.kind = "desired".into();
        assert!(matches!(
            verify(&trusted, &kind.encode()),
            Err(HeadError::NotAHead(_))
        ));
        for bad in [&b""[..], b"{nope", b"{\"schema\":1}", b"[]"] {
            assert!(matches!(verify(&trusted, bad), Err(HeadError::Decode(_))));
        }
    }

    #[test]
    fn a_head_and_a_signed_document_cannot_stand_for_each_other() {
        let s = signer(1);
        let trusted = s.verifying_key();
        let envelope = s.sign(&DesiredState::new(
            "press-07",
            3,
            std::collections::BTreeMap::new(),
        ));
        assert!(verify(&trusted, &envelope).is_err());
        let head = SignedAuditHead::sign(&s, 3, H, "2026-11-27T09:14:05.871Z".into()).encode();
        assert!(crate::signing::verify(&trusted, &head).is_err());
        // The head's signature over its statement is not a signature over any JSON document.
        assert!(statement(3, H, "t").first() != Some(&b'{'));
    }
}
