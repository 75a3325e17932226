//! TLS interception: complete the agent's handshake with a leaf minted by
//! the run's CA for the name that was decided on, then serve HTTP over it.
//! A handshake that asks for another name than the one decided is refused.

use std::{sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use super::{
    context::{Conn, ProxyContext},
    http,
};
use crate::decision::{Cause, Decision, Layer};

/// A client that does not finish its handshake in this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Terminates TLS for `conn.name` on `io` and serves the requests inside.
pub async fn intercept<IO>(io: IO, conn: Conn, ctx: ProxyContext)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor).await {
        Ok(Ok(start)) => start,
        _ => return,
    };
    let sni = start
        .client_hello()
        .server_name()
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    if sni.as_deref() != Some(conn.name.as_str()) {
        let reason = format!(
            "TLS server name {} does not match {} (the name this connection was allowed for)",
            sni.as_deref().unwrap_or("(none)"),
            conn.name
        );
        ctx.sink.record(
            &Decision::new(Layer::Connection, Cause::NameMismatch, reason)
                .host(conn.name.clone())
                .port(conn.port),
        );
        // Dropping the half-open handshake closes the connection.
        return;
    }
    let tls = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        start.into_stream(Arc::clone(&ctx.tls_server)),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        _ => return,
    };
    http::serve(tls, Arc::new(conn), ctx).await;
}
