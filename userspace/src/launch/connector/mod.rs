//! The connector: the process that performs the agent's supervised
//! `connect()` calls, as the agent. Enforcer (root) decides; the connector
//! acts, so nothing is ever done with enforcer's privileges on the agent's
//! behalf.
//!
//! Why a process and not a thread of enforcer's that switches its own
//! credentials: a connect carries more than a uid. The server sees the
//! connecting *process* (SO_PEERCRED's pid, SO_PEERPIDFD), and servers look
//! that process up: D-Bus and polkit ask logind which session the pid is in,
//! and enforcer, started with sudo from the user's desktop, is in the user's
//! active session while the agent is in its own cgroup, in none. A thread of
//! enforcer's would lend the agent enforcer's pid, cgroup and session, keep
//! a saved uid of 0 inside a process that holds every real key, and make a
//! failed switch back a root-or-not question for every later job. The
//! connector instead is a fresh exec of enforcer's own binary (no copy of
//! enforcer's memory, so none of its secrets), created inside the run's
//! cgroup, that drops to the agent's uid, gid and groups for good before it
//! takes any job (if it cannot, it says why and the launch fails), and is
//! then non-dumpable: the agent shares its uid but cannot
//! ptrace it, read its memory or take its descriptors. The agent can kill
//! it; then its own connects fail, nothing else does.
//!
//! A job is one message on a SOCK_SEQPACKET channel with the descriptors it
//! needs: a fresh reply channel, enforcer's duplicate of the agent's socket
//! and, for a unix path, the calling thread's root and working directory
//! (opened by enforcer from /proc/TID). The connector resolves the path as
//! the agent would (its credentials, its root and cwd) to an O_PATH
//! descriptor, requires that descriptor's identity to be one of those
//! enforcer sent, and connects through `/proc/self/fd/N`: the inode checked
//! is the inode reached, and the kernel's permission checks apply. Every job
//! gets a thread that is free for it, so one connect blocked on a full
//! backlog stalls nothing else.

mod process;
pub mod wire;

use std::{
    ffi::{CString, OsString},
    io::{self, IoSlice},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};

use super::clone3::Forked;
pub use process::main;
pub use wire::{ADDR_MAX, Kind, Reply, path_name};
use wire::{REPLY, decode_reply, encode_request};

use super::{target_user::TargetUser, unix_list::Identity};

/// The hidden first argument that makes `enforcer` the connector.
pub const ARG: &str = "__unix-connector";
/// The channel's descriptor in the connector.
const CONTROL_FD: RawFd = 3;
/// First message from the connector: it runs as the agent.
const READY: u8 = b'R';
/// First message from the connector, followed by why: it could not start.
const FAILED: u8 = b'E';

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot prepare the unix connector: {0}")]
    Prepare(String),
    #[error("cannot start the unix connector: {0}")]
    Spawn(#[source] io::Error),
    #[error("the unix connector did not start: {0}")]
    NotReady(String),
    #[error("the unix connector is gone: {0}")]
    Gone(String),
    #[error("the unix connector sent a malformed reply")]
    BadReply,
}

/// One supervised connect.
pub struct Request<'a> {
    pub kind: Kind,
    pub addr: &'a [u8],
    /// For [`Kind::UnixPath`]: the identities the path may resolve to.
    pub allowed: &'a [Identity],
    /// Enforcer's duplicate of the agent's socket.
    pub sock: BorrowedFd<'a>,
    /// For [`Kind::UnixPath`]: the calling thread's root and cwd.
    pub dirs: Option<(BorrowedFd<'a>, BorrowedFd<'a>)>,
}

/// Enforcer's handle on a running connector. Dropping it kills the connector.
#[derive(Debug)]
pub struct Connector {
    control: OwnedFd,
    pidfd: OwnedFd,
}

impl Connector {
    /// Starts the connector inside the run's cgroup, for `user`.
    pub fn spawn(cgroup: BorrowedFd<'_>, user: &TargetUser) -> Result<Self, ConnectorError> {
        let cstr = |s: &[u8]| CString::new(s).map_err(|e| ConnectorError::Prepare(e.to_string()));
        let argv_owned = [
            cstr(b"enforcer")?,
            cstr(ARG.as_bytes())?,
            cstr(user.uid.to_string().as_bytes())?,
            cstr(user.gid.to_string().as_bytes())?,
            cstr(groups_arg(&user.groups).as_bytes())?,
        ];
        let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        let exe = c"/proc/self/exe";
        let devnull = c"/dev/null";
        let (ours, theirs) = channel().map_err(ConnectorError::Spawn)?;

        // SAFETY: the child branch makes raw system calls only, then execs.
        let forked = unsafe { super::clone3::into_cgroup(cgroup, 0) };
        let (pid, pidfd) = match forked.map_err(ConnectorError::Spawn)? {
            Forked::Child => {
                // SAFETY: we are the freshly cloned child; raw system calls only.
                unsafe {
                    exec_child(
                        theirs.as_raw_fd(),
                        exe.as_ptr(),
                        argv.as_ptr(),
                        envp.as_ptr(),
                        devnull.as_ptr(),
                    )
                }
            }
            Forked::Parent { pid, pidfd } => (pid, pidfd),
        };
        drop(theirs);
        // Reap it whenever it ends (the agent may kill it; the run's end does).
        let _ = std::thread::Builder::new()
            .name("connector-reaper".into())
            .spawn(move || {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                    && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
                {
                }
            });
        Ok(Self {
            control: ours,
            pidfd,
        })
    }

    /// Waits until the connector runs as the agent (it says so once it has
    /// dropped root for good).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ConnectorError> {
        if !wait_readable(self.control.as_fd(), timeout) {
            return Err(ConnectorError::NotReady(String::from(
                "no word from it in time",
            )));
        }
        let mut b = [0u8; 512];
        // SAFETY: recv into our buffer.
        let n = unsafe { libc::recv(self.control.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
        let got = usize::try_from(n).map_or(&b[..0], |n| &b[..n]);
        match got.split_first() {
            Some((&READY, [])) => Ok(()),
            Some((&FAILED, why)) => Err(ConnectorError::NotReady(
                String::from_utf8_lossy(why).into_owned(),
            )),
            _ => Err(ConnectorError::NotReady(String::from(
                "it exited before taking the agent's credentials",
            ))),
        }
    }

    /// Runs one job and waits for its reply. While waiting, `still_wanted`
    /// is asked every second; when it says no (the caller is gone), the job
    /// is abandoned and `Ok(None)` returned.
    pub fn run(
        &self,
        req: &Request<'_>,
        still_wanted: &dyn Fn() -> bool,
    ) -> Result<Option<Reply>, ConnectorError> {
        let bytes = encode_request(req.kind, req.addr, req.allowed)
            .ok_or_else(|| ConnectorError::Prepare(String::from("job too large")))?;
        let (mine, theirs) = channel().map_err(|e| ConnectorError::Gone(e.to_string()))?;
        let mut fds = vec![theirs.as_raw_fd(), req.sock.as_raw_fd()];
        if let Some((root, cwd)) = req.dirs {
            fds.push(root.as_raw_fd());
            fds.push(cwd.as_raw_fd());
        }
        sendmsg::<()>(
            self.control.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| ConnectorError::Gone(e.to_string()))?;
        drop(theirs);
        loop {
            if !wait_readable(mine.as_fd(), Duration::from_secs(1)) {
                if !still_wanted() {
                    return Ok(None);
                }
                continue;
            }
            let mut buf = [0u8; REPLY + 8];
            // SAFETY: recv into our buffer.
            let n = unsafe { libc::recv(mine.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ConnectorError::Gone(e.to_string()));
            }
            if n == 0 {
                return Err(ConnectorError::Gone(String::from(
                    "it closed the job without answering",
                )));
            }
            return decode_reply(&buf[..n as usize])
                .map(Some)
                .ok_or(ConnectorError::BadReply);
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        // SAFETY: pidfd_send_signal on our own pidfd (no pid-reuse race).
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// poll(2) for input (or hang-up) on `fd`.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on one pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// The child between clone3 and exec: the channel becomes fd 3, stdio
/// /dev/null (a process with the agent's uid has no business holding the
/// user's terminal), everything else closes on exec, signals unblocked.
///
/// # Safety
/// Only in a child freshly created by clone3 without CLONE_VM.
unsafe fn exec_child(
    channel: RawFd,
    exe: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    devnull: *const libc::c_char,
) -> ! {
    // SAFETY: raw system calls on memory prepared before the clone.
    unsafe {
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null::<u64>(),
            8,
        );
        if channel == CONTROL_FD {
            libc::syscall(libc::SYS_fcntl, channel, libc::F_SETFD, 0);
        } else if libc::syscall(libc::SYS_dup3, channel, CONTROL_FD, 0) < 0 {
            libc::syscall(libc::SYS_exit_group, 127);
        }
        let null = libc::syscall(libc::SYS_openat, libc::AT_FDCWD, devnull, libc::O_RDWR);
        if null >= 0 {
            for fd in [0, 1, 2] {
                if null != fd {
                    libc::syscall(libc::SYS_dup3, null, fd, 0);
                }
            }
            if null > 2 {
                libc::syscall(libc::SYS_close, null);
            }
        }
        libc::syscall(
            libc::SYS_close_range,
            (CONTROL_FD + 1) as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        libc::syscall(libc::SYS_execve, exe, argv, envp);
        libc::syscall(libc::SYS_exit_group, 127);
        libc::abort()
    }
}

/// The groups as the connector's command line carries them.
pub fn groups_arg(groups: &[u32]) -> OsString {
    OsString::from(
        groups
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_travel_as_a_comma_separated_list() {
        assert_eq!(groups_arg(&[1, 2]), OsString::from("1,2"));
        assert_eq!(groups_arg(&[]), OsString::from(""));
    }
}
