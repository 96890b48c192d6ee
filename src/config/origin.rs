//! `server.allowed_origins` entries: a web origin parsed and normalised when the
//! configuration is read, so a listed origin that is not one (a trailing `/`, a path, `null`,
//! `*`) is a startup error naming the key. [`crate::cross_site`] compares requests with them
//! and reads a request's own origin with the same grammar.

use std::fmt;

/// A web origin (RFC 6454): `http` or `https`, a host and a port, normalised (lower case,
/// default port filled in) so two spellings of one origin compare equal.
///
/// Hand-parsed rather than with the `url` crate: an origin is an ASCII serialisation with no
/// path, query or user info, and `url` would quietly repair what must be refused here (a
/// trailing path, user info, a Unicode host) — the strict grammar is a dozen lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Origin {
    https: bool,
    /// Lower case; an IPv6 address keeps its brackets.
    host: String,
    port: u16,
}

impl Origin {
    /// Parses a serialised origin: `scheme://host[:port]` with `scheme` `http` or `https`
    /// (any case) and nothing after the host or port — not even `/`.
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return None;
        };
        Origin::from_authority(https, authority)
    }

    /// The origin of scheme `https`/`http` and an authority as written in a `Host` header
    /// (how [`crate::cross_site`] reads a request's own origin).
    pub fn from_authority(https: bool, authority: &str) -> Option<Origin> {
        let (host, port) = match authority.strip_prefix('[') {
            // An IPv6 literal: `[` hex digits, colons and dots `]`.
            Some(rest) => {
                let (inner, after) = rest.split_once(']')?;
                let literal = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
                if inner.is_empty() || !inner.bytes().all(literal) {
                    return None;
                }
                let port = if after.is_empty() { None } else { Some(after.strip_prefix(':')?) };
                (&authority[..inner.len() + 2], port)
            }
            None => {
                let (host, port) = match authority.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (authority, None),
                };
                let name = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
                if host.is_empty() || !host.bytes().all(name) {
                    return None;
                }
                (host, port)
            }
        };
        let default = if https { 443 } else { 80 };
        let port = match port {
            None => default,
            Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().ok()?
            }
            Some(_) => return None,
        };
        Some(Origin { https, host: host.to_ascii_lowercase(), port })
    }
}

impl fmt::Display for Origin {
    /// The ASCII serialisation browsers send: the default port left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            write!(f, "{scheme}://{}", self.host)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl TryFrom<String> for Origin {
    type Error = String;

    fn try_from(text: String) -> Result<Origin, String> {
        Origin::parse(&text).ok_or_else(|| {
            format!(
                "{text:?} is not an origin: write scheme://host[:port] with scheme http or https and \
                 nothing after it, e.g. \"https://app.example.com\" (a Unicode host in its punycode form)"
            )
        })
    }
}

impl From<Origin> for String {
    fn from(origin: Origin) -> String {
        origin.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Origin {
        Origin::parse(text).unwrap_or_else(|| panic!("{text}"))
    }

    #[test]
    fn origins_compare_ignoring_case_and_default_ports() {
        assert_eq!(origin("HTTPS://App.Example.COM"), origin("https://app.example.com:443"));
        assert_eq!(origin("http://a.example:80"), origin("http://a.example"));
        assert_ne!(origin("http://a.example"), origin("https://a.example"));
        assert_ne!(origin("https://a.example:8443"), origin("https://a.example"));
        assert_ne!(origin("https://a.example"), origin("https://b.a.example"));
        assert_eq!(origin("http://[::1]:8080"), origin("http://[::1]:8080"));
        assert_eq!(origin("https://App.example:443").to_string(), "https://app.example");
        assert_eq!(origin("http://a:8080").to_string(), "http://a:8080");
    }

    #[test]
    fn only_a_bare_http_or_https_origin_parses() {
        for bad in [
            "null",
            "",
            "app.example.com",
            "https://",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://app.example.com?q",
            "https://app.example.com#f",
            "https://user@app.example.com",
            "https://app.example.com:",
            "https://app.example.com:99999",
            "https://app.example.com:8a",
            "ftp://app.example.com",
            "chrome-extension://abc",
            "https://bücher.example",
            "https://a b",
            "https://[::1",
            "https://[]",
            "https://[::1]x",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad:?}");
        }
    }
}
