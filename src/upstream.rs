//! The app behind the sidecar in reverse proxy mode (`upstream.url`): where a request goes
//! and the pooled HTTP/1.1 client that takes it there.
//!
//! Only the target and the connection pool live here, no request state and no HTTP mapping:
//! the forwarding step ([`crate::public::proxy`]) owns header discipline, streaming, timeouts
//! and the answers a failed forward gets.

use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::http::Uri;
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamConfig;

/// The upstream app and a pooled client for it.
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    scheme: Scheme,
    authority: Authority,
    /// The upstream URL's path, without a trailing slash ("" for the root).
    base_path: String,
    timeout: Duration,
}

/// Why a request's URI has no upstream counterpart.
#[derive(Debug)]
pub enum TargetError {
    /// The base path and the request's path and query do not make a valid request target.
    InvalidUri,
    /// The parts were valid, yet no URI could be built from them (a bug).
    Build(axum::http::Error),
}

impl Upstream {
    /// The upstream at `url`, with `upstream.*` connection settings.
    pub fn new(url: &str, config: &UpstreamConfig) -> anyhow::Result<Upstream> {
        let uri: Uri = url.parse().with_context(|| format!("upstream.url {url:?}"))?;
        let authority = uri.authority().cloned().context("upstream.url has no host")?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(config.connect_timeout_secs)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(config.pool_idle_timeout_secs))
            .build(connector);
        Ok(Upstream {
            client,
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            timeout: Duration::from_secs(config.timeout_secs),
        })
    }

    /// Where `original` (a request to the sidecar) goes upstream: the upstream's scheme and
    /// authority, its base path followed by the original path and query.
    pub fn target(&self, original: &Uri) -> Result<Uri, TargetError> {
        let pq = original.path_and_query().map_or("/", PathAndQuery::as_str);
        let pq: PathAndQuery =
            format!("{}{pq}", self.base_path).parse().map_err(|_| TargetError::InvalidUri)?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(TargetError::Build)
    }

    /// The pooled client (HTTP/1.1, connections kept for `upstream.pool_idle_timeout_secs`).
    pub fn client(&self) -> &Client<HttpConnector, Body> {
        &self.client
    }

    /// `upstream.timeout_secs`: how long the upstream may keep its response headers after the
    /// request body last moved.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
