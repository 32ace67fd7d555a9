//! Decoding untrusted payloads. Every message from the bus goes through [`decode`], which
//! checks size, JSON shape and schema version and turns each failure into a sentence a person
//! can act on. Nothing here panics on input.

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::{MAX_PAYLOAD_BYTES, SCHEMA_VERSION};

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload of {0} bytes exceeds the {max} byte limit", max = MAX_PAYLOAD_BYTES)]
    TooLarge(usize),
    #[error("payload is not valid JSON for this topic: {0}")]
    Json(#[from] serde_json::Error),
    #[error("payload has no numeric \"schema\" field")]
    NoSchema,
    #[error(
        "payload schema {found} is not supported (this build speaks schema {SCHEMA_VERSION}): upgrade this component"
    )]
    Schema { found: u64 },
    #[error("payload names device '{found}' but arrived on the topic of '{expected}'")]
    WrongDevice { expected: String, found: String },
}

/// Decodes a payload: size limit, JSON, `schema` == [`SCHEMA_VERSION`], then the type.
///
/// The schema is read by a first pass that skips every other field, and the type is then
/// decoded from the bytes: no JSON value tree of the whole payload is built (at 10,000
/// devices that tree was a third of the status intake's time). A payload the first pass
/// cannot read (not JSON, not an object, a repeated field) is judged as a whole, with the
/// same errors as ever; the type is decoded from an object only.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    #[derive(serde::Deserialize)]
    struct Head {
        schema: Option<serde_json::Value>,
    }
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    // Only an object takes the first pass (a derived struct also reads a JSON array).
    let object = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let head = object
        .then(|| serde_json::from_slice::<Head>(payload).ok())
        .flatten();
    let schema = match head {
        Some(head) => head.schema,
        None => {
            let value: serde_json::Value = serde_json::from_slice(payload)?;
            value.get("schema").cloned()
        }
    };
    let schema = schema
        .and_then(|s| s.as_u64())
        .ok_or(DecodeError::NoSchema)?;
    if schema != u64::from(SCHEMA_VERSION) {
        return Err(DecodeError::Schema { found: schema });
    }
    Ok(serde_json::from_slice(payload)?)
}

/// Checks that a payload's `device` field matches the device of the topic it came on.
pub fn check_device(expected: &str, found: &str) -> Result<(), DecodeError> {
    if expected == found {
        Ok(())
    } else {
        Err(DecodeError::WrongDevice {
            expected: expected.to_owned(),
            found: found.to_owned(),
        })
    }
}

/// Encodes a payload as JSON. Our own types always serialize; the fallback is never empty,
/// since an empty payload would clear a retained topic.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::SyncRequest;

    #[test]
    fn decode_errors_say_what_is_wrong() {
        assert!(matches!(
            decode::<SyncRequest>(b""),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            decode::<SyncRequest>(b"{not json"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode::<SyncRequest>(b"{\"a\":1}"),
            Err(DecodeError::NoSchema)
        ));
        let e = decode::<SyncRequest>(br#"{"schema":9}"#).unwrap_err();
        assert!(e.to_string().contains("schema 9"), "{e}");
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            decode::<SyncRequest>(&big),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(matches!(
            decode::<SyncRequest>(br#"{"schema":1,"device":5}"#),
            Err(DecodeError::Json(_))
        ));
        // Not an object, or a schema that is not a number: judged as a whole, as before.
        for no_schema in [&b"[1]"[..], b"\"x\"", b"7", br#"{"schema":"1"}"#] {
            assert!(
                matches!(decode::<SyncRequest>(no_schema), Err(DecodeError::NoSchema)),
                "{}",
                String::from_utf8_lossy(no_schema)
            );
        }
        // A field given twice is refused, whichever value comes last.
        let twice = br#"{"schema":9,"schema":1,"device":"d","have_revision":1,"reason":"x"}"#;
        assert!(matches!(
            decode::<SyncRequest>(twice),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn round_trip() {
        let r = SyncRequest {
            schema: 1,
            device: "d".into(),
            have_revision: 3,
            reason: "x".into(),
        };
        let back: SyncRequest = decode(&encode(&r)).unwrap();
        assert_eq!(back, r);
    }
}
