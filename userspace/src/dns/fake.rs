//! A fake upstream DNS server on loopback for unit tests: answers every
//! query the way it is told to (addresses, NXDOMAIN with a SOA, SERVFAIL,
//! or silence) and counts what it was asked.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};
use tokio::net::UdpSocket;

/// How the fake upstream answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// These addresses (A or AAAA by family), TTL 300.
    Addresses(Vec<IpAddr>),
    /// NXDOMAIN with a SOA whose MINIMUM is this.
    NxDomain { soa_minimum: u32 },
    /// SERVFAIL.
    ServFail,
    /// Never answers.
    Silent,
}

/// A running fake upstream; stops when dropped.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    asked: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start(behaviour: Behaviour) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind fake dns");
        let addr = sock.local_addr().expect("addr");
        let asked = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let task = {
            let (asked, behaviour) = (Arc::clone(&asked), Arc::clone(&behaviour));
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                    asked.fetch_add(1, Ordering::SeqCst);
                    let b = behaviour.lock().expect("behaviour").clone();
                    if let Some(resp) = reply(&buf[..n], &b) {
                        let _ = sock.send_to(&resp, peer).await;
                    }
                }
            })
        };
        Self {
            addr,
            asked,
            behaviour,
            task,
        }
    }

    /// Queries received so far.
    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    /// Answers differently from now on.
    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().expect("behaviour") = b;
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(wire: &[u8], b: &Behaviour) -> Option<Vec<u8>> {
    let q = Message::from_vec(wire).ok()?;
    let question = q.queries().first()?.clone();
    let mut resp = Message::new();
    resp.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(true)
        .set_recursion_available(true)
        .add_query(question.clone());
    match b {
        Behaviour::Silent => return None,
        Behaviour::ServFail => {
            resp.set_response_code(ResponseCode::ServFail);
        }
        Behaviour::NxDomain { soa_minimum } => {
            resp.set_response_code(ResponseCode::NXDomain);
            let zone = Name::from_ascii("test.").ok()?;
            resp.add_name_server(Record::from_rdata(
                zone.clone(),
                3600,
                RData::SOA(rdata::SOA::new(
                    Name::from_ascii("ns.test.").ok()?,
                    Name::from_ascii("hostmaster.test.").ok()?,
                    1,
                    3600,
                    600,
                    86400,
                    *soa_minimum,
                )),
            ));
        }
        Behaviour::Addresses(addrs) => {
            for a in addrs {
                let rdata = match (a, question.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(rdata::A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(rdata::AAAA(*v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(question.name().clone(), 300, rdata));
            }
        }
    }
    resp.to_vec().ok()
}

/// A policy allowing `api.vendor.test` (whole host) and `*.cdn.vendor.test`.
pub fn policy() -> Arc<crate::policy::Policy> {
    Arc::new(
        crate::policy::Policy::parse(
            "[[host]]\nname = \"api.vendor.test\"\naction = \"allow\"\n\n\
             [[host]]\nname = \"*.cdn.vendor.test\"\naction = \"allow\"\n",
            std::path::Path::new("p.toml"),
        )
        .expect("policy"),
    )
}

/// Upstream timeouts short enough for tests: 200 ms, one attempt.
pub const QUICK: super::upstream::Timeouts = super::upstream::Timeouts {
    attempt: std::time::Duration::from_millis(200),
    attempts: 1,
};

/// The run's resolver asking `upstream` (quick timeouts), under [`policy`].
pub fn resolver(upstream: SocketAddr) -> Arc<super::Resolver> {
    Arc::new(
        super::Resolver::new::<&str>(
            &[],
            vec![upstream],
            super::budget::Limits::default(),
            policy(),
        )
        .expect("resolver")
        .with_timeouts(QUICK),
    )
}

/// What the DNS server needs, around `resolver`, recording nowhere.
pub fn context(resolver: Arc<super::Resolver>) -> super::server::DnsContext {
    let policy = policy();
    super::server::DnsContext {
        secrets: Arc::new(crate::secrets::Secrets::load(&policy, None).expect("secrets")),
        rules: None,
        policy,
        resolver,
        sink: crate::decision::DecisionSink::new("test", crate::decision::LogMode::Quiet),
        ipv6: true,
        observe: false,
    }
}

/// A query for `name` of `rtype`, with EDNS when `edns`.
pub fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(0x1234)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).expect("name"),
            rtype,
        ));
    if edns {
        m.set_edns(hickory_proto::op::Edns::new());
    }
    m.to_vec().expect("encode")
}

/// The Extended DNS Error of a response: (info code, text).
pub fn ede(resp: &Message) -> Option<(u16, String)> {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    resp.extensions()
        .as_ref()?
        .options()
        .as_ref()
        .iter()
        .find_map(|(code, opt)| match (code, opt) {
            (EdnsCode::Unknown(15), EdnsOption::Unknown(15, data)) if data.len() >= 2 => Some((
                u16::from_be_bytes([data[0], data[1]]),
                String::from_utf8_lossy(&data[2..]).into_owned(),
            )),
            _ => None,
        })
}
