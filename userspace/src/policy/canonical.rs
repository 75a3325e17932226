//! The one canonical request every check decides on: an upper-case method
//! token and a path that every mainstream server framework routes the same
//! way. Whatever servers disagree about (an encoded `/` or `\`, `;`
//! parameters, dot or empty segments, double encoding, lower-case methods,
//! method-override headers) is refused as ambiguous, with a reason the
//! agent's developer can act on, unless the host opts in with
//! `allow_ambiguous`.
//!
//! The request is parsed once; rules, spend, rate limits, approvals and the
//! loop breaker all see this same value.

use std::fmt;

use http::HeaderMap;

/// Headers that make frameworks route a request under another method
/// (Express's method-override, Google APIs, Symfony, Laravel...).
const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Query parameters with the same effect (Laravel, Symfony, Rack with
/// `Rack::MethodOverride` configured for queries).
const METHOD_OVERRIDE_PARAMS: &[&str] = &["_method"];

/// What a host may accept although servers disagree about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ambiguities {
    /// `%2F` inside a segment (GitLab-style ids such as `group%2Fproject`):
    /// matched as part of its segment.
    pub encoded_slash: bool,
    /// `;` in the path, matched literally (some servers strip `;params`).
    pub semicolons: bool,
    /// Empty segments (`//`).
    pub empty_segments: bool,
    /// Paths whose decision would change if the server ignored case.
    pub mixed_case: bool,
    /// Paths whose decision would change if the server dropped a format
    /// suffix (`.json`) or trailing dots and spaces.
    pub suffixes: bool,
}

/// The names `allow_ambiguous` accepts, for messages and docs.
pub const AMBIGUITY_NAMES: &[&str] = &[
    "encoded-slash",
    "semicolons",
    "empty-segments",
    "mixed-case",
];

impl Ambiguities {
    /// Everything a host without rules may receive (nothing to dodge).
    pub const ALL: Self = Self {
        encoded_slash: true,
        semicolons: true,
        empty_segments: true,
        mixed_case: true,
        suffixes: true,
    };

    /// Turns on one opt-in by its policy name; false if the name is unknown.
    pub fn enable(&mut self, name: &str) -> bool {
        let flag = match name {
            "encoded-slash" => &mut self.encoded_slash,
            "semicolons" => &mut self.semicolons,
            "empty-segments" => &mut self.empty_segments,
            "mixed-case" => &mut self.mixed_case,
            "suffixes" => &mut self.suffixes,
            _ => return false,
        };
        *flag = true;
        true
    }

    /// The opt-ins that are on, by policy name.
    pub fn names(&self) -> Vec<&'static str> {
        let flags = [
            self.encoded_slash,
            self.semicolons,
            self.empty_segments,
            self.mixed_case,
            self.suffixes,
        ];
        AMBIGUITY_NAMES
            .iter()
            .zip(flags)
            .filter_map(|(n, on)| on.then_some(*n))
            .collect()
    }
}

/// Why a request is refused as ambiguous (a `400` naming it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguous {
    #[error("method `{0}` is not upper case; servers disagree about lower-case methods: send `{up}`", up = .0.to_ascii_uppercase())]
    MethodCase(String),
    #[error("method `{0}` is not an HTTP method token")]
    MethodToken(String),
    #[error("the {0} header asks the server to route the request as another method")]
    MethodOverrideHeader(String),
    #[error(
        "the parameter `{0}` (query or form body) asks the server to route the request as another method"
    )]
    MethodOverrideParam(String),

    #[error(
        "the Connection header names `{0}`: the proxy would drop that header after the policy checked it; Connection may list only close, keep-alive, upgrade, te and http2-settings"
    )]
    ConnectionOption(String),
    #[error(
        "the request has more than one Content-Type header; servers disagree about which one counts: send one"
    )]
    RepeatedContentType,

    #[error("the request target is not a path starting with `/`")]
    NotOriginForm,
    #[error("the path contains `\\` or `%5C`, which some servers treat as `/`")]
    Backslash,
    #[error("the path contains `%2F`, which some servers decode to `/` before routing")]
    EncodedSlash,
    #[error("the path contains `;`, which some servers strip with what follows it")]
    Semicolon,
    #[error("the path contains a `.` or `..` segment (also when percent-encoded)")]
    DotSegment,
    #[error("the path contains an empty segment (`//`)")]
    EmptySegment,
    #[error("the path contains a `%` not followed by two hex digits")]
    BadEscape,
    #[error("the path contains `%25` followed by hex digits (double encoding)")]
    DoubleEncoding,
    #[error("the path contains an encoded control character")]
    ControlCharacter,
    #[error("the path contains percent-encoded bytes that are not valid UTF-8")]
    InvalidUtf8,
    #[error("the path contains a character that must be percent-encoded")]
    RawCharacter,
    #[error(
        "the path's case decides which rule applies: as sent it matches {sensitive}, ignoring case it matches {insensitive}; servers that ignore case would route it differently"
    )]
    MixedCase {
        sensitive: String,
        insensitive: String,
    },
    #[error(
        "the path's suffix decides which rule applies: as sent it matches {as_sent}, without its format suffix or trailing dots and spaces it matches {stripped}; servers that strip them (Rails, IIS) would route it differently"
    )]
    Suffix { as_sent: String, stripped: String },
}

impl Ambiguous {
    /// A stable name for the audit log and the refusal body.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MethodCase(_) => "method-case",
            Self::MethodToken(_) => "method-token",
            Self::MethodOverrideHeader(_) | Self::MethodOverrideParam(_) => "method-override",
            Self::ConnectionOption(_) => "connection-header",
            Self::RepeatedContentType => "content-type",
            Self::NotOriginForm => "not-origin-form",
            Self::Backslash => "backslash",
            Self::EncodedSlash => "encoded-slash",
            Self::Semicolon => "semicolons",
            Self::DotSegment => "dot-segment",
            Self::EmptySegment => "empty-segments",
            Self::BadEscape => "bad-escape",
            Self::DoubleEncoding => "double-encoding",
            Self::ControlCharacter => "control-character",
            Self::InvalidUtf8 => "invalid-utf8",
            Self::RawCharacter => "raw-character",
            Self::MixedCase { .. } => "mixed-case",
            Self::Suffix { .. } => "suffixes",
        }
    }

    /// The `allow_ambiguous` entry that would accept this, if one does.
    pub fn opt_in(&self) -> Option<&'static str> {
        match self {
            Self::EncodedSlash => Some("encoded-slash"),
            Self::Semicolon => Some("semicolons"),
            Self::EmptySegment => Some("empty-segments"),
            Self::MixedCase { .. } => Some("mixed-case"),
            Self::Suffix { .. } => Some("suffixes"),
            _ => None,
        }
    }
}

/// A request as the policy decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalRequest {
    method: String,
    /// The path with escapes normalized: unreserved characters decoded,
    /// other escapes in upper-case hex. One trailing `/` removed (rules
    /// treat `/x` and `/x/` alike); `/` stays `/`.
    path: String,
    /// `path` split on `/` (no leading empty segment).
    segments: Vec<String>,
    query: Option<String>,
}

impl fmt::Display for CanonicalRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

impl CanonicalRequest {
    /// Parses `method` and the origin-form `target` (path and query) of a
    /// request, with its headers when there are any. `allow` is what the
    /// host accepts although servers disagree about it.
    pub fn parse(
        method: &str,
        target: &str,
        headers: Option<&HeaderMap>,
        allow: Ambiguities,
    ) -> Result<Self, Ambiguous> {
        let method = canonical_method(method)?;
        if let Some(h) = headers {
            if let Some(name) = METHOD_OVERRIDE_HEADERS.iter().find(|n| h.contains_key(**n)) {
                return Err(Ambiguous::MethodOverrideHeader((*name).to_string()));
            }
            check_connection(h)?;
            if h.get_all(http::header::CONTENT_TYPE)
                .iter()
                .nth(1)
                .is_some()
            {
                return Err(Ambiguous::RepeatedContentType);
            }
        }
        let (raw_path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        if target.contains('#') {
            return Err(Ambiguous::RawCharacter);
        }
        if let Some(q) = query
            && let Some(p) = url::form_urlencoded::parse(&semicolons_as_ampersands(q.as_bytes()))
                .map(|(k, _)| normalized_field(&k))
                .find(|k| {
                    METHOD_OVERRIDE_PARAMS
                        .iter()
                        .any(|p| k.eq_ignore_ascii_case(p))
                })
        {
            return Err(Ambiguous::MethodOverrideParam(p));
        }
        let path = canonical_path(raw_path, allow)?;
        let body = path.strip_prefix('/').unwrap_or(&path);
        let segments = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').map(str::to_string).collect()
        };
        Ok(Self {
            method,
            path,
            segments,
            query: query.map(str::to_string),
        })
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    /// The normalized path (see the field's documentation).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(String::as_str)
    }

    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Whether the method only reads (the loop breaker does not count reads).
    pub fn is_read(&self) -> bool {
        matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS")
    }
}

/// What a `Connection` header may list: the connection's own options.
/// Anything else names a header the proxy would remove as hop-by-hop after
/// the policy checked it (`Connection: Stripe-Account`). `te` is there for
/// `curl --tr-encoding`, `http2-settings` for `curl --http2` to an
/// `http://` URL (an h2c upgrade); neither header is ever forwarded, and
/// `require` cannot name them.
const CONNECTION_OPTIONS: &[&str] = &["close", "keep-alive", "upgrade", "te", "http2-settings"];

/// Every `Connection` line lists only [`CONNECTION_OPTIONS`] (any case).
fn check_connection(headers: &HeaderMap) -> Result<(), Ambiguous> {
    for line in headers.get_all(http::header::CONNECTION) {
        let text = String::from_utf8_lossy(line.as_bytes());
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !CONNECTION_OPTIONS
                .iter()
                .any(|o| token.eq_ignore_ascii_case(o))
            {
                let shown: String = token.chars().take(64).collect();
                return Err(Ambiguous::ConnectionOption(
                    shown.to_ascii_lowercase().escape_default().to_string(),
                ));
            }
        }
    }
    Ok(())
}

/// Whether a field name has `[` or `]` anywhere but in the one form every
/// framework reads alike (`name`, `name[]`, `name[a][b]`). Others differ:
/// PHP reads an unmatched `[` as `_` (`unit[amount` is `unit_amount`),
/// Rack 2 reads `amount]`, `[amount]` and `]amount` as `amount`.
pub fn malformed_brackets(key: &str) -> bool {
    let Some(open) = key.find(['[', ']']) else {
        return false;
    };
    if open == 0 {
        return true;
    }
    let mut rest = &key[open..];
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return true;
        };
        let Some(close) = inner.find(['[', ']']) else {
            return true;
        };
        if inner.as_bytes()[close] != b']' {
            return true;
        }
        rest = &inner[close + 1..];
    }
    false
}

/// A form field name as frameworks read it: PHP drops leading spaces, cuts
/// at NUL and reads ` ` and `.` as `_`; PHP, Rails and others read
/// `name[]`/`name[x]` as `name`, Rack 2 also `[name]`, `]name` and `name]`.
/// Two names that give the same result are the same field to some server
/// (and see [`malformed_brackets`] for what PHP makes of a lone `[`).
pub fn normalized_field(key: &str) -> String {
    let key = key.split('\0').next().unwrap_or_default();
    let key = key.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let key = key.trim_start_matches(['[', ']']);
    let base = key.split(['[', ']']).next().unwrap_or_default();
    base.chars()
        .map(|c| if c == ' ' || c == '.' { '_' } else { c })
        .collect()
}

/// What a request body says about the method: Rails (`Rack::MethodOverride`),
/// Laravel and Symfony route a POST whose form body has a `_method` field
/// as that method. `body` is the start of the body (all of it when
/// `complete`); `content_type` the request's.
pub fn body_method_override(
    content_type: Option<&str>,
    body: &[u8],
    complete: bool,
) -> Result<(), Ambiguous> {
    let mt = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if mt == "application/x-www-form-urlencoded" {
        if !complete {
            // The caller watches the rest as it streams.
            return Ok(());
        }
        return match url::form_urlencoded::parse(&semicolons_as_ampersands(body))
            .map(|(k, _)| normalized_field(&k))
            .find(|k| {
                METHOD_OVERRIDE_PARAMS
                    .iter()
                    .any(|p| k.eq_ignore_ascii_case(p))
            }) {
            Some(k) => Err(Ambiguous::MethodOverrideParam(k)),
            None => Ok(()),
        };
    }
    if mt.starts_with("multipart/") && multipart_names_override(body) {
        return Err(Ambiguous::MethodOverrideParam("_method".into()));
    }
    Ok(())
}

/// Form or query text with `;` read as a separator too (Rack 2, older
/// Python and Go split fields on it).
pub fn semicolons_as_ampersands(raw: &[u8]) -> Vec<u8> {
    raw.iter()
        .map(|b| if *b == b';' { b'&' } else { *b })
        .collect()
}

/// Whether a multipart body (or its start) has a part named `_method`.
pub fn multipart_names_override(body: &[u8]) -> bool {
    let lower = body.to_ascii_lowercase();
    MULTIPART_OVERRIDE_NAMES
        .iter()
        .any(|p| memchr::memmem::find(&lower, p.as_bytes()).is_some())
}

/// How a multipart part named `_method` is written (lower case).
pub const MULTIPART_OVERRIDE_NAMES: &[&str] = &["name=\"_method\"", "name=_method", "name*="];

/// Upper-case RFC 9110 tokens only.
fn canonical_method(method: &str) -> Result<String, Ambiguous> {
    if !super::methods::is_token(method) || method.len() > 32 {
        return Err(Ambiguous::MethodToken(method.escape_default().to_string()));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Ambiguous::MethodCase(method.to_string()));
    }
    Ok(method.to_string())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed raw in a path segment besides unreserved ones
/// (RFC 3986 sub-delims, `:` and `@`; `;` is decided separately).
fn is_raw_ok(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Checks and normalizes a request path (no query). See the module docs.
fn canonical_path(raw: &str, allow: Ambiguities) -> Result<String, Ambiguous> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Ambiguous::NotOriginForm);
    }
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    // Decoded non-ASCII bytes of the current run of escapes, to check UTF-8.
    let mut encoded_run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            check_utf8_run(&mut encoded_run)?;
            match b {
                b'\\' => return Err(Ambiguous::Backslash),
                b';' if !allow.semicolons => return Err(Ambiguous::Semicolon),
                b'/' | b';' => {}
                _ if is_unreserved(b) || is_raw_ok(b) => {}
                _ => return Err(Ambiguous::RawCharacter),
            }
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(Ambiguous::BadEscape);
        };
        let value = h * 16 + l;
        match value {
            b'/' if !allow.encoded_slash => return Err(Ambiguous::EncodedSlash),
            b'\\' => return Err(Ambiguous::Backslash),
            b';' if !allow.semicolons => return Err(Ambiguous::Semicolon),
            b'%' if bytes.get(i + 3).copied().and_then(hex).is_some()
                && bytes.get(i + 4).copied().and_then(hex).is_some() =>
            {
                return Err(Ambiguous::DoubleEncoding);
            }
            0..=0x1f | 0x7f => return Err(Ambiguous::ControlCharacter),
            _ => {}
        }
        if value >= 0x80 {
            encoded_run.push(value);
        } else {
            check_utf8_run(&mut encoded_run)?;
        }
        if is_unreserved(value) {
            out.push(value);
        } else {
            out.push(b'%');
            out.extend([bytes[i + 1], bytes[i + 2]].map(|c| c.to_ascii_uppercase()));
        }
        i += 3;
    }
    check_utf8_run(&mut encoded_run)?;
    // Only ASCII bytes were written.
    let mut path = String::from_utf8(out).map_err(|_| Ambiguous::RawCharacter)?;
    if path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    for seg in path[1..].split('/') {
        match seg {
            "." | ".." => return Err(Ambiguous::DotSegment),
            "" if path.len() > 1 && !allow.empty_segments => return Err(Ambiguous::EmptySegment),
            _ => {}
        }
    }
    Ok(path)
}

fn check_utf8_run(run: &mut Vec<u8>) -> Result<(), Ambiguous> {
    if run.is_empty() {
        return Ok(());
    }
    let ok = std::str::from_utf8(run).is_ok();
    run.clear();
    if ok {
        Ok(())
    } else {
        Err(Ambiguous::InvalidUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(method: &str, target: &str) -> Result<CanonicalRequest, Ambiguous> {
        CanonicalRequest::parse(method, target, None, Ambiguities::default())
    }

    fn kind(method: &str, target: &str) -> &'static str {
        parse(method, target).map_or_else(|e| e.kind(), |_| "ok")
    }

    #[test]
    fn plain_requests_parse() {
        let r = parse("POST", "/v1/refunds?charge=ch_1").unwrap();
        assert_eq!(r.method(), "POST");
        assert_eq!(r.path(), "/v1/refunds");
        assert_eq!(r.query(), Some("charge=ch_1"));
        assert_eq!(r.segments().collect::<Vec<_>>(), ["v1", "refunds"]);
        assert_eq!(parse("GET", "/").unwrap().segments().count(), 0);
        assert_eq!(parse("GET", "/v1/x/").unwrap().path(), "/v1/x");
        assert_eq!(
            parse("GET", "/v1/cus_A:b@c+d").unwrap().path(),
            "/v1/cus_A:b@c+d"
        );
        assert_eq!(parse("M-SEARCH", "/").unwrap().method(), "M-SEARCH");
    }

    #[test]
    fn escapes_are_normalized() {
        assert_eq!(parse("GET", "/v1/re%66unds").unwrap().path(), "/v1/refunds");
        assert_eq!(parse("GET", "/a%2cb").unwrap().path(), "/a%2Cb");
        assert_eq!(parse("GET", "/caf%C3%A9").unwrap().path(), "/caf%C3%A9");
    }

    #[test]
    fn what_servers_disagree_about_is_refused() {
        for (method, target, want) in [
            ("post", "/v1/refunds", "method-case"),
            ("Post", "/v1/refunds", "method-case"),
            ("GE T", "/", "method-token"),
            ("GET", "/v1/admin%2Fusers", "encoded-slash"),
            ("GET", "/v1/admin%2fusers", "encoded-slash"),
            ("POST", "/v1/refunds%2F", "encoded-slash"),
            ("GET", "/v1/admin%5Cusers", "backslash"),
            ("GET", "/v1/admin\\users", "backslash"),
            ("POST", "/v1/refunds;x=1", "semicolons"),
            ("POST", "/v1/refunds%3bx=1", "semicolons"),
            ("GET", "/v1/../admin", "dot-segment"),
            ("GET", "/v1/%2e%2E/admin", "dot-segment"),
            ("GET", "/v1/./x", "dot-segment"),
            ("GET", "/..", "dot-segment"),
            ("GET", "/v1//admin", "empty-segments"),
            ("GET", "//v1", "empty-segments"),
            ("GET", "/v1/%zz", "bad-escape"),
            ("GET", "/v1/%2", "bad-escape"),
            ("GET", "/v1/admin%252Fusers", "double-encoding"),
            ("GET", "/v1/a%00", "control-character"),
            ("GET", "/v1/a%0a", "control-character"),
            ("GET", "/v1/%C0%AF", "invalid-utf8"),
            ("GET", "/v1/%FF", "invalid-utf8"),
            ("GET", "/v1/a\"b", "raw-character"),
            ("GET", "/v1/a#frag", "raw-character"),
            ("GET", "*", "not-origin-form"),
            ("GET", "http://x/", "not-origin-form"),
            ("POST", "/v1/refunds?_method=DELETE", "method-override"),
            ("POST", "/v1/refunds?[_method]=DELETE", "method-override"),
            ("POST", "/v1/refunds?a=1;_method=DELETE", "method-override"),
        ] {
            assert_eq!(kind(method, target), want, "{method} {target}");
        }
        let mut h = HeaderMap::new();
        h.insert("X-HTTP-Method-Override", "DELETE".parse().unwrap());
        let e =
            CanonicalRequest::parse("POST", "/v1/x", Some(&h), Ambiguities::default()).unwrap_err();
        assert_eq!(e.kind(), "method-override");
        assert!(e.to_string().contains("x-http-method-override"), "{e}");
    }

    fn with_headers(list: &[(&str, &str)]) -> Result<CanonicalRequest, Ambiguous> {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        CanonicalRequest::parse("POST", "/v1/charges", Some(&h), Ambiguities::ALL)
    }

    /// A `Connection` header naming an end-to-end header would make the
    /// proxy drop it after the policy checked it (`Stripe-Account`,
    /// `Content-Type`): only the connection's own options pass.
    #[test]
    fn connection_may_name_only_the_connections_own_options() {
        for ok in [
            vec![("Connection", "close")],
            vec![("Connection", "keep-alive")],
            vec![("Connection", "Upgrade")],
            vec![("Connection", "keep-alive, Upgrade")],
            vec![("Connection", "Keep-Alive"), ("Connection", "TE")],
            vec![("Connection", "Upgrade, HTTP2-Settings")],
            vec![],
        ] {
            assert!(with_headers(&ok).is_ok(), "{ok:?}");
        }
        for bad in [
            vec![("Connection", "Stripe-Account")],
            vec![("Connection", "stripe-account")],
            vec![("Connection", "close, Content-Type")],
            vec![("Connection", "close"), ("Connection", "Content-Type")],
            vec![("Connection", "keep-alive,,x-api-key")],
        ] {
            let e = with_headers(&bad).expect_err(&format!("{bad:?}"));
            assert_eq!(e.kind(), "connection-header", "{bad:?}");
            assert_eq!(e.opt_in(), None);
        }
        let e = with_headers(&[("Connection", "Stripe-Account")]).unwrap_err();
        assert!(e.to_string().contains("stripe-account"), "{e}");
    }

    /// Servers disagree on which of two Content-Type lines counts.
    #[test]
    fn a_second_content_type_is_refused() {
        let e = with_headers(&[
            ("Content-Type", "application/json"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ])
        .unwrap_err();
        assert_eq!(e.kind(), "content-type");
        assert!(with_headers(&[("Content-Type", "application/json")]).is_ok());
    }

    #[test]
    fn hosts_can_opt_in() {
        let all = Ambiguities::ALL;
        let r = CanonicalRequest::parse("GET", "/projects/g%2fp/x;y//z", None, all).unwrap();
        assert_eq!(
            r.segments().collect::<Vec<_>>(),
            ["projects", "g%2Fp", "x;y", "", "z"]
        );
        // Never accepted, whatever the host says.
        for target in ["/a/../b", "/a%5Cb", "/a%252F", "/a%00"] {
            assert!(
                CanonicalRequest::parse("GET", target, None, all).is_err(),
                "{target}"
            );
        }
        assert!(CanonicalRequest::parse("get", "/", None, all).is_err());
        let mut a = Ambiguities::default();
        assert!(a.enable("semicolons"));
        assert!(!a.enable("dot-segments"));
        assert_eq!(a.names(), ["semicolons"]);
    }

    #[test]
    fn messages_say_what_to_send() {
        let e = parse("post", "/").unwrap_err();
        assert!(e.to_string().contains("send `POST`"), "{e}");
        assert_eq!(
            parse("GET", "/a%2Fb").unwrap_err().opt_in(),
            Some("encoded-slash")
        );
        assert_eq!(parse("GET", "/a/../b").unwrap_err().opt_in(), None);
    }

    #[test]
    fn a_method_in_the_form_body_is_an_override() {
        let form = Some("application/x-www-form-urlencoded");
        for body in [
            "_method=DELETE",
            "a=1&%5Fmethod=DELETE",
            "+_method=DELETE",
            "_method[]=DELETE",
            "[_method]=DELETE",
            "_method]=DELETE",
            "]_method=DELETE",
            "a=1;_method=DELETE",
        ] {
            let e = body_method_override(form, body.as_bytes(), true).unwrap_err();
            assert_eq!(e.kind(), "method-override", "{body}");
        }
        assert!(body_method_override(form, b"method=x&amount=1", true).is_ok());
        assert!(
            body_method_override(form, b"amount=1", false).is_ok(),
            "the rest of a long form is watched as it streams"
        );
        let mp = Some("multipart/form-data; boundary=b");
        let part =
            b"--b\r\nContent-Disposition: form-data; NAME=\"_method\"\r\n\r\nDELETE\r\n--b--";
        assert!(body_method_override(mp, part, true).is_err());
        assert!(
            body_method_override(
                mp,
                b"--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx",
                false
            )
            .is_ok()
        );
        assert!(
            body_method_override(Some("application/json"), b"{\"_method\": \"DELETE\"}", true)
                .is_ok()
        );
    }

    proptest! {
        #[test]
        fn never_panics(method in "\\PC{0,10}", target in "\\PC{0,60}") {
            let _ = parse(&method, &target);
            let _ = CanonicalRequest::parse(&method, &target, None, Ambiguities::ALL);
        }

        #[test]
        fn accepted_paths_have_no_ambiguous_bytes(target in "/[a-zA-Z0-9%/;.\\\\_~-]{0,40}") {
            if let Ok(r) = parse("GET", &target) {
                let p = r.path();
                prop_assert!(!p.contains("//") && !p.contains(';') && !p.contains('\\'));
                prop_assert!(!p.contains("%2F") && !p.contains("%5C") && !p.contains("%25"));
                prop_assert!(r.segments().all(|s| s != "." && s != ".." && !s.is_empty()));
            }
        }
    }
}
