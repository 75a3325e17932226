//! After the call: the actual cost (`response_cost_pointer`) to settle the
//! reservation with, and the vendor's transaction id
//! (`response_id_pointer`) for the audit log, read from a JSON response or
//! from the events of a streamed (`text/event-stream`) one. The [`Reader`]
//! is fed the body as it passes to the agent; it never holds bytes back.
//! Anything unreadable yields `None` (the reserved amount is then what is
//! recorded as spent), never an error.

use super::cost::{Currency, convert, fixed_currency};
use super::json::{self, Json};
use crate::policy::{CostRule, CostSource};

/// Longest vendor id kept (in bytes, cut at a character boundary).
const MAX_ID: usize = 256;
/// Most of a JSON body (or of one event of a stream) kept to read from.
pub const MAX_CAPTURE: usize = 1024 * 1024;

/// Reads a response's actual cost and vendor id from its body as it streams.
pub struct Reader {
    rule: CostRule,
    currency: String,
    format: Format,
    cost: Option<i64>,
    id: Option<String>,
}

enum Format {
    /// The whole body is one JSON document (kept up to [`MAX_CAPTURE`]).
    Json { data: Vec<u8>, overflow: bool },
    /// Server-sent events: each event's `data:` lines are one JSON document;
    /// the last event that has the cost wins (an LLM stream's final usage
    /// event), the first that has an id.
    Events {
        line: Vec<u8>,
        event: Vec<u8>,
        overflow: bool,
    },
}

impl Reader {
    /// A reader for a response of `content_type` to a call costed by `rule`
    /// in `currency` (the request's).
    pub fn new(rule: &CostRule, currency: &str, content_type: Option<&str>) -> Self {
        let events = content_type.is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        });
        Self {
            rule: rule.clone(),
            currency: currency.to_string(),
            format: if events {
                Format::Events {
                    line: Vec::new(),
                    event: Vec::new(),
                    overflow: false,
                }
            } else {
                Format::Json {
                    data: Vec::new(),
                    overflow: false,
                }
            },
            cost: None,
            id: None,
        }
    }

    /// Whether the rule reads anything from responses.
    pub fn wanted(rule: &CostRule) -> bool {
        rule.response_cost_pointer.is_some() || rule.response_id_pointer.is_some()
    }

    /// One more piece of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.format {
            Format::Json { data, overflow } => {
                if data.len() + chunk.len() > MAX_CAPTURE {
                    *overflow = true;
                    data.clear();
                } else if !*overflow {
                    data.extend_from_slice(chunk);
                }
            }
            Format::Events { .. } => {
                for &b in chunk {
                    self.event_byte(b);
                }
            }
        }
    }

    fn event_byte(&mut self, b: u8) {
        let Format::Events {
            line,
            event,
            overflow,
        } = &mut self.format
        else {
            return;
        };
        if b != b'\n' {
            if line.len() < MAX_CAPTURE {
                line.push(b);
            } else {
                *overflow = true;
            }
            return;
        }
        let text = std::mem::take(line);
        let text = text.strip_suffix(b"\r").unwrap_or(&text);
        if text.is_empty() {
            // The end of an event.
            let data = std::mem::take(event);
            let skip = std::mem::replace(overflow, false);
            if !skip && !data.is_empty() && data != b"[DONE]" {
                self.read_document(&data);
            }
            return;
        }
        if let Some(d) = text.strip_prefix(b"data:") {
            let d = d.strip_prefix(b" ").unwrap_or(d);
            if !event.is_empty() {
                event.push(b'\n');
            }
            if event.len() + d.len() <= MAX_CAPTURE {
                event.extend_from_slice(d);
            } else {
                *overflow = true;
            }
        }
    }

    fn read_document(&mut self, doc: &[u8]) {
        let (cost, id) = actual(doc, &self.rule, &self.currency);
        if cost.is_some() {
            self.cost = cost;
        }
        if self.id.is_none() {
            self.id = id;
        }
    }

    /// The actual cost (micro-dollars) and vendor id, once the body ended.
    pub fn finish(mut self) -> (Option<i64>, Option<String>) {
        match &mut self.format {
            Format::Json { data, overflow } => {
                if !*overflow {
                    let data = std::mem::take(data);
                    self.read_document(&data);
                }
            }
            Format::Events { .. } => {
                // A stream that ends without a blank line still ends its event.
                self.event_byte(b'\n');
                self.event_byte(b'\n');
            }
        }
        (self.cost, self.id)
    }
}

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

    fn llm_rule() -> CostRule {
        CostRule {
            source: CostSource::FixedUsd(0.5),
            divide_by: 1.0,
            currency: CostCurrency::Fixed("usd".into()),
            rates: BTreeMap::new(),
            response_cost_pointer: Some("/usage/cost".into()),
            response_id_pointer: Some("/id".into()),
        }
    }

    #[test]
    fn a_stream_is_read_event_by_event_at_any_chunking() {
        let stream = "data: {\"id\":\"chatcmpl-1\",\"choices\":[]}\n\n\
                      : keep-alive\n\n\
                      event: message\ndata: {\"id\":\"chatcmpl-1\",\r\ndata: \"usage\":{\"cost\":0.125}}\r\n\r\n\
                      data: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut r = Reader::new(&llm_rule(), "usd", Some("text/event-stream; charset=utf-8"));
            r.feed(&stream.as_bytes()[..cut]);
            r.feed(&stream.as_bytes()[cut..]);
            let (cost, id) = r.finish();
            assert_eq!(cost, Some(125_000), "cut at {cut}");
            assert_eq!(id.as_deref(), Some("chatcmpl-1"));
        }
    }

    #[test]
    fn a_json_body_is_read_whole_and_an_oversized_one_not_at_all() {
        let mut r = Reader::new(&llm_rule(), "usd", Some("application/json"));
        r.feed(b"{\"id\": \"x1\", \"usage\": ");
        r.feed(b"{\"cost\": 2}}");
        assert_eq!(r.finish(), (Some(2_000_000), Some("x1".into())));
        let mut big = Reader::new(&llm_rule(), "usd", None);
        big.feed(&vec![b' '; MAX_CAPTURE]);
        big.feed(b"{\"usage\": {\"cost\": 2}}");
        assert_eq!(big.finish(), (None, None));
    }

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
