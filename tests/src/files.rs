//! Files the agent (running as `nobody`) must be able to read: policies,
//! the probe binary, scratch files. They live in a world-readable temp dir.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// Where `cargo xtask test` wants scratch directories (it removes the whole
/// tree after a green run); without it, the system temp dir.
pub const SCRATCH_PARENT_ENV: &str = "ENFORCER_E2E_SCRATCH";

/// A per-process scratch directory, mode 1777, made fresh for this process:
/// never one an earlier run left behind (a reused pid once handed a test the
/// audit database of an older build).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let parent =
            std::env::var_os(SCRATCH_PARENT_ENV).map_or_else(std::env::temp_dir, PathBuf::from);
        let d = fresh_dir(&parent, &format!("enforcer-e2e-{}", std::process::id()));
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).expect("chmod scratch dir");
        d
    })
}

/// Creates `parent/stem-N` for the first N that did not exist yet.
fn fresh_dir(parent: &Path, stem: &str) -> PathBuf {
    for n in 0u32.. {
        let d = parent.join(format!("{stem}-{n}"));
        match fs::create_dir(&d) {
            Ok(()) => return d,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("create scratch dir {}: {e}", d.display()),
        }
    }
    unreachable!("u32 ran out of scratch directory names")
}

/// Writes `content` to a fresh file in the scratch dir and returns its path.
pub fn write(name: &str, content: &str) -> PathBuf {
    let p = scratch_dir().join(unique(name));
    fs::write(&p, content).expect("write scratch file");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
    p
}

/// A path for the agent to write to (world-writable file, created empty).
pub fn agent_writable(name: &str) -> PathBuf {
    let p = scratch_dir().join(unique(name));
    fs::write(&p, "").expect("create");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).expect("chmod");
    p
}

fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{name}", N.fetch_add(1, Ordering::SeqCst))
}

/// The audit database launches use unless a test names one (shared by the
/// tests of one test binary).
pub fn audit_db() -> PathBuf {
    let dir = scratch_dir().join("audit-db");
    fs::create_dir_all(&dir).expect("create the audit db dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod audit db dir");
    dir.join("audit.db")
}

/// The probe binary, copied where `nobody` can execute it.
pub fn probe() -> PathBuf {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| agent_binary("enforcer-probe")).clone()
}

/// The WebSocket client (`enforcer-ws`), copied where `nobody` can execute it.
pub fn ws_client() -> PathBuf {
    static WS: OnceLock<PathBuf> = OnceLock::new();
    WS.get_or_init(|| agent_binary("enforcer-ws")).clone()
}

/// One of this package's binaries, copied into the scratch dir.
fn agent_binary(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; cargo builds the
    // package's binaries into target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let src = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} binary next to the test binary"));
    let dst = scratch_dir().join(name);
    fs::copy(&src, &dst).expect("copy binary");
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).expect("chmod binary");
    dst
}

/// The enforcer binary under test: $ENFORCER_BIN, or the workspace's target dir.
pub fn enforcer() -> PathBuf {
    if let Some(p) = std::env::var_os("ENFORCER_BIN") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target"));
    // The most recently built profile.
    ["debug", "release"]
        .iter()
        .map(|profile| target.join(profile).join("enforcer"))
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .expect("enforcer binary not found: build it first or set ENFORCER_BIN")
}
