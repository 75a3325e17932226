//! The resolver the kernel sends the agent's DNS to (UDP and TCP port 53, at
//! any address). Until the allowlist resolver lands it answers every query
//! with REFUSED and sends nothing upstream, so DNS cannot carry data out.

use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, UdpSocket},
};

use crate::decision::{Decision, DecisionSink, Layer, Verdict};

/// Largest DNS message we read over UDP.
const MAX_UDP: usize = 4096;
/// Largest DNS message we accept over TCP.
const MAX_TCP: usize = 16 * 1024;
/// A TCP client that sends nothing for this long is dropped.
const IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds the answer to one query, or None for garbage (dropped silently).
fn answer(query: &[u8], sink: &DecisionSink) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    if msg.message_type() != MessageType::Query {
        return None;
    }
    let mut resp = Message::new();
    resp.set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(msg.op_code())
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(false)
        .set_response_code(ResponseCode::Refused);
    for q in msg.queries() {
        resp.add_query(q.clone());
        sink.record(
            &Decision::new(
                Layer::Dns,
                Verdict::Deny,
                "no names are resolved for the agent yet",
            )
            .host(q.name().to_ascii())
            .rule(format!("type {}", q.query_type())),
        );
    }
    resp.to_vec().ok()
}

/// Serves DNS over UDP until the task is dropped.
pub async fn serve_udp(sock: UdpSocket, sink: DecisionSink) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(resp) = answer(&buf[..n], &sink) {
            let _ = sock.send_to(&resp, peer).await;
        }
    }
}

/// Serves DNS over TCP (two-byte length prefix) until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, sink: DecisionSink) {
    let sink = Arc::new(sink);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let sink = Arc::clone(&sink);
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
                let Some(resp) = answer(&q, &sink) else {
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
