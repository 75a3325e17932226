//! `enforcer status` and `enforcer revoke`: asking live runs over their
//! control sockets.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "this command must run as root (it talks to runs over root-only control sockets): try sudo"
    )]
    NotRoot,
    #[error("no live run {0} (see `enforcer status`)")]
    NoSuchRun(String),
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
    let io = |source| ControlError::Io {
        run: run.to_string(),
        source,
    };
    if !path.exists() {
        return Err(ControlError::NoSuchRun(run.to_string()));
    }
    let mut s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(|e| ControlError::Protocol {
        run: run.to_string(),
        detail: e.to_string(),
    })?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(answer.trim()).map_err(|e| ControlError::Protocol {
        run: run.to_string(),
        detail: format!("{e}: {answer}"),
    })
}

/// `enforcer revoke RUN_ID`: revokes and reports how long it took.
pub fn revoke(run_id: &str) -> Result<(), ControlError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ControlError::NotRoot);
    }
    if !crate::runid::is_valid(run_id) {
        return Err(ControlError::NoSuchRun(run_id.to_string()));
    }
    let path = super::socket_path(Path::new(crate::runs::RUNS_DIR), run_id);
    let started = std::time::Instant::now();
    match ask(&path, run_id, &Request::Revoke)? {
        Response::Revoked { already: false, .. } => {
            crate::outln!(
                "run {run_id}: credentials revoked ({:.1} ms); no further request gets a real key",
                started.elapsed().as_secs_f64() * 1000.0
            );
            Ok(())
        }
        Response::Revoked { already: true, .. } => {
            crate::outln!("run {run_id}: credentials were already revoked");
            Ok(())
        }
        other => Err(ControlError::Protocol {
            run: run_id.to_string(),
            detail: format!("{other:?}"),
        }),
    }
}

/// `enforcer reset RUN_ID [KEY]`: clears a tripped loop breaker.
pub fn reset(run_id: &str, key: Option<&str>) -> Result<(), ControlError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ControlError::NotRoot);
    }
    if !crate::runid::is_valid(run_id) {
        return Err(ControlError::NoSuchRun(run_id.to_string()));
    }
    let path = super::socket_path(Path::new(crate::runs::RUNS_DIR), run_id);
    let req = Request::Reset {
        key: key.map(String::from),
    };
    match ask(&path, run_id, &req)? {
        Response::Reset { cleared: 0 } => {
            crate::outln!("run {run_id}: no tripped loop breaker matched; nothing to reset");
            Ok(())
        }
        Response::Reset { cleared } => {
            crate::outln!("run {run_id}: loop breaker reset ({cleared} call(s) may go out again)");
            Ok(())
        }
        Response::Error { message } => Err(ControlError::Refused {
            run: run_id.to_string(),
            message,
        }),
        other => Err(ControlError::Protocol {
            run: run_id.to_string(),
            detail: format!("{other:?}"),
        }),
    }
}

/// `enforcer status`: every live run, as a table or JSON lines.
pub fn status(json: bool) -> Result<(), ControlError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ControlError::NotRoot);
    }
    let runs_dir = Path::new(crate::runs::RUNS_DIR);
    let mut rows = Vec::new();
    for record in crate::runs::RunRecord::all(runs_dir) {
        if !record.enforcer_alive() {
            continue;
        }
        let path = super::socket_path(runs_dir, &record.run_id);
        if let Ok(Response::Status(s)) = ask(&path, &record.run_id, &Request::Status) {
            rows.push(s);
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
        "{:<24} {:<16} {:>8} {:<9} {:>9} {:>8} {:>8} {:>6} {:>10}  SECRETS",
        "RUN",
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
            "{:<24} {:<16} {:>8} {:<9} {:>9} {:>8} {:>8} {:>6} {:>10}  {}",
            r.run_id,
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
        for t in &r.tripped {
            crate::outln!(
                "    loop breaker tripped: {t}  (sudo enforcer reset {} KEY)",
                r.run_id
            );
        }
    }
    Ok(())
}
