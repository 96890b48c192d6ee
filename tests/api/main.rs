//! The one integration-test binary: every test drives real servers over real HTTP.
//!
//! `helpers` holds the fakes (Keycloak, the upstream app, failing servers) and token minting;
//! `harness_selftest` proves those helpers behave before any sidecar test relies on them.

mod access_log;
mod active_org;
mod admin;
mod apisix;
mod architecture;
mod assignments;
mod b2b;
mod caddy;
mod chart;
mod codes;
mod commands;
mod connections;
mod delegation;
mod demo;
mod django;
mod events_delivery;
mod events_feed;
mod events_webhooks;
mod faults;
mod forward_auth;
mod harness_selftest;
mod helpers;
mod hostile;
mod keycloak;
mod metrics;
mod nginx;
mod openapi;
mod paths;
mod proxy;
mod push_memberships;
mod redis;
mod redis_sentinel;
mod token_gate;
mod traces;
