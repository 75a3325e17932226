//! The end-of-run summary, computed from the database: the human lines on
//! stderr and the machine-readable `--report FILE.json`.

use std::{collections::HashMap, fmt, path::Path};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Serialize, Serializer, ser::SerializeSeq as _};

use super::{AuditError, AuditStore, format::clean};
use crate::decision::tally::Counts;

/// How many refused destinations the summary names.
pub const TOP_REFUSED: usize = 5;

/// What a run did, as the audit database has it. Its JSON form is the
/// `--report FILE.json` content; its `Display` is the summary on stderr.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub name: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub exit_code: Option<i32>,
    /// Requests, connections, names and kernel refusals, counted apart.
    pub counts: Counts,
    /// Most refused destinations (`host:port`, `METHOD host:port/path` for
    /// requests, the name for DNS) with their counts, most frequent first.
    #[serde(serialize_with = "destinations")]
    pub top_refused: Vec<(String, u64)>,
    pub spend_usd: f64,
    pub db_path: String,
    /// When the audit log failed during the run (RFC 3339), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_failed_at: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_error: Option<String>,
}

fn destinations<S: Serializer>(v: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        destination: &'a str,
        count: u64,
    }
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for (destination, count) in v {
        seq.serialize_element(&Entry {
            destination,
            count: *count,
        })?;
    }
    seq.end()
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        if c.exfiltration_attempts > 0 {
            writeln!(
                f,
                "enforcer: !!! WARNING: {} CREDENTIAL EXFILTRATION ATTEMPT{} in this run: the agent tried to send a secret (its placeholder) where that secret does not belong. Treat the agent as compromised. !!!",
                c.exfiltration_attempts,
                plural_caps(c.exfiltration_attempts)
            )?;
        }
        if c.forged_approvals > 0 {
            writeln!(
                f,
                "enforcer: !!! WARNING: {} FORGED APPROVAL ATTEMPT{} in this run: something without the right to tried to answer an approval or control the run. Treat the agent as compromised. !!!",
                c.forged_approvals,
                plural_caps(c.forged_approvals)
            )?;
        }
        let name = clean(&self.name);
        let run = clean(&self.run_id);
        match self.exit_code {
            Some(code) => writeln!(f, "enforcer: run {run} ({name}) exited with code {code}")?,
            None => writeln!(f, "enforcer: run {run} ({name}) has not ended")?,
        }
        let asked = if c.requests_asked > 0 {
            format!(" ({} asked a human)", c.requests_asked)
        } else {
            String::new()
        };
        writeln!(
            f,
            "enforcer:   requests: {} allowed, {} refused{asked}",
            c.requests_allowed, c.requests_refused
        )?;
        if c.connections_allowed + c.connections_refused > 0 {
            writeln!(
                f,
                "enforcer:   connections: {} allowed, {} refused",
                c.connections_allowed, c.connections_refused
            )?;
        }
        if c.names_refused + c.kernel_refused > 0 {
            writeln!(
                f,
                "enforcer:   also refused: {} DNS name{}, {} socket operation{} in the kernel",
                c.names_refused,
                plural(c.names_refused),
                c.kernel_refused,
                plural(c.kernel_refused)
            )?;
        }
        if !self.top_refused.is_empty() {
            let list: Vec<String> = self
                .top_refused
                .iter()
                .map(|(d, n)| format!("{} ({n})", clean(d)))
                .collect();
            writeln!(f, "enforcer:   top refused: {}", list.join(", "))?;
        }
        writeln!(f, "enforcer:   spend: ${:.2}", self.spend_usd)?;
        write!(
            f,
            "enforcer:   audit log: {} (run {run})",
            clean(&self.db_path)
        )
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn plural_caps(n: u64) -> &'static str {
    if n == 1 { "" } else { "S" }
}

impl RunSummary {
    /// The summary as one JSON line for `--log-json` (`event: "summary"`).
    pub fn json_line(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("ts".into(), crate::logging::now_rfc3339().into());
            obj.insert("level".into(), "info".into());
            obj.insert("event".into(), "summary".into());
        }
        v.to_string()
    }
}

impl AuditStore {
    /// The summary of run `run_id`.
    pub fn summary(&self, run_id: &str) -> Result<RunSummary, AuditError> {
        summarize(&self.conn, run_id, &self.path)
    }
}

pub(crate) fn summarize(
    conn: &Connection,
    run_id: &str,
    path: &Path,
) -> Result<RunSummary, AuditError> {
    let fail = |e: rusqlite::Error| AuditError::sqlite(path, &e);
    let run = conn
        .query_row(
            "SELECT name, started_at, ended_at, exit_code FROM runs WHERE id = ?1",
            [run_id],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0).unwrap_or_default(),
                    r.get::<_, Option<String>>(1).unwrap_or_default(),
                    r.get::<_, Option<String>>(2).unwrap_or_default(),
                    r.get::<_, Option<i64>>(3).unwrap_or_default(),
                ))
            },
        )
        .optional()
        .map_err(fail)?;
    let Some((name, started_at, ended_at, exit_code)) = run else {
        return Err(AuditError::UnknownRun(run_id.to_owned()));
    };
    let (counts, spend) = conn
        .query_row(
            "SELECT coalesce(sum(layer = 'request' AND verdict = 'allow'), 0),
                    coalesce(sum(layer = 'request' AND verdict = 'deny'), 0),
                    coalesce(sum(approver IS NOT NULL OR verdict = 'ask'), 0),
                    coalesce(sum(layer = 'connection' AND verdict = 'allow'), 0),
                    coalesce(sum(layer = 'connection' AND verdict = 'deny'), 0),
                    coalesce(sum(layer = 'dns' AND verdict = 'deny'), 0),
                    coalesce(sum(layer = 'kernel' AND verdict = 'deny'
                                 AND coalesce(cause, '') <> 'benign-probe'), 0),
                    coalesce(sum(cause = 'benign-probe'), 0),
                    coalesce(sum(alarm = 'exfiltration'), 0),
                    coalesce(sum(alarm = 'forged-approval'), 0),
                    total(cost_usd)
             FROM events WHERE run_id = ?1",
            params![run_id],
            |r| {
                let n = |i: usize| r.get::<_, i64>(i).map(count);
                Ok((
                    Counts {
                        requests_allowed: n(0)?,
                        requests_refused: n(1)?,
                        requests_asked: n(2)?,
                        connections_allowed: n(3)?,
                        connections_refused: n(4)?,
                        names_refused: n(5)?,
                        kernel_refused: n(6)?,
                        benign_probes: n(7)?,
                        exfiltration_attempts: n(8)?,
                        forged_approvals: n(9)?,
                    },
                    r.get::<_, f64>(10)?,
                ))
            },
        )
        .map_err(fail)?;
    Ok(RunSummary {
        run_id: run_id.to_owned(),
        name: name.unwrap_or_default(),
        started_at,
        ended_at,
        exit_code: exit_code.and_then(|c| i32::try_from(c).ok()),
        counts,
        top_refused: top_refused(conn, run_id).map_err(fail)?,
        spend_usd: spend,
        db_path: path.display().to_string(),
        audit_failed_at: None,
        audit_error: None,
    })
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn top_refused(conn: &Connection, run_id: &str) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT layer, host, port, method, path, count(*) FROM events
         WHERE run_id = ?1 AND verdict = 'deny' AND layer <> 'control'
               AND coalesce(cause, '') <> 'benign-probe'
         GROUP BY layer, host, port, method, path",
    )?;
    let mut merged: HashMap<String, u64> = HashMap::new();
    let rows = stmt.query_map([run_id], |r| {
        Ok((
            destination(
                r.get::<_, Option<String>>(0).ok().flatten().as_deref(),
                r.get::<_, Option<String>>(1).ok().flatten().as_deref(),
                r.get::<_, Option<i64>>(2).ok().flatten(),
                r.get::<_, Option<String>>(3).ok().flatten().as_deref(),
                r.get::<_, Option<String>>(4).ok().flatten().as_deref(),
            ),
            r.get::<_, i64>(5)?,
        ))
    })?;
    for row in rows {
        let (dest, n) = row?;
        *merged.entry(dest).or_default() += count(n);
    }
    let mut v: Vec<_> = merged.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(TOP_REFUSED);
    Ok(v)
}

/// Where a decision was headed, by layer: `host:port` (`[v6]:port`),
/// `METHOD host:port/path` for requests, the bare name for DNS.
pub fn destination(
    layer: Option<&str>,
    host: Option<&str>,
    port: Option<i64>,
    method: Option<&str>,
    path: Option<&str>,
) -> String {
    let base = match (host, port) {
        (Some(h), _) if layer == Some("dns") => h.to_owned(),
        (Some(h), Some(p)) if h.contains(':') => format!("[{h}]:{p}"),
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, Some(p)) => format!("port {p}"),
        (None, None) => String::from("-"),
    };
    match (layer, method, path) {
        (Some("request"), Some(m), Some(p)) => format!("{m} {base}{p}"),
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunSummary {
        RunSummary {
            run_id: String::from("r1"),
            name: String::from("billing-agent"),
            started_at: Some(String::from("2026-11-22 10:00:00.000")),
            ended_at: Some(String::from("2026-11-22 10:05:00.000")),
            exit_code: Some(0),
            counts: Counts {
                requests_allowed: 12,
                requests_refused: 3,
                requests_asked: 1,
                connections_allowed: 2,
                kernel_refused: 4,
                benign_probes: 9,
                ..Counts::default()
            },
            top_refused: vec![(String::from("evil.test:443"), 2)],
            spend_usd: 12.5,
            db_path: String::from("/var/lib/enforcer/audit.db"),
            audit_failed_at: None,
            audit_error: None,
        }
    }

    #[test]
    fn human_summary_names_counts_spend_and_log() {
        let s = sample().to_string();
        assert!(
            s.contains("requests: 12 allowed, 3 refused (1 asked a human)"),
            "{s}"
        );
        assert!(s.contains("connections: 2 allowed, 0 refused"), "{s}");
        assert!(
            s.contains("also refused: 0 DNS names, 4 socket operations in the kernel"),
            "{s}"
        );
        assert!(!s.contains('9'), "benign probes are not printed: {s}");
        assert!(s.contains("top refused: evil.test:443 (2)"), "{s}");
        assert!(s.contains("spend: $12.50"), "{s}");
        assert!(s.contains("/var/lib/enforcer/audit.db"), "{s}");
        assert!(!s.contains("EXFILTRATION"), "{s}");
    }

    #[test]
    fn exfiltration_comes_first_and_loud() {
        let mut sum = sample();
        sum.counts.exfiltration_attempts = 2;
        sum.top_refused = vec![(String::from("evil\x1b[2J.test:443"), 2)];
        let s = sum.to_string();
        let first = s.lines().next().unwrap_or_default();
        assert!(first.contains("2 CREDENTIAL EXFILTRATION ATTEMPTS"), "{s}");
        assert!(
            !s.contains('\x1b'),
            "terminal escapes are neutralised: {s:?}"
        );
    }

    #[test]
    fn json_report_has_named_destinations() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["counts"]["requests_allowed"], 12);
        assert_eq!(v["counts"]["benign_probes"], 9);
        assert_eq!(v["top_refused"][0]["destination"], "evil.test:443");
        assert_eq!(v["top_refused"][0]["count"], 2);
        assert_eq!(v["exit_code"], 0);
        assert_eq!(v["db_path"], "/var/lib/enforcer/audit.db");
    }

    #[test]
    fn destinations_by_layer() {
        assert_eq!(
            destination(Some("kernel"), Some("10.0.0.1"), Some(53), None, None),
            "10.0.0.1:53"
        );
        assert_eq!(
            destination(Some("connection"), Some("fd00::2"), Some(443), None, None),
            "[fd00::2]:443"
        );
        assert_eq!(
            destination(Some("dns"), Some("evil.test"), Some(53), None, None),
            "evil.test"
        );
        assert_eq!(
            destination(
                Some("request"),
                Some("api.stripe.com"),
                Some(443),
                Some("POST"),
                Some("/v1/refunds")
            ),
            "POST api.stripe.com:443/v1/refunds"
        );
        assert_eq!(destination(None, None, None, None, None), "-");
    }
}
