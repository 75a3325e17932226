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
    decision::{Cause, Decision, Layer},
};

/// Commits `allow`, relays `client` <-> `upstream`, records the traffic.
/// `watch` lists placeholders (name, value) the client must not send
/// (plain protocols: a `[[tcp]]` destination holds no secret); a client
/// that sends one is cut off, and the attempt recorded.
pub async fn relay_allowed<IO>(
    client: IO,
    upstream: TcpStream,
    ctx: &ProxyContext,
    allow: Decision,
    watch: Vec<(String, Vec<u8>)>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let id = match ctx.sink.commit(&allow).await {
        Ok(id) => id,
        Err(e) => {
            let mut refused = allow.clone();
            refused.set_cause(
                Cause::AuditUnavailable,
                format!("not relayed: the audit log cannot be written: {e}"),
            );
            ctx.sink.record(&refused);
            return;
        }
    };
    let started = Instant::now();
    let moved = match relay::relay(relay::Watched::new(client, watch), upstream).await {
        Ok(moved) => moved,
        Err(e) => {
            if let Some(secret) = relay::PlaceholderSeen::in_error(&e) {
                let reason = format!(
                    "{}: placeholder of {secret} sent to {} (connection closed)",
                    crate::secrets::scan::EXFILTRATION,
                    allow.destination()
                );
                let mut d = Decision::new(Layer::Connection, Cause::Exfiltration, reason);
                d.host = allow.host.clone();
                d.port = allow.port;
                d.rule = allow.rule.clone();
                d.rule_line = allow.rule_line;
                ctx.sink.record(&d);
            }
            relay::Transferred::default()
        }
    };
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
    let entry = ctx.policy.hosts.get(host);
    let rule = format!("host {}", entry.map_or("?", |h| h.name.as_str()));
    let line = entry.map(|h| h.line);
    match dial::dial(&ctx.resolver, name, port).await {
        Ok(upstream) => {
            let allow = Decision::new(
                Layer::Connection,
                Cause::PassedThrough,
                "passed through without interception",
            )
            .host(name)
            .port(port)
            .rule(rule, line);
            // TLS end to end: nothing to watch in the bytes.
            relay_allowed(client, upstream, ctx, allow, Vec::new()).await;
        }
        Err(e) => ctx.sink.record(
            &Decision::new(
                Layer::Connection,
                Cause::UpstreamFailed,
                format!("upstream unreachable: {e}"),
            )
            .host(name)
            .port(port)
            .rule(rule, line),
        ),
    }
}
