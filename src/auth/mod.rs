//! Authentication: discovery and JWKS (with single-flight refetch), the pure token validation
//! policy, Keycloak claim parsing (including every organization-claim shape), path rules, and
//! the token authenticator (credential → verified principal, with its cache).
//!
//! [`Auth`] is what the public port's gate asks of this module, built once by
//! [`App::build`](crate::App::build).

pub mod authenticator;
pub mod discovery;
pub mod jwks;
pub mod org_claim;
pub mod org_scope;
pub mod rules;
pub mod validate;

use std::net::IpAddr;

use ipnet::IpNet;

use authenticator::Authenticator;
use rules::Rules;

/// Who the caller is, which rules a path falls under, and whose forwarded headers count.
pub struct Auth {
    /// Token → principal, for the public port and the admin guard's Keycloak tokens; holds
    /// the issuer's keys (`authenticator.jwks`), which readiness and the refresher read too.
    pub authenticator: Authenticator,
    /// `[[auth.rules]]`, prepared for matching.
    pub rules: Rules,
    /// `server.trusted_proxies`: peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Auth {
    /// Whether `X-Forwarded-*` from this peer may be believed (an IPv4 peer seen as an
    /// IPv4-mapped IPv6 address counts as itself).
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}
