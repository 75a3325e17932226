//! Approvals for `action = "ask"`, end to end: a request waits, unforwarded,
//! until a human answers through the control socket (`enforcer approvals`,
//! `approve`, `deny`) or on the launching terminal; `always`, the timeout
//! and `--approver none`; and an agent that tries to answer its own prompt.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, time::Duration};

use enforcer_e2e::{files, leftovers, world::VendorWorld};

const REAL: &str = "sk_live_APPROVALSKEY0123456789abcdefABCD";

fn key_file() -> PathBuf {
    let p = files::scratch_dir().join(format!("approvals-key-{}", std::process::id()));
    std::fs::write(&p, format!("{REAL}\n")).expect("write key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    p
}

fn policy() -> String {
    format!(
        r#"
[[secret]]
name = "VENDOR_KEY"
from = "file:{key}"
hosts = ["api.vendor.test"]
header = "Authorization"
format = "Bearer {{}}"

[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = ["POST"]
  path = "/v1/refunds"
  action = "ask"
  [[host.rule]]
  method = ["POST"]
  path = "/v1/payouts"
  action = "ask"
  [[host.rule]]
  method = ["GET"]
  path = "/v1/**"
  action = "allow"
"#,
        key = key_file().display()
    )
}

/// A shell loop of POSTs, each printing `<what> <status>`.
fn posts(paths: &[&str]) -> String {
    format!(
        "for p in {}; do curl -sS -m 60 -o /dev/null -w \"$p %{{http_code}}\\n\" -X POST \
         -H \"Authorization: Bearer $VENDOR_KEY\" -d amount=100 https://api.vendor.test/v1/$p; done",
        paths.join(" ")
    )
}

fn enforcer(args: &[&str]) -> std::process::Output {
    std::process::Command::new(files::enforcer())
        .args(args)
        .output()
        .expect("run enforcer")
}

/// Waits for a request of `run` to be pending and returns it (JSON).
fn next_pending(run: &str, answered: &[u64]) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = enforcer(&["approvals", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let found = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|p| p["run_id"] == run && !answered.contains(&p["id"].as_u64().unwrap_or(0)));
        if let Some(p) = found {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request waited for approval"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn approve_deny_and_always_through_the_control_socket() {
    let w = VendorWorld::new();
    let script = posts(&["refunds", "refunds", "refunds", "refunds", "payouts"]);
    let running = w
        .launch(&policy(), &["/bin/sh", "-c", &script])
        .flag("--approver")
        .flag("socket")
        .spawn();
    let run = running.run_id();
    let mut answered = Vec::new();
    for (path, answer) in [
        ("/v1/refunds", &["approve"][..]),
        ("/v1/refunds", &["deny"][..]),
        ("/v1/refunds", &["approve", "--always"][..]),
        // The fourth refund passes on the `always`; the payout still asks.
        ("/v1/payouts", &["deny"][..]),
    ] {
        let p = next_pending(&run, &answered);
        assert_eq!(p["path"], path, "{p}");
        assert_eq!(p["method"], "POST");
        assert_eq!(p["host"], "api.vendor.test");
        assert_eq!(p["secrets"], serde_json::json!(["VENDOR_KEY"]), "{p}");
        let before = w.vendor.count("POST", path);
        assert_eq!(
            before,
            w.vendor.count("POST", path),
            "nothing reaches the vendor while a request waits"
        );
        let id = p["id"].as_u64().expect("id");
        let id_s = id.to_string();
        // Other tests' runs may have a request with the same number.
        let mut args = vec![answer[0], id_s.as_str(), "--run", run.as_str()];
        args.extend(&answer[1..]);
        let out = enforcer(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        answered.push(id);
    }
    let out = running.wait(Duration::from_secs(60));
    out.assert_clean();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "refunds 200",
            "refunds 403",
            "refunds 200",
            "refunds 200",
            "payouts 403"
        ],
        "{out:?}"
    );
    assert_eq!(w.vendor.count("POST", "/v1/refunds"), 3);
    assert_eq!(w.vendor.count("POST", "/v1/payouts"), 0);
    // Approved requests got the real key.
    assert!(
        w.vendor
            .seen()
            .iter()
            .all(|s| s.authorization.as_deref() == Some(&format!("Bearer {REAL}")))
    );
    // The audit rows say who decided and how long it took.
    let db = rusqlite::Connection::open(files::audit_db()).expect("audit db");
    let rows: Vec<(String, String, Option<String>, Option<f64>)> = db
        .prepare(
            "SELECT path, verdict, approver, decided_ms FROM events \
             WHERE run_id = ?1 AND layer = 'request' ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([&run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .expect("query");
    assert_eq!(rows.len(), 5, "{rows:?}");
    for (i, (_, _, approver, decided)) in rows.iter().enumerate() {
        let approver = approver.as_deref().unwrap_or("");
        if i == 3 {
            assert!(approver.contains("always"), "{rows:?}");
        } else {
            assert!(approver.contains("enforcer approve"), "{rows:?}");
            assert!(decided.is_some_and(|d| d > 0.0), "{rows:?}");
        }
    }
    let verdicts: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(verdicts, ["allow", "deny", "allow", "allow", "deny"]);
}

#[test]
fn no_answer_before_the_timeout_is_a_denial() {
    let w = VendorWorld::new();
    let started = std::time::Instant::now();
    let out = w
        .launch(&policy(), &["/bin/sh", "-c", &posts(&["refunds"])])
        .flag("--approver")
        .flag("socket")
        .flag("--approval-timeout")
        .flag("2s")
        .run();
    out.assert_clean();
    assert_eq!(out.stdout.trim(), "refunds 403", "{out:?}");
    assert!(
        out.stderr.contains("no answer before the approval timeout"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(w.vendor.count("POST", "/v1/refunds"), 0);
}

#[test]
fn approver_none_denies_every_ask_at_once() {
    let w = VendorWorld::new();
    let out = w
        .launch(
            &policy(),
            &["/bin/sh", "-c", &posts(&["refunds", "payouts"])],
        )
        .flag("--approver")
        .flag("none")
        .run();
    out.assert_clean();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["refunds 403", "payouts 403"],
        "{out:?}"
    );
    assert!(out.stderr.contains("no approver"), "{}", out.stderr);
    assert_eq!(w.vendor.seen().len(), 0);
}

#[test]
fn answering_a_request_that_is_not_waiting_fails_clearly() {
    let out = enforcer(&["approve", "987654"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no live run has a waiting request 987654"),
        "{err}"
    );
}

/// The code printed at launch, which real prompts carry.
fn code_from_banner(screen: &str) -> String {
    let at = screen
        .find("Real prompts start with [enforcer approval ")
        .expect("the launch banner names the code");
    let rest = &screen[at + "Real prompts start with [enforcer approval ".len()..];
    rest[..9].to_string()
}

#[test]
fn the_launching_terminal_approves_and_denies() {
    let w = VendorWorld::new();
    let script = format!(
        "sleep 1; {}; echo agent-done",
        posts(&["refunds", "payouts"])
    );
    let (running, term) = w
        .launch(&policy(), &["/bin/sh", "-c", &script])
        .spawn_on_terminal();
    let run = running.run_id();
    let at = term.wait_for("Real prompts start with", 0, Duration::from_secs(30));
    let code = code_from_banner(&term.screen());
    let at = term.wait_for(
        &format!("[enforcer approval {code}]"),
        at,
        Duration::from_secs(30),
    );
    let at = term.wait_for("Allow? [y/N/always]", at, Duration::from_secs(10));
    let prompt = term.screen()[..at].to_string();
    assert!(
        prompt.contains("POST https://api.vendor.test/v1/refunds"),
        "{prompt}"
    );
    assert!(prompt.contains("secrets injected: VENDOR_KEY"), "{prompt}");
    assert_eq!(
        w.vendor.count("POST", "/v1/refunds"),
        0,
        "held, not forwarded"
    );
    term.type_keys("y\r");
    let at = term.wait_for("refunds 200", at, Duration::from_secs(30));
    let at = term.wait_for(
        &format!("[enforcer approval {code}]"),
        at,
        Duration::from_secs(30),
    );
    let at = term.wait_for("Allow? [y/N/always]", at, Duration::from_secs(10));
    term.type_keys("n\r");
    term.wait_for("payouts 403", at, Duration::from_secs(30));
    term.wait_for("agent-done", at, Duration::from_secs(30));
    let out = running.wait(Duration::from_secs(30));
    assert_eq!(out.code(), 0, "{}", term.screen());
    assert_eq!(w.vendor.count("POST", "/v1/refunds"), 1);
    assert_eq!(w.vendor.count("POST", "/v1/payouts"), 0);
    // The code appeared in the banner and the two prompts, nowhere else.
    assert_eq!(term.screen().matches(&code).count(), 3, "{}", term.screen());
    leftovers::assert_run_gone(&run);
}

#[test]
fn an_agent_cannot_answer_its_own_prompt() {
    let w = VendorWorld::new();
    let probe = files::probe();
    // While its request waits, the agent types `y` every way it can: into its
    // stdin and its terminal (writes), and with TIOCSTI into its terminal.
    let script = format!(
        "( while :; do printf 'y\\r' >&0; printf 'y\\r' > /dev/tty; printf 'y\\n'; \
           {probe} type-into-tty y > /tmp/ignored-$$ 2>&1; sleep 0.1; done ) & \
         {posts}; kill $!; {probe} type-into-tty y",
        probe = probe.display(),
        posts = posts(&["refunds"])
    );
    let (running, term) = w
        .launch(&policy(), &["/bin/sh", "-c", &script])
        .flag("--approval-timeout")
        .flag("4s")
        .spawn_on_terminal();
    let run = running.run_id();
    let at = term.wait_for("Real prompts start with", 0, Duration::from_secs(30));
    let code = code_from_banner(&term.screen());
    term.wait_for(
        &format!("[enforcer approval {code}]"),
        at,
        Duration::from_secs(30),
    );
    // Nobody at the keyboard answers.
    let at = term.wait_for("refunds 403", at, Duration::from_secs(30));
    term.wait_for("err EPERM", at, Duration::from_secs(30));
    running.wait(Duration::from_secs(30));
    let screen = term.screen();
    assert_eq!(w.vendor.count("POST", "/v1/refunds"), 0, "{screen}");
    assert!(
        screen.contains("(answered elsewhere or timed out)"),
        "{screen}"
    );
    assert!(
        screen.contains("typing into a terminal"),
        "TIOCSTI refusal reported: {screen}"
    );
    leftovers::assert_run_gone(&run);
}
