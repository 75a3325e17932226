//! The one type every decision of every layer is: kernel refusals, DNS
//! answers, connection verdicts and per-request verdicts, with typed fields
//! for what it was ([`Layer`], [`Verdict`], [`Cause`], the rule's line) and
//! words for people (`reason`). The same value goes to stderr, the counts
//! of the run summary ([`tally`]) and the audit log ([`sink`]).

pub mod cause;
pub mod line;
pub mod sink;
pub mod tally;

use serde::Serialize;

pub use cause::Cause;
pub use line::human_line;
pub use sink::{DecisionSink, LogMode};
pub use tally::Tally;

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
/// it is compromised. Derived from the [`Cause`], never from words.
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
    pub cause: Cause,
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
    /// The request target as sent (the audit log and the logs drop its query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The rule (or `[[host]]` / `[[tcp]]` entry) that decided, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Its line in the policy file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_line: Option<usize>,
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
    /// A decision of `layer` for `cause` (which sets the verdict).
    pub fn new(layer: Layer, cause: Cause, reason: impl Into<String>) -> Self {
        Self {
            layer,
            verdict: cause.verdict(),
            cause,
            pid: None,
            comm: None,
            host: None,
            port: None,
            method: None,
            path: None,
            rule: None,
            rule_line: None,
            reason: reason.into(),
            secrets: Vec::new(),
            approver: None,
            decided_ms: None,
            reserved_usd: None,
            alarm: alarm_of(cause),
        }
    }

    /// Changes what the decision is (and so its verdict and alarm).
    pub fn set_cause(&mut self, cause: Cause, reason: impl Into<String>) {
        self.cause = cause;
        self.verdict = cause.verdict();
        self.alarm = alarm_of(cause);
        self.reason = reason.into();
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

    /// The rule or entry that decided, and its line when it has one.
    pub fn rule(mut self, rule: impl Into<String>, line: Option<usize>) -> Self {
        self.rule = Some(rule.into());
        self.rule_line = line;
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

fn alarm_of(cause: Cause) -> Option<Alarm> {
    match cause {
        Cause::Exfiltration => Some(Alarm::Exfiltration),
        Cause::ForgedApproval => Some(Alarm::ForgedApproval),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_decides_the_verdict_and_the_alarm() {
        let d = Decision::new(
            Layer::Request,
            Cause::Exfiltration,
            "whatever the words say",
        );
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.alarm, Some(Alarm::Exfiltration));
        let mut d = Decision::new(
            Layer::Request,
            Cause::Allowed,
            "credential exfiltration attempt",
        );
        assert_eq!(d.alarm, None, "words never raise an alarm");
        d.set_cause(Cause::ApprovalDenied, "denied by root");
        assert_eq!((d.verdict, d.alarm), (Verdict::Deny, None));
    }
}
