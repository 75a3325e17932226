//! Reading the start of a body without losing it: up to a limit is read
//! into memory (to find a request's amount, hash it for the loop breaker, or
//! read a response's actual cost), and the body is then replayed in full,
//! what was read followed by the rest.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::{Frame, SizeHint};

use super::upstream::{Body, BoxError};

/// How much of a body the proxy holds to decide on it.
pub const LIMIT: usize = 1024 * 1024;
/// How long the agent (or a vendor) may take to send that much.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("the body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("reading the body failed: {0}")]
    Read(BoxError),
}

/// The first frames of a body, and the rest of it if it is longer.
pub struct Prefix {
    frames: VecDeque<Frame<Bytes>>,
    data: Bytes,
    rest: Option<Body>,
}

impl Prefix {
    /// The whole body's data, when it fit under the limit.
    pub fn complete(&self) -> Option<&Bytes> {
        self.rest.is_none().then_some(&self.data)
    }

    /// The data read (all of it, or the first [`LIMIT`] bytes or so).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The body again, from its first byte.
    pub fn into_body(self) -> Body {
        Replay {
            frames: self.frames,
            rest: self.rest,
        }
        .boxed()
    }
}

/// Reads frames of `body` until it ends or more than `limit` bytes of data
/// have arrived.
pub async fn read_prefix(mut body: Body, limit: usize) -> Result<Prefix, BufferError> {
    let mut frames = VecDeque::new();
    let mut data = BytesMut::new();
    let read = async {
        loop {
            if data.len() > limit {
                return Ok(false);
            }
            match body.frame().await {
                None => return Ok(true),
                Some(Err(e)) => return Err(BufferError::Read(e)),
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        data.extend_from_slice(d);
                    }
                    frames.push_back(frame);
                }
            }
        }
    };
    let ended = tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| BufferError::Timeout(READ_TIMEOUT))??;
    Ok(Prefix {
        frames,
        data: data.freeze(),
        rest: (!ended).then_some(body),
    })
}

/// Frames already read, then the rest of the body.
struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<Body>,
}

impl hyper::body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |r| r.size_hint());
        let mut hint = SizeHint::new();
        hint.set_lower(held + rest.lower());
        if let Some(upper) = rest.upper() {
            hint.set_upper(held + upper);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    /// A body arriving in these chunks.
    fn chunks(parts: &[&'static [u8]]) -> Body {
        Replay {
            frames: parts
                .iter()
                .map(|p| Frame::data(Bytes::from_static(p)))
                .collect(),
            rest: None,
        }
        .boxed()
    }

    #[tokio::test]
    async fn a_short_body_is_complete_and_replays() {
        let p = read_prefix(chunks(&[b"amount=", b"1999"]), 64)
            .await
            .unwrap();
        assert_eq!(p.complete().map(|b| &b[..]), Some(&b"amount=1999"[..]));
        let back = p.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&back[..], b"amount=1999");
    }

    #[tokio::test]
    async fn a_long_body_is_a_prefix_and_replays_whole() {
        let p = read_prefix(chunks(&[b"aaaa", b"bbbb", b"cccc", b"dddd"]), 5)
            .await
            .unwrap();
        assert!(p.complete().is_none());
        assert_eq!(&p.data()[..], b"aaaabbbb");
        let back = p.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&back[..], b"aaaabbbbccccdddd");
    }

    #[tokio::test]
    async fn an_empty_body_is_complete() {
        let empty = Full::new(Bytes::new()).map_err(|n| match n {}).boxed();
        let p = read_prefix(empty, 8).await.unwrap();
        assert_eq!(p.complete().map(Bytes::len), Some(0));
    }
}
