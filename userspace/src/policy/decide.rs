//! The decisions: per connection (which `[[host]]`, which port, intercept
//! or pass through) and per request (first matching rule in file order,
//! otherwise default deny).

use super::Policy;
use super::canonical::{Ambiguities, Ambiguous, CanonicalRequest};
use super::host::{Action, HostMode, HostPolicy, find_host};

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
    /// What requests to this host may contain although servers disagree:
    /// everything for a whole-host action (there is no rule to dodge), the
    /// host's `allow_ambiguous` otherwise.
    pub fn accepted_ambiguities(&self) -> Ambiguities {
        if self.rules.is_empty() {
            Ambiguities::ALL
        } else {
            self.ambiguities
        }
    }

    /// Parses a request for this host (see [`CanonicalRequest::parse`]).
    pub fn canonical(
        &self,
        method: &str,
        target: &str,
        headers: Option<&http::HeaderMap>,
    ) -> Result<CanonicalRequest, Ambiguous> {
        CanonicalRequest::parse(method, target, headers, self.accepted_ambiguities())
    }

    /// Decides a canonical request to this host: rules are tried in file
    /// order and the first whose method set and path glob match decides; if
    /// none matches, the request is denied. Unless the host accepts
    /// `mixed-case`, a path whose case changes which rule matches (a server
    /// that ignores case would route it under another rule) is ambiguous.
    pub fn decide_request(&self, req: &CanonicalRequest) -> Result<RequestVerdict, Ambiguous> {
        match self.action {
            Some(Action::Deny) => {
                return Ok(RequestVerdict {
                    action: Action::Deny,
                    rule: None,
                    reason: format!("host {} is denied (line {})", self.name, self.line),
                });
            }
            Some(action) if self.rules.is_empty() => {
                return Ok(RequestVerdict {
                    action,
                    rule: None,
                    reason: format!("whole host {} (line {}): {action}", self.name, self.line),
                });
            }
            _ => {}
        }
        let segments: Vec<&str> = req.segments().collect();
        let first = self
            .rules
            .iter()
            .position(|r| r.methods.matches(req.method()) && r.path.matches_segments(&segments));
        let name = |i: Option<usize>| match i.and_then(|i| self.rules.get(i).map(|r| (i, r))) {
            Some((i, r)) => format!("rule {} ({})", i + 1, r.label()),
            None => "no rule".to_string(),
        };
        let matching = |segs: &[&str], folded: bool| {
            self.rules.iter().position(|r| {
                r.methods.matches(req.method())
                    && if folded {
                        r.path.matches_folded(segs)
                    } else {
                        r.path.matches_segments(segs)
                    }
            })
        };
        // Servers that ignore case (Express, ASP.NET) route the path folded.
        let path_has_upper = req.path().bytes().any(|b| b.is_ascii_uppercase());
        let case_matters =
            !self.ambiguities.mixed_case && (path_has_upper || self.rules_have_upper);
        let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
        let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
        if case_matters {
            let folded = matching(&lower, true);
            if folded != first {
                return Err(Ambiguous::MixedCase {
                    sensitive: name(first),
                    insensitive: name(folded),
                });
            }
        }
        // Servers that drop a format suffix (Rails: `/refunds.json`) or
        // trailing dots and spaces (IIS) route the stripped path.
        if !self.ambiguities.suffixes {
            let stripped = strip_suffixes(&segments);
            if stripped.iter().zip(&segments).any(|(a, b)| a != b) {
                let s: Vec<&str> = stripped.iter().map(String::as_str).collect();
                let mut other = matching(&s, false);
                if other == first && case_matters {
                    let sl: Vec<String> = s.iter().map(|x| x.to_ascii_lowercase()).collect();
                    let sl: Vec<&str> = sl.iter().map(String::as_str).collect();
                    other = matching(&sl, true);
                }
                if other != first {
                    return Err(Ambiguous::Suffix {
                        as_sent: name(first),
                        stripped: name(other),
                    });
                }
            }
        }
        Ok(
            match first.and_then(|i| self.rules.get(i).map(|r| (i, r))) {
                Some((index, rule)) => RequestVerdict {
                    action: rule.action,
                    rule: Some(RuleRef {
                        index,
                        description: rule.description.clone(),
                        line: rule.line,
                    }),
                    reason: rule.description.clone(),
                },
                None => RequestVerdict {
                    action: Action::Deny,
                    rule: None,
                    reason: DEFAULT_DENY.to_string(),
                },
            },
        )
    }

    /// Decides `method target` as the proxy would, for tests and
    /// explanations: an ambiguous request is a deny naming why.
    pub fn decide(&self, method: &str, target: &str) -> RequestVerdict {
        match self
            .canonical(method, target, None)
            .and_then(|r| self.decide_request(&r))
        {
            Ok(v) => v,
            Err(why) => RequestVerdict {
                action: Action::Deny,
                rule: None,
                reason: format!("ambiguous request refused: {why}"),
            },
        }
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

/// `segments` as servers that strip suffixes route them: trailing dots,
/// spaces and tabs off every segment (IIS), and a format extension off the
/// last one (Rails: `refunds.json` is `refunds`).
fn strip_suffixes(segments: &[&str]) -> Vec<String> {
    let n = segments.len();
    segments
        .iter()
        .enumerate()
        .map(|(i, seg)| {
            let mut s: &str = seg;
            loop {
                let t = s
                    .trim_end_matches('.')
                    .trim_end_matches("%20")
                    .trim_end_matches("%09");
                if t.len() == s.len() {
                    break;
                }
                s = t;
            }
            if i + 1 == n
                && let Some((stem, ext)) = s.rsplit_once('.')
                && !stem.is_empty()
                && (1..=5).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                s = stem;
            }
            s.to_string()
        })
        .collect()
}
