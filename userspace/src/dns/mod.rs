//! Name resolution. One [`Resolver`] per run serves two masters: the DNS
//! server the kernel sends the agent's queries to (which answers allowed
//! names with synthetic addresses), and the proxy (which dials allowed names
//! at their real addresses). Both go through the same cache (failures
//! included), the same wildcard budget and the same upstream servers, and
//! neither ever asks upstream about a name the policy does not allow.

pub mod answer;
pub mod budget;
pub mod cache;
pub mod config;
pub mod error;
#[cfg(test)]
pub(crate) mod fake;
pub mod names;
pub mod server;
pub mod upstream;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hickory_proto::rr::RecordType;

use crate::policy::Policy;
use budget::{Budget, BudgetError, Limits};
use cache::{Cache, Hit};
pub use error::{Failure, LookupError};
use names::NameMap;
use upstream::{Answer, Timeouts};

/// What can be wrong with the resolver's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid --resolve entry {0:?}: expected NAME=ADDRESS (e.g. api.example.com=10.0.0.5)")]
    BadStatic(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// Lower case, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The run's resolver. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Resolver {
    statics: HashMap<String, Vec<IpAddr>>,
    upstreams: Vec<SocketAddr>,
    timeouts: Timeouts,
    cache: Cache,
    budget: Budget,
    policy: arc_swap::ArcSwapOption<Policy>,
    /// Synthetic addresses handed to the agent.
    pub names: NameMap,
}

/// Parses `NAME=ADDR` entries (repeatable per name).
fn parse_statics<S: AsRef<str>>(
    entries: &[S],
) -> Result<HashMap<String, Vec<IpAddr>>, ResolveError> {
    let mut statics: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for e in entries {
        let e = e.as_ref();
        let (name, addr) = e
            .split_once('=')
            .ok_or_else(|| ResolveError::BadStatic(e.into()))?;
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| ResolveError::BadStatic(e.into()))?;
        let name = normalize(name.trim());
        if name.is_empty() {
            return Err(ResolveError::BadStatic(e.into()));
        }
        statics.entry(name).or_default().push(addr);
    }
    Ok(statics)
}

/// A failure with the name it is about, and whether it was remembered.
fn failed(name: &str, failure: Failure, hit: &Hit) -> LookupError {
    LookupError {
        name: name.to_string(),
        failure,
        retry_in: hit.left,
        cached: hit.cached,
    }
}

impl Resolver {
    /// A resolver that knows only `--resolve` entries (no upstream, no policy).
    pub fn with_statics<S: AsRef<str>>(entries: &[S]) -> Result<Self, ResolveError> {
        Ok(Self {
            statics: parse_statics(entries)?,
            ..Self::default()
        })
    }

    /// The run's resolver: static entries, upstream servers, wildcard limits,
    /// and the policy whose wildcards the budget applies to.
    pub fn new<S: AsRef<str>>(
        statics: &[S],
        upstreams: Vec<SocketAddr>,
        limits: Limits,
        policy: Arc<Policy>,
    ) -> Result<Self, ResolveError> {
        Ok(Self {
            statics: parse_statics(statics)?,
            upstreams,
            timeouts: Timeouts::default(),
            cache: Cache::default(),
            budget: Budget::new(limits),
            policy: arc_swap::ArcSwapOption::new(Some(policy)),
            names: NameMap::default(),
        })
    }

    /// The same with other upstream timeouts.
    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Puts a reloaded policy's wildcards in force for the budget.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        self.policy.store(Some(policy));
    }

    /// Checks a name against the wildcard budget when a wildcard governs it.
    pub fn admit(&self, name: &str) -> Result<(), BudgetError> {
        let Some(policy) = self.policy.load_full() else {
            return Ok(());
        };
        match policy.host(name) {
            Some(h) if h.pattern.is_wildcard() => {
                self.budget
                    .admit(name, h.pattern.as_str(), h.pattern.domain())
            }
            _ => Ok(()),
        }
    }

    /// Real addresses for `name` (both families), for dialing. An IP literal
    /// resolves to itself. A failure says which name, and why.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = normalize(name);
        if let Some(v) = self.statics.get(&name) {
            return Ok(v.clone());
        }
        self.admit(&name)
            .map_err(|e| LookupError::new(name.as_str(), Failure::Budget(e)))?;
        if self.upstreams.is_empty() {
            return Err(LookupError::new(name, Failure::NoUpstream));
        }
        let (a, aaaa) = tokio::join!(
            self.lookup_type(&name, RecordType::A),
            self.lookup_type(&name, RecordType::AAAA)
        );
        combine(&name, a, aaaa)
    }

    /// One record type from upstream, through the cache.
    async fn lookup_type(&self, name: &str, rtype: RecordType) -> Hit {
        self.cache
            .get_or_ask(name, rtype, || {
                upstream::query(&self.upstreams, name, rtype, self.timeouts)
            })
            .await
    }

    /// Answer-cache entries kept and upstream lookups under way.
    pub fn cache_len(&self) -> (usize, usize) {
        self.cache.len()
    }
}

/// One answer from the A and AAAA lookups of `name`: the name does not
/// exist if either says so; any address wins over the other's failure.
fn combine(name: &str, a: Hit, aaaa: Hit) -> Result<Vec<IpAddr>, LookupError> {
    for hit in [&a, &aaaa] {
        if let Ok(Answer::NxDomain { server, .. }) = &hit.outcome {
            return Err(failed(name, Failure::NxDomain { server: *server }, hit));
        }
    }
    let mut addrs = Vec::new();
    let mut failure = None;
    let mut nodata = None;
    for hit in [&a, &aaaa] {
        match &hit.outcome {
            Ok(Answer::Addresses {
                addrs: v, server, ..
            }) => {
                addrs.extend_from_slice(v);
                nodata.get_or_insert((*server, hit));
            }
            Ok(Answer::NxDomain { .. }) => {}
            Err(f) => {
                failure.get_or_insert((f.clone(), hit));
            }
        }
    }
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    match (failure, nodata) {
        (Some((f, hit)), _) => Err(failed(name, f, hit)),
        (None, Some((server, hit))) => Err(failed(name, Failure::NoAddress { server }, hit)),
        (None, None) => Err(LookupError::new(name, Failure::NoUpstream)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statics_and_literals_resolve_without_the_network() {
        let r =
            Resolver::with_statics(&["Vendor.Test.=10.231.0.2", "vendor.test=fd00::2"]).unwrap();
        let v = r.lookup("vendor.test").await.unwrap();
        assert_eq!(
            v,
            vec![
                "10.231.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert_eq!(
            r.lookup("127.0.0.1").await.unwrap(),
            vec![IpAddr::from([127, 0, 0, 1])]
        );
        assert!(Resolver::with_statics(&["nonsense"]).is_err());
        assert!(Resolver::with_statics(&["a=not-an-ip"]).is_err());
        assert!(matches!(
            r.lookup("other.test").await,
            Err(LookupError {
                failure: Failure::NoUpstream,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn the_budget_applies_to_names_under_wildcards_only() {
        let policy = Policy::parse(
            "[[host]]\nname = \"*.pypi.org\"\naction = \"allow\"\n\n[[host]]\nname = \"api.example.com\"\naction = \"allow\"\n",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        let limits = Limits {
            names_per_wildcard: 2,
            ..Limits::default()
        };
        let r = Resolver::new::<&str>(&[], Vec::new(), limits, Arc::new(policy)).unwrap();
        assert!(r.admit("a.pypi.org").is_ok());
        assert!(r.admit("b.pypi.org").is_ok());
        assert!(r.admit("c.pypi.org").is_err());
        for _ in 0..5 {
            assert!(r.admit("api.example.com").is_ok());
        }
        // The proxy's lookups are held to the same budget.
        assert!(matches!(
            r.lookup("d.pypi.org").await,
            Err(LookupError {
                failure: Failure::Budget(_),
                ..
            })
        ));
    }

    use std::time::Duration;

    use hickory_proto::op::ResponseCode;

    use super::fake::{Behaviour, FakeUpstream, resolver};

    #[tokio::test]
    async fn a_failed_lookup_says_which_name_failed_and_why() {
        let up = FakeUpstream::start(Behaviour::ServFail).await;
        let r = resolver(up.addr);
        let e = r.lookup("API.vendor.test.").await.unwrap_err();
        assert_eq!(e.name, "api.vendor.test");
        assert_eq!(
            e.failure,
            Failure::Rcode {
                server: up.addr,
                rcode: ResponseCode::ServFail
            }
        );
        assert_eq!(
            e.to_string(),
            format!(
                "DNS lookup of api.vendor.test failed: SERVFAIL from {}",
                up.addr
            )
        );

        up.set(Behaviour::NxDomain { soa_minimum: 60 });
        let e = resolver(up.addr)
            .lookup("api.vendor.test")
            .await
            .unwrap_err();
        assert_eq!(e.failure, Failure::NxDomain { server: up.addr });

        up.set(Behaviour::Addresses(Vec::new()));
        let e = resolver(up.addr)
            .lookup("api.vendor.test")
            .await
            .unwrap_err();
        assert_eq!(e.failure, Failure::NoAddress { server: up.addr });

        up.set(Behaviour::Silent);
        let e = resolver(up.addr)
            .lookup("api.vendor.test")
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "DNS lookup of api.vendor.test failed: no answer from {} within 200 ms (timeout)",
                up.addr
            )
        );

        // Nothing listens on the port: the kernel says so at once.
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let e = resolver(closed)
            .lookup("api.vendor.test")
            .await
            .unwrap_err();
        assert!(
            matches!(&e.failure, Failure::Unreachable { server, .. } if *server == closed),
            "{e}"
        );

        up.set(Behaviour::Addresses(vec!["10.0.0.7".parse().unwrap()]));
        assert_eq!(
            resolver(up.addr).lookup("api.vendor.test").await.unwrap(),
            vec!["10.0.0.7".parse::<IpAddr>().unwrap()]
        );
    }

    /// Issue 12: each retry of a failing allowed name waited for upstream
    /// again. Failures are remembered for a few seconds, for the agent's
    /// queries and the proxy's own lookups alike (one cache).
    #[tokio::test]
    async fn failures_are_remembered_so_retries_do_not_ask_upstream_again() {
        for behaviour in [Behaviour::ServFail, Behaviour::Silent] {
            let up = FakeUpstream::start(behaviour.clone()).await;
            let r = resolver(up.addr);
            let first = r.lookup("api.vendor.test").await.unwrap_err();
            assert!(!first.cached);
            assert_eq!(first.retry_in, cache::FAILURE_TTL);
            let asked = up.asked();
            assert_eq!(asked, 2, "{behaviour:?}: one query per type");
            for _ in 0..5 {
                let again = r.lookup("api.vendor.test").await.unwrap_err();
                assert_eq!(again.failure, first.failure);
                assert!(again.cached, "{behaviour:?}");
                assert!(again.retry_in <= cache::FAILURE_TTL && !again.retry_in.is_zero());
                assert!(
                    again
                        .to_string()
                        .contains("(remembered: upstream is asked again in")
                );
            }
            // The proxy dials through the same resolver.
            let dialed = crate::proxy::dial::dial(&r, "api.vendor.test", 443)
                .await
                .unwrap_err();
            assert!(dialed.dns().is_some_and(|e| e.cached), "{dialed}");
            assert_eq!(up.asked(), asked, "{behaviour:?}: nothing asked again");
        }
    }

    #[tokio::test]
    async fn nxdomain_is_remembered_for_the_soa_minimum() {
        let up = FakeUpstream::start(Behaviour::NxDomain { soa_minimum: 1 }).await;
        let r = resolver(up.addr);
        let e = r.lookup("api.vendor.test").await.unwrap_err();
        assert_eq!(e.retry_in, Duration::from_secs(1));
        r.lookup("api.vendor.test").await.unwrap_err();
        assert_eq!(up.asked(), 2);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        r.lookup("api.vendor.test").await.unwrap_err();
        assert_eq!(up.asked(), 4, "asked again once the SOA minimum is over");
    }

    /// Whatever the agent asks, the resolver keeps state only for names
    /// the policy allows and the wildcard budget admits.
    #[tokio::test]
    async fn names_the_agent_chooses_do_not_grow_the_resolver() {
        let up = FakeUpstream::start(Behaviour::ServFail).await;
        let r = resolver(up.addr);
        let ctx = super::fake::context(Arc::clone(&r));
        for i in 0..20_000 {
            let name = format!("n{i}.refused.test.");
            server::answer(&super::fake::query(&name, RecordType::A, true), &ctx).await;
        }
        for i in 0..300 {
            let name = format!("n{i}.cdn.vendor.test.");
            server::answer(&super::fake::query(&name, RecordType::A, true), &ctx).await;
        }
        // 64 wildcard names (the budget) and their two types; nothing pending.
        assert_eq!(r.cache_len(), (128, 0));
        assert_eq!(r.names.len(), 0, "no address for names that failed");
        assert_eq!(up.asked(), 128);
    }
}
