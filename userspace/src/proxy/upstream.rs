//! The pooled HTTP client the proxy forwards allowed requests with:
//! HTTP/1.1 and HTTP/2 (by ALPN), TLS verified against the system roots
//! plus `--upstream-ca`, names resolved by the enforcer's resolver.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::dial::{CONNECT_TIMEOUT, HyperResolver};
use crate::dns::Resolver;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of everything the proxy sends, either way.
pub type Body = BoxBody<Bytes, BoxError>;

/// Idle pooled connections are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(60);

type Pool = Client<HttpsConnector<HttpConnector<HyperResolver>>, Body>;

#[derive(Clone)]
pub struct Upstream {
    /// HTTP/2 where the server offers it, else HTTP/1.1.
    client: Pool,
    /// HTTP/1.1 only: an `Upgrade` (WebSocket) exists only there.
    http1: Pool,
    /// How long an upstream may take to answer with response headers.
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
}

impl Upstream {
    pub fn new(resolver: Arc<Resolver>, tls: rustls::ClientConfig, timeout: Duration) -> Self {
        let mut http = HttpConnector::new_with_resolver(HyperResolver(resolver));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let pool = |https| {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE)
                .build(https)
        };
        let both = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http.clone());
        let http1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            client: pool(both),
            http1: pool(http1),
            timeout,
        }
    }

    /// Sends `req` (whose URI is absolute) and waits for the response headers.
    pub async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let client = if req.headers().contains_key(http::header::UPGRADE) {
            &self.http1
        } else {
            &self.client
        };
        match tokio::time::timeout(self.timeout, client.request(req)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
        }
    }
}
