//! Entitlements: the signed entitlement token (docs/contract.md §5) and the key set that signs it.
//!
//! No axum and no IO here beyond reading key files: the header renderer and the JWKS routes
//! build on these types.

pub mod claims;
pub mod logins;
pub mod signer;

pub use claims::{EntitlementClaims, exp_for};
pub use signer::{KeyError, SignError, Signer};
