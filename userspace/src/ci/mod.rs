//! CI mode: no prompts (an `ask` is a deny, and says so), `--fail-on`
//! turning what the run refused into the job's exit status, the versioned
//! JSON report and the Markdown summary for the job page.

pub mod markdown;
pub mod report;
pub mod violations;

use std::{ffi::OsStr, path::PathBuf};

use clap::{Args, ValueEnum};

pub use report::{REPORT_SCHEMA, REPORT_VERSION, Report};
pub use violations::{Violation, Violations};

/// The CI flags of `enforcer launch`.
#[derive(Debug, Clone, Args)]
pub struct CiArgs {
    /// CI mode: nobody is asked (an `ask` rule denies, "asked in CI"),
    /// `--fail-on` decides the exit status, and the report is appended to
    /// $GITHUB_STEP_SUMMARY when that is set. On by default when CI=true
    /// (or ENFORCER_CI=1); ENFORCER_CI=0 or --no-ci turns it off.
    #[arg(long, conflicts_with = "no_ci")]
    pub ci: bool,
    /// Not CI mode, even when CI=true (interactive approvals, the agent's
    /// own exit status).
    #[arg(long)]
    pub no_ci: bool,
    /// In CI mode, what fails the job when the agent itself succeeded:
    /// exfil (exit 80), cap (83: spend caps, per-call ceilings, rate
    /// limits, the loop breaker), ask (82: a request that needed a human), deny (81: any
    /// refusal). Comma-separated; the first that happened, in that order,
    /// gives the status. `none` fails on nothing.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "exfil"
    )]
    pub fail_on: Vec<FailOn>,
}

/// What `--fail-on` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailOn {
    Exfil,
    Deny,
    Ask,
    Cap,
    None,
}

/// Exit status when a credential exfiltration attempt fails the job.
pub const EXIT_EXFILTRATION: i32 = 80;
/// Exit status when a refusal (any) fails the job.
pub const EXIT_DENIED: i32 = 81;
/// Exit status when a request that needed a human fails the job.
pub const EXIT_ASKED: i32 = 82;
/// Exit status when a spend cap, rate limit or the loop breaker fails the job.
pub const EXIT_CAPPED: i32 = 83;

/// CI mode as decided for one launch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CiOptions {
    pub enabled: bool,
    /// What fails the job, in `--fail-on` order (duplicates and `none` removed).
    pub fail_on: Vec<Violation>,
    /// Where the Markdown summary is appended ($GITHUB_STEP_SUMMARY).
    pub step_summary: Option<PathBuf>,
}

impl CiOptions {
    /// Decides CI mode from the flags and the environment: `--ci` or
    /// `--no-ci` win; otherwise ENFORCER_CI (1/true or 0/false) if set,
    /// otherwise CI=true (what GitHub Actions, GitLab CI and most others set).
    pub fn resolve(args: &CiArgs, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Self {
        let enabled = if args.ci {
            true
        } else if args.no_ci {
            false
        } else if let Some(v) = env("ENFORCER_CI") {
            truthy(&v)
        } else {
            env("CI").is_some_and(|v| truthy(&v))
        };
        let mut fail_on = Vec::new();
        for f in &args.fail_on {
            let v = match f {
                FailOn::Exfil => Violation::Exfiltration,
                FailOn::Deny => Violation::Denied,
                FailOn::Ask => Violation::Asked,
                FailOn::Cap => Violation::Capped,
                FailOn::None => continue,
            };
            if !fail_on.contains(&v) {
                fail_on.push(v);
            }
        }
        let step_summary = env("GITHUB_STEP_SUMMARY")
            .filter(|p| enabled && !p.is_empty())
            .map(PathBuf::from);
        Self {
            enabled,
            fail_on,
            step_summary,
        }
    }

    /// The job's exit status: the agent's own when it failed (or enforcer's
    /// audit failure), otherwise the code of the most serious violation
    /// `--fail-on` names that happened, otherwise 0. Outside CI mode, the
    /// agent's status unchanged.
    pub fn exit_code(&self, agent_code: i32, seen: &Violations) -> (i32, Vec<Violation>) {
        if !self.enabled {
            return (agent_code, Vec::new());
        }
        let failed: Vec<Violation> = Violation::BY_SEVERITY
            .into_iter()
            .filter(|v| self.fail_on.contains(v) && seen.count(*v) > 0)
            .collect();
        let code = match (agent_code, failed.first()) {
            (0, Some(v)) => v.exit_code(),
            (c, _) => c,
        };
        (code, failed)
    }
}

/// Says at start that the run is in CI mode and what fails it.
pub fn announce(opts: &CiOptions, asks: bool) {
    let fail_on: Vec<&str> = opts.fail_on.iter().map(|v| v.as_str()).collect();
    let fail_on = if fail_on.is_empty() {
        String::from("nothing (--fail-on none)")
    } else {
        fail_on.join(",")
    };
    crate::say!(
        Info,
        "enforcer: CI mode (--no-ci or ENFORCER_CI=0 turns it off): no one is asked{}; the job \
         fails on: {fail_on}",
        if asks {
            " (every `ask` rule denies)"
        } else {
            ""
        }
    );
}

/// The end of a run: builds the report (from the audit log when there is
/// one that can be read), writes it to `--report`, appends the Markdown to
/// $GITHUB_STEP_SUMMARY in CI mode, and returns the exit status.
pub fn conclude(
    i: report::Inputs<'_>,
    audit_db: Option<&std::path::Path>,
    report_path: Option<&std::path::Path>,
) -> Result<i32, report::ReportError> {
    let opts = i.opts.clone();
    let events = match audit_db {
        Some(db) => match read_events(db, &i.summary.run_id) {
            Ok(e) => e,
            Err(e) => {
                crate::say!(
                    Warn,
                    "enforcer: warning: the report is built from the run's counts only: {e}"
                );
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let r = Report::build(i, &events);
    if opts.enabled
        && r.enforcer_exit_code != 0
        && r.summary.exit_code == Some(0)
        && let Some(v) = r.failed_on.first()
    {
        crate::say!(
            Error,
            "enforcer: CI: failing the job with exit status {} (--fail-on {}): {}",
            r.enforcer_exit_code,
            v.as_str(),
            violation_words(*v, r.violations.count(*v))
        );
    }
    if let Some(path) = report_path {
        r.write_json(path)?;
    }
    if let Some(path) = &opts.step_summary
        && let Err(e) = r.append_markdown(path)
    {
        crate::say!(Warn, "enforcer: warning: no step summary: {e}");
    }
    Ok(r.enforcer_exit_code)
}

fn read_events(
    db: &std::path::Path,
    run_id: &str,
) -> Result<Vec<crate::audit::EventRow>, crate::audit::AuditError> {
    crate::audit::AuditStore::open_read_only(db)?.events(&crate::audit::EventFilter {
        run_id: Some(run_id.to_string()),
        ..Default::default()
    })
}

fn violation_words(v: Violation, n: u64) -> String {
    let s = if n == 1 { "" } else { "s" };
    match v {
        Violation::Exfiltration => format!("{n} credential exfiltration attempt{s}"),
        Violation::Capped => {
            format!("{n} call{s} refused by a cap, rate limit or the loop breaker")
        }
        Violation::Asked => format!("{n} request{s} that needed a human (denied in CI)"),
        Violation::Denied => format!("{n} refusal{s}"),
    }
}

fn truthy(v: &OsStr) -> bool {
    matches!(
        v.to_string_lossy().trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        ci: CiArgs,
    }

    fn args(a: &[&str]) -> CiArgs {
        T::try_parse_from(std::iter::once("t").chain(a.iter().copied()))
            .expect("parses")
            .ci
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into())
    }

    #[test]
    fn ci_true_turns_it_on_and_enforcer_ci_or_the_flags_decide_first() {
        assert!(CiOptions::resolve(&args(&[]), env(&[("CI", "true")])).enabled);
        assert!(!CiOptions::resolve(&args(&[]), env(&[])).enabled);
        assert!(!CiOptions::resolve(&args(&[]), env(&[("CI", "false")])).enabled);
        assert!(
            !CiOptions::resolve(&args(&[]), env(&[("CI", "true"), ("ENFORCER_CI", "0")])).enabled
        );
        assert!(CiOptions::resolve(&args(&[]), env(&[("ENFORCER_CI", "1")])).enabled);
        assert!(!CiOptions::resolve(&args(&["--no-ci"]), env(&[("CI", "true")])).enabled);
        assert!(CiOptions::resolve(&args(&["--ci"]), env(&[("ENFORCER_CI", "0")])).enabled);
        assert!(T::try_parse_from(["t", "--ci", "--no-ci"]).is_err());
    }

    #[test]
    fn the_step_summary_is_written_only_in_ci_mode() {
        let vars = [("GITHUB_STEP_SUMMARY", "/tmp/s.md")];
        let on = CiOptions::resolve(&args(&["--ci"]), env(&vars));
        assert_eq!(on.step_summary, Some(PathBuf::from("/tmp/s.md")));
        let off = CiOptions::resolve(&args(&[]), env(&vars));
        assert_eq!(off.step_summary, None);
    }

    #[test]
    fn fail_on_maps_to_one_code_per_cause_and_the_agents_failure_wins() {
        let mut seen = Violations::default();
        seen.add(Violation::Denied);
        seen.add(Violation::Asked);
        let o = CiOptions::resolve(&args(&["--ci"]), env(&[]));
        assert_eq!(o.fail_on, vec![Violation::Exfiltration]);
        assert_eq!(o.exit_code(0, &seen).0, 0, "default: exfil only");
        let o = CiOptions::resolve(&args(&["--ci", "--fail-on", "deny,ask"]), env(&[]));
        assert_eq!(
            o.exit_code(0, &seen),
            (EXIT_ASKED, vec![Violation::Asked, Violation::Denied])
        );
        assert_eq!(o.exit_code(3, &seen).0, 3, "the agent's own failure wins");
        seen.add(Violation::Exfiltration);
        let o = CiOptions::resolve(&args(&["--ci", "--fail-on", "deny,exfil"]), env(&[]));
        assert_eq!(o.exit_code(0, &seen).0, EXIT_EXFILTRATION);
        let o = CiOptions::resolve(&args(&["--ci", "--fail-on", "none"]), env(&[]));
        assert_eq!(o.exit_code(0, &seen).0, 0);
        let o = CiOptions::resolve(&args(&["--no-ci", "--fail-on", "deny"]), env(&[]));
        assert_eq!(
            o.exit_code(0, &seen).0,
            0,
            "outside CI mode nothing changes"
        );
        assert!(T::try_parse_from(["t", "--fail-on", "exfil,typo"]).is_err());
    }
}
