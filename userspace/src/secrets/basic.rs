//! HTTP Basic credentials: the one reader of an `Authorization` value's
//! `Basic` scheme (case-insensitive, as RFC 9110 says schemes are), used by
//! injection and by leak detection alike so that they never disagree about
//! what a request carries, and the one writer of the wire form.

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};

/// Lenient decoding: padding or not, stray trailing bits tolerated, so that
/// detection sees whatever a server could decode.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// The base64 token of a `Basic` credential in `value` (any case of the
/// scheme, any blanks around), or None for another scheme.
pub fn token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let split = value.iter().position(|b| matches!(b, b' ' | b'\t'))?;
    let (scheme, rest) = value.split_at(split);
    scheme
        .eq_ignore_ascii_case(b"basic")
        .then(|| rest.trim_ascii())
}

/// The decoded `user:password` bytes of a `Basic` credential in `value`
/// (standard alphabet first, then URL-safe; padding optional).
pub fn decode(value: &[u8]) -> Option<Vec<u8>> {
    let token = token(value)?;
    STANDARD_LENIENT
        .decode(token)
        .or_else(|_| URL_SAFE_LENIENT.decode(token))
        .ok()
}

/// The base64 token of `user:password` as enforcer writes it.
pub fn encode_token(user: &[u8], password: &[u8]) -> String {
    let mut raw = Vec::with_capacity(user.len() + 1 + password.len());
    raw.extend_from_slice(user);
    raw.push(b':');
    raw.extend_from_slice(password);
    STANDARD.encode(raw)
}

/// The `Authorization` value for `user:password`.
pub fn header_value(user: &[u8], password: &[u8]) -> String {
    format!("Basic {}", encode_token(user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_and_blanks_are_allowed() {
        let t = STANDARD.encode("me:pw");
        for v in [
            format!("Basic {t}"),
            format!("basic {t}"),
            format!("BASIC {t}"),
            format!("bAsIc   {t}  "),
            format!("  Basic\t{t}"),
        ] {
            assert_eq!(decode(v.as_bytes()).as_deref(), Some(&b"me:pw"[..]), "{v}");
        }
        assert_eq!(decode(format!("Bearer {t}").as_bytes()), None);
        assert_eq!(decode(format!("Basically {t}").as_bytes()), None);
        assert_eq!(decode(b"Basic"), None);
        assert_eq!(decode(b""), None);
    }

    #[test]
    fn padding_and_alphabet_are_lenient() {
        // "me:p>?" encodes with '+' / '/' in standard, '-' / '_' in URL-safe.
        let raw = b"me:p>?~";
        let std = STANDARD.encode(raw);
        let unpadded = std.trim_end_matches('=');
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        for t in [std.as_str(), unpadded, url.as_str()] {
            assert_eq!(
                decode(format!("Basic {t}").as_bytes()).as_deref(),
                Some(&raw[..]),
                "{t}"
            );
        }
        assert_eq!(decode(b"Basic !!!"), None);
    }

    #[test]
    fn the_wire_form_round_trips() {
        let v = header_value(b"user", b"sk_live_abc");
        assert_eq!(v, format!("Basic {}", STANDARD.encode("user:sk_live_abc")));
        assert_eq!(
            decode(v.as_bytes()).as_deref(),
            Some(&b"user:sk_live_abc"[..])
        );
    }
}
