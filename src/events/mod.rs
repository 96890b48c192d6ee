//! Change events for other services (docs/contract.md §13, docs/events.md): the closed list
//! of event types, their CloudEvents form, and the sequencing step that numbers them.
//!
//! Events are the audit trail's change records ([`crate::store::events`]): an audit action in
//! [`TYPES`] is a change event of the listed type; any other action (a code generated, an
//! active organization chosen) stays in the audit trail only. The `data` of an event is built
//! from its audit row: the keys it is about, the object after the change (before it, for a
//! deletion) where the row records one, plus `actor` and `reason`.
//!
//! Delivery to webhooks and to a Redis stream lives in the submodules; all of them read the
//! same numbered rows, so every consumer sees one order.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::events::{StoredEvent, sequence_pending};

pub mod deliver;
pub mod stream;
pub mod webhook;

/// The prefix of every event type.
pub const TYPE_PREFIX: &str = "identity-sidecar.";

/// The closed list: each audit action that is a change event, and its CloudEvents type.
/// docs/events.md lists the same types; a test keeps the two in step.
pub const TYPES: &[(&str, &str)] = &[
    ("organization.create", "identity-sidecar.organization.created"),
    ("organization.update", "identity-sidecar.organization.updated"),
    ("organization.learn_keycloak_id", "identity-sidecar.organization.updated"),
    ("organization.delete", "identity-sidecar.organization.deleted"),
    ("contract.create", "identity-sidecar.contract.created"),
    ("contract.update", "identity-sidecar.contract.updated"),
    ("contract.delete", "identity-sidecar.contract.deleted"),
    ("membership.add", "identity-sidecar.membership.added"),
    ("membership.update", "identity-sidecar.membership.updated"),
    ("membership.unflag", "identity-sidecar.membership.updated"),
    ("membership.remove", "identity-sidecar.membership.removed"),
    ("attachment.add", "identity-sidecar.attachment.attached"),
    ("attachment.remove", "identity-sidecar.attachment.detached"),
    ("attachment.skipped_full", "identity-sidecar.attachment.skipped_full"),
    ("code.redeem", "identity-sidecar.code.redeemed"),
    ("assignment.create", "identity-sidecar.assignment.created"),
    ("assignment.accept", "identity-sidecar.assignment.accepted"),
    ("assignment.revoke", "identity-sidecar.assignment.revoked"),
    ("assignment.expire", "identity-sidecar.assignment.expired"),
    ("user.erase", "identity-sidecar.user.erased"),
];

/// The CloudEvents type of an audit action, if it is a change event.
pub fn event_type(action: &str) -> Option<&'static str> {
    TYPES.iter().find(|(a, _)| *a == action).map(|(_, t)| *t)
}

/// Every audit action that is a change event.
pub fn all_actions() -> Vec<&'static str> {
    TYPES.iter().map(|(a, _)| *a).collect()
}

/// The audit actions whose type starts with one of `prefixes` (all of them for none). A prefix
/// matching no type is refused: a misspelt filter would otherwise deliver nothing, silently.
pub fn actions_matching(prefixes: &[String]) -> Result<Vec<&'static str>, String> {
    if prefixes.is_empty() {
        return Ok(all_actions());
    }
    for prefix in prefixes {
        if !TYPES.iter().any(|(_, t)| t.starts_with(prefix.as_str())) {
            return Err(format!(
                "{prefix:?} matches no event type (types start with {TYPE_PREFIX:?}, e.g. \
                 \"identity-sidecar.membership.\"; docs/events.md lists them)"
            ));
        }
    }
    Ok(TYPES
        .iter()
        .filter(|(_, t)| prefixes.iter().any(|p| t.starts_with(p.as_str())))
        .map(|(a, _)| *a)
        .collect())
}

/// A sequence as CloudEvents carry it: 20 decimal digits, zero-padded, so it sorts as text.
pub fn format_sequence(sequence: i64) -> String {
    format!("{sequence:020}")
}

/// Reads a sequence given back by a consumer: 1 to 20 decimal digits (padded or not).
pub fn parse_sequence(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One event in CloudEvents 1.0 structured JSON.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct CloudEvent {
    pub specversion: &'static str,
    /// Unique per source: `evt-<audit row id>`; the Standard Webhooks `webhook-id`.
    pub id: String,
    pub source: String,
    /// `identity-sidecar.<object>.<verb>`, one of the closed list (docs/events.md).
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    /// The user's `sub`, or the key of the organization or contract the event is about.
    pub subject: String,
    pub sequence: String,
    pub datacontenttype: &'static str,
    /// The object after the change (before it, for a deletion), with `actor` and `reason`.
    #[schema(value_type = Object)]
    pub data: Value,
}

impl CloudEvent {
    /// The event of a numbered audit row, or `None` when its action is not a change event.
    pub fn from_stored(source: &str, stored: &StoredEvent) -> Option<CloudEvent> {
        let audit = &stored.audit;
        let kind = event_type(&audit.action)?;
        let subject = audit
            .sub
            .clone()
            .or_else(|| if kind.contains(".contract.") { audit.contract.clone() } else { None })
            .or_else(|| audit.organization.clone())
            .or_else(|| audit.contract.clone())
            .unwrap_or_default();
        Some(CloudEvent {
            specversion: "1.0",
            id: format!("evt-{}", audit.id),
            source: source.to_owned(),
            kind,
            time: audit.at,
            subject,
            sequence: format_sequence(stored.sequence),
            datacontenttype: "application/json",
            data: data(stored),
        })
    }
}

/// `data`: the keys the row names, the object it records (the `after` side of an update,
/// the `before` side of a deletion, or the detail as written), then `actor` and `reason`.
fn data(stored: &StoredEvent) -> Value {
    let audit = &stored.audit;
    let mut data = Map::new();
    for (key, value) in
        [("sub", &audit.sub), ("organization", &audit.organization), ("contract", &audit.contract)]
    {
        if let Some(value) = value {
            data.insert(key.into(), Value::String(value.clone()));
        }
    }
    let deletion = audit.action.ends_with(".delete") || audit.action.ends_with(".remove");
    if let Some(Value::Object(detail)) = &audit.detail {
        let side = if deletion { "before" } else { "after" };
        let object = match detail.get(side) {
            Some(Value::Object(object)) => object.clone(),
            _ => detail.clone(),
        };
        for (key, value) in object {
            if key != "before" && key != "after" {
                data.entry(key).or_insert(value);
            }
        }
    }
    data.insert("actor".into(), Value::String(audit.actor.clone()));
    data.insert("reason".into(), audit.reason.clone().map(Value::String).unwrap_or(Value::Null));
    Value::Object(data)
}

/// The delivery targets `config.events` names: each webhook (its secrets read, its `types`
/// checked) and the Redis stream, which needs the Redis tier (`redis`; `None` when only
/// checking a configuration). Startup and `check-config` refuse what this refuses.
pub fn targets(
    config: &crate::config::Config,
    redis: Option<std::sync::Arc<crate::entitlements::RedisTier>>,
) -> anyhow::Result<Vec<deliver::Target>> {
    let events = &config.events;
    let timeout = Duration::from_secs(events.webhook_timeout_secs);
    let mut targets = Vec::new();
    for (i, hook) in events.webhooks.iter().enumerate() {
        let actions = actions_matching(&hook.types)
            .map_err(|detail| anyhow::anyhow!("events.webhooks[{i}].types: {detail}"))?;
        let sender = deliver::Sender::Webhook(webhook::Webhook::new(hook, timeout)?);
        targets.push(deliver::Target { name: hook.name.clone(), actions, sender });
    }
    if let (Some(key), Some(redis)) = (&events.redis_stream, redis) {
        let sender = deliver::Sender::Stream(stream::Stream {
            redis,
            key: key.clone(),
            max_len: events.redis_stream_max_len,
        });
        targets.push(deliver::Target { name: STREAM_TARGET.into(), actions: all_actions(), sender });
    }
    Ok(targets)
}

/// The name of the Redis stream's delivery position (webhook names cannot clash with it:
/// a webhook name has no `:`).
pub const STREAM_TARGET: &str = "redis:stream";

/// The background task of a replica with a delivery target: numbers committed events every
/// `every`, so webhooks and the Redis stream find them (the pull feed numbers on each read).
pub async fn run_sequencer(
    store: Store,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match sequence_pending(&store).await {
            Ok(numbered) => {
                metrics.events_sequenced.inc_by(numbered);
            }
            Err(error) => {
                tracing::warn!(error = %error, "numbering change events failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::AuditEvent;
    use serde_json::json;

    fn stored(action: &str, detail: Option<Value>) -> StoredEvent {
        StoredEvent {
            sequence: 42,
            audit: AuditEvent {
                id: 7,
                at: OffsetDateTime::UNIX_EPOCH,
                actor: "admin:ops".into(),
                action: action.into(),
                sub: None,
                organization: Some("acme".into()),
                contract: Some("acme-2026".into()),
                reason: Some("admin API".into()),
                detail,
            },
        }
    }

    #[test]
    fn a_sequence_is_twenty_digits_and_reads_back_padded_or_not() {
        assert_eq!(format_sequence(42), "00000000000000000042");
        assert_eq!(parse_sequence("00000000000000000042"), Some(42));
        assert_eq!(parse_sequence("42"), Some(42));
        for bad in ["", "-1", "4a", "000000000000000000042", " 42", "99999999999999999999"] {
            assert_eq!(parse_sequence(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_update_carries_the_object_after_and_a_deletion_the_object_before() {
        let detail = json!({"before": {"name": "Old"}, "after": {"name": "New"}});
        let event = CloudEvent::from_stored("s", &stored("contract.update", Some(detail))).unwrap();
        assert_eq!(event.kind, "identity-sidecar.contract.updated");
        assert_eq!(event.subject, "acme-2026");
        assert_eq!(event.data["name"], "New");
        assert_eq!(event.data["actor"], "admin:ops");
        assert_eq!(event.id, "evt-7");
        assert_eq!(event.sequence, "00000000000000000042");
        let detail = json!({"before": {"name": "Old"}});
        let event = CloudEvent::from_stored("s", &stored("contract.delete", Some(detail))).unwrap();
        assert_eq!(event.kind, "identity-sidecar.contract.deleted");
        assert_eq!(event.data["name"], "Old");
    }

    #[test]
    fn actions_outside_the_closed_list_are_no_events() {
        assert!(CloudEvent::from_stored("s", &stored("code.generate", None)).is_none());
        assert!(CloudEvent::from_stored("s", &stored("active_organization.selected", None)).is_none());
    }

    #[test]
    fn docs_events_lists_exactly_the_closed_list_of_types() {
        let page = include_str!("../../docs/events.md");
        let table = page
            .split("<!-- event types -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- /event types -->").next())
            .expect("docs/events.md has an `event types` block");
        let mut documented: Vec<String> = table
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split('`').next())
            .map(|short| format!("{TYPE_PREFIX}{short}"))
            .collect();
        documented.sort();
        let mut built: Vec<String> = TYPES.iter().map(|(_, t)| (*t).to_owned()).collect();
        built.sort();
        built.dedup();
        assert_eq!(documented, built, "docs/events.md's table and TYPES differ");
    }

    #[test]
    fn type_prefixes_select_actions_and_a_prefix_matching_nothing_is_refused() {
        let memberships = actions_matching(&["identity-sidecar.membership.".into()]).unwrap();
        assert_eq!(
            memberships,
            ["membership.add", "membership.update", "membership.unflag", "membership.remove"]
        );
        assert_eq!(actions_matching(&[]).unwrap().len(), TYPES.len());
        assert!(actions_matching(&["membership.".into()]).is_err());
    }
}
