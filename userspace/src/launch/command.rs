//! Finding the program to run before anything touches the kernel, so a typo
//! is a clear error and not a half-built run.

use std::{
    ffi::OsStr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no command given (usage: enforcer launch --policy FILE -- CMD [ARGS...])")]
    Empty,
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("not an executable file: {0}")]
    NotExecutable(PathBuf),
}

/// Resolves `cmd` like a shell would: a path if it contains `/`, else the
/// first executable match in `path_var`.
pub fn resolve(cmd: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, CommandError> {
    let text = cmd.to_string_lossy();
    if text.is_empty() {
        return Err(CommandError::Empty);
    }
    if text.contains('/') {
        let p = PathBuf::from(cmd);
        return check(&p).map(|()| p);
    }
    let path_var = path_var.unwrap_or_else(|| OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(path_var) {
        let candidate = dir.join(cmd);
        if candidate.is_file() && check(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(CommandError::NotFound(text.into_owned()))
}

fn check(p: &Path) -> Result<(), CommandError> {
    let meta = std::fs::metadata(p).map_err(|_| CommandError::NotFound(p.display().to_string()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(CommandError::NotExecutable(p.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn finds_programs_on_path() {
        let p = resolve(
            OsStr::new("sh"),
            Some(OsStr::new("/nonexistent:/bin:/usr/bin")),
        )
        .unwrap();
        assert!(p.ends_with("sh"));
    }

    #[test]
    fn missing_programs_are_named() {
        let e = resolve(
            OsStr::new("definitely-not-a-command"),
            Some(OsStr::new("/bin")),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "command not found: definitely-not-a-command");
        assert!(matches!(
            resolve(OsStr::new(""), None),
            Err(CommandError::Empty)
        ));
    }

    #[test]
    fn directories_and_plain_files_are_not_executable() {
        assert!(matches!(
            resolve(OsStr::new("/tmp"), None),
            Err(CommandError::NotExecutable(_))
        ));
        let plain = std::env::temp_dir().join(format!("enforcer-plain-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = resolve(plain.as_os_str(), None);
        std::fs::remove_file(&plain).unwrap();
        assert!(matches!(r, Err(CommandError::NotExecutable(_))), "{r:?}");
    }
}
