//! `enforcer exec -- cmd`: the entry point of an agent unit. It asks the
//! daemon for a run for its own cgroup (the daemon learns who asks from the
//! kernel), takes the run's environment, installs the same seccomp filter
//! as `launch`'s child and execs the command. Nothing it sends is trusted.

use std::{
    ffi::{CString, OsString},
    os::unix::ffi::OsStrExt as _,
    path::Path,
};

use super::{
    client::ClientError,
    protocol::{ExecReply, Request, Started},
};
use crate::launch::seccomp;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Daemon(#[from] ClientError),
    #[error("the enforcer daemon refused to start a run: {0}")]
    Refused(String),
    #[error("cannot confine the process: {0}")]
    Confine(String),
    #[error("cannot run {program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("an argument of the command contains a NUL byte")]
    NulInArgument,
    #[error("no command given (enforcer exec -- COMMAND ...)")]
    NoCommand,
}

/// Asks the daemon at `socket` for a run, confines this process and execs
/// `command`. Returns only on failure.
pub fn exec(socket: &Path, label: Option<String>, command: &[OsString]) -> ExecError {
    match prepare(socket, label, command) {
        Ok(e) | Err(e) => e,
    }
}

fn prepare(
    socket: &Path,
    label: Option<String>,
    command: &[OsString],
) -> Result<ExecError, ExecError> {
    let (program, _) = command.split_first().ok_or(ExecError::NoCommand)?;
    let started = ask(socket, label)?;
    for k in &started.unset {
        // SAFETY: single-threaded at this point (no runtime, no threads).
        unsafe { std::env::remove_var(k) };
    }
    for (k, v) in &started.set {
        // SAFETY: as above.
        unsafe { std::env::set_var(k, v) };
    }
    confine(&started)?;
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| ExecError::NulInArgument))
        .collect::<Result<_, _>>()?;
    let err = nix::unistd::execvp(&argv[0], &argv).err();
    Ok(ExecError::Exec {
        program: program.to_string_lossy().into_owned(),
        source: err.map_or_else(std::io::Error::last_os_error, Into::into),
    })
}

/// How long `exec` keeps asking a daemon that is busy with this user's
/// other requests (units of one user started together).
const BUSY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

fn ask(socket: &Path, label: Option<String>) -> Result<Started, ExecError> {
    let req = Request::Exec { label };
    let deadline = std::time::Instant::now() + BUSY_FOR;
    let mut pause = std::time::Duration::from_millis(20);
    let reply = loop {
        match super::client::call(socket, &req, None) {
            Err(ClientError::Busy) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            other => break other,
        }
    };
    match reply {
        Ok(ExecReply::Started(s)) => Ok(s),
        Ok(ExecReply::Refused { reason }) => Err(ExecError::Refused(reason)),
        Err(e) => Err(e.into()),
    }
}

/// no_new_privs, then the seccomp filter launch's child gets (no unix
/// sockets: exec'd runs cannot list any yet).
fn confine(started: &Started) -> Result<(), ExecError> {
    // No capability survives into the command (ambient ones would).
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(ExecError::Confine(format!(
            "cannot clear ambient capabilities: {}",
            std::io::Error::last_os_error()
        )));
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| ExecError::Confine(e.to_string()))?;
    // launch's isolation from the user's other processes (other units of
    // the same user included): a Landlock domain of its own (no reading,
    // tracing or signalling outside it), no core dumps, no keyrings. Not
    // the IPC namespace: making one needs a privilege a unit does not have.
    let user = format!("uid {}", nix::unistd::getuid());
    let isolation = crate::launch::isolation::Isolation::prepare(&user, false)
        .map_err(|e| ExecError::Confine(e.to_string()))?;
    // SAFETY: this process is single-threaded here and no_new_privs is set.
    unsafe { crate::launch::isolation::apply(&isolation.for_child()) }.map_err(|e| {
        ExecError::Confine(format!(
            "cannot isolate the unit from its user's other processes ({}): errno {}",
            if e.landlock {
                "Landlock"
            } else {
                "keyring filter"
            },
            e.errno
        ))
    })?;
    // `apply` closed the ruleset's descriptor itself (it is written for a
    // child that never returns); dropping it would close it twice.
    std::mem::forget(isolation);
    let filter = seccomp::build(seccomp::FilterOptions {
        unix_sockets: false,
        user_namespaces: started.user_namespaces,
    });
    // SAFETY: no_new_privs is set; the filter is a valid program.
    let listener = unsafe { seccomp::install(&filter) }
        .map_err(|errno| ExecError::Confine(format!("seccomp: errno {errno}")))?;
    // Nobody supervises this run's notifications yet: without a listener
    // they fail (ENOSYS), which refuses them.
    // SAFETY: the descriptor is ours.
    unsafe { libc::close(listener) };
    Ok(())
}
