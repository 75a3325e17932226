//! `enforcer policy check --json | suggest | test`: the policy commands
//! that read files or the audit log and print for scripts and CI.

use std::path::Path;

use serde::Serialize;

use crate::{
    audit::{AuditError, AuditStore, EventFilter, EventRow, RunFilter},
    logging,
    policy::{Policy, PolicyError, replay, suggest},
};

#[derive(Debug, thiserror::Error)]
pub enum PolicyCliError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("no run {0} in the audit database (`enforcer audit runs --audit-db ...` lists them)")]
    UnknownRun(String),
    #[error("the audit database holds no runs to replay")]
    NoRuns,
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Serialize)]
struct CheckJson<'a> {
    ok: bool,
    file: String,
    errors: Vec<ProblemJson<'a>>,
    warnings: Vec<String>,
    summary: Option<String>,
}

#[derive(Serialize)]
struct ProblemJson<'a> {
    line: Option<usize>,
    column: Option<usize>,
    message: &'a str,
}

/// `policy check [--json]`; returns the exit status.
pub fn check(file: &Path, json: bool) -> i32 {
    let loaded = Policy::load(file);
    if !json {
        return match loaded {
            Ok(p) => {
                crate::outln!("{}", p.summary());
                for w in p.warnings() {
                    logging::verbatim(logging::Level::Warn, format!("warning: {w}"));
                }
                0
            }
            Err(e) => {
                logging::verbatim(logging::Level::Error, &e);
                2
            }
        };
    }
    let (out, code) = match &loaded {
        Ok(p) => (
            CheckJson {
                ok: true,
                file: file.display().to_string(),
                errors: Vec::new(),
                warnings: p.warnings(),
                summary: Some(p.summary()),
            },
            0,
        ),
        Err(e) => (
            CheckJson {
                ok: false,
                file: file.display().to_string(),
                errors: e
                    .problems
                    .iter()
                    .map(|p| ProblemJson {
                        line: p.line,
                        column: p.column,
                        message: &p.message,
                    })
                    .collect(),
                warnings: Vec::new(),
                summary: None,
            },
            2,
        ),
    };
    crate::outln!("{}", serde_json::to_string(&out).unwrap_or_default());
    code
}

/// The recorded events of `runs` (every run when empty), oldest first.
fn events(db: &Path, runs: &[String]) -> Result<Vec<EventRow>, PolicyCliError> {
    let store = AuditStore::open_read_only(db)?;
    let known: Vec<String> = store
        .runs(&RunFilter::default())?
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    if known.is_empty() {
        return Err(PolicyCliError::NoRuns);
    }
    let mut out = Vec::new();
    if runs.is_empty() {
        return Ok(store.events(&EventFilter::default())?);
    }
    for run in runs {
        if !known.contains(run) {
            return Err(PolicyCliError::UnknownRun(run.clone()));
        }
        out.extend(store.events(&EventFilter {
            run_id: Some(run.clone()),
            ..EventFilter::default()
        })?);
    }
    Ok(out)
}

/// `policy suggest`: prints the suggested policy on stdout.
pub fn suggest(runs: &[String], db: &Path, name: Option<&str>) -> Result<(), PolicyCliError> {
    let events = events(db, runs)?;
    let recorded_name = events.iter().find_map(|e| e.run_name.clone());
    let text = suggest::suggest(&suggest::Recording {
        runs,
        name: name.or(recorded_name.as_deref()),
        events: &events,
    })?;
    crate::outln!("{}", text.trim_end());
    Ok(())
}

/// `policy test`: prints what would change; true when something would.
pub fn test(policy: &Path, db: &Path, runs: &[String]) -> Result<bool, PolicyCliError> {
    let policy = Policy::load(policy)?;
    let events = events(db, runs)?;
    let r = replay::replay(&policy, &events);
    crate::outln!(
        "policy test: {} against {}\n{r}",
        policy.source.display(),
        db.display()
    );
    Ok(r.changed())
}
