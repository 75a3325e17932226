//! The report from a real audit database: what it lists, the exit status
//! `--fail-on` gives, and that it validates against the shipped schema.

use std::path::Path;

use super::*;
use crate::{
    audit::{AuditStore, RunEnd, testutil},
    ci::{CiArgs, FailOn},
    decision::{Cause, Decision, DecisionSink, Layer, LogMode},
};

fn opts(ci: bool, fail_on: &[FailOn]) -> CiOptions {
    CiOptions::resolve(
        &CiArgs {
            ci,
            no_ci: !ci,
            fail_on: fail_on.to_vec(),
        },
        |_| None,
    )
}

/// Records `decisions` as run `run` in a fresh database; returns its summary.
fn recorded(db: &Path, run: &str, decisions: &[Decision]) -> RunSummary {
    let store = AuditStore::open(db).expect("open");
    store
        .start_run(&testutil::run_info(run, "ci-job"))
        .expect("start");
    let sink = DecisionSink::with_audit(run, LogMode::Quiet, Some(store.writer()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        for d in decisions {
            sink.commit(d).await.expect("commit");
        }
        sink.audit()
            .expect("writer")
            .finish_run(RunEnd {
                run_id: run.into(),
                ended_at: std::time::SystemTime::now(),
                exit_code: 0,
            })
            .await
            .expect("finish")
    })
}

fn job() -> Vec<Decision> {
    let allowed = |path: &str| {
        Decision::new(Layer::Request, Cause::Allowed, "rule 1")
            .host("api.github.test")
            .port(443)
            .request("GET", path)
            .rule("GET /repos/** -> allow", Some(7))
    };
    let mut asked = Decision::new(Layer::Request, Cause::NoApprover, "asked in CI: denied")
        .host("api.github.test")
        .port(443)
        .request("POST", "/repos/o/r/issues")
        .rule("POST /repos/*/*/issues -> ask", Some(9));
    asked.approver = Some("nobody (CI mode)".into());
    vec![
        allowed("/repos/o/r"),
        allowed("/repos/o/r"),
        allowed("/repos/o/s"),
        asked,
        Decision::new(Layer::Connection, Cause::NotInPolicy, "not in the policy")
            .host("evil.test")
            .port(443),
        Decision::new(
            Layer::Request,
            Cause::Exfiltration,
            "credential exfiltration attempt: placeholder of GITHUB_TOKEN sent to paste.test",
        )
        .host("paste.test")
        .port(80)
        .request("POST", "/upload")
        .process(4242, "curl"),
        Decision::new(Layer::Kernel, Cause::BenignProbe, "nscd").process(1, "sh"),
    ]
}

fn validate(report: &Report) {
    let schema: serde_json::Value = serde_json::from_str(REPORT_SCHEMA).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let value = serde_json::to_value(report).expect("serializes");
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{value:#}");
}

#[test]
fn a_ci_report_lists_the_run_and_validates_against_its_schema() {
    let dir = testutil::TempDir::new("ci-report");
    let db = dir.path().join("audit.db");
    let summary = recorded(&db, "run-1", &job());
    let o = opts(true, &[FailOn::Exfil, FailOn::Deny]);
    let r = Report::from_db(
        Inputs {
            opts: &o,
            mode: RunMode::Enforce,
            policy: Path::new("policy.toml"),
            summary,
            code: 0,
        },
        &db,
    )
    .expect("report");
    validate(&r);
    assert_eq!(r.enforcer_exit_code, crate::ci::EXIT_EXFILTRATION);
    assert_eq!(
        r.failed_on,
        vec![Violation::Exfiltration, Violation::Denied]
    );
    assert_eq!(r.allowed.total, 3);
    assert_eq!(r.allowed.entries.len(), 2, "grouped by destination");
    assert_eq!(r.allowed.entries[0].count, 2);
    assert_eq!(
        r.refused.total, 3,
        "ask, connection, exfiltration; not the probe"
    );
    assert_eq!(r.asked.total, 1);
    assert_eq!(r.exfiltration_attempts.len(), 1);
    assert_eq!(r.exfiltration_attempts[0].comm.as_deref(), Some("curl"));
    assert_eq!(
        r.violations,
        Violations {
            exfil: 1,
            cap: 0,
            ask: 1,
            deny: 3
        }
    );
    // The report on disk is the same document.
    let path = dir.path().join("report.json");
    r.write_json(&path).expect("write");
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    assert_eq!(back["report_version"], 1);
    assert_eq!(
        back["exit_code"], 0,
        "the agent's status stays where it was"
    );
    assert_eq!(back["enforcer_exit_code"], 80);
}

#[test]
fn the_schema_rejects_a_report_that_drifted_from_it() {
    let dir = testutil::TempDir::new("ci-drift");
    let db = dir.path().join("audit.db");
    let summary = recorded(&db, "run-2", &job());
    let o = opts(true, &[FailOn::Exfil]);
    let r = Report::from_db(
        Inputs {
            opts: &o,
            mode: RunMode::Observe,
            policy: Path::new("p.toml"),
            summary,
            code: 0,
        },
        &db,
    )
    .expect("report");
    validate(&r);
    let schema: serde_json::Value = serde_json::from_str(REPORT_SCHEMA).expect("schema");
    let validator = jsonschema::validator_for(&schema).expect("compiles");
    let mut v = serde_json::to_value(&r).expect("value");
    v["unexpected"] = serde_json::json!(1);
    assert!(!validator.is_valid(&v), "unknown fields are caught");
    let mut v = serde_json::to_value(&r).expect("value");
    v["mode"] = serde_json::json!("audit");
    assert!(!validator.is_valid(&v));
}

#[test]
fn outside_ci_mode_the_agents_status_stands_and_the_markdown_says_what_happened() {
    let dir = testutil::TempDir::new("ci-md");
    let db = dir.path().join("audit.db");
    let summary = recorded(&db, "run-3", &job());
    let o = opts(false, &[FailOn::Exfil]);
    let r = Report::from_db(
        Inputs {
            opts: &o,
            mode: RunMode::Enforce,
            policy: Path::new("p.toml"),
            summary,
            code: 0,
        },
        &db,
    )
    .expect("report");
    validate(&r);
    assert_eq!(r.enforcer_exit_code, 0);
    assert!(r.fail_on.is_empty());
    let md = crate::ci::markdown::render(&r);
    assert!(md.contains("1 credential exfiltration attempt**"), "{md}");
    assert!(md.contains("#### Refused (3)"), "{md}");
    assert!(md.contains("paste\\.test"), "{md}");
}
