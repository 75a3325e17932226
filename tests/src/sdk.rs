//! The vendors' own Python SDKs (stripe, twilio, resend), installed by
//! `cargo xtask setup` into a venv the agent's user can read, and a way to
//! run a script with them inside a launch.

use std::path::PathBuf;

use crate::files;

/// Where `cargo xtask setup` installs the SDKs (see `xtask/src/setup.rs`).
pub const SDK_VENV: &str = "/var/cache/enforcer-tests/sdk-venv";

/// The venv's python; panics with what to run when setup has not.
pub fn python() -> PathBuf {
    let p = PathBuf::from(SDK_VENV).join("bin").join("python");
    assert!(
        PathBuf::from(SDK_VENV).join("enforcer-sdks.txt").exists() && p.exists(),
        "the vendor SDK venv {SDK_VENV} is missing: run `sudo cargo xtask setup`"
    );
    p
}

/// Writes a Python script where the agent can read it.
pub fn script(name: &str, text: &str) -> PathBuf {
    files::write(name, text)
}
