//! Dialing upstream: by the name the decision was made on, through the
//! enforcer's resolver, never blindly to the address the agent dialed. A
//! failed dial says whether the name did not resolve (and why) or the
//! connection did not open.

use std::{
    error::Error as StdError,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::StatusCode;
use hyper_util::client::legacy::connect::dns::Name;
use tokio::net::TcpStream;

use crate::dns::{LookupError, Resolver};

/// Connect timeout towards an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an upstream could not be dialed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The name did not resolve: `DNS lookup of X failed: ...`.
    #[error(transparent)]
    Dns(#[from] LookupError),
    /// Every address refused or failed.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    /// No address answered within [`CONNECT_TIMEOUT`].
    #[error("connecting to {target} timed out after {} s", after.as_secs())]
    Timeout { target: String, after: Duration },
    /// Nothing to dial (an empty address list).
    #[error("no address to dial for {target}")]
    NoAddress { target: String },
}

impl DialError {
    /// The DNS failure, when the name did not resolve.
    pub fn dns(&self) -> Option<&LookupError> {
        match self {
            Self::Dns(e) => Some(e),
            _ => None,
        }
    }

    /// Whether something did not answer in time (the lookup or the connect).
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Dns(e) => e.is_timeout(),
            Self::Timeout { .. } => true,
            Self::Connect { .. } | Self::NoAddress { .. } => false,
        }
    }

    /// The status a gateway answers with: 504 for a timeout, else 502.
    pub fn status(&self) -> StatusCode {
        if self.is_timeout() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        }
    }
}

/// The DNS failure behind an error, if that is what it is: walks the
/// error's sources (hyper's `client error (Connect)` from the pooled
/// client, a [`DialError`], an `io::Error` wrapping either) down to the
/// [`LookupError`] the resolver returned.
pub fn dns_failure<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a LookupError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = as_lookup(e) {
            return Some(found);
        }
        // io::Error's source() skips the error it wraps: look inside.
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref)
            && let Some(found) = as_lookup(inner)
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

fn as_lookup<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a LookupError> {
    e.downcast_ref::<LookupError>()
        .or_else(|| e.downcast_ref::<DialError>().and_then(DialError::dns))
}

/// Connects to the first reachable address among `addrs`.
pub async fn connect_any(addrs: &[IpAddr], port: u16) -> Result<TcpStream, DialError> {
    let target = match addrs {
        [ip] => SocketAddr::new(*ip, port).to_string(),
        _ => format!("port {port} of {addrs:?}"),
    };
    connect_named(&target, addrs, port).await
}

async fn connect_named(target: &str, addrs: &[IpAddr], port: u16) -> Result<TcpStream, DialError> {
    let mut last = None;
    for ip in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((*ip, port))).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(source)) => {
                last = Some(DialError::Connect {
                    target: target.to_string(),
                    source,
                });
            }
            Err(_) => {
                last = Some(DialError::Timeout {
                    target: target.to_string(),
                    after: CONNECT_TIMEOUT,
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| DialError::NoAddress {
        target: target.to_string(),
    }))
}

/// Resolves `name` with the enforcer's resolver and connects.
pub async fn dial(resolver: &Resolver, name: &str, port: u16) -> Result<TcpStream, DialError> {
    let addrs = resolver.lookup(name).await?;
    connect_named(&format!("{name} port {port}"), &addrs, port).await
}

/// The enforcer's resolver as hyper's DNS resolver (for the pooled client).
/// Its error is the [`LookupError`] itself, so that [`dns_failure`] finds
/// it behind hyper's `client error (Connect)`.
#[derive(Clone, Debug)]
pub struct HyperResolver(pub Arc<Resolver>);

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for HyperResolver {
    type Response = Addrs;
    type Error = LookupError;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, LookupError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), LookupError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = Arc::clone(&self.0);
        Box::pin(async move {
            let ips = resolver.lookup(name.as_str()).await?;
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use hickory_proto::op::ResponseCode;

    use super::*;
    use crate::dns::{
        Failure,
        fake::{Behaviour, FakeUpstream, resolver},
    };

    /// Issue 12: a failed lookup reached the agent as `502 ... client error
    /// (Connect)`. A dial now fails with the DNS failure, typed.
    #[tokio::test]
    async fn a_dial_whose_lookup_failed_says_so() {
        let up = FakeUpstream::start(Behaviour::ServFail).await;
        let e = dial(&resolver(up.addr), "api.vendor.test", 443)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "DNS lookup of api.vendor.test failed: SERVFAIL from {}",
                up.addr
            )
        );
        let dns = e.dns().expect("a DNS failure");
        assert_eq!(
            dns.failure,
            Failure::Rcode {
                server: up.addr,
                rcode: ResponseCode::ServFail
            }
        );
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            dns.agent_text(),
            "DNS lookup of api.vendor.test failed: the upstream DNS server answered SERVFAIL"
        );

        up.set(Behaviour::Silent);
        let e = dial(&resolver(up.addr), "api.vendor.test", 443)
            .await
            .unwrap_err();
        assert!(e.is_timeout());
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);

        let e = dial(
            &crate::dns::Resolver::with_statics::<&str>(&[]).unwrap(),
            "api.vendor.test",
            443,
        )
        .await
        .unwrap_err();
        assert_eq!(e.dns().map(|d| &d.failure), Some(&Failure::NoUpstream));
        assert!(e.to_string().contains("no upstream DNS server"), "{e}");
    }

    #[tokio::test]
    async fn a_refused_connect_is_not_a_dns_failure() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = crate::dns::Resolver::with_statics(&["api.vendor.test=127.0.0.1"]).unwrap();
        let e = dial(&r, "api.vendor.test", closed).await.unwrap_err();
        assert!(e.dns().is_none());
        assert!(matches!(e, DialError::Connect { .. }), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "cannot connect to api.vendor.test port {closed}: "
            )),
            "{e}"
        );
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    }

    /// The pooled client (hyper) wraps the resolver's error in its own
    /// `client error (Connect)`: [`dns_failure`] finds it underneath.
    #[tokio::test]
    async fn the_dns_failure_is_found_behind_the_pooled_client_s_error() {
        let up = FakeUpstream::start(Behaviour::ServFail).await;
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let client = crate::proxy::upstream::Upstream::new(
            resolver(up.addr),
            tls,
            std::time::Duration::from_secs(30),
        );
        let req = http::Request::get("http://api.vendor.test/v1/x")
            .body(crate::proxy::upstream::Body::default())
            .unwrap();
        let err = client.send(req).await.unwrap_err();
        assert!(err.to_string().contains("client error (Connect)"), "{err}");
        let dns = dns_failure(&err).expect("the DNS failure under hyper's error");
        assert_eq!(dns.name, "api.vendor.test");
        assert!(matches!(dns.failure, Failure::Rcode { .. }));
        // Also through an io::Error, and a DialError.
        let io = io::Error::other(DialError::Dns(dns.clone()));
        assert_eq!(dns_failure(&io), Some(dns));
        let plain = io::Error::other("something else");
        assert_eq!(dns_failure(&plain), None);
        assert!(err.source().is_some());
    }
}
