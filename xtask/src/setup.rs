//! `cargo xtask setup`: everything a fresh machine needs, installed only
//! when missing: the nightly rust-src component and bpf-linker (built
//! against the nightly toolchain's own LLVM) for the eBPF programs, the
//! Debian packages the tests and the demo use, and a Python venv with the
//! vendors' own SDKs (stripe, twilio, resend) that the profile tests drive.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{self, exec, output};

/// Debian packages the tests and demo use (iproute2: test hosts in network
/// namespaces; curl, python3, dnsutils: real clients inside the sandbox;
/// util-linux: setpriv, nsenter; debootstrap: the clean Debian roots the
/// package is installed into and the systemd tests boot; systemd-container:
/// systemd-nspawn, which boots such a root with its own systemd; sudo: what
/// the GitHub Action runs enforcer with).
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "curl",
    "python3",
    "dnsutils",
    "util-linux",
    "ca-certificates",
    "openssl",
    "python3-venv",
    "debootstrap",
    "systemd-container",
    "sudo",
];

/// Where the vendor SDKs live for the e2e tests (readable by `nobody`, the
/// agent's user in tests); the same path is in `tests/src/sdk.rs`.
pub const SDK_VENV: &str = "/var/cache/enforcer-tests/sdk-venv";
/// The vendors' Python SDKs the profile tests run, pinned.
const SDK_PACKAGES: &[&str] = &["stripe==16.1.0", "twilio==9.13.0", "resend==2.52.0"];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    sdk_venv()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("the nightly toolchain is needed to build the eBPF programs")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// The nightly toolchain's LLVM shared library (the real file, not the linker script).
fn nightly_libllvm() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let found = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("nightly"))
        });
    found.with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

/// bpf-linker linked against the nightly LLVM, through a durable directory
/// ($CARGO_HOME/enforcer-llvm/lib) that also serves as its rpath.
fn bpf_linker() -> anyhow::Result<()> {
    let llvm = nightly_libllvm()?;
    let prefix = cargo_home().join("enforcer-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let soname = llvm.file_name().context("libLLVM name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        if std::fs::read_link(&link).ok().as_deref() != Some(llvm.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm, &link)
                .with_context(|| format!("cannot link {} -> {}", link.display(), llvm.display()))?;
        }
    }
    if bpf_linker_works() {
        return Ok(());
    }
    let llvm_major = soname
        .to_string_lossy()
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("22")
        .to_string();
    exec(
        Command::new("cargo")
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
            ),
    )?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but does not run; see the output above");
    }
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !util::dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing Debian packages {missing:?}: run `sudo apt-get install -y {}`",
            missing.join(" ")
        );
    }
    util::apt_install(&missing)
}

/// The vendor SDK venv: created with Debian's python3 (not a user's pyenv,
/// which the agent's user cannot read) and filled from PyPI, once; a stamp
/// file with the pinned versions says it is complete.
fn sdk_venv() -> anyhow::Result<()> {
    let venv = Path::new(SDK_VENV);
    let stamp = venv.join("enforcer-sdks.txt");
    let wanted = SDK_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    if !util::is_root() {
        bail!("the vendor SDK venv {SDK_VENV} is missing: run `sudo cargo xtask setup`");
    }
    eprintln!(
        "xtask: installing {} into {SDK_VENV}",
        SDK_PACKAGES.join(" ")
    );
    exec(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(venv),
    )?;
    exec(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--no-input"])
            .args(SDK_PACKAGES),
    )?;
    // Readable (and runnable) by the tests' agent user.
    exec(Command::new("chmod").args(["-R", "a+rX"]).arg(venv))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("cannot write {}", stamp.display()))
}
