//! The token validation policy (docs/contract.md §2). Pure code: no IO, the time is passed in.
//!
//! A token goes through three steps, each of which can only reject:
//! 1. [`pre_parse`]: size cap before any decoding, compact-JWS shape (JWE and nested tokens
//!    rejected), header checks (algorithm from config only, no embedded keys, no `crit`);
//! 2. [`KeySet::select`](crate::auth::jwks::KeySet::select) and [`verify_signature`]: the key
//!    named by `kid` must fit the algorithm;
//! 3. [`check_claims`]: issuer, audience-or-azp, explicit typing, `exp`/`nbf`/`iat`, `sub`.
//!
//! The result is a typed [`Principal`]; nothing after this module reads raw claims.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::auth::org_claim::{ClaimedOrgs, parse_org_claim};
use crate::config::Config;

/// An `oidc.algorithms` entry the policy cannot accept; the message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlgorithmError {
    /// Not a JWS algorithm name (`none` is not one either: unsigned tokens never pass).
    Unknown(String),
    /// `HS256`, `HS384`, `HS512`: a shared secret would let anyone who verifies also sign.
    Hmac(String),
}

impl std::fmt::Display for AlgorithmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AlgorithmError::Unknown(name) => write!(f, "oidc.algorithms: {name:?}: unknown algorithm"),
            AlgorithmError::Hmac(name) => {
                write!(f, "oidc.algorithms: {name:?}: HMAC algorithms are never accepted")
            }
        }
    }
}

impl std::error::Error for AlgorithmError {}

/// Parses an algorithm name allowed in `oidc.algorithms`; HMAC and `none` never are.
fn allowed_algorithm(name: &str) -> Result<Algorithm, AlgorithmError> {
    let alg: Algorithm = name.parse().map_err(|_| AlgorithmError::Unknown(name.to_owned()))?;
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Err(AlgorithmError::Hmac(name.to_owned())),
        _ => Ok(alg),
    }
}

/// Everything the policy needs from configuration, resolved once at startup.
#[derive(Debug, Clone)]
pub struct Policy {
    pub issuer: String,
    /// Empty means any audience (`oidc.allow_any_audience`).
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub require_typ: bool,
    pub leeway_secs: u64,
    pub max_token_bytes: usize,
    pub org_claim: String,
    pub client_roles_of: Vec<String>,
    /// Which claims the principal keeps for `X-Userinfo`.
    pub userinfo: UserinfoClaims,
}

/// The claims a [`Principal`] keeps for `X-Userinfo` (`headers.userinfo_claims`). Only what
/// is configured is kept: principals live in the token cache, and with `X-Userinfo` off or a
/// short list there is no reason to hold every claim of every token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserinfoClaims {
    /// `headers.userinfo = false`: none.
    Off,
    /// These claims, when the token has them.
    Named(Vec<String>),
    /// `["*"]`: every claim of the token (the decoded claims map is moved, not copied).
    All,
}

impl UserinfoClaims {
    /// The selection `headers` configures.
    pub fn from_config(headers: &crate::config::HeadersConfig) -> UserinfoClaims {
        if !headers.userinfo {
            UserinfoClaims::Off
        } else if headers.all_userinfo_claims() {
            UserinfoClaims::All
        } else {
            UserinfoClaims::Named(headers.userinfo_claims.clone())
        }
    }
}

impl Policy {
    /// The policy `config` describes, or the first `oidc.algorithms` entry it cannot accept.
    pub fn try_new(config: &Config) -> Result<Policy, AlgorithmError> {
        let oidc = &config.oidc;
        Ok(Policy {
            issuer: oidc.issuer.clone(),
            audiences: oidc.audiences.clone(),
            algorithms: oidc.algorithms.iter().map(|a| allowed_algorithm(a)).collect::<Result<_, _>>()?,
            require_typ: oidc.require_typ,
            leeway_secs: oidc.leeway_secs,
            max_token_bytes: oidc.max_token_bytes,
            org_claim: config.organizations.claim.clone(),
            client_roles_of: oidc.client_roles_of.clone(),
            userinfo: UserinfoClaims::from_config(&config.headers),
        })
    }
}

/// Why a token was refused. The code is the only thing about a token that is ever logged
/// or counted; the description goes into `WWW-Authenticate` and the problem body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The request's credentials can be read more than one way (docs/contract.md §2 v2): several
    /// `Authorization` headers, a token source given twice, a `Bearer` value that is not
    /// exactly `Bearer <token>`, or different tokens in two sources. An app behind the
    /// sidecar might read the other one.
    Ambiguous,
    TooLarge,
    Malformed,
    Encrypted,
    Nested,
    AlgNone,
    AlgNotAllowed,
    EmbeddedKey,
    UnknownCrit,
    AmbiguousKey,
    UnknownKid,
    KeyMismatch,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    WrongType,
    Expired,
    NotYetValid,
    IssuedInFuture,
    MissingExp,
    MissingSub,
}

impl Reject {
    /// A short, stable reason code (metric label, log field).
    pub fn code(self) -> &'static str {
        match self {
            Reject::Ambiguous => "ambiguous",
            Reject::TooLarge => "too_large",
            Reject::Malformed => "malformed",
            Reject::Encrypted => "encrypted",
            Reject::Nested => "nested",
            Reject::AlgNone => "alg_none",
            Reject::AlgNotAllowed => "alg_not_allowed",
            Reject::EmbeddedKey => "embedded_key",
            Reject::UnknownCrit => "unknown_crit",
            Reject::AmbiguousKey => "ambiguous_key",
            Reject::UnknownKid => "unknown_kid",
            Reject::KeyMismatch => "key_mismatch",
            Reject::BadSignature => "bad_signature",
            Reject::WrongIssuer => "wrong_issuer",
            Reject::WrongAudience => "wrong_audience",
            Reject::WrongType => "wrong_type",
            Reject::Expired => "expired",
            Reject::NotYetValid => "not_yet_valid",
            Reject::IssuedInFuture => "issued_in_future",
            Reject::MissingExp => "missing_exp",
            Reject::MissingSub => "missing_sub",
        }
    }

    /// Human-readable description for `error_description` (no token content in it).
    pub fn description(self) -> &'static str {
        match self {
            Reject::Ambiguous => {
                "The credentials are ambiguous: send one token, once, as Bearer, one space and the token."
            }
            Reject::TooLarge => "The token is too large.",
            Reject::Malformed => "The token is not a well-formed JWS.",
            Reject::Encrypted => "Encrypted tokens (JWE) are not accepted.",
            Reject::Nested => "Nested tokens are not accepted.",
            Reject::AlgNone => "Unsigned tokens are not accepted.",
            Reject::AlgNotAllowed => "The token's algorithm is not accepted.",
            Reject::EmbeddedKey => "Tokens carrying their own key are not accepted.",
            Reject::UnknownCrit => "The token has unsupported critical header parameters.",
            Reject::AmbiguousKey => "The token names no key and the issuer has several.",
            Reject::UnknownKid => "The token's signing key is unknown.",
            Reject::KeyMismatch => "The token's algorithm does not fit its key.",
            Reject::BadSignature => "The token's signature is invalid.",
            Reject::WrongIssuer => "The token was issued by another issuer.",
            Reject::WrongAudience => "The token is not meant for this service.",
            Reject::WrongType => "The token is not an access token.",
            Reject::Expired => "The token has expired.",
            Reject::NotYetValid => "The token is not valid yet.",
            Reject::IssuedInFuture => "The token was issued in the future.",
            Reject::MissingExp => "The token has no expiry.",
            Reject::MissingSub => "The token has no subject.",
        }
    }
}

/// A token that passed the header checks and awaits its signature check.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// Header `typ`, for explicit typing of tokens without a `typ` claim.
    pub typ: Option<String>,
    /// `base64(header).base64(payload)`: what the signature covers.
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

/// Header checks. Runs before any key is looked up, so a hostile token costs one small
/// base64 + JSON decode of at most `max_token_bytes`.
pub fn pre_parse<'a>(token: &'a str, policy: &Policy) -> Result<Unverified<'a>, Reject> {
    if token.len() > policy.max_token_bytes {
        return Err(Reject::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Reject::Malformed);
    };
    match parts.count() {
        0 => {}
        2 => return Err(Reject::Encrypted),
        _ => return Err(Reject::Malformed),
    }
    if header.is_empty() || payload.is_empty() {
        return Err(Reject::Malformed);
    }
    if signature.is_empty() {
        return Err(Reject::BadSignature);
    }
    let header_json = URL_SAFE_NO_PAD.decode(header).map_err(|_| Reject::Malformed)?;
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&header_json) else {
        return Err(Reject::Malformed);
    };
    if fields.contains_key("enc") {
        return Err(Reject::Encrypted);
    }
    let alg = match fields.get("alg") {
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => return Err(Reject::AlgNone),
        Some(Value::String(a)) => a.parse::<Algorithm>().map_err(|_| Reject::AlgNotAllowed)?,
        _ => return Err(Reject::Malformed),
    };
    if !policy.algorithms.contains(&alg) {
        return Err(Reject::AlgNotAllowed);
    }
    if ["jwk", "jku", "x5u", "x5c"].iter().any(|k| fields.contains_key(*k)) {
        return Err(Reject::EmbeddedKey);
    }
    // We implement no JWS extension, so any `crit` entry is one we do not understand
    // (RFC 7515 §4.1.11: the recipient must then reject), and `b64: false` (RFC 7797)
    // always comes with `crit`.
    if fields.contains_key("crit") || fields.contains_key("b64") {
        return Err(Reject::UnknownCrit);
    }
    if let Some(Value::String(cty)) = fields.get("cty")
        && cty.eq_ignore_ascii_case("jwt")
    {
        return Err(Reject::Nested);
    }
    let kid = match fields.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Reject::Malformed),
    };
    let typ = match fields.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(Reject::Malformed),
    };
    Ok(Unverified {
        alg,
        kid,
        typ,
        signing_input: &token[..header.len() + 1 + payload.len()],
        payload,
        signature,
    })
}

/// Checks the signature with the key chosen for this token.
pub fn verify_signature(token: &Unverified<'_>, key: &DecodingKey) -> Result<(), Reject> {
    match jsonwebtoken::crypto::verify(token.signature, token.signing_input.as_bytes(), key, token.alg) {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(Reject::BadSignature),
    }
}

/// The authenticated caller, parsed once from a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub sub: String,
    /// Keycloak session id, part of what identifies a login.
    pub sid: Option<String>,
    /// Token expiry (unix seconds): caches never keep this principal longer.
    pub exp: u64,
    /// The granted scopes, space-separated as in the token.
    pub scope: String,
    pub email: Option<String>,
    /// The token's `email_verified` is `true` (only then may the e-mail accept a seat
    /// assignment, docs/contract.md §12).
    pub email_verified: bool,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    /// Realm roles, plus `client:role` for clients in `oidc.client_roles_of`; sorted.
    pub roles: Vec<String>,
    /// The normalised organization claim.
    pub organizations: ClaimedOrgs,
    /// The claims `X-Userinfo` passes on (docs/contract.md §5, `headers.userinfo_claims`), as received.
    pub userinfo: Map<String, Value>,
}

/// Decodes the payload and applies the claim rules. `now` is unix seconds.
pub fn check_claims(token: &Unverified<'_>, policy: &Policy, now: u64) -> Result<Principal, Reject> {
    let payload = URL_SAFE_NO_PAD.decode(token.payload).map_err(|_| Reject::Malformed)?;
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&payload) else {
        return Err(Reject::Malformed);
    };

    if claims.get("iss").and_then(Value::as_str) != Some(policy.issuer.as_str()) {
        return Err(Reject::WrongIssuer);
    }
    if !audience_matches(&claims, &policy.audiences) {
        return Err(Reject::WrongAudience);
    }
    match claims.get("typ") {
        Some(Value::String(t)) if t == "Bearer" => {}
        Some(_) => return Err(Reject::WrongType),
        None if !policy.require_typ => {}
        None => {
            let explicit = token.typ.as_deref().is_some_and(|t| {
                t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
            });
            if !explicit {
                return Err(Reject::WrongType);
            }
        }
    }

    let leeway = policy.leeway_secs;
    let exp = numeric_date(&claims, "exp")?.ok_or(Reject::MissingExp)?;
    if exp.saturating_add(leeway) <= now {
        return Err(Reject::Expired);
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(Reject::NotYetValid);
    }
    if let Some(iat) = numeric_date(&claims, "iat")?
        && iat > now.saturating_add(leeway)
    {
        return Err(Reject::IssuedInFuture);
    }
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(Reject::MissingSub),
    };

    let string = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut principal = Principal {
        sid: string("sid"),
        exp,
        scope: string("scope").unwrap_or_default(),
        email: string("email"),
        email_verified: claims.get("email_verified") == Some(&Value::Bool(true)),
        preferred_username: string("preferred_username"),
        name: string("name"),
        roles: roles(&claims, &policy.client_roles_of),
        organizations: parse_org_claim(claims.get(&policy.org_claim)),
        userinfo: Map::new(),
        sub,
    };
    principal.userinfo = match &policy.userinfo {
        UserinfoClaims::Off => Map::new(),
        UserinfoClaims::Named(names) => {
            names.iter().filter_map(|k| claims.get(k).map(|v| (k.clone(), v.clone()))).collect()
        }
        UserinfoClaims::All => claims,
    };
    Ok(principal)
}

/// docs/contract.md §2: any configured audience in `aud`, or equal to `azp` (Keycloak puts the client
/// id in `azp` and `account` in `aud`).
fn audience_matches(claims: &Map<String, Value>, audiences: &[String]) -> bool {
    if audiences.is_empty() {
        return true;
    }
    let in_aud = match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).any(|a| audiences.iter().any(|x| x == a))
        }
        _ => false,
    };
    in_aud || claims.get("azp").and_then(Value::as_str).is_some_and(|azp| audiences.iter().any(|x| x == azp))
}

/// A NumericDate claim: absent is `None`; present but not a non-negative number is malformed.
fn numeric_date(claims: &Map<String, Value>, key: &str) -> Result<Option<u64>, Reject> {
    match claims.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(Reject::Malformed),
        Some(_) => Err(Reject::Malformed),
    }
}

fn roles(claims: &Map<String, Value>, clients: &[String]) -> Vec<String> {
    let names = |v: Option<&Value>| -> Vec<String> {
        v.and_then(|r| r.get("roles"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let mut out = names(claims.get("realm_access"));
    let resource = claims.get("resource_access");
    for client in clients {
        for role in names(resource.and_then(|r| r.get(client))) {
            out.push(format!("{client}:{role}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy {
            issuer: "https://kc/realms/r".into(),
            audiences: vec!["app".into()],
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            require_typ: true,
            leeway_secs: 30,
            max_token_bytes: 16 * 1024,
            org_claim: "organization".into(),
            client_roles_of: vec!["app".into()],
            userinfo: UserinfoClaims::from_config(&crate::config::HeadersConfig::default()),
        }
    }

    fn encode(header: &Value, claims: &Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{h}.{c}.c2ln")
    }

    fn claims() -> Value {
        json!({"iss": "https://kc/realms/r", "aud": "account", "azp": "app", "typ": "Bearer",
               "sub": "u1", "exp": 2000, "iat": 1000, "scope": "openid organization:*",
               "realm_access": {"roles": ["b", "a"]},
               "resource_access": {"app": {"roles": ["x"]}, "other": {"roles": ["y"]}},
               "organization": ["acme"]})
    }

    fn check(header: Value, claims: Value, now: u64) -> Result<Principal, Reject> {
        let token = encode(&header, &claims);
        let unverified = pre_parse(&token, &policy())?;
        check_claims(&unverified, &policy(), now)
    }

    fn rs256() -> Value {
        json!({"alg": "RS256", "kid": "k1", "typ": "JWT"})
    }

    #[test]
    fn a_keycloak_access_token_becomes_a_principal() {
        let p = check(rs256(), claims(), 1500).unwrap();
        assert_eq!(p.sub, "u1");
        assert_eq!(p.roles, vec!["a", "app:x", "b"]);
        assert_eq!(p.exp, 2000);
        assert_eq!(p.userinfo.get("organization"), Some(&json!(["acme"])));
        assert!(!p.userinfo.contains_key("realm_access"));
    }

    #[test]
    fn the_principal_keeps_only_the_configured_userinfo_claims() {
        let mut c = claims();
        c["email_optin"] = json!(true);
        c["country_code"] = json!("DE");
        c["given_name"] = json!("Zoë");
        let token = encode(&rs256(), &c);
        let keys = |p: &Policy| -> Vec<String> {
            let principal = check_claims(&pre_parse(&token, p).unwrap(), p, 1500).unwrap();
            principal.userinfo.keys().cloned().collect()
        };

        // The default list: only the named claims the token has, custom ones left out.
        assert_eq!(keys(&policy()), ["given_name", "organization", "sub"]);

        let mut p = policy();
        p.userinfo = UserinfoClaims::Named(vec!["country_code".into(), "missing".into(), "sub".into()]);
        assert_eq!(keys(&p), ["country_code", "sub"]);

        // ["*"]: every claim, as received.
        p.userinfo = UserinfoClaims::All;
        let all = check_claims(&pre_parse(&token, &p).unwrap(), &p, 1500).unwrap();
        assert_eq!(Value::Object(all.userinfo), c);

        p.userinfo = UserinfoClaims::Off;
        assert!(keys(&p).is_empty());
    }

    #[test]
    fn hmac_and_none_cannot_be_configured() {
        let configured = |algorithms: &str| {
            let env = [
                ("SIDECAR__OIDC__ISSUER", "https://kc/realms/r"),
                ("SIDECAR__OIDC__AUDIENCES", r#"["app"]"#),
                ("SIDECAR__OIDC__ALGORITHMS", algorithms),
            ];
            Config::load(None, env.map(|(k, v)| (k.to_owned(), v.to_owned()))).unwrap()
        };
        for (alg, says) in [("HS256", "HMAC algorithms are never accepted"), ("none", "unknown algorithm")] {
            let err = Policy::try_new(&configured(&format!(r#"["RS256", "{alg}"]"#))).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains(&format!("oidc.algorithms: \"{alg}\"")) && message.contains(says),
                "{message}"
            );
        }
        let policy = Policy::try_new(&configured(r#"["PS256", "EdDSA"]"#)).unwrap();
        assert_eq!(policy.algorithms, [Algorithm::PS256, Algorithm::EdDSA]);
    }

    #[test]
    fn userinfo_claims_come_from_the_headers_config() {
        let mut headers = crate::config::HeadersConfig::default();
        let UserinfoClaims::Named(names) = UserinfoClaims::from_config(&headers) else { panic!() };
        assert_eq!(names, crate::config::DEFAULT_USERINFO_CLAIMS);
        headers.userinfo_claims = vec!["*".into()];
        assert_eq!(UserinfoClaims::from_config(&headers), UserinfoClaims::All);
        headers.userinfo = false;
        assert_eq!(UserinfoClaims::from_config(&headers), UserinfoClaims::Off);
    }

    #[test]
    fn header_attacks_are_rejected_before_any_key_lookup() {
        let p = policy();
        let c = claims();
        let cases = [
            (json!({"alg": "none"}), Reject::AlgNone),
            (json!({"alg": "NONE"}), Reject::AlgNone),
            (json!({"alg": "HS256"}), Reject::AlgNotAllowed),
            (json!({"alg": "PS256"}), Reject::AlgNotAllowed),
            (json!({"alg": "RS256", "jwk": {}}), Reject::EmbeddedKey),
            (json!({"alg": "RS256", "jku": "https://evil"}), Reject::EmbeddedKey),
            (json!({"alg": "RS256", "x5u": "https://evil"}), Reject::EmbeddedKey),
            (json!({"alg": "RS256", "x5c": ["AA"]}), Reject::EmbeddedKey),
            (json!({"alg": "RS256", "crit": ["exp"]}), Reject::UnknownCrit),
            (json!({"alg": "RS256", "cty": "JWT"}), Reject::Nested),
            (json!({"alg": "RSA-OAEP", "enc": "A256GCM"}), Reject::Encrypted),
            (json!({"alg": "RS256", "kid": 5}), Reject::Malformed),
            (json!({"kid": "k"}), Reject::Malformed),
        ];
        for (header, want) in cases {
            assert_eq!(pre_parse(&encode(&header, &c), &p).unwrap_err(), want, "{header}");
        }
    }

    #[test]
    fn shapes_that_are_not_a_compact_jws_are_rejected() {
        let p = policy();
        assert_eq!(pre_parse("a.b.c.d.e", &p).unwrap_err(), Reject::Encrypted);
        assert_eq!(pre_parse("abc", &p).unwrap_err(), Reject::Malformed);
        assert_eq!(pre_parse("a.b.c.d", &p).unwrap_err(), Reject::Malformed);
        assert_eq!(pre_parse("!!.!!.!!", &p).unwrap_err(), Reject::Malformed);
        let ok = encode(&rs256(), &claims());
        let unsigned = &ok[..ok.len() - 4];
        assert_eq!(pre_parse(unsigned, &p).unwrap_err(), Reject::BadSignature);
        let big = "a".repeat(p.max_token_bytes + 1);
        assert_eq!(pre_parse(&big, &p).unwrap_err(), Reject::TooLarge);
    }

    #[test]
    fn claim_rules_follow_the_spec() {
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            c
        };
        let without = |k: &str| {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(k);
            c
        };
        assert_eq!(
            check(rs256(), with("iss", json!("https://kc/realms/r/")), 1500),
            Err(Reject::WrongIssuer)
        );
        assert_eq!(check(rs256(), with("azp", json!("other")), 1500), Err(Reject::WrongAudience));
        assert!(check(rs256(), with("aud", json!(["x", "app"])), 1500).is_ok());
        assert!(check(rs256(), with("azp", json!("x")).clone(), 1500).is_err());
        for typ in ["ID", "Refresh", "Logout", "bearer"] {
            assert_eq!(check(rs256(), with("typ", json!(typ)), 1500), Err(Reject::WrongType), "{typ}");
        }
        assert_eq!(check(rs256(), without("typ"), 1500), Err(Reject::WrongType));
        let at_jwt = json!({"alg": "RS256", "typ": "at+jwt"});
        assert!(check(at_jwt, without("typ"), 1500).is_ok());
        assert_eq!(check(rs256(), claims(), 2030), Err(Reject::Expired));
        assert!(check(rs256(), claims(), 2029).is_ok());
        assert_eq!(check(rs256(), without("exp"), 1500), Err(Reject::MissingExp));
        assert_eq!(check(rs256(), with("exp", json!("2000")), 1500), Err(Reject::Malformed));
        assert_eq!(check(rs256(), with("nbf", json!(1600)), 1500), Err(Reject::NotYetValid));
        assert!(check(rs256(), with("nbf", json!(1520)), 1500).is_ok());
        assert_eq!(check(rs256(), with("iat", json!(1600)), 1500), Err(Reject::IssuedInFuture));
        assert_eq!(check(rs256(), without("sub"), 1500), Err(Reject::MissingSub));
        assert_eq!(check(rs256(), with("sub", json!("")), 1500), Err(Reject::MissingSub));
    }

    #[test]
    fn explicit_typing_can_be_turned_off() {
        let mut p = policy();
        p.require_typ = false;
        let mut c = claims();
        c.as_object_mut().unwrap().remove("typ");
        let token = encode(&rs256(), &c);
        assert!(check_claims(&pre_parse(&token, &p).unwrap(), &p, 1500).is_ok());
        c["typ"] = json!("ID");
        let token = encode(&rs256(), &c);
        assert_eq!(check_claims(&pre_parse(&token, &p).unwrap(), &p, 1500), Err(Reject::WrongType));
    }

    #[test]
    fn an_empty_audience_list_accepts_any_audience() {
        let mut p = policy();
        p.audiences.clear();
        let mut c = claims();
        c["azp"] = json!("whoever");
        let token = encode(&rs256(), &c);
        assert!(check_claims(&pre_parse(&token, &p).unwrap(), &p, 1500).is_ok());
    }
}
