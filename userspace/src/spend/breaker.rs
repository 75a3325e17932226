//! The loop breaker: the same call (method, path and query, body) repeated
//! `threshold` times within `window` trips, and every identical call is
//! then refused (429) until a human resets it or `window` passes after the
//! last attempt. Different calls are never slowed by it.
//!
//! Calls are identified by a keyed hash (SipHash with this process's
//! random keys), so an agent cannot craft distinct calls that collide, and
//! the breaker keeps no request bodies. Semantics in `docs/spend.md`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::ser::{Serialize, SerializeStruct, Serializer};

/// Default: the 20th identical call within 60 s trips.
pub const DEFAULT_THRESHOLD: u32 = 20;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Thresholds are kept within this range (a threshold of 1 would refuse
/// every call; a huge one would only cost memory).
const MIN_THRESHOLD: u32 = 2;
const MAX_THRESHOLD: u32 = 10_000;

/// Distinct calls remembered at most; beyond this, the least recently
/// seen untripped ones are forgotten.
const MAX_ENTRIES: usize = 100_000;

/// Longest method or path kept for [`LoopBreaker::tripped`].
const MAX_SHOWN: usize = 200;

/// A call refused because the breaker for it is tripped: 429. Serializes
/// as `{"key": "3fa9c1d2e4b5", "count": 20, "threshold": 20,
/// "window_secs": 60}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tripped {
    /// Short id of the call, for `reset`.
    pub key: String,
    /// Identical calls within the window when it tripped, plus every
    /// refused attempt since (this one included).
    pub count: u64,
    pub threshold: u32,
    pub window: Duration,
}

impl fmt::Display for Tripped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loop breaker {} tripped: the same call (method, path, body) was made {} times \
             within {}s; identical calls are refused until a human resets it or {}s pass \
             without one",
            self.key,
            self.count,
            self.window.as_secs(),
            self.window.as_secs(),
        )
    }
}

impl Serialize for Tripped {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Tripped", 4)?;
        st.serialize_field("key", &self.key)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("threshold", &self.threshold)?;
        st.serialize_field("window_secs", &self.window.as_secs())?;
        st.end()
    }
}

/// A tripped breaker, for `enforcer status` and the reset command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrippedKey {
    pub key: String,
    pub method: String,
    /// Path and query as sent (cut at 200 characters).
    pub path: String,
    /// As in [`Tripped::count`].
    pub count: u64,
}

#[derive(Debug)]
struct Trip {
    method: String,
    path: String,
}

#[derive(Debug)]
struct Entry {
    /// Times of the recent identical calls (at most `threshold`).
    times: VecDeque<Instant>,
    /// Once tripped: identical calls in the window at the trip plus
    /// refused attempts since.
    count: u64,
    last: Instant,
    tripped: Option<Trip>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<u64, Entry>,
    prune_above: usize,
}

/// Loop breaker for one run. Share it (`Arc`) between tasks.
#[derive(Debug)]
pub struct LoopBreaker {
    threshold: u32,
    window: Duration,
    keys: RandomState,
    state: Mutex<State>,
}

impl Default for LoopBreaker {
    fn default() -> Self {
        Self::new(DEFAULT_THRESHOLD, DEFAULT_WINDOW)
    }
}

/// `3fa9c1d2e4b5`: 48 bits of the call's 64-bit hash.
fn key_id(hash: u64) -> String {
    format!("{:012x}", hash >> 16)
}

fn shown(text: &str) -> String {
    text.chars()
        .take(MAX_SHOWN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl LoopBreaker {
    /// `(threshold, window)` as given to [`LoopBreaker::new`] (after clamping).
    pub fn settings(&self) -> (u32, Duration) {
        (self.threshold, self.window)
    }

    /// The `threshold`-th identical call within `window` trips (threshold
    /// kept within 2..=10000).
    pub fn new(threshold: u32, window: Duration) -> Self {
        Self {
            threshold: threshold.clamp(MIN_THRESHOLD, MAX_THRESHOLD),
            window,
            keys: RandomState::new(),
            state: Mutex::new(State {
                entries: HashMap::new(),
                prune_above: 1024,
            }),
        }
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// [`LoopBreaker::observe_at`] now.
    pub fn observe(&self, method: &str, path: &str, body: &[u8]) -> Result<(), Tripped> {
        self.observe_at(method, path, body, Instant::now())
    }

    /// Records a call (`path` is the request target: path and query) at
    /// `now`. `Err` when this call trips the breaker (the `threshold`-th
    /// identical call within `window`) or it is already tripped; every
    /// refused attempt extends the trip by `window`.
    pub fn observe_at(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now: Instant,
    ) -> Result<(), Tripped> {
        let hash = self.hash(method, path, body);
        let mut st = self.lock();
        self.prune(&mut st, now);
        let entry = st.entries.entry(hash).or_insert_with(|| Entry {
            times: VecDeque::new(),
            count: 0,
            last: now,
            tripped: None,
        });
        let quiet = now.saturating_duration_since(entry.last) >= self.window;
        if quiet {
            // A whole window without this call: a fresh start.
            entry.times.clear();
            entry.count = 0;
            entry.tripped = None;
        }
        entry.last = entry.last.max(now);
        entry.count = entry.count.saturating_add(1);
        let refuse = |count| Tripped {
            key: key_id(hash),
            count,
            threshold: self.threshold,
            window: self.window,
        };
        if entry.tripped.is_some() {
            return Err(refuse(entry.count));
        }
        while let Some(&t) = entry.times.front() {
            if now.saturating_duration_since(t) >= self.window {
                entry.times.pop_front();
            } else {
                break;
            }
        }
        entry.times.push_back(now);
        let threshold = usize::try_from(self.threshold).unwrap_or(usize::MAX);
        while entry.times.len() > threshold {
            entry.times.pop_front();
        }
        if entry.times.len() >= threshold {
            entry.count = u64::try_from(entry.times.len()).unwrap_or(u64::MAX);
            entry.tripped = Some(Trip {
                method: shown(method),
                path: shown(path),
            });
            entry.times.clear();
            tracing::warn!(
                key = %key_id(hash),
                method = %shown(method),
                path = %shown(path),
                threshold = self.threshold,
                window_secs = self.window.as_secs(),
                "loop breaker tripped"
            );
            return Err(refuse(entry.count));
        }
        Ok(())
    }

    /// Resets one breaker by its key id (as in [`Tripped::key`]); the call
    /// starts counting afresh. Returns whether that key was known.
    pub fn reset(&self, key: &str) -> bool {
        let key = key.trim().to_ascii_lowercase();
        let mut st = self.lock();
        let before = st.entries.len();
        st.entries.retain(|h, _| key_id(*h) != key);
        st.entries.len() != before
    }

    /// Resets every tripped breaker. Returns how many were tripped.
    pub fn reset_all(&self) -> usize {
        let mut st = self.lock();
        let before = st.entries.len();
        st.entries.retain(|_, e| e.tripped.is_none());
        before - st.entries.len()
    }

    /// The tripped breakers whose window has not passed, by key.
    pub fn tripped(&self) -> Vec<TrippedKey> {
        self.tripped_at(Instant::now())
    }

    pub fn tripped_at(&self, now: Instant) -> Vec<TrippedKey> {
        let st = self.lock();
        let mut out: Vec<TrippedKey> = st
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last) < self.window)
            .filter_map(|(h, e)| {
                e.tripped.as_ref().map(|t| TrippedKey {
                    key: key_id(*h),
                    method: t.method.clone(),
                    path: t.path.clone(),
                    count: e.count,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    fn hash(&self, method: &str, path: &str, body: &[u8]) -> u64 {
        let mut h = self.keys.build_hasher();
        for part in [method.as_bytes(), path.as_bytes(), body] {
            h.write_usize(part.len());
            h.write(part);
        }
        h.finish()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets calls not seen for a window (amortized: when the map has
    /// doubled), and the least recent untripped ones beyond MAX_ENTRIES.
    fn prune(&self, st: &mut State, now: Instant) {
        if st.entries.len() <= st.prune_above {
            return;
        }
        let window = self.window;
        st.entries
            .retain(|_, e| now.saturating_duration_since(e.last) < window);
        if st.entries.len() > MAX_ENTRIES {
            let mut lasts: Vec<(Instant, u64)> = st
                .entries
                .iter()
                .filter(|(_, e)| e.tripped.is_none())
                .map(|(h, e)| (e.last, *h))
                .collect();
            lasts.sort_unstable();
            let excess = st.entries.len() - MAX_ENTRIES / 2;
            for (_, h) in lasts.into_iter().take(excess) {
                st.entries.remove(&h);
            }
        }
        st.prune_above = (st.entries.len() * 2).max(1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"amount=1999&currency=usd";

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn trips_at_the_threshold_and_stays_tripped() {
        let b = LoopBreaker::default();
        assert_eq!((b.threshold(), b.window()), (20, s(60)));
        let t0 = Instant::now();
        for i in 0..19 {
            assert_eq!(
                b.observe_at("POST", "/v1/payment_intents", BODY, t0 + s(i)),
                Ok(())
            );
        }
        let e = b
            .observe_at("POST", "/v1/payment_intents", BODY, t0 + s(19))
            .unwrap_err();
        assert_eq!((e.count, e.threshold, e.window), (20, 20, s(60)));
        assert_eq!(e.key.len(), 12);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"key": e.key, "count": 20, "threshold": 20, "window_secs": 60})
        );
        assert!(e.to_string().contains("until a human resets it"), "{e}");
        // Tripped: refused, even spaced out, as long as attempts keep coming
        // within a window of each other.
        for i in 1..=5 {
            let r = b.observe_at("POST", "/v1/payment_intents", BODY, t0 + s(19 + 50 * i));
            assert_eq!(r.map_err(|e| e.count), Err(20 + i));
        }
        // Different body, path or method: a different call, not refused.
        assert_eq!(
            b.observe_at(
                "POST",
                "/v1/payment_intents",
                b"amount=2000&currency=usd",
                t0 + s(270)
            ),
            Ok(())
        );
        assert_eq!(
            b.observe_at("POST", "/v1/payment_intents?x=1", BODY, t0 + s(270)),
            Ok(())
        );
        assert_eq!(
            b.observe_at("PUT", "/v1/payment_intents", BODY, t0 + s(270)),
            Ok(())
        );
        assert_eq!(
            b.tripped_at(t0 + s(270)),
            vec![TrippedKey {
                key: e.key.clone(),
                method: "POST".into(),
                path: "/v1/payment_intents".into(),
                count: 25,
            }]
        );
    }

    #[test]
    fn calls_spread_beyond_the_window_do_not_trip() {
        let b = LoopBreaker::new(3, s(10));
        let t0 = Instant::now();
        // Two calls per 10 s forever: never 3 within a window.
        for i in 0..50 {
            assert_eq!(
                b.observe_at("GET", "/x", b"", t0 + s(6 * i)),
                Ok(()),
                "call {i}"
            );
        }
        // Third call within 10 s of two others trips.
        let t = t0 + s(6 * 50);
        assert_eq!(b.observe_at("GET", "/x", b"", t), Ok(()));
        assert!(b.observe_at("GET", "/x", b"", t + s(1)).is_err());
    }

    #[test]
    fn resets_by_key_and_by_window() {
        let b = LoopBreaker::new(3, s(60));
        let t0 = Instant::now();
        let trip = |t| {
            b.observe_at("POST", "/a", b"{}", t).unwrap();
            b.observe_at("POST", "/a", b"{}", t).unwrap();
            b.observe_at("POST", "/a", b"{}", t).unwrap_err()
        };
        let e = trip(t0);
        // A human resets it: the call is counted afresh.
        assert!(b.reset(&e.key.to_uppercase()));
        assert!(!b.reset("000000000000"));
        assert!(b.tripped_at(t0).is_empty());
        assert_eq!(b.observe_at("POST", "/a", b"{}", t0), Ok(()));
        assert_eq!(b.observe_at("POST", "/a", b"{}", t0), Ok(()));
        assert!(b.observe_at("POST", "/a", b"{}", t0).is_err());
        // Or a whole window passes without the call: reset by itself.
        assert!(b.observe_at("POST", "/a", b"{}", t0 + s(59)).is_err());
        assert_eq!(b.observe_at("POST", "/a", b"{}", t0 + s(59 + 60)), Ok(()));
        assert!(b.tripped_at(t0 + s(119)).is_empty());
        // reset_all.
        trip(t0 + s(500));
        b.observe_at("GET", "/b", b"", t0 + s(500)).unwrap();
        b.observe_at("GET", "/b", b"", t0 + s(500)).unwrap();
        b.observe_at("GET", "/b", b"", t0 + s(500)).unwrap_err();
        assert_eq!(b.tripped_at(t0 + s(500)).len(), 2);
        assert_eq!(b.reset_all(), 2);
        assert_eq!(b.observe_at("GET", "/b", b"", t0 + s(500)), Ok(()));
    }

    #[test]
    fn threshold_is_clamped_and_memory_bounded() {
        let b = LoopBreaker::new(0, s(60));
        assert_eq!(b.threshold(), 2);
        let t0 = Instant::now();
        assert!(b.observe_at("GET", "/", b"", t0).is_ok());
        assert!(b.observe_at("GET", "/", b"", t0).is_err());
        assert_eq!(LoopBreaker::new(u32::MAX, s(1)).threshold(), 10_000);

        let b = LoopBreaker::new(20, s(60));
        for i in 0..5000u32 {
            b.observe_at("GET", "/", &i.to_le_bytes(), t0).unwrap();
        }
        // After a window, old calls are forgotten on the next prune.
        for i in 0..5000u32 {
            b.observe_at("GET", "/x", &i.to_le_bytes(), t0 + s(61))
                .unwrap();
        }
        // Without pruning there would be 10000.
        assert!(b.lock().entries.len() <= 5000, "{}", b.lock().entries.len());
    }

    #[test]
    fn keys_are_per_process_random() {
        let (a, b) = (LoopBreaker::default(), LoopBreaker::default());
        assert_ne!(a.hash("GET", "/", b""), b.hash("GET", "/", b""));
        // Length prefixes keep fields apart.
        assert_ne!(a.hash("GET", "/ab", b"c"), a.hash("GET", "/a", b"bc"));
    }
}
