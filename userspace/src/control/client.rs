//! `enforcer status` and `enforcer revoke`: asking live runs over their
//! control sockets.

use std::{path::Path, time::Duration};

use super::protocol::{Request, Response};
use crate::runs::RunRecord;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "this command must run as root (it talks to runs over root-only control sockets): try sudo"
    )]
    NotRoot,
    #[error(
        "no live run is called {0} (a run id, a unit name, or label:LABEL; see `enforcer status`)"
    )]
    NoSuchRun(String),
    #[error("{who} names several live runs: {runs}; give a run id")]
    AmbiguousRun { who: String, runs: String },
    #[error("no live run has a waiting request {0} (see `enforcer approvals`)")]
    NoSuchRequest(u64),
    #[error("several live runs have a waiting request {id}: {runs}; add --run RUN_ID")]
    Ambiguous { id: u64, runs: String },
    #[error("run {run}: {message}")]
    Refused { run: String, message: String },
    #[error("cannot reach run {run}: {source}")]
    Io { run: String, source: std::io::Error },
    #[error("run {run} answered something unexpected: {detail}")]
    Protocol { run: String, detail: String },
}

/// Sends one request to the run whose socket is `path`.
pub fn ask(path: &Path, run: &str, req: &Request) -> Result<Response, ControlError> {
    use crate::jsonline::LineError;
    if !path.exists() {
        return Err(ControlError::NoSuchRun(run.to_string()));
    }
    crate::jsonline::exchange(path, req, Some(Duration::from_secs(5))).map_err(|e| match e {
        LineError::Connect(source) | LineError::Io(source) => ControlError::Io {
            run: run.to_string(),
            source,
        },
        other => ControlError::Protocol {
            run: run.to_string(),
            detail: other.to_string(),
        },
    })
}

/// The live run `who` names: a run id (exactly the generated shape), a
/// label as `label:LABEL`, or else a unit name (with or without
/// `.service`). A label is chosen by the unit itself, so it is never
/// matched unless asked for by that prefix: it cannot pass for a run id or
/// another unit's name. Several matches are refused, never guessed.
pub fn resolve(who: &str) -> Result<RunRecord, ControlError> {
    let live: Vec<RunRecord> = RunRecord::all(Path::new(crate::runs::RUNS_DIR))
        .into_iter()
        .filter(RunRecord::enforcer_alive)
        .collect();
    pick(&live, who)
}

/// [`resolve`] among `live`.
fn pick(live: &[RunRecord], who: &str) -> Result<RunRecord, ControlError> {
    let matches = |r: &&RunRecord| {
        if crate::runid::is_generated(who) {
            r.run_id == who
        } else if let Some(label) = who.strip_prefix("label:") {
            r.label.as_deref() == Some(label)
        } else {
            r.unit.as_deref().is_some_and(|u| {
                u == who || (!who.ends_with(".service") && u.strip_suffix(".service") == Some(who))
            })
        }
    };
    let mut found: Vec<&RunRecord> = live.iter().filter(matches).collect();
    match found.len() {
        0 => Err(ControlError::NoSuchRun(who.to_string())),
        1 => Ok(found.remove(0).clone()),
        _ => Err(ControlError::AmbiguousRun {
            who: who.to_string(),
            runs: found
                .iter()
                .map(|r| r.run_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Control sockets are root's.
pub fn require_root() -> Result<(), ControlError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(ControlError::NotRoot)
    }
}

/// `RUN (UNIT)` for messages about a run.
pub fn describe(r: &RunRecord) -> String {
    match &r.unit {
        Some(u) => format!("{} ({u})", r.run_id),
        None => r.run_id.clone(),
    }
}

/// `enforcer revoke RUN`: revokes and reports how long it took.
pub fn revoke(who: &str, json: bool) -> Result<(), ControlError> {
    require_root()?;
    let record = resolve(who)?;
    let run_id = record.run_id.as_str();
    let path = super::socket_path(Path::new(crate::runs::RUNS_DIR), run_id);
    let started = std::time::Instant::now();
    let already = match ask(&path, run_id, &Request::Revoke)? {
        Response::Revoked { already, .. } => already,
        other => {
            return Err(ControlError::Protocol {
                run: run_id.to_string(),
                detail: format!("{other:?}"),
            });
        }
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if json {
        crate::outln!(
            "{}",
            serde_json::json!({
                "run_id": run_id,
                "unit": record.unit,
                "label": record.label,
                "revoked": true,
                "already": already,
                "ms": ms,
            })
        );
    } else if already {
        crate::outln!(
            "run {}: credentials were already revoked",
            describe(&record)
        );
    } else {
        crate::outln!(
            "run {}: credentials revoked ({ms:.1} ms); no further request gets a real key",
            describe(&record)
        );
    }
    Ok(())
}

/// `enforcer reset RUN [KEY]`: clears a tripped loop breaker.
pub fn reset(who: &str, key: Option<&str>, json: bool) -> Result<(), ControlError> {
    require_root()?;
    let record = resolve(who)?;
    let run_id = record.run_id.as_str();
    let path = super::socket_path(Path::new(crate::runs::RUNS_DIR), run_id);
    let req = Request::Reset {
        key: key.map(String::from),
    };
    let cleared = match ask(&path, run_id, &req)? {
        Response::Reset { cleared } => cleared,
        Response::Error { message } => {
            return Err(ControlError::Refused {
                run: run_id.to_string(),
                message,
            });
        }
        other => {
            return Err(ControlError::Protocol {
                run: run_id.to_string(),
                detail: format!("{other:?}"),
            });
        }
    };
    if json {
        crate::outln!(
            "{}",
            serde_json::json!({ "run_id": run_id, "unit": record.unit, "cleared": cleared })
        );
    } else if cleared == 0 {
        crate::outln!(
            "run {}: no tripped loop breaker matched; nothing to reset",
            describe(&record)
        );
    } else {
        crate::outln!(
            "run {}: loop breaker reset ({cleared} call(s) may go out again)",
            describe(&record)
        );
    }
    Ok(())
}

/// `enforcer status`: every live run, as a table or JSON lines.
pub fn status(json: bool) -> Result<(), ControlError> {
    require_root()?;
    let runs_dir = Path::new(crate::runs::RUNS_DIR);
    let mut rows = Vec::new();
    for record in RunRecord::all(runs_dir) {
        if !record.enforcer_alive() {
            continue;
        }
        let path = super::socket_path(runs_dir, &record.run_id);
        if let Ok(Response::Status(mut s)) = ask(&path, &record.run_id, &Request::Status) {
            s.unit = record.unit;
            s.label = record.label;
            rows.push(*s);
        }
    }
    rows.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    if json {
        for r in &rows {
            crate::outln!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return Ok(());
    }
    if rows.is_empty() {
        crate::outln!("no live runs");
        return Ok(());
    }
    crate::outln!(
        "{:<24} {:<24} {:<16} {:>8} {:<9} {:>9} {:>8} {:>8} {:>6} {:>10}  SECRETS",
        "RUN",
        "UNIT",
        "NAME",
        "AGENT",
        "CREDS",
        "TTL LEFT",
        "ALLOWED",
        "REFUSED",
        "ASKED",
        "SPENT"
    );
    for r in rows {
        let ttl = r.ttl_left_secs.map_or_else(
            || String::from("-"),
            |s| format!("{}m{:02}s", s / 60, s % 60),
        );
        crate::outln!(
            "{:<24} {:<24} {:<16} {:>8} {:<9} {:>9} {:>8} {:>8} {:>6} {:>10}  {}",
            r.run_id,
            r.unit.as_deref().unwrap_or("-"),
            r.name,
            r.agent_pid
                .map_or_else(|| String::from("-"), |p| p.to_string()),
            r.credentials,
            ttl,
            r.allowed,
            r.denied,
            r.asked,
            format!("${:.2}", r.spent_usd),
            r.secrets.join(",")
        );
        if let Some(l) = &r.label {
            crate::outln!("    label: {}", crate::approval::printable(l));
        }
        for c in &r.caps {
            crate::outln!(
                "    cap {}: ${:.2} of ${:.2} spent, ${:.2} in flight",
                c.scope,
                c.spent_usd,
                c.cap_usd,
                c.in_flight_usd
            );
        }
        if r.pending_approvals > 0 {
            crate::outln!(
                "    {} request(s) waiting for approval (sudo enforcer approvals)",
                r.pending_approvals
            );
        }
        for t in &r.tripped {
            crate::outln!(
                "    loop breaker tripped: {t}  (sudo enforcer reset {} KEY)",
                r.run_id
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run_id: &str, unit: Option<&str>, label: Option<&str>) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            enforcer_pid: 1,
            cgroup: "/sys/fs/cgroup/x".into(),
            pins: "".into(),
            policy: "p.toml".into(),
            pinned: true,
            started_unix: 0,
            unit: unit.map(String::from),
            label: label.map(String::from),
        }
    }

    #[test]
    fn a_label_never_passes_for_a_run_id_or_a_unit_name() {
        let live = [
            record(
                "20261130-120000-aaaaaa",
                Some("billing-agent.service"),
                None,
            ),
            // Units that chose their labels to confuse the operator: the
            // id of a run that has ended, a unit that is not running.
            record(
                "20261130-120000-bbbbbb",
                Some("evil.service"),
                Some("20261130-120000-ffffff"),
            ),
            record(
                "20261130-120000-cccccc",
                Some("other.service"),
                Some("b-9.service"),
            ),
            record("20261130-120000-dddddd", None, Some("job/1")),
            record("20261130-120000-eeeeee", None, Some("job/1")),
        ];
        let id = |who: &str| pick(&live, who).map(|r| r.run_id);
        assert_eq!(
            id("20261130-120000-aaaaaa").unwrap(),
            "20261130-120000-aaaaaa"
        );
        assert_eq!(id("billing-agent").unwrap(), "20261130-120000-aaaaaa");
        assert_eq!(
            id("billing-agent.service").unwrap(),
            "20261130-120000-aaaaaa"
        );
        assert!(matches!(
            id("20261130-120000-ffffff"),
            Err(ControlError::NoSuchRun(_))
        ));
        assert!(matches!(id("b-9.service"), Err(ControlError::NoSuchRun(_))));
        assert!(matches!(id("b-9"), Err(ControlError::NoSuchRun(_))));
        assert_eq!(id("label:b-9.service").unwrap(), "20261130-120000-cccccc");
        assert!(matches!(
            id("label:job/1"),
            Err(ControlError::AmbiguousRun { .. })
        ));
        assert!(matches!(id("job/1"), Err(ControlError::NoSuchRun(_))));
        let doubled = [record(
            "20261130-120000-aaaaaa",
            Some("a-3.service.service"),
            None,
        )];
        assert!(
            matches!(
                pick(&doubled, "a-3.service"),
                Err(ControlError::NoSuchRun(_))
            ),
            "a-3.service is not a-3.service.service"
        );
    }
}
