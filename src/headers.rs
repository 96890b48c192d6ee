//! The header contract (SPEC §5): strip every identity header a client sent, then emit every
//! owned header — empty where nothing applies — so a gateway's header list never lets a
//! client value through.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::auth::validate::Principal;

pub const STATUS: HeaderName = HeaderName::from_static("x-identity-status");
pub const SUBJECT: HeaderName = HeaderName::from_static("x-identity-subject");
pub const EMAIL: HeaderName = HeaderName::from_static("x-identity-email");
pub const USERNAME: HeaderName = HeaderName::from_static("x-identity-username");
pub const NAME: HeaderName = HeaderName::from_static("x-identity-name");
pub const ROLES: HeaderName = HeaderName::from_static("x-identity-roles");
pub const ORGANIZATIONS: HeaderName = HeaderName::from_static("x-identity-organizations");
pub const MANAGED_ORGANIZATIONS: HeaderName = HeaderName::from_static("x-identity-managed-organizations");
pub const CONTRACTS: HeaderName = HeaderName::from_static("x-identity-contracts");
pub const ENTITLEMENTS: HeaderName = HeaderName::from_static("x-identity-entitlements");
pub const USERINFO: HeaderName = HeaderName::from_static("x-userinfo");

/// Every header the sidecar owns, in the order it emits them.
pub const OWNED: [HeaderName; 11] = [
    STATUS,
    SUBJECT,
    EMAIL,
    USERNAME,
    NAME,
    ROLES,
    ORGANIZATIONS,
    MANAGED_ORGANIZATIONS,
    CONTRACTS,
    ENTITLEMENTS,
    USERINFO,
];

/// Whether a client-sent header name is one the sidecar owns. Names are compared
/// lower-cased with `_` read as `-`, because nginx, gunicorn and others map
/// `X_Identity_Email` onto the same variable as `X-Identity-Email`.
pub fn is_owned(name: &str) -> bool {
    let mut normalised = [0u8; 64];
    let bytes = name.as_bytes();
    let n = bytes.len().min(normalised.len());
    for (dst, src) in normalised.iter_mut().zip(&bytes[..n]) {
        *dst = match src.to_ascii_lowercase() {
            b'_' => b'-',
            c => c,
        };
    }
    let normalised = &normalised[..n];
    normalised.starts_with(b"x-identity-") || normalised == b"x-userinfo" || normalised == b"x-id-token"
}

/// Removes every owned header (any spelling) from `headers`.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers.keys().filter(|name| is_owned(name.as_str())).cloned().collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// Characters encoded inside a header value: controls (CR/LF never reach the wire), `%`,
/// `,` (the list separator) and, by `utf8_percent_encode`, every non-ASCII byte.
const VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%').add(b',');

/// Percent-encodes one value for a header.
pub fn encode_value(value: &str) -> String {
    encode_cow(value).into_owned()
}

/// Percent-encodes one value, borrowing it when nothing needs encoding (the usual case;
/// cheaper than formatting it through `Display`).
fn encode_cow(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, VALUE_ESCAPES).into()
}

/// A sorted, comma-separated list of encoded items.
pub fn encode_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut encoded: Vec<Cow<'_, str>> = items.iter().map(|s| encode_cow(s.as_ref())).collect();
    encoded.sort();
    encoded.dedup();
    encoded.join(",")
}

/// Whether the identity is fresh, anonymous, or served from a stale cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Authenticated,
    Anonymous,
    Stale,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Authenticated => "authenticated",
            Status::Anonymous => "anonymous",
            Status::Stale => "stale",
        }
    }
}

/// The B2B facts of a caller; empty until the B2B core fills them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct B2b {
    /// Keys of the user's organizations.
    pub organizations: Vec<String>,
    /// Keys of organizations where the user is a manager.
    pub managed_organizations: Vec<String>,
    /// Keys of attached contracts valid today.
    pub contracts: Vec<String>,
    /// The signed entitlement token (compact JWS), empty when none.
    pub entitlements: String,
}

/// Renders the full owned header set for a caller (`None` = anonymous).
pub fn render(
    status: Status,
    caller: Option<(&Principal, &B2b)>,
    userinfo: bool,
) -> Vec<(HeaderName, HeaderValue)> {
    let Some((p, b2b)) = caller else {
        let mut out: Vec<_> = OWNED.iter().map(|n| (n.clone(), HeaderValue::from_static(""))).collect();
        out[0].1 = HeaderValue::from_static(Status::Anonymous.as_str());
        return out;
    };
    let opt = |v: &Option<String>| v.as_deref().map(encode_value).unwrap_or_default();
    let values = [
        status.as_str().to_owned(),
        encode_value(&p.sub),
        opt(&p.email),
        opt(&p.preferred_username),
        opt(&p.name),
        encode_list(&p.roles),
        encode_list(&b2b.organizations),
        encode_list(&b2b.managed_organizations),
        encode_list(&b2b.contracts),
        b2b.entitlements.clone(),
        if userinfo { userinfo_value(p, b2b) } else { String::new() },
    ];
    OWNED
        .iter()
        .zip(values)
        .map(|(name, value)| {
            // Every value above is ASCII without controls by construction.
            let value = HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""));
            (name.clone(), value)
        })
        .collect()
}

/// `X-Userinfo`: base64 (standard) JSON of the token's identity claims as received, plus a
/// compact `b2b` object.
///
/// Written straight from the borrowed claims: the same bytes as inserting `b2b` into a copy
/// of the claims map and printing it (see [`Userinfo`]), without copying every claim — the
/// organization claim included — on every request.
fn userinfo_value(p: &Principal, b2b: &B2b) -> String {
    let object = Userinfo {
        claims: &p.userinfo,
        b2b: B2bSummary {
            contracts: &b2b.contracts,
            managed_organizations: &b2b.managed_organizations,
            organizations: &b2b.organizations,
        },
    };
    // Serialising borrowed JSON values and string lists into a Vec cannot fail.
    STANDARD.encode(serde_json::to_vec(&object).unwrap_or_default())
}

/// The claims map with a `b2b` member, printed as `serde_json` prints a `Map` (keys in sorted
/// order, `b2b` replacing a claim of that name): `serde_json` is built without
/// `preserve_order`, so its `Map` is a `BTreeMap`. The unit test compares the two.
struct Userinfo<'a> {
    claims: &'a Map<String, Value>,
    b2b: B2bSummary<'a>,
}

impl Serialize for Userinfo<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const KEY: &str = "b2b";
        let len = self.claims.len() + usize::from(!self.claims.contains_key(KEY));
        let mut map = serializer.serialize_map(Some(len))?;
        let mut pending = true;
        for (key, value) in self.claims {
            if pending && key.as_str() >= KEY {
                map.serialize_entry(KEY, &self.b2b)?;
                pending = false;
                if key == KEY {
                    continue;
                }
            }
            map.serialize_entry(key, value)?;
        }
        if pending {
            map.serialize_entry(KEY, &self.b2b)?;
        }
        map.end()
    }
}

/// `{"contracts": [...], "managed_organizations": [...], "organizations": [...]}`, each list
/// sorted (the members in the order a `json!` object prints them).
struct B2bSummary<'a> {
    contracts: &'a [String],
    managed_organizations: &'a [String],
    organizations: &'a [String],
}

impl Serialize for B2bSummary<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("contracts", &Sorted(self.contracts))?;
        map.serialize_entry("managed_organizations", &Sorted(self.managed_organizations))?;
        map.serialize_entry("organizations", &Sorted(self.organizations))?;
        map.end()
    }
}

/// A string list printed in sorted order (usually it already is).
struct Sorted<'a>(&'a [String]);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_sorted() {
            serializer.collect_seq(self.0)
        } else {
            let mut items: Vec<&str> = self.0.iter().map(String::as_str).collect();
            items.sort_unstable();
            serializer.collect_seq(items)
        }
    }
}

/// Replaces the owned headers in `headers` with `rendered`.
pub fn inject(headers: &mut HeaderMap, rendered: &[(HeaderName, HeaderValue)]) {
    strip_identity_headers(headers);
    for (name, value) in rendered {
        headers.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_owned_header_is_owned() {
        for name in [
            "x-identity-subject",
            "X-Identity-Email",
            "X_Identity_Subject",
            "x-identity_email",
            "X_Userinfo",
            "x-userinfo",
            "X-ID-Token",
            "x_id_token",
            "x-identity-anything-new",
        ] {
            assert!(is_owned(name), "{name}");
        }
        for name in ["x-identityx", "x-user-info", "authorization", "x-id-tokens", "x-request-id"] {
            assert!(!is_owned(name), "{name}");
        }
    }

    #[test]
    fn strip_removes_all_spellings_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        h.insert("x_identity_subject", HeaderValue::from_static("evil"));
        h.insert("x-identity_email", HeaderValue::from_static("evil"));
        h.insert("x_userinfo", HeaderValue::from_static("evil"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_identity_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode_value("Zoë Ämm"), "Zo%C3%AB %C3%84mm");
        assert_eq!(encode_value("50%,x"), "50%25%2Cx");
        assert_eq!(encode_value("a\r\nb"), "a%0D%0Ab");
        assert_eq!(encode_list(&["b", "a,c", "b"]), "a%2Cc,b");
    }

    /// The previous `X-Userinfo` code: a copy of the claims with `b2b` inserted, printed.
    fn userinfo_by_copy(p: &Principal, b2b: &B2b) -> String {
        let mut object = p.userinfo.clone();
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        object.insert(
            "b2b".into(),
            serde_json::json!({
                "organizations": sorted(&b2b.organizations),
                "managed_organizations": sorted(&b2b.managed_organizations),
                "contracts": sorted(&b2b.contracts),
            }),
        );
        STANDARD.encode(Value::Object(object).to_string())
    }

    #[test]
    fn userinfo_is_written_as_a_copy_of_the_claims_with_b2b_would_print() {
        use serde_json::json;
        let b2b = B2b {
            organizations: vec!["zeta".into(), "acme".into(), "m\u{e9}t\"a".into()],
            managed_organizations: vec!["acme".into()],
            contracts: vec![],
            entitlements: String::new(),
        };
        let claims = [
            json!({}),
            json!({"sub": "u1", "email": "a@x.org", "email_verified": true, "name": "Zoë \"Q\" </>",
                   "organization": {"acme": {"id": "2a0e2e54-3f5e-4f7c-9a1e-0c1b2d3e4f50", "n": [1, 2.5, null]}}}),
            // Keys before and after "b2b", and a claim named "b2b" (an organization claim can be
            // named anything): the inserted object replaces it in place.
            json!({"a_org": ["x"], "b2b": "claimed", "b2c": 1, "aaa": {}, "sub": "u"}),
            json!({"b2": 1, "b2b0": 2, "B2B": 3}),
        ];
        for claims in claims {
            let Value::Object(userinfo) = claims else { unreachable!() };
            let p = Principal {
                sub: "u".into(),
                sid: None,
                exp: 0,
                scope: String::new(),
                email: None,
                preferred_username: None,
                name: None,
                roles: vec![],
                organizations: Default::default(),
                userinfo,
            };
            assert_eq!(userinfo_value(&p, &b2b), userinfo_by_copy(&p, &b2b), "{:?}", p.userinfo);
        }
    }

    #[test]
    fn anonymous_gets_every_owned_header_empty_but_status() {
        let h = render(Status::Anonymous, None, true);
        assert_eq!(h.len(), OWNED.len());
        assert_eq!(h[0], (STATUS, HeaderValue::from_static("anonymous")));
        assert!(h[1..].iter().all(|(_, v)| v.is_empty()));
    }
}
