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

/// A request path safe to log: the code in `…/enrollment-codes/{code}/…` is replaced, since
/// a code is a bearer credential.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    const MARK: &str = "/enrollment-codes/";
    match path.find(MARK) {
        None => path.into(),
        Some(i) => {
            let rest = &path[i + MARK.len()..];
            let tail = rest.find('/').map_or("", |j| &rest[j..]);
            if rest.is_empty() || rest.starts_with("redeem") && tail.is_empty() {
                return path.into();
            }
            format!("{}{MARK}{{code}}{tail}", &path[..i]).into()
        }
    }
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
        assert_eq!(loggable_path("/admin/v1/codes/x"), "/admin/v1/codes/x");
        assert_eq!(loggable_path("/api/x"), "/api/x");
    }
}
