//! The proxy's view of the kernel's bookkeeping: for an accepted connection,
//! the destination the client originally dialed.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use aya::maps::{HashMap, MapData};
use enforcer_common::{OrigDst, TupleKey};

/// The kernel's ORIG_BY_TUPLE map, shared by every run it serves.
pub type OrigDstMap = HashMap<MapData, TupleKey, OrigDst>;

/// Read side of the ORIG_BY_TUPLE map, for one run: only connections made
/// from the run's cgroup are found.
pub struct OrigDstTable {
    map: Arc<OrigDstMap>,
    cgroup: u64,
}

impl std::fmt::Debug for OrigDstTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrigDstTable")
    }
}

/// The key the kernel files a connection under: the client's address as
/// IPv6 (IPv4 as IPv4-mapped) and its port.
pub fn tuple_key(peer: SocketAddr) -> TupleKey {
    let v6 = match peer.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    TupleKey {
        addr: v6.octets(),
        port: u32::from(peer.port()),
    }
}

/// Turns a recorded destination back into a socket address (IPv4-mapped
/// addresses become IPv4).
pub fn to_socket_addr(orig: &OrigDst) -> SocketAddr {
    let v6 = Ipv6Addr::from(orig.addr);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, orig.port)
}

impl OrigDstTable {
    /// The table as the run in cgroup `cgroup` sees it.
    pub fn new(map: Arc<OrigDstMap>, cgroup: u64) -> Self {
        Self { map, cgroup }
    }

    /// The destination the client at `peer` dialed, if the kernel recorded
    /// one for a process of this run (another run's connection is not ours
    /// to serve, whatever port it reached).
    pub fn lookup(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.map
            .get(&tuple_key(peer), 0)
            .ok()
            .filter(|o| o.cgroup == self.cgroup)
            .map(|o| to_socket_addr(&o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_peers_use_mapped_keys() {
        let k = tuple_key("127.0.0.1:40000".parse().unwrap());
        assert_eq!(&k.addr[10..], &[0xff, 0xff, 127, 0, 0, 1]);
        assert_eq!(k.port, 40000);
    }

    #[test]
    fn mapped_destinations_come_back_as_ipv4() {
        let o = OrigDst {
            addr: enforcer_common::v4_mapped([10, 1, 2, 3]),
            port: 443,
            family: enforcer_common::AF_INET,
            sock_type: 1,
            cgroup: 7,
        };
        assert_eq!(
            to_socket_addr(&o),
            "10.1.2.3:443".parse::<SocketAddr>().unwrap()
        );
        let o6 = OrigDst {
            addr: "fd00::2".parse::<Ipv6Addr>().unwrap().octets(),
            port: 80,
            family: enforcer_common::AF_INET6,
            sock_type: 1,
            cgroup: 7,
        };
        assert_eq!(
            to_socket_addr(&o6),
            "[fd00::2]:80".parse::<SocketAddr>().unwrap()
        );
    }
}
