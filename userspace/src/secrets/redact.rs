//! Keeping real values away from the agent on the way back. A response to a
//! request that had secrets injected has every encoding of each real value
//! (see `variants`) turned back into the same encoding of its placeholder:
//! in header names and values, the HTTP/1 reason phrase, the body, and the
//! trailers, for 101 Switching Protocols heads too. A compressed body is
//! decoded first (see `decode`), and one that cannot be decoded is refused
//! rather than passed on unscanned. Bodies are rewritten as they stream.
//!
//! The proxy calls one function, [`response`], on every response.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Frame;

use super::{
    Secret,
    decode::{self, Undecodable},
    matcher::StreamMatcher,
    variants::{self, Core},
};
use crate::proxy::upstream::{Body, BoxError};

/// Exact wire forms (real, placeholder) a secret went out as.
pub type Wire = Vec<(Vec<u8>, Vec<u8>)>;

/// Every encoding of every real value one response must not show, each
/// with the same encoding of its placeholder, gathered as the request's
/// secrets are injected.
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    cores: Vec<Arc<[Core]>>,
}

/// A secret's cores for the wire forms it last went out as: derived once,
/// not on every request (about 15 µs for a 40-byte key).
#[derive(Default)]
pub struct CoreCache(Mutex<Option<(Wire, Arc<[Core]>)>>);

impl std::fmt::Debug for CoreCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreCache(<redacted>)")
    }
}

fn derive(real: &[u8], placeholder: &[u8], wire: &Wire) -> Arc<[Core]> {
    let mut cores = variants::of_value(real, placeholder);
    for (r, p) in wire {
        cores.extend(variants::of_wire(r, p));
    }
    variants::dedup(cores).into()
}

impl Redaction {
    pub fn is_empty(&self) -> bool {
        self.cores.iter().all(|c| c.is_empty())
    }

    /// Adds a value: its own encodings, and those of each exact wire form
    /// it was injected as.
    pub fn add(&mut self, real: &str, placeholder: &str, wire: &Wire) {
        self.cores
            .push(derive(real.as_bytes(), placeholder.as_bytes(), wire));
    }

    /// Adds an injected secret, reusing its cores when it went out in the
    /// same wire forms as last time.
    pub fn add_secret(&mut self, secret: &Secret, wire: Wire) {
        let Ok(mut cache) = secret.cores.0.lock() else {
            self.add(secret.value(), &secret.placeholder, &wire);
            return;
        };
        let cores = match &*cache {
            Some((w, cores)) if *w == wire => Arc::clone(cores),
            _ => {
                let cores = derive(
                    secret.value().as_bytes(),
                    secret.placeholder.as_bytes(),
                    &wire,
                );
                *cache = Some((wire, Arc::clone(&cores)));
                cores
            }
        };
        self.cores.push(cores);
    }

    /// How many encodings are searched for.
    pub fn len(&self) -> usize {
        self.cores.iter().map(|c| c.len()).sum()
    }

    /// A streaming matcher for every encoding (WebSocket frames use it).
    pub fn matcher(&self) -> StreamMatcher {
        StreamMatcher::encoded(
            self.cores
                .iter()
                .flat_map(|c| c.iter())
                .map(|c| (c.real.clone(), Some(c.placeholder.clone())))
                .collect(),
        )
    }

    /// `input` redacted, or None when it held nothing to redact.
    pub fn bytes(&self, input: &[u8]) -> Option<Vec<u8>> {
        let (out, found) = self.matcher().apply(input);
        found.then_some(out)
    }
}

/// Why a response that must be redacted cannot be passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unscannable {
    #[error(
        "{0}; it could carry the real credential, so it is not passed on (the request had \
         secrets injected; enforcer asked for no compression)"
    )]
    Encoding(#[from] Undecodable),
}

impl Unscannable {
    /// The coding that could not be decoded, for the answer and the audit.
    pub fn encoding(&self) -> String {
        match self {
            Self::Encoding(Undecodable::Unknown(name)) => name.clone(),
            Self::Encoding(Undecodable::TooMany(n)) => format!("{n} stacked encodings"),
        }
    }
}

/// The one entry point for the proxy: redacts a response's head in place
/// and returns its body decoded and redacted, or why it cannot be. With an
/// empty `redaction` nothing is touched.
pub fn response(
    parts: &mut http::response::Parts,
    body: Body,
    redaction: &Redaction,
) -> Result<Body, Unscannable> {
    if redaction.is_empty() {
        return Ok(body);
    }
    let mut m = redaction.matcher();
    headers_with(&mut m, &mut parts.headers);
    if let Some(reason) = parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        let (out, found) = m.apply(reason.as_bytes());
        if found {
            match hyper::ext::ReasonPhrase::try_from(out) {
                Ok(r) => {
                    parts.extensions.insert(r);
                }
                Err(_) => {
                    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
                }
            }
        }
    }
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // No body; what follows the upgrade is the relay's to scan.
        return Ok(body);
    }
    let codings = decode::codings(&parts.headers)?;
    let body = if codings.is_empty() {
        body
    } else {
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::TRANSFER_ENCODING);
        decode::decode(body, &codings)
    };
    // The length changes with decoding, and may with redaction.
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(RedactBody {
        inner: body,
        matcher: m,
        trailers: None,
        done: false,
    }
    .boxed())
}

/// Replaces real values in every header name and value.
pub fn headers(headers: &mut HeaderMap, redaction: &Redaction) {
    if !redaction.is_empty() {
        headers_with(&mut redaction.matcher(), headers);
    }
}

fn headers_with(m: &mut StreamMatcher, headers: &mut HeaderMap) {
    let renamed = headers.keys().any(|k| m.apply(k.as_str().as_bytes()).1);
    if renamed {
        let old = std::mem::take(headers);
        let mut name = None;
        for (k, v) in old {
            if let Some(k) = k {
                let (out, found) = m.apply(k.as_str().as_bytes());
                // A name that cannot be written redacted is dropped with its values.
                name = if found {
                    HeaderName::from_bytes(&out).ok()
                } else {
                    Some(k)
                };
            }
            if let Some(n) = &name {
                headers.append(n.clone(), v);
            }
        }
    }
    let mut unwritable = Vec::new();
    for (name, value) in headers.iter_mut() {
        let (out, found) = m.apply(value.as_bytes());
        if found {
            match HeaderValue::from_bytes(&out) {
                Ok(v) => *value = v,
                Err(_) => unwritable.push(name.clone()),
            }
        }
    }
    for name in unwritable {
        headers.remove(name);
    }
}

/// A response body with real values turned back into placeholders, its
/// trailers too.
pub struct RedactBody {
    inner: Body,
    matcher: StreamMatcher,
    trailers: Option<Frame<Bytes>>,
    done: bool,
}

impl hyper::body::Body for RedactBody {
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
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.matcher.push(&data),
                    Err(frame) => {
                        // Trailers end the data: flush what was held back first.
                        self.done = true;
                        let step = self.matcher.finish();
                        if let Ok(mut t) = frame.into_trailers() {
                            headers_with(&mut self.matcher, &mut t);
                            self.trailers = Some(Frame::trailers(t));
                        }
                        step
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

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use base64::{
        Engine as _,
        engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
    };
    use http::Response;

    use super::*;
    use crate::secrets::{decode::tests::body_of, variants::hex};

    const REAL: &str = "sk_live_R3aL/K3y+0123456789abcdefXYZ==";
    const PH: &str = "sk_live_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";

    fn redaction() -> Redaction {
        let mut r = Redaction::default();
        r.add(REAL, PH, &vec![]);
        r
    }

    fn pct(s: &[u8], upper: bool, all: bool) -> String {
        s.iter()
            .map(|&b| {
                if !all && (b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
                    char::from(b).to_string()
                } else if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    fn json_u(s: &[u8], upper: bool) -> String {
        s.iter()
            .map(|b| {
                if upper {
                    format!("\\u{b:04X}")
                } else {
                    format!("\\u{b:04x}")
                }
            })
            .collect()
    }

    /// Every echo of REAL a careless vendor could send, each paired with
    /// what the agent must then see (None: only that REAL is gone).
    fn echoes() -> Vec<(String, Option<String>)> {
        let (r, p) = (REAL.as_bytes(), PH.as_bytes());
        let mut v: Vec<(String, Option<String>)> = Vec::new();
        let mut same = |f: &dyn Fn(&[u8]) -> String| v.push((f(r), Some(f(p))));
        same(&|s| String::from_utf8_lossy(s).into_owned());
        for upper in [true, false] {
            for all in [true, false] {
                same(&|s| pct(s, upper, all));
            }
            same(&|s| json_u(s, upper));
            same(&|s| String::from_utf8(hex(s, upper)).unwrap());
        }
        // Form encoding: `+` for space (and %2B for `+`).
        same(&|s| url::form_urlencoded::byte_serialize(s).collect());
        // JSON with `\/` (PHP) and the HTML-safe escapes of Go and .NET.
        same(&|s| String::from_utf8_lossy(s).replace('/', "\\/"));
        same(&|s| {
            String::from_utf8_lossy(s)
                .replace('+', "\\u002B")
                .replace('=', "\\u003d")
        });
        for e in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            same(&|s| e.encode(s));
            same(&|s| e.encode(s).replace('/', "\\/").replace('+', "\\u002B"));
            same(&|s| pct(e.encode(s).as_bytes(), true, false));
        }
        // HTML.
        same(&|s| {
            String::from_utf8_lossy(s)
                .replace('/', "&#x2F;")
                .replace('+', "&#43;")
        });
        // Inside a larger base64 blob, at each alignment.
        for lead in ["", "a", "ab"] {
            for e in [STANDARD, URL_SAFE_NO_PAD] {
                let blob = |s: &[u8]| [lead.as_bytes(), b"user:", s, b"!"].concat();
                v.push((e.encode(blob(r)), None));
            }
        }
        v
    }

    fn assert_no_real(text: &str) {
        let r = REAL.as_bytes();
        let mut needles = vec![REAL.to_string(), REAL[8..30].to_string()];
        needles.push(String::from_utf8(hex(&r[8..30], false)).unwrap());
        needles.push(pct(&r[8..30], true, true));
        // Any base64 blob holding REAL holds one of these.
        for o in 0..3 {
            needles.push(STANDARD_NO_PAD.encode(&r[8 + o..32 + o]));
            needles.push(URL_SAFE_NO_PAD.encode(&r[8 + o..32 + o]));
        }
        for n in needles {
            assert!(!text.contains(&n), "{n} in {text}");
        }
    }

    #[test]
    fn every_variant_is_replaced_by_the_same_variant_of_the_placeholder() {
        let r = redaction();
        for (echo, expected) in echoes() {
            let text = format!("{{\"echo\":\"{echo}\"}}");
            let out = r
                .bytes(text.as_bytes())
                .unwrap_or_else(|| panic!("missed {echo}"));
            let out = String::from_utf8(out).unwrap();
            assert_no_real(&out);
            if let Some(e) = expected {
                assert_eq!(out, format!("{{\"echo\":\"{e}\"}}"), "{echo}");
            }
        }
    }

    #[test]
    fn every_variant_is_replaced_however_the_body_is_split() {
        let r = redaction();
        let mut doc = String::new();
        for (echo, _) in echoes() {
            doc.push_str(&echo);
            doc.push('\n');
        }
        let whole = r.bytes(doc.as_bytes()).unwrap();
        for size in [1, 2, 3, 7, 64] {
            let mut m = r.matcher();
            let mut out = Vec::new();
            for c in doc.as_bytes().chunks(size) {
                out.extend_from_slice(&m.push(c).out);
            }
            out.extend_from_slice(&m.finish().out);
            assert_eq!(out, whole, "chunks of {size}");
        }
        assert_no_real(&String::from_utf8(whole).unwrap());
    }

    #[test]
    fn the_basic_wire_form_comes_back_as_the_agents() {
        let mut r = Redaction::default();
        let user = b"someone".to_vec();
        let wire = (
            super::super::basic::encode_token(&user, REAL.as_bytes()).into_bytes(),
            super::super::basic::encode_token(&user, PH.as_bytes()).into_bytes(),
        );
        r.add(REAL, PH, &vec![wire.clone()]);
        let text = format!(
            "{{\"authorization\":\"Basic {}\"}}",
            String::from_utf8_lossy(&wire.0)
        );
        let out = String::from_utf8(r.bytes(text.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out,
            format!(
                "{{\"authorization\":\"Basic {}\"}}",
                String::from_utf8_lossy(&wire.1)
            )
        );
    }

    #[test]
    fn debug_output_never_shows_a_real_value() {
        let d = format!("{:?}", redaction());
        assert!(
            !d.contains("R3aL") && !d.contains(&STANDARD.encode(REAL)[..20]),
            "{d}"
        );
        assert!(d.contains(PH), "{d}");
    }

    #[test]
    fn a_short_key_with_a_longer_placeholder_leaves_no_variant_behind() {
        let (real, ph) = ("ab/cd+ef=gh", "tok_0123456789abcdefghijklmn");
        let mut r = Redaction::default();
        r.add(real, ph, &vec![]);
        let b = real.as_bytes();
        let mut echoes = vec![
            real.to_string(),
            pct(b, true, true),
            pct(b, false, false),
            json_u(b, false),
            real.replace('/', "\\/"),
            String::from_utf8(hex(b, true)).unwrap(),
        ];
        for e in [STANDARD, URL_SAFE_NO_PAD] {
            echoes.push(e.encode(real));
            for lead in ["", "x", "xy"] {
                echoes.push(e.encode(format!("{lead}{real}.")));
            }
        }
        for echo in echoes {
            let out = String::from_utf8(r.bytes(echo.as_bytes()).unwrap()).unwrap();
            assert!(
                !out.contains(real) && !out.contains("cd+ef") && !out.contains("Y2QrZWY"),
                "{echo} -> {out}"
            );
            for e in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
                for o in 0..3 {
                    let core = e.encode(&b[o..o + 6]);
                    assert!(!out.contains(&core), "{echo} -> {out}");
                }
            }
        }
    }

    fn run(
        resp: Response<Body>,
        r: &Redaction,
    ) -> Result<(http::response::Parts, Vec<u8>, Option<HeaderMap>), Unscannable> {
        let (mut parts, body) = resp.into_parts();
        let body = response(&mut parts, body, r)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (data, trailers) = rt.block_on(async move {
            let c = body.collect().await.unwrap();
            let t = c.trailers().cloned();
            (c.to_bytes().to_vec(), t)
        });
        Ok((parts, data, trailers))
    }

    #[test]
    fn headers_reason_phrase_and_trailers_are_redacted() {
        let mut resp = Response::new(body_of(vec![REAL.as_bytes().to_vec()]));
        resp.headers_mut().insert(
            "x-echo",
            HeaderValue::from_str(&format!("Bearer {REAL}")).unwrap(),
        );
        resp.headers_mut().insert(
            "x-b64",
            HeaderValue::from_str(&STANDARD.encode(REAL)).unwrap(),
        );
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("40"));
        resp.extensions_mut().insert(
            hyper::ext::ReasonPhrase::try_from(format!("Bad key {REAL}").into_bytes()).unwrap(),
        );
        let (parts, data, _) = run(resp, &redaction()).unwrap();
        assert_eq!(parts.headers["x-echo"], format!("Bearer {PH}").as_str());
        assert_eq!(parts.headers["x-b64"], STANDARD.encode(PH).as_str());
        assert!(parts.headers.get(header::CONTENT_LENGTH).is_none());
        let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(reason.as_bytes(), format!("Bad key {PH}").as_bytes());
        assert_eq!(data, PH.as_bytes());

        // Trailers.
        let mut t = HeaderMap::new();
        t.insert("x-trailer", HeaderValue::from_str(REAL).unwrap());
        let body = Frames(vec![Frame::data(Bytes::from_static(b"ok")), Frame::trailers(t)].into());
        let (_, data, trailers) = run(Response::new(body.boxed()), &redaction()).unwrap();
        assert_eq!(data, b"ok");
        assert_eq!(trailers.unwrap()["x-trailer"], PH);
    }

    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[test]
    fn a_101_has_its_headers_redacted_and_its_body_left_alone() {
        let mut resp = Response::new(body_of(vec![]));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("x-echo", HeaderValue::from_str(REAL).unwrap());
        let (parts, _, _) = run(resp, &redaction()).unwrap();
        assert_eq!(parts.headers["x-echo"], PH);
    }

    #[test]
    fn compressed_bodies_are_decoded_then_redacted() {
        let text = format!("{{\"key\":\"{}\"}}", REAL.replace('/', "\\/"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        for split in [gz.len(), 1, 5] {
            let mut resp = Response::new(body_of(gz.chunks(split).map(<[u8]>::to_vec).collect()));
            resp.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(gz.len()));
            let (parts, data, _) = run(resp, &redaction()).unwrap();
            assert!(parts.headers.get(header::CONTENT_ENCODING).is_none());
            assert!(parts.headers.get(header::CONTENT_LENGTH).is_none());
            assert_eq!(
                String::from_utf8(data).unwrap(),
                format!("{{\"key\":\"{}\"}}", PH.replace('/', "\\/"))
            );
        }
    }

    #[test]
    fn an_encoding_that_cannot_be_decoded_is_refused_by_name() {
        let mut resp = Response::new(body_of(vec![b"(zstd bytes)".to_vec()]));
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        let err = run(resp, &redaction()).unwrap_err();
        assert_eq!(err.encoding(), "zstd");
        assert!(err.to_string().contains("`zstd`"), "{err}");
        // Without anything to redact, the response is not touched.
        let mut resp = Response::new(body_of(vec![b"(zstd bytes)".to_vec()]));
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        let (parts, data, _) = run(resp, &Redaction::default()).unwrap();
        assert_eq!(parts.headers[header::CONTENT_ENCODING], "zstd");
        assert_eq!(data, b"(zstd bytes)");
    }
}
