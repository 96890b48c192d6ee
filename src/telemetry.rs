//! Logging setup: JSON (containers) or pretty (terminals), filtered by `log.level`
//! (`RUST_LOG` wins when set, for one-off debugging).

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Called once by `main`; tests don't call it.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => EnvFilter::try_new(&config.level)?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// A request path safe to log: a code is a bearer credential, so the segment after
/// `/enrollment-codes/` (public redemption) and after `/admin/v1/codes/` (admin revocation) is
/// replaced by `{code}`. `…/enrollment-codes/redeem` (the code is in the body) and
/// `/admin/v1/contracts/{key}/codes` (no code in the path) stay as they are.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    for (mark, keep) in [("/enrollment-codes/", Some("redeem")), ("/admin/v1/codes/", None)] {
        let Some(i) = path.find(mark) else { continue };
        let rest = &path[i + mark.len()..];
        let (segment, tail) = rest.find('/').map_or((rest, ""), |j| (&rest[..j], &rest[j..]));
        if segment.is_empty() || (Some(segment) == keep && tail.is_empty()) {
            return path.into();
        }
        return format!("{}{mark}{{code}}{tail}", &path[..i]).into();
    }
    path.into()
}

#[cfg(test)]
mod tests {
    use super::loggable_path;

    #[test]
    fn enrollment_codes_never_reach_a_log_line() {
        assert_eq!(
            loggable_path("/_sidecar/enrollment-codes/SECRET/redeem"),
            "/_sidecar/enrollment-codes/{code}/redeem"
        );
        assert_eq!(loggable_path("/_sidecar/enrollment-codes/redeem"), "/_sidecar/enrollment-codes/redeem");
        assert_eq!(loggable_path("/_sidecar/enrollment-codes/SECRET"), "/_sidecar/enrollment-codes/{code}");
        assert_eq!(loggable_path("/admin/v1/codes/SECRET"), "/admin/v1/codes/{code}");
        assert_eq!(loggable_path("/admin/v1/contracts/acme/codes"), "/admin/v1/contracts/acme/codes");
        assert_eq!(loggable_path("/api/x"), "/api/x");
    }
}
