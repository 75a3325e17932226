//! `enforcer audit`: the audit log on the command line (runs, events,
//! pruning), as a table, JSON lines or CSV.

use std::io::Write as _;

use crate::{
    audit::{self, AuditError, AuditStore, EventFilter, OutputFormat, RunFilter},
    cli::AuditCommand,
    decision::{Layer, Verdict},
};

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("invalid {what} {value:?}: expected {expected}")]
    Bad {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn verdict(v: &str) -> Result<Verdict, AuditCliError> {
    match v {
        "allow" => Ok(Verdict::Allow),
        "deny" => Ok(Verdict::Deny),
        "ask" => Ok(Verdict::Ask),
        _ => Err(AuditCliError::Bad {
            what: "verdict",
            value: v.into(),
            expected: "allow, deny or ask",
        }),
    }
}

fn layer(v: &str) -> Result<Layer, AuditCliError> {
    match v {
        "kernel" => Ok(Layer::Kernel),
        "dns" => Ok(Layer::Dns),
        "connection" => Ok(Layer::Connection),
        "request" => Ok(Layer::Request),
        "control" => Ok(Layer::Control),
        _ => Err(AuditCliError::Bad {
            what: "layer",
            value: v.into(),
            expected: "kernel, dns, connection, request or control",
        }),
    }
}

fn format(f: &str) -> Result<OutputFormat, AuditCliError> {
    f.parse().map_err(|_| AuditCliError::Bad {
        what: "format",
        value: f.into(),
        expected: "table, jsonl or csv",
    })
}

/// Runs one `enforcer audit` command, writing to stdout.
pub fn run(cmd: AuditCommand) -> Result<(), AuditCliError> {
    let mut out = crate::output::stdout();
    match cmd {
        AuditCommand::Runs {
            db,
            since,
            limit,
            format: f,
        } => {
            let store = AuditStore::open_read_only(&db.audit_db)?;
            let filter = RunFilter {
                since: since.map(audit::ago),
                limit,
            };
            audit::write_runs(&mut out, &store.runs(&filter)?, format(&f)?)?;
        }
        AuditCommand::Events {
            db,
            run,
            since,
            verdict: v,
            host,
            layer: l,
            limit,
            format: f,
        } => {
            let store = AuditStore::open_read_only(&db.audit_db)?;
            let filter = EventFilter {
                run_id: run,
                since: since.map(audit::ago),
                verdict: v.as_deref().map(verdict).transpose()?,
                host,
                layer: l.as_deref().map(layer).transpose()?,
                limit,
            };
            audit::write_events(&mut out, &store.events(&filter)?, format(&f)?)?;
        }
        AuditCommand::Prune { db, older_than } => {
            let store = AuditStore::open(&db.audit_db)?;
            let report = store.prune(older_than)?;
            writeln!(
                out,
                "pruned {} events and {} finished runs older than {} from {}",
                report.events,
                report.runs,
                crate::policy::format_duration(older_than),
                db.audit_db.display()
            )?;
        }
    }
    Ok(())
}
