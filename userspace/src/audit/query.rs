//! Reading the audit log back for `enforcer audit`: runs and events with
//! their filters. Values are read leniently, so a row edited by hand with
//! `sqlite3` shows up as best it can rather than failing the listing.

use std::time::SystemTime;

use rusqlite::{
    Row,
    types::{Value, ValueRef},
};
use serde::Serialize;

use super::{AuditError, AuditStore, clock, report, vendor};
use crate::decision::{Layer, Verdict};

/// Which runs to list: started at or after `since`, the most recent `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub since: Option<SystemTime>,
    pub limit: Option<usize>,
}

/// Which events to show. `host` matches exactly (case-insensitively), or
/// every subdomain with a leading `*.` (`*.stripe.com`). With `limit`, the
/// most recent events are kept; rows always come oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub run_id: Option<String>,
    pub since: Option<SystemTime>,
    pub verdict: Option<Verdict>,
    pub host: Option<String>,
    pub layer: Option<Layer>,
    pub limit: Option<usize>,
}

/// A run, with counts of its decisions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub name: String,
    pub policy_path: String,
    pub policy_sha256: String,
    pub invoking_user: String,
    pub uid: Option<u32>,
    pub command: String,
    pub cgroup: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub exit_code: Option<i32>,
    pub ttl_seconds: Option<u64>,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    pub asked: u64,
    pub spend_usd: f64,
}

/// One decision, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub run_id: String,
    /// The run's name (`None` when the run row is missing).
    pub run_name: Option<String>,
    pub at: String,
    pub layer: String,
    pub verdict: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub query_redacted: bool,
    pub rule: Option<String>,
    pub reason: String,
    pub status: Option<u16>,
    pub bytes_up: Option<u64>,
    pub bytes_down: Option<u64>,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
    pub reserved_usd: Option<f64>,
    pub vendor: Option<String>,
    pub vendor_txn_id: Option<String>,
    pub secrets: Vec<String>,
    pub approver: Option<String>,
    pub decided_ms: Option<f64>,
    /// Why (see `decision::Cause`); `None` for rows older than schema 2.
    pub cause: Option<String>,
    /// `exfiltration` or `forged-approval` (see `decision::Alarm`).
    pub alarm: Option<String>,
    pub rule_line: Option<u64>,
    /// How the upstream failed (see `audit::Failure`).
    pub failure: Option<String>,
}

impl EventRow {
    /// Where the decision was headed (see the summary's "top refused").
    pub fn destination(&self) -> String {
        report::destination(
            Some(&self.layer),
            self.host.as_deref(),
            self.port.map(i64::from),
            self.method.as_deref(),
            self.path.as_deref(),
        )
    }
}

impl AuditStore {
    /// Runs, most recently started first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>, AuditError> {
        let fail = |e: rusqlite::Error| AuditError::sqlite(&self.path, &e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, name, policy_path, policy_sha256, invoking_user, uid, command,
                        cgroup, started_at, ended_at, exit_code, ttl_seconds, revoked_at,
                        revoked_by
                 FROM runs WHERE (?1 IS NULL OR started_at >= ?1)
                 ORDER BY started_at DESC, id DESC LIMIT ?2",
            )
            .map_err(fail)?;
        let since = filter.since.map(clock::to_text);
        let mut runs = stmt
            .query_map(rusqlite::params![since, limit(filter.limit)], |r| {
                Ok(RunRow {
                    run_id: text(r, 0),
                    name: text(r, 1),
                    policy_path: text(r, 2),
                    policy_sha256: text(r, 3),
                    invoking_user: text(r, 4),
                    uid: int(r, 5).and_then(|v| u32::try_from(v).ok()),
                    command: text(r, 6),
                    cgroup: text(r, 7),
                    started_at: text(r, 8),
                    ended_at: opt_text(r, 9),
                    exit_code: int(r, 10).and_then(|v| i32::try_from(v).ok()),
                    ttl_seconds: int(r, 11).and_then(|v| u64::try_from(v).ok()),
                    revoked_at: opt_text(r, 12),
                    revoked_by: opt_text(r, 13),
                    events: 0,
                    allowed: 0,
                    denied: 0,
                    asked: 0,
                    spend_usd: 0.0,
                })
            })
            .map_err(fail)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        let mut counts = self
            .conn
            .prepare_cached(
                "SELECT count(*), coalesce(sum(verdict = 'allow'), 0),
                        coalesce(sum(verdict = 'deny'), 0), coalesce(sum(verdict = 'ask' OR approver IS NOT NULL), 0),
                        total(cost_usd)
                 FROM events WHERE run_id = ?1",
            )
            .map_err(fail)?;
        for run in &mut runs {
            counts
                .query_row([&run.run_id], |r| {
                    run.events = count(r, 0);
                    run.allowed = count(r, 1);
                    run.denied = count(r, 2);
                    run.asked = count(r, 3);
                    run.spend_usd = real(r, 4).unwrap_or(0.0);
                    Ok(())
                })
                .map_err(fail)?;
        }
        Ok(runs)
    }

    /// Events matching `filter`, oldest first.
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<EventRow>, AuditError> {
        let fail = |e: rusqlite::Error| AuditError::sqlite(&self.path, &e);
        let mut sql = String::from(
            "SELECT e.id, e.run_id, r.name, e.at, e.layer, e.verdict, e.pid, e.comm, e.host,
                    e.port, e.method, e.path, e.query_redacted, e.rule, e.reason, e.status,
                    e.bytes_up, e.bytes_down, e.latency_ms, e.cost_usd, e.reserved_usd,
                    e.vendor, e.vendor_txn_id, e.secrets, e.approver, e.decided_ms, e.alarm,
                    e.cause, e.rule_line, e.failure
             FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE 1",
        );
        let mut args: Vec<Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(run) = &filter.run_id {
            arg(&mut sql, " AND e.run_id = ?", Value::Text(run.clone()));
        }
        if let Some(since) = filter.since {
            arg(
                &mut sql,
                " AND e.at >= ?",
                Value::Text(clock::to_text(since)),
            );
        }
        if let Some(v) = filter.verdict {
            // `ask`: every request a human was asked about, whatever they said.
            let clause = if v == Verdict::Ask {
                " AND (e.verdict = ? OR e.approver IS NOT NULL)"
            } else {
                " AND e.verdict = ?"
            };
            arg(&mut sql, clause, Value::Text(v.as_str().to_owned()));
        }
        if let Some(l) = filter.layer {
            arg(
                &mut sql,
                " AND e.layer = ?",
                Value::Text(l.as_str().to_owned()),
            );
        }
        if let Some(h) = &filter.host {
            match h.trim().strip_prefix("*.") {
                Some(suffix) => {
                    let suffix = vendor::normalize_host(suffix).unwrap_or_default();
                    arg(
                        &mut sql,
                        " AND (e.host = ? OR substr(e.host, -length(?) - 1) = '.' || ?)",
                        Value::Text(suffix),
                    );
                }
                None => {
                    let host = vendor::normalize_host(h).unwrap_or_default();
                    arg(&mut sql, " AND e.host = ?", Value::Text(host));
                }
            }
        }
        arg(
            &mut sql,
            " ORDER BY e.at DESC, e.id DESC LIMIT ?",
            Value::Integer(limit(filter.limit)),
        );
        let mut stmt = self.conn.prepare(&sql).map_err(fail)?;
        let mut rows = stmt
            .query_map(rusqlite::params_from_iter(args), event_row)
            .map_err(fail)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        rows.reverse();
        Ok(rows)
    }
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    let secrets = opt_text(r, 23)
        .map(|s| serde_json::from_str::<Vec<String>>(&s).unwrap_or_else(|_| vec![s]))
        .unwrap_or_default();
    Ok(EventRow {
        id: int(r, 0).unwrap_or(0),
        run_id: text(r, 1),
        run_name: opt_text(r, 2),
        at: text(r, 3),
        layer: text(r, 4),
        verdict: text(r, 5),
        pid: int(r, 6).and_then(|v| u32::try_from(v).ok()),
        comm: opt_text(r, 7),
        host: opt_text(r, 8),
        port: int(r, 9).and_then(|v| u16::try_from(v).ok()),
        method: opt_text(r, 10),
        path: opt_text(r, 11),
        query_redacted: int(r, 12).is_some_and(|v| v != 0),
        rule: opt_text(r, 13),
        reason: text(r, 14),
        status: int(r, 15).and_then(|v| u16::try_from(v).ok()),
        bytes_up: int(r, 16).and_then(|v| u64::try_from(v).ok()),
        bytes_down: int(r, 17).and_then(|v| u64::try_from(v).ok()),
        latency_ms: real(r, 18),
        cost_usd: real(r, 19),
        reserved_usd: real(r, 20),
        vendor: opt_text(r, 21),
        vendor_txn_id: opt_text(r, 22),
        secrets,
        approver: opt_text(r, 24),
        decided_ms: real(r, 25),
        alarm: opt_text(r, 26),
        cause: opt_text(r, 27),
        rule_line: int(r, 28).and_then(|v| u64::try_from(v).ok()),
        failure: opt_text(r, 29),
    })
}

/// SQLite's `LIMIT`: -1 is no limit.
fn limit(l: Option<usize>) -> i64 {
    l.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

fn opt_text(r: &Row<'_>, i: usize) -> Option<String> {
    match r.get_ref(i).ok()? {
        ValueRef::Null => None,
        ValueRef::Integer(v) => Some(v.to_string()),
        ValueRef::Real(v) => Some(v.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

fn text(r: &Row<'_>, i: usize) -> String {
    opt_text(r, i).unwrap_or_default()
}

fn int(r: &Row<'_>, i: usize) -> Option<i64> {
    match r.get_ref(i).ok()? {
        ValueRef::Integer(v) => Some(v),
        ValueRef::Real(v) if v.is_finite() && v.fract() == 0.0 => Some(v as i64),
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        _ => None,
    }
}

fn real(r: &Row<'_>, i: usize) -> Option<f64> {
    match r.get_ref(i).ok()? {
        ValueRef::Integer(v) => Some(v as f64),
        ValueRef::Real(v) => Some(v),
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        _ => None,
    }
}

fn count(r: &Row<'_>, i: usize) -> u64 {
    int(r, i).and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}
