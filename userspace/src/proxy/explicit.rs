//! The explicit listener for proxy-aware clients (HTTP_PROXY, HTTPS_PROXY):
//! `CONNECT host:port` tunnels and absolute-form `GET http://host/path`
//! requests, decided by exactly the same policy as the transparent path.

use std::{net::SocketAddr, time::Duration};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{
    context::{Conn, ProxyContext, Via},
    http as proxy_http, intercept,
    sniff::host_without_port,
    tunnel,
    upstream::Body,
};
use crate::{
    decision::{Decision, Layer, Verdict},
    policy::ConnectionVerdict,
};

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts proxy clients until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: ProxyContext) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            // Only the run's own processes may use its proxy: the kernel
            // files every connection they make, this one included.
            if super::transparent::original_destination(&ctx, peer)
                .await
                .is_none()
            {
                ctx.sink.record(&Decision::new(
                    Layer::Connection,
                    Verdict::Deny,
                    format!("connection to the explicit proxy from {peer}, which is not a process of this run"),
                ));
                return;
            }
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, peer, ctx).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn bad_request(reason: &str) -> Response<Body> {
    proxy_http::json_response(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"error": "bad proxy request", "reason": reason}),
    )
}

fn refused(
    ctx: &ProxyContext,
    name: &str,
    port: u16,
    method: &str,
    path: &str,
    reason: &str,
) -> Response<Body> {
    ctx.sink.record(
        &Decision::new(Layer::Connection, Verdict::Deny, reason)
            .host(name)
            .port(port),
    );
    let conn = Conn {
        name: name.to_string(),
        port,
        tls: false,
        host: usize::MAX,
        via: Via::Explicit,
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    proxy_http::refusal(ctx, &conn, method, path, None, reason)
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, ctx: ProxyContext) -> Response<Body> {
    if req.method() == http::Method::CONNECT {
        return connect(req, peer, ctx);
    }
    let uri = req.uri().clone();
    let Some(host) = uri.host().map(host_without_port) else {
        return bad_request(
            "this is a proxy: send absolute-form requests (http://host/path) or CONNECT",
        );
    };
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    match ctx.policy.connection(&host, port) {
        ConnectionVerdict::Refuse { reason } => refused(
            &ctx,
            &host,
            port,
            req.method().as_str(),
            uri.path(),
            &reason,
        ),
        ConnectionVerdict::PassThrough { host: idx }
        | ConnectionVerdict::Intercept { host: idx } => {
            let conn = Conn {
                name: host,
                port,
                tls,
                host: idx,
                via: Via::Explicit,
                peer,
            };
            proxy_http::handle(req, &conn, &ctx).await
        }
    }
}

/// CONNECT host:port: refuse, tunnel untouched, or intercept the TLS inside.
fn connect(req: Request<Incoming>, peer: SocketAddr, ctx: ProxyContext) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return bad_request("CONNECT needs host:port");
    };
    let name = host_without_port(authority.host());
    let Some(port) = authority.port_u16() else {
        return bad_request("CONNECT needs host:port");
    };
    if let Some(secret) = crate::secrets::scan::in_name(&ctx.secrets, &name) {
        let reason = format!(
            "{}: placeholder of {secret} in the CONNECT host",
            crate::secrets::scan::EXFILTRATION
        );
        return refused(&ctx, &name, port, "CONNECT", "", &reason);
    }
    let verdict = ctx.policy.connection(&name, port);
    if let ConnectionVerdict::Refuse { reason } = &verdict {
        return refused(&ctx, &name, port, "CONNECT", "", reason);
    }
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let io = TokioIo::new(upgraded);
        match verdict {
            ConnectionVerdict::Refuse { .. } => {}
            ConnectionVerdict::PassThrough { host } => {
                tunnel::pass_through(io, &ctx, &name, port, host).await;
            }
            ConnectionVerdict::Intercept { host } => {
                ctx.record_interception(&name, port, host);
                let conn = Conn {
                    name,
                    port,
                    tls: true,
                    host,
                    via: Via::Explicit,
                    peer,
                };
                intercept::intercept(io, conn, ctx).await;
            }
        }
    });
    Response::new(proxy_http::full(bytes::Bytes::new()))
}
