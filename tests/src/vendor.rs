//! A fake vendor on a test host: HTTPS (HTTP/1.1 and HTTP/2, with its own
//! test CA) on port 443 and HTTP on port 80, for a few names. It records
//! every request it receives, so tests can prove what did and did not
//! arrive.
//!
//! Endpoints: `.../download?bytes=N` streams N bytes; `POST
//! /v1/payment_intents` behaves like Stripe's (see [`payment_intent`]);
//! every request body is counted; `/v1/echo/...` echoes the credentials it
//! received in other encodings (see the block at the end); everything else
//! answers a JSON echo of the request.

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::{files, netns::TestHost, netns::in_netns};

/// What the vendor saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub host: String,
    pub version: String,
    pub tls: bool,
    pub connection: u64,
    pub body_bytes: u64,
    pub authorization: Option<String>,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Every header, as received.
    pub headers: Vec<(String, String)>,
    /// The first 64 KiB of the body.
    pub body_sample: Vec<u8>,
}

/// The fake vendor. Dropping it stops the servers.
pub struct Vendor {
    /// The vendor's own CA (PEM file), for `--upstream-ca` and pass-through checks.
    pub ca_file: PathBuf,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Names the vendor has certificates for.
pub const NAMES: &[&str] = &[
    "api.vendor.test",
    "other.vendor.test",
    "files.cdn.vendor.test",
    "cdn.vendor.test",
    "open.vendor.test",
    "upload.vendor.test",
    "ws.vendor.test",
    // Real vendors' names, for their own SDKs (resolved here with --resolve).
    "api.stripe.com",
    "api.twilio.com",
    "api.resend.com",
];

/// A name whose TLS offers only HTTP/1.1 (WebSocket upgrades need it).
pub const H1_ONLY: &str = "ws.vendor.test";

type Body = BoxBody<Bytes, Infallible>;

impl Vendor {
    /// Starts the vendor on `host` (ports 443 and 80, both address families).
    pub fn start(host: &TestHost) -> Self {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "fake vendor test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &issuer).expect("cert");
        let ca_file = files::write("vendor-ca.pem", &ca_cert.pem());

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let mut h1 = tls.clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let h1 = Arc::new(h1);
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = Arc::new(tls);

        let (v4, v6) = (host.v4, host.v6);
        let listeners = in_netns(&host.ns, move || {
            let bind = |a: SocketAddr| {
                let l = TcpListener::bind(a).expect("bind vendor");
                l.set_nonblocking(true).expect("nonblocking");
                l
            };
            (
                bind(SocketAddr::from((v4, 443))),
                bind(SocketAddr::from((v6, 443))),
                bind(SocketAddr::from((v4, 80))),
                bind(SocketAddr::from((v6, 80))),
            )
        })
        .join()
        .expect("bind in netns");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicU64::new(0));
        let (t4, t6, p4, p6) = listeners;
        for (l, tls) in [
            (t4, Some((Arc::clone(&tls), Arc::clone(&h1)))),
            (t6, Some((tls, h1))),
            (p4, None),
            (p6, None),
        ] {
            let seen = Arc::clone(&seen);
            let conns = Arc::clone(&conns);
            runtime.spawn(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    let id = conns.fetch_add(1, Ordering::SeqCst);
                    let seen = Arc::clone(&seen);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            Some((cfg, h1)) => {
                                let lazy = tokio_rustls::LazyConfigAcceptor::new(
                                    rustls::server::Acceptor::default(),
                                    s,
                                );
                                let Ok(start) = lazy.await else {
                                    return;
                                };
                                let only_h1 = start.client_hello().server_name() == Some(H1_ONLY);
                                let cfg = if only_h1 { h1 } else { cfg };
                                let Ok(s) = start.into_stream(cfg).await else {
                                    return;
                                };
                                serve(s, true, id, seen).await;
                            }
                            None => serve(s, false, id, seen).await,
                        }
                    });
                }
            });
        }
        Self {
            ca_file,
            seen,
            runtime: Some(runtime),
        }
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Requests seen for this method and path.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }
}

impl Drop for Vendor {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve<IO>(io: IO, tls: bool, id: u64, seen: Arc<Mutex<Vec<Seen>>>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move { Ok::<_, Infallible>(respond(req, tls, id, &seen).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

async fn respond(
    mut req: Request<Incoming>,
    tls: bool,
    id: u64,
    seen: &Arc<Mutex<Vec<Seen>>>,
) -> Response<Body> {
    if req.uri().path().starts_with("/ws/") {
        return websocket(req, tls, id, Arc::clone(seen));
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let host = req
        .uri()
        .host()
        .map(String::from)
        .or_else(|| {
            req.headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    // A WebSocket-style upgrade the echo endpoints may accept.
    let upgrade = req
        .headers()
        .get("upgrade")
        .is_some()
        .then(|| hyper::upgrade::on(&mut req));
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // Count the body as it streams (never buffered whole).
    let mut body = req.into_body();
    let mut body_bytes = 0u64;
    let mut body_sample = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_bytes += d.len() as u64;
                    let room = (64 * 1024usize).saturating_sub(body_sample.len());
                    body_sample.extend_from_slice(&d[..d.len().min(room)]);
                }
            }
            Err(_) => break,
        }
    }
    let record = Seen {
        method: method.clone(),
        path: path.clone(),
        host: host.clone(),
        version: version.clone(),
        tls,
        connection: id,
        body_bytes,
        authorization: authorization.clone(),
        query: (!query.is_empty()).then(|| query.clone()),
        headers,
        body_sample: body_sample.clone(),
    };
    if let Ok(mut v) = seen.lock() {
        v.push(record);
    }
    if path.ends_with("/download") {
        let n: u64 = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("bytes="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let left = n / chunk.len() as u64;
        let rest = (n % chunk.len() as u64) as usize;
        let mut resp = Response::new(BoxBody::new(Chunks { chunk, left, rest }));
        resp.headers_mut()
            .insert("content-length", n.to_string().parse().expect("header"));
        return resp;
    }
    if method == "POST" && path == "/v1/payment_intents" {
        return payment_intent(&body_sample, seen);
    }
    if let Some(resp) = echo::respond(&path, authorization.as_deref(), &query, upgrade) {
        return resp;
    }
    let body = serde_json::json!({
        "vendor": "fake",
        "method": method,
        "path": path,
        "host": host,
        "version": version,
        "tls": tls,
        "body_bytes": body_bytes,
        // Echoes credentials back, like careless APIs (and error pages) do.
        "authorization": authorization,
        "query": query,
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = if path == "/missing" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    resp
}

// ---- WebSocket endpoints ----

/// `/ws/echo` echoes every message (each received message is recorded as
/// a `Seen` with method `WS` and the message as its body); `/ws/auth`
/// sends back the Authorization header it received, split over three
/// frames, then closes.
fn websocket(
    req: Request<Incoming>,
    tls: bool,
    id: u64,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<Body> {
    use crate::ws;
    use tokio::io::AsyncWriteExt as _;
    let path = req.uri().path().to_string();
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(ws::accept_key)
    else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let extensions = req
        .headers()
        .get("sec-websocket-extensions")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let record = move |body: Vec<u8>| Seen {
        method: "WS".into(),
        path: path.clone(),
        host: host.clone(),
        version: String::new(),
        tls,
        connection: id,
        body_bytes: body.len() as u64,
        authorization: Some(authorization.clone()),
        query: None,
        headers: extensions
            .iter()
            .map(|e| ("sec-websocket-extensions".to_string(), e.clone()))
            .collect(),
        body_sample: body,
    };
    let auth_echo = req.uri().path() == "/ws/auth";
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        if auth_echo {
            let value = record(Vec::new())
                .authorization
                .unwrap_or_default()
                .into_bytes();
            let (a, b) = (value.len() / 3, 2 * value.len() / 3);
            let mut out = ws::encode(ws::TEXT, false, None, &value[..a]);
            out.extend(ws::encode(ws::PING, true, None, b"p"));
            out.extend(ws::encode(ws::CONTINUATION, false, None, &value[a..b]));
            out.extend(ws::encode(ws::CONTINUATION, true, None, &value[b..]));
            out.extend(ws::encode(ws::CLOSE, true, None, b""));
            let _ = io.write_all(&out).await;
            return;
        }
        let mut message = Vec::new();
        loop {
            let Ok(frame) = ws::read_frame_async(&mut io).await else {
                return;
            };
            match frame.opcode {
                ws::CLOSE => {
                    let _ = io.write_all(&ws::encode(ws::CLOSE, true, None, b"")).await;
                    return;
                }
                ws::TEXT | ws::CONTINUATION => {
                    message.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let m = std::mem::take(&mut message);
                        if let Ok(mut v) = seen.lock() {
                            v.push(record(m.clone()));
                        }
                        if io
                            .write_all(&ws::encode(ws::TEXT, true, None, &m))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                _ => {}
            }
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("upgrade", "websocket".parse().expect("header"));
    h.insert("connection", "upgrade".parse().expect("header"));
    h.insert("sec-websocket-accept", key.parse().expect("header"));
    resp
}

/// Stripe-shaped: a form-encoded `amount` (minor units) and `currency`
/// create a payment intent, answered as JSON with its `id`, `amount` and
/// `amount_received` (half the amount with `partial=1`). The test card
/// `payment_method=pm_card_declined` is declined with a 402.
fn payment_intent(body: &[u8], seen: &Mutex<Vec<Seen>>) -> Response<Body> {
    let form = String::from_utf8_lossy(body);
    let field = |name: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    let json = |status: StatusCode, v: serde_json::Value| {
        let mut resp = Response::new(full(v.to_string()));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        resp
    };
    if field("payment_method") == "pm_card_declined" {
        return json(
            StatusCode::PAYMENT_REQUIRED,
            serde_json::json!({"error": {"type": "card_error", "code": "card_declined"}}),
        );
    }
    let amount: u64 = field("amount").parse().unwrap_or(0);
    let received = if field("partial") == "1" {
        amount / 2
    } else {
        amount
    };
    let n = seen.lock().map(|v| v.len()).unwrap_or(0);
    json(
        StatusCode::OK,
        serde_json::json!({
            "id": format!("pi_{n:06}"),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": received,
            "currency": field("currency"),
        }),
    )
}

/// A body of `left` copies of `chunk` then `rest` bytes of it, produced as
/// it is read (never buffered whole).
struct Chunks {
    chunk: Bytes,
    left: u64,
    rest: usize,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left > 0 {
            self.left -= 1;
            return std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))));
        }
        if self.rest > 0 {
            let r = self.chunk.slice(..self.rest);
            self.rest = 0;
            return std::task::Poll::Ready(Some(Ok(Frame::data(r))));
        }
        std::task::Poll::Ready(None)
    }
}

// ---------------------------------------------------------------------------
// Echoes in other encodings (issue 11): careless vendors echo the
// credentials they received percent-encoded, base64-encoded, JSON-escaped,
// hex, in response headers, in a 101's headers, or compressed although the
// request asked for no compression. The agent must never see the real key
// in any of them. Written independently of enforcer's own encoders.
// ---------------------------------------------------------------------------
pub mod echo {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use http::{Response, StatusCode};
    use hyper::upgrade::OnUpgrade;
    use std::io::Write as _;

    use super::{Body, full};

    /// What the vendor echoes: the Authorization value, the credentials of
    /// Basic authentication, and every decoded query value.
    fn material(authorization: Option<&str>, query: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(a) = authorization {
            out.push(("authorization".to_string(), a.to_string()));
            if let Some(b) = a.strip_prefix("Basic ")
                && let Ok(d) = STANDARD.decode(b.trim())
            {
                out.push((
                    "basic".to_string(),
                    String::from_utf8_lossy(&d).into_owned(),
                ));
            }
        }
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            out.push((format!("query {k}"), percent_decode(v)));
        }
        out
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && i + 2 < b.len()
                && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
            } else if b[i] == b'+' {
                out.push(b' ');
                i += 1;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Percent-encoding of every byte.
    pub fn pct_all(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    /// Percent-encoding of everything but RFC 3986's unreserved characters.
    pub fn pct_reserved(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    /// application/x-www-form-urlencoded (space as `+`).
    pub fn form(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b' ' => "+".to_string(),
                b if b.is_ascii_alphanumeric() || b"*-._".contains(&b) => (b as char).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect()
    }

    /// JSON string content with every character as `\u00XX`.
    pub fn json_u(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("\\u{:04X}", b)
                } else {
                    format!("\\u{:04x}", b)
                }
            })
            .collect()
    }

    /// JSON string content as PHP's json_encode writes it (`/` as `\/`).
    pub fn json_php(s: &str) -> String {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('/', "\\/")
    }

    /// JSON string content with the HTML-safe escapes of Go, Gson and .NET.
    pub fn json_html(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'<' | b'>' | b'&' | b'=' | b'\'' => format!("\\u{:04x}", b),
                b'+' | b'`' => format!("\\u{:04X}", b),
                b'"' => "\\\"".to_string(),
                b'\\' => "\\\\".to_string(),
                b => (b as char).to_string(),
            })
            .collect()
    }

    pub fn hex(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("{b:02X}")
                } else {
                    format!("{b:02x}")
                }
            })
            .collect()
    }

    /// A JSON document (written by hand: serde_json would escape nothing)
    /// with each value of `material` in every encoding.
    fn encoded(material: &[(String, String)]) -> String {
        let mut doc = String::from("{\"vendor\":\"fake\",\"echoes\":[");
        for (i, (source, s)) in material.iter().enumerate() {
            if i > 0 {
                doc.push(',');
            }
            let b64 = STANDARD.encode(s);
            let mut fields: Vec<(String, String)> = vec![
                ("source".into(), json_php(source)),
                ("plain".into(), json_php(s)),
                ("pct_upper".into(), pct_all(s, true)),
                ("pct_lower".into(), pct_all(s, false)),
                ("pct_reserved_upper".into(), pct_reserved(s, true)),
                ("pct_reserved_lower".into(), pct_reserved(s, false)),
                ("form".into(), form(s)),
                ("b64".into(), b64.clone()),
                ("b64_raw".into(), STANDARD_NO_PAD.encode(s)),
                ("b64url".into(), URL_SAFE.encode(s)),
                ("b64url_raw".into(), URL_SAFE_NO_PAD.encode(s)),
                ("b64_php".into(), json_php(&b64)),
                ("b64_html".into(), json_html(&b64)),
                ("b64_pct".into(), pct_reserved(&b64, true)),
                ("json_u_upper".into(), json_u(s, true)),
                ("json_u_lower".into(), json_u(s, false)),
                ("hex".into(), hex(s, false)),
                ("hex_upper".into(), hex(s, true)),
            ];
            // The value inside a larger blob, at each of base64's three alignments.
            for pad in 1..=3 {
                let blob = format!("{}{s}{}", "<".repeat(pad), ">".repeat(pad));
                fields.push((format!("blob{pad}"), STANDARD.encode(&blob)));
                fields.push((format!("blob{pad}_url"), URL_SAFE_NO_PAD.encode(&blob)));
            }
            doc.push('{');
            for (j, (k, v)) in fields.iter().enumerate() {
                if j > 0 {
                    doc.push(',');
                }
                doc.push_str(&format!("\"{k}\":\"{v}\""));
            }
            doc.push('}');
        }
        doc.push_str("]}");
        doc
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = e.write_all(data);
        e.finish().unwrap_or_default()
    }

    fn json(body: impl Into<bytes::Bytes>) -> Response<Body> {
        let mut resp = Response::new(full(body));
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        resp
    }

    /// `/v1/echo/encoded`: the credentials in every encoding, in the body.
    /// `/v1/echo/gzip`: the same, gzip-compressed whatever the request asked.
    /// `/v1/echo/zstd`: the same, labelled `Content-Encoding: zstd`.
    /// `/v1/echo/headers`: the credentials in response headers.
    /// `/v1/echo/reason`: a 401 whose HTTP/1 reason phrase holds them.
    /// `/v1/echo/upgrade`: a 101 whose headers carry the credentials.
    pub fn respond(
        path: &str,
        authorization: Option<&str>,
        query: &str,
        upgrade: Option<OnUpgrade>,
    ) -> Option<Response<Body>> {
        let m = material(authorization, query);
        match path {
            "/v1/echo/encoded" => Some(json(encoded(&m))),
            "/v1/echo/zstd" => {
                // Labelled with a coding enforcer does not decode (the bytes
                // are the plain echo: whoever ignores the label reads the key).
                let mut resp = json(encoded(&m));
                resp.headers_mut()
                    .insert("content-encoding", "zstd".parse().expect("header"));
                Some(resp)
            }
            "/v1/echo/reason" => {
                let mut resp = json("{}");
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                let reason = format!("Invalid key {}", m.first().map_or("", |(_, s)| s.as_str()));
                if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
                    resp.extensions_mut().insert(r);
                }
                Some(resp)
            }
            "/v1/echo/gzip" => {
                let mut resp = json(gzip(encoded(&m).as_bytes()));
                resp.headers_mut()
                    .insert("content-encoding", "gzip".parse().expect("header"));
                Some(resp)
            }
            "/v1/echo/headers" | "/v1/echo/upgrade" => {
                let mut resp = json("{}");
                for (i, (_, s)) in m.iter().enumerate() {
                    let h = resp.headers_mut();
                    let mut put = |name: String, v: String| {
                        if let (Ok(n), Ok(v)) = (
                            http::HeaderName::from_bytes(name.as_bytes()),
                            http::HeaderValue::from_str(&v),
                        ) {
                            h.append(n, v);
                        }
                    };
                    put(format!("x-echo-{i}"), s.clone());
                    put(format!("x-echo-{i}-b64"), STANDARD.encode(s));
                    put(format!("x-echo-{i}-pct"), pct_all(s, false));
                    put(format!("x-echo-{i}-hex"), hex(s, true));
                }
                if path == "/v1/echo/upgrade" {
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut()
                        .insert("upgrade", "websocket".parse().expect("header"));
                    resp.headers_mut()
                        .insert("connection", "upgrade".parse().expect("header"));
                    // Accept the upgrade, then close it at once.
                    if let Some(u) = upgrade {
                        tokio::spawn(async move {
                            let _ = u.await;
                        });
                    }
                }
                Some(resp)
            }
            _ => None,
        }
    }
}
