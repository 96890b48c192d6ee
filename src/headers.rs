//! The header contract (docs/contract.md §5): strip every identity header a client sent, then emit every
//! owned header — empty where nothing applies — so a gateway's header list never lets a
//! client value through.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::auth::validate::Principal;
use crate::config::DEFAULT_USERINFO_CLAIMS;

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
pub const ACTIVE_ORGANIZATION: HeaderName = HeaderName::from_static("x-identity-active-organization");

/// Every header the sidecar owns, in the order it emits them.
pub const OWNED: [HeaderName; 12] = [
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
    ACTIVE_ORGANIZATION,
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
    /// The signed entitlement token (compact JWS, ASCII), empty when none. Held as [`Bytes`]
    /// so that its rendered header shares these bytes instead of copying them.
    pub entitlements: Bytes,
    /// Key of the request's active organization (docs/contract.md §10), `None` when none is.
    pub active_organization: Option<String>,
}

impl B2b {
    /// The entitlement token as text (empty when none).
    pub fn entitlement_token(&self) -> &str {
        std::str::from_utf8(&self.entitlements).unwrap_or_default()
    }
}

/// The rendered owned header set, and what had to be left out of `X-Userinfo` to keep it
/// under `headers.max_userinfo_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Every owned header, in [`OWNED`] order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub userinfo: Trimmed,
}

/// Claims left out of one `X-Userinfo` because of its size bound (all zero almost always).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Claims outside the default list ([`DEFAULT_USERINFO_CLAIMS`]) left out.
    pub extra: usize,
    /// Claims of the default list left out after every other claim was.
    pub default: usize,
    /// Whether even `sub` and `b2b` did not fit, so the value is empty.
    pub omitted: bool,
}

/// Renders the full owned header set for a caller (`None` = anonymous). `max_userinfo` is
/// `headers.max_userinfo_bytes`, or `None` when `X-Userinfo` is off.
pub fn render(status: Status, caller: Option<(&Principal, &B2b)>, max_userinfo: Option<usize>) -> Rendered {
    let Some((p, b2b)) = caller else {
        let mut out: Vec<_> = OWNED.iter().map(|n| (n.clone(), HeaderValue::from_static(""))).collect();
        out[0].1 = HeaderValue::from_static(Status::Anonymous.as_str());
        return Rendered { headers: out, userinfo: Trimmed::default() };
    };
    // Every value is ASCII without controls by construction.
    let text = |value: String| HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""));
    let opt = |v: &Option<String>| text(v.as_deref().map(encode_value).unwrap_or_default());
    let (userinfo, trimmed) = match max_userinfo {
        Some(max_bytes) => userinfo_value(p, b2b, max_bytes),
        None => (String::new(), Trimmed::default()),
    };
    let values = [
        HeaderValue::from_static(status.as_str()),
        text(encode_value(&p.sub)),
        opt(&p.email),
        opt(&p.preferred_username),
        opt(&p.name),
        text(encode_list(&p.roles)),
        text(encode_list(&b2b.organizations)),
        text(encode_list(&b2b.managed_organizations)),
        text(encode_list(&b2b.contracts)),
        // Shares the token's bytes with `b2b`.
        HeaderValue::from_maybe_shared(b2b.entitlements.clone())
            .unwrap_or_else(|_| HeaderValue::from_static("")),
        text(userinfo),
        opt(&b2b.active_organization),
    ];
    let headers = OWNED.iter().cloned().zip(values).collect();
    Rendered { headers, userinfo: trimmed }
}

/// `X-Userinfo`: base64 (standard) JSON of the claims the principal kept
/// (`headers.userinfo_claims`), as received, plus a compact `b2b` object — never longer than
/// `max_bytes` (docs/contract.md §5).
///
/// Written straight from the borrowed claims: the same bytes as inserting `b2b` into a copy
/// of the claims map and printing it (see [`Userinfo`]), without copying every claim — the
/// organization claim included — on every request. The usual value fits at the first try, so
/// a request costs one serialisation and one base64 pass, as before the bound existed; only
/// an oversized one pays for measuring its claims.
fn userinfo_value(p: &Principal, b2b: &B2b, max_bytes: usize) -> (String, Trimmed) {
    let summary = B2bSummary {
        active_organization: b2b.active_organization.as_deref(),
        contracts: &b2b.contracts,
        managed_organizations: &b2b.managed_organizations,
        organizations: &b2b.organizations,
    };
    let object = Userinfo { claims: &p.userinfo, b2b: summary, skip: &[] };
    // Serialising borrowed JSON values and string lists into a Vec cannot fail.
    let json = serde_json::to_vec(&object).unwrap_or_default();
    if encoded_len(json.len()) <= max_bytes {
        return (STANDARD.encode(json), Trimmed::default());
    }
    trim_userinfo(&p.userinfo, summary, max_bytes, json.len())
}

/// Length of the standard (padded) base64 encoding of `n` bytes.
fn encoded_len(n: usize) -> usize {
    n.div_ceil(3).saturating_mul(4)
}

/// Leaves claims out of an oversized `X-Userinfo` until it fits `max_bytes`: first those
/// outside the default list, largest first (docs/contract.md §5); then, so that a huge organization claim
/// does not cost the app its login, the default ones but `sub`, largest first. When `sub`
/// and `b2b` alone do not fit, the value is empty (an app reads no user, never a cut one).
fn trim_userinfo(
    claims: &Map<String, Value>,
    b2b: B2bSummary<'_>,
    max_bytes: usize,
    full: usize,
) -> (String, Trimmed) {
    // The most JSON bytes whose base64 stays within `max_bytes`.
    let budget = max_bytes / 4 * 3;
    // Each member costs `"key":value` and one comma; `b2b` is always there, so the object's
    // length is `{` + every member's cost (the last comma's byte is the closing `}`).
    let mut members: Vec<(&str, usize, bool)> = claims
        .iter()
        .filter(|(key, _)| key.as_str() != B2B)
        .map(|(key, value)| {
            let cost = json_len(key) + 1 + json_len(value) + 1;
            (key.as_str(), cost, DEFAULT_USERINFO_CLAIMS.contains(&key.as_str()))
        })
        .collect();
    // Extra claims before default ones, each group largest first; names break ties so the
    // same token always loses the same claims.
    members.sort_by(|a, b| a.2.cmp(&b.2).then(b.1.cmp(&a.1)).then(a.0.cmp(b.0)));
    let mut len = full;
    let mut skip = Vec::new();
    let mut trimmed = Trimmed::default();
    for (key, cost, default) in members {
        if len <= budget {
            break;
        }
        if key == "sub" {
            continue;
        }
        skip.push(key);
        len -= cost;
        if default {
            trimmed.default += 1;
        } else {
            trimmed.extra += 1;
        }
    }
    if len > budget {
        trimmed.omitted = true;
        return (String::new(), trimmed);
    }
    let json = serde_json::to_vec(&Userinfo { claims, b2b, skip: &skip }).unwrap_or_default();
    debug_assert_eq!(json.len(), len, "the trimmed length was computed right");
    (STANDARD.encode(json), trimmed)
}

/// Bytes `value` takes as compact JSON, without building the text.
fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    /// An `io::Write` that only counts (hand-written: four lines, no crate does less).
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing JSON values into a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The member `X-Userinfo` adds next to the claims.
const B2B: &str = "b2b";

/// The claims map with a `b2b` member, printed as `serde_json` prints a `Map` (keys in sorted
/// order, `b2b` replacing a claim of that name): `serde_json` is built without
/// `preserve_order`, so its `Map` is a `BTreeMap`. The unit test compares the two. Claims
/// named in `skip` are left out.
struct Userinfo<'a> {
    claims: &'a Map<String, Value>,
    b2b: B2bSummary<'a>,
    skip: &'a [&'a str],
}

impl Serialize for Userinfo<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kept = |key: &str| key != B2B && !self.skip.contains(&key);
        let len = 1 + self.claims.keys().filter(|k| kept(k)).count();
        let mut map = serializer.serialize_map(Some(len))?;
        let mut pending = true;
        for (key, value) in self.claims {
            if pending && key.as_str() >= B2B {
                map.serialize_entry(B2B, &self.b2b)?;
                pending = false;
            }
            if kept(key) {
                map.serialize_entry(key, value)?;
            }
        }
        if pending {
            map.serialize_entry(B2B, &self.b2b)?;
        }
        map.end()
    }
}

/// `{"active_organization": key or null, "contracts": [...], "managed_organizations": [...],
/// "organizations": [...]}`, each list sorted (the members in the order a `json!` object
/// prints them).
#[derive(Clone, Copy)]
struct B2bSummary<'a> {
    active_organization: Option<&'a str>,
    contracts: &'a [String],
    managed_organizations: &'a [String],
    organizations: &'a [String],
}

impl Serialize for B2bSummary<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("active_organization", &self.active_organization)?;
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
                "active_organization": b2b.active_organization,
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
            entitlements: Bytes::new(),
            active_organization: Some("acme".into()),
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
            let p = principal_with(claims);
            assert_eq!(
                userinfo_value(&p, &b2b, 65536),
                (userinfo_by_copy(&p, &b2b), Trimmed::default()),
                "{:?}",
                p.userinfo
            );
        }
    }

    fn principal_with(userinfo: Value) -> Principal {
        let Value::Object(userinfo) = userinfo else { panic!("an object") };
        Principal {
            sub: "u".into(),
            sid: None,
            exp: 0,
            scope: String::new(),
            email: None,
            email_verified: false,
            preferred_username: None,
            name: None,
            roles: vec![],
            organizations: Default::default(),
            userinfo,
        }
    }

    fn decode_userinfo(value: &str) -> Value {
        serde_json::from_slice(&STANDARD.decode(value).expect("base64")).expect("JSON")
    }

    #[test]
    fn an_oversized_userinfo_leaves_out_extra_claims_largest_first_and_keeps_the_default_ones() {
        use serde_json::json;
        let p = principal_with(json!({
            "sub": "u1", "email": "a@x.org", "name": "Zoë",
            "country_code": "DE", "email_optin": true,
            "avatar": "a".repeat(3000), "bio": "b".repeat(2000),
        }));
        let b2b = B2b { organizations: vec!["acme".into()], ..B2b::default() };
        let (full, trimmed) = userinfo_value(&p, &b2b, 65536);
        assert_eq!(trimmed, Trimmed::default());
        assert!(full.len() > 6000, "{}", full.len());

        // Dropping the avatar is enough for 5000 bytes; the bio (smaller) stays.
        let (value, trimmed) = userinfo_value(&p, &b2b, 5000);
        assert!(value.len() <= 5000);
        assert_eq!(trimmed, Trimmed { extra: 1, default: 0, omitted: false });
        let object = decode_userinfo(&value);
        assert!(object.get("avatar").is_none() && object["bio"].as_str().unwrap().len() == 2000);
        assert_eq!((object["sub"].as_str(), object["name"].as_str()), (Some("u1"), Some("Zoë")));

        // 1000 bytes: both big ones go, the small custom claims and the defaults stay.
        let (value, trimmed) = userinfo_value(&p, &b2b, 1000);
        assert_eq!(trimmed, Trimmed { extra: 2, default: 0, omitted: false });
        let object = decode_userinfo(&value);
        assert_eq!(object["country_code"], "DE");
        assert_eq!(object["email_optin"], true);
        assert_eq!(object["b2b"]["organizations"], json!(["acme"]));
    }

    #[test]
    fn default_claims_go_only_after_every_extra_one_and_sub_never_goes_alone() {
        use serde_json::json;
        let p = principal_with(json!({
            "sub": "u1", "email": "a@x.org", "custom": "c",
            "organization": {"big": "o".repeat(2000)},
        }));
        let b2b = B2b::default();
        let (value, trimmed) = userinfo_value(&p, &b2b, 400);
        assert_eq!(trimmed, Trimmed { extra: 1, default: 1, omitted: false });
        let object = decode_userinfo(&value);
        assert_eq!(
            object,
            json!({"sub": "u1", "email": "a@x.org",
             "b2b": {"active_organization": null, "contracts": [], "managed_organizations": [], "organizations": []}})
        );

        // A subject too long for the bound: the value is empty, never cut.
        let p = principal_with(json!({"sub": "s".repeat(400), "email": "a@x.org"}));
        let (value, trimmed) = userinfo_value(&p, &b2b, 256);
        assert_eq!(value, "");
        assert_eq!(trimmed, Trimmed { extra: 0, default: 1, omitted: true });
    }

    #[test]
    fn render_reports_what_userinfo_left_out_and_nothing_when_it_is_off() {
        use serde_json::json;
        let p = principal_with(json!({"sub": "u", "x": "x".repeat(1000)}));
        let b2b = B2b::default();
        let rendered = render(Status::Authenticated, Some((&p, &b2b)), Some(300));
        assert_eq!(rendered.userinfo, Trimmed { extra: 1, default: 0, omitted: false });
        let userinfo = &rendered.headers.iter().find(|(n, _)| *n == USERINFO).unwrap().1;
        assert!(userinfo.len() <= 300 && !userinfo.is_empty());
        let off = render(Status::Authenticated, Some((&p, &b2b)), None);
        assert_eq!(off.userinfo, Trimmed::default());
        assert!(off.headers.iter().find(|(n, _)| *n == USERINFO).unwrap().1.is_empty());
    }

    #[test]
    fn anonymous_gets_every_owned_header_empty_but_status() {
        let h = render(Status::Anonymous, None, Some(8000)).headers;
        assert_eq!(h.len(), OWNED.len());
        assert_eq!(h[0], (STATUS, HeaderValue::from_static("anonymous")));
        assert!(h[1..].iter().all(|(_, v)| v.is_empty()));
    }

    /// Property tests of strip-then-inject (docs/contract.md §5): whatever header map a client sends,
    /// no client value of an owned header survives, every emitted header is there exactly
    /// once with the rendered value, and every other header is passed on untouched.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// `is_owned` spelled out without its fixed-size buffer: the model it must match.
        fn owned_by_the_spec(name: &str) -> bool {
            let n = name.to_ascii_lowercase().replace('_', "-");
            n.starts_with("x-identity-") || n == "x-userinfo" || n == "x-id-token"
        }

        /// `name` with each letter's case and each `-`/`_` chosen by the bits of `seed`.
        fn respell(name: &str, seed: u64) -> String {
            name.chars()
                .enumerate()
                .map(|(i, c)| {
                    let bit = seed.rotate_right(i as u32) & 1 == 1;
                    match c {
                        '-' | '_' if bit => '_',
                        '-' | '_' => '-',
                        c if bit => c.to_ascii_uppercase(),
                        c => c,
                    }
                })
                .collect()
        }

        /// Header names a client might send: owned names and new `x-identity-*` ones in any
        /// spelling, near misses that are not owned, and random others.
        fn name() -> impl Strategy<Value = String> {
            let owned = prop_oneof![
                prop::sample::select(OWNED.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>()),
                Just("x-id-token".to_owned()),
                "[a-z0-9_-]{1,70}".prop_map(|s| format!("x-identity-{s}")),
            ];
            let near_misses = prop::sample::select(vec![
                "x-identity",
                "x-identityx",
                "x-identitysubject",
                "x-user-info",
                "x-userinfos",
                "x-id-tokens",
                "x-idtoken",
                "identity-subject",
                "xx-identity-subject",
            ])
            .prop_map(str::to_owned);
            let other = prop_oneof![
                prop::sample::select(vec![
                    "accept",
                    "authorization",
                    "cookie",
                    "x-request-id",
                    "x-forwarded-for",
                    "host",
                ])
                .prop_map(str::to_owned),
                "[a-z0-9_-]{1,20}",
                "[a-z0-9-]{60,80}",
            ];
            (prop_oneof![3 => owned, 1 => near_misses, 3 => other], any::<u64>())
                .prop_map(|(name, seed)| respell(&name, seed))
        }

        /// Values a header may carry on the wire: visible ASCII, tab, and obs-text bytes.
        fn value() -> impl Strategy<Value = HeaderValue> {
            let byte = prop_oneof![0x20u8..=0x7e, Just(b'\t'), 0x80u8..=0xff];
            prop::collection::vec(byte, 0..24)
                .prop_map(|bytes| HeaderValue::from_bytes(&bytes).expect("only allowed bytes"))
        }

        /// What a client sends, repeated names included (`append`, not `insert`).
        fn client_headers() -> impl Strategy<Value = HeaderMap> {
            prop::collection::vec((name(), value()), 0..24).prop_map(|pairs| {
                let mut map = HeaderMap::new();
                for (name, value) in pairs {
                    map.append(HeaderName::from_bytes(name.as_bytes()).expect("a valid name"), value);
                }
                map
            })
        }

        fn principal(
            sub: String,
            email: Option<String>,
            name: Option<String>,
            roles: Vec<String>,
        ) -> Principal {
            Principal {
                sub,
                sid: None,
                exp: u64::MAX,
                scope: String::new(),
                email,
                email_verified: false,
                preferred_username: None,
                name,
                roles,
                organizations: Default::default(),
                userinfo: serde_json::Map::new(),
            }
        }

        /// Token claims: default names, a `b2b` claim, custom names; values of any JSON
        /// shape and size, some large enough to need trimming.
        fn claims() -> impl Strategy<Value = Map<String, Value>> {
            let key = prop_oneof![
                prop::sample::select(DEFAULT_USERINFO_CLAIMS.to_vec()).prop_map(str::to_owned),
                Just("b2b".to_owned()),
                "[a-z_]{1,12}",
                "\\PC{1,6}",
            ];
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                "\\PC{0,40}".prop_map(Value::from),
                (1usize..3000).prop_map(|n| Value::from("é\"".repeat(n / 3))),
            ];
            let value = leaf.prop_recursive(2, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            });
            prop::collection::btree_map(key, value, 0..10).prop_map(|m| m.into_iter().collect())
        }

        /// Any text, weighted toward what needs encoding        /// Any text, weighted toward what needs encoding (`%`, `,`, controls, non-ASCII).
        fn text() -> impl Strategy<Value = String> {
            prop_oneof!["\\PC{0,12}", "[a-z%,\r\n\t\u{7f}é€]{0,12}", ".{0,12}"]
        }

        fn decode(value: &HeaderValue) -> String {
            let text = value.to_str().expect("an emitted value is visible ASCII");
            percent_encoding::percent_decode_str(text).decode_utf8().expect("UTF-8").into_owned()
        }

        proptest! {
            #[test]
            fn is_owned_matches_the_spec_for_any_name(name in name()) {
                prop_assert_eq!(is_owned(&name), owned_by_the_spec(&name), "{}", name);
            }

            #[test]
            fn after_inject_only_the_sidecars_values_of_owned_headers_remain(
                sent in client_headers(),
                who in prop::option::of((text(), prop::option::of(text()), prop::option::of(text()),
                                        prop::collection::vec(text(), 0..4))),
                stale in any::<bool>(),
                userinfo in any::<bool>(),
            ) {
                let who = who.map(|(sub, email, name, roles)| principal(sub, email, name, roles));
                let b2b = B2b { organizations: vec!["acme".into()], ..B2b::default() };
                let status = if stale { Status::Stale } else { Status::Authenticated };
                let rendered = match &who {
                    Some(p) => render(status, Some((p, &b2b)), userinfo.then_some(8000)),
                    None => render(Status::Anonymous, None, userinfo.then_some(8000)),
                }
                .headers;
                let mut headers = sent.clone();
                inject(&mut headers, &rendered);

                // Every owned header exactly once, with the sidecar's value.
                prop_assert_eq!(rendered.len(), OWNED.len());
                for (name, value) in &rendered {
                    let got: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
                    prop_assert_eq!(got, vec![value], "{}", name);
                }
                // No other owned spelling survives (`x-id-token`, `x_identity_*`, new names).
                for name in headers.keys() {
                    prop_assert!(!is_owned(name.as_str()) || OWNED.contains(name), "{} survived", name);
                }
                // Everything else is exactly as sent, repeated values in their order.
                for name in sent.keys().filter(|n| !is_owned(n.as_str())) {
                    let before: Vec<&HeaderValue> = sent.get_all(name).iter().collect();
                    let after: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
                    prop_assert_eq!(before, after, "{}", name);
                }
                let kept = sent.keys().filter(|n| !is_owned(n.as_str())).count();
                prop_assert_eq!(headers.keys_len(), kept + OWNED.len());

                // Identity values are encoded, never dropped: they decode back to the token's.
                if let Some(p) = &who {
                    prop_assert_eq!(decode(&headers[&SUBJECT]), p.sub.clone());
                    prop_assert_eq!(decode(&headers[&EMAIL]), p.email.clone().unwrap_or_default());
                    prop_assert_eq!(decode(&headers[&NAME]), p.name.clone().unwrap_or_default());
                    prop_assert_eq!(headers[&STATUS].to_str().unwrap(), status.as_str());
                } else {
                    prop_assert_eq!(headers[&STATUS].to_str().unwrap(), "anonymous");
                }
            }

            /// docs/contract.md §5: X-Userinfo never exceeds `headers.max_userinfo_bytes`; what it keeps is
            /// as received; extra claims go largest first and before any default one; nothing
            /// goes while the whole object fits.
            #[test]
            fn userinfo_never_exceeds_its_bound_and_leaves_out_extra_claims_first(
                claims in claims(),
                organizations in prop::collection::vec("[a-z0-9-]{1,40}", 0..30),
                contracts in prop::collection::vec("[a-z0-9-]{1,40}", 0..30),
                max_bytes in 256usize..6000,
            ) {
                let p = principal(String::new(), None, None, vec![]);
                let p = Principal { userinfo: claims.clone(), ..p };
                let b2b = B2b { organizations, contracts, ..B2b::default() };
                let (value, trimmed) = userinfo_value(&p, &b2b, max_bytes);
                prop_assert!(value.len() <= max_bytes, "{} > {}", value.len(), max_bytes);

                let full = userinfo_by_copy(&p, &b2b);
                if full.len() <= max_bytes {
                    prop_assert_eq!(&value, &full);
                    prop_assert_eq!(trimmed, Trimmed::default());
                }
                let is_default = |k: &str| DEFAULT_USERINFO_CLAIMS.contains(&k);
                let cost = |k: &str| serde_json::to_string(k).unwrap().len()
                    + 1 + serde_json::to_string(&claims[k]).unwrap().len() + 1;
                let members: Vec<&String> = claims.keys().filter(|k| *k != "b2b").collect();
                if value.is_empty() {
                    prop_assert!(trimmed.omitted);
                    // Only `sub` and `b2b` were left, and they did not fit.
                    let mut minimal = Map::new();
                    if let Some(sub) = claims.get("sub") {
                        minimal.insert("sub".into(), sub.clone());
                    }
                    let minimal = principal_with(Value::Object(minimal));
                    prop_assert!(userinfo_by_copy(&minimal, &b2b).len() > max_bytes);
                    return Ok(());
                }
                prop_assert!(!trimmed.omitted);
                let Value::Object(object) = decode_userinfo(&value) else { panic!("an object") };
                let Value::Object(expected) = decode_userinfo(&full) else { panic!("an object") };
                prop_assert_eq!(&object["b2b"], &expected["b2b"]);
                for (key, v) in &object {
                    prop_assert_eq!(Some(v), expected.get(key), "{} as received", key);
                }
                let (kept, dropped): (Vec<&String>, Vec<&String>) =
                    members.iter().partition(|k| object.contains_key(k.as_str()));
                prop_assert!(claims.get("sub").is_none() || object.contains_key("sub"), "sub kept");
                let dropped_default = dropped.iter().filter(|k| is_default(k)).count();
                prop_assert_eq!(trimmed.default, dropped_default);
                prop_assert_eq!(trimmed.extra, dropped.len() - dropped_default);
                if dropped_default > 0 {
                    prop_assert!(kept.iter().all(|k| is_default(k)), "an extra claim outlived a default one");
                }
                for d in dropped.iter().filter(|k| !is_default(k)) {
                    for k in kept.iter().filter(|k| !is_default(k)) {
                        prop_assert!(cost(d) >= cost(k), "{} left out before the larger {}", d, k);
                    }
                }
            }

            #[test]
            fn injecting_twice_is_the_same_as_injecting_once(sent in client_headers()) {
                let rendered = render(Status::Anonymous, None, Some(8000)).headers;
                let mut once = sent.clone();
                inject(&mut once, &rendered);
                let mut twice = once.clone();
                inject(&mut twice, &rendered);
                prop_assert_eq!(once, twice);
            }
        }
    }
}
