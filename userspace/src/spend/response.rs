//! After the call: the actual cost (`response_cost_pointer`) to settle the
//! reservation with, and the vendor's transaction id
//! (`response_id_pointer`) for the audit log, read from a JSON response.
//! Anything unreadable yields `None` (the reserved amount is then what is
//! recorded as spent), never an error.

use super::cost::{Currency, convert, fixed_currency};
use super::json::{self, Json};
use crate::policy::{CostRule, CostSource};

/// Longest vendor id kept (in bytes, cut at a character boundary).
const MAX_ID: usize = 256;

/// The actual cost in USD micro-dollars (same `divide_by` and conversion
/// as the request; `currency` is the request's, [`super::Cost::currency`]),
/// and the vendor's transaction id. Each is `None` when the rule has no
/// pointer for it, the body is not JSON, the pointer leads nowhere or
/// through a duplicated key, or the value is not usable (a cost must be a
/// non-negative number or numeric string; an id a string or number).
pub fn actual(body: &[u8], rule: &CostRule, currency: &str) -> (Option<i64>, Option<String>) {
    if rule.response_cost_pointer.is_none() && rule.response_id_pointer.is_none() {
        return (None, None);
    }
    let Ok(doc) = json::parse(body) else {
        return (None, None);
    };
    let cost = rule
        .response_cost_pointer
        .as_deref()
        .and_then(|p| actual_cost(&doc, p, rule, currency));
    let id = rule
        .response_id_pointer
        .as_deref()
        .and_then(|p| match json::pointer(&doc, p) {
            Ok(Json::String(s)) => Some(bounded(s)),
            Ok(Json::Number(n)) => Some(n.clone()),
            _ => None,
        });
    (cost, id)
}

fn actual_cost(doc: &Json, ptr: &str, rule: &CostRule, currency: &str) -> Option<i64> {
    let text = match json::pointer(doc, ptr).ok()? {
        Json::Number(n) => n,
        Json::String(s) => s,
        _ => return None,
    };
    let currency = match rule.source {
        // A fixed price is in USD whatever the request said.
        CostSource::FixedUsd(_) => fixed_currency("usd"),
        _ => Currency {
            code: currency.to_ascii_lowercase(),
            what: "the request's currency".into(),
        },
    };
    let mut rule = rule.clone();
    if matches!(rule.source, CostSource::FixedUsd(_)) {
        rule.divide_by = 1.0;
    }
    convert(&rule, text, "the response's cost", &currency).ok()
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_ID);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::CostCurrency;

    fn rule(cost: Option<&str>, id: Option<&str>) -> CostRule {
        CostRule {
            source: CostSource::FormField("amount".into()),
            divide_by: 100.0,
            currency: CostCurrency::Field("currency".into()),
            rates: BTreeMap::from([("eur".to_string(), 1.08)]),
            response_cost_pointer: cost.map(str::to_owned),
            response_id_pointer: id.map(str::to_owned),
        }
    }

    const STRIPE: &[u8] = br#"{"id": "pi_3Q9x", "object": "payment_intent", "amount": 1999, "amount_received": 1500, "currency": "eur", "charges": {"data": [{"id": "ch_1", "amount": "250"}]}}"#;

    #[test]
    fn actual_cost_and_id() {
        let r = rule(Some("/amount_received"), Some("/id"));
        assert_eq!(
            actual(STRIPE, &r, "usd"),
            (Some(15_000_000), Some("pi_3Q9x".into()))
        );
        // Same conversion as the request: 15.00 EUR * 1.08.
        assert_eq!(
            actual(STRIPE, &r, "eur"),
            (Some(16_200_000), Some("pi_3Q9x".into()))
        );
        let r = rule(Some("/charges/data/0/amount"), Some("/charges/data/0/id"));
        assert_eq!(
            actual(STRIPE, &r, "usd"),
            (Some(2_500_000), Some("ch_1".into()))
        );
        // Only an id.
        let r = rule(None, Some("/amount"));
        assert_eq!(actual(STRIPE, &r, "usd"), (None, Some("1999".into())));
        assert_eq!(actual(STRIPE, &rule(None, None), "usd"), (None, None));
    }

    #[test]
    fn tolerant_of_anything() {
        let r = rule(Some("/amount"), Some("/id"));
        for body in [
            &b""[..],
            b"<html>502 Bad Gateway</html>",
            b"{\"amount\": ",
            b"\xff\xfe",
            b"[1, 2]",
            b"{\"amount\": -5, \"id\": {\"x\": 1}}",
            b"{\"amount\": \"abc\", \"id\": null}",
            b"{\"amount\": 1e400, \"id\": true}",
            b"{\"amount\": 1, \"amount\": 2, \"id\": \"a\", \"id\": \"b\"}",
        ] {
            assert_eq!(
                actual(body, &r, "usd"),
                (None, None),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // No rate for the currency: no actual cost (the reservation stands).
        assert_eq!(actual(br#"{"amount": 1}"#, &r, "jpy"), (None, None));
    }

    #[test]
    fn ids_are_bounded() {
        let r = rule(None, Some("/id"));
        let long = format!("{{\"id\": \"{}\\n\"}}", "é".repeat(300));
        let (_, id) = actual(long.as_bytes(), &r, "usd");
        let id = id.unwrap();
        assert!(id.len() <= 256 && !id.contains('\n'), "{id}");
    }

    #[test]
    fn fixed_price_rules_settle_in_usd() {
        let mut r = rule(Some("/usage/cost"), None);
        r.source = CostSource::FixedUsd(0.05);
        r.currency = CostCurrency::Fixed("usd".into());
        let (cost, _) = actual(br#"{"usage": {"cost": 0.0123}}"#, &r, "usd");
        assert_eq!(cost, Some(12_300));
    }
}
