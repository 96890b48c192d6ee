//! The Redis stream target (`events.redis_stream`): every event appended with `XADD`, entry id
//! `<sequence>-0`, capped near `events.redis_stream_max_len` entries.
//!
//! The entry id makes a repeat harmless: after a restart the unacknowledged event is appended
//! again, and Redis refuses an id that is not above the stream's top entry, which counts as
//! delivered. Consumers read with `XREAD`/`XREADGROUP` and resume at the last id they handled.

use std::sync::Arc;
use std::time::Duration;

use super::CloudEvent;
use crate::entitlements::RedisTier;

/// The longest one `XADD` may take (the Redis tier's own command timeout is shorter).
pub const TIMEOUT: Duration = Duration::from_secs(2);

pub struct Stream {
    pub redis: Arc<RedisTier>,
    pub key: String,
    pub max_len: u64,
}

impl Stream {
    /// One attempt: fields `type`, `subject` and `event` (the CloudEvent as JSON).
    pub async fn send(&self, event: &CloudEvent) -> Result<(), String> {
        let json = serde_json::to_string(event).map_err(|e| format!("cannot encode the event: {e}"))?;
        let id = format!("{}-0", event.sequence.trim_start_matches('0'));
        let fields = [("type", event.kind), ("subject", event.subject.as_str()), ("event", json.as_str())];
        let append = self.redis.append_to_stream(&self.key, self.max_len, &id, &fields);
        match tokio::time::timeout(TIMEOUT, append).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("XADD failed: {}", e.category())),
            Err(_) => Err("XADD did not answer in time".into()),
        }
    }
}
