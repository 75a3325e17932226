//! Replay and suggest against a real audit database: an observed job's
//! suggested policy refuses none of it and still refuses a new
//! destination; an added deny rule shows as newly refused.

use std::path::Path;

use super::*;
use crate::{
    audit::{AuditStore, EventFilter, testutil},
    decision::{Cause, Decision, DecisionSink, Layer, LogMode},
    policy::suggest::{Recording, suggest},
};

fn record(db: &Path, run: &str, decisions: &[Decision]) -> Vec<EventRow> {
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
    });
    drop(sink);
    AuditStore::open_read_only(db)
        .expect("reopen")
        .events(&EventFilter {
            run_id: Some(run.into()),
            ..EventFilter::default()
        })
        .expect("events")
}

fn would(layer: Layer, host: &str, port: u16) -> Decision {
    Decision::new(layer, Cause::WouldDeny, "host is not in the policy")
        .host(host)
        .port(port)
}

fn observed_job() -> Vec<Decision> {
    let req = |m: &str, p: &str| {
        would(Layer::Request, "api.stripe.test", 443)
            .request(m, p)
            .rule("no rule matches; default deny", None)
    };
    vec![
        Decision::new(Layer::Dns, Cause::WouldDeny, "not in the policy").host("api.stripe.test"),
        would(Layer::Connection, "api.stripe.test", 443),
        req("GET", "/v1/customers/cus_NffrFeUfNV2Hib"),
        req("GET", "/v1/customers/cus_Q2dbk7sW9zeXa1"),
        req("POST", "/v1/payment_intents"),
        req(
            "POST",
            "/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/confirm",
        ),
        req("GET", "/v1/charges/123e4567-e89b-12d3-a456-426614174000"),
        Decision::new(Layer::Dns, Cause::WouldDeny, "not in the policy").host("pypi.test"),
        would(Layer::Connection, "pypi.test", 443),
        Decision::new(Layer::Kernel, Cause::Kernel, "UDP refused")
            .host("10.1.2.3")
            .port(9999),
    ]
}

#[test]
fn a_suggested_policy_refuses_nothing_the_job_did_and_still_refuses_a_new_destination() {
    let dir = testutil::TempDir::new("suggest");
    let db = dir.path().join("audit.db");
    let events = record(&db, "run-observe", &observed_job());
    let text = suggest(&Recording {
        runs: &["run-observe".to_string()],
        name: Some("ci-job"),
        events: &events,
    })
    .expect("a policy that loads");
    assert!(text.contains("path = \"/v1/customers/cus_*\""), "{text}");
    assert!(
        text.contains("path = \"/v1/payment_intents/pi_*/confirm\""),
        "{text}"
    );
    assert!(text.contains("path = \"/v1/charges/*\""), "{text}");
    assert!(
        text.contains("name = \"pypi.test\"\naction = \"allow\""),
        "{text}"
    );
    assert!(
        text.contains("10.1.2.3:9999 refused in the kernel"),
        "{text}"
    );
    let policy = Policy::parse(&text, Path::new("suggested.toml")).expect("parses");

    // The same job under the suggested policy: nothing refused.
    let r = replay(&policy, &events);
    assert_eq!(r.count(ChangeKind::NewlyRefused), 0, "{r}");
    assert_eq!(r.count(ChangeKind::NewlyAsked), 0, "{r}");
    assert_eq!(r.replayed, 9, "{r}");
    assert_eq!(
        r.count(ChangeKind::NewlyAllowed),
        9,
        "every would-deny is now allowed: {r}"
    );
    // Another customer id is allowed by the generalised rule...
    let h = policy.host("api.stripe.test").expect("host");
    assert_eq!(
        h.decide("GET", "/v1/customers/cus_ZZZZZZZZ1").action,
        Action::Allow
    );
    // ...and what the job never did is not.
    assert_eq!(h.decide("POST", "/v1/refunds").action, Action::Deny);
    assert_eq!(
        h.decide("GET", "/v1/customers/acct_1234567890").action,
        Action::Deny
    );

    // A new destination added to the job is refused.
    let newer = record(
        &db,
        "run-new-destination",
        &[
            Decision::new(Layer::Dns, Cause::Allowed, "allowed").host("evil.test"),
            Decision::new(Layer::Connection, Cause::PassedThrough, "allowed")
                .host("evil.test")
                .port(443),
        ],
    );
    let r = replay(&policy, &newer);
    assert_eq!(r.count(ChangeKind::NewlyRefused), 2, "{r}");
    assert!(r.to_string().contains("evil.test:443 allow -> deny"), "{r}");
}

#[test]
fn an_added_deny_rule_is_reported_as_newly_refused() {
    let dir = testutil::TempDir::new("replay");
    let db = dir.path().join("audit.db");
    let allowed = |p: &str| {
        Decision::new(Layer::Request, Cause::Allowed, "rule 1")
            .host("api.github.test")
            .port(443)
            .request("GET", p)
    };
    let events = record(
        &db,
        "run-1",
        &[
            allowed("/repos/o/r"),
            allowed("/repos/o/r/issues"),
            allowed("/repos/o/r/issues"),
            Decision::new(Layer::Request, Cause::Exfiltration, "placeholder")
                .host("api.github.test")
                .port(443)
                .request("GET", "/x"),
        ],
    );
    let before = "[[host]]\nname = \"api.github.test\"\n\n  [[host.rule]]\n  method = \"GET\"\n  path = \"/repos/**\"\n  action = \"allow\"\n";
    let p = Policy::parse(before, Path::new("before.toml")).expect("before");
    let r = replay(&p, &events);
    assert!(!r.changed(), "{r}");
    assert_eq!(
        (r.replayed, r.skipped),
        (3, 1),
        "the alarm is not a policy decision"
    );

    let after = "[[host]]\nname = \"api.github.test\"\n\n  [[host.rule]]\n  method = \"GET\"\n  path = \"/repos/*/*/issues/**\"\n  action = \"deny\"\n\n  [[host.rule]]\n  method = \"GET\"\n  path = \"/repos/**\"\n  action = \"allow\"\n";
    let p = Policy::parse(after, Path::new("after.toml")).expect("after");
    let r = replay(&p, &events);
    assert!(r.changed());
    assert_eq!(r.count(ChangeKind::NewlyRefused), 2, "{r}");
    assert_eq!(r.changes.len(), 1, "grouped: {r}");
    assert!(
        r.to_string()
            .contains("GET api.github.test:443/repos/o/r/issues allow -> deny  x2  (GET /repos/*/*/issues/** -> deny (rule 1"),
        "{r}"
    );
}
