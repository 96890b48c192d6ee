//! OIDC discovery: where the issuer publishes its keys and token endpoint.
//!
//! The discovery document is read from `oidc.discovery_url` (default
//! `<issuer>/.well-known/openid-configuration`); `oidc.jwks_url` skips it for keys. Both
//! overrides exist because inside a cluster Keycloak is reached by an internal hostname
//! while tokens carry the public one.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::config::OidcConfig;

/// The fields of the discovery document this service uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    pub token_endpoint: Option<String>,
}

/// Discovery and key fetching over one HTTP client.
pub struct Discovery {
    http: reqwest::Client,
    issuer: String,
    discovery_url: String,
    jwks_url_override: Option<String>,
    metadata: OnceCell<ProviderMetadata>,
}

/// An HTTP client for Keycloak: timeouts, no redirects (a redirect to another host must not
/// silently change where keys come from), and an optional extra CA bundle.
pub fn http_client(timeout: Duration, ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("identity-sidecar/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("CA file {} is not a PEM bundle", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

impl Discovery {
    pub fn new(config: &OidcConfig) -> anyhow::Result<Discovery> {
        let http = http_client(Duration::from_secs(config.http_timeout_secs), config.ca_file.as_deref())?;
        let discovery_url = config.discovery_url.clone().unwrap_or_else(|| {
            format!("{}/.well-known/openid-configuration", config.issuer.trim_end_matches('/'))
        });
        Ok(Discovery {
            http,
            issuer: config.issuer.clone(),
            discovery_url,
            jwks_url_override: config.jwks_url.clone(),
            metadata: OnceCell::new(),
        })
    }

    /// The discovery document, fetched once and then remembered.
    pub async fn metadata(&self) -> anyhow::Result<&ProviderMetadata> {
        self.metadata
            .get_or_try_init(|| async {
                let meta: ProviderMetadata = self
                    .http
                    .get(&self.discovery_url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .context("OIDC discovery request failed")?
                    .json()
                    .await
                    .context("OIDC discovery document is not valid JSON")?;
                if meta.issuer != self.issuer {
                    // Tokens are still checked against the configured issuer; a mismatch here
                    // usually means a hostname setting in Keycloak, so say so loudly.
                    tracing::warn!(
                        configured = %self.issuer,
                        discovered = %meta.issuer,
                        "the discovery document names another issuer than oidc.issuer"
                    );
                }
                Ok(meta)
            })
            .await
    }

    /// Where the keys are: the override, else the discovery document's `jwks_uri`.
    async fn jwks_url(&self) -> anyhow::Result<&str> {
        match &self.jwks_url_override {
            Some(url) => Ok(url),
            None => Ok(&self.metadata().await?.jwks_uri),
        }
    }

    /// Fetches the raw JWKS document.
    pub async fn fetch_jwks(&self) -> anyhow::Result<Vec<u8>> {
        let url = self.jwks_url().await?;
        let body = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("JWKS request failed")?
            .bytes()
            .await
            .context("JWKS response body")?;
        Ok(body.to_vec())
    }

    /// The shared HTTP client (the Keycloak admin client reuses its settings).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
