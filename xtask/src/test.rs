//! `cargo xtask test`: the one command that runs every test. Unit tests run
//! as the invoking user; the end-to-end suite (real cgroups, eBPF, network
//! namespaces) runs as root, then the machine is checked for leftovers.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{self, cargo, exec};

pub fn run(filter: &[String]) -> anyhow::Result<()> {
    crate::setup::run()?;
    lint()?;
    exec(cargo().args(["build", "--workspace", "--bins"]))?;
    exec(cargo().args(["test", "--workspace"]))?;
    let binaries = build_e2e()?;
    let enforcer = util::target_dir().join("debug").join("enforcer");
    let mut args: Vec<String> = vec!["__e2e".into(), enforcer.display().to_string()];
    args.push("--".into());
    args.extend(binaries.iter().map(|p| p.display().to_string()));
    args.push("--".into());
    args.extend(filter.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match util::ensure_root(&args)? {
        Some(0) => Ok(()),
        Some(code) => bail!("the privileged tests failed (exit {code})"),
        None => e2e(&args[1..]),
    }
}

/// Formatting and clippy (warnings are errors), for userspace and the eBPF crate.
fn lint() -> anyhow::Result<()> {
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    exec(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        "enforcer-e2e/privileged",
        "--",
        "-D",
        "warnings",
    ]))?;
    // $CARGO is the real cargo, not rustup's proxy: go through rustup for nightly.
    exec(
        Command::new("rustup")
            .current_dir(util::root().join("ebpf").join("enforcer-ebpf"))
            .args(["run", "nightly", "cargo", "clippy", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"),
    )
}

/// Compiles the end-to-end test binaries and returns their paths.
fn build_e2e() -> anyhow::Result<Vec<PathBuf>> {
    let out = util::output(cargo().args([
        "test",
        "-p",
        "enforcer-e2e",
        "--features",
        "privileged",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["profile"]["test"] == true
            && v["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|x| x == "test"))
            && let Some(exe) = v["executable"].as_str()
        {
            bins.push(PathBuf::from(exe));
        }
    }
    if bins.is_empty() {
        bail!("no end-to-end test binaries were built");
    }
    Ok(bins)
}

/// Runs the end-to-end binaries as root: `ENFORCER_BIN -- BIN... -- FILTER...`.
pub fn e2e(args: &[&str]) -> anyhow::Result<()> {
    let (enforcer, rest) = args.split_first().context("missing enforcer path")?;
    let rest = rest.strip_prefix(&["--"]).unwrap_or(rest);
    let split = rest.iter().position(|a| *a == "--").unwrap_or(rest.len());
    let (bins, filter) = rest.split_at(split);
    let filter = filter.strip_prefix(&["--"]).unwrap_or(filter);
    let bpffs_was_mounted = is_bpffs_mounted();
    let before: std::collections::HashSet<String> = leftovers().into_iter().collect();
    if !before.is_empty() {
        eprintln!("xtask: note: present before the tests (not counted against them): {before:?}");
    }
    let scratch = ScratchTree::create()?;
    let mut failed = Vec::new();
    for bin in bins {
        let st = Command::new(bin)
            .args(filter)
            .env("ENFORCER_BIN", enforcer)
            .env("ENFORCER_E2E_SCRATCH", &scratch.0)
            .env("RUST_BACKTRACE", "1")
            // CI runs this with CI=true; each test pins the mode it tests.
            .env("ENFORCER_CI", "0")
            .status()
            .with_context(|| format!("cannot run {bin}"))?;
        if !st.success() {
            failed.push(
                Path::new(bin)
                    .file_name()
                    .map_or_else(|| bin.to_string(), |n| n.to_string_lossy().into_owned()),
            );
        }
    }
    let leftovers: Vec<String> = leftovers()
        .into_iter()
        .filter(|l| !before.contains(l))
        .collect();
    if !bpffs_was_mounted && leftovers.is_empty() {
        // Leave the machine as we found it.
        let _ = Command::new("umount").arg("/sys/fs/bpf").status();
    }
    if !leftovers.is_empty() {
        bail!("the tests left things behind: {leftovers:#?}");
    }
    if !failed.is_empty() {
        eprintln!(
            "xtask: the failed tests' files are kept in {}",
            scratch.0.display()
        );
        bail!("end-to-end tests failed: {}", failed.join(", "));
    }
    scratch.remove();
    eprintln!("xtask: all tests passed; no cgroup, pin, namespace or run record left behind");
    Ok(())
}

/// The parent of every test binary's scratch directory for one run: fresh,
/// so no test ever finds an earlier run's files (policies, audit databases),
/// and removed after a green run.
struct ScratchTree(PathBuf);

impl ScratchTree {
    fn create() -> anyhow::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("enforcer-tests-{}-{stamp}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // The agents run as nobody and must reach their files inside.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn remove(self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("xtask: warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

fn is_bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
                && l.split_whitespace().nth(2) == Some("bpf")
        })
    })
}

/// Where the cgroup v1 `name=systemd` hierarchy is mounted, if it is (a
/// hybrid host).
fn named_systemd_hierarchy() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let named = r.next() == Some("cgroup")
            && r.nth(1)
                .is_some_and(|o| o.split(',').any(|o| o == "name=systemd"));
        named
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Run cgroups, pins, run records, test namespaces and test containers
/// still present.
fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    let cgroup_root = util::cgroup2_root();
    let mut dirs = vec![
        PathBuf::from("/sys/fs/bpf/enforcer"),
        PathBuf::from("/run/enforcer/runs"),
    ];
    if let Some(root) = cgroup_root {
        dirs.push(root.join("enforcer"));
    }
    for d in dirs {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.path().is_dir() || e.path().extension().is_some_and(|x| x == "json") {
                    found.push(e.path().display().to_string());
                }
            }
        }
    }
    // Containers the systemd tests booted (tests/src/nspawn.rs): their
    // cgroups, nspawn's state for them, their overlays.
    // (nspawn mirrors their cgroups in the v1 name=systemd hierarchy of a
    // hybrid host.)
    for root in util::cgroup2_root()
        .into_iter()
        .chain(named_systemd_hierarchy())
    {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("enft-ct-") {
                found.push(e.path().display().to_string());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/run/systemd/nspawn/propagate") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("enft-ct-") {
                found.push(e.path().display().to_string());
            }
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        for m in mounts.lines() {
            if let Some(at) = m.split_whitespace().nth(1)
                && at.contains("/enforcer-debroot-")
            {
                found.push(format!("mount {at}"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/var/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("enft-") {
                found.push(format!("netns {n}"));
            }
        }
    }
    found
}
