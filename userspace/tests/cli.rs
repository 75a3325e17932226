//! The `enforcer` binary as a new user meets it, without root or a run:
//! exit codes, `| head`, `policy explain --exit-code`, the examples in
//! `--help`, the root check before secrets, durations, and what stderr
//! looks like in a file or with `--log-json`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn enforcer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_enforcer"));
    // Whatever the developer's shell has, the tests see the defaults.
    c.env_remove("NO_COLOR").env_remove("ENFORCER_LOG");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn policy(name: &str) -> String {
    repo()
        .join("policies")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run enforcer")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A scratch directory that everybody may read (for the unprivileged runs),
/// removed when the test ends.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("enforcer-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Scratch(dir)
}

// ---- enforcer cleanup ----------------------------------------------------

#[test]
fn cleanup_of_an_unknown_run_says_so_and_fails() {
    let id = "20990101-000000-c1ea00";
    let out = run(enforcer().args(["cleanup", id]));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    if is_root() {
        assert!(
            err.contains(&format!("no run {id}")),
            "cleanup should say the run is unknown: {err}"
        );
        assert!(!err.contains("nothing to clean up"), "{err}");
    } else {
        assert!(err.contains("root"), "{err}");
    }
}

#[test]
fn cleanup_of_something_that_is_not_a_run_id_fails_without_root() {
    let out = run(enforcer().args(["cleanup", "../etc"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("not a run id"), "{out:?}");
}

// ---- | head --------------------------------------------------------------

/// Runs `c` with its stdout already closed by the reader, as `| head` does
/// once it has its lines (closed before the command starts, so that every
/// write fails, however fast the command is).
fn with_closed_stdout(c: &mut Command) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = c.stdout(writer).output().expect("run enforcer");
    (out.status, text(&out.stderr))
}

fn assert_quiet_sigpipe(what: &str, status: std::process::ExitStatus, stderr: &str) {
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        stderr.is_empty(),
        "{what}: a closed stdout must end the command quietly, stderr was:\n{stderr}"
    );
    assert!(
        status.signal() == Some(libc::SIGPIPE) || status.code() == Some(128 + libc::SIGPIPE),
        "{what}: expected the conventional SIGPIPE status (141), got {status:?}"
    );
}

#[test]
fn a_closed_stdout_ends_policy_check_quietly() {
    let (status, err) =
        with_closed_stdout(enforcer().args(["policy", "check", &policy("billing.toml")]));
    assert_quiet_sigpipe("policy check", status, &err);
}

#[test]
fn a_closed_stdout_ends_policy_explain_quietly() {
    let (status, err) = with_closed_stdout(enforcer().args([
        "policy",
        "explain",
        &policy("billing.toml"),
        "GET",
        "https://api.stripe.com/v1/customers/cus_1",
    ]));
    assert_quiet_sigpipe("policy explain", status, &err);
}

#[test]
fn a_closed_stdout_ends_audit_queries_quietly() {
    let dir = scratch("audit-head");
    let db = dir.join("audit.db");
    drop(enforcer::audit::AuditStore::open(&db).unwrap());
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "INSERT INTO runs (id, name, policy_path, policy_sha256, invoking_user, uid, command, cgroup, started_at)
         VALUES ('20261122-101502-3fa9c1', 'agent', 'p.toml', '', 'me', 1000, 'curl', '/cg', '2026-11-22 10:15:02.000');",
    )
    .unwrap();
    for i in 0..2000 {
        c.execute(
            "INSERT INTO events (run_id, at, layer, verdict, host, port, reason)
             VALUES ('20261122-101502-3fa9c1', '2026-11-22 10:15:03.000', 'connection', 'deny', ?1, 443, 'not in the policy')",
            [format!("host{i}.example")],
        )
        .unwrap();
    }
    drop(c);
    let db = db.to_string_lossy().into_owned();
    for format in ["table", "jsonl", "csv"] {
        let (status, err) = with_closed_stdout(enforcer().args([
            "audit",
            "events",
            "--audit-db",
            &db,
            "--format",
            format,
        ]));
        assert_quiet_sigpipe(&format!("audit events --format {format}"), status, &err);
    }
    let (status, err) = with_closed_stdout(enforcer().args(["audit", "runs", "--audit-db", &db]));
    assert_quiet_sigpipe("audit runs", status, &err);
}

#[test]
fn a_closed_stdout_ends_status_quietly() {
    if !is_root() {
        eprintln!("skipped: `enforcer status` needs root");
        return;
    }
    let (status, err) = with_closed_stdout(enforcer().args(["status"]));
    assert_quiet_sigpipe("status", status, &err);
    let (status, err) = with_closed_stdout(enforcer().args(["approvals"]));
    assert_quiet_sigpipe("approvals", status, &err);
}

// ---- policy explain --exit-code ----------------------------------------

#[test]
fn explain_exit_code_tells_allow_deny_and_ask_apart() {
    let billing = policy("billing.toml");
    for (method, url, code) in [
        ("GET", "https://api.stripe.com/v1/customers/cus_1", 0),
        ("DELETE", "https://api.stripe.com/v1/customers/cus_1", 1),
        ("GET", "https://evil.example/", 1),
        ("POST", "https://api.stripe.com/v1/refunds", 3),
    ] {
        let out = run(enforcer().args(["policy", "explain", "--exit-code", &billing, method, url]));
        assert_eq!(out.status.code(), Some(code), "{method} {url}: {out:?}");
        // Without the flag, an answer is a success whatever it says.
        let out = run(enforcer().args(["policy", "explain", &billing, method, url]));
        assert_eq!(out.status.code(), Some(0), "{method} {url}: {out:?}");
    }
    // A policy or usage error is 2, with or without the flag.
    let out = run(enforcer().args([
        "policy",
        "explain",
        "--exit-code",
        "/nonexistent/p.toml",
        "GET",
        "https://a.example/",
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(enforcer().args([
        "policy",
        "explain",
        "--exit-code",
        &billing,
        "GET",
        "not a url",
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn explain_shows_cost_caps_rate_and_secrets_of_the_match() {
    let out = run(enforcer().args([
        "policy",
        "explain",
        &policy("billing.toml"),
        "POST",
        "https://api.stripe.com/v1/payment_intents",
    ]));
    assert!(out.status.success(), "{out:?}");
    let s = text(&out.stdout);
    for want in [
        "-> ALLOW",
        "cost: form field amount / 100, currency from form field currency",
        "spend cap: $500 per run",
        "rate: 60/min",
        "secret STRIPE_SECRET_KEY: header Authorization: Bearer {}",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
    assert!(!s.contains("sk_live_") || s.contains("placeholder"), "{s}");
}

// ---- launch --help -------------------------------------------------------

/// Every `enforcer launch` example in `launch --help` names a policy in
/// policies/ that loads, and a `curl URL` example is allowed by it.
#[test]
fn launch_help_examples_are_allowed_by_the_policies_they_name() {
    let out = run(enforcer().args(["launch", "--help"]));
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout).replace("\\\n", " ");
    let examples: Vec<&str> = help
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("enforcer launch ") && !l.starts_with("Usage:"))
        .collect();
    assert!(!examples.is_empty(), "no examples in:\n{help}");
    for (i, ex) in examples.iter().enumerate() {
        let words: Vec<&str> = ex.split_whitespace().collect();
        let file = words
            .iter()
            .position(|w| *w == "--policy")
            .and_then(|p| words.get(p + 1))
            .unwrap_or_else(|| panic!("example without --policy: {ex}"));
        let path = repo().join(file);
        assert!(path.is_file(), "{ex}: {file} is not in the repository");
        let check = run(enforcer().args(["policy", "check"]).arg(&path));
        assert!(check.status.success(), "{ex}: {check:?}");
        if i == 0 {
            assert!(
                words.iter().any(|w| w.starts_with("https://")),
                "the first example should fetch a URL: {ex}"
            );
        }
        if let Some(url) = words.iter().find(|w| w.starts_with("https://")) {
            let x = run(enforcer()
                .args(["policy", "explain", "--exit-code"])
                .arg(&path)
                .args(["GET", url]));
            assert_eq!(
                x.status.code(),
                Some(0),
                "example {} ({ex}) is not allowed by its policy: {}",
                i + 1,
                text(&x.stdout)
            );
        }
        // The secrets the policy reads must be passed through sudo.
        let summary = text(&check.stdout);
        for line in summary.lines().filter(|l| l.contains("from env:")) {
            let var = line
                .split("from env:")
                .nth(1)
                .and_then(|s| s.split([',', ' ']).next())
                .unwrap_or_default();
            assert!(
                ex.contains(&format!("--preserve-env={var}")),
                "{ex}: the policy reads env:{var}, which sudo drops unless preserved"
            );
        }
    }
}

// ---- launch: root before secrets ---------------------------------------

#[test]
fn launch_checks_for_root_before_reading_secrets() {
    use std::os::unix::process::CommandExt as _;
    let dir = scratch("root-first");
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        r#"
[[secret]]
name = "ENFORCER_TEST_NOT_SET"
from = "env:ENFORCER_TEST_NOT_SET"
hosts = ["api.example.com"]
header = "Authorization"

[[host]]
name = "api.example.com"
action = "allow"
"#,
    )
    .unwrap();
    let mut c = enforcer();
    c.args(["launch", "--policy"])
        .arg(&p)
        .args(["--", "/bin/true"])
        .env_remove("ENFORCER_TEST_NOT_SET");
    if is_root() {
        c.uid(65534).gid(65534);
    }
    let out = run(&mut c);
    let err = text(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
    assert!(!err.contains("ENFORCER_TEST_NOT_SET"), "{err}");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

// ---- durations ------------------------------------------------------------

#[test]
fn one_duration_grammar_on_the_command_line() {
    // A spelling the policy accepts is accepted by every duration flag, and
    // a bad one is a usage error saying what was expected.
    let out = run(enforcer().args([
        "launch",
        "--policy",
        &policy("deny-all.toml"),
        "--ttl",
        "3 fortnights",
        "--",
        "/bin/true",
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("--ttl"), "{err}");
    assert!(err.contains("e.g. \"90s\""), "{err}");
    let out = run(enforcer().args([
        "launch",
        "--policy",
        &policy("deny-all.toml"),
        "--approval-timeout",
        "soon",
        "--",
        "/bin/true",
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--approval-timeout"), "{out:?}");
    let dir = scratch("durations");
    let db = dir.join("audit.db");
    drop(enforcer::audit::AuditStore::open(&db).unwrap());
    for since in ["1h30m", "90m", "2 days", "1w"] {
        let out = run(enforcer()
            .args(["audit", "events", "--since", since, "--audit-db"])
            .arg(&db));
        assert!(out.status.success(), "--since {since}: {out:?}");
    }
    let out = run(enforcer()
        .args(["audit", "events", "--since", "yesterday", "--audit-db"])
        .arg(&db));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

// ---- stderr in a file, and --log-json ----------------------------------

#[test]
fn stderr_to_a_pipe_has_no_colour_escapes() {
    use std::os::unix::fs::PermissionsExt as _;
    // `audit prune` warns (through tracing) about a database others can read.
    let dir = scratch("colour");
    let db = dir.join("audit.db");
    drop(enforcer::audit::AuditStore::open(&db).unwrap());
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(enforcer()
        .args(["audit", "prune", "--older-than", "30d", "--audit-db"])
        .arg(&db));
    assert!(out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("chmod 600"),
        "expected the permissions warning: {err}"
    );
    assert!(!err.contains('\u{1b}'), "colour escapes in a pipe: {err:?}");
}

#[test]
fn log_json_makes_every_stderr_line_json() {
    let out = run(enforcer().args([
        "launch",
        "--log-json",
        "--policy",
        "/nonexistent/policy.toml",
        "--",
        "/bin/true",
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert!(!err.trim().is_empty());
    for line in err.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nall of stderr:\n{err}"));
        let ts = v["ts"].as_str().unwrap_or_default();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "not an RFC 3339 UTC timestamp: {line}"
        );
        assert_eq!(v["level"], "error", "{line}");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("/nonexistent/policy.toml")),
            "{line}"
        );
    }
    // A usage error too (the agent's own `--log-json` after `--` does not count).
    let out = run(enforcer().args([
        "launch",
        "--log-json",
        "--ttl",
        "soon",
        "--policy",
        "p.toml",
        "--",
        "/bin/true",
    ]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    let v: serde_json::Value = serde_json::from_str(err.trim()).expect("one JSON line");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("--ttl")),
        "{err}"
    );
    let out = run(enforcer().args(["launch", "--ttl", "soon", "--", "tool", "--log-json"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).starts_with("error:"), "{out:?}");
}

/// An audit database with one recorded run (real SQLite, written by the
/// same writer a launch uses): two allowed GETs and one refused POST.
fn recorded_db(dir: &Path) -> (PathBuf, String) {
    use enforcer::{
        audit::{AuditStore, RunInfo},
        decision::{Cause, Decision, DecisionSink, Layer, LogMode},
    };
    let db = dir.join("audit.db");
    let run = String::from("20261130-000000-c1c1c1");
    let store = AuditStore::open(&db).expect("open");
    store
        .start_run(&RunInfo {
            run_id: run.clone(),
            name: "ci-job".into(),
            policy_path: "p.toml".into(),
            policy_sha256: String::new(),
            invoking_user: "dev".into(),
            uid: 1000,
            command: "job".into(),
            cgroup: String::new(),
            started_at: std::time::SystemTime::now(),
            ttl_seconds: None,
            label: None,
            unit: None,
        })
        .expect("start");
    let sink = DecisionSink::with_audit(&run, LogMode::Quiet, Some(store.writer()));
    let allowed = |p: &str| {
        Decision::new(Layer::Request, Cause::Allowed, "rule 1")
            .host("api.github.test")
            .port(443)
            .request("GET", p)
    };
    let decisions = [
        allowed("/repos/o/r"),
        allowed("/repos/o/r/issues/12"),
        Decision::new(Layer::Request, Cause::DefaultDeny, "no rule matches")
            .host("api.github.test")
            .port(443)
            .request("POST", "/repos/o/r/issues"),
    ];
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            for d in &decisions {
                sink.commit(d).await.expect("commit");
            }
        });
    drop(sink);
    (db, run)
}

#[test]
fn policy_test_exits_1_on_a_newly_refused_request_and_0_when_nothing_changes() {
    let dir = scratch("policy-test");
    let (db, run_id) = recorded_db(&dir);
    let write = |name: &str, rules: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("[[host]]\nname = \"api.github.test\"\n{rules}"))
            .expect("write");
        p
    };
    let rule = |m: &str, p: &str, a: &str| {
        format!("  [[host.rule]]\n  method = \"{m}\"\n  path = \"{p}\"\n  action = \"{a}\"\n")
    };
    let same = write("same.toml", &rule("GET", "/repos/**", "allow"));
    let stricter = write(
        "stricter.toml",
        &(rule("GET", "/repos/*/*/issues/**", "deny") + &rule("GET", "/repos/**", "allow")),
    );
    let test = |policy: &Path| {
        run(enforcer()
            .args(["policy", "test"])
            .arg(policy)
            .arg("--against")
            .arg(&db)
            .args(["--run", &run_id]))
    };
    let o = test(&same);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(text(&o.stdout).contains("no change"), "{}", text(&o.stdout));
    let o = test(&stricter);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let out = text(&o.stdout);
    assert!(out.contains("newly refused (1):"), "{out}");
    assert!(
        out.contains("GET api.github.test:443/repos/o/r/issues/12 allow -> deny"),
        "{out}"
    );
    // A policy that does not load: 2, with file:line.
    let broken = write("broken.toml", "  [[host.rule]]\n  method = \"GET\"\n");
    let o = test(&broken);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("broken.toml:3"),
        "{}",
        text(&o.stderr)
    );
    // An unknown run: 2.
    let o = run(enforcer()
        .args(["policy", "test"])
        .arg(&same)
        .arg("--against")
        .arg(&db)
        .args(["--run", "nope"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

#[test]
fn policy_check_json_names_each_problem_and_the_schema_is_printed() {
    let o = run(enforcer().args(["policy", "check", "--json", &policy("billing.toml")]));
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ok"], true);
    assert!(
        v["summary"]
            .as_str()
            .is_some_and(|s| s.contains("api.stripe.com"))
    );
    let dir = scratch("check-json");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[host]]\nname = \"a.test\"\nportz = [1]\n").expect("write");
    let o = run(enforcer().args(["policy", "check", "--json"]).arg(&bad));
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], 3, "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("portz")),
        "{v}"
    );
    let o = run(enforcer().args(["policy", "schema"]));
    let schema: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the schema");
    assert_eq!(schema["title"], "enforcer policy");
}
