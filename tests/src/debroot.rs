//! Clean Debian roots for tests: made once with debootstrap (minbase, plus
//! the packages asked for, e.g. `systemd` and `dbus` for a container that
//! boots), cached under [`CACHE`] between runs, and used through a
//! per-test overlay so that no test changes the cached root.
//!
//! Creation is safe against concurrent tests and processes (an exclusive
//! lock per root) and against a creation that died half way (the root is
//! built under `NAME.partial` and renamed into place only when complete).

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

/// Where the roots are kept.
pub const CACHE: &str = "/var/cache/enforcer-tests";
/// The Debian release the roots are made of.
pub const SUITE: &str = "bookworm";

/// The root with `packages` installed (empty: minbase only), creating it
/// on first use (about a minute; needs root and the Debian archive).
pub fn debian_root(packages: &[&str]) -> PathBuf {
    let mut sorted: Vec<&str> = packages.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    for p in &sorted {
        assert!(
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)),
            "not a Debian package name: {p}"
        );
    }
    let name = if sorted.is_empty() {
        format!("debian-{SUITE}-minbase")
    } else {
        format!("debian-{SUITE}-minbase+{}", sorted.join("+"))
    };
    let cache = Path::new(CACHE);
    fs::create_dir_all(cache).expect("create the test cache");
    let root = cache.join(&name);
    let lock = fs::File::create(cache.join(format!("{name}.lock"))).expect("lock file");
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {name}.lock");
    if root.join(".complete").exists() {
        return root;
    }
    let partial = cache.join(format!("{name}.partial"));
    if partial.exists() {
        fs::remove_dir_all(&partial).expect("remove a partial root");
    }
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase");
    if !sorted.is_empty() {
        cmd.arg(format!("--include={}", sorted.join(",")));
    }
    cmd.arg(SUITE).arg(&partial).arg(mirror());
    let out = cmd
        .output()
        .expect("run debootstrap (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "debootstrap failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(partial.join(".complete"), "").expect("mark complete");
    if root.exists() {
        fs::remove_dir_all(&root).expect("remove an incomplete root");
    }
    fs::rename(&partial, &root).expect("move the root into place");
    drop(lock);
    root
}

/// The Debian archive this machine's apt uses (deb.debian.org otherwise).
fn mirror() -> String {
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    sources
        .lines()
        .find_map(|l| l.strip_prefix("URIs:"))
        .and_then(|u| u.split_whitespace().next())
        .filter(|u| !u.contains("security"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_string()
}

/// A writable view of a cached root (overlayfs): changes go to a scratch
/// directory removed, with the mount, on drop.
pub struct Overlay {
    dir: PathBuf,
    merged: PathBuf,
}

impl Overlay {
    pub fn new(lower: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "enforcer-debroot-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("root"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).expect("overlay dirs");
        }
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .arg(&merged)
            .status()
            .expect("mount");
        assert!(st.success(), "mounting the overlay failed");
        Self { dir, merged }
    }

    /// The root to chroot (or nspawn) into.
    pub fn root(&self) -> &Path {
        &self.merged
    }

    /// Runs `args` inside the root with chroot; returns (status, stdout+stderr).
    pub fn chroot(&self, args: &[&str]) -> (std::process::ExitStatus, String) {
        let out = Command::new("chroot")
            .arg(&self.merged)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C")
            .output()
            .expect("chroot");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, text)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.merged).status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
