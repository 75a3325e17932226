//! Finding (and replacing) byte strings in a stream that arrives in chunks,
//! without buffering it: everything is passed on as it comes except the
//! last `longest - 1` bytes, which could be the start of a match split
//! across chunks.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// Patterns to look for, each with what replaces it (None: only detect).
#[derive(Debug)]
pub struct StreamMatcher {
    patterns: Vec<(memmem::Finder<'static>, Option<Vec<u8>>)>,
    carry: BytesMut,
    keep: usize,
}

/// What one chunk produced.
#[derive(Debug)]
pub struct Step {
    /// Bytes safe to pass on (replacements applied).
    pub out: Bytes,
    /// Index of the first pattern seen in this chunk, if any.
    pub found: Option<usize>,
}

impl StreamMatcher {
    /// `patterns`: (needle, replacement). Empty needles are ignored.
    pub fn new(patterns: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Self {
        let keep = patterns
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        let patterns = patterns
            .into_iter()
            .filter(|(n, _)| !n.is_empty())
            .map(|(n, r)| (memmem::Finder::new(&n).into_owned(), r))
            .collect();
        Self {
            patterns,
            carry: BytesMut::new(),
            keep,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The earliest match in `hay`: (start, length, pattern index).
    fn earliest(&self, hay: &[u8]) -> Option<(usize, usize, usize)> {
        self.patterns
            .iter()
            .enumerate()
            .filter_map(|(i, (f, _))| f.find(hay).map(|s| (s, f.needle().len(), i)))
            .min_by_key(|&(s, _, _)| s)
    }

    /// Feeds one chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Step {
        self.carry.extend_from_slice(chunk);
        self.process(self.keep)
    }

    /// Processes the held bytes, keeping the last `keep` back. A match that
    /// starts before that point is always complete (no pattern is longer
    /// than `keep + 1`), so matches are taken in the same order however the
    /// stream was cut into chunks.
    fn process(&mut self, keep: usize) -> Step {
        let buf = std::mem::take(&mut self.carry).freeze();
        let commit = buf.len().saturating_sub(keep);
        let mut out = BytesMut::with_capacity(buf.len());
        let mut found = None;
        let mut pos = 0;
        while let Some((start, len, index)) = self.earliest(&buf[pos..]) {
            let start = pos + start;
            if start >= commit {
                break;
            }
            found.get_or_insert(index);
            out.extend_from_slice(&buf[pos..start]);
            match &self.patterns[index].1 {
                Some(replacement) => out.extend_from_slice(replacement),
                None => out.extend_from_slice(&buf[start..start + len]),
            }
            pos = start + len;
        }
        let keep_from = commit.max(pos);
        out.extend_from_slice(&buf[pos..keep_from]);
        self.carry.extend_from_slice(&buf[keep_from..]);
        Step {
            out: out.freeze(),
            found,
        }
    }

    /// The end of the stream: everything still held back, matches applied.
    pub fn finish(&mut self) -> Step {
        self.process(0)
    }
}

/// Replaces every pattern in a complete byte string; returns the result and
/// whether anything matched.
pub fn replace_all(input: &[u8], patterns: &[(&[u8], &[u8])]) -> (Vec<u8>, bool) {
    let mut m = StreamMatcher::new(
        patterns
            .iter()
            .map(|(n, r)| (n.to_vec(), Some(r.to_vec())))
            .collect(),
    );
    let step = m.push(input);
    let last = m.finish();
    let mut out = step.out.to_vec();
    out.extend_from_slice(&last.out);
    (out, step.found.is_some() || last.found.is_some())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(m: &mut StreamMatcher, chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut found = false;
        for c in chunks {
            let s = m.push(c);
            out.extend_from_slice(&s.out);
            found |= s.found.is_some();
        }
        let last = m.finish();
        out.extend_from_slice(&last.out);
        (out, found || last.found.is_some())
    }

    #[test]
    fn matches_split_across_chunks_are_found_and_replaced() {
        let mut m = StreamMatcher::new(vec![(b"SECRETKEY".to_vec(), Some(b"PLACEHOLD".to_vec()))]);
        let (out, found) = run(&mut m, &[b"abc SEC", b"RET", b"KEY def SECRETKEY"]);
        assert!(found);
        assert_eq!(out, b"abc PLACEHOLD def PLACEHOLD");
    }

    #[test]
    fn detection_only_passes_bytes_through() {
        let mut m = StreamMatcher::new(vec![(b"tok_abc".to_vec(), None)]);
        let (out, found) = run(&mut m, &[b"xx tok_", b"abc yy"]);
        assert!(found);
        assert_eq!(out, b"xx tok_abc yy");
        let mut clean = StreamMatcher::new(vec![(b"tok_abc".to_vec(), None)]);
        assert!(!run(&mut clean, &[b"tok_ab", b"d tok_"]).1);
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_result(data in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'k')], 0..200), cuts in proptest::collection::vec(0usize..200, 0..10)) {
            let patterns = vec![(b"abka".to_vec(), Some(b"XY".to_vec())), (b"kk".to_vec(), Some(b"Z".to_vec()))];
            let mut whole = StreamMatcher::new(patterns.clone());
            let expected = run(&mut whole, &[&data]);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= data.len()).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&data[last..c]); last = c; }
            chunks.push(&data[last..]);
            let mut split = StreamMatcher::new(patterns);
            prop_assert_eq!(run(&mut split, &chunks), expected);
        }
    }
}
