//! The startup check: everything that must hold before a configuration may serve, in one
//! step that `check-config` (and every other command that reads the configuration) and
//! [`App::build`](super::App::build) both run, so they refuse the same configuration with the
//! same message naming the key.
//!
//! [`Config`] is plain data and checks only what its values say on their own. A value that
//! only its reader can judge is refused by that reader's constructor, run here: the validation
//! policy's algorithms ([`Policy::try_new`]), the path rules' prefixes ([`Rules::try_new`]) and
//! the Redis entry keys ([`EntryKeys::from_file`]).

use crate::auth::rules::Rules;
use crate::auth::validate::Policy;
use crate::config::Config;
use crate::entitlements::EntryKeys;

/// What the check built on the way, ready for the gate.
#[derive(Debug)]
pub struct Checked {
    /// The token validation policy (`oidc.*`).
    pub policy: Policy,
    /// The path rules (`auth.rules`).
    pub rules: Rules,
}

/// Checks `config` completely: its own rules ([`Config::validate`]), then the parts other
/// modules read. The first failure is returned, its message naming the key.
pub fn check(config: &Config) -> anyhow::Result<Checked> {
    config.validate()?;
    let policy = Policy::try_new(config)?;
    let rules = Rules::try_new(&config.auth.rules)?;
    if let Some(path) = &config.cache.redis_key_file {
        // Read again when the Redis tier is built; read here so that `check-config` refuses
        // a weak, empty or unreadable file before a deployment does.
        EntryKeys::from_file(path)?;
    }
    // Webhook secrets and type filters; the Redis stream's connection is made at startup.
    crate::events::targets(config, None)?;
    Ok(Checked { policy, rules })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(extra: &[(&str, &str)]) -> Config {
        let base =
            [("SIDECAR__OIDC__ISSUER", "https://kc/realms/r"), ("SIDECAR__OIDC__AUDIENCES", r#"["app"]"#)];
        let env = base.iter().chain(extra).map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(None, env).expect("the configuration's own checks pass")
    }

    fn refusal(extra: &[(&str, &str)]) -> String {
        format!("{:#}", check(&load(extra)).unwrap_err())
    }

    #[test]
    fn a_valid_configuration_passes_and_yields_the_policy_and_rules() {
        let checked =
            check(&load(&[("SIDECAR__AUTH__RULES", r#"[{"prefix":"/admin","require":true}]"#)])).unwrap();
        assert_eq!(checked.rules.find("/admin/x").map(|r| r.prefix.as_str()), Some("/admin"));
        assert_eq!(checked.policy.issuer, "https://kc/realms/r");
    }

    #[test]
    fn the_configurations_own_checks_run_first() {
        let mut config = load(&[]);
        config.oidc.audiences.clear();
        let err = format!("{:#}", check(&config).unwrap_err());
        assert!(err.contains("oidc.audiences"), "{err}");
    }

    #[test]
    fn hmac_and_none_cannot_be_configured() {
        for alg in ["HS256", "none"] {
            let err = refusal(&[("SIDECAR__OIDC__ALGORITHMS", &format!("[\"{alg}\"]"))]);
            assert!(err.contains("oidc.algorithms") && err.contains(alg), "{err}");
        }
    }

    #[test]
    fn a_rule_prefix_that_is_not_a_plain_path_stops_startup_naming_the_rule() {
        for (prefix, says) in
            [("admin", "starting with '/'"), ("/a/../admin", "only of dots"), ("/%ff", "UTF-8")]
        {
            let rules = format!(r#"[{{"prefix":"/ok"}},{{"prefix":"{prefix}","require":true}}]"#);
            let err = refusal(&[("SIDECAR__AUTH__RULES", &rules)]);
            assert!(
                err.contains("auth.rules[1].prefix") && err.contains(prefix) && err.contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn a_weak_empty_or_missing_redis_key_file_stops_startup() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "# current\nDhzIq9SPKM0kklBY1fQ5VFIzGl/WJslMFHX7wWWBhnw=\n").unwrap();
        let weak = dir.path().join("weak");
        std::fs::write(&weak, "hunter2-hunter2\n").unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let with = |file: &Path| {
            let file = file.display().to_string();
            let config = load(&[
                ("SIDECAR__CACHE__REDIS_KEY_FILE", &file),
                ("SIDECAR__CACHE__REDIS_URL", "redis://127.0.0.1:6379"),
            ]);
            check(&config).map_err(|e| format!("{e:#}"))
        };
        assert!(with(&good).is_ok());
        for (file, says) in
            [(&weak, "line 1"), (&empty, "no key"), (&dir.path().join("absent"), "cannot read")]
        {
            let err = with(file).unwrap_err();
            assert!(err.contains("cache.redis_key_file") && err.contains(says), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
