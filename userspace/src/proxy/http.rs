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
    sniff::host_without_port,
    upstream::Body,
};
use crate::{
    decision::{Decision, Layer, Verdict},
    policy::Action,
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

fn record(
    ctx: &ProxyContext,
    conn: &Conn,
    verdict: Verdict,
    method: &str,
    path: &str,
    rule: Option<&str>,
    reason: &str,
) {
    let mut d = Decision::new(Layer::Request, verdict, reason)
        .host(conn.name.clone())
        .port(conn.port)
        .request(method, path);
    if let Some(r) = rule {
        d = d.rule(r);
    }
    ctx.sink.record(&d);
}

/// Most of a refused request's body that is read and thrown away so the
/// connection stays usable; past this, the connection is closed instead.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Reads and discards (at most DRAIN_LIMIT of) a refused request's body:
/// HTTP/1.1 cannot reuse a connection whose request body was left unread.
async fn drain(body: Incoming) {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::Limited::new(body, DRAIN_LIMIT).collect(),
    )
    .await;
}

/// Decides one request and forwards it if allowed.
pub async fn handle(req: Request<Incoming>, conn: &Conn, ctx: &ProxyContext) -> Response<Body> {
    if let Some(refused) = decide(&req, conn, ctx) {
        drain(req.into_body()).await;
        return refused;
    }
    forward(req, conn, ctx).await
}

/// The policy's answer for one request: Some(refusal), or None to forward.
fn decide(req: &Request<Incoming>, conn: &Conn, ctx: &ProxyContext) -> Option<Response<Body>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    if let Some(host) = request_host(req)
        && host != conn.name
    {
        let reason = format!(
            "Host {host} does not match the server name {} this connection was opened for (domain fronting is refused)",
            conn.name
        );
        record(ctx, conn, Verdict::Deny, &method, &path, None, &reason);
        return Some(refusal(ctx, conn, &method, &path, None, &reason));
    }
    let Some(host) = ctx.policy.hosts.get(conn.host) else {
        return Some(refusal(
            ctx,
            conn,
            &method,
            &path,
            None,
            "no policy entry for this host",
        ));
    };
    let verdict = host.decide(&method, &path);
    let rule = verdict.rule.as_ref().map(|r| r.description.clone());
    match verdict.action {
        Action::Allow => {}
        Action::Deny => {
            record(
                ctx,
                conn,
                Verdict::Deny,
                &method,
                &path,
                rule.as_deref(),
                &verdict.reason,
            );
            return Some(refusal(
                ctx,
                conn,
                &method,
                &path,
                rule.as_deref(),
                &verdict.reason,
            ));
        }
        Action::Ask => {
            let reason = "approval required: this rule asks a human, and no approver is available";
            record(
                ctx,
                conn,
                Verdict::Ask,
                &method,
                &path,
                rule.as_deref(),
                reason,
            );
            return Some(refusal(ctx, conn, &method, &path, rule.as_deref(), reason));
        }
    }
    record(
        ctx,
        conn,
        Verdict::Allow,
        &method,
        &path,
        rule.as_deref(),
        &verdict.reason,
    );
    None
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

/// Forwards an allowed request to `conn`'s upstream, by name.
pub async fn forward(
    mut req: Request<Incoming>,
    conn: &Conn,
    ctx: &ProxyContext,
) -> Response<Body> {
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
    if let Some(v) = upgrade_value.filter(|_| upgrade) {
        parts.headers.insert(header::UPGRADE, v);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let body = body
        .map_err(|e| Box::new(e) as super::upstream::BoxError)
        .boxed();
    let upstream_req = Request::from_parts(parts, body);
    let mut resp = match ctx.upstream.send(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            let reason = e.to_string();
            tracing::debug!("upstream error for {} {method} {path}: {reason}", conn.name);
            return json_response(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({
                    "error": "upstream request failed",
                    "run": &*ctx.run_id,
                    "host": conn.name,
                    "reason": reason,
                }),
            );
        }
    };
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
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(
        parts,
        body.map_err(|e| Box::new(e) as super::upstream::BoxError)
            .boxed(),
    )
}
