//! A call's money from reservation to settlement, and the checks before it
//! (in the order `docs/spend.md` gives): rate limits and call counts, the
//! loop breaker, the cost, and its reservation under the run's and the
//! daily caps. A refused call never reaches the vendor. An admitted one
//! carries a [`Charge`] settled once the vendor has answered: committed
//! (with the actual cost when the response says it), or released when the
//! vendor refused the call or never got it.

use std::sync::Arc;

use http::{StatusCode, Uri};

use super::{
    Cost, DailyReservation, Limited, OverCap, Reservation, SpendControl, SpendError, Tripped,
    money::MICROS_PER_USD,
};
use crate::policy::{CostRule, Policy};

/// Why a call stops before it leaves.
#[derive(Debug)]
pub enum Stop {
    Limited(Limited),
    Tripped(Tripped),
    /// Its cost cannot be determined.
    Cost(SpendError),
    OverCap(OverCap),
    /// The daily-cap store failed: fail closed.
    Storage(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Limited(l) => write!(f, "{l}"),
            Self::Tripped(t) => write!(f, "{t}"),
            Self::Cost(e) => write!(f, "cost cannot be determined: {e}"),
            Self::OverCap(o) => write!(f, "{o}"),
            Self::Storage(e) => write!(f, "daily spend cannot be checked ({e}): refused"),
        }
    }
}

/// The call, as the spend checks see it.
pub struct Call<'a> {
    /// Index of the `[[host]]` entry.
    pub host: usize,
    /// Index of the deciding rule in it (None: a whole-host decision).
    pub rule: Option<usize>,
    pub method: &'a str,
    /// Canonical path and query: what the loop breaker compares.
    pub target: &'a str,
    /// Reads are not counted by the loop breaker.
    pub is_read: bool,
}

impl SpendControl {
    /// Rate limits, call counts and the loop breaker. `body` is what was
    /// read of the request body (empty when nothing needs it).
    pub fn check_limits(&self, call: &Call<'_>, body: &[u8]) -> Result<(), Stop> {
        self.rates
            .check(call.host, call.rule)
            .map_err(Stop::Limited)?;
        if let Some(b) = self.breaker.as_ref().filter(|_| !call.is_read) {
            b.observe(call.method, call.target, body)
                .map_err(Stop::Tripped)?;
        }
        Ok(())
    }

    /// Whether [`SpendControl::check_limits`] needs the request body.
    pub fn limits_read_body(&self, call: &Call<'_>) -> bool {
        self.breaker.is_some() && !call.is_read
    }

    /// The call's cost by `rule`, reserved under the run's caps, then the
    /// host's daily cap.
    pub async fn reserve(
        &self,
        policy: &Policy,
        call: &Call<'_>,
        rule: &CostRule,
        uri: &Uri,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Charge, Stop> {
        let cost = super::extract(rule, uri, content_type, body).map_err(Stop::Cost)?;
        self.reserve_cost(policy, call, rule, cost).await
    }

    /// Reserves a cost already read by `rule` (see [`super::extract`]) under
    /// the run's caps, then the host's daily cap.
    pub async fn reserve_cost(
        &self,
        policy: &Policy,
        call: &Call<'_>,
        rule: &CostRule,
        cost: Cost,
    ) -> Result<Charge, Stop> {
        let run = self
            .ledger
            .reserve(call.host, cost.usd_micros)
            .map_err(Stop::OverCap)?;
        let host = policy
            .hosts
            .get(call.host)
            .map(|h| h.name.clone())
            .unwrap_or_default();
        let daily = match &self.daily {
            Some(d) if d.cap(&host).is_some() => {
                let (d, micros) = (d.clone(), cost.usd_micros);
                match tokio::task::spawn_blocking(move || d.reserve(&host, micros)).await {
                    Ok(Ok(r)) => Some(r),
                    Ok(Err(SpendError::OverCap(o))) => {
                        run.release();
                        return Err(Stop::OverCap(o));
                    }
                    Ok(Err(e)) => {
                        run.release();
                        return Err(Stop::Storage(e.to_string()));
                    }
                    Err(e) => {
                        run.release();
                        return Err(Stop::Storage(e.to_string()));
                    }
                }
            }
            _ => None,
        };
        Ok(Charge {
            run: Some(run),
            daily,
            cost,
            rule: Arc::new(rule.clone()),
            sent: false,
        })
    }
}

/// A call's reservations until the vendor has answered. Dropped unsettled
/// before it was sent, it is released; after (the agent went away while the
/// vendor worked on it), it is committed: the vendor may have acted on it.
pub struct Charge {
    run: Option<Reservation>,
    daily: Option<DailyReservation>,
    pub cost: Cost,
    rule: Arc<CostRule>,
    sent: bool,
}

/// What a call cost, once settled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settled {
    pub cost_usd: f64,
    pub vendor_txn_id: Option<String>,
}

fn usd(micros: i64) -> f64 {
    micros as f64 / MICROS_PER_USD as f64
}

impl Charge {
    pub fn reserved_usd(&self) -> f64 {
        usd(self.cost.usd_micros)
    }

    /// `$19.99 (1999 usd)`, for prompts.
    pub fn describe(&self) -> String {
        format!(
            "${} ({} {})",
            self.cost.usd(),
            self.cost.amount_text,
            self.cost.currency
        )
    }

    /// The rule the cost came from (what the response is read for).
    pub fn rule(&self) -> &CostRule {
        &self.rule
    }

    /// Whether settling reads the response body (actual cost or vendor id).
    pub fn reads_response(&self) -> bool {
        self.rule.response_cost_pointer.is_some() || self.rule.response_id_pointer.is_some()
    }

    /// The request is about to leave: from now on, losing track of it
    /// counts it as spent.
    pub fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// The vendor refused (4xx/5xx) or never got the call: nothing spent.
    pub async fn release(mut self) -> Settled {
        if let Some(r) = self.run.take() {
            r.release();
        }
        if let Some(d) = self.daily.take() {
            let _ = tokio::task::spawn_blocking(move || d.release()).await;
        }
        Settled::default()
    }

    /// The vendor accepted the call: commits `actual` (micro-dollars, read
    /// from the response), or the reserved amount when there is none.
    pub async fn commit(mut self, actual: Option<i64>, vendor_txn_id: Option<String>) -> Settled {
        let mut spent = self
            .run
            .take()
            .map_or(self.cost.usd_micros, |r| r.commit(actual));
        if let Some(d) = self.daily.take() {
            match tokio::task::spawn_blocking(move || d.commit(actual)).await {
                Ok(Ok(m)) => spent = spent.max(m),
                Ok(Err(e)) => tracing::warn!("committing daily spend failed: {e}"),
                Err(e) => tracing::warn!("committing daily spend failed: {e}"),
            }
        }
        Settled {
            cost_usd: usd(spent),
            vendor_txn_id,
        }
    }

    /// Settles at once when nothing of the charge lives in SQLite (no
    /// daily cap): no task, no thread. Gives the charge back otherwise.
    pub fn settle_now(
        mut self,
        status: StatusCode,
        actual: Option<i64>,
        vendor_txn_id: Option<String>,
    ) -> Result<Settled, Box<(Self, Option<String>)>> {
        if self.daily.is_some() {
            return Err(Box::new((self, vendor_txn_id)));
        }
        let run = self.run.take();
        if status.is_client_error() || status.is_server_error() {
            if let Some(r) = run {
                r.release();
            }
            return Ok(Settled::default());
        }
        let spent = run.map_or(self.cost.usd_micros, |r| r.commit(actual));
        Ok(Settled {
            cost_usd: usd(spent),
            vendor_txn_id,
        })
    }

    /// Settles by the vendor's answer: 4xx/5xx release, anything else
    /// commits (the actual cost when the response said it).
    pub async fn settle(
        self,
        status: StatusCode,
        actual: Option<i64>,
        vendor_txn_id: Option<String>,
    ) -> Settled {
        if status.is_client_error() || status.is_server_error() {
            self.release().await
        } else {
            self.commit(actual, vendor_txn_id).await
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if !self.sent {
            // Dropping the reservations releases them.
            return;
        }
        if let Some(r) = self.run.take() {
            r.commit(None);
        }
        if let Some(d) = self.daily.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn_blocking(move || {
                if let Err(e) = d.commit(None) {
                    tracing::warn!("committing daily spend failed: {e}");
                }
            });
        }
    }
}
