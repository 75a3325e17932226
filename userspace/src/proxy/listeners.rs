//! Binding the proxy's and resolver's sockets on loopback before the child
//! exists. Ports are ephemeral (launch) or privileged (the daemon); the
//! kernel programs learn them when the run is filed.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
};

use tokio::net::{TcpListener, UdpSocket};

/// Every socket the enforcer listens on for one run.
#[derive(Debug)]
pub struct Listeners {
    pub transparent4: TcpListener,
    /// None when the host has no IPv6 loopback (IPv6 TCP is then refused).
    pub transparent6: Option<TcpListener>,
    pub dns_udp4: UdpSocket,
    pub dns_tcp4: TcpListener,
    pub dns_udp6: Option<UdpSocket>,
    pub dns_tcp6: Option<TcpListener>,
    /// The explicit proxy (HTTP_PROXY) on 127.0.0.1.
    pub explicit4: TcpListener,
}

impl Listeners {
    /// Binds on ports the kernel picks.
    pub async fn bind() -> io::Result<Self> {
        Self::bind_in(None).await
    }

    /// Binds every listener on a port of `ports` (tried from a random
    /// start), or on ports the kernel picks when `None`. A daemon uses
    /// privileged ports, which no other user can bind while it is down.
    pub async fn bind_in(ports: Option<Range<u16>>) -> io::Result<Self> {
        let lo4 = Ipv4Addr::LOCALHOST;
        let lo6 = Ipv6Addr::LOCALHOST;
        let picker = PortPicker::new(ports);
        let transparent4 = picker.tcp(lo4.into()).await?;
        let transparent6 = picker.tcp(lo6.into()).await.ok();
        let (dns_udp4, dns_tcp4) = picker.dns(lo4.into()).await?;
        let (dns_udp6, dns_tcp6) = match picker.dns(lo6.into()).await {
            Ok((u, t)) => (Some(u), Some(t)),
            Err(_) => (None, None),
        };
        let explicit4 = picker.tcp(lo4.into()).await?;
        Ok(Self {
            transparent4,
            transparent6,
            dns_udp4,
            dns_tcp4,
            dns_udp6,
            dns_tcp6,
            explicit4,
        })
    }

    pub fn port(l: &TcpListener) -> u16 {
        l.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn dns_port(s: &UdpSocket) -> u16 {
        s.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// Where listeners are bound: kernel-picked ports, or a range.
struct PortPicker {
    range: Option<Range<u16>>,
}

impl PortPicker {
    fn new(range: Option<Range<u16>>) -> Self {
        Self { range }
    }

    /// Candidate ports: 0 (the kernel picks), or the range from a random start.
    fn candidates(&self) -> Vec<u16> {
        match &self.range {
            None => vec![0],
            Some(r) if r.is_empty() => Vec::new(),
            Some(r) => {
                let len = r.end - r.start;
                let start = rand::random::<u16>() % len;
                (0..len).map(|i| r.start + (start + i) % len).collect()
            }
        }
    }

    async fn tcp(&self, ip: IpAddr) -> io::Result<TcpListener> {
        let mut last = None;
        for port in self.candidates() {
            match TcpListener::bind((ip, port)).await {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free port in the listeners' range")))
    }

    async fn dns(&self, ip: IpAddr) -> io::Result<(UdpSocket, TcpListener)> {
        match &self.range {
            None => bind_dns(SocketAddr::new(ip, 0)).await,
            Some(_) => {
                let mut last = None;
                for port in self.candidates() {
                    match bind_dns(SocketAddr::new(ip, port)).await {
                        Ok(pair) => return Ok(pair),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last
                    .unwrap_or_else(|| io::Error::other("no free port in the listeners' range")))
            }
        }
    }
}

/// A UDP and a TCP socket on the same port (the kernel redirects both
/// protocols of port 53 to one port number).
async fn bind_dns(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port for the resolver")))
}
