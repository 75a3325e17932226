//! Placeholders: worthless strings that look like the real key where SDKs
//! check its shape (the vendor's visible prefix, the same length), unique to
//! the run, lower-case alphanumeric so they can be found in DNS names too.

use rand::Rng as _;

/// Random characters in every placeholder, at least (about 124 bits).
const MIN_RANDOM: usize = 24;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Longest first and second word of a vendor prefix (`whsec_`, `glpat-`;
/// `sk_live_`, `sk-proj-`, `sk-ant-`).
const MAX_PREFIX_WORDS: [usize; 2] = [5, 4];

/// The vendor prefix of a key: at most two short leading `word_`/`word-`
/// groups of letters (`sk_live_`, `ghp_`, `xoxb-`, `sk-proj-`, `whsec_`).
/// Kept short on purpose: the placeholder repeats it, so it must be the
/// vendor's label and never a piece of a secret (a passphrase such as
/// `my_super_secret_...` gives `my_` at most).
pub fn detect_prefix(real: &str) -> &str {
    let bytes = real.as_bytes();
    let mut end = 0;
    let mut i = 0;
    for max in MAX_PREFIX_WORDS {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let word = i - start;
        if word == 0 || word > max || i >= bytes.len() || !matches!(bytes[i], b'_' | b'-') {
            break;
        }
        i += 1;
        end = i;
    }
    &real[..end]
}

/// A placeholder for `real`: `prefix` (or the detected one) followed by
/// random characters, as long as `real` when that leaves enough randomness.
pub fn generate(real: &str, prefix: Option<&str>) -> String {
    let prefix = prefix.unwrap_or_else(|| detect_prefix(real));
    let random = real.len().saturating_sub(prefix.len()).max(MIN_RANDOM);
    let mut rng = rand::rng();
    let mut out = String::with_capacity(prefix.len() + random);
    out.push_str(prefix);
    for _ in 0..random {
        out.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_prefixes_are_kept() {
        assert_eq!(detect_prefix("sk_live_51HqA9xYz"), "sk_live_");
        assert_eq!(detect_prefix("ghp_AbCdEf0123"), "ghp_");
        assert_eq!(detect_prefix("xoxb-1234-5678"), "xoxb-");
        assert_eq!(detect_prefix("0123456789abcdef"), "");
        assert_eq!(detect_prefix("plainkey"), "");
        assert_eq!(detect_prefix("sk-proj-Abc123"), "sk-proj-");
        assert_eq!(detect_prefix("whsec_abc"), "whsec_");
        // Never a piece of a passphrase or of a long word.
        assert_eq!(detect_prefix("my_super_secret_password_is_hunter2"), "my_");
        assert_eq!(detect_prefix("qk_SECRET_QQ11"), "qk_");
        assert_eq!(detect_prefix("hunter_two"), "");
    }

    #[test]
    fn placeholders_keep_shape_and_differ_every_time() {
        let real = "sk_live_51HqA9xYzAbCdEfGhIjKlMnOpQrStUvWx";
        let a = generate(real, None);
        let b = generate(real, None);
        assert_ne!(a, b);
        assert!(a.starts_with("sk_live_"));
        assert_eq!(a.len(), real.len());
        assert!(!a.contains(&real[8..]));
        let short = generate("abc", Some("tok_"));
        assert!(
            short.starts_with("tok_") && short.len() == 4 + 24,
            "{short}"
        );
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        );
    }
}
