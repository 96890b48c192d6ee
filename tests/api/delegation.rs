//! Issue 17 item 2, docs/contract.md §11: read-only admin access (static tokens with
//! `access = "read"`, Keycloak tokens with one of `admin.read_roles`) and delegated management
//! by organization managers on the public port (`/_sidecar/manage/organizations/{org}`), plus
//! the organizations' `email_domains`.
//!
//! Every case runs on SQLite and on PostgreSQL.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Db, Fixture, metric, on_both_databases, set};

/// A static token configured with `access = "read"` (audit actor `admin:auditor`).
const READ_TOKEN: &str = "auditor-static-read-token-0123456789";

/// The fixture with the write token, [`READ_TOKEN`] and delegation on; `configure` last.
async fn start(db: Db, configure: impl FnOnce(&mut Vec<(String, String)>)) -> Fixture {
    Fixture::start_with(db, |_, env| {
        use sha2::Digest as _;
        let sha = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
        let tokens = json!([
            {"name": "ops", "sha256": sha(ADMIN_TOKEN)},
            {"name": "auditor", "sha256": sha(READ_TOKEN), "access": "read"},
        ]);
        set(env, "SIDECAR__ADMIN__TOKEN_SHA256", tokens.to_string());
        set(env, "SIDECAR__ADMIN__DELEGATE_TO_MANAGERS", "true");
        configure(env);
    })
    .await
}

/// Status and JSON body (null when empty or not JSON).
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let res = request.send().await.expect("the sidecar answers");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// An admin API call with the write token.
async fn admin(f: &Fixture, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let request = f.admin(method, path);
    answer(match body {
        Some(body) => request.json(&body),
        None => request,
    })
    .await
}

/// A manage call on the public port with `token`.
fn manage(f: &Fixture, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    f.app.http.request(method, f.app.url(&format!("/_sidecar/manage/organizations{path}"))).bearer_auth(token)
}

/// Organizations `a` and `b`, contracts `ca` (of a, 5 seats) and `cb` (of b), a code of each,
/// `manager-a` managing a, `member-a` a plain member of a, `member-b` a member of b. Returns the
/// codes of `ca` and `cb`.
async fn seed(f: &Fixture) -> (String, String) {
    for org in ["a", "b"] {
        let (status, body) =
            admin(f, Method::POST, "/organizations", Some(json!({"key": org, "name": org.to_uppercase()})))
                .await;
        assert_eq!(status, 201, "{body}");
    }
    for (contract, org) in [("ca", "a"), ("cb", "b")] {
        let body = json!({"key": contract, "organization": org, "name": contract,
                          "membership_type": "code", "max_learners": 5});
        let (status, body) = admin(f, Method::POST, "/contracts", Some(body)).await;
        assert_eq!(status, 201, "{body}");
    }
    for (sub, org, manager) in [("manager-a", "a", true), ("member-a", "a", false), ("member-b", "b", false)]
    {
        let path = format!("/users/{sub}/organizations/{org}");
        let (status, body) = admin(f, Method::PUT, &path, Some(json!({"manager": manager}))).await;
        assert_eq!(status, 201, "{body}");
    }
    let mut codes = Vec::new();
    for contract in ["ca", "cb"] {
        let path = format!("/contracts/{contract}/codes");
        let (status, body) = admin(f, Method::POST, &path, Some(json!({"count": 1}))).await;
        assert_eq!(status, 201, "{body}");
        codes.push(body["items"][0]["code"].as_str().unwrap().to_owned());
    }
    (codes[0].clone(), codes[1].clone())
}

fn token(f: &Fixture, sub: &str) -> String {
    f.kc.token().sub(sub).sign()
}

/// `path` with each `{name}` replaced by `value(name)`.
fn fill(path: &str, value: impl Fn(&str) -> String) -> String {
    path.split('/')
        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => value(name),
            None => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

on_both_databases!(
    read_only_access_gets_403_on_every_write_operation_of_the_document_and_200_on_its_gets,
    code_values_are_masked_for_read_access_in_json_and_csv_and_shown_for_write_access,
    a_manager_reaches_their_organization_and_nothing_of_another,
    manager_writes_are_audited_as_the_manager_and_counted,
    a_plain_member_a_stranger_and_a_manager_without_delegation_get_404,
    a_cross_site_manager_write_is_refused,
    manager_writes_beyond_the_per_user_limit_get_429,
    email_domains_are_validated_and_round_tripped,
    a_manager_assigns_seats_within_the_email_domains_and_reaches_no_other_organizations_seats,
);

async fn read_only_access_gets_403_on_every_write_operation_of_the_document_and_200_on_its_gets(db: Db) {
    let f = start(db, |env| set(env, "SIDECAR__ADMIN__READ_ROLES", r#"["identity-sidecar-viewer"]"#)).await;
    seed(&f).await;
    let viewer =
        f.kc.token().sub("viewer").preferred_username("vera").realm_roles(&["identity-sidecar-viewer"]);
    let viewer = viewer.sign();
    let (status, doc) = answer(f.admin(Method::GET, "/openapi.json")).await;
    assert_eq!(status, 200);
    let mut writes = 0;
    let mut reads = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(api_path) = path.strip_prefix("/admin/v1") else { continue };
        let is_organization = api_path.starts_with("/organizations");
        let is_job = api_path.starts_with("/jobs");
        let filled = fill(path, |name| match name {
            "key" if is_organization => "a".into(),
            "key" | "contract" => "ca".into(),
            "org" => "a".into(),
            "sub" => "member-a".into(),
            "code" => "no-such-code".into(),
            _ => "1".into(),
        });
        // The user lookup needs its e-mail.
        let filled = if api_path == "/users" { format!("{filled}?email=a@example.org") } else { filled };
        for (method, _) in item.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for credential in [READ_TOKEN, viewer.as_str()] {
                let url = f.app.admin_url(&filled);
                let (status, body) =
                    answer(f.app.http.request(method.clone(), &url).bearer_auth(credential)).await;
                let what = format!("{method} {filled} → {status} {body}");
                if method == Method::GET {
                    // Every GET is allowed; one needing a job that does not exist is its 404.
                    let expected = if is_job { 404 } else { 200 };
                    assert_eq!(status, expected, "{what}");
                    reads += 1;
                } else {
                    assert_eq!(status, 403, "{what}");
                    assert_eq!(body["status"], 403, "{what}");
                    writes += 1;
                }
            }
        }
    }
    assert!(writes > 30 && reads > 20, "{writes} writes, {reads} reads");
    // Nothing was written by read access: the seeded organizations are all there is.
    let (_, orgs) = admin(&f, Method::GET, "/organizations", None).await;
    assert_eq!(orgs["total"], 2);
    // The write token still writes.
    let (status, _) = admin(&f, Method::DELETE, "/users/member-b/organizations/b", None).await;
    assert_eq!(status, 200);
}

async fn code_values_are_masked_for_read_access_in_json_and_csv_and_shown_for_write_access(db: Db) {
    let f = start(db, |_| {}).await;
    let (code, _) = seed(&f).await;
    let fingerprint = {
        use sha2::Digest as _;
        hex::encode(&sha2::Sha256::digest(code.as_bytes())[..4])
    };
    let url = f.app.admin_url("/admin/v1/contracts/ca/codes");
    let viewer = f.kc.token().sub("viewer").realm_roles(&["identity-sidecar-viewer"]).sign();
    for read in [READ_TOKEN, viewer.as_str()] {
        let (status, body) = answer(f.app.http.get(&url).bearer_auth(read)).await;
        assert_eq!(status, 200);
        assert_eq!(body["items"][0]["code"], fingerprint.as_str());
        let csv = f.app.http.get(&url).bearer_auth(read).header("accept", "text/csv").send().await.unwrap();
        let csv = csv.text().await.unwrap();
        assert!(csv.lines().nth(1).unwrap().starts_with(&format!("{fingerprint},ca,")), "{csv}");
        assert!(!csv.contains(&code), "{csv}");
    }
    let (_, body) = answer(f.app.http.get(&url).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(body["items"][0]["code"], code.as_str());
    let csv =
        f.app.http.get(&url).bearer_auth(ADMIN_TOKEN).header("accept", "text/csv").send().await.unwrap();
    assert!(csv.text().await.unwrap().contains(&code));
    // A manager has write access to their organization: codes are shown.
    let (_, body) = answer(manage(&f, Method::GET, "/a/contracts/ca/codes", &token(&f, "manager-a"))).await;
    assert_eq!(body["items"][0]["code"], code.as_str());
}

async fn a_manager_reaches_their_organization_and_nothing_of_another(db: Db) {
    let f = start(db, |_| {}).await;
    let (_, code_b) = seed(&f).await;
    let t = token(&f, "manager-a");
    let get = |path: &str| answer(manage(&f, Method::GET, path, &t));

    let (status, body) = get("/a").await;
    assert_eq!((status, body["key"].clone()), (200, json!("a")), "{body}");
    let (status, body) = get("/a/members").await;
    assert_eq!(status, 200);
    let subs: Vec<&str> =
        body["items"].as_array().unwrap().iter().map(|m| m["sub"].as_str().unwrap()).collect();
    assert_eq!(subs, ["manager-a", "member-a"]);
    let (status, body) = get("/a/contracts").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["items"][0]["key"], "ca");
    assert_eq!(body["items"][0]["seats_used"], 0);

    let (status, body) =
        answer(manage(&f, Method::POST, "/a/contracts/ca/codes", &t).json(&json!({"count": 2}))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["total"], 2);
    let (status, body) = get("/a/contracts/ca/codes").await;
    assert_eq!((status, body["total"].clone()), (200, json!(3)));
    let res = manage(&f, Method::GET, "/a/contracts/ca/codes", &t)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert_eq!(res.text().await.unwrap().lines().count(), 4, "a header and three codes");
    let (status, body) = get("/a/audit").await;
    assert_eq!(status, 200);
    assert!(body["items"].as_array().unwrap().iter().all(|e| e["organization"] == "a"), "{body}");

    // Another organization, and what belongs to it reached through the own organization's
    // path: 404, nothing changed.
    for path in
        ["/b", "/b/members", "/b/contracts", "/b/contracts/cb/codes", "/b/audit", "/a/contracts/cb/codes"]
    {
        let (status, body) = get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["status"], 404, "{path}: problem JSON");
    }
    for path in ["/a/contracts?organization=b", "/a/audit?organization=b"] {
        assert_eq!(get(path).await.0, 404, "{path}");
    }
    for (method, path) in [
        (Method::POST, "/a/contracts/cb/codes"),
        (Method::POST, "/b/contracts/cb/codes"),
        (Method::DELETE, &*format!("/a/codes/{code_b}")),
        (Method::DELETE, &*format!("/b/codes/{code_b}")),
        (Method::DELETE, "/a/members/member-b"),
        (Method::DELETE, "/b/members/member-b"),
    ] {
        let (status, body) = answer(manage(&f, method.clone(), path, &t)).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    let (_, codes) = admin(&f, Method::GET, "/contracts/cb/codes", None).await;
    assert_eq!((codes["total"].clone(), codes["items"][0]["revoked"].clone()), (json!(1), json!(false)));
    let (_, members) = admin(&f, Method::GET, "/organizations/b/members", None).await;
    assert_eq!(members["total"], 1);
    // Admin-only routes do not exist under manage.
    for path in ["/a/contracts/ca", "/a/users/member-a", "/a/reconcile"] {
        assert_eq!(get(path).await.0, 404, "{path}");
    }
}

async fn manager_writes_are_audited_as_the_manager_and_counted(db: Db) {
    let f = start(db, |_| {}).await;
    seed(&f).await;
    let t = token(&f, "manager-a");
    let (status, body) =
        answer(manage(&f, Method::POST, "/a/contracts/ca/codes", &t).json(&json!({"count": 1}))).await;
    assert_eq!(status, 201);
    let code = body["items"][0]["code"].as_str().unwrap().to_owned();
    let (status, body) = answer(manage(&f, Method::DELETE, &format!("/a/codes/{code}"), &t)).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = answer(manage(&f, Method::DELETE, "/a/members/member-a", &t)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["organization"], "a");

    let (_, audit) = admin(&f, Method::GET, "/audit?organization=a&limit=3", None).await;
    let events: Vec<(&str, &str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [
            ("manager:manager-a", "membership.remove", "removed by manager"),
            ("manager:manager-a", "code.revoke", "manage API"),
            ("manager:manager-a", "code.generate", "manage API"),
        ]
    );
    let (_, members) = admin(&f, Method::GET, "/organizations/a/members", None).await;
    assert_eq!(members["total"], 1, "member-a was removed");

    let metrics = f.app.metrics().await;
    let count = |route: &str, method: &str| {
        let series =
            format!("identity_sidecar_manager_actions_total{{route=\"{route}\",method=\"{method}\"}}");
        metric(&metrics, &series)
    };
    assert_eq!(count("/contracts/{key}/codes", "POST"), 1.0, "{metrics}");
    assert_eq!(count("/codes/{code}", "DELETE"), 1.0);
    assert_eq!(count("/members/{sub}", "DELETE"), 1.0);
}

async fn a_plain_member_a_stranger_and_a_manager_without_delegation_get_404(db: Db) {
    let f = start(db, |_| {}).await;
    seed(&f).await;
    for sub in ["member-a", "stranger"] {
        let t = token(&f, sub);
        for (method, path) in
            [(Method::GET, "/a"), (Method::GET, "/a/contracts"), (Method::POST, "/a/contracts/ca/codes")]
        {
            let (status, body) = answer(manage(&f, method.clone(), path, &t)).await;
            assert_eq!(status, 404, "{sub}: {method} {path}: {body}");
        }
    }
    let res = f.app.http.get(f.app.url("/_sidecar/manage/organizations/a")).send().await.unwrap();
    assert_eq!(res.status(), 401, "no token");
    assert_eq!(res.headers()["www-authenticate"], "Bearer");

    // Taking the flag away takes effect with the next request (nothing is cached).
    let t = token(&f, "manager-a");
    assert_eq!(answer(manage(&f, Method::GET, "/a", &t)).await.0, 200);
    let (status, _) =
        admin(&f, Method::PUT, "/users/manager-a/organizations/a", Some(json!({"manager": false}))).await;
    assert_eq!(status, 200);
    assert_eq!(answer(manage(&f, Method::GET, "/a", &t)).await.0, 404);

    let off = Fixture::start_with(db, |_, _| {}).await;
    seed(&off).await;
    let t = token(&off, "manager-a");
    for (method, path) in
        [(Method::GET, "/a"), (Method::GET, "/a/members"), (Method::POST, "/a/contracts/ca/codes")]
    {
        let (status, body) = answer(manage(&off, method.clone(), path, &t)).await;
        assert_eq!(status, 404, "delegation off: {method} {path}: {body}");
    }
}

async fn a_cross_site_manager_write_is_refused(db: Db) {
    let f = start(db, |_| {}).await;
    seed(&f).await;
    let t = token(&f, "manager-a");
    let evil = "https://evil.example";
    let write = manage(&f, Method::POST, "/a/contracts/ca/codes", &t)
        .header("origin", evil)
        .json(&json!({"count": 1}));
    let (status, body) = answer(write).await;
    assert_eq!(status, 403, "{body}");
    let write = manage(&f, Method::DELETE, "/a/members/member-a", &t).header("sec-fetch-site", "cross-site");
    assert_eq!(answer(write).await.0, 403);
    let (_, codes) = admin(&f, Method::GET, "/contracts/ca/codes", None).await;
    assert_eq!(codes["total"], 1, "nothing generated");
    let (_, members) = admin(&f, Method::GET, "/organizations/a/members", None).await;
    assert_eq!(members["total"], 2, "nobody removed");
    // Reads are not writes; a same-site write passes.
    assert_eq!(answer(manage(&f, Method::GET, "/a", &t).header("origin", evil)).await.0, 200);
    let same = manage(&f, Method::POST, "/a/contracts/ca/codes", &t).header("sec-fetch-site", "same-origin");
    assert_eq!(answer(same.json(&json!({"count": 1}))).await.0, 201);
}

async fn manager_writes_beyond_the_per_user_limit_get_429(db: Db) {
    let f = start(db, |env| set(env, "SIDECAR__ADMIN__MANAGER_WRITES_PER_MINUTE", "2")).await;
    seed(&f).await;
    let t = token(&f, "manager-a");
    let generate = || manage(&f, Method::POST, "/a/contracts/ca/codes", &t).json(&json!({"count": 1}));
    assert_eq!(answer(generate()).await.0, 201);
    assert_eq!(answer(generate()).await.0, 201);
    let res = generate().send().await.unwrap();
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Reads are not limited; nor is another manager.
    assert_eq!(answer(manage(&f, Method::GET, "/a/contracts/ca/codes", &t)).await.0, 200);
    let (status, _) =
        admin(&f, Method::PUT, "/users/manager-2/organizations/a", Some(json!({"manager": true}))).await;
    assert_eq!(status, 201);
    let other = manage(&f, Method::POST, "/a/contracts/ca/codes", &token(&f, "manager-2"));
    assert_eq!(answer(other.json(&json!({"count": 1}))).await.0, 201);
}

async fn email_domains_are_validated_and_round_tripped(db: Db) {
    let f = start(db, |_| {}).await;
    let create = |body: Value| admin(&f, Method::POST, "/organizations", Some(body));
    let (status, body) = create(json!({"key": "x", "name": "X"})).await;
    assert_eq!((status, body["email_domains"].clone()), (201, json!([])), "{body}");

    for (domains, field) in [
        (json!(["acme.com", "Mail.Acme.com"]), "email_domains.1"),
        (json!(["@acme.com"]), "email_domains.0"),
        (json!(["*.acme.com"]), "email_domains.0"),
        (json!(["localhost"]), "email_domains.0"),
        (json!(["acme.com", "acme.com"]), "email_domains.1"),
        (json!(["-acme.com"]), "email_domains.0"),
    ] {
        let (status, body) = create(json!({"key": "y", "name": "Y", "email_domains": domains})).await;
        assert_eq!(status, 422, "{domains}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{domains}: {body}");
    }
    let (status, body) = create(json!({"key": "y", "name": "Y", "email_domains": "acme.com"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(admin(&f, Method::GET, "/organizations/y", None).await.0, 404, "nothing written");

    let (status, body) =
        create(json!({"key": "y", "name": "Y", "email_domains": ["acme.com", "acme.co.uk"]})).await;
    assert_eq!(status, 201, "{body}");
    let (_, body) = admin(&f, Method::GET, "/organizations/y", None).await;
    assert_eq!(body["email_domains"], json!(["acme.com", "acme.co.uk"]));

    let patch = |body: Value| {
        let request =
            f.admin(Method::PATCH, "/organizations/y").header("content-type", "application/merge-patch+json");
        answer(request.body(body.to_string()))
    };
    let (status, body) = patch(json!({"email_domains": ["ACME.com"]})).await;
    assert_eq!((status, body["errors"][0]["field"].clone()), (422, json!("email_domains.0")), "{body}");
    let (status, body) = patch(json!({"email_domains": ["example.org"]})).await;
    assert_eq!((status, body["email_domains"].clone()), (200, json!(["example.org"])), "{body}");
    let (_, body) = admin(&f, Method::GET, "/organizations?limit=10", None).await;
    assert_eq!(body["items"][1]["email_domains"], json!(["example.org"]));
    let (status, body) = patch(json!({"email_domains": null})).await;
    assert_eq!((status, body["email_domains"].clone()), (200, json!([])), "null clears: {body}");

    // The OpenAPI document describes the field.
    let (_, doc) = answer(f.admin(Method::GET, "/openapi.json")).await;
    let schema = &doc["components"]["schemas"]["NewOrganization"]["properties"]["email_domains"];
    assert_eq!(schema["type"], "array", "{schema}");
    assert!(doc["components"]["schemas"]["Organization"]["properties"]["email_domains"].is_object());
}

async fn a_manager_assigns_seats_within_the_email_domains_and_reaches_no_other_organizations_seats(db: Db) {
    let f = start(db, |_| {}).await;
    seed(&f).await;
    let t = token(&f, "manager-a");
    let call = |method: Method, path: &str, body: Option<Value>| {
        let request = manage(&f, method, path, &t);
        answer(match body {
            Some(body) => request.json(&body),
            None => request,
        })
    };
    // Without email_domains a manager assigns nobody: every e-mail is rejected, nothing written.
    let emails = json!({"emails": ["Ann@A.example", "bob@elsewhere.example"]});
    let (status, body) = call(Method::POST, "/a/contracts/ca/assignments", Some(emails.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], json!([]), "{body}");
    assert_eq!(body["rejected"].as_array().unwrap().len(), 2, "{body}");
    let (status, body) =
        admin(&f, Method::PATCH, "/organizations/a", Some(json!({"email_domains": ["a.example"]}))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(Method::POST, "/a/contracts/ca/assignments", Some(emails)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["created"][0]["email"], "ann@a.example");
    assert_eq!(body["rejected"][0]["email"], "bob@elsewhere.example", "{body}");
    let assignment = body["created"][0]["id"].clone();

    let (status, body) = call(Method::GET, "/a/contracts/ca/assignments?state=allocated", None).await;
    assert_eq!((status, body["total"].clone()), (200, json!(1)), "{body}");
    let (status, usage) = call(Method::GET, "/a/contracts/ca/usage", None).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(
        (usage["seats_used"].clone(), usage["assignments"]["allocated"].clone()),
        (json!(1), json!(1))
    );
    let (status, body) = call(Method::POST, "/a/contracts/ca/codes/revoke", None).await;
    assert_eq!((status, body["revoked"].clone()), (200, json!(1)), "{body}");

    // An admin's assignment of b's contract, and b's routes: 404 for the manager of a.
    let (status, body) =
        admin(&f, Method::POST, "/contracts/cb/assignments", Some(json!({"emails": ["x@b.example"]}))).await;
    assert_eq!(status, 201, "{body}");
    let other = body["created"][0]["id"].clone();
    for (method, path) in [
        (Method::GET, "/b/contracts/cb/assignments".to_owned()),
        (Method::GET, "/a/contracts/cb/assignments".to_owned()),
        (Method::POST, "/a/contracts/cb/assignments".to_owned()),
        (Method::GET, "/a/contracts/cb/usage".to_owned()),
        (Method::POST, "/a/contracts/cb/codes/revoke".to_owned()),
        (Method::DELETE, format!("/a/assignments/{other}")),
        (Method::DELETE, format!("/b/assignments/{other}")),
    ] {
        let body = (method == Method::POST).then(|| json!({"emails": ["y@a.example"]}));
        let (status, answer) = call(method.clone(), &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (_, codes) = admin(&f, Method::GET, "/contracts/cb/codes", None).await;
    assert_eq!(codes["items"][0]["revoked"], false, "b's code untouched");
    let (_, b_assignments) = admin(&f, Method::GET, "/contracts/cb/assignments?state=allocated", None).await;
    assert_eq!(b_assignments["total"], 1, "b's assignment untouched");

    // The own assignment is revoked; the audit names the manager.
    let (status, _) = call(Method::DELETE, &format!("/a/assignments/{assignment}"), None).await;
    assert_eq!(status, 204);
    let (_, audit) = admin(&f, Method::GET, "/audit?organization=a", None).await;
    let revoke =
        audit["items"].as_array().unwrap().iter().find(|e| e["action"] == "assignment.revoke").unwrap();
    assert_eq!(
        (revoke["actor"].clone(), revoke["reason"].clone()),
        (json!("manager:manager-a"), json!("manage API"))
    );
}
