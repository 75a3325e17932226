//! Why a decision came out as it did, as a type: the audit log's `cause`
//! column, the summary's counts and the alarms read this, never the reason
//! text (which is for people, and free to change).

use serde::Serialize;

use super::Verdict;

/// The kind of a decision. Each cause implies its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    // Let through.
    /// A rule, a whole-host `allow`, a `[[tcp]]` entry or an allowed name.
    Allowed,
    /// A connection whose requests are decided one by one.
    Intercepted,
    /// A connection relayed without interception (whole-host allow).
    PassedThrough,
    /// A human approved an `ask`.
    Approved,
    /// Observe mode: the policy would have refused this (the row's `rule`
    /// and `reason` say how); it was let through and recorded.
    WouldDeny,

    // Refused by the policy.
    /// The host, port or name is not in the policy (or is denied as a whole).
    NotInPolicy,
    /// A request no rule matches.
    DefaultDeny,
    /// A rule says `deny`.
    DenyRule,
    /// A request servers would read differently (see `CanonicalRequest`).
    Ambiguous,
    /// The Host or TLS name is not the name the connection was decided on.
    NameMismatch,
    /// A secret's placeholder headed where the secret does not belong.
    Exfiltration,
    /// A secret would have crossed the network in cleartext.
    Cleartext,
    /// Neither TLS nor HTTP, and no `[[tcp]]` rule.
    UnknownProtocol,

    // Refused by a limit.
    RateLimited,
    LoopBreaker,
    OverCap,
    /// The call's cost could not be read.
    CostUnknown,
    /// The call's amount is above its rule's per-call ceiling
    /// (`max_usd_per_call` / `deny_above_usd`).
    OverCallCeiling,
    /// A header or field the rule requires (`require`) is missing,
    /// ambiguous or has a value the rule does not accept.
    RequirementUnmet,
    /// The request body was too large, too slow or unreadable for a rule
    /// that must read it.
    BodyRefused,

    // Refused by a human, or for want of one.
    ApprovalDenied,
    ApprovalTimeout,
    NoApprover,

    // The run's credentials.
    CredentialsExpired,
    CredentialsRevoked,
    /// Someone without the right to tried to answer an approval or control
    /// the run.
    ForgedApproval,

    // Enforcer itself cannot decide safely: fail closed.
    AuditUnavailable,
    SpendStoreUnavailable,

    /// Refused in the kernel (a socket operation).
    Kernel,
    /// Refused in the kernel, and known to be harmless: glibc's nscd probe,
    /// getaddrinfo's UDP `connect()` to sort addresses (no datagram is sent).
    BenignProbe,
    /// The upstream failed (the outcome's `failure` says how).
    UpstreamFailed,
    /// A connection that did not come from the run (or whose origin the
    /// kernel did not record).
    NotFromRun,
    /// The agent went away before its request was decided (nothing left).
    Abandoned,
    /// A marker: the run was refused more than [`super::sink::FLOOD_ROWS`]
    /// times in one second; the rest of that second's refusals are counted
    /// in the run's summary, not written one by one.
    Flood,
}

impl Cause {
    /// The verdict this cause means.
    pub fn verdict(self) -> Verdict {
        match self {
            Self::Allowed
            | Self::Intercepted
            | Self::PassedThrough
            | Self::Approved
            | Self::WouldDeny => Verdict::Allow,
            _ => Verdict::Deny,
        }
    }

    /// As stored in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Intercepted => "intercepted",
            Self::PassedThrough => "passed-through",
            Self::Approved => "approved",
            Self::WouldDeny => "would-deny",
            Self::NotInPolicy => "not-in-policy",
            Self::DefaultDeny => "default-deny",
            Self::DenyRule => "deny-rule",
            Self::Ambiguous => "ambiguous",
            Self::NameMismatch => "name-mismatch",
            Self::Exfiltration => "exfiltration",
            Self::Cleartext => "cleartext",
            Self::UnknownProtocol => "unknown-protocol",
            Self::RateLimited => "rate-limited",
            Self::LoopBreaker => "loop-breaker",
            Self::OverCap => "over-cap",
            Self::CostUnknown => "cost-unknown",
            Self::OverCallCeiling => "over-call-ceiling",
            Self::RequirementUnmet => "requirement-unmet",
            Self::BodyRefused => "body-refused",
            Self::ApprovalDenied => "approval-denied",
            Self::ApprovalTimeout => "approval-timeout",
            Self::NoApprover => "no-approver",
            Self::CredentialsExpired => "credentials-expired",
            Self::CredentialsRevoked => "credentials-revoked",
            Self::ForgedApproval => "forged-approval",
            Self::AuditUnavailable => "audit-unavailable",
            Self::SpendStoreUnavailable => "spend-store-unavailable",
            Self::Kernel => "kernel",
            Self::BenignProbe => "benign-probe",
            Self::UpstreamFailed => "upstream-failed",
            Self::NotFromRun => "not-from-run",
            Self::Abandoned => "abandoned",
            Self::Flood => "flood",
        }
    }

    /// Every cause, in declaration order.
    /// (A new cause goes here too: `parse`, the CI report and `policy test`
    /// read the audit log's `cause` column through this list.)
    pub const ALL: [Cause; 34] = [
        Self::Allowed,
        Self::Intercepted,
        Self::PassedThrough,
        Self::Approved,
        Self::WouldDeny,
        Self::NotInPolicy,
        Self::DefaultDeny,
        Self::DenyRule,
        Self::Ambiguous,
        Self::NameMismatch,
        Self::Exfiltration,
        Self::Cleartext,
        Self::UnknownProtocol,
        Self::RateLimited,
        Self::LoopBreaker,
        Self::OverCap,
        Self::OverCallCeiling,
        Self::RequirementUnmet,
        Self::CostUnknown,
        Self::BodyRefused,
        Self::ApprovalDenied,
        Self::ApprovalTimeout,
        Self::NoApprover,
        Self::CredentialsExpired,
        Self::CredentialsRevoked,
        Self::ForgedApproval,
        Self::AuditUnavailable,
        Self::SpendStoreUnavailable,
        Self::Kernel,
        Self::BenignProbe,
        Self::UpstreamFailed,
        Self::NotFromRun,
        Self::Abandoned,
        Self::Flood,
    ];

    /// The cause an audit row's `cause` column names (`None` for text no
    /// version of enforcer wrote).
    pub fn parse(text: &str) -> Option<Cause> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether the summary counts it as a refusal (benign probes stay
    /// refused in the kernel but are neither printed nor counted).
    pub fn is_refusal(self) -> bool {
        self.verdict() == Verdict::Deny && self != Self::BenignProbe
    }

    /// Whether a human reading stderr without `-v` must see it even when
    /// the same thing was refused before.
    pub fn always_shown(self) -> bool {
        matches!(
            self,
            Self::Exfiltration
                | Self::ForgedApproval
                | Self::CredentialsExpired
                | Self::CredentialsRevoked
                | Self::AuditUnavailable
                | Self::UpstreamFailed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_imply_their_verdict_and_probes_are_not_refusals() {
        assert_eq!(Cause::Approved.verdict(), Verdict::Allow);
        assert_eq!(Cause::Ambiguous.verdict(), Verdict::Deny);
        assert!(Cause::Kernel.is_refusal());
        assert!(!Cause::BenignProbe.is_refusal());
        assert_eq!(Cause::BenignProbe.verdict(), Verdict::Deny);
        let json = serde_json::to_string(&Cause::CredentialsRevoked).unwrap();
        assert_eq!(json, format!("\"{}\"", Cause::CredentialsRevoked.as_str()));
    }

    #[test]
    fn every_cause_parses_back_from_its_column_text() {
        for c in Cause::ALL {
            assert_eq!(Cause::parse(c.as_str()), Some(c));
        }
        assert_eq!(Cause::parse("no-such-cause"), None);
    }
}
