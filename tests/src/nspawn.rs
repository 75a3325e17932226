//! A booted systemd for the tests: a cached Debian root (with systemd and
//! dbus) booted with `systemd-nspawn --register=no --keep-unit --boot`
//! through a per-container overlay, started from a cgroup of its own (where
//! nspawn makes `payload/`, the container's cgroup tree, and `supervisor/`)
//! and in a network namespace of its own, which reaches nothing but the test
//! hosts made for it ([`crate::TestHost::new_for`]).
//!
//! Commands run inside with `nsenter` into the container's init (all its
//! namespaces; `systemctl` and `systemd-run` then talk to its systemd over
//! its private socket); they stay in the test's cgroup and carry none of
//! the container's seccomp filter, so anything that must be confined runs
//! as a unit (`systemd-run`). Dropping the container (also on a failed
//! test) powers it off and removes its cgroups (in cgroup2 and in the v1
//! `name=systemd` hierarchy, where nspawn mirrors them on a hybrid host),
//! overlay, namespace and the state nspawn keeps in /run/systemd/nspawn.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{debroot, leftovers};

/// The packages every booted root has.
pub const BOOT_PACKAGES: &[&str] = &["systemd", "dbus"];

/// The start of the names of the containers' cgroups and machines.
pub const PREFIX: &str = "enft-ct-";

pub struct Container {
    pub name: String,
    /// The network namespace the container runs in (`ip netns` name).
    pub netns: String,
    /// How long it took from nspawn's start to `running` (or `degraded`).
    pub booted_in: Duration,
    /// The units that failed at boot (`degraded`), with the reasons.
    pub failed_at_boot: Option<String>,
    cgroup: PathBuf,
    log: PathBuf,
    leader: u32,
    nspawn: Option<Child>,
    overlay: Option<debroot::Overlay>,
}

/// What to boot.
#[derive(Default)]
pub struct Boot<'a> {
    /// Debian packages besides [`BOOT_PACKAGES`].
    pub packages: &'a [&'a str],
    /// (file on this host, path inside), bound read-only.
    pub binds: Vec<(PathBuf, String)>,
    /// Extra `systemd-nspawn` arguments.
    pub nspawn_args: &'a [&'a str],
}

impl Container {
    /// Boots a container and waits until its systemd has finished starting
    /// up. nspawn's own seccomp filter refuses bpf(2) and the Landlock calls
    /// (EPERM), and its bounding set lacks CAP_BPF, CAP_PERFMON and
    /// CAP_NET_ADMIN: the arguments always allow them.
    pub fn boot(opts: Boot<'_>) -> Self {
        remove_stale_containers();
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut packages: Vec<&str> = BOOT_PACKAGES.to_vec();
        packages.extend_from_slice(opts.packages);
        let lower = debroot::debian_root(&packages);
        let overlay = debroot::Overlay::new(&lower);
        let netns = name.replacen(PREFIX, "enft-", 1) + "-ct";
        run(Command::new("ip").args(["netns", "add", &netns]));
        run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        let cgroup = leftovers::cgroup2_root().join(&name);
        std::fs::create_dir(&cgroup).expect("create the container's cgroup");
        let log = crate::files::scratch_dir().join(format!("{name}.log"));
        let mut c = Self {
            name,
            netns,
            booted_in: Duration::ZERO,
            failed_at_boot: None,
            cgroup,
            log,
            leader: 0,
            nspawn: None,
            overlay: Some(overlay),
        };
        let started = Instant::now();
        c.spawn(&opts);
        c.leader = c.wait_for_leader();
        c.wait_until_booted();
        c.booted_in = started.elapsed();
        c
    }

    fn spawn(&mut self, opts: &Boot<'_>) {
        let root = self.root().to_path_buf();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.cgroup)
            .args(["systemd-nspawn", "--register=no", "--keep-unit", "--boot"])
            .args(["--console=passive", "--link-journal=no", "--timezone=off"])
            // nspawn's seccomp filter refuses these with EPERM: bpf(2) for
            // the daemon, Landlock for `exec`'s isolation of each run.
            .arg("--system-call-filter=bpf")
            .arg("--system-call-filter=landlock_create_ruleset landlock_add_rule landlock_restrict_self")
            .arg("--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN")
            .arg(format!("--machine={}", self.name))
            .arg("-D")
            .arg(&root)
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                self.netns
            ));
        for (from, to) in &opts.binds {
            cmd.arg(format!("--bind-ro={}:{to}", from.display()));
        }
        cmd.args(opts.nspawn_args);
        let log = std::fs::File::create(&self.log).expect("nspawn log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start systemd-nspawn (cargo xtask setup installs systemd-container)");
        self.nspawn = Some(child);
    }

    fn wait_for_leader(&mut self) -> u32 {
        let procs = self.payload().join("init.scope/cgroup.procs");
        let mut leader = None;
        let up = leftovers::eventually(30, || {
            leader = std::fs::read_to_string(&procs)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
            leader.is_some() || self.exited()
        });
        match leader {
            Some(pid) if up => pid,
            _ => panic!("the container did not start: {}", self.nspawn_log()),
        }
    }

    fn exited(&mut self) -> bool {
        self.nspawn
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    fn wait_until_booted(&mut self) {
        // Until its init listens on its private socket, systemctl cannot
        // even ask (and says nothing on stdout).
        let mut o = self.sh("true");
        let mut state = String::new();
        leftovers::eventually(60, || {
            o = self.sh("timeout 90 systemctl is-system-running --wait");
            state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            !state.is_empty()
        });
        match state.as_str() {
            "running" => {}
            "degraded" => {
                let failed = self.ok("systemctl --failed --no-legend --plain; \
                     for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); do \
                     journalctl -b -u \"$u\" --no-pager -o cat | tail -n 5; done");
                eprintln!("{}: degraded at boot, failed units:\n{failed}", self.name);
                self.failed_at_boot = Some(failed);
            }
            other => panic!(
                "the container's systemd is {other:?}: {}\n{}",
                String::from_utf8_lossy(&o.stderr),
                self.nspawn_log()
            ),
        }
    }

    /// The container's root (the overlay), writable from this host.
    pub fn root(&self) -> &Path {
        self.overlay.as_ref().expect("overlay").root()
    }

    /// Writes `text` to `path` (absolute, inside the container).
    pub fn write(&self, path: &str, text: &str) {
        let p = self.root().join(path.trim_start_matches('/'));
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir in the container");
        }
        std::fs::write(&p, text).expect("write in the container");
    }

    /// The container's cgroup tree (its `/`), as this host sees it.
    pub fn payload(&self) -> PathBuf {
        self.cgroup.join("payload")
    }

    /// Runs `script` with /bin/sh inside the container, as root.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["LANG=C.UTF-8", "SYSTEMD_COLORS=0", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Like [`Self::sh`], asserting success; returns stdout.
    pub fn ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "in {}: `{script}` failed ({}): {}{}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A unit's journal since boot (messages only).
    pub fn journal(&self, unit: &str) -> String {
        let o = self.sh(&format!("journalctl -b -u '{unit}' --no-pager -o cat"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The value of a unit's property (`systemctl show -P`).
    pub fn property(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -P {property} '{unit}'"))
            .trim()
            .to_string()
    }

    fn nspawn_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Powers the container off (SIGTERM to nspawn: the container's
    /// systemd shuts down), or kills it after `grace`.
    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
        let root_ino = std::fs::metadata(self.root()).map(|m| m.ino()).ok();
        remove_cgroup_tree(&self.cgroup);
        if let Some(v1) = named_systemd_hierarchy() {
            remove_cgroup_tree(&v1.join(&self.name));
        }
        self.overlay.take();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        remove_machine_state(&self.name, root_ino);
    }
}

fn run(cmd: &mut Command) {
    let o = cmd.output().expect("run");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Kills what is left in the cgroup tree at `top` and removes it, deepest
/// first.
fn remove_cgroup_tree(top: &Path) {
    if !top.exists() {
        return;
    }
    let _ = std::fs::write(top.join("cgroup.kill"), "1");
    let mut dirs = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        dirs.push(d);
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        leftovers::eventually(5, || std::fs::remove_dir(&d).is_ok() || !d.exists());
    }
}

/// The cgroup v1 `name=systemd` hierarchy of a hybrid host, where nspawn
/// mirrors the container's tree (`NAME/payload/...`, `NAME/supervisor`).
pub fn named_systemd_hierarchy() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let is_named = r.next() == Some("cgroup")
            && r.nth(1)
                .is_some_and(|opts| opts.split(',').any(|o| o == "name=systemd"));
        is_named
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// What nspawn keeps for a machine in /run/systemd/nspawn (its mount
/// propagation directory, the lock on its root's inode).
fn remove_machine_state(name: &str, root_ino: Option<u64>) {
    let state = Path::new("/run/systemd/nspawn");
    let _ = std::fs::remove_dir_all(state.join("propagate").join(name));
    if let Some(ino) = root_ino {
        for e in std::fs::read_dir(state.join("locks"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("inode-") && n.ends_with(&format!(":{ino}")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Removes the containers of test processes that no longer exist (a test
/// binary killed mid-run cannot run its destructors): their cgroups, with
/// whatever still runs in them, nspawn's state and their overlays (their
/// namespaces go with `TestHost`'s own sweep).
fn remove_stale_containers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let roots = std::iter::once(leftovers::cgroup2_root()).chain(named_systemd_hierarchy());
        for e in roots.flat_map(|r| std::fs::read_dir(r).into_iter().flatten().flatten()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                remove_cgroup_tree(&e.path());
                remove_machine_state(&name, None);
            }
        }
        // Their overlays (debroot::Overlay names them by the test's pid).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for at in mounts.lines().filter_map(|m| m.split_whitespace().nth(1)) {
            let Some(dir) = Path::new(at).parent() else {
                continue;
            };
            let dead = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("enforcer-debroot-"))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if dead {
                let _ = Command::new("umount").arg(at).status();
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    });
}
