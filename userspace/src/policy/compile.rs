//! From TOML text to a validated [`Policy`]: deserializes with spans, then
//! validates `[run]`, `[local]`, `[[tcp]]`, `[[host]]` and `[[secret]]`,
//! collecting every problem before giving up.

use std::collections::HashMap;
use std::path::Path;

use toml::Spanned;

use super::diagnostics::{Diagnostics, PolicyError};
use super::duration::parse_duration;
use super::host::{HostPolicy, find_host};
use super::hosts::parse_tcp_host;
use super::rules::compile_hosts;
use super::schema::{RawBreaker, RawLocal, RawPolicy, RawRun, RawTcp};
use super::secrets::compile_secrets;
use super::values::{check_port, check_usd, compile_ports};
use super::{LocalSettings, LoopBreakerSettings, Policy, RunSettings, TcpRule};

/// Longest unix socket path (`sun_path` is 108 bytes with the final NUL).
const MAX_UNIX_PATH: usize = 107;

pub(crate) fn compile(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    let raw: RawPolicy =
        toml::from_str(text).map_err(|e| PolicyError::from_toml(&e, text, path))?;
    let mut d = Diagnostics::new(text, path);
    let file = path.display().to_string();
    let run = compile_run(raw.run.as_ref(), path, &mut d);
    let local = compile_local(raw.local.as_ref(), &mut d);
    let (mut hosts, hosts_complete) = compile_hosts(
        &raw.host,
        &file,
        path.parent().unwrap_or(Path::new(".")),
        &mut d,
    );
    let tcp = compile_tcp(&raw.tcp, &hosts, &mut d);
    let secrets = compile_secrets(&raw.secret, &mut hosts, hosts_complete, &mut d);
    for host in hosts
        .iter_mut()
        .filter(|h| !h.secrets.is_empty() && !h.ports_explicit)
    {
        // A host that carries secrets is reached over TLS unless the
        // policy says otherwise.
        host.ports = vec![443];
    }
    d.finish(Policy {
        source: path.to_path_buf(),
        run,
        local,
        tcp,
        hosts,
        secrets,
    })
}

fn compile_run(raw: Option<&Spanned<RawRun>>, path: &Path, d: &mut Diagnostics) -> RunSettings {
    let mut run = RunSettings {
        name: default_run_name(path),
        ttl: None,
        spend_cap_usd: None,
        loop_breaker: Some(LoopBreakerSettings::default()),
    };
    let Some(raw) = raw else { return run };
    let r = raw.get_ref();
    if let Some(name) = &r.name {
        match check_run_name(name.get_ref()) {
            Ok(()) => run.name = name.get_ref().clone(),
            Err(e) => d.error(name.span(), e),
        }
    }
    if let Some(ttl) = &r.ttl {
        match parse_duration(&ttl.get_ref().0) {
            Ok(t) => run.ttl = Some(t),
            Err(e) => d.error(ttl.span(), format!("ttl: {e}")),
        }
    }
    if let Some(cap) = &r.spend_cap_usd {
        run.spend_cap_usd = check_usd(cap, "spend_cap_usd", d);
    }
    if let Some(b) = &r.loop_breaker {
        run.loop_breaker = compile_breaker(b, d);
    }
    run
}

/// Bounds of `loop_breaker.calls`.
const BREAKER_CALLS: std::ops::RangeInclusive<i64> = 2..=10_000;

fn compile_breaker(raw: &Spanned<RawBreaker>, d: &mut Diagnostics) -> Option<LoopBreakerSettings> {
    let mut settings = LoopBreakerSettings::default();
    match raw.get_ref() {
        RawBreaker::Switch(false) => return None,
        RawBreaker::Switch(true) => {}
        RawBreaker::Table(t) => {
            if let Some(calls) = t.calls {
                if BREAKER_CALLS.contains(&calls) {
                    settings.calls = calls as u32;
                } else {
                    d.error(
                        raw.span(),
                        format!(
                            "loop_breaker.calls must be between {} and {} (got {calls})",
                            BREAKER_CALLS.start(),
                            BREAKER_CALLS.end()
                        ),
                    );
                }
            }
            if let Some(w) = &t.window {
                match parse_duration(w) {
                    Ok(w) => settings.window = w,
                    Err(e) => d.error(raw.span(), format!("loop_breaker.window: {e}")),
                }
            }
        }
    }
    Some(settings)
}

/// Run names end up in cgroup names, unit names and the audit log.
fn check_run_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "run name `{name}`: use 1-64 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        ))
    }
}

/// The file stem, with anything a run name cannot hold replaced by `-`.
fn default_run_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 'p');
        name.truncate(64);
    }
    name
}

fn compile_local(raw: Option<&Spanned<RawLocal>>, d: &mut Diagnostics) -> LocalSettings {
    let Some(raw) = raw else {
        return LocalSettings::default();
    };
    let l = raw.get_ref();
    let loopback_ports = compile_ports(&l.loopback_ports, d);
    let mut unix_sockets: Vec<String> = Vec::new();
    for s in &l.unix_sockets {
        let v = s.get_ref();
        if let Err(e) = check_unix_socket(v) {
            d.error(s.span(), e);
        } else if unix_sockets.contains(v) {
            d.error(s.span(), format!("unix socket `{v}` is listed twice"));
        } else {
            unix_sockets.push(v.clone());
        }
    }
    LocalSettings {
        loopback_ports,
        unix_sockets,
        allow_user_namespaces: l.allow_user_namespaces,
    }
}

fn check_unix_socket(s: &str) -> Result<(), String> {
    let expected = "expected an absolute path (`/run/app.sock`) or `@name` for an abstract socket";
    if s.chars().any(char::is_control) {
        return Err(format!(
            "unix socket `{}` contains a control character",
            s.escape_debug()
        ));
    }
    let body = if let Some(name) = s.strip_prefix('@') {
        if name.is_empty() {
            return Err(format!("unix socket `@` has no name; {expected}"));
        }
        name
    } else if s.starts_with('/') {
        if s.split('/').any(|c| c == "." || c == "..") {
            return Err(format!(
                "unix socket `{s}`: write the path without `.` or `..` components"
            ));
        }
        let under = |dir: &str| s == dir || s.starts_with(&format!("{dir}/"));
        if under("/run/enforcer") || under("/var/run/enforcer") {
            return Err(format!(
                "unix socket `{s}` is enforcer's own: an agent may never reach enforcer's \
                 control or approval sockets"
            ));
        }
        s
    } else {
        return Err(format!("unix socket `{s}`: {expected}"));
    };
    if body.len() > MAX_UNIX_PATH {
        return Err(format!(
            "unix socket `{s}` is {} bytes long; the kernel limit is {MAX_UNIX_PATH}",
            body.len()
        ));
    }
    Ok(())
}

fn compile_tcp(raw: &[Spanned<RawTcp>], hosts: &[HostPolicy], d: &mut Diagnostics) -> Vec<TcpRule> {
    let mut out: Vec<TcpRule> = Vec::new();
    let mut seen: HashMap<(String, u16), usize> = HashMap::new();
    for t in raw {
        let r = t.get_ref();
        let line = d.line(t.span().start);
        let host = parse_tcp_host(r.host.get_ref()).map_err(|e| d.error(r.host.span(), e));
        let port = check_port(&r.port, d);
        let (Ok(host), Some(port)) = (host, port) else {
            continue;
        };
        if let Some(first) = seen.get(&(host.clone(), port)) {
            d.error(
                r.host.span(),
                format!("duplicate [[tcp]] destination `{host}` port {port}: already listed at line {first}"),
            );
            continue;
        }
        if let Some(h) = find_host(hosts, &host).and_then(|i| hosts.get(i))
            && h.allows_port(port)
        {
            d.error(
                r.host.span(),
                format!(
                    "`{host}` port {port} is both a raw [[tcp]] destination and an HTTP [[host]] (`{}` at line {}); \
                     raw TCP would bypass that host's rules: remove one, or use different ports",
                    h.name, h.line
                ),
            );
            continue;
        }
        seen.insert((host.clone(), port), line);
        out.push(TcpRule { host, port });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_sanitized() {
        assert_eq!(
            default_run_name(Path::new("policies/billing.toml")),
            "billing"
        );
        assert_eq!(default_run_name(Path::new("my policy.toml")), "my-policy");
        assert_eq!(default_run_name(Path::new(".hidden")), "p.hidden");
        assert_eq!(default_run_name(Path::new("")), "p");
        assert!(check_run_name(&default_run_name(Path::new(&"x".repeat(100)))).is_ok());
    }

    #[test]
    fn unix_sockets() {
        assert!(check_unix_socket("/run/postgresql/.s.PGSQL.5432").is_ok());
        assert!(check_unix_socket("@abstract-name").is_ok());
        assert!(check_unix_socket("@").is_err());
        assert!(check_unix_socket("relative.sock").is_err());
        assert!(check_unix_socket("/run/../etc/x").is_err());
        assert!(check_unix_socket(&format!("/{}", "a".repeat(107))).is_err());
        assert!(check_unix_socket(&format!("/{}", "a".repeat(106))).is_ok());
        assert!(check_unix_socket("/a\0b").is_err());
        for own in [
            "/run/enforcer/runs/x.sock",
            "/run/enforcer",
            "/var/run/enforcer/runs/x.sock",
        ] {
            let e = check_unix_socket(own).unwrap_err();
            assert!(e.contains("enforcer's own"), "{own}: {e}");
        }
        assert!(check_unix_socket("/run/enforcer-other.sock").is_ok());
    }
}
