//! Binding the proxy's and resolver's sockets on loopback before the child
//! exists. Ports are ephemeral; the kernel programs learn them at load time.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
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
    pub async fn bind() -> io::Result<Self> {
        let lo4 = Ipv4Addr::LOCALHOST;
        let lo6 = Ipv6Addr::LOCALHOST;
        let transparent4 = TcpListener::bind((lo4, 0)).await?;
        let transparent6 = TcpListener::bind((lo6, 0)).await.ok();
        let (dns_udp4, dns_tcp4) = bind_dns(SocketAddr::from((lo4, 0))).await?;
        let (dns_udp6, dns_tcp6) = match bind_dns(SocketAddr::from((lo6, 0))).await {
            Ok((u, t)) => (Some(u), Some(t)),
            Err(_) => (None, None),
        };
        let explicit4 = TcpListener::bind((lo4, 0)).await?;
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
