//! The decisions: per connection (which `[[host]]`, which port, intercept
//! or pass through) and per request (first matching rule in file order,
//! otherwise default deny).

use super::Policy;
use super::host::{Action, HostMode, HostPolicy, find_host};
use super::paths::{normalize_request_path, split_request_path};

/// What to do with a connection to an HTTP(S) destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionVerdict {
    /// Close it; `reason` is for the audit log and the agent's developer.
    Refuse { reason: String },
    /// Allowed as a whole: relay bytes without TLS interception.
    PassThrough { host: usize },
    /// Intercept TLS and decide every request with `hosts[host]`.
    Intercept { host: usize },
}

impl ConnectionVerdict {
    /// Index into [`Policy::hosts`], unless refused.
    pub fn host(&self) -> Option<usize> {
        match self {
            Self::Refuse { .. } => None,
            Self::PassThrough { host } | Self::Intercept { host } => Some(*host),
        }
    }
}

/// The decision for one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestVerdict {
    pub action: Action,
    /// The rule that decided. `None` when no rule did: default deny, or a
    /// whole-host `action` (see `reason`).
    pub rule: Option<RuleRef>,
    /// Human-readable: the rule's description, or why no rule decided.
    pub reason: String,
}

impl RequestVerdict {
    /// True when the request was denied because no rule matched.
    pub fn is_default_deny(&self) -> bool {
        self.rule.is_none() && self.action == Action::Deny
    }
}

/// Which rule decided a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// 0-based index into [`HostPolicy::rules`] (the policy text says
    /// "rule N" with N = index + 1).
    pub index: usize,
    /// E.g. `POST /v1/refunds -> ask (rule 3 of api.stripe.com, policy.toml:27)`.
    pub description: String,
    /// Line of the rule in the policy file.
    pub line: usize,
}

pub(crate) const DEFAULT_DENY: &str = "no rule matches; default deny";

impl HostPolicy {
    /// Decides a request to this host. `path` is the request target's path
    /// as it will be sent upstream; a query string is ignored. Rules are
    /// tried in file order and the first whose method set and path glob
    /// match decides; if none matches, the request is denied.
    ///
    /// Conservative paths: a path with a `.` or `..` segment (also
    /// percent-encoded), an empty segment (`//`), a `\`, a malformed `%`
    /// escape, or not starting with `/` matches no rule (default deny).
    /// Escapes of unreserved characters are decoded before matching
    /// (`%66` = `f`); other escapes (e.g. `%2F`) stay inside their segment.
    pub fn decide(&self, method: &str, path: &str) -> RequestVerdict {
        match self.action {
            Some(Action::Deny) => {
                return RequestVerdict {
                    action: Action::Deny,
                    rule: None,
                    reason: format!("host {} is denied (line {})", self.name, self.line),
                };
            }
            Some(action) if self.rules.is_empty() => {
                return RequestVerdict {
                    action,
                    rule: None,
                    reason: format!("whole host {} (line {}): {action}", self.name, self.line),
                };
            }
            _ => {}
        }
        let normalized = match normalize_request_path(path) {
            Ok(p) => p,
            Err(why) => return unmatchable(why.reason()),
        };
        let segments = match split_request_path(&normalized) {
            Ok(s) => s,
            Err(why) => return unmatchable(why.reason()),
        };
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.methods.matches(method) && rule.path.matches_segments(&segments) {
                return RequestVerdict {
                    action: rule.action,
                    rule: Some(RuleRef {
                        index,
                        description: rule.description.clone(),
                        line: rule.line,
                    }),
                    reason: rule.description.clone(),
                };
            }
        }
        RequestVerdict {
            action: Action::Deny,
            rule: None,
            reason: DEFAULT_DENY.to_string(),
        }
    }
}

fn unmatchable(why: &str) -> RequestVerdict {
    RequestVerdict {
        action: Action::Deny,
        rule: None,
        reason: format!("no rule can match: {why}; default deny"),
    }
}

impl Policy {
    /// The `[[host]]` entry governing a DNS name: an exact entry beats every
    /// wildcard, and among wildcards the longest domain wins. Names are
    /// case-insensitive; one trailing dot is ignored.
    pub fn host(&self, name: &str) -> Option<&HostPolicy> {
        self.host_index(name).and_then(|i| self.hosts.get(i))
    }

    /// Like [`Policy::host`], as an index into [`Policy::hosts`].
    pub fn host_index(&self, name: &str) -> Option<usize> {
        find_host(&self.hosts, name)
    }

    /// Decides a connection to `name` (SNI, Host, or the name the
    /// enforcer's DNS handed out) on `port`.
    pub fn connection(&self, name: &str, port: u16) -> ConnectionVerdict {
        let Some(index) = self.host_index(name) else {
            return ConnectionVerdict::Refuse {
                reason: format!("host {} is not in the policy", shown(name)),
            };
        };
        let Some(host) = self.hosts.get(index) else {
            return ConnectionVerdict::Refuse {
                reason: format!("host {} is not in the policy", shown(name)),
            };
        };
        if !host.allows_port(port) {
            let allowed: Vec<String> = host.ports.iter().map(u16::to_string).collect();
            return ConnectionVerdict::Refuse {
                reason: format!(
                    "port {port} is not allowed for {} ({}:{} allows {})",
                    shown(name),
                    self.source.display(),
                    host.line,
                    allowed.join(", ")
                ),
            };
        }
        match host.mode() {
            HostMode::Deny => ConnectionVerdict::Refuse {
                reason: format!(
                    "host {} is denied by the policy ({} at {}:{})",
                    shown(name),
                    host.name,
                    self.source.display(),
                    host.line
                ),
            },
            HostMode::PassThrough => ConnectionVerdict::PassThrough { host: index },
            HostMode::Intercept => ConnectionVerdict::Intercept { host: index },
        }
    }
}

/// A name from the network, safe to put in a message: printable, bounded.
pub(crate) fn shown(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(253)
        .flat_map(char::escape_default)
        .collect();
    if name.chars().count() > 253 {
        out.push_str("...");
    }
    out
}
