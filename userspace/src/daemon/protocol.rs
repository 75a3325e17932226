//! What `enforcer exec` (and `enforcer reload`) and the daemon say to each
//! other over `/run/enforcer/daemon.sock`: one JSON line each way. A request
//! carries only a label; who is asking comes from the kernel (see `peer`).

use serde::{Deserialize, Serialize};

/// The daemon's socket; any user may connect, the kernel says who did.
pub const SOCKET: &str = "/run/enforcer/daemon.sock";

/// What a client asks the daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `enforcer exec` asking for a run for its own cgroup.
    Exec {
        /// The orchestrator's name for the run (the audit log's
        /// agent_run_id).
        label: Option<String>,
    },
    /// `enforcer reload` (root only): read the configuration and its
    /// policies again.
    Reload,
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

/// What a reload did, or why nothing changed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadReply {
    /// The new configuration is in force.
    Reloaded {
        /// `[[unit]]` mappings now in force.
        units: usize,
        /// What happened to each live run.
        runs: Vec<RunReloaded>,
    },
    /// Nothing changed: the configuration in force stays.
    Refused { reason: String },
}

/// One live run at a reload.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunReloaded {
    pub run_id: String,
    pub unit: String,
    /// The policy the run is now decided by (`None`: the run ended).
    pub policy: Option<String>,
    /// What the run could not take, or why it ended.
    pub notes: Vec<String>,
}
