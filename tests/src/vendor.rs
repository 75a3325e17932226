//! A fake vendor on a test host: HTTPS (HTTP/1.1 and HTTP/2, with its own
//! test CA) on port 443 and HTTP on port 80, for a few names. It records
//! every request it receives, so tests can prove what did and did not
//! arrive.
//!
//! Endpoints: `.../download?bytes=N` streams N bytes; `POST
//! /v1/payment_intents` behaves like Stripe's (see [`payment_intent`]);
//! every request body is counted; everything else answers a JSON echo of
//! the request.

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
];

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
            (t4, Some(Arc::clone(&tls))),
            (t6, Some(tls)),
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
                            Some(cfg) => {
                                let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await
                                else {
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
    req: Request<Incoming>,
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
