//! A login accepts the seat assignments of its verified e-mail (docs/contract.md §12), inside
//! the login's reconciliation transaction and before the plan is made, so the plan (and §4
//! step 4) already sees the new memberships and attachments.
//!
//! For each `allocated`, unexpired assignment of the e-mail whose contract is valid today, in
//! ascending contract id (the order contract rows are locked in): the attachment takes the
//! assignment's seat (`source = assignment`; a user attached already keeps the attachment and
//! the seat is released), the assignment becomes `accepted`, and the user becomes a member of the
//! contract's organization (`source = assignment`, `keep_until_seen = true`; an existing
//! membership keeps its flags) — with a durable Keycloak "add member" job when the membership is
//! new and the organization is linked, as a code redemption does (§7).

use serde_json::json;
use time::{Date, OffsetDateTime};

use crate::b2b::{MembershipSource, valid_on};
use crate::store::assignments::{self, Accepted};
use crate::store::jobs::{ADD_MEMBER, AddMemberPayload};
use crate::store::model::NewAuditEvent;
use crate::store::{StoreError, Tx, audit, jobs, memberships};

/// One assignment a login accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedAssignment {
    pub id: i64,
    pub contract: String,
    pub organization: String,
    /// Whether the user was attached by it (false: attached already, the seat was released).
    pub attached: bool,
    /// The `keycloak.add_member` job queued for a new membership, if any.
    pub job: Option<i64>,
}

/// Accepts every acceptable assignment of `email` (lower-cased, verified) for `sub`; `actor`
/// names the cause in the audit events (the reconciliation's actor, e.g. `login`).
pub async fn accept_assignments(
    tx: &mut Tx,
    sub: &str,
    email: &str,
    today: Date,
    actor: &str,
) -> Result<Vec<AcceptedAssignment>, StoreError> {
    let mut accepted = Vec::new();
    for pending in assignments::pending_for_email(tx, email).await? {
        if !valid_on(pending.active, pending.starts_on, pending.ends_on, today) {
            continue;
        }
        let Some(how) = assignments::accept(tx, sub, &pending).await? else {
            continue;
        };
        let event = |action: &str, contract: Option<&str>, detail| NewAuditEvent {
            actor: actor.to_owned(),
            action: action.into(),
            sub: Some(sub.to_owned()),
            organization: Some(pending.organization.clone()),
            contract: contract.map(str::to_owned),
            reason: Some("seat assignment".into()),
            detail: Some(detail),
        };
        let flags = memberships::Flags { keep_until_seen: true, manager: false };
        let mut job = None;
        if memberships::add(tx, sub, pending.organization_id, MembershipSource::Assignment, flags).await? {
            if let Some(keycloak_id) = pending.keycloak_id {
                let payload = AddMemberPayload { organization_keycloak_id: keycloak_id, sub: sub.to_owned() };
                let now = OffsetDateTime::now_utc();
                job = Some(jobs::enqueue(tx, ADD_MEMBER, &payload.to_value(), now).await?.id);
            }
            let detail = json!({
                "keep_until_seen": true, "manager": false, "source": "assignment",
                "assignment": pending.id, "keycloak_job": job,
            });
            audit::insert(tx, &event("membership.add", None, detail)).await?;
        }
        let attached = how == Accepted::Attached;
        let detail = json!({"assignment": pending.id, "attached": attached});
        audit::insert(tx, &event("assignment.accept", Some(&pending.contract), detail)).await?;
        if attached {
            let detail = json!({"source": "assignment", "assignment": pending.id});
            audit::insert(tx, &event("attachment.add", Some(&pending.contract), detail)).await?;
        }
        accepted.push(AcceptedAssignment {
            id: pending.id,
            contract: pending.contract,
            organization: pending.organization,
            attached,
            job,
        });
    }
    Ok(accepted)
}
