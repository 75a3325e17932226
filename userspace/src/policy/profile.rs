//! Vendor profiles: data files (`profiles/*.toml`, built in; or a user's own
//! file named by `vendor_file`) that say what a vendor looks like: its host
//! names, named endpoints (method + path, cost extraction, the response's
//! id pointer) that rules name with `endpoint = "payment_intents.create"`,
//! and the error body its SDK parses, used for enforcer's refusals on that
//! host. Parsed and validated here with file:line errors in the profile.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::cost::{CostRule, check_json_pointer, compile_cost};
use super::diagnostics::Diagnostics;
use super::methods::MethodSet;
use super::paths::PathGlob;
use super::schema::{MethodSpec, RawCost};

/// The profiles shipped in the binary: (vendor name, file text).
pub const BUILT_IN: &[(&str, &str)] = &[
    ("stripe", include_str!("../../../profiles/stripe.toml")),
    ("twilio", include_str!("../../../profiles/twilio.toml")),
    ("resend", include_str!("../../../profiles/resend.toml")),
];

/// A vendor profile, validated.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// Where it came from: `built in` or the file's path.
    pub origin: String,
    /// Host names the profile applies to; the first is the default name of
    /// a `[[host]]` that says `vendor = ...` without `name`.
    pub hosts: Vec<String>,
    /// What the vendor's routing reads one way only, although servers in
    /// general disagree (`allow_ambiguous` entries, added to the host's).
    pub allow_ambiguous: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    pub refusal: Option<RefusalShape>,
}

/// A named endpoint: what a rule's `endpoint = "..."` expands to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub methods: MethodSet,
    pub path: PathGlob,
    pub cost: Option<CostRule>,
    /// JSON pointer to the vendor's id in the response (the audit's
    /// `vendor_txn_id`), merged into the rule's cost.
    pub response_id_pointer: Option<String>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {} {}", self.name, self.methods, self.path)?;
        if let Some(c) = &self.cost {
            write!(f, "; cost {c}")?;
        } else if let Some(p) = &self.response_id_pointer {
            write!(f, "; id from response {p}")?;
        }
        Ok(())
    }
}

/// The body (and headers) of a refusal in the vendor's own error shape.
/// String values may hold `{message}`, `{cause}`, `{name}` and `{status}`;
/// a string that is exactly `"{status}"` becomes the status as a number.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusalShape {
    pub body: toml::Value,
    pub headers: Vec<(String, String)>,
    /// `{name}` by status (`"403"`), with `default` for the others.
    pub names: BTreeMap<String, String>,
}

impl RefusalShape {
    /// The vendor-shaped body of a refusal.
    pub fn render(&self, status: u16, cause: &str, message: &str) -> serde_json::Value {
        let name = self
            .names
            .get(&status.to_string())
            .or_else(|| self.names.get("default"))
            .map_or("enforcer_refused", String::as_str);
        render_value(&self.body, status, cause, message, name)
    }
}

fn render_value(
    v: &toml::Value,
    status: u16,
    cause: &str,
    message: &str,
    name: &str,
) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) if s == "{status}" => J::from(status),
        toml::Value::String(s) => J::String(
            s.replace("{message}", message)
                .replace("{cause}", cause)
                .replace("{name}", name)
                .replace("{status}", &status.to_string()),
        ),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => J::from(*f),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(
            a.iter()
                .map(|x| render_value(x, status, cause, message, name))
                .collect(),
        ),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, x)| (k.clone(), render_value(x, status, cause, message, name)))
                .collect(),
        ),
    }
}

impl Profile {
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    vendor: Spanned<RawVendor>,
    refusal: Option<Spanned<RawRefusal>>,
    #[serde(default)]
    endpoint: Vec<Spanned<RawEndpoint>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVendor {
    name: Spanned<String>,
    hosts: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    allow_ambiguous: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRefusal {
    body: Spanned<toml::Value>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    names: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: Spanned<String>,
    method: Spanned<MethodSpec>,
    path: Spanned<String>,
    cost: Option<Spanned<RawCost>>,
    response_id_pointer: Option<Spanned<String>>,
}

/// Loads `vendor` (a built-in profile) or `file` (a user's profile; a
/// relative path is read from `base`, the policy's directory).
pub(crate) fn load(
    vendor: Option<&str>,
    file: Option<&str>,
    base: &Path,
) -> Result<Arc<Profile>, String> {
    let (text, path, origin) = match (vendor, file) {
        (_, Some(f)) => {
            let p = if Path::new(f).is_absolute() {
                PathBuf::from(f)
            } else {
                base.join(f)
            };
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read vendor_file {}: {e}", p.display()))?;
            let origin = p.display().to_string();
            (text, p, origin)
        }
        (Some(v), None) => match BUILT_IN.iter().find(|(n, _)| *n == v) {
            Some((n, text)) => (
                (*text).to_string(),
                PathBuf::from(format!("profiles/{n}.toml")),
                String::from("built in"),
            ),
            None => {
                let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "no built-in profile for vendor `{v}` (built in: {}); write one and name it with vendor_file = \"...\"",
                    names.join(", ")
                ));
            }
        },
        (None, None) => return Err(String::from("no vendor named")),
    };
    let profile = parse(&text, &path, origin)
        .map_err(|e| format!("vendor profile {} does not load:\n{e}", path.display()))?;
    if let Some(v) = vendor
        && profile.name != v
    {
        return Err(format!(
            "vendor_file {} is the profile of `{}`, not `{v}`",
            path.display(),
            profile.name
        ));
    }
    Ok(Arc::new(profile))
}

/// Parses and validates a profile file, reporting every problem with its
/// line in that file.
pub fn parse(text: &str, path: &Path, origin: String) -> Result<Profile, super::PolicyError> {
    let raw: RawProfile =
        toml::from_str(text).map_err(|e| super::PolicyError::from_toml(&e, text, path))?;
    let mut d = Diagnostics::new(text, path);
    let v = raw.vendor.get_ref();
    let name = v.name.get_ref().clone();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        d.error(
            v.name.span(),
            "a vendor name is lowercase letters, digits and `-` (e.g. `stripe`)",
        );
    }
    let mut hosts = Vec::new();
    if v.hosts.get_ref().is_empty() {
        d.error(v.hosts.span(), "a profile names at least one host");
    }
    for h in v.hosts.get_ref() {
        match super::HostPattern::parse(h.get_ref()) {
            Ok(p) if !p.as_str().starts_with("*.") => hosts.push(p.as_str().to_string()),
            Ok(_) => d.error(h.span(), "profile hosts are exact names, not wildcards"),
            Err(e) => d.error(h.span(), e),
        }
    }
    let mut allow_ambiguous = Vec::new();
    for a in &v.allow_ambiguous {
        if super::Ambiguities::default().enable(a.get_ref()) {
            allow_ambiguous.push(a.get_ref().clone());
        } else {
            d.error(
                a.span(),
                format!(
                    "unknown allow_ambiguous entry `{}`; expected one of {}",
                    a.get_ref(),
                    super::AMBIGUITY_NAMES.join(", ")
                ),
            );
        }
    }
    let refusal = raw.refusal.as_ref().map(|r| {
        let r = r.get_ref();
        if !r.body.get_ref().is_table() {
            d.error(
                r.body.span(),
                "`body` is a table: the JSON object the vendor's SDK parses",
            );
        }
        let mut headers = Vec::new();
        for (k, v) in &r.headers {
            match (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v.get_ref()),
            ) {
                (Ok(_), Ok(_)) => headers.push((k.clone(), v.get_ref().clone())),
                _ => d.error(
                    v.span(),
                    format!("`{k}: {}` is not a valid header", v.get_ref()),
                ),
            }
        }
        RefusalShape {
            body: r.body.get_ref().clone(),
            headers,
            names: r.names.clone(),
        }
    });
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for e in &raw.endpoint {
        let e = e.get_ref();
        let before = d.len();
        let ename = e.name.get_ref().clone();
        if ename.is_empty()
            || !ename
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            d.error(
                e.name.span(),
                "an endpoint name is letters, digits, `_`, `.` and `-` (e.g. `payment_intents.create`)",
            );
        }
        if endpoints.iter().any(|x| x.name == ename) {
            d.error(
                e.name.span(),
                format!("endpoint `{ename}` is defined twice"),
            );
        }
        let methods = match e.method.get_ref() {
            MethodSpec::One(m) => MethodSet::parse(std::slice::from_ref(m)),
            MethodSpec::List(list) => {
                let names: Vec<&str> = list.iter().map(|m| m.get_ref().as_str()).collect();
                MethodSet::parse(&names)
            }
        }
        .map_err(|errs| {
            for (_, msg) in errs {
                d.error(e.method.span(), msg);
            }
        });
        let path = PathGlob::parse(e.path.get_ref()).map_err(|m| d.error(e.path.span(), m));
        let cost = e.cost.as_ref().and_then(|c| compile_cost(c, &mut d));
        let response_id_pointer = e.response_id_pointer.as_ref().map(|p| {
            if let Err(m) = check_json_pointer(p.get_ref()) {
                d.error(p.span(), m);
            }
            p.get_ref().clone()
        });
        if let (Some(_), Some(c)) = (&e.response_id_pointer, &e.cost) {
            d.error(
                c.span(),
                "write the response id inside `cost` (response_id_pointer) when the endpoint has a cost",
            );
        }
        if d.len() != before {
            continue;
        }
        if let (Ok(methods), Ok(path)) = (methods, path) {
            endpoints.push(Endpoint {
                name: ename,
                methods,
                path,
                cost,
                response_id_pointer,
            });
        }
    }
    d.finish(Profile {
        name,
        origin,
        hosts,
        allow_ambiguous,
        endpoints,
        refusal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_load() {
        for (name, _) in BUILT_IN {
            let p =
                load(Some(name), None, Path::new(".")).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.name, *name);
            assert!(!p.hosts.is_empty() && !p.endpoints.is_empty());
            assert!(p.refusal.is_some());
        }
    }

    #[test]
    fn refusals_take_each_vendors_shape() {
        let stripe = load(Some("stripe"), None, Path::new(".")).unwrap();
        let body = stripe
            .refusal
            .as_ref()
            .unwrap()
            .render(403, "requirement-unmet", "no \"x\"");
        assert_eq!(
            body,
            serde_json::json!({"error": {"type": "invalid_request_error", "code": "requirement-unmet", "message": "no \"x\""}})
        );
        let resend = load(Some("resend"), None, Path::new(".")).unwrap();
        let body = resend
            .refusal
            .as_ref()
            .unwrap()
            .render(429, "rate-limited", "slow");
        assert_eq!(
            body,
            serde_json::json!({"statusCode": 429, "name": "rate_limit_exceeded", "message": "slow"})
        );
        let twilio = load(Some("twilio"), None, Path::new(".")).unwrap();
        let body = twilio
            .refusal
            .as_ref()
            .unwrap()
            .render(403, "deny-rule", "no");
        assert_eq!(body["status"], 403);
        assert_eq!(body["code"], 20403);
    }

    #[test]
    fn a_bad_profile_names_its_own_file_and_line() {
        let e = parse(
            "[vendor]\nname = \"acme\"\nhosts = [\"*.acme.test\"]\n[[endpoint]]\nname = \"x\"\nmethod = \"get\"\npath = \"/a\"\n",
            Path::new("acme.toml"),
            String::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("acme.toml:3:"), "{e}");
        assert!(e.contains("acme.toml:6:"), "{e}");
        assert!(load(Some("nope"), None, Path::new(".")).is_err());
    }
}
