//! JSON request bodies read so that every failure is problem JSON naming the field
//! (docs/contract.md §6): axum's own `Json` answers plain text and loses the field. Used by the
//! admin API's body extractors ([`crate::admin::extract`]) and by the public port's code
//! redemption, so both classify a bad body the same way:
//!
//! - not JSON at all (syntax, truncated) → 400;
//! - JSON that is not an object → 400, field `body`;
//! - a value of the wrong JSON type (`"name": 1`) → 400, field named;
//! - a field the resource does not have → 400, field named (a typo must not be ignored);
//! - a required field missing → 422, field named;
//! - a value of the right type that breaks a rule (`"membership_type": "sometimes"`, a
//!   `keycloak_id` that is not a UUID, a date that is not `YYYY-MM-DD`) → 422, field named.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ApiError, FieldError};

/// Parses a JSON object into `T`, classifying failures as the module docs say.
///
/// The body must be an object: serde would otherwise fill a struct from an array by position
/// (`["acme", "Acme"]` as an organization), which no client means.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| classify(".", e))?;
    if !value.is_object() {
        return Err(not_an_object());
    }
    from_value(value)
}

/// The answer to a body that is JSON but not an object: 400 naming `body`.
pub fn not_an_object() -> ApiError {
    ApiError::BadRequest {
        detail: "The body must be a JSON object.".into(),
        errors: vec![FieldError::new("body", "must be a JSON object")],
    }
}

/// Deserializes an already parsed JSON value into `T` (a merge-patched document).
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        classify(&path, e.into_inner())
    })
}

/// Maps a serde error at `path` (serde_path_to_error's form: `.` for the root, `a.b` below it)
/// to a 400 or 422 answer.
fn classify(path: &str, error: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = without_location(&error);
    if !matches!(error.classify(), Category::Data) {
        return ApiError::BadRequest {
            detail: format!("The body is not valid JSON: {message}."),
            errors: vec![],
        };
    }
    let field = |name: Option<&str>| {
        let parent = if path == "." { "" } else { path };
        match name {
            // serde_path_to_error may or may not have pushed the key itself already.
            Some(name) if parent.is_empty() || parent == name || parent.ends_with(&format!(".{name}")) => {
                if parent.is_empty() {
                    name.to_owned()
                } else {
                    parent.to_owned()
                }
            }
            Some(name) => format!("{parent}.{name}"),
            None if parent.is_empty() => "body".to_owned(),
            None => parent.to_owned(),
        }
    };
    if let Some(name) = quoted_after(&message, "unknown field `") {
        return ApiError::BadRequest {
            detail: format!("Unknown field `{name}`."),
            errors: vec![FieldError::new(field(Some(name)), "unknown field")],
        };
    }
    if let Some(name) = quoted_after(&message, "missing field `") {
        return ApiError::Unprocessable(vec![FieldError::new(field(Some(name)), "is required")]);
    }
    if message.starts_with("invalid type:") {
        let field = field(None);
        return ApiError::BadRequest {
            detail: format!("`{field}` has the wrong JSON type."),
            errors: vec![FieldError::new(field, message)],
        };
    }
    ApiError::Unprocessable(vec![FieldError::new(field(None), message)])
}

/// serde_json's message without its ` at line L column C` suffix.
fn without_location(error: &serde_json::Error) -> String {
    let text = error.to_string();
    if error.line() == 0 {
        return text;
    }
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).map(str::to_owned).unwrap_or(text)
}

/// The text between `prefix` and the next backtick, when the message starts with `prefix`.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}
