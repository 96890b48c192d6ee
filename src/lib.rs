//! identity-sidecar: validates Keycloak access tokens, reconciles Keycloak organizations into
//! B2B memberships and contracts, and hands downstream apps one trustworthy set of identity
//! and entitlement headers — as a reverse proxy or as a `forward-auth` target.
//!
//! `main.rs` is thin; everything a test needs is reachable from here: build an [`App`] from a
//! [`Config`], bind it on port 0, drive it over real HTTP, stop it.

pub mod auth;
pub mod config;
pub mod store;

pub use config::Config;
