//! A request body that is forwarded as it streams, and cut off (the
//! upstream then sees an incomplete request, which it does not act on) if
//! a pattern appears in it, in any letter case, across chunk boundaries:
//! for what must not be in a body too large to read before forwarding
//! (a multipart `_method` part after a megabyte of file).

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::Frame;

use super::upstream::{Body, BoxError};
use crate::secrets::matcher::StreamMatcher;

/// Why a watched body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the request body was cut off: {0}")]
pub struct CutOff(pub String);

/// `inner`, cut off when one of `patterns` (lower case) appears; `why` is
/// filled with `reason` when it does.
pub struct Watch {
    inner: Body,
    matcher: StreamMatcher,
    reason: String,
    why: Arc<OnceLock<String>>,
    done: bool,
}

impl Watch {
    pub fn new(inner: Body, patterns: &[&str], reason: &str) -> (Self, Arc<OnceLock<String>>) {
        let why = Arc::new(OnceLock::new());
        let matcher = StreamMatcher::new(
            patterns
                .iter()
                .map(|p| (p.as_bytes().to_vec(), None))
                .collect(),
        );
        (
            Self {
                inner,
                matcher,
                reason: reason.to_string(),
                why: Arc::clone(&why),
                done: false,
            },
            why,
        )
    }
}

impl hyper::body::Body for Watch {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            let lower = data.to_ascii_lowercase();
            if self.matcher.push(&lower).found.is_some() {
                self.done = true;
                let reason = self.reason.clone();
                let _ = self.why.set(reason.clone());
                return Poll::Ready(Some(Err(Box::new(CutOff(reason)))));
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// A body of these chunks, one frame each.
    struct Chunks(std::collections::VecDeque<&'static [u8]>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
            )
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Body {
        Chunks(parts.iter().copied().collect()).boxed()
    }

    #[tokio::test]
    async fn a_pattern_split_across_chunks_in_any_case_cuts_the_body() {
        let (w, why) = Watch::new(
            chunks(&[
                b"--b\r\nContent-Disposition: form-data; NAME=\"_Me",
                b"thod\"\r\n\r\nDELETE",
            ]),
            &["name=\"_method\""],
            "a `_method` part",
        );
        assert!(w.collect().await.is_err());
        assert_eq!(why.get().map(String::as_str), Some("a `_method` part"));
        let (w, why) = Watch::new(
            chunks(&[b"plain ", b"file data"]),
            &["name=\"_method\""],
            "x",
        );
        assert_eq!(
            &w.collect().await.unwrap().to_bytes()[..],
            b"plain file data"
        );
        assert!(why.get().is_none());
    }
}
