//! The resolver the kernel sends the agent's DNS to (UDP and TCP port 53, at
//! any address), and how it stays fair under a flood. Queries are answered
//! as [`super::answer`] says. Over UDP, one task drains the socket as fast
//! as it can and only sorts what arrives: refusals (decided without a
//! lookup) go to a thread of their own through a bounded queue, allowed
//! names to lookup tasks, of which a bounded number run at once. A flood of
//! refused names therefore costs allowed lookups one sort each, never a
//! place in line; beyond the queue (or the lookup limit) queries are
//! dropped unanswered, counted, and summarised in one decision a second.

use std::{
    io,
    net::SocketAddr,
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
    sync::Semaphore,
};

use super::{
    Resolver,
    answer::{self, Triage},
};
use crate::{
    decision::{Cause, Decision, DecisionSink, Layer},
    policy::Policy,
    secrets::Secrets,
};

/// Largest DNS message we read over UDP.
const MAX_UDP: usize = 4096;
/// Largest DNS message we accept over TCP.
const MAX_TCP: usize = 16 * 1024;
/// A TCP client that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(10);
/// Refusals waiting for the refusal thread; beyond, refused queries are
/// dropped unanswered (the client's own timeout and retry apply).
pub const MAX_QUEUED_REFUSALS: usize = 4096;
/// Allowed queries being answered at once (most wait on the same upstream
/// lookup: see [`super::cache`]); beyond, they are dropped unanswered.
pub const MAX_LOOKUPS: usize = 256;
/// TCP clients served at once; others are closed at accept.
pub const MAX_TCP_CLIENTS: usize = 64;
/// Datagrams read in a row before other tasks get a turn.
const INTAKE_BATCH: usize = 64;
/// The UDP socket's receive buffer (the kernel drops what does not fit
/// while the intake is not running): room for several thousand queries.
const RECEIVE_BUFFER: usize = 4 << 20;
/// How often dropped queries are summarised in a decision.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// What the DNS server needs.
#[derive(Clone)]
pub struct DnsContext {
    /// The policy at start; [`DnsContext::policy`] is the one in force.
    pub policy: Arc<Policy>,
    /// Where the run's rules in force live (a daemon's reload swaps them).
    pub rules: Option<Arc<crate::run::live::LiveRules>>,
    pub resolver: Arc<Resolver>,
    pub secrets: Arc<Secrets>,
    pub sink: DecisionSink,
    /// Whether AAAA answers are given (the proxy has an IPv6 listener).
    pub ipv6: bool,
    /// Observe mode: names the policy does not allow are answered too (A and
    /// AAAA), each recorded as "would deny".
    pub observe: bool,
}

impl DnsContext {
    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.rules.as_ref().map_or_else(
            || Arc::clone(&self.policy),
            |r| Arc::clone(&r.load().policy),
        )
    }
}

pub use answer::answer;

/// Queries dropped unanswered since the last summary.
#[derive(Debug, Default)]
pub struct Drops {
    pub refusals: AtomicU64,
    pub lookups: AtomicU64,
}

impl Drops {
    /// Records one decision per kind of drop since the last call.
    fn summarise(&self, sink: &DecisionSink) {
        let refusals = self.refusals.swap(0, Ordering::Relaxed);
        if refusals > 0 {
            sink.record(
                &Decision::new(
                    Layer::Dns,
                    Cause::RateLimited,
                    format!(
                        "{refusals} queries for refused names dropped unanswered: \
                         {MAX_QUEUED_REFUSALS} refusals were already waiting (a flood)"
                    ),
                )
                .rule("dns flood", None),
            );
        }
        let lookups = self.lookups.swap(0, Ordering::Relaxed);
        if lookups > 0 {
            sink.record(
                &Decision::new(
                    Layer::Dns,
                    Cause::RateLimited,
                    format!(
                        "{lookups} queries for allowed names dropped unanswered: \
                         {MAX_LOOKUPS} lookups were already under way"
                    ),
                )
                .rule("dns flood", None),
            );
        }
    }
}

/// A query on its way to the refusal thread: who sent it, and its bytes.
#[derive(Debug)]
pub struct Refusal {
    peer: SocketAddr,
    wire: Vec<u8>,
}

/// What the intake did with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Not a query: dropped.
    Garbage,
    /// Queued for the refusal thread.
    Refusal,
    /// A lookup task was started.
    Lookup,
    /// Dropped: too many refusals waiting.
    RefusalDropped,
    /// Dropped: too many lookups under way.
    LookupDropped,
}

/// Sorts what arrives on a UDP socket. Never waits.
pub struct Intake {
    sock: Arc<UdpSocket>,
    ctx: DnsContext,
    refusals: SyncSender<Refusal>,
    lookups: Arc<Semaphore>,
    drops: Arc<Drops>,
}

impl Intake {
    /// An intake whose refusals go to `refusals`.
    pub fn new(
        sock: Arc<UdpSocket>,
        ctx: DnsContext,
        refusals: SyncSender<Refusal>,
        drops: Arc<Drops>,
    ) -> Self {
        Self {
            sock,
            ctx,
            refusals,
            lookups: Arc::new(Semaphore::new(MAX_LOOKUPS)),
            drops,
        }
    }

    /// Sorts one datagram from `peer`: a name the policy does not allow,
    /// read with [`answer::peek`], goes to the refusal thread as it came;
    /// anything else is parsed and triaged here.
    pub fn take(&self, wire: &[u8], peer: SocketAddr) -> Taken {
        if let Some(q) = answer::peek(wire)
            && !self.ctx.observe
            && !self.ctx.policy().allows_name(&q.name)
        {
            return self.refuse(wire, peer);
        }
        let Some(query) = answer::parse(wire) else {
            return Taken::Garbage;
        };
        match answer::triage(&query, &self.ctx) {
            Triage::Done(..) => self.refuse(wire, peer),
            Triage::Resolve(lookup) => {
                let Ok(permit) = Arc::clone(&self.lookups).try_acquire_owned() else {
                    self.drops.lookups.fetch_add(1, Ordering::Relaxed);
                    return Taken::LookupDropped;
                };
                let (sock, ctx) = (Arc::clone(&self.sock), self.ctx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let (reply, decision) = answer::resolve(&lookup, &ctx).await;
                    if let Some(wire) = answer::encode(&query, &reply) {
                        let _ = sock.send_to(&wire, peer).await;
                    }
                    ctx.sink.record(&decision);
                });
                Taken::Lookup
            }
        }
    }

    fn refuse(&self, wire: &[u8], peer: SocketAddr) -> Taken {
        let refusal = Refusal {
            peer,
            wire: wire.to_vec(),
        };
        match self.refusals.try_send(refusal) {
            Ok(()) => Taken::Refusal,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.drops.refusals.fetch_add(1, Ordering::Relaxed);
                Taken::RefusalDropped
            }
        }
    }
}

/// Answers refusals from `queue` on `sock` and records their decisions,
/// until the queue's sender is gone; summarises drops once a second. Runs
/// on a thread of its own: a slow decision sink (a full stderr pipe, the
/// audit queue) holds up refusals, never allowed lookups.
pub fn answer_refusals(
    queue: &Receiver<Refusal>,
    sock: &std::net::UdpSocket,
    ctx: &DnsContext,
    drops: &Drops,
) {
    let mut summarised = Instant::now();
    loop {
        match queue.recv_timeout(SUMMARY_EVERY) {
            Ok(r) => refuse(&r, sock, ctx),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                drops.summarise(&ctx.sink);
                return;
            }
        }
        if summarised.elapsed() >= SUMMARY_EVERY {
            drops.summarise(&ctx.sink);
            summarised = Instant::now();
        }
    }
}

/// Answers one refusal (what does not parse is dropped, as anywhere).
fn refuse(r: &Refusal, sock: &std::net::UdpSocket, ctx: &DnsContext) {
    let Some(query) = answer::parse(&r.wire) else {
        return;
    };
    // Only what triage refuses without a lookup is ever queued here.
    let Triage::Done(reply, decision) = answer::triage(&query, ctx) else {
        tracing::debug!("DNS: an allowed name reached the refusal thread; dropped");
        return;
    };
    if let Some(wire) = answer::encode(&query, &reply) {
        // Non-blocking: a full send buffer drops the answer.
        let _ = sock.send_to(&wire, r.peer);
    }
    if let Some(d) = &decision {
        ctx.sink.record(d);
    }
}

/// Asks for a receive buffer that absorbs bursts (root may exceed the
/// system's `rmem_max`; anyone else gets what the system allows).
fn enlarge_receive_buffer(sock: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(sock, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &RECEIVE_BUFFER);
    }
}

/// Starts the refusal thread for `sock`: the sender to queue refusals on.
fn start_refusal_thread(
    sock: &UdpSocket,
    ctx: DnsContext,
    drops: Arc<Drops>,
) -> io::Result<SyncSender<Refusal>> {
    // A second descriptor of the same socket, for plain blocking-free sends
    // from a thread outside the runtime.
    let send = std::net::UdpSocket::from(sock.as_fd().try_clone_to_owned()?);
    let (tx, rx) = std::sync::mpsc::sync_channel(MAX_QUEUED_REFUSALS);
    std::thread::Builder::new()
        .name(String::from("enforcer-dns-refusals"))
        .spawn(move || answer_refusals(&rx, &send, &ctx, &drops))?;
    Ok(tx)
}

/// Serves DNS over UDP until the task is dropped.
pub async fn serve_udp(sock: UdpSocket, ctx: DnsContext) {
    enlarge_receive_buffer(&sock);
    let drops = Arc::new(Drops::default());
    let refusals = match start_refusal_thread(&sock, ctx.clone(), Arc::clone(&drops)) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!("DNS: cannot start the refusal thread ({e}); answering inline");
            return serve_udp_inline(sock, ctx).await;
        }
    };
    let sock = Arc::new(sock);
    let intake = Intake::new(Arc::clone(&sock), ctx, refusals, drops);
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        if sock.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        for _ in 0..INTAKE_BATCH {
            match sock.try_recv_from(&mut buf) {
                Ok((n, peer)) => {
                    intake.take(&buf[..n], peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // An ICMP error for an earlier answer, and the like.
                Err(_) => {}
            }
        }
    }
}

/// The fallback without a refusal thread: every query answered in a task.
async fn serve_udp_inline(sock: UdpSocket, ctx: DnsContext) {
    let sock = Arc::new(sock);
    let tasks = Arc::new(Semaphore::new(MAX_LOOKUPS));
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(permit) = Arc::clone(&tasks).try_acquire_owned() else {
            continue;
        };
        let wire = buf[..n].to_vec();
        let (sock, ctx) = (Arc::clone(&sock), ctx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(resp) = answer(&wire, &ctx).await {
                let _ = sock.send_to(&resp, peer).await;
            }
        });
    }
}

/// Serves DNS over TCP (two-byte length prefix) until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, ctx: DnsContext) {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&clients).try_acquire_owned() else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
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

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message, ResponseCode},
        rr::RecordType,
    };

    use super::*;
    use crate::dns::fake::{Behaviour, FakeUpstream, context, query, resolver};

    async fn local_socket() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"))
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// Issue 12: a flood of refused names made the kernel drop allowed
    /// queries. Refusals now wait in a bounded queue of their own: when it
    /// is full they are dropped (and counted), and an allowed query still
    /// goes straight to its lookup.
    #[tokio::test]
    async fn a_full_refusal_queue_never_holds_up_an_allowed_lookup() {
        let up = FakeUpstream::start(Behaviour::Addresses(vec!["10.0.0.7".parse().unwrap()])).await;
        let ctx = context(resolver(up.addr));
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let drops = Arc::new(Drops::default());
        let intake = Intake::new(local_socket().await, ctx.clone(), tx, Arc::clone(&drops));
        let taken: Vec<Taken> = (0..100)
            .map(|i| {
                let q = query(&format!("n{i}.refused.test."), RecordType::A, true);
                intake.take(&q, peer())
            })
            .collect();
        assert!(taken[..4].iter().all(|t| *t == Taken::Refusal), "{taken:?}");
        assert!(taken[4..].iter().all(|t| *t == Taken::RefusalDropped));
        assert_eq!(drops.refusals.load(Ordering::Relaxed), 96);
        let allowed = query("api.vendor.test.", RecordType::A, true);
        assert_eq!(intake.take(&allowed, peer()), Taken::Lookup);
        assert_eq!(intake.take(b"\x00\x01junk", peer()), Taken::Garbage);

        // The refusal thread answers what was queued, then summarises the
        // drops in one decision, and stops when the intake is gone.
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (tx, rx2) = std::sync::mpsc::sync_channel(4);
        let to_client = Intake::new(local_socket().await, ctx.clone(), tx, Arc::clone(&drops));
        drop(rx);
        for i in 0..3 {
            let q = query(&format!("m{i}.refused.test."), RecordType::A, true);
            to_client.take(&q, client.local_addr().unwrap());
        }
        drop(to_client);
        drop(intake);
        let (ctx2, drops2) = (ctx.clone(), Arc::clone(&drops));
        std::thread::spawn(move || answer_refusals(&rx2, &server, &ctx2, &drops2))
            .join()
            .unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            let n = client.recv(&mut buf).unwrap();
            let resp = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(resp.response_code(), ResponseCode::NXDomain);
        }
        assert_eq!(drops.refusals.load(Ordering::Relaxed), 0, "summarised");
        let tally = ctx.sink.tally();
        assert_eq!(
            tally.counts.names_refused,
            3 + 1,
            "three refusals and one summary"
        );
    }

    /// Lookups under way are bounded, however many queries for allowed
    /// names arrive while upstream is slow; they share one upstream query.
    #[tokio::test]
    async fn lookups_under_way_are_bounded() {
        let up = FakeUpstream::start(Behaviour::Silent).await;
        let ctx = context(resolver(up.addr));
        let (tx, _rx) = std::sync::mpsc::sync_channel(4);
        let drops = Arc::new(Drops::default());
        let intake = Intake::new(local_socket().await, ctx, tx, Arc::clone(&drops));
        let q = query("api.vendor.test.", RecordType::A, true);
        for _ in 0..MAX_LOOKUPS {
            assert_eq!(intake.take(&q, peer()), Taken::Lookup);
        }
        assert_eq!(intake.take(&q, peer()), Taken::LookupDropped);
        assert_eq!(drops.lookups.load(Ordering::Relaxed), 1);
        // Once they are answered (SERVFAIL after the quick timeout), there
        // is room again, and upstream was asked once per type.
        let deadline = Instant::now() + Duration::from_secs(30);
        while intake.take(&q, peer()) != Taken::Lookup {
            assert!(Instant::now() < deadline, "the lookups never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(up.asked(), 2);
    }

    /// TCP clients are bounded too: beyond [`MAX_TCP_CLIENTS`] connections
    /// are closed at once; a slot frees when a client leaves.
    #[tokio::test]
    async fn tcp_clients_are_bounded() {
        use tokio::net::TcpStream;
        let up = FakeUpstream::start(Behaviour::ServFail).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_tcp(listener, context(resolver(up.addr))));
        let refused = query("other.test.", RecordType::A, false);
        let framed: Vec<u8> = u16::try_from(refused.len())
            .unwrap()
            .to_be_bytes()
            .into_iter()
            .chain(refused)
            .collect();
        async fn ask(s: &mut TcpStream, framed: &[u8]) -> Option<ResponseCode> {
            s.write_all(framed).await.ok()?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.ok()?;
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut body).await.ok()?;
            Message::from_vec(&body).ok().map(|m| m.response_code())
        }
        let mut held = Vec::new();
        for _ in 0..MAX_TCP_CLIENTS {
            let mut s = TcpStream::connect(addr).await.unwrap();
            assert_eq!(ask(&mut s, &framed).await, Some(ResponseCode::NXDomain));
            held.push(s);
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert_eq!(ask(&mut extra, &framed).await, None, "closed at accept");
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if ask(&mut s, &framed).await == Some(ResponseCode::NXDomain) {
                break;
            }
            assert!(Instant::now() < deadline, "no slot came free");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.abort();
    }
}
