//! Validation of memory input: which texts, names and metadata both databases can store.

use serde_json::Value;

/// Why a piece of memory input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    pub field: String,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Longest author, participant or title, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A string both databases can store: PostgreSQL refuses NUL in `text` and `jsonb`.
pub fn check_text(field: &str, text: &str) -> Result<(), InvalidInput> {
    if text.contains('\0') {
        return Err(InvalidInput::new(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// A short, non-empty name (author, participant).
pub fn check_name(field: &str, name: &str) -> Result<(), InvalidInput> {
    check_text(field, name)?;
    if name.trim().is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(InvalidInput::new(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Metadata: a JSON object with no NUL anywhere in its keys or strings.
pub fn check_metadata(field: &str, metadata: &Value) -> Result<(), InvalidInput> {
    if !metadata.is_object() {
        return Err(InvalidInput::new(field, "must be a JSON object"));
    }
    fn walk(value: &Value) -> bool {
        match value {
            Value::String(s) => !s.contains('\0'),
            Value::Array(items) => items.iter().all(walk),
            Value::Object(map) => map.iter().all(|(k, v)| !k.contains('\0') && walk(v)),
            _ => true,
        }
    }
    if !walk(metadata) {
        return Err(InvalidInput::new(field, "must not contain NUL characters"));
    }
    Ok(())
}
