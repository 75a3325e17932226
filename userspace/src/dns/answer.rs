//! How one DNS query of the agent's is answered. [`triage`] decides at once,
//! without asking anyone, everything that is not an allowed name's A or
//! AAAA: other names get NXDOMAIN, other types REFUSED, both with an
//! Extended DNS Error (RFC 8914) saying why. [`resolve`] looks allowed
//! names up through the run's resolver and answers with their synthetic
//! addresses, or, when the lookup failed, SERVFAIL with an Extended DNS
//! Error saying what failed. Every answered query is one decision.

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, opt::EdnsOption},
    },
};

use super::{
    error::{Failure, LookupError},
    server::DnsContext,
};
use crate::{
    decision::{Cause, Decision, Layer},
    secrets::scan,
};

/// TTL of synthetic answers (the mapping itself lasts the whole run).
const ANSWER_TTL: u32 = 60;
/// Extended DNS Error option code (RFC 8914).
const EDE_OPTION: u16 = 15;
/// Extended DNS Error info codes (RFC 8914 section 4).
pub mod ede {
    pub const OTHER: u16 = 0;
    pub const BLOCKED: u16 = 15;
    pub const PROHIBITED: u16 = 18;
    pub const NO_REACHABLE_AUTHORITY: u16 = 22;
}

/// What to answer a query with.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// An Extended DNS Error (sent when the client speaks EDNS).
    pub ede: Option<(u16, String)>,
}

impl Reply {
    fn new(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            ede: None,
        }
    }

    fn with_ede(rcode: ResponseCode, code: u16, text: impl Into<String>) -> Self {
        Self {
            ede: Some((code, text.into())),
            ..Self::new(rcode)
        }
    }
}

/// An allowed name's A or AAAA query, to be looked up.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub name: String,
    pub qname: Name,
    pub qtype: RecordType,
}

/// How a query goes on after [`triage`].
#[derive(Debug)]
pub enum Triage {
    /// Answered without asking anyone, and the decision to record, if any
    /// (malformed queries get an error code and no decision).
    Done(Reply, Option<Box<Decision>>),
    /// An allowed name: [`resolve`] it.
    Resolve(Lookup),
}

/// The question of a plain query, read without building a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    /// Normalized, as [`triage`] sees it.
    pub name: String,
    pub qtype: u16,
}

/// Reads the one question of a plain query (QR 0, opcode QUERY, one
/// question, labels of letters, digits, `-` and `_`, not starting with
/// `-`) without allocating a
/// message: enough to refuse a name the policy does not allow at the cost
/// of a string. None for anything else, which [`parse`] then reads.
pub fn peek(wire: &[u8]) -> Option<Peek> {
    let flags = *wire.get(2)?;
    let qdcount = u16::from_be_bytes([*wire.get(4)?, *wire.get(5)?]);
    // QR and the four opcode bits.
    if flags & 0xf8 != 0 || qdcount != 1 {
        return None;
    }
    let mut name = String::with_capacity(64);
    let mut pos = 12;
    loop {
        let len = usize::from(*wire.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        // Longer "labels" are compression pointers and the like.
        if len > 63 {
            return None;
        }
        let label = wire.get(pos..pos + len)?;
        // hickory writes a leading `-` escaped (`\-`): leave those to it.
        if label.first() == Some(&b'-')
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        if name.len() > 253 {
            return None;
        }
        pos += len;
    }
    let qtype = u16::from_be_bytes([*wire.get(pos)?, *wire.get(pos + 1)?]);
    // QCLASS must be there too.
    wire.get(pos + 2..pos + 4)?;
    (!name.is_empty()).then_some(Peek { name, qtype })
}

/// A query, or None for what is dropped unanswered (garbage, responses).
pub fn parse(wire: &[u8]) -> Option<Message> {
    let query = Message::from_vec(wire).ok()?;
    (query.message_type() == MessageType::Query).then_some(query)
}

fn decision(cause: Cause, name: &str, qtype: RecordType, reason: impl Into<String>) -> Decision {
    Decision::new(Layer::Dns, cause, reason)
        .host(name.to_string())
        .rule(format!("type {qtype}"), None)
}

/// Decides what can be decided without a lookup. Never waits.
pub fn triage(query: &Message, ctx: &DnsContext) -> Triage {
    if query.op_code() != OpCode::Query {
        return Triage::Done(Reply::new(ResponseCode::NotImp), None);
    }
    let [question] = query.queries() else {
        return Triage::Done(Reply::new(ResponseCode::FormErr), None);
    };
    let qname = question.name().clone();
    let name = super::normalize(&qname.to_ascii());
    let qtype = question.query_type();
    if let Some(secret) = scan::in_name(&ctx.secrets, &name) {
        let reason = format!(
            "{}: placeholder of {secret} in a DNS name",
            scan::EXFILTRATION
        );
        return Triage::Done(
            Reply::with_ede(
                ResponseCode::NXDomain,
                ede::BLOCKED,
                "refused by enforcer policy",
            ),
            Some(Box::new(decision(
                Cause::Exfiltration,
                &name,
                qtype,
                reason,
            ))),
        );
    }
    let observed = ctx.observe && matches!(qtype, RecordType::A | RecordType::AAAA);
    let policy = ctx.policy();
    if !policy.allows_name(&name) && observed {
        // Observe mode: answered, and recorded as what the policy would do.
        ctx.sink.record(&decision(
            Cause::WouldDeny,
            &name,
            qtype,
            "observe mode: would deny (not-in-policy): name not allowed by policy; answered",
        ));
    } else if !policy.allows_name(&name) {
        return Triage::Done(
            Reply::with_ede(
                ResponseCode::NXDomain,
                ede::BLOCKED,
                "name not allowed by enforcer policy",
            ),
            Some(Box::new(decision(
                Cause::NotInPolicy,
                &name,
                qtype,
                "name not allowed by policy (NXDOMAIN, nothing sent upstream)",
            ))),
        );
    }
    if qtype != RecordType::A && qtype != RecordType::AAAA {
        return Triage::Done(
            Reply::with_ede(
                ResponseCode::Refused,
                ede::PROHIBITED,
                format!("record type {qtype} refused by enforcer"),
            ),
            Some(Box::new(decision(
                Cause::NotInPolicy,
                &name,
                qtype,
                format!("record type {qtype} refused: only A and AAAA are answered"),
            ))),
        );
    }
    Triage::Resolve(Lookup { name, qname, qtype })
}

/// The Extended DNS Error of a SERVFAIL for an allowed name: what failed,
/// without the upstream servers' addresses or the system's error text.
pub fn failure_ede(e: &LookupError) -> (u16, String) {
    let code = match &e.failure {
        Failure::Timeout { .. } | Failure::Unreachable { .. } => ede::NO_REACHABLE_AUTHORITY,
        _ => ede::OTHER,
    };
    let mut text = format!(
        "enforcer: lookup of an allowed name failed: {}",
        e.failure.summary()
    );
    if !e.retry_in.is_zero() {
        text.push_str(&format!(
            "; not asked again for {} s",
            super::error::whole_seconds(e.retry_in)
        ));
    }
    (code, text)
}

/// Looks an allowed name up and says what to answer, and the decision.
pub async fn resolve(l: &Lookup, ctx: &DnsContext) -> (Reply, Decision) {
    let (name, qtype) = (l.name.as_str(), l.qtype);
    if let Err(e) = ctx.resolver.lookup(name).await {
        return match &e.failure {
            Failure::Budget(b) => (
                Reply::with_ede(ResponseCode::NXDomain, ede::BLOCKED, b.to_string()),
                decision(Cause::RateLimited, name, qtype, b.to_string()),
            ),
            Failure::NxDomain { .. } => (
                Reply::new(ResponseCode::NXDomain),
                decision(
                    Cause::Allowed,
                    name,
                    qtype,
                    format!("allowed, but the name does not exist: {e}"),
                ),
            ),
            Failure::NoAddress { .. } => (
                Reply::new(ResponseCode::NoError),
                decision(
                    Cause::Allowed,
                    name,
                    qtype,
                    format!("allowed, but the name has no address: {e}"),
                ),
            ),
            _ => {
                let (code, text) = failure_ede(&e);
                (
                    Reply::with_ede(ResponseCode::ServFail, code, text),
                    decision(
                        Cause::Allowed,
                        name,
                        qtype,
                        format!("allowed, but the lookup failed: {e}"),
                    ),
                )
            }
        };
    }
    if qtype == RecordType::AAAA && !ctx.ipv6 {
        return (
            Reply::new(ResponseCode::NoError),
            decision(
                Cause::Allowed,
                name,
                qtype,
                "allowed (no AAAA: the proxy has no IPv6 listener)",
            ),
        );
    }
    let Ok((v4, v6)) = ctx.resolver.names.assign(name) else {
        return (
            Reply::with_ede(
                ResponseCode::ServFail,
                ede::OTHER,
                "enforcer: this run has handed out all its synthetic addresses",
            ),
            decision(
                Cause::RateLimited,
                name,
                qtype,
                "synthetic addresses exhausted",
            ),
        );
    };
    let rdata = if qtype == RecordType::A {
        RData::A(A(v4))
    } else {
        RData::AAAA(AAAA(v6))
    };
    (
        Reply {
            answers: vec![Record::from_rdata(l.qname.clone(), ANSWER_TTL, rdata)],
            ..Reply::new(ResponseCode::NoError)
        },
        decision(Cause::Allowed, name, qtype, "allowed by policy"),
    )
}

/// The wire form of `reply` to `query`.
pub fn encode(query: &Message, reply: &Reply) -> Option<Vec<u8>> {
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(reply.rcode);
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        if let Some((code, text)) = &reply.ede {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(text.as_bytes());
            edns.options_mut()
                .insert(EdnsOption::Unknown(EDE_OPTION, payload));
        }
        resp.set_edns(edns);
    }
    if let [question] = query.queries() {
        resp.add_query(question.clone());
    }
    for r in &reply.answers {
        resp.add_answer(r.clone());
    }
    resp.to_vec().ok()
}

/// Answers one query from start to end and records its decision; None for
/// garbage (dropped, never echoed).
pub async fn answer(wire: &[u8], ctx: &DnsContext) -> Option<Vec<u8>> {
    let query = parse(wire)?;
    let (reply, decision) = match triage(&query, ctx) {
        Triage::Done(reply, decision) => (reply, decision),
        Triage::Resolve(l) => {
            let (reply, decision) = resolve(&l, ctx).await;
            (reply, Some(Box::new(decision)))
        }
    };
    if let Some(d) = decision {
        ctx.sink.record(&d);
    }
    encode(&query, &reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{
        fake::{Behaviour, FakeUpstream, context, ede as ede_of, query, resolver},
        server,
    };

    async fn ask(ctx: &DnsContext, name: &str, rtype: RecordType, edns: bool) -> Message {
        let wire = server::answer(&query(name, rtype, edns), ctx)
            .await
            .expect("an answer");
        Message::from_vec(&wire).expect("a DNS message")
    }

    /// Issue 12: the SERVFAIL for an allowed name whose lookup failed
    /// carried an Extended DNS Error without text.
    #[tokio::test]
    async fn a_servfail_for_an_allowed_name_says_what_failed() {
        let up = FakeUpstream::start(Behaviour::ServFail).await;
        let ctx = context(resolver(up.addr));
        let resp = ask(&ctx, "api.vendor.test.", RecordType::A, true).await;
        assert_eq!(resp.response_code(), ResponseCode::ServFail);
        let (code, text) = ede_of(&resp).expect("an Extended DNS Error");
        assert_eq!(code, ede::OTHER);
        assert_eq!(
            text,
            "enforcer: lookup of an allowed name failed: the upstream DNS server \
             answered SERVFAIL; not asked again for 5 s"
        );
        // Where enforcer's resolvers are is none of the agent's business.
        assert!(!text.contains(&up.addr.ip().to_string()), "{text}");

        up.set(Behaviour::Silent);
        let ctx = context(resolver(up.addr));
        let resp = ask(&ctx, "api.vendor.test.", RecordType::AAAA, true).await;
        assert_eq!(resp.response_code(), ResponseCode::ServFail);
        let (code, text) = ede_of(&resp).expect("an Extended DNS Error");
        assert_eq!(code, ede::NO_REACHABLE_AUTHORITY);
        assert!(
            text.contains("the upstream DNS server did not answer within 200 ms"),
            "{text}"
        );

        // Without EDNS there is nowhere to say it: a plain SERVFAIL.
        let resp = ask(&ctx, "api.vendor.test.", RecordType::A, false).await;
        assert_eq!(resp.response_code(), ResponseCode::ServFail);
        assert!(resp.extensions().is_none());
    }

    #[tokio::test]
    async fn names_that_do_not_exist_upstream_are_answered_as_upstream_says() {
        let up = FakeUpstream::start(Behaviour::NxDomain { soa_minimum: 60 }).await;
        let ctx = context(resolver(up.addr));
        let resp = ask(&ctx, "api.vendor.test.", RecordType::A, true).await;
        assert_eq!(resp.response_code(), ResponseCode::NXDomain);
        assert_eq!(ede_of(&resp), None, "upstream's answer, not a refusal");
        // The name exists without addresses: NODATA, not NXDOMAIN.
        up.set(Behaviour::Addresses(Vec::new()));
        let ctx = context(resolver(up.addr));
        let resp = ask(&ctx, "api.vendor.test.", RecordType::A, true).await;
        assert_eq!(resp.response_code(), ResponseCode::NoError);
        assert!(resp.answers().is_empty());
        // And refusals still say why.
        let resp = ask(&ctx, "other.test.", RecordType::A, true).await;
        assert_eq!(resp.response_code(), ResponseCode::NXDomain);
        assert_eq!(
            ede_of(&resp),
            Some((
                ede::BLOCKED,
                String::from("name not allowed by enforcer policy")
            ))
        );
        let resp = ask(&ctx, "api.vendor.test.", RecordType::TXT, true).await;
        assert_eq!(resp.response_code(), ResponseCode::Refused);
        assert_eq!(ede_of(&resp).map(|e| e.0), Some(ede::PROHIBITED));
    }

    #[tokio::test]
    async fn allowed_names_get_their_synthetic_address() {
        let up = FakeUpstream::start(Behaviour::Addresses(vec!["10.0.0.7".parse().unwrap()])).await;
        let ctx = context(resolver(up.addr));
        let resp = ask(&ctx, "API.vendor.test.", RecordType::A, true).await;
        assert_eq!(resp.response_code(), ResponseCode::NoError);
        assert_eq!(
            resp.answers()[0].data(),
            &RData::A(A("198.18.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn peek_reads_plain_questions_as_triage_would() {
        let q = query("Flood-1_x.Example.TEST.", RecordType::AAAA, true);
        assert_eq!(
            peek(&q),
            Some(Peek {
                name: String::from("flood-1_x.example.test"),
                qtype: 28
            })
        );
        // A response, two questions, a compression pointer, odd bytes, a
        // truncated question: left to the full parser.
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert_eq!(peek(&resp), None);
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(peek(&two), None);
        let mut pointer = q[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(peek(&pointer), None);
        let odd = query("a\\.b.test.", RecordType::A, false);
        assert_eq!(peek(&odd), None);
        // hickory writes a leading dash escaped: the parser decides those.
        let mut dash = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        dash.extend_from_slice(&[2, b'-', b'x', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1]);
        assert_eq!(peek(&dash), None);
        assert!(parse(&dash).is_some());
        assert_eq!(peek(&q[..q.len() - 13]), None);
        assert_eq!(peek(&[]), None);
    }

    /// A query for `labels` of type `qtype`, built byte by byte.
    fn raw_query(labels: &[String], qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in labels {
            q.push(u8::try_from(l.len()).unwrap());
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    proptest::proptest! {
        /// Whatever peek reads, the full parser reads the same way: the
        /// intake's shortcut never refuses a name triage would allow.
        #[test]
        fn peek_agrees_with_the_parser(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            labels in proptest::collection::vec("[a-zA-Z0-9_-]{1,20}", 1..5),
            qtype in proptest::prelude::any::<u16>(),
        ) {
            let plain = raw_query(&labels, qtype);
            proptest::prop_assert_eq!(
                peek(&plain).is_some(),
                labels.iter().all(|l| !l.starts_with('-'))
            );
            for wire in [junk.as_slice(), plain.as_slice()] {
                if let (Some(p), Some(m)) = (peek(wire), parse(wire))
                    && let [question] = m.queries()
                {
                    proptest::prop_assert_eq!(
                        &p.name,
                        &crate::dns::normalize(&question.name().to_ascii())
                    );
                    proptest::prop_assert_eq!(p.qtype, u16::from(question.query_type()));
                }
            }
        }
    }
}
