//! The stages of one intercepted HTTP request, in the order they run. This
//! is the one place that orders them; each stage's rules live in the module
//! that owns its concern, and this module only turns a stage's "no" into a
//! [`Refusal`] (recorded once, and answered):
//!
//! 1. identify: the request is for the name the connection was decided on
//! 2. scan: no placeholder of a secret bound elsewhere in the head (`secrets::scan`)
//! 3. canonical request: nothing servers disagree about (`policy::CanonicalRequest`)
//! 4. policy decision: the host's rules (`policy`)
//! 5. cleartext: no secret on a plaintext connection unless allowed
//! 6. limits: rate, call counts, loop breaker (`spend::charge`)
//! 7. required headers and fields (`policy::Requirements`), then the cost,
//!    its per-call thresholds (`spend::per_call`) and its reservation under
//!    the caps (`spend::charge`)
//! 8. approval, for `ask` rules and calls above `ask_above_usd` or missing
//!    a requirement with `unmet = "ask"` (`approval`)
//! 9. credentials: placeholders swapped for live values (`secrets::inject`)
//! 10. audit commit: nothing leaves before its row is written (`audit`)
//! 11. forward, then the response: redaction, actual cost, settlement and
//!     the audit outcome ([`super::forward`])

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header, request::Parts};
use http_body_util::BodyExt as _;

use super::{
    body_watch,
    buffer::{self, BufferError},
    context::{Conn, ProxyContext},
    forward,
    refusal::Refusal,
    sniff::host_without_port,
    upstream::{Body, BoxError},
};
use crate::{
    approval::{self, Pending},
    decision::{Cause, Decision, Layer},
    policy::{
        Action, CanonicalRequest, CostSource, HostPolicy, MULTIPART_OVERRIDE_NAMES,
        body_method_override,
    },
    secrets::{self, inject::Injected, scan},
    spend::{self, Call, Charge},
};

/// Most of a refused request's body that is read and thrown away so the
/// connection stays usable; past this, the connection is closed instead.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// Most of a body shown to the human approving it.
const PREVIEW: usize = 512;

/// Decides one request and forwards it if allowed.
pub async fn handle<B>(req: Request<B>, conn: &Conn, ctx: &ProxyContext) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    // The rules in force when the request began decide all of it.
    let ctx = &ctx.current();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let mut d = Decision::new(Layer::Request, Cause::Allowed, "")
        .host(conn.name.clone())
        .port(conn.port)
        .request(req.method().as_str(), target);
    let (parts, body) = req.into_parts();
    let body = body.map_err(Into::into).boxed();
    let mut watch = Unfinished::new(&ctx.sink);
    let result = stages(parts, body, conn, ctx, &mut d, &mut watch).await;
    watch.done();
    match result {
        Ok(resp) => resp,
        Err(Stopped { refusal, body }) => {
            d.set_cause(refusal.cause, refusal.reason.clone());
            ctx.sink.record(&d);
            if let Some(b) = body {
                drain(b).await;
            }
            // On a host with a vendor profile, in the vendor's error shape.
            let shape = ctx
                .policy
                .hosts
                .get(conn.host)
                .and_then(|h| h.profile.as_ref())
                .and_then(|p| p.refusal.as_ref());
            refusal.response_shaped(&d, &ctx.run_id, shape)
        }
    }
}

/// Records a request the agent gave up on before it was decided (it closed
/// the connection while the request waited for a human, a limit or its
/// body): every request gets its row, also one that never got an answer.
struct Unfinished<'a> {
    sink: &'a crate::decision::DecisionSink,
    /// The decision so far, while it is not recorded elsewhere.
    pending: Option<Decision>,
}

impl<'a> Unfinished<'a> {
    fn new(sink: &'a crate::decision::DecisionSink) -> Self {
        Self {
            sink,
            pending: None,
        }
    }

    /// What to record if the request is abandoned from here on.
    fn track(&mut self, d: &Decision) {
        self.pending = Some(d.clone());
    }

    /// The request's row is (or will be) written by the pipeline.
    fn done(&mut self) {
        self.pending = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(mut d) = self.pending.take() {
            d.set_cause(
                Cause::Abandoned,
                "the agent closed the connection before the request was decided; nothing was forwarded",
            );
            self.sink.record(&d);
        }
    }
}

/// A stage said no; the body is still there to drain when it was not read.
struct Stopped {
    refusal: Refusal,
    body: Option<Body>,
}

/// `stage?` with the body to drain on a refusal.
macro_rules! stage {
    ($result:expr, $body:expr) => {
        match $result {
            Ok(v) => v,
            Err(refusal) => {
                return Err(Stopped {
                    refusal,
                    body: $body,
                })
            }
        }
    };
}

async fn stages(
    parts: Parts,
    body: Body,
    conn: &Conn,
    ctx: &ProxyContext,
    d: &mut Decision,
    watch: &mut Unfinished<'_>,
) -> Result<Response<Body>, Stopped> {
    stage!(identify(&parts, conn), Some(body));
    stage!(scan_head(&parts, conn, ctx), Some(body));
    let host = ctx.policy.hosts.get(conn.host);
    let canon = stage!(canonical(&parts, host), Some(body));
    let decided = match host {
        Some(h) => decide(&canon, h, d),
        None => Err(Refusal::new(
            Cause::NotInPolicy,
            format!("host {} is not in the policy", conn.name),
        )),
    };
    // Observe mode: a refusal by the policy's rules is recorded as "would
    // deny" and the request goes ahead (see `observe`).
    let Decided { mut ask, rule } = match decided {
        Ok(x) => x,
        Err(r) => match super::observe::waive(ctx.observe, r, d) {
            None => Decided {
                ask: false,
                rule: None,
            },
            Some(refusal) => {
                return Err(Stopped {
                    refusal,
                    body: Some(body),
                });
            }
        },
    };
    let rule_ref = rule.and_then(|i| host.and_then(|h| h.rules.get(i)));
    let require = rule_ref.and_then(|r| r.require.as_ref());
    // Why a call is asked besides its rule's `ask` (shown to the human).
    let mut asked = Asked::default();
    stage!(cleartext(&parts, conn, ctx), Some(body));

    let cost_rule = rule
        .and_then(|i| host.and_then(|h| h.rules.get(i)))
        .and_then(|r| r.cost.as_ref());
    let target = match canon.query() {
        Some(q) => format!("{}?{q}", canon.path()),
        None => canon.path().to_string(),
    };
    let call = Call {
        host: conn.host,
        rule,
        method: canon.method(),
        target: &target,
        is_read: canon.is_read(),
    };
    // A cost read from the query reads the body too: a copy of its field
    // there (frameworks merge body fields over the query) is refused.
    let cost_in_body = cost_rule.is_some_and(|c| {
        matches!(
            c.source,
            CostSource::FormField(_) | CostSource::JsonPointer(_) | CostSource::Query(_)
        )
    });
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A POST whose form body says `_method` is routed as that method by
    // Rails, Laravel and Symfony: the body is checked before any rule's
    // decision may stand.
    let form_check = parts.method == http::Method::POST
        && host.is_some_and(|h| !h.rules.is_empty())
        && content_type.as_deref().is_some_and(is_form_like);
    let may_ask = rule_ref.is_some_and(|r| {
        r.amounts.ask_above_usd.is_some()
            || r.require.as_ref().is_some_and(|q| q.unmet == Action::Ask)
    });
    let read_body = cost_in_body
        || ask
        || may_ask
        || form_check
        || require.is_some_and(|q| q.reads_body())
        || ctx.spend.limits_read_body(&call);
    // From here the request may wait (for its body, a human): if the agent
    // leaves, it still gets its row.
    watch.track(d);
    let (body, prefix) = if read_body {
        match buffer::read_prefix(body, buffer::LIMIT).await {
            Ok(p) => (None, Some(p)),
            Err(e) => {
                return Err(Stopped {
                    refusal: body_refusal(&e),
                    body: None,
                });
            }
        }
    } else {
        (Some(body), None)
    };
    let data = prefix.as_ref().map_or(Bytes::new(), |p| p.data().clone());
    let complete = prefix.as_ref().is_some_and(|p| p.complete().is_some());
    if form_check
        && complete
        && let Some(host) = host
    {
        let checked = body_method_override(content_type.as_deref(), &data, true);
        stage!(checked.map_err(|why| ambiguous(host, &why)), None);
    }

    if let Some(req) = require {
        if req.reads_body() && !complete {
            return Err(Stopped {
                refusal: too_large("required fields"),
                body: None,
            });
        }
        let content_type = content_type.as_deref();
        match req.check(&parts.headers, &parts.uri, content_type, &data) {
            Ok(met) => {
                asked.scope = met
                    .iter()
                    .map(|m| ctx.secrets.mask(&m.to_string()))
                    .collect()
            }
            Err(unmet) if req.unmet == Action::Ask => {
                ask = true;
                asked.why.push(ctx.secrets.mask(&unmet.why));
            }
            Err(unmet) => {
                let r = Refusal::new(Cause::RequirementUnmet, unmet.why.clone())
                    .field("field", unmet.what);
                return Err(Stopped { refusal: r, body });
            }
        }
    }

    stage!(
        ctx.spend
            .check_limits(&call, &data)
            .map_err(|s| spend_refusal(&s, ctx)),
        body
    );
    let charge = match cost_rule {
        None => None,
        Some(c) => {
            if cost_in_body && prefix.as_ref().is_some_and(|p| p.complete().is_none()) {
                return Err(Stopped {
                    refusal: too_large("the cost"),
                    body: None,
                });
            }
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let cost = stage!(
                spend::extract(c, &parts.uri, content_type, &data)
                    .map_err(|e| spend_refusal(&spend::Stop::Cost(e), ctx)),
                body
            );
            if let Some(r) = rule_ref {
                match spend::per_call::judge(&r.amounts, &cost) {
                    Err(over) => {
                        let refusal = Refusal::new(Cause::OverCallCeiling, over.to_string())
                            .field("limit", serde_json::to_value(&over).unwrap_or_default());
                        return Err(Stopped { refusal, body });
                    }
                    Ok(spend::PerCall::Ask(why)) => {
                        ask = true;
                        asked.why.push(why);
                    }
                    Ok(spend::PerCall::Under) => {}
                }
                if let Some(c) = r.amounts.ceiling_usd {
                    asked.ceiling = Some(format!(
                        "per-call ceiling ${c} ({}): this call is ${}",
                        r.amounts.ceiling_key,
                        cost.usd()
                    ));
                }
            }
            let charge = ctx.spend.reserve_cost(&ctx.policy, &call, c, cost).await;
            Some(stage!(charge.map_err(|s| spend_refusal(&s, ctx)), body))
        }
    };
    d.reserved_usd = charge.as_ref().map(Charge::reserved_usd);
    let mut body = match (prefix, body) {
        (Some(p), _) => p.into_body(),
        (None, Some(b)) => b,
        (None, None) => super::refusal::full(Bytes::new()),
    };
    let mut parts = parts;
    if form_check && !complete {
        // A form longer than what was read: it is watched for `_method` as
        // it streams, from its first byte.
        let multipart = content_type.as_deref().is_some_and(|c| {
            c.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        });
        let detector: Box<dyn body_watch::Detector> = if multipart {
            Box::new(body_watch::Patterns::new(
                MULTIPART_OVERRIDE_NAMES,
                "a multipart body with a `_method` part (routed as another method by Rails, Laravel, Symfony)",
            ))
        } else {
            Box::new(body_watch::FormKeys::new("_method"))
        };
        let (watched, why) = body_watch::Watch::new(body, detector);
        body = watched.boxed();
        parts.extensions.insert(forward::CutOff(why));
    }

    if ask && let Some(host) = host {
        watch.track(d);
        stage!(
            approval(
                &parts,
                &data,
                conn,
                ctx,
                (host, rule),
                (charge.as_ref(), asked),
                d
            )
            .await,
            Some(body)
        );
    }

    let injected = stage!(credentials(&mut parts, conn, ctx, d), Some(body));
    // Nothing goes upstream before its audit row is committed.
    watch.done();
    let id = match ctx.sink.commit(d).await {
        Ok(id) => id,
        Err(e) => {
            let r = Refusal::new(Cause::AuditUnavailable, e.to_string());
            return Err(Stopped {
                refusal: r,
                body: Some(body),
            });
        }
    };
    Ok(forward::forward(
        Request::from_parts(parts, body),
        injected,
        id,
        charge,
        conn,
        ctx,
        d,
    )
    .await)
}

/// Stage 1: the Host (or `:authority`) is the name the connection was
/// decided on: no domain fronting.
fn identify(parts: &Parts, conn: &Conn) -> Result<(), Refusal> {
    let said = parts.uri.host().map(host_without_port).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(host_without_port)
    });
    match said {
        Some(host) if host != conn.name => Err(Refusal::new(
            Cause::NameMismatch,
            format!(
                "Host {host} does not match the server name {} this connection was opened for (domain fronting is refused)",
                conn.name
            ),
        )),
        _ => Ok(()),
    }
}

/// Stage 2: no placeholder of a secret bound to another host in the target
/// or the headers, and none at all in the method or a header name.
fn scan_head(parts: &Parts, conn: &Conn, ctx: &ProxyContext) -> Result<(), Refusal> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let found = scan::in_head(
        &ctx.secrets,
        &ctx.policy,
        &conn.name,
        target,
        &parts.headers,
    )
    .or_else(|| scan::in_name(&ctx.secrets, parts.method.as_str()))
    .or_else(|| {
        parts
            .headers
            .keys()
            .find_map(|k| scan::in_name(&ctx.secrets, k.as_str()))
    });
    match found {
        Some(secret) => Err(Refusal::new(
            Cause::Exfiltration,
            format!(
                "{}: placeholder of {secret} sent to {}",
                scan::EXFILTRATION,
                conn.name
            ),
        )),
        None => Ok(()),
    }
}

/// Stage 3: the canonical request, or a 400 that says what to change (a
/// host observe mode let through without an entry accepts no ambiguity).
fn canonical(parts: &Parts, host: Option<&HostPolicy>) -> Result<CanonicalRequest, Refusal> {
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    match host {
        Some(host) => host
            .canonical(parts.method.as_str(), target, Some(&parts.headers))
            .map_err(|why| ambiguous(host, &why)),
        None => CanonicalRequest::parse(
            parts.method.as_str(),
            target,
            Some(&parts.headers),
            crate::policy::Ambiguities::default(),
        )
        .map_err(|why| {
            Refusal::new(
                Cause::Ambiguous,
                format!("ambiguous request refused: {why}"),
            )
            .field("kind", why.kind())
        }),
    }
}

fn ambiguous(host: &HostPolicy, why: &crate::policy::Ambiguous) -> Refusal {
    let hint = match why.opt_in() {
        Some(name) => format!(
            "if {} really needs this, add allow_ambiguous = [\"{name}\"] to its [[host]] (line {})",
            host.name, host.line
        ),
        None => "no policy setting accepts this: send the request in its plain form".to_string(),
    };
    Refusal::new(
        Cause::Ambiguous,
        format!("ambiguous request refused: {why}"),
    )
    .field("kind", why.kind())
    .field("hint", hint)
}

/// What the policy said about a request that may go ahead.
struct Decided {
    /// A human must approve first.
    ask: bool,
    /// The deciding rule's index in its host (None: whole-host decision).
    rule: Option<usize>,
}

/// Stage 4: the host's rules.
fn decide(
    canon: &CanonicalRequest,
    host: &HostPolicy,
    d: &mut Decision,
) -> Result<Decided, Refusal> {
    let verdict = host
        .decide_request(canon)
        .map_err(|why| ambiguous(host, &why))?;
    if let Some(r) = &verdict.rule {
        d.rule = Some(r.description.clone());
        d.rule_line = Some(r.line);
    } else {
        d.rule = Some(format!("host {}", host.name));
        d.rule_line = Some(host.line);
    }
    match verdict.action {
        Action::Deny => {
            let cause = if verdict.is_default_deny() && host.action.is_none() {
                Cause::DefaultDeny
            } else if verdict.rule.is_some() {
                Cause::DenyRule
            } else {
                Cause::NotInPolicy
            };
            Err(Refusal::new(cause, verdict.reason))
        }
        action => {
            d.reason = verdict.reason;
            Ok(Decided {
                ask: action == Action::Ask,
                rule: verdict.rule.map(|r| r.index),
            })
        }
    }
}

/// Stage 5: a placeholder of a secret bound to this host, on a plaintext
/// connection, is refused unless the host says `allow_plaintext_secrets`.
fn cleartext(parts: &Parts, conn: &Conn, ctx: &ProxyContext) -> Result<(), Refusal> {
    if conn.tls
        || ctx
            .policy
            .hosts
            .get(conn.host)
            .is_some_and(|h| h.plaintext_secrets)
    {
        return Ok(());
    }
    let carried = ctx
        .policy
        .secrets_for(&conn.name)
        .find(|s| scan::carries_placeholder(&ctx.secrets, &s.name, &parts.uri, &parts.headers));
    match carried {
        Some(secret) => Err(Refusal::new(
            Cause::Cleartext,
            format!(
                "{} is only sent over TLS and this request to {} is plaintext HTTP: use https://, \
                 or set allow_plaintext_secrets = true on the host if the key may cross the network in cleartext",
                secret.name, conn.name
            ),
        )),
        None => Ok(()),
    }
}

/// Form bodies: what `_method` can hide in.
fn is_form_like(content_type: &str) -> bool {
    let mt = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mt == "application/x-www-form-urlencoded" || mt.starts_with("multipart/")
}

/// Why a call is asked (besides an `ask` rule) and what it is scoped to,
/// for the human deciding.
#[derive(Default)]
struct Asked {
    /// The required values the request carries (`header Stripe-Account: acct_1`).
    scope: Vec<String>,
    /// Why a call of an `allow` rule is asked (above `ask_above_usd`, an
    /// unmet requirement with `unmet = "ask"`).
    why: Vec<String>,
    /// The rule's per-call ceiling, against this call.
    ceiling: Option<String>,
}

/// A body the rule reads `what` from is over the buffer limit.
fn too_large(what: &str) -> Refusal {
    Refusal::new(
        Cause::BodyRefused,
        format!(
            "the rule reads {what} from the body, and the body is larger than {} bytes",
            buffer::LIMIT
        ),
    )
    .status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// A body the rules needed could not be read.
fn body_refusal(e: &BufferError) -> Refusal {
    let status = match e {
        BufferError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        BufferError::Read(_) => StatusCode::BAD_REQUEST,
    };
    Refusal::new(Cause::BodyRefused, e.to_string()).status(status)
}

/// Stages 6 and 7's refusals.
fn spend_refusal(stop: &spend::Stop, ctx: &ProxyContext) -> Refusal {
    match stop {
        spend::Stop::Limited(l) => {
            let mut r = Refusal::new(Cause::RateLimited, stop.to_string())
                .field("limit", serde_json::to_value(l).unwrap_or_default());
            if let Some(v) = l
                .retry_after_secs()
                .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
            {
                r = r.header(header::RETRY_AFTER, v);
            }
            r
        }
        spend::Stop::Tripped(t) => Refusal::new(Cause::LoopBreaker, stop.to_string())
            .field("limit", serde_json::to_value(t).unwrap_or_default())
            .field(
                "reset",
                format!("sudo enforcer reset {} {}", ctx.run_id, t.key),
            ),
        spend::Stop::OverCap(o) => Refusal::new(Cause::OverCap, stop.to_string())
            .field("limit", serde_json::to_value(o).unwrap_or_default()),
        spend::Stop::Cost(_) => Refusal::new(Cause::CostUnknown, stop.to_string()),
        spend::Stop::Storage(_) => Refusal::new(Cause::SpendStoreUnavailable, stop.to_string()),
    }
}

/// Stage 8: a human decides, seeing what they decide on.
async fn approval(
    parts: &Parts,
    body: &[u8],
    conn: &Conn,
    ctx: &ProxyContext,
    (host, rule): (&HostPolicy, Option<usize>),
    (charge, why_asked): (Option<&Charge>, Asked),
    d: &mut Decision,
) -> Result<(), Refusal> {
    let asked = Instant::now();
    let secrets = ctx
        .policy
        .secrets_for(&conn.name)
        .filter(|s| scan::carries_placeholder(&ctx.secrets, &s.name, &parts.uri, &parts.headers))
        .map(|s| s.name.clone())
        .collect();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let pending = Pending {
        id: 0,
        run_id: ctx.run_id.to_string(),
        scheme: conn.scheme().to_string(),
        host: conn.authority(),
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        target: ctx.secrets.mask(target),
        body_preview: preview(body, parts, ctx),
        headers: shown_headers(parts, ctx),
        secrets,
        cost: charge.map(Charge::describe),
        caps: why_asked
            .ceiling
            .into_iter()
            .chain(charge.map(|c| caps_left(ctx, host, c)).unwrap_or_default())
            .collect(),
        scope: why_asked.scope,
        why: why_asked.why,
        rule: d.rule.clone().unwrap_or_default(),
        expires_in_secs: 0,
    };
    let line = pending.request_line();
    let ticket = ctx
        .approvals
        .submit(pending, (conn.host, rule.unwrap_or(usize::MAX)));
    if ticket.id != 0 && !ctx.approvals.has_terminal() {
        ctx.sink.note(&format!(
            "request #{id} waits for approval: {line}; answer with `sudo enforcer approve {id} --run {run}` or `sudo enforcer deny {id} --run {run}`",
            id = ticket.id,
            run = ctx.run_id
        ));
    }
    let outcome = ctx.approvals.wait(ticket).await;
    d.approver = Some(outcome.approver().to_string());
    d.decided_ms = Some(asked.elapsed().as_secs_f64() * 1000.0);
    let cause = match &outcome {
        approval::Outcome::Approved { .. } => {
            d.set_cause(Cause::Approved, outcome.reason());
            return Ok(());
        }
        approval::Outcome::Denied { .. } | approval::Outcome::TooManyWaiting => {
            Cause::ApprovalDenied
        }
        approval::Outcome::TimedOut => Cause::ApprovalTimeout,
        approval::Outcome::NoApprover | approval::Outcome::DeniedInCi => Cause::NoApprover,
    };
    Err(Refusal::new(cause, outcome.reason()))
}

/// Headers a person approving the request sees: all but the hop's own and
/// the credentials' values (their names are shown), placeholders by name.
fn shown_headers(parts: &Parts, ctx: &ProxyContext) -> Vec<String> {
    const HIDDEN: &[&str] = &["authorization", "proxy-authorization", "cookie"];
    const SKIPPED: &[&str] = &[
        "host",
        "content-length",
        "connection",
        "accept-encoding",
        "user-agent",
        "accept",
    ];
    parts
        .headers
        .iter()
        .filter(|(k, _)| !SKIPPED.contains(&k.as_str()))
        .map(|(k, v)| {
            if HIDDEN.contains(&k.as_str()) {
                format!("{k}: (hidden)")
            } else {
                format!(
                    "{k}: {}",
                    ctx.secrets.mask(&String::from_utf8_lossy(v.as_bytes()))
                )
            }
        })
        .collect()
}

/// The start of a body, as text, with placeholders shown by name; a
/// compressed body is described, not shown as gibberish.
fn preview(body: &[u8], parts: &Parts, ctx: &ProxyContext) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    if let Some(enc) = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Some(format!("({} bytes, {enc}-encoded: not shown)", body.len()));
    }
    let cut = &body[..body.len().min(PREVIEW)];
    let mut text = ctx.secrets.mask(&String::from_utf8_lossy(cut));
    if body.len() > PREVIEW {
        text.push_str(&format!("… ({} bytes in all)", body.len()));
    }
    Some(text)
}

/// What each cap on this call has left once it is paid.
fn caps_left(ctx: &ProxyContext, host: &HostPolicy, _call: &Charge) -> Vec<String> {
    let usd = |m: i64| spend::format_usd(m.max(0));
    let mut out: Vec<String> = ctx
        .spend
        .ledger
        .snapshot()
        .into_iter()
        .filter(|a| a.scope == "run" || a.scope == format!("host {}", host.name))
        .filter_map(|a| {
            let cap = a.cap_micros?;
            // This call's own reservation is already in flight.
            let left = cap - a.spent_micros - a.in_flight_micros;
            Some(format!(
                "{} cap ${}: ${} left after this call",
                a.scope,
                usd(cap),
                usd(left)
            ))
        })
        .collect();
    if let Some(daily) = &ctx.spend.daily
        && let Some(cap) = daily.cap(&host.name)
        && let Ok((spent, reserved)) =
            daily.usage(&host.name, time::OffsetDateTime::now_utc().date())
    {
        out.push(format!(
            "daily cap of {} ${}: ${} left today after this call",
            host.name,
            usd(cap),
            usd(cap - spent - reserved)
        ));
    }
    out
}

/// Stage 9: placeholders become the live values (bound secrets only, live
/// credentials only).
fn credentials(
    parts: &mut Parts,
    conn: &Conn,
    ctx: &ProxyContext,
    d: &mut Decision,
) -> Result<Injected, Refusal> {
    let injected = secrets::inject::inject(
        &mut parts.headers,
        &mut parts.uri,
        &conn.name,
        &ctx.policy,
        &ctx.secrets,
    )
    .map_err(|not_live| {
        let cause = match not_live.access {
            secrets::Access::Revoked => Cause::CredentialsRevoked,
            _ => Cause::CredentialsExpired,
        };
        Refusal::new(
            cause,
            format!(
                "{} ({} not injected)",
                not_live.access.reason(),
                not_live.secret
            ),
        )
    })?;
    d.secrets = injected.names.clone();
    Ok(injected)
}

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

#[cfg(test)]
mod tests;
