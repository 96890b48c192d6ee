//! `[[auth.rules]]`: path normalisation and longest-prefix matching on whole segments (SPEC §2).
//! Pure code.
//!
//! The gate and the upstream must agree on which path a request names, or a rule can be
//! sidestepped by spelling the path differently (`/admin%2Fusers`, `//admin`, `/x/../admin`).
//! So the path is normalised the way an upstream would read it before matching, and spellings
//! whose meaning depends on the upstream (`..`) are refused outright rather than guessed.
//! Where a choice remains, it is made so that more requests fall under a rule, not fewer.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::config::RuleConfig;

/// Why a path cannot be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `..` segment (before or after percent-decoding).
    DotDot,
    /// Percent-decoding produced invalid UTF-8 or a NUL.
    BadEncoding,
}

/// Drops the query, percent-decodes and rejects `..` segments.
///
/// In order:
///
/// 1. an absolute-form target (`http://host/p`, which nginx can pass on in `$request_uri`) is
///    reduced to its path, so it cannot slip past a rule on `/p`;
/// 2. the query (`?…`) and fragment (`#…`) are dropped;
/// 3. the path is percent-decoded **once** (`%252e` stays the literal `%2e`, as the upstream
///    sees it after its own single decoding). A decoded `%2F` **is a segment separator**:
///    `/admin%2Fusers` is `/admin/users`. Frameworks that decode before routing (WSGI's
///    `PATH_INFO`, so Django behind mitol-django-apigateway) read it that way, and keeping it
///    inside one segment would let `/admin%2Fusers` escape a rule on `/admin`;
/// 4. invalid UTF-8 or a NUL after decoding → [`PathError::BadEncoding`];
/// 5. any `..` segment → [`PathError::DotDot`], whether written `..`, `%2e%2e`, `.%2E`, or
///    delimited by a (possibly encoded) backslash, which some servers treat as `/`. A `..;`
///    segment counts too: Tomcat and Spring strip `;params` and would resolve `/public/..;/admin`
///    to `/admin`;
/// 6. repeated `/` collapse and `.` segments are dropped.
///
/// The result always starts with `/` and keeps a trailing `/` when the input had one
/// (`/api/` → `/api/`, `/api/.` → `/api/`); [`Rules::find`] treats both spellings alike.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let path = strip_scheme_and_authority(raw);
    let path = match path.find(['?', '#']) {
        Some(end) => &path[..end],
        None => path,
    };
    let decoded: Cow<'_, str> = percent_decode_str(path).decode_utf8().map_err(|_| PathError::BadEncoding)?;
    if decoded.contains('\0') {
        return Err(PathError::BadEncoding);
    }
    // `..` is checked on the decoded text only: decoding leaves a literal `..` unchanged, so
    // this covers both the raw and the encoded spellings.
    if decoded.split(['/', '\\']).any(is_dot_dot) {
        return Err(PathError::DotDot);
    }

    let mut out = String::with_capacity(decoded.len() + 1);
    let mut trailing_slash = false;
    for segment in decoded.split('/') {
        match segment {
            "" | "." => trailing_slash = true,
            _ => {
                out.push('/');
                out.push_str(segment);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// `..`, or `..;params` (Tomcat/Spring path parameters).
fn is_dot_dot(segment: &str) -> bool {
    segment == ".." || segment.strip_prefix("..").is_some_and(|rest| rest.starts_with(';'))
}

/// `scheme://authority/path` → `/path`; anything else unchanged. The scheme must be
/// RFC 3986-shaped so that a relative path that merely contains `://` is left alone.
fn strip_scheme_and_authority(raw: &str) -> &str {
    if raw.starts_with('/') {
        return raw;
    }
    let Some(colon) = raw.find("://") else {
        return raw;
    };
    let scheme = &raw[..colon];
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return raw;
    }
    let after = &raw[colon + 3..];
    match after.find(['/', '?', '#']) {
        Some(start) => &after[start..],
        None => "",
    }
}

/// A configured prefix in matching form: normalised like a request path, trailing `/` removed
/// (so `/api/` behaves like `/api`), `/` kept as is.
///
/// A prefix that cannot be normalised (it contains `..` or bad encoding) could never match a
/// normalised path, so [`Rules::new`] leaves its rule out. Configuration validation should
/// call this and refuse such a prefix at startup, so the mistake is seen rather than silent.
pub fn normalize_prefix(prefix: &str) -> Result<String, PathError> {
    let mut p = normalize_path(prefix)?;
    if p.len() > 1 && p.ends_with('/') {
        p.pop();
    }
    Ok(p)
}

/// The configured rules, ready to match.
///
/// Prefixes are normalised once here and kept longest first, so [`Rules::find`] is a scan that
/// stops at the first hit, with no allocation, on every request.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `(normalised prefix, rule)`, longest prefix first; equal lengths keep config order, so
    /// of two rules with the same prefix the first configured one wins.
    rules: Vec<(String, RuleConfig)>,
}

impl Rules {
    /// Prepares `rules` for matching. A rule whose prefix cannot be normalised (see
    /// [`normalize_prefix`]) is left out: it could never match a normalised path.
    pub fn new(rules: &[RuleConfig]) -> Self {
        let mut prepared: Vec<(String, RuleConfig)> = rules
            .iter()
            .filter_map(|rule| Some((normalize_prefix(&rule.prefix).ok()?, rule.clone())))
            .collect();
        // Stable sort: ties keep their configured order.
        prepared.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self { rules: prepared }
    }

    /// The rule with the longest prefix matching `path` (already normalised) on whole segments.
    ///
    /// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; `/` matches everything.
    pub fn find(&self, path: &str) -> Option<&RuleConfig> {
        self.rules.iter().find(|(prefix, _)| segment_prefix(prefix, path)).map(|(_, rule)| rule)
    }
}

/// Whether `prefix` (normalised, no trailing `/` unless it is `/`) covers `path` on a segment
/// boundary.
fn segment_prefix(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix == "/" || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// What the caller holds, for the `*_any` checks. Compared exactly (case-sensitive) with the
/// rule's lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holdings<'a> {
    /// Realm roles and `client:role` client roles.
    pub roles: &'a [String],
    /// Keys of the caller's organizations.
    pub organizations: &'a [String],
    /// Keys of the contracts attached to the caller and valid today.
    pub contracts: &'a [String],
}

/// The outcome of applying a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The request passes.
    Allow,
    /// Anonymous where the rule requires a login: 401.
    Unauthenticated,
    /// Authenticated but holding none of a non-empty `*_any` list: 403.
    Forbidden,
}

/// Applies `rule` to a caller (`None` = anonymous). No rule: everyone passes.
///
/// - An anonymous caller is [`Decision::Unauthenticated`] when the rule has `require = true`
///   or names anything in a `*_any` list (holding something implies being someone); otherwise
///   it passes.
/// - An authenticated caller must satisfy **every** non-empty list, and satisfies a list by
///   holding **at least one** of its items: OR within a list, AND across lists. A rule naming
///   `roles_any = ["staff"]` and `organizations_any = ["acme", "globex"]` requires the `staff`
///   role *and* membership of `acme` or `globex`. Empty lists impose nothing. Failing any list
///   is [`Decision::Forbidden`].
pub fn decide(rule: Option<&RuleConfig>, caller: Option<Holdings<'_>>) -> Decision {
    let Some(rule) = rule else {
        return Decision::Allow;
    };
    let Some(held) = caller else {
        let names_any = !(rule.roles_any.is_empty()
            && rule.organizations_any.is_empty()
            && rule.contracts_any.is_empty());
        return if rule.require || names_any { Decision::Unauthenticated } else { Decision::Allow };
    };
    if satisfies(&rule.roles_any, held.roles)
        && satisfies(&rule.organizations_any, held.organizations)
        && satisfies(&rule.contracts_any, held.contracts)
    {
        Decision::Allow
    } else {
        Decision::Forbidden
    }
}

/// An empty list asks for nothing; otherwise one held item of the list is enough.
fn satisfies(wanted: &[String], held: &[String]) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| held.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str) -> RuleConfig {
        RuleConfig { prefix: prefix.into(), ..RuleConfig::default() }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn norm(raw: &str) -> Result<String, PathError> {
        normalize_path(raw)
    }

    // ---- normalize_path -------------------------------------------------------------------

    #[test]
    fn the_query_and_fragment_are_dropped() {
        assert_eq!(norm("/api/x?a=1&b=/../"), Ok("/api/x".into()));
        assert_eq!(norm("/api/x#frag/../y"), Ok("/api/x".into()));
        assert_eq!(norm("/api?"), Ok("/api".into()));
        assert_eq!(norm("?only=query"), Ok("/".into()));
    }

    #[test]
    fn an_encoded_question_mark_is_part_of_the_path() {
        assert_eq!(norm("/a%3Fb"), Ok("/a?b".into()));
    }

    #[test]
    fn the_path_is_percent_decoded_once() {
        assert_eq!(norm("/caf%C3%A9/a%20b"), Ok("/café/a b".into()));
        assert_eq!(norm("/a/%252e%252e/b"), Ok("/a/%2e%2e/b".into()));
    }

    #[test]
    fn malformed_percent_sequences_stay_literal() {
        assert_eq!(norm("/a%zz/100%"), Ok("/a%zz/100%".into()));
    }

    #[test]
    fn a_decoded_slash_separates_segments() {
        assert_eq!(norm("/admin%2Fusers"), Ok("/admin/users".into()));
        assert_eq!(norm("/admin%2fusers%2F%2F"), Ok("/admin/users/".into()));
    }

    #[test]
    fn repeated_slashes_collapse_and_dot_segments_go() {
        assert_eq!(norm("//api///x"), Ok("/api/x".into()));
        assert_eq!(norm("/./api/./x/."), Ok("/api/x/".into()));
        assert_eq!(norm("/api/%2e/x"), Ok("/api/x".into()));
        assert_eq!(norm("/.hidden/..x/x.."), Ok("/.hidden/..x/x..".into()));
    }

    #[test]
    fn the_result_always_starts_with_a_slash() {
        assert_eq!(norm(""), Ok("/".into()));
        assert_eq!(norm("/"), Ok("/".into()));
        assert_eq!(norm("api/x"), Ok("/api/x".into()));
        assert_eq!(norm("*"), Ok("/*".into()));
        assert_eq!(norm("."), Ok("/".into()));
    }

    #[test]
    fn a_trailing_slash_is_kept() {
        assert_eq!(norm("/api/"), Ok("/api/".into()));
        assert_eq!(norm("/api//"), Ok("/api/".into()));
    }

    #[test]
    fn dot_dot_is_rejected_raw_and_encoded() {
        for raw in [
            "/..",
            "/a/../b",
            "..",
            "/a/..",
            "/a/../",
            "/a/%2e%2e/b",
            "/a/%2E%2E/b",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/a%2f..%2fb",
            "/a/..\\b",
            "/a/..%5cb",
            "/a\\..\\b",
            "/public/..;/admin",
            "/public/%2e%2e;x/admin",
            "http://host/a/../b",
        ] {
            assert_eq!(norm(raw), Err(PathError::DotDot), "{raw}");
        }
    }

    #[test]
    fn dot_dot_inside_the_query_is_not_a_path_segment() {
        assert_eq!(norm("/a?next=/../b"), Ok("/a".into()));
    }

    #[test]
    fn invalid_utf8_and_nul_are_bad_encoding() {
        for raw in ["/a/%ff", "/a/%C3", "/%C3%28", "/a%00b", "/a/%00"] {
            assert_eq!(norm(raw), Err(PathError::BadEncoding), "{raw}");
        }
    }

    #[test]
    fn an_absolute_form_target_is_reduced_to_its_path() {
        assert_eq!(norm("http://example.com/admin/x?q"), Ok("/admin/x".into()));
        assert_eq!(norm("https://u:p@example.com:8443//admin"), Ok("/admin".into()));
        assert_eq!(norm("http://example.com"), Ok("/".into()));
        assert_eq!(norm("http://example.com?x=/admin"), Ok("/".into()));
        // Not a scheme: a path that happens to contain `://`.
        assert_eq!(norm("/redirect/http://x"), Ok("/redirect/http:/x".into()));
    }

    // ---- Rules::find ----------------------------------------------------------------------

    fn found<'a>(rules: &'a Rules, raw: &str) -> Option<&'a str> {
        let path = normalize_path(raw).unwrap();
        rules.find(&path).map(|r| r.prefix.as_str())
    }

    #[test]
    fn a_prefix_matches_on_whole_segments_only() {
        let rules = Rules::new(&[rule("/api")]);
        assert_eq!(found(&rules, "/api"), Some("/api"));
        assert_eq!(found(&rules, "/api/"), Some("/api"));
        assert_eq!(found(&rules, "/api/x/y"), Some("/api"));
        assert_eq!(found(&rules, "/apix"), None);
        assert_eq!(found(&rules, "/ap"), None);
        assert_eq!(found(&rules, "/"), None);
        assert_eq!(found(&rules, "/x/api"), None);
    }

    #[test]
    fn a_prefix_with_a_trailing_slash_behaves_like_one_without() {
        let rules = Rules::new(&[rule("/api/")]);
        assert_eq!(found(&rules, "/api"), Some("/api/"));
        assert_eq!(found(&rules, "/api/x"), Some("/api/"));
        assert_eq!(found(&rules, "/apix"), None);
    }

    #[test]
    fn the_root_prefix_matches_everything() {
        let rules = Rules::new(&[rule("/")]);
        for raw in ["/", "/a", "/a/b/", "", "?q"] {
            assert_eq!(found(&rules, raw), Some("/"), "{raw}");
        }
    }

    #[test]
    fn the_longest_matching_prefix_wins_whatever_the_config_order() {
        let configured = [rule("/"), rule("/api/admin/"), rule("/api"), rule("/api/adm")];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let rules = Rules::new(&order.map(|i| configured[i].clone()));
            assert_eq!(found(&rules, "/api/admin/users"), Some("/api/admin/"));
            assert_eq!(found(&rules, "/api/admin"), Some("/api/admin/"));
            assert_eq!(found(&rules, "/api/adm"), Some("/api/adm"));
            assert_eq!(found(&rules, "/api/administrator"), Some("/api"));
            assert_eq!(found(&rules, "/api/x"), Some("/api"));
            assert_eq!(found(&rules, "/other"), Some("/"));
        }
    }

    #[test]
    fn of_two_rules_with_the_same_prefix_the_first_configured_wins() {
        let first = RuleConfig { require: true, ..rule("/api") };
        let second = rule("/api/");
        let rules = Rules::new(&[first.clone(), second]);
        assert_eq!(rules.find("/api/x"), Some(&first));
    }

    #[test]
    fn prefixes_are_normalised_like_paths() {
        let rules = Rules::new(&[rule("//api/./v1%2Fadmin?x")]);
        assert_eq!(found(&rules, "/api/v1/admin/x"), Some("//api/./v1%2Fadmin?x"));
    }

    #[test]
    fn encoded_slashes_and_queries_cannot_escape_a_rule() {
        let rules = Rules::new(&[rule("/admin")]);
        assert_eq!(found(&rules, "/admin%2Fusers"), Some("/admin"));
        assert_eq!(found(&rules, "//admin"), Some("/admin"));
        assert_eq!(found(&rules, "/%61dmin"), Some("/admin"));
        assert_eq!(found(&rules, "/./admin"), Some("/admin"));
        assert_eq!(found(&rules, "/admin?x=/public"), Some("/admin"));
        assert_eq!(found(&rules, "http://h/admin"), Some("/admin"));
    }

    #[test]
    fn a_prefix_that_cannot_be_normalised_never_matches() {
        let rules = Rules::new(&[rule("/a/../b"), rule("/%ff")]);
        assert_eq!(rules.find("/b"), None);
        assert_eq!(rules.find("/a"), None);
        assert_eq!(normalize_prefix("/a/../b"), Err(PathError::DotDot));
    }

    #[test]
    fn no_rules_match_nothing() {
        assert_eq!(Rules::new(&[]).find("/"), None);
        assert_eq!(Rules::default().find("/x"), None);
    }

    // ---- decide ---------------------------------------------------------------------------

    struct Held {
        roles: Vec<String>,
        organizations: Vec<String>,
        contracts: Vec<String>,
    }

    impl Held {
        fn new(roles: &[&str], organizations: &[&str], contracts: &[&str]) -> Self {
            Self {
                roles: strings(roles),
                organizations: strings(organizations),
                contracts: strings(contracts),
            }
        }

        fn holdings(&self) -> Holdings<'_> {
            Holdings { roles: &self.roles, organizations: &self.organizations, contracts: &self.contracts }
        }
    }

    fn lists(roles: &[&str], organizations: &[&str], contracts: &[&str]) -> RuleConfig {
        RuleConfig {
            prefix: "/x".into(),
            require: false,
            roles_any: strings(roles),
            organizations_any: strings(organizations),
            contracts_any: strings(contracts),
        }
    }

    #[test]
    fn without_a_rule_everyone_passes() {
        let nobody = Held::new(&[], &[], &[]);
        assert_eq!(decide(None, None), Decision::Allow);
        assert_eq!(decide(None, Some(nobody.holdings())), Decision::Allow);
    }

    #[test]
    fn a_rule_without_requirements_lets_anonymous_pass() {
        let r = rule("/x");
        assert_eq!(decide(Some(&r), None), Decision::Allow);
        assert_eq!(decide(Some(&r), Some(Holdings::default())), Decision::Allow);
    }

    #[test]
    fn require_turns_anonymous_away_and_lets_any_login_pass() {
        let r = RuleConfig { require: true, ..rule("/x") };
        assert_eq!(decide(Some(&r), None), Decision::Unauthenticated);
        assert_eq!(decide(Some(&r), Some(Holdings::default())), Decision::Allow);
    }

    #[test]
    fn any_non_empty_list_turns_anonymous_away_even_without_require() {
        for r in [lists(&["r"], &[], &[]), lists(&[], &["o"], &[]), lists(&[], &[], &["c"])] {
            assert_eq!(decide(Some(&r), None), Decision::Unauthenticated, "{r:?}");
        }
    }

    #[test]
    fn one_item_of_a_list_is_enough() {
        let r = lists(&["staff", "admin"], &[], &[]);
        let staff = Held::new(&["user", "staff"], &[], &[]);
        let user = Held::new(&["user"], &["staff"], &["staff"]);
        assert_eq!(decide(Some(&r), Some(staff.holdings())), Decision::Allow);
        assert_eq!(decide(Some(&r), Some(user.holdings())), Decision::Forbidden);
    }

    #[test]
    fn items_are_compared_exactly() {
        let r = lists(&["Admin"], &[], &[]);
        let lower = Held::new(&["admin"], &[], &[]);
        assert_eq!(decide(Some(&r), Some(lower.holdings())), Decision::Forbidden);
    }

    /// Every combination of (which lists the rule names) × (which of them the caller satisfies).
    /// Bit 0: roles, bit 1: organizations, bit 2: contracts.
    #[test]
    fn lists_are_anded_with_each_other_and_ored_within() {
        // Each named list has two items; a caller satisfying it holds only the second one,
        // plus an unrelated item, so "OR within a list" is exercised on every hit.
        let named_list = |named: u8, bit: u8, items: &'static [&'static str]| -> &'static [&'static str] {
            if named & bit != 0 { items } else { &[] }
        };
        let held_list = |held: u8, bit: u8, item: &'static str| -> Vec<&'static str> {
            if held & bit != 0 { vec!["unrelated", item] } else { vec!["unrelated"] }
        };
        for named in 0u8..8 {
            let r = lists(
                named_list(named, 1, &["r1", "r2"]),
                named_list(named, 2, &["o1", "o2"]),
                named_list(named, 4, &["c1", "c2"]),
            );
            let anonymous = if named == 0 { Decision::Allow } else { Decision::Unauthenticated };
            assert_eq!(decide(Some(&r), None), anonymous, "named {named:03b}");
            for held in 0u8..8 {
                let caller = Held::new(
                    &held_list(held, 1, "r2"),
                    &held_list(held, 2, "o2"),
                    &held_list(held, 4, "c2"),
                );
                // Allowed exactly when every named list is held.
                let expected = if named & !held == 0 { Decision::Allow } else { Decision::Forbidden };
                assert_eq!(
                    decide(Some(&r), Some(caller.holdings())),
                    expected,
                    "named {named:03b} held {held:03b}"
                );
            }
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn raw_path() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    Just("/"),
                    Just("."),
                    Just(".."),
                    Just("%2e"),
                    Just("%2F"),
                    Just("%5C"),
                    Just("%ff"),
                    Just("%00"),
                    Just("?"),
                    Just("#"),
                    Just(";"),
                    Just("a"),
                    Just("api"),
                    Just("é"),
                    Just("%"),
                ],
                0..16,
            )
            .prop_map(|parts| parts.concat())
        }

        /// The obvious, slow definition of a segment-prefix match.
        fn naive_matches(prefix: &str, path: &str) -> bool {
            let segs = |s: &str| s.split('/').filter(|x| !x.is_empty()).map(String::from).collect::<Vec<_>>();
            let (p, q) = (segs(prefix), segs(path));
            q.len() >= p.len() && q[..p.len()] == p[..]
        }

        proptest! {
            #[test]
            fn normalised_paths_are_canonical(raw in raw_path()) {
                if let Ok(p) = normalize_path(&raw) {
                    prop_assert!(p.starts_with('/'));
                    prop_assert!(!p.contains("//"), "{p}");
                    prop_assert!(!p.contains('\0'));
                    let inner = p.trim_start_matches('/').trim_end_matches('/');
                    if !inner.is_empty() {
                        prop_assert!(inner.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{p}");
                    }
                }
            }

            #[test]
            fn find_agrees_with_the_naive_longest_match(
                prefixes in prop::collection::vec("(/(a|b|ab)){0,3}/?", 0..6),
                path in "(/(a|b|ab)){0,4}/?",
            ) {
                let configured: Vec<RuleConfig> =
                    prefixes.iter().map(|p| rule(if p.is_empty() { "/" } else { p })).collect();
                let rules = Rules::new(&configured);
                let path = normalize_path(&path).unwrap();
                let best = configured
                    .iter()
                    .filter(|r| naive_matches(&r.prefix, &path))
                    .map(|r| r.prefix.trim_end_matches('/').len())
                    .max();
                let got = rules.find(&path).map(|r| r.prefix.trim_end_matches('/').len());
                prop_assert_eq!(got, best);
            }
        }
    }
}
