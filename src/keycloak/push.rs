//! Two-way membership (docs/contract.md §11, `keycloak_admin.push_memberships`): an admin's or
//! an organization manager's change to a membership of a Keycloak-linked organization becomes
//! a durable job ([`super::jobs::ADD_MEMBER`] / [`super::jobs::REMOVE_MEMBER`]) that makes the
//! same change in Keycloak, as a code redemption's new membership does.
//!
//! The job is written in the caller's transaction, before the change's audit event, so a
//! change that fails or rolls back leaves no job behind, and a committed change always has its
//! job. The caller wakes this replica's workers after the commit (`Jobs::kick`).
//!
//! Not pushed: logins and reconciliations (Keycloak is their source), organization deletion,
//! and erasure (`DELETE /admin/v1/users/{sub}`): forgetting a person here says nothing about
//! their membership in Keycloak, which may serve other clients.

use super::jobs::{ADD_MEMBER, AddMemberPayload, REMOVE_MEMBER};
use crate::reconcile::apply::{Actor, RemovalReasons, remove_membership as remove_row};
use crate::reconcile::plan::ContractRef;
use crate::store::model::Organization;
use crate::store::{Conn, StoreError, Tx, jobs, memberships};

/// What a membership change makes the user in the Keycloak organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// A member (the membership was created).
    Add,
    /// Not a member (the membership was removed).
    Remove,
}

/// Queues the Keycloak side of a membership change in the caller's transaction: the job's id,
/// or `None` when `push_memberships` is off or the organization has no `keycloak_id` (a local
/// organization never pushes). Call it only for an admin's or a manager's change.
pub async fn enqueue(
    conn: &mut Conn,
    push_memberships: bool,
    push: Push,
    organization: &Organization,
    sub: &str,
) -> Result<Option<i64>, StoreError> {
    let (true, Some(keycloak_id)) = (push_memberships, organization.keycloak_id) else {
        return Ok(None);
    };
    let kind = match push {
        Push::Add => ADD_MEMBER,
        Push::Remove => REMOVE_MEMBER,
    };
    let payload = AddMemberPayload { organization_keycloak_id: keycloak_id, sub: sub.to_owned() };
    let job = jobs::enqueue(conn, kind, &payload.to_value(), crate::store::now()).await?;
    Ok(Some(job.id))
}

/// What [`remove_membership`] did.
#[derive(Debug)]
pub struct Removal {
    /// The `auto` / `managed` contracts the user was detached from.
    pub detached: Vec<ContractRef>,
    /// The job that removes the user in Keycloak, when one was queued.
    pub keycloak_job: Option<i64>,
}

/// Removes a membership as an admin or an organization manager does — the one removal both
/// the admin API (`DELETE /admin/v1/users/{sub}/organizations/{org}`) and the managers' routes
/// use: the shared removal of `reconcile::apply` (contracts detached, audit events) and, with
/// `push_memberships` on and a Keycloak-linked organization, the job that removes the user in
/// Keycloak, all in `tx` (a per-user transaction). `None` when the user is not a member
/// (nothing written). Wake the job workers after the commit when `keycloak_job` is set.
pub async fn remove_membership(
    tx: &mut Tx,
    push_memberships: bool,
    sub: &str,
    organization: &Organization,
    actor: &Actor,
    reasons: &RemovalReasons,
) -> Result<Option<Removal>, StoreError> {
    if memberships::get(tx, sub, organization.id).await?.is_none() {
        return Ok(None);
    }
    // Queued before the removal writes its audit events: whatever fails after this rolls the
    // job back with the change.
    let keycloak_job = enqueue(tx, push_memberships, Push::Remove, organization, sub).await?;
    let Some(detached) = remove_row(tx, sub, organization.id, actor, reasons).await? else {
        return Err(StoreError::NotFound);
    };
    Ok(Some(Removal { detached, keycloak_job }))
}
