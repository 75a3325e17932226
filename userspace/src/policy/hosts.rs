//! Host names and `[[host]]` patterns: validation, normalization (lowercase,
//! no trailing dot) and matching (an exact name, or `*.domain` for one or
//! more labels below `domain`, never `domain` itself).

use std::fmt;
use std::net::IpAddr;

/// A validated `[[host]]` name: an exact DNS name or `*.domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// Normalized text: lowercase, no trailing dot (`api.x.com`, `*.x.com`).
    text: String,
    wildcard: bool,
}

impl HostPattern {
    /// Parses and validates a pattern as written in a policy.
    pub fn parse(input: &str) -> Result<Self, String> {
        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() {
            return Err("host name is empty".into());
        }
        if let Some(msg) = looks_like_url(trimmed) {
            return Err(msg);
        }
        if parse_ip(trimmed).is_some() {
            return Err(format!(
                "`{input}` is an IP address; [[host]] takes DNS names (use [[tcp]] for IP destinations)"
            ));
        }
        let lower = trimmed.to_ascii_lowercase();
        if lower == "*" {
            return Err(
                "`*` would match every host; name hosts explicitly (a wildcard looks like `*.example.com`)"
                    .into(),
            );
        }
        if let Some(domain) = lower.strip_prefix("*.") {
            if domain.contains('*') {
                return Err(format!(
                    "`{input}`: only one wildcard is allowed, as the whole first label (`*.example.com`)"
                ));
            }
            check_dns_name(domain).map_err(|e| format!("`{input}`: {e}"))?;
            if !domain.contains('.') {
                return Err(format!(
                    "`{input}` is too broad: a wildcard needs at least two labels after `*.` (e.g. `*.example.{domain}`)"
                ));
            }
            check_not_local(domain, input)?;
            return Ok(Self {
                text: lower,
                wildcard: true,
            });
        }
        if lower.contains('*') {
            return Err(format!(
                "`{input}`: `*` is only allowed as the whole first label (`*.example.com`)"
            ));
        }
        check_dns_name(&lower).map_err(|e| format!("`{input}`: {e}"))?;
        check_not_local(&lower, input)?;
        Ok(Self {
            text: lower,
            wildcard: false,
        })
    }

    /// The normalized pattern (`api.stripe.com`, `*.pypi.org`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The exact name, or for `*.domain` the `domain` part.
    pub fn domain(&self) -> &str {
        if self.wildcard {
            &self.text[2..]
        } else {
            &self.text
        }
    }

    /// Whether `name` (any case, optional trailing dot) is matched. Names
    /// that are not valid DNS names never match.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
        let domain = self.domain().as_bytes();
        if !self.wildcard {
            return name.eq_ignore_ascii_case(domain);
        }
        // One or more labels, then a dot, then exactly `domain`.
        if name.len() < domain.len() + 2 || name.len() > 253 {
            return false;
        }
        let split = name.len() - domain.len();
        name[split - 1] == b'.'
            && name[split..].eq_ignore_ascii_case(domain)
            && valid_labels(&name[..split - 1])
    }

    /// Whether every name `other` matches is also matched by `self`.
    pub fn covers(&self, other: &HostPattern) -> bool {
        match (self.wildcard, other.wildcard) {
            (false, false) => self.text == other.text,
            (false, true) => false,
            (true, _) => {
                let d = self.domain();
                let o = other.domain();
                (other.wildcard && o == d)
                    || (o.len() > d.len() + 1 && o.ends_with(d) && {
                        o.as_bytes()[o.len() - d.len() - 1] == b'.'
                    })
            }
        }
    }

    /// Whether some name is matched by both patterns.
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// How specific a match is: exact names beat every wildcard, longer
    /// wildcard domains beat shorter ones.
    pub(crate) fn specificity(&self) -> usize {
        if self.wildcard {
            self.domain().len()
        } else {
            usize::MAX
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Lowercase, trailing dot removed; `None` if `name` is not a valid DNS name.
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if valid_labels(name.as_bytes()) && name.len() <= 253 {
        Some(name.to_ascii_lowercase())
    } else {
        None
    }
}

/// An IP literal: `1.2.3.4`, `::1`, or `[::1]`. IPv4-mapped IPv6 addresses
/// are returned as IPv4.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// A `[[tcp]]` destination: an IP literal (canonical text) or a DNS name
/// (normalized). No wildcards.
pub(crate) fn parse_tcp_host(input: &str) -> Result<String, String> {
    if let Some(ip) = parse_ip(input) {
        if ip.is_loopback() || ip.is_unspecified() {
            return Err(format!(
                "`{input}` is this machine; list loopback ports in [local] `loopback_ports` instead"
            ));
        }
        return Ok(ip.to_string());
    }
    if input.contains('*') {
        return Err(format!(
            "`{input}`: [[tcp]] destinations cannot be wildcards; name each host"
        ));
    }
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err("host is empty".into());
    }
    if let Some(msg) = looks_like_url(trimmed) {
        return Err(msg);
    }
    let lower = trimmed.to_ascii_lowercase();
    check_dns_name(&lower).map_err(|e| format!("`{input}`: {e}"))?;
    check_not_local(&lower, input)?;
    Ok(lower)
}

/// Hints for the common mistake of writing a URL instead of a host name.
fn looks_like_url(s: &str) -> Option<String> {
    if s.contains("://") || s.contains('/') {
        return Some(format!(
            "`{s}`: write just the host name, without scheme or path (e.g. `api.example.com`)"
        ));
    }
    if s.contains(':') && s.parse::<IpAddr>().is_err() && !s.starts_with('[') {
        return Some(format!(
            "`{s}`: write just the host name; ports go in `ports = [...]` (or `port` in [[tcp]])"
        ));
    }
    None
}

fn check_not_local(name: &str, input: &str) -> Result<(), String> {
    if name == "localhost" || name.ends_with(".localhost") {
        return Err(format!(
            "`{input}` is this machine; list loopback ports in [local] `loopback_ports` instead"
        ));
    }
    Ok(())
}

/// Checks a lowercase name without trailing dot: LDH labels of 1-63
/// characters, not starting or ending with `-`, 253 characters at most,
/// and a last label that is not all digits.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!(
            "host name is {} characters long; the limit is 253",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "label `{label}` is {} characters long; the limit is 63",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "invalid character `{c}` in host name (letters, digits, `-` and `.` only; write international names in punycode, `xn--...`)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` cannot start or end with `-`"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label is numeric, which looks like an IP address".into());
    }
    Ok(())
}

/// Dot-separated LDH labels of 1-63 bytes (any case), no leading/trailing `-`.
fn valid_labels(name: &[u8]) -> bool {
    !name.is_empty()
        && name.split(|b| *b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_names_match_case_insensitively_with_optional_trailing_dot() {
        let h = p("API.Stripe.com.");
        assert_eq!(h.as_str(), "api.stripe.com");
        assert!(h.matches("api.stripe.com"));
        assert!(h.matches("API.STRIPE.COM"));
        assert!(h.matches("api.stripe.com."));
        assert!(!h.matches("api.stripe.com.."));
        assert!(!h.matches("x.api.stripe.com"));
        assert!(!h.matches("stripe.com"));
        assert!(!h.matches("api.stripe.co"));
        assert!(!h.matches(""));
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_below_the_domain_only() {
        let h = p("*.pypi.org");
        assert!(h.is_wildcard());
        assert_eq!(h.domain(), "pypi.org");
        assert!(h.matches("files.pypi.org"));
        assert!(h.matches("a.b.pypi.org"));
        assert!(h.matches("FILES.PyPI.org."));
        assert!(!h.matches("pypi.org"));
        assert!(!h.matches("pypi.org."));
        assert!(!h.matches(".pypi.org"));
        assert!(!h.matches("evilpypi.org"));
        assert!(!h.matches("a.evilpypi.org"));
        assert!(!h.matches("pypi.org.evil.com"));
        assert!(!h.matches("files.pypi.org.evil.com"));
        assert!(!h.matches("a..pypi.org"));
        assert!(!h.matches("-a.pypi.org"));
        assert!(!h.matches("a b.pypi.org"));
        assert!(!h.matches("*.pypi.org"));
        assert!(!h.matches("é.pypi.org"));
        assert!(!h.matches("xpypi.org"));
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("*", "every host"),
            ("*.com", "at least two labels"),
            ("*.com.", "at least two labels"),
            ("a*.b.com", "whole first label"),
            ("*.*.b.com", "only one wildcard"),
            ("b.*.com", "whole first label"),
            ("1.2.3.4", "IP address"),
            ("::1", "IP address"),
            ("[2001:db8::1]", "IP address"),
            ("1.2.3", "numeric"),
            ("a..b.com", "empty label"),
            (".b.com", "empty label"),
            ("a_b.com", "invalid character `_`"),
            ("é.com", "invalid character"),
            ("-a.com", "start or end"),
            ("https://api.x.com", "without scheme"),
            ("api.x.com/v1", "without scheme"),
            ("api.x.com:443", "ports go in"),
            ("localhost", "loopback_ports"),
            ("*.x.localhost", "loopback_ports"),
        ] {
            let err = HostPattern::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(HostPattern::parse(&long_label).unwrap_err().contains("63"));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(HostPattern::parse(&long_name).unwrap_err().contains("253"));
        assert!(HostPattern::parse("xn--bcher-kva.example").is_ok());
        assert!(HostPattern::parse(&format!("{}.com", "a".repeat(63))).is_ok());
    }

    #[test]
    fn covers_and_overlaps() {
        assert!(p("*.x.com").covers(&p("a.x.com")));
        assert!(p("*.x.com").covers(&p("*.a.x.com")));
        assert!(p("*.x.com").covers(&p("*.x.com")));
        assert!(!p("*.x.com").covers(&p("x.com")));
        assert!(!p("*.x.com").covers(&p("ax.com")));
        assert!(!p("*.x.com").covers(&p("*.ax.com")));
        assert!(!p("a.x.com").covers(&p("*.x.com")));
        assert!(p("a.x.com").overlaps(&p("*.x.com")));
        assert!(!p("b.com").overlaps(&p("*.x.com")));
    }

    #[test]
    fn tcp_hosts() {
        assert_eq!(parse_tcp_host("DB.example.com.").unwrap(), "db.example.com");
        assert_eq!(parse_tcp_host("10.0.0.5").unwrap(), "10.0.0.5");
        assert_eq!(parse_tcp_host("[2001:db8::1]").unwrap(), "2001:db8::1");
        assert_eq!(parse_tcp_host("::ffff:10.0.0.5").unwrap(), "10.0.0.5");
        assert!(parse_tcp_host("127.0.0.1").unwrap_err().contains("[local]"));
        assert!(parse_tcp_host("::1").unwrap_err().contains("[local]"));
        assert!(parse_tcp_host("*.x.com").unwrap_err().contains("wildcard"));
        assert!(parse_tcp_host("").is_err());
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_name("A.B.").as_deref(), Some("a.b"));
        assert_eq!(normalize_name("a..b"), None);
        assert_eq!(normalize_name("a/b"), None);
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    fn domain() -> impl Strategy<Value = String> {
        proptest::collection::vec(label(), 2..4).prop_map(|v| v.join("."))
    }

    proptest! {
        #[test]
        fn wildcard_never_matches_the_bare_domain_or_lookalikes(
            d in domain(), sub in label(), junk in "[a-z0-9]{1,6}", upper in any::<bool>()
        ) {
            prop_assume!(!d.rsplit('.').next().unwrap().bytes().all(|b| b.is_ascii_digit()));
            let pat = HostPattern::parse(&format!("*.{d}")).unwrap();
            let case = |s: String| if upper { s.to_ascii_uppercase() } else { s };
            let never = [
                d.clone(),
                format!("{d}."),
                format!("{junk}{d}"),
                format!("{sub}.{junk}{d}"),
                format!("{d}.{junk}.com"),
                format!("{sub}.{d}.{junk}.com"),
            ];
            for name in never {
                let name = case(name);
                prop_assert!(!pat.matches(&name), "{} matched {}", pat, name);
            }
            let always = [format!("{sub}.{d}"), format!("{sub}.{junk}.{d}.")];
            for name in always {
                let name = case(name);
                prop_assert!(pat.matches(&name), "{} did not match {}", pat, name);
            }
        }

        #[test]
        fn exact_pattern_matches_only_itself(d in domain(), other in domain()) {
            prop_assume!(!d.rsplit('.').next().unwrap().bytes().all(|b| b.is_ascii_digit()));
            let pat = HostPattern::parse(&d).unwrap();
            prop_assert!(pat.matches(&d.to_ascii_uppercase()));
            prop_assert_eq!(pat.matches(&other), other == d);
        }

        #[test]
        fn matching_never_panics(pat in "\\PC{0,20}", name in "\\PC{0,30}") {
            if let Ok(p) = HostPattern::parse(&pat) {
                let _ = p.matches(&name);
            }
            let _ = normalize_name(&name);
            let _ = parse_tcp_host(&name);
        }

        #[test]
        fn a_match_implies_the_name_normalizes(d in domain(), name in "[a-zA-Z0-9.-]{0,30}") {
            prop_assume!(!d.rsplit('.').next().unwrap().bytes().all(|b| b.is_ascii_digit()));
            let pat = HostPattern::parse(&format!("*.{d}")).unwrap();
            if pat.matches(&name) {
                let n = normalize_name(&name).unwrap();
                let suffix = format!(".{d}");
                prop_assert!(n.ends_with(&suffix));
            }
        }
    }
}
