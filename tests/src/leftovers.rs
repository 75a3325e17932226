//! Checks that a run left nothing behind: no cgroup, no pinned programs, no
//! run record, and no process of the agent's still alive.

use std::path::{Path, PathBuf};

/// The cgroup v2 mount, from /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .next()
        .expect("cgroup2 mount")
}

pub fn run_cgroup(run_id: &str) -> PathBuf {
    cgroup2_root().join("enforcer").join(run_id)
}

pub fn run_pins(run_id: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/enforcer").join(run_id)
}

pub fn run_record(run_id: &str) -> PathBuf {
    Path::new("/run/enforcer/runs").join(format!("{run_id}.json"))
}

/// Waits up to `secs` for `cond`.
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

pub fn assert_run_gone(run_id: &str) {
    let cg = run_cgroup(run_id);
    let pins = run_pins(run_id);
    let rec = run_record(run_id);
    assert!(
        eventually(5, || !cg.exists() && !pins.exists() && !rec.exists()),
        "run {run_id} left something behind: cgroup {} {}, pins {} {}, record {} {}",
        cg.display(),
        cg.exists(),
        pins.display(),
        pins.exists(),
        rec.display(),
        rec.exists()
    );
}

/// Pids of processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let me = std::process::id();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(needle) {
                    out.push(pid);
                }
            }
        }
    }
    out
}
