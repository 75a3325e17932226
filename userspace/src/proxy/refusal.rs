//! How a stage's "no" reaches the agent: one JSON body shape for every
//! refusal, with the status the cause calls for (400 ambiguous, 403 policy,
//! 429 limits, 502/504 upstream failures, 503 when enforcer cannot decide
//! safely), naming the run, the request, the typed cause and the reason.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};

use super::upstream::Body;
use crate::decision::{Cause, Decision};
use crate::policy::RefusalShape;

/// A request that stops here: the decision to record (its cause, reason and
/// rule) and what the agent is told.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub cause: Cause,
    pub reason: String,
    /// Extra fields for the JSON body (`limit`, `hint`, `kind`...).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Extra response headers (`Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    /// A refusal with the status `cause` usually gets.
    pub fn new(cause: Cause, reason: impl Into<String>) -> Self {
        Self {
            status: status_for(cause),
            cause,
            reason: reason.into(),
            extra: serde_json::Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn field(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The `error` line of the body: what kind of refusal this is.
    fn title(&self) -> &'static str {
        match self.cause {
            Cause::Ambiguous => "ambiguous request refused by enforcer",
            Cause::RateLimited => "rate limit",
            Cause::LoopBreaker => "loop breaker tripped",
            Cause::OverCap => "spend cap",
            Cause::CostUnknown => "request refused: its cost cannot be determined",
            Cause::OverCallCeiling => "request refused: above the per-call ceiling",
            Cause::RequirementUnmet => {
                "request refused: a required header or field is missing or not accepted"
            }
            Cause::BodyRefused => "request body refused",
            Cause::AuditUnavailable => {
                "request refused: the audit log cannot be written, so nothing is forwarded"
            }
            Cause::SpendStoreUnavailable => "request refused: the daily spend cannot be checked",
            Cause::UpstreamFailed => "upstream request failed",
            _ => "request refused by enforcer policy",
        }
    }

    /// The response for `d` (the decision already recorded for it).
    pub fn response(&self, d: &Decision, run: &str) -> Response<Body> {
        let body = self.body(d, run);
        let mut resp = json_response(self.status, &body);
        for (k, v) in &self.headers {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
        resp
    }

    /// The response for `d` in a vendor's own error shape (so the agent's
    /// SDK raises its usual error), with enforcer's own body under
    /// `enforcer`; enforcer's shape when the host has no profile.
    pub fn response_shaped(
        &self,
        d: &Decision,
        run: &str,
        shape: Option<&RefusalShape>,
    ) -> Response<Body> {
        let Some(shape) = shape else {
            return self.response(d, run);
        };
        let message = format!("{}: {}", self.title(), self.reason);
        let mut body = shape.render(self.status.as_u16(), self.cause.as_str(), &message);
        if let Some(obj) = body.as_object_mut() {
            obj.insert("enforcer".into(), self.body(d, run));
        }
        let mut resp = json_response(self.status, &body);
        for (k, v) in &shape.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                resp.headers_mut().insert(k, v);
            }
        }
        for (k, v) in &self.headers {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
        resp
    }

    /// Enforcer's own JSON body for `d`.
    fn body(&self, d: &Decision, run: &str) -> serde_json::Value {
        let mut body = serde_json::json!({
            "error": self.title(),
            "run": run,
            "host": d.host,
            "port": d.port,
            "method": d.method,
            "path": d.path.as_deref().map(|p| crate::audit::redact_target(p).0),
            "cause": self.cause.as_str(),
            "rule": d.rule,
            "reason": self.reason,
        });
        if let Some(obj) = body.as_object_mut() {
            for (k, v) in &self.extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

/// The status each cause answers with by default.
fn status_for(cause: Cause) -> StatusCode {
    match cause {
        Cause::Ambiguous => StatusCode::BAD_REQUEST,
        Cause::RateLimited | Cause::LoopBreaker | Cause::OverCap => StatusCode::TOO_MANY_REQUESTS,
        Cause::AuditUnavailable | Cause::SpendStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        Cause::UpstreamFailed => StatusCode::BAD_GATEWAY,
        _ => StatusCode::FORBIDDEN,
    }
}

/// A JSON response marked as enforcer's own (`x-enforcer: refused`).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
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

/// A complete body.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Layer;

    #[test]
    fn bodies_name_the_cause_and_hide_the_query() {
        let d = Decision::new(Layer::Request, Cause::OverCap, "over the cap")
            .host("api.test")
            .port(443)
            .request("POST", "/v1/x?token=t0p");
        let r = Refusal::new(Cause::OverCap, "over the cap")
            .field("limit", serde_json::json!({"cap": 50}))
            .header(header::RETRY_AFTER, HeaderValue::from_static("3"));
        let resp = r.response(&d, "run-1");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        let body = futures_body(resp);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["cause"], "over-cap");
        assert_eq!(v["path"], "/v1/x");
        assert_eq!(v["limit"]["cap"], 50);
        assert!(!String::from_utf8_lossy(&body).contains("t0p"));
    }

    fn futures_body(resp: Response<Body>) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec()
        })
    }
}
