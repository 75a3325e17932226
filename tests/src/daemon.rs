//! `enforcer daemon` governing a slice of cgroups made here by hand, as
//! systemd makes `agents.slice/<unit>.service`, and units run in it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{files, leftovers};

/// A daemon governing a slice of its own.
pub struct Daemon {
    child: Option<Child>,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub slice_name: String,
    pub slice: PathBuf,
    /// The policy file of each `[[unit]]`, in order.
    pub policies: Vec<PathBuf>,
    /// More arguments for `enforcer daemon`.
    args: Vec<String>,
}

impl Daemon {
    /// `units`: (unit name pattern, policy TOML).
    pub fn start(units: &[(&str, &str)]) -> Self {
        Self::start_with("", units)
    }

    /// The same, with `extra` (top-level TOML: keys, then tables) in the
    /// daemon's configuration.
    pub fn start_with(extra: &str, units: &[(&str, &str)]) -> Self {
        Self::start_full(extra, &[], units)
    }

    /// The same, with more arguments for `enforcer daemon` (`--resolve`,
    /// `--upstream-ca`...).
    pub fn start_full(extra: &str, args: &[String], units: &[(&str, &str)]) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let slice_name = format!(
            "enft-d{}-{}.slice",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let slice = leftovers::cgroup2_root().join(&slice_name);
        std::fs::create_dir(&slice).expect("mkdir slice");
        let mut config = format!(
            "slice = \"{slice_name}\"\naudit_db = \"{}\"\n{extra}\n",
            files::audit_db().display()
        );
        let mut policies = Vec::new();
        for (pattern, policy) in units {
            let p = files::write("unit-policy.toml", policy);
            config.push_str(&format!(
                "[[unit]]\nmatch = \"{pattern}\"\npolicy = \"{}\"\n",
                p.display()
            ));
            policies.push(p);
        }
        let config = files::write("enforcer.toml", &config);
        let socket = config.with_extension("sock");
        let mut d = Self {
            child: None,
            config,
            socket,
            slice_name,
            slice,
            policies,
            args: args.to_vec(),
        };
        d.restart();
        d
    }

    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(files::enforcer())
            .args(["daemon", "--config"])
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the daemon");
        self.child = Some(child);
        if !leftovers::eventually(20, || self.socket.exists()) {
            panic!("the daemon did not come up: {}", self.stop());
        }
    }

    /// `enforcer ARGS` as root (status, revoke, reload...).
    pub fn enforcer(&self, args: &[&str]) -> Output {
        Command::new(files::enforcer())
            .args(args)
            .output()
            .expect("run enforcer")
    }

    /// `enforcer reload` of this daemon.
    pub fn reload(&self) -> Output {
        let socket = self.socket.to_str().expect("utf-8").to_string();
        self.enforcer(&["reload", "--socket", &socket])
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the daemon (SIGTERM) and returns its stderr.
    pub fn stop(&mut self) -> String {
        let Some(child) = self.child.take() else {
            return String::new();
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().expect("daemon exit");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A unit's cgroup (created on first use).
    pub fn unit(&self, name: &str) -> PathBuf {
        let p = self.slice.join(name);
        let _ = std::fs::create_dir(&p);
        p
    }

    /// Runs `argv` in `cgroup` as `nobody` (or root), optionally through
    /// `enforcer exec`.
    pub fn run_in(&self, cgroup: &Path, user: Option<&str>, exec: bool, argv: &[&str]) -> Output {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && shift && exec \"$@\"")
            .arg(cgroup)
            .arg("--");
        if let Some(u) = user {
            cmd.args([
                "setpriv",
                "--reuid",
                u,
                "--regid",
                "nogroup",
                "--clear-groups",
            ]);
        }
        if exec {
            cmd.arg(files::enforcer())
                .arg("exec")
                .arg("--socket")
                .arg(&self.socket)
                .arg("--");
        }
        cmd.args(argv);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(30);
        let out = child.wait_with_output().expect("wait");
        assert!(Instant::now() < deadline, "timed out");
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Units first (cgroup.kill covers each subtree), then the slice.
        for entry in std::fs::read_dir(&self.slice)
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::write(entry.path().join("cgroup.kill"), "1");
                leftovers::eventually(5, || std::fs::remove_dir(entry.path()).is_ok());
            }
        }
        leftovers::eventually(5, || std::fs::remove_dir(&self.slice).is_ok());
        // What a stopped daemon leaves on purpose (its programs stay
        // attached so that the slice reaches nothing): ours go too.
        let pins = Path::new("/sys/fs/bpf/enforcer");
        // bpffs refuses dots in names: the daemon writes them as `_d`.
        let prefix = format!("daemon-{}-", self.slice_name.replace('.', "_d"));
        for entry in std::fs::read_dir(pins).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                for f in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let _ = std::fs::remove_file(f.path());
                }
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        let _ = std::fs::remove_dir(pins);
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(format!("/run/enforcer/{prefix}lock"));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
