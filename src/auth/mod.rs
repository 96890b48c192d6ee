//! Authentication: discovery and JWKS (with single-flight refetch), the pure token validation
//! policy, Keycloak claim parsing (including every organization-claim shape), path rules, and
//! the request-level gate.

pub mod discovery;
pub mod gate;
pub mod jwks;
pub mod org_claim;
pub mod rules;
pub mod validate;
