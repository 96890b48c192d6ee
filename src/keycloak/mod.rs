//! Keycloak's side of B2B membership: the admin REST client ([`client`]), the organization
//! import ([`sync`]), reconciling a user against a stated or Keycloak-reported organization
//! set ([`stated`]), and the durable job worker that pushes memberships to Keycloak and runs
//! background reconciliations ([`jobs`]), fed by code redemptions and, with
//! `keycloak_admin.push_memberships`, by admins' and managers' membership changes ([`push`]).
//!
//! All of it needs `keycloak_admin` (url, realm, client id and secret); without it the client
//! is not built, jobs that need it stay queued, and the admin endpoints that need it answer
//! with [`client::NOT_CONFIGURED`].
//!
//! The sync and reconciliation operations take the store and the client, not the HTTP state,
//! so that the admin API and the `sync-orgs` / `reconcile --sub` commands ([`command`]) run
//! the same code; the caller invalidates cached logins afterwards (it knows whether there is
//! an app to tell). The job worker ([`jobs`]) runs inside the app and takes the parts it needs
//! ([`jobs::Worker`]): the store, the client, its wake-up signal, metrics and the
//! entitlements component, to invalidate the cached logins a reconciliation changed.

pub mod client;
pub mod command;
pub mod jobs;
pub mod push;
pub mod stated;
pub mod sync;

use std::fmt;

pub use client::{KcError, KeycloakAdmin, NOT_CONFIGURED};

use crate::store::StoreError;

/// A Keycloak operation failed at Keycloak or at the store.
#[derive(Debug)]
pub enum Error {
    Keycloak(KcError),
    Store(StoreError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Keycloak(e) => e.fmt(f),
            Error::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Keycloak(e) => Some(e),
            Error::Store(e) => Some(e),
        }
    }
}

impl From<KcError> for Error {
    fn from(e: KcError) -> Self {
        Error::Keycloak(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}
