//! The run's counts, kept as decisions happen: requests, connections, names
//! and kernel refusals apart (three requests are three requests, not "8
//! allowed"), benign probes aside, and the most refused destinations in a
//! bounded table (an agent choosing a new destination each time must not
//! grow enforcer's memory).

use std::collections::HashMap;

use serde::Serialize;

use super::{Alarm, Cause, Decision, Layer, Verdict};

/// Most distinct refused destinations remembered; further ones are counted
/// together.
pub const MAX_DESTINATIONS: usize = 1024;

/// What the summary says, by layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// HTTP requests let through (approved ones included).
    pub requests_allowed: u64,
    /// HTTP requests refused (by a rule, a limit, a human or for want of one).
    pub requests_refused: u64,
    /// HTTP requests that waited for a human (also in allowed or refused).
    pub requests_asked: u64,
    /// Connections passed through, intercepted or relayed.
    pub connections_allowed: u64,
    pub connections_refused: u64,
    /// DNS names refused.
    pub names_refused: u64,
    /// Socket operations refused in the kernel.
    pub kernel_refused: u64,
    /// Refused in the kernel and known to be harmless (not counted above).
    pub benign_probes: u64,
    pub exfiltration_attempts: u64,
    pub forged_approvals: u64,
}

impl Counts {
    /// Adds one decision.
    pub fn add(&mut self, d: &Decision) {
        if d.approver.is_some() {
            self.requests_asked += 1;
        }
        match d.alarm {
            Some(Alarm::Exfiltration) => self.exfiltration_attempts += 1,
            Some(Alarm::ForgedApproval) => self.forged_approvals += 1,
            None => {}
        }
        if d.cause == Cause::BenignProbe {
            self.benign_probes += 1;
            return;
        }
        let allowed = d.verdict == Verdict::Allow;
        let slot = match (d.layer, allowed) {
            (Layer::Request, true) => &mut self.requests_allowed,
            (Layer::Request, false) => &mut self.requests_refused,
            (Layer::Connection, true) => &mut self.connections_allowed,
            (Layer::Connection, false) => &mut self.connections_refused,
            (Layer::Dns, false) => &mut self.names_refused,
            (Layer::Kernel, false) => &mut self.kernel_refused,
            // Allowed names, kernel "allows" and control events are not counted.
            _ => return,
        };
        *slot += 1;
    }

    /// Every refusal the summary counts.
    pub fn refused(&self) -> u64 {
        self.requests_refused + self.connections_refused + self.names_refused + self.kernel_refused
    }
}

/// Counts kept for the end-of-run summary when there is no audit log to
/// compute it from, and for `enforcer status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub counts: Counts,
    /// Refused destinations and how often, for "top refused" (bounded).
    refused: HashMap<String, u64>,
    /// Refusals of destinations past the table's bound.
    other_refused: u64,
}

impl Tally {
    pub fn add(&mut self, d: &Decision) {
        self.counts.add(d);
        if d.cause.is_refusal() && d.layer != Layer::Control {
            let dest = destination(d);
            if let Some(n) = self.refused.get_mut(&dest) {
                *n += 1;
            } else if self.refused.len() < MAX_DESTINATIONS {
                self.refused.insert(dest, 1);
            } else {
                self.other_refused += 1;
            }
        }
    }

    /// The most refused destinations, most frequent first.
    pub fn top_refused(&self, n: usize) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self.refused.iter().map(|(k, c)| (k.clone(), *c)).collect();
        if self.other_refused > 0 {
            v.push((String::from("(other destinations)"), self.other_refused));
        }
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// Where a refusal was headed: `METHOD host:port/path` for requests (no
/// query), the name for DNS, `host:port` otherwise.
pub fn destination(d: &Decision) -> String {
    crate::audit::destination(
        Some(d.layer.as_str()),
        d.host.as_deref(),
        d.port.map(i64::from),
        d.method.as_deref(),
        d.path
            .as_deref()
            .map(|p| crate::audit::redact_target(p).0)
            .as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_counted_apart_and_probes_aside() {
        let mut t = Tally::default();
        for _ in 0..3 {
            t.add(
                &Decision::new(Layer::Kernel, Cause::Kernel, "x")
                    .host("10.0.0.1")
                    .port(53),
            );
        }
        t.add(
            &Decision::new(Layer::Kernel, Cause::BenignProbe, "nscd")
                .host("unix:/var/run/nscd/socket"),
        );
        t.add(
            &Decision::new(Layer::Connection, Cause::NotInPolicy, "x")
                .host("evil.test")
                .port(443),
        );
        t.add(
            &Decision::new(Layer::Connection, Cause::Intercepted, "ok")
                .host("good.test")
                .port(443),
        );
        t.add(
            &Decision::new(Layer::Request, Cause::Allowed, "ok")
                .host("good.test")
                .port(443)
                .request("GET", "/a?x=1"),
        );
        let c = t.counts;
        assert_eq!(
            (
                c.requests_allowed,
                c.connections_allowed,
                c.connections_refused
            ),
            (1, 1, 1)
        );
        assert_eq!((c.kernel_refused, c.benign_probes, c.refused()), (3, 1, 4));
        assert_eq!(t.top_refused(1), vec![(String::from("10.0.0.1:53"), 3)]);
        assert!(!t.top_refused(10).iter().any(|(d, _)| d.contains("nscd")));
    }

    #[test]
    fn the_destination_table_is_bounded() {
        let mut t = Tally::default();
        for i in 0..(MAX_DESTINATIONS + 500) {
            t.add(
                &Decision::new(Layer::Dns, Cause::NotInPolicy, "x").host(format!("n{i}.evil.test")),
            );
        }
        assert_eq!(t.refused.len(), MAX_DESTINATIONS);
        assert_eq!(
            t.top_refused(1),
            vec![(String::from("(other destinations)"), 500)]
        );
        assert_eq!(t.counts.names_refused, (MAX_DESTINATIONS + 500) as u64);
    }
}
