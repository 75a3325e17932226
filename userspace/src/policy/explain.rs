//! `enforcer policy explain METHOD URL`: what the policy does with one
//! request, and why; for a request that may go out, what applies to it on
//! the way (cost, caps, rate and call limits, the loop breaker, and the
//! secrets injected, by name and injection style, never a value).

use std::fmt;

use super::Policy;
use super::decide::{ConnectionVerdict, RequestVerdict};
use super::diagnostics::PolicyError;
use super::host::{Action, HostMode};
use super::hosts::parse_ip;
use super::methods::is_token;

/// The outcome of [`Policy::explain`]. `Display` prints one line, e.g.
/// `POST https://api.stripe.com/v1/refunds -> ASK (rule 3: POST /v1/refunds -> ask, policy.toml:27)`,
/// followed by what applies to the request (`  cost: ...`, `  rate: ...`),
/// then any notes, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub method: String,
    /// The URL as given: the request is decided on its path as written
    /// (dot segments and escapes unresolved), as the proxy would.
    pub url: String,
    /// Host name as it appears in the URL.
    pub host_name: String,
    /// Explicit port, or the scheme's default.
    pub port: u16,
    /// Index of the governing `[[host]]`, if any.
    pub host: Option<usize>,
    pub connection: ConnectionVerdict,
    /// The request decision, when the connection is intercepted.
    pub request: Option<RequestVerdict>,
    /// The final outcome.
    pub action: Action,
    /// Why, in a few words (the text in parentheses).
    pub reason: String,
    /// What applies to a request that is allowed or asked, one line each:
    /// `cost: ...`, `spend cap: ...`, `daily cap: ...`, `run spend cap: ...`,
    /// `rate: ...`, `max calls: ...`, `loop breaker: ...`, `secret NAME: ...`.
    pub applies: Vec<String>,
    /// Extra hints (e.g. a lowercase method, a raw TCP rule for the host).
    pub notes: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} ({})",
            self.method,
            self.url,
            self.action.as_str().to_ascii_uppercase(),
            self.reason
        )?;
        for line in &self.applies {
            write!(f, "\n  {line}")?;
        }
        for note in &self.notes {
            write!(f, "\n  note: {note}")?;
        }
        Ok(())
    }
}

impl Policy {
    /// Explains what happens to `method url` under this policy. Errors only
    /// for an unusable method or URL.
    pub fn explain(&self, method: &str, url: &str) -> Result<Explanation, PolicyError> {
        if !is_token(method) {
            return Err(PolicyError::message(format!(
                "`{}` is not an HTTP method (e.g. GET, POST)",
                method.escape_default()
            )));
        }
        let parsed = url::Url::parse(url).map_err(|e| {
            PolicyError::message(format!("invalid URL `{}`: {e}", url.escape_default()))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(PolicyError::message(format!(
                "URL `{}`: only http and https URLs can be explained",
                url.escape_default()
            )));
        }
        let (Some(host_name), Some(port)) = (parsed.host_str(), parsed.port_or_known_default())
        else {
            return Err(PolicyError::message(format!(
                "URL `{}` has no host",
                url.escape_default()
            )));
        };
        // `[::1]` -> `::1`
        let host_name = host_name
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host_name)
            .to_string();

        let mut notes = Vec::new();
        if method.bytes().any(|b| b.is_ascii_lowercase()) {
            notes.push(format!(
                "methods are case-sensitive and policies name them in uppercase; did you mean `{}`?",
                method.to_ascii_uppercase()
            ));
        }
        if let Some(t) = self.tcp_rule(&host_name, port) {
            notes.push(format!(
                "{}:{} is allowed as raw TCP by a [[tcp]] entry (no HTTP rules apply there)",
                t.host, t.port
            ));
        }
        if parse_ip(&host_name).is_some() {
            notes.push(
                "[[host]] entries name DNS names; a request to an IP address never matches one"
                    .into(),
            );
        }

        let connection = self.connection(&host_name, port);
        let host = connection.host().or_else(|| self.host_index(&host_name));
        let file = self.source.display();
        let governing = connection.host().and_then(|i| self.hosts.get(i));
        let mut applies = Vec::new();
        let (action, reason, request) = match (&connection, governing) {
            (ConnectionVerdict::Refuse { reason }, _) => (Action::Deny, reason.clone(), None),
            (ConnectionVerdict::PassThrough { .. }, Some(h)) => (
                Action::Allow,
                format!(
                    "whole host, passed through without interception: {}, {file}:{}",
                    h.name, h.line
                ),
                None,
            ),
            (ConnectionVerdict::Intercept { .. }, Some(h)) => {
                // The path as written: the `url` crate would resolve dot
                // segments and escapes that the proxy refuses.
                let raw_target = url
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()))
                    .unwrap_or_else(|| parsed.path().to_string());
                let verdict = h.decide(method, &raw_target);
                let reason = match &verdict.rule {
                    Some(r) => {
                        let label = h
                            .rules
                            .get(r.index)
                            .map(|rule| rule.label())
                            .unwrap_or_default();
                        let via = h
                            .rules
                            .get(r.index)
                            .and_then(|rule| rule.endpoint.as_ref())
                            .zip(h.profile.as_ref())
                            .map_or(String::new(), |(e, p)| {
                                format!(" [endpoint {} {e}]", p.name)
                            });
                        format!("rule {}: {label}{via}, {file}:{}", r.index + 1, r.line)
                    }
                    None if h.rules.is_empty() && h.mode() == HostMode::Intercept => format!(
                        "whole host, intercepted for {}: {}, {file}:{}",
                        interception_causes(h).join(", "),
                        h.name,
                        h.line
                    ),
                    None => verdict.reason.clone(),
                };
                if verdict.action != Action::Deny {
                    let rule = verdict.rule.as_ref().and_then(|r| h.rules.get(r.index));
                    applies = self.what_applies(
                        h,
                        rule.zip(verdict.rule.as_ref().map(|r| r.index)),
                        method,
                        &host_name,
                        parsed.scheme() == "https",
                    );
                }
                (verdict.action, reason, Some(verdict))
            }
            // Not reachable: a non-refused verdict always names a host.
            (_, None) => (Action::Deny, "host is not in the policy".to_string(), None),
        };
        Ok(Explanation {
            method: method.to_string(),
            url: url.to_string(),
            host_name,
            port,
            host,
            connection,
            request,
            action,
            reason,
            applies,
            notes,
        })
    }

    /// What a request that host `h` lets out (through `rule`, with its
    /// index, when a rule decided) goes through before it leaves.
    fn what_applies(
        &self,
        h: &super::HostPolicy,
        rule: Option<(&super::Rule, usize)>,
        method: &str,
        host_name: &str,
        tls: bool,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        let capped = h.spend_cap_usd.is_some()
            || h.daily_cap_usd.is_some()
            || self.run.spend_cap_usd.is_some();
        match rule.and_then(|(r, _)| r.cost.as_ref()) {
            Some(cost) => lines.push(format!("cost: {cost}")),
            None if capped => lines.push(String::from(
                "cost: none (no cost rule: the call counts $0 against the caps)",
            )),
            None => {}
        }
        if let Some(p) = &h.profile {
            let shape = if p.refusal.is_some() {
                "refusals in its own error shape"
            } else {
                "no error shape (enforcer's own refusals)"
            };
            lines.push(format!(
                "vendor profile: {} ({}), {shape}",
                p.name, p.origin
            ));
        }
        if let Some((r, _)) = rule {
            if !r.amounts.is_empty() {
                lines.push(format!(
                    "amount: {} (of the cost above; a call whose amount cannot be read is refused)",
                    r.amounts
                ));
            }
            if let Some(req) = &r.require {
                let unmet = if req.unmet == super::Action::Ask {
                    "asked"
                } else {
                    "refused (403 naming it)"
                };
                for f in &req.fields {
                    lines.push(format!(
                        "requires: {f} (present once, in one spelling; otherwise {unmet})"
                    ));
                }
            }
        }
        if let Some(cap) = h.spend_cap_usd {
            lines.push(format!("spend cap: ${cap} per run on {}", h.name));
        }
        if let Some(cap) = h.daily_cap_usd {
            lines.push(format!(
                "daily cap: ${cap} per UTC day on {}, across every run of policy {}",
                h.name, self.run.name
            ));
        }
        if let Some(cap) = self.run.spend_cap_usd {
            lines.push(format!(
                "run spend cap: ${cap} across every host of the run"
            ));
        }
        let host_scope = format!("every call to {}", h.name);
        let rule_scope = rule.map(|(_, i)| format!("calls matching rule {}", i + 1));
        if let Some(rate) = &h.rate {
            lines.push(format!("rate: {rate} ({host_scope})"));
        }
        if let (Some(rate), Some(scope)) = (rule.and_then(|(r, _)| r.rate), &rule_scope) {
            lines.push(format!("rate: {rate} ({scope})"));
        }
        if let Some(n) = h.max_calls {
            lines.push(format!("max calls: {n} per run ({host_scope})"));
        }
        if let (Some(n), Some(scope)) = (rule.and_then(|(r, _)| r.max_calls), &rule_scope) {
            lines.push(format!("max calls: {n} per run ({scope})"));
        }
        if let Some(b) = &self.run.loop_breaker
            && !matches!(method, "GET" | "HEAD" | "OPTIONS")
        {
            let window = super::format_duration(b.window);
            lines.push(format!(
                "loop breaker: the same call {} times within {window} is refused, until `enforcer reset` or {window} without it",
                b.calls
            ));
        }
        for s in self.secrets_for(host_name) {
            if tls || h.plaintext_secrets {
                lines.push(format!(
                    "secret {}: {} (the agent holds a placeholder; the value is read from {})",
                    s.name, s.injection, s.from
                ));
            } else {
                lines.push(format!(
                    "secret {}: not injected over plain HTTP (allow_plaintext_secrets is off); \
                     a request carrying its placeholder is refused",
                    s.name
                ));
            }
        }
        lines
    }
}

/// Why a whole-host `allow` is still intercepted.
fn interception_causes(h: &super::HostPolicy) -> Vec<String> {
    let mut causes = Vec::new();
    if let Some(cap) = h.spend_cap_usd {
        causes.push(format!("spend cap ${cap}"));
    }
    if let Some(cap) = h.daily_cap_usd {
        causes.push(format!("daily cap ${cap}"));
    }
    if let Some(rate) = &h.rate {
        causes.push(format!("rate {rate}"));
    }
    if let Some(n) = h.max_calls {
        causes.push(format!("max_calls {n}"));
    }
    for s in &h.secrets {
        causes.push(format!("secret {s}"));
    }
    causes
}
