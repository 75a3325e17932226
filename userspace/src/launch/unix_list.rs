//! The unix sockets a policy lists, as enforcer resolves them. A listed path
//! is made canonical once, at run start, before the agent exists (root's
//! symlinks are followed then; anyone else's are refused); at each connect
//! it is resolved again, from enforcer's root, with no symlinks at all, so
//! a symlink the agent plants at or above a listed path leads nowhere. What a
//! listed path names is a socket's identity (device and inode): the agent's
//! own resolution of its `sun_path` must land on one of those. Enforcer's
//! own sockets (everything under /run/enforcer: control and approval
//! sockets of every run) can never be listed and never match. Abstract
//! sockets (`@name`) match by exact name; they have no permissions at all.

use std::{
    collections::{HashSet, VecDeque},
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::{
            ffi::{OsStrExt as _, OsStringExt as _},
            fs::{FileTypeExt as _, MetadataExt as _},
        },
    },
    path::{Component, Path, PathBuf},
};

/// Where enforcer keeps its runtime state, sockets included.
pub const ENFORCER_RUN_DIR: &str = "/run/enforcer";
/// Longest unix socket path (`sun_path` is 108 bytes with the final NUL).
const MAX_UNIX_PATH: usize = 107;
/// Symlinks followed while making one listed path canonical.
const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum UnixListError {
    #[error(
        "unix socket `{entry}`: {link} is a symlink owned by uid {owner}; enforcer follows only \
         root's symlinks when it resolves a listed path (list the path it points to instead)"
    )]
    UntrustedSymlink {
        entry: String,
        link: PathBuf,
        owner: u32,
    },
    #[error("unix socket `{entry}`: more than {MAX_LINKS} symlinks")]
    TooManyLinks { entry: String },
    #[error("unix socket `{entry}`: {path} is not a directory")]
    NotADirectory { entry: String, path: PathBuf },
    #[error(
        "unix socket `{entry}` is enforcer's own ({canonical}): an agent may never reach \
         enforcer's control or approval sockets"
    )]
    Own { entry: String, canonical: PathBuf },
    #[error(
        "unix socket `{entry}` resolves to {canonical}, {len} bytes long; the kernel limit is \
         {MAX_UNIX_PATH}"
    )]
    TooLong {
        entry: String,
        canonical: PathBuf,
        len: usize,
    },
    #[error("unix socket `{entry}`: cannot inspect {path}: {source}")]
    Io {
        entry: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// A socket's identity: what a path names, whatever route led to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
}

impl Identity {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    /// fstat() of an fd.
    pub fn of_fd(fd: BorrowedFd<'_>) -> io::Result<Self> {
        // SAFETY: fstat into a zeroed stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on a live fd.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// A listed path: as the policy writes it, and as enforcer resolved it at
/// run start.
#[derive(Debug, Clone)]
pub struct ListedPath {
    pub written: Vec<u8>,
    pub canonical: CString,
}

/// Who the agent is, for notes about directories it can write.
#[derive(Debug, Clone, Copy)]
pub struct AgentIds<'a> {
    pub uid: u32,
    pub gids: &'a [u32],
}

/// The policy's unix sockets.
#[derive(Debug, Clone, Default)]
pub struct UnixAllowlist {
    paths: Vec<ListedPath>,
    /// Abstract names, without the leading NUL.
    abstract_names: Vec<Vec<u8>>,
}

impl UnixAllowlist {
    /// Resolves the policy's entries (absolute paths, `@name`) at run start.
    /// Returns the list and notes worth telling the user.
    pub fn resolve(
        entries: &[String],
        agent: AgentIds<'_>,
    ) -> Result<(Self, Vec<String>), UnixListError> {
        let mut list = Self::default();
        let mut notes = Vec::new();
        let own = own_sockets();
        for entry in entries {
            if let Some(name) = entry.strip_prefix('@') {
                list.abstract_names.push(name.as_bytes().to_vec());
                continue;
            }
            let canonical = canonicalize(entry)?;
            if canonical.starts_with(ENFORCER_RUN_DIR)
                || std::fs::symlink_metadata(&canonical)
                    .is_ok_and(|m| own.contains(&Identity::of(&m)))
            {
                return Err(UnixListError::Own {
                    entry: entry.clone(),
                    canonical,
                });
            }
            let bytes = canonical.as_os_str().as_bytes();
            if bytes.len() > MAX_UNIX_PATH {
                return Err(UnixListError::TooLong {
                    entry: entry.clone(),
                    len: bytes.len(),
                    canonical,
                });
            }
            if canonical.as_os_str() != entry.as_str() {
                notes.push(format!(
                    "unix socket {entry} is {} (root's symlinks are followed once, at start)",
                    canonical.display()
                ));
            }
            if let Some(dir) = writable_ancestor(&canonical, agent) {
                notes.push(format!(
                    "unix socket {entry}: the agent's user can write {}, so the agent can put \
                     a socket of its own there (it still reaches nothing it could not reach \
                     by itself)",
                    dir.display()
                ));
            }
            let canonical = CString::new(bytes.to_vec()).map_err(|_| UnixListError::Io {
                entry: entry.clone(),
                path: canonical.clone(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })?;
            list.paths.push(ListedPath {
                written: entry.as_bytes().to_vec(),
                canonical,
            });
        }
        Ok((list, notes))
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.abstract_names.is_empty()
    }

    pub fn paths(&self) -> &[ListedPath] {
        &self.paths
    }

    /// An abstract name (without its leading NUL), matched exactly.
    pub fn allows_abstract(&self, name: &[u8]) -> bool {
        self.abstract_names.iter().any(|n| n.as_slice() == name)
    }

    /// The listed path `path` spells, as written or as resolved.
    pub fn listed_as_written(&self, path: &[u8]) -> Option<usize> {
        self.paths
            .iter()
            .position(|p| p.written == path || p.canonical.as_bytes() == path)
    }

    /// What each listed path names right now: an identity, with the O_PATH
    /// descriptor that pins it (no other socket can take its inode number
    /// while the caller holds it), or an errno (ENOENT: nothing there;
    /// ELOOP: a symlink stands on the path). Resolved from enforcer's own
    /// root, with no symlink anywhere on the way: what an agent mounts in a
    /// namespace of its own (possible only with user namespaces allowed)
    /// does not change what a listed path names.
    pub fn identities(&self) -> Vec<Result<(Identity, OwnedFd), i32>> {
        let errno = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        // SAFETY: AT_FDCWD is a valid dirfd for absolute paths.
        let here = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        self.paths
            .iter()
            .map(|p| {
                let fd = openat2(
                    here,
                    &p.canonical,
                    libc::O_PATH | libc::O_CLOEXEC,
                    libc::RESOLVE_NO_SYMLINKS,
                )
                .map_err(errno)?;
                let id = Identity::of_fd(fd.as_fd()).map_err(errno)?;
                Ok((id, fd))
            })
            .collect()
    }
}

/// openat2(2): opens `path` relative to `dir` with `resolve` flags.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CString,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: openat2 with a NUL-terminated path and a valid open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `entry` without symlinks: root-owned symlinks are followed, others refused.
/// Components that do not exist (yet) are kept as written.
fn canonicalize(entry: &str) -> Result<PathBuf, UnixListError> {
    let io_err = |path: &Path, source| UnixListError::Io {
        entry: entry.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let mut rest: VecDeque<OsString> = VecDeque::new();
    push_components(&mut rest, Path::new(entry));
    let mut out = PathBuf::from("/");
    let mut exists = true;
    let mut links = 0;
    while let Some(c) = rest.pop_front() {
        if c == ".." {
            out.pop();
            continue;
        }
        let candidate = out.join(&c);
        if !exists {
            out = candidate;
            continue;
        }
        match std::fs::symlink_metadata(&candidate) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                exists = false;
                out = candidate;
            }
            Err(e) => return Err(io_err(&candidate, e)),
            Ok(m) if m.file_type().is_symlink() => {
                if m.uid() != 0 {
                    return Err(UnixListError::UntrustedSymlink {
                        entry: entry.to_string(),
                        link: candidate,
                        owner: m.uid(),
                    });
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(UnixListError::TooManyLinks {
                        entry: entry.to_string(),
                    });
                }
                let target = std::fs::read_link(&candidate).map_err(|e| io_err(&candidate, e))?;
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                let mut front = VecDeque::new();
                push_components(&mut front, &target);
                while let Some(t) = front.pop_back() {
                    rest.push_front(t);
                }
            }
            Ok(m) => {
                if !rest.is_empty() && !m.is_dir() {
                    return Err(UnixListError::NotADirectory {
                        entry: entry.to_string(),
                        path: candidate,
                    });
                }
                out = candidate;
            }
        }
    }
    Ok(out)
}

fn push_components(into: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components() {
        match c {
            Component::Normal(n) => into.push_back(n.to_os_string()),
            Component::ParentDir => into.push_back(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// The first directory above `path` in which the agent's user could replace
/// what the path goes through (and so put a socket of its own there), if any.
fn writable_ancestor(path: &Path, agent: AgentIds<'_>) -> Option<PathBuf> {
    if agent.uid == 0 {
        return None;
    }
    let mut child = path;
    for dir in path.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(dir) else {
            child = dir;
            continue;
        };
        let mode = m.mode();
        // An owner can always chmod its directory.
        let writable = m.uid() == agent.uid
            || if agent.gids.contains(&m.gid()) {
                mode & 0o020 != 0
            } else {
                mode & 0o002 != 0
            };
        // In a sticky directory only the owner of an entry may replace it.
        let sticky = mode & 0o1000 != 0;
        let child_owner = std::fs::symlink_metadata(child).ok().map(|c| c.uid());
        let replaceable = writable
            && (!sticky || m.uid() == agent.uid || child_owner.is_none_or(|o| o == agent.uid));
        if replaceable {
            return Some(dir.to_path_buf());
        }
        child = dir;
    }
    None
}

/// The identities of every socket under /run/enforcer.
pub fn own_sockets() -> HashSet<Identity> {
    let mut found = HashSet::new();
    collect_sockets(Path::new(ENFORCER_RUN_DIR), 4, &mut found);
    found
}

fn collect_sockets(dir: &Path, depth: u32, found: &mut HashSet<Identity>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.file_type().is_socket() {
            found.insert(Identity::of(&m));
        } else if m.is_dir() && depth > 0 {
            collect_sockets(&e.path(), depth - 1, found);
        }
    }
}

/// A path for messages: abstract names as `@name`, control characters
/// escaped (an agent's address must not write lines into the log).
pub fn printable(path: &[u8]) -> String {
    let (prefix, body) = match path.split_first() {
        Some((0, rest)) => ("@", rest),
        _ => ("", path),
    };
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    format!("{prefix}{text}")
}

/// `bytes` as a path (no NUL inside).
pub fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> AgentIds<'static> {
        AgentIds {
            uid: 65534,
            gids: &[65534],
        }
    }

    #[test]
    fn printable_paths_cannot_write_lines() {
        assert_eq!(printable(b"\0bus"), "@bus");
        assert_eq!(printable(b"/run/a.sock"), "/run/a.sock");
        assert_eq!(
            printable(b"/x\nenforcer: allowed"),
            "/x\\nenforcer: allowed"
        );
        assert_eq!(printable(b"\0a\0b"), "@a\\u{0}b");
    }

    #[test]
    fn abstract_names_match_exactly() {
        let (l, _) = UnixAllowlist::resolve(&["@bus".into()], ids()).unwrap();
        assert!(l.allows_abstract(b"bus"));
        assert!(!l.allows_abstract(b"bus\0"));
        assert!(!l.allows_abstract(b"bu"));
        assert!(!l.is_empty());
    }

    #[test]
    fn missing_components_are_kept_as_written() {
        let p = "/nonexistent-enforcer-test/dir/app.sock";
        assert_eq!(canonicalize(p).unwrap(), PathBuf::from(p));
        let (l, notes) = UnixAllowlist::resolve(&[p.into()], ids()).unwrap();
        assert_eq!(l.listed_as_written(p.as_bytes()), Some(0));
        assert_eq!(l.listed_as_written(b"/nonexistent-enforcer-test/dir"), None);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn enforcers_own_directory_is_refused() {
        for p in [
            "/run/enforcer/runs/x.sock",
            "/run/enforcer",
            "/run/enforcer/a",
        ] {
            let err = UnixAllowlist::resolve(&[p.into()], ids()).unwrap_err();
            assert!(err.to_string().contains("enforcer's own"), "{p}: {err}");
        }
    }

    #[test]
    fn symlinks_are_followed_only_when_root_owns_them() {
        let dir = std::env::temp_dir().join(format!("enforcer-unix-list-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("real", &link).unwrap();
        let entry = format!("{}/app.sock", link.display());
        let r = canonicalize(&entry);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(r.unwrap(), dir.join("real/app.sock"));
        } else {
            assert!(matches!(r, Err(UnixListError::UntrustedSymlink { .. })));
        }
        // Dot-dot in a link target is resolved against where the link is.
        let up = dir.join("up");
        let _ = std::fs::remove_file(&up);
        std::os::unix::fs::symlink("real/../real", &up).unwrap();
        // SAFETY: as above.
        if unsafe { libc::geteuid() } == 0 {
            let r = canonicalize(&format!("{}/x.sock", up.display())).unwrap();
            assert_eq!(r, dir.join("real/x.sock"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_in_the_middle_is_not_a_directory() {
        let dir = std::env::temp_dir().join(format!("enforcer-unix-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), "").unwrap();
        let r = canonicalize(&format!("{}/f/app.sock", dir.display()));
        assert!(
            matches!(r, Err(UnixListError::NotADirectory { .. })),
            "{r:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writable_directories_are_noticed() {
        let tmp = Path::new("/tmp/enforcer-not-there.sock");
        // /tmp is world-writable and sticky; the socket is missing, so the
        // agent could create it.
        assert_eq!(writable_ancestor(tmp, ids()), Some(PathBuf::from("/tmp")));
        assert_eq!(
            writable_ancestor(Path::new("/run/x.sock"), ids()),
            None,
            "/run is root's"
        );
    }

    #[test]
    fn identities_resolve_without_symlinks() {
        let dir = std::env::temp_dir().join(format!("enforcer-unix-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let link = dir.join("l.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        let list = UnixAllowlist {
            paths: [&sock, &link, &dir.join("missing.sock")]
                .iter()
                .map(|p| ListedPath {
                    written: p.as_os_str().as_bytes().to_vec(),
                    canonical: CString::new(p.as_os_str().as_bytes()).unwrap(),
                })
                .collect(),
            abstract_names: Vec::new(),
        };
        let got: Vec<Result<Identity, i32>> = list
            .identities()
            .into_iter()
            .map(|r| r.map(|(id, _)| id))
            .collect();
        let m = std::fs::metadata(&sock).unwrap();
        assert_eq!(got[0], Ok(Identity::of(&m)));
        assert_eq!(got[1], Err(libc::ELOOP));
        assert_eq!(got[2], Err(libc::ENOENT));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
