//! identity-sidecar: validates Keycloak access tokens, reconciles Keycloak organizations into
//! B2B memberships and contracts, and hands downstream apps one trustworthy set of identity
//! and entitlement headers — as a reverse proxy or as a `forward-auth` target.
//!
//! `main.rs` is thin; everything a test needs is reachable from here: build an [`App`] from a
//! [`Config`], bind it on port 0, drive it over real HTTP, stop it.

pub mod admin;
pub mod app;
pub mod auth;
pub mod b2b;
pub mod codes;
pub mod config;
pub mod cross_site;
pub mod demo;
pub mod entitlements;
pub mod error;
pub mod events;
pub mod headers;
pub mod keycloak;
pub mod metrics;
pub mod public;
pub mod reconcile;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod weigh;

pub use app::{App, AppHandle};
pub use config::Config;
