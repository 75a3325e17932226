//! The encodings a vendor can echo a credential in, in two layers.
//!
//! *Cores* are whole-value encodings derived once per injection: the value
//! itself, its hex, its base64 (standard and URL-safe, padded and not, and
//! the three aligned runs it leaves inside any larger base64 blob), and the
//! exact wire forms enforcer wrote (a Basic token, a formatted header, a
//! form-encoded query value) with their base64. Each core of the real value
//! is paired with the same core of the placeholder.
//!
//! *Forms* are per-byte transport escapes a response may apply to any core,
//! byte by byte and mixed freely: percent-encoding (either hex case, double
//! encoded, `+` for a space), JSON and JavaScript escapes (`\/`, `\u00XX`,
//! `\xXX`, behind any of 1..=8 backslashes for nested strings) and HTML
//! character references (`&#47;`, `&#x2F;`, `&amp;`...). The streaming
//! matcher tries the forms of each core byte where it stands, so a core is
//! found however an encoder chose to escape each of its bytes, and the
//! placeholder is written back in the same form, byte for byte.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};

/// A real value's encoding and the same encoding of its placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Core {
    pub real: Vec<u8>,
    pub placeholder: Vec<u8>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("real", &format_args!("<{} bytes>", self.real.len()))
            .field("placeholder", &String::from_utf8_lossy(&self.placeholder))
            .finish()
    }
}

/// The cores of a secret's own value: literal, hex, base64 whole and aligned.
pub fn of_value(real: &[u8], placeholder: &[u8]) -> Vec<Core> {
    let mut out = vec![core(real.to_vec(), placeholder.to_vec())];
    for upper in [false, true] {
        out.push(core(hex(real, upper), hex(placeholder, upper)));
    }
    out.extend(base64_whole(real, placeholder));
    out.extend(base64_aligned(real, placeholder));
    dedup(out)
}

/// The cores of an exact wire form enforcer wrote (e.g. `user:secret`'s
/// base64 token, `Bearer secret`, a form-encoded value): itself and its
/// base64, so that an echo of exactly what was sent comes back as exactly
/// what the agent sent.
pub fn of_wire(real: &[u8], placeholder: &[u8]) -> Vec<Core> {
    let mut out = vec![core(real.to_vec(), placeholder.to_vec())];
    out.extend(base64_whole(real, placeholder));
    out.extend(base64_aligned(real, placeholder));
    dedup(out)
}

/// Longest real encodings first (the matcher prefers earlier patterns at
/// the same position), duplicates and empty ones removed.
pub fn dedup(mut cores: Vec<Core>) -> Vec<Core> {
    cores.retain(|c| !c.real.is_empty());
    cores.sort_by_key(|c| std::cmp::Reverse(c.real.len()));
    let mut seen: Vec<Vec<u8>> = Vec::with_capacity(cores.len());
    cores.retain(|c| {
        if seen.contains(&c.real) {
            false
        } else {
            seen.push(c.real.clone());
            true
        }
    });
    cores
}

fn core(real: Vec<u8>, placeholder: Vec<u8>) -> Core {
    Core { real, placeholder }
}

pub fn hex(bytes: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    bytes
        .iter()
        .flat_map(|b| [digits[usize::from(b >> 4)], digits[usize::from(b & 15)]])
        .collect()
}

/// The whole value in both alphabets, padded and not.
fn base64_whole(real: &[u8], placeholder: &[u8]) -> Vec<Core> {
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .map(|e| {
            core(
                e.encode(real).into_bytes(),
                e.encode(placeholder).into_bytes(),
            )
        })
        .collect()
}

/// Inside a larger base64 blob a value starts at one of three offsets
/// within a 3-byte group. For each, the run of base64 characters that
/// depend on the value alone: the full groups, plus the characters of the
/// partial groups at either end that hold only the value's bits.
fn base64_aligned(real: &[u8], placeholder: &[u8]) -> Vec<Core> {
    let mut out = Vec::new();
    for lead in 0..3 {
        for url in [false, true] {
            let r = aligned_run(real, lead, url);
            let p = aligned_run(placeholder, lead, url);
            if !r.is_empty() {
                out.push(core(r, p));
            }
        }
    }
    out
}

/// The value-only base64 characters when the value's first byte is at
/// position `lead` (0, 1 or 2) of its 3-byte group.
fn aligned_run(v: &[u8], lead: usize, url: bool) -> Vec<u8> {
    let e = if url {
        URL_SAFE_NO_PAD
    } else {
        STANDARD_NO_PAD
    };
    let enc = |group: [u8; 3]| e.encode(group).into_bytes();
    let mut out = Vec::new();
    // The value's bytes in the first, shared group.
    let head = (3 - lead) % 3;
    if v.len() < head {
        return out;
    }
    match lead {
        1 => out.extend_from_slice(&enc([0, v[0], v[1]])[2..4]),
        2 => out.extend_from_slice(&enc([0, 0, v[0]])[3..4]),
        _ => {}
    }
    let body = &v[head..];
    let full = body.len() / 3 * 3;
    out.extend(e.encode(&body[..full]).into_bytes());
    match &body[full..] {
        [a] => out.extend_from_slice(&enc([*a, 0, 0])[..1]),
        [a, b] => out.extend_from_slice(&enc([*a, *b, 0])[..2]),
        _ => {}
    }
    out
}

// ---------------------------------------------------------------------------
// Per-byte forms.
// ---------------------------------------------------------------------------

/// Most backslashes before an escape (JSON inside JSON inside JSON: 7).
pub const MAX_BACKSLASHES: usize = 8;
/// Longest form of one byte: 8 backslashes + `u00XX`; `&#x00000002F;`.
pub const MAX_FORM: usize = 16;
const MAX_DIGITS: usize = 10;

/// How one byte of a core was written in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Literal,
    /// `+` for a space (form encoding).
    Plus,
    /// `%XX`, or `%25XX` (`depth` 1) and `%2525XX` (2) when encoded again.
    Percent {
        depth: u8,
        upper: bool,
    },
    /// `\u00XX` behind `n` backslashes.
    JsonU {
        n: u8,
        upper: bool,
    },
    /// `\xXX` behind `n` backslashes.
    JsHex {
        n: u8,
        upper: bool,
    },
    /// The byte itself behind `n` backslashes (`\/`, `\"`, `\'`), or a
    /// backslash written as `n` backslashes.
    Short {
        n: u8,
    },
    /// `&#DD;`
    HtmlDec {
        semi: bool,
    },
    /// `&#xXX;`
    HtmlHex {
        x_upper: bool,
        upper: bool,
        semi: bool,
    },
    /// `&amp;` and the like.
    HtmlNamed,
}

/// One way input can be read as one byte: which byte, how many input
/// bytes, written in what style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub byte: u8,
    pub len: u8,
    pub style: Style,
}

/// Every way the input at one position reads as one byte, longest first.
#[derive(Debug, Clone, Copy)]
pub struct Readings {
    items: [Reading; 8],
    len: u8,
    /// More input could add another reading here.
    pub partial: bool,
}

impl Default for Readings {
    fn default() -> Self {
        Self {
            items: [Reading {
                byte: 0,
                len: 0,
                style: Style::Literal,
            }; 8],
            len: 0,
            partial: false,
        }
    }
}

impl Readings {
    fn push(&mut self, byte: u8, len: usize, style: Style) {
        let (Some(slot), Ok(len)) = (self.items.get_mut(usize::from(self.len)), u8::try_from(len))
        else {
            return;
        };
        *slot = Reading { byte, len, style };
        self.len += 1;
    }

    /// A single literal reading of `byte`.
    pub fn literal(byte: u8) -> Self {
        let mut r = Self::default();
        r.push(byte, 1, Style::Literal);
        r
    }

    pub fn as_slice(&self) -> &[Reading] {
        &self.items[..usize::from(self.len)]
    }

    /// Only the readings of byte `c`.
    pub fn of(&self, c: u8) -> Self {
        let mut out = Self {
            partial: self.partial,
            ..Self::default()
        };
        for r in self.as_slice().iter().filter(|r| r.byte == c) {
            out.push(r.byte, usize::from(r.len), r.style);
        }
        out
    }

    pub fn get(&self, i: usize) -> Option<Reading> {
        self.as_slice().get(i).copied()
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Named HTML references enforcer recognises.
const NAMED: &[(&[u8], u8)] = &[
    (b"&amp;", b'&'),
    (b"&lt;", b'<'),
    (b"&gt;", b'>'),
    (b"&quot;", b'"'),
    (b"&apos;", b'\''),
    (b"&sol;", b'/'),
    (b"&plus;", b'+'),
    (b"&equals;", b'='),
];

/// Bytes that open a reading other than the byte itself.
pub const OPENERS: [u8; 4] = [b'%', b'\\', b'&', b'+'];

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Two hex digits at the start of `rest`: Some(Ok(byte, upper)), or
/// Some(Err(())) when `rest` ends inside them (they may follow), None
/// when they are not hex.
fn hex_pair(rest: &[u8]) -> Option<Result<(u8, bool), ()>> {
    match rest {
        [a, b, ..] => {
            let v = hex_digit(*a)? << 4 | hex_digit(*b)?;
            Some(Ok((v, upper_in(&[*a, *b]))))
        }
        [a] => hex_digit(*a).map(|_| Err(())),
        [] => Some(Err(())),
    }
}

/// The case of the hex letters in `digits` (upper when there are none).
fn upper_in(digits: &[u8]) -> bool {
    digits
        .iter()
        .find(|b| b.is_ascii_alphabetic())
        .is_none_or(u8::is_ascii_uppercase)
}

pub fn hex2(c: u8) -> [u8; 2] {
    let d = b"0123456789ABCDEF";
    [d[usize::from(c >> 4)], d[usize::from(c & 15)]]
}

/// Every way `rest` starts with one (possibly escaped) byte. `at_end`:
/// nothing follows `rest`; otherwise a reading `rest` could still grow
/// into sets `partial`.
pub fn read_at(rest: &[u8], at_end: bool, out: &mut Readings) {
    *out = Readings::default();
    let Some(&first) = rest.first() else {
        out.partial = !at_end;
        return;
    };
    let rest = &rest[..rest.len().min(MAX_FORM)];
    // Past MAX_FORM bytes every reading is decided.
    let at_end = at_end || rest.len() == MAX_FORM;
    match first {
        b'%' => percent(rest, at_end, out),
        b'\\' => backslash(rest, at_end, out),
        b'&' => html(rest, at_end, out),
        b'+' => out.push(b' ', 1, Style::Plus),
        _ => {}
    }
    out.push(first, 1, Style::Literal);
    let n = out.len();
    out.items[..n].sort_by_key(|r| std::cmp::Reverse(r.len));
}

/// `%XX`, `%25XX`, `%2525XX`.
fn percent(rest: &[u8], at_end: bool, out: &mut Readings) {
    for depth in 0..=2u8 {
        let digits = 1 + 2 * usize::from(depth);
        let tens = &rest[1..rest.len().min(digits)];
        if !b"2525"[..tens.len()].eq(tens) {
            return;
        }
        if rest.len() < digits {
            out.partial |= !at_end;
            return;
        }
        match hex_pair(&rest[digits..]) {
            Some(Ok((byte, upper))) => out.push(byte, digits + 2, Style::Percent { depth, upper }),
            Some(Err(())) => out.partial |= !at_end,
            None => {}
        }
    }
}

/// `\u00XX`, `\xXX`, `\/`, `\"`, `\'` behind 1..=8 backslashes, and a
/// backslash written as 2 or 4 of them.
fn backslash(rest: &[u8], at_end: bool, out: &mut Readings) {
    let n = rest.iter().take_while(|&&b| b == b'\\').count();
    for k in [2, 4] {
        if n >= k {
            out.push(b'\\', k, Style::Short { n: k as u8 });
        }
    }
    if n > MAX_BACKSLASHES {
        return;
    }
    let nn = n as u8;
    let after = &rest[n..];
    match after.first() {
        None => out.partial |= !at_end,
        Some(b'u' | b'U') => {
            let zeros = &after[1..after.len().min(3)];
            if !b"00"[..zeros.len()].eq(zeros) {
                return;
            }
            if after.len() < 3 {
                out.partial |= !at_end;
                return;
            }
            match hex_pair(&after[3..]) {
                Some(Ok((byte, upper))) if byte < 0x80 => {
                    out.push(byte, n + 5, Style::JsonU { n: nn, upper });
                }
                Some(Err(())) => out.partial |= !at_end,
                _ => {}
            }
        }
        Some(b'x' | b'X') => match hex_pair(&after[1..]) {
            Some(Ok((byte, upper))) => out.push(byte, n + 3, Style::JsHex { n: nn, upper }),
            Some(Err(())) => out.partial |= !at_end,
            None => {}
        },
        Some(&c @ (b'/' | b'"' | b'\'')) => out.push(c, n + 1, Style::Short { n: nn }),
        Some(_) => {}
    }
}

/// `&#DD;`, `&#xXX;` (the `;` optional) and a few named references.
fn html(rest: &[u8], at_end: bool, out: &mut Readings) {
    for (name, byte) in NAMED {
        let n = rest.len().min(name.len());
        if rest[..n].eq_ignore_ascii_case(&name[..n]) {
            if n == name.len() {
                out.push(*byte, n, Style::HtmlNamed);
            } else {
                out.partial |= !at_end;
            }
        }
    }
    match rest.get(1) {
        None => {
            out.partial |= !at_end;
            return;
        }
        Some(b'#') => {}
        Some(_) => return,
    }
    let (hexa, x_upper, start) = match rest.get(2) {
        None => {
            out.partial |= !at_end;
            return;
        }
        Some(b'x') => (true, false, 3),
        Some(b'X') => (true, true, 3),
        Some(_) => (false, false, 2),
    };
    let digits = &rest[start.min(rest.len())..];
    let count = digits
        .iter()
        .take_while(|b| {
            if hexa {
                b.is_ascii_hexdigit()
            } else {
                b.is_ascii_digit()
            }
        })
        .count();
    if count > MAX_DIGITS {
        return;
    }
    if start + count >= rest.len() && !at_end {
        // The number, or its `;`, may go on in the next chunk.
        out.partial = true;
        return;
    }
    if count == 0 {
        return;
    }
    let radix = if hexa { 16 } else { 10 };
    let value = digits[..count].iter().try_fold(0u32, |acc, d| {
        let v = char::from(*d).to_digit(radix)?;
        acc.checked_mul(radix)?.checked_add(v)
    });
    let Some(byte) = value
        .and_then(|v| u8::try_from(v).ok())
        .filter(|b| *b < 0x80)
    else {
        return;
    };
    let semi = rest.get(start + count) == Some(&b';');
    let len = start + count + usize::from(semi);
    let style = if hexa {
        Style::HtmlHex {
            x_upper,
            upper: upper_in(&digits[..count]),
            semi,
        }
    } else {
        Style::HtmlDec { semi }
    };
    out.push(byte, len, style);
}

impl Style {
    /// The hex case of an escape (None: not a hex escape).
    pub fn hex_upper(self) -> Option<bool> {
        match self {
            Self::Percent { upper, .. }
            | Self::JsonU { upper, .. }
            | Self::JsHex { upper, .. }
            | Self::HtmlHex { upper, .. } => Some(upper),
            _ => None,
        }
    }

    /// The same escape with hex digits in this case.
    pub fn with_hex_case(self, upper: bool) -> Self {
        match self {
            Self::Percent { depth, .. } => Self::Percent { depth, upper },
            Self::JsonU { n, .. } => Self::JsonU { n, upper },
            Self::JsHex { n, .. } => Self::JsHex { n, upper },
            Self::HtmlHex { x_upper, semi, .. } => Self::HtmlHex {
                x_upper,
                upper,
                semi,
            },
            other => other,
        }
    }

    /// Writes placeholder byte `p` the way the real byte was written.
    /// `escapes_all`: the encoder escaped letters or digits of the match too;
    /// otherwise it escapes only symbols, and a letter or digit is plain.
    pub fn write(self, escapes_all: bool, p: u8, out: &mut Vec<u8>) {
        if !escapes_all && p.is_ascii_alphanumeric() {
            out.push(p);
            return;
        }
        let hex = |upper: bool| {
            let h = hex2(p);
            if upper {
                h
            } else {
                [h[0].to_ascii_lowercase(), h[1].to_ascii_lowercase()]
            }
        };
        let backslashes = |n: u8, out: &mut Vec<u8>| {
            out.extend(std::iter::repeat_n(b'\\', usize::from(n)));
        };
        match self {
            Self::Literal => out.push(p),
            Self::Plus => match p {
                b' ' => out.push(b'+'),
                b'+' | b'%' | b'&' | b'=' => {
                    out.push(b'%');
                    out.extend_from_slice(&hex(true));
                }
                _ => out.push(p),
            },
            Self::Percent { depth, upper } => {
                out.push(b'%');
                for _ in 0..depth {
                    out.extend_from_slice(b"25");
                }
                out.extend_from_slice(&hex(upper));
            }
            Self::JsonU { n, upper } => {
                backslashes(n, out);
                out.extend_from_slice(b"u00");
                out.extend_from_slice(&hex(upper));
            }
            Self::JsHex { n, upper } => {
                backslashes(n, out);
                out.push(b'x');
                out.extend_from_slice(&hex(upper));
            }
            Self::Short { n } => match p {
                b'/' | b'"' | b'\'' => {
                    backslashes(n, out);
                    out.push(p);
                }
                b'\\' => backslashes(n.max(2), out),
                _ => out.push(p),
            },
            Self::HtmlDec { semi } => {
                out.extend_from_slice(format!("&#{p}").as_bytes());
                if semi {
                    out.push(b';');
                }
            }
            Self::HtmlHex {
                x_upper,
                upper,
                semi,
            } => {
                out.extend_from_slice(if x_upper { b"&#X" } else { b"&#x" });
                out.extend_from_slice(&hex(upper));
                if semi {
                    out.push(b';');
                }
            }
            Self::HtmlNamed => {
                if matches!(p, b'&' | b'<' | b'>' | b'"' | b'\'') {
                    out.extend_from_slice(format!("&#{p};").as_bytes());
                } else {
                    out.push(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(c: u8, rest: &[u8], at_end: bool) -> (Vec<Reading>, bool) {
        let mut r = Readings::default();
        read_at(rest, at_end, &mut r);
        let f = r.of(c);
        (f.as_slice().to_vec(), f.partial)
    }

    fn lens(c: u8, rest: &[u8]) -> Vec<usize> {
        forms(c, rest, true)
            .0
            .iter()
            .map(|f| usize::from(f.len))
            .collect()
    }

    #[test]
    fn every_escape_of_a_byte_is_recognised() {
        for (c, text, len) in [
            (b'/', &b"/"[..], 1),
            (b'/', b"%2F", 3),
            (b'/', b"%2f", 3),
            (b'/', b"%252F", 5),
            (b'/', b"%25252f", 7),
            (b'/', b"\\/", 2),
            (b'/', b"\\\\\\/", 4),
            (b'/', b"\\u002F", 6),
            (b'/', b"\\u002f", 6),
            (b'/', b"\\\\u002f", 7),
            (b'/', b"\\x2f", 4),
            (b'/', b"&#47;", 5),
            (b'/', b"&#047", 5),
            (b'/', b"&#x2F;", 6),
            (b'/', b"&#X2f;", 6),
            (b'/', b"&sol;", 5),
            (b'+', b"\\u002B", 6),
            (b'+', b"&plus;", 6),
            (b'=', b"\\u003d", 6),
            (b'=', b"\\u003D", 6),
            (b'&', b"\\u0026", 6),
            (b'&', b"&amp;", 5),
            (b'<', b"\\u003c", 6),
            (b' ', b"+", 1),
            (b' ', b"%20", 3),
            (b'a', b"%61", 3),
            (b'a', b"\\u0061", 6),
            (b'"', b"\\\"", 2),
            (b'\\', b"\\\\", 2),
        ] {
            assert!(
                lens(c, text).contains(&len),
                "{:?} as {:?}: {:?}",
                char::from(c),
                String::from_utf8_lossy(text),
                forms(c, text, true)
            );
        }
    }

    #[test]
    fn other_bytes_and_broken_escapes_are_not_forms() {
        for (c, text) in [
            (b'/', &b"%2E"[..]),
            (b'/', b"%2"),
            (b'/', b"\\u002"),
            (b'/', b"\\\\\\\\\\\\\\\\\\/"),
            (b'/', b"&#48;"),
            (b'/', b"&#;"),
            (b'/', b"&#0000000000047;"),
            (b'a', b"A"),
            (b'a', b"+"),
        ] {
            assert!(
                lens(c, text).is_empty(),
                "{:?} {:?}",
                char::from(c),
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn a_form_cut_by_the_end_of_a_chunk_is_partial() {
        for text in [
            &b""[..],
            b"%",
            b"%2",
            b"%25",
            b"\\",
            b"\\\\",
            b"\\u0",
            b"&",
            b"&#",
            b"&#4",
            b"&#47",
            b"&s",
        ] {
            let (_, partial) = forms(b'/', text, false);
            assert!(partial, "{:?}", String::from_utf8_lossy(text));
            let (_, partial) = forms(b'/', text, true);
            assert!(!partial);
        }
        let (_, partial) = forms(b'/', b"%2F", false);
        assert!(!partial);
    }

    #[test]
    fn placeholders_are_written_in_the_style_found() {
        let write = |style: Style, real: u8, p: u8| {
            let mut v = Vec::new();
            style.write(real.is_ascii_alphanumeric(), p, &mut v);
            String::from_utf8(v).unwrap()
        };
        let (f, _) = forms(b'/', b"%2f", true);
        assert_eq!(write(f[0].style, b'/', b'+'), "%2b");
        // An escaped symbol: a letter is written plain; an escaped letter: escaped.
        assert_eq!(write(f[0].style, b'/', b'a'), "a");
        let (f, _) = forms(b'k', b"%6b", true);
        assert_eq!(write(f[0].style, b'k', b'a'), "%61");
        let (f, _) = forms(b'/', b"\\\\u002F", true);
        assert_eq!(write(f[0].style, b'/', b'='), "\\\\u003D");
        let (f, _) = forms(b'/', b"\\/", true);
        assert_eq!(write(f[0].style, b'/', b'/'), "\\/");
        assert_eq!(write(f[0].style, b'/', b'q'), "q");
        let (f, _) = forms(b'/', b"&#x2f;", true);
        assert_eq!(write(f[0].style, b'/', b'='), "&#x3d;");
        let (f, _) = forms(b'b', b"&#98", true);
        assert_eq!(write(f[0].style, b'b', b'a'), "&#97");
        assert_eq!(write(Style::Plus, b' ', b'+'), "%2B");
    }

    #[test]
    fn cores_cover_hex_and_base64_whole() {
        let cores = of_value(b"sk_test_abc/+=", b"sk_test_xyz0000");
        let has = |s: &[u8]| cores.iter().any(|c| c.real == s);
        assert!(has(b"sk_test_abc/+="));
        assert!(has(b"736b5f746573745f6162632f2b3d"));
        assert!(has(b"736B5F746573745F6162632F2B3D"));
        assert!(has(STANDARD.encode("sk_test_abc/+=").as_bytes()));
        assert!(has(URL_SAFE_NO_PAD.encode("sk_test_abc/+=").as_bytes()));
        // Longest first.
        assert!(cores.windows(2).all(|w| w[0].real.len() >= w[1].real.len()));
    }

    #[test]
    fn an_aligned_run_is_inside_every_blob_that_holds_the_value() {
        let real = b"sk_live_0123456789abcdefghij";
        let cores = of_value(real, b"sk_live_zzzzzzzzzzzzzzzzzzzz");
        for prefix in ["", "a", "ab", "abc", "Basic: user:"] {
            for suffix in ["", "x", "xy", "xyz"] {
                let blob = [prefix.as_bytes(), real, suffix.as_bytes()].concat();
                for e in [STANDARD, URL_SAFE_NO_PAD] {
                    let text = e.encode(&blob);
                    assert!(
                        cores
                            .iter()
                            .any(|c| memchr::memmem::find(text.as_bytes(), &c.real).is_some()
                                && c.real.len() * 3 / 4 >= real.len() - 2),
                        "{prefix:?}+{suffix:?}: {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn aligned_runs_of_equal_length_values_keep_base64_aligned() {
        // Replacing the run keeps the blob decodable to prefix+placeholder+suffix.
        let real = b"0123456789abcdefghijklmnopqrstuv";
        let placeholder = b"zyxwvutsrqponmlkjihgfedcba987654";
        for prefix in ["", "a", "ab"] {
            let blob = [prefix.as_bytes(), real, b"!"].concat();
            let text = STANDARD.encode(&blob);
            let c = of_value(real, placeholder)
                .into_iter()
                .filter(|c| c.real.len() > 30)
                .find(|c| memchr::memmem::find(text.as_bytes(), &c.real).is_some())
                .expect("a run");
            let replaced = text.replace(
                std::str::from_utf8(&c.real).unwrap(),
                std::str::from_utf8(&c.placeholder).unwrap(),
            );
            let decoded = STANDARD.decode(replaced).unwrap();
            let kept = memchr::memmem::find(&decoded, &placeholder[1..placeholder.len() - 1]);
            assert!(kept.is_some(), "{prefix:?}");
            assert!(memchr::memmem::find(&decoded, &real[1..real.len() - 1]).is_none());
        }
    }
}
