//! Keeping real values away from the agent on the way back: a response from
//! a host a secret was injected for has every occurrence of the real value,
//! in its headers and its (uncompressed) body, turned back into the
//! placeholder. Bodies are rewritten as they stream, with no size bound.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use hyper::body::{Body, Frame};

use super::matcher::{StreamMatcher, replace_all};
use crate::proxy::upstream::BoxError;

/// Replaces real values in every header value.
pub fn headers(headers: &mut HeaderMap, pairs: &[(String, String)]) {
    let patterns: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(r, p)| (r.as_bytes(), p.as_bytes()))
        .collect();
    for value in headers.values_mut() {
        let (out, changed) = replace_all(value.as_bytes(), &patterns);
        if changed && let Ok(v) = HeaderValue::from_bytes(&out) {
            *value = v;
        }
    }
}

/// A response body with real values turned back into placeholders.
pub struct RedactBody<B> {
    inner: B,
    matcher: StreamMatcher,
    trailers: Option<Frame<Bytes>>,
    done: bool,
}

impl<B> RedactBody<B> {
    pub fn new(inner: B, pairs: &[(String, String)]) -> Self {
        let matcher = StreamMatcher::new(
            pairs
                .iter()
                .map(|(r, p)| (r.as_bytes().to_vec(), Some(p.as_bytes().to_vec())))
                .collect(),
        );
        Self {
            inner,
            matcher,
            trailers: None,
            done: false,
        }
    }
}

impl<B> Body for RedactBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(t) = self.trailers.take() {
                return Poll::Ready(Some(Ok(t)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let step = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.matcher.push(&data),
                    Err(trailers) => {
                        self.trailers = Some(trailers);
                        self.done = true;
                        self.matcher.finish()
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    self.matcher.finish()
                }
            };
            if !step.out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(step.out))));
            }
        }
    }
}
