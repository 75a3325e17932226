//! Undoing a response's compression so that redaction sees what the agent
//! would: gzip (multi-member, CRC checked), deflate (zlib or raw) and
//! brotli, stacked in any order, decoded as the body streams. Each poll
//! yields at most `CHUNK` bytes, so a decompression bomb costs time, never
//! memory. Anything else is refused by name: a body enforcer cannot read is
//! never passed on unscanned.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use bytes::{Buf as _, Bytes};
use flate2::{Decompress, FlushDecompress, Status};
use http::{HeaderMap, header};
use hyper::body::Frame;

use crate::proxy::upstream::{Body, BoxError};

/// Most decoded bytes produced per poll.
pub const CHUNK: usize = 32 * 1024;
/// Most codings stacked on one response.
pub const MAX_STACKED: usize = 4;
/// Longest gzip header accepted (file name and comment included).
const MAX_GZIP_HEADER: usize = 64 * 1024;

/// A compression enforcer can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
            Self::Brotli => "br",
        }
    }

    fn parse(token: &str) -> Option<Option<Self>> {
        match token.to_ascii_lowercase().as_str() {
            "" | "identity" => Some(None),
            "gzip" | "x-gzip" => Some(Some(Self::Gzip)),
            "deflate" => Some(Some(Self::Deflate)),
            "br" => Some(Some(Self::Brotli)),
            _ => None,
        }
    }
}

/// Why a response's codings cannot be undone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undecodable {
    #[error("the response is encoded with `{0}`, which enforcer cannot decode")]
    Unknown(String),
    #[error("the response stacks {0} encodings (at most {MAX_STACKED} are decoded)")]
    TooMany(usize),
}

/// A body that turned out not to decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the {0} response body is corrupt: {1}")]
    Corrupt(&'static str, String),
    #[error("the {0} response body ended before its compressed stream did")]
    Truncated(&'static str),
}

/// The codings to undo, in the order to undo them: Transfer-Encoding's
/// (but `chunked`, which hyper already removed) last-applied first, then
/// Content-Encoding's last-applied first.
pub fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, Undecodable> {
    let mut out = Vec::new();
    for (name, skip_chunked) in [
        (header::TRANSFER_ENCODING, true),
        (header::CONTENT_ENCODING, false),
    ] {
        let mut listed = Vec::new();
        for value in headers.get_all(&name) {
            let text = String::from_utf8_lossy(value.as_bytes());
            for token in text.split(',').map(str::trim) {
                if skip_chunked && token.eq_ignore_ascii_case("chunked") {
                    continue;
                }
                match Coding::parse(token) {
                    Some(Some(c)) => listed.push(c),
                    Some(None) => {}
                    None => return Err(Undecodable::Unknown(token.to_string())),
                }
            }
        }
        out.extend(listed.into_iter().rev());
    }
    if out.len() > MAX_STACKED {
        return Err(Undecodable::TooMany(out.len()));
    }
    Ok(out)
}

/// `body` with `codings` undone (in that order).
pub fn decode(mut body: Body, codings: &[Coding]) -> Body {
    use http_body_util::BodyExt as _;
    for &c in codings {
        body = DecodeBody::new(body, c).boxed();
    }
    body
}

/// One step of a streaming decoder.
trait Step: Send + Sync {
    /// Decodes from `input` into `out`: (bytes consumed, bytes produced).
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError>;
    /// The compressed stream has ended (whatever follows is dropped).
    fn done(&self) -> bool;
    /// The input so far is a whole compressed stream (more may follow).
    fn complete(&self) -> bool {
        self.done()
    }
}

fn new_step(c: Coding) -> Box<dyn Step> {
    match c {
        Coding::Gzip => Box::new(Gzip::default()),
        Coding::Deflate => Box::new(Deflate::default()),
        Coding::Brotli => Box::new(Brotli::default()),
    }
}

/// Runs `d` once, reporting what it consumed and produced.
fn inflate(
    d: &mut Decompress,
    input: &[u8],
    out: &mut [u8],
    name: &'static str,
) -> Result<(usize, usize, bool), DecodeError> {
    let (in0, out0) = (d.total_in(), d.total_out());
    let status = d
        .decompress(input, out, FlushDecompress::None)
        .map_err(|e| DecodeError::Corrupt(name, e.to_string()))?;
    let consumed = usize::try_from(d.total_in() - in0).unwrap_or(input.len());
    let produced = usize::try_from(d.total_out() - out0).unwrap_or(0);
    Ok((consumed, produced, status == Status::StreamEnd))
}

/// deflate as HTTP means it (zlib), or raw deflate as some servers send.
#[derive(Default)]
struct Deflate {
    /// The first two bytes, which say whether a zlib header is there.
    sniff: Vec<u8>,
    inner: Option<Decompress>,
    done: bool,
}

impl Step for Deflate {
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        let mut consumed = 0;
        if self.inner.is_none() {
            consumed = (2 - self.sniff.len()).min(input.len());
            self.sniff.extend_from_slice(&input[..consumed]);
            let [a, b] = self.sniff[..] else {
                return Ok((consumed, 0));
            };
            let zlib = a & 0x0f == 8 && a >> 4 <= 7 && (u16::from(a) << 8 | u16::from(b)) % 31 == 0;
            self.inner = Some(Decompress::new(zlib));
        }
        let Some(d) = self.inner.as_mut() else {
            return Ok((consumed, 0));
        };
        if !self.sniff.is_empty() {
            let (c, p, end) = inflate(d, &self.sniff, out, "deflate")?;
            self.sniff.drain(..c.min(self.sniff.len()));
            self.done = end;
            if p > 0 || end {
                return Ok((consumed, p));
            }
        }
        let (c, p, end) = inflate(d, &input[consumed..], out, "deflate")?;
        self.done = end;
        Ok((consumed + c, p))
    }

    fn done(&self) -> bool {
        self.done
    }
}

/// gzip members one after another (RFC 1952), each CRC-checked.
#[derive(Default)]
enum Gzip {
    /// Reading a member's header, byte by byte.
    #[default]
    Start,
    Header(Vec<u8>),
    Body(Box<Member>),
    Trailer(Box<Member>, Vec<u8>),
    /// Between members: another may follow; anything else is dropped.
    Between,
    Done,
}

struct Member {
    inflate: Decompress,
    crc: crc32fast::Hasher,
    size: u32,
}

/// The length of the gzip header at the start of `h`, if complete.
fn gzip_header_len(h: &[u8]) -> Result<Option<usize>, DecodeError> {
    let bad = |why: &str| Err(DecodeError::Corrupt("gzip", why.to_string()));
    if h.len() >= 2 && h[..2] != [0x1f, 0x8b] {
        return bad("not a gzip header");
    }
    if h.len() >= 3 && h[2] != 8 {
        return bad("unknown compression method");
    }
    if h.len() < 10 {
        return Ok(None);
    }
    let flags = h[3];
    if flags & 0xe0 != 0 {
        return bad("reserved header flags set");
    }
    let mut at = 10;
    if flags & 4 != 0 {
        let Some(x) = h.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([x[0], x[1]]));
    }
    for flag in [8, 16] {
        if flags & flag != 0 {
            let Some(end) = h.get(at..).and_then(|r| r.iter().position(|b| *b == 0)) else {
                return Ok(None);
            };
            at += end + 1;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    Ok((h.len() >= at).then_some(at))
}

impl Step for Gzip {
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        match self {
            Self::Start | Self::Between if input.is_empty() => Ok((0, 0)),
            Self::Start => {
                *self = Self::Header(Vec::with_capacity(16));
                self.step(input, out)
            }
            Self::Between => {
                if input[0] == 0x1f {
                    *self = Self::Header(Vec::with_capacity(16));
                } else {
                    // Not another member: dropped, never passed on.
                    *self = Self::Done;
                }
                self.step(input, out)
            }
            Self::Header(h) => {
                for (i, &b) in input.iter().enumerate() {
                    h.push(b);
                    if h.len() > MAX_GZIP_HEADER {
                        return Err(DecodeError::Corrupt("gzip", "header too long".into()));
                    }
                    if gzip_header_len(h)?.is_some() {
                        *self = Self::Body(Box::new(Member {
                            inflate: Decompress::new(false),
                            crc: crc32fast::Hasher::new(),
                            size: 0,
                        }));
                        return Ok((i + 1, 0));
                    }
                }
                Ok((input.len(), 0))
            }
            Self::Body(m) => {
                let (c, p, end) = inflate(&mut m.inflate, input, out, "gzip")?;
                m.crc.update(&out[..p]);
                m.size = m.size.wrapping_add(p as u32);
                if end {
                    let Self::Body(m) = std::mem::take(self) else {
                        return Ok((c, p));
                    };
                    *self = Self::Trailer(m, Vec::with_capacity(8));
                }
                Ok((c, p))
            }
            Self::Trailer(_, t) => {
                let take = (8 - t.len()).min(input.len());
                t.extend_from_slice(&input[..take]);
                if t.len() == 8 {
                    let Self::Trailer(m, t) = std::mem::take(self) else {
                        return Ok((take, 0));
                    };
                    let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
                    let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                    if crc != m.crc.finalize() || size != m.size {
                        return Err(DecodeError::Corrupt("gzip", "checksum mismatch".into()));
                    }
                    *self = Self::Between;
                }
                Ok((take, 0))
            }
            Self::Done => Ok((input.len(), 0)),
        }
    }

    fn done(&self) -> bool {
        matches!(self, Self::Done)
    }

    fn complete(&self) -> bool {
        matches!(self, Self::Between | Self::Done)
    }
}

/// brotli (RFC 7932), standard windows only.
struct Brotli {
    state: Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>,
    done: bool,
}

impl Default for Brotli {
    fn default() -> Self {
        Self {
            state: Box::new(BrotliState::new(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            )),
            done: false,
        }
    }
}

impl Step for Brotli {
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        if self.done {
            return Ok((input.len(), 0));
        }
        let (mut avail_in, mut in_off) = (input.len(), 0);
        let (mut avail_out, mut out_off, mut total) = (out.len(), 0, 0);
        let result = BrotliDecompressStream(
            &mut avail_in,
            &mut in_off,
            input,
            &mut avail_out,
            &mut out_off,
            out,
            &mut total,
            &mut self.state,
        );
        match result {
            BrotliResult::ResultFailure => {
                Err(DecodeError::Corrupt("br", "invalid brotli stream".into()))
            }
            BrotliResult::ResultSuccess => {
                self.done = true;
                Ok((in_off, out_off))
            }
            BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => Ok((in_off, out_off)),
        }
    }

    fn done(&self) -> bool {
        self.done
    }
}

/// A body with one coding undone as it streams.
pub struct DecodeBody {
    inner: Body,
    name: &'static str,
    step: Box<dyn Step>,
    input: Bytes,
    buf: Vec<u8>,
    seen_input: bool,
    eof: bool,
    trailers: Option<HeaderMap>,
}

impl DecodeBody {
    pub fn new(inner: Body, coding: Coding) -> Self {
        Self {
            inner,
            name: coding.name(),
            step: new_step(coding),
            input: Bytes::new(),
            buf: vec![0; CHUNK],
            seen_input: false,
            eof: false,
            trailers: None,
        }
    }
}

impl hyper::body::Body for DecodeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.step.done() {
                this.input.clear();
            } else {
                let (consumed, produced) = match this.step.step(&this.input, &mut this.buf) {
                    Ok(r) => r,
                    Err(e) => {
                        this.eof = true;
                        this.input.clear();
                        this.step = Box::new(Failed);
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                };
                this.input.advance(consumed.min(this.input.len()));
                if produced > 0 {
                    let data = Bytes::copy_from_slice(&this.buf[..produced]);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if consumed > 0 {
                    continue;
                }
                if !this.input.is_empty() {
                    // Input left that the decoder will not take.
                    this.step = Box::new(Failed);
                    return Poll::Ready(Some(Err(Box::new(DecodeError::Corrupt(
                        this.name,
                        "the decoder stopped making progress".into(),
                    )))));
                }
            }
            if this.eof {
                if !this.step.complete() && this.seen_input {
                    this.step = Box::new(Failed);
                    return Poll::Ready(Some(Err(Box::new(DecodeError::Truncated(this.name)))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.eof = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.seen_input |= !data.is_empty();
                        this.input = data;
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
            }
        }
    }
}

/// A decoder after an error: done, yields nothing more.
struct Failed;

impl Step for Failed {
    fn step(&mut self, input: &[u8], _: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        Ok((input.len(), 0))
    }

    fn done(&self) -> bool {
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;

    use http::HeaderValue;
    use http_body_util::BodyExt as _;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        out
    }

    pub(crate) fn body_of(chunks: Vec<Vec<u8>>) -> Body {
        Chunks(chunks.into_iter().map(Bytes::from).collect()).boxed()
    }

    /// A body of these chunks, one frame each.
    pub(crate) struct Chunks(pub std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn collect(body: Body) -> Result<Vec<u8>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut body = body;
            let mut out = Vec::new();
            while let Some(f) = body.frame().await {
                let f = f.map_err(|e| e.to_string())?;
                if let Some(d) = f.data_ref() {
                    assert!(d.len() <= CHUNK);
                    out.extend_from_slice(d);
                }
            }
            Ok(out)
        })
    }

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..3000 {
            v.extend_from_slice(format!("{{\"n\":{i},\"key\":\"sk_live_abc\"}},").as_bytes());
        }
        v
    }

    #[test]
    fn each_coding_decodes_however_the_body_is_split() {
        let plain = sample();
        let short = b"{\"authorization\":\"Bearer sk_live_REALKEY\"}".to_vec();
        for (coding, enc) in [
            (Coding::Gzip, gzip as fn(&[u8]) -> Vec<u8>),
            (Coding::Deflate, zlib),
            (Coding::Deflate, raw_deflate),
            (Coding::Brotli, brotli),
        ] {
            let packed = enc(&plain);
            assert_eq!(
                collect(decode(body_of(vec![packed.clone()]), &[coding])).unwrap(),
                plain
            );
            let one_by_one: Vec<Vec<u8>> = packed.chunks(1).map(<[u8]>::to_vec).collect();
            assert_eq!(
                collect(decode(body_of(one_by_one), &[coding])).unwrap(),
                plain,
                "{coding:?} byte by byte"
            );
            // A small body split at every boundary.
            let packed = enc(&short);
            for cut in 0..=packed.len() {
                let parts = vec![packed[..cut].to_vec(), packed[cut..].to_vec()];
                assert_eq!(
                    collect(decode(body_of(parts), &[coding])).unwrap(),
                    short,
                    "{coding:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn stacked_codings_are_undone_in_reverse_order() {
        let plain = sample();
        let packed = brotli(&gzip(&plain));
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip, br"),
        );
        let order = codings(&h).unwrap();
        assert_eq!(order, vec![Coding::Brotli, Coding::Gzip]);
        assert_eq!(
            collect(decode(body_of(vec![packed]), &order)).unwrap(),
            plain
        );
    }

    #[test]
    fn multi_member_gzip_is_read_whole_and_garbage_after_is_dropped() {
        let mut packed = gzip(b"first ");
        packed.extend(gzip(b"second"));
        assert_eq!(
            collect(decode(body_of(vec![packed.clone()]), &[Coding::Gzip])).unwrap(),
            b"first second"
        );
        packed.extend_from_slice(b"not gzip at all");
        assert_eq!(
            collect(decode(body_of(vec![packed]), &[Coding::Gzip])).unwrap(),
            b"first second"
        );
    }

    #[test]
    fn corrupt_and_truncated_bodies_are_errors() {
        let packed = gzip(&sample());
        let cut = packed[..packed.len() / 2].to_vec();
        assert!(collect(decode(body_of(vec![cut]), &[Coding::Gzip])).is_err());
        let mut bad_crc = packed.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 1;
        assert!(collect(decode(body_of(vec![bad_crc]), &[Coding::Gzip])).is_err());
        assert!(
            collect(decode(
                body_of(vec![b"plain text".to_vec()]),
                &[Coding::Gzip]
            ))
            .is_err()
        );
        assert!(
            collect(decode(
                body_of(vec![b"\xff\xff\xff".to_vec()]),
                &[Coding::Brotli]
            ))
            .is_err()
        );
        // An empty body (HEAD, 204) is fine.
        assert_eq!(
            collect(decode(body_of(vec![]), &[Coding::Gzip])).unwrap(),
            b""
        );
    }

    #[test]
    fn unknown_or_too_many_codings_are_refused_by_name() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        assert_eq!(codings(&h), Err(Undecodable::Unknown("zstd".into())));
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip, compress"),
        );
        assert_eq!(codings(&h), Err(Undecodable::Unknown("compress".into())));
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip,gzip,gzip,gzip,gzip"),
        );
        assert_eq!(codings(&h), Err(Undecodable::TooMany(5)));
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("Identity"),
        );
        assert_eq!(codings(&h), Ok(vec![]));
        // Transfer codings other than chunked are undone too, before content codings.
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(codings(&h), Ok(vec![Coding::Gzip, Coding::Brotli]));
    }

    #[test]
    fn a_decompression_bomb_streams_in_bounded_chunks() {
        // 64 MiB of zeros compress to about 64 KiB; decoding is lazy, so
        // reading a few chunks decodes only those.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut body = decode(body_of(vec![bomb]), &[Coding::Gzip]);
            let mut seen = 0;
            for _ in 0..64 {
                let f = body.frame().await.unwrap().unwrap();
                let d = f.into_data().unwrap();
                assert!(d.len() <= CHUNK);
                seen += d.len();
            }
            assert!(seen <= 64 * CHUNK);
        });
    }
}
