//! The group-commit writer: one thread owns the write connection, takes
//! everything queued (up to [`MAX_BATCH`] items) into ONE transaction, and
//! only after COMMIT acknowledges each `record()`. The first failed write
//! makes the writer unhealthy for good: callers then refuse requests.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    AuditError, AuditEvent, EventId, Outcome, RunEnd, RunInfo, RunSummary, clock,
    event::{EventRecord, OutcomeRecord},
    report, store,
};

/// Most queued items committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// Most `record_later` events waiting for the writer; beyond that they are
/// dropped and counted (a kernel-refusal flood must not exhaust memory).
pub const MAX_QUEUED_LATER: usize = 65_536;

type Ack<T> = oneshot::Sender<Result<T, AuditError>>;

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

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    failure: OnceLock<AuditError>,
    commits: AtomicU64,
    rows: AtomicU64,
    dropped: AtomicU64,
    queued_later: AtomicUsize,
}

/// Handle to the writer thread. Cheap to clone, `Send + Sync`; the thread
/// ends (and closes the database) when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
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

impl AuditWriter {
    pub(crate) fn spawn(conn: Connection, path: PathBuf) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            path,
            failure: OnceLock::new(),
            commits: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queued_later: AtomicUsize::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(String::from("enforcer-audit"))
            .spawn(move || run(conn, rx, &thread_shared));
        if let Err(e) = spawned {
            let _ = shared.failure.set(AuditError::Sqlite {
                path: shared.path.clone(),
                detail: format!("cannot start the audit writer thread: {e}"),
            });
        }
        Self { tx, shared }
    }

    /// Records a decision; resolves only once its row is committed.
    pub async fn record(&self, e: AuditEvent) -> Result<EventId, AuditError> {
        self.healthy()?;
        let (ack, done) = oneshot::channel();
        self.send(Msg::Insert {
            row: Box::new(EventRecord::from(e)),
            ack: Some(ack),
        })?;
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
        let msg = Msg::Insert {
            row: Box::new(EventRecord::from(e)),
            ack: None,
        };
        if self.send(msg).is_err() {
            self.shared.queued_later.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues the response's outcome onto the row `id`.
    pub fn complete(&self, id: EventId, o: Outcome) {
        let _ = self.send(Msg::Complete {
            id,
            outcome: OutcomeRecord::from(o),
        });
    }

    /// `Err` once any write has failed or the writer has stopped: callers
    /// must then refuse requests rather than forward them unrecorded.
    pub fn healthy(&self) -> Result<(), AuditError> {
        if let Some(e) = self.shared.failure.get() {
            return Err(e.clone());
        }
        if self.tx.is_closed() {
            return Err(AuditError::WriterStopped);
        }
        Ok(())
    }

    /// Resolves once everything queued before it is committed.
    pub async fn flush(&self) -> Result<(), AuditError> {
        self.healthy()?;
        let (ack, done) = oneshot::channel();
        self.send(Msg::Flush(ack))?;
        done.await.map_err(|_| self.stopped())?
    }

    /// Records the start of a run (for a long-running service whose runs
    /// start after the writer does).
    pub async fn start_run(&self, info: RunInfo) -> Result<(), AuditError> {
        self.healthy()?;
        let (ack, done) = oneshot::channel();
        self.send(Msg::StartRun(Box::new(info), ack))?;
        done.await.map_err(|_| self.stopped())?
    }

    /// Flushes, records the run's end, and returns its summary as the
    /// database has it.
    pub async fn finish_run(&self, end: RunEnd) -> Result<RunSummary, AuditError> {
        self.healthy()?;
        let (ack, done) = oneshot::channel();
        self.send(Msg::FinishRun(end, ack))?;
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

    fn send(&self, msg: Msg) -> Result<(), AuditError> {
        self.tx.send(msg).map_err(|_| self.stopped())
    }

    /// Why the writer is gone: the write failure if there was one.
    fn stopped(&self) -> AuditError {
        self.shared
            .failure
            .get()
            .cloned()
            .unwrap_or(AuditError::WriterStopped)
    }
}

/// The writer thread: block for the first item, drain what else is queued,
/// commit it all at once, then acknowledge.
fn run(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Msg>, shared: &Shared) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let later = batch
            .iter()
            .filter(|m| matches!(m, Msg::Insert { ack: None, .. }))
            .count();
        shared.queued_later.fetch_sub(later, Ordering::Relaxed);
        process(&mut conn, &mut batch, shared);
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
            let err = shared.failure.get_or_init(|| err).clone();
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
    vendor, vendor_txn_id, secrets, approver, decided_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
            ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)";

const COMPLETE_EVENT: &str = "UPDATE events SET
    status        = coalesce(?2, status),
    bytes_up      = coalesce(?3, bytes_up),
    bytes_down    = coalesce(?4, bytes_down),
    latency_ms    = coalesce(?5, latency_ms),
    cost_usd      = coalesce(?6, cost_usd),
    vendor_txn_id = coalesce(?7, vendor_txn_id)
    WHERE id = ?1";
