//! The admin port's OpenAPI 3.1 document, served at `GET /admin/v1/openapi.json` (docs/contract.md §6).
//!
//! It is generated from the code: every handler carries `#[utoipa::path]` (path, parameters,
//! body, answers, and the errors that handler produces), and `utoipa_axum::routes!` registers a
//! handler with the router and its operation with the document in one step. A route added
//! with plain `.route(…)` would be served but undocumented; the unit test below compares what
//! the router serves with what the document lists, and `tests/api/openapi.rs` probes every
//! documented operation over HTTP.
//!
//! Some facts hold for many operations at once and are written down once, where the code
//! makes them true:
//! - every error answer is problem JSON ([`crate::error::problem`]): [`finish`] gives each
//!   4xx/5xx answer a handler lists the [`Problem`] body (handlers list the statuses and say
//!   when they happen);
//! - a body read by [`super::extract::OptionalJson`] (documented as `Option<T>`) may be absent,
//!   but is never `null`: [`finish`] makes such a body not required, with `T`'s schema;
//! - every `/admin/v1` route runs behind [`super::guard::require_admin`]: [`guarded`] adds the
//!   bearer requirement and the guard's own 401/403/503 to those operations, next to the
//!   `route_layer` that installs the guard.
//!
//! The document is behind the guard like everything under `/admin/v1`. It is not a secret, but
//! "all of `/admin/v1` needs an admin token" is one rule with no exception to remember, and
//! the admin port is internal anyway; health, readiness, metrics and the JWKS stay open.

use axum::Extension;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Required, Schema, Type};
use utoipa::{Modify, OpenApi as _};

use crate::error::{FieldError, Problem};

/// The name of the security scheme every `/admin/v1` operation requires.
const BEARER: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "identity-sidecar admin API",
        description = "The admin port of identity-sidecar (docs/contract.md §6): organizations, contracts, \
            enrollment codes, seat assignments by e-mail, users' memberships and attachments, \
            reconciliation, Keycloak sync, \
            jobs and the audit trail under `/admin/v1`, plus health, readiness, metrics and the \
            entitlement JWKS. Request bodies are JSON objects; unknown fields are refused (400) \
            and values that break a rule are 422, both naming the field in `errors`. Lists page \
            with `?limit=&offset=` and answer `{items, total, limit, offset}`. Read-only access \
            (a Keycloak token with one of `admin.read_roles`, or a static token with \
            `access = \"read\"`) may use every GET and gets 403 on any other method; it sees \
            each enrollment code as its fingerprint (the first 8 hex digits of the code's \
            SHA-256), never the code. Organization managers reach some of these operations on \
            the public port under `/_sidecar/manage/organizations/{org}` (docs/managers.md)."
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerScheme),
    tags(
        (name = "organizations", description = "B2B organizations, local or linked to Keycloak."),
        (name = "contracts", description = "What an organization's users are entitled to."),
        (name = "codes", description = "Enrollment codes of a contract."),
        (name = "assignments", description = "Seats of a contract reserved for e-mail addresses \
            (allocated, then accepted, expired or revoked)."),
        (name = "users", description = "Users, their memberships and contract attachments."),
        (name = "reconcile", description = "Admin reconciliation of users and contracts."),
        (name = "sync", description = "Import of Keycloak organizations."),
        (name = "jobs", description = "Durable background jobs."),
        (name = "audit", description = "The audit trail."),
        (name = "events", description = "Change events for other services: the feed and its delivery targets."),
        (name = "meta", description = "This document."),
        (name = "operations", description = "Health, readiness, metrics and keys (no token)."),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "Either a static admin token whose SHA-256 (lower-case hex) is listed in \
                 `admin.token_sha256`, or a Keycloak access token carrying one of \
                 `admin.required_roles` (realm role, or `client:role`). Read-only access: a \
                 static token with `access = \"read\"`, or a Keycloak token carrying one of \
                 `admin.read_roles` (and none of `admin.required_roles`).",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// The document's frame (info, tags, shared schemas, the security scheme); the routes fill in
/// the paths.
pub(super) fn base() -> OpenApi {
    ApiDoc::openapi()
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// Documents [`super::guard::require_admin`] on every operation of `api`: the bearer
/// requirement, and the answers the guard gives before a handler runs. A handler that lists
/// the same status keeps its description, with the guard's reason added.
pub(super) fn guarded(api: &mut OpenApi) {
    const GUARD: [(&str, &str); 3] = [
        (
            "401",
            "No bearer token, or one that is neither a configured static token nor a valid \
             Keycloak access token (`WWW-Authenticate` says which).",
        ),
        (
            "403",
            "A valid Keycloak access token without an admin role (`admin.required_roles` or \
             `admin.read_roles`), or read-only access on a method other than GET.",
        ),
        (
            "503",
            "The identity provider's keys are not loaded yet, so a Keycloak token cannot be \
             verified, or the database is unavailable (`Retry-After`).",
        ),
    ];
    for item in api.paths.paths.values_mut() {
        for op in operations_mut(item) {
            op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            for (status, why) in GUARD {
                match op.responses.responses.get_mut(status) {
                    Some(RefOr::T(response)) => {
                        response.description = format!("{} Or: {why}", response.description);
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        let response = utoipa::openapi::Response::new(why);
                        op.responses.responses.insert(status.to_owned(), RefOr::T(response));
                    }
                }
            }
        }
    }
}

/// The last touches on the whole document: problem bodies on error answers, optional request
/// bodies.
pub(super) fn finish(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            problem_bodies(op);
            optional_body(op);
        }
    }
}

/// Gives every error answer (4xx, 5xx) that lists no body the problem JSON body, and the
/// headers [`crate::error::ApiError`] sets: `WWW-Authenticate` on 401, `Retry-After` on 429
/// and 503.
fn problem_bodies(op: &mut Operation) {
    for (status, response) in op.responses.responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        if !status.starts_with(['4', '5']) || !response.content.is_empty() {
            continue;
        }
        let problem = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
        response.content.insert("application/problem+json".into(), RefOr::T(problem));
        let header = match status.as_str() {
            "401" => Some((
                header::WWW_AUTHENTICATE,
                Type::String,
                "`Bearer`, with `error=\"invalid_token\"` when a token was refused.",
            )),
            "429" | "503" => Some((header::RETRY_AFTER, Type::Integer, "Seconds to wait before retrying.")),
            _ => None,
        };
        if let Some((name, kind, description)) = header {
            let header = HeaderBuilder::new()
                .schema(Some(utoipa::openapi::ObjectBuilder::new().schema_type(kind)))
                .description(Some(description))
                .build();
            response.headers.insert(name.as_str().to_owned(), RefOr::T(header));
        }
    }
}

/// An `Option<T>` request body (utoipa: required unless `Option`, schema `oneOf [T, null]`) is
/// one [`super::extract::OptionalJson`] reads: absent means the defaults, `null` is refused
/// like any body that is not an object. So: not required, and `T`'s schema.
fn optional_body(op: &mut Operation) {
    let Some(RefOr::T(body)) = &mut op.request_body else { return };
    for content in body.content.values_mut() {
        let RefOr::T(content) = content else { continue };
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else { continue };
        let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
        let [a, b] = one_of.items.as_slice() else { continue };
        let some = match (is_null(a), is_null(b)) {
            (false, true) => a.clone(),
            (true, false) => b.clone(),
            _ => continue,
        };
        content.schema = Some(some);
        body.required = Some(Required::False);
    }
}

/// The document, serialised once when the router is built.
#[derive(Clone)]
pub(super) struct Document(pub Bytes);

impl Document {
    pub fn new(doc: &OpenApi) -> Document {
        Document(Bytes::from(serde_json::to_vec(doc).expect("an OpenAPI document serialises")))
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of the admin port.", body = Object))
)]
pub(super) async fn openapi_json(Extension(doc): Extension<Document>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use axum::Router;
    use serde_json::{Value, json};

    use super::*;
    use crate::admin::extract::{DEFAULT_LIMIT, MAX_LIMIT};
    use crate::admin::routes;
    use crate::state::AppState;

    /// `(method, path)` pairs.
    type Routes = BTreeSet<(String, String)>;

    /// What `router` serves. axum has no API that lists routes, but its `Debug` output names
    /// each route's path and the `Allow` header of its 405 answer, and that is read here. A
    /// route without such a header (`route_service`) counts as method `ANY`. Should axum print
    /// its table differently, this finds other pairs than the document lists and the test
    /// fails; it cannot pass by reading less.
    fn served(router: &Router<AppState>) -> Routes {
        let text = format!("{router:?}");
        let (table, rest) = text.split_once("node: Node { paths: {").expect("axum prints its route table");
        let nodes = &rest[..rest.find("fallback_router").expect("axum prints its fallback router")];
        let paths: HashMap<&str, &str> = nodes
            .split("RouteId(")
            .skip(1)
            .map(|entry| {
                let (id, rest) = entry.split_once("): \"").expect("a route id and its path");
                (id, rest.split_once('"').expect("a quoted path").0)
            })
            .collect();
        let mut routes = Routes::new();
        for entry in table.split("RouteId(").skip(1) {
            let (id, endpoint) = entry.split_once(')').expect("a route id");
            let path = paths[id].to_owned();
            let Some((_, allow)) = endpoint.split_once("allow_header: Bytes(b\"") else {
                routes.insert(("ANY".into(), path));
                continue;
            };
            let methods: Vec<&str> = allow.split_once('"').expect("a quoted header").0.split(',').collect();
            for method in &methods {
                // axum answers HEAD wherever it serves GET.
                if *method == "HEAD" && methods.contains(&"GET") {
                    continue;
                }
                routes.insert((method.to_string(), path.clone()));
            }
        }
        routes
    }

    /// The operations of a path item with their HTTP methods, upper case.
    fn operations(item: &PathItem) -> impl Iterator<Item = (&'static str, &Operation)> {
        [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ]
        .into_iter()
        .filter_map(|(method, op)| op.as_ref().map(|op| (method, op)))
    }

    fn documented(doc: &OpenApi) -> Routes {
        let mut routes = Routes::new();
        for (path, item) in &doc.paths.paths {
            routes.extend(operations(item).map(|(method, _)| (method.to_owned(), path.clone())));
        }
        routes
    }

    #[test]
    fn the_admin_port_serves_exactly_the_documented_operations() {
        let (router, doc) = routes(|api| api).split_for_parts();
        let documented = documented(&doc);
        assert!(documented.contains(&("GET".into(), "/admin/v1/openapi.json".into())));
        assert!(documented.contains(&("GET".into(), "/healthz".into())));
        assert_eq!(served(&router), documented);
    }

    #[test]
    fn a_route_added_without_documentation_is_noticed() {
        let (router, doc) = routes(|api| {
            api.route("/undocumented", axum::routing::get(|| async {}))
                .route("/jobs/{id}", axum::routing::delete(|| async {}))
        })
        .split_for_parts();
        let extra: Vec<_> = served(&router).difference(&documented(&doc)).cloned().collect();
        assert_eq!(
            extra,
            [
                ("DELETE".into(), "/admin/v1/jobs/{id}".into()),
                ("GET".into(), "/admin/v1/undocumented".into())
            ]
        );
    }

    #[test]
    fn admin_operations_need_the_bearer_token_and_every_error_is_problem_json() {
        let (_, doc) = routes(|api| api).split_for_parts();
        let mut ids = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in operations(item) {
                let id = op.operation_id.clone().unwrap_or_default();
                assert!(ids.insert(id.clone()), "{method} {path}: operation id `{id}` is not unique");
                let statuses: Vec<&str> = op.responses.responses.keys().map(String::as_str).collect();
                if path.starts_with("/admin/v1/") {
                    let security = serde_json::to_value(&op.security).unwrap();
                    assert_eq!(security, json!([{"bearer": []}]), "{method} {path}");
                    assert!(statuses.contains(&"401") && statuses.contains(&"403"), "{method} {path}");
                } else {
                    assert!(op.security.is_none(), "{method} {path} is open");
                }
                assert!(statuses.iter().any(|s| s.starts_with('2')), "{method} {path}: no success answer");
                for (status, response) in &op.responses.responses {
                    let response = serde_json::to_value(response).unwrap();
                    if status.starts_with(['4', '5']) {
                        assert_eq!(
                            response["content"]["application/problem+json"]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn documented_limits_are_the_limits_the_code_applies() {
        let (_, doc) = routes(|api| api).split_for_parts();
        let doc: Value = serde_json::to_value(&doc).unwrap();
        let params = &doc["paths"]["/admin/v1/organizations"]["get"]["parameters"];
        let limit = params.as_array().unwrap().iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["maximum"], json!(MAX_LIMIT));
        assert_eq!(limit["schema"]["default"], json!(DEFAULT_LIMIT));
        let count = &doc["components"]["schemas"]["Generate"]["properties"]["count"];
        assert_eq!(count["maximum"], json!(crate::codes::MAX_PER_REQUEST));
    }

    #[test]
    fn an_optional_body_may_be_absent_but_is_never_null() {
        let (_, doc) = routes(|api| api).split_for_parts();
        let doc: Value = serde_json::to_value(&doc).unwrap();
        let body = &doc["paths"]["/admin/v1/contracts/{key}/codes"]["post"]["requestBody"];
        assert_eq!(body["required"], false);
        assert_eq!(
            body["content"]["application/json"]["schema"],
            json!({"$ref": "#/components/schemas/Generate"})
        );
        let body = &doc["paths"]["/admin/v1/organizations"]["post"]["requestBody"];
        assert_eq!(body["required"], true);
    }
}
