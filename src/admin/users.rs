//! `/admin/v1/users`: lookup by email (`GET /users?email=`); a user's row, memberships and
//! attachments (`GET /users/{sub}`); erasure (`DELETE /users/{sub}`); admin changes to
//! memberships (`PUT|DELETE …/organizations/{org}`) and attachments
//! (`PUT|DELETE …/contracts/{contract}`).
//!
//! Every change runs in a per-user transaction ([`crate::store::Store::begin_user`]: it
//! creates the user row a membership or attachment needs, and serialises with the user's
//! reconciliations), writes its audit events in that transaction, and invalidates the user's
//! cached logins after the commit, so the very next request shows it. A request that changes
//! nothing (404, 409) rolls back, user row included.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{OptionalJson, PageQuery, Params};
use super::guard::Admin;
use super::{OrNotFound, Page};
use crate::error::{ApiError, FieldError};
use crate::keycloak::push::{self, Push, remove_membership};
use crate::reconcile::apply::RemovalReasons;
use crate::state::AppState;
use crate::store::model::{
    AttachOutcome, Attachment, AttachmentSource, Membership, MembershipSource, NewAuditEvent, User,
};
use crate::store::{Tx, attachments, audit, contracts, memberships, organizations, users};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(lookup))
        .routes(routes!(show, erase))
        .routes(routes!(put_membership, delete_membership))
        .routes(routes!(attach, detach))
}

/// A user as the admin sees them.
#[derive(Debug, Serialize, ToSchema)]
struct UserView {
    #[serde(flatten)]
    user: User,
    memberships: Vec<Membership>,
    attachments: Vec<AttachmentView>,
}

/// An attachment, with whether the contract counts today (is in `X-Identity-Contracts`).
#[derive(Debug, Serialize, ToSchema)]
struct AttachmentView {
    #[serde(flatten)]
    attachment: Attachment,
    valid_today: bool,
}

impl From<Attachment> for AttachmentView {
    fn from(attachment: Attachment) -> Self {
        let valid_today = attachment.is_valid_on(OffsetDateTime::now_utc().date());
        AttachmentView { attachment, valid_today }
    }
}

/// A user's row, memberships (with their flags) and attachments (with whether each counts
/// today).
#[utoipa::path(
    get,
    path = "/users/{sub}",
    operation_id = "get_user",
    tag = "users",
    params(("sub" = String, Path, description = "The user's Keycloak subject.")),
    responses(
        (status = 200, description = "The user.", body = UserView),
        (status = 404, description = "No user has this subject."),
    )
)]
async fn show(State(state): State<AppState>, Path(sub): Path<String>) -> Result<Json<UserView>, ApiError> {
    let mut conn = state.store.conn().await?;
    let user = users::get(&mut conn, &sub).await.or_not_found(|| format!("No user with sub `{sub}`."))?;
    let memberships = memberships::list_for_user(&mut conn, &sub).await?;
    let attachments = attachments::list_for_user(&mut conn, &sub).await?;
    let attachments = attachments.into_iter().map(AttachmentView::from).collect();
    Ok(Json(UserView { user, memberships, attachments }))
}

/// Users whose last seen email is `?email=`, ignoring ASCII case (emails are not unique among
/// Keycloak users, so a list). `email` is required.
#[utoipa::path(
    get,
    path = "/users",
    operation_id = "find_users",
    tag = "users",
    params(
        ("email" = String, Query, pattern = "\\S", description = "The email address to look up (ASCII case ignored; not blank)."),
        PageQuery,
    ),
    responses(
        (status = 200, description = "One page of the users last seen with this email.", body = Page<User>),
        (status = 400, description = "A query parameter is malformed, repeated or unknown."),
        (status = 422, description = "`email` is missing or blank, or `limit` is out of range."),
    )
)]
async fn lookup(State(state): State<AppState>, mut params: Params) -> Result<Json<Page<User>>, ApiError> {
    let email = params.string("email")?;
    let page = params.page()?;
    params.finish()?;
    let Some(email) = email.filter(|e| !e.trim().is_empty()) else {
        return Err(ApiError::Unprocessable(vec![FieldError::new("email", "is required")]));
    };
    let mut conn = state.store.conn().await?;
    let found = users::find_by_email(&mut conn, email.trim()).await?;
    let total = found.len() as i64;
    let items = found.into_iter().skip(page.offset as usize).take(page.limit as usize).collect();
    Ok(Json(Page::new(items, total, page)))
}

/// Erases a user: memberships, attachments (their seats freed), the link of their redemptions,
/// and the user row. Every removed membership and attachment gets its audit event, and one
/// `user.erase` event closes them; those events keep the subject, nothing else about the
/// person (docs/contract.md §6). The user's cached logins go on every replica. Unknown → 404.
#[utoipa::path(
    delete,
    path = "/users/{sub}",
    operation_id = "erase_user",
    tag = "users",
    params(("sub" = String, Path, description = "The user's Keycloak subject.")),
    responses(
        (status = 204, description = "Erased."),
        (status = 404, description = "No user has this subject."),
    )
)]
async fn erase(
    State(state): State<AppState>,
    admin: Admin,
    Path(sub): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.store.begin().await?;
    let no_such = || format!("No user with sub `{sub}`.");
    // Checked before the lock: `begin_user` would create the row it is asked to erase.
    users::get(&mut tx, &sub).await.or_not_found(no_such)?;
    users::lock(&mut tx, &sub, None, None, None).await?;
    let held = memberships::list_for_user(&mut tx, &sub).await?;
    let attached = attachments::list_for_user(&mut tx, &sub).await?;
    if !users::erase(&mut tx, &sub).await? {
        return Err(ApiError::NotFound(no_such()));
    }
    let event = |action: &str, organization: Option<&str>, contract: Option<&str>| NewAuditEvent {
        sub: Some(sub.clone()),
        organization: organization.map(str::to_owned),
        contract: contract.map(str::to_owned),
        ..admin.event(action, "user erased")
    };
    for a in &attached {
        audit::insert(&mut tx, &event("attachment.remove", Some(&a.organization), Some(&a.contract))).await?;
    }
    for m in &held {
        audit::insert(&mut tx, &event("membership.remove", Some(&m.organization), None)).await?;
    }
    let detail = json!({"memberships": held.len(), "attachments": attached.len()});
    audit::insert(&mut tx, &NewAuditEvent { detail: Some(detail), ..event("user.erase", None, None) })
        .await?;
    tx.commit().await?;
    state.entitlements.invalidate_user(&sub).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `PUT …/organizations/{org}`; absent (or null) fields keep their value, or take
/// the default of a new admin membership.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MembershipFlags {
    /// Keep the membership when a login's organization claim lacks the organization, until a
    /// login shows it (default for a new admin membership: true).
    keep_until_seen: Option<bool>,
    /// Default for a new membership: false.
    manager: Option<bool>,
}

/// Creates an admin membership (`keep_until_seen` defaults to true, so the next login without
/// the organization in its claim does not remove it; `manager` to false) → 201, or sets the
/// given flags of an existing one, whatever its source → 200. With
/// `keycloak_admin.push_memberships`, a new membership of a Keycloak-linked organization is
/// pushed to Keycloak by a job queued in the same transaction.
#[utoipa::path(
    put,
    path = "/users/{sub}/organizations/{org}",
    operation_id = "put_membership",
    tag = "users",
    params(
        ("sub" = String, Path, description = "The user's Keycloak subject."),
        ("org" = String, Path, description = "The organization's key."),
    ),
    request_body(content = Option<MembershipFlags>, description = "Optional: an empty body keeps (or defaults) both flags."),
    responses(
        (status = 200, description = "The membership existed; its flags as now set.", body = Membership),
        (status = 201, description = "The membership was created (`source=admin`).", body = Membership),
        (status = 400, description = "Not a JSON object, a wrong type or an unknown field."),
        (status = 404, description = "No organization has this key."),
    )
)]
async fn put_membership(
    State(state): State<AppState>,
    admin: Admin,
    Path((sub, org_key)): Path<(String, String)>,
    OptionalJson(flags): OptionalJson<MembershipFlags>,
) -> Result<(StatusCode, Json<Membership>), ApiError> {
    let (mut tx, _user) = state.store.begin_user(&sub, None).await?;
    let org = organizations::get(&mut tx, &org_key)
        .await
        .or_not_found(|| format!("No organization with key `{org_key}`."))?;
    let event = |action: &str, detail| NewAuditEvent {
        sub: Some(sub.clone()),
        organization: Some(org.key.clone()),
        detail: Some(detail),
        ..admin.event(action, "admin API")
    };
    let push_memberships = state.config.keycloak_admin.push_memberships;
    let mut keycloak_job = None;
    let status = match memberships::get(&mut tx, &sub, org.id).await? {
        None => {
            let keep_until_seen = flags.keep_until_seen.unwrap_or(true);
            let manager = flags.manager.unwrap_or(false);
            memberships::add(
                &mut tx,
                &sub,
                org.id,
                MembershipSource::Admin,
                memberships::Flags { keep_until_seen, manager },
            )
            .await?;
            // Queued before the audit event: a failure from here on rolls the job back too.
            keycloak_job = push::enqueue(&mut tx, push_memberships, Push::Add, &org, &sub).await?;
            let mut detail =
                json!({"keep_until_seen": keep_until_seen, "manager": manager, "source": "admin"});
            if let Some(job) = keycloak_job {
                detail["keycloak_job"] = json!(job);
            }
            audit::insert(&mut tx, &event("membership.add", detail)).await?;
            StatusCode::CREATED
        }
        Some(before) => {
            let keep_until_seen = flags.keep_until_seen.unwrap_or(before.keep_until_seen);
            let manager = flags.manager.unwrap_or(before.manager);
            if (keep_until_seen, manager) != (before.keep_until_seen, before.manager) {
                memberships::set_flags(&mut tx, &sub, org.id, Some(keep_until_seen), Some(manager)).await?;
                let detail = json!({
                    "before": {"keep_until_seen": before.keep_until_seen, "manager": before.manager},
                    "after": {"keep_until_seen": keep_until_seen, "manager": manager},
                });
                audit::insert(&mut tx, &event("membership.update", detail)).await?;
            }
            StatusCode::OK
        }
    };
    let membership = memberships::get(&mut tx, &sub, org.id).await?.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("membership missing right after it was written"))
    })?;
    tx.commit().await?;
    state.entitlements.invalidate_user(&sub).await;
    if keycloak_job.is_some() {
        state.jobs.kick();
    }
    Ok((status, Json(membership)))
}

/// What a membership removal did.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Removed {
    organization: String,
    /// Keys of the `auto`/`managed` contracts the user was detached from.
    detached_contracts: Vec<String>,
}

/// The path of a membership's routes. Named, not positional: the manage route names the
/// same two values in the other order (`/organizations/{org}/members/{sub}`).
#[derive(Debug, serde::Deserialize)]
pub(super) struct MembershipPath {
    sub: String,
    org: String,
}

/// Removes a membership as reconciliation removes one: the organization's `auto` and `managed`
/// contracts go with it, code, admin and assignment attachments stay (shared logic:
/// `reconcile::apply`). With `keycloak_admin.push_memberships`, a Keycloak-linked
/// organization's removal is pushed to Keycloak ([`crate::keycloak::push::remove_membership`],
/// which managers' removals use too).
#[utoipa::path(
    delete,
    path = "/users/{sub}/organizations/{org}",
    operation_id = "delete_membership",
    tag = "users",
    params(
        ("sub" = String, Path, description = "The user's Keycloak subject."),
        ("org" = String, Path, description = "The organization's key."),
    ),
    responses(
        (status = 200, description = "Removed; the contracts detached with it.", body = Removed),
        (status = 404, description = "No organization has this key, or the user is not a member."),
    )
)]
pub(super) async fn delete_membership(
    State(state): State<AppState>,
    admin: Admin,
    Path(MembershipPath { sub, org: org_key }): Path<MembershipPath>,
) -> Result<Json<Removed>, ApiError> {
    admin.within(&org_key, || format!("No organization with key `{org_key}`."))?;
    let (mut tx, _user) = state.store.begin_user(&sub, None).await?;
    let org = organizations::get(&mut tx, &org_key)
        .await
        .or_not_found(|| format!("No organization with key `{org_key}`."))?;
    let reasons = match admin.organization() {
        None => RemovalReasons { membership: "removed by admin", attachment: "membership removed by admin" },
        Some(_) => {
            RemovalReasons { membership: "removed by manager", attachment: "membership removed by manager" }
        }
    };
    let push_memberships = state.config.keycloak_admin.push_memberships;
    let removed = remove_membership(&mut tx, push_memberships, &sub, &org, &admin.actor(), &reasons).await?;
    let Some(removed) = removed else {
        return Err(ApiError::NotFound(format!("`{sub}` is not a member of `{org_key}`.")));
    };
    tx.commit().await?;
    state.entitlements.invalidate_user(&sub).await;
    if removed.keycloak_job.is_some() {
        state.jobs.kick();
    }
    let detached_contracts = removed.detached.into_iter().map(|c| c.key).collect();
    Ok(Json(Removed { organization: org.key, detached_contracts }))
}

/// Attaches the user to a contract (`source=admin`) → 201, or 200 if already attached. A full
/// contract is 409 `Contract is full.` unless `?force=true`, which takes a seat beyond
/// `max_learners`. Does not create a membership in the contract's organization.
#[utoipa::path(
    put,
    path = "/users/{sub}/contracts/{contract}",
    operation_id = "attach_contract",
    tag = "users",
    params(
        ("sub" = String, Path, description = "The user's Keycloak subject."),
        ("contract" = String, Path, description = "The contract's key."),
        ("force" = Option<bool>, Query, description = "Take a seat beyond `max_learners` when the contract is full (default false)."),
    ),
    responses(
        (status = 200, description = "Already attached.", body = AttachmentView),
        (status = 201, description = "Attached (`source=admin`).", body = AttachmentView),
        (status = 400, description = "A query parameter is malformed, repeated or unknown."),
        (status = 404, description = "No contract has this key."),
        (status = 409, description = "Contract is full."),
    )
)]
async fn attach(
    State(state): State<AppState>,
    admin: Admin,
    Path((sub, key)): Path<(String, String)>,
    mut params: Params,
) -> Result<(StatusCode, Json<AttachmentView>), ApiError> {
    let force = params.boolean("force")?.unwrap_or(false);
    params.finish()?;
    let (mut tx, _user) = state.store.begin_user(&sub, None).await?;
    let contract =
        contracts::get(&mut tx, &key).await.or_not_found(|| format!("No contract with key `{key}`."))?;
    let attached = if force {
        attachments::force_attach(&mut tx, &sub, contract.id, AttachmentSource::Admin).await?
    } else {
        match attachments::attach(&mut tx, &sub, contract.id, AttachmentSource::Admin).await? {
            AttachOutcome::Attached => true,
            AttachOutcome::AlreadyAttached => false,
            AttachOutcome::Full => return Err(ApiError::Conflict("Contract is full.".into())),
        }
    };
    if attached {
        // Over the limit only if the contract was already full: forced.
        let forced = force && contract.is_full();
        let event = NewAuditEvent {
            sub: Some(sub.clone()),
            organization: Some(contract.organization.clone()),
            contract: Some(contract.key.clone()),
            detail: Some(json!({"source": "admin", "forced": forced})),
            ..admin.event("attachment.add", "admin API")
        };
        audit::insert(&mut tx, &event).await?;
    }
    let attachment = attachment_of(&mut tx, &sub, &key).await?;
    tx.commit().await?;
    state.entitlements.invalidate_user(&sub).await;
    let status = if attached { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(attachment.into())))
}

/// Detaches the user from a contract, whatever the attachment's source, freeing its seat.
#[utoipa::path(
    delete,
    path = "/users/{sub}/contracts/{contract}",
    operation_id = "detach_contract",
    tag = "users",
    params(
        ("sub" = String, Path, description = "The user's Keycloak subject."),
        ("contract" = String, Path, description = "The contract's key."),
    ),
    responses(
        (status = 204, description = "Detached; the seat is free."),
        (status = 404, description = "No contract has this key, or the user does not hold it."),
    )
)]
async fn detach(
    State(state): State<AppState>,
    admin: Admin,
    Path((sub, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (mut tx, _user) = state.store.begin_user(&sub, None).await?;
    let contract =
        contracts::get(&mut tx, &key).await.or_not_found(|| format!("No contract with key `{key}`."))?;
    if !attachments::detach(&mut tx, &sub, contract.id).await? {
        return Err(ApiError::NotFound(format!("`{sub}` does not hold `{key}`.")));
    }
    let event = NewAuditEvent {
        sub: Some(sub.clone()),
        organization: Some(contract.organization.clone()),
        contract: Some(contract.key.clone()),
        ..admin.event("attachment.remove", "admin API")
    };
    audit::insert(&mut tx, &event).await?;
    tx.commit().await?;
    state.entitlements.invalidate_user(&sub).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn attachment_of(tx: &mut Tx, sub: &str, key: &str) -> Result<Attachment, ApiError> {
    attachments::list_for_user(tx, sub)
        .await?
        .into_iter()
        .find(|a| a.contract == key)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("attachment missing right after it was written")))
}
