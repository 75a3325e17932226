//! A small strict JSON reader (RFC 8259) for cost extraction: keeps each
//! number's exact text (serde_json without `arbitrary_precision` would turn
//! `19.99` into an `f64`), keeps duplicate object keys so a pointer through
//! an ambiguous key can be refused, and resolves RFC 6901 JSON pointers.

use std::fmt;

/// Nesting deeper than this is refused (no stack exhaustion on any input).
const MAX_DEPTH: usize = 128;

/// A parsed JSON value. Numbers keep their text; objects keep every member
/// in order, duplicates included.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// `a number`, `a string`, ... for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Number(_) => "a number",
            Self::String(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

/// Why a body is not JSON, with the byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonError {
    pub(crate) offset: usize,
    pub(crate) what: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

/// Why a pointer does not lead to one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PointerError {
    /// Nothing at the pointer.
    Missing,
    /// An object on the way has this key (first) this many times (second,
    /// at least 2): different parsers would read different values.
    Duplicate(String, usize),
    /// Not a valid RFC 6901 pointer.
    Invalid,
}

/// Parses a whole document (surrounding whitespace allowed, nothing else).
pub(crate) fn parse(bytes: &[u8]) -> Result<Json, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|e| JsonError {
        offset: e.valid_up_to(),
        what: "invalid UTF-8",
    })?;
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected data after the JSON value"));
    }
    Ok(v)
}

/// Resolves an RFC 6901 pointer (`/data/0/amount`, `~0` is `~`, `~1` is
/// `/`; the empty pointer is the whole document).
pub(crate) fn pointer<'a>(doc: &'a Json, ptr: &str) -> Result<&'a Json, PointerError> {
    if ptr.is_empty() {
        return Ok(doc);
    }
    let Some(rest) = ptr.strip_prefix('/') else {
        return Err(PointerError::Invalid);
    };
    let mut cur = doc;
    for raw in rest.split('/') {
        let token = unescape_token(raw)?;
        cur = match cur {
            Json::Object(members) => {
                // Go's encoding/json matches keys ignoring case (the last
                // one wins): keys that differ only in case are duplicates.
                let first = members
                    .iter()
                    .find(|(k, _)| *k == token)
                    .ok_or(PointerError::Missing)?;
                let count = members.iter().filter(|(k, _)| same_key(k, &token)).count();
                if count > 1 {
                    return Err(PointerError::Duplicate(token, count));
                }
                &first.1
            }
            Json::Array(items) => {
                let ok = !token.is_empty()
                    && token.bytes().all(|b| b.is_ascii_digit())
                    && (token == "0" || !token.starts_with('0'));
                if !ok {
                    return Err(PointerError::Missing);
                }
                let idx: usize = token.parse().map_err(|_| PointerError::Missing)?;
                items.get(idx).ok_or(PointerError::Missing)?
            }
            _ => return Err(PointerError::Missing),
        };
    }
    Ok(cur)
}

/// Whether some parser reads the object keys `a` and `b` as the same key:
/// equal ignoring case, Unicode simple folding included (`K` and the
/// Kelvin sign, `s` and `ſ`), as Go's encoding/json does.
pub(crate) fn same_key(a: &str, b: &str) -> bool {
    let fold = |s: &str| -> String {
        s.chars()
            .flat_map(char::to_uppercase)
            .flat_map(char::to_lowercase)
            .collect()
    };
    a == b || fold(a) == fold(b)
}

fn unescape_token(raw: &str) -> Result<String, PointerError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return Err(PointerError::Invalid),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError {
            offset: self.i,
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8], v: Json) -> Result<Json, JsonError> {
        if self.s.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth >= MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.err("expected `,` or `]`")),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a string key"));
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(self.err("expected `:`"));
                    }
                    self.i += 1;
                    self.ws();
                    let v = self.value(depth + 1)?;
                    members.push((key, v));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err(self.err("expected `,` or `}`")),
                    }
                }
            }
            Some(_) => Err(self.err("expected a JSON value")),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, kept as text.
    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
        }
        let text = self.s.get(start..self.i).unwrap_or_default();
        Ok(Json::Number(String::from_utf8_lossy(text).into_owned()))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        // At the opening quote. The input is valid UTF-8, so copying runs
        // of bytes between escapes keeps it valid.
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return String::from_utf8(out).map_err(|_| self.err("invalid UTF-8"));
                }
                b'\\' => {
                    self.i += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.err("invalid escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(self.err("control character in string")),
                _ => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// After `\u`: one code point, joining a surrogate pair; a lone
    /// surrogate is an error.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                return Err(self.err("lone surrogate in \\u escape"));
            }
            self.i += 2;
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(self.err("lone surrogate in \\u escape"));
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| self.err("lone surrogate in \\u escape"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn json_like_never_panics(s in "[\\[\\]{}\",:0-9a-z\\\\ .eE+~/-]{0,120}") {
            if let Ok(v) = parse(s.as_bytes()) {
                let _ = pointer(&v, "/a/0/b");
            }
        }
    }

    fn num(s: &str) -> Json {
        Json::Number(s.into())
    }

    #[test]
    fn keeps_number_text() {
        let v = parse(br#" {"amount": 19.99, "n": [0, -1, 1e3, 2.50E-2]} "#).unwrap();
        assert_eq!(pointer(&v, "/amount"), Ok(&num("19.99")));
        assert_eq!(pointer(&v, "/n/1"), Ok(&num("-1")));
        assert_eq!(pointer(&v, "/n/2"), Ok(&num("1e3")));
        assert_eq!(pointer(&v, "/n/3"), Ok(&num("2.50E-2")));
        assert_eq!(pointer(&v, "/amount").map(Json::kind), Ok("a number"));
    }

    #[test]
    fn strings_and_escapes() {
        let v =
            parse(br#"{"a\/b": "x\"y", "c~d": "\u00e9\ud83d\ude00", "e": "caf\u00e9"}"#).unwrap();
        assert_eq!(pointer(&v, "/a~1b"), Ok(&Json::String("x\"y".into())));
        assert_eq!(pointer(&v, "/c~0d"), Ok(&Json::String("é😀".into())));
        assert_eq!(pointer(&v, "/e"), Ok(&Json::String("café".into())));
        assert_eq!(pointer(&v, ""), Ok(&v));
    }

    #[test]
    fn pointer_errors() {
        let v = parse(br#"{"a": {"b": 1, "b": 2, "b": 3}, "l": [1, 2], "k": 3, "k": 4}"#).unwrap();
        assert_eq!(
            pointer(&v, "/a/b"),
            Err(PointerError::Duplicate("b".into(), 3))
        );
        assert_eq!(
            pointer(&v, "/k"),
            Err(PointerError::Duplicate("k".into(), 2))
        );
        assert_eq!(pointer(&v, "/l/2"), Err(PointerError::Missing));
        assert_eq!(pointer(&v, "/l/01"), Err(PointerError::Missing));
        assert_eq!(pointer(&v, "/l/-"), Err(PointerError::Missing));
        assert_eq!(
            pointer(&v, "/l/99999999999999999999999"),
            Err(PointerError::Missing)
        );
        assert_eq!(pointer(&v, "/zz"), Err(PointerError::Missing));
        assert_eq!(
            pointer(&v, "/k/x"),
            Err(PointerError::Duplicate("k".into(), 2))
        );
        assert_eq!(pointer(&v, "/l/0/x"), Err(PointerError::Missing));
        assert_eq!(pointer(&v, "a"), Err(PointerError::Invalid));
        assert_eq!(pointer(&v, "/a~2"), Err(PointerError::Invalid));
    }

    #[test]
    fn refuses_invalid_documents() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\" 1}",
            b"{\"a\": 1,}",
            b"[1 2]",
            b"01",
            b"1.",
            b"-",
            b".5",
            b"1e",
            b"+1",
            b"NaN",
            b"Infinity",
            b"tru",
            b"\"abc",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"a\nb\"",
            b"{} {}",
            b"\xff",
            b"{'a': 1}",
            b"\"\\u12\"",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(100_000);
        assert_eq!(
            parse(deep.as_bytes()).map(|_| ()).unwrap_err().what,
            "nested too deeply"
        );
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(ok.as_bytes()).is_ok());
    }
}
