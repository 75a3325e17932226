//! What callers hand the audit log (runs, decisions, outcomes) and how a
//! decision becomes a storable row: query strings and URL credentials
//! removed, text bounded, vendor derived, times formatted.

use std::time::SystemTime;

use crate::decision::{Alarm, Cause, Decision, Layer, Verdict};

use super::{clock, vendor};

/// The `events.id` of a recorded decision.
pub type EventId = i64;

/// Longest text stored in any column (bytes); longer text is cut at a
/// character boundary and marked with `…`.
const MAX_TEXT: usize = 2048;
/// Longest host stored (DNS names are at most 253 bytes).
const MAX_HOST: usize = 255;

/// One run of an agent under a policy: a row of `runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub run_id: String,
    /// The policy's `[run] name` (for example `billing-agent`).
    pub name: String,
    pub policy_path: String,
    pub policy_sha256: String,
    pub invoking_user: String,
    pub uid: u32,
    pub command: String,
    pub cgroup: String,
    pub started_at: SystemTime,
    pub ttl_seconds: Option<u64>,
    /// The orchestrator's name for the run (`audit_log.agent_run_id`).
    pub label: Option<String>,
    /// The systemd unit the run serves (daemon runs).
    pub unit: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    pub run_id: String,
    pub ended_at: SystemTime,
    pub exit_code: i32,
}

/// One decision: one row of `events`.
///
/// There is deliberately no field for a secret's value, a header or a body:
/// they cannot reach the database.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub run_id: String,
    pub at: SystemTime,
    pub layer: Layer,
    pub verdict: Verdict,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub method: Option<String>,
    /// The raw request target (path and query, or an absolute URL). The
    /// audit log stores the path only, and a flag when a query was removed.
    pub path: Option<String>,
    pub rule: Option<String>,
    pub reason: String,
    pub status: Option<u16>,
    pub bytes_up: Option<u64>,
    pub bytes_down: Option<u64>,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
    pub reserved_usd: Option<f64>,
    pub vendor_txn_id: Option<String>,
    /// Names (never values) of the secrets injected into the request.
    pub secrets: Vec<String>,
    pub approver: Option<String>,
    pub decided_ms: Option<f64>,
    /// `None` only for rows made up in tests of old databases.
    pub cause: Option<Cause>,
    pub alarm: Option<Alarm>,
    pub rule_line: Option<usize>,
    pub failure: Option<Failure>,
}

impl Default for AuditEvent {
    /// A request-layer refusal happening now, with no other context.
    fn default() -> Self {
        Self {
            run_id: String::new(),
            at: SystemTime::now(),
            layer: Layer::Request,
            verdict: Verdict::Deny,
            pid: None,
            comm: None,
            host: None,
            port: None,
            method: None,
            path: None,
            rule: None,
            reason: String::new(),
            status: None,
            bytes_up: None,
            bytes_down: None,
            latency_ms: None,
            cost_usd: None,
            reserved_usd: None,
            vendor_txn_id: None,
            secrets: Vec::new(),
            approver: None,
            decided_ms: None,
            cause: None,
            alarm: None,
            rule_line: None,
            failure: None,
        }
    }
}

impl AuditEvent {
    /// The row for a [`Decision`] of run `run_id`, happening now.
    pub fn from_decision(run_id: &str, d: &Decision) -> Self {
        Self {
            run_id: run_id.to_owned(),
            layer: d.layer,
            verdict: d.verdict,
            pid: d.pid,
            comm: d.comm.clone(),
            host: d.host.clone(),
            port: d.port,
            method: d.method.clone(),
            path: d.path.clone(),
            rule: d.rule.clone(),
            reason: d.reason.clone(),
            secrets: d.secrets.clone(),
            approver: d.approver.clone(),
            decided_ms: d.decided_ms,
            reserved_usd: d.reserved_usd,
            cause: Some(d.cause),
            alarm: d.alarm,
            rule_line: d.rule_line,
            ..Self::default()
        }
    }
}

/// How an upstream failed, as typed as its status would have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Its name did not resolve.
    Dns,
    /// No connection (refused, unreachable, timed out connecting).
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// It closed or reset the connection before the response headers.
    ResetBeforeHeaders,
    /// It closed or reset the connection in the middle of the body.
    ResetMidBody,
    /// It did not send its response headers in time.
    Timeout,
    /// The agent went away before the response ended.
    ClientGone,
    /// Anything else the HTTP client reports.
    Protocol,
    /// Its answer had to be scanned for a real credential and could not
    /// be (an encoding enforcer cannot decode): not passed on.
    Unscannable,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::ResetBeforeHeaders => "reset-before-headers",
            Self::ResetMidBody => "reset-mid-body",
            Self::Timeout => "timeout",
            Self::ClientGone => "client-gone",
            Self::Protocol => "protocol",
            Self::Unscannable => "unscannable",
        }
    }
}

/// What the response brought, written onto the request's row afterwards.
/// `None` fields leave the row's value as it was.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub status: Option<u16>,
    pub bytes_up: Option<u64>,
    pub bytes_down: Option<u64>,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
    pub vendor_txn_id: Option<String>,
    /// How the upstream failed, if it did.
    pub failure: Option<Failure>,
    /// What went wrong, in words, appended to the row's reason.
    pub detail: Option<String>,
}

/// An event ready to insert, prepared on the caller's thread so that the
/// writer thread only binds values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventRecord {
    pub run_id: String,
    pub at: String,
    pub layer: &'static str,
    pub verdict: &'static str,
    pub pid: Option<i64>,
    pub comm: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub query_redacted: bool,
    pub rule: Option<String>,
    pub reason: String,
    pub status: Option<i64>,
    pub bytes_up: Option<i64>,
    pub bytes_down: Option<i64>,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
    pub reserved_usd: Option<f64>,
    pub vendor: Option<String>,
    pub vendor_txn_id: Option<String>,
    /// JSON array of names, `None` when nothing was injected.
    pub secrets: Option<String>,
    pub approver: Option<String>,
    pub decided_ms: Option<f64>,
    pub cause: Option<&'static str>,
    pub alarm: Option<&'static str>,
    pub rule_line: Option<i64>,
    pub failure: Option<&'static str>,
}

impl From<AuditEvent> for EventRecord {
    fn from(e: AuditEvent) -> Self {
        let host = e
            .host
            .as_deref()
            .and_then(vendor::normalize_host)
            .map(|h| bounded(h, MAX_HOST));
        let vendor = host.as_deref().and_then(vendor::vendor_of);
        let (path, query_redacted) = match e.path.as_deref() {
            Some(raw) => {
                let (p, redacted) = redact_target(raw);
                (Some(bounded(p, MAX_TEXT)), redacted)
            }
            None => (None, false),
        };
        let secrets = if e.secrets.is_empty() {
            None
        } else {
            let names: Vec<String> = e.secrets.into_iter().map(|s| bounded(s, 256)).collect();
            serde_json::to_string(&names).ok()
        };
        Self {
            run_id: bounded(e.run_id, 256),
            at: clock::to_text(e.at),
            layer: e.layer.as_str(),
            verdict: e.verdict.as_str(),
            pid: e.pid.map(i64::from),
            comm: text(e.comm),
            host,
            port: e.port.map(i64::from),
            method: text(e.method),
            path,
            query_redacted,
            rule: text(e.rule),
            reason: bounded(e.reason, MAX_TEXT),
            status: e.status.map(i64::from),
            bytes_up: e.bytes_up.map(int),
            bytes_down: e.bytes_down.map(int),
            latency_ms: real(e.latency_ms),
            cost_usd: real(e.cost_usd),
            reserved_usd: real(e.reserved_usd),
            vendor,
            vendor_txn_id: text(e.vendor_txn_id),
            secrets,
            approver: text(e.approver),
            decided_ms: real(e.decided_ms),
            cause: e.cause.map(Cause::as_str),
            alarm: e.alarm.map(Alarm::as_str),
            rule_line: e.rule_line.and_then(|l| i64::try_from(l).ok()),
            failure: e.failure.map(Failure::as_str),
        }
    }
}

/// An [`Outcome`] ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutcomeRecord {
    pub status: Option<i64>,
    pub bytes_up: Option<i64>,
    pub bytes_down: Option<i64>,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
    pub vendor_txn_id: Option<String>,
    pub failure: Option<&'static str>,
    pub detail: Option<String>,
}

impl From<Outcome> for OutcomeRecord {
    fn from(o: Outcome) -> Self {
        Self {
            status: o.status.map(i64::from),
            bytes_up: o.bytes_up.map(int),
            bytes_down: o.bytes_down.map(int),
            latency_ms: real(o.latency_ms),
            cost_usd: real(o.cost_usd),
            vendor_txn_id: text(o.vendor_txn_id),
            failure: o.failure.map(Failure::as_str),
            detail: o.detail.map(|d| bounded(d, MAX_TEXT)),
        }
    }
}

/// Splits a request target into what the audit log may keep and whether
/// anything was removed: the query string and fragment are dropped (their
/// values are never stored), and so are credentials in an absolute URL
/// (`http://user:pass@host/p`).
pub fn redact_target(raw: &str) -> (String, bool) {
    let (no_fragment, fragment) = match raw.split_once('#') {
        Some((p, f)) => (p, !f.is_empty()),
        None => (raw, false),
    };
    let (path, query) = match no_fragment.split_once('?') {
        Some((p, q)) => (p, !q.is_empty()),
        None => (no_fragment, false),
    };
    let (path, userinfo) = strip_userinfo(path);
    (path, query || fragment || userinfo)
}

fn strip_userinfo(target: &str) -> (String, bool) {
    let Some(scheme_end) = target.find("://") else {
        return (target.to_owned(), false);
    };
    let (head, rest) = target.split_at(scheme_end + 3);
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let host = authority.get(at + 1..).unwrap_or("");
            (format!("{head}{host}{tail}"), true)
        }
        None => (target.to_owned(), false),
    }
}

/// `s` cut to at most `max` bytes at a character boundary (`…` appended).
pub(crate) fn bounded(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max.saturating_sub('…'.len_utf8());
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push('…');
    s
}

fn text(s: Option<String>) -> Option<String> {
    s.map(|s| bounded(s, MAX_TEXT))
}

/// SQLite integers are signed: counts beyond `i64::MAX` are clamped.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// NaN and infinities are not values anyone can query: stored as NULL.
fn real(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_fragments_and_userinfo_are_removed() {
        let cases = [
            ("/v1/charges", "/v1/charges", false),
            ("/v1/charges?limit=3", "/v1/charges", true),
            ("/v1/charges?", "/v1/charges", false),
            ("/a?token=SECRET#frag", "/a", true),
            ("/a#x?token=SECRET", "/a", true),
            ("?token=SECRET", "", true),
            (
                "http://user:pw@example.com/p?q=1",
                "http://example.com/p",
                true,
            ),
            ("http://example.com/a@b", "http://example.com/a@b", false),
            ("https://u@h", "https://h", true),
            ("api.stripe.com:443", "api.stripe.com:443", false),
            ("", "", false),
        ];
        for (raw, path, flag) in cases {
            assert_eq!(redact_target(raw), (path.to_owned(), flag), "{raw}");
        }
    }

    #[test]
    fn records_are_bounded_and_normalised() {
        let e = AuditEvent {
            run_id: String::from("r"),
            host: Some(String::from("API.Stripe.com.")),
            path: Some(format!("/{}?q=1", "é".repeat(5000))),
            reason: "x".repeat(10_000),
            bytes_up: Some(u64::MAX),
            latency_ms: Some(f64::NAN),
            cost_usd: Some(f64::INFINITY),
            secrets: vec![String::from("STRIPE_SECRET_KEY")],
            ..AuditEvent::default()
        };
        let r = EventRecord::from(e);
        assert_eq!(r.host.as_deref(), Some("api.stripe.com"));
        assert_eq!(r.vendor.as_deref(), Some("stripe"));
        assert!(r.query_redacted);
        let path = r.path.unwrap_or_default();
        assert!(path.len() <= MAX_TEXT && path.ends_with('…'));
        assert!(r.reason.len() <= MAX_TEXT);
        assert_eq!(r.bytes_up, Some(i64::MAX));
        assert_eq!((r.latency_ms, r.cost_usd), (None, None));
        assert_eq!(r.secrets.as_deref(), Some(r#"["STRIPE_SECRET_KEY"]"#));
        assert_eq!((r.layer, r.verdict), ("request", "deny"));
    }

    #[test]
    fn bounded_never_splits_characters() {
        for max in 0..12 {
            let s = bounded("ééééééééé".to_owned(), max);
            assert!(s.len() <= max.max('…'.len_utf8()), "{max}: {s}");
        }
        assert_eq!(bounded("abc".to_owned(), 3), "abc");
    }

    #[test]
    fn decisions_convert() {
        let d = Decision::new(Layer::Kernel, crate::decision::Cause::Kernel, "UDP refused")
            .host("10.0.0.1")
            .port(53)
            .process(7, "curl");
        let e = AuditEvent::from_decision("run-1", &d);
        assert_eq!(e.run_id, "run-1");
        assert_eq!(
            (e.layer, e.verdict, e.pid),
            (Layer::Kernel, Verdict::Deny, Some(7))
        );
        assert_eq!(e.comm.as_deref(), Some("curl"));
        let r = EventRecord::from(e);
        assert_eq!(r.vendor, None);
    }
}
