//! Serving HTTP (1.1 or 2) on an intercepted or parsed connection: each
//! request goes through the [`super::pipeline`]; a refused request gets its
//! answer and the connection stays usable.

use std::{sync::Arc, time::Duration};

use http::Request;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    context::{Conn, ProxyContext},
    pipeline,
};

/// Limits for what an agent may send the proxy.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_H2_STREAMS: u32 = 256;

/// Serves HTTP (1.1 or 2) on an intercepted connection until it closes.
pub async fn serve<IO>(io: IO, conn: Arc<Conn>, ctx: ProxyContext)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let conn = Arc::clone(&conn);
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(pipeline::handle(req, &conn, &ctx).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}
