//! `enforcer launch` as a process: exit codes, signals, the enforcer dying
//! under the agent, bad input, and cleanup on every path.

use std::{process::Command, time::Duration};

use enforcer_e2e::{Launch, TestHost, files, launch::run_id_from, leftovers};

const DENY_ALL: &str = "[run]\nname = \"deny-all\"\n";

#[test]
fn the_agents_exit_code_is_the_enforcers() {
    let out = Launch::new(DENY_ALL, &["/bin/sh", "-c", "exit 7"]).run();
    assert_eq!(out.code(), 7, "{out:?}");
    out.assert_clean();
    let out = Launch::new(DENY_ALL, &["/bin/sh", "-c", "kill -KILL $$"]).run();
    assert_eq!(out.code(), 128 + 9, "{out:?}");
    out.assert_clean();
    let out = Launch::new(DENY_ALL, &["/bin/true"]).run();
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("exited with code 0"), "{}", out.stderr);
}

#[test]
fn the_agent_runs_unprivileged_in_its_own_cgroup() {
    let out = Launch::new(
        DENY_ALL,
        &[
            "/bin/sh",
            "-c",
            "id -u; grep NoNewPrivs /proc/self/status; cat /proc/self/cgroup; ls /proc/self/fd",
        ],
    )
    .run();
    out.assert_clean();
    let run_id = out.run_id.clone().expect("run id");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "65534", "{out:?}");
    assert!(lines[1].ends_with('1'), "no_new_privs: {}", lines[1]);
    assert!(
        out.stdout.contains(&format!("/enforcer/{run_id}")),
        "cgroup: {}",
        out.stdout
    );
    // stdin, stdout, stderr and the fd ls itself opens: nothing inherited.
    let fds: Vec<&str> = lines[lines.len() - 4..].to_vec();
    assert_eq!(fds, vec!["0", "1", "2", "3"], "inherited fds: {out:?}");
}

#[test]
fn sudo_callers_run_the_agent_as_themselves() {
    let out = Command::new(files::enforcer())
        .args(["launch", "--policy"])
        .arg(files::write("p.toml", DENY_ALL))
        // Never the machine's own audit log.
        .arg("--audit-db")
        .arg(files::audit_db())
        .args(["--", "/usr/bin/id", "-u"])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_root_agent_needs_allow_root() {
    let out = Command::new(files::enforcer())
        .args(["launch", "--policy"])
        .arg(files::write("p.toml", DENY_ALL))
        // Never the machine's own audit log.
        .arg("--audit-db")
        .arg(files::audit_db())
        .args(["--", "/usr/bin/id", "-u"])
        .env_remove("SUDO_UID")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to run the agent as root"),
        "{stderr}"
    );
    assert!(
        run_id_from(&stderr).is_none(),
        "nothing may start: {stderr}"
    );
}

#[test]
fn sigterm_and_sigint_are_forwarded_to_the_agent() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let running = Launch::probe(DENY_ALL, &["sleep", "30"]).spawn();
        std::thread::sleep(Duration::from_millis(800));
        running.signal(sig);
        let started = std::time::Instant::now();
        let out = running.wait(Duration::from_secs(20));
        assert_eq!(out.code(), code, "signal {sig}: {out:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        out.assert_clean();
    }
}

#[test]
fn sigkill_of_the_enforcer_kills_the_agent_and_cleans_up() {
    let host = TestHost::new();
    let log = files::agent_writable("loop.txt");
    let log_s = log.to_str().expect("utf-8").to_string();
    let running = Launch::probe(DENY_ALL, &["loop-tcp", &host.tcp4().to_string(), &log_s]).spawn();
    assert!(
        leftovers::eventually(10, || std::fs::read_to_string(&log)
            .is_ok_and(|s| s.lines().count() >= 3)),
        "the agent never started looping"
    );
    running.signal(libc::SIGKILL);
    let out = running.wait(Duration::from_secs(10));
    assert_eq!(out.code(), 137);
    let run_id = out.run_id.clone().expect("run id");
    assert!(
        leftovers::eventually(10, || leftovers::processes_matching(&log_s).is_empty()),
        "the agent outlived its enforcer"
    );
    leftovers::assert_run_gone(&run_id);
    host.assert_untouched("after SIGKILL");
}

#[test]
fn pinned_enforcement_outlives_a_sigkilled_enforcer_and_stays_closed() {
    let _alone = CLEANUP_ALL.lock();
    let host = TestHost::new();
    let log = files::agent_writable("pinned-loop.txt");
    let log_s = log.to_str().expect("utf-8").to_string();
    let running = Launch::probe(DENY_ALL, &["loop-tcp", &host.tcp4().to_string(), &log_s])
        .flag("--pin")
        .spawn();
    assert!(
        leftovers::eventually(10, || std::fs::read_to_string(&log)
            .is_ok_and(|s| s.lines().count() >= 3)),
        "the agent never started looping"
    );
    running.signal(libc::SIGKILL);
    let out = running.wait(Duration::from_secs(10));
    let run_id = out.run_id.clone().expect("run id");
    // The agent lives on, still inside its cgroup, with the programs attached.
    let before = std::fs::read_to_string(&log).expect("log").lines().count();
    std::thread::sleep(Duration::from_secs(1));
    let text = std::fs::read_to_string(&log).expect("log");
    let after_lines: Vec<&str> = text.lines().skip(before).collect();
    assert!(after_lines.len() >= 5, "the pinned agent stopped: {text}");
    assert!(
        after_lines.iter().all(|l| l.starts_with("err")),
        "a connection succeeded after the enforcer died: {after_lines:?}"
    );
    assert!(leftovers::run_cgroup(&run_id).exists());
    assert!(leftovers::run_pins(&run_id).exists());
    host.assert_untouched("pinned, after SIGKILL");
    // `enforcer cleanup RUN_ID` ends it.
    let cleanup = Command::new(files::enforcer())
        .args(["cleanup", &run_id])
        .output()
        .expect("cleanup");
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(
        leftovers::eventually(10, || leftovers::processes_matching(&log_s).is_empty()),
        "cleanup left the agent running"
    );
    leftovers::assert_run_gone(&run_id);
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing() {
    // Missing policy file.
    let out = Command::new(files::enforcer())
        .args([
            "launch",
            "--policy",
            "/nonexistent/policy.toml",
            "--user",
            "nobody",
            "--",
            "/bin/true",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/policy.toml"), "{stderr}");
    assert!(run_id_from(&stderr).is_none());

    // Unknown key: file:line:col and exit 2.
    let out = Launch::new(
        "[run]\nname = \"x\"\nflavour = \"strict\"\n",
        &["/bin/true"],
    )
    .run();
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains(":3:1"), "{}", out.stderr);
    assert!(out.stderr.contains("flavour"), "{}", out.stderr);
    assert!(out.run_id.is_none());

    // Command not found.
    let out = Launch::new(DENY_ALL, &["definitely-not-a-command-xyz"]).run();
    assert_eq!(out.code(), 127, "{out:?}");
    assert!(
        out.stderr
            .contains("command not found: definitely-not-a-command-xyz"),
        "{}",
        out.stderr
    );
    assert!(out.run_id.is_none());

    // A program nobody may execute: the run was set up, and is torn down.
    let secret = files::scratch_dir().join("root-only.sh");
    std::fs::write(&secret, "#!/bin/sh\nexit 0\n").expect("write");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = Launch::new(DENY_ALL, &[secret.to_str().expect("utf-8")]).run();
    assert_eq!(out.code(), 126, "{out:?}");
    out.assert_clean();

    // Not root.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(files::enforcer())
        .args(["launch", "--policy"])
        .arg(files::write("p.toml", DENY_ALL))
        .args(["--", "/bin/true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must run as root"));
}

/// `enforcer cleanup` without a run id removes every run whose enforcer is
/// dead, and a pinned run's enforcer is dead on purpose: the two tests take
/// turns.
static CLEANUP_ALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn cleanup_removes_control_sockets_whose_run_is_gone() {
    let _alone = CLEANUP_ALL.lock();
    // What a run killed together with its watchdog leaves: a socket file.
    let id = format!("20000101-000000-{:06x}", std::process::id() & 0xff_ffff);
    std::fs::create_dir_all("/run/enforcer/runs").expect("runs dir");
    let sock = format!("/run/enforcer/runs/{id}.sock");
    std::fs::write(&sock, "").expect("orphan socket file");
    let out = Command::new(files::enforcer())
        .arg("cleanup")
        .output()
        .expect("cleanup");
    assert!(out.status.success(), "{out:?}");
    assert!(!std::path::Path::new(&sock).exists(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&id),
        "{out:?}"
    );
}
