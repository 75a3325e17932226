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

/// A scratch directory that everybody may read (for the unprivileged runs).
fn scratch(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("enforcer-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
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
    let _ = std::fs::remove_dir_all(dir);
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
    let _ = std::fs::remove_dir_all(dir);
}
