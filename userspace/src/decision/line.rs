//! How one decision reads on stderr: a line for people, or (with
//! `--log-json`) one JSON object per line with an RFC 3339 timestamp and a
//! level. Queries are never shown: they may carry secrets.

use serde::Serialize;

use super::{Cause, Decision, Layer, Verdict};

/// `refused kernel 10.0.0.1:80 by curl[123]: UDP other than DNS is refused`
pub fn human_line(d: &Decision) -> String {
    if d.layer == Layer::Control {
        // Revocation, expiry, forged answers: named as what they are.
        let what = match d.cause {
            Cause::CredentialsRevoked => "credentials revoked",
            Cause::CredentialsExpired => "credentials expired",
            Cause::ForgedApproval => "FORGED APPROVAL ATTEMPT",
            _ => "run",
        };
        return format!("{what}: {}", d.reason);
    }
    let what = match (d.verdict, d.cause) {
        (_, Cause::UpstreamFailed) => "failed",
        (_, Cause::Exfiltration) => "EXFILTRATION ATTEMPT, refused",
        (Verdict::Allow, _) => "allowed",
        (Verdict::Deny, _) => "refused",
        (Verdict::Ask, _) => "asked",
    };
    let mut line = format!("{what} {} {}", d.layer.as_str(), d.destination());
    if let (Some(m), Some(p)) = (&d.method, &d.path) {
        let (path, redacted) = crate::audit::redact_target(p);
        let tail = if redacted { "?…" } else { "" };
        line.push_str(&format!(" {m} {path}{tail}"));
    }
    match (&d.comm, d.pid) {
        (Some(c), Some(p)) => line.push_str(&format!(" by {c}[{p}]")),
        (None, Some(p)) => line.push_str(&format!(" by pid {p}")),
        _ => {}
    }
    line.push_str(": ");
    line.push_str(&d.reason);
    if let Some(r) = &d.rule {
        line.push_str(&format!(" ({r})"));
    }
    line
}

/// The level of a decision's JSON line.
fn level(d: &Decision) -> &'static str {
    if d.alarm.is_some() {
        "error"
    } else if d.cause.is_refusal() || d.cause == Cause::UpstreamFailed {
        "warn"
    } else {
        "info"
    }
}

/// One JSON line for a decision of run `run`.
pub fn json_line(run: &str, d: &Decision) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        ts: String,
        level: &'static str,
        event: &'static str,
        run: &'a str,
        #[serde(flatten)]
        decision: &'a Decision,
        /// The query was removed from `path` (it may carry secrets).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        query_redacted: bool,
    }
    let mut shown = d.clone();
    let mut query_redacted = false;
    if let Some(p) = &d.path {
        let (path, redacted) = crate::audit::redact_target(p);
        shown.path = Some(path);
        query_redacted = redacted;
    }
    serde_json::to_string(&Line {
        ts: crate::logging::now_rfc3339(),
        level: level(d),
        event: "decision",
        run,
        decision: &shown,
        query_redacted,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_lines_name_process_destination_and_reason() {
        let d = Decision::new(
            Layer::Kernel,
            Cause::Kernel,
            "UDP other than DNS is refused",
        )
        .host("fd00::2")
        .port(443)
        .process(42, "curl");
        assert_eq!(
            human_line(&d),
            "refused kernel [fd00::2]:443 by curl[42]: UDP other than DNS is refused"
        );
        let revoked = Decision::new(
            Layer::Control,
            Cause::CredentialsRevoked,
            "placeholders no longer work",
        );
        assert_eq!(
            human_line(&revoked),
            "credentials revoked: placeholders no longer work"
        );
    }

    #[test]
    fn json_lines_parse_and_hide_queries() {
        let d = Decision::new(Layer::Request, Cause::DefaultDeny, "no rule matches")
            .host("api.test")
            .port(443)
            .request("GET", "/v1/x?token=secret");
        let line = json_line("r1", &d);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["cause"], "default-deny");
        assert_eq!(v["path"], "/v1/x");
        assert_eq!(v["query_redacted"], true);
        assert!(!line.contains("secret"));
        let ts = v["ts"].as_str().unwrap();
        let rfc3339 = time::format_description::well_known::Rfc3339;
        assert!(time::OffsetDateTime::parse(ts, &rfc3339).is_ok(), "{ts}");
    }
}
