//! Redeeming an enrollment code (docs/contract.md §7): the decision and the transaction, no
//! HTTP. The public routes that call it, and the answers each outcome gets, are
//! [`crate::public::redeem`].
//!
//! The whole redemption is one transaction begun by [`Store::begin_user`], so it serialises with
//! the user's logins and admin changes, and runs the steps of §7 in order:
//!
//! 1. unknown code, revoked, outside `activates_at`/`expires_at`, or a one-time code someone
//!    else redeemed → [`Refusal::Invalid`] — [`Refusal::Full`] instead when the contract is
//!    valid today and full;
//! 2. contract not valid today → [`Refusal::NoContract`];
//! 3. the user already holds the contract → [`Outcome::Already`] (nothing written: a one-time
//!    code is not spent on somebody who needs no seat);
//! 4. no seat left → [`Refusal::Full`] (taken atomically by `attachments::attach`);
//! 5. membership in the contract's organization (new ones: `source=code`,
//!    `keep_until_seen=true`; an existing one keeps its flags), attachment (`source=code`),
//!    redemption record, audit events (actor `code`), and — only for a new membership of an
//!    organization linked to Keycloak — a durable `keycloak.add_member` job, all committed
//!    together → [`Outcome::Created`]. The caller then invalidates the user's cached logins on
//!    every replica.
//!
//! Locks, in the store's global order: the user row, then the code row (the guarded claim of a
//! one-time code), then the contract row (the seat counter).

use serde_json::json;
use time::OffsetDateTime;

use crate::keycloak::jobs::{ADD_MEMBER, AddMemberPayload};
use crate::store::model::{
    AttachOutcome, AttachmentSource, Contract, EnrollmentCode, MembershipSource, NewAuditEvent, Profile,
    Redemption,
};
use crate::store::{
    Store, StoreError, attachments, audit, codes, contracts, jobs, memberships, organizations,
};

/// Audit actor of every change a redemption makes.
const ACTOR: &str = "code";

/// Why a code gets the caller nothing (steps 1, 2 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Step 1: no such code, or not usable by this user now.
    Invalid,
    /// Step 2: the code's contract is not valid today.
    NoContract,
    /// Steps 1 and 4: every seat of the (valid) contract is taken.
    Full,
}

/// What a redemption did.
#[derive(Debug)]
pub enum Outcome {
    /// Step 5: the user now holds the contract (as it is after the seat was taken).
    Created {
        contract: Contract,
        /// The `keycloak.add_member` job queued with it, if any.
        job: Option<i64>,
    },
    /// Step 3: the user held the contract already; nothing changed.
    Already(Contract),
    Refused(Refusal),
}

/// Steps 1 and 2, from what the store holds before anything is written.
pub fn judge(
    code: &EnrollmentCode,
    contract: &Contract,
    sub: &str,
    now: OffsetDateTime,
) -> Result<(), Refusal> {
    let valid = crate::b2b::valid_on(contract.active, contract.starts_on, contract.ends_on, now.date());
    let taken_by_other =
        code.redemption == Redemption::OneTime && code.redeemed_by.as_deref().is_some_and(|by| by != sub);
    if !code.is_usable_at(now) || taken_by_other {
        return Err(unusable(valid, contract));
    }
    if !valid {
        return Err(Refusal::NoContract);
    }
    Ok(())
}

/// Step 1's answer: "full" tells the user why better than "invalid" when it is the reason
/// nobody can get in.
fn unusable(valid: bool, contract: &Contract) -> Refusal {
    if valid && crate::b2b::is_full(contract.max_learners, contract.seats_used) {
        Refusal::Full
    } else {
        Refusal::Invalid
    }
}

/// Redeems `code` (canonical form) for `sub` in one transaction; see the module docs.
pub async fn redeem(
    store: &Store,
    sub: &str,
    profile: &Profile,
    code: &str,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    // Records the profile with the login time, so a learner who redeemed can be found by email.
    let (mut tx, _user) = store.begin_user(sub, Some(profile)).await?;
    let Some(code) = codes::find(&mut tx, code).await? else {
        return Ok(Outcome::Refused(Refusal::Invalid));
    };
    let contract = contracts::get_by_id(&mut tx, code.contract_id).await?;
    if let Err(refusal) = judge(&code, &contract, sub, now) {
        return Ok(Outcome::Refused(refusal));
    }
    // Another user's transaction may have claimed the code since `find`: the guarded UPDATE
    // waits for it and then matches nothing, which is step 1 again.
    if code.redemption == Redemption::OneTime && !codes::claim_one_time(&mut tx, code.id, sub).await? {
        return Ok(Outcome::Refused(unusable(true, &contract)));
    }
    match attachments::attach(&mut tx, sub, contract.id, AttachmentSource::Code).await? {
        AttachOutcome::Attached => {}
        AttachOutcome::AlreadyAttached => {
            // Rolling back also gives an unspent one-time code back.
            tx.rollback().await?;
            return Ok(Outcome::Already(contract));
        }
        AttachOutcome::Full => return Ok(Outcome::Refused(Refusal::Full)),
    }
    let organization = organizations::get(&mut tx, &contract.organization).await?;
    let fingerprint = super::fingerprint(&code.code);
    let event = |action: &str, contract_key: Option<&str>, detail| NewAuditEvent {
        actor: ACTOR.into(),
        action: action.into(),
        sub: Some(sub.to_owned()),
        organization: Some(organization.key.clone()),
        contract: contract_key.map(str::to_owned),
        reason: Some("enrollment code".into()),
        detail: Some(detail),
    };
    let new_membership = memberships::add(
        &mut tx,
        sub,
        organization.id,
        MembershipSource::Code,
        memberships::Flags { keep_until_seen: true, manager: false },
    )
    .await?;
    let mut job = None;
    if new_membership {
        if let Some(keycloak_id) = organization.keycloak_id {
            let payload = AddMemberPayload { organization_keycloak_id: keycloak_id, sub: sub.to_owned() };
            job = Some(jobs::enqueue(&mut tx, ADD_MEMBER, &payload.to_value(), now).await?.id);
        }
        let detail = json!({
            "keep_until_seen": true, "manager": false, "source": "code",
            "code": fingerprint, "keycloak_job": job,
        });
        audit::insert(&mut tx, &event("membership.add", None, detail)).await?;
    }
    codes::record_redemption(&mut tx, code.id, sub, now).await?;
    let detail = json!({"source": "code", "code": fingerprint, "redemption": code.redemption});
    audit::insert(&mut tx, &event("attachment.add", Some(&contract.key), detail.clone())).await?;
    // The redemption itself, a change event of its own (`code.redeemed`, docs/events.md).
    audit::insert(&mut tx, &event("code.redeem", Some(&contract.key), detail)).await?;
    let contract = contracts::get_by_id(&mut tx, contract.id).await?;
    tx.commit().await?;
    Ok(Outcome::Created { contract, job })
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;
    use crate::store::model::MembershipType;

    const NOW: OffsetDateTime = datetime!(2026-06-15 12:00 UTC);

    fn contract(max_learners: Option<i64>, seats_used: i64) -> Contract {
        Contract {
            id: 1,
            organization_id: 1,
            key: "c".into(),
            organization: "acme".into(),
            name: "C".into(),
            membership_type: MembershipType::Code,
            active: true,
            starts_on: None,
            ends_on: None,
            max_learners,
            price: None,
            seats_used,
            created_at: NOW,
            updated_at: NOW,
        }
    }

    fn code(redemption: Redemption) -> EnrollmentCode {
        EnrollmentCode {
            id: 1,
            code: "X".into(),
            contract_id: 1,
            contract: "c".into(),
            redemption,
            activates_at: None,
            expires_at: None,
            revoked_at: None,
            redeemed_by: None,
            redeemed_at: None,
            redemptions: 0,
            created_at: NOW,
        }
    }

    #[test]
    fn a_usable_code_of_a_valid_contract_passes() {
        assert_eq!(judge(&code(Redemption::OneTime), &contract(Some(2), 1), "ann", NOW), Ok(()));
        let mine = EnrollmentCode { redeemed_by: Some("ann".into()), ..code(Redemption::OneTime) };
        assert_eq!(judge(&mine, &contract(None, 0), "ann", NOW), Ok(()), "their own code again");
        // Full but usable: step 4 decides, atomically, in the transaction.
        assert_eq!(judge(&code(Redemption::Unlimited), &contract(Some(1), 1), "ann", NOW), Ok(()));
    }

    #[test]
    fn unusable_codes_are_invalid_unless_their_valid_contract_is_full() {
        let spent = EnrollmentCode { redeemed_by: Some("bob".into()), ..code(Redemption::OneTime) };
        let expired = EnrollmentCode { expires_at: Some(NOW), ..code(Redemption::Unlimited) };
        let early =
            EnrollmentCode { activates_at: Some(NOW + Duration::seconds(1)), ..code(Redemption::OneTime) };
        let revoked = EnrollmentCode { revoked_at: Some(NOW), ..code(Redemption::OneTime) };
        for c in [&spent, &expired, &early, &revoked] {
            assert_eq!(judge(c, &contract(Some(5), 1), "ann", NOW), Err(Refusal::Invalid), "{c:?}");
            assert_eq!(judge(c, &contract(Some(5), 5), "ann", NOW), Err(Refusal::Full), "{c:?}");
            let ended =
                Contract { ends_on: Some(NOW.date().previous_day().unwrap()), ..contract(Some(5), 5) };
            assert_eq!(judge(c, &ended, "ann", NOW), Err(Refusal::Invalid), "{c:?}");
        }
        let other = EnrollmentCode { redeemed_by: Some("bob".into()), ..code(Redemption::Unlimited) };
        assert_eq!(judge(&other, &contract(None, 0), "ann", NOW), Ok(()), "unlimited codes are shared");
    }

    #[test]
    fn a_usable_code_of_a_contract_not_valid_today_finds_no_contract() {
        let c = code(Redemption::OneTime);
        let today = NOW.date();
        for contract in [
            Contract { active: false, ..contract(None, 0) },
            Contract { starts_on: today.next_day(), ..contract(None, 0) },
            Contract { ends_on: today.previous_day(), ..contract(Some(1), 1) },
        ] {
            assert_eq!(judge(&c, &contract, "ann", NOW), Err(Refusal::NoContract));
        }
        let last_day = Contract { starts_on: Some(today), ends_on: Some(today), ..contract(None, 0) };
        assert_eq!(judge(&c, &last_day, "ann", NOW), Ok(()), "validity dates are inclusive");
    }
}
