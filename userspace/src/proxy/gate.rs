//! The spend, rate and loop checks of one request, in the order
//! `docs/spend.md` gives: rate limits and call counts, the loop breaker,
//! the request's cost, and its reservation under the run's and the daily
//! caps. A refused request never reaches the vendor. An admitted one
//! carries a [`Charge`] that is settled once the vendor has answered:
//! committed (with the actual cost when the response says it), or released
//! when the vendor refused the call.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};

use super::{
    buffer::{self, BufferError, Prefix},
    context::{Conn, ProxyContext},
    http::json_response,
    upstream::Body,
};
use crate::{
    policy::{CanonicalRequest, CostRule, CostSource},
    spend::{
        Cost, DailyReservation, Limited, OverCap, Reservation, SpendControl, SpendError, Tripped,
        response,
    },
};

/// Why a request stops here.
#[derive(Debug)]
pub enum Stop {
    Limited(Limited),
    Tripped(Tripped),
    /// Its cost cannot be determined.
    Cost(SpendError),
    OverCap(OverCap),
    /// The rule reads the cost from a body larger than the proxy holds.
    TooLarge,
    Body(BufferError),
    /// The daily-cap store failed: fail closed.
    Storage(String),
}

impl Stop {
    /// For the audit row and the log.
    pub fn reason(&self) -> String {
        match self {
            Self::Limited(l) => l.to_string(),
            Self::Tripped(t) => t.to_string(),
            Self::Cost(e) => format!("cost cannot be determined: {e}"),
            Self::OverCap(o) => o.to_string(),
            Self::TooLarge => format!(
                "the rule reads the cost from the body, and the body is larger than {} bytes",
                buffer::LIMIT
            ),
            Self::Body(e) => e.to_string(),
            Self::Storage(e) => format!("daily spend cannot be checked ({e}): refused"),
        }
    }

    /// What the agent gets back.
    pub fn response(
        &self,
        ctx: &ProxyContext,
        conn: &Conn,
        method: &str,
        path: &str,
    ) -> Response<Body> {
        let mut body = serde_json::json!({
            "run": &*ctx.run_id,
            "host": conn.name,
            "method": method,
            "path": path,
            "reason": self.reason(),
        });
        let (status, error, detail) = match self {
            Self::Limited(l) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit",
                serde_json::to_value(l).ok(),
            ),
            Self::Tripped(t) => {
                body["reset"] =
                    serde_json::json!(format!("sudo enforcer reset {} {}", ctx.run_id, t.key));
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "loop breaker tripped",
                    serde_json::to_value(t).ok(),
                )
            }
            Self::OverCap(o) => (
                StatusCode::TOO_MANY_REQUESTS,
                "spend cap",
                serde_json::to_value(o).ok(),
            ),
            Self::Cost(_) => (
                StatusCode::FORBIDDEN,
                "request refused: its cost cannot be determined",
                None,
            ),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                None,
            ),
            Self::Body(BufferError::Timeout(_)) => {
                (StatusCode::REQUEST_TIMEOUT, "request body too slow", None)
            }
            Self::Body(BufferError::Read(_)) => {
                (StatusCode::BAD_REQUEST, "request body unreadable", None)
            }
            Self::Storage(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "request refused: the daily spend cannot be checked",
                None,
            ),
        };
        body["error"] = serde_json::json!(error);
        if let Some(d) = detail {
            body["limit"] = d;
        }
        let mut resp = json_response(status, body);
        if let Self::Limited(l) = self
            && let Some(secs) = l.retry_after_secs()
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// A request that passed the checks: its body (replayed in full when the
/// checks read it) and, when its rule has a cost, its charge.
pub struct Admitted {
    pub req: Request<Body>,
    pub charge: Option<Charge>,
}

/// A refused request, with its body when it is still unread (to drain).
pub type Refused = (Stop, Option<Request<Body>>);

/// Runs the checks on a request the host's rules allow (or ask about).
/// `rule` is the deciding rule's index in its host.
pub async fn admit(
    req: Request<Body>,
    canon: &CanonicalRequest,
    conn: &Conn,
    ctx: &ProxyContext,
    rule: Option<usize>,
) -> Result<Admitted, Refused> {
    let spend = &ctx.spend;
    if let Err(l) = spend.rates.check(conn.host, rule) {
        return Err((Stop::Limited(l), Some(req)));
    }
    let cost_rule = rule
        .and_then(|i| ctx.policy.hosts.get(conn.host)?.rules.get(i))
        .and_then(|r| r.cost.as_ref());
    let cost_in_body = cost_rule.is_some_and(|c| {
        matches!(
            c.source,
            CostSource::FormField(_) | CostSource::JsonPointer(_)
        )
    });
    // Reads are not counted: polling the same resource is normal.
    let breaker = spend.breaker.as_ref().filter(|_| !canon.is_read());
    let (parts, body) = req.into_parts();
    let (prefix, unread) = if cost_in_body || breaker.is_some() {
        match buffer::read_prefix(body, buffer::LIMIT).await {
            Ok(p) => (Some(p), None),
            Err(e) => return Err((Stop::Body(e), None)),
        }
    } else {
        (None, Some(body))
    };
    let data = prefix.as_ref().map_or(&[][..], |p| &p.data()[..]);
    if let Some(b) = breaker {
        let target = match canon.query() {
            Some(q) => format!("{}?{q}", canon.path()),
            None => canon.path().to_string(),
        };
        if let Err(t) = b.observe(canon.method(), &target, data) {
            return Err((Stop::Tripped(t), None));
        }
    }
    let charge = match cost_rule {
        None => None,
        Some(c) => {
            if cost_in_body && prefix.as_ref().is_some_and(|p| p.complete().is_none()) {
                return Err((Stop::TooLarge, None));
            }
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let cost = match crate::spend::extract(c, &parts.uri, content_type, data) {
                Ok(cost) => cost,
                Err(e) => return Err((Stop::Cost(e), None)),
            };
            match reserve(spend, ctx, conn, cost, c.clone()).await {
                Ok(charge) => Some(charge),
                Err(stop) => return Err((stop, None)),
            }
        }
    };
    let body = match (prefix, unread) {
        (Some(p), _) => p.into_body(),
        (None, Some(body)) => body,
        (None, None) => super::http::full(Bytes::new()),
    };
    Ok(Admitted {
        req: Request::from_parts(parts, body),
        charge,
    })
}

/// Reserves `cost` under the run's caps, then the host's daily cap.
async fn reserve(
    spend: &Arc<SpendControl>,
    ctx: &ProxyContext,
    conn: &Conn,
    cost: Cost,
    rule: CostRule,
) -> Result<Charge, Stop> {
    let run = spend
        .ledger
        .reserve(conn.host, cost.usd_micros)
        .map_err(Stop::OverCap)?;
    let host = ctx
        .policy
        .hosts
        .get(conn.host)
        .map(|h| h.name.clone())
        .unwrap_or_default();
    let daily = match &spend.daily {
        Some(d) if d.cap(&host).is_some() => {
            let (d, micros) = (d.clone(), cost.usd_micros);
            match tokio::task::spawn_blocking(move || d.reserve(&host, micros)).await {
                Ok(Ok(r)) => Some(r),
                Ok(Err(SpendError::OverCap(o))) => {
                    run.release();
                    return Err(Stop::OverCap(o));
                }
                Ok(Err(e)) => {
                    run.release();
                    return Err(Stop::Storage(e.to_string()));
                }
                Err(e) => {
                    run.release();
                    return Err(Stop::Storage(e.to_string()));
                }
            }
        }
        _ => None,
    };
    Ok(Charge {
        run: Some(run),
        daily,
        cost,
        rule,
        sent: false,
    })
}

/// A call's reservations until the vendor has answered. Dropped unsettled
/// before it was sent, it is released; after (the agent went away while the
/// vendor worked on it), it is committed: the vendor may have acted on it.
pub struct Charge {
    run: Option<Reservation>,
    daily: Option<DailyReservation>,
    pub cost: Cost,
    rule: CostRule,
    sent: bool,
}

/// What a call cost, once settled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settled {
    pub cost_usd: f64,
    pub vendor_txn_id: Option<String>,
}

fn usd(micros: i64) -> f64 {
    micros as f64 / crate::spend::MICROS_PER_USD as f64
}

impl Charge {
    pub fn reserved_usd(&self) -> f64 {
        usd(self.cost.usd_micros)
    }

    /// `$19.99 (1999 usd)`, for prompts.
    pub fn describe(&self) -> String {
        format!(
            "${} ({} {})",
            self.cost.usd(),
            self.cost.amount_text,
            self.cost.currency
        )
    }

    /// Whether settling reads the response body (actual cost or vendor id).
    pub fn reads_response(&self) -> bool {
        self.rule.response_cost_pointer.is_some() || self.rule.response_id_pointer.is_some()
    }

    /// The request is about to leave: from now on, losing track of it
    /// counts it as spent.
    pub fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// The vendor refused (4xx/5xx) or never got the call: nothing spent.
    pub async fn release(mut self) -> Settled {
        if let Some(r) = self.run.take() {
            r.release();
        }
        if let Some(d) = self.daily.take() {
            let _ = tokio::task::spawn_blocking(move || d.release()).await;
        }
        Settled::default()
    }

    /// The vendor accepted the call: commits the actual cost read from
    /// `response` (the reserved amount when there is none).
    pub async fn commit(mut self, response: Option<&Bytes>) -> Settled {
        let (actual, vendor_txn_id) = match response {
            Some(body) => response::actual(body, &self.rule, &self.cost.currency),
            None => (None, None),
        };
        let mut spent = self
            .run
            .take()
            .map_or(self.cost.usd_micros, |r| r.commit(actual));
        if let Some(d) = self.daily.take() {
            match tokio::task::spawn_blocking(move || d.commit(actual)).await {
                Ok(Ok(m)) => spent = spent.max(m),
                Ok(Err(e)) => tracing::warn!("committing daily spend failed: {e}"),
                Err(e) => tracing::warn!("committing daily spend failed: {e}"),
            }
        }
        Settled {
            cost_usd: usd(spent),
            vendor_txn_id,
        }
    }

    /// Settles by the vendor's answer: 4xx/5xx release, anything else commits.
    pub async fn settle(self, status: StatusCode, response: Option<&Bytes>) -> Settled {
        if status.is_client_error() || status.is_server_error() {
            self.release().await
        } else {
            self.commit(response).await
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if !self.sent {
            // Dropping the reservations releases them.
            return;
        }
        if let Some(r) = self.run.take() {
            r.commit(None);
        }
        if let Some(d) = self.daily.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn_blocking(move || {
                if let Err(e) = d.commit(None) {
                    tracing::warn!("committing daily spend failed: {e}");
                }
            });
        }
    }
}

/// Reads up to [`buffer::LIMIT`] of a response body, for settling.
pub async fn read_response(body: Body) -> Result<Prefix, BufferError> {
    buffer::read_prefix(body, buffer::LIMIT).await
}
