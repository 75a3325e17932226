//! `enforcer policy test POLICY --against AUDIT_DB`: replays recorded
//! decisions through a (new) policy without sending anything, with the
//! functions the proxy and resolver decide with (`Policy::connection`,
//! `HostPolicy::decide`: the canonical request, then the rules;
//! `Policy::allows_name`), and lists what would change.

use std::{collections::BTreeMap, fmt};

use super::{Action, ConnectionVerdict, Policy};
use crate::{
    audit::EventRow,
    decision::{Cause, Verdict},
};

/// How a recorded decision changes under the new policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    NewlyRefused,
    NewlyAsked,
    NewlyAllowed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewlyRefused => "newly refused",
            Self::NewlyAsked => "newly asked",
            Self::NewlyAllowed => "newly allowed",
        }
    }
}

/// One recorded decision that comes out differently (grouped: `count`
/// identical ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub layer: String,
    pub destination: String,
    pub before: Action,
    pub after: Action,
    /// Why the new policy decides so (its rule, or the reason).
    pub why: String,
    pub count: u64,
}

/// What replaying recorded decisions through a policy found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Decisions replayed.
    pub replayed: u64,
    /// Recorded rows that are not a policy decision (kernel refusals,
    /// exfiltration and forgery alarms, upstream-only rows, control events).
    pub skipped: u64,
    pub changes: Vec<Change>,
}

impl Replay {
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }

    pub fn count(&self, kind: ChangeKind) -> u64 {
        self.changes
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.count)
            .sum()
    }
}

impl fmt::Display for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} recorded decision{} replayed ({} not policy decisions, skipped)",
            self.replayed,
            if self.replayed == 1 { "" } else { "s" },
            self.skipped
        )?;
        if !self.changed() {
            return write!(f, "\nno change: the policy decides every one as recorded");
        }
        for kind in [
            ChangeKind::NewlyRefused,
            ChangeKind::NewlyAsked,
            ChangeKind::NewlyAllowed,
        ] {
            let n = self.count(kind);
            if n == 0 {
                continue;
            }
            write!(f, "\n{} ({n}):", kind.as_str())?;
            for c in self.changes.iter().filter(|c| c.kind == kind) {
                write!(
                    f,
                    "\n  {} {} -> {}  x{}  ({})",
                    printable(&c.destination),
                    c.before,
                    c.after,
                    c.count,
                    c.why
                )?;
            }
        }
        Ok(())
    }
}

/// Agent-chosen text on one terminal line: control characters shown as `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// What the recorded row says the old policy decided, if it was a policy
/// decision at all.
fn recorded_action(e: &EventRow) -> Option<Action> {
    let cause = Cause::parse(e.cause.as_deref()?)?;
    if e.approver.is_some()
        || matches!(
            cause,
            Cause::NoApprover | Cause::ApprovalDenied | Cause::ApprovalTimeout | Cause::Approved
        )
    {
        return Some(Action::Ask);
    }
    match cause {
        Cause::DenyRule
        | Cause::DefaultDeny
        | Cause::NotInPolicy
        | Cause::Ambiguous
        | Cause::WouldDeny => Some(Action::Deny),
        // Not decided by the policy's rules (or not recorded as such).
        Cause::Exfiltration
        | Cause::ForgedApproval
        | Cause::NameMismatch
        | Cause::NotFromRun
        | Cause::Abandoned
        | Cause::Kernel
        | Cause::BenignProbe
        | Cause::UnknownProtocol
        | Cause::AuditUnavailable
        // Decided on the request's body, which the log does not keep.
        | Cause::RequirementUnmet => None,
        c if c.verdict() == Verdict::Allow => Some(Action::Allow),
        // Refused after the policy allowed it: a limit, a cap, the
        // upstream, the credentials' state.
        _ => Some(Action::Allow),
    }
}

/// What `policy` decides for the recorded row, and why.
fn decide(policy: &Policy, e: &EventRow) -> Option<(Action, String)> {
    let host = e.host.as_deref()?;
    match e.layer.as_str() {
        "dns" => Some(if policy.allows_name(host) {
            (Action::Allow, "the name is in the policy".into())
        } else {
            (Action::Deny, format!("{host} is not in the policy"))
        }),
        "connection" | "request" => {
            let port = e.port?;
            match policy.connection(host, port) {
                ConnectionVerdict::Refuse { reason } => Some((Action::Deny, reason)),
                ConnectionVerdict::PassThrough { host } => Some((
                    Action::Allow,
                    format!("whole host {} (passed through)", policy.hosts[host].name),
                )),
                ConnectionVerdict::Intercept { host: i } => {
                    let h = &policy.hosts[i];
                    match (e.layer.as_str(), e.method.as_deref(), e.path.as_deref()) {
                        ("request", Some(m), Some(p)) => {
                            let v = h.decide(m, p);
                            let why = v.rule.map_or(v.reason, |r| r.description);
                            Some((v.action, why))
                        }
                        _ => Some((Action::Allow, format!("host {} (intercepted)", h.name))),
                    }
                }
            }
        }
        _ => None,
    }
}

/// Replays `events` through `policy`.
pub fn replay(policy: &Policy, events: &[EventRow]) -> Replay {
    let mut out = Replay::default();
    let mut groups: BTreeMap<(ChangeKind, String, String, String, String), Change> =
        BTreeMap::new();
    for e in events {
        let (Some(before), Some((after, why))) = (recorded_action(e), decide(policy, e)) else {
            out.skipped += 1;
            continue;
        };
        out.replayed += 1;
        if before == after {
            continue;
        }
        let kind = match after {
            Action::Deny => ChangeKind::NewlyRefused,
            Action::Ask => ChangeKind::NewlyAsked,
            Action::Allow => ChangeKind::NewlyAllowed,
        };
        let destination = e.destination();
        let key = (
            kind,
            e.layer.clone(),
            destination.clone(),
            before.to_string(),
            why.clone(),
        );
        groups
            .entry(key)
            .or_insert_with(|| Change {
                kind,
                layer: e.layer.clone(),
                destination,
                before,
                after,
                why,
                count: 0,
            })
            .count += 1;
    }
    out.changes = groups.into_values().collect();
    out
}

#[cfg(test)]
mod tests;
