//! Request bodies and query strings of the admin API, read so that every failure is problem
//! JSON naming the field (docs/contract.md §6). axum's own `Json` and `Query` answer plain text and lose
//! the field, hence these. A body failure is classified by [`crate::error::json_body`] (shared
//! with the public port's code redemption).
//!
//! The body is read as JSON whatever its `Content-Type` (`curl -d` without `-H` works, and
//! `application/merge-patch+json` needs no special case); the admin port is never reached by
//! browsers and needs a bearer token, so there is no cross-site form to guard against.

use std::borrow::Cow;
use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::error::json_body::{from_value, not_an_object, parse};
use crate::error::{ApiError, FieldError, problem};

/// A JSON request body of type `T`; failures are 400/422 problem answers naming the field.
pub struct AdminJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AdminJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = read_body(req, state).await?;
        parse(&bytes).map(AdminJson).map_err(IntoResponse::into_response)
    }
}

/// Like [`AdminJson`], but an empty body means `T::default()` (`PUT` with optional fields).
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse(&bytes).map(OptionalJson).map_err(IntoResponse::into_response)
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Response> {
    // Keeps axum's status (413 over the body limit), in our problem format.
    Bytes::from_request(req, state).await.map_err(|e| problem(e.status(), Some(&e.body_text()), &[]))
}

/// Applies a JSON merge patch (RFC 7396) to the writable form of a resource and reads the
/// result back as that form.
///
/// - The patch must be a JSON object (anything else would replace the whole resource) → 400;
///   [`AdminJson`] already refuses anything else.
/// - `not_null` lists the fields that cannot be cleared: `null` for one of them is 422 (a
///   merge patch's `null` means "remove", which would otherwise silently reset the field to
///   its default).
/// - Unknown fields and wrong types fail as in a create body (400, field named).
pub fn merge_patch<T: Serialize + DeserializeOwned>(
    current: &T,
    patch: &Value,
    not_null: &[&str],
) -> Result<T, ApiError> {
    let Value::Object(fields) = patch else {
        return Err(not_an_object());
    };
    let nulls: Vec<FieldError> = not_null
        .iter()
        .filter(|name| fields.get(**name).is_some_and(Value::is_null))
        .map(|name| FieldError::new(*name, "cannot be null"))
        .collect();
    if !nulls.is_empty() {
        return Err(ApiError::Unprocessable(nulls));
    }
    let mut target = serde_json::to_value(current).map_err(|e| ApiError::Internal(e.into()))?;
    apply_merge_patch(&mut target, patch);
    from_value(target)
}

/// The OpenAPI schema of a JSON merge patch of `T` (the writable form of a resource): `T`'s
/// schema with no field required. A field `T` does not make nullable is one the handler's
/// `not_null` list refuses to clear (422), so `null` breaks the schema where it breaks the rule.
pub struct Patch<T>(PhantomData<T>);

impl<T: ToSchema> PartialSchema for Patch<T> {
    fn schema() -> RefOr<Schema> {
        let mut schema = T::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.required.clear();
            object.description = Some(format!(
                "A JSON merge patch (RFC 7396) of `{}`: the fields to change; `null` clears a \
                 nullable field.",
                T::name()
            ));
        }
        schema
    }
}

impl<T: ToSchema> ToSchema for Patch<T> {
    fn name() -> Cow<'static, str> {
        let name = T::name();
        format!("{}Patch", name.strip_prefix("New").unwrap_or(&name)).into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        T::schemas(schemas);
    }
}

/// RFC 7396 §2, as written there.
fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (name, value) in patch {
        if value.is_null() {
            target.remove(name);
        } else {
            apply_merge_patch(target.entry(name.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The query string as name/value pairs, read field by field so that a bad or unknown
/// parameter is answered with its name: a value of the wrong form (`limit=abc`) → 400, a value
/// out of range → 422, a parameter the endpoint does not know (`?organisation=`) → 400.
pub struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest { detail: e.body_text(), errors: vec![] })?;
        Ok(Params(pairs))
    }
}

/// Default and largest page size of list endpoints.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// `?limit=&offset=` of a list endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size.
    // DEFAULT_LIMIT and MAX_LIMIT (the attribute takes literals; a test keeps them in step).
    #[param(required = false, minimum = 1, maximum = 1000, default = 100)]
    pub limit: u32,
    /// Rows to skip.
    #[param(required = false, default = 0, maximum = 4294967295_u64)]
    pub offset: u32,
}

impl Params {
    /// Takes the parameter `name` out (400 if it is given twice).
    pub fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut found = None;
        let mut twice = false;
        self.0.retain(|(k, v)| {
            if k != name {
                return true;
            }
            twice |= found.is_some();
            found = Some(v.clone());
            false
        });
        if twice {
            return Err(bad_param(name, "is given more than once"));
        }
        Ok(found)
    }

    /// Whether the parameter `name` is given (not taken yet).
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// A non-negative integer parameter (`N` is an unsigned type, or `i64` for row ids).
    pub fn number<N: std::str::FromStr + Default + PartialOrd>(
        &mut self,
        name: &str,
    ) -> Result<Option<N>, ApiError> {
        self.string(name)?
            .map(|v| match v.parse::<N>() {
                Ok(n) if n >= N::default() => Ok(n),
                _ => Err(bad_param(name, "must be a non-negative integer")),
            })
            .transpose()
    }

    /// A `true`/`false` parameter.
    pub fn boolean(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        self.string(name)?
            .map(|v| match v.as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad_param(name, "must be true or false")),
            })
            .transpose()
    }

    /// `limit` (default 100, 1 to 1000) and `offset` (default 0).
    pub fn page(&mut self) -> Result<PageQuery, ApiError> {
        let limit = self.limit()?;
        let offset = self.number("offset")?.unwrap_or(0);
        Ok(PageQuery { limit, offset })
    }

    /// `limit` alone (default 100, 1 to 1000), for lists that page by cursor.
    pub fn limit(&mut self) -> Result<u32, ApiError> {
        let limit: u32 = self.number("limit")?.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::Unprocessable(vec![FieldError::new(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            )]));
        }
        Ok(limit)
    }

    /// Fails on any parameter not taken yet: the endpoint does not know it.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((name, _)) => Err(ApiError::BadRequest {
                detail: format!("Unknown query parameter `{name}`."),
                errors: vec![FieldError::new(name.clone(), "unknown parameter")],
            }),
        }
    }
}

/// 400 naming the query parameter `name`: "Query parameter `name` <detail>."
pub(super) fn bad_param(name: &str, detail: &str) -> ApiError {
    ApiError::BadRequest {
        detail: format!("Query parameter `{name}` {detail}."),
        errors: vec![FieldError::new(name, detail)],
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Thing {
        name: String,
        #[serde(default)]
        note: Option<String>,
        kind: Kind,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Big,
    }

    fn fields(e: &ApiError) -> Vec<(String, &'static str)> {
        let (kind, errors) = match e {
            ApiError::BadRequest { errors, .. } => ("400", errors),
            ApiError::Unprocessable(errors) => ("422", errors),
            other => panic!("unexpected {other:?}"),
        };
        errors.iter().map(|f| (f.field.clone(), kind)).collect()
    }

    #[test]
    fn failures_name_the_field_and_separate_types_from_rules() {
        let err = |body: &str| parse::<Thing>(body.as_bytes()).unwrap_err();
        assert_eq!(fields(&err(r#"{"name": 1, "kind": "big"}"#)), [("name".into(), "400")]);
        assert_eq!(fields(&err(r#"{"name": "n", "kind": "big", "nmae": 1}"#)), [("nmae".into(), "400")]);
        assert_eq!(fields(&err(r#"{"kind": "big"}"#)), [("name".into(), "422")]);
        assert_eq!(fields(&err(r#"{"name": "n", "kind": "small"}"#)), [("kind".into(), "422")]);
        assert_eq!(fields(&err(r#"["n", "big"]"#)), [("body".into(), "400")]);
        assert!(matches!(err(r#"{"name": "#), ApiError::BadRequest { errors, .. } if errors.is_empty()));
        assert!(matches!(err(r#"{"name": "n", "kind": "big"} x"#), ApiError::BadRequest { .. }));
    }

    #[test]
    fn a_merge_patch_changes_given_fields_clears_nulls_and_refuses_null_for_required_ones() {
        let current = Thing { name: "a".into(), note: Some("n".into()), kind: Kind::Big };
        let patched: Thing = merge_patch(&current, &json!({"note": null}), &["name"]).unwrap();
        assert_eq!(patched, Thing { name: "a".into(), note: None, kind: Kind::Big });
        let patched: Thing = merge_patch(&current, &json!({"name": "b"}), &["name"]).unwrap();
        assert_eq!(patched.note.as_deref(), Some("n"));
        let err = merge_patch(&current, &json!({"name": null}), &["name"]).unwrap_err();
        assert_eq!(fields(&err), [("name".into(), "422")]);
        let err = merge_patch(&current, &json!({"colour": "red"}), &["name"]).unwrap_err();
        assert_eq!(fields(&err), [("colour".into(), "400")]);
        let err = merge_patch(&current, &json!(["name"]), &["name"]).unwrap_err();
        assert_eq!(fields(&err), [("body".into(), "400")]);
    }

    #[test]
    fn query_parameters_are_checked_by_name() {
        let mut p = Params(vec![("limit".into(), "abc".into())]);
        assert_eq!(fields(&p.page().unwrap_err()), [("limit".into(), "400")]);
        let mut p = Params(vec![("limit".into(), "5000".into())]);
        assert_eq!(fields(&p.page().unwrap_err()), [("limit".into(), "422")]);
        let mut p = Params(vec![("offset".into(), "5".into()), ("organisation".into(), "x".into())]);
        assert_eq!(p.page().unwrap(), PageQuery { limit: 100, offset: 5 });
        assert_eq!(fields(&p.finish().unwrap_err()), [("organisation".into(), "400")]);
        let mut p = Params(vec![("force".into(), "true".into()), ("force".into(), "false".into())]);
        assert!(p.boolean("force").is_err());
    }
}
