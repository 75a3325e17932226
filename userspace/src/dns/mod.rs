//! Name resolution for the enforcer: how the proxy turns the names the
//! policy allows into addresses, and the resolver the kernel redirects the
//! agent's DNS to.

pub mod server;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
};

/// Resolves names for the proxy: `--resolve NAME=ADDR` entries first, then
/// the host's resolver (the enforcer runs outside the agent's cgroup).
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    statics: HashMap<String, Vec<IpAddr>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid --resolve entry {0:?}: expected NAME=ADDRESS (e.g. api.example.com=10.0.0.5)")]
    BadStatic(String),
    #[error("cannot resolve {name}: {source}")]
    Lookup { name: String, source: io::Error },
}

/// Lower case, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Resolver {
    /// Builds a resolver from `NAME=ADDR` entries (repeatable per name).
    pub fn with_statics<S: AsRef<str>>(entries: &[S]) -> Result<Self, ResolveError> {
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
        Ok(Self { statics })
    }

    /// Addresses for `name` (an IP literal resolves to itself).
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = normalize(name);
        if let Some(v) = self.statics.get(&name) {
            return Ok(v.clone());
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
            .await
            .map_err(|source| ResolveError::Lookup {
                name: name.clone(),
                source,
            })?
            .collect();
        Ok(found.into_iter().map(|a| a.ip()).collect())
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
    }
}
