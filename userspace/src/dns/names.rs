//! Synthetic addresses: the resolver answers the agent with an address of
//! its own per allowed name (IPv4 from 198.18.0.0/15, IPv6 from
//! fd65:6e66:6f72:6365::/64), never reused within a run. The proxy then
//! knows exactly which name a connection is for from the address dialed,
//! even without SNI or Host, even when names share real addresses (CDNs),
//! and the agent never learns a real address to try its luck with.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::RwLock,
};

/// First address of the IPv4 range (RFC 2544 benchmarking, never routed).
const V4_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// Addresses in 198.18.0.0/15, minus network and broadcast.
const V4_COUNT: u32 = (1 << 17) - 2;
/// The IPv6 prefix (a unique local address range: "enforce" in hex).
const V6_PREFIX: u128 = 0xfd65_6e66_6f72_6365_0000_0000_0000_0000;

#[derive(Debug, thiserror::Error)]
#[error("the run handed out all {V4_COUNT} synthetic addresses")]
pub struct Exhausted;

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<String, u32>,
    by_index: Vec<String>,
}

/// Name <-> synthetic address, for one run.
#[derive(Debug, Default)]
pub struct NameMap {
    inner: RwLock<Inner>,
}

/// True for addresses in the synthetic ranges (handed out or not).
pub fn is_synthetic(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let n = u32::from(v4);
            (V4_BASE..V4_BASE + (1 << 17)).contains(&n)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_synthetic(IpAddr::V4(v4)),
            None => u128::from(v6) >> 64 == V6_PREFIX >> 64,
        },
    }
}

impl NameMap {
    /// The addresses for `name` (normalized), assigning them on first use.
    pub fn assign(&self, name: &str) -> Result<(Ipv4Addr, Ipv6Addr), Exhausted> {
        if let Some(i) = self
            .inner
            .read()
            .ok()
            .and_then(|m| m.by_name.get(name).copied())
        {
            return Ok(addrs(i));
        }
        let mut m = self.inner.write().map_err(|_| Exhausted)?;
        if let Some(i) = m.by_name.get(name) {
            return Ok(addrs(*i));
        }
        let i = u32::try_from(m.by_index.len()).map_err(|_| Exhausted)?;
        if i >= V4_COUNT {
            return Err(Exhausted);
        }
        m.by_name.insert(name.to_string(), i);
        m.by_index.push(name.to_string());
        Ok(addrs(i))
    }

    /// Names handed addresses so far.
    pub fn len(&self) -> usize {
        self.inner.read().map_or(0, |m| m.by_index.len())
    }

    /// Whether no name has an address yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name `ip` was handed out for, if it is one of ours.
    pub fn name_for(&self, ip: IpAddr) -> Option<String> {
        let index = match ip {
            IpAddr::V4(v4) => u32::from(v4).checked_sub(V4_BASE + 1)?,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => return self.name_for(IpAddr::V4(v4)),
                None => {
                    let n = u128::from(v6);
                    if n >> 64 != V6_PREFIX >> 64 {
                        return None;
                    }
                    u32::try_from(n - V6_PREFIX).ok()?.checked_sub(1)?
                }
            },
        };
        self.inner
            .read()
            .ok()?
            .by_index
            .get(index as usize)
            .cloned()
    }
}

fn addrs(i: u32) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::from(V4_BASE + 1 + i),
        Ipv6Addr::from(V6_PREFIX + 1 + u128::from(i)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_stable_distinct_addresses_that_map_back() {
        let m = NameMap::default();
        let (a4, a6) = m.assign("api.example.com").unwrap();
        let (b4, _) = m.assign("cdn.example.com").unwrap();
        assert_eq!(m.assign("api.example.com").unwrap(), (a4, a6));
        assert_ne!(a4, b4);
        assert_eq!(a4, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(
            m.name_for(IpAddr::V4(b4)).as_deref(),
            Some("cdn.example.com")
        );
        assert_eq!(
            m.name_for(IpAddr::V6(a6)).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            m.name_for(IpAddr::V6(b4.to_ipv6_mapped())).as_deref(),
            Some("cdn.example.com")
        );
        assert_eq!(m.name_for("198.18.9.9".parse().unwrap()), None);
        assert_eq!(m.name_for("10.0.0.1".parse().unwrap()), None);
        assert!(is_synthetic("198.19.255.1".parse().unwrap()));
        assert!(is_synthetic(IpAddr::V6(a6)));
        assert!(!is_synthetic("198.20.0.1".parse().unwrap()));
        assert!(!is_synthetic("fd00::1".parse().unwrap()));
    }
}
