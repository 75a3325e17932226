//! The one place every decision goes: kernel refusals, DNS answers,
//! connection verdicts and per-request verdicts. Today it writes one
//! structured log line per decision and keeps the counts for the run summary.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use crate::audit::{AuditError, AuditEvent, AuditWriter, EventId, Outcome};

/// Which boundary made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Kernel,
    Dns,
    Connection,
    Request,
    /// Administrative actions on the run (revocation, expiry).
    Control,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Dns => "dns",
            Self::Connection => "connection",
            Self::Request => "request",
            Self::Control => "control",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    Ask,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Ask => "ask",
        }
    }
}

/// What a decision says about the agent beyond allow or deny: a sign that
/// it is compromised. Typed, so that rewording a message never turns an
/// alarm off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alarm {
    /// A secret's placeholder headed where the secret does not belong (a
    /// host, a DNS name, a WebSocket frame, a header name...).
    Exfiltration,
    /// Someone without the right to answer (the agent) tried to answer an
    /// approval or control the run.
    ForgedApproval,
}

impl Alarm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exfiltration => "exfiltration",
            Self::ForgedApproval => "forged-approval",
        }
    }
}

/// One decision, with whatever context the deciding layer knows.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub layer: Layer,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub reason: String,
    /// Names of the secrets injected into this request (never values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Who answered an `ask` (terminal, root via the control socket...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// How long the answer took, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<f64>,
    /// Reserved under the spend caps before forwarding (USD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_usd: Option<f64>,
    /// Set when the decision is evidence of a compromised agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<Alarm>,
}

impl Decision {
    pub fn new(layer: Layer, verdict: Verdict, reason: impl Into<String>) -> Self {
        Self {
            layer,
            verdict,
            pid: None,
            comm: None,
            host: None,
            port: None,
            method: None,
            path: None,
            rule: None,
            reason: reason.into(),
            secrets: Vec::new(),
            approver: None,
            decided_ms: None,
            reserved_usd: None,
            alarm: None,
        }
    }

    pub fn alarm(mut self, alarm: Alarm) -> Self {
        self.alarm = Some(alarm);
        self
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn process(mut self, pid: u32, comm: impl Into<String>) -> Self {
        self.pid = (pid != 0).then_some(pid);
        let comm = comm.into();
        self.comm = (!comm.is_empty()).then_some(comm);
        self
    }

    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    pub fn request(mut self, method: impl Into<String>, path: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self.path = Some(path.into());
        self
    }

    /// `host:port` (or what is known of it) for summaries.
    pub fn destination(&self) -> String {
        match (&self.host, self.port) {
            (Some(h), Some(p)) if h.contains(':') => format!("[{h}]:{p}"),
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.clone(),
            (None, Some(p)) => format!("port {p}"),
            (None, None) => String::from("-"),
        }
    }
}

/// Counts kept for the end-of-run summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub allowed: u64,
    pub denied: u64,
    pub asked: u64,
    /// Refused destinations and how often, for "top refused".
    pub refused: HashMap<String, u64>,
    /// Refusals that were credential exfiltration attempts.
    pub exfiltration_attempts: u64,
    /// Attempts to answer an approval or control the run without the right to.
    pub forged_approvals: u64,
}

impl Tally {
    /// The most refused destinations, most frequent first.
    pub fn top_refused(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self.refused.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// How decisions are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    /// One readable line per refusal (and per allow with `verbose`).
    Human { verbose: bool },
    /// One JSON object per decision.
    Json,
    /// Nothing (tests of the sink itself).
    Quiet,
}

/// Where decisions go: the tally, stderr, and the audit log. Cheap to
/// clone; shared by every task of a run.
#[derive(Clone)]
pub struct DecisionSink {
    run_id: Arc<str>,
    mode: LogMode,
    audit: Option<AuditWriter>,
    tally: Arc<Mutex<Tally>>,
    /// Refusals already shown on stderr (human mode shows each kind once).
    shown: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl DecisionSink {
    pub fn new(run_id: &str, mode: LogMode) -> Self {
        Self::with_audit(run_id, mode, None)
    }

    /// A sink that also writes every decision to the audit log.
    pub fn with_audit(run_id: &str, mode: LogMode, audit: Option<AuditWriter>) -> Self {
        Self {
            run_id: Arc::from(run_id),
            mode,
            audit,
            tally: Arc::new(Mutex::new(Tally::default())),
            shown: Arc::new(Mutex::new(std::collections::HashSet::new())),
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Records one decision: the tally, a log line, and an audit row
    /// committed with the next batch (for decisions nothing waits on).
    pub fn record(&self, d: &Decision) {
        self.count_and_log(d);
        if let Some(a) = &self.audit {
            a.record_later(AuditEvent::from_decision(&self.run_id, d));
        }
    }

    /// Records a decision that lets something through, and returns only once
    /// its audit row is committed: call it before forwarding anything. An
    /// error means the audit log cannot be written, and nothing may pass.
    pub async fn commit(&self, d: &Decision) -> Result<Option<EventId>, AuditError> {
        self.count_and_log(d);
        match &self.audit {
            None => Ok(None),
            Some(a) => {
                a.healthy()?;
                Ok(Some(
                    a.record(AuditEvent::from_decision(&self.run_id, d)).await?,
                ))
            }
        }
    }

    /// Writes what happened after an allowed decision onto its row.
    pub fn complete(&self, id: Option<EventId>, outcome: Outcome) {
        if let (Some(a), Some(id)) = (&self.audit, id) {
            a.complete(id, outcome);
        }
    }

    /// Whether decisions can still be audited (always, without an audit log).
    pub fn healthy(&self) -> Result<(), AuditError> {
        self.audit.as_ref().map_or(Ok(()), AuditWriter::healthy)
    }

    /// The audit writer, if the run has one.
    pub fn audit(&self) -> Option<&AuditWriter> {
        self.audit.as_ref()
    }

    fn count_and_log(&self, d: &Decision) {
        {
            let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            match d.verdict {
                Verdict::Allow => t.allowed += 1,
                Verdict::Deny => {
                    t.denied += 1;
                    *t.refused.entry(d.destination()).or_default() += 1;
                    match d.alarm {
                        Some(Alarm::Exfiltration) => t.exfiltration_attempts += 1,
                        Some(Alarm::ForgedApproval) => t.forged_approvals += 1,
                        None => {}
                    }
                }
                Verdict::Ask => t.asked += 1,
            }
            // A request a human (or the lack of one) decided on.
            if d.approver.is_some() && d.verdict != Verdict::Ask {
                t.asked += 1;
            }
        }
        self.log(d);
    }

    fn log(&self, d: &Decision) {
        match self.mode {
            LogMode::Quiet => {}
            LogMode::Json => {
                #[derive(Serialize)]
                struct Line<'a> {
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
                if let Ok(line) = serde_json::to_string(&Line {
                    run: &self.run_id,
                    decision: &shown,
                    query_redacted,
                }) {
                    eprintln!("{line}");
                }
            }
            LogMode::Human { verbose } => {
                if d.verdict == Verdict::Allow && !verbose {
                    return;
                }
                // The same refusal over and over (a retry loop, nscd on every
                // lookup) is shown once; the summary counts them all.
                let key = format!(
                    "{:?}|{}|{:?}|{}|{:?}",
                    d.layer,
                    d.destination(),
                    d.path,
                    d.reason,
                    d.comm
                );
                let first = self.shown.lock().map(|mut s| s.insert(key)).unwrap_or(true);
                // Alarms are always shown.
                let critical = d.alarm.is_some();
                if !verbose && !first && !critical {
                    return;
                }
                eprintln!("enforcer: {}", human_line(d));
            }
        }
    }

    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `refused kernel 10.0.0.1:80 by curl[123]: UDP other than DNS is refused`
pub fn human_line(d: &Decision) -> String {
    let what = match d.verdict {
        Verdict::Allow => "allowed",
        Verdict::Deny => "refused",
        Verdict::Ask => "asked",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_and_ranks_refusals() {
        let sink = DecisionSink::new("r1", LogMode::Quiet);
        for _ in 0..3 {
            sink.record(
                &Decision::new(Layer::Kernel, Verdict::Deny, "x")
                    .host("10.0.0.1")
                    .port(53),
            );
        }
        sink.record(
            &Decision::new(Layer::Connection, Verdict::Deny, "x")
                .host("evil.test")
                .port(443),
        );
        sink.record(
            &Decision::new(Layer::Connection, Verdict::Allow, "ok")
                .host("good.test")
                .port(443),
        );
        let t = sink.tally();
        assert_eq!((t.allowed, t.denied, t.asked), (1, 4, 0));
        assert_eq!(t.top_refused(1), vec![(String::from("10.0.0.1:53"), 3)]);
    }

    #[test]
    fn human_lines_name_process_destination_and_reason() {
        let d = Decision::new(
            Layer::Kernel,
            Verdict::Deny,
            "UDP other than DNS is refused",
        )
        .host("fd00::2")
        .port(443)
        .process(42, "curl");
        assert_eq!(
            human_line(&d),
            "refused kernel [fd00::2]:443 by curl[42]: UDP other than DNS is refused"
        );
    }
}
