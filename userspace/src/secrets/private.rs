//! A secret file the agent could read, or replace, would hand it the real
//! key (or let it choose what enforcer sends as one): such files are
//! refused before the agent starts. Checked against the agent's uid and
//! groups: the file must not be readable by them, and neither it nor any
//! directory above it may be owned by the agent's user or be writable by
//! everyone (without the sticky bit).

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use super::SecretError;
use crate::policy::{Policy, SecretSource};

/// The agent's identity, as far as file permissions go.
pub struct Agent<'a> {
    pub uid: u32,
    pub gids: &'a [u32],
}

/// Checks every `file:` source of the policy against `agent`.
pub fn check_files(policy: &Policy, agent: &Agent<'_>) -> Result<(), SecretError> {
    for spec in &policy.secrets {
        match &spec.from {
            SecretSource::File(path) => check(&spec.name, path, agent)?,
            SecretSource::Credential(c) => {
                check(
                    &spec.name,
                    &super::source::credential_path(&spec.name, c)?,
                    agent,
                )?;
            }
            SecretSource::Env(_) => {}
        }
    }
    Ok(())
}

fn refuse(name: &str, path: &Path, why: String) -> SecretError {
    SecretError::Exposed {
        name: name.to_string(),
        path: path.display().to_string(),
        why,
    }
}

fn check(name: &str, path: &Path, agent: &Agent<'_>) -> Result<(), SecretError> {
    let io = |source| SecretError::File {
        name: name.to_string(),
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode();
    let readable = mode & 0o004 != 0
        || (meta.uid() == agent.uid && mode & 0o400 != 0)
        || (agent.gids.contains(&meta.gid()) && mode & 0o040 != 0);
    if readable {
        return Err(refuse(
            name,
            path,
            format!(
                "the agent's user can read it (mode {:04o}, owner {}, group {}); make it root-only: \
                 chown root:root and chmod 600",
                mode & 0o7777,
                meta.uid(),
                meta.gid()
            ),
        ));
    }
    // The file itself (not what a symlink points at) and every directory above.
    for p in path.ancestors().filter(|p| !p.as_os_str().is_empty()) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            continue;
        };
        let mode = m.permissions().mode();
        if m.uid() == agent.uid {
            return Err(refuse(
                name,
                path,
                format!(
                    "{} belongs to the agent's user, who could swap the file",
                    p.display()
                ),
            ));
        }
        if m.is_dir() && mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(refuse(
                name,
                path,
                format!(
                    "{} is writable by every user, who could swap the file",
                    p.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("enforcer-private-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn file(d: &Path, mode: u32) -> std::path::PathBuf {
        let p = d.join(format!("key-{mode:o}"));
        std::fs::write(&p, "k").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn readable_or_swappable_files_are_refused() {
        let me = nix::unistd::getuid().as_raw();
        let d = dir("modes");
        // Another uid than ours plays the agent.
        let agent = Agent {
            uid: me + 4242,
            gids: &[],
        };
        assert!(check("K", &file(&d, 0o600), &agent).is_ok());
        let e = check("K", &file(&d, 0o644), &agent).unwrap_err();
        assert!(e.to_string().contains("can read it"), "{e}");
        // The agent's own uid owns the file (and its directory).
        let owner = Agent { uid: me, gids: &[] };
        let e = check("K", &file(&d, 0o600), &owner).unwrap_err();
        assert!(e.to_string().contains("can read it"), "{e}");
        let e = check("K", &file(&d, 0o200), &owner).unwrap_err();
        assert!(e.to_string().contains("belongs to the agent's user"), "{e}");
        // A world-writable directory without the sticky bit.
        let open = dir("open");
        let p = file(&open, 0o600);
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check("K", &p, &agent).unwrap_err();
        assert!(e.to_string().contains("writable by every user"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&open).unwrap();
    }
}
