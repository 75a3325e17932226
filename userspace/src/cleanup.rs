//! `enforcer cleanup`: removing what a crashed or pinned run left behind.

use std::path::{Path, PathBuf};

use crate::{
    kernel::{bpffs, cgroup},
    runid,
    runs::{self, RunRecord},
};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("enforcer cleanup must run as root")]
    NotRoot,
    #[error("{0:?} is not a run id (run ids look like 20261122-101502-3fa9c1)")]
    BadRunId(String),
    #[error(
        "no run {0} on this host: no cgroup, pinned programs, run record, control socket or \
         trust files of it are left (`enforcer cleanup` without RUN_ID removes every run \
         whose enforcer is gone)"
    )]
    UnknownRun(String),
    #[error("run {0} is still supervised by a live enforcer (pid {1}); stop that enforcer instead")]
    Alive(String, u32),
    #[error(
        "the enforcer daemon of {0} is running (it holds {1}): stop it first \
         (systemctl stop enforcer)"
    )]
    DaemonAlive(String, String),
    #[error("no stopped enforcer daemon of {0} left anything attached")]
    NoDaemon(String),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
}

/// Removes one run, or every run without a live enforcer. Returns what was
/// removed. A named run of which nothing is left is an error
/// ([`CleanupError::UnknownRun`]), so that a typo is not taken for success.
pub fn run(run_id: Option<&str>) -> Result<Vec<String>, CleanupError> {
    if let Some(id) = run_id
        && !runid::is_generated(id)
    {
        return Err(CleanupError::BadRunId(id.to_string()));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(CleanupError::NotRoot);
    }
    let runs_dir = PathBuf::from(runs::RUNS_DIR);
    let cgroup_root = cgroup::cgroup2_mount()?;
    let cg_parent = cgroup_root.join(cgroup::RUNS_DIR);
    let pin_parent = Path::new(bpffs::BPFFS_ROOT).join(bpffs::PINS_DIR);
    let candidates: Vec<String> = match run_id {
        Some(id) => {
            let leftovers = [
                cg_parent.join(id),
                pin_parent.join(id),
                RunRecord::path(&runs_dir, id),
                crate::control::socket_path(&runs_dir, id),
                Path::new(crate::tls::trust::TRUST_DIR).join(id),
            ];
            if !leftovers.iter().any(|p| p.symlink_metadata().is_ok()) {
                return Err(CleanupError::UnknownRun(id.to_string()));
            }
            vec![id.to_string()]
        }
        None => {
            let mut ids: Vec<String> = [&cg_parent, &pin_parent]
                .iter()
                .filter_map(|d| std::fs::read_dir(d).ok())
                .flat_map(|rd| rd.flatten())
                .filter_map(|e| e.file_name().into_string().ok())
                // Only launch's runs: a daemon's pins (`daemon-<slice>-<id>`)
                // stay attached on purpose and are `cleanup --daemon`'s.
                .filter(|n| runid::is_generated(n))
                .collect();
            // A daemon's runs are the daemon's to forget.
            ids.extend(
                RunRecord::all(&runs_dir)
                    .into_iter()
                    .filter(|r| r.unit.is_none())
                    .map(|r| r.run_id),
            );
            // Control sockets and trust bundles whose run record is gone.
            let orphans = std::fs::read_dir(&runs_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".sock").map(String::from))
                .chain(
                    std::fs::read_dir(crate::tls::trust::TRUST_DIR)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter_map(|e| e.file_name().into_string().ok()),
                )
                .filter(|n| runid::is_generated(n));
            ids.extend(orphans);
            ids.sort();
            ids.dedup();
            ids
        }
    };
    let mut removed = Vec::new();
    for id in candidates {
        if let Some(rec) = RunRecord::load(&runs_dir, &id)
            && rec.enforcer_alive()
        {
            if run_id.is_some() {
                return Err(CleanupError::Alive(id, rec.enforcer_pid));
            }
            continue;
        }
        cgroup::remove_run_cgroup(&cg_parent.join(&id))?;
        bpffs::remove_pins(&pin_parent.join(&id))?;
        RunRecord::remove(&runs_dir, &id);
        let _ = std::fs::remove_file(crate::control::socket_path(&runs_dir, &id));
        crate::tls::trust::remove(&Path::new(crate::tls::trust::TRUST_DIR).join(&id));
        removed.push(id);
    }
    Ok(removed)
}

/// Forgets the runs of daemons that are gone (killed): their records,
/// control sockets and trust bundles. A daemon's runs end with it; their
/// units' cgroups are systemd's and are left alone.
pub fn forget_dead_daemon_runs() -> Vec<String> {
    let runs_dir = PathBuf::from(runs::RUNS_DIR);
    let mut forgotten = Vec::new();
    for rec in RunRecord::all(&runs_dir) {
        if rec.unit.is_none() || rec.enforcer_alive() || !runid::is_valid(&rec.run_id) {
            continue;
        }
        RunRecord::remove(&runs_dir, &rec.run_id);
        let _ = std::fs::remove_file(crate::control::socket_path(&runs_dir, &rec.run_id));
        crate::tls::trust::remove(&Path::new(crate::tls::trust::TRUST_DIR).join(&rec.run_id));
        forgotten.push(rec.run_id);
    }
    forgotten
}

/// `enforcer cleanup --daemon SLICE`: detaches and unpins what stopped
/// daemons of `slice` left attached (fail closed while down), and forgets
/// their runs. Refused while a daemon of `slice` runs.
pub fn daemon(slice: &Path) -> Result<Vec<String>, CleanupError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CleanupError::NotRoot);
    }
    let slice = &crate::daemon::config::normal_slice(slice);
    let prefix = crate::daemon::pin_prefix(slice);
    let lock = Path::new("/run/enforcer").join(format!("{prefix}lock"));
    // Held (never unlinked) until the pins are gone: a daemon of the slice
    // starting meanwhile waits for it, or finds it held and stops.
    let _held = match std::fs::File::open(&lock) {
        Ok(file) => Some(
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
                |_| {
                    CleanupError::DaemonAlive(
                        slice.display().to_string(),
                        lock.display().to_string(),
                    )
                },
            )?,
        ),
        Err(_) => None,
    };
    let pin_parent = Path::new(bpffs::BPFFS_ROOT).join(bpffs::PINS_DIR);
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(&pin_parent)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if crate::daemon::is_pin_of(&name, &prefix) {
            bpffs::remove_pins(&entry.path())?;
            removed.push(name);
        }
    }
    removed.extend(forget_dead_daemon_runs());
    if removed.is_empty() {
        return Err(CleanupError::NoDaemon(slice.display().to_string()));
    }
    Ok(removed)
}
