//! The resolver the kernel sends the agent's DNS to (UDP and TCP port 53, at
//! any address). It answers A and AAAA for names the policy allows, with
//! synthetic addresses (see [`super::names`]); every other name gets
//! NXDOMAIN and every other record type REFUSED, both with an Extended DNS
//! Error saying why, and neither ever causes an upstream query. Every query
//! is one decision.

use std::{sync::Arc, time::Duration};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, opt::EdnsOption},
    },
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
};

use super::{Failure, LookupError, Resolver};
use crate::{
    decision::{Alarm, Decision, DecisionSink, Layer, Verdict},
    policy::Policy,
    secrets::{Secrets, scan},
};

/// Largest DNS message we read over UDP.
const MAX_UDP: usize = 4096;
/// Largest DNS message we accept over TCP.
const MAX_TCP: usize = 16 * 1024;
/// A TCP client that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(10);
/// TTL of synthetic answers (the mapping itself lasts the whole run).
const ANSWER_TTL: u32 = 60;
/// Extended DNS Error option code and the info codes we use (RFC 8914).
const EDE_OPTION: u16 = 15;
const EDE_BLOCKED: u16 = 15;
const EDE_PROHIBITED: u16 = 18;

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

/// How one question is answered.
enum Outcome {
    Addresses(Vec<Record>),
    NoData,
    Refuse(ResponseCode, u16, String),
}

fn response(query: &Message, rcode: ResponseCode) -> Message {
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(rcode);
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        resp.set_edns(edns);
    }
    resp
}

/// An Extended DNS Error (only when the client speaks EDNS).
fn add_ede(resp: &mut Message, code: u16, text: &str) {
    if let Some(edns) = resp.extensions_mut() {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(text.as_bytes());
        edns.options_mut()
            .insert(EdnsOption::Unknown(EDE_OPTION, payload));
    }
}

/// Builds the answer to one query; None for garbage (dropped, never echoed).
pub async fn answer(wire: &[u8], ctx: &DnsContext) -> Option<Vec<u8>> {
    let query = Message::from_vec(wire).ok()?;
    if query.message_type() != MessageType::Query {
        return None;
    }
    if query.op_code() != OpCode::Query {
        return response(&query, ResponseCode::NotImp).to_vec().ok();
    }
    let [question] = query.queries() else {
        return response(&query, ResponseCode::FormErr).to_vec().ok();
    };
    let qname = question.name().clone();
    let name = super::normalize(&qname.to_ascii());
    let qtype = question.query_type();
    let outcome = decide(&name, &qname, qtype, ctx).await;
    let mut resp = match &outcome {
        Outcome::Addresses(_) | Outcome::NoData => response(&query, ResponseCode::NoError),
        Outcome::Refuse(rcode, _, _) => response(&query, *rcode),
    };
    resp.add_query(question.clone());
    match outcome {
        Outcome::Addresses(records) => {
            for r in records {
                resp.add_answer(r);
            }
        }
        Outcome::NoData => {}
        Outcome::Refuse(_, code, text) => add_ede(&mut resp, code, &text),
    }
    resp.to_vec().ok()
}

fn record(
    ctx: &DnsContext,
    verdict: Verdict,
    name: &str,
    qtype: RecordType,
    reason: impl Into<String>,
) {
    ctx.sink.record(
        &Decision::new(Layer::Dns, verdict, reason)
            .host(name.to_string())
            .rule(format!("type {qtype}")),
    );
}

async fn decide(name: &str, qname: &Name, qtype: RecordType, ctx: &DnsContext) -> Outcome {
    if let Some(secret) = scan::in_name(&ctx.secrets, name) {
        let reason = format!(
            "{}: placeholder of {secret} in a DNS name",
            scan::EXFILTRATION
        );
        ctx.sink.record(
            &Decision::new(Layer::Dns, Verdict::Deny, reason)
                .host(name.to_string())
                .rule(format!("type {qtype}"))
                .alarm(Alarm::Exfiltration),
        );
        return Outcome::Refuse(
            ResponseCode::NXDomain,
            EDE_BLOCKED,
            String::from("refused by enforcer policy"),
        );
    }
    if !ctx.policy.allows_name(name) {
        record(
            ctx,
            Verdict::Deny,
            name,
            qtype,
            "name not allowed by policy (NXDOMAIN, nothing sent upstream)",
        );
        return Outcome::Refuse(
            ResponseCode::NXDomain,
            EDE_BLOCKED,
            String::from("name not allowed by enforcer policy"),
        );
    }
    if qtype != RecordType::A && qtype != RecordType::AAAA {
        record(
            ctx,
            Verdict::Deny,
            name,
            qtype,
            format!("record type {qtype} refused: only A and AAAA are answered"),
        );
        return Outcome::Refuse(
            ResponseCode::Refused,
            EDE_PROHIBITED,
            format!("record type {qtype} refused by enforcer"),
        );
    }
    match ctx.resolver.lookup(name).await {
        Ok(_) => {}
        Err(LookupError {
            failure: Failure::Budget(e),
            ..
        }) => {
            record(ctx, Verdict::Deny, name, qtype, e.to_string());
            return Outcome::Refuse(ResponseCode::NXDomain, EDE_BLOCKED, e.to_string());
        }
        Err(
            e @ LookupError {
                failure: Failure::NxDomain { .. } | Failure::NoAddress { .. },
                ..
            },
        ) => {
            record(
                ctx,
                Verdict::Allow,
                name,
                qtype,
                format!("allowed, but the name has no address: {e}"),
            );
            return Outcome::Refuse(ResponseCode::NXDomain, 0, String::new());
        }
        Err(e) => {
            record(
                ctx,
                Verdict::Allow,
                name,
                qtype,
                format!("allowed, but the lookup failed: {e}"),
            );
            return Outcome::Refuse(ResponseCode::ServFail, 0, String::new());
        }
    }
    if qtype == RecordType::AAAA && !ctx.ipv6 {
        record(
            ctx,
            Verdict::Allow,
            name,
            qtype,
            "allowed (no AAAA: the proxy has no IPv6 listener)",
        );
        return Outcome::NoData;
    }
    let Ok((v4, v6)) = ctx.resolver.names.assign(name) else {
        record(
            ctx,
            Verdict::Deny,
            name,
            qtype,
            "synthetic addresses exhausted",
        );
        return Outcome::Refuse(ResponseCode::ServFail, 0, String::new());
    };
    record(ctx, Verdict::Allow, name, qtype, "allowed by policy");
    let rdata = if qtype == RecordType::A {
        RData::A(A(v4))
    } else {
        RData::AAAA(AAAA(v6))
    };
    Outcome::Addresses(vec![Record::from_rdata(qname.clone(), ANSWER_TTL, rdata)])
}

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
