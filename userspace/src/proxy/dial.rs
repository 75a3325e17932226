//! Dialing upstream: by the name the decision was made on, through the
//! enforcer's resolver, never blindly to the address the agent dialed.

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::client::legacy::connect::dns::Name;
use tokio::net::TcpStream;

use crate::dns::Resolver;

/// Connect timeout towards an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the first reachable address among `addrs`.
pub async fn connect_any(addrs: &[IpAddr], port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for ip in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((*ip, port))).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to dial")))
}

/// Resolves `name` with the enforcer's resolver and connects.
pub async fn dial(resolver: &Resolver, name: &str, port: u16) -> io::Result<TcpStream> {
    let addrs = resolver
        .lookup(name)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.to_string()))?;
    connect_any(&addrs, port).await
}

/// The enforcer's resolver as hyper's DNS resolver (for the pooled client).
#[derive(Clone, Debug)]
pub struct HyperResolver(pub Arc<Resolver>);

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for HyperResolver {
    type Response = Addrs;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Addrs>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = Arc::clone(&self.0);
        Box::pin(async move {
            let ips = resolver
                .lookup(name.as_str())
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.to_string()))?;
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}
