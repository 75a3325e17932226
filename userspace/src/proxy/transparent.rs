//! The transparent listener: every TCP connection the kernel redirected from
//! the agent arrives here. The original destination comes from the kernel's
//! table. `[[tcp]]` destinations are relayed as they are; anything else must
//! speak TLS (decided on its server name) or HTTP (decided on its Host), and
//! is refused, passed through, or intercepted as the policy says. Upstreams
//! are dialed by the decided name, never blindly at the address the agent
//! dialed.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};

use super::{
    context::{Conn, ProxyContext, Via},
    http, intercept,
    refusal::Refusal,
    sniff::{self, FirstBytes},
    tunnel,
};
use crate::{
    decision::{Cause, Decision, Layer},
    dns::names,
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

fn deny(ctx: &ProxyContext, cause: Cause, host: String, port: u16, reason: impl Into<String>) {
    ctx.sink.record(
        &Decision::new(Layer::Connection, cause, reason)
            .host(host)
            .port(port),
    );
}

async fn handle(client: TcpStream, peer: SocketAddr, ctx: ProxyContext) {
    let ctx = ctx.current();
    let Some(dst) = original_destination(&ctx, peer).await else {
        // Not redirected by our programs (or the entry is gone): refuse.
        ctx.sink.record(&Decision::new(
            Layer::Connection,
            Cause::NotFromRun,
            format!("no original destination recorded for client {peer}"),
        ));
        return;
    };
    // The name the enforcer's resolver handed this address out for, if any.
    let resolved = ctx.resolver.names.name_for(dst.ip());
    let shown = resolved.clone().unwrap_or_else(|| dst.ip().to_string());
    if resolved.is_none() && names::is_synthetic(dst.ip()) {
        return deny(
            &ctx,
            Cause::NotInPolicy,
            shown,
            dst.port(),
            "address in the resolver's range that it never handed out",
        );
    }
    if let Some((rule, upstream)) = tcp_rule(&ctx, dst, resolved.as_deref()).await {
        return tunnel::relay_tcp(client, dst.port(), &shown, rule, upstream, &ctx).await;
    }
    // Refuse at once when nothing the client could say would be allowed (no
    // need to wait for a server-first protocol to time out).
    let hopeless = match &resolved {
        Some(name) => matches!(
            ctx.connection(name, dst.port()),
            ConnectionVerdict::Refuse { .. }
        ),
        None => !ctx.observe && !ctx.policy.hosts.iter().any(|h| h.allows_port(dst.port())),
    };
    if hopeless {
        let reason = match &resolved {
            Some(name) => format!("{name} on port {} is not allowed by the policy", dst.port()),
            None => format!("no [[tcp]] rule or [[host]] allows port {}", dst.port()),
        };
        return deny(&ctx, Cause::NotInPolicy, shown, dst.port(), reason);
    }
    let (said, tls) = match sniff::sniff(&client, SNIFF_DEADLINE).await {
        FirstBytes::Tls { sni } => (sni, true),
        FirstBytes::Http { host } => (host, false),
        FirstBytes::Other => {
            let reason = "not TLS or HTTP, and not a [[tcp]] destination (default deny)";
            return deny(&ctx, Cause::UnknownProtocol, shown, dst.port(), reason);
        }
    };
    // A placeholder in the server name or Host is an exfiltration attempt,
    // whatever else is wrong with the name.
    if let Some(said) = &said
        && exfiltration_in_name(&ctx, said, dst.port())
    {
        if tls {
            let mut client = client;
            let _ = client.write_all(&sniff::TLS_ACCESS_DENIED).await;
        }
        return;
    }
    // The client's own name (SNI, Host) must agree with the name it resolved.
    let name = match (said, resolved) {
        (Some(said), Some(resolved)) if said != resolved => {
            let reason = format!("{said} is not the name {resolved} this address was resolved for");
            if tls {
                return refuse_tls(
                    client,
                    &ctx,
                    Cause::NameMismatch,
                    shown,
                    dst.port(),
                    &reason,
                )
                .await;
            }
            return deny(&ctx, Cause::NameMismatch, shown, dst.port(), reason);
        }
        (Some(said), _) => said,
        (None, Some(resolved)) if !tls => resolved,
        (None, Some(resolved)) => {
            // TLS without SNI: only a pass-through can serve it.
            let verdict = ctx.connection(&resolved, dst.port());
            if !matches!(verdict, ConnectionVerdict::PassThrough { .. }) {
                let reason = "TLS without a server name (SNI) cannot be intercepted";
                return refuse_tls(
                    client,
                    &ctx,
                    Cause::NotInPolicy,
                    resolved,
                    dst.port(),
                    reason,
                )
                .await;
            }
            resolved
        }
        (None, None) if tls => {
            let reason = "TLS without a server name (SNI): nothing to decide on";
            return refuse_tls(client, &ctx, Cause::NotInPolicy, shown, dst.port(), reason).await;
        }
        (None, None) => {
            return deny(
                &ctx,
                Cause::NotInPolicy,
                shown,
                dst.port(),
                "HTTP request without a Host header",
            );
        }
    };
    by_name(client, peer, name, dst.port(), tls, ctx).await
}

/// Decides a TLS or HTTP connection on its name and hands it on.
/// Refuses (and records) a name that carries a placeholder.
fn exfiltration_in_name(ctx: &ProxyContext, name: &str, port: u16) -> bool {
    let Some(secret) = crate::secrets::scan::in_name(&ctx.secrets, name) else {
        return false;
    };
    let reason = format!(
        "{}: placeholder of {secret} in the server name",
        crate::secrets::scan::EXFILTRATION
    );
    ctx.sink.record(
        &Decision::new(Layer::Connection, Cause::Exfiltration, reason)
            .host(name)
            .port(port),
    );
    true
}

async fn by_name(
    client: TcpStream,
    peer: SocketAddr,
    name: String,
    port: u16,
    tls: bool,
    ctx: ProxyContext,
) {
    if exfiltration_in_name(&ctx, &name, port) {
        return;
    }
    match ctx.connection(&name, port) {
        ConnectionVerdict::Refuse { reason } => {
            if tls {
                refuse_tls(client, &ctx, Cause::NotInPolicy, name, port, &reason).await;
            } else {
                deny(&ctx, Cause::NotInPolicy, name.clone(), port, reason.clone());
                refuse_http(client, &ctx, name, port, reason).await;
            }
        }
        ConnectionVerdict::PassThrough { host } if tls => {
            tunnel::pass_through(client, &ctx, &name, port, host).await;
        }
        // Plaintext HTTP is always parsed, even to a whole-host allow: it
        // costs little, and its requests are scanned for placeholders.
        ConnectionVerdict::PassThrough { host } | ConnectionVerdict::Intercept { host } => {
            ctx.record_interception(&name, port, host);
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

async fn refuse_tls(
    mut client: TcpStream,
    ctx: &ProxyContext,
    cause: Cause,
    host: String,
    port: u16,
    reason: &str,
) {
    deny(ctx, cause, host, port, reason.to_string());
    let _ = client.write_all(&sniff::TLS_ACCESS_DENIED).await;
    let _ = client.shutdown().await;
}

/// Answers every request on a refused plaintext connection with a 403
/// (the refusal was recorded once, for the connection).
async fn refuse_http(
    client: TcpStream,
    ctx: &ProxyContext,
    host: String,
    port: u16,
    reason: String,
) {
    let run = ctx.run_id.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let d = Decision::new(Layer::Connection, Cause::NotInPolicy, reason.clone())
            .host(host.clone())
            .port(port)
            .request(req.method().as_str(), req.uri().path());
        let resp = Refusal::new(Cause::NotInPolicy, reason.clone()).response(&d, &run);
        async move { Ok::<_, std::convert::Infallible>(resp) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(client), service)
        .await;
}

/// The `[[tcp]]` rule that allows this connection: by the name the resolver
/// handed the address out for, or by a rule whose host (IP literal or name
/// resolved by the enforcer) includes the dialed address.
async fn tcp_rule(
    ctx: &ProxyContext,
    dst: SocketAddr,
    resolved: Option<&str>,
) -> Option<(String, tunnel::TcpUpstream)> {
    if let Some(name) = resolved {
        let rule = ctx.policy.tcp_rule(name, dst.port())?;
        let label = format!("tcp {}:{}", rule.host, rule.port);
        return Some((label, tunnel::TcpUpstream::Name(name.to_string())));
    }
    for rule in ctx.policy.tcp.iter().filter(|r| r.port == dst.port()) {
        let Ok(addrs) = ctx.resolver.lookup(&rule.host).await else {
            continue;
        };
        if addrs.contains(&dst.ip()) {
            let label = format!("tcp {}:{}", rule.host, rule.port);
            return Some((label, tunnel::TcpUpstream::Address(dst.ip())));
        }
    }
    None
}
