//! What goes over the control socket: one JSON request line, one JSON
//! response line.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Revoke,
    /// The requests waiting for a human.
    Approvals,
    Answer {
        id: u64,
        answer: crate::approval::Answer,
        /// Who answers, for the audit row.
        by: String,
    },
    /// Resets a tripped loop breaker (one call's key, or all).
    Reset {
        key: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub run_id: String,
    pub name: String,
    pub enforcer_pid: u32,
    pub agent_pid: Option<u32>,
    pub policy: String,
    /// Names of the run's secrets (never values).
    pub secrets: Vec<String>,
    /// "live", "expired" or "revoked".
    pub credentials: String,
    pub ttl_left_secs: Option<u64>,
    pub allowed: u64,
    pub denied: u64,
    pub asked: u64,
    /// Committed spend of the run (USD).
    pub spent_usd: f64,
    /// Each cap of the run (the run's own, each host's): what is spent and
    /// in flight against it.
    #[serde(default)]
    pub caps: Vec<CapUse>,
    /// Requests waiting for a human.
    #[serde(default)]
    pub pending_approvals: usize,
    /// The systemd unit of a daemon run (from its run record).
    #[serde(default)]
    pub unit: Option<String>,
    /// The orchestrator's label of the run (from its run record).
    #[serde(default)]
    pub label: Option<String>,
    /// Tripped loop breakers: `KEY METHOD PATH (N calls)`.
    pub tripped: Vec<String>,
}

/// One cap and its use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CapUse {
    /// `run` or `host NAME`.
    pub scope: String,
    pub cap_usd: f64,
    pub spent_usd: f64,
    pub in_flight_usd: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Revoked {
        run_id: String,
        already: bool,
    },
    Approvals {
        pending: Vec<crate::approval::Pending>,
    },
    Answered {
        id: u64,
    },
    Reset {
        cleared: usize,
    },
    Error {
        message: String,
    },
}
