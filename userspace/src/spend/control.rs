//! A run's spend state in one place: its per-run caps, the daily caps it
//! shares with other runs of its policy, its rate limits and call counts,
//! and its loop breaker. Built at launch from the policy.

use std::{path::Path, sync::Arc};

use super::{
    DailyLedger, Ledger, LoopBreaker, RateLimiter, SpendError,
    money::{Round, usd_to_micros},
};
use crate::policy::Policy;

pub struct SpendControl {
    pub ledger: Ledger,
    /// `None` when no host has a `daily_cap_usd`.
    pub daily: Option<DailyLedger>,
    pub rates: RateLimiter,
    /// `None` when the policy says `loop_breaker = false`.
    pub breaker: Option<Arc<LoopBreaker>>,
}

impl SpendControl {
    /// The run's spend state. `daily_db` is the database daily caps live in
    /// (the audit database, already opened by the audit module); it is
    /// needed only when the policy has daily caps.
    pub fn open(
        policy: &Policy,
        run_id: &str,
        daily_db: Option<&Path>,
    ) -> Result<Self, SpendError> {
        let caps = daily_caps(policy)?;
        let daily = match (caps.is_empty(), daily_db) {
            (true, _) => None,
            (false, Some(db)) => Some(DailyLedger::open(db, &policy.run.name, run_id, caps)?),
            (false, None) => {
                return Err(SpendError::InvalidRule(String::from(
                    "daily_cap_usd needs the audit database (it is where daily spend is kept \
                     across runs); remove --no-audit",
                )));
            }
        };
        Ok(Self {
            ledger: Ledger::from_policy(policy)?,
            daily,
            rates: RateLimiter::from_policy(policy),
            breaker: policy
                .run
                .loop_breaker
                .map(|b| Arc::new(LoopBreaker::new(b.calls, b.window))),
        })
    }

    /// The spend state of a live run whose policy was reloaded: the new
    /// policy's caps and limits, with what the run already spent and
    /// called carried over (see [`Ledger::carried_over`] and
    /// [`RateLimiter::carried_over`]); daily caps live in the database and
    /// go on counting there; the loop breaker is kept unless its settings
    /// changed.
    pub fn reloaded(
        old: &Self,
        policy: &Policy,
        run_id: &str,
        daily_db: Option<&Path>,
    ) -> Result<Self, SpendError> {
        let fresh = Self::open(policy, run_id, daily_db)?;
        let same_breaker = match (&old.breaker, policy.run.loop_breaker) {
            (Some(b), Some(s)) => b.settings() == (s.calls, s.window),
            _ => false,
        };
        Ok(Self {
            ledger: Ledger::carried_over(policy, &old.ledger)?,
            daily: fresh.daily,
            rates: RateLimiter::carried_over(policy, &old.rates),
            breaker: if same_breaker {
                old.breaker.clone()
            } else {
                fresh.breaker
            },
        })
    }
}

/// `(host pattern as written, cap in micro-dollars)` for every host with a
/// `daily_cap_usd`.
pub fn daily_caps(policy: &Policy) -> Result<Vec<(String, i64)>, SpendError> {
    policy
        .hosts
        .iter()
        .filter_map(|h| h.daily_cap_usd.map(|usd| (h, usd)))
        .map(|(h, usd)| {
            usd_to_micros(usd, Round::Down)
                .map(|m| (h.name.clone(), m))
                .map_err(|e| {
                    SpendError::InvalidRule(format!("daily_cap_usd = {usd} for {}: {e}", h.name))
                })
        })
        .collect()
}
