//! Just enough WebSocket (RFC 6455) for the tests: the handshake key, and
//! frames written and read by hand, so that a test controls exactly where
//! one frame ends and the next begins (a library would not let it).

use std::io::{self, Read};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _};

pub const TEXT: u8 = 1;
pub const CONTINUATION: u8 = 0;
pub const CLOSE: u8 = 8;
pub const PING: u8 = 9;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// One frame on the wire.
pub fn encode(opcode: u8, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(masked | n as u8),
        n if n <= 0xffff => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if let Some(m) = mask {
        out.extend_from_slice(&m);
        for (i, b) in body.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    out.extend_from_slice(&body);
    out
}

/// A frame read back: fin, opcode, unmasked payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

fn decode_head(head: [u8; 2]) -> (bool, u8, bool, u8) {
    (
        head[0] & 0x80 != 0,
        head[0] & 0x0f,
        head[1] & 0x80 != 0,
        head[1] & 0x7f,
    )
}

fn unmask(payload: &mut [u8], mask: Option<[u8; 4]>) {
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
}

/// Reads one frame (blocking).
pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head)?;
    let (fin, opcode, masked, len7) = decode_head(head);
    let len = match len7 {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mask = if masked {
        let mut m = [0u8; 4];
        r.read_exact(&mut m)?;
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    r.read_exact(&mut payload)?;
    unmask(&mut payload, mask);
    Ok(Frame {
        fin,
        opcode,
        payload,
    })
}

/// Reads one frame (async).
pub async fn read_frame_async(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Frame> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let (fin, opcode, masked, len7) = decode_head(head);
    let len = match len7 {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    let mask = if masked {
        let mut m = [0u8; 4];
        r.read_exact(&mut m).await?;
        Some(m)
    } else {
        None
    };
    if len > 1 << 20 {
        return Err(io::Error::other("frame too large for a test"));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    unmask(&mut payload, mask);
    Ok(Frame {
        fin,
        opcode,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_round_trip() {
        for len in [0usize, 5, 125, 126, 70_000] {
            let payload = vec![7u8; len];
            let wire = encode(TEXT, true, Some([1, 2, 3, 4]), &payload);
            let f = read_frame(&mut &wire[..]).unwrap();
            assert_eq!(f.payload, payload);
            assert!(f.fin);
        }
    }
}
