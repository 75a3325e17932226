//! What the audit log records about a run at its start.

use std::{ffi::OsString, time::Duration};

use crate::policy::Policy;

/// Who started a run and as whom the agent runs.
pub struct Starter<'a> {
    /// The person (or unit) who started the run.
    pub invoking: &'a str,
    /// The agent's uid.
    pub uid: u32,
    /// The orchestrator's name for the run.
    pub label: Option<&'a super::label::Label>,
    /// The systemd unit the run serves.
    pub unit: Option<&'a str>,
}

/// What the audit log records about the run at its start.
pub fn run_info(
    run_id: &str,
    policy: &Policy,
    starter: &Starter<'_>,
    command: &[OsString],
    cgroup: &std::path::Path,
    ttl: Option<Duration>,
) -> crate::audit::RunInfo {
    let digest = std::fs::read(&policy.source)
        .map(|b| ring::digest::digest(&ring::digest::SHA256, &b))
        .map(|d| {
            d.as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .unwrap_or_default();
    crate::audit::RunInfo {
        run_id: run_id.to_string(),
        name: policy.run.name.clone(),
        policy_path: policy.source.display().to_string(),
        policy_sha256: digest,
        invoking_user: starter.invoking.to_string(),
        uid: starter.uid,
        command: command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        cgroup: cgroup.display().to_string(),
        started_at: std::time::SystemTime::now(),
        ttl_seconds: ttl.map(|t| t.as_secs()),
        label: starter.label.map(|l| l.as_str().to_string()),
        unit: starter.unit.map(str::to_string),
    }
}
