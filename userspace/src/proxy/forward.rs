//! Stage 11: an allowed request goes upstream, by the name it was decided
//! on, and its response comes back. The request body is scanned for
//! placeholders of secrets bound elsewhere as it streams; the response has
//! the injected values turned back into placeholders, is read for the
//! call's actual cost as it passes, and settles the call when it ends
//! ([`super::outcome`]). An upstream that fails is answered 502 (504 when
//! it does not answer in time) saying how, and the row says it too.
//! WebSocket upgrades are relayed frame by frame ([`super::websocket`]).

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;

use super::{
    context::{Conn, ProxyContext},
    outcome::{Tracked, Tracking},
    refusal::{Refusal, full},
    upstream::{Body, BoxError, UpstreamError},
    websocket,
};
use crate::{
    audit::{EventId, Failure, Outcome as AuditOutcome},
    decision::{Cause, Decision},
    secrets::{self, inject::Injected, scan},
    spend::Charge,
};

/// Set on a request whose body is watched ([`super::body_watch`]): why it
/// was cut off, once it is.
#[derive(Clone)]
pub struct CutOff(pub std::sync::Arc<std::sync::OnceLock<String>>);

/// Headers that belong to one hop and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers (and those the Connection header names).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Sends `req` upstream and turns the answer into the agent's response.
pub async fn forward(
    mut req: Request<Body>,
    injected: Injected,
    id: Option<EventId>,
    mut charge: Option<Charge>,
    conn: &Conn,
    ctx: &ProxyContext,
    d: &Decision,
) -> Response<Body> {
    let started = Instant::now();
    let bytes_up = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let upgrade = is_websocket(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| String::from("/"), |p| p.as_str().to_string());
    let uri = format!("{}://{}{}", conn.scheme(), conn.authority(), path_and_query);
    let (mut parts, body) = req.into_parts();
    let cut = parts.extensions.remove::<CutOff>();
    let Ok(uri) = uri.parse::<http::Uri>() else {
        return failed(
            ctx,
            id,
            d,
            Failure::Protocol,
            "cannot build the upstream URI".into(),
        );
    };
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if !injected.redact.is_empty() || charge.as_ref().is_some_and(Charge::reads_response) {
        // Compressed responses could hide an echoed key from redaction, or
        // the actual cost from the proxy.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    if let Some(v) = upgrade_value.filter(|_| upgrade) {
        // Compressed frames could not be scanned: offer no extension.
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        parts.headers.insert(header::UPGRADE, v);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let (body, leaked) = match scan::ScanBody::wrap(body, &ctx.secrets, &ctx.policy, &conn.name) {
        Ok((scanned, leaked)) => (scanned.boxed(), Some(leaked)),
        Err(body) => (body, None),
    };
    if let Some(c) = charge.as_mut() {
        c.mark_sent();
    }
    let resp = match ctx.upstream.send(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(reason) = cut.as_ref().and_then(|c| c.0.get()) {
                // Released: the vendor got an incomplete request.
                if let Some(c) = charge {
                    c.release().await;
                }
                let mut refused = d.clone();
                refused.set_cause(Cause::Ambiguous, reason.clone());
                ctx.sink.complete(
                    id,
                    AuditOutcome {
                        detail: Some(format!("cut off: {reason}")),
                        ..AuditOutcome::default()
                    },
                );
                ctx.sink.record(&refused);
                return Refusal::new(Cause::Ambiguous, reason.clone())
                    .response(&refused, &ctx.run_id);
            }
            let leaked = leaked.as_ref().and_then(|l| l.get()).cloned();
            return upstream_failed(e, leaked, charge, id, conn, ctx, d).await;
        }
    };
    let mut resp = resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        // Headers only: a 101 has no body.
        return match secrets::redact::response(&mut parts, full(Bytes::new()), &injected.redact) {
            Ok(body) => {
                relay_websocket(
                    client_upgrade,
                    upstream_upgrade,
                    conn,
                    ctx,
                    &injected,
                    id,
                    d,
                );
                Response::from_parts(parts, body)
            }
            Err(e) => unscannable(ctx, id, d, &e),
        };
    }
    let (mut parts, body) = resp.into_parts();
    // Real values the upstream echoes (in any encoding, compressed or not)
    // become placeholders; a body that cannot be decoded is not passed on.
    let body = match secrets::redact::response(&mut parts, body, &injected.redact) {
        Ok(body) => body,
        Err(e) => return unscannable(ctx, id, d, &e),
    };
    strip_hop_by_hop(&mut parts.headers);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let tracking = Tracking {
        sink: ctx.sink.clone(),
        id,
        status: parts.status,
        started,
        bytes_up,
        charge,
        decision: d.clone(),
    };
    Response::from_parts(
        parts,
        Tracked::new(body, tracking, content_type.as_deref()).boxed(),
    )
}

/// How an upstream request failed, for the row and the agent, read from
/// the error's types (the DNS failure, rustls' error, hyper's and I/O
/// kinds), not its words.
fn classify(e: &UpstreamError) -> (Failure, StatusCode) {
    let r = match e {
        UpstreamError::Timeout(_) => return (Failure::Timeout, StatusCode::GATEWAY_TIMEOUT),
        UpstreamError::Request(r) => r,
    };
    if let Some(dns) = super::dial::dns_failure(r) {
        let status = if dns.is_timeout() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        return (Failure::Dns, status);
    }
    let chain = || {
        std::iter::successors(Some(r as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
    };
    if chain().any(|e| e.downcast_ref::<rustls::Error>().is_some()) {
        return (Failure::Tls, StatusCode::BAD_GATEWAY);
    }
    if r.is_connect() {
        return (Failure::Connect, StatusCode::BAD_GATEWAY);
    }
    let reset = chain().any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_incomplete_message() || h.is_closed() || h.is_canceled())
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                )
            })
    });
    if reset {
        (Failure::ResetBeforeHeaders, StatusCode::BAD_GATEWAY)
    } else {
        (Failure::Protocol, StatusCode::BAD_GATEWAY)
    }
}

/// Every message down an error's source chain, lower case.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out.to_ascii_lowercase()
}

/// The answer when the upstream request failed: a refusal if the body
/// carried a foreign placeholder (cut off before it left), else 502/504
/// saying how. A charge is released when the request never left, and
/// otherwise committed: the vendor may have acted on the call.
async fn upstream_failed(
    e: UpstreamError,
    leaked: Option<String>,
    charge: Option<Charge>,
    id: Option<EventId>,
    conn: &Conn,
    ctx: &ProxyContext,
    d: &Decision,
) -> Response<Body> {
    let (failure, status) = classify(&e);
    let never_sent =
        matches!(failure, Failure::Dns | Failure::Connect | Failure::Tls) || leaked.is_some();
    let settled = match charge {
        Some(c) if never_sent => Some(c.release().await),
        Some(c) => Some(c.commit(None, None).await),
        None => None,
    };
    if let Some(secret) = leaked {
        let reason = format!(
            "{}: placeholder of {secret} in the body of a request to {} (cut off before it left)",
            scan::EXFILTRATION,
            conn.name
        );
        ctx.sink.complete(
            id,
            AuditOutcome {
                detail: Some(String::from("cut off: the body carried a placeholder")),
                ..AuditOutcome::default()
            },
        );
        let mut refused = d.clone();
        refused.set_cause(Cause::Exfiltration, reason.clone());
        ctx.sink.record(&refused);
        return Refusal::new(Cause::Exfiltration, reason).response(&refused, &ctx.run_id);
    }
    if let Some(s) = &settled {
        ctx.sink.complete(
            id,
            AuditOutcome {
                cost_usd: Some(s.cost_usd),
                ..AuditOutcome::default()
            },
        );
    }
    let detail = match &e {
        UpstreamError::Timeout(t) => format!(
            "{} did not send response headers within {}s (--upstream-timeout)",
            conn.name,
            t.as_secs()
        ),
        UpstreamError::Request(r) => match super::dial::dns_failure(r) {
            // Said without the resolver's address (the agent sees it).
            Some(dns) => dns.agent_text(),
            None => format!("{}: {}", conn.name, error_chain(r)),
        },
    };
    let resp = failed(ctx, id, d, failure, detail);
    let mut resp = resp;
    *resp.status_mut() = status;
    resp
}

/// The answer when a response that must be redacted cannot be read: the
/// vendor's answer is not passed on (the request did reach it).
fn unscannable(
    ctx: &ProxyContext,
    id: Option<EventId>,
    d: &Decision,
    e: &secrets::redact::Unscannable,
) -> Response<Body> {
    let resp = failed(ctx, id, d, Failure::Unscannable, e.to_string());
    let (mut parts, _) = resp.into_parts();
    let mut shown = d.clone();
    shown.set_cause(Cause::UpstreamFailed, e.to_string());
    let body = Refusal::new(Cause::UpstreamFailed, e.to_string())
        .field("failure", Failure::Unscannable.as_str())
        .field("encoding", e.encoding())
        .response(&shown, &ctx.run_id)
        .into_body();
    parts.status = StatusCode::BAD_GATEWAY;
    Response::from_parts(parts, body)
}

/// Records an upstream failure on the request's row and on stderr, and
/// answers the agent.
fn failed(
    ctx: &ProxyContext,
    id: Option<EventId>,
    d: &Decision,
    failure: Failure,
    detail: String,
) -> Response<Body> {
    ctx.sink.complete(
        id,
        AuditOutcome {
            failure: Some(failure),
            detail: Some(format!("{}: {detail}", failure.as_str())),
            ..AuditOutcome::default()
        },
    );
    let mut shown = d.clone();
    shown.set_cause(
        Cause::UpstreamFailed,
        format!("{detail} ({})", failure.as_str()),
    );
    ctx.sink.log(&shown);
    Refusal::new(Cause::UpstreamFailed, detail)
        .field("failure", failure.as_str())
        .response(&shown, &ctx.run_id)
}

/// Relays a WebSocket once both sides have switched protocols.
fn relay_websocket(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    conn: &Conn,
    ctx: &ProxyContext,
    injected: &Injected,
    id: Option<EventId>,
    d: &Decision,
) {
    let guards = websocket_guards(conn, ctx, injected);
    let (ctx, conn, d) = (ctx.clone(), conn.clone(), d.clone());
    tokio::spawn(async move {
        let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
            return;
        };
        let (c, u) = (TokioIo::new(c), TokioIo::new(u));
        let (moved, result) = if guards.is_empty() {
            let (mut c, mut u) = (c, u);
            let r = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            let (up, down) = r.unwrap_or_default();
            (
                websocket::Moved {
                    to_upstream: up,
                    to_client: down,
                },
                Ok(()),
            )
        } else {
            websocket::relay(c, u, &guards).await
        };
        ctx.sink.complete(
            id,
            AuditOutcome {
                status: Some(101),
                bytes_up: Some(moved.to_upstream),
                bytes_down: Some(moved.to_client),
                ..AuditOutcome::default()
            },
        );
        if let Err(e) = result {
            let mut refused = d;
            match &e {
                websocket::WsError::Placeholder(secret) => refused.set_cause(
                    Cause::Exfiltration,
                    format!(
                        "{}: placeholder of {secret} in a WebSocket frame to {} (connection closed)",
                        scan::EXFILTRATION,
                        conn.name
                    ),
                ),
                _ => refused.set_cause(Cause::NotInPolicy, format!("WebSocket closed: {e}")),
            }
            ctx.sink.record(&refused);
        }
    });
}

/// What a WebSocket on this connection must be watched for: placeholders of
/// secrets bound to other hosts (agent to vendor), and the real values
/// injected into the upgrade request (vendor to agent).
fn websocket_guards(conn: &Conn, ctx: &ProxyContext, injected: &Injected) -> websocket::Guards {
    let foreign = ctx
        .secrets
        .iter()
        .filter(|s| {
            ctx.policy
                .secrets
                .get(s.spec)
                .is_none_or(|spec| !spec.matches_host(&conn.name))
        })
        .map(|s| (s.name.clone(), s.placeholder.as_bytes().to_vec()))
        .collect();
    websocket::Guards {
        foreign,
        redact: injected.redact.clone(),
    }
}
