//! A small process, forked before the enforcer starts any thread, that
//! outlives it. If the enforcer dies without saying goodbye (even SIGKILL),
//! the watchdog kills every process in the run's cgroup and removes the
//! cgroup and the pins: the agent never runs on unsupervised.

use std::{
    io::{self, Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use crate::kernel::{bpffs, cgroup};

/// Byte the enforcer sends when it has cleaned up itself.
const DONE: u8 = b'D';
/// Byte the enforcer sends when enforcement must outlive it (pinned mode).
const KEEP: u8 = b'K';

/// The enforcer's end of the watchdog pipe.
#[derive(Debug)]
pub struct Watchdog {
    pipe: Option<std::fs::File>,
}

impl Watchdog {
    /// Tells the watchdog the enforcer cleaned up after itself.
    pub fn done(mut self) {
        self.send(DONE);
    }

    /// Tells the watchdog to leave the run in place (pinned enforcement).
    pub fn keep(mut self) {
        self.send(KEEP);
    }

    fn send(&mut self, b: u8) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(&[b]);
        }
    }
}

/// What the watchdog removes if the enforcer dies.
#[derive(Debug, Clone)]
pub struct Leftovers {
    pub cgroup: PathBuf,
    pub pins: PathBuf,
    /// The run's record under /run/enforcer/runs.
    pub record: PathBuf,
    /// The run's trust bundle directory.
    pub trust: PathBuf,
}

/// Forks the watchdog. Must be called while the process is single-threaded.
pub fn start(leftovers: Leftovers) -> io::Result<Watchdog> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: we own both new descriptors.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees no other thread exists, so the child may
    // run ordinary Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(write_end);
            watch(read_end, &leftovers);
            // SAFETY: leave without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        _ => {
            drop(read_end);
            Ok(Watchdog {
                pipe: Some(std::fs::File::from(write_end)),
            })
        }
    }
}

fn watch(read_end: OwnedFd, leftovers: &Leftovers) {
    // Our own session: a Ctrl-C or a kill of the enforcer's process group
    // must not take the watchdog with it.
    // SAFETY: plain syscalls in the forked child.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if devnull >= 0 {
            libc::dup2(devnull, 0);
            libc::dup2(devnull, 1);
            libc::close(devnull);
        }
        // Keep stderr for the one message we may print; drop everything else.
        let keep = read_end.as_raw_fd();
        for fd in 3..1024 {
            if fd != keep {
                libc::close(fd);
            }
        }
    }
    let mut pipe = std::fs::File::from(read_end);
    let mut byte = [0u8; 1];
    let verdict = loop {
        match pipe.read(&mut byte) {
            Ok(1) => break Some(byte[0]),
            Ok(_) => break None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break None,
        }
    };
    match verdict {
        Some(DONE) | Some(KEEP) => {}
        _ => {
            // The enforcer died. Kill the run and remove what it left.
            let cgroup_path = &leftovers.cgroup;
            let killed = cgroup::kill_all(cgroup_path, Duration::from_secs(10));
            let removed = cgroup::remove_run_cgroup(cgroup_path);
            let unpinned = bpffs::remove_pins(&leftovers.pins);
            let _ = std::fs::remove_file(&leftovers.record);
            let _ = std::fs::remove_file(leftovers.record.with_extension("sock"));
            crate::tls::trust::remove(&leftovers.trust);
            crate::say!(
                Warn,
                "enforcer watchdog: the enforcer exited without cleaning up; killed the run's \
                 processes and removed {} ({})",
                cgroup_path.display(),
                match (killed, removed, unpinned) {
                    (Ok(()), Ok(()), Ok(())) => String::from("ok"),
                    (k, r, u) => format!("{k:?} {r:?} {u:?}"),
                }
            );
        }
    }
}
