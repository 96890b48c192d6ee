//! Enrollment codes of a contract: generate (`POST /contracts/{key}/codes`), list as JSON or
//! CSV (`GET /contracts/{key}/codes`), revoke (`DELETE /codes/{code}`). The format of a code is
//! described in [`crate::codes`].
//!
//! How many codes a generation creates (docs/contract.md §6):
//! - `count` given: `count` one-time codes, whatever the contract;
//! - otherwise a contract with `max_learners` N > 0 gets N one-time codes, an unlimited one
//!   (null or 0) a single `unlimited` code — except a free (`price` null or 0) `auto` or
//!   `managed` contract, which gets none: its organization's members hold it through SSO.
//!
//! At most [`MAX_PER_REQUEST`] per request. Audit events name how many codes were made or which
//! code was revoked by its [`fingerprint`], never the code. Read-only admins see the same
//! fingerprint in place of each code (JSON and CSV), so what they read cannot be redeemed.
//!
//! Managers reach these handlers from the public port (`super::manage`): a contract or code
//! outside the manager's organization is 404, as if it did not exist.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{OptionalJson, PageQuery, Params};
use super::guard::Admin;
use super::{OrNotFound, Page};
use crate::codes::{MAX_PER_REQUEST, fingerprint, generate, normalize};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::store::model::{Contract, EnrollmentCode, NewAuditEvent, NewEnrollmentCode, Redemption};
use crate::store::{Tx, audit, codes, contracts};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(list, create)).routes(routes!(revoke))
}

/// The body of a generation request; every field optional (an empty body is fine).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Generate {
    /// How many one-time codes to make (1 to 10 000); without it, as many as the contract
    /// has seats, one unlimited code, or none for a free `auto`/`managed` contract.
    #[schema(minimum = 1, maximum = 10000)]
    count: Option<i64>,
    /// When the codes start to work (default: now).
    #[serde(default, with = "time::serde::rfc3339::option")]
    activates_at: Option<OffsetDateTime>,
    /// When they stop working (default: never); after `activates_at`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
}

/// A code as admins see it (JSON items and CSV rows have these fields, in this order).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CodeView {
    code: String,
    contract: String,
    redemption: Redemption,
    #[serde(with = "time::serde::rfc3339::option")]
    activates_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    revoked: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    revoked_at: Option<OffsetDateTime>,
    redeemed: bool,
    redeemed_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    redeemed_at: Option<OffsetDateTime>,
    redemptions: i64,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// The link that redeems the code (`codes.redeem_url_template`); only when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    redeem_url: Option<String>,
}

impl CodeView {
    /// The view with its `redeem_url`, when a template is configured.
    fn linked(mut self, template: Option<&str>) -> CodeView {
        self.redeem_url = template.map(|t| redeem_url(t, &self.code));
        self
    }
}

/// The template with `{code}` replaced by the percent-encoded code (RFC 3986: everything but
/// unreserved characters is encoded, so a code can never change the URL's structure).
fn redeem_url(template: &str, code: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    template.replace("{code}", &percent_encoding::utf8_percent_encode(code, KEEP).to_string())
}

/// The path of a contract's routes. Named, not positional, so the same handler also serves a
/// manage route whose path names the organization too (`/organizations/{org}/contracts/{key}/…`).
#[derive(Debug, Deserialize)]
pub(super) struct ContractPath {
    key: String,
}

/// The path of a code's routes (named, as [`ContractPath`]).
#[derive(Debug, Deserialize)]
pub(super) struct CodePath {
    code: String,
}

impl CodeView {
    /// The code as `admin` may see it: its [`fingerprint`] instead of the code for read access,
    /// and then no `redeem_url` either (the link holds the code); otherwise with its link when
    /// `codes.redeem_url_template` is configured.
    fn shown_to(admin: &Admin, code: EnrollmentCode, template: Option<&str>) -> CodeView {
        let view = CodeView::from(code);
        if admin.masks_codes() {
            return CodeView { code: fingerprint(&view.code), ..view };
        }
        view.linked(template)
    }
}

impl From<EnrollmentCode> for CodeView {
    fn from(c: EnrollmentCode) -> Self {
        CodeView {
            redeemed: c.is_redeemed(),
            revoked: c.revoked_at.is_some(),
            code: c.code,
            contract: c.contract,
            redemption: c.redemption,
            activates_at: c.activates_at,
            expires_at: c.expires_at,
            revoked_at: c.revoked_at,
            redeemed_by: c.redeemed_by,
            redeemed_at: c.redeemed_at,
            redemptions: c.redemptions,
            created_at: c.created_at,
            redeem_url: None,
        }
    }
}

/// The answer of a generation: the codes made now.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Generated {
    items: Vec<CodeView>,
    total: usize,
}

/// How many codes of which kind a generation makes; 422 when it would be too many.
fn plan(contract: &Contract, count: Option<i64>) -> Result<(i64, Redemption), ApiError> {
    let too_many =
        |field: &str, detail: String| ApiError::Unprocessable(vec![FieldError::new(field, detail)]);
    if let Some(count) = count {
        if !(1..=MAX_PER_REQUEST).contains(&count) {
            return Err(too_many("count", format!("must be between 1 and {MAX_PER_REQUEST}")));
        }
        return Ok((count, Redemption::OneTime));
    }
    let free = contract.price.as_deref().is_none_or(|p| p.bytes().all(|b| b == b'0' || b == b'.'));
    if free && contract.membership_type.is_sso() {
        return Ok((0, Redemption::OneTime));
    }
    match contract.max_learners {
        Some(n) if n > MAX_PER_REQUEST => Err(too_many(
            "count",
            format!("the contract has {n} seats, more than {MAX_PER_REQUEST} codes at once: give a count"),
        )),
        Some(n) if n > 0 => Ok((n, Redemption::OneTime)),
        _ => Ok((1, Redemption::Unlimited)),
    }
}

/// Generates enrollment codes for a contract (docs/contract.md §6; how many: see the body's `count`).
#[utoipa::path(
    post,
    path = "/contracts/{key}/codes",
    operation_id = "generate_codes",
    tag = "codes",
    params(("key" = String, Path, description = "The contract's key.")),
    request_body(content = Option<Generate>, description = "Optional: an empty body takes every default."),
    responses(
        (status = 201, description = "The codes made now (possibly none).", body = Generated),
        (status = 400, description = "Not a JSON object, a wrong type or an unknown field."),
        (status = 404, description = "No contract has this key."),
        (status = 422, description = "`count` out of range, more seats than one request may make, or `expires_at` not after `activates_at`."),
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    admin: Admin,
    Path(ContractPath { key }): Path<ContractPath>,
    OptionalJson(body): OptionalJson<Generate>,
) -> Result<Response, ApiError> {
    if let (Some(activates), Some(expires)) = (body.activates_at, body.expires_at)
        && expires <= activates
    {
        return Err(ApiError::Unprocessable(vec![FieldError::new(
            "expires_at",
            "must be after activates_at",
        )]));
    }
    let mut tx = state.store.begin().await?;
    let contract =
        contracts::get(&mut tx, &key).await.or_not_found(|| format!("No contract with key `{key}`."))?;
    admin.within(&contract.organization, || format!("No contract with key `{key}`."))?;
    let (count, redemption) = plan(&contract, body.count)?;
    let new: Vec<NewEnrollmentCode> = (0..count)
        .map(|_| {
            Ok(NewEnrollmentCode {
                code: generate().map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?,
                redemption,
                activates_at: body.activates_at.map(crate::store::codec::truncate),
                expires_at: body.expires_at.map(crate::store::codec::truncate),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let before = codes::count_for_contract(&mut tx, contract.id).await?;
    codes::insert(&mut tx, contract.id, &new).await?;
    if count > 0 {
        let event = NewAuditEvent {
            organization: Some(contract.organization.clone()),
            contract: Some(contract.key.clone()),
            detail: Some(json!({
                "count": count,
                "redemption": redemption,
                "activates_at": body.activates_at.map(rfc3339),
                "expires_at": body.expires_at.map(rfc3339),
            })),
            ..admin.event("code.generate", admin.reason())
        };
        audit::insert(&mut tx, &event).await?;
    }
    let items = read_back(&mut tx, contract.id, before, &new).await?;
    tx.commit().await?;
    let template = state.config.codes.redeem_url_template.as_deref();
    let items: Vec<CodeView> = items.into_iter().map(|c| c.linked(template)).collect();
    let total = items.len();
    Ok((StatusCode::CREATED, Json(Generated { items, total })).into_response())
}

/// The codes just inserted, as stored, in the order they were made. They are the contract's
/// newest rows, read in pages from where the contract's codes ended before; a code that is not
/// there (on PostgreSQL another generation for the same contract may have committed in
/// between) is looked up on its own.
async fn read_back(
    tx: &mut Tx,
    contract_id: i64,
    before: i64,
    new: &[NewEnrollmentCode],
) -> Result<Vec<CodeView>, ApiError> {
    let wanted: HashSet<&str> = new.iter().map(|c| c.code.as_str()).collect();
    let mut found: HashMap<String, EnrollmentCode> = HashMap::with_capacity(new.len());
    let chunk = super::extract::MAX_LIMIT;
    let mut offset = u32::try_from(before).unwrap_or(u32::MAX);
    while found.len() < new.len() {
        let page = codes::list_for_contract(tx, contract_id, chunk, offset).await?;
        let done = page.len() < chunk as usize;
        offset = offset.saturating_add(chunk);
        found.extend(
            page.into_iter().filter(|c| wanted.contains(c.code.as_str())).map(|c| (c.code.clone(), c)),
        );
        if done {
            break;
        }
    }
    let mut items = Vec::with_capacity(new.len());
    for code in new {
        let stored = match found.remove(&code.code) {
            Some(stored) => stored,
            None => codes::find(tx, &code.code).await?.ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("a code is missing right after it was written"))
            })?,
        };
        items.push(CodeView::from(stored));
    }
    Ok(items)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The contract's codes, oldest first: JSON `{items, total, limit, offset}`, or CSV when the
/// `Accept` header asks for `text/csv` — then every code unless `limit`/`offset` are given
/// (an export is meant to be handed out whole).
#[utoipa::path(
    get,
    path = "/contracts/{key}/codes",
    operation_id = "list_codes",
    tag = "codes",
    params(("key" = String, Path, description = "The contract's key."), PageQuery),
    responses(
        (status = 200, description = "One page of codes, or with `Accept: text/csv` a CSV export \
            (RFC 4180, a header row, the JSON item's fields in order).",
            content(
                (Page<CodeView> = "application/json"),
                (String = "text/csv"),
            ),
        ),
        (status = 400, description = "A query parameter is malformed or unknown."),
        (status = 404, description = "No contract has this key."),
        (status = 422, description = "`limit` is out of range."),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    admin: Admin,
    Path(ContractPath { key }): Path<ContractPath>,
    headers: HeaderMap,
    mut params: Params,
) -> Result<Response, ApiError> {
    let csv = wants_csv(&headers);
    let template = state.config.codes.redeem_url_template.as_deref();
    let explicit_page = params.contains("limit") || params.contains("offset");
    let page = params.page()?;
    params.finish()?;
    let mut conn = state.store.conn().await?;
    let contract =
        contracts::get(&mut conn, &key).await.or_not_found(|| format!("No contract with key `{key}`."))?;
    admin.within(&contract.organization, || format!("No contract with key `{key}`."))?;
    let view = |code: EnrollmentCode| CodeView::shown_to(&admin, code, template);
    let total = codes::count_for_contract(&mut conn, contract.id).await?;
    if !csv {
        let items = codes::list_for_contract(&mut conn, contract.id, page.limit, page.offset).await?;
        let items = items.into_iter().map(view).collect();
        return Ok(Json(Page::new(items, total, page)).into_response());
    }
    let mut rows = Vec::new();
    if explicit_page {
        rows = codes::list_for_contract(&mut conn, contract.id, page.limit, page.offset).await?;
    } else {
        let chunk = super::extract::MAX_LIMIT;
        loop {
            let offset = u32::try_from(rows.len()).unwrap_or(u32::MAX);
            let more = codes::list_for_contract(&mut conn, contract.id, chunk, offset).await?;
            let done = more.len() < chunk as usize;
            rows.extend(more);
            if done {
                break;
            }
        }
    }
    let body = to_csv(rows.into_iter().map(view), template.is_some() && !admin.masks_codes());
    let disposition = format!("attachment; filename=\"{}-codes.csv\"", contract.key);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// Whether the `Accept` header lists `text/csv` (parameters and quality ignored: a client that
/// names CSV at all is an export script).
fn wants_csv(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |range| range.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("text/csv")),
    )
}

/// CSV (RFC 4180): a header row, CRLF line ends, fields quoted when they hold a comma, a quote
/// or a line break (quotes doubled). Empty fields for absent values. A cell that a spreadsheet
/// would run as a formula is defused ([`defuse`]), in every column. With `links`, a last
/// column `redeem_url`.
fn to_csv(rows: impl Iterator<Item = CodeView>, links: bool) -> String {
    const HEADER: [&str; 12] = [
        "code",
        "contract",
        "redemption",
        "activates_at",
        "expires_at",
        "revoked",
        "revoked_at",
        "redeemed",
        "redeemed_by",
        "redeemed_at",
        "redemptions",
        "created_at",
    ];
    let mut out = String::new();
    let link_header = links.then(|| "redeem_url".to_owned());
    push_row(&mut out, HEADER.iter().map(|h| h.to_string()).chain(link_header));
    let time = |t: Option<OffsetDateTime>| t.map(rfc3339).unwrap_or_default();
    for c in rows {
        push_row(
            &mut out,
            [
                c.code,
                c.contract,
                c.redemption.as_str().to_owned(),
                time(c.activates_at),
                time(c.expires_at),
                c.revoked.to_string(),
                time(c.revoked_at),
                c.redeemed.to_string(),
                c.redeemed_by.unwrap_or_default(),
                time(c.redeemed_at),
                c.redemptions.to_string(),
                rfc3339(c.created_at),
            ]
            .into_iter()
            .chain(c.redeem_url.filter(|_| links)),
        );
    }
    out
}

fn push_row(out: &mut String, fields: impl Iterator<Item = String>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let field = defuse(field);
        if field.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&field.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(&field);
        }
    }
    out.push_str("\r\n");
}

/// CSV formula injection (docs/contract.md §6 v2, OWASP "CSV Injection"): a spreadsheet that opens the
/// export runs a cell beginning with `=`, `+`, `-` or `@` (and, in some, a tab or a carriage
/// return before one) as a formula — `=HYPERLINK(…)` in a subject a user chose. Such a cell is
/// prefixed with `'`, which spreadsheets show as text. No column is exempt: the values are
/// not all the sidecar's own (subjects come from tokens, keys from admins).
fn defuse(field: String) -> String {
    if field.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{field}") } else { field }
}

/// Revokes a code nobody has redeemed: 204 (also when it was revoked already), 409 once
/// redeemed, 404 when unknown.
#[utoipa::path(
    delete,
    path = "/codes/{code}",
    operation_id = "revoke_code",
    tag = "codes",
    params(("code" = String, Path, description = "The code, as handed out (case and separators are ignored).")),
    responses(
        (status = 204, description = "Revoked (or already revoked)."),
        (status = 404, description = "No such enrollment code."),
        (status = 409, description = "The code has been redeemed."),
    )
)]
pub(super) async fn revoke(
    State(state): State<AppState>,
    admin: Admin,
    Path(CodePath { code: typed }): Path<CodePath>,
) -> Result<StatusCode, ApiError> {
    let unknown = || ApiError::NotFound("No such enrollment code.".into());
    let code = normalize(&typed).ok_or_else(unknown)?;
    let mut tx = state.store.begin().await?;
    if admin.organization().is_some() {
        // A manager: a code of another organization is as unknown as a code that never was.
        let found = codes::find(&mut tx, &code).await?.ok_or_else(unknown)?;
        let contract = contracts::get_by_id(&mut tx, found.contract_id).await?;
        admin.within(&contract.organization, || "No such enrollment code.".into())?;
    }
    // The guarded UPDATE decides (a redemption racing it either claimed the code first, or
    // waits and then finds it revoked); `find` afterwards only says why nothing changed.
    if !codes::revoke(&mut tx, &code).await? {
        let found = codes::find(&mut tx, &code).await?.ok_or_else(unknown)?;
        if found.is_redeemed() {
            return Err(ApiError::Conflict(
                "The code has been redeemed; it can no longer be revoked.".into(),
            ));
        }
        return Ok(StatusCode::NO_CONTENT);
    }
    let found = codes::find(&mut tx, &code).await?.ok_or_else(unknown)?;
    let contract = contracts::get_by_id(&mut tx, found.contract_id).await?;
    let event = NewAuditEvent {
        organization: Some(contract.organization.clone()),
        contract: Some(contract.key.clone()),
        detail: Some(json!({"code": fingerprint(&code), "redemption": found.redemption})),
        ..admin.event("code.revoke", admin.reason())
    };
    audit::insert(&mut tx, &event).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::store::model::MembershipType;

    fn contract(membership_type: MembershipType, max_learners: Option<i64>, price: Option<&str>) -> Contract {
        let at = datetime!(2026-01-01 00:00 UTC);
        Contract {
            id: 1,
            organization_id: 1,
            key: "c".into(),
            organization: "o".into(),
            name: "C".into(),
            membership_type,
            active: true,
            starts_on: None,
            ends_on: None,
            max_learners,
            price: price.map(str::to_owned),
            seats_used: 0,
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn generation_makes_seats_one_time_codes_one_unlimited_code_or_none_for_free_sso() {
        use MembershipType::{Auto, Code, Managed};
        use Redemption::{OneTime, Unlimited};
        let plan = |c: &Contract, count| plan(c, count).ok();
        assert_eq!(plan(&contract(Code, Some(5), None), None), Some((5, OneTime)));
        assert_eq!(plan(&contract(Code, None, None), None), Some((1, Unlimited)));
        assert_eq!(plan(&contract(Code, Some(0), Some("10")), None), Some((1, Unlimited)));
        for free in [None, Some("0"), Some("0.00")] {
            assert_eq!(plan(&contract(Auto, Some(5), free), None), Some((0, OneTime)), "{free:?}");
            assert_eq!(plan(&contract(Managed, None, free), None), Some((0, OneTime)), "{free:?}");
            assert_eq!(plan(&contract(Auto, Some(5), free), Some(3)), Some((3, OneTime)));
        }
        assert_eq!(plan(&contract(Auto, Some(5), Some("12.50")), None), Some((5, OneTime)));
        assert_eq!(plan(&contract(Managed, None, Some("0.01")), None), Some((1, Unlimited)));
        assert_eq!(plan(&contract(Code, None, None), Some(2)), Some((2, OneTime)));
        for bad in [0, -1, MAX_PER_REQUEST + 1] {
            assert_eq!(plan(&contract(Code, None, None), Some(bad)), None, "{bad}");
        }
        assert_eq!(plan(&contract(Code, Some(MAX_PER_REQUEST + 1), None), None), None);
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_ends_lines_with_crlf() {
        let mut out = String::new();
        push_row(&mut out, ["a", "b,c", "say \"hi\"", "two\nlines", ""].map(String::from).into_iter());
        assert_eq!(out, "a,\"b,c\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n");
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_prefixed_with_a_quote() {
        let mut out = String::new();
        let cells = ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\r=1", "a=b", "1-2", "", "'=x"];
        push_row(&mut out, cells.map(String::from).into_iter());
        assert_eq!(out, "'=1+1,'+1,'-2,'@SUM(A1),'\tx,\"'\r=1\",a=b,1-2,,'=x\r\n");
    }

    #[test]
    fn a_redeem_url_carries_the_code_percent_encoded() {
        let t = "https://learn.example.com/enrollmentcode/{code}?src=csv";
        assert_eq!(redeem_url(t, "ABCD-EFGH"), "https://learn.example.com/enrollmentcode/ABCD-EFGH?src=csv");
        assert_eq!(
            redeem_url(t, "a/b?c&d é"),
            "https://learn.example.com/enrollmentcode/a%2Fb%3Fc%26d%20%C3%A9?src=csv"
        );
    }

    #[test]
    fn csv_is_chosen_by_the_accept_header() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().unwrap());
            wants_csv(&h)
        };
        assert!(accept("text/csv"));
        assert!(accept("application/json;q=0.5, Text/CSV; charset=utf-8"));
        assert!(!accept("application/json"));
        assert!(!accept("*/*"));
        assert!(!wants_csv(&HeaderMap::new()));
    }
}
