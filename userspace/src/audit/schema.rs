//! The audit database's schema and its migrations, versioned with
//! `PRAGMA user_version` (migration N brings the schema to version N).

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::{AuditError, clock};

/// `PRAGMA application_id` of an enforcer audit database ("enfa").
pub(crate) const APPLICATION_ID: i64 = 0x656e_6661;

/// Migrations in order; never edit one that has shipped, append a new one.
/// A later migration that changes `audit_log` drops and recreates the view.
///
/// No CHECK constraints on `layer`/`verdict`: a new variant (such as
/// `control`) must never make inserts fail, which would stop the audit log.
const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const V1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    policy_path   TEXT NOT NULL,
    policy_sha256 TEXT NOT NULL,
    invoking_user TEXT NOT NULL,
    uid           INTEGER NOT NULL,
    command       TEXT NOT NULL,
    cgroup        TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    ended_at      TEXT,
    exit_code     INTEGER,
    ttl_seconds   INTEGER,
    revoked_at    TEXT,
    revoked_by    TEXT
);
CREATE INDEX runs_started_at ON runs(started_at);

CREATE TABLE events (
    id             INTEGER PRIMARY KEY,
    run_id         TEXT NOT NULL,
    at             TEXT NOT NULL,
    layer          TEXT NOT NULL,
    verdict        TEXT NOT NULL,
    pid            INTEGER,
    comm           TEXT,
    host           TEXT,
    port           INTEGER,
    method         TEXT,
    path           TEXT,
    query_redacted INTEGER NOT NULL DEFAULT 0,
    rule           TEXT,
    reason         TEXT NOT NULL,
    status         INTEGER,
    bytes_up       INTEGER,
    bytes_down     INTEGER,
    latency_ms     REAL,
    cost_usd       REAL,
    reserved_usd   REAL,
    vendor         TEXT,
    vendor_txn_id  TEXT,
    secrets        TEXT,
    approver       TEXT,
    decided_ms     REAL
);
CREATE INDEX events_run_at ON events(run_id, at);
CREATE INDEX events_at ON events(at);
CREATE INDEX events_host ON events(host);

CREATE VIEW audit_log AS
SELECT
    e.id              AS event_id,
    e.run_id          AS agent_run_id,
    r.name            AS agent_name,
    e.at              AS called_at,
    e.layer           AS layer,
    e.verdict         AS policy_verdict,
    e.vendor          AS vendor,
    CASE
        WHEN e.method IS NOT NULL AND e.path IS NOT NULL THEN e.method || ' ' || e.path
        WHEN e.host IS NOT NULL AND e.port IS NOT NULL AND instr(e.host, ':') > 0
            THEN '[' || e.host || ']:' || e.port
        WHEN e.host IS NOT NULL AND e.port IS NOT NULL THEN e.host || ':' || e.port
        ELSE e.host
    END               AS endpoint,
    e.host            AS host,
    e.port            AS port,
    e.method          AS method,
    e.path            AS path,
    e.query_redacted  AS query_redacted,
    e.rule            AS policy_rule,
    e.reason          AS reason,
    e.status          AS status_code,
    e.bytes_up        AS bytes_up,
    e.bytes_down      AS bytes_down,
    e.latency_ms      AS latency_ms,
    e.cost_usd        AS cost_usd,
    e.reserved_usd    AS reserved_usd,
    e.vendor_txn_id   AS vendor_txn_id,
    e.secrets         AS injected_secrets,
    e.approver        AS approver,
    e.decided_ms      AS decided_ms,
    e.pid             AS pid,
    e.comm            AS comm,
    r.policy_path     AS policy_path,
    r.policy_sha256   AS policy_sha256,
    r.invoking_user   AS invoking_user,
    r.command         AS command
FROM events e
LEFT JOIN runs r ON r.id = e.run_id;
"#;

/// V2: what used to hide in text is typed: `cause` (why, e.g.
/// `default-deny`, `over-cap`, `benign-probe`), `alarm` (`exfiltration`,
/// `forged-approval`), `rule_line` (the deciding rule's line in the policy)
/// and `failure` (how an upstream failed: `connect`, `reset-before-headers`,
/// `timeout`...). Rows written before it get their alarm from the text they
/// were written with; their cause stays NULL.
const V2: &str = r#"
ALTER TABLE events ADD COLUMN cause TEXT;
ALTER TABLE events ADD COLUMN alarm TEXT;
ALTER TABLE events ADD COLUMN rule_line INTEGER;
ALTER TABLE events ADD COLUMN failure TEXT;
UPDATE events SET alarm = 'exfiltration'
    WHERE instr(lower(reason), 'credential exfiltration attempt') > 0;
CREATE INDEX events_alarm ON events(alarm) WHERE alarm IS NOT NULL;

DROP VIEW audit_log;
CREATE VIEW audit_log AS
SELECT
    e.id              AS event_id,
    e.run_id          AS agent_run_id,
    r.name            AS agent_name,
    e.at              AS called_at,
    e.layer           AS layer,
    e.verdict         AS policy_verdict,
    e.vendor          AS vendor,
    CASE
        WHEN e.method IS NOT NULL AND e.path IS NOT NULL THEN e.method || ' ' || e.path
        WHEN e.host IS NOT NULL AND e.port IS NOT NULL AND instr(e.host, ':') > 0
            THEN '[' || e.host || ']:' || e.port
        WHEN e.host IS NOT NULL AND e.port IS NOT NULL THEN e.host || ':' || e.port
        ELSE e.host
    END               AS endpoint,
    e.host            AS host,
    e.port            AS port,
    e.method          AS method,
    e.path            AS path,
    e.query_redacted  AS query_redacted,
    e.rule            AS policy_rule,
    e.reason          AS reason,
    e.status          AS status_code,
    e.bytes_up        AS bytes_up,
    e.bytes_down      AS bytes_down,
    e.latency_ms      AS latency_ms,
    e.cost_usd        AS cost_usd,
    e.reserved_usd    AS reserved_usd,
    e.vendor_txn_id   AS vendor_txn_id,
    e.secrets         AS injected_secrets,
    e.approver        AS approver,
    e.decided_ms      AS decided_ms,
    e.pid             AS pid,
    e.comm            AS comm,
    e.cause           AS cause,
    e.alarm           AS alarm,
    e.rule_line       AS policy_rule_line,
    e.failure         AS failure,
    r.policy_path     AS policy_path,
    r.policy_sha256   AS policy_sha256,
    r.invoking_user   AS invoking_user,
    r.command         AS command
FROM events e
LEFT JOIN runs r ON r.id = e.run_id;
"#;

/// V3: a run's `label` (the orchestrator's name for it: `enforcer exec
/// --label`, `launch --label`, or the systemd unit's invocation id) and the
/// systemd `unit` it serves. `audit_log.agent_run_id` is the label when
/// there is one and enforcer's run id otherwise; `enforcer_run_id` is always
/// enforcer's. Labels need not be unique (a unit restarted under the same
/// label is several runs).
const V3: &str = r#"
ALTER TABLE runs ADD COLUMN label TEXT;
ALTER TABLE runs ADD COLUMN unit TEXT;
CREATE INDEX runs_label ON runs(label) WHERE label IS NOT NULL;

DROP VIEW audit_log;
CREATE VIEW audit_log AS
SELECT
    e.id              AS event_id,
    COALESCE(r.label, e.run_id) AS agent_run_id,
    e.run_id          AS enforcer_run_id,
    r.label           AS label,
    r.unit            AS unit,
    r.name            AS agent_name,
    e.at              AS called_at,
    e.layer           AS layer,
    e.verdict         AS policy_verdict,
    e.vendor          AS vendor,
    CASE
        WHEN e.method IS NOT NULL AND e.path IS NOT NULL THEN e.method || ' ' || e.path
        WHEN e.host IS NOT NULL AND e.port IS NOT NULL AND instr(e.host, ':') > 0
            THEN '[' || e.host || ']:' || e.port
        WHEN e.host IS NOT NULL AND e.port IS NOT NULL THEN e.host || ':' || e.port
        ELSE e.host
    END               AS endpoint,
    e.host            AS host,
    e.port            AS port,
    e.method          AS method,
    e.path            AS path,
    e.query_redacted  AS query_redacted,
    e.rule            AS policy_rule,
    e.reason          AS reason,
    e.status          AS status_code,
    e.bytes_up        AS bytes_up,
    e.bytes_down      AS bytes_down,
    e.latency_ms      AS latency_ms,
    e.cost_usd        AS cost_usd,
    e.reserved_usd    AS reserved_usd,
    e.vendor_txn_id   AS vendor_txn_id,
    e.secrets         AS injected_secrets,
    e.approver        AS approver,
    e.decided_ms      AS decided_ms,
    e.pid             AS pid,
    e.comm            AS comm,
    e.cause           AS cause,
    e.alarm           AS alarm,
    e.rule_line       AS policy_rule_line,
    e.failure         AS failure,
    r.policy_path     AS policy_path,
    r.policy_sha256   AS policy_sha256,
    r.invoking_user   AS invoking_user,
    r.command         AS command
FROM events e
LEFT JOIN runs r ON r.id = e.run_id;
"#;

/// Brings the database to [`SCHEMA_VERSION`] and proves it can be written:
/// one IMMEDIATE transaction that also stamps `meta.last_open`, so a
/// read-only file, a full disk or a held lock fails here, at open.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), AuditError> {
    let e = |e: rusqlite::Error| AuditError::sqlite(path, &e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(e)?;
    let app_id: i64 = tx
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(e)?;
    check_identity(&tx, path, version, app_id)?;
    let done = usize::try_from(version).unwrap_or(0);
    for migration in MIGRATIONS.iter().skip(done) {
        tx.execute_batch(migration).map_err(e)?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(e)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(e)?;
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_by', ?1)",
            [concat!("enforcer ", env!("CARGO_PKG_VERSION"))],
        )
        .map_err(e)?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('last_open', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [clock::now_text()],
    )
    .map_err(e)?;
    tx.commit().map_err(e)
}

/// Refuses databases that are not ours (another application's, or one
/// written by a newer enforcer) before anything is written to them.
pub(crate) fn check_identity(
    conn: &Connection,
    path: &Path,
    version: i64,
    app_id: i64,
) -> Result<(), AuditError> {
    let not_ours = |detail: String| AuditError::NotAuditDb {
        path: path.to_path_buf(),
        detail,
    };
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(not_ours(format!("its application_id is {app_id:#x}")));
    }
    if version < 0 {
        return Err(not_ours(format!("its user_version is {version}")));
    }
    if version > SCHEMA_VERSION {
        return Err(AuditError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    if version == 0 {
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(|e| AuditError::sqlite(path, &e))?;
        if objects > 0 {
            return Err(not_ours(format!(
                "it already holds {objects} tables or indexes and no audit schema"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testutil::TempDir;

    #[test]
    fn migrations_apply_once_and_are_idempotent() {
        let dir = TempDir::new("schema");
        let path = dir.path().join("a.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        migrate(&mut conn, &path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name IN ('runs', 'events', 'audit_log', 'meta')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 4);
    }

    #[test]
    fn foreign_and_newer_databases_are_left_alone() {
        let dir = TempDir::new("schema-foreign");
        let path = dir.path().join("other.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE precious (x)").unwrap();
        let e = migrate(&mut conn, &path).unwrap_err();
        assert!(matches!(e, AuditError::NotAuditDb { .. }), "{e}");

        let path2 = dir.path().join("newer.db");
        let mut conn = Connection::open(&path2).unwrap();
        migrate(&mut conn, &path2).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let e = migrate(&mut conn, &path2).unwrap_err();
        assert!(matches!(e, AuditError::TooNew { .. }), "{e}");
        assert!(e.to_string().contains("Upgrade enforcer"), "{e}");
    }
}
