//! The resolver the kernel sends the agent's DNS to (UDP and TCP port 53, at
//! any address). Each query is answered as [`super::answer`] says.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
};

use super::Resolver;
use crate::{decision::DecisionSink, policy::Policy, secrets::Secrets};

/// Largest DNS message we read over UDP.
const MAX_UDP: usize = 4096;
/// Largest DNS message we accept over TCP.
const MAX_TCP: usize = 16 * 1024;
/// A TCP client that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(10);

/// What the DNS server needs.
#[derive(Clone)]
pub struct DnsContext {
    pub policy: Arc<Policy>,
    pub resolver: Arc<Resolver>,
    pub secrets: Arc<Secrets>,
    pub sink: DecisionSink,
    /// Whether AAAA answers are given (the proxy has an IPv6 listener).
    pub ipv6: bool,
}

pub use super::answer::answer;

/// Serves DNS over UDP until the task is dropped.
pub async fn serve_udp(sock: UdpSocket, ctx: DnsContext) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let wire = buf[..n].to_vec();
        let sock = Arc::clone(&sock);
        let ctx = ctx.clone();
        // Answers needing an upstream lookup must not hold up cached ones.
        tokio::spawn(async move {
            if let Some(resp) = answer(&wire, &ctx).await {
                let _ = sock.send_to(&resp, peer).await;
            }
        });
    }
}

/// Serves DNS over TCP (two-byte length prefix) until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, ctx: DnsContext) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut len = [0u8; 2];
            while let Ok(Ok(_)) = tokio::time::timeout(IDLE, stream.read_exact(&mut len)).await {
                let n = usize::from(u16::from_be_bytes(len));
                if n == 0 || n > MAX_TCP {
                    return;
                }
                let mut q = vec![0u8; n];
                if !matches!(
                    tokio::time::timeout(IDLE, stream.read_exact(&mut q)).await,
                    Ok(Ok(_))
                ) {
                    return;
                }
                let Some(resp) = answer(&q, &ctx).await else {
                    return;
                };
                let Ok(rlen) = u16::try_from(resp.len()) else {
                    return;
                };
                if stream.write_all(&rlen.to_be_bytes()).await.is_err()
                    || stream.write_all(&resp).await.is_err()
                {
                    return;
                }
            }
        });
    }
}
