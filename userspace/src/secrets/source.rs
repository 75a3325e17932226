//! Reading a secret's real value: from the enforcer's environment
//! (`env:VAR`) or a file (`file:/path`), as root, before the agent exists.

use zeroize::Zeroizing;

use super::{MAX_SECRET, SecretError};
use crate::policy::SecretSource;

/// Reads and checks the value of secret `name`.
pub fn read(name: &str, from: &SecretSource) -> Result<Zeroizing<String>, SecretError> {
    let raw = match from {
        SecretSource::Env(var) => {
            Zeroizing::new(std::env::var(var).map_err(|_| SecretError::MissingEnv {
                name: name.to_string(),
                var: var.clone(),
            })?)
        }
        SecretSource::File(path) => Zeroizing::new(std::fs::read_to_string(path).map_err(
            |source| SecretError::File {
                name: name.to_string(),
                path: path.display().to_string(),
                source,
            },
        )?),
    };
    // A file ends with a newline more often than not; that is not part of the key.
    let trimmed = raw.trim_end_matches(['\n', '\r']);
    let from = from.to_string();
    if trimmed.is_empty() {
        return Err(SecretError::Empty {
            name: name.into(),
            from,
        });
    }
    if trimmed.len() > MAX_SECRET {
        return Err(SecretError::TooLong {
            name: name.into(),
            from,
            max: MAX_SECRET,
        });
    }
    if trimmed.chars().any(char::is_control) {
        return Err(SecretError::ControlCharacter {
            name: name.into(),
            from,
        });
    }
    Ok(Zeroizing::new(trimmed.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn file(content: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "enforcer-secret-{}-{}",
            std::process::id(),
            content.len()
        ));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn files_lose_their_trailing_newline() {
        let p = file("sk_live_abc123\n");
        let v = read("K", &SecretSource::File(p.clone())).unwrap();
        assert_eq!(v.as_str(), "sk_live_abc123");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_sources_are_clear_errors() {
        let e = read("K", &SecretSource::Env("ENFORCER_TEST_NOT_SET_XYZ".into())).unwrap_err();
        assert!(
            e.to_string()
                .contains("--preserve-env=ENFORCER_TEST_NOT_SET_XYZ"),
            "{e}"
        );
        let e = read("K", &SecretSource::File("/nonexistent/key".into())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/key"), "{e}");
        let p = file("a\nb\n\n\n");
        assert!(matches!(
            read("K", &SecretSource::File(p.clone())),
            Err(SecretError::ControlCharacter { .. })
        ));
        std::fs::remove_file(p).unwrap();
        let p = file("\n");
        assert!(matches!(
            read("K", &SecretSource::File(p.clone())),
            Err(SecretError::Empty { .. })
        ));
        std::fs::remove_file(p).unwrap();
    }
}
