//! Spend control before a call leaves: what a request costs ([`cost`],
//! exact [`money`]), per-run caps with reservations ([`ledger`]), daily caps
//! across runs in SQLite ([`daily`]), rate limits and call counts
//! ([`rate`]), the loop breaker ([`breaker`]), and the actual cost and
//! vendor id read back from the response ([`response`]).
//!
//! Pure logic: the proxy asks, in order, the rate limiter and the loop
//! breaker, then extracts the cost and reserves it (run [`Ledger`] first,
//! in memory; then [`DailyLedger`], SQLite, blocking: if the daily cap
//! refuses, drop the run reservation), forwards, and commits or releases
//! both. Semantics in `docs/spend.md`.

pub mod breaker;
pub mod charge;
pub mod control;
pub mod cost;
pub mod daily;
pub mod error;
mod json;
pub mod ledger;
pub mod money;
pub mod per_call;
pub mod rate;
pub mod response;

pub use breaker::{LoopBreaker, Tripped, TrippedKey};
pub use charge::{Call, Charge, Settled, Stop};
pub use control::SpendControl;
pub use cost::{Cost, FieldPlace, extract, read_field};
pub use daily::{DailyLedger, DailyReservation};
pub use error::SpendError;
pub use ledger::{AccountSnapshot, Ledger, OverCap, Reservation};
pub use money::{MAX_MICROS, MICROS_PER_USD, format_usd};
pub use per_call::{OverCeiling, PerCall};
pub use rate::{Limited, RateLimiter};

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the proxy shares between tasks, or moves across awaits.
    #[test]
    fn shared_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Ledger>();
        check::<Reservation>();
        check::<DailyLedger>();
        check::<DailyReservation>();
        check::<RateLimiter>();
        check::<LoopBreaker>();
        check::<SpendError>();
    }
}
