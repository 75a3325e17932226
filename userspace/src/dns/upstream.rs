//! The enforcer's own DNS client, for allowed names only: A and AAAA queries
//! over UDP (TCP when truncated) to the configured upstream servers, with
//! CNAME chains followed to the addresses.

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

/// Per-attempt timeout for one upstream server.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per server.
const ATTEMPTS: usize = 2;

/// What an upstream said about a name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Addresses (possibly none: the name exists without this type), with the TTL.
    Addresses(Vec<IpAddr>, u32),
    /// The name does not exist.
    NxDomain(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream DNS server answered ({0})")]
    NoAnswer(String),
    #[error("invalid name {0:?}")]
    BadName(String),
}

/// Asks `servers` for `name`'s `rtype` records, in order, until one answers.
pub async fn query(
    servers: &[SocketAddr],
    name: &str,
    rtype: RecordType,
) -> Result<Answer, UpstreamError> {
    let qname = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|_| UpstreamError::BadName(name.into()))?;
    let mut last = String::from("no server configured");
    for server in servers {
        for _ in 0..ATTEMPTS {
            match ask(*server, &qname, rtype).await {
                Ok(a) => return Ok(a),
                Err(e) => last = format!("{server}: {e}"),
            }
        }
    }
    Err(UpstreamError::NoAnswer(last))
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

async fn ask(server: SocketAddr, qname: &Name, rtype: RecordType) -> Result<Answer, String> {
    let (id, wire) = build(qname, rtype);
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(&wire).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let msg = loop {
        let n = tokio::time::timeout(ATTEMPT_TIMEOUT, sock.recv(&mut buf))
            .await
            .map_err(|_| String::from("timed out"))?
            .map_err(|e| e.to_string())?;
        let Ok(msg) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if msg.id() == id && msg.message_type() == MessageType::Response {
            break msg;
        }
    };
    let msg = if msg.truncated() {
        ask_tcp(server, &wire, id).await?
    } else {
        msg
    };
    interpret(&msg, qname, rtype)
}

async fn ask_tcp(server: SocketAddr, wire: &[u8], id: u16) -> Result<Message, String> {
    let run = async {
        let mut s = TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let len = u16::try_from(wire.len()).map_err(|e| e.to_string())?;
        s.write_all(&len.to_be_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(wire).await.map_err(|e| e.to_string())?;
        let mut l = [0u8; 2];
        s.read_exact(&mut l).await.map_err(|e| e.to_string())?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(l))];
        s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        Message::from_vec(&body).map_err(|e| e.to_string())
    };
    let msg = tokio::time::timeout(ATTEMPT_TIMEOUT, run)
        .await
        .map_err(|_| String::from("timed out over TCP"))??;
    if msg.id() != id {
        return Err(String::from("mismatched id over TCP"));
    }
    Ok(msg)
}

/// Follows the CNAME chain from `qname` through the answer section and
/// collects the addresses at its end.
fn interpret(msg: &Message, qname: &Name, rtype: RecordType) -> Result<Answer, String> {
    let negative_ttl = || {
        msg.name_servers()
            .iter()
            .map(|r| r.ttl())
            .min()
            .unwrap_or(30)
            .clamp(5, 3600)
    };
    match msg.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Answer::NxDomain(negative_ttl())),
        other => return Err(format!("upstream answered {other}")),
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
        return Ok(Answer::Addresses(Vec::new(), negative_ttl()));
    }
    Ok(Answer::Addresses(addrs, ttl.clamp(5, 3600)))
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
        let a = interpret(&msg, &name("API.example.com."), RecordType::A).unwrap();
        assert_eq!(a, Answer::Addresses(vec!["10.1.2.3".parse().unwrap()], 60));
    }

    #[test]
    fn nxdomain_and_nodata_are_told_apart() {
        let nx = response(ResponseCode::NXDomain, vec![]);
        assert!(matches!(
            interpret(&nx, &name("x.example."), RecordType::A),
            Ok(Answer::NxDomain(_))
        ));
        let nodata = response(ResponseCode::NoError, vec![]);
        assert!(matches!(
            interpret(&nodata, &name("x.example."), RecordType::AAAA),
            Ok(Answer::Addresses(v, _)) if v.is_empty()
        ));
        let fail = response(ResponseCode::ServFail, vec![]);
        assert!(interpret(&fail, &name("x.example."), RecordType::A).is_err());
    }
}
