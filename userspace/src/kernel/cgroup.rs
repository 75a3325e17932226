//! cgroup v2: finding the mount, creating a run's cgroup in a root-owned part
//! of the hierarchy, moving nothing in it but the child, and tearing it down
//! (every process killed, directory removed).

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Parent of every run's cgroup, directly under the cgroup2 root.
pub const RUNS_DIR: &str = "enforcer";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    #[error(
        "no cgroup v2 hierarchy is mounted (looked for a cgroup2 entry in /proc/self/mountinfo); \
         enforcer needs cgroup v2"
    )]
    NoCgroup2,
    #[error("cannot create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot open cgroup {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot stop the processes in cgroup {path}: {source}")]
    Kill { path: PathBuf, source: io::Error },
    #[error("processes in cgroup {path} did not exit within {secs} s")]
    KillTimeout { path: PathBuf, secs: u64 },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Finds where cgroup v2 is mounted by reading `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    find_cgroup2(&text).ok_or(CgroupError::NoCgroup2)
}

/// Parses mountinfo text; prefers a cgroup2 mount of the hierarchy root.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let path = PathBuf::from(unescape_mountinfo(mount_point));
        if *root == "/" {
            return Some(path);
        }
        fallback.get_or_insert(path);
    }
    fallback
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One run's cgroup: `<cgroup2>/enforcer/<run id>`, owned by root, mode 0755.
/// Dropping it kills whatever is still inside and removes the directory.
#[derive(Debug)]
pub struct RunCgroup {
    path: PathBuf,
    dir: fs::File,
    removed: bool,
}

impl RunCgroup {
    /// Creates the run's cgroup under the cgroup2 mount `root`.
    pub fn create(root: &Path, run_id: &str) -> Result<Self, CgroupError> {
        let parent = root.join(RUNS_DIR);
        let path = parent.join(run_id);
        // A concurrent run's cleanup may remove the shared parent between our
        // two mkdirs; try again a few times.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match fs::DirBuilder::new().mode(0o755).create(&parent) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(CgroupError::Create {
                        path: parent,
                        source,
                    });
                }
            }
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => continue,
                Err(source) => return Err(CgroupError::Create { path, source }),
            }
        }
        let dir = fs::File::open(&path).map_err(|source| CgroupError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            dir,
            removed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory, for attaching programs.
    pub fn dir(&self) -> &fs::File {
        &self.dir
    }

    /// The cgroup's id, as `bpf_get_current_cgroup_id()` reports it for its
    /// processes (the directory's inode number on cgroup2).
    pub fn id(&self) -> Result<u64, CgroupError> {
        use std::os::unix::fs::MetadataExt as _;
        self.dir
            .metadata()
            .map(|m| m.ino())
            .map_err(|source| CgroupError::Open {
                path: self.path.clone(),
                source,
            })
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.path)
    }

    /// Kills every process in the cgroup and waits until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        kill_all(&self.path, timeout)
    }

    /// Kills what remains and removes the directory (and the shared parent when empty).
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        remove_run_cgroup(&self.path)
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_run_cgroup(&self.path);
        }
    }
}

fn pids_in(path: &Path) -> Vec<i32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn populated(path: &Path) -> bool {
    match fs::read_to_string(path.join("cgroup.events")) {
        Ok(text) => text.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => !pids_in(path).is_empty(),
    }
}

/// Kills every process in the cgroup at `path` (cgroup.kill, or SIGKILL to
/// each pid on kernels without it) and waits until it is empty.
pub fn kill_all(path: &Path, timeout: Duration) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    let kill_file = path.join("cgroup.kill");
    let started = Instant::now();
    let mut first = true;
    while populated(path) {
        if first || started.elapsed() > Duration::from_millis(200) {
            if kill_file.exists() {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&kill_file)
                    .and_then(|mut f| f.write_all(b"1"))
                    .map_err(|source| CgroupError::Kill {
                        path: path.to_path_buf(),
                        source,
                    })?;
            } else {
                for pid in pids_in(path) {
                    // SAFETY: kill(2) with a pid read from the cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            first = false;
        }
        if started.elapsed() > timeout {
            return Err(CgroupError::KillTimeout {
                path: path.to_path_buf(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Kills what is left in a run's cgroup, removes it, and removes the shared
/// parent if no other run is using it. Missing directories are not an error.
pub fn remove_run_cgroup(path: &Path) -> Result<(), CgroupError> {
    if path.exists() {
        // cgroup.kill covers the whole subtree; the directories below
        // (only root can make them) go first, deepest first.
        kill_all(path, Duration::from_secs(10))?;
        remove_cgroup_dir(path)?;
    }
    if let Some(parent) = path.parent()
        && parent.file_name().is_some_and(|n| n == RUNS_DIR)
    {
        // Fails harmlessly (ENOTEMPTY/EBUSY) while other runs exist.
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

/// Removes an empty cgroup directory and every cgroup below it.
fn remove_cgroup_dir(path: &Path) -> Result<(), CgroupError> {
    for entry in fs::read_dir(path).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_dir(&entry.path())?;
        }
    }
    let mut tries = 0;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // EBUSY right after the last process exits: retry briefly.
            Err(e) if tries < 500 && e.raw_os_error() == Some(libc::EBUSY) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_unified_mount_in_a_hybrid_layout() {
        assert_eq!(
            find_cgroup2(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_is_none() {
        let only_v1 = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2(only_v1), None);
        assert_eq!(find_cgroup2(""), None);
        assert_eq!(find_cgroup2("garbage line without separator\n"), None);
    }

    #[test]
    fn prefers_the_root_of_the_hierarchy() {
        let text = "\
50 1 0:40 /some/sub /mnt/sub rw - cgroup2 cgroup2 rw
51 1 0:40 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
";
        assert_eq!(find_cgroup2(text), Some(PathBuf::from("/mnt/with space")));
    }

    #[test]
    fn a_non_root_mount_is_used_when_it_is_the_only_one() {
        let text = "50 1 0:40 /some/sub /mnt/sub rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(text), Some(PathBuf::from("/mnt/sub")));
    }
}
