//! Relaying a connection the policy allows as a whole: passed-through TLS
//! (CONNECT or transparent) and `[[tcp]]` destinations. The decision's audit
//! row is committed before a byte goes upstream; the bytes each way are
//! written onto it when the connection ends.

use std::time::Instant;

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{context::ProxyContext, dial, relay};
use crate::{
    audit::Outcome,
    decision::{Decision, Layer, Verdict},
};

/// Commits `allow`, relays `client` <-> `upstream`, records the traffic.
pub async fn relay_allowed<IO>(client: IO, upstream: TcpStream, ctx: &ProxyContext, allow: Decision)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let id = match ctx.sink.commit(&allow).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(
                "not relaying {}: the audit log cannot be written: {e}",
                allow.destination()
            );
            return;
        }
    };
    let started = Instant::now();
    let moved = relay::relay(client, upstream).await.unwrap_or_default();
    ctx.sink.complete(
        id,
        Outcome {
            bytes_up: Some(moved.to_upstream),
            bytes_down: Some(moved.to_client),
            latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            ..Outcome::default()
        },
    );
}

/// A whole-host allow: dial `name` and relay untouched (TLS stays end to end).
pub async fn pass_through<IO>(client: IO, ctx: &ProxyContext, name: &str, port: u16, host: usize)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let rule = format!(
        "host {}",
        ctx.policy.hosts.get(host).map_or("?", |h| h.name.as_str())
    );
    match dial::dial(&ctx.resolver, name, port).await {
        Ok(upstream) => {
            let allow = Decision::new(
                Layer::Connection,
                Verdict::Allow,
                "passed through without interception",
            )
            .host(name)
            .port(port)
            .rule(rule);
            relay_allowed(client, upstream, ctx, allow).await;
        }
        Err(e) => ctx.sink.record(
            &Decision::new(
                Layer::Connection,
                Verdict::Deny,
                format!("upstream unreachable: {e}"),
            )
            .host(name)
            .port(port)
            .rule(rule),
        ),
    }
}
