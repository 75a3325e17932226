//! `enforcer policy check`: a normalized, stable, human-readable listing of
//! what a policy allows. Never shows a secret's value (it never has one).

use std::fmt::Write as _;

use super::Policy;
use super::duration::format_duration;
use super::host::{HostMode, HostPolicy};

impl Policy {
    /// The policy as `enforcer policy check` prints it.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "policy {} ({})", self.run.name, self.source.display());

        let _ = writeln!(out, "run:");
        let ttl = self
            .run
            .ttl
            .map_or_else(|| "none".to_string(), format_duration);
        let _ = writeln!(out, "  ttl: {ttl}");
        let cap = self
            .run
            .spend_cap_usd
            .map_or_else(|| "none".to_string(), |c| format!("${c}"));
        let _ = writeln!(out, "  spend cap: {cap}");
        let breaker = self.run.loop_breaker.map_or_else(
            || "off".to_string(),
            |b| {
                format!(
                    "{} identical calls in {}",
                    b.calls,
                    format_duration(b.window)
                )
            },
        );
        let _ = writeln!(out, "  loop breaker: {breaker}");

        let _ = writeln!(out, "local:");
        let ports: Vec<String> = self
            .local
            .loopback_ports
            .iter()
            .map(u16::to_string)
            .collect();
        let _ = writeln!(out, "  loopback ports: {}", list_or_none(&ports));
        let _ = writeln!(
            out,
            "  unix sockets: {}",
            list_or_none(&self.local.unix_sockets)
        );
        let userns = if self.local.allow_user_namespaces {
            "allowed"
        } else {
            "not allowed"
        };
        let _ = writeln!(out, "  user namespaces: {userns}");

        let _ = writeln!(out, "tcp:");
        if self.tcp.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for t in &self.tcp {
            if t.host.contains(':') {
                let _ = writeln!(out, "  [{}]:{}", t.host, t.port);
            } else {
                let _ = writeln!(out, "  {}:{}", t.host, t.port);
            }
        }

        let _ = writeln!(out, "hosts:");
        if self.hosts.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for h in &self.hosts {
            host_summary(&mut out, h);
        }

        let _ = writeln!(out, "secrets:");
        if self.secrets.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for s in &self.secrets {
            let hosts: Vec<&str> = s.hosts.iter().map(|h| h.as_str()).collect();
            let _ = write!(
                out,
                "  {}: from {}, sent to {} as {}",
                s.name,
                s.from,
                hosts.join(", "),
                s.injection
            );
            if let Some(p) = &s.placeholder_prefix {
                let _ = write!(out, ", placeholder prefix {p}");
            }
            out.push('\n');
        }
        out.push_str("anything not listed above is denied\n");
        out
    }
}

fn host_summary(out: &mut String, h: &HostPolicy) {
    let ports: Vec<String> = h.ports.iter().map(u16::to_string).collect();
    let _ = write!(out, "  {} (ports {}): ", h.pattern, ports.join(", "));
    match h.mode() {
        HostMode::Deny => out.push_str("deny"),
        HostMode::PassThrough => out.push_str("pass-through (whole host allowed, not intercepted)"),
        HostMode::Intercept => {
            out.push_str("intercept");
            if h.rules.is_empty() {
                out.push_str(" (whole host allowed)");
            }
        }
    }
    let mut limits = Vec::new();
    if let Some(p) = &h.profile {
        limits.push(format!("vendor {} ({})", p.name, p.origin));
    }
    if let Some(cap) = h.spend_cap_usd {
        limits.push(format!("spend cap ${cap}"));
    }
    if let Some(cap) = h.daily_cap_usd {
        limits.push(format!("daily cap ${cap}"));
    }
    if let Some(rate) = &h.rate {
        limits.push(format!("rate {rate}"));
    }
    if let Some(n) = h.max_calls {
        limits.push(format!("max calls {n}"));
    }
    if !h.secrets.is_empty() {
        limits.push(format!("secrets {}", h.secrets.join(", ")));
    }
    if !limits.is_empty() {
        let _ = write!(out, "; {}", limits.join("; "));
    }
    out.push('\n');
    for (i, r) in h.rules.iter().enumerate() {
        let _ = write!(out, "    {}. {}", i + 1, r.label());
        if let Some(e) = &r.endpoint {
            let _ = write!(out, " [endpoint {e}]");
        }
        if let Some(cost) = &r.cost {
            let _ = write!(out, "; cost {cost}");
        }
        if let Some(rate) = &r.rate {
            let _ = write!(out, "; rate {rate}");
        }
        if let Some(n) = r.max_calls {
            let _ = write!(out, "; max calls {n}");
        }
        if !r.amounts.is_empty() {
            let _ = write!(out, "; {}", r.amounts);
        }
        if let Some(req) = &r.require {
            let _ = write!(out, "; {req}");
        }
        out.push('\n');
    }
    if !h.rules.is_empty() {
        out.push_str("    otherwise: deny\n");
    }
}

fn list_or_none<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
