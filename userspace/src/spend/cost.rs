//! What a request costs, read from the request itself before it is
//! forwarded: a form field, a JSON pointer, a query parameter or a fixed
//! price, in a fixed or request-named currency, converted to exact USD
//! micro-dollars (rounded up).
//!
//! Anything that would make the amount uncertain refuses the request with a
//! message naming the field: a missing or malformed field, a field present
//! more than once (vendors differ on which copy counts), a body that is not
//! of the expected kind, or a currency the policy has no rate for.

use http::Uri;
use url::form_urlencoded;

use super::error::SpendError;
use super::json::{self, Json, PointerError};
use super::money::{Decimal, Round, format_usd, to_micros, usd_to_micros};
use crate::policy::{CostCurrency, CostRule, CostSource};
use crate::policy::{malformed_brackets, normalized_field, semicolons_as_ampersands};

/// The cost of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cost {
    /// Exact USD in micro-dollars, rounded up.
    pub usd_micros: i64,
    /// Lowercase ISO 4217 code of the request's amount (`usd` for fixed).
    pub currency: String,
    /// The amount as the request wrote it (`1999`), or the fixed price
    /// (`0.02`), for prompts and the audit log.
    pub amount_text: String,
}

impl Cost {
    /// `19.99`: the USD amount as a decimal string.
    pub fn usd(&self) -> String {
        format_usd(self.usd_micros)
    }
}

/// Longest request text quoted back in a message.
const MAX_QUOTED: usize = 64;

/// Reads the cost of a request under `rule`. `content_type` is the
/// request's `Content-Type` header; `body` its whole (bounded) body, empty
/// when the source is `query` or `fixed_usd` and the body was not read.
pub fn extract(
    rule: &CostRule,
    uri: &Uri,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Cost, SpendError> {
    let req = Request {
        uri,
        content_type,
        body,
    };
    let (amount, amount_what, currency) = match &rule.source {
        CostSource::FixedUsd(usd) => {
            let fail = |e| SpendError::InvalidRule(format!("fixed_usd = {usd}: {e}"));
            let micros = usd_to_micros(*usd, Round::Up).map_err(fail)?;
            let text = Decimal::from_f64(*usd).map_err(fail)?.to_string();
            return Ok(Cost {
                usd_micros: micros,
                currency: "usd".into(),
                amount_text: text,
            });
        }
        CostSource::FormField(name) => {
            let form = req.form(name)?;
            let amount = req.form_value(&form, name)?;
            let currency = match &rule.currency {
                CostCurrency::Fixed(c) => fixed_currency(c),
                CostCurrency::Field(f) => {
                    let text = req.form_value(&form, f)?;
                    Currency::parse(form_what(f), &text)?
                }
            };
            (amount, form_what(name), currency)
        }
        CostSource::Query(name) => {
            let amount = req.query_value(name)?;
            let currency = match &rule.currency {
                CostCurrency::Fixed(c) => fixed_currency(c),
                CostCurrency::Field(f) => {
                    let text = req.query_value(f)?;
                    Currency::parse(query_what(f), &text)?
                }
            };
            (amount, query_what(name), currency)
        }
        CostSource::JsonPointer(ptr) => {
            let doc = req.json(ptr)?;
            req.json_key_not_in_query(ptr)?;
            let amount = json_value(&doc, ptr, true)?;
            let currency = match &rule.currency {
                CostCurrency::Fixed(c) => fixed_currency(c),
                CostCurrency::Field(f) => {
                    req.json_key_not_in_query(f)?;
                    let text = json_value(&doc, f, false)?;
                    Currency::parse(json_what(f), &text)?
                }
            };
            (amount, json_what(ptr), currency)
        }
    };
    let usd_micros = convert(rule, &amount, &amount_what, &currency)?;
    Ok(Cost {
        usd_micros,
        currency: currency.code,
        amount_text: amount,
    })
}

/// Where a field a rule requires is read (see `policy::Requirements`).
#[derive(Debug, Clone, Copy)]
pub enum FieldPlace<'a> {
    /// A field of an `application/x-www-form-urlencoded` body.
    Form(&'a str),
    /// An RFC 6901 pointer into a JSON body.
    Json(&'a str),
    /// A query-string parameter.
    Query(&'a str),
}

/// The one value of a field, read exactly as a cost's amount is: once, in
/// one spelling, from the body kind named (a form field also present in the
/// query string, a query parameter also in the body, a top-level JSON key
/// also in the query string, an aliased spelling such as `customer[]` or
/// `+customer`, or a duplicate JSON key are all refused).
pub fn read_field(
    place: FieldPlace<'_>,
    uri: &Uri,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<String, SpendError> {
    let req = Request {
        uri,
        content_type,
        body,
    };
    match place {
        FieldPlace::Form(name) => {
            let form = req.form(name)?;
            req.form_value(&form, name)
        }
        FieldPlace::Query(name) => req.query_value(name),
        FieldPlace::Json(ptr) => {
            let doc = req.json(ptr)?;
            req.json_key_not_in_query(ptr)?;
            match json_value(&doc, ptr, true) {
                Err(SpendError::InvalidAmount { what, .. }) => Err(SpendError::NotText {
                    what,
                    kind: json::pointer(&doc, ptr).map_or("value", |v| v.kind()),
                }),
                other => other,
            }
        }
    }
}

/// A currency and where it came from (for messages).
pub(crate) struct Currency {
    pub(crate) code: String,
    pub(crate) what: String,
}

impl Currency {
    /// Three ASCII letters, any case, surrounding whitespace ignored.
    fn parse(what: String, text: &str) -> Result<Self, SpendError> {
        let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if t.len() == 3 && t.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(Self {
                code: t.to_ascii_lowercase(),
                what,
            })
        } else {
            Err(SpendError::InvalidCurrency {
                what,
                text: quoted(text),
            })
        }
    }
}

pub(crate) fn fixed_currency(code: &str) -> Currency {
    Currency {
        code: code.to_ascii_lowercase(),
        what: "the cost rule's currency".into(),
    }
}

/// `amount_text / divide_by` in `currency`, in USD micro-dollars rounded
/// up. A currency other than `usd` needs a rate in the rule.
pub(crate) fn convert(
    rule: &CostRule,
    amount_text: &str,
    amount_what: &str,
    currency: &Currency,
) -> Result<i64, SpendError> {
    let bad_amount = |why| SpendError::InvalidAmount {
        what: amount_what.to_owned(),
        text: quoted(amount_text),
        why,
    };
    let amount = Decimal::parse(amount_text).map_err(bad_amount)?;
    let divide_by = Decimal::from_f64(rule.divide_by)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            SpendError::InvalidRule(format!(
                "divide_by = {} (it must be greater than 0)",
                rule.divide_by
            ))
        })?;
    let rate = if currency.code == "usd" {
        Decimal::ONE
    } else {
        let Some(rate) = rule.rates.get(&currency.code) else {
            return Err(SpendError::NoRate {
                what: currency.what.clone(),
                currency: currency.code.clone(),
            });
        };
        Decimal::from_f64(*rate)
            .ok()
            .filter(|r| !r.is_zero())
            .ok_or_else(|| {
                SpendError::InvalidRule(format!(
                    "rate for {} = {rate} (it must be greater than 0)",
                    currency.code
                ))
            })?
    };
    to_micros(amount, divide_by, rate, Round::Up).map_err(bad_amount)
}

struct Request<'a> {
    uri: &'a Uri,
    content_type: Option<&'a str>,
    body: &'a [u8],
}

/// The media type of a Content-Type header, lowercase, without parameters.
fn media_type(content_type: Option<&str>) -> Option<String> {
    let ct = content_type?;
    let mt = ct.split(';').next().unwrap_or_default().trim();
    Some(mt.to_ascii_lowercase())
}

fn is_form(mt: &str) -> bool {
    mt == "application/x-www-form-urlencoded"
}

fn is_json(mt: &str) -> bool {
    mt == "application/json" || (mt.starts_with("application/") && mt.ends_with("+json"))
}

fn form_what(name: &str) -> String {
    format!("form field `{}`", quoted(name))
}

fn query_what(name: &str) -> String {
    format!("query parameter `{}`", quoted(name))
}

fn json_what(ptr: &str) -> String {
    format!("JSON body field `{}`", quoted(ptr))
}

/// What the request's Content-Type says, for messages.
fn shown_content_type(content_type: Option<&str>) -> String {
    match content_type {
        None => "missing".into(),
        Some(ct) => format!("`{}`", quoted(ct)),
    }
}

/// At most [`MAX_QUOTED`] characters of request text, for messages (which
/// show request values with `{:?}`, escaping control characters).
fn quoted(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_QUOTED).collect();
    if text.chars().nth(MAX_QUOTED).is_some() {
        out.push('…');
    }
    out
}

/// The fields of a form body or query string split on `;` as well as `&`
/// (Rack 2, older Python and Go read `;` as a separator too).
fn semicolon_pairs(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(&semicolons_as_ampersands(raw))
        .into_owned()
        .collect()
}

/// Whether some framework may read `key` as the field `target` (a
/// [`normalized_field`]): the same normalized name, or brackets that
/// frameworks read in different ways.
fn may_read_as(key: &str, target: &str) -> bool {
    normalized_field(key) == target || malformed_brackets(key)
}

/// How a field is also sent under a name frameworks read as it.
enum Alias {
    /// Another spelling: `+amount`, `amount[]`, `[amount]`, `unit[amount`.
    Spelled(String),
    /// A copy behind a `;` (`amount=1;amount=99999`).
    Semicolon(String),
}

/// The first key of `pairs` (parsed from `raw`) that a framework would read
/// as `name` although it is not spelled `name`: PHP drops leading spaces,
/// cuts at NUL, reads ` ` and `.` as `_` and an unmatched `[` as `_`; PHP,
/// Rails and others read `name[]`/`name[x]` as `name`, Rack 2 `name]` and
/// `[name]`; and splitting on `;` too gives another value.
fn aliased(raw: &[u8], pairs: &[(String, String)], name: &str) -> Result<(), Alias> {
    let target = normalized_field(name);
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| k != name && may_read_as(k, &target))
    {
        return Err(Alias::Spelled(k.clone()));
    }
    if raw.contains(&b';')
        && let Some((k, _)) = semicolon_pairs(raw)
            .into_iter()
            .find(|p| (p.0 == name || may_read_as(&p.0, &target)) && !pairs.contains(p))
    {
        return Err(Alias::Semicolon(k));
    }
    Ok(())
}

fn alias_error(what: String, alias: Alias) -> SpendError {
    let what = match alias {
        Alias::Spelled(key) => format!(
            "{what} (also spelled `{}`, which some frameworks read as the same name)",
            quoted(&key).escape_default()
        ),
        Alias::Semicolon(key) => format!(
            "{what} (also sent as `{}` after a `;`, which some frameworks read as a separator)",
            quoted(&key).escape_default()
        ),
    };
    SpendError::Ambiguous { what, count: 2 }
}

/// A Content-Type that is one media type (`type/subtype`, parameters
/// allowed, no list), lowercase, without parameters.
fn single_media_type(content_type: Option<&str>) -> Option<String> {
    let ct = content_type?;
    if ct.contains(',') {
        return None;
    }
    let mt = media_type(Some(ct))?;
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match mt.split_once('/') {
        Some((a, b)) if token(a) && token(b) => Some(mt),
        _ => None,
    }
}

impl Request<'_> {
    /// How often a body of any common kind carries `name`: form fields
    /// (any spelling a framework reads as it), top-level JSON keys, and
    /// multipart parts (Rails, Laravel and others merge body fields with
    /// the query, body first).
    fn body_mentions(&self, name: &str) -> usize {
        let Some(mt) = media_type(self.content_type) else {
            return 0;
        };
        if is_form(&mt) {
            let target = normalized_field(name);
            return semicolon_pairs(self.body)
                .iter()
                .filter(|(k, _)| may_read_as(k, &target))
                .count();
        }
        if is_json(&mt) {
            return match super::json::parse(self.body) {
                Ok(super::json::Json::Object(members)) => members
                    .iter()
                    .filter(|(k, _)| json::same_key(k, name))
                    .count(),
                Ok(_) => 0,
                // Unparsable: whatever the vendor makes of it may hold it.
                Err(_) => usize::from(
                    memchr::memmem::find(
                        &self.body.to_ascii_lowercase(),
                        name.to_ascii_lowercase().as_bytes(),
                    )
                    .is_some(),
                ),
            };
        }
        if mt.starts_with("multipart/") {
            // A part named `name`, quoted or not, in any case of the header.
            let lower = self.body.to_ascii_lowercase();
            let name = name.to_ascii_lowercase();
            return [format!("name=\"{name}\""), format!("name={name}")]
                .iter()
                .map(|p| memchr::memmem::find_iter(&lower, p.as_bytes()).count())
                .sum();
        }
        0
    }

    fn raw_query(&self) -> &[u8] {
        self.uri.query().unwrap_or_default().as_bytes()
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.raw_query())
            .into_owned()
            .collect()
    }

    /// Frameworks that merge the query string over a JSON body (Rails,
    /// Laravel) read a top-level key from either: the key `ptr` starts
    /// with may not be in the query, in any spelling they read as it.
    fn json_key_not_in_query(&self, ptr: &str) -> Result<(), SpendError> {
        let top = ptr
            .split('/')
            .nth(1)
            .unwrap_or_default()
            .replace("~1", "/")
            .replace("~0", "~");
        let target = normalized_field(&top);
        match semicolon_pairs(self.raw_query())
            .into_iter()
            .find(|(k, _)| may_read_as(k, &target))
        {
            Some((k, _)) => Err(SpendError::Ambiguous {
                what: format!(
                    "{} (also sent as query parameter `{}`)",
                    json_what(ptr),
                    quoted(&k).escape_default()
                ),
                count: 2,
            }),
            None => Ok(()),
        }
    }

    /// The body's form pairs; the body must be a form.
    fn form(&self, field: &str) -> Result<Vec<(String, String)>, SpendError> {
        let form = single_media_type(self.content_type).is_some_and(|mt| is_form(&mt));
        if !form {
            return Err(SpendError::WrongContentType {
                what: form_what(field),
                expected: "application/x-www-form-urlencoded",
                got: shown_content_type(self.content_type),
            });
        }
        Ok(form_urlencoded::parse(self.body).into_owned().collect())
    }

    /// The one value of a form field. The same name in the query string
    /// makes it ambiguous (some frameworks merge the two, either way round),
    /// and so does any other spelling a framework reads as the same name.
    fn form_value(&self, form: &[(String, String)], name: &str) -> Result<String, SpendError> {
        aliased(self.body, form, name).map_err(|a| alias_error(form_what(name), a))?;
        let mut values: Vec<&String> = form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect();
        let query = self.query_pairs();
        aliased(self.raw_query(), &query, name).map_err(|a| alias_error(form_what(name), a))?;
        let in_query = query.iter().filter(|(k, _)| k == name).count();
        let count = values.len() + in_query;
        match (values.pop(), count) {
            (Some(v), 1) => Ok(v.clone()),
            (_, 0) => Err(SpendError::MissingField {
                what: form_what(name),
            }),
            (None, _) => Err(SpendError::MissingField {
                what: format!(
                    "{} (it is in the query string, not the form body)",
                    form_what(name)
                ),
            }),
            (Some(_), _) => Err(SpendError::Ambiguous {
                what: form_what(name),
                count,
            }),
        }
    }

    /// The one value of a query parameter. The same name in a form body
    /// makes it ambiguous.
    fn query_value(&self, name: &str) -> Result<String, SpendError> {
        if !self.body.is_empty() && single_media_type(self.content_type).is_none() {
            return Err(SpendError::UntypedBody {
                what: query_what(name),
                got: shown_content_type(self.content_type),
            });
        }
        let query = self.query_pairs();
        aliased(self.raw_query(), &query, name).map_err(|a| alias_error(query_what(name), a))?;
        let mut values: Vec<&String> = query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect();
        let in_body = self.body_mentions(name);
        let count = values.len() + in_body;
        match (values.pop(), count) {
            (Some(v), 1) => Ok(v.clone()),
            (_, 0) => Err(SpendError::MissingField {
                what: query_what(name),
            }),
            (None, _) => Err(SpendError::MissingField {
                what: format!(
                    "{} (it is in the form body, not the query string)",
                    query_what(name)
                ),
            }),
            (Some(_), _) => Err(SpendError::Ambiguous {
                what: query_what(name),
                count,
            }),
        }
    }

    /// The body as JSON; it must be declared and valid JSON.
    fn json(&self, ptr: &str) -> Result<Json, SpendError> {
        let ok = single_media_type(self.content_type).is_some_and(|mt| is_json(&mt));
        if !ok {
            return Err(SpendError::WrongContentType {
                what: json_what(ptr),
                expected: "application/json",
                got: shown_content_type(self.content_type),
            });
        }
        json::parse(self.body).map_err(|e| SpendError::InvalidBody {
            what: json_what(ptr),
            detail: e.to_string(),
        })
    }
}

/// The text of the value at `ptr`: a number's text, or a string. Amounts
/// (`amount = true`) may be numbers or numeric strings; currencies must be
/// strings.
fn json_value(doc: &Json, ptr: &str, amount: bool) -> Result<String, SpendError> {
    let what = json_what(ptr);
    let v = match json::pointer(doc, ptr) {
        Ok(v) => v,
        Err(PointerError::Missing) => return Err(SpendError::MissingField { what }),
        Err(PointerError::Duplicate(key, count)) => {
            return Err(SpendError::Ambiguous {
                what: format!("{what} (key `{}`)", quoted(&key)),
                count,
            });
        }
        Err(PointerError::Invalid) => {
            return Err(SpendError::InvalidRule(format!(
                "`{}` is not a JSON pointer",
                quoted(ptr)
            )));
        }
    };
    match v {
        Json::String(s) => Ok(s.clone()),
        Json::Number(n) if amount => Ok(n.clone()),
        other => {
            let text = match other {
                Json::Null => "null".to_owned(),
                Json::Bool(b) => b.to_string(),
                Json::Number(n) => n.clone(),
                Json::Array(_) => "[...]".to_owned(),
                Json::Object(_) => "{...}".to_owned(),
                Json::String(s) => s.clone(),
            };
            if amount {
                Err(SpendError::InvalidAmount {
                    what,
                    text,
                    why: super::money::AmountError::NotANumber,
                })
            } else {
                Err(SpendError::InvalidCurrency {
                    what: format!("{what} ({})", other.kind()),
                    text: quoted(&text),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::spend::money::AmountError;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const JSON: Option<&str> = Some("application/json; charset=utf-8");

    fn rule(source: CostSource, divide_by: f64, currency: CostCurrency) -> CostRule {
        CostRule {
            source,
            divide_by,
            currency,
            rates: BTreeMap::from([("eur".to_string(), 1.08), ("gbp".to_string(), 1.27)]),
            response_cost_pointer: None,
            response_id_pointer: None,
        }
    }

    fn stripe() -> CostRule {
        rule(
            CostSource::FormField("amount".into()),
            100.0,
            CostCurrency::Field("currency".into()),
        )
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    fn post(rule: &CostRule, ct: Option<&str>, body: &str) -> Result<Cost, SpendError> {
        extract(rule, &uri("/v1/payment_intents"), ct, body.as_bytes())
    }

    fn micros(r: Result<Cost, SpendError>) -> i64 {
        match r {
            Ok(c) => c.usd_micros,
            Err(e) => panic!("expected a cost, got: {e}"),
        }
    }

    fn err(r: Result<Cost, SpendError>) -> String {
        match r {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn stripe_form() {
        let c = post(&stripe(), FORM, "amount=1999&currency=usd&description=x").unwrap();
        assert_eq!(
            c,
            Cost {
                usd_micros: 19_990_000,
                currency: "usd".into(),
                amount_text: "1999".into(),
            }
        );
        assert_eq!(c.usd(), "19.99");
        // Currency codes are lowercased; rates convert exactly.
        let c = post(&stripe(), FORM, "currency=EUR&amount=1999").unwrap();
        assert_eq!((c.usd_micros, c.currency.as_str()), (21_589_200, "eur"));
        assert_eq!(
            micros(post(&stripe(), FORM, "amount=100&currency=gbp")),
            1_270_000
        );
        // Percent-encoding and `+` are decoded as the vendor would.
        assert_eq!(
            micros(post(&stripe(), FORM, "am%6Funt=500&currency=%55SD")),
            5_000_000
        );
        assert_eq!(
            micros(post(&stripe(), FORM, "amount=+500&currency=usd")),
            5_000_000
        );
        // Charset parameter and case in the media type are fine.
        let ct = Some("Application/X-WWW-Form-Urlencoded; charset=utf-8");
        assert_eq!(micros(post(&stripe(), ct, "amount=1&currency=usd")), 10_000);
    }

    #[test]
    fn non_usd_without_a_rate_is_refused() {
        let e = err(post(&stripe(), FORM, "amount=1000&currency=jpy"));
        assert!(e.contains("`jpy`"), "{e}");
        assert!(e.contains("form field `currency`"), "{e}");
        assert!(e.contains("rates = { jpy = <USD per jpy> }"), "{e}");
        let fixed = rule(
            CostSource::FormField("amount".into()),
            1.0,
            CostCurrency::Fixed("chf".into()),
        );
        let e = err(post(&fixed, FORM, "amount=1"));
        assert!(e.contains("`chf` (the cost rule's currency)"), "{e}");
        // A fixed currency with a rate converts.
        let fixed = rule(
            CostSource::FormField("amount".into()),
            1.0,
            CostCurrency::Fixed("eur".into()),
        );
        let c = post(&fixed, FORM, "amount=10").unwrap();
        assert_eq!((c.usd_micros, c.currency.as_str()), (10_800_000, "eur"));
    }

    #[test]
    fn form_errors_name_the_field() {
        let e = err(post(&stripe(), FORM, "currency=usd"));
        assert_eq!(
            e,
            "form field `amount` is missing from the request; it is needed to check the spend cap"
        );
        let e = err(post(&stripe(), FORM, "amount=1999"));
        assert!(e.starts_with("form field `currency` is missing"), "{e}");
        let e = err(post(&stripe(), FORM, "amount=19x&currency=usd"));
        assert_eq!(
            e,
            "form field `amount` = \"19x\" is not an acceptable amount: it is not a decimal number"
        );
        let e = err(post(&stripe(), FORM, "amount=-5&currency=usd"));
        assert!(e.contains("it is negative"), "{e}");
        let e = err(post(&stripe(), FORM, "amount=NaN&currency=usd"));
        assert!(e.contains("not a decimal number"), "{e}");
        let e = err(post(&stripe(), FORM, "amount=1e20&currency=usd"));
        assert!(e.contains("out of range"), "{e}");
        let e = err(post(&stripe(), FORM, "amount=&currency=usd"));
        assert!(e.contains("it is empty"), "{e}");
        let e = err(post(&stripe(), FORM, "amount=1&currency=dollars"));
        assert_eq!(
            e,
            "form field `currency` = \"dollars\" is not a currency code (three letters, e.g. usd)"
        );
        let e = err(post(&stripe(), Some("application/json"), "{\"amount\": 1}"));
        assert_eq!(
            e,
            "form field `amount` is read from a application/x-www-form-urlencoded body, but the request's Content-Type is `application/json`"
        );
        let e = err(post(&stripe(), None, "amount=1&currency=usd"));
        assert!(e.ends_with("Content-Type is missing"), "{e}");
        // A list of types, also after a parameter (Rack and PHP cut at the
        // first `;` or `,`, other servers read the list differently).
        for ct in [
            "application/x-www-form-urlencoded, application/json",
            "application/x-www-form-urlencoded; charset=utf-8, application/json",
        ] {
            let e = err(post(&stripe(), Some(ct), "amount=1&currency=usd"));
            assert!(e.contains("Content-Type"), "{ct}: {e}");
        }
        let e = err(post(&stripe(), Some("multipart/form-data; boundary=x"), ""));
        assert!(e.contains("`multipart/form-data; boundary=x`"), "{e}");
        // Long and control-laden text is cut and escaped in messages.
        let long = format!("amount={}&currency=usd", "9".repeat(500));
        let e = err(post(&stripe(), FORM, &long));
        assert!(e.len() < 300 && e.contains('…'), "{e}");
        let e = err(post(&stripe(), FORM, "amount=1%0A2&currency=usd"));
        assert!(e.contains("1\\n2"), "{e}");
    }

    #[test]
    fn duplicates_are_ambiguous() {
        let e = err(post(&stripe(), FORM, "amount=1&amount=100000&currency=usd"));
        assert_eq!(
            e,
            "form field `amount` appears 2 times in the request; refusing an ambiguous amount"
        );
        // The same name in the query string and the body.
        let r = extract(
            &stripe(),
            &uri("/v1/payment_intents?amount=100000"),
            FORM,
            b"amount=1&currency=usd",
        );
        assert!(err(r).contains("appears 2 times"));
        let r = extract(
            &stripe(),
            &uri("/v1/payment_intents?amount=100000"),
            FORM,
            b"currency=usd",
        );
        assert_eq!(
            err(r),
            "form field `amount` (it is in the query string, not the form body) is missing from the request; it is needed to check the spend cap"
        );
        let e = err(post(&stripe(), FORM, "amount=1&currency=usd&currency=eur"));
        assert!(
            e.starts_with("form field `currency` appears 2 times"),
            "{e}"
        );
    }

    /// PHP reads ` amount`, `amount\0junk`, `amount[]` (and `unit.amount`
    /// for `unit_amount`) as the same field: a second spelling is ambiguous.
    #[test]
    fn other_spellings_of_the_field_are_ambiguous() {
        for body in [
            "amount=1&currency=usd&+amount=99999",
            "amount=1&currency=usd&%20amount=99999",
            "amount=2&currency=usd&amount%00junk=99999",
            "amount=1&currency=usd&amount[]=99",
            "amount[x]=99&currency=usd",
        ] {
            let e = err(post(&stripe(), FORM, body));
            assert!(e.contains("also spelled"), "{body}: {e}");
        }
    }

    /// A cost read from the query is ambiguous when the body carries the
    /// same field (Rails and Laravel merge the body over the query).
    #[test]
    fn a_query_cost_is_checked_against_the_body() {
        let rule = |r: CostRule| CostRule {
            source: CostSource::Query("amount".into()),
            ..r
        };
        let q = rule(stripe());
        let u = uri("/v1/qcharges?amount=3&currency=usd");
        for (ct, body) in [
            (Some("application/json"), &b"{\"amount\": 99999}"[..]),
            (
                Some("multipart/form-data; boundary=x"),
                b"--x\r\nContent-Disposition: form-data; NAME=\"amount\"\r\n\r\n99999\r\n--x--",
            ),
            (FORM, b"+amount=99999"),
        ] {
            let e = err(extract(&q, &u, ct, body));
            assert!(e.contains("appears 2 times"), "{ct:?}: {e}");
        }
        assert!(extract(&q, &u, Some("application/json"), b"{\"other\": 1}").is_ok());
        assert!(extract(&q, &u, Some("text/plain"), b"amount=99999").is_ok());
    }

    /// Rails and Laravel merge the query string over a JSON body: a cost
    /// or currency read from JSON is ambiguous when the query names it too.
    #[test]
    fn a_json_cost_is_checked_against_the_query() {
        let r = rule(
            CostSource::JsonPointer("/amount".into()),
            100.0,
            CostCurrency::Field("/currency".into()),
        );
        let body = br#"{"amount":1000,"currency":"usd"}"#;
        assert!(extract(&r, &uri("/v1/charges"), JSON, body).is_ok());
        for target in [
            "/v1/charges?amount=30000",
            "/v1/charges?currency=jpy",
            "/v1/charges?%20amount=30000",
            "/v1/charges?amount[]=30000",
            "/v1/charges?[amount]=30000",
        ] {
            let e = err(extract(&r, &uri(target), JSON, body));
            assert!(e.contains("query parameter"), "{target}: {e}");
        }
    }

    /// Go's encoding/json matches keys ignoring case (the last one wins).
    #[test]
    fn json_keys_differing_in_case_are_duplicates() {
        let r = rule(
            CostSource::JsonPointer("/order/total".into()),
            1.0,
            CostCurrency::Field("/order/currency".into()),
        );
        for body in [
            r#"{"order": {"total": 1, "Total": 30000, "currency": "usd"}}"#,
            r#"{"order": {"total": 1, "currency": "usd"}, "Order": {"total": 30000}}"#,
            r#"{"order": {"total": 1, "currency": "usd", "CURRENCY": "jpy"}}"#,
            r#"{"order": {"total": 1, "currency": "usd"}, "ORDER": 1}"#,
        ] {
            let e = err(extract(&r, &uri("/v1/orders"), JSON, body.as_bytes()));
            assert!(e.contains("appears 2 times"), "{body}: {e}");
        }
        // A query cost sees a body key in any case.
        let q = rule(
            CostSource::Query("amount".into()),
            1.0,
            CostCurrency::Fixed("usd".into()),
        );
        let e = err(extract(&q, &uri("/x?amount=1"), JSON, br#"{"AMOUNT": 9}"#));
        assert!(e.contains("appears 2 times"), "{e}");
    }

    /// PHP reads an unmatched `[` as `_` (`unit[amount` is `unit_amount`);
    /// Rack 2 reads `amount]`, `[amount]` and `]amount` as `amount`.
    #[test]
    fn malformed_brackets_are_other_spellings() {
        for body in [
            "amount=1&currency=usd&amount]=99999",
            "amount=1&currency=usd&[amount]=99999",
            "amount=1&currency=usd&]amount=99999",
            "amount=1&currency=usd&[currency=jpy",
        ] {
            let e = err(post(&stripe(), FORM, body));
            assert!(e.contains("also spelled"), "{body}: {e}");
        }
        let unit = rule(
            CostSource::FormField("unit_amount".into()),
            100.0,
            CostCurrency::Fixed("usd".into()),
        );
        let e = err(post(&unit, FORM, "unit_amount=1&unit[amount=99999"));
        assert!(e.contains("also spelled"), "{e}");
        let e = err(extract(
            &unit,
            &uri("/v1/prices?unit%5Bamount=99999"),
            FORM,
            b"unit_amount=1",
        ));
        assert!(e.contains("also spelled"), "{e}");
        // Well-formed nested fields are fine.
        assert!(post(&unit, FORM, "unit_amount=1&metadata[a][b]=x&items[]=y").is_ok());
        let q = rule(
            CostSource::Query("amount".into()),
            1.0,
            CostCurrency::Fixed("usd".into()),
        );
        for target in ["/x?amount=1&amount]=9", "/x?amount=1&[amount]=9"] {
            let e = err(extract(&q, &uri(target), None, b""));
            assert!(e.contains("also spelled"), "{target}: {e}");
        }
        let e = err(extract(&q, &uri("/x?amount=1"), FORM, b"[amount]=9"));
        assert!(e.contains("amount"), "{e}");
    }

    /// Rack parses a body without a Content-Type (or with a list of them)
    /// as a form and merges it over the query.
    #[test]
    fn a_query_cost_refuses_a_body_of_unknown_kind() {
        let q = rule(
            CostSource::Query("amount".into()),
            1.0,
            CostCurrency::Fixed("usd".into()),
        );
        let u = uri("/x?amount=1");
        for ct in [
            None,
            Some(""),
            Some("application/json, application/x-www-form-urlencoded"),
            Some("text/plain, application/x-www-form-urlencoded"),
            Some("nonsense"),
        ] {
            let e = err(extract(&q, &u, ct, b"amount=99999"));
            assert!(e.contains("Content-Type"), "{ct:?}: {e}");
        }
        assert!(extract(&q, &u, None, b"").is_ok());
        assert!(extract(&q, &u, Some("text/plain"), b"hello").is_ok());
    }

    /// Rack 2 (and old Python and Go) also split fields on `;`.
    #[test]
    fn a_semicolon_cannot_hide_a_second_copy() {
        let q = rule(
            CostSource::Query("amount".into()),
            1.0,
            CostCurrency::Field("currency".into()),
        );
        for target in [
            "/x?amount=1;amount=99999&currency=usd",
            "/x?currency=usd;amount=99999&amount=1",
            "/x?amount=1&currency=usd;currency=jpy",
        ] {
            let e = err(extract(&q, &uri(target), None, b""));
            assert!(e.contains("`;`"), "{target}: {e}");
        }
        assert!(extract(&q, &uri("/x?amount=1&currency=usd&note=a;b"), None, b"").is_ok());
        let e = err(post(&stripe(), FORM, "amount=1;amount=99999&currency=usd"));
        assert!(e.contains("`;`"), "{e}");
        let e = err(post(
            &stripe(),
            FORM,
            "note=a;amount=99999&amount=1&currency=usd",
        ));
        assert!(e.contains("`;`"), "{e}");
    }

    #[test]
    fn query_source() {
        let r = rule(
            CostSource::Query("units".into()),
            1000.0,
            CostCurrency::Field("cur".into()),
        );
        let get = |u: &str| extract(&r, &uri(u), None, b"");
        let c = get("/v1/send?units=2500&cur=eur").unwrap();
        assert_eq!((c.usd_micros, c.amount_text.as_str()), (2_700_000, "2500"));
        assert!(err(get("/v1/send?cur=usd")).starts_with("query parameter `units` is missing"));
        assert!(err(get("/v1/send?units=1&units=2&cur=usd")).contains("appears 2 times"));
        assert!(err(get("/v1/send?units=1")).starts_with("query parameter `cur` is missing"));
        // A form body with the same name makes it ambiguous.
        let e = err(extract(
            &r,
            &uri("/v1/send?units=1&cur=usd"),
            FORM,
            b"units=9",
        ));
        assert!(e.contains("appears 2 times"), "{e}");
        let e = err(extract(&r, &uri("/v1/send?cur=usd"), FORM, b"units=9"));
        assert!(
            e.contains("(it is in the form body, not the query string)"),
            "{e}"
        );
        // A JSON body that names it too is ambiguous (frameworks merge it
        // over the query); one that does not is fine.
        let e = err(extract(
            &r,
            &uri("/x?units=1&cur=usd"),
            JSON,
            b"{\"units\": 9}",
        ));
        assert!(e.contains("appears 2 times"), "{e}");
        let c = extract(&r, &uri("/x?units=1&cur=usd"), JSON, b"{\"other\": 9}").unwrap();
        assert_eq!(c.usd_micros, 1_000);
    }

    #[test]
    fn json_source() {
        let r = rule(
            CostSource::JsonPointer("/order/total".into()),
            1.0,
            CostCurrency::Field("/order/currency".into()),
        );
        let post = |ct, body: &str| extract(&r, &uri("/v1/orders"), ct, body.as_bytes());
        let c = post(JSON, r#"{"order": {"total": 19.99, "currency": "usd"}}"#).unwrap();
        assert_eq!(
            (c.usd_micros, c.amount_text.as_str()),
            (19_990_000, "19.99")
        );
        // Numeric strings, exponents, vendor +json types.
        let c = post(
            Some("application/vnd.api+json"),
            r#"{"order": {"total": "1.5e2", "currency": "EUR"}}"#,
        )
        .unwrap();
        assert_eq!(c.usd_micros, 162_000_000);
        // Digits beyond f64 precision still round up, never down.
        let c = post(
            JSON,
            r#"{"order": {"total": 0.10000000000000000555, "currency": "usd"}}"#,
        );
        assert_eq!(micros(c), 100_001);

        let e = err(post(JSON, r#"{"order": {"currency": "usd"}}"#));
        assert!(
            e.starts_with("JSON body field `/order/total` is missing"),
            "{e}"
        );
        let e = err(post(
            JSON,
            r#"{"order": {"total": true, "currency": "usd"}}"#,
        ));
        assert_eq!(
            e,
            "JSON body field `/order/total` = \"true\" is not an acceptable amount: it is not a decimal number"
        );
        let e = err(post(JSON, r#"{"order": {"total": -1, "currency": "usd"}}"#));
        assert!(e.contains("negative"), "{e}");
        let e = err(post(JSON, r#"{"order": {"total": 1, "currency": 840}}"#));
        assert!(e.contains("`/order/currency` (a number)"), "{e}");
        let e = err(post(
            JSON,
            r#"{"order": {"total": 1, "total": 9000, "currency": "usd"}}"#,
        ));
        assert!(e.contains("(key `total`) appears 2 times"), "{e}");
        let e = err(post(JSON, r#"{"order": {"total": 1, "#));
        assert!(e.contains("not valid JSON"), "{e}");
        let e = err(post(FORM, "total=1"));
        assert!(e.contains("application/json body"), "{e}");
        let e = err(post(JSON, r#"{"order": {"total": 1, "currency": "yen"}}"#));
        assert!(e.contains("`yen`") && e.contains("no rate"), "{e}");
    }

    #[test]
    fn fixed_source() {
        let r = rule(
            CostSource::FixedUsd(0.02),
            1.0,
            CostCurrency::Fixed("usd".into()),
        );
        let c = extract(&r, &uri("/v1/chat"), None, b"").unwrap();
        assert_eq!(
            c,
            Cost {
                usd_micros: 20_000,
                currency: "usd".into(),
                amount_text: "0.02".into()
            }
        );
        let bad = rule(
            CostSource::FixedUsd(f64::NAN),
            1.0,
            CostCurrency::Fixed("usd".into()),
        );
        assert!(matches!(
            extract(&bad, &uri("/"), None, b""),
            Err(SpendError::InvalidRule(_))
        ));
    }

    #[test]
    fn bad_rules_are_errors_not_panics() {
        for divide_by in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let r = rule(
                CostSource::FormField("amount".into()),
                divide_by,
                CostCurrency::Fixed("usd".into()),
            );
            assert!(matches!(
                post(&r, FORM, "amount=1"),
                Err(SpendError::InvalidRule(_))
            ));
        }
        let mut r = stripe();
        r.rates.insert("eur".into(), 0.0);
        assert!(matches!(
            post(&r, FORM, "amount=1&currency=eur"),
            Err(SpendError::InvalidRule(_))
        ));
    }

    proptest! {
        #[test]
        fn extract_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..120),
            text in "[a-z0-9=&%+.;{}\":/ -]{0,80}",
            query in "[a-z0-9=&%+.-]{0,40}",
            ct in prop::sample::select(vec![
                None,
                Some("application/x-www-form-urlencoded"),
                Some("application/json"),
                Some("text/plain"),
                Some(""),
            ]),
        ) {
            let u: Uri = format!("/p?{query}").parse().unwrap_or_else(|_| uri("/p"));
            for r in [
                stripe(),
                rule(CostSource::Query("amount".into()), 100.0, CostCurrency::Field("currency".into())),
                rule(CostSource::JsonPointer("/amount".into()), 1.0, CostCurrency::Field("/currency".into())),
            ] {
                let _ = extract(&r, &u, ct, &body);
                let _ = extract(&r, &u, ct, text.as_bytes());
            }
        }
    }

    #[test]
    fn structured_errors() {
        assert_eq!(
            post(&stripe(), FORM, "amount=x&currency=usd"),
            Err(SpendError::InvalidAmount {
                what: "form field `amount`".into(),
                text: "x".into(),
                why: AmountError::NotANumber
            })
        );
    }
}
