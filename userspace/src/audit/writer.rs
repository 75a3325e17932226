//! Group commit. Whoever needs a row committed queues it; if the database
//! is idle, the caller commits everything queued itself (one transaction,
//! no thread hand-off: at low load that saves two wake-ups per request);
//! if a commit is already running, the caller wakes the committer thread,
//! which commits whatever has piled up meanwhile in one transaction (under
//! load, many rows per commit). Each `record()` is acknowledged only after
//! COMMIT. Items nobody waits on (outcomes, DNS and kernel decisions) ride
//! along, or are committed by the committer within [`LAZY_COMMIT`]; the
//! committer also runs WAL checkpoints, off the request path. The first
//! failed write makes the writer unhealthy for good: callers then refuse
//! requests.
//!
//! Checkpoints: SQLite's automatic checkpoint is off (it would run on the
//! request path); instead the committer copies the WAL into the database
//! every [`CHECKPOINT_EVERY`] commits, and empties it (TRUNCATE) when the
//! writer has been idle for [`IDLE_CHECKPOINT`], when a run finishes, and
//! when the writer closes. So `audit.db` alone, copied without its `-wal`,
//! holds every row of every finished run.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{
    AuditError, AuditEvent, EventId, Outcome, RunEnd, RunInfo, RunSummary, clock,
    event::{EventRecord, OutcomeRecord},
    report, store,
};

/// Most queued items committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// Most `record_later` events waiting to be committed; beyond that they are
/// dropped and counted (a kernel-refusal flood must not exhaust memory).
pub const MAX_QUEUED_LATER: usize = 65_536;
/// How long items nobody waits on may wait before the flusher commits them.
pub const LAZY_COMMIT: Duration = Duration::from_millis(20);
/// Commits between two WAL checkpoints (a commit adds a few pages; SQLite's
/// own default is every 1000 pages).
pub const CHECKPOINT_EVERY: u64 = 250;
/// How long the writer must have committed nothing before it empties the
/// WAL into the database file (a daemon serving many runs may never stop).
pub const IDLE_CHECKPOINT: Duration = Duration::from_secs(2);
/// The longest a checkpoint at the end of a run waits for other
/// connections (another enforcer, a `sqlite3` reader) to let it finish.
const FINISH_CHECKPOINT_WAIT: Duration = Duration::from_secs(1);

type Ack<T> = oneshot::Sender<Result<T, AuditError>>;

impl Msg {
    /// Whether somebody waits for this item's commit.
    fn awaited(&self) -> bool {
        !matches!(self, Self::Insert { ack: None, .. } | Self::Complete { .. })
    }
}

enum Msg {
    Insert {
        row: Box<EventRecord>,
        ack: Option<Ack<EventId>>,
    },
    Complete {
        id: EventId,
        outcome: OutcomeRecord,
    },
    Flush(Ack<()>),
    StartRun(Box<RunInfo>, Ack<()>),
    FinishRun(RunEnd, Ack<RunSummary>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Insert { .. } => "Insert",
            Self::Complete { .. } => "Complete",
            Self::Flush(_) => "Flush",
            Self::StartRun(..) => "StartRun",
            Self::FinishRun(..) => "FinishRun",
        })
    }
}

/// Counters of the writer since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Event rows inserted.
    pub rows: u64,
    /// `record_later` events dropped because the queue was full.
    pub dropped: u64,
}

#[derive(Default)]
struct Queue {
    items: Vec<Msg>,
    /// How many of them somebody waits on.
    awaited: usize,
    kicked: bool,
    /// The committer thread is committing (or about to).
    busy: bool,
    /// Awaited items in the last commit: more than one means concurrent
    /// requests, which the committer batches better than callers can.
    last_awaited: usize,
}

struct Shared {
    path: PathBuf,
    failure: OnceLock<AuditError>,
    /// When `failure` happened: from then on nothing was forwarded.
    failed_at: OnceLock<SystemTime>,
    commits: AtomicU64,
    rows: AtomicU64,
    dropped: AtomicU64,
    queued_later: AtomicUsize,
    /// Queued items, oldest first, and whether the committer was asked to
    /// commit them now.
    pending: Mutex<Queue>,
    /// Wakes the committer thread.
    wake: Condvar,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("path", &self.path).finish()
    }
}

/// Handle to the audit log's writer. Cheap to clone, `Send + Sync`; the
/// database is closed (after committing what is queued) when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    shared: Arc<Shared>,
}

impl AuditWriter {
    pub(crate) fn spawn(conn: Connection, path: PathBuf) -> Self {
        // Checkpoints are the flusher's job, off the request path.
        let _ = conn.pragma_update(None, "wal_autocheckpoint", 0);
        let shared = Arc::new(Shared {
            path,
            failure: OnceLock::new(),
            failed_at: OnceLock::new(),
            commits: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queued_later: AtomicUsize::new(0),
            pending: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            conn: Mutex::new(conn),
        });
        let weak = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name(String::from("enforcer-audit"))
            .spawn(move || committer(&weak));
        if let Err(e) = spawned {
            shared.fail(AuditError::Sqlite {
                path: shared.path.clone(),
                detail: format!("cannot start the audit committer thread: {e}"),
            });
        }
        Self { shared }
    }

    /// Records a decision; resolves only once its row is committed.
    pub async fn record(&self, e: AuditEvent) -> Result<EventId, AuditError> {
        self.healthy()?;
        let (ack, done) = oneshot::channel();
        let waiting = self.shared.push(Msg::Insert {
            row: Box::new(EventRecord::from(e)),
            ack: Some(ack),
        });
        self.shared.commit_soon(waiting);
        done.await.map_err(|_| self.stopped())?
    }

    /// Queues a decision to be committed with the next batch (DNS answers,
    /// kernel refusals: nothing waits on them).
    pub fn record_later(&self, e: AuditEvent) {
        if self.shared.failure.get().is_some() {
            return;
        }
        let queued = self.shared.queued_later.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_LATER {
            self.shared.queued_later.fetch_sub(1, Ordering::Relaxed);
            let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "audit queue full: deferred events (DNS, kernel) are being dropped"
                );
            }
            return;
        }
        self.shared.push(Msg::Insert {
            row: Box::new(EventRecord::from(e)),
            ack: None,
        });
    }

    /// Queues the response's outcome onto the row `id`.
    pub fn complete(&self, id: EventId, o: Outcome) {
        self.shared.push(Msg::Complete {
            id,
            outcome: OutcomeRecord::from(o),
        });
    }

    /// The write failure that stopped the writer, and when it happened
    /// (nothing was forwarded since), if one did.
    pub fn failure(&self) -> Option<(AuditError, SystemTime)> {
        let e = self.shared.failure.get()?.clone();
        let at = self
            .shared
            .failed_at
            .get()
            .copied()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Some((e, at))
    }

    /// `Err` once any write has failed: callers must then refuse requests
    /// rather than forward them unrecorded.
    pub fn healthy(&self) -> Result<(), AuditError> {
        match self.shared.failure.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Resolves once everything queued before it is committed.
    pub async fn flush(&self) -> Result<(), AuditError> {
        self.awaited(Msg::Flush).await
    }

    /// Records the start of a run (for a long-running service whose runs
    /// start after the writer does).
    pub async fn start_run(&self, info: RunInfo) -> Result<(), AuditError> {
        self.awaited(|ack| Msg::StartRun(Box::new(info), ack)).await
    }

    /// Flushes, records the run's end, and returns its summary as the
    /// database has it.
    pub async fn finish_run(&self, end: RunEnd) -> Result<RunSummary, AuditError> {
        self.awaited(|ack| Msg::FinishRun(end, ack)).await
    }

    async fn awaited<T>(&self, msg: impl FnOnce(Ack<T>) -> Msg) -> Result<T, AuditError> {
        self.healthy()?;
        let (ack, done) = oneshot::channel();
        let waiting = self.shared.push(msg(ack));
        self.shared.commit_soon(waiting);
        done.await.map_err(|_| self.stopped())?
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            rows: self.shared.rows.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// Why an acknowledgement never came: the write failure if there was one.
    fn stopped(&self) -> AuditError {
        self.shared
            .failure
            .get()
            .cloned()
            .unwrap_or(AuditError::WriterStopped)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Records the writer's first failure, and when; returns the failure
    /// that stands (the first).
    fn fail(&self, e: AuditError) -> AuditError {
        let first = self.failure.get_or_init(|| {
            let _ = self.failed_at.set(SystemTime::now());
            e
        });
        first.clone()
    }

    /// Queues `msg`; returns how many queued items are waited on, or more
    /// than one when the committer is at work anyway.
    fn push(&self, msg: Msg) -> usize {
        let mut q = lock(&self.pending);
        if msg.awaited() {
            q.awaited += 1;
        }
        q.items.push(msg);
        if q.items.len() >= MAX_BATCH {
            q.kicked = true;
            self.wake.notify_one();
        }
        if q.busy || q.last_awaited > 1 {
            usize::MAX
        } else {
            q.awaited
        }
    }

    /// Gets what is queued committed now: here, if nobody else is waiting
    /// and the database is idle (low load: no hand-off); otherwise by the
    /// committer thread, which batches everything that piles up.
    fn commit_soon(&self, waiting: usize) {
        if waiting == 1
            && let Ok(mut conn) = self.conn.try_lock()
        {
            self.commit_queued(&mut conn);
            drop(conn);
            // Whatever was queued while we committed found the database busy.
            if lock(&self.pending).items.is_empty() {
                return;
            }
        }
        let mut q = lock(&self.pending);
        if !q.kicked {
            q.kicked = true;
            self.wake.notify_one();
        }
    }

    /// One transaction for what is queued (up to [`MAX_BATCH`] items).
    fn commit_queued(&self, conn: &mut Connection) {
        let mut batch = {
            let mut q = lock(&self.pending);
            let n = q.items.len().min(MAX_BATCH);
            let batch = q.items.drain(..n).collect::<Vec<_>>();
            let awaited = batch.iter().filter(|m| m.awaited()).count();
            q.awaited -= awaited;
            q.last_awaited = awaited;
            batch
        };
        if batch.is_empty() {
            return;
        }
        let later = batch
            .iter()
            .filter(|m| matches!(m, Msg::Insert { ack: None, .. }))
            .count();
        self.queued_later.fetch_sub(later, Ordering::Relaxed);
        process(conn, &mut batch, self);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: commit what is still queued.
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(
            &mut self
                .pending
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .items,
        );
        if !batch.is_empty() && self.failure.get().is_none() {
            let mut done = Vec::with_capacity(batch.len());
            let mut rows = 0;
            if let Err(e) = write_batch(conn, &batch, &mut done, &mut rows) {
                tracing::error!("audit write at exit failed: {e}");
            }
        }
        if self.failure.get().is_none() {
            checkpoint(conn, FINISH_CHECKPOINT_WAIT);
        }
    }
}

/// Copies every committed row from the WAL into the database file and
/// empties the WAL (`wal_checkpoint(TRUNCATE)`), waiting at most `wait` for
/// other connections to the file; what it cannot copy without waiting
/// longer is copied next time. Returns whether it completed.
fn checkpoint(conn: &Connection, wait: Duration) -> bool {
    let previous: Option<i64> = conn
        .pragma_query_value(None, "busy_timeout", |r| r.get(0))
        .ok();
    let _ = conn.busy_timeout(wait);
    let done = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|busy| busy == 0);
    if let Some(ms) = previous.and_then(|ms| u64::try_from(ms).ok()) {
        let _ = conn.busy_timeout(Duration::from_millis(ms));
    }
    match done {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, "audit log checkpoint failed");
            false
        }
    }
}

/// The committer thread: commits when asked (the database was busy when a
/// row needed committing), and otherwise every [`LAZY_COMMIT`] what nobody
/// waits on; checkpoints the WAL (every [`CHECKPOINT_EVERY`] commits, and
/// after [`IDLE_CHECKPOINT`] without one). Ends when the last handle is
/// dropped.
fn committer(weak: &Weak<Shared>) {
    let mut checkpointed_at = 0;
    // Commits seen at the last look, and since when that number holds.
    let mut seen = (0, std::time::Instant::now());
    loop {
        let Some(shared) = weak.upgrade() else { return };
        {
            let q = lock(&shared.pending);
            let (mut q, _) = shared
                .wake
                .wait_timeout_while(q, LAZY_COMMIT, |q| !q.kicked)
                .unwrap_or_else(|e| e.into_inner());
            q.busy = true;
        }
        // Until the queue is empty: what arrives while a commit runs goes
        // into the next one.
        loop {
            let mut conn = lock(&shared.conn);
            shared.commit_queued(&mut conn);
            drop(conn);
            let mut q = lock(&shared.pending);
            if q.items.is_empty() {
                q.kicked = false;
                q.busy = false;
                break;
            }
        }
        let commits = shared.commits.load(Ordering::Relaxed);
        if commits != seen.0 {
            seen = (commits, std::time::Instant::now());
        }
        if commits - checkpointed_at >= CHECKPOINT_EVERY {
            let conn = lock(&shared.conn);
            // PASSIVE: never waits for readers; what it cannot copy now is
            // copied next time.
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            checkpointed_at = commits;
        } else if commits != checkpointed_at
            && seen.1.elapsed() >= IDLE_CHECKPOINT
            && shared.failure.get().is_none()
        {
            // Idle: empty the WAL, without waiting for anybody (a reader
            // in the way only means it is tried again later).
            let conn = lock(&shared.conn);
            if checkpoint(&conn, Duration::ZERO) {
                checkpointed_at = commits;
            } else {
                seen.1 = std::time::Instant::now();
            }
        }
    }
}

/// What each message of a committed batch gets back.
enum Done {
    Id(EventId),
    Nothing,
    Run(Result<(), AuditError>),
    Finished(Result<(), AuditError>),
}

fn process(conn: &mut Connection, batch: &mut Vec<Msg>, shared: &Shared) {
    if let Some(e) = shared.failure.get() {
        fail_all(batch, e);
        return;
    }
    let mut done = Vec::with_capacity(batch.len());
    let mut rows = 0u64;
    let result = write_batch(conn, batch, &mut done, &mut rows);
    match result {
        Ok(()) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared.rows.fetch_add(rows, Ordering::Relaxed);
            for (msg, d) in batch.drain(..).zip(done) {
                acknowledge(conn, msg, d, &shared.path);
            }
        }
        Err(e) => {
            let err = AuditError::sqlite(&shared.path, &e);
            tracing::error!(error = %err, "audit write failed; refusing further requests");
            let err = shared.fail(err);
            fail_all(batch, &err);
        }
    }
}

fn write_batch(
    conn: &mut Connection,
    batch: &[Msg],
    done: &mut Vec<Done>,
    rows: &mut u64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(INSERT_EVENT)?;
        let mut update = tx.prepare_cached(COMPLETE_EVENT)?;
        for msg in batch {
            done.push(match msg {
                Msg::Insert { row, .. } => {
                    let r = row.as_ref();
                    insert.execute(params![
                        r.run_id,
                        r.at,
                        r.layer,
                        r.verdict,
                        r.pid,
                        r.comm,
                        r.host,
                        r.port,
                        r.method,
                        r.path,
                        r.query_redacted,
                        r.rule,
                        r.reason,
                        r.status,
                        r.bytes_up,
                        r.bytes_down,
                        r.latency_ms,
                        r.cost_usd,
                        r.reserved_usd,
                        r.vendor,
                        r.vendor_txn_id,
                        r.secrets,
                        r.approver,
                        r.decided_ms,
                        r.cause,
                        r.alarm,
                        r.rule_line,
                        r.failure,
                    ])?;
                    *rows += 1;
                    Done::Id(tx.last_insert_rowid())
                }
                Msg::Complete { id, outcome: o } => {
                    update.execute(params![
                        id,
                        o.status,
                        o.bytes_up,
                        o.bytes_down,
                        o.latency_ms,
                        o.cost_usd,
                        o.vendor_txn_id,
                        o.failure,
                        o.detail,
                    ])?;
                    Done::Nothing
                }
                Msg::Flush(_) => Done::Nothing,
                Msg::StartRun(info, _) => Done::Run(if store::insert_run(&tx, info)? {
                    Ok(())
                } else {
                    Err(AuditError::DuplicateRun(info.run_id.clone()))
                }),
                Msg::FinishRun(end, _) => {
                    let n = tx.execute(
                        "UPDATE runs SET ended_at = ?2, exit_code = ?3 WHERE id = ?1",
                        params![end.run_id, clock::to_text(end.ended_at), end.exit_code],
                    )?;
                    Done::Finished(if n > 0 {
                        Ok(())
                    } else {
                        Err(AuditError::UnknownRun(end.run_id.clone()))
                    })
                }
            });
        }
    }
    tx.commit()
}

fn acknowledge(conn: &Connection, msg: Msg, done: Done, path: &Path) {
    match (msg, done) {
        (Msg::Insert { ack: Some(ack), .. }, Done::Id(id)) => {
            let _ = ack.send(Ok(id));
        }
        (Msg::Flush(ack), _) => {
            let _ = ack.send(Ok(()));
        }
        (Msg::StartRun(_, ack), Done::Run(r)) => {
            let _ = ack.send(r);
        }
        (Msg::FinishRun(end, ack), Done::Finished(r)) => {
            let summary = r.and_then(|()| report::summarize(conn, &end.run_id, path));
            // The run is over: its rows go into the database file itself,
            // so that a copy of `audit.db` alone has them.
            checkpoint(conn, FINISH_CHECKPOINT_WAIT);
            let _ = ack.send(summary);
        }
        _ => {}
    }
}

fn fail_all(batch: &mut Vec<Msg>, e: &AuditError) {
    for msg in batch.drain(..) {
        match msg {
            Msg::Insert { ack: Some(ack), .. } => {
                let _ = ack.send(Err(e.clone()));
            }
            Msg::Flush(ack) | Msg::StartRun(_, ack) => {
                let _ = ack.send(Err(e.clone()));
            }
            Msg::FinishRun(_, ack) => {
                let _ = ack.send(Err(e.clone()));
            }
            Msg::Insert { ack: None, .. } | Msg::Complete { .. } => {}
        }
    }
}

const INSERT_EVENT: &str = "INSERT INTO events (
    run_id, at, layer, verdict, pid, comm, host, port, method, path, query_redacted,
    rule, reason, status, bytes_up, bytes_down, latency_ms, cost_usd, reserved_usd,
    vendor, vendor_txn_id, secrets, approver, decided_ms, cause, alarm, rule_line, failure)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
            ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)";

const COMPLETE_EVENT: &str = "UPDATE events SET
    status        = coalesce(?2, status),
    bytes_up      = coalesce(?3, bytes_up),
    bytes_down    = coalesce(?4, bytes_down),
    latency_ms    = coalesce(?5, latency_ms),
    cost_usd      = coalesce(?6, cost_usd),
    vendor_txn_id = coalesce(?7, vendor_txn_id),
    failure       = coalesce(?8, failure),
    reason        = CASE WHEN ?9 IS NULL THEN reason ELSE reason || '; ' || ?9 END
    WHERE id = ?1";

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        audit::{
            AuditStore,
            testutil::{TempDir, request, run_info},
        },
        decision::Verdict,
    };

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// What a backup that copies only `audit.db` (no `-wal`, no `-shm`)
    /// holds: the number of events of `run`, or the error opening it gives.
    fn events_in_a_copy_of_the_db_file_alone(db: &Path, run: &str) -> Result<i64, String> {
        let copy_dir = TempDir::new("backup");
        let copy = copy_dir.path().join("audit.db");
        std::fs::copy(db, &copy).unwrap();
        let c = Connection::open(&copy).unwrap();
        c.query_row(
            "SELECT COUNT(*) FROM events WHERE run_id = ?1",
            [run],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())
    }

    fn wal_len(db: &Path) -> u64 {
        let mut p = db.as_os_str().to_owned();
        p.push("-wal");
        std::fs::metadata(p).map_or(0, |m| m.len())
    }

    #[test]
    fn a_finished_run_is_in_the_database_file_itself() {
        let dir = TempDir::new("ckpt-finish");
        let db = dir.path().join("audit.db");
        let store = AuditStore::open(&db).unwrap();
        store.start_run(&run_info("run-c", "agent")).unwrap();
        let w = store.writer();
        rt().block_on(async {
            for i in 0..800 {
                let e = request("run-c", Verdict::Allow, "api.example.com", "GET", "/v1/x");
                if i % 2 == 0 {
                    w.record(e).await.unwrap();
                } else {
                    w.record_later(e);
                }
            }
            w.finish_run(RunEnd {
                run_id: String::from("run-c"),
                ended_at: SystemTime::now(),
                exit_code: 0,
            })
            .await
            .unwrap();
        });
        // The writer is still open (a daemon goes on serving other runs).
        assert_eq!(events_in_a_copy_of_the_db_file_alone(&db, "run-c"), Ok(800));
        assert_eq!(wal_len(&db), 0, "the WAL was emptied");
        drop(w);
    }

    #[test]
    fn an_idle_writer_empties_its_wal_into_the_database_file() {
        let dir = TempDir::new("ckpt-idle");
        let db = dir.path().join("audit.db");
        let store = AuditStore::open(&db).unwrap();
        store.start_run(&run_info("run-i", "agent")).unwrap();
        let w = store.writer();
        rt().block_on(async {
            for _ in 0..300 {
                w.record_later(request("run-i", Verdict::Deny, "evil.example", "GET", "/"));
            }
            w.flush().await.unwrap();
        });
        // The checkpoint copies the pages into the file, then truncates the
        // WAL: wait for both (a copy taken in between sees the first only).
        let deadline = std::time::Instant::now() + IDLE_CHECKPOINT * 3;
        while events_in_a_copy_of_the_db_file_alone(&db, "run-i") != Ok(300) || wal_len(&db) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "not checkpointed after {:?} idle: {:?} in the file, WAL {} bytes",
                IDLE_CHECKPOINT * 3,
                events_in_a_copy_of_the_db_file_alone(&db, "run-i"),
                wal_len(&db)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(w);
    }

    #[test]
    fn closing_the_writer_empties_its_wal() {
        let dir = TempDir::new("ckpt-close");
        let db = dir.path().join("audit.db");
        let store = AuditStore::open(&db).unwrap();
        store.start_run(&run_info("run-x", "agent")).unwrap();
        let w = store.writer();
        for _ in 0..50 {
            w.record_later(request("run-x", Verdict::Deny, "evil.example", "GET", "/"));
        }
        drop(w);
        // The last handle may be the committer thread's for a moment: the
        // close (and its checkpoint) then happens there, a little later.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while events_in_a_copy_of_the_db_file_alone(&db, "run-x") != Ok(50) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                events_in_a_copy_of_the_db_file_alone(&db, "run-x")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_failure_is_dated() {
        let dir = TempDir::new("failed-at");
        let db = dir.path().join("audit.db");
        let store = AuditStore::open(&db).unwrap();
        store.start_run(&run_info("run-f", "agent")).unwrap();
        let pages: i64 = store
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let _: i64 = store
            .conn
            .query_row(&format!("PRAGMA max_page_count = {}", pages + 2), [], |r| {
                r.get(0)
            })
            .unwrap();
        let w = store.writer();
        assert!(w.failure().is_none());
        let before = SystemTime::now();
        rt().block_on(async {
            for _ in 0..200 {
                let mut e = request("run-f", Verdict::Allow, "api.example.com", "GET", "/");
                e.reason = "x".repeat(1500);
                if w.record(e).await.is_err() {
                    break;
                }
            }
        });
        let (e, at) = w.failure().expect("the database filled up");
        assert!(matches!(e, AuditError::DiskFull { .. }), "{e}");
        assert!(at >= before && at <= SystemTime::now());
    }
}
