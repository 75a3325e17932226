//! Reading a secret's real value: from the enforcer's environment
//! (`env:VAR`), a file (`file:/path`) or a systemd credential of enforcer's
//! service (`credential:NAME`), as root, before the agent exists.

use std::{ffi::OsString, path::PathBuf};

use zeroize::Zeroizing;

use super::{MAX_SECRET, SecretError};
use crate::policy::SecretSource;

/// The variable systemd sets to a service's credentials directory.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Where `credential:NAME` lives for this process:
/// `$CREDENTIALS_DIRECTORY/NAME`.
pub fn credential_path(name: &str, credential: &str) -> Result<PathBuf, SecretError> {
    credential_path_in(std::env::var_os(CREDENTIALS_DIRECTORY), name, credential)
}

fn credential_path_in(
    dir: Option<OsString>,
    name: &str,
    credential: &str,
) -> Result<PathBuf, SecretError> {
    let dir = dir
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .ok_or_else(|| SecretError::NoCredentialsDirectory {
            name: name.to_string(),
            credential: credential.to_string(),
        })?;
    Ok(dir.join(credential))
}

/// Reads and checks the value of secret `name`.
pub fn read(name: &str, from: &SecretSource) -> Result<Zeroizing<String>, SecretError> {
    read_in(name, from, std::env::var_os(CREDENTIALS_DIRECTORY))
}

/// [`read`], with the credentials directory given.
fn read_in(
    name: &str,
    from: &SecretSource,
    credentials: Option<OsString>,
) -> Result<Zeroizing<String>, SecretError> {
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
        SecretSource::Credential(credential) => {
            let path = credential_path_in(credentials, name, credential)?;
            Zeroizing::new(std::fs::read_to_string(&path).map_err(|source| {
                SecretError::Credential {
                    name: name.to_string(),
                    credential: credential.clone(),
                    path: path.display().to_string(),
                    source,
                }
            })?)
        }
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
    fn credentials_come_from_the_services_credentials_directory_only() {
        let dir = std::env::temp_dir().join(format!("enforcer-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stripe"), "sk_live_cred\n").unwrap();
        let from = SecretSource::Credential("stripe".into());
        let v = read_in("K", &from, Some(dir.clone().into_os_string())).unwrap();
        assert_eq!(v.as_str(), "sk_live_cred");
        let e = read_in("K", &from, None).unwrap_err();
        assert!(
            matches!(e, SecretError::NoCredentialsDirectory { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("LoadCredential=stripe:"), "{e}");
        // A relative directory is no credentials directory.
        let e = read_in("K", &from, Some("relative/dir".into())).unwrap_err();
        assert!(matches!(e, SecretError::NoCredentialsDirectory { .. }));
        let missing = SecretSource::Credential("openai".into());
        let e = read_in("K", &missing, Some(dir.clone().into_os_string())).unwrap_err();
        assert!(matches!(e, SecretError::Credential { .. }), "{e}");
        assert!(e.to_string().contains("LoadCredential=openai:"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
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
