//! What can go wrong with the audit database, each error saying what is wrong
//! and what the user can do about it, and how SQLite and I/O failures map to them.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Pointers every open/write failure ends with.
const WAY_OUT: &str =
    "pass `--audit-db PATH` to use another database, or `--no-audit` to run without an audit log";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuditError {
    #[error(
        "the audit database {} is locked by another process ({detail}): another enforcer or a sqlite3 shell is holding a write transaction open. Close it and retry, or {WAY_OUT}",
        path.display()
    )]
    Locked { path: PathBuf, detail: String },

    #[error(
        "the audit database {} is corrupt or is not an SQLite database ({detail}). Move it aside (keep it for investigation; `sqlite3 FILE 'PRAGMA integrity_check'` shows the damage) so that a new one is created, or {WAY_OUT}",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "the audit database {} cannot be written: {detail}. Fix the permissions or the mount, or {WAY_OUT}",
        path.display()
    )]
    ReadOnly { path: PathBuf, detail: String },

    #[error(
        "the audit database {} cannot be written: the disk is full ({detail}). Free space on that filesystem (`enforcer audit prune --older-than 30d` deletes old rows), or {WAY_OUT}",
        path.display()
    )]
    DiskFull { path: PathBuf, detail: String },

    #[error(
        "the audit database {} was written by a newer enforcer (schema version {found}; this enforcer knows up to {known}). Upgrade enforcer, or {WAY_OUT}",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },

    #[error(
        "{} is an SQLite database but not an enforcer audit log ({detail}); it was left untouched. Name the right file with `--audit-db PATH` (or `--no-audit` to run without an audit log)",
        path.display()
    )]
    NotAuditDb { path: PathBuf, detail: String },

    #[error(
        "there is no audit database at {}: nothing has been recorded there yet. Name the right file with `--audit-db PATH`",
        path.display()
    )]
    NotFound { path: PathBuf },

    #[error("cannot open the audit database {}: {detail}. Check the path, or {WAY_OUT}", path.display())]
    Open { path: PathBuf, detail: String },

    #[error("the audit database {} failed: {detail}. Check it, or {WAY_OUT}", path.display())]
    Sqlite { path: PathBuf, detail: String },

    #[error(
        "the audit writer has stopped, so no further decisions can be recorded; the run must not continue unaudited"
    )]
    WriterStopped,

    #[error("the audit database has no run {0:?}")]
    UnknownRun(String),

    #[error("the audit database already has a run {0:?}")]
    DuplicateRun(String),

    #[error("invalid age {input:?}: {why}")]
    InvalidAge { input: String, why: String },

    #[error("unknown output format {0:?} (expected table, jsonl or csv)")]
    InvalidFormat(String),
}

impl AuditError {
    /// Maps an SQLite failure on `path` to the error the user can act on.
    pub(crate) fn sqlite(path: &Path, e: &rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let path = path.to_path_buf();
        let detail = e.to_string();
        match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => Self::Locked { path, detail },
            Some(C::DatabaseCorrupt | C::NotADatabase) => Self::Corrupt { path, detail },
            Some(C::ReadOnly | C::PermissionDenied) => Self::ReadOnly { path, detail },
            Some(C::DiskFull) => Self::DiskFull { path, detail },
            Some(C::CannotOpen) => Self::Open { path, detail },
            _ => Self::Sqlite { path, detail },
        }
    }

    /// Maps an I/O failure while doing `what` on `path`.
    pub(crate) fn io(path: &Path, what: &str, e: &io::Error) -> Self {
        let path = path.to_path_buf();
        let detail = format!("{what}: {e}");
        match e.raw_os_error() {
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => Self::ReadOnly { path, detail },
            Some(libc::ENOSPC | libc::EDQUOT) => Self::DiskFull { path, detail },
            _ => Self::Open { path, detail },
        }
    }

    /// True for the errors an open or write can end with because of the
    /// file system rather than the database's content.
    fn is_access_problem(&self) -> bool {
        matches!(
            self,
            Self::ReadOnly { .. } | Self::Open { .. } | Self::Sqlite { .. }
        )
    }
}

/// After SQLite refused to open or write `path`, finds out which of the
/// file system, the file, its `-wal`/`-shm` companions or the directory is
/// not writable, and says so. Returns `e` itself when nothing better is found.
pub(crate) fn diagnose(path: &Path, e: AuditError) -> AuditError {
    if !e.is_access_problem() {
        return e;
    }
    find_access_problem(path).unwrap_or(e)
}

fn find_access_problem(path: &Path) -> Option<AuditError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Some(AuditError::Open {
            path: path.to_path_buf(),
            detail: String::from(
                "it is a symbolic link, and the audit database is only opened by its real path",
            ),
        });
    }
    let err = |detail: String| {
        Some(AuditError::ReadOnly {
            path: path.to_path_buf(),
            detail,
        })
    };
    if let Ok(st) = nix::sys::statvfs::statvfs(&dir)
        && st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
    {
        return err(format!(
            "the file system holding {} is mounted read-only",
            dir.display()
        ));
    }
    let meta = fs::metadata(path).ok()?;
    if meta.is_dir() {
        return Some(AuditError::Open {
            path: path.to_path_buf(),
            detail: String::from("it is a directory, not a database file"),
        });
    }
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            files.push(p);
        }
    }
    for f in &files {
        if let Err(e) = fs::OpenOptions::new().write(true).open(f) {
            if e.raw_os_error() == Some(libc::EROFS) {
                return err(format!(
                    "the file system holding {} is read-only",
                    f.display()
                ));
            }
            if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                let m = fs::metadata(f).ok();
                return err(format!(
                    "{} is not writable by this process (uid {}; the file has mode {:o}, owner uid {})",
                    f.display(),
                    nix::unistd::geteuid(),
                    m.as_ref().map_or(0, |m| m.mode() & 0o7777),
                    m.as_ref().map_or(0, |m| m.uid()),
                ));
            }
        }
    }
    // SQLite creates `-wal` and `-shm` next to the database: the directory
    // must be writable too. Probe it the way SQLite would.
    let name = path.file_name()?.to_string_lossy().into_owned();
    let probe = dir.join(format!(".{name}.probe-{}", std::process::id()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            None
        }
        Err(e) => match e.raw_os_error() {
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => err(format!(
                "the directory {} is not writable ({e}); SQLite must create {name}-wal and {name}-shm next to the database",
                dir.display()
            )),
            Some(libc::ENOSPC | libc::EDQUOT) => Some(AuditError::DiskFull {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_open_failure_names_the_way_out() {
        let p = PathBuf::from("/x/audit.db");
        let d = String::from("d");
        for e in [
            AuditError::Locked {
                path: p.clone(),
                detail: d.clone(),
            },
            AuditError::Corrupt {
                path: p.clone(),
                detail: d.clone(),
            },
            AuditError::ReadOnly {
                path: p.clone(),
                detail: d.clone(),
            },
            AuditError::DiskFull {
                path: p.clone(),
                detail: d.clone(),
            },
            AuditError::Open {
                path: p.clone(),
                detail: d.clone(),
            },
            AuditError::TooNew {
                path: p.clone(),
                found: 9,
                known: 1,
            },
            AuditError::NotAuditDb {
                path: p.clone(),
                detail: d.clone(),
            },
        ] {
            let s = e.to_string();
            assert!(s.contains("/x/audit.db"), "{s}");
            assert!(s.contains("--audit-db PATH"), "{s}");
            assert!(s.contains("--no-audit"), "{s}");
        }
    }
}
