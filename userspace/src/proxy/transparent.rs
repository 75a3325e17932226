//! The transparent listener: every TCP connection the kernel redirected from
//! the agent arrives here. The original destination comes from the kernel's
//! table; the decision from the policy; the upstream is dialed by the name
//! the policy gives, never blindly to whatever address the agent dialed.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};

use crate::{
    decision::{Decision, DecisionSink, Layer, Verdict},
    dns::Resolver,
    kernel::origdst::OrigDstTable,
    policy::Policy,
};

use super::relay;

/// How long to wait for the kernel's entry for a just-accepted connection
/// (it is written before the client's final ACK, so this is a safety margin).
const ORIGDST_RETRIES: u32 = 5;
/// Connect timeout towards an upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection handler shares.
#[derive(Clone)]
pub struct ProxyContext {
    pub policy: Arc<Policy>,
    pub origdst: Arc<OrigDstTable>,
    pub resolver: Arc<Resolver>,
    pub sink: DecisionSink,
}

/// Accepts redirected connections until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: ProxyContext) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
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

async fn original_destination(ctx: &ProxyContext, peer: SocketAddr) -> Option<SocketAddr> {
    for attempt in 0..ORIGDST_RETRIES {
        if let Some(dst) = ctx.origdst.lookup(peer) {
            return Some(dst);
        }
        tokio::time::sleep(Duration::from_millis(1 << attempt)).await;
    }
    None
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
    match decide_tcp(&ctx, dst).await {
        Ok((rule, upstream_addrs)) => {
            let upstream = match connect_any(&upstream_addrs, dst.port()).await {
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
        Err(reason) => {
            ctx.sink.record(
                &Decision::new(Layer::Connection, Verdict::Deny, reason)
                    .host(dst.ip().to_string())
                    .port(dst.port()),
            );
        }
    }
}

/// Finds the `[[tcp]]` rule whose host resolves to the dialed address on the
/// dialed port. Returns the rule and the addresses to dial (the rule's name's).
async fn decide_tcp(ctx: &ProxyContext, dst: SocketAddr) -> Result<(String, Vec<IpAddr>), String> {
    for rule in ctx.policy.tcp.iter().filter(|r| r.port == dst.port()) {
        let Ok(addrs) = ctx.resolver.lookup(&rule.host).await else {
            continue;
        };
        if addrs.contains(&dst.ip()) {
            // Dial the address the agent chose, which is one of the name's.
            return Ok((format!("tcp {}:{}", rule.host, rule.port), vec![dst.ip()]));
        }
    }
    Err(String::from(
        "destination not allowed by any [[tcp]] rule (default deny)",
    ))
}

async fn connect_any(addrs: &[IpAddr], port: u16) -> std::io::Result<TcpStream> {
    let mut last = None;
    for ip in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((*ip, port))).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to dial")))
}
