//! Rate limits (`rate = "60/min"`: token buckets) and call counts
//! (`max_calls`), per host and per rule, for one run.
//!
//! A bucket holds `count` tokens and refills `count` per `per`, smoothly
//! (one token every `per / count`), starting full. A call is admitted only
//! when every limit that applies admits it (the host's and the matched
//! rule's), and only then does it take a token and count against
//! `max_calls` everywhere: a refusal by one limit consumes nothing from the
//! others. The clock is a parameter ([`RateLimiter::check_at`]), so tests
//! do not sleep.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::policy::{Policy, Rate};

/// A call refused by a rate limit or a call count: 429, with `Retry-After`
/// when waiting helps. Serializes as `{"scope": "host api.stripe.com",
/// "limit": "60/min", "retry_after_secs": 1}` (`null` for `max_calls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// `host api.stripe.com` or `rule 2 of api.stripe.com (POST /v1/payment_intents)`.
    pub scope: String,
    /// `60/min` or `max_calls 100`.
    pub limit: String,
    /// When the next call would be admitted; `None` for `max_calls`
    /// (no more calls this run).
    pub retry_after: Option<Duration>,
}

impl Limited {
    /// Whole seconds for a `Retry-After` header (rounded up, at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            secs.max(1)
        })
    }
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after_secs() {
            Some(s) => write!(
                f,
                "rate limit {} for {} reached; retry in {s}s",
                self.limit, self.scope
            ),
            None => write!(
                f,
                "{} for {} reached; no more calls this run",
                self.limit, self.scope
            ),
        }
    }
}

impl Serialize for Limited {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Limited", 3)?;
        st.serialize_field("scope", &self.scope)?;
        st.serialize_field("limit", &self.limit)?;
        st.serialize_field("retry_after_secs", &self.retry_after_secs())?;
        st.end()
    }
}

/// A token bucket in exact integer arithmetic: the level is in units of
/// `1 / per_nanos` tokens, so refilling adds `elapsed_nanos * count` and a
/// call costs `per_nanos`.
#[derive(Debug, Clone)]
struct Bucket {
    rate: Rate,
    level: u128,
    /// `None` until the first call: the bucket starts full.
    last: Option<Instant>,
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        let mut b = Self {
            rate,
            level: 0,
            last: None,
        };
        b.level = b.full();
        b
    }

    fn per(&self) -> u128 {
        self.rate.per.as_nanos()
    }

    fn full(&self) -> u128 {
        u128::from(self.rate.count).saturating_mul(self.per())
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_nanos();
            let add = elapsed.saturating_mul(u128::from(self.rate.count));
            self.level = self.level.saturating_add(add).min(self.full());
        }
        // Never move backwards if a caller's clock does.
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// `Ok` if a token is there; else how long until one is.
    fn admits(&self) -> Result<(), Duration> {
        let per = self.per();
        if self.level >= per {
            return Ok(());
        }
        let deficit = per - self.level;
        let count = u128::from(self.rate.count.max(1));
        let nanos = deficit.div_ceil(count);
        Err(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    fn take(&mut self) {
        self.level = self.level.saturating_sub(self.per());
    }
}

#[derive(Debug)]
struct Limits {
    scope: String,
    /// What the limit belongs to, the same across policy versions
    /// (`host NAME`, or `NAME METHODS PATH` for a rule).
    identity: String,
    bucket: Option<Bucket>,
    max_calls: Option<u64>,
    calls: u64,
}

impl Limits {
    fn new(scope: String, identity: String, rate: Option<Rate>, max_calls: Option<u64>) -> Self {
        Self {
            scope,
            identity,
            bucket: rate.map(Bucket::new),
            max_calls,
            calls: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.bucket.is_none() && self.max_calls.is_none()
    }

    /// Takes over what `old` counted: its calls (against the new
    /// `max_calls`), and its bucket's level when the rate is the same.
    fn carry(&mut self, old: &Self) {
        self.calls = old.calls;
        if let (Some(new), Some(prev)) = (&mut self.bucket, &old.bucket)
            && new.rate == prev.rate
        {
            *new = prev.clone();
        }
    }

    /// Refills, then says whether this scope admits a call (consuming
    /// nothing).
    fn check(&mut self, now: Instant) -> Result<(), Limited> {
        if let Some(max) = self.max_calls
            && self.calls >= max
        {
            return Err(Limited {
                scope: self.scope.clone(),
                limit: format!("max_calls {max}"),
                retry_after: None,
            });
        }
        if let Some(b) = &mut self.bucket {
            b.refill(now);
            if let Err(wait) = b.admits() {
                return Err(Limited {
                    scope: self.scope.clone(),
                    limit: b.rate.to_string(),
                    retry_after: Some(wait),
                });
            }
        }
        Ok(())
    }

    fn consume(&mut self) {
        self.calls = self.calls.saturating_add(1);
        if let Some(b) = &mut self.bucket {
            b.take();
        }
    }
}

#[derive(Debug)]
struct HostLimits {
    host: Limits,
    rules: Vec<Limits>,
}

/// The run's rate limits and call counts. Share it (`Arc`) between tasks.
#[derive(Debug)]
pub struct RateLimiter {
    hosts: Mutex<Vec<HostLimits>>,
}

impl RateLimiter {
    /// Limits from each host's and each rule's `rate` and `max_calls`,
    /// indexed as in `policy.hosts` and `host.rules`.
    pub fn from_policy(policy: &Policy) -> Self {
        let hosts = policy
            .hosts
            .iter()
            .map(|h| HostLimits {
                host: Limits::new(
                    format!("host {}", h.name),
                    format!("host {}", h.name),
                    h.rate,
                    h.max_calls,
                ),
                rules: h
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let scope =
                            format!("rule {} of {} ({} {})", i + 1, h.name, r.methods, r.path);
                        let identity = format!("{} {} {}", h.name, r.methods, r.path);
                        Limits::new(scope, identity, r.rate, r.max_calls)
                    })
                    .collect(),
            })
            .collect();
        Self {
            hosts: Mutex::new(hosts),
        }
    }

    /// The limits of a reloaded `policy`, carrying over what `old` counted
    /// for the hosts and rules both versions have (by host name, and by
    /// host, methods and path): a reload never hands out fresh calls.
    pub fn carried_over(policy: &Policy, old: &Self) -> Self {
        let new = Self::from_policy(policy);
        {
            let old_hosts = old.lock();
            let mut new_hosts = new.lock();
            for nh in new_hosts.iter_mut() {
                let Some(oh) = old_hosts
                    .iter()
                    .find(|o| o.host.identity == nh.host.identity)
                else {
                    continue;
                };
                nh.host.carry(&oh.host);
                for nr in &mut nh.rules {
                    if let Some(or) = oh.rules.iter().find(|r| r.identity == nr.identity) {
                        nr.carry(or);
                    }
                }
            }
        }
        new
    }

    /// Whether any host or rule has a limit (if not, `check` always admits).
    pub fn is_empty(&self) -> bool {
        self.lock()
            .iter()
            .all(|h| h.host.is_empty() && h.rules.iter().all(Limits::is_empty))
    }

    /// [`RateLimiter::check_at`] now.
    pub fn check(&self, host: usize, rule: Option<usize>) -> Result<(), Limited> {
        self.check_at(host, rule, Instant::now())
    }

    /// Admits a call to `host` (index in `policy.hosts`) matching `rule`
    /// (index in that host's rules; `None` for a host without rules) at
    /// `now`, consuming a token and a call from every limit that applies,
    /// or refuses it consuming nothing. When several limits refuse, a
    /// `max_calls` refusal is reported first, else the rate with the
    /// longest wait. Unknown indices have no limits.
    pub fn check_at(&self, host: usize, rule: Option<usize>, now: Instant) -> Result<(), Limited> {
        let mut hosts = self.lock();
        let Some(h) = hosts.get_mut(host) else {
            return Ok(());
        };
        let HostLimits { host: hl, rules } = h;
        let mut rl = rule.and_then(|r| rules.get_mut(r));
        let mut refusals: Vec<Limited> = Vec::new();
        if let Err(l) = hl.check(now) {
            refusals.push(l);
        }
        if let Some(r) = rl.as_deref_mut()
            && let Err(l) = r.check(now)
        {
            refusals.push(l);
        }
        // Report the most telling refusal: a spent call count, else the
        // longest wait (so the retry is not refused by the other limit).
        let worst = refusals
            .into_iter()
            .max_by_key(|l| l.retry_after.map_or((1, Duration::ZERO), |d| (0, d)));
        if let Some(l) = worst {
            return Err(l);
        }
        hl.consume();
        if let Some(rl) = rl {
            rl.consume();
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<HostLimits>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn limiter(text: &str) -> RateLimiter {
        RateLimiter::from_policy(&Policy::parse(text, Path::new("policy.toml")).unwrap())
    }

    const POLICY: &str = r#"
[[host]]
name = "api.stripe.com"
rate = "3/min"
max_calls = 100

  [[host.rule]]
  method = "GET"
  path = "/v1/customers/*"
  action = "allow"

  [[host.rule]]
  method = "POST"
  path = "/v1/payment_intents"
  action = "allow"
  rate = "1/s"
  max_calls = 2

[[host]]
name = "api.openai.com"
action = "allow"
rate = "2/s"

[[host]]
name = "pypi.org"
action = "allow"
"#;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn bucket_refills_with_a_fake_clock() {
        let l = limiter(POLICY);
        let t0 = Instant::now();
        // Starts full: 3 calls at once, the 4th waits 20 s (one token per 20 s).
        for _ in 0..3 {
            assert_eq!(l.check_at(0, Some(0), t0), Ok(()));
        }
        let e = l.check_at(0, Some(0), t0).unwrap_err();
        assert_eq!(
            e,
            Limited {
                scope: "host api.stripe.com".into(),
                limit: "3/min".into(),
                retry_after: Some(secs(20.0)),
            }
        );
        assert_eq!(e.retry_after_secs(), Some(20));
        assert_eq!(
            e.to_string(),
            "rate limit 3/min for host api.stripe.com reached; retry in 20s"
        );
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"scope":"host api.stripe.com","limit":"3/min","retry_after_secs":20}"#
        );
        // 15 s later: 5 s to go.
        let e = l.check_at(0, Some(0), t0 + secs(15.0)).unwrap_err();
        assert_eq!(e.retry_after, Some(secs(5.0)));
        // 20 s: one token, exactly.
        assert_eq!(l.check_at(0, Some(0), t0 + secs(20.0)), Ok(()));
        assert!(l.check_at(0, Some(0), t0 + secs(20.0)).is_err());
        // A long pause refills to capacity, not beyond.
        let t1 = t0 + secs(3600.0);
        for _ in 0..3 {
            assert_eq!(l.check_at(0, Some(0), t1), Ok(()));
        }
        assert!(l.check_at(0, Some(0), t1).is_err());
        // A clock going backwards neither panics nor refills.
        assert!(l.check_at(0, Some(0), t0).is_err());
        // Another host has its own bucket; a host without limits admits.
        assert_eq!(l.check_at(1, None, t0), Ok(()));
        assert_eq!(l.check_at(1, None, t0), Ok(()));
        let e = l.check_at(1, None, t0).unwrap_err();
        assert_eq!(e.retry_after, Some(secs(0.5)));
        assert_eq!(e.retry_after_secs(), Some(1));
        for _ in 0..100 {
            assert_eq!(l.check_at(2, None, t0), Ok(()));
        }
        // Unknown indices have no limits.
        assert_eq!(l.check_at(99, Some(5), t0), Ok(()));
        assert_eq!(l.check_at(0, Some(99), t1 + secs(60.0)), Ok(()));
    }

    #[test]
    fn rule_limits_and_max_calls() {
        let l = limiter(POLICY);
        let t0 = Instant::now();
        assert_eq!(l.check_at(0, Some(1), t0), Ok(()));
        // The rule's 1/s refuses; the host's bucket keeps its tokens.
        let e = l.check_at(0, Some(1), t0).unwrap_err();
        assert_eq!(
            e.scope,
            "rule 2 of api.stripe.com (POST /v1/payment_intents)"
        );
        assert_eq!(e.limit, "1/s");
        assert_eq!(l.check_at(0, Some(0), t0), Ok(()));
        assert_eq!(l.check_at(0, Some(0), t0), Ok(()));
        // Host bucket now empty (3 used): the rule call is refused by the host.
        let e = l.check_at(0, Some(1), t0 + secs(1.0)).unwrap_err();
        assert_eq!(e.scope, "host api.stripe.com");
        // Still one rule token: after the host refills, the rule admits.
        assert_eq!(l.check_at(0, Some(1), t0 + secs(20.0)), Ok(()));
        // max_calls 2 on the rule: the third is refused for the rest of the run.
        let e = l.check_at(0, Some(1), t0 + secs(600.0)).unwrap_err();
        assert_eq!(
            e,
            Limited {
                scope: "rule 2 of api.stripe.com (POST /v1/payment_intents)".into(),
                limit: "max_calls 2".into(),
                retry_after: None,
            }
        );
        assert_eq!(
            e.to_string(),
            "max_calls 2 for rule 2 of api.stripe.com (POST /v1/payment_intents) reached; no more calls this run"
        );
        assert_eq!(
            serde_json::to_value(&e).unwrap()["retry_after_secs"],
            serde_json::Value::Null
        );
        // ...and consumed nothing from the host: 3 tokens are there.
        let t = t0 + secs(600.0);
        for _ in 0..3 {
            assert_eq!(l.check_at(0, Some(0), t), Ok(()));
        }
    }

    #[test]
    fn a_reload_never_hands_out_fresh_calls() {
        let old = limiter(POLICY);
        let t0 = Instant::now();
        let late = t0 + secs(600.0);
        assert_eq!(old.check_at(0, Some(1), t0), Ok(()));
        assert_eq!(old.check_at(0, Some(1), late), Ok(()));
        // The reloaded policy puts a rule before the capped one: indices
        // move, the count stays with the rule (host, methods, path).
        let reloaded = POLICY.replacen(
            "[[host.rule]]",
            "[[host.rule]]\n  method = \"DELETE\"\n  path = \"/v1/x\"\n  action = \"deny\"\n\n  [[host.rule]]",
            1,
        );
        let p = Policy::parse(&reloaded, Path::new("policy.toml")).unwrap();
        let new = RateLimiter::carried_over(&p, &old);
        let e = new.check_at(0, Some(2), late + secs(600.0)).unwrap_err();
        assert_eq!(e.limit, "max_calls 2", "{e}");
        // A limit the old policy did not have starts fresh.
        assert_eq!(new.check_at(0, Some(0), late), Ok(()));
    }

    #[test]
    fn host_max_calls_counts_every_rule() {
        let l = limiter(
            r#"
[[host]]
name = "api.example.com"
max_calls = 3

  [[host.rule]]
  method = "GET"
  path = "/a"
  action = "allow"
  rate = "1/day"

  [[host.rule]]
  method = "GET"
  path = "/b"
  action = "allow"
"#,
        );
        assert!(!l.is_empty());
        let t0 = Instant::now();
        assert_eq!(l.check_at(0, Some(0), t0), Ok(()));
        // Refused by the rule's rate: not counted against the host's max.
        assert!(l.check_at(0, Some(0), t0).is_err());
        assert_eq!(l.check_at(0, Some(1), t0), Ok(()));
        assert_eq!(l.check_at(0, Some(1), t0), Ok(()));
        let e = l.check_at(0, Some(1), t0).unwrap_err();
        assert_eq!(
            (e.scope.as_str(), e.limit.as_str()),
            ("host api.example.com", "max_calls 3")
        );
        // Both refuse: the call count (final) is reported, not the wait.
        let e = l.check_at(0, Some(0), t0).unwrap_err();
        assert_eq!(e.limit, "max_calls 3");
    }

    #[test]
    fn longest_wait_is_reported() {
        let l = limiter(
            r#"
[[host]]
name = "api.example.com"
rate = "1/s"

  [[host.rule]]
  method = "GET"
  path = "/a"
  action = "allow"
  rate = "1/min"
"#,
        );
        let t0 = Instant::now();
        assert_eq!(l.check_at(0, Some(0), t0), Ok(()));
        let e = l.check_at(0, Some(0), t0).unwrap_err();
        assert_eq!(e.limit, "1/min");
        assert_eq!(e.retry_after, Some(secs(60.0)));
    }

    #[test]
    fn no_limits() {
        let l = limiter("[[host]]\nname = \"pypi.org\"\naction = \"allow\"\n");
        assert!(l.is_empty());
        assert_eq!(l.check(0, None), Ok(()));
    }

    #[test]
    fn extreme_rates_do_not_panic() {
        let mut b = Bucket::new(Rate {
            count: u64::MAX,
            per: Duration::MAX,
        });
        let t0 = Instant::now();
        b.refill(t0);
        assert!(b.admits().is_ok());
        b.take();
        b.refill(t0 + Duration::from_secs(1));
        let mut z = Bucket::new(Rate {
            count: 1,
            per: Duration::ZERO,
        });
        z.refill(t0);
        assert!(z.admits().is_ok());
        z.take();
        assert!(z.admits().is_ok());
    }
}
