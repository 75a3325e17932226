//! Amount thresholds on a rule: `max_usd_per_call` (or its synonym
//! `deny_above_usd`), a ceiling no single call may exceed, and
//! `ask_above_usd`, above which an `allow` rule asks a human. They work on
//! the amount the rule's `cost` reads, in USD; validated here, judged per
//! call by `spend::per_call`.

use std::fmt;

use toml::Spanned;

use super::diagnostics::Diagnostics;
use super::host::Action;
use super::schema::{RawRule, Usd};
use super::values::check_usd;

/// A rule's amount thresholds (USD, > 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AmountLimits {
    /// No single call above this: refused (403), never asked.
    pub ceiling_usd: Option<f64>,
    /// Which key set the ceiling (`max_usd_per_call` or `deny_above_usd`).
    pub ceiling_key: &'static str,
    /// Above this (and up to the ceiling) an `allow` rule asks a human.
    pub ask_above_usd: Option<f64>,
}

impl AmountLimits {
    pub fn is_empty(&self) -> bool {
        self.ceiling_usd.is_none() && self.ask_above_usd.is_none()
    }
}

impl fmt::Display for AmountLimits {
    /// `ask above $50, deny above $1000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(a) = self.ask_above_usd {
            parts.push(format!("ask above ${a}"));
        }
        if let Some(c) = self.ceiling_usd {
            parts.push(if self.ceiling_key == "deny_above_usd" {
                format!("deny above ${c}")
            } else {
                format!("at most ${c} per call")
            });
        }
        f.write_str(&parts.join(", "))
    }
}

/// Validates the thresholds of a rule with `action` (and whether it has a
/// `cost` that reads the amount).
pub(crate) fn compile_amounts(
    r: &RawRule,
    action: Action,
    has_cost: bool,
    d: &mut Diagnostics,
) -> AmountLimits {
    let keys: [(&'static str, &Option<Spanned<Usd>>); 3] = [
        ("max_usd_per_call", &r.max_usd_per_call),
        ("deny_above_usd", &r.deny_above_usd),
        ("ask_above_usd", &r.ask_above_usd),
    ];
    let mut out = AmountLimits::default();
    for (key, v) in keys {
        let Some(v) = v else { continue };
        if action == Action::Deny {
            d.error(
                v.span(),
                format!(
                    "`{key}` has no effect on a rule that denies; remove it or change the action"
                ),
            );
            continue;
        }
        if !has_cost {
            d.error(
                v.span(),
                format!(
                    "`{key}` needs the amount of the call: add a `cost` to the rule (e.g. cost = {{ form_field = \"amount\", divide_by = 100, currency_field = \"currency\" }})"
                ),
            );
            continue;
        }
        let Some(usd) = check_usd(v, key, d) else {
            continue;
        };
        match key {
            "ask_above_usd" => {
                if action == Action::Ask {
                    d.error(
                        v.span(),
                        "`ask_above_usd` has no effect on an `ask` rule (every call asks); remove it or make the rule \"allow\"",
                    );
                }
                out.ask_above_usd = Some(usd);
            }
            _ if out.ceiling_usd.is_some() => d.error(
                v.span(),
                "`max_usd_per_call` and `deny_above_usd` mean the same ceiling; keep one",
            ),
            _ => {
                out.ceiling_usd = Some(usd);
                out.ceiling_key = key;
            }
        }
    }
    if let (Some(ask), Some(ceiling), Some(v)) =
        (out.ask_above_usd, out.ceiling_usd, &r.ask_above_usd)
        && ask >= ceiling
    {
        d.error(
            v.span(),
            format!(
                "ask_above_usd (${ask}) must be below {} (${ceiling}), or nothing is ever asked",
                out.ceiling_key
            ),
        );
    }
    out
}
