//! Rendering runs and events for `enforcer audit`: a human table, JSON lines
//! or CSV. Text the agent controls (hosts, paths, process names) cannot
//! smuggle terminal escapes into the operator's table.

use std::{io, str::FromStr};

use serde::Serialize;

use super::{AuditError, EventRow, RunRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    JsonLines,
    Csv,
}

impl FromStr for OutputFormat {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" | "text" => Ok(Self::Table),
            "jsonl" | "json" | "json-lines" | "ndjson" => Ok(Self::JsonLines),
            "csv" => Ok(Self::Csv),
            _ => Err(AuditError::InvalidFormat(s.to_owned())),
        }
    }
}

/// Widest cell of a table column (the last column is never cut).
const MAX_CELL: usize = 40;

pub fn write_runs(out: &mut impl io::Write, rows: &[RunRow], f: OutputFormat) -> io::Result<()> {
    match f {
        OutputFormat::JsonLines => json_lines(out, rows),
        OutputFormat::Csv => csv_out(out, &RUN_COLUMNS, rows.iter().map(run_fields)),
        OutputFormat::Table => table(
            out,
            &[
                "RUN",
                "NAME",
                "STARTED (UTC)",
                "ENDED",
                "EXIT",
                "ALLOW",
                "DENY",
                "ASK",
                "SPEND",
                "COMMAND",
            ],
            rows.iter().map(|r| {
                vec![
                    r.run_id.clone(),
                    r.name.clone(),
                    r.started_at.clone(),
                    r.ended_at.clone().unwrap_or_else(|| String::from("-")),
                    r.exit_code
                        .map_or_else(|| String::from("-"), |c| c.to_string()),
                    r.allowed.to_string(),
                    r.denied.to_string(),
                    r.asked.to_string(),
                    format!("${:.2}", r.spend_usd),
                    r.command.clone(),
                ]
            }),
        ),
    }
}

pub fn write_events(
    out: &mut impl io::Write,
    rows: &[EventRow],
    f: OutputFormat,
) -> io::Result<()> {
    match f {
        OutputFormat::JsonLines => json_lines(out, rows),
        OutputFormat::Csv => csv_out(out, &EVENT_COLUMNS, rows.iter().map(event_fields)),
        OutputFormat::Table => table(
            out,
            &[
                "TIME (UTC)",
                "LAYER",
                "VERDICT",
                "DESTINATION",
                "PROCESS",
                "STATUS",
                "COST",
                "RULE",
                "REASON",
            ],
            rows.iter().map(|e| {
                let process = match (&e.comm, e.pid) {
                    (Some(c), Some(p)) => format!("{c}[{p}]"),
                    (Some(c), None) => c.clone(),
                    (None, Some(p)) => p.to_string(),
                    (None, None) => String::from("-"),
                };
                let mut dest = e.destination();
                if e.query_redacted {
                    dest.push_str("?…");
                }
                vec![
                    e.at.clone(),
                    e.layer.clone(),
                    e.verdict.clone(),
                    dest,
                    process,
                    e.status
                        .map_or_else(|| String::from("-"), |s| s.to_string()),
                    e.cost_usd
                        .map_or_else(|| String::from("-"), |c| format!("${c:.2}")),
                    e.rule.clone().unwrap_or_else(|| String::from("-")),
                    e.reason.clone(),
                ]
            }),
        ),
    }
}

fn json_lines<T: Serialize>(out: &mut impl io::Write, rows: &[T]) -> io::Result<()> {
    for row in rows {
        serde_json::to_writer(&mut *out, row).map_err(io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

const RUN_COLUMNS: [&str; 19] = [
    "run_id",
    "name",
    "policy_path",
    "policy_sha256",
    "invoking_user",
    "uid",
    "command",
    "cgroup",
    "started_at",
    "ended_at",
    "exit_code",
    "ttl_seconds",
    "revoked_at",
    "revoked_by",
    "events",
    "allowed",
    "denied",
    "asked",
    "spend_usd",
];

fn run_fields(r: &RunRow) -> Vec<String> {
    vec![
        r.run_id.clone(),
        r.name.clone(),
        r.policy_path.clone(),
        r.policy_sha256.clone(),
        r.invoking_user.clone(),
        opt(r.uid),
        r.command.clone(),
        r.cgroup.clone(),
        r.started_at.clone(),
        opt(r.ended_at.as_ref()),
        opt(r.exit_code),
        opt(r.ttl_seconds),
        opt(r.revoked_at.as_ref()),
        opt(r.revoked_by.as_ref()),
        r.events.to_string(),
        r.allowed.to_string(),
        r.denied.to_string(),
        r.asked.to_string(),
        r.spend_usd.to_string(),
    ]
}

const EVENT_COLUMNS: [&str; 30] = [
    "id",
    "run_id",
    "run_name",
    "at",
    "layer",
    "verdict",
    "pid",
    "comm",
    "host",
    "port",
    "method",
    "path",
    "query_redacted",
    "rule",
    "reason",
    "status",
    "bytes_up",
    "bytes_down",
    "latency_ms",
    "cost_usd",
    "reserved_usd",
    "vendor",
    "vendor_txn_id",
    "secrets",
    "approver",
    "decided_ms",
    "alarm",
    "cause",
    "rule_line",
    "failure",
];

fn event_fields(e: &EventRow) -> Vec<String> {
    vec![
        e.id.to_string(),
        e.run_id.clone(),
        opt(e.run_name.as_ref()),
        e.at.clone(),
        e.layer.clone(),
        e.verdict.clone(),
        opt(e.pid),
        opt(e.comm.as_ref()),
        opt(e.host.as_ref()),
        opt(e.port),
        opt(e.method.as_ref()),
        opt(e.path.as_ref()),
        u8::from(e.query_redacted).to_string(),
        opt(e.rule.as_ref()),
        e.reason.clone(),
        opt(e.status),
        opt(e.bytes_up),
        opt(e.bytes_down),
        opt(e.latency_ms),
        opt(e.cost_usd),
        opt(e.reserved_usd),
        opt(e.vendor.as_ref()),
        opt(e.vendor_txn_id.as_ref()),
        // Names separated by `;` (a JSON array in the database).
        e.secrets.join(";"),
        opt(e.approver.as_ref()),
        opt(e.decided_ms),
        opt(e.alarm.as_ref()),
        opt(e.cause.as_ref()),
        opt(e.rule_line),
        opt(e.failure.as_ref()),
    ]
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn csv_out(
    out: &mut impl io::Write,
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
) -> io::Result<()> {
    let mut w = csv::Writer::from_writer(&mut *out);
    w.write_record(header)?;
    for row in rows {
        w.write_record(&row)?;
    }
    w.flush()
}

/// A table with columns padded to their widest cell (cut at [`MAX_CELL`]
/// characters, except the last column, which is never padded).
fn table(
    out: &mut impl io::Write,
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
) -> io::Result<()> {
    let last = header.len().saturating_sub(1);
    let cells: Vec<Vec<String>> = rows
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(i, c)| {
                    let c = clean(c);
                    if i == last { c } else { cut(&c, MAX_CELL) }
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn io::Write, row: &[&str]| -> io::Result<()> {
        let mut s = String::new();
        for (i, c) in row.iter().enumerate() {
            if i == last {
                s.push_str(c);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0);
                s.push_str(c);
                s.extend(std::iter::repeat_n(
                    ' ',
                    pad.saturating_sub(c.chars().count()) + 2,
                ));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, header)?;
    for row in &cells {
        let refs: Vec<&str> = row.iter().map(String::as_str).collect();
        line(out, &refs)?;
    }
    out.flush()
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut c: String = s.chars().take(max.saturating_sub(1)).collect();
    c.push('…');
    c
}

/// Text safe to print on a terminal: control characters (escape sequences,
/// newlines, tabs) and bidirectional overrides become `?`.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi { '?' } else { c }
        })
        .collect()
}
