//! One webhook: an event per `POST`, as Standard Webhooks sign them
//! (<https://www.standardwebhooks.com>), with a CloudEvents structured body.
//!
//! Each attempt is signed afresh: `webhook-id` is the event's id (the same on every attempt,
//! so a receiver can drop repeats), `webhook-timestamp` is the attempt's time, and
//! `webhook-signature` is `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, once per secret of
//! `secret_file`. Receivers reject old timestamps, so re-sending the first attempt's headers
//! would block an ordered webhook for good after a long outage.
//!
//! A 2xx answer acknowledges. Anything else — another status (redirects are not followed),
//! a timeout, a refused connection — is a failure to retry.

use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

use super::CloudEvent;
use crate::config::WebhookConfig;

/// The body's media type (CloudEvents JSON format, structured mode).
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// The prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

pub struct Webhook {
    url: String,
    http: reqwest::Client,
    /// The decoded secrets: the first signs, each one adds a signature (rotation).
    keys: Vec<SecretBox<Vec<u8>>>,
    timeout: Duration,
}

impl Webhook {
    /// Reads the secrets of `config.secret_file`; refuses a file without a valid secret.
    pub fn new(config: &WebhookConfig, timeout: Duration) -> anyhow::Result<Webhook> {
        let name = &config.name;
        let text = std::fs::read_to_string(&config.secret_file).with_context(|| {
            format!("events.webhooks {name:?}: cannot read secret_file {}", config.secret_file.display())
        })?;
        let keys = parse_secrets(&text).with_context(|| format!("events.webhooks {name:?}: secret_file"))?;
        let http = crate::auth::discovery::http_client(timeout, None)?;
        Ok(Webhook { url: config.url.clone(), http, keys, timeout })
    }

    /// The longest one attempt takes.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One attempt: `Ok` on a 2xx answer.
    pub async fn send(&self, event: &CloudEvent) -> Result<(), String> {
        let body = serde_json::to_vec(event).map_err(|e| format!("cannot encode the event: {e}"))?;
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = sign(&self.keys, &event.id, timestamp, &body);
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("the receiver answered {status}")) }
    }
}

/// The secrets of a secret file: one `whsec_<base64>` per non-empty line.
fn parse_secrets(text: &str) -> anyhow::Result<Vec<SecretBox<Vec<u8>>>> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().map(str::trim).enumerate() {
        if line.is_empty() {
            continue;
        }
        let Some(encoded) = line.strip_prefix(SECRET_PREFIX) else {
            bail!("line {} is not a whsec_<base64> secret", i + 1);
        };
        let key = STANDARD.decode(encoded).ok().filter(|k| !k.is_empty());
        let Some(key) = key else {
            bail!("line {}: the part after whsec_ is not base64", i + 1);
        };
        keys.push(SecretBox::new(Box::new(key)));
    }
    if keys.is_empty() {
        bail!("holds no secret (expected lines of whsec_<base64>)");
    }
    Ok(keys)
}

/// `v1,<signature>` per key, space-separated (Standard Webhooks).
fn sign(keys: &[SecretBox<Vec<u8>>], id: &str, timestamp: i64, body: &[u8]) -> String {
    let signatures: Vec<String> = keys
        .iter()
        .map(|key| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(key.expose_secret()).expect("HMAC takes any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect();
    signatures.join(" ")
}

/// A failed request in a few words, without the URL (it may carry a token in its query).
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "the receiver did not answer in time".into()
    } else if error.is_connect() {
        "cannot connect to the receiver".into()
    } else {
        format!("the request failed: {}", error.without_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_line_signs_and_a_bad_line_is_refused() {
        let keys = parse_secrets("whsec_c2VjcmV0\n\nwhsec_b3RoZXI=\n").unwrap();
        assert_eq!(keys.len(), 2);
        let signature = sign(&keys, "evt-1", 1_700_000_000, b"{}");
        let parts: Vec<&str> = signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        // The HMAC-SHA256 of "id.timestamp.body" under the decoded key (the first line).
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"evt-1.1700000000.{}");
        assert_eq!(parts[0], format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())));
        assert!(parse_secrets("").is_err());
        assert!(parse_secrets("secret").is_err());
        assert!(parse_secrets("whsec_!!").is_err());
    }
}
