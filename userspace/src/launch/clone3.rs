//! clone3(CLONE_INTO_CGROUP | CLONE_PIDFD): a child that starts life inside
//! a cgroup (no migration, no window outside it), with a pidfd for it.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Which side of the clone this is.
pub enum Forked {
    /// The new process, already in the cgroup.
    Child,
    /// The caller, with the child's pid and a pidfd for it.
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
}

/// Forks into `cgroup`, with `extra_flags` (namespaces) added.
///
/// # Safety
/// As fork(2) from a process that may have threads: on the
/// [`Forked::Child`] side only async-signal-safe calls (no allocation, no
/// locks) may be made before exec or _exit.
pub unsafe fn into_cgroup(cgroup: BorrowedFd<'_>, extra_flags: u64) -> io::Result<Forked> {
    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP | CLONE_PIDFD | extra_flags,
        pidfd: (&mut pidfd as *mut RawFd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 with a valid clone_args and no new stack (fork-like).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        0 => Ok(Forked::Child),
        r if r < 0 => Err(io::Error::last_os_error()),
        pid => Ok(Forked::Parent {
            pid: pid as libc::pid_t,
            // SAFETY: CLONE_PIDFD stored a new descriptor we own.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}
