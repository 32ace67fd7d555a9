//! Identifiers that end up inside topic names or container names: device ids, stack and
//! service names. Anything that could break a topic (`/`, `+`, `#`, NUL) or a Docker name is
//! refused here, before it reaches the bus or the engine.

use thiserror::Error;

/// Why an identifier was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} '{value}' is longer than {max} characters")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "{what} '{value}' contains '{ch}': use only letters, digits, '-', '_' and '.' (not first)"
    )]
    BadChar {
        what: &'static str,
        value: String,
        ch: char,
    },
}

/// Maximum length of a device id.
pub const MAX_DEVICE_ID: usize = 64;
/// Maximum length of a stack (deployment) or service name.
pub const MAX_NAME: usize = 63;

fn check(what: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.chars().count() > max {
        return Err(IdError::TooLong {
            what,
            value: value.to_owned(),
            max,
        });
    }
    for (i, ch) in value.chars().enumerate() {
        let ok = ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || (ch == '.' && i > 0);
        if !ok {
            return Err(IdError::BadChar {
                what,
                value: value.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

/// Validates a device id (`press-07`, `lyon.line3.cam-2`).
pub fn validate_device_id(id: &str) -> Result<(), IdError> {
    check("device id", id, MAX_DEVICE_ID)
}

/// Validates a deployment/stack name.
pub fn validate_stack_name(name: &str) -> Result<(), IdError> {
    check("deployment name", name, MAX_NAME)
}

/// Validates a Compose service name.
pub fn validate_service_name(name: &str) -> Result<(), IdError> {
    check("service name", name, MAX_NAME)
}

/// Validates a label key or value used for targeting (`site=lyon`).
pub fn validate_label(key: &str, value: &str) -> Result<(), IdError> {
    check("label key", key, MAX_NAME)?;
    check("label value", value, MAX_NAME)
}

/// A short, stable hash (8 hex chars) of several identifiers, for Docker object names built
/// from them. Ids may contain `-`, so `ef-a-b-c` alone would not tell device `a-b` + stack
/// `c` from device `a` + stack `b-c`; the suffix does.
pub fn names_hash(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hash_separates_ambiguous_joins() {
        assert_ne!(names_hash(&["a-b", "c"]), names_hash(&["a", "b-c"]));
        assert_eq!(names_hash(&["a", "b"]), names_hash(&["a", "b"]));
        assert_eq!(names_hash(&["a"]).len(), 8);
    }

    #[test]
    fn accepts_plant_style_ids() {
        for id in ["press-07", "lyon.line3.cam_2", "A1"] {
            assert_eq!(validate_device_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn refuses_topic_breaking_ids() {
        for id in ["", "a/b", "+", "#", ".hidden", "a b", "é"] {
            assert!(validate_device_id(id).is_err(), "{id:?} should be refused");
        }
        assert!(validate_device_id(&"x".repeat(65)).is_err());
    }
}
