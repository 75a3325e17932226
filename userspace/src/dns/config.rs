//! Where the enforcer sends the queries it does make: `--resolver ADDR`, or
//! the host's /etc/resolv.conf (a loopback stub such as systemd-resolved's
//! 127.0.0.53 is fine: the enforcer runs outside the agent's cgroup).

use std::net::{IpAddr, SocketAddr};

/// The system resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid --resolver {0:?}: expected an IP address, optionally with a port (10.0.0.53, [fd00::53]:5353)"
    )]
    BadResolver(String),
    #[error("{RESOLV_CONF} lists no nameserver; pass --resolver ADDR")]
    NoNameserver,
}

/// Parses `--resolver` values: `ip`, `ip:port`, `[ipv6]:port`.
pub fn parse_resolver(s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| ConfigError::BadResolver(s.to_string()))
}

/// The `nameserver` lines of a resolv.conf (scope ids are dropped).
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            let addr = addr.split('%').next()?;
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The upstream servers: the overrides if any, else the system's.
pub fn upstreams(overrides: &[SocketAddr]) -> Result<Vec<SocketAddr>, ConfigError> {
    if !overrides.is_empty() {
        return Ok(overrides.to_vec());
    }
    let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let found = nameservers(&text);
    if found.is_empty() {
        return Err(ConfigError::NoNameserver);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let text = "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\noptions edns0\nnameserver bogus\n";
        let ns = nameservers(text);
        assert_eq!(
            ns,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn resolver_flags_take_ports_or_default_to_53() {
        assert_eq!(
            parse_resolver("10.0.0.53").unwrap(),
            "10.0.0.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_resolver("10.0.0.53:5353").unwrap(),
            "10.0.0.53:5353".parse().unwrap()
        );
        assert_eq!(
            parse_resolver("[fd00::53]:53").unwrap(),
            "[fd00::53]:53".parse().unwrap()
        );
        assert_eq!(
            parse_resolver("fd00::53").unwrap(),
            "[fd00::53]:53".parse().unwrap()
        );
        assert!(parse_resolver("dns.example").is_err());
    }
}
