//! Logging setup: JSON (containers) or pretty (terminals), filtered by `log.level`
//! (`RUST_LOG` wins when set, for one-off debugging); what of a request may be logged
//! ([`loggable_path`]) and the access-log line of a public request ([`access_log`]).

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

/// One answered public request, as the access log records it: plain values, so this module
/// needs no HTTP types.
pub struct Access<'a> {
    pub method: &'a str,
    /// The request path without its query (queries can hold codes or tokens); passed through
    /// [`loggable_path`] here.
    pub path: &'a str,
    pub status: u16,
    pub duration: std::time::Duration,
    /// The route's `mode` label (proxy, forward_auth, me, redeem, …).
    pub mode: &'static str,
    /// The `X-Request-Id` the request carried (the client's, or the one made for it).
    pub request_id: &'a str,
}

/// Writes the access-log line of one public request at `info`: method, path (an enrollment
/// code replaced by `{code}`), status, time to response headers in milliseconds, mode and
/// request id. Never a header, a query or a body, so never a token or a code.
pub fn access_log(access: &Access<'_>) {
    tracing::info!(
        target: "identity_sidecar::access",
        method = access.method,
        path = %loggable_path(access.path),
        status = access.status,
        duration_ms = access.duration.as_secs_f64() * 1000.0,
        mode = access.mode,
        request_id = access.request_id,
        "access"
    );
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
