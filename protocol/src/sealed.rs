//! Values sealed for one recipient key: the content of Compose secrets and registry
//! credentials, as they sit in the gateway's store and travel in a device's desired document.
//!
//! HPKE (RFC 9180) in base mode through the `hpke` crate: DHKEM(P-256, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305. P-256 because a device's enrolled key is the P-256 key of
//! its client certificate: the gateway seals for the public key in the certificate it issued,
//! and only the device, holding `identity/key.pem`, opens. The `info` string binds a value to
//! what it is (device, stack, name), so a sealed value moved to another name or device does
//! not open.
//!
//! A [`Sealed`] value never shows its plaintext: its `Debug` prints the recipient key only.
//! Opened values come back as [`Plain`], whose `Debug` is redacted and whose memory is wiped
//! when dropped.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::DhP256HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

type Kem = DhP256HkdfSha256;
type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type PublicKey = <Kem as hpke::Kem>::PublicKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// Largest plaintext sealed (a secret file, a credential): 64 KiB, as Docker Swarm's limit
/// for a secret; a desired document has 256 KiB in all.
pub const MAX_PLAINTEXT: usize = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SealError {
    #[error("not a P-256 public key (65-byte uncompressed SEC1 point expected)")]
    PublicKey,
    #[error("not a P-256 private key")]
    PrivateKey,
    #[error("the value is {0} bytes, above the {max}-byte limit", max = MAX_PLAINTEXT)]
    TooLarge(usize),
    #[error("sealed for key {sealed_for}, not for this key ({ours})")]
    OtherKey { sealed_for: String, ours: String },
    #[error("the sealed value is malformed: {0}")]
    Malformed(&'static str),
    #[error("the sealed value does not open with this key (altered, or sealed for another name)")]
    Open,
    #[error("cannot seal: {0}")]
    Seal(String),
}

/// A value sealed for one key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// [`key_id`] of the recipient's public key.
    pub key: String,
    /// The encapsulated key (base64).
    pub enc: String,
    /// The ciphertext with its tag (base64).
    pub ct: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed(for key {})", self.key)
    }
}

/// An opened value: redacted in `Debug`, wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Plain(Vec<u8>);

impl Plain {
    pub fn new(bytes: Vec<u8>) -> Self {
        Plain(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        // Best effort without `unsafe`: overwrite before the allocation is freed.
        for b in self.0.iter_mut() {
            *b = 0;
        }
        std::hint::black_box(&self.0);
    }
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plain(<{} bytes redacted>)", self.0.len())
    }
}

/// Short id of a public key (SEC1 bytes): the first 8 bytes of its SHA-256, hex.
pub fn key_id(public_sec1: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_sec1)[..8])
}

/// A key values are sealed for.
#[derive(Clone)]
pub struct SealingKey {
    public: PublicKey,
    id: String,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", self.id)
    }
}

impl SealingKey {
    /// From an uncompressed SEC1 point (the subject public key of a P-256 certificate).
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, SealError> {
        let public = PublicKey::from_bytes(bytes).map_err(|_| SealError::PublicKey)?;
        Ok(SealingKey {
            public,
            id: key_id(bytes),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The uncompressed SEC1 point.
    pub fn to_sec1(&self) -> Vec<u8> {
        self.public.to_bytes().to_vec()
    }

    /// Seals `plaintext`, bound to `info` (what the value is).
    pub fn seal(&self, info: &str, plaintext: &[u8]) -> Result<Sealed, SealError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SealError::TooLarge(plaintext.len()));
        }
        let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeS::Base,
            &self.public,
            info.as_bytes(),
            plaintext,
            b"",
        )
        .map_err(|e| SealError::Seal(e.to_string()))?;
        Ok(Sealed {
            key: self.id.clone(),
            enc: B64.encode(enc.to_bytes()),
            ct: B64.encode(ct),
        })
    }
}

/// The private half: opens what was sealed for its public key.
pub struct OpeningKey {
    private: PrivateKey,
    public: SealingKey,
}

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpeningKey({})", self.public.id)
    }
}

impl OpeningKey {
    /// A new random key (the gateway's key for values at rest).
    pub fn generate() -> Self {
        let (private, public) = Kem::gen_keypair();
        let sec1 = public.to_bytes().to_vec();
        OpeningKey {
            private,
            public: SealingKey {
                id: key_id(&sec1),
                public,
            },
        }
    }

    /// From the 32-byte big-endian scalar (a P-256 private key).
    pub fn from_scalar(scalar: &[u8]) -> Result<Self, SealError> {
        let private = PrivateKey::from_bytes(scalar).map_err(|_| SealError::PrivateKey)?;
        let public = Kem::sk_to_pk(&private);
        let sec1 = public.to_bytes().to_vec();
        Ok(OpeningKey {
            private,
            public: SealingKey {
                id: key_id(&sec1),
                public,
            },
        })
    }

    /// The scalar, for the key file.
    pub fn to_scalar(&self) -> Plain {
        Plain(self.private.to_bytes().to_vec())
    }

    pub fn sealing_key(&self) -> &SealingKey {
        &self.public
    }

    /// Opens a value sealed for this key under the same `info`.
    pub fn open(&self, info: &str, sealed: &Sealed) -> Result<Plain, SealError> {
        if sealed.key != self.public.id {
            return Err(SealError::OtherKey {
                sealed_for: sealed.key.clone(),
                ours: self.public.id.clone(),
            });
        }
        if sealed.ct.len() > MAX_PLAINTEXT * 2 {
            return Err(SealError::Malformed("ciphertext too long"));
        }
        let enc = B64
            .decode(&sealed.enc)
            .map_err(|_| SealError::Malformed("enc is not base64"))?;
        let enc =
            EncappedKey::from_bytes(&enc).map_err(|_| SealError::Malformed("enc is not a key"))?;
        let ct = B64
            .decode(&sealed.ct)
            .map_err(|_| SealError::Malformed("ct is not base64"))?;
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &self.private,
            &enc,
            info.as_bytes(),
            &ct,
            b"",
        )
        .map(Plain)
        .map_err(|_| SealError::Open)
    }
}

/// The `info` a Compose secret is sealed under for a device: it opens only as that secret of
/// that stack on that device.
pub fn secret_info(device: &str, stack: &str, name: &str) -> String {
    format!("edgefleet/v1 secret {device}/{stack}/{name}")
}

/// The `info` a registry credential is sealed under for a device.
pub fn registry_info(device: &str, host: &str) -> String {
    format!("edgefleet/v1 registry {device}/{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_info() {
        let device = OpeningKey::generate();
        let other = OpeningKey::generate();
        let info = secret_info("press-07", "hist", "db_password");
        let sealed = device.sealing_key().seal(&info, b"hunter2").unwrap();
        assert_eq!(device.open(&info, &sealed).unwrap().bytes(), b"hunter2");
        assert!(!format!("{sealed:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&sealed).unwrap().contains("hunter2"));
        assert!(matches!(
            other.open(&info, &sealed),
            Err(SealError::OtherKey { .. })
        ));
        // Moved to another name or device: refused.
        let moved = secret_info("press-08", "hist", "db_password");
        assert_eq!(device.open(&moved, &sealed), Err(SealError::Open));
        // Tampered with: refused, no panic.
        let mut bad = sealed.clone();
        bad.ct = B64.encode(b"garbage that is not a ciphertext");
        assert_eq!(device.open(&info, &bad), Err(SealError::Open));
        bad.enc = "!!".into();
        assert!(matches!(
            device.open(&info, &bad),
            Err(SealError::Malformed(_))
        ));
        // Two seals of one value differ (fresh ephemeral key each time).
        let again = device.sealing_key().seal(&info, b"hunter2").unwrap();
        assert_ne!(again.ct, sealed.ct);
    }

    #[test]
    fn keys_round_trip_through_their_bytes() {
        let k = OpeningKey::generate();
        let back = OpeningKey::from_scalar(k.to_scalar().bytes()).unwrap();
        assert_eq!(back.sealing_key().id(), k.sealing_key().id());
        let public = SealingKey::from_sec1(&k.sealing_key().to_sec1()).unwrap();
        let info = registry_info("d", "registry.plant.local");
        let sealed = public.seal(&info, b"u:p").unwrap();
        assert_eq!(back.open(&info, &sealed).unwrap().bytes(), b"u:p");
        assert_eq!(
            SealingKey::from_sec1(&[4; 10]).unwrap_err(),
            SealError::PublicKey
        );
        assert_eq!(
            OpeningKey::from_scalar(&[0; 32]).unwrap_err(),
            SealError::PrivateKey
        );
        assert!(matches!(
            public.seal(&info, &vec![0; MAX_PLAINTEXT + 1]),
            Err(SealError::TooLarge(_))
        ));
        assert!(!format!("{:?}", k.to_scalar()).contains(&hex::encode(k.to_scalar().bytes())));
    }
}
