//! The run's control socket: `enforcer status`, `enforcer revoke`,
//! `enforcer approvals`, `approve` and `deny` talk to a live run through it. It lives in root's run directory, is mode 0600,
//! and every connection's peer must be root (SO_PEERCRED); the agent, which
//! cannot even create unix sockets unless the policy lists paths, has no way
//! in.

pub mod approvals;
pub mod client;
pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};

/// Where run `run_id`'s control socket is.
pub fn socket_path(runs_dir: &Path, run_id: &str) -> PathBuf {
    runs_dir.join(format!("{run_id}.sock"))
}
