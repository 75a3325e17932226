//! Validation of `[[host]]` entries and their `[[host.rule]]`s: names,
//! ports, whole-host actions, caps, rules, and unreachable rules.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::amounts::compile_amounts;
use super::canonical::{AMBIGUITY_NAMES, Ambiguities};
use super::cost::compile_cost;
use super::diagnostics::Diagnostics;
use super::host::{Action, HostPolicy, Rule};
use super::hosts::HostPattern;
use super::methods::MethodSet;
use super::paths::PathGlob;
use super::profile::{self, Profile};
use super::require::compile_require;
use super::schema::{MethodSpec, RawAction, RawHost, RawRule};
use super::values::{check_usd, compile_count, compile_ports, compile_rate};

/// Ports of a `[[host]]` without `ports`.
const DEFAULT_PORTS: [u16; 2] = [443, 80];

/// Validates every `[[host]]`. Returns the hosts that compiled, and whether
/// all of them did (later checks skip follow-on errors otherwise).
pub(crate) fn compile_hosts(
    raw: &[Spanned<RawHost>],
    file: &str,
    base: &Path,
    d: &mut Diagnostics,
) -> (Vec<HostPolicy>, bool) {
    let mut hosts = Vec::new();
    let mut all_ok = true;
    let mut seen: HashMap<String, (usize, String)> = HashMap::new();
    for h in raw {
        let before = d.len();
        let profile = host_profile(h.get_ref(), base, d);
        let named = host_name(h, profile.as_deref(), d);
        let host = named
            .as_ref()
            .and_then(|n| compile_host(h, n, profile, file, d));
        // Duplicates are checked even when an entry has other problems.
        let Some((name, name_span)) = &named else {
            all_ok = false;
            continue;
        };
        if let Ok(pattern) = HostPattern::parse(name) {
            match seen.get(pattern.as_str()) {
                Some((line, first)) => {
                    let same = if first == name {
                        String::new()
                    } else {
                        format!(" (`{name}` is the same host as `{first}`)")
                    };
                    d.error(
                        name_span.clone(),
                        format!(
                            "duplicate host `{pattern}`: already defined at line {line}{same}; merge the two entries"
                        ),
                    );
                }
                None => {
                    let line = d.line(h.span().start);
                    seen.insert(pattern.as_str().to_string(), (line, name.clone()));
                }
            }
        }
        match host {
            Some(host) if d.len() == before => hosts.push(host),
            _ => all_ok = false,
        }
    }
    (hosts, all_ok)
}

/// The vendor profile a `[[host]]` names (`vendor`, `vendor_file`).
fn host_profile(h: &RawHost, base: &Path, d: &mut Diagnostics) -> Option<Arc<Profile>> {
    let vendor = h.vendor.as_ref();
    let file = h.vendor_file.as_ref();
    let span = file.or(vendor)?.span();
    profile::load(
        vendor.map(|v| v.get_ref().as_str()),
        file.map(|f| f.get_ref().as_str()),
        base,
    )
    .map_err(|e| d.error(span, e))
    .ok()
}

/// The entry's name: as written, or the profile's first host.
fn host_name(
    raw: &Spanned<RawHost>,
    profile: Option<&Profile>,
    d: &mut Diagnostics,
) -> Option<(String, Range<usize>)> {
    let h = raw.get_ref();
    if let Some(n) = &h.name {
        return Some((n.get_ref().clone(), n.span()));
    }
    let span = h
        .vendor
        .as_ref()
        .or(h.vendor_file.as_ref())
        .map(|v| v.span());
    match (profile.and_then(|p| p.hosts.first()), span) {
        (Some(first), Some(span)) => Some((first.clone(), span)),
        // The profile did not load: its error is reported already.
        (None, Some(_)) => None,
        _ => {
            d.error(raw.span(), "missing required key `name`");
            None
        }
    }
}

fn compile_host(
    raw: &Spanned<RawHost>,
    (name, name_span): &(String, Range<usize>),
    profile: Option<Arc<Profile>>,
    file: &str,
    d: &mut Diagnostics,
) -> Option<HostPolicy> {
    let h = raw.get_ref();
    let line = d.line(raw.span().start);
    let before = d.len();
    let name = name.clone();
    let pattern = match HostPattern::parse(&name) {
        Ok(p) => Some(p),
        Err(e) => {
            d.error(name_span.clone(), e);
            None
        }
    };

    let ports_explicit = h.ports.is_some();
    let ports = match &h.ports {
        None => DEFAULT_PORTS.to_vec(),
        Some(list) => {
            if list.get_ref().is_empty() {
                d.error(
                    list.span(),
                    "`ports` is empty; remove it to use the default [443, 80]",
                );
            }
            compile_ports(list.get_ref(), d)
        }
    };

    let action = h.action.as_ref().map(|a| Action::from(*a.get_ref()));
    if let Some(a) = &h.action {
        let n = h.rule.len();
        let rules = if n == 1 { "rule" } else { "rules" };
        match *a.get_ref() {
            RawAction::Ask => d.error(
                a.span(),
                "`ask` is only for rules: a whole host can be \"allow\" or \"deny\"; to ask before every call, \
                 add a rule with method = \"*\", path = \"/**\", action = \"ask\"",
            ),
            RawAction::Allow if n > 0 => d.error(
                a.span(),
                format!(
                    "rules on a passed-through host: `action = \"allow\"` lets the whole host through without \
                     TLS interception, so its {n} {rules} could never apply; remove `action` to enforce the \
                     rules, or remove the rules"
                ),
            ),
            RawAction::Deny if n > 0 => d.error(
                a.span(),
                format!(
                    "rules on a denied host: `action = \"deny\"` refuses every connection, so its {n} {rules} \
                     could never apply; remove `action` or the rules"
                ),
            ),
            _ => {}
        }
    } else if h.rule.is_empty() {
        d.error(
            raw.span(),
            format!(
                "host `{name}` allows nothing: add [[host.rule]] entries, or `action = \"allow\"` (whole host, \
                 passed through) or `action = \"deny\"`"
            ),
        );
    }

    let denied = action == Some(Action::Deny);
    let no_effect = |key: &str| format!("`{key}` has no effect on a denied host; remove it");
    let spend_cap_usd = h.spend_cap_usd.as_ref().and_then(|v| {
        if denied {
            d.error(v.span(), no_effect("spend_cap_usd"));
        }
        check_usd(v, "spend_cap_usd", d)
    });
    let daily_cap_usd = h.daily_cap_usd.as_ref().and_then(|v| {
        if denied {
            d.error(v.span(), no_effect("daily_cap_usd"));
        }
        check_usd(v, "daily_cap_usd", d)
    });
    let rate = h.rate.as_ref().and_then(|v| {
        if denied {
            d.error(v.span(), no_effect("rate"));
        }
        compile_rate(v, d)
    });
    let max_calls = h.max_calls.as_ref().and_then(|v| {
        if denied {
            d.error(v.span(), no_effect("max_calls"));
        }
        compile_count(v, "max_calls", d)
    });

    let intercept = h.intercept.as_ref().is_some_and(|v| *v.get_ref());
    if let Some(v) = &h.intercept
        && *v.get_ref()
        && action == Some(Action::Deny)
    {
        d.error(v.span(), no_effect("intercept"));
    }
    let plaintext_secrets = h
        .allow_plaintext_secrets
        .as_ref()
        .is_some_and(|v| *v.get_ref());
    let mut ambiguities = compile_ambiguities(h.allow_ambiguous.as_ref(), d);
    // What the vendor's own routing makes unambiguous (validated with the
    // profile), e.g. Twilio's `.json` suffixes.
    for name in profile.iter().flat_map(|p| &p.allow_ambiguous) {
        ambiguities.enable(name);
    }

    let host_label = pattern.as_ref().map_or(name.as_str(), |p| p.as_str());
    let mut rules: Vec<Option<(Rule, std::ops::Range<usize>)>> = Vec::new();
    for r in &h.rule {
        match compile_rule(r, rules.len() + 1, host_label, file, profile.as_deref(), d) {
            Some(expanded) => rules.extend(expanded.into_iter().map(|rule| Some((rule, r.span())))),
            None => rules.push(None),
        }
    }
    check_unreachable(&rules, d);

    if d.len() != before {
        return None;
    }
    let rules: Vec<Rule> = rules.into_iter().flatten().map(|(r, _)| r).collect();
    Some(HostPolicy {
        name,
        pattern: pattern?,
        ports,
        ports_explicit,
        action,
        rules_have_upper: rules.iter().any(|r| r.path.has_upper()),
        rules,
        spend_cap_usd,
        daily_cap_usd,
        rate,
        max_calls,
        secrets: Vec::new(),
        intercept,
        plaintext_secrets,
        ambiguities,
        profile,
        line,
    })
}

/// `allow_ambiguous = ["encoded-slash", ...]`.
fn compile_ambiguities(
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    d: &mut Diagnostics,
) -> Ambiguities {
    let mut out = Ambiguities::default();
    for name in raw.map(Spanned::get_ref).into_iter().flatten() {
        if !out.enable(name.get_ref()) {
            d.error(
                name.span(),
                format!(
                    "allow_ambiguous: unknown entry `{}`; expected one of {}",
                    name.get_ref().escape_default(),
                    AMBIGUITY_NAMES
                        .iter()
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    out
}

/// What a rule matches: its own method and path, or each endpoint of the
/// host's profile it names (with the endpoint's cost and response id).
struct Target {
    methods: MethodSet,
    path: PathGlob,
    endpoint: Option<String>,
    cost: Option<super::CostRule>,
    response_id_pointer: Option<String>,
}

/// Compiles one `[[host.rule]]`: one rule, or one per endpoint it names.
fn compile_rule(
    raw: &Spanned<RawRule>,
    number: usize,
    host: &str,
    file: &str,
    profile: Option<&Profile>,
    d: &mut Diagnostics,
) -> Option<Vec<Rule>> {
    let r = raw.get_ref();
    let before = d.len();
    let line = d.line(raw.span().start);
    let targets = rule_targets(raw, profile, d);
    let action = Action::from(*r.action.get_ref());

    let deny_effect = |key: &str| {
        format!("`{key}` has no effect on a rule that denies; remove it or change the action")
    };
    let cost = r.cost.as_ref().and_then(|c| {
        if action == Action::Deny {
            d.error(
                c.span(),
                "a denied call costs nothing: remove `cost`, or change the action to \"allow\" or \"ask\"",
            );
            None
        } else {
            compile_cost(c, d)
        }
    });
    let rate = r.rate.as_ref().and_then(|v| {
        if action == Action::Deny {
            d.error(v.span(), deny_effect("rate"));
        }
        compile_rate(v, d)
    });
    let max_calls = r.max_calls.as_ref().and_then(|v| {
        if action == Action::Deny {
            d.error(v.span(), deny_effect("max_calls"));
        }
        compile_count(v, "max_calls", d)
    });
    let targets = targets?;
    if targets.len() > 1 {
        for (key, span) in [
            ("rate", r.rate.as_ref().map(|v| v.span())),
            ("max_calls", r.max_calls.as_ref().map(|v| v.span())),
        ] {
            if let Some(span) = span {
                d.error(
                    span,
                    format!("`{key}` on a rule naming several endpoints would count each apart: write one endpoint per rule"),
                );
            }
        }
    }
    let has_cost = r.cost.is_some() || targets.iter().all(|t| t.cost.is_some());
    let amounts = compile_amounts(r, action, has_cost, d);
    let require = r.require.as_ref().and_then(|req| {
        if action == Action::Deny {
            d.error(
                req.span(),
                "`require` has no effect on a rule that denies; remove it or change the action",
            );
            None
        } else {
            compile_require(req, r.unmet.as_ref(), d)
        }
    });
    if let (Some(u), None) = (&r.unmet, &r.require) {
        d.error(
            u.span(),
            "`unmet` says what happens to a request that misses `require`, and the rule has no `require`",
        );
    }

    if d.len() != before {
        return None;
    }
    let vendor = profile.map_or("", |p| p.name.as_str());
    let rules = targets
        .into_iter()
        .map(|t| {
            let via = t
                .endpoint
                .as_ref()
                .map_or(String::new(), |e| format!(", endpoint {vendor} {e}"));
            let description = format!(
                "{} {} -> {action} (rule {number} of {host}{via}, {file}:{line})",
                t.methods, t.path
            );
            // The rule's own cost wins; the endpoint's response id is kept.
            let mut cost = if action == Action::Deny {
                None
            } else {
                cost.clone().or(t.cost)
            };
            if let Some(c) = cost.as_mut()
                && c.response_id_pointer.is_none()
            {
                c.response_id_pointer = t.response_id_pointer;
            }
            Rule {
                methods: t.methods,
                path: t.path,
                action,
                cost,
                rate,
                max_calls,
                amounts: amounts.clone(),
                require: require.clone(),
                endpoint: t.endpoint,
                line,
                description,
            }
        })
        .collect();
    Some(rules)
}

/// The method and path of a rule, or of each endpoint it names.
fn rule_targets(
    raw: &Spanned<RawRule>,
    profile: Option<&Profile>,
    d: &mut Diagnostics,
) -> Option<Vec<Target>> {
    let r = raw.get_ref();
    if let Some(ep) = &r.endpoint {
        for (key, span) in [
            ("method", r.method.as_ref().map(|m| m.span())),
            ("path", r.path.as_ref().map(|p| p.span())),
        ] {
            if let Some(span) = span {
                d.error(
                    span,
                    format!("`endpoint` names the method and path: remove `{key}`"),
                );
            }
        }
        let Some(profile) = profile else {
            d.error(
                ep.span(),
                "`endpoint` names an endpoint of the host's vendor profile, and this host has none: add vendor = \"...\" (or vendor_file) to the [[host]]",
            );
            return None;
        };
        let names = &ep.get_ref().0;
        if names.is_empty() {
            d.error(ep.span(), "`endpoint` lists no endpoint");
        }
        let mut out = Vec::new();
        for n in names {
            match profile.endpoint(n) {
                Some(e) => out.push(Target {
                    methods: e.methods.clone(),
                    path: e.path.clone(),
                    endpoint: Some(e.name.clone()),
                    cost: e.cost.clone(),
                    response_id_pointer: e.response_id_pointer.clone(),
                }),
                None => {
                    let known: Vec<&str> =
                        profile.endpoints.iter().map(|e| e.name.as_str()).collect();
                    d.error(
                        ep.span(),
                        format!(
                            "the {} profile has no endpoint `{n}`; it has: {}",
                            profile.name,
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        return (out.len() == names.len() && !out.is_empty()).then_some(out);
    }
    let (Some(method), Some(path)) = (&r.method, &r.path) else {
        let missing = if r.method.is_none() { "method" } else { "path" };
        let hint = if profile.is_some() {
            " (or `endpoint`, naming one of the vendor profile's endpoints)"
        } else {
            ""
        };
        d.error(
            raw.span(),
            format!("missing required key `{missing}`{hint}"),
        );
        return None;
    };
    let methods = match method.get_ref() {
        MethodSpec::One(m) => MethodSet::parse(std::slice::from_ref(m)).map_err(|errs| {
            for (_, e) in errs {
                d.error(method.span(), e);
            }
        }),
        MethodSpec::List(list) => {
            let names: Vec<&str> = list.iter().map(|m| m.get_ref().as_str()).collect();
            MethodSet::parse(&names).map_err(|errs| {
                for (i, e) in errs {
                    let span = list.get(i).map_or(method.span(), |m| m.span());
                    d.error(span, e);
                }
            })
        }
    };
    let path = PathGlob::parse(path.get_ref()).map_err(|e| d.error(path.span(), e));
    Some(vec![Target {
        methods: methods.ok()?,
        path: path.ok()?,
        endpoint: None,
        cost: None,
        response_id_pointer: None,
    }])
}

/// A rule is unreachable when an earlier rule matches every request it does.
fn check_unreachable(rules: &[Option<(Rule, std::ops::Range<usize>)>], d: &mut Diagnostics) {
    for (j, later) in rules.iter().enumerate() {
        let Some((later, span)) = later else { continue };
        let shadow = rules[..j].iter().enumerate().find_map(|(i, r)| {
            r.as_ref()
                .filter(|(earlier, _)| {
                    earlier.methods.covers(&later.methods) && earlier.path.covers(&later.path)
                })
                .map(|(earlier, _)| (i, earlier))
        });
        if let Some((i, earlier)) = shadow {
            d.error(
                span.clone(),
                format!(
                    "unreachable rule (shadowed by rule {} at line {}): `{}` matches every request `{}` does, \
                     and the first matching rule wins; remove this rule or move it above rule {}",
                    i + 1,
                    earlier.line,
                    earlier.label(),
                    later.label(),
                    i + 1
                ),
            );
        }
    }
}
