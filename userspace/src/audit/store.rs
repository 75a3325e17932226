//! Opening the audit database: creating it with tight permissions, the
//! pragmas (WAL, synchronous, busy timeout), migrations, proving it can be
//! written, and the run rows written outside the writer thread.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rusqlite::{Connection, OpenFlags, params};

use super::{AuditError, AuditWriter, RunInfo, clock, error::diagnose, event::bounded, schema};

/// How long a write waits for another process's write transaction (another
/// enforcer on the same file) before failing as [`AuditError::Locked`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Tuning of [`AuditStore::open_with`]; the default is what `open` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    pub busy_timeout: Duration,
    /// `synchronous=FULL`: fsync the WAL at every commit, so committed rows
    /// also survive power loss (group commit makes this one fsync per batch).
    /// The default, `NORMAL`, survives the enforcer being killed but can lose
    /// the last commits on power loss.
    pub sync_full: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            busy_timeout: BUSY_TIMEOUT,
            sync_full: false,
        }
    }
}

/// An open audit database. Queries run on it directly; [`AuditStore::writer`]
/// hands it to the writer thread for the run's decisions.
#[derive(Debug)]
pub struct AuditStore {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
}

impl AuditStore {
    /// Opens (creating if missing: parent directories 0700, file 0600) the
    /// database for writing, in WAL mode, migrated to the current schema,
    /// and proves it can be written. Each way this can fail is its own
    /// [`AuditError`] variant, with a message saying what to do.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_with(path, &StoreOptions::default())
    }

    pub fn open_with(path: &Path, opts: &StoreOptions) -> Result<Self, AuditError> {
        // Some lock conflicts (two enforcers creating or switching a new
        // file to WAL at once) are reported at once rather than through the
        // busy handler: retry them until the busy timeout is used up.
        let deadline = std::time::Instant::now() + opts.busy_timeout;
        loop {
            match Self::open_once(path, opts) {
                Err(AuditError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path, opts: &StoreOptions) -> Result<Self, AuditError> {
        prepare_file(path)?;
        let fail = |e: rusqlite::Error| diagnose(path, AuditError::sqlite(path, &e));
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                // A symlink planted where the database should be must not
                // redirect root's writes.
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(fail)?;
        conn.busy_timeout(opts.busy_timeout).map_err(fail)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                path = %path.display(),
                %mode,
                "the audit database could not switch to WAL mode; writes will be slower"
            );
        }
        let sync = if opts.sync_full { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(fail)?;
        // Keep the WAL file from staying huge after a burst.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(fail)?;
        schema::migrate(&mut conn, path).map_err(|e| diagnose(path, e))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing database for queries (`enforcer audit`); never
    /// creates or migrates anything.
    pub fn open_read_only(path: &Path) -> Result<Self, AuditError> {
        match fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(AuditError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(AuditError::io(path, "cannot read it", &e)),
            Ok(m) if m.is_dir() => {
                return Err(AuditError::Open {
                    path: path.to_path_buf(),
                    detail: String::from("it is a directory, not a database file"),
                });
            }
            Ok(_) => {}
        }
        let fail = |e: rusqlite::Error| AuditError::sqlite(path, &e);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(fail)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(fail)?;
        let app_id: i64 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(fail)?;
        schema::check_identity(&conn, path, version, app_id)?;
        if version == 0 {
            return Err(AuditError::NotAuditDb {
                path: path.to_path_buf(),
                detail: String::from("it is empty"),
            });
        }
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the start of a run. A run id can be recorded once.
    pub fn start_run(&self, info: &RunInfo) -> Result<(), AuditError> {
        match insert_run(&self.conn, info) {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuditError::DuplicateRun(info.run_id.clone())),
            Err(e) => Err(AuditError::sqlite(&self.path, &e)),
        }
    }

    /// Marks a run revoked (by whom, when). `Ok(false)` when the run is
    /// not in this database.
    pub fn revoke_run(&self, run_id: &str, by: &str, at: SystemTime) -> Result<bool, AuditError> {
        self.conn
            .execute(
                "UPDATE runs SET revoked_at = ?2, revoked_by = ?3 WHERE id = ?1",
                params![run_id, clock::to_text(at), bounded(by.to_owned(), 256)],
            )
            .map(|n| n > 0)
            .map_err(|e| AuditError::sqlite(&self.path, &e))
    }

    /// Moves the connection to a dedicated writer thread (group commit).
    pub fn writer(self) -> AuditWriter {
        AuditWriter::spawn(self.conn, self.path)
    }
}

/// Creates the parent directories (0700) and the file (0600) if missing,
/// and warns when an existing database is readable by others.
fn prepare_file(path: &Path) -> Result<(), AuditError> {
    if path.as_os_str().is_empty() {
        return Err(AuditError::Open {
            path: path.to_path_buf(),
            detail: String::from("the path is empty"),
        });
    }
    if path.is_dir() {
        return Err(AuditError::Open {
            path: path.to_path_buf(),
            detail: String::from("it is a directory, not a database file"),
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                AuditError::io(
                    path,
                    &format!("cannot create the directory {}", dir.display()),
                    &e,
                )
            })?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if let Ok(m) = fs::metadata(path)
                && m.is_file()
                && m.mode() & 0o077 != 0
            {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", m.mode() & 0o777),
                    "the audit database is readable by other users; chmod 600 it"
                );
            }
            Ok(())
        }
        Err(e) => Err(AuditError::io(path, "cannot create the file", &e)),
    }
}

/// Inserts a run; `Ok(false)` when the id is already there.
pub(crate) fn insert_run(conn: &Connection, info: &RunInfo) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT INTO runs (id, name, policy_path, policy_sha256, invoking_user, uid,
                           command, cgroup, started_at, ttl_seconds, label, unit)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (id) DO NOTHING",
        params![
            bounded(info.run_id.clone(), 256),
            bounded(info.name.clone(), 256),
            bounded(info.policy_path.clone(), 4096),
            bounded(info.policy_sha256.clone(), 128),
            bounded(info.invoking_user.clone(), 256),
            i64::from(info.uid),
            bounded(info.command.clone(), 4096),
            bounded(info.cgroup.clone(), 4096),
            clock::to_text(info.started_at),
            info.ttl_seconds
                .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            info.label.clone().map(|l| bounded(l, 256)),
            info.unit.clone().map(|u| bounded(u, 256)),
        ],
    )?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::audit::testutil::{TempDir, as_unprivileged, run_info};

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn open_creates_directories_and_file_with_tight_modes() {
        let dir = TempDir::new("open");
        let path = dir.path().join("a/b/audit.db");
        let store = AuditStore::open(&path).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        assert_eq!(mode(&path), 0o600);
        let wal = dir.path().join("a/b/audit.db-wal");
        assert_eq!(mode(&wal), 0o600, "SQLite gives -wal the database's mode");
        let jm: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(jm, "wal");
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
    }

    #[test]
    fn opening_twice_keeps_the_data_and_the_schema() {
        let dir = TempDir::new("reopen");
        let path = dir.path().join("audit.db");
        AuditStore::open(&path)
            .unwrap()
            .start_run(&run_info("r1", "agent"))
            .unwrap();
        let store = AuditStore::open(&path).unwrap();
        let v: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema::SCHEMA_VERSION);
        let e = store.start_run(&run_info("r1", "agent")).unwrap_err();
        assert_eq!(e, AuditError::DuplicateRun(String::from("r1")));
        store.start_run(&run_info("r2", "agent")).unwrap();
        drop(store);
        let ro = AuditStore::open_read_only(&path).unwrap();
        let n: i64 = ro
            .conn
            .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn a_locked_database_is_a_clear_error_within_seconds() {
        let dir = TempDir::new("locked");
        let path = dir.path().join("audit.db");
        drop(AuditStore::open(&path).unwrap());
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let t = Instant::now();
        let e = AuditStore::open(&path).unwrap_err();
        let waited = t.elapsed();
        assert!(matches!(e, AuditError::Locked { .. }), "{e}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        let msg = e.to_string();
        assert!(msg.contains("locked by another process"), "{msg}");
        assert!(msg.contains("--audit-db PATH") && msg.contains("--no-audit"));
        holder.execute_batch("COMMIT").unwrap();
        AuditStore::open(&path).unwrap();
    }

    #[test]
    fn a_locked_new_database_is_a_clear_error_too() {
        let dir = TempDir::new("locked-new");
        let path = dir.path().join("audit.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .unwrap();
        let e = AuditStore::open_with(
            &path,
            &StoreOptions {
                busy_timeout: Duration::from_millis(200),
                ..StoreOptions::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, AuditError::Locked { .. }), "{e}");
    }

    #[test]
    fn garbage_and_damaged_files_are_corrupt() {
        let dir = TempDir::new("corrupt");
        let garbage = dir.path().join("garbage.db");
        let bytes: Vec<u8> = (0..16_384u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(&garbage, &bytes).unwrap();
        let e = AuditStore::open(&garbage).unwrap_err();
        assert!(matches!(e, AuditError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("Move it aside"), "{e}");
        assert_eq!(fs::read(&garbage).unwrap(), bytes, "left untouched");
        let e = AuditStore::open_read_only(&garbage).unwrap_err();
        assert!(matches!(e, AuditError::Corrupt { .. }), "{e}");

        // A real database whose first page (the schema) was overwritten.
        let damaged = dir.path().join("damaged.db");
        drop(AuditStore::open(&damaged).unwrap());
        let mut b = fs::read(&damaged).unwrap();
        for x in b.iter_mut().take(4096).skip(100) {
            *x = 0xa5;
        }
        fs::write(&damaged, &b).unwrap();
        let e = AuditStore::open(&damaged).unwrap_err();
        assert!(matches!(e, AuditError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn foreign_databases_are_refused_untouched() {
        let dir = TempDir::new("foreign");
        let path = dir.path().join("notes.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE notes (x)")
            .unwrap();
        let e = AuditStore::open(&path).unwrap_err();
        assert!(matches!(e, AuditError::NotAuditDb { .. }), "{e}");
        let e = AuditStore::open_read_only(&path).unwrap_err();
        assert!(matches!(e, AuditError::NotAuditDb { .. }), "{e}");
    }

    #[test]
    fn read_only_open_needs_an_existing_database() {
        let dir = TempDir::new("ro-missing");
        let path = dir.path().join("none.db");
        let e = AuditStore::open_read_only(&path).unwrap_err();
        assert_eq!(e, AuditError::NotFound { path: path.clone() });
        assert!(!path.exists());
        let e = AuditStore::open_read_only(dir.path()).unwrap_err();
        assert!(matches!(e, AuditError::Open { .. }), "{e}");
    }

    #[test]
    fn a_read_only_file_is_a_clear_error() {
        let dir = TempDir::new("ro-file");
        let path = dir.path().join("audit.db");
        drop(AuditStore::open(&path).unwrap());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        let e = as_unprivileged(|| AuditStore::open(&path)).unwrap_err();
        assert!(matches!(e, AuditError::ReadOnly { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("not writable"), "{msg}");
        assert!(msg.contains("--audit-db PATH") && msg.contains("--no-audit"));
        // Reading it still works.
        as_unprivileged(|| AuditStore::open_read_only(&path)).unwrap();
    }

    #[test]
    fn a_read_only_directory_is_a_clear_error() {
        let dir = TempDir::new("ro-dir");
        let sub = dir.path().join("db");
        let existing = sub.join("audit.db");
        drop(AuditStore::open(&existing).unwrap());
        assert!(!sub.join("audit.db-wal").exists(), "closed cleanly");
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o500)).unwrap();

        let e = as_unprivileged(|| AuditStore::open(&existing)).unwrap_err();
        assert!(matches!(e, AuditError::ReadOnly { .. }), "{e}");
        assert!(e.to_string().contains("directory"), "{e}");

        let missing = sub.join("new.db");
        let e = as_unprivileged(|| AuditStore::open(&missing)).unwrap_err();
        assert!(matches!(e, AuditError::ReadOnly { .. }), "{e}");

        let nested = sub.join("x/new.db");
        let e = as_unprivileged(|| AuditStore::open(&nested)).unwrap_err();
        assert!(matches!(e, AuditError::ReadOnly { .. }), "{e}");
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = TempDir::new("symlink");
        let target = dir.path().join("empty");
        fs::write(&target, b"").unwrap();
        let link = dir.path().join("audit.db");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = AuditStore::open(&link).unwrap_err();
        assert!(matches!(e, AuditError::Open { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(fs::read(&target).unwrap(), b"", "the target is untouched");
    }

    #[test]
    fn a_directory_is_not_a_database() {
        let dir = TempDir::new("isdir");
        let e = AuditStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, AuditError::Open { .. }), "{e}");
        assert!(e.to_string().contains("directory"), "{e}");
        let e = AuditStore::open(Path::new("")).unwrap_err();
        assert!(matches!(e, AuditError::Open { .. }), "{e}");
    }

    use std::os::unix::fs::PermissionsExt as _;
}
