//! A request body that is forwarded as it streams, and cut off (the
//! upstream then sees an incomplete request, which it does not act on) when
//! a [`Detector`] finds what must not be in it: for bodies too large to read
//! before forwarding (a multipart `_method` part after a megabyte of file,
//! a `_method` field at the end of a large form).

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

/// Reads a body as it streams; says why it must be cut off, if it must.
pub trait Detector: Send + Sync {
    fn feed(&mut self, chunk: &[u8]) -> Option<String>;
}

/// Any of some byte patterns, in any letter case, across chunk boundaries.
pub struct Patterns {
    matcher: StreamMatcher,
    reason: String,
}

impl Patterns {
    /// `patterns` in lower case.
    pub fn new(patterns: &[&str], reason: &str) -> Self {
        Self {
            matcher: StreamMatcher::new(
                patterns
                    .iter()
                    .map(|p| (p.as_bytes().to_vec(), None))
                    .collect(),
            ),
            reason: reason.to_string(),
        }
    }
}

impl Detector for Patterns {
    fn feed(&mut self, chunk: &[u8]) -> Option<String> {
        let lower = chunk.to_ascii_lowercase();
        self.matcher.push(&lower).found.map(|_| self.reason.clone())
    }
}

/// Longest form field name read; a longer one cuts the body off (it could
/// hide `_method` behind padding a framework strips).
const MAX_KEY: usize = 4096;

/// The field names of an `application/x-www-form-urlencoded` body, read as
/// they stream: a name that frameworks read as `name` cuts it off.
pub struct FormKeys {
    name: String,
    key: Vec<u8>,
    in_value: bool,
    /// The current name is long and cannot be `name`: not kept.
    skipping: bool,
}

impl FormKeys {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            key: Vec::new(),
            in_value: false,
            skipping: false,
        }
    }

    fn decoded(key: &[u8]) -> String {
        url::form_urlencoded::parse(&[key, b"="].concat())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default()
    }

    fn check(&mut self) -> Option<String> {
        let key = std::mem::take(&mut self.key);
        if std::mem::take(&mut self.skipping) {
            return None;
        }
        let name = crate::policy::normalized_field(&Self::decoded(&key));
        name.eq_ignore_ascii_case(&self.name).then(|| {
            format!(
                "a form field `{}` (routed as another method by Rails, Laravel, Symfony)",
                self.name
            )
        })
    }

    /// A name grown to MAX_KEY bytes: either it cannot be `name` any more
    /// (then it is skipped), or it is padding that a framework strips.
    fn long_key(&mut self) -> Option<String> {
        let decoded = Self::decoded(&self.key);
        let meaningful =
            decoded.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '[' || c == ']');
        let lower = meaningful.to_ascii_lowercase();
        if meaningful.is_empty() || lower.starts_with(&self.name.to_ascii_lowercase()) {
            return Some(format!(
                "a form field name longer than {MAX_KEY} bytes that could be read as `{}`",
                self.name
            ));
        }
        self.key.clear();
        self.skipping = true;
        None
    }
}

impl Detector for FormKeys {
    fn feed(&mut self, chunk: &[u8]) -> Option<String> {
        for &b in chunk {
            match (self.in_value, b) {
                // Rack 2 splits form fields on `;` too.
                (_, b'&' | b';') => {
                    if !self.in_value
                        && let Some(why) = self.check()
                    {
                        return Some(why);
                    }
                    self.key.clear();
                    self.in_value = false;
                }
                (false, b'=') => {
                    if let Some(why) = self.check() {
                        return Some(why);
                    }
                    self.in_value = true;
                }
                (false, _) if self.skipping => {}
                (false, _) => {
                    self.key.push(b);
                    if self.key.len() >= MAX_KEY
                        && let Some(why) = self.long_key()
                    {
                        return Some(why);
                    }
                }
                (true, _) => {}
            }
        }
        None
    }
}

/// `inner`, cut off when the detector says so; `why` is filled with its
/// reason when it does.
pub struct Watch {
    inner: Body,
    detector: Box<dyn Detector>,
    why: Arc<OnceLock<String>>,
    done: bool,
}

impl Watch {
    pub fn new(inner: Body, detector: Box<dyn Detector>) -> (Self, Arc<OnceLock<String>>) {
        let why = Arc::new(OnceLock::new());
        (
            Self {
                inner,
                detector,
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
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(reason) = self.detector.feed(data)
                {
                    self.done = true;
                    let _ = self.why.set(reason.clone());
                    return Poll::Ready(Some(Err(Box::new(CutOff(reason)))));
                }
            }
            // The last field of a form ends with the body.
            Poll::Ready(None) => {
                if let Some(reason) = self.detector.feed(b"&") {
                    self.done = true;
                    let _ = self.why.set(reason.clone());
                    return Poll::Ready(Some(Err(Box::new(CutOff(reason)))));
                }
            }
            _ => {}
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
        let part = || Box::new(Patterns::new(&["name=\"_method\""], "a `_method` part"));
        let (w, why) = Watch::new(
            chunks(&[
                b"--b\r\nContent-Disposition: form-data; NAME=\"_Me",
                b"thod\"\r\n\r\nDELETE",
            ]),
            part(),
        );
        assert!(w.collect().await.is_err());
        assert_eq!(why.get().map(String::as_str), Some("a `_method` part"));
        let (w, why) = Watch::new(chunks(&[b"plain ", b"file data"]), part());
        assert_eq!(
            &w.collect().await.unwrap().to_bytes()[..],
            b"plain file data"
        );
        assert!(why.get().is_none());
    }

    #[tokio::test]
    async fn a_form_field_read_as_method_anywhere_cuts_the_body() {
        let cases: [&[&'static [u8]]; 7] = [
            &[b"a=1&_meth", b"od=DELETE"],
            &[b"a=1&%5F", b"method=DELETE&b=2"],
            &[b"a=1&+_method"],
            &[b"_method[]=x"],
            // Rack 2 splits on `;` and reads `[_method]`, `_method]` as `_method`.
            &[b"a=1;_method=DELETE"],
            &[b"a=1&[_met", b"hod]=DELETE"],
            &[b"_method]=DELETE"],
        ];
        for parts in cases {
            let (w, why) = Watch::new(chunks(parts), Box::new(FormKeys::new("_method")));
            assert!(w.collect().await.is_err(), "{parts:?}");
            assert!(why.get().is_some());
        }
        let (w, _) = Watch::new(
            chunks(&[b"method=x&", b"amount=_method"]),
            Box::new(FormKeys::new("_method")),
        );
        assert!(w.collect().await.is_ok());
        // A raw upload sent as a form (curl's default) is one long name.
        let big: &'static [u8] = Box::leak(vec![b'u'; 100_000].into_boxed_slice());
        let (w, _) = Watch::new(chunks(&[big, big]), Box::new(FormKeys::new("_method")));
        assert!(w.collect().await.is_ok());
        // Padding that PHP strips, then the name.
        let pad: &'static [u8] = Box::leak(vec![b'+'; 10_000].into_boxed_slice());
        let (w, _) = Watch::new(
            chunks(&[pad, b"_method=DELETE"]),
            Box::new(FormKeys::new("_method")),
        );
        assert!(w.collect().await.is_err());
        let pad: &'static [u8] = Box::leak(vec![b'['; 10_000].into_boxed_slice());
        let (w, _) = Watch::new(
            chunks(&[pad, b"_method=DELETE"]),
            Box::new(FormKeys::new("_method")),
        );
        assert!(w.collect().await.is_err());
    }
}
