//! `enforcer approvals`, `enforcer approve` and `enforcer deny`: answering
//! a live run's waiting requests from another terminal.

use std::path::Path;

use super::{
    client::{ControlError, ask, require_root, resolve},
    protocol::{Request, Response},
};
use crate::{
    approval::{Answer, Pending, printable},
    runs::RunRecord,
};

/// Every live run's waiting requests.
fn all_pending() -> Vec<Pending> {
    let runs_dir = Path::new(crate::runs::RUNS_DIR);
    let mut all = Vec::new();
    for record in RunRecord::all(runs_dir) {
        if !record.enforcer_alive() {
            continue;
        }
        let path = super::socket_path(runs_dir, &record.run_id);
        if let Ok(Response::Approvals { pending }) = ask(&path, &record.run_id, &Request::Approvals)
        {
            all.extend(pending);
        }
    }
    all.sort_by(|a, b| (&a.run_id, a.id).cmp(&(&b.run_id, b.id)));
    all
}

/// `enforcer approvals`: a table (or JSON lines) of waiting requests.
pub fn list(json: bool) -> Result<(), ControlError> {
    require_root()?;
    let pending = all_pending();
    if json {
        for p in &pending {
            crate::outln!("{}", serde_json::to_string(p).unwrap_or_default());
        }
        return Ok(());
    }
    if pending.is_empty() {
        crate::outln!("no requests are waiting for approval");
        return Ok(());
    }
    // One block per request: everything the human approves, in full.
    for p in pending {
        crate::outln!(
            "#{} run {} ({}s left): {}",
            p.id,
            printable(&p.run_id),
            p.expires_in_secs,
            printable(&p.request_line())
        );
        crate::outln!("    rule: {}", printable(&p.rule));
        if let Some(b) = &p.body_preview {
            crate::outln!("    body: {}", printable(b));
        }
        for w in &p.why {
            crate::outln!("    asked because: {}", printable(w));
        }
        for s in &p.scope {
            crate::outln!("    scope: {}", printable(s));
        }
        if let Some(c) = &p.cost {
            crate::outln!("    cost: {}", printable(c));
        }
        for cap in &p.caps {
            crate::outln!("    {}", printable(cap));
        }
        if !p.secrets.is_empty() {
            crate::outln!("    secrets injected: {}", p.secrets.join(", "));
        }
        crate::outln!(
            "    answer: sudo enforcer approve {id} --run {run}   (or: deny {id} --run {run}, approve {id} --always --run {run})",
            id = p.id,
            run = printable(&p.run_id)
        );
    }
    Ok(())
}

/// Who is answering, for the audit row: root, and the sudo caller if any.
fn answered_by() -> String {
    match std::env::var("SUDO_USER") {
        Ok(u) if !u.is_empty() => format!("root (sudo by {u}) via enforcer approve/deny"),
        _ => String::from("root via enforcer approve/deny"),
    }
}

/// `enforcer approve ID [--always]` and `enforcer deny ID`.
pub fn answer(id: u64, answer: Answer, run: Option<&str>, json: bool) -> Result<(), ControlError> {
    require_root()?;
    let run_id = match run {
        Some(r) => resolve(r)?.run_id,
        None => {
            let runs: Vec<String> = all_pending()
                .into_iter()
                .filter(|p| p.id == id)
                .map(|p| p.run_id)
                .collect();
            match runs.as_slice() {
                [] => return Err(ControlError::NoSuchRequest(id)),
                [one] => one.clone(),
                many => {
                    return Err(ControlError::Ambiguous {
                        id,
                        runs: many.join(", "),
                    });
                }
            }
        }
    };
    let path = super::socket_path(Path::new(crate::runs::RUNS_DIR), &run_id);
    let req = Request::Answer {
        id,
        answer,
        by: answered_by(),
    };
    let record = RunRecord::load(Path::new(crate::runs::RUNS_DIR), &run_id);
    let (unit, label) = record
        .as_ref()
        .map_or((None, None), |r| (r.unit.clone(), r.label.clone()));
    match ask(&path, &run_id, &req)? {
        Response::Answered { .. } if json => {
            crate::outln!(
                "{}",
                serde_json::json!({
                    "run_id": run_id, "unit": unit, "label": label, "id": id, "answer": answer
                })
            );
            Ok(())
        }
        Response::Answered { always, .. } => {
            let what = match answer {
                Answer::Approve => "approved",
                Answer::Always if always => {
                    "approved, with every later request of its rule in this run"
                }
                Answer::Always => {
                    "approved once (not its later requests: it was asked for its amount or a \
                     requirement, or under rules a reload has replaced)"
                }
                Answer::Deny => "denied",
            };
            let who = record
                .as_ref()
                .map_or_else(|| run_id.clone(), super::client::describe);
            let label = label.map_or_else(String::new, |l| format!(", label {}", printable(&l)));
            crate::outln!("run {who}{label}: request {id} {what}");
            Ok(())
        }
        Response::Error { message } => Err(ControlError::Refused {
            run: run_id,
            message,
        }),
        other => Err(ControlError::Protocol {
            run: run_id,
            detail: format!("{other:?}"),
        }),
    }
}
