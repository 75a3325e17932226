//! WebSocket traffic after a `101 Switching Protocols`: frames are parsed
//! both ways instead of relayed as raw bytes. The agent's frames are
//! unmasked and scanned for placeholders of secrets bound to other hosts
//! (across frame boundaries); the vendor's frames have the real values
//! injected into the upgrade request turned back into placeholders, as they
//! stream and across frame boundaries (a frame whose end could begin a
//! secret is held until the next frame of its message). Compressed frames
//! (`permessage-deflate`) cannot be scanned: the upgrade request offers no
//! extension, and a compressed frame closes the connection.

use std::io::Cursor;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Control, Data, OpCode},
};

use crate::secrets::{matcher::StreamMatcher, redact::Redaction};

/// Largest frame payload relayed; a larger frame closes the connection
/// (it would have to be held whole to be rewritten).
pub const MAX_FRAME: u64 = 16 * 1024 * 1024;

/// Why a WebSocket relay stopped early.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("placeholder of {0} in a WebSocket frame")]
    Placeholder(String),
    #[error("a compressed WebSocket frame (RSV1) cannot be scanned")]
    Compressed,
    #[error("a WebSocket frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(u64),
    #[error("malformed WebSocket frame: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What the relay looks for: placeholders the agent must not send here
/// (name, value), and real values the agent must not see (every encoding
/// of each, see `secrets::redact`).
#[derive(Debug, Clone, Default)]
pub struct Guards {
    pub foreign: Vec<(String, Vec<u8>)>,
    pub redact: Redaction,
}

impl Guards {
    pub fn is_empty(&self) -> bool {
        self.foreign.is_empty() && self.redact.is_empty()
    }
}

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Relays frames until either side closes or a guard trips.
pub async fn relay<C, U>(client: C, upstream: U, guards: &Guards) -> (Moved, Result<(), WsError>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let mut up = Scanner::new(&guards.foreign);
    let mut down = Redactor::new(&guards.redact);
    let mut moved = Moved::default();
    let mut scan = |h: &FrameHeader, p| up.frame(h, p);
    let mut redact = |h: &FrameHeader, p| down.frame(h, p);
    let result = {
        let to_upstream = pump(
            &mut client_read,
            &mut upstream_write,
            &mut scan,
            &mut moved.to_upstream,
        );
        let to_client = pump(
            &mut upstream_read,
            &mut client_write,
            &mut redact,
            &mut moved.to_client,
        );
        // The first direction to end (closed, or refused) ends both.
        tokio::select! {
            r = to_upstream => r,
            r = to_client => r,
        }
    };
    let _ = upstream_write.shutdown().await;
    let _ = client_write.shutdown().await;
    (moved, result)
}

/// One frame in, zero or more bytes out (header and payload, ready to write).
type Transform<'a> = dyn FnMut(&FrameHeader, Vec<u8>) -> Result<Vec<u8>, WsError> + Send + 'a;

/// Reads frames from `from`, transforms each, writes the result to `to`.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    transform: &mut Transform<'_>,
    moved: &mut u64,
) -> Result<(), WsError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let (header, len) = loop {
            let mut cursor = Cursor::new(&buf[..]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    let used = cursor.position() as usize;
                    buf.advance(used);
                    break (header, len);
                }
                Ok(None) => {
                    if from.read_buf(&mut buf).await? == 0 {
                        // The peer closed between frames: a clean end.
                        return Ok(());
                    }
                }
                Err(e) => return Err(WsError::Malformed(e.to_string())),
            }
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Compressed);
        }
        if len > MAX_FRAME {
            return Err(WsError::TooLarge(len));
        }
        let len = len as usize;
        while buf.len() < len {
            if from.read_buf(&mut buf).await? == 0 {
                return Err(WsError::Malformed(
                    "connection closed inside a frame".into(),
                ));
            }
        }
        let mut payload = buf.split_to(len).to_vec();
        if let Some(mask) = header.mask {
            apply_mask(&mut payload, mask);
        }
        let out = transform(&header, payload)?;
        to.write_all(&out).await?;
        to.flush().await?;
        *moved += out.len() as u64;
        if header.opcode == OpCode::Control(Control::Close) {
            return Ok(());
        }
    }
}

/// XORs a payload with its 4-byte mask (RFC 6455 5.3); its own inverse.
fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// A frame with `header`'s flags and opcode around `payload` (masked again
/// with the header's mask, if it had one).
fn encode(header: &FrameHeader, mut payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    if let Some(mask) = header.mask {
        apply_mask(&mut payload, mask);
    }
    out.extend_from_slice(&payload);
    out
}

fn is_data(op: OpCode) -> bool {
    matches!(op, OpCode::Data(Data::Text | Data::Binary | Data::Continue))
}

/// The agent's direction: frames pass unchanged unless one carries a
/// placeholder that does not belong to this host.
struct Scanner<'a> {
    foreign: &'a [(String, Vec<u8>)],
    matcher: StreamMatcher,
}

impl<'a> Scanner<'a> {
    fn new(foreign: &'a [(String, Vec<u8>)]) -> Self {
        Self {
            foreign,
            matcher: Self::matcher(foreign),
        }
    }

    fn matcher(foreign: &[(String, Vec<u8>)]) -> StreamMatcher {
        StreamMatcher::new(foreign.iter().map(|(_, p)| (p.clone(), None)).collect())
    }

    fn frame(&mut self, header: &FrameHeader, payload: Vec<u8>) -> Result<Vec<u8>, WsError> {
        if !self.matcher.is_empty() {
            // Data frames are one stream (a placeholder split across frames
            // is still found); control frames are scanned on their own.
            let found = if is_data(header.opcode) {
                self.matcher.push(&payload).found
            } else {
                let mut alone = Self::matcher(self.foreign);
                alone.push(&payload).found.or(alone.finish().found)
            };
            if let Some(i) = found {
                let name = self.foreign.get(i).map(|(n, _)| n.clone());
                return Err(WsError::Placeholder(name.unwrap_or_default()));
            }
        }
        Ok(encode(header, payload))
    }
}

/// The vendor's direction: real values become placeholders; a data frame
/// whose end could be the start of a real value keeps that tail for the
/// next frame of the same message.
struct Redactor<'a> {
    redaction: &'a Redaction,
    message: StreamMatcher,
}

impl<'a> Redactor<'a> {
    fn new(redaction: &'a Redaction) -> Self {
        Self {
            redaction,
            message: redaction.matcher(),
        }
    }

    fn frame(&mut self, header: &FrameHeader, payload: Vec<u8>) -> Result<Vec<u8>, WsError> {
        if self.redaction.is_empty() {
            return Ok(encode(header, payload));
        }
        if is_data(header.opcode) {
            let mut out = self.message.push(&payload).out.to_vec();
            if header.is_final {
                out.extend_from_slice(&self.message.finish().out);
                self.message = self.redaction.matcher();
            }
            return Ok(encode(header, out));
        }
        let mut out = self.redaction.bytes(&payload).unwrap_or(payload);
        // Control frames hold at most 125 bytes.
        out.truncate(125);
        Ok(encode(header, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(op: OpCode, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final: fin,
            opcode: op,
            mask,
            ..FrameHeader::default()
        };
        encode(&header, payload.to_vec())
    }

    const TEXT: OpCode = OpCode::Data(Data::Text);
    const CONT: OpCode = OpCode::Data(Data::Continue);

    /// Runs `frames` from the client and `replies` from the vendor through
    /// the relay; returns what each side received and the result.
    async fn run(
        guards: Guards,
        frames: Vec<Vec<u8>>,
        replies: Vec<Vec<u8>>,
    ) -> (Vec<u8>, Vec<u8>, Result<(), WsError>) {
        let (client, mut agent) = tokio::io::duplex(1 << 20);
        let (upstream, mut vendor) = tokio::io::duplex(1 << 20);
        let relay = tokio::spawn(async move { relay(client, upstream, &guards).await.1 });
        for f in frames {
            agent.write_all(&f).await.unwrap();
        }
        let refused = replies.is_empty();
        // Let the agent's frames through before the vendor closes.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for r in replies {
            vendor.write_all(&r).await.unwrap();
        }
        // A close frame from the vendor ends the relay (unless the test
        // expects the agent's frames to end it).
        if !refused {
            vendor
                .write_all(&frame(OpCode::Control(Control::Close), true, None, b""))
                .await
                .unwrap();
        }
        let result = relay.await.unwrap();
        let mut to_vendor = Vec::new();
        let mut to_agent = Vec::new();
        drop(agent.shutdown().await);
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            vendor.read_to_end(&mut to_vendor),
        )
        .await;
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            agent.read_to_end(&mut to_agent),
        )
        .await;
        (to_vendor, to_agent, result)
    }

    /// Unmasked payloads of every frame in `wire`.
    fn payloads(wire: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = Cursor::new(wire);
        while let Ok(Some((h, len))) = FrameHeader::parse(&mut cur) {
            let start = cur.position() as usize;
            let mut p = wire[start..start + len as usize].to_vec();
            if let Some(m) = h.mask {
                apply_mask(&mut p, m);
            }
            out.push(p);
            cur.set_position((start + len as usize) as u64);
        }
        out
    }

    #[tokio::test]
    async fn a_foreign_placeholder_split_across_masked_frames_is_caught() {
        let guards = Guards {
            foreign: vec![("KEY".into(), b"sk_live_placeholder".to_vec())],
            redact: Redaction::default(),
        };
        let m = Some([1, 2, 3, 4]);
        let frames = vec![
            frame(TEXT, false, m, b"hello sk_live_pla"),
            frame(OpCode::Control(Control::Ping), true, m, b"ping"),
            frame(CONT, true, m, b"ceholder bye"),
        ];
        let (to_vendor, _, result) = run(guards, frames, vec![]).await;
        assert!(
            matches!(result, Err(WsError::Placeholder(ref n)) if n == "KEY"),
            "{result:?}"
        );
        let seen: Vec<u8> = payloads(&to_vendor).concat();
        assert!(!String::from_utf8_lossy(&seen).contains("sk_live_placeholder"));
    }

    #[tokio::test]
    async fn clean_frames_pass_unchanged() {
        let mut redact = Redaction::default();
        redact.add("REALKEY123", "sk_live_pl", &Vec::new());
        let guards = Guards {
            foreign: vec![("KEY".into(), b"sk_live_placeholder".to_vec())],
            redact,
        };
        let m = Some([9, 8, 7, 6]);
        let f = frame(TEXT, true, m, b"just text");
        let (to_vendor, to_agent, result) = run(
            guards,
            vec![f.clone()],
            vec![frame(TEXT, true, None, b"reply")],
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(&to_vendor[..f.len()], &f[..]);
        assert_eq!(payloads(&to_agent)[0], b"reply");
    }

    #[tokio::test]
    async fn real_values_are_redacted_across_frame_boundaries() {
        let real = b"REALKEY0123456789".to_vec();
        let mut redact = Redaction::default();
        redact.add("REALKEY0123456789", "sk_placeholder_xy", &Vec::new());
        let guards = Guards {
            foreign: Vec::new(),
            redact,
        };
        for cut in 1..real.len() {
            let replies = vec![
                frame(
                    TEXT,
                    false,
                    None,
                    &[b"a ".as_slice(), &real[..cut]].concat(),
                ),
                frame(OpCode::Control(Control::Pong), true, None, b"pong"),
                frame(
                    CONT,
                    true,
                    None,
                    &[&real[cut..], b" b ".as_slice(), &real].concat(),
                ),
            ];
            let (_, to_agent, result) = run(guards.clone(), vec![], replies).await;
            assert!(result.is_ok(), "{result:?}");
            let frames = payloads(&to_agent);
            let text: Vec<u8> = [frames[0].clone(), frames[2].clone()].concat();
            let text = String::from_utf8_lossy(&text);
            assert_eq!(text, "a sk_placeholder_xy b sk_placeholder_xy", "cut {cut}");
            assert_eq!(frames[1], b"pong");
        }
    }

    #[tokio::test]
    async fn compressed_and_oversized_frames_are_refused() {
        let mut header = FrameHeader {
            opcode: TEXT,
            rsv1: true,
            ..FrameHeader::default()
        };
        let compressed = encode(&header, b"x".to_vec());
        let (_, _, r) = run(Guards::default(), vec![compressed], vec![]).await;
        assert!(matches!(r, Err(WsError::Compressed)), "{r:?}");
        header.rsv1 = false;
        let mut big = Vec::new();
        header.format(MAX_FRAME + 1, &mut big).unwrap();
        let (_, _, r) = run(Guards::default(), vec![big], vec![]).await;
        assert!(matches!(r, Err(WsError::TooLarge(_))), "{r:?}");
    }
}
