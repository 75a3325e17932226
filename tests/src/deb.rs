//! The Debian package of the binary under test, built by `cargo xtask dist`
//! (stripped of debug info on the way in) into the test's scratch directory.

use std::{path::PathBuf, process::Command};

use crate::files;

/// Builds the .deb and returns its path.
pub fn build() -> PathBuf {
    let enforcer = files::enforcer();
    let out = files::scratch_dir().join("dist");
    let xtask = enforcer.with_file_name("xtask");
    let mut cmd = if xtask.exists() {
        Command::new(xtask)
    } else {
        let mut c = Command::new("cargo");
        c.args(["run", "-q", "-p", "xtask", "--"]);
        c
    };
    let o = cmd
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["dist", "--compression", "gzip", "--binary"])
        .arg(&enforcer)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run xtask dist");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deb = String::from_utf8(o.stdout).expect("utf-8");
    PathBuf::from(deb.lines().last().unwrap_or_default().trim())
}
