//! The transparent listener: every TCP connection the kernel redirected from
//! the agent arrives here. The original destination comes from the kernel's
//! table. `[[tcp]]` destinations are relayed as they are; anything else must
//! speak TLS (decided on its server name) or HTTP (decided on its Host), and
//! is refused, passed through, or intercepted as the policy says. Upstreams
//! are dialed by the decided name, never blindly at the address the agent
//! dialed.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};

use super::{
    context::{Conn, ProxyContext, Via},
    dial, http, intercept, relay,
    sniff::{self, FirstBytes},
};
use crate::{
    decision::{Decision, Layer, Verdict},
    policy::ConnectionVerdict,
};

/// How long to wait for the kernel's entry for a just-accepted connection
/// (it is written before the client's final ACK, so this is a safety margin).
const ORIGDST_RETRIES: u32 = 5;
/// A client that sends nothing we can classify within this is dropped.
const SNIFF_DEADLINE: Duration = Duration::from_secs(10);

/// Accepts redirected connections until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: ProxyContext) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                tokio::spawn(async move { handle(stream, peer, ctx).await });
            }
            Err(e) => {
                tracing::warn!("accept failed on the transparent listener: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The destination the kernel recorded for the run's connection from
/// `peer`; None for connections that do not come from the run.
pub async fn original_destination(ctx: &ProxyContext, peer: SocketAddr) -> Option<SocketAddr> {
    for attempt in 0..ORIGDST_RETRIES {
        if let Some(dst) = ctx.origdst.lookup(peer) {
            return Some(dst);
        }
        tokio::time::sleep(Duration::from_millis(1 << attempt)).await;
    }
    None
}

fn deny(ctx: &ProxyContext, host: String, port: u16, reason: impl Into<String>) {
    ctx.sink.record(
        &Decision::new(Layer::Connection, Verdict::Deny, reason)
            .host(host)
            .port(port),
    );
}

async fn handle(client: TcpStream, peer: SocketAddr, ctx: ProxyContext) {
    let Some(dst) = original_destination(&ctx, peer).await else {
        // Not redirected by our programs (or the entry is gone): refuse.
        ctx.sink.record(&Decision::new(
            Layer::Connection,
            Verdict::Deny,
            format!("no original destination recorded for client {peer}"),
        ));
        return;
    };
    if let Some((rule, addrs)) = tcp_rule(&ctx, dst).await {
        return relay_tcp(client, dst, rule, addrs, &ctx).await;
    }
    match sniff::sniff(&client, SNIFF_DEADLINE).await {
        FirstBytes::Tls { sni: Some(name) } => {
            by_name(client, peer, name, dst.port(), true, ctx).await
        }
        FirstBytes::Http { host: Some(name) } => {
            by_name(client, peer, name, dst.port(), false, ctx).await
        }
        FirstBytes::Tls { sni: None } => {
            refuse_tls(
                client,
                &ctx,
                dst.ip().to_string(),
                dst.port(),
                "TLS without a server name (SNI): nothing to decide on",
            )
            .await;
        }
        FirstBytes::Http { host: None } => {
            deny(
                &ctx,
                dst.ip().to_string(),
                dst.port(),
                "HTTP request without a Host header",
            );
        }
        FirstBytes::Other => {
            deny(
                &ctx,
                dst.ip().to_string(),
                dst.port(),
                "not TLS or HTTP, and not a [[tcp]] destination (default deny)",
            );
        }
    }
}

/// Decides a TLS or HTTP connection on its name and hands it on.
async fn by_name(
    client: TcpStream,
    peer: SocketAddr,
    name: String,
    port: u16,
    tls: bool,
    ctx: ProxyContext,
) {
    match ctx.policy.connection(&name, port) {
        ConnectionVerdict::Refuse { reason } => {
            if tls {
                refuse_tls(client, &ctx, name, port, &reason).await;
            } else {
                deny(&ctx, name.clone(), port, reason.clone());
                refuse_http(client, &ctx, name, port, reason).await;
            }
        }
        ConnectionVerdict::PassThrough { host } => {
            let rule = format!(
                "host {}",
                ctx.policy.hosts.get(host).map_or("?", |h| h.name.as_str())
            );
            pass_through(client, &ctx, name, port, rule).await;
        }
        ConnectionVerdict::Intercept { host } => {
            ctx.sink.record(
                &Decision::new(
                    Layer::Connection,
                    Verdict::Allow,
                    "intercepted: requests are checked one by one",
                )
                .host(name.clone())
                .port(port)
                .rule(format!(
                    "host {}",
                    ctx.policy.hosts.get(host).map_or("?", |h| h.name.as_str())
                )),
            );
            let conn = Conn {
                name,
                port,
                tls,
                host,
                via: Via::Transparent,
                peer,
            };
            if tls {
                intercept::intercept(client, conn, ctx).await;
            } else {
                http::serve(client, Arc::new(conn), ctx).await;
            }
        }
    }
}

/// Relays a whole-host allow untouched (TLS stays end to end).
async fn pass_through(
    client: TcpStream,
    ctx: &ProxyContext,
    name: String,
    port: u16,
    rule: String,
) {
    match dial::dial(&ctx.resolver, &name, port).await {
        Ok(upstream) => {
            ctx.sink.record(
                &Decision::new(
                    Layer::Connection,
                    Verdict::Allow,
                    "passed through without interception",
                )
                .host(name)
                .port(port)
                .rule(rule),
            );
            let _ = relay::relay(client, upstream).await;
        }
        Err(e) => deny(ctx, name, port, format!("upstream unreachable: {e}")),
    }
}

async fn refuse_tls(
    mut client: TcpStream,
    ctx: &ProxyContext,
    host: String,
    port: u16,
    reason: &str,
) {
    deny(ctx, host, port, reason.to_string());
    let _ = client.write_all(&sniff::TLS_ACCESS_DENIED).await;
    let _ = client.shutdown().await;
}

/// Answers every request on a refused plaintext connection with a 403.
async fn refuse_http(
    client: TcpStream,
    ctx: &ProxyContext,
    host: String,
    port: u16,
    reason: String,
) {
    let ctx2 = ctx.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let conn = Conn {
            name: host.clone(),
            port,
            tls: false,
            host: usize::MAX,
            via: Via::Transparent,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let resp = http::refusal(
            &ctx2,
            &conn,
            req.method().as_str(),
            req.uri().path(),
            None,
            &reason,
        );
        async move { Ok::<_, std::convert::Infallible>(resp) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(client), service)
        .await;
}

/// The `[[tcp]]` rule whose host resolves to the dialed address on the
/// dialed port, and the addresses to dial (the rule's name's).
async fn tcp_rule(ctx: &ProxyContext, dst: SocketAddr) -> Option<(String, Vec<IpAddr>)> {
    for rule in ctx.policy.tcp.iter().filter(|r| r.port == dst.port()) {
        let Ok(addrs) = ctx.resolver.lookup(&rule.host).await else {
            continue;
        };
        if addrs.contains(&dst.ip()) {
            // Dial the address the agent chose, which is one of the name's.
            return Some((format!("tcp {}:{}", rule.host, rule.port), vec![dst.ip()]));
        }
    }
    None
}

async fn relay_tcp(
    client: TcpStream,
    dst: SocketAddr,
    rule: String,
    addrs: Vec<IpAddr>,
    ctx: &ProxyContext,
) {
    let upstream = match dial::connect_any(&addrs, dst.port()).await {
        Ok(s) => s,
        Err(e) => {
            ctx.sink.record(
                &Decision::new(
                    Layer::Connection,
                    Verdict::Deny,
                    format!("upstream unreachable: {e}"),
                )
                .host(dst.ip().to_string())
                .port(dst.port())
                .rule(rule),
            );
            return;
        }
    };
    ctx.sink.record(
        &Decision::new(
            Layer::Connection,
            Verdict::Allow,
            "tcp destination allowed by policy",
        )
        .host(dst.ip().to_string())
        .port(dst.port())
        .rule(rule),
    );
    let _ = relay::relay(client, upstream).await;
}
