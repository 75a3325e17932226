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
    http as proxy_http, intercept, pipeline,
    prefixed::Prefixed,
    refusal::{self, Refusal},
    sniff::{self, FirstBytes, host_without_port},
    tunnel,
    upstream::Body,
};
use crate::{
    decision::{Cause, Decision, Layer},
    policy::ConnectionVerdict,
};

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A tunnel that says nothing we can classify within this is dropped.
const SNIFF_DEADLINE: Duration = Duration::from_secs(10);

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
                    Cause::NotFromRun,
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
    refusal::json_response(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"error": "bad proxy request", "reason": reason}),
    )
}

/// Records a connection-level refusal and answers it.
fn refused(
    ctx: &ProxyContext,
    cause: Cause,
    name: &str,
    port: u16,
    method: &str,
    path: &str,
    reason: &str,
) -> Response<Body> {
    let d = Decision::new(Layer::Connection, cause, reason)
        .host(name)
        .port(port)
        .request(method, path);
    ctx.sink.record(&d);
    Refusal::new(cause, reason).response(&d, &ctx.run_id)
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, ctx: ProxyContext) -> Response<Body> {
    let ctx = ctx.current();
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
    match ctx.connection(&host, port) {
        ConnectionVerdict::Refuse { reason } => refused(
            &ctx,
            Cause::NotInPolicy,
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
            pipeline::handle(req, &conn, &ctx).await
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
        return refused(
            &ctx,
            Cause::Exfiltration,
            &name,
            port,
            "CONNECT",
            "",
            &reason,
        );
    }
    // A raw TCP destination through the proxy: relayed as the transparent
    // path relays it, watched for placeholders.
    if let Some(rule) = ctx.policy.tcp_rule(&name, port) {
        let label = format!("tcp {}:{}", rule.host, rule.port);
        let upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            let upstream = match crate::policy::parse_ip(&name) {
                Some(ip) => tunnel::TcpUpstream::Address(ip),
                None => tunnel::TcpUpstream::Name(name.clone()),
            };
            tunnel::relay_tcp(TokioIo::new(upgraded), port, &name, label, upstream, &ctx).await;
        });
        return Response::new(refusal::full(bytes::Bytes::new()));
    }
    let verdict = ctx.connection(&name, port);
    if let ConnectionVerdict::Refuse { reason } = &verdict {
        return refused(&ctx, Cause::NotInPolicy, &name, port, "CONNECT", "", reason);
    }
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        // What the tunnel speaks decides how it is handled, as on the
        // transparent path: TLS by its server name, plaintext HTTP parsed.
        let (first, seen) = sniff::read_first(&mut io, SNIFF_DEADLINE).await;
        let io = Prefixed::new(seen, io);
        let host = match verdict {
            ConnectionVerdict::Refuse { .. } => return,
            ConnectionVerdict::PassThrough { host } | ConnectionVerdict::Intercept { host } => host,
        };
        let pass_through = matches!(verdict, ConnectionVerdict::PassThrough { .. });
        match first {
            FirstBytes::Tls { sni: Some(sni) }
                if crate::secrets::scan::in_name(&ctx.secrets, &sni).is_some() =>
            {
                let secret = crate::secrets::scan::in_name(&ctx.secrets, &sni).unwrap_or_default();
                ctx.sink.record(
                    &Decision::new(
                        Layer::Connection,
                        Cause::Exfiltration,
                        format!(
                            "{}: placeholder of {secret} in the TLS server name inside a CONNECT tunnel to {name}",
                            crate::secrets::scan::EXFILTRATION
                        ),
                    )
                    .host(&name)
                    .port(port),
                );
            }
            FirstBytes::Tls { sni: Some(sni) } if sni != name => {
                // A CDN routes by SNI: another name inside an allowed
                // tunnel would be domain fronting.
                ctx.sink.record(
                    &Decision::new(
                        Layer::Connection,
                        Cause::NameMismatch,
                        format!("TLS server name {sni} inside a CONNECT tunnel to {name}"),
                    )
                    .host(&name)
                    .port(port),
                );
                let mut io = io;
                let _ =
                    tokio::io::AsyncWriteExt::write_all(&mut io, &sniff::TLS_ACCESS_DENIED).await;
            }
            FirstBytes::Tls { .. } if pass_through => {
                tunnel::pass_through(io, &ctx, &name, port, host).await;
            }
            FirstBytes::Tls { .. } | FirstBytes::Http { .. } => {
                let tls = matches!(first, FirstBytes::Tls { .. });
                ctx.record_interception(&name, port, host);
                let conn = Conn {
                    name,
                    port,
                    tls,
                    host,
                    via: Via::Explicit,
                    peer,
                };
                if tls {
                    intercept::intercept(io, conn, ctx).await;
                } else {
                    proxy_http::serve(io, std::sync::Arc::new(conn), ctx).await;
                }
            }
            FirstBytes::Other => {
                ctx.sink.record(
                    &Decision::new(
                        Layer::Connection,
                        Cause::UnknownProtocol,
                        "CONNECT tunnel that speaks neither TLS nor HTTP (raw TCP needs a [[tcp]] rule)",
                    )
                    .host(&name)
                    .port(port),
                );
            }
        }
    });
    Response::new(refusal::full(bytes::Bytes::new()))
}
