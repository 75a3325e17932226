//! The versioned JSON report of a run (`--report FILE.json`, schema in
//! `userspace/schemas/report.v1.schema.json`): the end-of-run summary's
//! fields, plus what was allowed, refused, asked and would have been denied
//! (grouped by destination), every exfiltration attempt, and the job's
//! exit status with the violations that set it.

use std::{collections::HashMap, fs, io::Write as _, path::Path};

use serde::Serialize;

use super::{CiOptions, Violation, Violations};
use crate::{
    audit::{AuditStore, EventFilter, EventRow, RunSummary},
    decision::{Alarm, Cause, Verdict},
};

/// The report format's version: bumped on any change that is not the
/// addition of an optional field.
pub const REPORT_VERSION: u32 = 1;
/// The JSON Schema the report validates against.
pub const REPORT_SCHEMA: &str = include_str!("../../schemas/report.v1.schema.json");
/// Most grouped entries per list; the rest are counted in `total`.
pub const MAX_ENTRIES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read the run's events for the report: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// How the run enforced its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Refuse what the policy does not allow.
    #[default]
    Enforce,
    /// Record what the policy would refuse, and let it through (HTTP(S)
    /// and DNS only; the kernel boundary is enforced as always).
    Observe,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub report_version: u32,
    #[serde(flatten)]
    pub summary: RunSummary,
    pub mode: RunMode,
    pub ci: bool,
    pub policy: String,
    /// enforcer's own exit status (the agent's is `exit_code`).
    pub enforcer_exit_code: i32,
    /// What `--fail-on` named (empty outside CI mode).
    pub fail_on: Vec<Violation>,
    /// The violations among those that happened, most serious first.
    pub failed_on: Vec<Violation>,
    pub violations: Violations,
    pub allowed: Listing,
    pub refused: Listing,
    pub asked: Listing,
    pub would_deny: Listing,
    pub exfiltration_attempts: Vec<Attempt>,
}

/// Decisions grouped by where they went and why.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    /// Decisions in all (not groups).
    pub total: u64,
    /// At most [`MAX_ENTRIES`] groups, most frequent first.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub layer: String,
    pub destination: String,
    pub cause: Option<String>,
    pub rule: Option<String>,
    pub reason: String,
    pub count: u64,
}

/// One exfiltration attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub at: String,
    pub layer: String,
    pub destination: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub reason: String,
}

/// Decisions are grouped by layer, destination, cause and rule.
type GroupKey = (String, String, Option<String>, Option<String>);

/// What the report is made from, besides the run's events.
pub struct Inputs<'a> {
    pub opts: &'a CiOptions,
    pub mode: RunMode,
    pub policy: &'a Path,
    pub summary: RunSummary,
    /// enforcer's exit status before `--fail-on` (the agent's, or 74).
    pub code: i32,
}

impl Report {
    /// The report of a run whose events are `events` (empty without an
    /// audit log: the counts then come from the summary alone).
    pub fn build(i: Inputs<'_>, events: &[EventRow]) -> Self {
        let mut violations = Violations::default();
        let mut groups: [HashMap<GroupKey, Entry>; 4] = Default::default();
        let mut totals = [0u64; 4];
        let mut attempts = Vec::new();
        for e in events {
            let cause = e.cause.as_deref().and_then(Cause::parse);
            let alarm = match e.alarm.as_deref() {
                Some("exfiltration") => Some(Alarm::Exfiltration),
                Some("forged-approval") => Some(Alarm::ForgedApproval),
                _ => None,
            };
            let asked = e.approver.is_some() || e.verdict == Verdict::Ask.as_str();
            if let Some(c) = cause {
                for v in Violation::of(c, alarm, asked) {
                    violations.add(v);
                }
            }
            if alarm == Some(Alarm::Exfiltration) {
                attempts.push(Attempt {
                    at: e.at.clone(),
                    layer: e.layer.clone(),
                    destination: e.destination(),
                    pid: e.pid,
                    comm: e.comm.clone(),
                    reason: e.reason.clone(),
                });
            }
            let lists = which_lists(e, cause, asked);
            for (slot, on) in lists.iter().enumerate() {
                if !on {
                    continue;
                }
                totals[slot] += 1;
                let key = (
                    e.layer.clone(),
                    e.destination(),
                    e.cause.clone(),
                    e.rule.clone(),
                );
                groups[slot]
                    .entry(key)
                    .or_insert_with(|| Entry {
                        layer: e.layer.clone(),
                        destination: e.destination(),
                        cause: e.cause.clone(),
                        rule: e.rule.clone(),
                        reason: e.reason.clone(),
                        count: 0,
                    })
                    .count += 1;
            }
        }
        if events.is_empty() {
            // No audit log: what the run's own counts say.
            let c = &i.summary.counts;
            violations.exfil = c.exfiltration_attempts;
            violations.ask = c.requests_asked;
            violations.deny = c.refused();
        }
        let [allowed, refused, asked, would_deny] =
            groups.map(|g| g.into_values().collect::<Vec<_>>());
        let listing = |entries: Vec<Entry>, total: u64| {
            let mut entries = entries;
            entries.sort_by(|a, b| {
                b.count
                    .cmp(&a.count)
                    .then_with(|| a.destination.cmp(&b.destination))
            });
            entries.truncate(MAX_ENTRIES);
            Listing { total, entries }
        };
        let (code, failed_on) = i.opts.exit_code(i.code, &violations);
        Self {
            report_version: REPORT_VERSION,
            summary: i.summary,
            mode: i.mode,
            ci: i.opts.enabled,
            policy: i.policy.display().to_string(),
            enforcer_exit_code: code,
            fail_on: if i.opts.enabled {
                i.opts.fail_on.clone()
            } else {
                Vec::new()
            },
            failed_on,
            violations,
            allowed: listing(allowed, totals[0]),
            refused: listing(refused, totals[1]),
            asked: listing(asked, totals[2]),
            would_deny: listing(would_deny, totals[3]),
            exfiltration_attempts: attempts,
        }
    }

    /// Reads the run's events from the audit database and builds the report.
    pub fn from_db(i: Inputs<'_>, db: &Path) -> Result<Self, ReportError> {
        let store = AuditStore::open_read_only(db)?;
        let events = store.events(&EventFilter {
            run_id: Some(i.summary.run_id.clone()),
            ..EventFilter::default()
        })?;
        Ok(Self::build(i, &events))
    }

    /// Writes the report atomically (a temporary file renamed over `path`).
    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        let fail = |source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut body = serde_json::to_vec_pretty(self).map_err(|e| fail(e.into()))?;
        body.push(b'\n');
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let written = fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&body)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
            let _ = fs::remove_file(&tmp);
            return Err(fail(e));
        }
        Ok(())
    }

    /// Appends the Markdown summary to `path` ($GITHUB_STEP_SUMMARY).
    pub fn append_markdown(&self, path: &Path) -> Result<(), ReportError> {
        let fail = |source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(fail)?;
        f.write_all(super::markdown::render(self).as_bytes())
            .map_err(fail)
    }
}

/// Which of allowed, refused, asked, would-deny an event is listed in.
fn which_lists(e: &EventRow, cause: Option<Cause>, asked: bool) -> [bool; 4] {
    let would_deny = cause == Some(Cause::WouldDeny);
    let control = e.layer == "control";
    let allowed = !control && !would_deny && e.verdict == Verdict::Allow.as_str();
    let refused = !control
        && e.verdict == Verdict::Deny.as_str()
        && cause.is_none_or(|c| c != Cause::BenignProbe);
    [allowed, refused, asked, would_deny]
}

#[cfg(test)]
mod tests;
