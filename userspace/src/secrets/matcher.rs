//! Finding (and replacing) byte strings in a stream that arrives in chunks,
//! without buffering it. A pattern matches literally or, in encoded mode,
//! with each of its bytes in any transport form (see `variants`: percent,
//! JSON, HTML escapes), and its replacement is written in the forms found.
//!
//! Matches are leftmost-first: at the earliest position where some pattern
//! matches, the first pattern (in the caller's order) wins, and the first
//! way of reading it (longest form first). Everything is passed on as it
//! comes except, at a chunk's end, the bytes from the earliest position
//! where a match could still be under way; so the result never depends on
//! how the stream was cut, and nothing is held back that cannot be a match.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};

use super::variants::{OPENERS, Readings, Style, hex2, read_at};

/// A pattern and what replaces it (None: only detect).
#[derive(Debug, Clone)]
struct Pattern {
    find: Vec<u8>,
    replace: Option<Vec<u8>>,
}

/// How the scan jumps to the next position where a pattern may start.
#[derive(Debug, Clone, Copy)]
enum Jump {
    None,
    One(u8),
    Two(u8, u8),
    Three(u8, u8, u8),
    Table,
}

/// Patterns to look for in a stream, each with what replaces it.
#[derive(Debug)]
pub struct StreamMatcher {
    patterns: Vec<Pattern>,
    /// Bytes may be read in any transport form (false: literally only).
    encoded: bool,
    /// For each byte, the patterns (in priority order) that begin with it.
    by_first: Vec<Vec<usize>>,
    /// Bytes where a match may start (a first byte, or an escape opener).
    may_start: [bool; 256],
    jump: Jump,
    carry: BytesMut,
    /// Scratch for the search.
    stack: Vec<Frame>,
    failed: HashSet<(usize, usize)>,
    candidates: Vec<usize>,
    /// Literal mode: one substring searcher per pattern.
    finders: Vec<memchr::memmem::Finder<'static>>,
}

/// What one chunk produced.
#[derive(Debug)]
pub struct Step {
    /// Bytes safe to pass on (replacements applied).
    pub out: Bytes,
    /// Index of the first pattern seen in this chunk, if any.
    pub found: Option<usize>,
}

/// One byte of a pattern being matched: where it starts, the readings of
/// that byte found there, and which one is being tried.
#[derive(Debug, Clone, Copy)]
struct Frame {
    pos: usize,
    forms: Readings,
    next: usize,
}

enum Attempt {
    No,
    /// More input could decide: hold back from here.
    Partial,
    /// Matched up to this end; the frames on the stack say how.
    Yes(usize),
}

impl StreamMatcher {
    /// Literal patterns: (needle, replacement). Empty needles never match.
    pub fn new(patterns: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Self {
        Self::build(patterns, false)
    }

    /// Patterns whose bytes may each appear in any transport form.
    pub fn encoded(patterns: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Self {
        Self::build(patterns, true)
    }

    fn build(patterns: Vec<(Vec<u8>, Option<Vec<u8>>)>, encoded: bool) -> Self {
        let patterns: Vec<Pattern> = patterns
            .into_iter()
            .map(|(find, replace)| Pattern { find, replace })
            .collect();
        let mut by_first = vec![Vec::new(); 256];
        let mut may_start = [false; 256];
        for (i, p) in patterns.iter().enumerate() {
            if let Some(&c) = p.find.first() {
                by_first[usize::from(c)].push(i);
                may_start[usize::from(c)] = true;
            }
        }
        if encoded && patterns.iter().any(|p| !p.find.is_empty()) {
            for b in OPENERS {
                may_start[usize::from(b)] = true;
            }
        }
        let first: Vec<u8> = (0..=255u8).filter(|b| may_start[usize::from(*b)]).collect();
        let jump = match first.as_slice() {
            [] => Jump::None,
            [a] => Jump::One(*a),
            [a, b] => Jump::Two(*a, *b),
            [a, b, c] => Jump::Three(*a, *b, *c),
            _ => Jump::Table,
        };
        Self {
            encoded,
            by_first,
            may_start,
            jump,
            carry: BytesMut::new(),
            stack: Vec::new(),
            failed: HashSet::new(),
            candidates: Vec::new(),
            finders: if encoded {
                Vec::new()
            } else {
                patterns
                    .iter()
                    .map(|p| memchr::memmem::Finder::new(&p.find).into_owned())
                    .collect()
            },
            patterns,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.iter().all(|p| p.find.is_empty())
    }

    /// Bytes currently held back (a possible match under way).
    pub fn held(&self) -> usize {
        self.carry.len()
    }

    /// Feeds one chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Step {
        self.carry.extend_from_slice(chunk);
        self.process(false)
    }

    /// The end of the stream: everything still held back, matches applied.
    pub fn finish(&mut self) -> Step {
        self.process(true)
    }

    /// A whole input at once; the stream state is left empty.
    pub fn apply(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let first = self.push(input);
        let last = self.finish();
        let mut out = first.out.to_vec();
        out.extend_from_slice(&last.out);
        (out, first.found.is_some() || last.found.is_some())
    }

    /// Literal mode: the next full match at or after `from` (leftmost,
    /// then first pattern), unless a pattern could begin before it in the
    /// buffer's tail and end beyond it: then that position, as Partial.
    fn next_literal(
        &self,
        buf: &[u8],
        from: usize,
        at_end: bool,
    ) -> Option<(usize, Option<usize>, Attempt)> {
        let hay = buf.get(from..)?;
        let mut best: Option<(usize, usize)> = None;
        for (i, (f, p)) in self.finders.iter().zip(&self.patterns).enumerate() {
            if p.find.is_empty() {
                continue;
            }
            let bound = best.map_or(hay.len(), |(s, _)| s);
            if let Some(s) = f.find(&hay[..(bound + p.find.len() - 1).min(hay.len())])
                && best.is_none_or(|(b, _)| s < b)
            {
                best = Some((s, i));
            }
        }
        let partial = if at_end {
            None
        } else {
            let longest = self
                .patterns
                .iter()
                .map(|p| p.find.len())
                .max()
                .unwrap_or(0);
            let tail = hay.len().saturating_sub(longest.saturating_sub(1));
            (tail..hay.len()).find(|&t| {
                self.patterns
                    .iter()
                    .any(|p| p.find.len() > hay.len() - t && p.find.starts_with(&hay[t..]))
            })
        };
        match (best, partial) {
            (Some((s, i)), p) if p.is_none_or(|p| s < p) => Some((
                from + s,
                Some(i),
                Attempt::Yes(from + s + self.patterns[i].find.len()),
            )),
            (_, Some(p)) => Some((from + p, None, Attempt::Partial)),
            _ => None,
        }
    }

    /// The next position at or after `from` where a pattern may start.
    fn next_start(&self, buf: &[u8], from: usize) -> Option<usize> {
        let hay = buf.get(from..)?;
        let at = match self.jump {
            Jump::None => None,
            Jump::One(a) => memchr::memchr(a, hay),
            Jump::Two(a, b) => memchr::memchr2(a, b, hay),
            Jump::Three(a, b, c) => memchr::memchr3(a, b, c, hay),
            Jump::Table => hay.iter().position(|b| self.may_start[usize::from(*b)]),
        };
        at.map(|i| from + i)
    }

    fn process(&mut self, at_end: bool) -> Step {
        let buf = std::mem::take(&mut self.carry).freeze();
        let mut out = BytesMut::new();
        let mut found = None;
        let mut pos = 0;
        let mut hold = None;
        let mut s = 0;
        'scan: loop {
            let (start, attempt) = if self.encoded {
                let Some(start) = self.next_start(&buf, s) else {
                    break;
                };
                (start, self.at(&buf, start, at_end))
            } else {
                let Some((start, index, attempt)) = self.next_literal(&buf, s, at_end) else {
                    break;
                };
                self.stack.clear();
                self.candidates.clear();
                self.candidates.extend(index);
                (start, attempt)
            };
            match attempt {
                Attempt::No => s = start + 1,
                Attempt::Partial => {
                    hold = Some(start);
                    break 'scan;
                }
                Attempt::Yes(end) => {
                    let index = self.candidates.first().copied().unwrap_or_default();
                    found.get_or_insert(index);
                    out.extend_from_slice(&buf[pos..start]);
                    self.write_match(index, &buf[start..end], &mut out);
                    pos = end;
                    s = end;
                }
            }
        }
        let keep_from = hold.unwrap_or(buf.len()).max(pos);
        self.carry.extend_from_slice(&buf[keep_from..]);
        let out = if pos == 0 {
            // Nothing replaced: pass the bytes on without copying them.
            buf.slice(..keep_from)
        } else {
            out.extend_from_slice(&buf[pos..keep_from]);
            out.freeze()
        };
        Step { out, found }
    }

    /// Encoded mode: whether some pattern matches at `start`, patterns in
    /// priority order. On a match, `candidates[0]` is the winner.
    fn at(&mut self, buf: &[u8], start: usize, at_end: bool) -> Attempt {
        let rest = &buf[start..];
        if !OPENERS.contains(&rest[0]) && self.no_second_byte(rest) {
            return Attempt::No;
        }
        let mut first = Readings::default();
        read_at(rest, at_end, &mut first);
        if first.partial {
            return Attempt::Partial;
        }
        self.candidates.clear();
        for r in first.as_slice() {
            self.candidates
                .extend_from_slice(&self.by_first[usize::from(r.byte)]);
        }
        if self.candidates.len() > 1 {
            self.candidates.sort_unstable();
            self.candidates.dedup();
        }
        for n in 0..self.candidates.len() {
            let index = self.candidates[n];
            match self.attempt(index, buf, start, first, at_end) {
                Attempt::No => {}
                Attempt::Yes(end) => {
                    self.candidates[0] = index;
                    return Attempt::Yes(end);
                }
                Attempt::Partial => return Attempt::Partial,
            }
        }
        Attempt::No
    }

    /// The cheap test that rules out most starts: `rest` begins with a
    /// plain byte, and for every pattern that begins with it, the next byte
    /// is present, plain, and not the pattern's second byte.
    fn no_second_byte(&self, rest: &[u8]) -> bool {
        let Some(&next) = rest.get(1) else {
            return false;
        };
        if OPENERS.contains(&next) {
            return false;
        }
        self.by_first[usize::from(rest[0])]
            .iter()
            .all(|&i| self.patterns[i].find.get(1).is_some_and(|&b| b != next))
    }

    /// Writes the replacement of a match (its original bytes when the
    /// pattern only detects), in the styles the stack recorded.
    fn write_match(&self, index: usize, original: &[u8], out: &mut BytesMut) {
        let Some(replacement) = self.patterns.get(index).and_then(|p| p.replace.as_ref()) else {
            out.extend_from_slice(original);
            return;
        };
        let styles: Vec<Style> = self
            .stack
            .iter()
            .filter_map(|f| f.forms.get(f.next.saturating_sub(1)).map(|f| f.style))
            .collect();
        let find = self.patterns.get(index).map_or(&[][..], |p| &p.find[..]);
        // Did the encoder escape letters and digits, or only symbols?
        let escapes_all = styles
            .iter()
            .zip(find)
            .any(|(s, b)| !matches!(s, Style::Literal | Style::Plus) && b.is_ascii_alphanumeric());
        // The hex case, from an escape whose digits had letters.
        let upper = styles.iter().zip(find).find_map(|(s, b)| {
            s.hex_upper()
                .filter(|_| hex2(*b).iter().any(u8::is_ascii_alphabetic))
        });
        let mut v = Vec::with_capacity(replacement.len() * 2);
        for (j, &p) in replacement.iter().enumerate() {
            let mut style = styles
                .get(j)
                .or(styles.last())
                .copied()
                .unwrap_or(Style::Literal);
            if let Some(upper) = upper {
                style = style.with_hex_case(upper);
            }
            style.write(escapes_all, p, &mut v);
        }
        out.extend_from_slice(&v);
    }

    /// The readings of byte `c` at `pos`.
    fn forms(c: u8, buf: &[u8], pos: usize, at_end: bool) -> Readings {
        let rest = buf.get(pos..).unwrap_or_default();
        match rest.first() {
            None => {
                let mut r = Readings::default();
                r.partial = !at_end;
                r
            }
            // The common case: a plain byte that opens no escape.
            Some(&b) if !OPENERS.contains(&b) => {
                if b == c {
                    Readings::literal(b)
                } else {
                    Readings::default()
                }
            }
            Some(_) => {
                let mut r = Readings::default();
                read_at(rest, at_end, &mut r);
                r.of(c)
            }
        }
    }

    /// Whether pattern `index` matches at `start` (whose readings are
    /// `first`): a depth-first search over the readings of each byte, in
    /// preference order, that gives up as soon as it needs input beyond the
    /// buffer (unless `at_end`).
    fn attempt(
        &mut self,
        index: usize,
        buf: &[u8],
        start: usize,
        first: Readings,
        at_end: bool,
    ) -> Attempt {
        let Some(len) = self.patterns.get(index).map(|p| p.find.len()) else {
            return Attempt::No;
        };
        if len == 0 {
            return Attempt::No;
        }
        let byte = |m: &Self, j: usize| m.patterns[index].find[j];
        self.stack.clear();
        if !self.failed.is_empty() {
            self.failed.clear();
        }
        let first = first.of(byte(self, 0));
        if first.is_empty() {
            return Attempt::No;
        }
        let mut branching = first.len() > 1;
        self.stack.push(Frame {
            pos: start,
            forms: first,
            next: 0,
        });
        loop {
            let depth = self.stack.len();
            let Some(top) = self.stack.last_mut() else {
                return Attempt::No;
            };
            let Some(form) = top.forms.get(top.next) else {
                // Every reading of this byte failed.
                let (j, pos) = (depth - 1, top.pos);
                if branching {
                    self.failed.insert((j, pos));
                }
                self.stack.pop();
                continue;
            };
            top.next += 1;
            let pos = top.pos + usize::from(form.len);
            let j = self.stack.len();
            if j == len {
                return Attempt::Yes(pos);
            }
            if branching && self.failed.contains(&(j, pos)) {
                continue;
            }
            let forms = Self::forms(byte(self, j), buf, pos, at_end);
            if forms.partial {
                return Attempt::Partial;
            }
            if forms.is_empty() {
                continue;
            }
            branching |= forms.len() > 1;
            self.stack.push(Frame {
                pos,
                forms,
                next: 0,
            });
        }
    }
}

/// Replaces every literal pattern in a complete byte string; returns the
/// result and whether anything matched.
pub fn replace_all(input: &[u8], patterns: &[(&[u8], &[u8])]) -> (Vec<u8>, bool) {
    StreamMatcher::new(
        patterns
            .iter()
            .map(|(n, r)| (n.to_vec(), Some(r.to_vec())))
            .collect(),
    )
    .apply(input)
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

    fn split_everywhere(m: impl Fn() -> StreamMatcher, data: &[u8]) -> (Vec<u8>, bool) {
        let whole = run(&mut m(), &[data]);
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            assert_eq!(run(&mut m(), &[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(run(&mut m(), &bytes), whole, "byte by byte");
        whole
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

    #[test]
    fn literal_mode_ignores_escapes() {
        let mut m = StreamMatcher::new(vec![(b"a/b".to_vec(), Some(b"x/y".to_vec()))]);
        assert_eq!(run(&mut m, &[b"a%2Fb a\\/b a/b"]).0, b"a%2Fb a\\/b x/y");
    }

    #[test]
    fn encoded_bytes_are_found_and_the_replacement_keeps_their_form() {
        let m = || StreamMatcher::encoded(vec![(b"k/y+1".to_vec(), Some(b"p/q+2".to_vec()))]);
        for (input, expected) in [
            (&b"[k/y+1]"[..], &b"[p/q+2]"[..]),
            (b"[k%2Fy%2B1]", b"[p%2Fq%2B2]"),
            (b"[%6b%2f%79%2b%31]", b"[%70%2f%71%2b%32]"),
            (b"[k\\/y+1]", b"[p\\/q+2]"),
            (b"[k\\u002Fy\\u002B1]", b"[p\\u002Fq\\u002B2]"),
            (b"[k\\\\\\/y+1]", b"[p\\\\\\/q+2]"),
            (b"[k&#47;y&#x2b;1]", b"[p&#47;q&#x2b;2]"),
            (b"[k%252Fy+1]", b"[p%252Fq+2]"),
            (b"[k%2Fy\\u002b1]", b"[p%2Fq\\u002B2]"),
        ] {
            let (out, found) = split_everywhere(m, input);
            assert!(found, "{}", String::from_utf8_lossy(input));
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expected)
            );
        }
    }

    #[test]
    fn near_misses_pass_through_untouched() {
        let m = || StreamMatcher::encoded(vec![(b"k/y+1".to_vec(), Some(b"p/q+2".to_vec()))]);
        for input in [
            &b"k/y+2"[..],
            b"k%2Ey+1",
            b"k\\u002y+1",
            b"%k/y+",
            b"&#47;y+1",
            b"k/y%2",
        ] {
            let (out, found) = split_everywhere(m, input);
            assert!(!found, "{}", String::from_utf8_lossy(input));
            assert_eq!(out, input);
        }
    }

    #[test]
    fn nothing_is_held_back_that_cannot_be_a_match() {
        let mut m = StreamMatcher::encoded(vec![(b"SECRET".to_vec(), Some(b"PLACEH".to_vec()))]);
        let s = m.push(b"data: {\"token\": 1}\n\n");
        assert_eq!(&s.out[..], b"data: {\"token\": 1}\n\n");
        assert_eq!(m.held(), 0);
        let s = m.push(b"tail SEC");
        assert_eq!(&s.out[..], b"tail ");
        assert_eq!(m.held(), 3);
        let s = m.push(b"%52");
        assert_eq!(&s.out[..], b"");
        let s = m.push(b"ET!");
        assert_eq!(&s.out[..], b"PLA%43EH!");
    }

    #[test]
    fn ambiguous_bytes_do_not_blow_up() {
        // '%' and '\' may be literal or open an escape; a long run of them
        // must be searched in polynomial time.
        let find = vec![b'%'; 64];
        let mut m = StreamMatcher::encoded(vec![(find, Some(vec![b'x'; 64]))]);
        let input = b"%25".repeat(200);
        let started = std::time::Instant::now();
        let (_, found) = run(&mut m, &[&input]);
        assert!(found);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
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

        #[test]
        fn chunking_never_changes_the_result_with_escapes(
            data in proptest::collection::vec(prop_oneof![
                Just("a"), Just("/"), Just("%2F"), Just("%2f"), Just("%25"), Just("%"),
                Just("\\"), Just("\\/"), Just("\\u002f"), Just("&#47;"), Just("&#"), Just("&"),
                Just("b"), Just("%61"), Just("x"), Just(";"), Just("2"),
            ], 0..60),
            cuts in proptest::collection::vec(0usize..300, 0..12),
        ) {
            let data: Vec<u8> = data.concat().into_bytes();
            let patterns = vec![
                (b"a/b".to_vec(), Some(b"Q=R".to_vec())),
                (b"/%/".to_vec(), Some(b"123".to_vec())),
                (b"b".to_vec(), None),
            ];
            let expected = run(&mut StreamMatcher::encoded(patterns.clone()), &[&data]);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= data.len()).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&data[last..c]); last = c; }
            chunks.push(&data[last..]);
            prop_assert_eq!(run(&mut StreamMatcher::encoded(patterns), &chunks), expected);
        }
    }
}
