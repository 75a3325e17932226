//! `[[secret]]` entries: which credential the agent sees only as a
//! placeholder, where the enforcer reads the real value, and how it is
//! injected on requests to its hosts. Parsed and validated here; injected
//! by a later module. Values never pass through this module.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use toml::Spanned;

use super::diagnostics::Diagnostics;
use super::host::{Action, HostPolicy, find_host};
use super::hosts::HostPattern;
use super::methods::is_token;
use super::schema::{RawBasicPart, RawSecret};

/// One `[[secret]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretSpec {
    /// The environment variable the agent sees (holding a placeholder).
    pub name: String,
    pub from: SecretSource,
    /// Hosts the real value is injected for (each governed by a `[[host]]`).
    pub hosts: Vec<HostPattern>,
    pub injection: Injection,
    /// A visible prefix the placeholder keeps (e.g. `sk_live_`), for agents
    /// that check a key's shape.
    pub placeholder_prefix: Option<String>,
    /// Line of the `[[secret]]` header.
    pub line: usize,
}

impl SecretSpec {
    /// Whether the secret is injected on requests to host `name`.
    pub fn matches_host(&self, name: &str) -> bool {
        self.hosts.iter().any(|p| p.matches(name))
    }
}

impl super::Policy {
    /// The secrets to inject on requests to host `name`, in file order.
    /// Empty for a host the policy denies.
    pub fn secrets_for<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SecretSpec> + 'a {
        let denied = self
            .host(name)
            .is_none_or(|h| h.action == Some(Action::Deny));
        self.secrets
            .iter()
            .filter(move |s| !denied && s.matches_host(name))
    }
}

/// Where the enforcer reads the real value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `env:VAR`: the enforcer's own environment.
    Env(String),
    /// `file:/abs/path`: a file readable by the enforcer.
    File(PathBuf),
    /// `credential:NAME`: a systemd credential of the service enforcer runs
    /// as (`LoadCredential=NAME:...`), read from `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(v) => write!(f, "env:{v}"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Credential(c) => write!(f, "credential:{c}"),
        }
    }
}

/// How the real value is put on an outgoing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// Set header `name` to `format` with `{}` replaced by the value.
    Header { name: String, format: String },
    /// Fill this part of HTTP basic authentication.
    Basic(BasicPart),
    /// Set this query parameter.
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicPart {
    User,
    Password,
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header { name, format } => write!(f, "header {name}: {format}"),
            Self::Basic(BasicPart::User) => f.write_str("basic auth user"),
            Self::Basic(BasicPart::Password) => f.write_str("basic auth password"),
            Self::Query(q) => write!(f, "query parameter {q}"),
        }
    }
}

impl Injection {
    /// What two secrets must not both set on one request.
    fn slot(&self) -> String {
        match self {
            Self::Header { name, .. } => format!("header `{}`", name.to_ascii_lowercase()),
            Self::Basic(BasicPart::User) => "basic auth user".into(),
            Self::Basic(BasicPart::Password) => "basic auth password".into(),
            Self::Query(q) => format!("query parameter `{q}`"),
        }
    }
}

/// Headers the proxy owns; a secret cannot set them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// Validates every `[[secret]]` and records, on each host it is injected
/// for, the secret's name (which makes that host intercepted).
/// `hosts_complete` is false when some `[[host]]` failed to compile; then
/// "no host matches" is not reported, as it may be a follow-on error.
pub(crate) fn compile_secrets(
    raw: &[Spanned<RawSecret>],
    hosts: &mut [HostPolicy],
    hosts_complete: bool,
    d: &mut Diagnostics,
) -> Vec<SecretSpec> {
    let mut out: Vec<(SecretSpec, std::ops::Range<usize>)> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for s in raw {
        let before = d.len();
        let line = d.line(s.span().start);
        let name_span = s.get_ref().name.span();
        let spec = compile_secret(s, line, hosts, hosts_complete, d);
        let name = s.get_ref().name.get_ref();
        if let Some(first) = names.get(name) {
            d.error(
                name_span.clone(),
                format!("duplicate secret `{name}`: already defined at line {first}"),
            );
        } else {
            names.insert(name.clone(), line);
        }
        if let Some(spec) = spec
            && d.len() == before
        {
            out.push((spec, name_span));
        }
    }
    check_conflicts(&out, d);
    for (spec, _) in &out {
        for host in hosts.iter_mut() {
            if host.action != Some(Action::Deny)
                && spec.hosts.iter().any(|p| p.overlaps(&host.pattern))
                && !host.secrets.contains(&spec.name)
            {
                host.secrets.push(spec.name.clone());
            }
        }
    }
    out.into_iter().map(|(s, _)| s).collect()
}

fn compile_secret(
    raw: &Spanned<RawSecret>,
    line: usize,
    hosts: &[HostPolicy],
    hosts_complete: bool,
    d: &mut Diagnostics,
) -> Option<SecretSpec> {
    let s = raw.get_ref();
    let before = d.len();

    let name = s.name.get_ref();
    if !is_env_name(name) {
        d.error(
            s.name.span(),
            format!(
                "secret name `{name}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
            ),
        );
    }

    let from = compile_source(&s.from, d);

    let mut patterns = Vec::new();
    if s.hosts.get_ref().is_empty() {
        d.error(
            s.hosts.span(),
            "`hosts` is empty: list the hosts this secret is sent to",
        );
    }
    for h in s.hosts.get_ref() {
        let pattern = match HostPattern::parse(h.get_ref()) {
            Ok(p) => p,
            Err(e) => {
                d.error(h.span(), e);
                continue;
            }
        };
        if patterns.contains(&pattern) {
            d.error(h.span(), format!("host `{pattern}` is listed twice"));
            continue;
        }
        check_bound_host(&pattern, h, name, hosts, hosts_complete, d);
        patterns.push(pattern);
    }

    let injection = compile_injection(raw, d);

    let placeholder_prefix = s.placeholder_prefix.as_ref().map(|p| {
        let v = p.get_ref();
        if v.is_empty()
            || v.len() > 32
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            d.error(
                p.span(),
                "placeholder_prefix must be 1-32 characters of letters, digits, `_`, `-` and `.`",
            );
        }
        v.clone()
    });

    if d.len() != before {
        return None;
    }
    Some(SecretSpec {
        name: name.clone(),
        from: from?,
        hosts: patterns,
        injection: injection?,
        placeholder_prefix,
        line,
    })
}

fn check_bound_host(
    pattern: &HostPattern,
    raw: &Spanned<String>,
    secret: &str,
    hosts: &[HostPolicy],
    hosts_complete: bool,
    d: &mut Diagnostics,
) {
    let governing = if pattern.is_wildcard() {
        hosts
            .iter()
            .filter(|h| h.pattern.covers(pattern))
            .max_by_key(|h| h.pattern.specificity())
    } else {
        find_host(hosts, pattern.as_str()).and_then(|i| hosts.get(i))
    };
    match governing {
        None if hosts_complete => d.error(
            raw.span(),
            format!(
                "secret `{secret}` is bound to `{pattern}`, which no [[host]] entry allows; \
                 add a [[host]] for it or remove it from `hosts`"
            ),
        ),
        None => {}
        Some(h) if h.action == Some(Action::Deny) => d.error(
            raw.span(),
            format!(
                "secret `{secret}` is bound to `{pattern}`, which is denied (host `{}` at line {}); \
                 it would never be sent",
                h.name, h.line
            ),
        ),
        Some(_) => {}
    }
}

fn compile_source(v: &Spanned<String>, d: &mut Diagnostics) -> Option<SecretSource> {
    let text = v.get_ref();
    if let Some(var) = text.strip_prefix("env:") {
        if is_env_name(var) {
            return Some(SecretSource::Env(var.to_string()));
        }
        d.error(
            v.span(),
            format!("`{text}`: `{var}` is not an environment variable name"),
        );
        return None;
    }
    if let Some(path) = text.strip_prefix("file:") {
        if path.chars().any(char::is_control) {
            d.error(
                v.span(),
                "the secret's file path contains a control character",
            );
            return None;
        }
        if path.starts_with('/') {
            return Some(SecretSource::File(PathBuf::from(path)));
        }
        d.error(
            v.span(),
            format!("`{text}`: the path must be absolute (e.g. `file:/run/secrets/stripe`)"),
        );
        return None;
    }
    if let Some(name) = text.strip_prefix("credential:") {
        if is_credential_name(name) {
            return Some(SecretSource::Credential(name.to_string()));
        }
        d.error(
            v.span(),
            format!(
                "`{text}`: `{name}` is not a systemd credential name (letters, digits, `_`, `-`, \
                 `.`, `@`; not `.` or `..`; at most 255 bytes)"
            ),
        );
        return None;
    }
    d.error(
        v.span(),
        format!(
            "`{text}`: expected `env:VAR`, `file:/absolute/path` or `credential:NAME` (a systemd \
             credential of enforcer's service)"
        ),
    );
    None
}

/// A name `LoadCredential=` accepts that is also one file name in
/// `$CREDENTIALS_DIRECTORY`, with nothing a shell or a path would read twice.
fn is_credential_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
}

fn compile_injection(raw: &Spanned<RawSecret>, d: &mut Diagnostics) -> Option<Injection> {
    let s = raw.get_ref();
    let styles: Vec<(&str, std::ops::Range<usize>)> = [
        s.header.as_ref().map(|v| ("header", v.span())),
        s.basic.as_ref().map(|v| ("basic", v.span())),
        s.query.as_ref().map(|v| ("query", v.span())),
    ]
    .into_iter()
    .flatten()
    .collect();
    match styles.as_slice() {
        [] => {
            d.error(
                raw.span(),
                "secret has no injection style: add `header = \"Authorization\"` (with `format`), \
                 `basic = \"user\"` or `\"password\"`, or `query = \"param\"`",
            );
            return None;
        }
        [_] => {}
        [(first, _), (second, span), ..] => {
            d.error(
                span.clone(),
                format!(
                    "secret has two injection styles (`{first}` and `{second}`); keep exactly one of `header`, `basic`, `query`"
                ),
            );
            return None;
        }
    }
    if let (Some(f), None) = (&s.format, &s.header) {
        d.error(f.span(), "`format` only applies with `header`");
        return None;
    }
    if let Some(h) = &s.header {
        let name = h.get_ref();
        if !is_token(name) {
            d.error(
                h.span(),
                format!("`{name}` is not a valid header name (e.g. `Authorization`, `X-Api-Key`)"),
            );
            return None;
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            d.error(
                h.span(),
                format!("header `{name}` is managed by the proxy and cannot carry a secret"),
            );
            return None;
        }
        let format = s
            .format
            .as_ref()
            .map_or_else(|| "{}".to_string(), |f| f.get_ref().clone());
        if let Some(f) = &s.format {
            let holes = format.matches("{}").count();
            if holes != 1 {
                d.error(
                    f.span(),
                    format!(
                        "format must contain `{{}}` exactly once, where the secret goes (found {holes}), e.g. \"Bearer {{}}\""
                    ),
                );
                return None;
            }
            if format.chars().any(|c| c.is_control()) {
                d.error(f.span(), "format cannot contain control characters");
                return None;
            }
        }
        return Some(Injection::Header {
            name: name.clone(),
            format,
        });
    }
    if let Some(b) = &s.basic {
        return Some(Injection::Basic(match b.get_ref() {
            RawBasicPart::User => BasicPart::User,
            RawBasicPart::Password => BasicPart::Password,
        }));
    }
    if let Some(q) = &s.query {
        let name = q.get_ref();
        if name.is_empty()
            || name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '&' | '=' | '#'))
        {
            d.error(
                q.span(),
                format!("`{name}` is not a valid query parameter name"),
            );
            return None;
        }
        return Some(Injection::Query(name.clone()));
    }
    None
}

/// Two secrets may not fill the same slot on a host both are sent to
/// (except basic auth, where one may be the user and one the password).
fn check_conflicts(specs: &[(SecretSpec, std::ops::Range<usize>)], d: &mut Diagnostics) {
    for (j, (b, span)) in specs.iter().enumerate() {
        for (a, _) in &specs[..j] {
            let same_slot = a.injection.slot() == b.injection.slot();
            let shared = b
                .hosts
                .iter()
                .find(|hb| a.hosts.iter().any(|ha| ha.overlaps(hb)));
            if let (true, Some(host)) = (same_slot, shared) {
                d.error(
                    span.clone(),
                    format!(
                        "secrets `{}` (line {}) and `{}` both set the {} on `{host}`; only one can",
                        a.name,
                        a.line,
                        b.name,
                        b.injection.slot()
                    ),
                );
            }
        }
    }
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert!(is_env_name("STRIPE_SECRET_KEY"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name(""));
        assert!(!is_env_name("A-B"));
    }
}
