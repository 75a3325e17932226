//! Running `enforcer launch` the way a user would, with a timeout, and
//! reading what it reports.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{files, leftovers, terminal::Terminal};
use std::os::unix::process::CommandExt as _;

/// A launch to run: policy text, extra enforcer flags, and the command.
pub struct Launch {
    env: Vec<(OsString, OsString)>,
    policy: PathBuf,
    flags: Vec<OsString>,
    command: Vec<OsString>,
    user: Option<String>,
    timeout: Duration,
    resolver: String,
    resolv_conf: Option<PathBuf>,
}

/// The upstream resolver launches use unless a test names one: a closed
/// loopback port, so no test ever sends a query to the machine's real
/// resolver, even by mistake.
pub const NO_RESOLVER: &str = "127.0.0.1:1";

/// What a finished launch produced.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub run_id: Option<String>,
}

impl Outcome {
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt as _;
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }

    /// Asserts the run left nothing behind (cgroup, pins, run record).
    pub fn assert_clean(&self) {
        if let Some(id) = &self.run_id {
            leftovers::assert_run_gone(id);
        }
    }
}

impl Launch {
    /// A launch of `command` under a policy with this TOML text, as user `nobody`.
    pub fn new(policy_toml: &str, command: &[&str]) -> Self {
        Self {
            env: Vec::new(),
            policy: files::write("policy.toml", policy_toml),
            flags: Vec::new(),
            command: command.iter().map(OsString::from).collect(),
            user: Some(String::from("nobody")),
            timeout: Duration::from_secs(60),
            resolver: String::from(NO_RESOLVER),
            resolv_conf: None,
        }
    }

    /// An environment variable for enforcer itself (not the agent's choice).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The upstream DNS server enforcer asks about allowed names.
    pub fn resolver(mut self, addr: impl Into<String>) -> Self {
        self.resolver = addr.into();
        self
    }

    /// Runs enforcer (and so the agent) in a private mount namespace where
    /// /etc/resolv.conf says `content`: agents that read it then aim their
    /// queries at a test host, never at the machine's real resolver.
    pub fn resolv_conf(mut self, content: &str) -> Self {
        self.resolv_conf = Some(files::write("resolv.conf", content));
        self
    }

    /// Runs the probe binary with these arguments.
    pub fn probe(policy_toml: &str, probe_args: &[&str]) -> Self {
        let probe = files::probe();
        let mut cmd = vec![probe.to_str().expect("utf-8 path")];
        cmd.extend_from_slice(probe_args);
        Self::new(policy_toml, &cmd)
    }

    pub fn flag(mut self, f: impl Into<OsString>) -> Self {
        self.flags.push(f.into());
        self
    }

    /// Runs the agent as this user (None: no --user, i.e. the sudo/own identity).
    pub fn user(mut self, u: Option<&str>) -> Self {
        self.user = u.map(String::from);
        self
    }

    pub fn policy_path(&self) -> &PathBuf {
        &self.policy
    }

    fn command(&self) -> Command {
        ensure_bpffs();
        let mut c = match &self.resolv_conf {
            None => Command::new(files::enforcer()),
            Some(conf) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
                    .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
                    .arg(conf)
                    .arg(files::enforcer());
                c
            }
        };
        c.arg("launch").arg("--policy").arg(&self.policy);
        c.arg("--resolver").arg(&self.resolver);
        if let Some(u) = &self.user {
            c.arg("--user").arg(u);
        }
        if !self.flags.iter().any(|f| f == "--audit-db") {
            // Never the machine's own audit log.
            c.arg("--audit-db").arg(files::audit_db());
        }
        c.args(&self.flags).arg("--").args(&self.command);
        // This project's own CI sets CI=true: every test pins the mode it
        // tests (interactive here; CI tests pass --ci or ENFORCER_CI=1).
        c.env("ENFORCER_CI", "0");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs to completion (killing it after the timeout).
    pub fn run(self) -> Outcome {
        let timeout = self.timeout;
        let child = self.command().spawn().expect("spawn enforcer");
        wait_with_timeout(child, timeout)
    }

    /// Starts the launch and returns the running enforcer.
    pub fn spawn(self) -> Running {
        Running {
            child: Some(self.command().spawn().expect("spawn enforcer")),
        }
    }

    /// Starts the launch on a new pseudo-terminal, as from an interactive
    /// shell: it is enforcer's controlling terminal and its stdin, stdout
    /// and stderr. The returned [`Terminal`] is the human's side.
    pub fn spawn_on_terminal(self) -> (Running, Terminal) {
        let (terminal, slave) = Terminal::open();
        let mut c = self.command();
        let io = |f: &std::fs::File| Stdio::from(f.try_clone().expect("dup pty"));
        c.stdin(io(&slave)).stdout(io(&slave)).stderr(io(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().expect("spawn enforcer on a terminal");
        drop(slave);
        (Running { child: Some(child) }, terminal)
    }
}

/// Mounts bpffs on the host before any launch, so a launch inside a private
/// mount namespace pins where the tests (and cleanup) can see it.
fn ensure_bpffs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
        });
        if !mounted {
            let _ = Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status();
        }
    });
}

/// A launch still running. Dropping it kills the enforcer.
pub struct Running {
    child: Option<Child>,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// The run's id, from its run record (waits up to 20 s for it).
    pub fn run_id(&self) -> String {
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = std::fs::read_dir("/run/enforcer/runs")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".json").map(String::from))
                .find(|id| {
                    std::fs::read_to_string(format!("/run/enforcer/runs/{id}.json"))
                        .is_ok_and(|t| t.contains(&format!("\"enforcer_pid\": {pid}")))
                });
            if let Some(id) = found {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "no run record for enforcer {pid}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The enforcer's stdout (the agent's), to read while it runs.
    pub fn take_stdout(&mut self) -> std::process::ChildStdout {
        self.child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("stdout already taken")
    }

    pub fn wait(mut self, timeout: Duration) -> Outcome {
        let child = self.child.take().expect("running child");
        wait_with_timeout(child, timeout)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(None) = c.try_wait()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Collects a pipe into a shared string as it arrives, so a reader never
/// blocks the test when the write end outlives the enforcer (a pinned agent
/// keeps the enforcer's stdout and stderr open).
fn collect(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = Arc::clone(&buf);
    let t = std::thread::spawn(move || {
        let Some(mut pipe) = pipe else { return };
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = b.lock() {
                s.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        }
    });
    (buf, t)
}

fn take(buf: &Arc<Mutex<String>>, t: std::thread::JoinHandle<()>) -> String {
    // Wait briefly for the end of the stream, then take what arrived.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    buf.lock().map(|s| s.clone()).unwrap_or_default()
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> Outcome {
    let (out_buf, out_t) = collect(child.stdout.take());
    let (err_buf, err_t) = collect(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            let stderr = take(&err_buf, err_t);
            panic!("enforcer launch timed out after {timeout:?} ({st}); stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = take(&out_buf, out_t);
    let stderr = take(&err_buf, err_t);
    let run_id = run_id_from(&stderr);
    Outcome {
        status,
        stdout,
        stderr,
        run_id,
    }
}

/// The run id from the "run <id> started" line (plain, or the message of
/// a `--log-json` line).
pub fn run_id_from(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|l| {
        let message = serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["message"].as_str().map(|m| format!("enforcer: {m}")));
        let rest = message
            .as_deref()
            .unwrap_or(l)
            .strip_prefix("enforcer: run ")?;
        let (id, tail) = rest.split_once(' ')?;
        tail.starts_with("started").then(|| id.to_string())
    })
}
