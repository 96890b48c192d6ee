//! `[[auth.rules]]`: path canonicalisation and rule matching (docs/contract.md §2). Pure code.
//!
//! The gate and the upstream must agree on which path a request names, or a rule can be
//! sidestepped by spelling the path differently (`/admin%2Fusers`, `//admin`, `/x/../admin`).
//! So the path is normalised the way an upstream would read it before matching, and spellings
//! whose meaning depends on the upstream (`..`) are refused outright rather than guessed.
//! Where a choice remains, it is made so that more requests fall under a rule, not fewer.
//!
//! *(v2)* App servers do not all read a path alike: Tomcat and Spring drop `;params`, IIS and
//! Windows drop trailing dots and spaces, many route case-insensitively, some take `\` for `/`,
//! and Spring MVC's suffix matching serves `/admin.json` from the `/admin` handler. So
//! [`Rules::judge`] judges a request twice — on its path as written and on its *folded* path,
//! which erases those differences — and [`Applicable::decide`] lets the stricter verdict win.
//! Input that cannot be read unambiguously at all is refused ([`PathError`]).

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode_str;

use crate::config::RuleConfig;

/// Why a path cannot be judged. The caller answers 400 (403 in forward-auth), with
/// [`PathError::detail`] in the problem body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A segment made only of dots other than `.` — `..`, `...`, `.. `, `..;x` — written raw or
    /// percent-encoded, delimited by `/` or `\`.
    DotDot,
    /// Percent-decoding produced bytes that are not UTF-8.
    BadEncoding,
    /// A control character (0x00–0x1F, 0x7F), raw or percent-encoded.
    ControlCharacter,
    /// A `%XX` sequence left after one decoding (`%252e` → `%2e`): an upstream that decodes
    /// again would read a different path than the gate.
    DoubleEncoded,
}

impl PathError {
    /// Why the path was refused, for the problem body.
    pub fn detail(self) -> &'static str {
        match self {
            PathError::DotDot => "a path segment consists only of dots (such as '..')",
            PathError::BadEncoding => "the percent-decoded path is not valid UTF-8",
            PathError::ControlCharacter => "the path contains a control character",
            PathError::DoubleEncoded => {
                "the path is percent-encoded twice (a %XX sequence remains after decoding)"
            }
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for PathError {}

/// Drops the query, percent-decodes, refuses what cannot be read unambiguously and collapses
/// the path as written (the v1 normalisation).
///
/// In order:
///
/// 1. an absolute-form target (`http://host/p`, which nginx can pass on in `$request_uri`) is
///    reduced to its path, so it cannot slip past a rule on `/p`;
/// 2. the query (`?…`) and fragment (`#…`) are dropped;
/// 3. the path is percent-decoded **once**. A decoded `%2F` **is a segment separator**:
///    `/admin%2Fusers` is `/admin/users`. Frameworks that decode before routing (WSGI's
///    `PATH_INFO`, so Django behind mitol-django-apigateway) read it that way, and keeping it
///    inside one segment would let `/admin%2Fusers` escape a rule on `/admin`;
/// 4. refused *(v2: the last three)*: invalid UTF-8 after decoding → [`PathError::BadEncoding`];
///    a control character → [`PathError::ControlCharacter`]; a `%XX` sequence left after
///    decoding (`%252e`) → [`PathError::DoubleEncoded`], since the gate cannot know whether the
///    upstream decodes once or twice; a segment made only of dots other than `.` →
///    [`PathError::DotDot`], whether written `..`, `%2e%2e`, `.%2E`, `...` or `.. `, or
///    delimited by a (possibly encoded) backslash, which some servers treat as `/`. A `..;`
///    segment counts too: Tomcat and Spring strip `;params` and would resolve
///    `/public/..;/admin` to `/admin`;
/// 5. repeated `/` collapse and `.` segments are dropped.
///
/// The result always starts with `/` and keeps a trailing `/` when the input had one
/// (`/api/` → `/api/`, `/api/.` → `/api/`); [`Rules::find`] treats both spellings alike.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let decoded = decode(raw)?;
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

/// Steps 1–4 of [`normalize_path`]: the decoded path, borrowed when it held no `%`.
fn decode(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let path = strip_scheme_and_authority(raw);
    let path = match path.find(['?', '#']) {
        Some(end) => &path[..end],
        None => path,
    };
    let decoded = percent_decode_str(path).decode_utf8().map_err(|_| PathError::BadEncoding)?;
    let bytes = decoded.as_bytes();
    if bytes.iter().any(|b| b.is_ascii_control()) {
        return Err(PathError::ControlCharacter);
    }
    if bytes.windows(3).any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit()) {
        return Err(PathError::DoubleEncoded);
    }
    // Checked on the decoded text only: decoding leaves a literal `..` unchanged, so this
    // covers both the raw and the encoded spellings.
    if decoded.split(['/', '\\']).any(is_dot_only) {
        return Err(PathError::DotDot);
    }
    Ok(decoded)
}

/// A segment that, once its `;params` are dropped, is nothing but dots and spaces with at least
/// two dots: `..`, `...`, `.. `, `..;x`, `. .`. Folding would make it vanish, but a server that
/// strips trailing dots and spaces or `;params` may resolve it as `..`, so it is refused rather
/// than guessed. A lone `.` (with or without spaces) is harmless and vanishes.
fn is_dot_only(segment: &str) -> bool {
    let segment = segment.split(';').next().unwrap_or(segment);
    segment.bytes().all(|b| b == b'.' || b == b' ') && segment.bytes().filter(|b| *b == b'.').count() >= 2
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
/// A prefix that cannot be normalised (see [`PathError`]) could never match a request, since
/// such requests are refused; [`Rules::try_new`] refuses its rule with a [`RuleError`].
pub fn normalize_prefix(prefix: &str) -> Result<String, PathError> {
    let mut p = normalize_path(prefix)?;
    if p.len() > 1 && p.ends_with('/') {
        p.pop();
    }
    Ok(p)
}

/// Why a configured `[[auth.rules]]` entry cannot be used. Its message names the entry by
/// index and prefix, so `check-config` and startup point at the line to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleError {
    /// The prefix does not start with `/`.
    NotAbsolute { index: usize, prefix: String },
    /// The prefix cannot be read as a path ([`PathError`]). No request could ever match it,
    /// since requests spelled so are refused: a rule that silently protects nothing.
    Unreadable { index: usize, prefix: String, why: PathError },
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::NotAbsolute { index, prefix } => {
                write!(f, "auth.rules[{index}].prefix {prefix:?} must be a plain path starting with '/'")
            }
            RuleError::Unreadable { index, prefix, why } => {
                write!(f, "auth.rules[{index}].prefix {prefix:?} must be a plain path: {why}")
            }
        }
    }
}

impl std::error::Error for RuleError {}

/// One rule ready to match: its prefix split into segments both ways.
#[derive(Debug, Clone)]
struct Prepared {
    /// Segments of the prefix as written (v1): decoded, split on `/`, empty and `.` dropped.
    written: Vec<String>,
    /// Segments of the folded prefix, ASCII lower-case (see [`folded_segments`]).
    folded: Vec<String>,
    rule: RuleConfig,
}

/// The configured rules, ready to match.
///
/// Prefixes are split into segments once here, so judging a request compares segments in
/// place: no allocation unless the path holds a `%` (then one, for the decoded text) or the
/// folded path falls under more than one rule equally (see [`Applicable::folded_also`]).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Longest written prefix first; equal lengths keep config order, so of two rules with the
    /// same prefix the first configured one wins the as-written match.
    rules: Vec<Prepared>,
}

/// The rules a request falls under, found by [`Rules::judge`]. The request must pass all of
/// them: [`Applicable::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicable<'r> {
    /// The longest-prefix rule for the path as written (the v1 match: case-sensitive, whole
    /// segments, nothing folded).
    pub as_written: Option<&'r RuleConfig>,
    /// The rule for the folded path: the one matching the most folded segments, an exact
    /// match of the last one beating a format-suffix match (`/app.js` beats `/app` for
    /// `/app.js`).
    pub folded: Option<&'r RuleConfig>,
    /// Other rules the folded path falls under as closely, which apply too (fail closed):
    /// rules whose prefixes fold alike (`/Admin` and `/admin`) or that tie as suffix matches
    /// (`/app` and `/app.js` for `/app.js.map`), and, when [`Applicable::folded`] is a
    /// format-suffix match, the rules of the deepest exact match. Without the latter a case
    /// change could escape a rule: under a closed `/api` and a lenient `/api/v1`, `/api/v1.2`
    /// is judged on `/api` as written, but `/API/v1.2` matches nothing as written and only
    /// `/api/v1` (by suffix) when folded. Empty, and so not allocated, in the usual case.
    pub folded_also: Vec<&'r RuleConfig>,
}

impl Applicable<'_> {
    /// The verdict for `caller` (`None` = anonymous): [`decide`] on every applicable rule,
    /// the stricter verdict winning ([`stricter`]).
    pub fn decide(&self, caller: Option<Holdings<'_>>) -> Decision {
        let first = stricter(decide(self.as_written, caller), decide(self.folded, caller));
        self.folded_also.iter().fold(first, |verdict, rule| stricter(verdict, decide(Some(rule), caller)))
    }
}

/// The stricter of two verdicts: any refusal beats [`Decision::Allow`]. For one caller only
/// one kind of refusal can occur ([`decide`] refuses an anonymous caller with
/// [`Decision::Unauthenticated`] and an authenticated one with [`Decision::Forbidden`]); were
/// both ever combined, 401 would win, as the login is asked for before the rights.
pub fn stricter(a: Decision, b: Decision) -> Decision {
    let rank = |d: Decision| match d {
        Decision::Allow => 0,
        Decision::ActiveOrganizationRequired => 1,
        Decision::Forbidden => 2,
        Decision::Unauthenticated => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// How closely a folded path matches a rule: segments matched, then whether the last one
/// matched exactly (`true` beats a format-suffix match at equal depth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Level {
    depth: usize,
    exact: bool,
}

impl Rules {
    /// Prepares `rules` for matching, or names the first rule whose prefix is not a plain path
    /// starting with `/` (see [`normalize_prefix`]): such a rule could never match a request,
    /// and a rule dropped silently would leave its paths unprotected.
    pub fn try_new(rules: &[RuleConfig]) -> Result<Self, RuleError> {
        let mut prepared = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let prefix = &rule.prefix;
            if !prefix.starts_with('/') {
                return Err(RuleError::NotAbsolute { index, prefix: prefix.clone() });
            }
            let decoded =
                decode(prefix).map_err(|why| RuleError::Unreadable { index, prefix: prefix.clone(), why })?;
            prepared.push(Prepared {
                written: written_segments(&decoded).map(str::to_owned).collect(),
                folded: folded_segments(&decoded).map(str::to_ascii_lowercase).collect(),
                rule: rule.clone(),
            });
        }
        // Stable sort: ties keep their configured order.
        prepared.sort_by_key(|p| std::cmp::Reverse(p.written.len()));
        Ok(Self { rules: prepared })
    }

    /// The rule with the longest prefix matching `path` (already normalised, or decoded) on
    /// whole segments, as written.
    ///
    /// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; `/` matches everything.
    pub fn find(&self, path: &str) -> Option<&RuleConfig> {
        self.rules.iter().find(|p| written_match(&p.written, path)).map(|p| &p.rule)
    }

    /// Judges a raw request target — a path, maybe with a query, as written on the wire or in
    /// `X-Forwarded-Uri` (non-ASCII bytes already percent-encoded) — and returns the rules it
    /// falls under, or why it cannot be read.
    ///
    /// The path as written is normalised as in [`normalize_path`] and matched with
    /// [`Rules::find`]. The *folded* path is the decoded path split on `/` and `\`, each
    /// segment stripped of a `;…` parameter and then of trailing spaces and dots, empty
    /// segments dropped; it is compared with the folded prefixes ignoring ASCII case, and its
    /// last segment also falls under a rule segment `r` when it starts with `r.` (a format
    /// suffix). So `/Admin`, `/admin;x=1/users`, `/admin.json`, `/admin./x` and `/admin\x` fall
    /// under a rule for `/admin`, while `/api/v1.2/admin` does not fall under `/api/v1`.
    pub fn judge(&self, raw: &str) -> Result<Applicable<'_>, PathError> {
        let decoded = decode(raw)?;
        let as_written = self.find(&decoded);

        let mut best: Option<Level> = None;
        let mut best_exact: Option<usize> = None;
        for p in &self.rules {
            if let Some(level) = folded_match(&p.folded, &decoded) {
                best = best.max(Some(level));
                if level.exact {
                    best_exact = best_exact.max(Some(level.depth));
                }
            }
        }
        let mut folded = None;
        let mut folded_also = Vec::new();
        if best.is_some() {
            for p in &self.rules {
                let Some(level) = folded_match(&p.folded, &decoded) else { continue };
                let in_best = Some(level) == best;
                if in_best && folded.is_none() {
                    folded = Some(&p.rule);
                } else if in_best || (level.exact && Some(level.depth) == best_exact) {
                    folded_also.push(&p.rule);
                }
            }
        }
        Ok(Applicable { as_written, folded, folded_also })
    }
}

/// Segments of a decoded path as written: split on `/`, empty and `.` segments dropped.
fn written_segments(decoded: &str) -> impl Iterator<Item = &str> {
    decoded.split('/').filter(|s| !s.is_empty() && *s != ".")
}

/// Whether `prefix` (written segments) covers `path` on whole segments.
fn written_match(prefix: &[String], path: &str) -> bool {
    let mut segments = written_segments(path);
    prefix.iter().all(|p| segments.next() == Some(p.as_str()))
}

/// Segments of a decoded path folded: split on `/` and `\`, each segment [`fold_segment`]ed,
/// empty ones (`//`, `.`, `;x`) dropped. Case is left alone: comparisons ignore ASCII case,
/// which spares a lower-cased copy of every request path.
fn folded_segments(decoded: &str) -> impl Iterator<Item = &str> {
    decoded.split(['/', '\\']).map(fold_segment).filter(|s| !s.is_empty())
}

/// Drops a `;…` parameter, then trailing spaces and dots.
fn fold_segment(segment: &str) -> &str {
    let segment = match segment.find(';') {
        Some(end) => &segment[..end],
        None => segment,
    };
    segment.trim_end_matches([' ', '.'])
}

/// The folded path of `raw`, ASCII lower-cased, its segments joined by `/` (always starting
/// with `/`): what [`Rules::judge`] compares with the folded prefixes, spelled out. Judging
/// does not build it; it is for tests, the fuzz target and diagnostics.
pub fn folded_path(raw: &str) -> Result<String, PathError> {
    let decoded = decode(raw)?;
    let mut out = String::with_capacity(decoded.len() + 1);
    for segment in folded_segments(&decoded) {
        out.push('/');
        out.push_str(&segment.to_ascii_lowercase());
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// How closely the folded segments of `path` match the folded prefix `prefix` (lower-case), if
/// at all: every prefix segment equal ignoring ASCII case, except that the path's last segment
/// may also start with the prefix's last segment and a `.`.
fn folded_match(prefix: &[String], path: &str) -> Option<Level> {
    let mut segments = folded_segments(path).peekable();
    for (i, wanted) in prefix.iter().enumerate() {
        let segment = segments.next()?;
        if segment.eq_ignore_ascii_case(wanted) {
            continue;
        }
        let last = i + 1 == prefix.len() && segments.peek().is_none();
        if last && is_format_suffix(segment, wanted) {
            return Some(Level { depth: prefix.len(), exact: false });
        }
        return None;
    }
    Some(Level { depth: prefix.len(), exact: true })
}

/// `segment` is `wanted` followed by `.` and more (`admin.json` for `admin`), ignoring ASCII case.
fn is_format_suffix(segment: &str, wanted: &str) -> bool {
    let (s, w) = (segment.as_bytes(), wanted.as_bytes());
    s.len() > w.len() && s[w.len()] == b'.' && s[..w.len()].eq_ignore_ascii_case(w)
}

/// What the caller holds, for the `*_any` checks. Compared exactly (case-sensitive) with the
/// rule's lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holdings<'a> {
    /// Realm roles and `client:role` client roles.
    pub roles: &'a [String],
    /// Keys of the caller's organizations.
    pub organizations: &'a [String],
    /// Keys of the contracts attached to the caller and valid today (only the active
    /// organization's with `headers.scope_to_active_organization`: the lists the headers carry).
    pub contracts: &'a [String],
    /// Key of the request's active organization (docs/contract.md §10), if one is.
    pub active_organization: Option<&'a str>,
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
    /// Authenticated and holding what the lists ask, but without an active organization where
    /// the rule has `active_organization = true`: 403 with the problem type
    /// `urn:identity-sidecar:active-organization-required` (docs/contract.md §10).
    ActiveOrganizationRequired,
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
/// - A rule with `active_organization = true` asks for a login too, and then for an active
///   organization ([`Decision::ActiveOrganizationRequired`] without one).
pub fn decide(rule: Option<&RuleConfig>, caller: Option<Holdings<'_>>) -> Decision {
    let Some(rule) = rule else {
        return Decision::Allow;
    };
    let Some(held) = caller else {
        let names_any = !(rule.roles_any.is_empty()
            && rule.organizations_any.is_empty()
            && rule.contracts_any.is_empty());
        let login = rule.require || names_any || rule.active_organization;
        return if login { Decision::Unauthenticated } else { Decision::Allow };
    };
    if !(satisfies(&rule.roles_any, held.roles)
        && satisfies(&rule.organizations_any, held.organizations)
        && satisfies(&rule.contracts_any, held.contracts))
    {
        Decision::Forbidden
    } else if rule.active_organization && held.active_organization.is_none() {
        Decision::ActiveOrganizationRequired
    } else {
        Decision::Allow
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

    /// The rules of a test, whose prefixes are all plain paths.
    fn ruleset(configured: &[RuleConfig]) -> Rules {
        Rules::try_new(configured).expect("test prefixes are plain paths")
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
        // `%25` decodes to `%` once and only once.
        assert_eq!(norm("/a%25zz"), Ok("/a%zz".into()));
        // v1 kept `%252e%252e` as the literal `%2e%2e`; docs/contract.md §2 v2 refuses a `%XX` left after
        // one decoding, as an upstream that decodes twice would read `..`.
        assert_eq!(norm("/a/%252e%252e/b"), Err(PathError::DoubleEncoded));
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
    fn invalid_utf8_is_bad_encoding_and_nul_a_control_character() {
        for raw in ["/a/%ff", "/a/%C3", "/%C3%28"] {
            assert_eq!(norm(raw), Err(PathError::BadEncoding), "{raw}");
        }
        // v1 called a NUL bad encoding; docs/contract.md §2 v2 refuses every control character, NUL included.
        for raw in ["/a%00b", "/a/%00"] {
            assert_eq!(norm(raw), Err(PathError::ControlCharacter), "{raw}");
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
        let rules = ruleset(&[rule("/api")]);
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
        let rules = ruleset(&[rule("/api/")]);
        assert_eq!(found(&rules, "/api"), Some("/api/"));
        assert_eq!(found(&rules, "/api/x"), Some("/api/"));
        assert_eq!(found(&rules, "/apix"), None);
    }

    #[test]
    fn the_root_prefix_matches_everything() {
        let rules = ruleset(&[rule("/")]);
        for raw in ["/", "/a", "/a/b/", "", "?q"] {
            assert_eq!(found(&rules, raw), Some("/"), "{raw}");
        }
    }

    #[test]
    fn the_longest_matching_prefix_wins_whatever_the_config_order() {
        let configured = [rule("/"), rule("/api/admin/"), rule("/api"), rule("/api/adm")];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let rules = ruleset(&order.map(|i| configured[i].clone()));
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
        let rules = ruleset(&[first.clone(), second]);
        assert_eq!(rules.find("/api/x"), Some(&first));
    }

    #[test]
    fn prefixes_are_normalised_like_paths() {
        let rules = ruleset(&[rule("//api/./v1%2Fadmin?x")]);
        assert_eq!(found(&rules, "/api/v1/admin/x"), Some("//api/./v1%2Fadmin?x"));
    }

    #[test]
    fn encoded_slashes_and_queries_cannot_escape_a_rule() {
        let rules = ruleset(&[rule("/admin")]);
        assert_eq!(found(&rules, "/admin%2Fusers"), Some("/admin"));
        assert_eq!(found(&rules, "//admin"), Some("/admin"));
        assert_eq!(found(&rules, "/%61dmin"), Some("/admin"));
        assert_eq!(found(&rules, "/./admin"), Some("/admin"));
        assert_eq!(found(&rules, "/admin?x=/public"), Some("/admin"));
        assert_eq!(found(&rules, "http://h/admin"), Some("/admin"));
    }

    #[test]
    fn a_prefix_that_cannot_be_normalised_is_refused_naming_the_rule() {
        for (prefix, why) in [("/a/../b", PathError::DotDot), ("/%ff", PathError::BadEncoding)] {
            let err = Rules::try_new(&[rule("/ok"), rule(prefix)]).unwrap_err();
            assert_eq!(err, RuleError::Unreadable { index: 1, prefix: prefix.into(), why });
            let message = err.to_string();
            assert!(message.contains("auth.rules[1].prefix") && message.contains(prefix), "{message}");
            assert!(message.contains("must be a plain path"), "{message}");
        }
        assert_eq!(normalize_prefix("/a/../b"), Err(PathError::DotDot));
    }

    #[test]
    fn a_prefix_not_starting_with_a_slash_is_refused_naming_the_rule() {
        let err = Rules::try_new(&[rule("admin")]).unwrap_err();
        assert_eq!(err, RuleError::NotAbsolute { index: 0, prefix: "admin".into() });
        let message = err.to_string();
        assert!(message.contains("auth.rules[0].prefix \"admin\"") && message.contains("starting with '/'"));
    }

    #[test]
    fn no_rules_match_nothing() {
        assert_eq!(ruleset(&[]).find("/"), None);
        assert_eq!(Rules::default().find("/x"), None);
    }

    // ---- Rules::judge (v2: judged twice, fails closed) -------------------------------------

    fn required(prefix: &str) -> RuleConfig {
        RuleConfig { require: true, ..rule(prefix) }
    }

    fn courses() -> Rules {
        ruleset(&[required("/courses")])
    }

    /// The verdict for an anonymous caller, or why the path was refused.
    fn anonymous(rules: &Rules, raw: &str) -> Result<Decision, PathError> {
        rules.judge(raw).map(|a| a.decide(None))
    }

    #[test]
    fn every_observed_bypass_spelling_still_falls_under_the_rule() {
        let rules = courses();
        for raw in [
            "/courses/x",
            "/Courses/x",
            "/courses;jsessionid=1/x",
            "/;/courses/x",
            "/courses%3B/x",
            "/courses.json",
            "/courses./x",
            "/courses%20/x",
            "/courses\\x",
            "/courses%5Cx",
            "/COURSES",
            "/courses.%20;x=1.json/x",
            "//./courses%2Fx",
        ] {
            assert_eq!(anonymous(&rules, raw), Ok(Decision::Unauthenticated), "{raw}");
        }
    }

    #[test]
    fn a_bypass_spelling_still_lets_an_authenticated_caller_pass() {
        let rules = courses();
        for raw in ["/courses/x", "/Courses/x", "/courses.json", "/courses\\x"] {
            assert_eq!(rules.judge(raw).unwrap().decide(Some(Holdings::default())), Decision::Allow, "{raw}");
        }
    }

    #[test]
    fn paths_that_only_look_alike_do_not_fall_under_the_rule() {
        let rules = courses();
        // A format suffix counts on the last segment only; other names are other names.
        for raw in ["/coursesx", "/course", "/x/courses", "/courses.json/x", "/courses-old", "/c/ourses"] {
            assert_eq!(anonymous(&rules, raw), Ok(Decision::Allow), "{raw}");
        }
    }

    #[test]
    fn a_suffixed_segment_inside_the_path_is_not_under_a_lenient_rule() {
        let rules = ruleset(&[required("/api"), rule("/api/v1")]);
        let applicable = rules.judge("/api/v1.2/admin").unwrap();
        assert_eq!(applicable.as_written.map(|r| r.prefix.as_str()), Some("/api"));
        assert_eq!(applicable.folded.map(|r| r.prefix.as_str()), Some("/api"));
        assert_eq!(applicable.decide(None), Decision::Unauthenticated);
        assert_eq!(anonymous(&rules, "/API/V1.2/admin"), Ok(Decision::Unauthenticated));
        assert_eq!(anonymous(&rules, "/api/v1/admin"), Ok(Decision::Allow));
        assert_eq!(anonymous(&rules, "/API/v1/admin"), Ok(Decision::Allow));
    }

    #[test]
    fn the_stricter_verdict_wins_when_the_two_readings_differ() {
        // As written `/api/V1/x` is under the closed `/api`; folded, under the lenient `/api/v1`.
        let rules = ruleset(&[required("/api"), rule("/api/v1")]);
        let applicable = rules.judge("/api/V1/x").unwrap();
        assert_eq!(applicable.as_written.map(|r| r.prefix.as_str()), Some("/api"));
        assert_eq!(applicable.folded.map(|r| r.prefix.as_str()), Some("/api/v1"));
        assert_eq!(applicable.decide(None), Decision::Unauthenticated);
    }

    #[test]
    fn a_case_change_cannot_reach_a_lenient_rule_through_a_format_suffix() {
        // `/api/v1.2` as written is under the closed `/api`. Folded, its last segment also
        // matches `/api/v1` by suffix; the deepest exact match (`/api`) applies as well, so
        // `/API/v1.2`, which matches nothing as written, is not let through.
        let rules = ruleset(&[required("/api"), rule("/api/v1")]);
        assert_eq!(anonymous(&rules, "/api/v1.2"), Ok(Decision::Unauthenticated));
        assert_eq!(anonymous(&rules, "/API/v1.2"), Ok(Decision::Unauthenticated));
        let applicable = rules.judge("/API/v1.2").unwrap();
        assert_eq!(applicable.as_written, None);
        assert_eq!(applicable.folded.map(|r| r.prefix.as_str()), Some("/api/v1"));
        assert_eq!(applicable.folded_also.iter().map(|r| r.prefix.as_str()).collect::<Vec<_>>(), ["/api"]);
    }

    #[test]
    fn an_exact_rule_opens_a_file_under_a_closed_prefix() {
        let rules = ruleset(&[required("/app"), rule("/app.js")]);
        assert_eq!(anonymous(&rules, "/app.js"), Ok(Decision::Allow));
        assert_eq!(anonymous(&rules, "/APP.JS"), Ok(Decision::Allow));
        assert_eq!(anonymous(&rules, "/app.js;v=2"), Ok(Decision::Allow));
        assert_eq!(rules.judge("/app.js").unwrap().folded_also, Vec::<&RuleConfig>::new());
        assert_eq!(anonymous(&rules, "/app"), Ok(Decision::Unauthenticated));
        assert_eq!(anonymous(&rules, "/app.css"), Ok(Decision::Unauthenticated));
        assert_eq!(anonymous(&rules, "/App/x"), Ok(Decision::Unauthenticated));
        // `/app.js.map` is a suffix match of both rules at the same depth: both apply.
        assert_eq!(anonymous(&rules, "/app.js.map"), Ok(Decision::Unauthenticated));
    }

    #[test]
    fn rules_whose_prefixes_fold_alike_all_apply_whatever_their_order() {
        for configured in [[rule("/ADMIN"), required("/admin")], [required("/admin"), rule("/ADMIN")]] {
            let rules = ruleset(&configured);
            for raw in ["/Admin/x", "/ADMIN/x", "/admin/x", "/admin;x/y"] {
                assert_eq!(anonymous(&rules, raw), Ok(Decision::Unauthenticated), "{raw} {configured:?}");
            }
        }
    }

    #[test]
    fn an_authenticated_caller_without_the_role_is_forbidden_on_either_reading() {
        let staff_only = RuleConfig { roles_any: strings(&["staff"]), ..rule("/courses") };
        let rules = ruleset(&[staff_only]);
        let staff = Held::new(&["staff"], &[], &[]);
        let learner = Held::new(&["learner"], &[], &[]);
        for raw in ["/courses/x", "/Courses/x", "/courses.json", "/courses%5Cx"] {
            let applicable = rules.judge(raw).unwrap();
            assert_eq!(applicable.decide(None), Decision::Unauthenticated, "{raw}");
            assert_eq!(applicable.decide(Some(learner.holdings())), Decision::Forbidden, "{raw}");
            assert_eq!(applicable.decide(Some(staff.holdings())), Decision::Allow, "{raw}");
        }
    }

    #[test]
    fn stricter_prefers_any_refusal() {
        use Decision::*;
        assert_eq!(stricter(Allow, Allow), Allow);
        for refusal in [Unauthenticated, Forbidden] {
            assert_eq!(stricter(Allow, refusal), refusal);
            assert_eq!(stricter(refusal, Allow), refusal);
        }
        assert_eq!(stricter(Forbidden, Unauthenticated), Unauthenticated);
        assert_eq!(stricter(Unauthenticated, Forbidden), Unauthenticated);
    }

    #[test]
    fn segments_made_only_of_dots_are_refused() {
        for raw in [
            "/a/...",
            "/a/.../b",
            "/a/.. /b",
            "/a/..%20/b",
            "/a/..;x/b",
            "/a/...;/b",
            "/a/%2e%2e%2e/b",
            "/a\\...\\b",
            "/a/. ./b",
            "/courses/..%5c..%5cadmin",
        ] {
            assert_eq!(courses().judge(raw), Err(PathError::DotDot), "{raw}");
        }
        // A lone `.`, however dressed, is harmless and vanishes.
        for raw in ["/courses/./x", "/courses/.%20/x", "/courses/.;x/x", "/courses/%2e/x"] {
            assert_eq!(anonymous(&courses(), raw), Ok(Decision::Unauthenticated), "{raw}");
        }
    }

    #[test]
    fn control_characters_are_refused_raw_or_encoded() {
        for raw in ["/a%00", "/a%0Ab", "/courses%0d%0a/x", "/a%09", "/a%1F", "/a%7f", "/a\tb", "/a\u{7f}"] {
            assert_eq!(courses().judge(raw), Err(PathError::ControlCharacter), "{raw:?}");
        }
    }

    #[test]
    fn a_percent_sequence_left_after_one_decoding_is_refused() {
        for raw in ["/a/%252e%252e/b", "/courses%255Cx", "/%2563ourses/x", "/a%25%32%65", "/a%2%41"] {
            assert_eq!(courses().judge(raw), Err(PathError::DoubleEncoded), "{raw}");
        }
        // A `%` that does not start a `%XX` sequence stays literal.
        for raw in ["/100%", "/a%zz", "/a%2", "/a%25zz", "/a%25"] {
            assert_eq!(anonymous(&courses(), raw), Ok(Decision::Allow), "{raw}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_after_decoding_are_refused() {
        for raw in ["/courses/%ff", "/%C3%28", "/courses%C3"] {
            assert_eq!(courses().judge(raw), Err(PathError::BadEncoding), "{raw}");
        }
        assert_eq!(anonymous(&courses(), "/courses/caf%C3%A9"), Ok(Decision::Unauthenticated));
    }

    #[test]
    fn refusals_do_not_depend_on_the_rules() {
        for raw in ["/a/..", "/a%00", "/a%2541", "/%ff"] {
            assert!(Rules::default().judge(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn each_refusal_says_why() {
        let all = [
            PathError::DotDot,
            PathError::BadEncoding,
            PathError::ControlCharacter,
            PathError::DoubleEncoded,
        ];
        let details: std::collections::HashSet<_> = all.iter().map(|e| e.to_string()).collect();
        assert_eq!(details.len(), all.len());
        assert!(details.iter().all(|d| d.len() > 20));
    }

    #[test]
    fn the_query_is_not_judged() {
        let rules = courses();
        assert_eq!(anonymous(&rules, "/public?next=/courses/x"), Ok(Decision::Allow));
        assert_eq!(anonymous(&rules, "/public?x=%252e%00"), Ok(Decision::Allow));
        assert_eq!(anonymous(&rules, "/Courses?x=1"), Ok(Decision::Unauthenticated));
        assert_eq!(anonymous(&rules, "http://host/Courses/x?y"), Ok(Decision::Unauthenticated));
    }

    #[test]
    fn the_folded_path_spells_out_what_is_compared() {
        assert_eq!(
            folded_path("/Courses;jsessionid=1/./X.%20\\y//z.json?q"),
            Ok("/courses/x/y/z.json".into())
        );
        assert_eq!(folded_path("/;/."), Ok("/".into()));
        assert_eq!(folded_path("/a/.."), Err(PathError::DotDot));
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
            Holdings {
                roles: &self.roles,
                organizations: &self.organizations,
                contracts: &self.contracts,
                active_organization: None,
            }
        }
    }

    fn lists(roles: &[&str], organizations: &[&str], contracts: &[&str]) -> RuleConfig {
        RuleConfig {
            prefix: "/x".into(),
            require: false,
            roles_any: strings(roles),
            organizations_any: strings(organizations),
            contracts_any: strings(contracts),
            active_organization: false,
        }
    }

    #[test]
    fn the_active_organization_option_asks_for_a_login_then_for_an_active_organization() {
        let r = RuleConfig { active_organization: true, ..rule("/x") };
        let learner = Held::new(&[], &["acme", "globex"], &[]);
        assert_eq!(decide(Some(&r), None), Decision::Unauthenticated);
        assert_eq!(decide(Some(&r), Some(learner.holdings())), Decision::ActiveOrganizationRequired);
        let active = Holdings { active_organization: Some("acme"), ..learner.holdings() };
        assert_eq!(decide(Some(&r), Some(active)), Decision::Allow);
        // A list the caller fails is the plain 403, whatever the active organization.
        let r = RuleConfig { organizations_any: strings(&["initech"]), ..r };
        assert_eq!(decide(Some(&r), Some(learner.holdings())), Decision::Forbidden);
        assert_eq!(decide(Some(&r), Some(active)), Decision::Forbidden);
        assert_eq!(stricter(Decision::ActiveOrganizationRequired, Decision::Forbidden), Decision::Forbidden);
        assert_eq!(
            stricter(Decision::Allow, Decision::ActiveOrganizationRequired),
            Decision::ActiveOrganizationRequired
        );
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
                let rules = ruleset(&configured);
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

        // ---- v2 properties: spellings of a path never get a more lenient verdict ----------

        /// Reads spelling choices from a byte string (0 once it runs out).
        struct Choices<'a>(std::slice::Iter<'a, u8>);

        impl Choices<'_> {
            fn next(&mut self) -> u8 {
                self.0.next().copied().unwrap_or(0)
            }
        }

        /// `segments` (a plain path: lower-case, no `;`, no trailing dot or space) spelled
        /// differently using only the folding steps of docs/contract.md §2: case changes, `;params`,
        /// trailing dots and spaces, `\` (raw or encoded) or an encoded `/` for `/`, extra empty,
        /// `.` and `;` segments, and percent-encoding of any character.
        fn spell(segments: &[&str], plan: &[u8]) -> String {
            let mut c = Choices(plan.iter());
            let mut out = String::new();
            for segment in segments {
                out.push_str(["/", "/", "/", "\\", "%2F", "%5c"][usize::from(c.next() % 6)]);
                out.push_str(["", "", "/", "./", ";/", ".%3bx/", "%2e/"][usize::from(c.next() % 7)]);
                for ch in segment.chars() {
                    let choice = c.next();
                    let ch = if choice & 1 == 1 { ch.to_ascii_uppercase() } else { ch };
                    if choice & 6 == 6 {
                        let mut buf = [0u8; 4];
                        for b in ch.encode_utf8(&mut buf).bytes() {
                            out.push_str(&format!("%{b:02X}"));
                        }
                    } else {
                        out.push(ch);
                    }
                }
                out.push_str(["", "", ".", "%20", ". .", "%2E"][usize::from(c.next() % 6)]);
                out.push_str(
                    ["", "", ";jsessionid=1", "%3B", ";a=b.c", "%3bx%3d."][usize::from(c.next() % 6)],
                );
            }
            out.push_str(["", "", "/", "?q=/x/../%00", "//."][usize::from(c.next() % 5)]);
            out
        }

        /// How strict a verdict is; a refused path is the strictest.
        fn strictness(verdict: Result<Decision, PathError>) -> u8 {
            match verdict {
                Ok(Decision::Allow) => 0,
                Ok(Decision::ActiveOrganizationRequired) => 1,
                Ok(Decision::Forbidden) => 2,
                Ok(Decision::Unauthenticated) => 3,
                Err(_) => 4,
            }
        }

        /// Segment names for paths and plain (lower-case) rule prefixes: few, so that random
        /// rules and paths overlap often, and format-suffix look-alikes of each other.
        const NAMES: [&str; 6] = ["a", "v1", "v1.2", "v1.2.x", "b", "é"];

        fn plain_path() -> impl Strategy<Value = Vec<&'static str>> {
            prop::collection::vec(prop::sample::select(&NAMES[..]), 0..4)
        }

        /// Random rules whose prefixes mostly lie along `path` (a plain path's segments),
        /// some cut to the name before a `.` in their last segment (`/a/v1` for `/a/v1.2/b`),
        /// so that exact and format-suffix matches meet often; the rest are random.
        fn rules_along(path: Vec<String>) -> impl Strategy<Value = Vec<RuleConfig>> {
            let depth = path.len();
            let one = (0..=depth, any::<bool>(), any::<bool>(), any::<bool>(), plain_path(), 0..4u8);
            prop::collection::vec(one, 0..6).prop_map(move |specs| {
                specs
                    .into_iter()
                    .map(|(d, cut, require, staff, random, kind)| {
                        let mut segments: Vec<String> = if kind == 0 {
                            random.iter().map(|s| s.to_string()).collect()
                        } else {
                            path[..d].to_vec()
                        };
                        if cut
                            && let Some(last) = segments.last_mut()
                            && let Some(dot) = last.find('.')
                        {
                            last.truncate(dot);
                        }
                        RuleConfig {
                            prefix: format!("/{}", segments.join("/")),
                            require,
                            roles_any: if staff { strings(&["staff"]) } else { vec![] },
                            ..RuleConfig::default()
                        }
                    })
                    .collect()
            })
        }

        /// A raw target in the alphabet of hostile spellings, for paths that are not plain.
        fn raw_spelling() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    prop::sample::select(&NAMES[..]),
                    Just("/"),
                    Just("\\"),
                    Just("."),
                    Just(" "),
                    Just(";"),
                    Just("%2e"),
                    Just("%2F"),
                    Just("%5C"),
                    Just("%3B"),
                    Just("%20"),
                    Just("A"),
                    Just("V1"),
                    Just("%"),
                    Just("%25"),
                    Just("?"),
                ],
                0..12,
            )
            .prop_map(|parts| parts.concat())
        }

        /// The folded path written back as a raw target: `%`, `?` and `#` encoded so that it
        /// decodes to itself.
        fn written(folded: &str) -> String {
            folded.replace('%', "%25").replace('?', "%3F").replace('#', "%23")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// (a) A protected path stays protected, however it is spelled.
            #[test]
            fn any_spelling_of_a_protected_path_is_still_covered(
                protected in prop::collection::vec(prop::sample::select(&NAMES[..]), 1..4),
                below in plain_path(),
                plan in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let rules = ruleset(&[required(&format!("/{}", protected.join("/"))), rule("/")]);
                let path: Vec<&str> = protected.iter().chain(&below).copied().collect();
                let raw = spell(&path, &plan);
                prop_assert_eq!(anonymous(&rules, &raw), Ok(Decision::Unauthenticated), "{}", raw);
            }

            /// (b) No spelling of a plain path gets a more lenient verdict than the path as
            /// written, for any caller.
            #[test]
            fn no_spelling_is_judged_more_leniently_than_the_path_as_written(
                (path, configured) in plain_path().prop_flat_map(|path| {
                    let owned = path.iter().map(|s| s.to_string()).collect();
                    (Just(path), rules_along(owned))
                }),
                plan in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let rules = ruleset(&configured);
                let plain = format!("/{}", path.join("/"));
                let raw = spell(&path, &plan);
                let staff = Held::new(&["staff"], &[], &[]);
                for caller in [None, Some(Holdings::default()), Some(staff.holdings())] {
                    let as_written = rules.judge(&plain).map(|a| a.decide(caller));
                    let spelled = rules.judge(&raw).map(|a| a.decide(caller));
                    prop_assert!(
                        strictness(spelled) >= strictness(as_written),
                        "{} → {:?} but {} → {:?}", raw, spelled, plain, as_written
                    );
                }
            }

            /// (b) again, from the other side: any raw target is a spelling of its folded path,
            /// and is judged at least as strictly as it.
            #[test]
            fn a_raw_target_is_judged_at_least_as_strictly_as_its_folded_path(
                (raw, configured) in raw_spelling().prop_flat_map(|raw| {
                    let folded = folded_path(&raw).unwrap_or_default();
                    let segments = folded.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
                    (Just(raw), rules_along(segments))
                }),
            ) {
                let rules = ruleset(&configured);
                let Ok(folded) = folded_path(&raw) else { return Ok(()) };
                let plain = written(&folded);
                let staff = Held::new(&["staff"], &[], &[]);
                for caller in [None, Some(Holdings::default()), Some(staff.holdings())] {
                    let as_written = rules.judge(&plain).map(|a| a.decide(caller));
                    let spelled = rules.judge(&raw).map(|a| a.decide(caller));
                    prop_assert!(as_written.is_ok(), "{} folds to {}, refused: {:?}", raw, plain, as_written);
                    prop_assert!(
                        strictness(spelled) >= strictness(as_written),
                        "{} → {:?} but {} → {:?}", raw, spelled, plain, as_written
                    );
                }
            }
        }
    }
}
