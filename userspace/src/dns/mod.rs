//! Name resolution. One [`Resolver`] per run serves two masters: the DNS
//! server the kernel sends the agent's queries to (which answers allowed
//! names with synthetic addresses), and the proxy (which dials allowed names
//! at their real addresses). Both go through the same cache, the same
//! wildcard budget and the same upstream servers, and neither ever asks
//! upstream about a name the policy does not allow.

pub mod budget;
pub mod config;
pub mod names;
pub mod server;
pub mod upstream;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_proto::rr::RecordType;

use crate::policy::Policy;
use budget::{Budget, BudgetError, Limits};
use names::NameMap;
use upstream::Answer;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid --resolve entry {0:?}: expected NAME=ADDRESS (e.g. api.example.com=10.0.0.5)")]
    BadStatic(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0} does not exist (NXDOMAIN upstream)")]
    NxDomain(String),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("cannot resolve {name}: {detail}")]
    Lookup { name: String, detail: String },
    #[error("cannot resolve {0}: no upstream DNS server (use --resolver or --resolve)")]
    NoUpstream(String),
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

/// Lower case, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A cached answer and when it expires.
type Cached = (Answer, Instant);

/// The run's resolver. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Resolver {
    statics: HashMap<String, Vec<IpAddr>>,
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, RecordType), Cached>>,
    budget: Budget,
    policy: Option<Arc<Policy>>,
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
            cache: Mutex::new(HashMap::new()),
            budget: Budget::new(limits),
            policy: Some(policy),
            names: NameMap::default(),
        })
    }

    /// Checks a name against the wildcard budget when a wildcard governs it.
    pub fn admit(&self, name: &str) -> Result<(), BudgetError> {
        let Some(policy) = &self.policy else {
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
    /// resolves to itself.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = normalize(name);
        if let Some(v) = self.statics.get(&name) {
            return Ok(v.clone());
        }
        self.admit(&name)?;
        let (a, aaaa) = tokio::join!(
            self.lookup_type(&name, RecordType::A),
            self.lookup_type(&name, RecordType::AAAA)
        );
        match (a, aaaa) {
            (Ok(Answer::NxDomain(_)), _) | (_, Ok(Answer::NxDomain(_))) => {
                Err(ResolveError::NxDomain(name))
            }
            (Ok(Answer::Addresses(mut v4, _)), Ok(Answer::Addresses(v6, _))) => {
                v4.extend(v6);
                if v4.is_empty() {
                    return Err(ResolveError::NoAddress(name));
                }
                Ok(v4)
            }
            (Ok(Answer::Addresses(v, _)), Err(e)) | (Err(e), Ok(Answer::Addresses(v, _))) => {
                if v.is_empty() { Err(e) } else { Ok(v) }
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    /// One record type from upstream, through the cache.
    async fn lookup_type(&self, name: &str, rtype: RecordType) -> Result<Answer, ResolveError> {
        let key = (name.to_string(), rtype);
        if let Some((answer, expires)) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned())
            && expires > Instant::now()
        {
            return Ok(answer);
        }
        if self.upstreams.is_empty() {
            return Err(ResolveError::NoUpstream(name.to_string()));
        }
        let answer = upstream::query(&self.upstreams, name, rtype)
            .await
            .map_err(|e| ResolveError::Lookup {
                name: name.to_string(),
                detail: e.to_string(),
            })?;
        let ttl = match &answer {
            Answer::Addresses(_, t) | Answer::NxDomain(t) => *t,
        };
        if let Ok(mut c) = self.cache.lock() {
            if c.len() > 10_000 {
                c.retain(|_, (_, exp)| *exp > Instant::now());
            }
            c.insert(
                key,
                (
                    answer.clone(),
                    Instant::now() + Duration::from_secs(u64::from(ttl)),
                ),
            );
        }
        Ok(answer)
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
            Err(ResolveError::NoUpstream(_))
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
            Err(ResolveError::Budget(_))
        ));
    }
}
