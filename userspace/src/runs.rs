//! The registry of runs on this host: one small JSON file per run under
//! /run/enforcer/runs, written at launch and removed at exit, so that
//! `enforcer cleanup` can tell a live run from one whose enforcer died.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const RUNS_DIR: &str = "/run/enforcer/runs";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// Pid of the enforcer process supervising the run.
    pub enforcer_pid: u32,
    pub cgroup: PathBuf,
    pub pins: PathBuf,
    pub policy: PathBuf,
    /// Enforcement outlives the enforcer (`--pin`).
    pub pinned: bool,
    pub started_unix: u64,
    /// The systemd unit a daemon run serves (none for `launch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The orchestrator's label of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl RunRecord {
    pub fn path(dir: &Path, run_id: &str) -> PathBuf {
        dir.join(format!("{run_id}.json"))
    }

    /// Writes the record (atomically, root-only).
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let tmp = dir.join(format!(".{}.tmp", self.run_id));
        let body = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        {
            use io::Write as _;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
        }
        fs::rename(tmp, Self::path(dir, &self.run_id))
    }

    pub fn remove(dir: &Path, run_id: &str) {
        let _ = fs::remove_file(Self::path(dir, run_id));
    }

    pub fn load(dir: &Path, run_id: &str) -> Option<Self> {
        let text = fs::read(Self::path(dir, run_id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Every record in `dir`.
    pub fn all(dir: &Path) -> Vec<Self> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// True while the enforcer that wrote this record is still running.
    pub fn enforcer_alive(&self) -> bool {
        // The pid could have been reused; also require it to be an enforcer.
        fs::read(format!("/proc/{}/cmdline", self.enforcer_pid))
            .map(|c| {
                c.split(|&b| b == 0)
                    .next()
                    .is_some_and(|argv0| argv0.ends_with(b"enforcer"))
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_dead_pids_are_not_alive() {
        let dir = std::env::temp_dir().join(format!("enforcer-runs-test-{}", std::process::id()));
        let r = RunRecord {
            run_id: "20260101-000000-abcdef".into(),
            enforcer_pid: u32::MAX - 1,
            cgroup: "/sys/fs/cgroup/enforcer/x".into(),
            pins: "/sys/fs/bpf/enforcer/x".into(),
            policy: "p.toml".into(),
            pinned: false,
            started_unix: 1,
            unit: Some("billing-agent.service".into()),
            label: None,
        };
        r.save(&dir).unwrap();
        let back = RunRecord::load(&dir, &r.run_id).unwrap();
        assert_eq!(back.cgroup, r.cgroup);
        assert_eq!(back.unit, r.unit);
        assert_eq!(RunRecord::all(&dir).len(), 1);
        assert!(!back.enforcer_alive());
        RunRecord::remove(&dir, &r.run_id);
        assert!(RunRecord::load(&dir, &r.run_id).is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
