//! What in a run can fail a CI job: exfiltration attempts, limits (caps,
//! rates, the loop breaker), asks and refusals, read from each decision's
//! typed cause and alarm, never from its words.

use serde::Serialize;

use crate::decision::{Alarm, Cause, Verdict};

/// A kind of violation `--fail-on` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Violation {
    /// A placeholder headed where its secret does not belong.
    #[serde(rename = "exfil")]
    Exfiltration,
    /// A spend cap, per-call ceiling, rate limit, call limit or the loop
    /// breaker refused a call.
    #[serde(rename = "cap")]
    Capped,
    /// A request needed a human (in CI: denied).
    #[serde(rename = "ask")]
    Asked,
    /// Anything refused (benign probes aside).
    #[serde(rename = "deny")]
    Denied,
}

impl Violation {
    /// Most serious first: the first that happened gives the exit status.
    pub const BY_SEVERITY: [Violation; 4] =
        [Self::Exfiltration, Self::Capped, Self::Asked, Self::Denied];

    pub fn exit_code(self) -> i32 {
        match self {
            Self::Exfiltration => super::EXIT_EXFILTRATION,
            Self::Capped => super::EXIT_CAPPED,
            Self::Asked => super::EXIT_ASKED,
            Self::Denied => super::EXIT_DENIED,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exfiltration => "exfil",
            Self::Capped => "cap",
            Self::Asked => "ask",
            Self::Denied => "deny",
        }
    }

    /// The violations one decision is: `asked` when a human was (or would
    /// have been) asked, whatever the answer.
    pub fn of(cause: Cause, alarm: Option<Alarm>, asked: bool) -> Vec<Violation> {
        let mut v = Vec::new();
        if alarm == Some(Alarm::Exfiltration) {
            v.push(Self::Exfiltration);
        }
        if matches!(
            cause,
            Cause::OverCap | Cause::OverCallCeiling | Cause::RateLimited | Cause::LoopBreaker
        ) {
            v.push(Self::Capped);
        }
        if asked
            || matches!(
                cause,
                Cause::NoApprover
                    | Cause::ApprovalDenied
                    | Cause::ApprovalTimeout
                    | Cause::Approved
            )
        {
            v.push(Self::Asked);
        }
        if cause.verdict() == Verdict::Deny && cause.is_refusal() {
            v.push(Self::Denied);
        }
        v
    }
}

/// How many of each violation a run had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Violations {
    pub exfil: u64,
    pub cap: u64,
    pub ask: u64,
    pub deny: u64,
}

impl Violations {
    pub fn add(&mut self, v: Violation) {
        *self.slot(v) += 1;
    }

    pub fn count(&self, v: Violation) -> u64 {
        match v {
            Violation::Exfiltration => self.exfil,
            Violation::Capped => self.cap,
            Violation::Asked => self.ask,
            Violation::Denied => self.deny,
        }
    }

    fn slot(&mut self, v: Violation) -> &mut u64 {
        match v {
            Violation::Exfiltration => &mut self.exfil,
            Violation::Capped => &mut self.cap,
            Violation::Asked => &mut self.ask,
            Violation::Denied => &mut self.deny,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_classified_by_their_cause_and_alarm() {
        assert_eq!(
            Violation::of(Cause::Exfiltration, Some(Alarm::Exfiltration), false),
            vec![Violation::Exfiltration, Violation::Denied]
        );
        assert_eq!(
            Violation::of(Cause::OverCap, None, false),
            vec![Violation::Capped, Violation::Denied]
        );
        assert_eq!(
            Violation::of(Cause::NoApprover, None, true),
            vec![Violation::Asked, Violation::Denied]
        );
        assert_eq!(
            Violation::of(Cause::Approved, None, true),
            vec![Violation::Asked]
        );
        assert!(Violation::of(Cause::Allowed, None, false).is_empty());
        assert!(Violation::of(Cause::BenignProbe, None, false).is_empty());
        assert_eq!(
            Violation::of(Cause::Kernel, None, false),
            vec![Violation::Denied]
        );
    }
}
