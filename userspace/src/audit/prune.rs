//! `enforcer audit prune --older-than 30d`: deleting old events and ended
//! runs in short transactions, so live enforcers writing the same database
//! never wait long for the lock.

use std::time::Duration;

use rusqlite::{Connection, params};

use super::{AuditError, AuditStore, clock};

/// Rows deleted per transaction.
const CHUNK: i64 = 5_000;

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    pub events: u64,
    pub runs: u64,
}

impl AuditStore {
    /// Deletes events older than `older_than`, and runs that ended before
    /// then together with all their events. Runs still going keep their row
    /// (their old events go). The file does not shrink: SQLite reuses the
    /// space; `sqlite3 PATH VACUUM` gives it back to the file system.
    pub fn prune(&self, older_than: Duration) -> Result<PruneReport, AuditError> {
        let cutoff = clock::to_text(clock::ago(older_than));
        prune_before(&self.conn, &cutoff).map_err(|e| AuditError::sqlite(&self.path, &e))
    }
}

fn prune_before(conn: &Connection, cutoff: &str) -> rusqlite::Result<PruneReport> {
    let mut report = PruneReport::default();
    loop {
        let n = in_transaction(conn, |c| {
            c.execute(
                "DELETE FROM events WHERE id IN (
                     SELECT id FROM events WHERE at < ?1
                     UNION
                     SELECT e.id FROM runs r JOIN events e ON e.run_id = r.id
                     WHERE r.ended_at IS NOT NULL AND r.ended_at < ?1
                     LIMIT ?2)",
                params![cutoff, CHUNK],
            )
        })?;
        report.events += u64::try_from(n).unwrap_or(u64::MAX);
        if i64::try_from(n).unwrap_or(i64::MAX) < CHUNK {
            break;
        }
    }
    let runs = in_transaction(conn, |c| {
        c.execute(
            "DELETE FROM runs WHERE ended_at IS NOT NULL AND ended_at < ?1",
            [cutoff],
        )
    })?;
    report.runs = u64::try_from(runs).unwrap_or(u64::MAX);
    Ok(report)
}

fn in_transaction(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
) -> rusqlite::Result<usize> {
    // `Connection::transaction_with_behavior` needs `&mut`; this is the same
    // BEGIN IMMEDIATE / COMMIT (or ROLLBACK) on a shared reference.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f(conn).and_then(|n| conn.execute_batch("COMMIT").map(|()| n)) {
        Ok(n) => Ok(n),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
