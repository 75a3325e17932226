//! The `vendor` column: a host's registrable domain (by the public suffix
//! list) without its suffix, so `api.stripe.com` is `stripe`.

use std::net::IpAddr;

/// Normalises a host as the audit log stores it: trimmed, lower case, no
/// trailing dot, IPv6 literals without brackets. `None` when empty.
pub(crate) fn normalize_host(host: &str) -> Option<String> {
    let h = host.trim().trim_end_matches('.');
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    (!h.is_empty()).then(|| h.to_lowercase())
}

/// The vendor a host belongs to: the first label of its registrable domain
/// (`api.stripe.com` -> `stripe`, `files.pythonhosted.org` -> `pythonhosted`,
/// `foo.example.co.uk` -> `example`). `None` for IP literals, bare public
/// suffixes and single labels such as `localhost`.
pub fn vendor_of(host: &str) -> Option<String> {
    let h = normalize_host(host)?;
    if h.parse::<IpAddr>().is_ok() || h.contains(':') {
        return None;
    }
    // `10.0.0` or `1.2.3.4.5` are not names either.
    if h.rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let domain = psl::domain_str(&h)?;
    let label = domain.split('.').next()?;
    (!label.is_empty()).then(|| label.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendors_from_the_public_suffix_list() {
        let cases = [
            ("api.stripe.com", Some("stripe")),
            ("API.Stripe.COM.", Some("stripe")),
            ("stripe.com", Some("stripe")),
            ("files.pythonhosted.org", Some("pythonhosted")),
            ("foo.example.co.uk", Some("example")),
            ("a.b.example.co.uk", Some("example")),
            ("api.openai.com", Some("openai")),
            ("user.github.io", Some("user")),
            ("evil.test", Some("evil")),
            ("co.uk", None),
            ("com", None),
            ("localhost", None),
            ("10.0.0.1", None),
            ("10.0.0", None),
            ("::1", None),
            ("[2001:db8::1]", None),
            ("fe80::1%eth0", None),
            ("", None),
            (".", None),
            ("..", None),
            ("[", None),
        ];
        for (host, want) in cases {
            assert_eq!(vendor_of(host).as_deref(), want, "{host}");
        }
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            normalize_host(" Api.Stripe.com. ").as_deref(),
            Some("api.stripe.com")
        );
        assert_eq!(normalize_host("[FD00::2]").as_deref(), Some("fd00::2"));
        assert_eq!(normalize_host("  "), None);
    }
}
