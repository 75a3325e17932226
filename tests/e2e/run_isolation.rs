//! Runs are isolated from each other and from the user's other processes,
//! also when they share a user: a run can read nothing of another run's
//! processes (environment, memory, file descriptors, sockets) nor trace or
//! signal them, and the same holds for the user's processes outside any run.
//! What an agent does to its own files and its own children keeps working.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
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
    "perf_event_open",
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

#[test]
fn a_run_cannot_make_another_dump_its_memory() {
    // A crash dump is the victim's memory in a file of the user's (or in
    // systemd-coredump, which shows it to that user); another run could
    // raise the victim's core limit, then crash it (say, by lowering its
    // RLIMIT_AS, which a process of the same user may do).
    let done = done_file("core-victim");
    let mut victim = Launch::probe(DENY_ALL, &["iso-victim", "HELD_SECRET", &path(&done)])
        .env("HELD_SECRET", "sk_live_COREDUMPSECRET0123456789")
        .spawn();
    let run = victim.run_id();
    let mut stdout = BufReader::new(victim.take_stdout());
    let ready = read_ready(&mut stdout);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", ready.pid)).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core limit");
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "core dumps are off, for good: {core}"
    );
    refused_in_a_run(&["iso-raise-core", &ready.pid]);
    std::fs::write(&done, "").expect("write done file");
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let out = victim.wait(Duration::from_secs(30));
    assert_eq!(out.code(), 0, "{rest} {out:?}");
    leftovers::assert_run_gone(&run);
}

/// A process of the agent's user outside any run. Dropped early (a failed
/// assertion), it is told to finish (so it removes what it holds) and then
/// killed.
struct Outsider {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
    done: PathBuf,
}

impl Outsider {
    /// Starts the probe with `args` as the agent's user, outside any run,
    /// with `var=value` as its only environment; `done` ends it.
    fn start(args: &[&str], (var, value): (&str, &str), done: &Path) -> Self {
        let mut child = Command::new(files::probe())
            .args(args)
            .env_clear()
            .env(var, value)
            .current_dir(files::scratch_dir())
            .uid(AGENT_UID)
            .gid(AGENT_UID)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a process of the agent's user");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child: Some(child),
            stdout,
            done: done.to_path_buf(),
        }
    }

    /// Everything it printed after its first line, once it exited successfully.
    fn finish(mut self) -> String {
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        let status = self
            .child
            .take()
            .expect("the outsider")
            .wait()
            .expect("wait for the outsider");
        assert!(
            status.success(),
            "the user's process failed: {status} {rest}"
        );
        rest
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = std::fs::write(&self.done, "");
            let _ = leftovers::eventually(3, || matches!(c.try_wait(), Ok(Some(_))));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_run_can_read_nothing_of_the_users_other_processes() {
    let done = done_file("outsider");
    let secret = "sk_live_OUTSIDERSECRET0123456789abcdefAB";
    let mut outsider = Outsider::start(
        &["iso-victim", "USER_TOKEN", &path(&done)],
        ("USER_TOKEN", secret),
        &done,
    );
    let ready = read_ready(&mut outsider.stdout);
    assert_eq!(ready.secret, secret);
    attack_from_a_run(&ready);
    std::fs::write(&done, "").expect("write done file");
    let rest = outsider.finish();
    assert!(
        rest.contains("ok victim intact"),
        "the user's process was disturbed: {rest}"
    );
}

/// The value of `key=` on a probe's ready line.
fn ready_field(out: &mut impl std::io::BufRead, key: &str) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("read a ready line");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_string()
}

/// Runs `probe_args` as a deny-all run of the agent's user; it must fail
/// (print `err ...`): the holder's secret is out of its reach.
fn refused_in_a_run(probe_args: &[&str]) {
    let out = Launch::probe(DENY_ALL, probe_args).run();
    out.assert_clean();
    assert!(
        out.stdout.starts_with("err ") && !out.stdout.contains("GOT"),
        "{probe_args:?} got through: {out:?}"
    );
}

/// The holder's arguments: `hold`, then the variable and the done file.
fn holder_args(hold: &[&str], var: &str, done: &Path) -> Vec<String> {
    let mut args: Vec<String> = hold.iter().map(|a| a.to_string()).collect();
    args.extend([var.to_string(), path(done)]);
    args
}

const HELD: &str = "HELD_SECRET";

/// A process of the user outside any run keeps `secret` in a kernel object
/// (`hold`, which prints `ready KEY=ID`); a run tries `reader(ID)`.
fn outsider_object_is_out_of_reach(
    hold: &[&str],
    key: &str,
    secret: &str,
    reader: impl Fn(&str) -> Vec<String>,
) {
    let done = done_file(&format!("{key}-outsider"));
    let args = holder_args(hold, HELD, &done);
    let mut outsider = Outsider::start(&strs(&args), (HELD, secret), &done);
    let id = ready_field(&mut outsider.stdout, key);
    refused_in_a_run(&strs(&reader(&id)));
    std::fs::write(&done, "").expect("write done file");
    outsider.finish();
}

/// The same with the holder as a run of the same user.
fn run_object_is_out_of_reach(
    hold: &[&str],
    key: &str,
    secret: &str,
    reader: impl Fn(&str) -> Vec<String>,
) {
    let done = done_file(&format!("{key}-run"));
    let args = holder_args(hold, HELD, &done);
    let mut holder = Launch::probe(DENY_ALL, &strs(&args))
        .env(HELD, secret)
        .spawn();
    let run = holder.run_id();
    let mut stdout = BufReader::new(holder.take_stdout());
    let id = ready_field(&mut stdout, key);
    refused_in_a_run(&strs(&reader(&id)));
    std::fs::write(&done, "").expect("write done file");
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let out = holder.wait(Duration::from_secs(30));
    assert_eq!(out.code(), 0, "the holder run failed: {rest} {out:?}");
    leftovers::assert_run_gone(&run);
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn system_v_shared_memory_is_per_run() {
    let secret = "sk_live_SHMSECRET0123456789abcdef";
    let reader = |id: &str| vec!["iso-shm-read".into(), id.into(), secret.into()];
    outsider_object_is_out_of_reach(&["iso-shm-hold"], "shm", secret, reader);
    run_object_is_out_of_reach(&["iso-shm-hold"], "shm", secret, reader);
}

#[test]
fn the_users_keyrings_are_out_of_reach() {
    let secret = "sk_live_KEYSECRET0123456789abcdef";
    let desc = format!("enforcer-e2e-{}", std::process::id());
    outsider_object_is_out_of_reach(&["iso-key-hold", &desc], "key", secret, |_| {
        vec!["iso-key-read".into(), desc.clone(), secret.into()]
    });
    // Nor can a run leave a key there for another run (or the user) to find.
    let out = Launch::probe(DENY_ALL, &["iso-key-hold", &desc, HELD, "/nonexistent"])
        .env(HELD, secret)
        .run();
    out.assert_clean();
    assert!(out.stdout.starts_with("err ENOSYS"), "{out:?}");
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

/// Runs `enforcer launch ARGS` under a seccomp filter that answers
/// `landlock_create_ruleset` with `errno`, as a kernel without Landlock
/// (ENOSYS) or with Landlock disabled at boot (EOPNOTSUPP) would.
fn launch_without_landlock(errno: i32, args: &[&str]) -> std::process::Output {
    let wrapper = files::write(
        "no-landlock.py",
        r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
errno, argv = int(sys.argv[1]), sys.argv[2:]
insns = [
    (0x20, 0, 0, 4), (0x15, 1, 0, 0xc000003e), (0x06, 0, 0, 0x7fff0000),
    (0x20, 0, 0, 0), (0x15, 0, 1, 444), (0x06, 0, 0, 0x00050000 | errno),
    (0x06, 0, 0, 0x7fff0000),
]
code = b"".join(struct.pack("HBBI", *i) for i in insns)
buf = ctypes.create_string_buffer(code)
prog = struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(buf))
pbuf = ctypes.create_string_buffer(prog)
if libc.prctl(22, 2, pbuf, 0, 0) != 0:
    sys.exit("seccomp: %s" % os.strerror(ctypes.get_errno()))
os.execv(argv[0], argv)
"#,
    );
    let db = files::audit_db();
    Command::new("/usr/bin/python3")
        .arg(&wrapper)
        .arg(errno.to_string())
        .arg(files::enforcer())
        .args(["launch", "--resolver", enforcer_e2e::launch::NO_RESOLVER])
        .args(["--user", "nobody", "--audit-db"])
        .arg(db)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run enforcer without Landlock")
}

#[test]
fn a_kernel_that_cannot_isolate_runs_refuses_the_launch_unless_told() {
    let policy = files::write("deny-all.toml", DENY_ALL);
    let marker = files::scratch_dir().join(format!("agent-started-{}", std::process::id()));
    let touch = format!("touch {}", marker.display());
    for (errno, says) in [
        (libc::ENOSYS, "Landlock is not built into this kernel"),
        (libc::EOPNOTSUPP, "Landlock is built in but not enabled"),
    ] {
        let out = launch_without_landlock(
            errno,
            &["--policy", &path(&policy), "--", "/bin/sh", "-c", &touch],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(
            stderr.contains("read this agent's environment")
                && stderr.contains("--allow-unisolated"),
            "{stderr}"
        );
        // Refused before the run exists: no run id, nothing to clean up.
        assert!(
            enforcer_e2e::launch::run_id_from(&stderr).is_none(),
            "{stderr}"
        );
        assert!(!marker.exists(), "the agent must not start: {stderr}");
    }
    // With --allow-unisolated it starts, and says loudly what it lacks.
    let out = launch_without_landlock(
        libc::ENOSYS,
        &[
            "--policy",
            &path(&policy),
            "--allow-unisolated",
            "--",
            "/bin/sh",
            "-c",
            &touch,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("WARNING: --allow-unisolated: this run is NOT isolated"),
        "{stderr}"
    );
    assert!(marker.exists(), "{stderr}");
    if let Some(id) = enforcer_e2e::launch::run_id_from(&stderr) {
        leftovers::assert_run_gone(&id);
    }
}

#[test]
fn enforcer_keeps_its_reach_into_an_isolated_agent() {
    // The seccomp supervisor reads the agent's connect() argument from
    // /proc/PID/mem and takes its socket with pidfd_getfd: a listed unix
    // socket is reached, an unlisted one refused and reported.
    let dir = files::scratch_dir();
    let listed = dir.join(format!("listed-{}.sock", std::process::id()));
    let server = std::os::unix::net::UnixListener::bind(&listed).expect("bind");
    std::fs::set_permissions(&listed, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let accepted = std::thread::spawn(move || {
        let (mut c, _) = server.accept().expect("accept");
        let mut line = String::new();
        let _ = BufReader::new(&mut c).read_line(&mut line);
        line
    });
    let policy = format!(
        "[run]\nname = \"unix\"\n[local]\nunix_sockets = [\"{}\"]\n",
        listed.display()
    );
    let unlisted = dir.join("unlisted.sock");
    let script = format!(
        "{probe} unix-connect {listed}; {probe} unix-connect {unlisted}; exit 0",
        probe = files::probe().display(),
        listed = listed.display(),
        unlisted = unlisted.display()
    );
    let out = Launch::new(&policy, &["/bin/sh", "-c", &script]).run();
    out.assert_clean();
    let _ = std::fs::remove_file(&listed);
    assert!(out.stdout.starts_with("ok connected\n"), "{out:?}");
    assert!(out.stdout.contains("err EPERM"), "{out:?}");
    assert!(out.stderr.contains("unlisted.sock"), "{out:?}");
    assert_eq!(accepted.join().expect("server"), "hello\n");
}
