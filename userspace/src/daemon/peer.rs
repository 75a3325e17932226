//! Who is at the other end of a connection to the daemon, as the kernel
//! says (never as the peer says): its uid and pid from SO_PEERCRED, a pidfd
//! from SO_PEERPIDFD (so a pid reused after the peer exits is not mistaken
//! for it), and its cgroup from /proc; and which unit of the slice that
//! cgroup is.

use std::{
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Component, Path, PathBuf},
};

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the peer process.
const SO_PEERPIDFD: libc::c_int = 77;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot read the peer's credentials: {0}")]
    Credentials(#[source] std::io::Error),
    #[error("cannot read the cgroup of process {pid}: {source}")]
    Cgroup {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("process {0} exited while it was being identified")]
    Gone(i32),
    #[error("the caller's cgroup {cgroup} is not in the governed slice {slice}")]
    OutsideSlice { cgroup: String, slice: String },
    #[error("the caller's cgroup {0} is not a unit (.service or .scope) of the slice")]
    NotAUnit(String),
    #[error("cannot read the status of process {pid}: {source}")]
    Status {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// What makes a process as powerful as root: a uid 0 (real, effective,
/// saved or filesystem) or any capability it holds or can regain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Privilege {
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gids, then supplementary groups
    /// (what a secret file must not be readable by).
    pub gids: Vec<u32>,
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub ambient: u64,
}

impl Privilege {
    /// Why this process counts as root, if it does.
    pub fn rootlike(&self) -> Option<String> {
        if self.uids.contains(&0) {
            return Some(format!(
                "has uid 0 (real, effective, saved, fs: {:?})",
                self.uids
            ));
        }
        let caps = [
            ("permitted", self.permitted),
            ("effective", self.effective),
            ("ambient", self.ambient),
            ("inheritable", self.inheritable),
        ];
        caps.iter()
            .find(|(_, v)| *v != 0)
            .map(|(which, v)| format!("holds capabilities ({which} {v:#x})"))
    }
}

/// Reads uids and capability sets from a /proc/PID/status text.
fn parse_status(text: &str) -> Option<Privilege> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
    let uids: Vec<u32> = field("Uid:")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let ids = |name: &str| -> Vec<u32> {
        field(name)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    let mut gids = ids("Gid:");
    gids.extend(ids("Groups:"));
    gids.sort_unstable();
    gids.dedup();
    Some(Privilege {
        uids: uids.try_into().ok()?,
        gids,
        inheritable: hex("CapInh:")?,
        permitted: hex("CapPrm:")?,
        effective: hex("CapEff:")?,
        ambient: hex("CapAmb:")?,
    })
}

/// The kernel's view of a peer.
#[derive(Debug)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Refers to the peer process for as long as it is held, even after the
    /// pid is reused.
    pub pidfd: OwnedFd,
    /// The peer's cgroup, relative to the cgroup2 root (`agents.slice/x.service`).
    pub cgroup: PathBuf,
    /// Its uids and capabilities, from /proc.
    pub privilege: Privilege,
}

/// Identifies the process at the other end of `stream`.
pub fn identify(stream: &UnixStream) -> Result<Peer, PeerError> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| PeerError::Credentials(e.into()))?;
    let pidfd = peer_pidfd(stream).map_err(PeerError::Credentials)?;
    let pid = cred.pid();
    let cgroup = cgroup_of(pid).map_err(|source| PeerError::Cgroup { pid, source })?;
    let privilege = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .as_deref()
        .and_then(parse_status)
        .ok_or_else(|| PeerError::Status {
            pid,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no Uid/Cap lines"),
        })?;
    // Read through the pid; still the same process only if the pidfd says
    // it is alive under that pid now.
    if pidfd_pid(&pidfd) != Some(pid) {
        return Err(PeerError::Gone(pid));
    }
    Ok(Peer {
        pid,
        uid: cred.uid(),
        gid: cred.gid(),
        pidfd,
        cgroup,
        privilege,
    })
}

fn peer_pidfd(stream: &UnixStream) -> std::io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int of the given length.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    if rc != 0 || fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel handed us a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid a pidfd refers to now (None once the process has exited).
fn pidfd_pid(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&p: &i32| p > 0)
}

/// The cgroup2 path of `pid`, relative to the cgroup2 root.
fn cgroup_of(pid: i32) -> std::io::Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    parse_cgroup_file(&text)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no cgroup2 entry"))
}

/// The `0::/path` line of a /proc/PID/cgroup file, without its leading `/`.
fn parse_cgroup_file(text: &str) -> Option<PathBuf> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .map(|p| PathBuf::from(p.trim_end()))
}

/// The unit a cgroup belongs to in the governed slice: the cgroup must be
/// strictly below `slice`, every cgroup between must be a slice (a cgroup
/// a unit made below itself is not a unit), and its own name must be a
/// unit's (`name.service` or `name.scope`), which is what `exec` runs in.
pub fn unit_of(cgroup: &Path, slice: &Path) -> Result<String, PeerError> {
    let outside = || PeerError::OutsideSlice {
        cgroup: cgroup.display().to_string(),
        slice: slice.display().to_string(),
    };
    let below = cgroup.strip_prefix(slice).map_err(|_| outside())?;
    if below.as_os_str().is_empty()
        || !below
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(outside());
    }
    let between = below.parent().map(Path::components).into_iter().flatten();
    for c in between {
        if !c.as_os_str().to_string_lossy().ends_with(".slice") {
            return Err(PeerError::NotAUnit(cgroup.display().to_string()));
        }
    }
    let name = cgroup
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PeerError::NotAUnit(cgroup.display().to_string()))?;
    if name.ends_with(".service") || name.ends_with(".scope") {
        Ok(name.to_string())
    } else {
        Err(PeerError::NotAUnit(cgroup.display().to_string()))
    }
}

/// The invocation id systemd gave the unit whose cgroup is `cgroup_dir`
/// (its `trusted.invocation_id` xattr, which only root can set): the run's
/// label when `exec` names none.
pub fn invocation_id(cgroup_dir: &Path) -> Option<crate::run::label::Label> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(cgroup_dir.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"trusted.invocation_id".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let id = buf.get(..usize::try_from(n).ok()?)?;
    // systemd writes 32 hex digits (a 128-bit id), nothing else.
    (id.len() == 32 && id.iter().all(u8::is_ascii_hexdigit))
        .then(|| std::str::from_utf8(id).ok()?.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_names_the_peer_and_its_cgroup() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let peer = identify(&a).expect("identify ourselves");
        assert_eq!(peer.pid, std::process::id() as i32);
        // SAFETY: getuid has no preconditions.
        assert_eq!(peer.uid, unsafe { libc::getuid() });
        let own = parse_cgroup_file(&std::fs::read_to_string("/proc/self/cgroup").expect("read"));
        assert_eq!(Some(peer.cgroup), own);
    }

    #[test]
    fn only_units_strictly_below_the_slice_are_units() {
        let slice = Path::new("agents.slice");
        let unit = |c: &str| unit_of(Path::new(c), slice);
        assert_eq!(
            unit("agents.slice/billing.service").expect("unit"),
            "billing.service"
        );
        assert_eq!(
            unit("agents.slice/agents-eu.slice/run-u7.scope").expect("nested slice"),
            "run-u7.scope"
        );
        assert!(matches!(
            unit("agents.slice"),
            Err(PeerError::OutsideSlice { .. })
        ));
        assert!(matches!(
            unit("agents.slicex/a.service"),
            Err(PeerError::OutsideSlice { .. })
        ));
        assert!(matches!(
            unit("system.slice/a.service"),
            Err(PeerError::OutsideSlice { .. })
        ));
        assert!(matches!(
            unit("agents.slice/../system.slice/a.service"),
            Err(PeerError::OutsideSlice { .. })
        ));
        assert!(matches!(
            unit("agents.slice/a.service/sub"),
            Err(PeerError::NotAUnit(_))
        ));
        // A unit that made a cgroup below itself and named it like a unit.
        assert!(matches!(
            unit("agents.slice/c.service/a-evil.service"),
            Err(PeerError::NotAUnit(_))
        ));
    }

    #[test]
    fn a_process_with_any_uid_0_or_capability_counts_as_root() {
        let status = |uid: &str, amb: &str| {
            format!(
                "Name:\tx\nUid:\t{uid}\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
                 CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t{amb}\n"
            )
        };
        let plain =
            parse_status(&status("65534\t65534\t65534\t65534", "0000000000000000")).expect("parse");
        assert_eq!(plain.rootlike(), None);
        let euid_trick =
            parse_status(&status("0\t65534\t0\t65534", "0000000000000000")).expect("parse");
        assert!(euid_trick.rootlike().is_some());
        let ambient =
            parse_status(&status("65534\t65534\t65534\t65534", "0000000000000002")).expect("parse");
        assert!(ambient.rootlike().expect("caps").contains("ambient"));
        let own = parse_status(&std::fs::read_to_string("/proc/self/status").expect("read"));
        assert!(own.is_some(), "this kernel's status file parses");
    }

    #[test]
    fn the_cgroup_file_is_read_for_its_cgroup2_line() {
        assert_eq!(
            parse_cgroup_file("1:name=systemd:/x\n0::/agents.slice/a.service\n"),
            Some(PathBuf::from("agents.slice/a.service"))
        );
        assert_eq!(parse_cgroup_file("1:cpu:/x\n"), None);
    }
}
