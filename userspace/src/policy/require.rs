//! `require` on a rule: request headers and fields that must be present once,
//! spelled one way, with an accepted value (a merchant scope such as
//! `header."Stripe-Account" = ["acct_1"]`, a customer `form.customer =
//! "cus_*"`), and `unmet` (deny or ask) for a request that misses them.
//! Parsed and validated here; checked against a request by
//! [`Requirements::check`], on the same reading of the request that costs
//! use (`spend::read_field`), so a value cannot be smuggled past the check
//! in a second copy or another spelling.

use std::fmt;

use http::{HeaderMap, HeaderName, Uri};
use toml::Spanned;

use super::cost::check_json_pointer;
use super::diagnostics::Diagnostics;
use super::host::Action;
use super::schema::{RawAction, RawRequire, RawValues};
use crate::spend::{FieldPlace, SpendError, read_field};

/// The constraints of one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirements {
    pub fields: Vec<Requirement>,
    /// What a request that misses one gets: [`Action::Deny`] (403 naming the
    /// field) or [`Action::Ask`] (a human decides, seeing why).
    pub unmet: Action,
}

/// One header or field and the values it may have.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub place: Place,
    pub accepted: Vec<ValuePattern>,
}

/// Where a required value is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A request header (one line, exactly this name; see [`check_header`]).
    Header(HeaderName),
    /// A field of an `application/x-www-form-urlencoded` body.
    Form(String),
    /// An RFC 6901 pointer into a JSON body.
    Json(String),
    /// A query-string parameter.
    Query(String),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(h) => write!(f, "header {}", display_header(h)),
            Self::Form(n) => write!(f, "form field {n}"),
            Self::Json(p) => write!(f, "JSON body {p}"),
            Self::Query(q) => write!(f, "query parameter {q}"),
        }
    }
}

/// `Stripe-Account` for `stripe-account`: how vendors write header names.
fn display_header(h: &HeaderName) -> String {
    h.as_str()
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// An accepted value: literal text where `*` stands for any run of
/// characters (`cus_*`); `*` alone accepts any value (the field must still
/// be there, once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValuePattern(String);

impl ValuePattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `value` matches (case-sensitive: `acct_1` is not `ACCT_1`).
    pub fn matches(&self, value: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = value.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for p in middle {
            match rest.find(p) {
                Some(i) => rest = &rest[i + p.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values: Vec<&str> = self.accepted.iter().map(ValuePattern::as_str).collect();
        match values.as_slice() {
            ["*"] => write!(f, "{} present", self.place),
            [one] => write!(f, "{} = {one}", self.place),
            _ => write!(f, "{} in [{}]", self.place, values.join(", ")),
        }
    }
}

impl fmt::Display for Requirements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields: Vec<String> = self.fields.iter().map(ToString::to_string).collect();
        write!(
            f,
            "requires {}, otherwise {}",
            fields.join(" and "),
            self.unmet
        )
    }
}

/// A required value the request does not satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// E.g. `header Stripe-Account`.
    pub what: String,
    /// Why, for the agent's developer and the audit log.
    pub why: String,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.why)
    }
}

/// A required value the request satisfies, for prompts: `header
/// Stripe-Account: acct_1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Met {
    pub place: Place,
    pub value: String,
}

impl fmt::Display for Met {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.value)
    }
}

/// Longest request text quoted back.
const MAX_QUOTED: usize = 64;

fn quoted(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_QUOTED).collect();
    if text.chars().nth(MAX_QUOTED).is_some() {
        out.push('…');
    }
    out.escape_default().to_string()
}

impl Requirements {
    /// Whether a check reads the request body.
    pub fn reads_body(&self) -> bool {
        self.fields
            .iter()
            .any(|r| matches!(r.place, Place::Form(_) | Place::Json(_) | Place::Query(_)))
    }

    /// Checks every requirement; the first unmet one is returned. `body` is
    /// the whole (bounded) body when [`Requirements::reads_body`].
    pub fn check(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<Met>, Unmet> {
        let mut met = Vec::with_capacity(self.fields.len());
        for r in &self.fields {
            let what = r.place.to_string();
            let value = match &r.place {
                Place::Header(name) => check_header(headers, name),
                Place::Form(n) => field(FieldPlace::Form(n), uri, content_type, body),
                Place::Json(p) => field(FieldPlace::Json(p), uri, content_type, body),
                Place::Query(q) => field(FieldPlace::Query(q), uri, content_type, body),
            }
            .map_err(|why| Unmet {
                what: what.clone(),
                why,
            })?;
            if !r.accepted.iter().any(|p| p.matches(&value)) {
                let accepted: Vec<&str> = r.accepted.iter().map(ValuePattern::as_str).collect();
                return Err(Unmet {
                    why: format!(
                        "{what} is \"{}\", and the rule accepts only {}",
                        quoted(&value),
                        accepted.join(", ")
                    ),
                    what,
                });
            }
            met.push(Met {
                place: r.place.clone(),
                value,
            });
        }
        Ok(met)
    }
}

/// A body or query field, read the way costs are read (once, one spelling,
/// the body kind the rule names).
fn field(
    place: FieldPlace<'_>,
    uri: &Uri,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<String, String> {
    read_field(place, uri, content_type, body).map_err(|e| match e {
        SpendError::MissingField { what } => {
            format!("{what} is missing from the request, and the rule requires it")
        }
        SpendError::Ambiguous { what, count } => {
            format!("{what} appears {count} times in the request; refusing an ambiguous value")
        }
        other => other.to_string(),
    })
}

/// The one value of header `name`: exactly one line of it, no other
/// header that servers read as the same name (CGI and WSGI turn `-` into
/// `_`, so `Stripe_Account` lands where `Stripe-Account` does), and a
/// value of visible ASCII without spaces or commas (a comma joins repeated
/// headers in proxies and frameworks).
pub fn check_header(headers: &HeaderMap, name: &HeaderName) -> Result<String, String> {
    let shown = display_header(name);
    let folded = |n: &str| n.replace('_', "-");
    if let Some(other) = headers
        .keys()
        .find(|k| *k != name && folded(k.as_str()) == name.as_str())
    {
        return Err(format!(
            "header `{}` is read as {shown} by some servers (CGI, WSGI); refusing an ambiguous value",
            quoted(other.as_str())
        ));
    }
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Err(format!(
            "header {shown} is missing from the request, and the rule requires it"
        ));
    };
    let count = 1 + values.count();
    if count > 1 {
        return Err(format!(
            "header {shown} appears {count} times in the request; refusing an ambiguous value"
        ));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(format!("header {shown} is empty"));
    }
    if let Some(b) = bytes.iter().find(|b| !b.is_ascii_graphic() || **b == b',') {
        return Err(format!(
            "header {shown} = \"{}\" contains {:?}; refusing a value servers may read differently",
            quoted(&String::from_utf8_lossy(bytes)),
            char::from(*b)
        ));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Headers a requirement may not name: the connection's own, and those
/// enforcer itself checks or rewrites.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "proxy-authenticate",
    "http2-settings",
];

/// Validates `require = { ... }` and `unmet`.
pub(crate) fn compile_require(
    raw: &Spanned<RawRequire>,
    unmet: Option<&Spanned<RawAction>>,
    d: &mut Diagnostics,
) -> Option<Requirements> {
    let before = d.len();
    let r = raw.get_ref();
    let mut fields = Vec::new();
    let tables: [(&str, &Option<_>); 4] = [
        ("header", &r.header),
        ("form", &r.form),
        ("json", &r.json),
        ("query", &r.query),
    ];
    for (kind, table) in tables {
        for (name, values) in table.iter().flatten() {
            let n = name.get_ref();
            let place = match kind {
                "header" => match HeaderName::from_bytes(n.as_bytes()) {
                    Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => {
                        d.error(
                            name.span(),
                            format!("header `{n}` cannot be required: enforcer handles it itself"),
                        );
                        continue;
                    }
                    Ok(h) if h.as_str().contains('_') => {
                        d.error(
                            name.span(),
                            format!(
                                "header `{n}`: write header names with `-`, not `_` (servers read both as the same header)"
                            ),
                        );
                        continue;
                    }
                    Ok(h) => Place::Header(h),
                    Err(_) => {
                        d.error(name.span(), format!("`{n}` is not a header name"));
                        continue;
                    }
                },
                "json" => {
                    if let Err(e) = check_json_pointer(n) {
                        d.error(name.span(), e);
                        continue;
                    }
                    Place::Json(n.clone())
                }
                _ => {
                    if n.is_empty()
                        || n.chars().any(|c| {
                            c.is_control()
                                || c.is_whitespace()
                                || matches!(c, '&' | '=' | '#' | '[' | ']' | '.')
                        })
                    {
                        d.error(
                            name.span(),
                            format!(
                                "`{n}` is not a plain field name (no spaces, `&`, `=`, `#`, `[`, `]` or `.`)"
                            ),
                        );
                        continue;
                    }
                    if kind == "form" {
                        Place::Form(n.clone())
                    } else {
                        Place::Query(n.clone())
                    }
                }
            };
            let accepted = compile_values(values, d);
            fields.push(Requirement { place, accepted });
        }
    }
    if fields.is_empty() && d.len() == before {
        d.error(
            raw.span(),
            "`require` names nothing: add e.g. header.\"Stripe-Account\" = [\"acct_1\"] or form.customer = \"cus_*\"",
        );
    }
    let unmet = match unmet.map(|u| (*u.get_ref(), u.span())) {
        None | Some((RawAction::Deny, _)) => Action::Deny,
        Some((RawAction::Ask, _)) => Action::Ask,
        Some((RawAction::Allow, span)) => {
            d.error(
                span,
                "`unmet` is \"deny\" (the default) or \"ask\": a request that misses a requirement is never simply allowed",
            );
            Action::Deny
        }
    };
    (d.len() == before).then_some(Requirements { fields, unmet })
}

fn compile_values(values: &Spanned<RawValues>, d: &mut Diagnostics) -> Vec<ValuePattern> {
    let list = &values.get_ref().0;
    if list.is_empty() {
        d.error(
            values.span(),
            "no accepted value: list at least one (or \"*\" for any value)",
        );
    }
    let mut out: Vec<ValuePattern> = Vec::new();
    for v in list {
        if v.is_empty() {
            d.error(values.span(), "an accepted value is empty");
        } else if let Some(c) = v.chars().find(|c| !c.is_ascii_graphic() || *c == ',') {
            d.error(
                values.span(),
                format!("accepted value `{}` contains {c:?}", v.escape_default()),
            );
        } else if out.iter().any(|p| p.0 == *v) {
            d.error(values.span(), format!("`{v}` is listed twice"));
        } else {
            out.push(ValuePattern(v.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ValuePattern {
        ValuePattern(s.into())
    }

    #[test]
    fn value_patterns() {
        assert!(p("acct_1").matches("acct_1"));
        assert!(!p("acct_1").matches("acct_12"));
        assert!(!p("acct_1").matches("ACCT_1"));
        assert!(p("cus_*").matches("cus_"));
        assert!(p("cus_*").matches("cus_abc"));
        assert!(!p("cus_*").matches("xcus_abc"));
        assert!(p("*").matches("anything"));
        assert!(p("a*b*c").matches("abc"));
        assert!(p("a*b*c").matches("aXbYc"));
        assert!(!p("a*b*c").matches("aXbY"));
        assert!(!p("ab*ba").matches("aba"));
    }

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_header_is_read_once_in_one_spelling() {
        let name = HeaderName::from_static("stripe-account");
        assert_eq!(
            check_header(&headers(&[("Stripe-Account", "acct_1")]), &name).unwrap(),
            "acct_1"
        );
        for bad in [
            vec![],
            vec![("stripe-account", "acct_1"), ("Stripe-Account", "acct_2")],
            vec![("stripe-account", "acct_1"), ("stripe_account", "acct_2")],
            vec![("stripe_account", "acct_1")],
            vec![("stripe-account", "acct_1 ")],
            vec![("stripe-account", "acct_1,acct_2")],
            vec![("stripe-account", "acct_1\tx")],
            vec![("stripe-account", "")],
        ] {
            assert!(check_header(&headers(&bad), &name).is_err(), "{bad:?}");
        }
    }

    fn scoped() -> Requirements {
        let p = crate::policy::Policy::parse(
            r#"
[[host]]
name = "api.stripe.com"
  [[host.rule]]
  method = "POST"
  path = "/v1/payment_intents"
  action = "allow"
  require = { header."Stripe-Account" = ["acct_1", "acct_2"], form.customer = "cus_*" }
"#,
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        p.hosts[0].rules[0].require.clone().unwrap()
    }

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    /// Headers, target, content type, body, and what the refusal says.
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a str,
        Option<&'a str>,
        &'a str,
        &'a str,
    );

    fn check(
        req: &Requirements,
        hdrs: &[(&str, &str)],
        target: &str,
        ct: Option<&str>,
        body: &str,
    ) -> Result<Vec<Met>, Unmet> {
        let uri: Uri = target.parse().unwrap();
        req.check(&headers(hdrs), &uri, ct, body.as_bytes())
    }

    #[test]
    fn a_scoped_request_passes_and_says_what_it_is_scoped_to() {
        let met = check(
            &scoped(),
            &[("Stripe-Account", "acct_2")],
            "/v1/payment_intents",
            FORM,
            "amount=100&customer=cus_9",
        )
        .unwrap();
        let shown: Vec<String> = met.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "header Stripe-Account: acct_2",
                "form field customer: cus_9"
            ]
        );
    }

    #[test]
    fn a_second_account_or_customer_cannot_be_smuggled() {
        let req = scoped();
        let ok_header = [("Stripe-Account", "acct_1")];
        let cases: &[Case] = &[
            // The header: missing, another account, a second line, another spelling.
            (
                &[],
                "/v1/payment_intents",
                FORM,
                "customer=cus_1",
                "missing",
            ),
            (
                &[("Stripe-Account", "acct_3")],
                "/v1/payment_intents",
                FORM,
                "customer=cus_1",
                "accepts only",
            ),
            (
                &[("Stripe-Account", "acct_1"), ("stripe-account", "acct_3")],
                "/v1/payment_intents",
                FORM,
                "customer=cus_1",
                "2 times",
            ),
            (
                &[("Stripe-Account", "acct_1"), ("Stripe_Account", "acct_3")],
                "/v1/payment_intents",
                FORM,
                "customer=cus_1",
                "CGI",
            ),
            (
                &[("Stripe-Account", "acct_1,acct_3")],
                "/v1/payment_intents",
                FORM,
                "customer=cus_1",
                "contains",
            ),
            (
                &[("Stripe-Account", "ACCT_1")],
                "/v1/payment_intents",
                FORM,
                "customer=cus_1",
                "accepts only",
            ),
            // The form field: missing, repeated, in the query too, aliased, wrong body kind.
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "amount=1",
                "missing",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "customer=cus_1&customer=acct_x",
                "2 times",
            ),
            (
                &ok_header,
                "/v1/payment_intents?customer=x_2",
                FORM,
                "customer=cus_1",
                "2 times",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "customer=cus_1&customer[]=x_2",
                "also spelled",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "customer=cus_1&customer[0]=x_2",
                "also spelled",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "customer=cus_1&+customer=x_2",
                "also spelled",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "customer=cus_1&customer%00x=x_2",
                "also spelled",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "customer=cus_1&customer]=x_2",
                "also spelled",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "customer=cus_1&[customer]=x_2",
                "also spelled",
            ),
            (
                &ok_header,
                "/v1/payment_intents?customer%5B=x_2",
                FORM,
                "customer=cus_1",
                "also spelled",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "customer=cus_1;customer=x_2",
                "`;`",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                Some("application/json"),
                r#"{"customer":"cus_1"}"#,
                "Content-Type",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                Some("multipart/form-data; boundary=x"),
                "customer=cus_1",
                "Content-Type",
            ),
            (
                &ok_header,
                "/v1/payment_intents",
                FORM,
                "customer=x_cus_1",
                "accepts only",
            ),
        ];
        for (hdrs, target, ct, body, expect) in cases {
            let e = check(&req, hdrs, target, *ct, body)
                .expect_err(&format!("{hdrs:?} {target} {body}"));
            assert!(
                e.why.contains(expect),
                "{hdrs:?} {target} {body}: {}",
                e.why
            );
        }
    }

    #[test]
    fn json_and_query_requirements_refuse_the_other_copy() {
        let p = crate::policy::Policy::parse(
            r#"
[[host]]
name = "api.resend.com"
  [[host.rule]]
  method = "POST"
  path = "/emails"
  action = "allow"
  require = { json."/from" = "*@example.com", query.team = "t1" }
"#,
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        let req = p.hosts[0].rules[0].require.clone().unwrap();
        let json = Some("application/json");
        assert!(
            check(
                &req,
                &[],
                "/emails?team=t1",
                json,
                r#"{"from":"a@example.com"}"#
            )
            .is_ok()
        );
        for (target, body, expect) in [
            (
                "/emails?team=t1",
                r#"{"from":"a@example.com","from":"b@evil.com"}"#,
                "2 times",
            ),
            (
                "/emails?team=t1&from=b@evil.com",
                r#"{"from":"a@example.com"}"#,
                "query parameter",
            ),
            (
                "/emails?team=t1",
                r#"{"from":["a@example.com"]}"#,
                "an array",
            ),
            (
                "/emails?team=t1",
                r#"{"from":"a@example.com.evil.com"}"#,
                "accepts only",
            ),
            (
                "/emails",
                r#"{"from":"a@example.com","team":"t1"}"#,
                "form body",
            ),
            (
                "/emails?team=t1;team=t2",
                r#"{"from":"a@example.com"}"#,
                "`;`",
            ),
            (
                "/emails?team=t1",
                r#"{"from":"a@example.com","From":"b@evil.com"}"#,
                "2 times",
            ),
            (
                "/emails?team=t1&[from]=b@evil.com",
                r#"{"from":"a@example.com"}"#,
                "query parameter",
            ),
            (
                "/emails?team=t1&team=t2",
                r#"{"from":"a@example.com"}"#,
                "2 times",
            ),
            (
                "/emails?team=t1",
                r#"{"from":"a@example.com","team":"t2"}"#,
                "2 times",
            ),
        ] {
            let e = check(&req, &[], target, json, body).expect_err(body);
            assert!(e.why.contains(expect), "{target} {body}: {}", e.why);
        }
    }
}
