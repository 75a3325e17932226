//! Path globs of `[[host.rule]]` (`*` = exactly one segment, `**` = any
//! number of segments) and the conservative splitting of request paths they
//! are matched against.

use std::borrow::Cow;
use std::fmt;

use super::canonical::{Ambiguities, CanonicalRequest};

/// Longest path glob accepted, in bytes.
const MAX_GLOB_LEN: usize = 2048;

/// A compiled path glob. Matching works on `/`-separated segments:
///
/// - a literal segment matches itself (case-sensitive);
/// - `*` matches exactly one non-empty segment;
/// - `**` matches any number of segments, including none;
/// - `*` inside a segment (`cus_*`, `*.json`) matches any characters
///   except `/` within that one segment.
///
/// A trailing `/` on a request path is ignored (`/v1/x` matches `/v1/x/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    text: String,
    segments: Vec<Segment>,
    /// `segments` in ASCII lower case, to see whether a path's case
    /// changes the decision.
    folded: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`
    One,
    /// `**`
    Any,
    /// A segment with `*` wildcards inside it, e.g. `cus_*`.
    Partial(String),
}

impl Segment {
    fn folded(&self) -> Self {
        match self {
            Self::Literal(l) => Self::Literal(l.to_ascii_lowercase()),
            Self::Partial(p) => Self::Partial(p.to_ascii_lowercase()),
            other => other.clone(),
        }
    }
}

impl PathGlob {
    /// Parses a glob as written in a policy.
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.len() > MAX_GLOB_LEN {
            return Err(format!(
                "path glob is {} bytes long; the limit is {MAX_GLOB_LEN}",
                input.len()
            ));
        }
        if !input.starts_with('/') {
            return Err(format!(
                "path `{input}` must start with `/` (e.g. `/{}`)",
                input.trim_start_matches('/')
            ));
        }
        if let Some(c) = input.chars().find(|c| matches!(c, '?' | '#')) {
            return Err(format!(
                "path `{input}` contains `{c}`; rules match the path only, without query string or fragment"
            ));
        }
        if let Some(c) = input
            .chars()
            .find(|c| matches!(c, '[' | ']' | '{' | '}' | '\\'))
        {
            return Err(format!(
                "path `{input}`: `{c}` is not supported; globs only have `*` (one segment) and `**` (any number of segments); percent-encode a literal `{c}`"
            ));
        }
        if let Some(c) = input.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "path `{input}` contains {c:?}; percent-encode spaces, control and non-ASCII characters (e.g. `%20`)"
            ));
        }
        let normalized = normalize_escapes(input)
            .map_err(|_| format!("path `{input}` contains a `%` not followed by two hex digits"))?;
        let body = &normalized[1..];
        if input.len() > 1 && body.ends_with('/') {
            let bare = input.trim_end_matches('/');
            return Err(format!(
                "path `{input}`: remove the trailing `/` (`{}` also matches requests ending in `/`)",
                if bare.is_empty() { "/" } else { bare }
            ));
        }
        let mut segments = Vec::new();
        if !body.is_empty() {
            for seg in body.split('/') {
                let parsed = match seg {
                    "" => {
                        return Err(format!(
                            "path `{input}` has an empty segment (`//`); requests with one are always denied"
                        ));
                    }
                    "." | ".." => {
                        return Err(format!(
                            "path `{input}` has a `{seg}` segment; requests with dot segments are always denied"
                        ));
                    }
                    "**" => Segment::Any,
                    "*" => Segment::One,
                    s if s.contains("**") => {
                        return Err(format!(
                            "path `{input}`: `**` must be a whole segment (e.g. `/v1/**`)"
                        ));
                    }
                    s if s.contains('*') => Segment::Partial(s.to_string()),
                    s => Segment::Literal(s.to_string()),
                };
                // `**/**` is the same as `**`.
                if parsed == Segment::Any && segments.last() == Some(&Segment::Any) {
                    continue;
                }
                segments.push(parsed);
            }
        }
        let folded = segments.iter().map(Segment::folded).collect();
        Ok(Self {
            text: input.to_string(),
            segments,
            folded,
        })
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a request path matches, as the proxy would decide it (a
    /// path [`CanonicalRequest::parse`] refuses matches nothing).
    pub fn matches(&self, path: &str) -> bool {
        CanonicalRequest::parse("GET", path, None, Ambiguities::default())
            .is_ok_and(|r| self.matches_segments(&r.segments().collect::<Vec<_>>()))
    }

    /// Whether any literal part of the glob has an upper-case letter.
    pub(crate) fn has_upper(&self) -> bool {
        self.text.bytes().any(|b| b.is_ascii_uppercase())
    }

    /// Matches the segments of a canonical path.
    pub(crate) fn matches_segments(&self, path: &[&str]) -> bool {
        match_segments(&self.segments, path)
    }

    /// Matches lower-cased segments against the lower-cased glob.
    pub(crate) fn matches_folded(&self, lower_path: &[&str]) -> bool {
        match_segments(&self.folded, lower_path)
    }

    /// Whether every path `other` matches is also matched by `self`. Sound
    /// but not complete: `true` is always right, `false` may be a miss.
    pub fn covers(&self, other: &PathGlob) -> bool {
        let a = &self.segments;
        let b = &other.segments;
        let (na, nb) = (a.len(), b.len());
        let width = nb + 1;
        // c[i * width + j]: a[i..] covers b[j..].
        let mut c = vec![false; (na + 1) * width];
        c[na * width + nb] = true;
        for i in (0..na).rev() {
            for j in (0..=nb).rev() {
                c[i * width + j] = if a[i] == Segment::Any {
                    c[(i + 1) * width + j] || (j < nb && c[i * width + j + 1])
                } else {
                    j < nb
                        && b[j] != Segment::Any
                        && segment_covers(&a[i], &b[j])
                        && c[(i + 1) * width + j + 1]
                };
            }
        }
        c[0]
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Wildcard matching where `**` spans any run of segments and every other
/// segment spans exactly one: greedy, backtracking to the last `**`.
/// O(pattern * path), no recursion.
fn match_segments(pat: &[Segment], path: &[&str]) -> bool {
    let (mut p, mut s) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while s < path.len() {
        if let Some(seg) = pat.get(p) {
            if *seg == Segment::Any {
                resume = Some((p + 1, s));
                p += 1;
                continue;
            }
            if segment_matches(seg, path[s]) {
                p += 1;
                s += 1;
                continue;
            }
        }
        match resume {
            Some((rp, rs)) => {
                p = rp;
                s = rs + 1;
                resume = Some((rp, rs + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|seg| *seg == Segment::Any)
}

fn segment_matches(seg: &Segment, s: &str) -> bool {
    match seg {
        Segment::Literal(l) => l == s,
        Segment::One => !s.is_empty(),
        Segment::Any => true,
        Segment::Partial(p) => star_match(p.as_bytes(), s.as_bytes()),
    }
}

/// Whether single-segment `a` matches everything single-segment `b` does.
fn segment_covers(a: &Segment, b: &Segment) -> bool {
    match (a, b) {
        (Segment::One, _) => true,
        (Segment::Literal(x), Segment::Literal(y)) => x == y,
        (Segment::Partial(p), Segment::Literal(y)) => star_match(p.as_bytes(), y.as_bytes()),
        (Segment::Partial(p), Segment::Partial(q)) => p == q,
        _ => false,
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn star_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && pat[p] == b'*' {
            resume = Some((p + 1, i));
            p += 1;
        } else if p < pat.len() && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((rp, ri)) = resume {
            p = rp;
            i = ri + 1;
            resume = Some((rp, ri + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|b| *b == b'*')
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 normalization of percent-escapes: escapes of unreserved
/// characters are decoded (`%7E` -> `~`, `%2E` -> `.`), the others get
/// uppercase hex (`%2f` -> `%2F`). Borrows when there is nothing to do.
fn normalize_escapes(path: &str) -> Result<Cow<'_, str>, ()> {
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |b: u8| (b as char).to_digit(16);
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(());
        };
        // Two hex digits: the value fits in a byte.
        let value = (h * 16 + l) as u8;
        if is_unreserved(value) {
            out.push(value);
        } else {
            out.push(b'%');
            out.extend(bytes[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
        }
        i += 3;
    }
    // Only ASCII bytes were replaced by ASCII bytes.
    String::from_utf8(out).map(Cow::Owned).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(s: &str) -> PathGlob {
        PathGlob::parse(s).unwrap()
    }

    #[test]
    fn star_is_exactly_one_segment() {
        let p = g("/v1/customers/*");
        assert!(p.matches("/v1/customers/cus_123"));
        assert!(p.matches("/v1/customers/cus_123/"));
        assert!(!p.matches("/v1/customers"));
        assert!(!p.matches("/v1/customers/"));
        assert!(!p.matches("/v1/customers/a/b"));
        assert!(!p.matches("/v1/customers/a/b/"));
        assert!(g("/v1/*/refunds").matches("/v1/x/refunds"));
        assert!(!g("/v1/*/refunds").matches("/v1/x/y/refunds"));
    }

    #[test]
    fn double_star_is_any_number_of_segments() {
        let p = g("/v1/**");
        assert!(p.matches("/v1"));
        assert!(p.matches("/v1/"));
        assert!(p.matches("/v1/a"));
        assert!(p.matches("/v1/a/b/c"));
        assert!(!p.matches("/v2/a"));
        assert!(!p.matches("/v1x"));
        let all = g("/**");
        assert!(all.matches("/"));
        assert!(all.matches("/anything/at/all"));
        let mid = g("/repos/**/contents");
        assert!(mid.matches("/repos/contents"));
        assert!(mid.matches("/repos/o/r/contents"));
        assert!(!mid.matches("/repos/o/r/contents/x"));
        assert!(g("/a/**/b/**/c").matches("/a/x/b/y/z/c"));
        assert!(!g("/a/**/b/**/c").matches("/a/x/c"));
    }

    #[test]
    fn literals_and_partial_segments() {
        assert!(g("/").matches("/"));
        assert!(!g("/").matches("/a"));
        assert!(g("/v1/refunds").matches("/v1/refunds"));
        assert!(g("/v1/refunds").matches("/v1/refunds/"));
        assert!(!g("/v1/refunds").matches("/v1/Refunds"));
        assert!(!g("/v1/refunds").matches("/v1/refundsx"));
        let p = g("/v1/customers/cus_*");
        assert!(p.matches("/v1/customers/cus_1"));
        assert!(p.matches("/v1/customers/cus_"));
        assert!(!p.matches("/v1/customers/acct_1"));
        assert!(!p.matches("/v1/customers/cus_1/x"));
        assert!(g("/files/*.json").matches("/files/a.b.json"));
        assert!(!g("/files/*.json").matches("/files/a.json.txt"));
    }

    #[test]
    fn query_strings_are_ignored() {
        assert!(g("/v1/x").matches("/v1/x?limit=10"));
        // A fragment never reaches a server: a request that carries one is refused.
        assert!(!g("/v1/x").matches("/v1/x#frag"));
    }

    #[test]
    fn dot_and_empty_segments_never_match() {
        let all = g("/**");
        for bad in [
            "/v1/../admin",
            "/v1/./x",
            "/..",
            "/.",
            "/v1/%2e%2e/admin",
            "/v1/%2E./admin",
            "/v1/.%2e",
            "/v1//x",
            "//x",
            "/v1/x//",
            "v1/x",
            "",
            "*",
            "/a\\..\\b",
            "/a%zz",
            "/a%2",
        ] {
            assert!(!all.matches(bad), "{bad}");
        }
        // Single dots inside a segment are fine.
        assert!(all.matches("/v1/a.b/..c/.well-known"));
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded() {
        assert!(g("/v1/refunds").matches("/v1/re%66unds"));
        assert!(g("/v1/~x").matches("/v1/%7Ex"));
        // An encoded slash is refused unless the host opts in; then it
        // stays inside its segment.
        assert!(!g("/v1/*").matches("/v1/a%2Fb"));
        let opted = Ambiguities {
            encoded_slash: true,
            ..Ambiguities::default()
        };
        let r = CanonicalRequest::parse("GET", "/v1/a%2fb", None, opted).unwrap();
        let segs: Vec<&str> = r.segments().collect();
        assert!(g("/v1/*").matches_segments(&segs));
        assert!(g("/v1/a%2Fb").matches_segments(&segs));
        assert!(!g("/v1/a/b").matches_segments(&segs));
    }

    #[test]
    fn bad_globs_are_rejected() {
        for (bad, why) in [
            ("v1/x", "must start with `/`"),
            ("", "must start with `/`"),
            ("/v1/x?a=1", "query string"),
            ("/v1/[a]", "not supported"),
            ("/v1/{a,b}", "not supported"),
            ("/v1/**x", "whole segment"),
            ("/v1/a**", "whole segment"),
            ("/v1//x", "empty segment"),
            ("/v1/../x", "dot segments"),
            ("/v1/./x", "dot segments"),
            ("/v1/x/", "trailing `/`"),
            ("/v1/a b", "percent-encode"),
            ("/v1/é", "percent-encode"),
            ("/v1/%zz", "two hex digits"),
        ] {
            let err = PathGlob::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(PathGlob::parse(&format!("/{}", "a".repeat(MAX_GLOB_LEN))).is_err());
    }

    #[test]
    fn covers_known_cases() {
        assert!(g("/**").covers(&g("/v1/refunds")));
        assert!(g("/**").covers(&g("/**")));
        assert!(g("/v1/**").covers(&g("/v1/*/x")));
        assert!(g("/v1/**").covers(&g("/v1/**/x")));
        assert!(g("/v1/*").covers(&g("/v1/x")));
        assert!(g("/v1/*").covers(&g("/v1/cus_*")));
        assert!(g("/v1/cus_*").covers(&g("/v1/cus_1")));
        assert!(g("/v1/x").covers(&g("/v1/x")));
        assert!(!g("/v1/x").covers(&g("/v1/y")));
        assert!(!g("/v1/*").covers(&g("/v1/**")));
        assert!(!g("/v1/*").covers(&g("/v1")));
        assert!(!g("/v1/x").covers(&g("/v1/*")));
        assert!(!g("/v1/**").covers(&g("/v2/**")));
        assert!(!g("/v1/**/x").covers(&g("/v1/**")));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("ab".to_string()),
            Just("*".to_string()),
            Just("**".to_string()),
            Just("a*".to_string()),
        ]
    }

    fn glob() -> impl Strategy<Value = String> {
        proptest::collection::vec(segment(), 0..5).prop_map(|v| format!("/{}", v.join("/")))
    }

    fn request() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just("a"), Just("b"), Just("ab"), Just("abc"), Just("x")],
            0..6,
        )
        .prop_map(|v| format!("/{}", v.join("/")))
    }

    proptest! {
        #[test]
        fn single_star_never_crosses_a_slash(prefix in "[a-z]{1,5}", rest in "[a-z]{1,5}(/[a-z]{1,5}){1,3}") {
            let p = g(&format!("/{prefix}/*"));
            let path = format!("/{prefix}/{rest}");
            prop_assert!(!p.matches(&path));
        }

        #[test]
        fn double_star_matches_everything_below(prefix in "[a-z]{1,5}", rest in "(/[a-z.]{1,5}){0,4}") {
            prop_assume!(!rest.split('/').any(|s| s == "." || s == ".."));
            let p = g(&format!("/{prefix}/**"));
            let path = format!("/{prefix}{rest}");
            prop_assert!(p.matches(&path));
        }

        #[test]
        fn dot_segments_never_match(
            pat in glob(), before in "(/[a-z]{1,3}){0,2}", dots in prop_oneof![Just(".."), Just("."), Just("%2e%2e"), Just("%2E"), Just(".%2E")], after in "(/[a-z]{1,3}){0,2}"
        ) {
            let p = g(&pat);
            let path = format!("{before}/{dots}{after}");
            prop_assert!(!p.matches(&path));
        }

        #[test]
        fn covers_is_sound(a in glob(), b in glob(), paths in proptest::collection::vec(request(), 1..20)) {
            let (ga, gb) = (g(&a), g(&b));
            if ga.covers(&gb) {
                for p in &paths {
                    if gb.matches(p) {
                        prop_assert!(ga.matches(p), "{} covers {} but not {}", a, b, p);
                    }
                }
            }
        }

        #[test]
        fn everything_covers_itself(a in glob()) {
            prop_assert!(g(&a).covers(&g(&a)));
        }

        #[test]
        fn never_panics(pat in "\\PC{0,30}", path in "\\PC{0,40}") {
            if let Ok(p) = PathGlob::parse(&pat) {
                let _ = p.matches(&path);
                let _ = p.covers(&p);
            }
        }
    }
}
