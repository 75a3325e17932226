//! Test helpers: unique temporary directories, unprivileged threads (so
//! permission tests mean something when the suite runs as root), sample rows.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use super::{AuditEvent, RunInfo};
use crate::decision::{Layer, Verdict};

/// A directory under the system temp dir, removed (with everything in it,
/// whatever its permissions) when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "enforcer-audit-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        fn open_up(p: &Path) {
            if let Ok(m) = fs::symlink_metadata(p)
                && m.is_dir()
            {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
                if let Ok(rd) = fs::read_dir(p) {
                    for e in rd.flatten() {
                        open_up(&e.path());
                    }
                }
            }
        }
        open_up(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on a thread without effective capabilities, so that file
/// permissions apply even when the tests run as root (capabilities are per
/// thread on Linux; the rest of the test process keeps its own).
pub(crate) fn as_unprivileged<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            drop_effective_capabilities();
            f()
        })
        .join()
        .unwrap()
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn drop_effective_capabilities() {
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as
    // capget(2) documents; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget");
    for d in &mut data {
        d.effective = 0;
    }
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    assert_eq!(rc, 0, "capset");
}

pub(crate) fn run_info(id: &str, name: &str) -> RunInfo {
    RunInfo {
        run_id: id.to_owned(),
        name: name.to_owned(),
        policy_path: String::from("policies/billing.toml"),
        policy_sha256: String::from("ab12"),
        invoking_user: String::from("dev"),
        uid: 1000,
        command: String::from("python agent.py"),
        cgroup: format!("/sys/fs/cgroup/enforcer/{id}"),
        started_at: SystemTime::now(),
        ttl_seconds: Some(10_800),
        label: None,
        unit: None,
    }
}

pub(crate) fn request(
    run: &str,
    verdict: Verdict,
    host: &str,
    method: &str,
    path: &str,
) -> AuditEvent {
    AuditEvent {
        run_id: run.to_owned(),
        layer: Layer::Request,
        verdict,
        host: Some(host.to_owned()),
        port: Some(443),
        method: Some(method.to_owned()),
        path: Some(path.to_owned()),
        rule: Some(String::from("host[0].rule[0]")),
        reason: String::from("matched a rule"),
        pid: Some(4242),
        comm: Some(String::from("python3")),
        ..AuditEvent::default()
    }
}
