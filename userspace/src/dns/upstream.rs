//! The enforcer's own DNS client, for allowed names only: A and AAAA queries
//! over UDP (TCP when truncated) to the configured upstream servers, with
//! CNAME chains followed to the addresses. Every way it can fail is a
//! [`Failure`].

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

use super::error::Failure;

/// How long to wait for upstream servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Per attempt (a UDP query, or the TCP retry of a truncated answer).
    pub attempt: Duration,
    /// Attempts per server before the next one is asked.
    pub attempts: usize,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            attempt: Duration::from_secs(2),
            attempts: 2,
        }
    }
}

/// TTLs of answers, in seconds. Positive answers live as upstream says,
/// within these bounds; negative ones (NXDOMAIN, NODATA) as the zone's SOA
/// says (RFC 2308: the smaller of the SOA's TTL and its MINIMUM), within
/// tighter ones, or briefly when upstream sends no SOA.
pub const POSITIVE_TTL: (u32, u32) = (5, 3600);
pub const NEGATIVE_TTL: (u32, u32) = (1, 300);
pub const NEGATIVE_TTL_WITHOUT_SOA: u32 = 5;

/// What an upstream said about a name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Addresses (possibly none: the name exists without this type).
    Addresses {
        addrs: Vec<IpAddr>,
        ttl: u32,
        server: SocketAddr,
    },
    /// The name does not exist.
    NxDomain { ttl: u32, server: SocketAddr },
}

impl Answer {
    /// Seconds this answer may be reused.
    pub fn ttl(&self) -> u32 {
        match self {
            Self::Addresses { ttl, .. } | Self::NxDomain { ttl, .. } => *ttl,
        }
    }
}

/// One attempt at one server went wrong.
enum Attempt {
    /// Nothing came back in time: worth another attempt.
    Timeout,
    /// An answer that settles it for this server (or an error that will
    /// not go away by asking it again).
    Failed(Failure),
}

/// Asks `servers` for `name`'s `rtype` records, in order, until one answers.
/// A timeout is retried at the same server, anything else moves on to the
/// next; when none answers, the last definite failure is reported, or a
/// timeout if every attempt timed out.
pub async fn query(
    servers: &[SocketAddr],
    name: &str,
    rtype: RecordType,
    timeouts: Timeouts,
) -> Result<Answer, Failure> {
    let qname = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|_| Failure::BadName)?;
    if servers.is_empty() {
        return Err(Failure::NoUpstream);
    }
    let attempts = timeouts.attempts.max(1);
    let mut definite = None;
    for server in servers {
        for _ in 0..attempts {
            match ask(*server, &qname, rtype, timeouts.attempt).await {
                Ok(a) => return Ok(a),
                Err(Attempt::Timeout) => {}
                Err(Attempt::Failed(f)) => {
                    definite = Some(f);
                    break;
                }
            }
        }
    }
    Err(definite.unwrap_or_else(|| Failure::Timeout {
        servers: servers.to_vec(),
        waited: timeouts
            .attempt
            .saturating_mul(u32::try_from(attempts * servers.len()).unwrap_or(u32::MAX)),
    }))
}

fn build(qname: &Name, rtype: RecordType) -> (u16, Vec<u8>) {
    let id: u16 = rand::random();
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname.clone(), rtype));
    (id, m.to_vec().unwrap_or_default())
}

fn unreachable(server: SocketAddr, e: &std::io::Error) -> Attempt {
    Attempt::Failed(Failure::Unreachable {
        server,
        reason: e.to_string(),
    })
}

async fn ask(
    server: SocketAddr,
    qname: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Answer, Attempt> {
    let (id, wire) = build(qname, rtype);
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind)
        .await
        .map_err(|e| unreachable(server, &e))?;
    sock.connect(server)
        .await
        .map_err(|e| unreachable(server, &e))?;
    sock.send(&wire)
        .await
        .map_err(|e| unreachable(server, &e))?;
    let mut buf = vec![0u8; 4096];
    let wait = async {
        loop {
            let n = sock.recv(&mut buf).await?;
            let Ok(msg) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if msg.id() == id && msg.message_type() == MessageType::Response {
                return Ok::<_, std::io::Error>(msg);
            }
        }
    };
    let msg = tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| Attempt::Timeout)?
        .map_err(|e| unreachable(server, &e))?;
    let msg = if msg.truncated() {
        ask_tcp(server, &wire, id, timeout).await?
    } else {
        msg
    };
    interpret(&msg, qname, rtype, server).map_err(Attempt::Failed)
}

async fn ask_tcp(
    server: SocketAddr,
    wire: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Message, Attempt> {
    let run = async {
        let mut s = TcpStream::connect(server).await?;
        let len = u16::try_from(wire.len()).map_err(std::io::Error::other)?;
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(wire).await?;
        let mut l = [0u8; 2];
        s.read_exact(&mut l).await?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(l))];
        s.read_exact(&mut body).await?;
        Message::from_vec(&body).map_err(std::io::Error::other)
    };
    let msg = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| Attempt::Timeout)?
        .map_err(|e| {
            Attempt::Failed(Failure::Unreachable {
                server,
                reason: format!("over TCP (the UDP answer was truncated): {e}"),
            })
        })?;
    if msg.id() != id {
        return Err(Attempt::Failed(Failure::Unreachable {
            server,
            reason: String::from("over TCP: an answer to another query"),
        }));
    }
    Ok(msg)
}

/// RFC 2308: a negative answer lives as long as the smaller of its SOA's
/// TTL and MINIMUM, within [`NEGATIVE_TTL`]; briefly without a SOA.
fn negative_ttl(msg: &Message) -> u32 {
    msg.name_servers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
            _ => None,
        })
        .min()
        .map_or(NEGATIVE_TTL_WITHOUT_SOA, |t| {
            t.clamp(NEGATIVE_TTL.0, NEGATIVE_TTL.1)
        })
}

/// Follows the CNAME chain from `qname` through the answer section and
/// collects the addresses at its end.
fn interpret(
    msg: &Message,
    qname: &Name,
    rtype: RecordType,
    server: SocketAddr,
) -> Result<Answer, Failure> {
    match msg.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Ok(Answer::NxDomain {
                ttl: negative_ttl(msg),
                server,
            });
        }
        rcode => return Err(Failure::Rcode { server, rcode }),
    }
    let mut current = qname.to_lowercase();
    let mut ttl = u32::MAX;
    let mut addrs = Vec::new();
    // A chain is at most as long as the answer section.
    for _ in 0..=msg.answers().len() {
        let mut next = None;
        for r in msg.answers() {
            if r.name().to_lowercase() != current {
                continue;
            }
            match r.data() {
                RData::A(a) if rtype == RecordType::A => {
                    addrs.push(IpAddr::V4(a.0));
                    ttl = ttl.min(r.ttl());
                }
                RData::AAAA(a) if rtype == RecordType::AAAA => {
                    addrs.push(IpAddr::V6(a.0));
                    ttl = ttl.min(r.ttl());
                }
                RData::CNAME(c) => {
                    next = Some(c.0.to_lowercase());
                    ttl = ttl.min(r.ttl());
                }
                _ => {}
            }
        }
        match next {
            Some(n) if addrs.is_empty() => current = n,
            _ => break,
        }
    }
    if addrs.is_empty() {
        return Ok(Answer::Addresses {
            addrs,
            ttl: negative_ttl(msg),
            server,
        });
    }
    Ok(Answer::Addresses {
        addrs,
        ttl: ttl.clamp(POSITIVE_TTL.0, POSITIVE_TTL.1),
        server,
    })
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Record, rdata};

    use super::*;

    fn response(rcode: ResponseCode, answers: Vec<Record>) -> Message {
        let mut m = Message::new();
        m.set_message_type(MessageType::Response)
            .set_response_code(rcode);
        for a in answers {
            m.add_answer(a);
        }
        m
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn server() -> SocketAddr {
        "10.0.0.53:53".parse().unwrap()
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        Record::from_rdata(
            name("example."),
            ttl,
            RData::SOA(rdata::SOA::new(
                name("ns.example."),
                name("hostmaster.example."),
                1,
                3600,
                600,
                86400,
                minimum,
            )),
        )
    }

    #[test]
    fn negative_answers_live_as_long_as_the_soa_says_within_bounds() {
        let mut nx = response(ResponseCode::NXDomain, vec![]);
        nx.add_name_server(soa(900, 60));
        assert_eq!(negative_ttl(&nx), 60, "the smaller of TTL and MINIMUM");
        let mut nx = response(ResponseCode::NXDomain, vec![]);
        nx.add_name_server(soa(30, 86400));
        assert_eq!(negative_ttl(&nx), 30);
        let mut long = response(ResponseCode::NXDomain, vec![]);
        long.add_name_server(soa(86400, 86400));
        assert_eq!(negative_ttl(&long), NEGATIVE_TTL.1);
        let mut zero = response(ResponseCode::NoError, vec![]);
        zero.add_name_server(soa(0, 0));
        assert_eq!(negative_ttl(&zero), NEGATIVE_TTL.0);
        assert_eq!(
            negative_ttl(&response(ResponseCode::NXDomain, vec![])),
            NEGATIVE_TTL_WITHOUT_SOA
        );
    }

    #[test]
    fn cname_chains_are_followed_to_the_addresses() {
        let msg = response(
            ResponseCode::NoError,
            vec![
                Record::from_rdata(
                    name("api.example.com."),
                    300,
                    RData::CNAME(rdata::CNAME(name("edge.cdn.net."))),
                ),
                Record::from_rdata(
                    name("edge.cdn.net."),
                    60,
                    RData::CNAME(rdata::CNAME(name("e1.cdn.net."))),
                ),
                Record::from_rdata(
                    name("e1.cdn.net."),
                    120,
                    RData::A(rdata::A([10, 1, 2, 3].into())),
                ),
                Record::from_rdata(
                    name("unrelated.net."),
                    120,
                    RData::A(rdata::A([10, 9, 9, 9].into())),
                ),
            ],
        );
        let a = interpret(&msg, &name("API.example.com."), RecordType::A, server()).unwrap();
        assert_eq!(
            a,
            Answer::Addresses {
                addrs: vec!["10.1.2.3".parse().unwrap()],
                ttl: 60,
                server: server()
            }
        );
    }

    #[test]
    fn nxdomain_and_nodata_are_told_apart() {
        let nx = response(ResponseCode::NXDomain, vec![]);
        assert_eq!(
            interpret(&nx, &name("x.example."), RecordType::A, server()),
            Ok(Answer::NxDomain {
                ttl: NEGATIVE_TTL_WITHOUT_SOA,
                server: server()
            })
        );
        let nodata = response(ResponseCode::NoError, vec![]);
        assert!(matches!(
            interpret(&nodata, &name("x.example."), RecordType::AAAA, server()),
            Ok(Answer::Addresses { addrs, .. }) if addrs.is_empty()
        ));
        let fail = response(ResponseCode::ServFail, vec![]);
        assert_eq!(
            interpret(&fail, &name("x.example."), RecordType::A, server()),
            Err(Failure::Rcode {
                server: server(),
                rcode: ResponseCode::ServFail
            })
        );
    }
}
