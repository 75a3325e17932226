//! `[[host]]` entries and their `[[host.rule]]`s as the proxy sees them:
//! actions, modes (deny / pass-through / intercept), and which entry
//! governs a name.

use std::fmt;

use super::amounts::AmountLimits;
use super::canonical::Ambiguities;
use super::cost::CostRule;
use super::hosts::HostPattern;
use super::methods::MethodSet;
use super::paths::PathGlob;
use super::rate::Rate;
use super::require::Requirements;
use super::schema::RawAction;

/// What happens to a request (or, for `action` on a host, to a whole host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// A human approves each call (a deny when nobody can be asked).
    Ask,
}

impl Action {
    /// `allow`, `deny` or `ask`, as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Ask => "ask",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<RawAction> for Action {
    fn from(a: RawAction) -> Self {
        match a {
            RawAction::Allow => Self::Allow,
            RawAction::Deny => Self::Deny,
            RawAction::Ask => Self::Ask,
        }
    }
}

/// One `[[host.rule]]`. Rules are tried in file order; the first match wins.
#[derive(Debug, Clone)]
pub struct Rule {
    pub methods: MethodSet,
    pub path: PathGlob,
    pub action: Action,
    pub cost: Option<CostRule>,
    pub rate: Option<Rate>,
    pub max_calls: Option<u64>,
    /// `max_usd_per_call` / `deny_above_usd` and `ask_above_usd`.
    pub amounts: AmountLimits,
    /// `require` (and `unmet`): headers and fields a request must carry.
    pub require: Option<Requirements>,
    /// The profile endpoint this rule was written as (`endpoint = ...`).
    pub endpoint: Option<String>,
    /// Line of the rule's `[[host.rule]]` header (or inline table).
    pub line: usize,
    /// E.g. `POST /v1/refunds -> ask (rule 3 of api.stripe.com, policy.toml:27)`.
    pub description: String,
}

impl Rule {
    /// `POST /v1/refunds -> ask`.
    pub fn label(&self) -> String {
        format!("{} {} -> {}", self.methods, self.path, self.action)
    }
}

/// How the proxy treats connections to a host (on an allowed port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    /// `action = "deny"`: connections are refused.
    Deny,
    /// `action = "allow"` and nothing that needs to see requests: the TLS
    /// stream is passed through without interception.
    PassThrough,
    /// TLS is intercepted and every request is decided.
    Intercept,
}

impl HostMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::PassThrough => "pass-through",
            Self::Intercept => "intercept",
        }
    }
}

/// One `[[host]]` entry.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// As written in the file.
    pub name: String,
    /// Normalized and compiled.
    pub pattern: HostPattern,
    /// Allowed ports (default `[443, 80]`, `[443]` for a host that
    /// carries secrets).
    pub ports: Vec<u16>,
    /// Whether `ports` was written in the policy.
    pub ports_explicit: bool,
    /// Whole-host action (`allow` or `deny`); `None` when the host has rules.
    pub action: Option<Action>,
    /// In file order.
    pub rules: Vec<Rule>,
    pub spend_cap_usd: Option<f64>,
    /// Cap per UTC day across every run of this policy (stored in the
    /// audit database).
    pub daily_cap_usd: Option<f64>,
    pub rate: Option<Rate>,
    pub max_calls: Option<u64>,
    /// Names of the `[[secret]]`s bound to (some names of) this host; they
    /// make it intercepted. A secret is injected only on requests whose
    /// host name matches one of its own `hosts` (see
    /// [`super::Policy::secrets_for`]), which may be narrower than this
    /// entry's pattern.
    pub secrets: Vec<String>,
    /// `intercept = true`: a whole-host allow is intercepted anyway, so
    /// its requests are parsed and scanned for placeholders.
    pub intercept: bool,
    /// `allow_plaintext_secrets = true`: secrets bound to this host are
    /// injected on plaintext HTTP too (otherwise only over TLS).
    pub plaintext_secrets: bool,
    /// What requests to this host may contain although servers disagree
    /// about it (`allow_ambiguous`).
    pub ambiguities: Ambiguities,
    /// Whether some rule's path has an upper-case letter (then a path's
    /// case may change the decision even when the path is lower case).
    pub rules_have_upper: bool,
    /// The vendor profile (`vendor = "stripe"` or `vendor_file`).
    pub profile: Option<std::sync::Arc<super::Profile>>,
    /// Line of the `[[host]]` header.
    pub line: usize,
}

impl HostPolicy {
    /// Whether this entry's pattern matches a DNS name (any case, optional
    /// trailing dot). Which entry governs a name is [`super::Policy::host`].
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.matches(name)
    }

    /// Whether the proxy must intercept TLS to this host: it has rules,
    /// a spend cap, a rate, a call limit, a secret to inject, or says
    /// `intercept = true`.
    pub fn intercepted(&self) -> bool {
        self.action != Some(Action::Deny)
            && (self.intercept
                || !self.rules.is_empty()
                || self.spend_cap_usd.is_some()
                || self.daily_cap_usd.is_some()
                || self.rate.is_some()
                || self.max_calls.is_some()
                || !self.secrets.is_empty())
    }

    pub fn mode(&self) -> HostMode {
        if self.action == Some(Action::Deny) {
            HostMode::Deny
        } else if self.intercepted() {
            HostMode::Intercept
        } else {
            HostMode::PassThrough
        }
    }

    pub fn allows_port(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

/// Index of the entry governing `name`: an exact entry beats every
/// wildcard; among wildcards the longest domain wins.
pub(crate) fn find_host(hosts: &[HostPolicy], name: &str) -> Option<usize> {
    hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.matches(name))
        .max_by_key(|(i, h)| (h.pattern.specificity(), std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
}
