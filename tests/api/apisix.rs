//! The APISIX recipes under `deploy/apisix/`, checked without an APISIX.
//!
//! APISIX cannot run where the tests run, and APISIX ignores a plugin key it does not know: a
//! misspelt `set_id_token_heder: false` loads fine and leaves the default (`true`) in force.
//! So this file parses every APISIX file the docs include — the standalone YAML, the JSON
//! bodies the Admin API scripts send (the scripts run as printed, with `curl` replaced by a
//! recorder), the ApisixRoute manifests and the `config.yaml` snippets — and checks:
//!
//! - every route, upstream and plugin key against the schema fields of APISIX's own source
//!   (the tables below, with the release they were read from);
//! - what the sidecar needs: every owned header in `upstream_headers`, the `client_headers`,
//!   `status_on_error: 503`, a `timeout` above the sidecar's JWKS fetch timeout, the
//!   preflight and credential `request_headers`, a strip of client identity headers that
//!   reads every header, `set_id_token_header: false`, `session.secret` whenever
//!   `bearer_only` is false, `#END` at the end of a standalone file,
//!   `underscores_in_headers: "off"` as a string;
//! - that the three forms of a recipe configure the same plugins, that the sidecar
//!   configurations shipped beside them load, and that `docs/integrations/apisix.md` prints
//!   every file exactly as it is.
//!
//! Each check returns its findings, and `a_misspelt_or_missing_key_is_reported` feeds each
//! one a broken recipe, so a check that can no longer fail is itself a failure.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use identity_sidecar::config::TokenSource;
use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------------------------------------
// APISIX's schemas, as read from its source.

/// The release the tables were read from: APISIX 3.14.0 (tag commit
/// c89d39cf3e7ccc333e1c7b74b1097a09f2f1ef87), the oldest release the recipes support, so a
/// key added later (forward-auth's `max_req_body_size`, 3.17) is refused here. Every key the
/// recipes use was also found unchanged at 3.18.0 (0796d9c2cbedb1f8bf8194292ff526599f4fde20)
/// and on master at f519a0f04ccfd4c13b5d06caf34bcde8c8593980 (2026-08-20).
const APISIX_SCHEMA_SOURCE: &str = "apache/apisix 3.14.0 (c89d39cf)";

/// `apisix/plugins/forward-auth.lua`, `schema.properties`.
const FORWARD_AUTH_KEYS: &[&str] = &[
    "uri",
    "allow_degradation",
    "status_on_error",
    "ssl_verify",
    "request_method",
    "request_headers",
    "extra_headers",
    "upstream_headers",
    "client_headers",
    "timeout",
    "keepalive",
    "keepalive_timeout",
    "keepalive_pool",
];

/// `apisix/plugins/openid-connect.lua`, `schema.properties`.
const OPENID_CONNECT_KEYS: &[&str] = &[
    "client_id",
    "client_secret",
    "discovery",
    "scope",
    "ssl_verify",
    "timeout",
    "introspection_endpoint",
    "introspection_endpoint_auth_method",
    "token_endpoint_auth_method",
    "bearer_only",
    "session",
    "realm",
    "claim_validator",
    "logout_path",
    "redirect_uri",
    "post_logout_redirect_uri",
    "unauth_action",
    "public_key",
    "token_signing_alg_values_expected",
    "use_pkce",
    "set_access_token_header",
    "access_token_in_authorization_header",
    "set_id_token_header",
    "set_userinfo_header",
    "set_refresh_token_header",
    "proxy_opts",
    "authorization_params",
    "client_rsa_private_key",
    "client_rsa_private_key_id",
    "client_jwt_assertion_expires_in",
    "renew_access_token_on_expiry",
    "access_token_expires_in",
    "refresh_session_interval",
    "iat_slack",
    "accept_none_alg",
    "accept_unsupported_alg",
    "access_token_expires_leeway",
    "force_reauthorize",
    "use_nonce",
    "revoke_tokens_on_logout",
    "jwk_expires_in",
    "jwt_verification_cache_ignore",
    "cache_segment",
    "introspection_interval",
    "introspection_expiry_claim",
    "introspection_addon_headers",
    "required_scopes",
    "claim_schema",
];

/// openid-connect's `session` object (`additionalProperties = false`, `required = {"secret"}`
/// in 3.14.0; `check_schema` refuses `bearer_only = false` without it since 3.14.0).
const OPENID_CONNECT_SESSION_KEYS: &[&str] = &["secret", "cookie"];

/// `apisix/plugins/serverless/init.lua` (serverless-pre-function and -post-function).
const SERVERLESS_KEYS: &[&str] = &["phase", "functions"];
const SERVERLESS_PHASES: &[&str] =
    &["rewrite", "access", "header_filter", "body_filter", "log", "before_proxy"];

/// `apisix/schema_def.lua`, `_M.route.properties`.
const ROUTE_KEYS: &[&str] = &[
    "id",
    "name",
    "desc",
    "labels",
    "create_time",
    "update_time",
    "uri",
    "uris",
    "priority",
    "methods",
    "host",
    "hosts",
    "remote_addr",
    "remote_addrs",
    "timeout",
    "vars",
    "filter_func",
    "script",
    "script_id",
    "plugins",
    "plugin_config_id",
    "upstream",
    "service_id",
    "upstream_id",
    "enable_websocket",
    "status",
];

/// `apisix/schema_def.lua`, `upstream_schema.properties`.
const UPSTREAM_KEYS: &[&str] = &[
    "id",
    "name",
    "desc",
    "labels",
    "create_time",
    "update_time",
    "nodes",
    "retries",
    "retry_timeout",
    "timeout",
    "tls",
    "keepalive_pool",
    "type",
    "checks",
    "hash_on",
    "key",
    "scheme",
    "discovery_type",
    "discovery_args",
    "pass_host",
    "upstream_host",
    "service_name",
];

/// The ApisixRoute fields, from apache/apisix-ingress-controller `api/v2/apisixroute_types.go`
/// at d510f6656c5d2289dbb9b4c02c3c3473ff8abb2f (after 2.2.0). A plugin's `secretRef` names a
/// Secret whose keys the controller merges into `config`, a dotted key (`session.secret`) as
/// a nested field (`internal/adc/translator/apisixroute.go`, `pkg/utils/datastructure.go`).
const APISIXROUTE_SPEC_KEYS: &[&str] = &["ingressClassName", "http", "stream"];
const APISIXROUTE_HTTP_KEYS: &[&str] = &[
    "name",
    "priority",
    "timeout",
    "match",
    "backends",
    "upstreams",
    "websocket",
    "plugin_config_name",
    "plugin_config_namespace",
    "plugins",
    "authentication",
];
const APISIXROUTE_MATCH_KEYS: &[&str] = &["paths", "methods", "hosts", "remoteAddrs", "exprs", "filter_func"];
const APISIXROUTE_BACKEND_KEYS: &[&str] =
    &["serviceName", "servicePort", "resolveGranularity", "weight", "subset"];
const APISIXROUTE_PLUGIN_KEYS: &[&str] = &["name", "enable", "config", "secretRef"];

/// The keys a plugin accepts, or `None` for a plugin these recipes do not use (itself a
/// finding: a misspelt plugin name is ignored by nobody but is worth a look).
fn plugin_keys(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "forward-auth" => Some(FORWARD_AUTH_KEYS),
        "openid-connect" => Some(OPENID_CONNECT_KEYS),
        "serverless-pre-function" | "serverless-post-function" => Some(SERVERLESS_KEYS),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// What the sidecar needs.

/// Headers the sidecar owns: the crate's list, which holds docs/contract.md §10's (v2) active
/// organization too.
fn owned_headers() -> BTreeSet<String> {
    let owned: BTreeSet<String> =
        identity_sidecar::headers::OWNED.iter().map(|h| h.as_str().to_ascii_lowercase()).collect();
    assert!(owned.contains("x-identity-active-organization"), "the v2 header is owned");
    owned
}

const REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "x-access-token",
    "origin",
    "access-control-request-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
const CLIENT_HEADERS: &[&str] = &["content-type", "retry-after", "www-authenticate"];

/// The sidecar's default `oidc.http_timeout_secs` (config/default.toml): one JWKS refetch may
/// take this long, so forward-auth's `timeout` must be longer.
const SIDECAR_HTTP_TIMEOUT_MS: i64 = 5_000;

// ---------------------------------------------------------------------------------------------
// Inputs

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/apisix")
}

fn read(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn parse_yaml(text: &str, what: &str) -> Vec<Value> {
    let docs = YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}"));
    docs.iter().map(|d| yaml_to_json(d, what)).collect()
}

fn parse_one_yaml(text: &str, what: &str) -> Value {
    let mut docs = parse_yaml(text, what);
    assert_eq!(docs.len(), 1, "{what}: expected one YAML document");
    docs.remove(0)
}

/// YAML as JSON values, so the three forms of a recipe compare with `==`.
fn yaml_to_json(yaml: &Yaml, what: &str) -> Value {
    match yaml {
        Yaml::Hash(hash) => {
            let mut map = Map::new();
            for (k, v) in hash {
                let key = k.as_str().unwrap_or_else(|| panic!("{what}: non-string key {k:?}"));
                map.insert(key.to_string(), yaml_to_json(v, what));
            }
            Value::Object(map)
        }
        Yaml::Array(items) => Value::Array(items.iter().map(|v| yaml_to_json(v, what)).collect()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => Value::from(r.parse::<f64>().unwrap_or_else(|_| panic!("{what}: bad number {r}"))),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::Null,
        other => panic!("{what}: unsupported YAML node {other:?}"),
    }
}

/// Runs an Admin API script as printed, with a `curl` that records its arguments and the body
/// it would send. Returns (arguments, body as JSON).
fn run_admin_script(name: &str, env: &[(&str, &str)]) -> (Vec<String>, Value) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let stub = bin.join("curl");
    std::fs::write(
        &stub,
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$RECORD_DIR/args\"\ncat > \"$RECORD_DIR/body\"\necho '{}'\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("sh");
    cmd.arg(dir().join(name)).env_clear().env("PATH", path).env("RECORD_DIR", tmp.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("sh runs");
    assert!(
        out.status.success(),
        "{name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let args: Vec<String> =
        std::fs::read_to_string(tmp.path().join("args")).unwrap().lines().map(String::from).collect();
    let body = std::fs::read_to_string(tmp.path().join("body")).unwrap();
    let body: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{name} sends invalid JSON: {e}\n{body}"));
    (args, body)
}

// ---------------------------------------------------------------------------------------------
// Checks. Each returns findings (empty = clean); `ctx` names the file and place.

fn unknown_keys(obj: &Value, allowed: &[&str], ctx: &str) -> Vec<String> {
    match obj.as_object() {
        Some(map) => map
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| format!("{ctx}: `{k}` is not a field of APISIX's schema ({APISIX_SCHEMA_SOURCE})"))
            .collect(),
        None => vec![format!("{ctx}: expected an object")],
    }
}

fn lower_set(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(str::to_ascii_lowercase).collect())
        .unwrap_or_default()
}

fn missing<'a>(have: &BTreeSet<String>, want: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    want.into_iter().filter(|w| !have.contains(*w)).collect()
}

/// A secret given as a value must be long enough; `${{VAR}}` (standalone) and a value that
/// the test substituted for a shell variable are judged by their form.
fn secret_ok(v: Option<&Value>) -> bool {
    match v.and_then(Value::as_str) {
        Some(s) if s.starts_with("${{") && s.ends_with("}}") => true,
        Some(s) => s.len() >= 16,
        None => false,
    }
}

/// The checks of one route's `plugins` object. `mode` is the recipe's mode.
fn check_plugins(plugins: &Value, mode: Mode, ctx: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some(map) = plugins.as_object() else {
        return vec![format!("{ctx}: plugins must be an object")];
    };
    for (name, conf) in map {
        let pctx = format!("{ctx}.plugins.{name}");
        match plugin_keys(name) {
            Some(keys) => out.extend(unknown_keys(conf, keys, &pctx)),
            None => out.push(format!("{pctx}: not a plugin these recipes know")),
        }
        match name.as_str() {
            "forward-auth" => out.extend(check_forward_auth(conf, &pctx)),
            "openid-connect" => out.extend(check_openid_connect(conf, mode, &pctx)),
            "serverless-pre-function" | "serverless-post-function" => {
                out.extend(check_serverless(conf, &pctx))
            }
            _ => {}
        }
    }
    match mode {
        Mode::ForwardAuth => {
            if !map.contains_key("forward-auth") {
                out.push(format!("{ctx}: forward-auth mode without the forward-auth plugin"));
            }
            match map.get("serverless-pre-function") {
                Some(pre) => {
                    out.extend(check_identity_strip(pre, &format!("{ctx}.plugins.serverless-pre-function")))
                }
                None => {
                    out.push(format!("{ctx}: nothing strips client identity headers before forward-auth"))
                }
            }
        }
        Mode::Upstream => {
            if !map.contains_key("openid-connect") {
                out.push(format!("{ctx}: upstream mode without openid-connect"));
            }
        }
    }
    out
}

fn check_forward_auth(conf: &Value, ctx: &str) -> Vec<String> {
    let mut out = Vec::new();
    if conf.get("uri").and_then(Value::as_str).is_none_or(|u| !u.ends_with("/_sidecar/auth")) {
        out.push(format!("{ctx}: uri must be the sidecar's /_sidecar/auth"));
    }
    if conf.get("request_method").and_then(Value::as_str) != Some("GET") {
        out.push(format!("{ctx}: request_method must be GET (POST buffers the client's body)"));
    }
    let request = lower_set(conf.get("request_headers"));
    for h in missing(&request, REQUEST_HEADERS.iter().copied()) {
        out.push(format!("{ctx}: request_headers lacks {h}"));
    }
    let upstream = lower_set(conf.get("upstream_headers"));
    let owned = owned_headers();
    for h in missing(&upstream, owned.iter().map(String::as_str)) {
        out.push(format!("{ctx}: upstream_headers lacks the owned header {h}"));
    }
    let client = lower_set(conf.get("client_headers"));
    for h in missing(&client, CLIENT_HEADERS.iter().copied()) {
        out.push(format!("{ctx}: client_headers lacks {h}"));
    }
    if conf.get("status_on_error").and_then(Value::as_i64) != Some(503) {
        out.push(format!("{ctx}: status_on_error must be 503 (APISIX's default is 403)"));
    }
    match conf.get("timeout").and_then(Value::as_i64) {
        Some(t) if t > SIDECAR_HTTP_TIMEOUT_MS => {}
        _ => out.push(format!(
            "{ctx}: timeout must exceed the sidecar's JWKS fetch timeout ({SIDECAR_HTTP_TIMEOUT_MS} ms; APISIX's default is 3000)"
        )),
    }
    if conf.get("allow_degradation").and_then(Value::as_bool) == Some(true) {
        out.push(format!("{ctx}: allow_degradation lets requests through when the sidecar is down"));
    }
    out
}

fn check_openid_connect(conf: &Value, mode: Mode, ctx: &str) -> Vec<String> {
    let mut out = Vec::new();
    if conf.get("set_id_token_header").and_then(Value::as_bool) != Some(false) {
        out.push(format!("{ctx}: set_id_token_header must be false (APISIX's default is true)"));
    }
    if conf.get("set_userinfo_header").and_then(Value::as_bool) != Some(false) {
        out.push(format!("{ctx}: set_userinfo_header must be false (the sidecar writes X-Userinfo)"));
    }
    let bearer_only = conf.get("bearer_only").and_then(Value::as_bool).unwrap_or(false);
    if !bearer_only {
        match conf.get("session") {
            Some(session) => {
                out.extend(unknown_keys(session, OPENID_CONNECT_SESSION_KEYS, &format!("{ctx}.session")));
                if !secret_ok(session.get("secret")) {
                    out.push(format!("{ctx}: session.secret must be at least 16 characters"));
                }
            }
            None => out.push(format!(
                "{ctx}: bearer_only is false without session.secret (refused by APISIX 3.14 and later)"
            )),
        }
    }
    if mode == Mode::Upstream {
        if conf.get("set_access_token_header").and_then(Value::as_bool) == Some(false) {
            out.push(format!("{ctx}: set_access_token_header is off: the sidecar never sees the token"));
        }
        if conf.get("access_token_in_authorization_header").and_then(Value::as_bool) == Some(true) {
            out.push(format!(
                "{ctx}: the token must go in X-Access-Token (the sidecar's x-access-token source)"
            ));
        }
    }
    out
}

fn check_serverless(conf: &Value, ctx: &str) -> Vec<String> {
    let mut out = Vec::new();
    let phase = conf.get("phase").and_then(Value::as_str).unwrap_or("access");
    if !SERVERLESS_PHASES.contains(&phase) {
        out.push(format!("{ctx}: phase {phase} is not one of {SERVERLESS_PHASES:?}"));
    }
    match conf.get("functions").and_then(Value::as_array) {
        Some(f)
            if !f.is_empty()
                && f.iter().all(|s| s.as_str().is_some_and(|s| s.contains("return function("))) => {}
        _ => out
            .push(format!("{ctx}: functions must be a non-empty list of `return function(conf, ctx) … end`")),
    }
    out
}

/// The strip that runs before forward-auth asks the sidecar.
fn check_identity_strip(conf: &Value, ctx: &str) -> Vec<String> {
    let mut out = Vec::new();
    if conf.get("phase").and_then(Value::as_str) != Some("rewrite") {
        out.push(format!("{ctx}: must run in the rewrite phase, before forward-auth (access)"));
    }
    let code: String = conf
        .get("functions")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    if code.contains("get_headers()") || !code.contains("get_headers(0") {
        out.push(format!(
            "{ctx}: must read every header with ngx.req.get_headers(0, …) (the default stops at 100)"
        ));
    }
    if !code.contains("\"truncated\"") {
        out.push(format!("{ctx}: must refuse a truncated header list"));
    }
    for needle in ["gsub(\"_\", \"-\")", "\"x-identity-\"", "\"x-userinfo\"", "\"x-id-token\""] {
        if !code.contains(needle) {
            out.push(format!("{ctx}: strip lacks {needle}"));
        }
    }
    out
}

fn check_route(route: &Value, mode: Mode, ctx: &str) -> Vec<String> {
    let mut out = unknown_keys(route, ROUTE_KEYS, ctx);
    if let Some(up) = route.get("upstream") {
        out.extend(unknown_keys(up, UPSTREAM_KEYS, &format!("{ctx}.upstream")));
    }
    match route.get("plugins") {
        Some(p) => out.extend(check_plugins(p, mode, ctx)),
        None => out.push(format!("{ctx}: no plugins")),
    }
    out
}

/// A standalone `conf/apisix.yaml`: `#END` on its last line, then every route.
fn check_standalone(text: &str, mode: Mode, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    if text.lines().rev().find(|l| !l.trim().is_empty()).map(str::trim) != Some("#END") {
        out.push(format!("{what}: APISIX loads a standalone file only when it ends with #END"));
    }
    let doc = parse_one_yaml(text, what);
    out.extend(unknown_keys(
        &doc,
        &["routes", "upstreams", "services", "plugin_configs", "global_rules"],
        what,
    ));
    match doc.get("routes").and_then(Value::as_array) {
        Some(routes) if !routes.is_empty() => {
            for (i, r) in routes.iter().enumerate() {
                out.extend(check_route(r, mode, &format!("{what}: routes[{i}]")));
            }
        }
        _ => out.push(format!("{what}: no routes")),
    }
    out
}

/// An ApisixRoute manifest; a plugin with `secretRef` gets `client_secret` and
/// `session.secret` from its Secret (the comment of the manifest says how to create it).
fn check_apisixroute(doc: &Value, mode: Mode, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    if doc.get("apiVersion").and_then(Value::as_str) != Some("apisix.apache.org/v2") {
        out.push(format!("{what}: apiVersion must be apisix.apache.org/v2"));
    }
    if doc.get("kind").and_then(Value::as_str) != Some("ApisixRoute") {
        out.push(format!("{what}: kind must be ApisixRoute"));
    }
    let Some(spec) = doc.get("spec") else {
        return vec![format!("{what}: no spec")];
    };
    out.extend(unknown_keys(spec, APISIXROUTE_SPEC_KEYS, &format!("{what}.spec")));
    for (i, http) in spec.get("http").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let ctx = format!("{what}.spec.http[{i}]");
        out.extend(unknown_keys(http, APISIXROUTE_HTTP_KEYS, &ctx));
        if let Some(m) = http.get("match") {
            out.extend(unknown_keys(m, APISIXROUTE_MATCH_KEYS, &format!("{ctx}.match")));
        }
        for b in http.get("backends").and_then(Value::as_array).into_iter().flatten() {
            out.extend(unknown_keys(b, APISIXROUTE_BACKEND_KEYS, &format!("{ctx}.backends")));
        }
        let plugins = apisixroute_plugins(http, &mut out, &ctx);
        out.extend(check_plugins(&plugins, mode, &ctx));
    }
    out
}

/// The `plugins` object APISIX ends up with for one ApisixRoute rule.
fn apisixroute_plugins(http: &Value, out: &mut Vec<String>, ctx: &str) -> Value {
    let mut plugins = Map::new();
    for p in http.get("plugins").and_then(Value::as_array).into_iter().flatten() {
        out.extend(unknown_keys(p, APISIXROUTE_PLUGIN_KEYS, &format!("{ctx}.plugins")));
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            out.push(format!("{ctx}.plugins: a plugin without a name"));
            continue;
        };
        if p.get("enable").and_then(Value::as_bool) != Some(true) {
            out.push(format!("{ctx}.plugins.{name}: enable must be true"));
        }
        let mut config = p.get("config").cloned().unwrap_or(Value::Object(Map::new()));
        if p.get("secretRef").and_then(Value::as_str).is_some() {
            let c = config.as_object_mut().expect("config is an object");
            c.insert("client_secret".into(), Value::String("${{OIDC_CLIENT_SECRET}}".into()));
            c.entry("session")
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("session is an object")
                .insert("secret".into(), Value::String("${{OIDC_SESSION_SECRET}}".into()));
        }
        plugins.insert(name.to_string(), config);
    }
    Value::Object(plugins)
}

/// `nginx_config.http.underscores_in_headers` must be the string "off". APISIX reads its
/// config with lyaml, which takes a bare `off` for the boolean false (YAML 1.1), so the value
/// must be quoted in the text itself; yaml-rust2 (YAML 1.2) reads a bare `off` as a string
/// and cannot tell the two apart.
fn check_underscores_off(text: &str, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    match parse_one_yaml(text, what).pointer("/nginx_config/http/underscores_in_headers") {
        Some(Value::String(s)) if s == "off" => {}
        other => out.push(format!(
            "{what}: nginx_config.http.underscores_in_headers must be \"off\", found {other:?}"
        )),
    }
    let quoted = text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("underscores_in_headers:")
            && matches!(
                l.trim_start_matches("underscores_in_headers:").split('#').next().map(str::trim),
                Some("\"off\"" | "'off'")
            )
    });
    if !quoted {
        out.push(format!(
            "{what}: write underscores_in_headers: \"off\" quoted (a bare off is a YAML 1.1 boolean)"
        ));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ForwardAuth,
    Upstream,
}

fn assert_clean(findings: Vec<String>) {
    assert!(findings.is_empty(), "findings:\n{}", findings.join("\n"));
}

/// The only route of a standalone file, without its `id` (the Admin API takes it in the URL).
fn standalone_route(name: &str) -> Value {
    let doc = parse_one_yaml(&read(name), name);
    let mut route = doc["routes"][0].clone();
    route.as_object_mut().unwrap().remove("id");
    route
}

/// Secrets as the standalone files spell them, so the forms compare equal.
const SCRIPT_ENV: &[(&str, &str)] = &[
    ("APISIX_ADMIN_KEY", "test-admin-key"),
    ("OIDC_CLIENT_SECRET", "${{OIDC_CLIENT_SECRET}}"),
    ("OIDC_SESSION_SECRET", "${{OIDC_SESSION_SECRET}}"),
];

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn the_standalone_forward_auth_recipe_passes_every_check() {
    assert_clean(check_standalone(
        &read("apisix-forward-auth.yaml"),
        Mode::ForwardAuth,
        "apisix-forward-auth.yaml",
    ));
}

#[test]
fn the_standalone_upstream_recipe_passes_every_check() {
    assert_clean(check_standalone(&read("apisix-upstream.yaml"), Mode::Upstream, "apisix-upstream.yaml"));
}

#[test]
fn the_admin_api_scripts_put_the_standalone_routes() {
    for (script, standalone, id, mode) in [
        ("admin-api-forward-auth.sh", "apisix-forward-auth.yaml", "identity-forward-auth", Mode::ForwardAuth),
        ("admin-api-upstream.sh", "apisix-upstream.yaml", "identity-upstream", Mode::Upstream),
    ] {
        let (args, body) = run_admin_script(script, SCRIPT_ENV);
        assert_clean(check_route(&body, mode, script));
        assert!(args.iter().any(|a| a == "PUT"), "{script}: {args:?}");
        assert!(
            args.iter().any(|a| a == &format!("http://127.0.0.1:9180/apisix/admin/routes/{id}")),
            "{script}: {args:?}"
        );
        assert!(args.iter().any(|a| a == "X-API-KEY: test-admin-key"), "{script}: {args:?}");
        assert_eq!(body, standalone_route(standalone), "{script} and {standalone} differ");
    }
}

#[test]
fn an_admin_api_script_refuses_to_run_without_its_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg(dir().join("admin-api-upstream.sh"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("APISIX_ADMIN_KEY", "k")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("OIDC_CLIENT_SECRET"));
}

#[test]
fn the_apisixroute_manifests_configure_the_standalone_plugins() {
    for (manifest, standalone, mode) in [
        ("apisixroute-forward-auth.yaml", "apisix-forward-auth.yaml", Mode::ForwardAuth),
        ("apisixroute-upstream.yaml", "apisix-upstream.yaml", Mode::Upstream),
    ] {
        let doc = parse_one_yaml(&read(manifest), manifest);
        assert_clean(check_apisixroute(&doc, mode, manifest));
        let mut ignored = Vec::new();
        let mut plugins = apisixroute_plugins(&doc["spec"]["http"][0], &mut ignored, manifest);
        let mut expected = standalone_route(standalone)["plugins"].clone();
        // The sidecar's address is a Service name in Kubernetes; everything else is equal.
        for p in [&mut plugins, &mut expected] {
            if let Some(fa) = p.get_mut("forward-auth") {
                fa["uri"] = Value::from("(the sidecar)");
            }
        }
        assert_eq!(plugins, expected, "{manifest} and {standalone} differ");
    }
}

#[test]
fn both_config_snippets_turn_underscore_headers_off() {
    for name in ["config.yaml", "config-standalone.yaml"] {
        assert_clean(check_underscores_off(&read(name), name));
    }
    let standalone = parse_one_yaml(&read("config-standalone.yaml"), "config-standalone.yaml");
    assert_eq!(standalone.pointer("/deployment/role_data_plane/config_provider"), Some(&Value::from("yaml")));
}

#[test]
fn the_sidecar_configurations_beside_the_recipes_load_and_read_x_access_token() {
    for name in ["sidecar-forward-auth.toml", "sidecar-upstream.toml"] {
        let path = dir().join(name);
        let config = identity_sidecar::Config::load(Some(path.as_path()), Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        identity_sidecar::app::check(&config).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(config.oidc.token_sources.contains(&TokenSource::XAccessToken), "{name}");
        assert!(
            (config.oidc.http_timeout_secs as i64) * 1000 <= SIDECAR_HTTP_TIMEOUT_MS,
            "{name}: forward-auth's timeout is sized for a {SIDECAR_HTTP_TIMEOUT_MS} ms JWKS fetch"
        );
        assert_eq!(config.upstream.url.is_some(), name.contains("upstream"), "{name}");
    }
}

/// A file added to deploy/apisix/ must be added to these checks.
#[test]
fn every_file_in_deploy_apisix_is_checked_by_this_file() {
    let checked: BTreeSet<&str> = [
        "config.yaml",
        "config-standalone.yaml",
        "apisix-forward-auth.yaml",
        "apisix-upstream.yaml",
        "admin-api-forward-auth.sh",
        "admin-api-upstream.sh",
        "apisixroute-forward-auth.yaml",
        "apisixroute-upstream.yaml",
        "sidecar-forward-auth.toml",
        "sidecar-upstream.toml",
    ]
    .into();
    let present: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    assert_eq!(
        present, checked,
        "a file in deploy/apisix/ that no test checks, or a checked file that is gone"
    );
}

/// Breaks a recipe in each way the checks guard against and expects a finding each time.
#[test]
fn a_misspelt_or_missing_key_is_reported() {
    let forward = read("apisix-forward-auth.yaml");
    let upstream = read("apisix-upstream.yaml");
    let cases: Vec<(&str, String, Mode, &str)> = vec![
        (
            "misspelt openid-connect key",
            upstream.replace("set_id_token_header: false", "set_id_token_heder: false"),
            Mode::Upstream,
            "set_id_token_heder",
        ),
        (
            "misspelt forward-auth key",
            forward.replace("upstream_headers:", "upsteam_headers:"),
            Mode::ForwardAuth,
            "upsteam_headers",
        ),
        (
            "misspelt route key",
            forward.replace("    uri: /app/*", "    url: /app/*"),
            Mode::ForwardAuth,
            "`url`",
        ),
        (
            "a key newer than 3.14",
            forward.replace("timeout: 10000", "timeout: 10000\n        max_req_body_size: 1024"),
            Mode::ForwardAuth,
            "max_req_body_size",
        ),
        (
            "no session secret",
            upstream.replace("        session:\n          secret: ${{OIDC_SESSION_SECRET}}\n", ""),
            Mode::Upstream,
            "session.secret",
        ),
        (
            "short session secret",
            upstream.replace("${{OIDC_SESSION_SECRET}}", "short"),
            Mode::Upstream,
            "at least 16",
        ),
        ("no #END", forward.replace("#END", ""), Mode::ForwardAuth, "#END"),
        (
            "an owned header left out",
            forward.replace("          - X-Identity-Active-Organization\n", ""),
            Mode::ForwardAuth,
            "x-identity-active-organization",
        ),
        (
            "Retry-After not passed",
            forward.replace("          - Retry-After\n", ""),
            Mode::ForwardAuth,
            "retry-after",
        ),
        ("Origin not sent", forward.replace("          - Origin\n", ""), Mode::ForwardAuth, "origin"),
        (
            "default status_on_error",
            forward.replace("status_on_error: 503", "status_on_error: 403"),
            Mode::ForwardAuth,
            "status_on_error",
        ),
        ("default timeout", forward.replace("timeout: 10000", "timeout: 3000"), Mode::ForwardAuth, "timeout"),
        (
            "degradation",
            forward.replace("allow_degradation: false", "allow_degradation: true"),
            Mode::ForwardAuth,
            "allow_degradation",
        ),
        (
            "a strip that reads 100 headers",
            forward.replace("ngx.req.get_headers(0, true)", "ngx.req.get_headers()"),
            Mode::ForwardAuth,
            "get_headers(0",
        ),
        (
            "id token header on",
            upstream.replace("set_id_token_header: false", "set_id_token_header: true"),
            Mode::Upstream,
            "set_id_token_header",
        ),
        (
            "token in Authorization",
            upstream.replace(
                "access_token_in_authorization_header: false",
                "access_token_in_authorization_header: true",
            ),
            Mode::Upstream,
            "X-Access-Token",
        ),
    ];
    for (what, text, mode, expect) in cases {
        let original = if mode == Mode::Upstream { &upstream } else { &forward };
        assert_ne!(&text, original, "{what}: the mutation did not apply");
        let findings = check_standalone(&text, mode, what);
        assert!(
            findings.iter().any(|f| f.contains(expect)),
            "{what}: expected a finding with {expect:?}, got {findings:?}"
        );
    }

    // underscores_in_headers written as a bare YAML boolean.
    let bare = read("config.yaml").replace("\"off\"", "off");
    let findings = check_underscores_off(&bare, "bare");
    assert!(findings.iter().any(|f| f.contains("quoted")), "{findings:?}");

    // An ApisixRoute plugin with a misspelt field.
    let manifest = read("apisixroute-forward-auth.yaml").replace("secretRef", "secretref");
    let manifest = manifest.replace(
        "          enable: true\n          config:\n            uri:",
        "          enabled: true\n          config:\n            uri:",
    );
    let findings = check_apisixroute(&parse_one_yaml(&manifest, "m"), Mode::ForwardAuth, "m");
    assert!(findings.iter().any(|f| f.contains("`enabled`")), "{findings:?}");
}

/// `docs/integrations/apisix.md` prints each file after a `<!-- file: PATH -->` marker; what it
/// prints must be the file, byte for byte, and every file must be printed.
#[test]
fn the_apisix_page_prints_every_file_as_it_is() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let page =
        std::fs::read_to_string(root.join("docs/integrations/apisix.md")).expect("the APISIX page exists");
    let mut printed = BTreeSet::new();
    let mut rest = page.as_str();
    while let Some(at) = rest.find("<!-- file: ") {
        rest = &rest[at + "<!-- file: ".len()..];
        let (path, after) = rest.split_once(" -->\n").expect("marker ends with ` -->`");
        let after = after.strip_prefix("```").expect("a fence follows the marker");
        let (_, body) = after.split_once('\n').expect("fence line");
        let (content, _) = body.split_once("\n```\n").expect("closing fence");
        let file = std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(format!("{content}\n"), file, "the page prints {path} differently from the file");
        printed.insert(path.trim_start_matches("deploy/apisix/").to_string());
        rest = body;
    }
    let present: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(printed, present, "every file in deploy/apisix/ is printed on the page");
}
