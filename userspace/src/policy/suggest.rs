//! `enforcer policy suggest --run RUN_ID`: a minimal, commented policy that
//! allows exactly what recorded runs did (best recorded in observe mode):
//! each host seen, its ports, and one rule per method and path, with the
//! segments that are ids (numbers, UUIDs, long hex, Stripe-style `cus_...`)
//! generalised. It is parsed before it is printed, so what it prints is a
//! policy `policy check` accepts.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::Path,
};

use super::{Policy, PolicyError, hosts::parse_ip, methods::is_token};
use crate::{audit::EventRow, decision::Cause};

/// What the suggestion needs to know about the recording.
pub struct Recording<'a> {
    pub runs: &'a [String],
    pub name: Option<&'a str>,
    pub events: &'a [EventRow],
}

#[derive(Default)]
struct HostSeen {
    ports: BTreeSet<u16>,
    /// (method, path glob) -> (times, an example path, asked)
    requests: BTreeMap<(String, String), (u64, String, bool)>,
    connections: u64,
    resolved_only: bool,
}

/// A generalised path segment, or `None` to keep it as it is.
pub fn generalise_segment(seg: &str) -> Option<String> {
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
        return Some("*".into());
    }
    let b = seg.as_bytes();
    if seg.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && is_hex(&seg.replace('-', ""))
    {
        return Some("*".into());
    }
    if seg.len() >= 16 && is_hex(seg) {
        return Some("*".into());
    }
    // Stripe-style: a short lower-case prefix, `_`, and a long id.
    if let Some((prefix, id)) = seg.split_once('_')
        && (2..=10).contains(&prefix.len())
        && prefix.bytes().all(|c| c.is_ascii_lowercase())
        && id.len() >= 8
        && id.bytes().all(|c| c.is_ascii_alphanumeric())
        && id.bytes().any(|c| c.is_ascii_digit())
    {
        return Some(format!("{prefix}_*"));
    }
    // Anything a glob cannot hold literally stands for one segment.
    let literal_ok = seg
        .bytes()
        .all(|c| c.is_ascii_graphic() && !b"?#[]{}\\*\"'".contains(&c));
    (!literal_ok).then(|| "*".into())
}

/// The glob for a recorded path (its query already dropped).
pub fn generalise_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| generalise_segment(s).unwrap_or_else(|| s.to_string()))
        .collect();
    if segs.is_empty() {
        "/".into()
    } else {
        format!("/{}", segs.join("/"))
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Comment text (one line, printable).
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The suggested policy's text, checked by parsing it.
pub fn suggest(rec: &Recording<'_>) -> Result<String, PolicyError> {
    let mut hosts: BTreeMap<String, HostSeen> = BTreeMap::new();
    let mut left_out: BTreeMap<String, u64> = BTreeMap::new();
    let mut kernel: BTreeMap<String, u64> = BTreeMap::new();
    let mut resolved: BTreeSet<String> = BTreeSet::new();
    let mut observe_rows = 0u64;
    for e in rec.events {
        let cause = e.cause.as_deref().and_then(Cause::parse);
        if e.alarm.is_some() {
            *left_out
                .entry(format!(
                    "{} alarm ({})",
                    e.alarm.as_deref().unwrap_or(""),
                    e.destination()
                ))
                .or_default() += 1;
            continue;
        }
        if cause == Some(Cause::WouldDeny) {
            observe_rows += 1;
        }
        let Some(host) = e.host.as_deref().map(str::to_ascii_lowercase) else {
            continue;
        };
        match (e.layer.as_str(), cause) {
            ("kernel", Some(Cause::BenignProbe)) => {}
            ("kernel", _) => *kernel.entry(e.destination()).or_default() += 1,
            ("dns", _) => {
                resolved.insert(host.trim_end_matches('.').to_string());
            }
            (_, Some(Cause::Ambiguous | Cause::NameMismatch | Cause::NotFromRun)) => {
                *left_out
                    .entry(format!(
                        "{} ({})",
                        e.destination(),
                        cause.map_or("", Cause::as_str)
                    ))
                    .or_default() += 1;
            }
            (_, Some(Cause::UnknownProtocol)) => {
                *left_out
                    .entry(format!(
                        "{} (neither TLS nor HTTP: a [[tcp]] entry would be needed)",
                        e.destination()
                    ))
                    .or_default() += 1;
            }
            ("connection", _) => {
                let h = hosts.entry(host).or_default();
                h.connections += 1;
                h.ports.extend(e.port);
            }
            ("request", _) => {
                let (Some(method), Some(path)) = (e.method.as_deref(), e.path.as_deref()) else {
                    continue;
                };
                if !is_token(method) {
                    continue;
                }
                let asked = e.approver.is_some();
                let h = hosts.entry(host).or_default();
                h.ports.extend(e.port);
                let entry = h
                    .requests
                    .entry((method.to_string(), generalise_path(path)))
                    .or_insert_with(|| (0, path.to_string(), false));
                entry.0 += 1;
                entry.2 |= asked;
            }
            _ => {}
        }
    }
    for name in resolved {
        hosts.entry(name).or_insert_with(|| HostSeen {
            resolved_only: true,
            ..HostSeen::default()
        });
    }
    let (ips, hosts): (Vec<_>, Vec<_>) = hosts
        .into_iter()
        .partition(|(name, _)| parse_ip(name).is_some());

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Suggested by `enforcer policy suggest` from run{} {}{}.",
        if rec.runs.len() == 1 { "" } else { "s" },
        rec.runs.join(", "),
        if observe_rows > 0 {
            format!(" ({observe_rows} decisions recorded as would-deny in observe mode)")
        } else {
            String::new()
        }
    );
    out.push_str(
        "# It allows exactly what those runs did and nothing else. Review every entry:\n\
         # a recording of a compromised job would suggest what the attacker did too.\n\
         # Path segments that were ids (numbers, UUIDs, long hex, Stripe-style\n\
         # `cus_...`) became `*` (or `cus_*`). Secrets, caps and rates are yours to add.\n\n",
    );
    let name = rec.name.unwrap_or("suggested");
    let _ = writeln!(out, "[run]\nname = {}", toml_str(name));
    for (name, h) in &hosts {
        out.push('\n');
        out.push_str("[[host]]\n");
        let _ = writeln!(out, "name = {}", toml_str(name));
        let ports: Vec<u16> = h.ports.iter().copied().collect();
        if !ports.is_empty() && ports.iter().any(|p| !matches!(p, 80 | 443)) {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            let _ = writeln!(out, "ports = [{}]", list.join(", "));
        }
        if h.requests.is_empty() {
            let what = if h.resolved_only {
                "only resolved (DNS), never connected to"
            } else {
                "connections only: passed through, or refused before any request was seen"
            };
            let _ = writeln!(out, "action = \"allow\"   # {what}");
            continue;
        }
        let _ = writeln!(
            out,
            "# {} request{} seen",
            h.requests.values().map(|r| r.0).sum::<u64>(),
            if h.requests.len() == 1 && h.requests.values().all(|r| r.0 == 1) {
                ""
            } else {
                "s"
            }
        );
        for ((method, glob), (n, example, asked)) in &h.requests {
            out.push_str("\n  [[host.rule]]\n");
            let _ = writeln!(out, "  method = {}", toml_str(method));
            let _ = writeln!(out, "  path = {}", toml_str(glob));
            let action = if *asked { "ask" } else { "allow" };
            let seen = if glob == example {
                format!("seen {n}x")
            } else {
                format!("seen {n}x, e.g. {}", comment(example))
            };
            let asked = if *asked { "; a human was asked" } else { "" };
            let _ = writeln!(out, "  action = \"{action}\"   # {seen}{asked}");
        }
    }
    if !ips.is_empty() || !kernel.is_empty() || !left_out.is_empty() {
        out.push_str("\n# Not in this policy:\n");
        for (ip, _) in &ips {
            let _ = writeln!(
                out,
                "#   {} (an IP address: [[host]] names DNS names; use [[tcp]] if it must be reached)",
                comment(ip)
            );
        }
        for (what, n) in &kernel {
            let _ = writeln!(out, "#   {} refused in the kernel ({n}x)", comment(what));
        }
        for (what, n) in &left_out {
            let _ = writeln!(out, "#   {} ({n}x, left out)", comment(what));
        }
    }
    Policy::parse(&out, Path::new("suggested.toml"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_generalised_and_words_are_kept() {
        assert_eq!(
            generalise_path("/v1/customers/cus_NffrFeUfNV2Hib"),
            "/v1/customers/cus_*"
        );
        assert_eq!(
            generalise_path("/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/confirm"),
            "/v1/payment_intents/pi_*/confirm"
        );
        assert_eq!(
            generalise_path("/repos/o/r/issues/1234"),
            "/repos/o/r/issues/*"
        );
        assert_eq!(
            generalise_path("/items/123e4567-e89b-12d3-a456-426614174000"),
            "/items/*"
        );
        assert_eq!(
            generalise_path("/git/commits/0123456789abcdef0123"),
            "/git/commits/*"
        );
        assert_eq!(
            generalise_path("/v1/payment_intents"),
            "/v1/payment_intents"
        );
        assert_eq!(
            generalise_path("/api/user_profile"),
            "/api/user_profile",
            "a word, not an id"
        );
        assert_eq!(generalise_path("/"), "/");
        assert_eq!(generalise_path("/a/"), "/a");
        assert_eq!(generalise_path("/a/{x}"), "/a/*", "what a glob cannot hold");
    }
}
