//! Per-run spend caps (per host and for the whole run) with reservations:
//! a call's cost is reserved before it is forwarded, atomically against
//! what is spent plus what is still in flight, then committed (the actual
//! cost, when the response says) or released (the vendor refused it).
//!
//! One mutex guards every account, so concurrent reservations near a cap
//! can never overshoot it, not by a micro-dollar.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::error::SpendError;
use super::money::{MAX_MICROS, Round, format_usd, usd_to_micros};
use crate::policy::Policy;

/// A spend cap refuses a call: the 429 body. Serializes as
/// `{"scope": "host api.stripe.com", "cap": "500.00", "spent": "480.00",
/// "in_flight": "15.00", "requested": "25.00"}` (USD decimal strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverCap {
    /// The cap, in micro-dollars.
    pub cap_micros: i64,
    /// Committed spend under the cap.
    pub spent_micros: i64,
    /// Reserved by calls still in flight (counted against the cap too).
    pub in_flight_micros: i64,
    /// What this call would have cost.
    pub requested_micros: i64,
    /// `host api.stripe.com`, `run`, or `daily host api.stripe.com
    /// (2026-11-22 UTC)`.
    pub scope: String,
}

impl fmt::Display for OverCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spend cap of ${} for {} reached: ${} spent",
            format_usd(self.cap_micros),
            self.scope,
            format_usd(self.spent_micros),
        )?;
        if self.in_flight_micros > 0 {
            write!(f, " and ${} in flight", format_usd(self.in_flight_micros))?;
        }
        write!(
            f,
            ", this call would cost ${}",
            format_usd(self.requested_micros)
        )
    }
}

impl Serialize for OverCap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("OverCap", 5)?;
        st.serialize_field("scope", &self.scope)?;
        st.serialize_field("cap", &format_usd(self.cap_micros))?;
        st.serialize_field("spent", &format_usd(self.spent_micros))?;
        st.serialize_field("in_flight", &format_usd(self.in_flight_micros))?;
        st.serialize_field("requested", &format_usd(self.requested_micros))?;
        st.end()
    }
}

/// One account's figures, for summaries and `enforcer status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccountSnapshot {
    /// `host api.stripe.com` or `run`.
    pub scope: String,
    pub cap_micros: Option<i64>,
    pub spent_micros: i64,
    pub in_flight_micros: i64,
}

#[derive(Debug)]
struct Account {
    scope: String,
    cap: Option<i64>,
    spent: i64,
    reserved: i64,
}

impl Account {
    fn new(scope: String, cap: Option<i64>) -> Self {
        Self {
            scope,
            cap,
            spent: 0,
            reserved: 0,
        }
    }

    /// `Err` when `amount` more would exceed the cap. Nothing (0) always
    /// fits, even when an actual cost above its reservation has pushed the
    /// spend past the cap.
    fn check(&self, amount: i64) -> Result<(), OverCap> {
        let Some(cap) = self.cap else {
            return Ok(());
        };
        if amount == 0 {
            return Ok(());
        }
        let total = i128::from(self.spent) + i128::from(self.reserved) + i128::from(amount);
        if total > i128::from(cap) {
            return Err(OverCap {
                cap_micros: cap,
                spent_micros: self.spent,
                in_flight_micros: self.reserved,
                requested_micros: amount,
                scope: self.scope.clone(),
            });
        }
        Ok(())
    }

    fn snapshot(&self) -> AccountSnapshot {
        AccountSnapshot {
            scope: self.scope.clone(),
            cap_micros: self.cap,
            spent_micros: self.spent,
            in_flight_micros: self.reserved,
        }
    }
}

#[derive(Debug)]
struct State {
    run: Account,
    hosts: HashMap<usize, Account>,
    /// The ledger that replaced this one at a reload: reservations made
    /// here afterwards (by requests that began before it) are made there,
    /// and money spent above what was reserved here is counted there too.
    successor: Option<Ledger>,
}

impl State {
    fn host(&mut self, host: usize) -> &mut Account {
        self.hosts
            .entry(host)
            .or_insert_with(|| Account::new(format!("host #{host}"), None))
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing panics while the lock is held; a poisoned lock still holds
    // consistent figures.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spend per run: one account per host (by index in `Policy::hosts`) and
/// one for the whole run, each with an optional cap. Cheap to clone; all
/// clones share the accounts.
#[derive(Debug, Clone)]
pub struct Ledger {
    state: Arc<Mutex<State>>,
}

impl Ledger {
    /// `hosts[i]` is host index `i`: its name (for the scope, `host NAME`)
    /// and its cap in micro-dollars. Hosts not listed have no cap.
    pub fn new(run_cap_micros: Option<i64>, hosts: Vec<(String, Option<i64>)>) -> Self {
        let hosts = hosts
            .into_iter()
            .enumerate()
            .map(|(i, (name, cap))| (i, Account::new(format!("host {name}"), cap)))
            .collect();
        Self {
            state: Arc::new(Mutex::new(State {
                run: Account::new("run".into(), run_cap_micros),
                hosts,
                successor: None,
            })),
        }
    }

    /// Caps from `[run] spend_cap_usd` and each host's `spend_cap_usd`
    /// (rounded down to the micro-dollar).
    pub fn from_policy(policy: &Policy) -> Result<Self, SpendError> {
        let cap = |what: &str, usd: Option<f64>| -> Result<Option<i64>, SpendError> {
            usd.map(|usd| {
                usd_to_micros(usd, Round::Down).map_err(|e| {
                    SpendError::InvalidRule(format!("spend_cap_usd = {usd} for {what}: {e}"))
                })
            })
            .transpose()
        };
        let run = cap("the run", policy.run.spend_cap_usd)?;
        let hosts = policy
            .hosts
            .iter()
            .map(|h| Ok((h.name.clone(), cap(&h.name, h.spend_cap_usd)?)))
            .collect::<Result<Vec<_>, SpendError>>()?;
        Ok(Self::new(run, hosts))
    }

    /// The ledger of a reloaded `policy` (its caps), carrying over what
    /// `old` counted for the run and for each host both versions have (by
    /// name). Money in flight at the reload counts as spent: its calls
    /// settle on `old`, and the new ledger never undercounts. Under the same
    /// lock `old` is retired into the new one: a reservation a request that
    /// began before the reload makes on `old` afterwards is made on the new
    /// ledger, against its caps.
    pub fn carried_over(policy: &Policy, old: &Self) -> Result<Self, SpendError> {
        let new = Self::from_policy(policy)?;
        {
            let mut before = lock(&old.state);
            let mut now = lock(&new.state);
            now.run.spent = before.run.spent.saturating_add(before.run.reserved);
            for (i, h) in policy.hosts.iter().enumerate() {
                let scope = format!("host {}", h.name);
                if let Some(a) = before.hosts.values().find(|a| a.scope == scope) {
                    now.host(i).spent = a.spent.saturating_add(a.reserved);
                }
            }
            before.successor = Some(new.clone());
        }
        Ok(new)
    }

    /// The index of the host account named `scope` (`host NAME`); an index
    /// no host has (the run's cap only) when there is none.
    fn index_of(&self, scope: &str) -> usize {
        lock(&self.state)
            .hosts
            .iter()
            .find(|(_, a)| a.scope == scope)
            .map_or(usize::MAX, |(i, _)| *i)
    }

    /// Reserves `usd_micros` (negative counts as 0, more than
    /// [`MAX_MICROS`] as that) against `host`'s cap and the run's cap, both
    /// or neither. The host's cap is checked first.
    pub fn reserve(&self, host: usize, usd_micros: i64) -> Result<Reservation, OverCap> {
        let amount = usd_micros.clamp(0, MAX_MICROS);
        let mut st = lock(&self.state);
        if let Some(next) = st.successor.clone() {
            let scope = st.host(host).scope.clone();
            drop(st);
            return next.reserve(next.index_of(&scope), usd_micros);
        }
        st.host(host).check(amount)?;
        st.run.check(amount)?;
        let h = st.host(host);
        h.reserved = h.reserved.saturating_add(amount);
        st.run.reserved = st.run.reserved.saturating_add(amount);
        drop(st);
        Ok(Reservation {
            state: Arc::clone(&self.state),
            host,
            micros: amount,
            settled: false,
        })
    }

    /// Records `micros` spent on `host` (and the run) outside a reservation.
    fn add_spent(&self, host: usize, micros: i64) {
        let mut st = lock(&self.state);
        if let Some(next) = st.successor.clone() {
            let scope = st.host(host).scope.clone();
            drop(st);
            next.add_spent(next.index_of(&scope), micros);
            return;
        }
        let h = st.host(host);
        h.spent = h.spent.saturating_add(micros);
        st.run.spent = st.run.spent.saturating_add(micros);
    }

    /// Committed spend on `host` this run.
    pub fn spent(&self, host: usize) -> i64 {
        lock(&self.state).hosts.get(&host).map_or(0, |a| a.spent)
    }

    /// Committed spend of the whole run.
    pub fn run_spent(&self) -> i64 {
        lock(&self.state).run.spent
    }

    /// Reserved by calls in flight, whole run.
    pub fn in_flight(&self) -> i64 {
        lock(&self.state).run.reserved
    }

    /// The run's account, then each host's that has a cap or has spent
    /// anything, by host index.
    pub fn snapshot(&self) -> Vec<AccountSnapshot> {
        let st = lock(&self.state);
        let mut hosts: Vec<(&usize, &Account)> = st
            .hosts
            .iter()
            .filter(|(_, a)| a.cap.is_some() || a.spent > 0 || a.reserved > 0)
            .collect();
        hosts.sort_by_key(|(i, _)| **i);
        std::iter::once(st.run.snapshot())
            .chain(hosts.into_iter().map(|(_, a)| a.snapshot()))
            .collect()
    }
}

/// Money set aside for one call in flight. Settle it with
/// [`Reservation::commit`] or [`Reservation::release`]; dropping it
/// unsettled releases it.
#[must_use = "a reservation is released when dropped; commit it once the call succeeded"]
pub struct Reservation {
    state: Arc<Mutex<State>>,
    host: usize,
    micros: i64,
    settled: bool,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("host", &self.host)
            .field("micros", &self.micros)
            .field("settled", &self.settled)
            .finish()
    }
}

impl Reservation {
    /// The reserved amount in micro-dollars.
    pub fn micros(&self) -> i64 {
        self.micros
    }

    pub fn host(&self) -> usize {
        self.host
    }

    /// The call went through: records `actual` (from the response; clamped
    /// to 0..=[`MAX_MICROS`]) or else the reserved amount as spent, and
    /// frees the reservation. The actual cost is recorded even when it is
    /// above the reservation (the money is gone); later calls see it.
    /// Returns the amount recorded.
    pub fn commit(mut self, actual_micros: Option<i64>) -> i64 {
        let amount = actual_micros.map_or(self.micros, |a| a.clamp(0, MAX_MICROS));
        self.settle(amount);
        amount
    }

    /// The vendor refused the call (or it never left): frees the
    /// reservation without spending anything.
    pub fn release(mut self) {
        self.settle(0);
    }

    fn settle(&mut self, spent: i64) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut st = lock(&self.state);
        let micros = self.micros;
        let h = st.host(self.host);
        h.reserved = h.reserved.saturating_sub(micros).max(0);
        h.spent = h.spent.saturating_add(spent);
        let scope = h.scope.clone();
        st.run.reserved = st.run.reserved.saturating_sub(micros).max(0);
        st.run.spent = st.run.spent.saturating_add(spent);
        // Carried over as spent at a reload: only what went above the
        // reservation is news to the ledger that replaced this one.
        let above = spent.saturating_sub(micros);
        if let Some(next) = st.successor.clone()
            && above > 0
        {
            drop(st);
            next.add_spent(next.index_of(&scope), above);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.settle(0);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const USD: i64 = 1_000_000;

    fn two_hosts() -> Ledger {
        // Host 0: cap 10, host 1: cap 100, host 2: no cap; run: cap 50.
        Ledger::new(
            Some(50 * USD),
            vec![
                ("api.stripe.com".into(), Some(10 * USD)),
                ("api.twilio.com".into(), Some(100 * USD)),
                ("api.openai.com".into(), None),
            ],
        )
    }

    #[test]
    fn host_cap_then_run_cap() {
        let l = two_hosts();
        let a = l.reserve(0, 6 * USD).unwrap();
        let over = l.reserve(0, 5 * USD).unwrap_err();
        assert_eq!(
            over,
            OverCap {
                cap_micros: 10 * USD,
                spent_micros: 0,
                in_flight_micros: 6 * USD,
                requested_micros: 5 * USD,
                scope: "host api.stripe.com".into(),
            }
        );
        assert_eq!(
            over.to_string(),
            "spend cap of $10.00 for host api.stripe.com reached: $0.00 spent and $6.00 in flight, this call would cost $5.00"
        );
        // Exactly up to the cap is fine.
        let b = l.reserve(0, 4 * USD).unwrap();
        assert_eq!(a.commit(None), 6 * USD);
        assert_eq!(b.commit(None), 4 * USD);
        assert_eq!(l.spent(0), 10 * USD);
        assert!(l.reserve(0, 1).is_err());
        assert!(l.reserve(0, 0).is_ok());

        // The run cap (50) spans hosts: 10 spent on host 0, 40 more fit.
        l.reserve(1, 30 * USD).unwrap().commit(None);
        l.reserve(2, 10 * USD).unwrap().commit(None);
        let over = l.reserve(1, 1).unwrap_err();
        assert_eq!(over.scope, "run");
        assert_eq!((over.cap_micros, over.spent_micros), (50 * USD, 50 * USD));
        assert_eq!(l.run_spent(), 50 * USD);
        assert_eq!(l.spent(1), 30 * USD);
        assert_eq!(l.spent(2), 10 * USD);
    }

    #[test]
    fn host_refusal_reserves_nothing_on_the_run() {
        let l = two_hosts();
        assert!(l.reserve(0, 11 * USD).is_err());
        assert_eq!(l.in_flight(), 0);
        // And a run refusal reserves nothing on the host.
        let big = l.reserve(2, 45 * USD).unwrap();
        assert_eq!(l.reserve(1, 6 * USD).unwrap_err().scope, "run");
        assert_eq!(l.snapshot()[2].in_flight_micros, 0);
        big.release();
    }

    #[test]
    fn commit_actual_release_and_drop() {
        let l = two_hosts();
        // Reserved 9, the response says 2.50: 7.50 of headroom comes back.
        let r = l.reserve(0, 9 * USD).unwrap();
        assert!(l.reserve(0, 2 * USD).is_err());
        assert_eq!(r.commit(Some(2_500_000)), 2_500_000);
        assert_eq!(l.spent(0), 2_500_000);
        let r = l.reserve(0, 7_500_000).unwrap();
        // The vendor refused (4xx): nothing spent.
        r.release();
        assert_eq!((l.spent(0), l.in_flight()), (2_500_000, 0));
        // Dropped unsettled (the connection died): released.
        {
            let _r = l.reserve(0, 7_500_000).unwrap();
            assert_eq!(l.in_flight(), 7_500_000);
        }
        assert_eq!(l.in_flight(), 0);
        // An actual cost above the reservation is recorded as spent.
        let r = l.reserve(0, USD).unwrap();
        assert_eq!(r.commit(Some(9 * USD)), 9 * USD);
        assert_eq!(l.spent(0), 11_500_000);
        assert_eq!(l.reserve(0, 0).map(|r| r.micros()), Ok(0));
        assert!(l.reserve(0, 1).is_err());
        // Negative actuals and amounts count as zero.
        let r = l.reserve(2, -5).unwrap();
        assert_eq!(r.micros(), 0);
        assert_eq!(r.commit(Some(-7)), 0);
        assert_eq!(
            l.snapshot(),
            vec![
                AccountSnapshot {
                    scope: "run".into(),
                    cap_micros: Some(50 * USD),
                    spent_micros: 11_500_000,
                    in_flight_micros: 0
                },
                AccountSnapshot {
                    scope: "host api.stripe.com".into(),
                    cap_micros: Some(10 * USD),
                    spent_micros: 11_500_000,
                    in_flight_micros: 0
                },
                AccountSnapshot {
                    scope: "host api.twilio.com".into(),
                    cap_micros: Some(100 * USD),
                    spent_micros: 0,
                    in_flight_micros: 0
                },
            ]
        );
    }

    #[test]
    fn huge_amounts_do_not_overflow() {
        let l = Ledger::new(None, vec![]);
        for _ in 0..20 {
            l.reserve(7, i64::MAX).unwrap().commit(Some(i64::MAX));
        }
        assert_eq!(l.spent(7), i64::MAX);
        let capped = Ledger::new(Some(MAX_MICROS), vec![]);
        let r = capped.reserve(0, i64::MAX).unwrap();
        assert_eq!(r.micros(), MAX_MICROS);
        assert!(capped.reserve(0, 1).is_err());
    }

    #[test]
    fn over_cap_json() {
        let o = OverCap {
            cap_micros: 500 * USD,
            spent_micros: 480 * USD,
            in_flight_micros: 15 * USD,
            requested_micros: 25_500_000,
            scope: "host api.stripe.com".into(),
        };
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"scope":"host api.stripe.com","cap":"500.00","spent":"480.00","in_flight":"15.00","requested":"25.50"}"#
        );
    }

    #[test]
    fn from_policy_caps() {
        let p = Policy::parse(
            r#"
[run]
name = "billing-agent"
spend_cap_usd = 1000.005

[[host]]
name = "api.stripe.com"
spend_cap_usd = 500

  [[host.rule]]
  method = "POST"
  path = "/v1/payment_intents"
  action = "allow"
  cost = { form_field = "amount", divide_by = 100 }

[[host]]
name = "api.github.com"
action = "allow"
"#,
            Path::new("policy.toml"),
        )
        .unwrap();
        let l = Ledger::from_policy(&p).unwrap();
        let snap = l.snapshot();
        assert_eq!(snap[0].cap_micros, Some(1_000_005_000));
        assert_eq!(snap[1].scope, "host api.stripe.com");
        assert_eq!(snap[1].cap_micros, Some(500 * USD));
        assert_eq!(snap.len(), 2);
        // The GitHub host has no cap of its own; the run's applies.
        l.reserve(1, 1000 * USD).unwrap().commit(None);
        assert_eq!(l.reserve(1, 5001).unwrap_err().scope, "run");
    }

    #[test]
    fn a_reload_keeps_what_was_spent_under_the_new_caps() {
        let parse = |text: &str| Policy::parse(text, Path::new("policy.toml")).unwrap();
        let old_policy = parse(
            "[run]\nspend_cap_usd = 100\n[[host]]\nname = \"api.stripe.com\"\nspend_cap_usd = 50\naction = \"allow\"\n",
        );
        let old = Ledger::from_policy(&old_policy).unwrap();
        old.reserve(0, 30 * USD).unwrap().commit(None);
        let in_flight = old.reserve(0, 5 * USD).unwrap();
        // The new policy puts another host first and lowers the cap.
        let new_policy = parse(
            "[run]\nspend_cap_usd = 100\n[[host]]\nname = \"api.openai.com\"\naction = \"allow\"\n[[host]]\nname = \"api.stripe.com\"\nspend_cap_usd = 40\naction = \"allow\"\n",
        );
        let new = Ledger::carried_over(&new_policy, &old).unwrap();
        drop(in_flight);
        // $30 spent and $5 in flight count against the new $40 cap.
        assert_eq!(new.spent(1), 35 * USD);
        assert_eq!(
            new.reserve(1, 6 * USD).unwrap_err().scope,
            "host api.stripe.com"
        );
        assert!(new.reserve(1, 5 * USD).is_ok());
        assert_eq!(new.run_spent(), 35 * USD);
    }

    /// 200 threads released together, each reserving $0.07 with $10.00 of
    /// headroom left: exactly 142 fit ($9.94), never 143.
    #[test]
    fn concurrent_threads_never_overshoot() {
        for round in 0..5 {
            let l = Ledger::new(
                Some(1000 * USD),
                vec![("api.stripe.com".into(), Some(500 * USD))],
            );
            l.reserve(0, 490 * USD).unwrap().commit(None);
            let barrier = Barrier::new(200);
            let ok = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for i in 0..200 {
                    let (l, barrier, ok) = (&l, &barrier, &ok);
                    s.spawn(move || {
                        barrier.wait();
                        if let Ok(r) = l.reserve(0, 70_000) {
                            ok.fetch_add(1, Ordering::Relaxed);
                            std::thread::yield_now();
                            // Half commit the reserved amount, half an
                            // identical actual cost.
                            if (i + round) % 2 == 0 {
                                r.commit(None);
                            } else {
                                r.commit(Some(70_000));
                            }
                        }
                    });
                }
            });
            assert_eq!(ok.load(Ordering::Relaxed), 142);
            assert_eq!(l.spent(0), 499_940_000);
            assert_eq!(l.run_spent(), 499_940_000);
            assert_eq!(l.in_flight(), 0);
        }
    }

    /// 200 tokio tasks on several worker threads, holding their reservation
    /// across an await; every 5th is refused by the vendor three times and
    /// releases; the others retry until they commit or the cap is full.
    /// Whatever the interleaving, spent never passes the cap and ends at
    /// exactly 99 calls.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_tasks_never_overshoot() {
        let l = Ledger::new(Some(100 * USD), vec![("api.stripe.com".into(), None)]);
        l.reserve(0, 99 * USD).unwrap().commit(None);
        let committed = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(Mutex::new(0i64));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (l, committed, peak) = (l.clone(), committed.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let mut tries = 0;
                loop {
                    tries += 1;
                    if i % 5 == 0 && tries > 3 {
                        return;
                    }
                    let Ok(r) = l.reserve(0, 10_001) else {
                        // Only in-flight reservations being released could
                        // make room; once nothing is in flight, give up.
                        if l.run_spent() + 10_001 > 100 * USD {
                            return;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    };
                    {
                        let mut p = peak.lock().unwrap();
                        *p = (*p).max(l.run_spent() + l.in_flight());
                    }
                    tokio::task::yield_now().await;
                    if i % 5 == 0 {
                        r.release();
                    } else {
                        r.commit(None);
                        committed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = committed.load(Ordering::Relaxed) as i64;
        // $1.00 of headroom holds 99 calls of $0.010001.
        assert_eq!(n, 99);
        assert_eq!(l.run_spent(), 99 * USD + n * 10_001);
        assert!(l.run_spent() <= 100 * USD);
        assert!(*peak.lock().unwrap() <= 100 * USD);
        assert_eq!(l.in_flight(), 0);
    }
}
