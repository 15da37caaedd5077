//! Field-level validation errors and the decoder that names the field at fault.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A field that failed validation: its JSON path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The JSON path of the field (`attestation.symmetricKey.primaryKey`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FieldError {
    /// A field error for `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

/// Decodes `value` as `T`; a wrong type, a missing or an unknown field is reported with its JSON path.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(body)".to_owned() } else { path };
        FieldError::new(field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        weight: u32,
    }

    #[test]
    fn the_path_of_the_bad_field_is_reported() {
        let err = decode::<Outer>(serde_json::json!({"inner": {"weight": "heavy"}})).unwrap_err();
        assert_eq!(err.field, "inner.weight");
        let err = decode::<Outer>(serde_json::json!([])).unwrap_err();
        assert_eq!(err.field, "(body)");
    }
}
