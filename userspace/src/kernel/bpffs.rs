//! The BPF filesystem: mounting it when absent, and the per-run directory
//! where links and maps are pinned so enforcement outlives the enforcer.

use std::{
    fs, io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

/// Where bpffs lives on every mainstream distribution.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Our directory inside it; each run pins under `<root>/enforcer/<run id>`.
pub const PINS_DIR: &str = "enforcer";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("{BPFFS_ROOT} does not exist and cannot be created: {0}")]
    NoMountPoint(#[source] io::Error),
    #[error(
        "cannot mount bpffs on {BPFFS_ROOT}: {0} (enforcer pins its programs there so they outlive it)"
    )]
    Mount(#[source] nix::Error),
    #[error("cannot create pin directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot remove pin directory {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// True when `path` is a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => st.filesystem_type().0 == BPF_FS_MAGIC,
        Err(_) => false,
    }
}

/// Mounts bpffs on /sys/fs/bpf unless it is already there.
pub fn ensure_mounted() -> Result<PathBuf, BpffsError> {
    let root = PathBuf::from(BPFFS_ROOT);
    if is_bpffs(&root) {
        return Ok(root);
    }
    if !root.exists() {
        fs::create_dir_all(&root).map_err(BpffsError::NoMountPoint)?;
    }
    nix::mount::mount(
        Some("bpf"),
        &root,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(BpffsError::Mount)?;
    Ok(root)
}

/// A run's pin directory. Dropping it removes whatever is still pinned there,
/// which detaches the run's programs once their file descriptors are closed.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    removed: bool,
}

impl PinDir {
    pub fn create(root: &Path, run_id: &str) -> Result<Self, BpffsError> {
        let parent = root.join(PINS_DIR);
        let path = parent.join(run_id);
        match fs::DirBuilder::new().mode(0o700).create(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(BpffsError::Create {
                    path: parent,
                    source,
                });
            }
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| BpffsError::Create {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            removed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path for one pinned object.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Unpins everything and removes the directory.
    pub fn remove(mut self) -> Result<(), BpffsError> {
        self.removed = true;
        remove_pins(&self.path)
    }

    /// Keeps the pins (enforcement outlives this process); `enforcer cleanup` removes them.
    pub fn keep(mut self) {
        self.removed = true;
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_pins(&self.path);
        }
    }
}

/// Removes a run's pin directory and, when no other run uses it, the shared parent.
pub fn remove_pins(path: &Path) -> Result<(), BpffsError> {
    match fs::read_dir(path) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let p = entry.path();
                if let Err(source) = fs::remove_file(&p)
                    && source.kind() != io::ErrorKind::NotFound
                {
                    return Err(BpffsError::Remove { path: p, source });
                }
            }
            if let Err(source) = fs::remove_dir(path)
                && source.kind() != io::ErrorKind::NotFound
            {
                return Err(BpffsError::Remove {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BpffsError::Remove {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    if let Some(parent) = path.parent()
        && parent.file_name().is_some_and(|n| n == PINS_DIR)
    {
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}
