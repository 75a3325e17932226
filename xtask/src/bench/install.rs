//! What `bench proxy` needs beyond `cargo xtask setup`, installed only when
//! missing: the load generator (oha, from crates.io, into `.bench/tools`),
//! the origin and the peer proxies (Debian's nginx, squid and tinyproxy),
//! and mitmproxy (PyPI, in a venv under `.bench`). Versions are pinned.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::util::{self, cargo, exec, output};

/// oha 1.16 builds with rustc 1.88+.
pub const OHA_VERSION: &str = "1.16.0";
/// The newest mitmproxy that supports Debian 12's Python (3.11).
pub const MITMPROXY_VERSION: &str = "11.0.2";

/// Debian packages, and the service each one's install may have started.
const DEBIAN_PACKAGES: &[(&str, Option<&str>)] = &[
    ("nginx-light", Some("nginx")),
    ("squid", Some("squid")),
    ("tinyproxy", Some("tinyproxy")),
    ("python3-venv", None),
    ("iproute2", None),
    ("util-linux", None),
];

/// Where the bench keeps what it installs (ignored by git; survives
/// `cargo clean`, shared by every target directory).
pub fn bench_dir() -> PathBuf {
    util::root().join(".bench")
}

/// oha, installed with `cargo install --locked` into `.bench/tools`.
/// Runs as the invoking user (before the bench re-runs itself as root).
pub fn oha() -> anyhow::Result<PathBuf> {
    let root = bench_dir().join("tools");
    let bin = root.join("bin").join("oha");
    let installed = |bin: &Path| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(OHA_VERSION))
    };
    if installed(&bin) {
        return Ok(bin);
    }
    exec(
        cargo()
            .args(["install", "--locked", "--force", "oha", "--version"])
            .arg(OHA_VERSION)
            .arg("--root")
            .arg(&root)
            // Build in a directory of cargo's own, not the workspace's target.
            .env_remove("CARGO_TARGET_DIR"),
    )?;
    if !installed(&bin) {
        bail!("oha was installed but {} does not run", bin.display());
    }
    Ok(bin)
}

/// nginx, squid, tinyproxy and python3-venv from Debian (as root). A service
/// the install started on its default port is stopped and disabled again:
/// the bench runs its own instances with its own configuration.
pub fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<(&str, Option<&str>)> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|(p, _)| !util::dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    util::apt_install(&names)?;
    for service in missing.iter().filter_map(|(_, s)| *s) {
        let quiet = |c: &mut Command| {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(Command::new("service").args([service, "stop"]));
        quiet(Command::new("systemctl").args(["disable", "--now", service]));
    }
    Ok(())
}

/// mitmproxy in `.bench/mitmproxy-venv` (Debian's python3 -m venv); returns
/// the path of `mitmdump`.
pub fn mitmproxy() -> anyhow::Result<PathBuf> {
    let venv = bench_dir().join("mitmproxy-venv");
    let python = venv.join("bin").join("python");
    let mitmdump = venv.join("bin").join("mitmdump");
    let installed = || {
        mitmdump.exists()
            && output(
                Command::new(&python)
                    .args(["-c", "import mitmproxy.version as v; print(v.VERSION)"]),
            )
            .is_ok_and(|v| v.trim() == MITMPROXY_VERSION)
    };
    if installed() {
        return Ok(mitmdump);
    }
    std::fs::create_dir_all(bench_dir())?;
    exec(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    exec(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(format!("mitmproxy=={MITMPROXY_VERSION}")),
    )
    .context("installing mitmproxy from PyPI")?;
    if !installed() {
        bail!("mitmproxy was installed but does not import");
    }
    Ok(mitmdump)
}
