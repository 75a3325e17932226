//! The `cost` table of a rule: where the price of a call comes from and how
//! it converts to USD. Parsed and validated here; enforced by a later module.

use std::collections::BTreeMap;
use std::fmt;

use toml::Spanned;

use super::diagnostics::Diagnostics;
use super::schema::RawCost;

/// How much a call costs, checked against spend caps before forwarding.
///
/// The amount is `value / divide_by` in `currency`, converted to USD with
/// `rates` (USD per unit; `usd` is always 1).
#[derive(Debug, Clone, PartialEq)]
pub struct CostRule {
    pub source: CostSource,
    /// Divisor applied to the source value (e.g. 100 for amounts in cents).
    pub divide_by: f64,
    pub currency: CostCurrency,
    /// USD per unit of each other currency (lowercase ISO 4217 codes).
    pub rates: BTreeMap<String, f64>,
    /// JSON pointer to the actual cost in the response (same unit and
    /// divisor as the request value), used to settle the spend afterwards.
    pub response_cost_pointer: Option<String>,
    /// JSON pointer to an id in the response, recorded in the audit log.
    pub response_id_pointer: Option<String>,
}

/// Where the amount of a call is read from.
#[derive(Debug, Clone, PartialEq)]
pub enum CostSource {
    /// A field of an `application/x-www-form-urlencoded` request body.
    FormField(String),
    /// An RFC 6901 JSON pointer into a JSON request body.
    JsonPointer(String),
    /// A query string parameter.
    Query(String),
    /// Every call costs this many USD.
    FixedUsd(f64),
}

/// Which currency the amount is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CostCurrency {
    /// Always this currency (lowercase ISO 4217; `usd` by default).
    Fixed(String),
    /// Named by a request field of the same kind as the source (form
    /// field, JSON pointer or query parameter).
    Field(String),
}

impl fmt::Display for CostRule {
    /// One line for `enforcer policy check`, e.g.
    /// `form field amount / 100, currency from form field currency`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.source {
            CostSource::FormField(n) => {
                write!(f, "form field {n}")?;
                "form field"
            }
            CostSource::JsonPointer(p) => {
                write!(f, "JSON body {p}")?;
                "JSON body"
            }
            CostSource::Query(q) => {
                write!(f, "query parameter {q}")?;
                "query parameter"
            }
            CostSource::FixedUsd(usd) => return write!(f, "fixed ${usd} per call"),
        };
        if self.divide_by != 1.0 {
            write!(f, " / {}", self.divide_by)?;
        }
        match &self.currency {
            CostCurrency::Fixed(c) => write!(f, " {c}")?,
            CostCurrency::Field(field) => write!(f, ", currency from {kind} {field}")?,
        }
        if !self.rates.is_empty() {
            let rates: Vec<String> = self.rates.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, ", rates {}", rates.join(" "))?;
        }
        if let Some(p) = &self.response_cost_pointer {
            write!(f, ", settled from response {p}")?;
        }
        if let Some(p) = &self.response_id_pointer {
            write!(f, ", id from response {p}")?;
        }
        Ok(())
    }
}

/// Validates a `cost = { ... }` table, reporting every problem.
pub(crate) fn compile_cost(raw: &Spanned<RawCost>, d: &mut Diagnostics) -> Option<CostRule> {
    let c = raw.get_ref();
    let errors_before = d.len();

    let mut sources: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
    if let Some(v) = &c.form_field {
        sources.push(("form_field", v.span()));
    }
    if let Some(v) = &c.json_pointer {
        sources.push(("json_pointer", v.span()));
    }
    if let Some(v) = &c.query {
        sources.push(("query", v.span()));
    }
    if let Some(v) = &c.fixed_usd {
        sources.push(("fixed_usd", v.span()));
    }
    let one_of = "`form_field`, `json_pointer`, `query` or `fixed_usd`";
    match sources.as_slice() {
        [] => d.error(
            raw.span(),
            format!("cost needs a source: add exactly one of {one_of}"),
        ),
        [_] => {}
        [(first, _), (second, span), ..] => d.error(
            span.clone(),
            format!(
                "cost has two sources (`{first}` and `{second}`); keep exactly one of {one_of}"
            ),
        ),
    }

    let mut source = None;
    if let Some(v) = &c.form_field {
        check_field_name(v, "form field", d);
        source = Some(CostSource::FormField(v.get_ref().clone()));
    }
    if let Some(v) = &c.json_pointer {
        check_pointer(v, d);
        source = Some(CostSource::JsonPointer(v.get_ref().clone()));
    }
    if let Some(v) = &c.query {
        check_field_name(v, "query parameter", d);
        source = Some(CostSource::Query(v.get_ref().clone()));
    }
    if let Some(v) = &c.fixed_usd {
        let usd = v.get_ref().0;
        if !(usd.is_finite() && usd > 0.0) {
            d.error(
                v.span(),
                format!("fixed_usd must be greater than 0 (got {usd})"),
            );
        }
        source = Some(CostSource::FixedUsd(usd));
    }
    let fixed = c.fixed_usd.is_some();

    let mut divide_by = 1.0;
    if let Some(v) = &c.divide_by {
        divide_by = v.get_ref().0;
        if fixed {
            d.error(
                v.span(),
                "`divide_by` does not apply to `fixed_usd` (write the amount in dollars)",
            );
        } else if !(divide_by.is_finite() && divide_by > 0.0) {
            d.error(
                v.span(),
                format!("divide_by must be greater than 0 (got {divide_by})"),
            );
        }
    }

    let mut currency = CostCurrency::Fixed("usd".into());
    if let Some(v) = &c.currency_field {
        if fixed {
            d.error(v.span(), "`currency_field` does not apply to `fixed_usd`");
        } else if c.json_pointer.is_some() {
            check_pointer(v, d);
        } else {
            check_field_name(v, "currency field", d);
        }
        currency = CostCurrency::Field(v.get_ref().clone());
    }
    if let Some(v) = &c.currency {
        if fixed {
            d.error(v.span(), "`currency` does not apply to `fixed_usd`");
        } else if c.currency_field.is_some() {
            d.error(
                v.span(),
                "use either `currency` (a fixed currency) or `currency_field` (read from the request), not both",
            );
        } else if check_currency_code(v, d) {
            currency = CostCurrency::Fixed(v.get_ref().clone());
        }
    }

    let mut rates = BTreeMap::new();
    if let Some(table) = &c.rates {
        if fixed {
            d.error(table.span(), "`rates` does not apply to `fixed_usd`");
        } else if currency == CostCurrency::Fixed("usd".into()) {
            d.error(
                table.span(),
                "`rates` is only used with `currency_field` or a non-USD `currency`",
            );
        }
        for (code, rate) in table.get_ref() {
            let ok = check_currency_code(code, d);
            if ok && code.get_ref() == "usd" {
                d.error(code.span(), "`usd` is always 1; remove it from `rates`");
            }
            let r = rate.get_ref().0;
            if !(r.is_finite() && r > 0.0) {
                d.error(
                    rate.span(),
                    format!("rate must be greater than 0 (got {r})"),
                );
            }
            rates.insert(code.get_ref().clone(), r);
        }
    }
    if let (CostCurrency::Fixed(code), Some(v)) = (&currency, &c.currency)
        && code != "usd"
        && !rates.contains_key(code)
    {
        d.error(
            v.span(),
            format!("no rate for `{code}`: add `rates = {{ {code} = <USD per {code}> }}`"),
        );
    }

    let mut pointer = |v: &Option<Spanned<String>>| {
        v.as_ref().map(|p| {
            check_pointer(p, d);
            p.get_ref().clone()
        })
    };
    let response_cost_pointer = pointer(&c.response_cost_pointer);
    let response_id_pointer = pointer(&c.response_id_pointer);

    if d.len() != errors_before {
        return None;
    }
    Some(CostRule {
        source: source?,
        divide_by,
        currency,
        rates,
        response_cost_pointer,
        response_id_pointer,
    })
}

fn check_field_name(v: &Spanned<String>, what: &str, d: &mut Diagnostics) {
    let name = v.get_ref();
    if name.is_empty() {
        d.error(v.span(), format!("{what} name is empty"));
    } else if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '&' | '=' | '#'))
    {
        d.error(v.span(), format!("{what} name `{name}` contains {c:?}"));
    }
}

/// RFC 6901: empty (not allowed here: it names the whole document) or
/// `/`-prefixed reference tokens where `~` is followed by `0` or `1`.
fn check_pointer(v: &Spanned<String>, d: &mut Diagnostics) {
    if let Err(e) = check_json_pointer(v.get_ref()) {
        d.error(v.span(), e);
    }
}

pub(crate) fn check_json_pointer(p: &str) -> Result<(), String> {
    if p.chars().any(char::is_control) {
        return Err("JSON pointer contains a control character".into());
    }
    if !p.starts_with('/') {
        return Err(format!(
            "`{p}` is not a JSON pointer; it must start with `/` (e.g. `/amount` or `/data/0/amount`)"
        ));
    }
    let bytes = p.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Err(format!(
                "JSON pointer `{p}`: `~` must be followed by `0` (for `~`) or `1` (for `/`)"
            ));
        }
    }
    Ok(())
}

/// Three lowercase ASCII letters. Returns whether it was valid.
fn check_currency_code(v: &Spanned<String>, d: &mut Diagnostics) -> bool {
    let code = v.get_ref();
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_lowercase()) {
        return true;
    }
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        d.error(
            v.span(),
            format!(
                "write currency codes in lowercase: `{}`",
                code.to_ascii_lowercase()
            ),
        );
    } else {
        d.error(
            v.span(),
            format!("`{code}` is not a currency code (three letters, e.g. `usd`, `eur`)"),
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pointers() {
        assert!(check_json_pointer("/amount").is_ok());
        assert!(check_json_pointer("/a~0b/c~1d/0").is_ok());
        assert!(check_json_pointer("").is_err());
        assert!(check_json_pointer("amount").is_err());
        assert!(check_json_pointer("/a~2").is_err());
        assert!(check_json_pointer("/a~").is_err());
    }

    #[test]
    fn display() {
        let c = CostRule {
            source: CostSource::FormField("amount".into()),
            divide_by: 100.0,
            currency: CostCurrency::Field("currency".into()),
            rates: BTreeMap::from([("eur".to_string(), 1.08)]),
            response_cost_pointer: None,
            response_id_pointer: Some("/id".into()),
        };
        assert_eq!(
            c.to_string(),
            "form field amount / 100, currency from form field currency, rates eur=1.08, id from response /id"
        );
        let fixed = CostRule {
            source: CostSource::FixedUsd(0.02),
            divide_by: 1.0,
            currency: CostCurrency::Fixed("usd".into()),
            rates: BTreeMap::new(),
            response_cost_pointer: None,
            response_id_pointer: None,
        };
        assert_eq!(fixed.to_string(), "fixed $0.02 per call");
    }
}
