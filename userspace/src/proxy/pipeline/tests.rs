//! The request pipeline without root: each stage and the order between
//! them, driven through [`super::handle`] against a real HTTP server on
//! loopback (the "vendor"), with the run's real policy, secrets, spend
//! ledger, approvals and audit writer.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{
    approval::{Answer, ApprovalHub, ApproverMode},
    audit::{AuditStore, EventFilter, testutil::TempDir},
    decision::{DecisionSink, LogMode},
    dns::{Resolver, budget::Limits},
    policy::Policy,
    proxy::{
        ProxyContext,
        context::{Conn, Destinations, Via},
        upstream::{Body, Upstream},
    },
    secrets::Secrets,
    spend::SpendControl,
};

const REAL: &str = "sk_live_REALKEY0123456789abcdefABCDEFghij";

/// What the vendor received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

/// A vendor on loopback: `/echo...` answers with what it got; `/sse`
/// streams an event, waits for `release`, then sends the final usage event;
/// `/slow` never answers; `/broken` starts a body and resets.
struct Vendor {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<tokio::sync::Notify>,
}

impl Vendor {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let (s, r) = (Arc::clone(&seen), Arc::clone(&release));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                        async move { Ok::<_, Infallible>(respond(req, &s, r).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            release,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type VendorBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A response body fed by a channel: each message is one frame.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx)
    }
}

async fn respond(
    req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    release: Arc<tokio::sync::Notify>,
) -> Response<VendorBody> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let method = req.method().to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method,
        target: target.clone(),
        authorization: authorization.clone(),
        body,
    });
    let full = |s: String| {
        Full::new(Bytes::from(s))
            .map_err(|never| match never {})
            .boxed()
    };
    if target.starts_with("/sse") {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let first = Bytes::from_static(b"data: {\"id\":\"resp_1\",\"delta\":\"hello\"}\n\n");
        let _ = tx.send(Ok(Frame::data(first))).await;
        tokio::spawn(async move {
            release.notified().await;
            let last = Bytes::from_static(
                b"data: {\"id\":\"resp_1\",\"usage\":{\"cost\":0.25}}\n\ndata: [DONE]\n\n",
            );
            let _ = tx.send(Ok(Frame::data(last))).await;
        });
        let mut resp = Response::new(ChannelBody(rx).boxed());
        resp.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        return resp;
    }
    if target.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if target.starts_with("/broken") {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"partial"))))
            .await;
        tokio::spawn(async move {
            // The head and the first bytes go out; then the vendor breaks.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(Err(std::io::Error::other("vendor reset"))).await;
        });
        return Response::new(ChannelBody(rx).boxed());
    }
    let json = serde_json::json!({
        "id": "obj_1",
        "target": target,
        "authorization": authorization,
        "usage": {"cost": 0.5},
    });
    Response::new(full(json.to_string()))
}

struct Origins;

impl Destinations for Origins {
    fn lookup(&self, _peer: SocketAddr) -> Option<SocketAddr> {
        None
    }
}

/// A run of `policy` (with `{port}` standing for the vendor's port).
struct Run {
    ctx: ProxyContext,
    conn: Conn,
    _dir: TempDir,
    db: std::path::PathBuf,
}

async fn run(vendor: &Vendor, policy: &str, timeout: Duration) -> Run {
    run_with(vendor.addr.port(), policy, timeout, false).await
}

/// A run whose vendor listens on `port`. `small_db`: the audit database
/// cannot grow much (like a full disk).
async fn run_with(port: u16, policy: &str, timeout: Duration, small_db: bool) -> Run {
    let text = policy.replace("{port}", &port.to_string());
    let policy = Arc::new(Policy::parse(&text, Path::new("t.toml")).unwrap());
    let resolver = Arc::new(
        Resolver::new(
            &["api.test=127.0.0.1"],
            Vec::new(),
            Limits::default(),
            Arc::clone(&policy),
        )
        .unwrap(),
    );
    let dir = TempDir::new("pipeline");
    let db = dir.path().join("audit.db");
    let store = AuditStore::open(&db).unwrap();
    store
        .start_run(&crate::audit::testutil::run_info("t", "t"))
        .unwrap();
    if small_db {
        let pages: i64 = store
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let _: i64 = store
            .conn
            .query_row(&format!("PRAGMA max_page_count = {}", pages + 2), [], |r| {
                r.get(0)
            })
            .unwrap();
    }
    let sink = DecisionSink::with_audit("t", LogMode::Quiet, Some(store.writer()));
    let roots = rustls::RootCertStore::empty();
    let tls = crate::tls::upstream::client_config(roots).unwrap();
    let ca = Arc::new(crate::tls::ca::RunCa::generate("t", Duration::from_secs(3600)).unwrap());
    let ctx = ProxyContext {
        run_id: Arc::from("t"),
        policy: Arc::clone(&policy),
        rules: None,
        origdst: Arc::new(Origins),
        resolver: Arc::clone(&resolver),
        sink,
        upstream: Upstream::new(resolver, tls, timeout),
        tls_server: crate::tls::ca::server_config(ca).unwrap(),
        secrets: Arc::new(Secrets::for_tests(&policy, &[REAL])),
        approvals: Arc::new(ApprovalHub::new(
            ApproverMode::Humans,
            Duration::from_secs(5),
        )),
        spend: Arc::new(SpendControl::open(&policy, "t", None).unwrap()),
        observe: false,
    };
    let conn = Conn {
        name: "api.test".into(),
        port,
        tls: false,
        host: 0,
        via: Via::Explicit,
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
    };
    Run {
        ctx,
        conn,
        _dir: dir,
        db,
    }
}

impl Run {
    fn placeholder(&self) -> String {
        self.ctx.secrets.iter().next().unwrap().placeholder.clone()
    }

    async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> (StatusCode, String) {
        let resp = self.respond(method, target, headers, body).await;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn respond(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> Response<Body> {
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header("host", "api.test");
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        super::handle(req, &self.conn, &self.ctx).await
    }

    /// (cause, verdict) of every request row, in order.
    async fn rows(&self) -> Vec<(String, String, Option<String>)> {
        if let Some(w) = self.ctx.sink.audit() {
            w.flush().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(w) = self.ctx.sink.audit() {
            w.flush().await.unwrap();
        }
        AuditStore::open_read_only(&self.db)
            .unwrap()
            .events(&EventFilter::default())
            .unwrap()
            .into_iter()
            .filter(|e| e.layer == "request")
            .map(|e| (e.cause.unwrap_or_default(), e.verdict, e.failure))
            .collect()
    }
}

const SECRET: &str = r#"
[[secret]]
name = "KEY"
from = "env:UNUSED_IN_TESTS"
hosts = ["api.test"]
header = "Authorization"
format = "Bearer {}"
"#;

fn policy(rules: &str, host_extra: &str) -> String {
    format!(
        "{SECRET}\n[run]\nloop_breaker = false\n\n[[host]]\nname = \"api.test\"\nports = [{{port}}]\nallow_plaintext_secrets = true\n{host_extra}\n{rules}"
    )
}

fn rule(method: &str, path: &str, action: &str, extra: &str) -> String {
    format!(
        "  [[host.rule]]\n  method = \"{method}\"\n  path = \"{path}\"\n  action = \"{action}\"\n{extra}\n"
    )
}

#[tokio::test]
async fn a_denied_or_ambiguous_request_reaches_nothing_and_spends_no_budget() {
    let vendor = Vendor::start().await;
    let rules = [
        rule("*", "/v1/admin/**", "deny", ""),
        rule("*", "/v1/**", "allow", "  max_calls = 1"),
    ]
    .concat();
    let r = run(&vendor, &policy(&rules, ""), Duration::from_secs(5)).await;
    assert_eq!(
        r.send("GET", "/v1/admin/x", &[], "").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        r.send("GET", "/v1/admin%2Fx", &[], "").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        r.send("get", "/v1/echo", &[], "").await.0,
        StatusCode::BAD_REQUEST
    );
    // The one call allowed by max_calls was not used by the refusals above.
    assert_eq!(r.send("GET", "/v1/echo", &[], "").await.0, StatusCode::OK);
    assert_eq!(
        r.send("GET", "/v1/echo", &[], "").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(vendor.seen().len(), 1);
    let causes: Vec<String> = r.rows().await.into_iter().map(|(c, _, _)| c).collect();
    assert_eq!(
        causes,
        [
            "deny-rule",
            "ambiguous",
            "ambiguous",
            "allowed",
            "rate-limited"
        ]
    );
}

#[tokio::test]
async fn over_a_cap_nothing_leaves_and_the_reservation_is_released() {
    let vendor = Vendor::start().await;
    let cost = "  cost = { form_field = \"amount\", divide_by = 100 }";
    let rules = rule("POST", "/v1/pay", "allow", cost);
    let r = run(
        &vendor,
        &policy(&rules, "spend_cap_usd = 50"),
        Duration::from_secs(5),
    )
    .await;
    let form = [(
        "content-type",
        "application/x-www-form-urlencoded".to_string(),
    )];
    let (status, body) = r.send("POST", "/v1/pay", &form, "amount=999999").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("over-cap"), "{body}");
    assert!(vendor.seen().is_empty());
    assert_eq!(r.ctx.spend.ledger.in_flight(), 0);
    assert_eq!(
        r.send("POST", "/v1/pay", &form, "amount=4000").await.0,
        StatusCode::OK
    );
    let seen = vendor.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/v1/pay")
    );
    assert_eq!(
        seen[0].body, b"amount=4000",
        "the body read for its cost is forwarded whole"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.ctx.spend.ledger.run_spent(), 40_000_000);
}

#[tokio::test]
async fn an_approval_comes_before_credentials_and_a_denial_sends_nothing() {
    let vendor = Vendor::start().await;
    let rules = rule("POST", "/v1/refunds", "ask", "");
    let r = Arc::new(run(&vendor, &policy(&rules, ""), Duration::from_secs(5)).await);
    let auth = [("authorization", format!("Bearer {}", r.placeholder()))];
    for answer in [Answer::Deny, Answer::Approve] {
        let hub = Arc::clone(&r.ctx.approvals);
        let answering = tokio::spawn(async move {
            loop {
                if let Some(p) = hub.pending().first() {
                    assert_eq!(p.target, "/v1/refunds?charge=ch_1");
                    assert_eq!(p.body_preview.as_deref(), Some("reason=<KEY>"));
                    assert!(
                        p.headers.contains(&"authorization: (hidden)".to_string()),
                        "{:?}",
                        p.headers
                    );
                    hub.answer(p.id, answer, "test").unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let body = format!("reason={}", r.placeholder());
        let (status, _) = r
            .send("POST", "/v1/refunds?charge=ch_1", &auth, &body)
            .await;
        answering.await.unwrap();
        let want = if answer == Answer::Deny {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        };
        assert_eq!(status, want);
    }
    let seen = vendor.seen();
    assert_eq!(seen.len(), 1, "only the approved call left");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {REAL}").as_str())
    );
    let causes: Vec<String> = r.rows().await.into_iter().map(|(c, _, _)| c).collect();
    assert_eq!(causes, ["approval-denied", "approved"]);
}

#[tokio::test]
async fn nothing_leaves_without_its_audit_row() {
    let vendor = Vendor::start().await;
    let rules = policy(&rule("GET", "/v1/**", "allow", ""), "");
    let r = run_with(vendor.addr.port(), &rules, Duration::from_secs(5), true).await;
    let long = "x".repeat(1500);
    let mut ok = 0;
    let mut refused = false;
    for _ in 0..200 {
        let (status, body) = r.send("GET", &format!("/v1/echo?{long}"), &[], "").await;
        match status {
            StatusCode::OK if !refused => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(body.contains("audit-unavailable"), "{body}");
                refused = true;
            }
            other => panic!("{other} after {ok} calls (refused: {refused})"),
        }
    }
    assert!(refused, "the database never filled up");
    assert_eq!(
        vendor.seen().len(),
        ok,
        "every call that left had its row first"
    );
}

#[tokio::test]
async fn the_real_key_is_injected_and_never_comes_back() {
    let vendor = Vendor::start().await;
    let r = run(
        &vendor,
        &policy(&rule("GET", "/v1/**", "allow", ""), ""),
        Duration::from_secs(5),
    )
    .await;
    let auth = [("authorization", format!("Bearer {}", r.placeholder()))];
    let (status, body) = r.send("GET", "/v1/echo", &auth, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains(REAL), "{body}");
    assert!(body.contains(&r.placeholder()), "{body}");
    assert_eq!(
        vendor.seen()[0].authorization.as_deref(),
        Some(format!("Bearer {REAL}").as_str())
    );
}

#[tokio::test]
async fn a_streamed_response_reaches_the_agent_as_it_is_produced_and_settles_at_its_end() {
    let vendor = Vendor::start().await;
    let cost = "  cost = { fixed_usd = 1, response_cost_pointer = \"/usage/cost\", response_id_pointer = \"/id\" }";
    let r = run(
        &vendor,
        &policy(&rule("POST", "/sse", "allow", cost), ""),
        Duration::from_secs(5),
    )
    .await;
    let resp = r.respond("POST", "/sse", &[], "{}").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // The first event arrives while the vendor still holds the rest.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event is not held back")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("hello"));
    assert_eq!(
        r.ctx.spend.ledger.in_flight(),
        1_000_000,
        "reserved, not settled yet"
    );
    vendor.release.notify_one();
    while body.frame().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        r.ctx.spend.ledger.run_spent(),
        250_000,
        "settled at the actual cost"
    );
    assert_eq!(r.ctx.spend.ledger.in_flight(), 0);
}

#[tokio::test]
async fn upstream_failures_are_answered_and_recorded_by_kind() {
    let vendor = Vendor::start().await;
    let r = run(
        &vendor,
        &policy(&rule("GET", "/**", "allow", ""), ""),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        r.send("GET", "/slow", &[], "").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    let resp = r.respond("GET", "/broken", &[], "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.into_body().collect().await.is_err(),
        "the break reaches the agent"
    );
    let rows = r.rows().await;
    let failures: Vec<Option<String>> = rows.into_iter().map(|(_, _, f)| f).collect();
    assert_eq!(
        failures,
        [Some("timeout".into()), Some("reset-mid-body".into())]
    );
}

#[tokio::test]
async fn a_vendor_that_hangs_up_before_its_headers_is_a_502_saying_so() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            // Read the request, answer nothing, hang up.
        }
    });
    let r = run_with(
        port,
        &policy(&rule("GET", "/**", "allow", ""), ""),
        Duration::from_secs(5),
        false,
    )
    .await;
    let (status, body) = r.send("GET", "/v1/x", &[], "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("reset-before-headers"), "{body}");
    let rows = r.rows().await;
    assert_eq!(
        rows[0].2.as_deref(),
        Some("reset-before-headers"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn an_ask_the_agent_gives_up_on_leaves_the_queue_and_gets_its_row() {
    let vendor = Vendor::start().await;
    let rules = rule("POST", "/v1/refunds", "ask", "");
    let r = run(&vendor, &policy(&rules, ""), Duration::from_secs(5)).await;
    for _ in 0..3 {
        // The agent waits a little, then closes the connection.
        let waiting = r.respond("POST", "/v1/refunds", &[], "x");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), waiting)
                .await
                .is_err()
        );
    }
    assert!(
        r.ctx.approvals.pending().is_empty(),
        "abandoned asks leave the queue"
    );
    assert!(vendor.seen().is_empty());
    let causes: Vec<String> = r.rows().await.into_iter().map(|(c, _, _)| c).collect();
    assert_eq!(causes, ["abandoned", "abandoned", "abandoned"]);
}

#[tokio::test]
async fn a_method_hidden_in_a_form_body_is_refused_before_any_rule() {
    let vendor = Vendor::start().await;
    let rules = [
        rule("DELETE", "/v1/items/*", "deny", ""),
        rule("*", "/v1/**", "allow", ""),
    ]
    .concat();
    let r = run(&vendor, &policy(&rules, ""), Duration::from_secs(5)).await;
    let form = [(
        "content-type",
        "application/x-www-form-urlencoded".to_string(),
    )];
    for body in ["_method=DELETE", "a=1&%5Fmethod=DELETE", "+_method=delete"] {
        let (status, text) = r.send("POST", "/v1/items/1", &form, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains("method-override"), "{text}");
    }
    assert!(vendor.seen().is_empty());
    // A multipart body longer than enforcer reads is watched as it streams.
    let mp = [(
        "content-type",
        "multipart/form-data; boundary=b".to_string(),
    )];
    let big = format!(
        "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n{}\r\n--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n",
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, text) = r.send("POST", "/v1/items/1", &mp, &big).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("_method"), "{text}");
    // A multipart upload without one passes whole.
    let clean = big.replace("_method", "comment");
    assert_eq!(
        r.send("POST", "/v1/items/1", &mp, &clean).await.0,
        StatusCode::OK
    );
    assert_eq!(
        vendor.seen().last().map(|s| s.body.len()),
        Some(clean.len())
    );
}
