//! A call's amount against its rule's thresholds (`max_usd_per_call` /
//! `deny_above_usd`, `ask_above_usd`), in exact micro-dollars: thresholds
//! round down, so a cent over is over.

use serde::Serialize;

use super::Cost;
use super::money::{Round, format_usd, usd_to_micros};
use crate::policy::AmountLimits;

/// What the thresholds say about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerCall {
    /// At or under every threshold.
    Under,
    /// Above `ask_above_usd`: a human decides; the text says why.
    Ask(String),
}

/// A call above its rule's per-call ceiling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverCeiling {
    /// `max_usd_per_call` or `deny_above_usd`.
    pub key: &'static str,
    /// The ceiling, USD.
    pub ceiling_usd: String,
    /// The call, USD.
    pub amount_usd: String,
    /// The amount as the request wrote it, and its currency.
    pub amount: String,
    pub currency: String,
}

impl std::fmt::Display for OverCeiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this call is ${} ({} {}), above the rule's per-call ceiling of ${} ({})",
            self.amount_usd, self.amount, self.currency, self.ceiling_usd, self.key
        )
    }
}

fn micros(usd: f64) -> i64 {
    // Validated > 0 and finite at load; a value that does not convert
    // stops every call (0).
    usd_to_micros(usd, Round::Down).unwrap_or(0)
}

/// Judges `cost` by `limits`.
pub fn judge(limits: &AmountLimits, cost: &Cost) -> Result<PerCall, OverCeiling> {
    if let Some(ceiling) = limits.ceiling_usd
        && cost.usd_micros > micros(ceiling)
    {
        return Err(OverCeiling {
            key: limits.ceiling_key,
            ceiling_usd: format_usd(micros(ceiling)),
            amount_usd: cost.usd(),
            amount: cost.amount_text.clone(),
            currency: cost.currency.clone(),
        });
    }
    if let Some(ask) = limits.ask_above_usd
        && cost.usd_micros > micros(ask)
    {
        return Ok(PerCall::Ask(format!(
            "${} ({} {}) is above ask_above_usd ${}",
            cost.usd(),
            cost.amount_text,
            cost.currency,
            format_usd(micros(ask))
        )));
    }
    Ok(PerCall::Under)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(micros: i64) -> Cost {
        Cost {
            usd_micros: micros,
            currency: "usd".into(),
            amount_text: (micros / 10_000).to_string(),
        }
    }

    fn limits() -> AmountLimits {
        AmountLimits {
            ceiling_usd: Some(1000.0),
            ceiling_key: "deny_above_usd",
            ask_above_usd: Some(50.0),
        }
    }

    #[test]
    fn under_at_and_above_each_threshold() {
        let l = limits();
        assert_eq!(judge(&l, &cost(49_990_000)), Ok(PerCall::Under));
        assert_eq!(judge(&l, &cost(50_000_000)), Ok(PerCall::Under));
        assert!(matches!(judge(&l, &cost(50_000_001)), Ok(PerCall::Ask(_))));
        assert!(matches!(
            judge(&l, &cost(1_000_000_000)),
            Ok(PerCall::Ask(_))
        ));
        let over = judge(&l, &cost(1_000_000_001)).unwrap_err();
        assert_eq!(over.key, "deny_above_usd");
        assert_eq!(over.ceiling_usd, "1000.00");
        assert!(
            over.to_string()
                .contains("above the rule's per-call ceiling of $1000.00")
        );
    }

    #[test]
    fn no_thresholds_is_always_under() {
        assert_eq!(
            judge(&AmountLimits::default(), &cost(i64::MAX / 2)),
            Ok(PerCall::Under)
        );
    }
}
