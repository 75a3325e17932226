//! Daily spend caps across runs, persisted in SQLite (the audit database
//! file, in tables of its own: `spend_daily` and `spend_reservations`).
//!
//! Keyed by (policy name, host pattern as written, UTC day). Every reserve,
//! commit and release is one `BEGIN IMMEDIATE` transaction, so several
//! enforcer processes sharing the file never overshoot a cap together.
//! Reservations record their owner (pid, its start time, boot id, run id):
//! those of an owner that is gone (a crashed or killed run) are released
//! on open, and again whenever a cap would refuse a call.
//!
//! Every method blocks on SQLite (up to the busy timeout when another
//! process holds the write lock): call it from `spawn_blocking`.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{
    Connection, OpenFlags, OptionalExtension as _, Transaction, TransactionBehavior, params,
};
use time::{Date, OffsetDateTime};

use super::error::SpendError;
use super::ledger::OverCap;
use super::money::MAX_MICROS;

/// How long a transaction waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spend_daily (
    policy       TEXT NOT NULL,
    host         TEXT NOT NULL,
    day          TEXT NOT NULL,
    spent_micros INTEGER NOT NULL,
    PRIMARY KEY (policy, host, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spend_reservations (
    id         INTEGER PRIMARY KEY,
    policy     TEXT NOT NULL,
    host       TEXT NOT NULL,
    day        TEXT NOT NULL,
    micros     INTEGER NOT NULL,
    run_id     TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    pid_start  INTEGER NOT NULL,
    boot_id    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_reservations_key
    ON spend_reservations (policy, host, day);
";

/// Who holds a reservation: a process, told apart from a later process
/// with the same pid by its start time, and from one of another boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22);
    /// 0 when unknown.
    pub(crate) start: u64,
    /// `/proc/sys/kernel/random/boot_id`; empty when unknown.
    pub(crate) boot: String,
}

impl Owner {
    pub(crate) fn current() -> Self {
        Self::of(std::process::id())
    }

    pub(crate) fn of(pid: u32) -> Self {
        Self {
            pid,
            start: proc_stat(pid).map_or(0, |(_, start)| start),
            boot: boot_id(),
        }
    }
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// (state, start time) from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> io::Result<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat");
    // The command name (field 2) is in parentheses and may contain anything.
    let (_, rest) = stat.rsplit_once(')').ok_or_else(bad)?;
    let mut fields = rest.split_whitespace();
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(bad)?;
    // Field 3 is the state; the start time is field 22.
    let start = fields
        .nth(18)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((state, start))
}

/// Whether a reservation's owner may still settle it. Unknown (e.g. /proc
/// unreadable) counts as alive: keeping a reservation never overspends.
fn alive(pid: i64, start: i64, boot: &str, me: &Owner) -> bool {
    if !boot.is_empty() && !me.boot.is_empty() && boot != me.boot {
        return false;
    }
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    if pid == 0 {
        return false;
    }
    match proc_stat(pid) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(_) => true,
        Ok(('Z' | 'X' | 'x', _)) => false,
        Ok((_, now_start)) => start <= 0 || u64::try_from(start).ok() == Some(now_start),
    }
}

/// `2026-11-22`.
fn day_key(day: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

struct Inner {
    path: PathBuf,
    policy: String,
    run_id: String,
    owner: Owner,
    /// Host pattern (as written) -> cap in micro-dollars.
    caps: HashMap<String, i64>,
    conn: Mutex<Connection>,
    /// Reservations dropped unsettled, released by the next transaction
    /// (dropping never blocks on the database).
    pending: Mutex<Vec<i64>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DailyLedger")
            .field("path", &self.path)
            .field("policy", &self.policy)
            .field("run_id", &self.run_id)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let pending: Vec<i64> = std::mem::take(&mut *lock(&self.pending));
        if pending.is_empty() {
            return;
        }
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            delete_reservations(&tx, &pending)?;
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "could not release daily spend reservations; they are released when this run's process is gone"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn delete_reservations(tx: &Transaction<'_>, ids: &[i64]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached("DELETE FROM spend_reservations WHERE id = ?1")?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}

/// Daily caps of one policy, shared by every task of a run (cheap to
/// clone) and, through the database file, by every run.
#[derive(Debug, Clone)]
pub struct DailyLedger {
    inner: Arc<Inner>,
}

impl DailyLedger {
    /// Opens (creating the `spend_` tables if missing) the database at
    /// `path` for `policy_name`'s daily `caps` (host pattern as written,
    /// cap in micro-dollars; a pattern listed twice keeps the lower cap),
    /// for the run `run_id` of this process, and releases the reservations
    /// of runs that are gone.
    ///
    /// When the file is the audit database, open it with
    /// `audit::AuditStore::open` first: the audit module refuses a new file
    /// that already holds other tables.
    pub fn open(
        path: &Path,
        policy_name: &str,
        run_id: &str,
        caps: Vec<(String, i64)>,
    ) -> Result<Self, SpendError> {
        Self::open_as(path, policy_name, run_id, caps, Owner::current())
    }

    pub(crate) fn open_as(
        path: &Path,
        policy_name: &str,
        run_id: &str,
        caps: Vec<(String, i64)>,
        owner: Owner,
    ) -> Result<Self, SpendError> {
        let fail = |e: rusqlite::Error| storage(path, &e);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(fail)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        let mut conn = conn;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        tx.execute_batch(SCHEMA).map_err(fail)?;
        tx.commit().map_err(fail)?;
        let mut map: HashMap<String, i64> = HashMap::new();
        for (host, cap) in caps {
            let cap = cap.clamp(0, MAX_MICROS);
            map.entry(host)
                .and_modify(|c| *c = (*c).min(cap))
                .or_insert(cap);
        }
        let ledger = Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                policy: policy_name.to_owned(),
                run_id: run_id.to_owned(),
                owner,
                caps: map,
                conn: Mutex::new(conn),
                pending: Mutex::new(Vec::new()),
            }),
        };
        ledger.release_dead()?;
        Ok(ledger)
    }

    /// The daily cap on `host` (pattern as written), if any.
    pub fn cap(&self, host: &str) -> Option<i64> {
        self.inner.caps.get(host).copied()
    }

    /// [`DailyLedger::reserve_on`] today (UTC).
    pub fn reserve(&self, host: &str, usd_micros: i64) -> Result<DailyReservation, SpendError> {
        self.reserve_on(host, usd_micros, OffsetDateTime::now_utc().date())
    }

    /// Reserves `usd_micros` (clamped to 0..=[`MAX_MICROS`]) against
    /// `host`'s cap for `day`: `Err(SpendError::OverCap)` when committed
    /// spend plus every run's reservations plus this would pass the cap,
    /// `Err(SpendError::Storage)` when the database fails (refuse the
    /// call). A host without a daily cap gets a reservation that touches
    /// nothing. The spend is counted on `day` even if it settles later.
    pub fn reserve_on(
        &self,
        host: &str,
        usd_micros: i64,
        day: Date,
    ) -> Result<DailyReservation, SpendError> {
        let amount = usd_micros.clamp(0, MAX_MICROS);
        let Some(cap) = self.cap(host) else {
            return Ok(DailyReservation {
                ledger: None,
                id: 0,
                host: host.to_owned(),
                day: day_key(day),
                micros: amount,
                settled: true,
            });
        };
        let day = day_key(day);
        let inner = &self.inner;
        let id = self.transaction(|tx| {
            let (mut spent, mut reserved) = usage(tx, &inner.policy, host, &day)?;
            // Nothing (0) always fits, as in the run ledger.
            let over = |spent: i64, reserved: i64| {
                amount > 0
                    && i128::from(spent) + i128::from(reserved) + i128::from(amount)
                        > i128::from(cap)
            };
            if over(spent, reserved) && release_dead_in(tx, &inner.owner, &inner.path)? > 0 {
                (spent, reserved) = usage(tx, &inner.policy, host, &day)?;
            }
            if over(spent, reserved) {
                return Ok(Err(OverCap {
                    cap_micros: cap,
                    spent_micros: spent,
                    in_flight_micros: reserved,
                    requested_micros: amount,
                    scope: format!("daily host {host} ({day} UTC)"),
                }));
            }
            tx.execute(
                "INSERT INTO spend_reservations
                     (policy, host, day, micros, run_id, pid, pid_start, boot_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    inner.policy,
                    host,
                    day,
                    amount,
                    inner.run_id,
                    inner.owner.pid,
                    i64::try_from(inner.owner.start).unwrap_or(0),
                    inner.owner.boot,
                    now_text(),
                ],
            )?;
            Ok(Ok(tx.last_insert_rowid()))
        })??;
        Ok(DailyReservation {
            ledger: Some(self.clone()),
            id,
            host: host.to_owned(),
            day,
            micros: amount,
            settled: false,
        })
    }

    /// Committed spend and outstanding reservations (all runs) on `host`
    /// for `day`, in micro-dollars.
    pub fn usage(&self, host: &str, day: Date) -> Result<(i64, i64), SpendError> {
        let day = day_key(day);
        let conn = lock(&self.inner.conn);
        usage(&conn, &self.inner.policy, host, &day).map_err(|e| storage(&self.inner.path, &e))
    }

    /// Releases the reservations of every owner (any policy) whose process
    /// is gone. Done on open and whenever a cap would refuse; call it
    /// periodically too. Returns how many were released.
    pub fn release_dead(&self) -> Result<usize, SpendError> {
        let inner = &self.inner;
        self.transaction(|tx| release_dead_in(tx, &inner.owner, &inner.path))
    }

    /// One IMMEDIATE transaction, releasing dropped reservations first.
    fn transaction<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, SpendError> {
        let mut conn = lock(&self.inner.conn);
        let pending = std::mem::take(&mut *lock(&self.inner.pending));
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            delete_reservations(&tx, &pending)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        result.map_err(|e: rusqlite::Error| {
            // Not released after all: try again next time.
            lock(&self.inner.pending).extend(pending);
            storage(&self.inner.path, &e)
        })
    }

    /// Deletes reservation `r` and, for a commit, adds `spent` to its
    /// day's spend (even if the row was released meanwhile because this
    /// process was thought gone: the money is spent).
    fn settle(&self, r: &DailyReservation, spent: Option<i64>) -> Result<(), SpendError> {
        let policy = &self.inner.policy;
        self.transaction(|tx| {
            tx.execute("DELETE FROM spend_reservations WHERE id = ?1", [r.id])?;
            if let Some(amount) = spent {
                let (current, _) = usage(tx, policy, &r.host, &r.day)?;
                let total = current.saturating_add(amount);
                tx.execute(
                    "INSERT INTO spend_daily (policy, host, day, spent_micros)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (policy, host, day) DO UPDATE SET spent_micros = excluded.spent_micros",
                    params![policy, r.host, r.day, total],
                )?;
            }
            Ok(())
        })
    }
}

fn usage(tx: &Connection, policy: &str, host: &str, day: &str) -> rusqlite::Result<(i64, i64)> {
    let spent: i64 = tx
        .query_row(
            "SELECT spent_micros FROM spend_daily WHERE policy = ?1 AND host = ?2 AND day = ?3",
            params![policy, host, day],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let reserved: i64 = tx.query_row(
        "SELECT COALESCE(SUM(micros), 0) FROM spend_reservations
         WHERE policy = ?1 AND host = ?2 AND day = ?3",
        params![policy, host, day],
        |r| r.get(0),
    )?;
    Ok((spent, reserved))
}

fn release_dead_in(tx: &Transaction<'_>, me: &Owner, path: &Path) -> rusqlite::Result<usize> {
    let owners: Vec<(i64, i64, String)> = {
        let mut stmt =
            tx.prepare_cached("SELECT DISTINCT pid, pid_start, boot_id FROM spend_reservations")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut released = 0;
    for (pid, start, boot) in owners {
        if alive(pid, start, &boot, me) {
            continue;
        }
        let n = tx.execute(
            "DELETE FROM spend_reservations WHERE pid = ?1 AND pid_start = ?2 AND boot_id = ?3",
            params![pid, start, boot],
        )?;
        tracing::warn!(
            path = %path.display(),
            pid,
            released = n,
            "released daily spend reservations of an enforcer that is gone"
        );
        released += n;
    }
    Ok(released)
}

fn now_text() -> String {
    let now = OffsetDateTime::now_utc();
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        day_key(now.date()),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn storage(path: &Path, e: &rusqlite::Error) -> SpendError {
    SpendError::Storage {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// A daily-cap reservation for one call in flight. Settle it with
/// [`DailyReservation::commit`] or [`DailyReservation::release`]; dropping
/// it unsettled releases it at the ledger's next transaction.
#[must_use = "a reservation is released when dropped; commit it once the call succeeded"]
pub struct DailyReservation {
    /// `None` for a host without a daily cap.
    ledger: Option<DailyLedger>,
    id: i64,
    host: String,
    /// `2026-11-22`: the day the spend counts on.
    day: String,
    micros: i64,
    settled: bool,
}

impl fmt::Debug for DailyReservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DailyReservation")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("day", &self.day)
            .field("micros", &self.micros)
            .field("capped", &self.ledger.is_some())
            .field("settled", &self.settled)
            .finish()
    }
}

impl DailyReservation {
    pub fn micros(&self) -> i64 {
        self.micros
    }

    /// The UTC day (`2026-11-22`) the spend counts on.
    pub fn day(&self) -> &str {
        &self.day
    }

    /// The call went through: records `actual` (clamped to
    /// 0..=[`MAX_MICROS`]) or else the reserved amount as spent on the
    /// reservation's day. Returns the amount recorded. On a database error
    /// the reservation stays in place (still counted against the cap) until
    /// this process is gone.
    pub fn commit(mut self, actual_micros: Option<i64>) -> Result<i64, SpendError> {
        let amount = actual_micros.map_or(self.micros, |a| a.clamp(0, MAX_MICROS));
        self.settled = true;
        let Some(ledger) = &self.ledger else {
            return Ok(amount);
        };
        ledger.settle(&self, Some(amount))?;
        Ok(amount)
    }

    /// The vendor refused the call: frees the reservation. On a database
    /// error it is retried at the ledger's next transaction.
    pub fn release(mut self) -> Result<(), SpendError> {
        self.settled = true;
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        ledger.settle(&self, None).inspect_err(|_| {
            lock(&ledger.inner.pending).push(self.id);
        })
    }
}

impl Drop for DailyReservation {
    fn drop(&mut self) {
        if !self.settled
            && let Some(ledger) = &self.ledger
        {
            lock(&ledger.inner.pending).push(self.id);
        }
    }
}

#[cfg(test)]
mod tests;
