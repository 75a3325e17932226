//! What `enforcer exec` and the daemon say to each other over
//! `/run/enforcer/daemon.sock`: one JSON line each way. The request carries
//! only a label; who is asking comes from the kernel (see `peer`).

use serde::{Deserialize, Serialize};

/// The daemon's socket; any user may connect, the kernel says who did.
pub const SOCKET: &str = "/run/enforcer/daemon.sock";

/// `enforcer exec` asking for a run for its own cgroup.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The orchestrator's name for the run (the audit log's agent_run_id).
    pub label: Option<String>,
}

/// The run the daemon started, or why it did not.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecReply {
    Started(Started),
    Refused { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Started {
    pub run_id: String,
    /// Variables to set (proxy, trust bundle, placeholders, run id).
    pub set: Vec<(String, String)>,
    /// Variables to remove (real secret values, other proxy settings).
    pub unset: Vec<String>,
    /// Whether the policy lets the agent create user namespaces.
    pub user_namespaces: bool,
}
