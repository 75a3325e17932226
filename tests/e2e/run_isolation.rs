//! Runs are isolated from each other and from the user's other processes,
//! also when they share a user: a run can read nothing of another run's
//! processes (environment, memory, file descriptors, sockets) nor trace or
//! signal them, and the same holds for the user's processes outside any run.
//! What an agent does to its own files and its own children keeps working.

use std::{
    io::{BufReader, Read as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use enforcer_e2e::{Launch, files, leftovers};

/// The user every run here shares (the harness default).
const AGENT_UID: u32 = 65534;
const DENY_ALL: &str = "[run]\nname = \"deny-all\"\n";
/// The real key of the victim run: only enforcer ever holds it.
const REAL: &str = "sk_live_ISOLATIONKEY0123456789abcdefABCD";

fn victim_policy() -> String {
    let key = files::scratch_dir().join(format!("isolation-key-{}", std::process::id()));
    std::fs::write(&key, format!("{REAL}\n")).expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    format!(
        r#"
[run]
name = "victim"

[[secret]]
name = "VENDOR_KEY"
from = "file:{key}"
hosts = ["api.vendor.test"]
header = "Authorization"
format = "Bearer {{}}"

[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = ["GET"]
  path = "/v1/**"
  action = "allow"
"#,
        key = key.display()
    )
}

/// What the victim printed when it was ready to be attacked.
#[derive(Debug)]
struct Ready {
    pid: String,
    fd: String,
    file: String,
    addr: String,
    len: String,
    secret: String,
}

/// Reads the victim's `ready` line (the reader stays with the caller: the
/// victim writes its verdict to the same pipe later).
fn read_ready(out: &mut impl std::io::BufRead) -> Ready {
    let mut line = String::new();
    out.read_line(&mut line)
        .expect("read the victim's ready line");
    let get = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {k}= in the victim's line {line:?}"))
            .to_string()
    };
    Ready {
        pid: get("pid"),
        fd: get("fd"),
        file: get("file"),
        addr: get("addr"),
        len: get("len"),
        secret: get("secret"),
    }
}

/// A file whose existence tells the victim the attack is over.
fn done_file(name: &str) -> PathBuf {
    files::scratch_dir().join(format!("{name}-done-{}", std::process::id()))
}

/// Every attack the probe makes; each must be refused.
const ATTACKS: &[&str] = &[
    "environ",
    "task-environ",
    "cmdline-free-of-secret",
    "mem",
    "maps",
    "auxv",
    "fd-link",
    "fdinfo",
    "fd-open",
    "cwd",
    "root",
    "exe",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "ptrace-attach",
    "ptrace-seize",
    "kill-0",
    "pidfd_send_signal-0",
    "kill-SIGKILL",
];

/// Runs the attacker as its own run (same user, deny-all policy) against
/// the victim, and checks that every attack was refused.
fn attack_from_a_run(victim: &Ready) {
    let out = Launch::probe(
        DENY_ALL,
        &[
            "iso-attack",
            &format!("pid={}", victim.pid),
            &format!("fd={}", victim.fd),
            &format!("file={}", victim.file),
            &format!("addr={}", victim.addr),
            &format!("len={}", victim.len),
            &format!("marker={}", victim.secret),
        ],
    )
    .run();
    out.assert_clean();
    let got: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("attack ") && l.contains(" GOT "))
        .collect();
    assert!(
        got.is_empty(),
        "attacks that got through: {got:#?}\n{out:?}"
    );
    for a in ATTACKS {
        assert!(
            out.stdout.contains(&format!("attack {a} refused")),
            "attack {a} not refused: {out:?}"
        );
    }
    assert_eq!(out.code(), 0, "{out:?}");
}

#[test]
fn another_run_of_the_same_user_can_read_nothing_of_a_run() {
    let done = done_file("run-victim");
    let mut victim = Launch::probe(
        &victim_policy(),
        &["iso-victim", "VENDOR_KEY", &path(&done)],
    )
    .spawn();
    let victim_run = victim.run_id();
    let mut stdout = BufReader::new(victim.take_stdout());
    let ready = read_ready(&mut stdout);
    assert!(
        ready.secret.starts_with("sk_live_") && ready.secret != REAL,
        "the victim holds a placeholder: {ready:?}"
    );
    attack_from_a_run(&ready);
    std::fs::write(&done, "").expect("write done file");
    let mut verdict = String::new();
    let _ = stdout.read_to_string(&mut verdict);
    let out = victim.wait(Duration::from_secs(30));
    assert_eq!(
        out.code(),
        0,
        "the victim run was disturbed: {verdict} {out:?}"
    );
    assert!(verdict.contains("ok victim intact"), "{verdict} {out:?}");
    leftovers::assert_run_gone(&victim_run);
}

/// A process of the agent's user outside any run; killed on drop.
struct Outsider(Option<Child>);

impl Drop for Outsider {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_run_can_read_nothing_of_the_users_other_processes() {
    let done = done_file("outsider");
    let secret = "sk_live_OUTSIDERSECRET0123456789abcdefAB";
    let mut outsider = Outsider(Some(
        Command::new(files::probe())
            .args(["iso-victim", "USER_TOKEN"])
            .arg(&done)
            .env_clear()
            .env("USER_TOKEN", secret)
            .current_dir(files::scratch_dir())
            .uid(AGENT_UID)
            .gid(AGENT_UID)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a process of the agent's user"),
    ));
    let mut stdout = BufReader::new(
        outsider
            .0
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("stdout"),
    );
    let ready = read_ready(&mut stdout);
    assert_eq!(ready.secret, secret);
    attack_from_a_run(&ready);
    std::fs::write(&done, "").expect("write done file");
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let mut child = outsider.0.take().expect("the outsider");
    let status = child.wait().expect("wait for the outsider");
    assert!(
        status.success() && rest.contains("ok victim intact"),
        "the user's process was disturbed: {status} {rest}"
    );
}

#[test]
fn the_agent_still_edits_its_users_files_and_manages_its_own_children() {
    let dir = files::scratch_dir().join(format!("agent-home-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the user's directory");
    std::os::unix::fs::chown(&dir, Some(AGENT_UID), Some(AGENT_UID)).expect("chown");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let script = format!(
        "cd {dir} && echo one > notes.txt && echo two >> notes.txt && \
         sed -i s/one/ONE/ notes.txt && cat notes.txt; \
         sleep 30 & kill $!; wait $!; echo child-status=$?; {probe} iso-own-child",
        dir = dir.display(),
        probe = files::probe().display()
    );
    let out = Launch::new(DENY_ALL, &["/bin/sh", "-c", &script]).run();
    out.assert_clean();
    assert!(out.stdout.contains("ONE\ntwo\n"), "{out:?}");
    assert!(out.stdout.contains("child-status=143"), "{out:?}");
    assert!(out.stdout.contains("ok own child reachable"), "{out:?}");
    assert_eq!(out.code(), 0, "{out:?}");
    let meta = std::fs::metadata(dir.join("notes.txt")).expect("the agent's file");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), AGENT_UID);
}

#[test]
fn job_control_on_the_agents_terminal_still_works() {
    // An `ask` rule: the agent gets a pseudo-terminal of enforcer's.
    let policy = r#"
[[host]]
name = "api.vendor.test"
  [[host.rule]]
  method = ["POST"]
  path = "/v1/refunds"
  action = "ask"
"#;
    let script = "set -m; echo agent-ready; sleep 30; echo stopped=$?; kill -CONT %1; kill %1; \
                  wait; set +m; trap 'echo got-int; exit 5' INT; echo waiting-int; \
                  while :; do sleep 0.2; done";
    let (running, term) = Launch::new(policy, &["/bin/bash", "-c", script]).spawn_on_terminal();
    let run = running.run_id();
    let at = term.wait_for("agent-ready", 0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    term.type_keys("\x1a");
    let at = term.wait_for("stopped=148", at, Duration::from_secs(10));
    let at = term.wait_for("waiting-int", at, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    term.type_keys("\x03");
    term.wait_for("got-int", at, Duration::from_secs(10));
    let out = running.wait(Duration::from_secs(30));
    assert_eq!(out.code(), 5, "{}", term.screen());
    leftovers::assert_run_gone(&run);
}

fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}
