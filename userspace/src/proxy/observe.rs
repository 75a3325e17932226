//! Observe mode in the proxy: the one place where a refusal by the policy's
//! rules becomes "would deny" and the request or connection goes ahead.
//! Only the policy's own verdicts are waived (a host, port or name not in
//! the policy, no matching rule, a deny rule); never an exfiltration or
//! forgery alarm, a cleartext secret, an ambiguous request, a limit, a
//! cap, a credential's state, or anything the kernel refuses.

use super::refusal::Refusal;
use crate::decision::{Cause, Decision};

/// The `Conn::host` of a connection observe mode let through although no
/// `[[host]]` entry allows it: no rules, no limits, no secrets apply.
pub const OBSERVED: usize = usize::MAX;

/// Whether observe mode lets a refusal with this cause through.
pub fn waivable(cause: Cause) -> bool {
    matches!(
        cause,
        Cause::NotInPolicy | Cause::DefaultDeny | Cause::DenyRule
    )
}

/// In observe mode, turns a waivable refusal into a "would deny" decision
/// (keeping the rule it missed, and saying what the cause would have been)
/// and returns `None`: go ahead. Otherwise returns the refusal.
pub fn waive(observe: bool, refusal: Refusal, d: &mut Decision) -> Option<Refusal> {
    if !observe || !waivable(refusal.cause) {
        return Some(refusal);
    }
    d.set_cause(
        Cause::WouldDeny,
        format!(
            "observe mode: would deny ({}): {}",
            refusal.cause.as_str(),
            refusal.reason
        ),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Layer, Verdict};

    #[test]
    fn only_the_policys_own_verdicts_are_waived_and_only_in_observe_mode() {
        let mut d = Decision::new(Layer::Request, Cause::Allowed, "");
        let r = || Refusal::new(Cause::DefaultDeny, "no rule matches; default deny");
        assert!(waive(false, r(), &mut d).is_some());
        assert_eq!(d.cause, Cause::Allowed);
        assert!(waive(true, r(), &mut d).is_none());
        assert_eq!((d.cause, d.verdict), (Cause::WouldDeny, Verdict::Allow));
        assert!(
            d.reason.contains("would deny (default-deny)"),
            "{}",
            d.reason
        );
        for never in [
            Cause::Exfiltration,
            Cause::Cleartext,
            Cause::Ambiguous,
            Cause::NameMismatch,
            Cause::OverCap,
            Cause::RateLimited,
            Cause::CredentialsRevoked,
            Cause::Kernel,
            Cause::NoApprover,
        ] {
            let mut d = Decision::new(Layer::Request, Cause::Allowed, "");
            assert!(
                waive(true, Refusal::new(never, "x"), &mut d).is_some(),
                "{never:?} is never waived"
            );
        }
    }
}
