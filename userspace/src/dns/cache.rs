//! The run's cache of what upstream said, shared by the agent's queries and
//! the proxy's own lookups: addresses for their TTL, NXDOMAIN and NODATA for
//! the zone's negative TTL (see [`super::upstream`]), failures (timeouts,
//! SERVFAIL and other error codes, unreachable servers) for
//! [`FAILURE_TTL`]; at most [`MAX_ENTRIES`] entries; and one upstream query
//! at a time per name and type, however many callers wait for it.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use hickory_proto::rr::RecordType;
use tokio::sync::OnceCell;

use super::{error::Failure, upstream::Answer};

/// How long a failed lookup is remembered: retries within this time are
/// answered at once instead of waiting for upstream again (RFC 9520 asks
/// for at least 1 s and at most 5 min).
pub const FAILURE_TTL: Duration = Duration::from_secs(5);
/// Most (name, type) entries kept. Only names the policy allows (and the
/// wildcard budget admits) are ever looked up, so a run rarely gets near.
pub const MAX_ENTRIES: usize = 4096;

/// What one upstream lookup of a name and type came to.
pub type Outcome = Result<Answer, Failure>;
type Key = (String, RecordType);

/// An outcome, how long it stays valid, and whether it came from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub outcome: Outcome,
    /// Time left before upstream is asked again (zero: not kept).
    pub left: Duration,
    /// Answered from the cache, without asking upstream.
    pub cached: bool,
}

#[derive(Debug, Default)]
pub struct Cache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, (Outcome, Instant)>,
    /// Lookups under way; latecomers wait for the same one.
    pending: HashMap<Key, Arc<OnceCell<Outcome>>>,
}

/// How long `outcome` may be reused; None for what was decided without
/// asking upstream (no server, a bad name: nothing to spare).
fn lifetime(outcome: &Outcome) -> Option<Duration> {
    match outcome {
        Ok(answer) => Some(Duration::from_secs(u64::from(answer.ttl()))),
        Err(Failure::Timeout { .. } | Failure::Rcode { .. } | Failure::Unreachable { .. }) => {
            Some(FAILURE_TTL)
        }
        Err(_) => None,
    }
}

impl Inner {
    fn fresh(&self, key: &Key, now: Instant) -> Option<Hit> {
        let (outcome, expires) = self.entries.get(key)?;
        let left = expires.checked_duration_since(now)?;
        (!left.is_zero()).then(|| Hit {
            outcome: outcome.clone(),
            left,
            cached: true,
        })
    }

    fn insert(&mut self, key: Key, outcome: Outcome, expires: Instant, now: Instant) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, exp)| *exp > now);
            if self.entries.len() >= MAX_ENTRIES
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, exp))| *exp)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (outcome, expires));
    }
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached outcome for `name` and `rtype`, while it is fresh.
    pub fn peek(&self, name: &str, rtype: RecordType) -> Option<Hit> {
        self.lock()
            .fresh(&(name.to_string(), rtype), Instant::now())
    }

    /// The outcome for `name` and `rtype`: the cached one while fresh, else
    /// what `ask` finds, asked once for all the callers waiting at the time
    /// (if the one asking gives up, the next waiter asks).
    pub async fn get_or_ask<F, Fut>(&self, name: &str, rtype: RecordType, ask: F) -> Hit
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let key = (name.to_string(), rtype);
        let cell = {
            let mut inner = self.lock();
            if let Some(hit) = inner.fresh(&key, Instant::now()) {
                return hit;
            }
            Arc::clone(inner.pending.entry(key.clone()).or_default())
        };
        let outcome = cell.get_or_init(ask).await.clone();
        let life = lifetime(&outcome);
        let mut inner = self.lock();
        if inner
            .pending
            .get(&key)
            .is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            inner.pending.remove(&key);
            if let Some(life) = life {
                let now = Instant::now();
                inner.insert(key, outcome.clone(), now + life, now);
            }
        }
        Hit {
            outcome,
            left: life.unwrap_or_default(),
            cached: false,
        }
    }

    /// Entries kept and lookups under way (for tests and status).
    pub fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use hickory_proto::op::ResponseCode;

    use super::*;

    fn server() -> SocketAddr {
        "10.0.0.53:53".parse().unwrap()
    }

    fn servfail() -> Outcome {
        Err(Failure::Rcode {
            server: server(),
            rcode: ResponseCode::ServFail,
        })
    }

    #[tokio::test]
    async fn failures_are_remembered_for_a_few_seconds() {
        let cache = Cache::default();
        let asked = AtomicUsize::new(0);
        let ask = || async {
            asked.fetch_add(1, Ordering::SeqCst);
            servfail()
        };
        let first = cache.get_or_ask("a.test", RecordType::A, ask).await;
        assert!(!first.cached);
        assert_eq!(first.left, FAILURE_TTL);
        let second = cache.get_or_ask("a.test", RecordType::A, ask).await;
        assert!(second.cached);
        assert_eq!(second.outcome, servfail());
        assert!(second.left <= FAILURE_TTL && !second.left.is_zero());
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Another type of the same name is its own entry.
        cache.get_or_ask("a.test", RecordType::AAAA, ask).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // What was decided without asking upstream is not kept.
        let none = cache
            .get_or_ask("b.test", RecordType::A, || async {
                Err(Failure::NoUpstream)
            })
            .await;
        assert_eq!(none.left, Duration::ZERO);
        assert!(cache.peek("b.test", RecordType::A).is_none());
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_upstream_query() {
        let cache = Arc::new(Cache::default());
        let asked = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, asked, mut wait) = (Arc::clone(&cache), Arc::clone(&asked), wait.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_ask("a.test", RecordType::A, || async move {
                        asked.fetch_add(1, Ordering::SeqCst);
                        let _ = wait.wait_for(|go| *go).await;
                        servfail()
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        let _ = release.send(true);
        for t in tasks {
            assert_eq!(t.await.unwrap().outcome, servfail());
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(cache.len(), (1, 0));
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let cache = Cache::default();
        for i in 0..MAX_ENTRIES + 100 {
            cache
                .get_or_ask(&format!("n{i}.test"), RecordType::A, || async {
                    servfail()
                })
                .await;
        }
        assert_eq!(cache.len(), (MAX_ENTRIES, 0));
        // The newest entry is kept.
        assert!(
            cache
                .peek(&format!("n{}.test", MAX_ENTRIES + 99), RecordType::A)
                .is_some()
        );
    }
}
