//! The Keycloak organization claim (docs/contract.md §3), normalised to a sorted set of (alias, optional id).
//! Pure code: a claim of any shape yields a clear result, never a panic.
//!
//! Keycloak's Organization Membership mapper emits, depending on its settings:
//!
//! - `["acme", "globex"]`: aliases (the default, multivalued, JSON type String);
//! - `{"acme": {"id": "<uuid>", "<attr>": ["…"]}, …}`: with "Add organization id/attributes";
//! - `{"acme": {}}`: JSON type without extras;
//! - `"acme"`: multivalued off;
//! - any of the array/object shapes *as a string* (`"[\"acme\"]"`), which happens when a claim of
//!   JSON type passes through a layer that stringifies it.
//!
//! The token is attacker-influenced input that has merely been signed by Keycloak, so every
//! malformed entry is dropped and counted rather than failing the whole claim, the work is
//! bounded ([`MAX_ENTRIES`]) and nothing recurses into attribute values.

use serde_json::Value;
use uuid::Uuid;

/// At most this many entries of an array or map are looked at; the rest are counted as ignored.
/// A real user belongs to a handful of organizations; the cap only bounds the work a hostile or
/// broken claim can cause on every login.
pub const MAX_ENTRIES: usize = 1000;

/// Longest accepted alias, in bytes. Keycloak stores aliases in a 255-character column; anything
/// longer cannot name a real organization.
pub const MAX_ALIAS_BYTES: usize = 255;

/// One organization named by the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimedOrg {
    /// The Keycloak organization alias.
    pub alias: String,
    /// The Keycloak organization id, when the mapper adds it.
    pub id: Option<Uuid>,
}

/// The normalised claim: entries sorted by alias and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClaimedOrgs {
    /// Well-formed entries, sorted by (alias, id), no duplicates.
    pub orgs: Vec<ClaimedOrg>,
    /// Entries that were ignored because they were malformed.
    pub ignored: usize,
}

/// Parses the claim value (`None` when the token has no such claim).
///
/// - absent or `null`: no organizations, nothing ignored;
/// - a number or a bool: no organizations, one entry ignored;
/// - a string holding a complete JSON array or object: parsed as that array or object (once:
///   a string inside it is an alias, never unwrapped again); any other string: one alias;
/// - an array: each string element is an alias; other elements are ignored;
/// - an object: each key is an alias; its value must be an object whose `id`, when present,
///   is a string holding a hyphenated UUID; all other members (attributes) are ignored.
///
/// An empty alias or one over [`MAX_ALIAS_BYTES`] bytes is ignored. Only the first
/// [`MAX_ENTRIES`] entries of an array or object are looked at.
///
/// When the same alias appears both with and without an id, only the id-bearing entry is kept
/// (see [`normalise`]).
pub fn parse_org_claim(value: Option<&Value>) -> ClaimedOrgs {
    let mut out = ClaimedOrgs::default();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Bool(_) | Value::Number(_)) => out.ignored = 1,
        Some(Value::Array(items)) => parse_array(items, &mut out),
        Some(Value::Object(map)) => parse_object(map, &mut out),
        Some(Value::String(s)) => match unstringify(s) {
            Some(Value::Array(items)) => parse_array(&items, &mut out),
            Some(Value::Object(map)) => parse_object(&map, &mut out),
            // `unstringify` only returns arrays and objects; any other outcome is a plain alias.
            _ => push_alias(s, None, &mut out),
        },
    }
    normalise(&mut out.orgs);
    out
}

/// Reads a string as a stringified JSON array or object, if it is exactly one.
///
/// This is unambiguous in practice: only a string that is *complete* JSON array/object text
/// (`[…]` or `{…}` with nothing but whitespace around it) is unwrapped; anything else, including
/// `[acme]` or `{acme`, stays one alias. An organization whose alias is itself valid JSON array
/// or object text is not supported. serde_json's own recursion limit bounds the parse of deeply
/// nested text, and the token size limit bounds its length.
fn unstringify(s: &str) -> Option<Value> {
    let trimmed = s.trim();
    if !(trimmed.starts_with('[') || trimmed.starts_with('{')) {
        return None;
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(v @ (Value::Array(_) | Value::Object(_))) => Some(v),
        _ => None,
    }
}

fn parse_array(items: &[Value], out: &mut ClaimedOrgs) {
    out.ignored += items.len().saturating_sub(MAX_ENTRIES);
    for item in items.iter().take(MAX_ENTRIES) {
        match item {
            Value::String(alias) => push_alias(alias, None, out),
            _ => out.ignored += 1,
        }
    }
}

fn parse_object(map: &serde_json::Map<String, Value>, out: &mut ClaimedOrgs) {
    out.ignored += map.len().saturating_sub(MAX_ENTRIES);
    for (alias, details) in map.iter().take(MAX_ENTRIES) {
        // Only `id` is read; attribute values are never walked, however deep they nest.
        let id = match details {
            Value::Object(details) => match details.get("id") {
                None => Ok(None),
                Some(Value::String(id)) => parse_uuid(id).map(Some).ok_or(()),
                Some(_) => Err(()),
            },
            // The mapper always emits an object per alias; anything else is not its output.
            _ => Err(()),
        };
        match id {
            Ok(id) => push_alias(alias, id, out),
            Err(()) => out.ignored += 1,
        }
    }
}

/// Accepts only the hyphenated form Keycloak emits. `Uuid::try_parse` also takes the simple,
/// braced and URN forms; a claim using those was not written by Keycloak.
fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

fn push_alias(alias: &str, id: Option<Uuid>, out: &mut ClaimedOrgs) {
    if alias.is_empty() || alias.len() > MAX_ALIAS_BYTES {
        out.ignored += 1;
    } else {
        out.orgs.push(ClaimedOrg { alias: alias.to_owned(), id });
    }
}

/// Sorts by (alias, id), removes exact duplicates, and drops an alias-only entry when the same
/// alias also appears with an id.
///
/// Why collapse to the id-bearing entry rather than keep both: the id is the stable identity
/// (an alias can be renamed and later reused by another organization), and docs/contract.md §3 says an
/// alias whose organization holds a *different* id must not match. Keeping an alias-only twin
/// next to `("acme", X)` would let it match, by alias, an `acme` whose id is not `X` — exactly
/// what the rule forbids. A single claim value cannot actually produce both (array entries never
/// carry ids, object keys are unique), so this only matters if claims are ever merged; the
/// dropped twin is a duplicate, not a malformed entry, so it is not counted in `ignored`.
/// Two *different* ids for one alias are both kept: the matcher decides, and warns.
fn normalise(orgs: &mut Vec<ClaimedOrg>) {
    orgs.sort_unstable();
    orgs.dedup();
    // Sorted, so an alias's `None` entry comes first and is directly followed by its id-bearing
    // entries, if any.
    let mut keep = Vec::with_capacity(orgs.len());
    let mut iter = std::mem::take(orgs).into_iter().peekable();
    while let Some(org) = iter.next() {
        let shadowed = org.id.is_none() && iter.peek().is_some_and(|next| next.alias == org.alias);
        if !shadowed {
            keep.push(org);
        }
    }
    *orgs = keep;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID_A: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
    const ID_B: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

    fn org(alias: &str, id: Option<&str>) -> ClaimedOrg {
        ClaimedOrg { alias: alias.into(), id: id.map(|s| Uuid::parse_str(s).unwrap()) }
    }

    fn parse(v: Value) -> ClaimedOrgs {
        parse_org_claim(Some(&v))
    }

    #[test]
    fn an_absent_claim_is_no_organizations() {
        assert_eq!(parse_org_claim(None), ClaimedOrgs::default());
    }

    #[test]
    fn a_null_claim_is_no_organizations() {
        assert_eq!(parse(Value::Null), ClaimedOrgs::default());
    }

    #[test]
    fn an_array_of_aliases_is_sorted_and_deduplicated() {
        let got = parse(json!(["globex", "acme", "globex"]));
        assert_eq!(got.orgs, vec![org("acme", None), org("globex", None)]);
        assert_eq!(got.ignored, 0);
    }

    #[test]
    fn an_empty_array_is_no_organizations() {
        assert_eq!(parse(json!([])), ClaimedOrgs::default());
    }

    #[test]
    fn a_map_with_ids_and_attributes_yields_alias_and_id() {
        let got = parse(json!({
            "globex": {"id": ID_B, "region": ["eu"], "deep": {"a": [[[{"b": 1}]]]}},
            "acme": {"id": ID_A},
        }));
        assert_eq!(got.orgs, vec![org("acme", Some(ID_A)), org("globex", Some(ID_B))]);
        assert_eq!(got.ignored, 0);
    }

    #[test]
    fn a_map_of_empty_objects_yields_aliases_without_ids() {
        let got = parse(json!({"acme": {}, "globex": {"region": ["eu"]}}));
        assert_eq!(got.orgs, vec![org("acme", None), org("globex", None)]);
        assert_eq!(got.ignored, 0);
    }

    #[test]
    fn a_single_string_is_one_alias() {
        let got = parse(json!("acme"));
        assert_eq!(got.orgs, vec![org("acme", None)]);
        assert_eq!(got.ignored, 0);
    }

    #[test]
    fn a_stringified_array_is_read_as_the_array() {
        let got = parse(json!(r#" ["globex","acme"] "#));
        assert_eq!(got.orgs, vec![org("acme", None), org("globex", None)]);
    }

    #[test]
    fn a_stringified_map_is_read_as_the_map() {
        let got = parse(Value::String(json!({"acme": {"id": ID_A}}).to_string()));
        assert_eq!(got.orgs, vec![org("acme", Some(ID_A))]);
    }

    #[test]
    fn a_string_that_only_looks_like_json_is_one_alias() {
        for s in ["[acme]", "{acme", "[\"acme\"] trailing", "[", "{}x"] {
            let got = parse(json!(s));
            assert_eq!(got.orgs, vec![org(s, None)], "{s}");
        }
    }

    #[test]
    fn a_stringified_scalar_is_an_alias_not_unwrapped() {
        // `"\"acme\""` and `"42"` are not arrays/objects: they are taken literally.
        assert_eq!(parse(json!("\"acme\"")).orgs, vec![org("\"acme\"", None)]);
        assert_eq!(parse(json!("42")).orgs, vec![org("42", None)]);
    }

    #[test]
    fn strings_inside_a_stringified_array_are_not_unwrapped_again() {
        let inner = json!(["[\"x\"]"]).to_string();
        assert_eq!(parse(Value::String(inner)).orgs, vec![org("[\"x\"]", None)]);
    }

    #[test]
    fn numbers_and_bools_at_top_level_are_one_ignored_entry() {
        for v in [json!(1), json!(1.5), json!(true), json!(false)] {
            let got = parse(v.clone());
            assert!(got.orgs.is_empty(), "{v}");
            assert_eq!(got.ignored, 1, "{v}");
        }
    }

    #[test]
    fn non_string_array_elements_are_ignored() {
        let got = parse(json!(["acme", 1, null, true, {"globex": {}}, ["x"]]));
        assert_eq!(got.orgs, vec![org("acme", None)]);
        assert_eq!(got.ignored, 5);
    }

    #[test]
    fn an_id_that_is_not_a_uuid_drops_the_entry() {
        let got = parse(json!({"acme": {"id": "not-a-uuid"}, "globex": {"id": ID_B}}));
        assert_eq!(got.orgs, vec![org("globex", Some(ID_B))]);
        assert_eq!(got.ignored, 1);
    }

    #[test]
    fn only_the_hyphenated_uuid_form_is_accepted() {
        let simple = ID_A.replace('-', "");
        let braced = format!("{{{ID_A}}}");
        let urn = format!("urn:uuid:{ID_A}");
        for id in [simple, braced, urn] {
            let got = parse(json!({"acme": {"id": id}}));
            assert!(got.orgs.is_empty(), "{id}");
            assert_eq!(got.ignored, 1, "{id}");
        }
        let upper = parse(json!({"acme": {"id": ID_A.to_uppercase()}}));
        assert_eq!(upper.orgs, vec![org("acme", Some(ID_A))]);
    }

    #[test]
    fn an_id_that_is_not_a_string_drops_the_entry() {
        for id in [json!(null), json!(42), json!(true), json!([ID_A]), json!({"v": ID_A})] {
            let got = parse(json!({"acme": {"id": id}}));
            assert!(got.orgs.is_empty(), "{id}");
            assert_eq!(got.ignored, 1, "{id}");
        }
    }

    #[test]
    fn a_map_value_that_is_not_an_object_drops_the_entry() {
        let got = parse(json!({"a": null, "b": "x", "c": [], "d": 1, "ok": {}}));
        assert_eq!(got.orgs, vec![org("ok", None)]);
        assert_eq!(got.ignored, 4);
    }

    #[test]
    fn empty_and_overlong_aliases_are_ignored() {
        let long = "a".repeat(MAX_ALIAS_BYTES + 1);
        let edge = "a".repeat(MAX_ALIAS_BYTES);
        let got = parse(json!(["", long.clone(), edge.clone()]));
        assert_eq!(got.orgs, vec![org(&edge, None)]);
        assert_eq!(got.ignored, 2);

        let got = parse(json!({"": {}, long.clone(): {}}));
        assert_eq!(got, ClaimedOrgs { orgs: vec![], ignored: 2 });

        assert_eq!(parse(json!("")), ClaimedOrgs { orgs: vec![], ignored: 1 });
        assert_eq!(parse(json!(long)), ClaimedOrgs { orgs: vec![], ignored: 1 });
    }

    #[test]
    fn the_alias_limit_counts_bytes_not_characters() {
        // 128 two-byte characters = 256 bytes.
        let got = parse(json!(["é".repeat(128)]));
        assert_eq!(got.ignored, 1);
    }

    #[test]
    fn at_most_max_entries_of_an_array_are_looked_at() {
        let items: Vec<Value> = (0..MAX_ENTRIES + 25).map(|i| json!(format!("org{i:05}"))).collect();
        let got = parse(Value::Array(items));
        assert_eq!(got.orgs.len(), MAX_ENTRIES);
        assert_eq!(got.ignored, 25);
        assert_eq!(got.orgs[0].alias, "org00000");
        assert_eq!(got.orgs[MAX_ENTRIES - 1].alias, format!("org{:05}", MAX_ENTRIES - 1));
    }

    #[test]
    fn at_most_max_entries_of_a_map_are_looked_at() {
        let map: serde_json::Map<String, Value> =
            (0..MAX_ENTRIES + 7).map(|i| (format!("org{i:05}"), json!({}))).collect();
        let got = parse(Value::Object(map));
        assert_eq!(got.orgs.len(), MAX_ENTRIES);
        assert_eq!(got.ignored, 7);
    }

    #[test]
    fn an_alias_with_and_without_id_collapses_to_the_id_bearing_entry() {
        let mut orgs = vec![
            org("acme", None),
            org("acme", Some(ID_A)),
            org("globex", None),
            org("acme", None),
            org("initech", Some(ID_A)),
            org("initech", Some(ID_B)),
        ];
        normalise(&mut orgs);
        assert_eq!(
            orgs,
            vec![
                org("acme", Some(ID_A)),
                org("globex", None),
                org("initech", Some(ID_A)),
                org("initech", Some(ID_B)),
            ]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn alias() -> impl Strategy<Value = String> {
            prop_oneof!["[a-c]{1,2}", Just(String::new()), Just("x".repeat(MAX_ALIAS_BYTES + 1)), "\\PC{0,6}",]
        }

        fn id_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(json!(ID_A)),
                Just(json!(ID_B)),
                any::<u128>().prop_map(|n| json!(Uuid::from_u128(n).to_string())),
                "[0-9a-f-]{0,40}".prop_map(Value::String),
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
            ]
        }

        /// Arbitrary JSON, bounded in depth and size, biased toward claim-like content.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                alias().prop_map(Value::String),
                id_value(),
            ];
            leaf.prop_recursive(5, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map(alias(), inner.clone(), 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                    // Claim-shaped maps: alias → {"id": …, attributes}.
                    prop::collection::btree_map(
                        alias(),
                        (prop::option::of(id_value()), inner.clone()).prop_map(|(id, attr)| {
                            let mut details = serde_json::Map::new();
                            if let Some(id) = id {
                                details.insert("id".into(), id);
                            }
                            details.insert("attr".into(), attr);
                            Value::Object(details)
                        }),
                        0..8,
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                    // The stringified form of anything.
                    inner.prop_map(|v| Value::String(v.to_string())),
                ]
            })
        }

        /// How many entries the claim offers: its length for an array or map (also when
        /// stringified), otherwise one.
        fn offered(v: &Value) -> usize {
            match v {
                Value::Array(a) => a.len(),
                Value::Object(m) => m.len(),
                Value::String(s) => unstringify(s).map_or(1, |inner| offered(&inner)),
                _ => 1,
            }
        }

        proptest! {
            #[test]
            fn any_json_yields_sorted_deduplicated_deterministic_output(v in json()) {
                let first = parse_org_claim(Some(&v));
                prop_assert!(first.orgs.windows(2).all(|w| w[0] < w[1]), "not strictly sorted");
                prop_assert!(
                    first.orgs.windows(2).all(|w| !(w[0].alias == w[1].alias && w[0].id.is_none())),
                    "alias-only entry next to an id-bearing twin"
                );
                prop_assert!(first.orgs.iter().all(|o| !o.alias.is_empty() && o.alias.len() <= MAX_ALIAS_BYTES));
                prop_assert_eq!(&first, &parse_org_claim(Some(&v)));
            }

            #[test]
            fn accepted_plus_ignored_never_exceeds_entries_offered(v in json()) {
                let got = parse_org_claim(Some(&v));
                let offered = if v.is_null() { 0 } else { offered(&v) };
                prop_assert!(got.orgs.len() + got.ignored <= offered,
                    "{} + {} > {}", got.orgs.len(), got.ignored, offered);
            }

            #[test]
            fn array_order_does_not_matter(items in prop::collection::vec(json(), 0..12), seed in any::<u64>()) {
                let mut shuffled = items.clone();
                // A deterministic permutation from the seed (no RNG needed).
                let n = shuffled.len();
                if n > 1 {
                    for i in 0..n {
                        let j = ((seed.wrapping_mul(i as u64 + 1)) % n as u64) as usize;
                        shuffled.swap(i, j);
                    }
                }
                prop_assert_eq!(
                    parse_org_claim(Some(&Value::Array(items))),
                    parse_org_claim(Some(&Value::Array(shuffled)))
                );
            }

            #[test]
            fn a_stringified_claim_parses_like_the_claim(v in json()) {
                prop_assume!(v.is_array() || v.is_object());
                prop_assert_eq!(
                    parse_org_claim(Some(&v)),
                    parse_org_claim(Some(&Value::String(v.to_string())))
                );
            }
        }
    }
}
