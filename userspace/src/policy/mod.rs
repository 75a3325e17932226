//! The policy file: parsing (TOML with spans), validation, and the decisions
//! the rest of enforcer asks of it. Anything not named is denied.
//!
//! The language is documented in `docs/policy.md`. Layout: `schema` (TOML
//! structs) -> `compile` (validation, messages from `diagnostics`) using
//! `hosts`, `paths`, `methods`, `duration`, `rate`, `values`, `cost`,
//! `secrets` and `rules` (which builds the `host` types); then what is
//! asked at run time: `decide` (connections and requests), `summary` and
//! `explain` (`enforcer policy check|explain`).
//!
//! Everything is compiled once at load time; deciding a request does not
//! parse anything.

mod amounts;
mod canonical;
mod compile;
mod cost;
mod decide;
pub(crate) mod diagnostics;
mod duration;
mod explain;
mod host;
mod hosts;
pub mod json_schema;
mod methods;
mod paths;
mod profile;
mod rate;
pub mod replay;
mod require;
mod rules;
mod schema;
mod secrets;
pub mod suggest;
mod summary;
mod values;
mod warnings;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use amounts::AmountLimits;
pub use canonical::{
    AMBIGUITY_NAMES, Ambiguities, Ambiguous, CanonicalRequest, MULTIPART_OVERRIDE_NAMES,
    body_method_override, malformed_brackets, multipart_names_override, normalized_field,
    semicolons_as_ampersands,
};
pub use cost::{CostCurrency, CostRule, CostSource};
pub use decide::{ConnectionVerdict, RequestVerdict, RuleRef};
pub use diagnostics::{PolicyError, Problem};
pub use duration::{DurationError, format_duration, parse_duration, parse_duration_or_zero};
pub use explain::Explanation;
pub use host::{Action, HostMode, HostPolicy, Rule};
pub use hosts::{HostPattern, normalize_name, parse_ip};
pub use methods::MethodSet;
pub use paths::PathGlob;
pub use profile::{BUILT_IN as BUILT_IN_PROFILES, Endpoint, Profile, RefusalShape};
pub use rate::{Rate, RateError};
pub use require::{Met, Place, Requirement, Requirements, Unmet, ValuePattern, check_header};
pub use secrets::{BasicPart, Injection, SecretSource, SecretSpec};

/// A parsed and validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file it came from (for messages and the audit log).
    pub source: PathBuf,
    pub run: RunSettings,
    pub local: LocalSettings,
    pub tcp: Vec<TcpRule>,
    pub hosts: Vec<HostPolicy>,
    pub secrets: Vec<SecretSpec>,
}

/// `[run]`
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSettings {
    /// Defaults to the file stem (characters other than letters, digits,
    /// `.`, `_`, `-` replaced by `-`).
    pub name: String,
    /// Placeholders stop working after this.
    pub ttl: Option<Duration>,
    /// Whole-run spend cap in USD (> 0).
    pub spend_cap_usd: Option<f64>,
    /// Refuse a call repeated identically this often (`None`: off).
    pub loop_breaker: Option<LoopBreakerSettings>,
}

/// `[run] loop_breaker`: the `calls`-th identical call (same method,
/// target and body; reads excluded) within `window` trips the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopBreakerSettings {
    pub calls: u32,
    pub window: Duration,
}

impl Default for LoopBreakerSettings {
    fn default() -> Self {
        Self {
            calls: 20,
            window: Duration::from_secs(60),
        }
    }
}

/// `[local]`: what the run may reach on this host without the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalSettings {
    /// Loopback TCP ports the agent may connect to directly.
    pub loopback_ports: Vec<u16>,
    /// Unix socket paths the agent may connect to (absolute paths, or `@name` for abstract).
    pub unix_sockets: Vec<String>,
    /// Whether the agent may create user namespaces (default false).
    pub allow_user_namespaces: bool,
}

/// `[[tcp]]`: a raw TCP destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRule {
    /// A DNS name (lowercase, no trailing dot) or an IP literal (canonical
    /// text; IPv4-mapped IPv6 written as IPv4).
    pub host: String,
    pub port: u16,
}

/// A DNS name or pattern the policy allows, for the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedName {
    pub pattern: HostPattern,
    /// Ports allowed for it.
    pub ports: Vec<u16>,
    pub source: NameSource,
}

/// Where an [`AllowedName`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// Index into [`Policy::hosts`].
    Host(usize),
    /// Index into [`Policy::tcp`].
    Tcp(usize),
}

impl Policy {
    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::whole_file(path, format!("cannot read policy file: {e}")))?;
        Self::parse(&text, path)
    }

    /// Parses policy text; `path` is used in messages and for the default
    /// run name. Reports every validation problem at once (TOML syntax and
    /// type errors stop at the first).
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        compile::compile(text, path)
    }

    /// Whether any request rule needs a human's approval.
    pub fn has_ask(&self) -> bool {
        self.hosts
            .iter()
            .any(|h| h.rules.iter().any(|r| r.action == Action::Ask))
    }

    /// The `[[tcp]]` rule that allows `host` (a name or IP literal; names
    /// case-insensitive with an optional trailing dot) on `port`.
    pub fn tcp_rule(&self, host: &str, port: u16) -> Option<&TcpRule> {
        if let Some(ip) = parse_ip(host) {
            return self
                .tcp
                .iter()
                .find(|r| r.port == port && parse_ip(&r.host) == Some(ip));
        }
        let name = host.strip_suffix('.').unwrap_or(host);
        self.tcp
            .iter()
            .find(|r| r.port == port && r.host.eq_ignore_ascii_case(name))
    }

    /// Every DNS name or pattern the policy allows: `[[host]]` entries that
    /// are not denied, and `[[tcp]]` entries that are names (not IPs).
    ///
    /// A denied exact entry under an allowed wildcard (`bad.x.com` under
    /// `*.x.com`) is not visible in these patterns: to decide one name, use
    /// [`Policy::allows_name`].
    pub fn names(&self) -> Vec<AllowedName> {
        let hosts = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.mode() != HostMode::Deny)
            .map(|(i, h)| AllowedName {
                pattern: h.pattern.clone(),
                ports: h.ports.clone(),
                source: NameSource::Host(i),
            });
        let tcp = self.tcp.iter().enumerate().filter_map(|(i, t)| {
            if parse_ip(&t.host).is_some() {
                return None;
            }
            HostPattern::parse(&t.host).ok().map(|pattern| AllowedName {
                pattern,
                ports: vec![t.port],
                source: NameSource::Tcp(i),
            })
        });
        hosts.chain(tcp).collect()
    }

    /// Whether the resolver may answer for `name`: some allowed `[[host]]`
    /// governs it, or a `[[tcp]]` entry names it. A name governed by a
    /// denied `[[host]]` is not allowed, even if a wildcard also matches.
    pub fn allows_name(&self, name: &str) -> bool {
        let by_host = self.host(name).is_some_and(|h| h.mode() != HostMode::Deny);
        by_host
            || self.tcp.iter().any(|t| {
                parse_ip(&t.host).is_none()
                    && t.host
                        .eq_ignore_ascii_case(name.strip_suffix('.').unwrap_or(name))
            })
    }
}

#[cfg(test)]
mod tests;
