//! `enforcer policy explain METHOD URL`: what the policy does with one
//! request, and why.

use std::fmt;

use super::Policy;
use super::decide::{ConnectionVerdict, RequestVerdict};
use super::diagnostics::PolicyError;
use super::host::{Action, HostMode};
use super::hosts::parse_ip;
use super::methods::is_token;

/// The outcome of [`Policy::explain`]. `Display` prints one line, e.g.
/// `POST https://api.stripe.com/v1/refunds -> ASK (rule 3: POST /v1/refunds -> ask, policy.toml:27)`,
/// followed by any notes, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub method: String,
    /// The URL as parsed (normalized by the `url` crate).
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
                        format!("rule {}: {label}, {file}:{}", r.index + 1, r.line)
                    }
                    None if h.rules.is_empty() && h.mode() == HostMode::Intercept => format!(
                        "whole host, intercepted for {}: {}, {file}:{}",
                        interception_causes(h).join(", "),
                        h.name,
                        h.line
                    ),
                    None => verdict.reason.clone(),
                };
                (verdict.action, reason, Some(verdict))
            }
            // Not reachable: a non-refused verdict always names a host.
            (_, None) => (Action::Deny, "host is not in the policy".to_string(), None),
        };
        Ok(Explanation {
            method: method.to_string(),
            url: parsed.to_string(),
            host_name,
            port,
            host,
            connection,
            request,
            action,
            reason,
            notes,
        })
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
