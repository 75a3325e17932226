//! Starting the agent. clone3(CLONE_INTO_CGROUP) creates the child directly
//! inside the run's cgroup (no migration: that costs 10+ ms and leaves a
//! window), and before exec, in code of ours, the child drops to the target
//! user with their groups, sets no_new_privs, isolates itself from the
//! user's other processes (see `isolation`: a Landlock domain of its own, a
//! keyring filter; the clone gives it an IPC namespace of its own), installs
//! the seccomp filter, hands its listener to the enforcer and marks every
//! inherited fd beyond stdio close-on-exec.
//!
//! The child is a raw clone of a multi-threaded process that glibc knows
//! nothing about, so it only makes raw system calls on memory prepared
//! before the clone: no allocation, no locks, no glibc wrappers with
//! process-wide side effects (glibc's setuid would signal the parent's threads).

use std::{
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::PathBuf,
};

use super::{isolation, seccomp, target_user::TargetUser};

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot prepare the child: {0}")]
    Prepare(String),
    #[error("cannot create the child process: {0}")]
    Clone(#[source] io::Error),
    #[error("cannot execute {program}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("the child failed before exec while {stage}: {source}")]
    Setup {
        stage: &'static str,
        source: io::Error,
    },
    #[error("the child did not hand over its seccomp listener: {0}")]
    Listener(String),
}

/// Everything the child needs, prepared before it exists.
pub struct ChildSpec<'a> {
    pub program: PathBuf,
    pub argv0: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub user: TargetUser,
    /// The run's cgroup directory (the child is created inside it).
    pub cgroup: BorrowedFd<'a>,
    pub seccomp: seccomp::FilterOptions,
    /// What isolates the run from the user's other processes.
    pub isolation: &'a isolation::Isolation,
    /// A pseudo-terminal for the agent: its fd, and which of fds 0..2 it
    /// becomes. The agent then runs in a session of its own with it as the
    /// controlling terminal.
    pub terminal: Option<(RawFd, [bool; 3])>,
}

/// A started agent.
#[derive(Debug)]
pub struct Started {
    pub pid: i32,
    /// A pidfd for signalling without pid-reuse races.
    pub pidfd: OwnedFd,
    /// The enforcer's end of the child's seccomp notifications.
    pub listener: OwnedFd,
}

/// Stages of the child's setup, reported through the error pipe.
const STAGES: [&str; 11] = [
    "dropping supplementary groups",
    "setting the group id",
    "setting the user id",
    "verifying that privileges are gone",
    "setting no_new_privs",
    "installing the seccomp filter",
    "handing over the seccomp listener",
    "attaching the agent's terminal",
    "executing the program",
    "entering the run's Landlock domain",
    "installing the keyring filter",
];
/// The stage whose failure is the program's own (not found, not executable).
const EXEC_STAGE: usize = 8;
const LANDLOCK_STAGE: usize = 9;
const KEYRING_STAGE: usize = 10;

fn cstring(bytes: &[u8], what: &str) -> Result<CString, ChildError> {
    CString::new(bytes).map_err(|_| ChildError::Prepare(format!("{what} contains a NUL byte")))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: we own both new descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Creates the agent process as described in the module docs.
pub fn spawn(spec: ChildSpec<'_>) -> Result<Started, ChildError> {
    // Everything the child touches is built here, before the clone.
    let program = cstring(spec.program.as_os_str().as_bytes(), "the program path")?;
    let mut argv_owned = vec![cstring(spec.argv0.as_bytes(), "an argument")?];
    for a in &spec.args {
        argv_owned.push(cstring(a.as_bytes(), "an argument")?);
    }
    let mut envp_owned = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp_owned.push(cstring(&kv, "an environment variable")?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envp_owned.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let filter = seccomp::build(spec.seccomp);
    let isolation = spec.isolation.for_child();
    let groups: Vec<libc::gid_t> = spec.user.groups.clone();
    let (uid, gid) = (spec.user.uid, spec.user.gid);
    let (err_read, err_write) = pipe().map_err(ChildError::Clone)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(ChildError::Clone)?;

    // SAFETY: the child branch runs `child_main` (async-signal-safe, ends in
    // exec or _exit).
    let forked = unsafe { super::clone3::into_cgroup(spec.cgroup, spec.isolation.clone_flags()) };
    let (pid, pidfd) = match forked.map_err(ChildError::Clone)? {
        super::clone3::Forked::Child => {
            let setup = ChildSetup {
                program: program.as_ptr(),
                argv: argv.as_ptr(),
                envp: envp.as_ptr(),
                groups: &groups,
                uid,
                gid,
                filter: &filter,
                isolation,
                listener_sock: theirs.as_raw_fd(),
                err_pipe: err_write.as_raw_fd(),
                terminal: spec.terminal,
            };
            // SAFETY: we are the freshly cloned child; see `child_main`.
            unsafe { child_main(&setup) }
        }
        super::clone3::Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop(err_write);
    drop(theirs);

    // The error pipe closes on exec (success) or carries [stage, errno].
    let mut report = [0u8; 8];
    let n = read_full(&err_read, &mut report);
    if n == report.len() {
        let stage = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        reap(pid);
        let source = io::Error::from_raw_os_error(errno);
        if stage == EXEC_STAGE {
            return Err(ChildError::Spawn {
                program: spec.program,
                source,
            });
        }
        return Err(ChildError::Setup {
            stage: STAGES.get(stage).copied().unwrap_or("setting up"),
            source,
        });
    }
    match recv_fd(&OwnedFd::from(ours)) {
        Ok(listener) => Ok(Started {
            pid,
            pidfd,
            listener,
        }),
        Err(e) => {
            // SAFETY: kill our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
            Err(ChildError::Listener(e))
        }
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled part of our buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    got
}

/// Waits for a child that failed before exec.
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Waits for the agent to exit and returns its wait status.
pub fn wait(pid: i32) -> io::Result<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What the child needs, as raw pointers into memory the parent prepared.
struct ChildSetup<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    groups: &'a [libc::gid_t],
    uid: u32,
    gid: u32,
    filter: &'a [seccomp::SockFilter],
    isolation: isolation::ChildIsolation<'a>,
    listener_sock: RawFd,
    err_pipe: RawFd,
    terminal: Option<(RawFd, [bool; 3])>,
}

/// The child side: raw system calls only, then execve. Never returns.
///
/// # Safety
/// Must only be called in a child freshly created by clone3 without CLONE_VM.
unsafe fn child_main(s: &ChildSetup<'_>) -> ! {
    // SAFETY: raw system calls on memory that stays valid in this copy of
    // the parent's address space.
    unsafe {
        let fail = |stage: usize, errno: i64| -> ! {
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
            msg[4..].copy_from_slice(&(errno as i32).to_ne_bytes());
            libc::syscall(libc::SYS_write, s.err_pipe, msg.as_ptr(), msg.len());
            libc::syscall(libc::SYS_exit_group, 127);
            libc::abort()
        };
        let errno = || -> i64 { i64::from(*libc::__errno_location()) };
        // Until exec this process is a copy of enforcer's memory (real keys,
        // the run CA's key): not dumpable, so not even a process of the
        // agent's user outside any run can read it once we are that user,
        // whatever fs.suid_dumpable says. exec makes the agent dumpable
        // again (to its own run: see `isolation`).
        libc::syscall(libc::SYS_prctl, libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // Signals: default dispositions for what Rust ignores (SIGPIPE), empty mask.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::syscall(
            libc::SYS_rt_sigaction,
            libc::SIGPIPE,
            &dfl,
            std::ptr::null::<libc::sigaction>(),
            8,
        );
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null::<u64>(),
            8,
        );
        if let Some((tty, stdio)) = s.terminal {
            // A session of its own, with the pseudo-terminal as its
            // controlling terminal: the real one is out of its reach.
            if libc::syscall(libc::SYS_setsid) < 0
                || libc::syscall(libc::SYS_ioctl, tty, libc::TIOCSCTTY, 0) != 0
            {
                fail(7, errno());
            }
            for (fd, replace) in stdio.iter().enumerate() {
                if *replace && libc::syscall(libc::SYS_dup3, tty, fd as i32, 0) < 0 {
                    fail(7, errno());
                }
            }
        }
        if libc::syscall(libc::SYS_setgroups, s.groups.len(), s.groups.as_ptr()) != 0 {
            fail(0, errno());
        }
        if libc::syscall(libc::SYS_setresgid, s.gid, s.gid, s.gid) != 0 {
            fail(1, errno());
        }
        if libc::syscall(libc::SYS_setresuid, s.uid, s.uid, s.uid) != 0 {
            fail(2, errno());
        }
        if s.uid != 0
            && (libc::syscall(libc::SYS_geteuid) == 0 || libc::syscall(libc::SYS_setuid, 0) == 0)
        {
            fail(3, i64::from(libc::EPERM));
        }
        if libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(4, errno());
        }
        // As the target user, before anything of the agent's runs: from
        // here on nothing of this process tree can reach another run or
        // the user's other processes.
        if let Err(e) = isolation::apply(&s.isolation) {
            fail(
                if e.landlock {
                    LANDLOCK_STAGE
                } else {
                    KEYRING_STAGE
                },
                i64::from(e.errno),
            );
        }
        let listener = match seccomp::install(s.filter) {
            Ok(fd) => fd,
            Err(e) => fail(5, i64::from(e)),
        };
        if let Err(e) = send_fd(s.listener_sock, listener) {
            fail(6, i64::from(e));
        }
        libc::syscall(libc::SYS_close, listener);
        libc::syscall(libc::SYS_close, s.listener_sock);
        // Nothing inherited beyond stdio survives exec (the error pipe
        // included: its closing tells the parent exec succeeded).
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        libc::syscall(libc::SYS_execve, s.program, s.argv, s.envp);
        fail(EXEC_STAGE, errno())
    }
}

/// Sends `fd` over the unix socket `sock` with SCM_RIGHTS (raw sendmsg).
fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), i32> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // CMSG_SPACE(sizeof(int)) is 24 on 64-bit Linux; 8-byte aligned.
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; all pointers refer to live stack buffers.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::syscall(
            libc::SYS_sendmsg,
            sock,
            &msg as *const libc::msghdr,
            libc::MSG_NOSIGNAL,
        ) < 0
        {
            return Err(*libc::__errno_location());
        }
    }
    Ok(())
}

/// Receives one fd sent with [`send_fd`].
fn recv_fd(sock: &OwnedFd) -> Result<OwnedFd, String> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 4];
    // SAFETY: as in send_fd; the fd we take ownership of came from SCM_RIGHTS.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error().to_string());
        }
        if n == 0 {
            return Err(String::from(
                "the child exited before installing its filter",
            ));
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(String::from("no file descriptor in the message"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}
