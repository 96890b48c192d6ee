//! Issue "Admin operations": `GET /admin/v1/openapi.json` is the admin port's OpenAPI
//! document, behind the admin guard, and every operation it documents is served: a request for
//! it with the admin token reaches a handler (never 405, never the 404 of an unknown path),
//! while methods it does not document on a documented path answer 405.
//!
//! The other direction — every route the router serves is documented — is the unit test in
//! `src/admin/openapi.rs`, which can see the router itself.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, FakeKeycloak, TestApp, base_env, with_admin_token};

/// What the admin port's fallback says for a path no route matches.
const UNKNOWN_PATH: &str = "No such path.";

/// The methods a path item can document (HEAD follows GET in axum and is left out).
const METHODS: [&str; 6] = ["get", "put", "post", "delete", "patch", "options"];

async fn start() -> (TestApp, FakeKeycloak) {
    let kc = FakeKeycloak::start().await;
    let mut env = base_env(&kc);
    with_admin_token(&mut env);
    (TestApp::spawn_with(env).await, kc)
}

async fn document(app: &TestApp) -> Value {
    let res =
        app.http.get(app.admin_url("/admin/v1/openapi.json")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    res.json().await.unwrap()
}

#[tokio::test]
async fn the_openapi_document_is_served_to_admins_only() {
    let (app, _kc) = start().await;
    let res = app.http.get(app.admin_url("/admin/v1/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");

    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let create = &doc["paths"]["/admin/v1/organizations"]["post"];
    assert_eq!(create["security"], json!([{"bearer": []}]));
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/NewOrganization"
    );
    for status in ["400", "401", "403", "409", "422", "503"] {
        assert_eq!(
            create["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{status}"
        );
    }
    assert!(doc["paths"]["/healthz"]["get"]["security"].is_null(), "health stays open");
}

#[tokio::test]
async fn every_documented_operation_reaches_a_handler_and_undocumented_methods_answer_405() {
    let (app, _kc) = start().await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 20, "{}", paths.len());
    let mut probed = 0;
    for (path, item) in paths {
        // Any value does: an unknown resource is a handler's 404, not the fallback's.
        let url = app.admin_url(&fill_params(path, "probe"));
        for method in METHODS {
            let request =
                app.http.request(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(), &url);
            let res = request.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let what = format!("{} {path} → {status} {body}", method.to_uppercase());
            if item.get(method).is_some() {
                probed += 1;
                assert_ne!(status, 405, "documented but not served: {what}");
                assert!(status != 404 || body["detail"] != UNKNOWN_PATH, "documented but not served: {what}");
            } else {
                assert_eq!(status, 405, "served but not documented: {what}");
            }
        }
    }
    assert!(probed > 30, "{probed} operations probed");
}

/// `path` with every `{name}` replaced by `value`.
fn fill_params(path: &str, value: &str) -> String {
    path.split('/')
        .map(|segment| if segment.starts_with('{') && segment.ends_with('}') { value } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}
