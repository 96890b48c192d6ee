//! From a user's stored facts and the verified principal to what one request carries: the
//! B2B header values and the signed entitlement token (docs/contract.md §5). Contracts are
//! judged valid on the day of the request, not the day of the reconciliation.

use bytes::Bytes;
use time::Date;

use crate::auth::validate::Principal;
use crate::b2b::Facts;
use crate::entitlements::{EntitlementClaims, Signer, active, exp_for};
use crate::headers::B2b;

/// What the entitlement token is signed with and says about its issuer, audience and lifetime,
/// and whether contracts are limited to the active organization's.
pub struct RenderContext<'a> {
    pub signer: &'a Signer,
    pub issuer: &'a str,
    pub audience: &'a str,
    pub ttl_secs: u64,
    /// `headers.scope_to_active_organization`: contracts of the active organization only, none
    /// while none is active (docs/contract.md §10).
    pub scope_to_active_organization: bool,
}

/// Renders the B2B facts and signs the entitlement token, choosing the active organization
/// for this token ([`active::choose`]).
pub fn render(facts: &Facts, p: &Principal, ctx: &RenderContext<'_>, now: u64, today: Date) -> B2b {
    let active = active::choose(facts, &p.scope, &p.organizations.orgs).map(|a| a.key);
    render_for(facts, active, p, ctx, now, today)
}

/// [`render`] with the active organization already chosen (`None`: none is active).
pub fn render_for(
    facts: &Facts,
    active: Option<&str>,
    p: &Principal,
    ctx: &RenderContext<'_>,
    now: u64,
    today: Date,
) -> B2b {
    let contracts: Vec<_> = facts
        .valid_contracts(today)
        .filter(|c| !ctx.scope_to_active_organization || active == Some(c.organization.as_str()))
        .cloned()
        .collect();
    let claims = EntitlementClaims {
        iss: ctx.issuer.to_owned(),
        aud: ctx.audience.to_owned(),
        sub: p.sub.clone(),
        iat: now,
        exp: exp_for(now, ctx.ttl_secs, p.exp),
        email: p.email.clone(),
        preferred_username: p.preferred_username.clone(),
        name: p.name.clone(),
        organizations: facts.organizations.clone(),
        contracts: contracts.clone(),
        active_organization: active.map(str::to_owned),
    };
    let entitlements = match ctx.signer.sign(&claims) {
        Ok(jws) => Bytes::from(jws),
        Err(e) => {
            tracing::error!(error = %e, "signing the entitlement token failed");
            Bytes::new()
        }
    };
    B2b {
        organizations: facts.organizations.iter().map(|o| o.key.clone()).collect(),
        managed_organizations: facts
            .organizations
            .iter()
            .filter(|o| o.manager)
            .map(|o| o.key.clone())
            .collect(),
        contracts: contracts.iter().map(|c| c.key.clone()).collect(),
        entitlements,
        active_organization: active.map(str::to_owned),
    }
}
