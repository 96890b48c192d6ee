//! `[[auth.rules]]`: path normalisation and longest-prefix matching on whole segments (SPEC §2).
//! Pure code.

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
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let _ = raw;
    todo!("helper")
}

/// The configured rules, ready to match.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<RuleConfig>,
}

impl Rules {
    pub fn new(rules: &[RuleConfig]) -> Self {
        Self { rules: rules.to_vec() }
    }

    /// The rule with the longest prefix matching `path` (already normalised) on whole segments.
    pub fn find(&self, path: &str) -> Option<&RuleConfig> {
        let _ = (path, &self.rules);
        todo!("helper")
    }
}

/// What the caller holds, for the `*_any` checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Holdings<'a> {
    pub roles: &'a [String],
    pub organizations: &'a [String],
    pub contracts: &'a [String],
}

/// The outcome of applying a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Anonymous where the rule requires a login: 401.
    Unauthenticated,
    /// Authenticated but holding none of a non-empty `*_any` list: 403.
    Forbidden,
}

/// Applies `rule` to a caller (`None` = anonymous). No rule: everyone passes.
pub fn decide(rule: Option<&RuleConfig>, caller: Option<Holdings<'_>>) -> Decision {
    let _ = (rule, caller);
    todo!("helper")
}
