//! The per-request boundary for intercepted connections: the Host must be
//! the name the connection was decided on, the method and path must pass the
//! host's rules, and only then is the request forwarded upstream (bodies
//! streamed both ways, WebSocket upgrades relayed). A refused request gets a
//! 403 with a JSON body and the connection stays usable.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    context::{Conn, ProxyContext},
    count::CountBody,
    gate::{self, Admitted, Charge, Settled},
    sniff::host_without_port,
    upstream::{Body, BoxError, UpstreamError},
};
use crate::{
    approval,
    audit::{EventId, Outcome as AuditOutcome},
    decision::{Decision, Layer, Verdict},
    policy::Action,
    secrets::{self, inject::Injected, scan},
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
        async move { Ok::<_, std::convert::Infallible>(handle(req, &conn, &ctx).await) }
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

/// A JSON error response.
pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        HeaderName::from_static("x-enforcer"),
        HeaderValue::from_static("refused"),
    );
    resp
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The 403 every refused request gets.
pub fn refusal(
    ctx: &ProxyContext,
    conn: &Conn,
    method: &str,
    path: &str,
    rule: Option<&str>,
    reason: &str,
) -> Response<Body> {
    json_response(
        StatusCode::FORBIDDEN,
        serde_json::json!({
            "error": "request refused by enforcer policy",
            "run": &*ctx.run_id,
            "host": conn.name,
            "port": conn.port,
            "method": method,
            "path": path,
            "rule": rule,
            "reason": reason,
        }),
    )
}

/// The host the request says it is for: `:authority` (HTTP/2, absolute
/// form) or the Host header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(h) = req.uri().host() {
        return Some(host_without_port(h));
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(host_without_port)
}

fn decision(
    conn: &Conn,
    verdict: Verdict,
    method: &str,
    target: &str,
    outcome: &Outcome,
) -> Decision {
    let mut d = Decision::new(Layer::Request, verdict, outcome.reason.clone())
        .host(conn.name.clone())
        .port(conn.port)
        .request(method, target);
    if let Some(r) = &outcome.rule {
        d = d.rule(r.clone());
    }
    d.secrets = outcome.secrets.clone();
    d.approver = outcome.approver.clone();
    d.decided_ms = outcome.decided_ms;
    d.reserved_usd = outcome.reserved_usd;
    d
}

fn record(
    ctx: &ProxyContext,
    conn: &Conn,
    verdict: Verdict,
    method: &str,
    target: &str,
    outcome: &Outcome,
) {
    ctx.sink
        .record(&decision(conn, verdict, method, target, outcome));
}

/// The answer when an allowed request cannot be audited: it does not go out.
fn audit_unavailable(
    ctx: &ProxyContext,
    conn: &Conn,
    e: &crate::audit::AuditError,
) -> Response<Body> {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({
            "error": "request refused: the audit log cannot be written, so nothing is forwarded",
            "run": &*ctx.run_id,
            "host": conn.name,
            "reason": e.to_string(),
        }),
    )
}

/// Most of a refused request's body that is read and thrown away so the
/// connection stays usable; past this, the connection is closed instead.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Reads and discards (at most DRAIN_LIMIT of) a refused request's body:
/// HTTP/1.1 cannot reuse a connection whose request body was left unread.
async fn drain(mut body: Body) {
    let read = async {
        let mut seen = 0usize;
        while seen <= DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
}

/// What was decided about one request.
struct Outcome {
    verdict: Verdict,
    rule: Option<String>,
    reason: String,
    /// Names of the secrets injected (allowed requests).
    secrets: Vec<String>,
    /// Who answered an `ask`, and how long it took.
    approver: Option<String>,
    decided_ms: Option<f64>,
    /// What was reserved under the spend caps.
    reserved_usd: Option<f64>,
}

impl Outcome {
    fn refused(verdict: Verdict, rule: Option<String>, reason: impl Into<String>) -> Self {
        Self {
            verdict,
            rule,
            reason: reason.into(),
            secrets: Vec::new(),
            approver: None,
            decided_ms: None,
            reserved_usd: None,
        }
    }
}

/// Decides one request and forwards it if allowed.
pub async fn handle(req: Request<Incoming>, conn: &Conn, ctx: &ProxyContext) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or(path.as_str(), |p| p.as_str())
        .to_string();
    let at = Target {
        method: &method,
        path: &path,
        target: &target,
    };
    let req = req.map(box_incoming);
    let passed = match check(&req, conn, ctx) {
        Ok(p) => p,
        Err(outcome) => return refuse(ctx, conn, &at, *outcome, req).await,
    };
    let Admitted { req, charge } = match gate::admit(req, conn, ctx, passed.rule_index).await {
        Ok(a) => a,
        Err((stop, req)) => {
            let outcome = Outcome::refused(Verdict::Deny, passed.rule.clone(), stop.reason());
            record(ctx, conn, Verdict::Deny, &method, &target, &outcome);
            if let Some(req) = req {
                drain(req.into_body()).await;
            }
            return stop.response(ctx, conn, &method, &path);
        }
    };
    let mut outcome = Outcome {
        verdict: Verdict::Allow,
        rule: passed.rule.clone(),
        reason: passed.reason.clone(),
        secrets: Vec::new(),
        approver: None,
        decided_ms: None,
        reserved_usd: charge.as_ref().map(Charge::reserved_usd),
    };
    let mut req = req;
    if passed.ask {
        let asked = std::time::Instant::now();
        let cost = charge.as_ref().map(Charge::describe);
        let approval = ask(&req, conn, ctx, &passed, cost).await;
        // The row's verdict is what the human decided; `approver` marks it asked.
        outcome.verdict = if approval.approved() {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        outcome.reason = approval.reason();
        outcome.approver = Some(approval.approver().to_string());
        outcome.decided_ms = Some(asked.elapsed().as_secs_f64() * 1000.0);
        if !approval.approved() {
            // Dropping the charge releases its reservation.
            return refuse(ctx, conn, &at, outcome, req).await;
        }
    }
    let injected = match inject_secrets(&mut req, conn, ctx) {
        Ok(i) => i,
        Err(reason) => {
            outcome.verdict = Verdict::Deny;
            outcome.reason = reason;
            return refuse(ctx, conn, &at, outcome, req).await;
        }
    };
    outcome.secrets = injected.names.clone();
    // Nothing goes upstream before its audit row is committed.
    let id = match ctx
        .sink
        .commit(&decision(conn, outcome.verdict, &method, &target, &outcome))
        .await
    {
        Ok(id) => id,
        Err(e) => {
            drain(req.into_body()).await;
            return audit_unavailable(ctx, conn, &e);
        }
    };
    forward(req, injected, id, charge, conn, ctx).await
}

/// Where a request was going, for its refusal and audit row.
struct Target<'a> {
    method: &'a str,
    path: &'a str,
    target: &'a str,
}

/// Records a refusal, drains the body (the connection stays usable) and
/// answers 403.
async fn refuse(
    ctx: &ProxyContext,
    conn: &Conn,
    at: &Target<'_>,
    outcome: Outcome,
    req: Request<Body>,
) -> Response<Body> {
    record(ctx, conn, outcome.verdict, at.method, at.target, &outcome);
    drain(req.into_body()).await;
    refusal(
        ctx,
        conn,
        at.method,
        at.path,
        outcome.rule.as_deref(),
        &outcome.reason,
    )
}

/// What the policy said about a request that may go ahead.
struct Passed {
    rule: Option<String>,
    /// Index of the deciding rule in its host (None: whole-host decision).
    rule_index: Option<usize>,
    reason: String,
    /// The rule says a human must approve first.
    ask: bool,
}

/// The checks a request must pass, in order: its Host is the connection's
/// name; it carries no placeholder of a secret bound elsewhere; the host's
/// rules allow it (or ask a human).
fn check<B>(req: &Request<B>, conn: &Conn, ctx: &ProxyContext) -> Result<Passed, Box<Outcome>> {
    let method = req.method().as_str();
    let path = req.uri().path();
    if let Some(host) = request_host(req)
        && host != conn.name
    {
        let reason = format!(
            "Host {host} does not match the server name {} this connection was opened for (domain fronting is refused)",
            conn.name
        );
        return Err(Box::new(Outcome::refused(Verdict::Deny, None, reason)));
    }
    let target = req.uri().path_and_query().map_or(path, |p| p.as_str());
    if let Some(secret) =
        scan::in_head(&ctx.secrets, &ctx.policy, &conn.name, target, req.headers())
    {
        let reason = format!(
            "{}: placeholder of {secret} sent to {}",
            scan::EXFILTRATION,
            conn.name
        );
        return Err(Box::new(Outcome::refused(Verdict::Deny, None, reason)));
    }
    let Some(host) = ctx.policy.hosts.get(conn.host) else {
        return Err(Box::new(Outcome::refused(
            Verdict::Deny,
            None,
            "no policy entry for this host",
        )));
    };
    let verdict = host.decide(method, path);
    let rule = verdict.rule.as_ref().map(|r| r.description.clone());
    let rule_index = verdict.rule.as_ref().map(|r| r.index);
    match verdict.action {
        Action::Deny => Err(Box::new(Outcome::refused(
            Verdict::Deny,
            rule,
            verdict.reason,
        ))),
        action => Ok(Passed {
            rule,
            rule_index,
            reason: verdict.reason,
            ask: action == Action::Ask,
        }),
    }
}

/// Holds the request until a human answers.
async fn ask(
    req: &Request<Body>,
    conn: &Conn,
    ctx: &ProxyContext,
    passed: &Passed,
    cost: Option<String>,
) -> approval::Outcome {
    let secrets = ctx
        .policy
        .secrets_for(&conn.name)
        .filter(|s| scan::carries_placeholder(&ctx.secrets, &s.name, req.uri(), req.headers()))
        .map(|s| s.name.clone())
        .collect();
    let pending = approval::Pending {
        id: 0,
        run_id: ctx.run_id.to_string(),
        host: conn.name.clone(),
        method: req.method().as_str().to_string(),
        path: req.uri().path().to_string(),
        secrets,
        cost,
        rule: passed.rule.clone().unwrap_or_default(),
        expires_in_secs: 0,
    };
    ctx.approvals
        .ask(
            pending,
            (conn.host, passed.rule_index.unwrap_or(usize::MAX)),
        )
        .await
}

/// Swaps placeholders for real values (bound secrets only, live credentials only).
fn inject_secrets(
    req: &mut Request<Body>,
    conn: &Conn,
    ctx: &ProxyContext,
) -> Result<Injected, String> {
    let mut uri = std::mem::take(req.uri_mut());
    let injected = secrets::inject::inject(
        req.headers_mut(),
        &mut uri,
        &conn.name,
        &ctx.policy,
        &ctx.secrets,
    );
    *req.uri_mut() = uri;
    injected.map_err(|not_live| {
        format!(
            "{} ({} not injected)",
            not_live.access.reason(),
            not_live.secret
        )
    })
}

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

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A body as the proxy passes it on.
fn box_incoming(body: Incoming) -> Body {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// Forwards an allowed request to `conn`'s upstream, by name: the body is
/// scanned for foreign placeholders as it streams, real values the upstream
/// echoes are turned back into placeholders, and the call's charge (if its
/// rule has a cost) is settled by the vendor's answer.
async fn forward(
    mut req: Request<Body>,
    injected: Injected,
    id: Option<EventId>,
    mut charge: Option<Charge>,
    conn: &Conn,
    ctx: &ProxyContext,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let bytes_up = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| String::from("/"), |p| p.as_str().to_string());
    let uri = format!("{}://{}{}", conn.scheme(), conn.authority(), path_and_query);
    let (mut parts, body) = req.into_parts();
    let Ok(uri) = uri.parse::<http::Uri>() else {
        return json_response(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "cannot build the upstream URI", "host": conn.name}),
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
        parts.headers.insert(header::UPGRADE, v);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let (body, leaked) = match scan::ScanBody::wrap(body, &ctx.secrets, &ctx.policy, &conn.name) {
        Ok((scanned, leaked)) => (scanned.boxed(), Some(leaked)),
        Err(body) => (body, None),
    };
    let upstream_req = Request::from_parts(parts, body);
    if let Some(c) = charge.as_mut() {
        c.mark_sent();
    }
    let resp = match ctx.upstream.send(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            return upstream_failed(
                e,
                leaked.as_ref().and_then(|l| l.get()),
                charge,
                id,
                conn,
                ctx,
                &Target {
                    method: &method,
                    path: &path,
                    target: &path,
                },
            )
            .await;
        }
    };
    let mut resp = resp.map(box_incoming);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            }
        });
        let (mut parts, _) = resp.into_parts();
        // Headers only: a 101 has no body.
        return match secrets::redact::response(&mut parts, full(Bytes::new()), &injected.redact) {
            Ok(body) => Response::from_parts(parts, body),
            Err(e) => unscannable(conn, &e),
        };
    }
    let (mut parts, mut body) = resp.into_parts();
    let mut settled: Option<Settled> = None;
    if let Some(c) = charge {
        let status = parts.status;
        let failed = status.is_client_error() || status.is_server_error();
        if c.reads_response() && !failed {
            match gate::read_response(body).await {
                Ok(p) => {
                    settled = Some(c.settle(status, p.complete()).await);
                    body = p.into_body();
                }
                Err(e) => {
                    // The vendor accepted the call and then failed to send
                    // its answer: the call counts as spent.
                    settled = Some(c.commit(None).await);
                    complete_cost(ctx, id, settled.as_ref());
                    return json_response(
                        StatusCode::BAD_GATEWAY,
                        serde_json::json!({
                            "error": "upstream response failed",
                            "host": conn.name,
                            "reason": e.to_string(),
                        }),
                    );
                }
            }
        } else {
            settled = Some(c.settle(status, None).await);
        }
    }
    let outcome = AuditOutcome {
        status: Some(parts.status.as_u16()),
        bytes_up,
        latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        cost_usd: settled.as_ref().map(|s| s.cost_usd),
        vendor_txn_id: settled.and_then(|s| s.vendor_txn_id),
        ..AuditOutcome::default()
    };
    // The outcome is written once, with the byte count, when the body ends.
    let body = CountBody::new(body, ctx.sink.clone(), id, outcome).boxed();
    // Real values the upstream echoes (in any encoding, compressed or not)
    // become placeholders; a body that cannot be decoded is not passed on.
    let body = match secrets::redact::response(&mut parts, body, &injected.redact) {
        Ok(body) => body,
        Err(e) => return unscannable(conn, &e),
    };
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// The answer when a response that must be redacted cannot be read.
fn unscannable(conn: &Conn, e: &secrets::redact::Unscannable) -> Response<Body> {
    tracing::warn!("{}: response refused: {e}", conn.name);
    json_response(
        StatusCode::BAD_GATEWAY,
        serde_json::json!({
            "error": "upstream response refused: enforcer cannot scan it for the real credential",
            "host": conn.name,
            "encoding": e.encoding(),
            "reason": e.to_string(),
        }),
    )
}

/// Writes a settled charge onto the request's audit row.
fn complete_cost(ctx: &ProxyContext, id: Option<EventId>, settled: Option<&Settled>) {
    if let Some(s) = settled {
        ctx.sink.complete(
            id,
            AuditOutcome {
                cost_usd: Some(s.cost_usd),
                vendor_txn_id: s.vendor_txn_id.clone(),
                ..AuditOutcome::default()
            },
        );
    }
}

/// The answer when the upstream request failed: a refusal if the body
/// carried a foreign placeholder (cut off before it left), else a 502. A
/// charge is released when the connection never opened, and otherwise
/// committed: the vendor may have acted on the call.
async fn upstream_failed(
    e: UpstreamError,
    leaked: Option<&String>,
    charge: Option<Charge>,
    id: Option<EventId>,
    conn: &Conn,
    ctx: &ProxyContext,
    at: &Target<'_>,
) -> Response<Body> {
    let (method, path) = (at.method, at.path);
    let never_sent = matches!(&e, UpstreamError::Request(r) if r.is_connect()) || leaked.is_some();
    if let Some(c) = charge {
        let settled = if never_sent {
            c.release().await
        } else {
            c.commit(None).await
        };
        complete_cost(ctx, id, Some(&settled));
    }
    if let Some(secret) = leaked {
        let reason = format!(
            "{}: placeholder of {secret} in the body of a request to {} (cut off before it left)",
            scan::EXFILTRATION,
            conn.name
        );
        record(
            ctx,
            conn,
            Verdict::Deny,
            method,
            path,
            &Outcome::refused(Verdict::Deny, None, reason.clone()),
        );
        return refusal(ctx, conn, method, path, None, &reason);
    }
    let reason = e.to_string();
    tracing::debug!("upstream error for {} {method} {path}: {reason}", conn.name);
    json_response(
        StatusCode::BAD_GATEWAY,
        serde_json::json!({
            "error": "upstream request failed",
            "run": &*ctx.run_id,
            "host": conn.name,
            "reason": reason,
        }),
    )
}
