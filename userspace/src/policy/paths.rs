//! Path globs of `[[host.rule]]` (`*` = exactly one segment, `**` = any
//! number of segments) and the conservative splitting of request paths they
//! are matched against.

use std::borrow::Cow;
use std::fmt;

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

/// Why a request path can never match a rule (so it falls to default deny).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmatchablePath {
    /// Not an origin-form path starting with `/`.
    NotAbsolute,
    /// Contains a `.` or `..` segment (also percent-encoded).
    DotSegment,
    /// Contains an empty segment (`//`).
    EmptySegment,
    /// Contains a `%` not followed by two hex digits.
    BadEscape,
    /// Contains a `\`, which some servers treat as `/`.
    Backslash,
}

impl UnmatchablePath {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotAbsolute => "the path does not start with `/`",
            Self::DotSegment => "the path contains a `.` or `..` segment",
            Self::EmptySegment => "the path contains an empty segment (`//`)",
            Self::BadEscape => "the path contains a malformed `%` escape",
            Self::Backslash => "the path contains a `\\`",
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
        Ok(Self {
            text: input.to_string(),
            segments,
        })
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a request path (no query string) matches. Paths that
    /// [`split_request_path`] rejects match nothing.
    pub fn matches(&self, path: &str) -> bool {
        match normalize_request_path(path) {
            Ok(norm) => match split_request_path(&norm) {
                Ok(segs) => self.matches_segments(&segs),
                Err(_) => false,
            },
            Err(_) => false,
        }
    }

    /// Matches already split segments (see [`split_request_path`]).
    pub(crate) fn matches_segments(&self, path: &[&str]) -> bool {
        // Wildcard matching where `**` spans any run of segments and every
        // other segment spans exactly one: greedy, backtracking to the last
        // `**`. O(pattern * path), no recursion.
        let pat = &self.segments;
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
fn normalize_escapes(path: &str) -> Result<Cow<'_, str>, UnmatchablePath> {
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
            return Err(UnmatchablePath::BadEscape);
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
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| UnmatchablePath::BadEscape)
}

/// Prepares a request path for matching: drops a query string or fragment
/// if the caller left one, requires a leading `/`, normalizes escapes.
pub(crate) fn normalize_request_path(path: &str) -> Result<Cow<'_, str>, UnmatchablePath> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(UnmatchablePath::NotAbsolute);
    }
    if path.contains('\\') {
        return Err(UnmatchablePath::Backslash);
    }
    normalize_escapes(path)
}

/// Splits a normalized path into segments. One trailing `/` is ignored;
/// `/` alone is zero segments. Empty segments and `.`/`..` segments make the
/// path unmatchable, since servers disagree about what they mean.
pub(crate) fn split_request_path(path: &str) -> Result<Vec<&str>, UnmatchablePath> {
    let body = path.strip_prefix('/').ok_or(UnmatchablePath::NotAbsolute)?;
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let segments: Vec<&str> = body.split('/').collect();
    for seg in &segments {
        match *seg {
            "" => return Err(UnmatchablePath::EmptySegment),
            "." | ".." => return Err(UnmatchablePath::DotSegment),
            _ => {}
        }
    }
    Ok(segments)
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
        assert!(g("/v1/x").matches("/v1/x#frag"));
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
        assert!(g("/v1/a%2Fb").matches("/v1/a%2fb"));
        // An encoded slash stays inside its segment.
        assert!(g("/v1/*").matches("/v1/a%2Fb"));
        assert!(!g("/v1/a/b").matches("/v1/a%2Fb"));
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
