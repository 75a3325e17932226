//! The connector process itself: enforcer's binary, re-executed with
//! [`super::ARG`]. It drops to the agent's credentials for good, says it is
//! ready, then performs each job it receives on a thread that is free for it.

use std::{
    ffi::{CString, OsString},
    io::{self, IoSliceMut},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use super::{
    ARG, CONTROL_FD, FAILED, READY,
    wire::{Decoded, HEADER, Kind, MAX_IDS, Reply, decode_request, encode_reply, path_name},
};
use crate::launch::unix_list::{self, Identity};

/// Jobs one connector runs at once (enforcer sends far fewer; this bounds
/// threads left behind by connects whose caller was killed).
const MAX_JOBS: usize = 256;
/// The connector's name in `ps` and in the kernel's refusal reports.
const COMM: &[u8] = b"agent-connect\0";

#[derive(Debug, thiserror::Error)]
enum BecomeError {
    #[error("usage: enforcer {ARG} UID GID GROUPS")]
    Usage,
    #[error("{0} failed: {1}")]
    Call(&'static str, io::Error),
    #[error("the credentials did not change as asked")]
    NotChanged,
}

/// The connector's main: `args` are what follows [`ARG`]. Returns the exit code.
pub fn main(args: &[OsString]) -> i32 {
    // SAFETY: fcntl only asks whether fd 3 is open.
    if unsafe { libc::fcntl(CONTROL_FD, libc::F_GETFD) } < 0 {
        eprintln!("enforcer: {ARG} is started by enforcer launch only");
        return 2;
    }
    // SAFETY: fd 3 is the channel enforcer left us (see exec_child).
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let say = |msg: &[u8]| {
        // SAFETY: send our buffer on our channel.
        unsafe {
            libc::send(control.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) == msg.len() as isize
        }
    };
    let started = parse_ids(args).and_then(|ids| become_agent(&ids));
    if let Err(e) = started {
        let mut msg = vec![FAILED];
        msg.extend_from_slice(format!("cannot take the agent's credentials: {e}").as_bytes());
        say(&msg);
        return 1;
    }
    if !say(&[READY]) {
        return 1;
    }
    let mut workers = Workers::new();
    loop {
        let job = match receive(&control) {
            Ok(Received::Job(job)) => job,
            Ok(Received::Malformed) => continue,
            // Enforcer closed the channel: the run is over.
            Ok(Received::Closed) => return 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 1,
        };
        workers.dispatch(job);
    }
}

/// The connector's threads: every job gets a thread that is free for it
/// (an idle one, or a new one up to [`MAX_JOBS`]), so a connect that blocks
/// never delays another.
struct Workers {
    jobs: std::sync::mpsc::Sender<Box<Job>>,
    queue: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Box<Job>>>>,
    /// Threads waiting for a job and not yet promised one.
    idle: Arc<AtomicUsize>,
    threads: usize,
}

impl Workers {
    fn new() -> Self {
        let (jobs, queue) = std::sync::mpsc::channel();
        Self {
            jobs,
            queue: Arc::new(std::sync::Mutex::new(queue)),
            idle: Arc::new(AtomicUsize::new(0)),
            threads: 0,
        }
    }

    fn dispatch(&mut self, job: Box<Job>) {
        // Promise the job an idle thread, or start one.
        let promised = self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !promised && (self.threads >= MAX_JOBS || self.spawn().is_err()) {
            send_reply(&job.reply, Reply::Failed(libc::EAGAIN));
            return;
        }
        // The receiving end lives as long as any thread; if none is left
        // the job is dropped, which enforcer sees as a refusal.
        let _ = self.jobs.send(job);
    }

    fn spawn(&mut self) -> io::Result<()> {
        let queue = Arc::clone(&self.queue);
        let idle = Arc::clone(&self.idle);
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = next else { return };
                    let r = perform(&job);
                    send_reply(&job.reply, r);
                    drop(job);
                    idle.fetch_add(1, Ordering::SeqCst);
                }
            })?;
        self.threads += 1;
        Ok(())
    }
}

struct Ids {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

fn parse_ids(args: &[OsString]) -> Result<Ids, BecomeError> {
    let num = |i: usize| -> Result<u32, BecomeError> {
        args.get(i)
            .and_then(|a| a.to_str())
            .and_then(|s| s.parse().ok())
            .ok_or(BecomeError::Usage)
    };
    let groups = args
        .get(2)
        .and_then(|a| a.to_str())
        .ok_or(BecomeError::Usage)?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| BecomeError::Usage))
        .collect::<Result<Vec<u32>, _>>()?;
    if args.len() != 3 {
        return Err(BecomeError::Usage);
    }
    Ok(Ids {
        uid: num(0)?,
        gid: num(1)?,
        groups,
    })
}

/// Drops to the agent's uid, gid and groups for good (real, effective and
/// saved ids), then makes the process non-dumpable and sets no_new_privs.
/// The process is single-threaded here, so raw calls change everything.
fn become_agent(ids: &Ids) -> Result<(), BecomeError> {
    let call = |name: &'static str, r: libc::c_long| -> Result<(), BecomeError> {
        if r != 0 {
            return Err(BecomeError::Call(name, io::Error::last_os_error()));
        }
        Ok(())
    };
    // SAFETY: plain system calls on our own credentials.
    unsafe {
        call(
            "setgroups",
            libc::syscall(libc::SYS_setgroups, ids.groups.len(), ids.groups.as_ptr()),
        )?;
        call(
            "setresgid",
            libc::syscall(libc::SYS_setresgid, ids.gid, ids.gid, ids.gid),
        )?;
        call(
            "setresuid",
            libc::syscall(libc::SYS_setresuid, ids.uid, ids.uid, ids.uid),
        )?;
        let (mut r, mut e, mut s) = (0, 0, 0);
        call(
            "getresuid",
            libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s),
        )?;
        if [r, e, s] != [ids.uid; 3] {
            return Err(BecomeError::NotChanged);
        }
        call(
            "getresgid",
            libc::syscall(libc::SYS_getresgid, &mut r, &mut e, &mut s),
        )?;
        if [r, e, s] != [ids.gid; 3] {
            return Err(BecomeError::NotChanged);
        }
        if ids.uid != 0 && libc::syscall(libc::SYS_setresuid, 0, 0, 0) == 0 {
            return Err(BecomeError::NotChanged);
        }
        call(
            "PR_SET_DUMPABLE",
            libc::syscall(libc::SYS_prctl, libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
        )?;
        call(
            "PR_SET_NO_NEW_PRIVS",
            libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;
        libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, COMM.as_ptr(), 0, 0, 0);
    }
    Ok(())
}

/// A job as the connector holds it.
struct Job {
    req: Decoded,
    reply: OwnedFd,
    sock: OwnedFd,
    dirs: Option<(OwnedFd, OwnedFd)>,
}

/// What came over the channel.
enum Received {
    Job(Box<Job>),
    /// Dropped: closing its descriptors tells enforcer.
    Malformed,
    /// Enforcer closed the channel.
    Closed,
}

fn receive(control: &OwnedFd) -> io::Result<Received> {
    let mut buf = vec![0u8; HEADER + 16 * MAX_IDS + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(r) = c {
                    // SAFETY: SCM_RIGHTS handed us these new descriptors.
                    fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, fds, truncated)
    };
    if n == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    let Some(req) = decode_request(&buf[..n]).filter(|_| !truncated) else {
        return Ok(Received::Malformed);
    };
    let mut fds = fds.into_iter();
    let (Some(reply), Some(sock)) = (fds.next(), fds.next()) else {
        return Ok(Received::Malformed);
    };
    let dirs = match (req.kind, fds.next(), fds.next(), fds.next()) {
        (Kind::UnixPath, Some(root), Some(cwd), None) => Some((root, cwd)),
        (Kind::Plain, None, None, None) => None,
        _ => return Ok(Received::Malformed),
    };
    Ok(Received::Job(Box::new(Job {
        req,
        reply,
        sock,
        dirs,
    })))
}

fn send_reply(to: &OwnedFd, r: Reply) {
    let b = encode_reply(r);
    // SAFETY: send our buffer; a closed channel (enforcer gave up) is fine.
    unsafe {
        libc::send(
            to.as_raw_fd(),
            b.as_ptr().cast(),
            b.len(),
            libc::MSG_NOSIGNAL,
        )
    };
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The job itself, with the agent's credentials.
fn perform(job: &Job) -> Reply {
    match (job.req.kind, &job.dirs) {
        (Kind::Plain, _) => match connect_raw(job.sock.as_fd(), &job.req.addr) {
            Ok(()) => Reply::Connected,
            Err(e) => Reply::Failed(errno_of(&e)),
        },
        (Kind::UnixPath, Some((root, cwd))) => {
            let Some(path) = path_name(&job.req.addr) else {
                return Reply::Failed(libc::EINVAL);
            };
            let Ok(path) = CString::new(path) else {
                return Reply::Failed(libc::EINVAL);
            };
            // An absolute path from the agent's root (symlinks in it
            // resolve there too); a relative one from its cwd. Magic links
            // (/proc/self/fd/N) would name the connector's own files: never.
            let target = if path.as_bytes().first() == Some(&b'/') {
                unix_list::openat2(
                    root.as_fd(),
                    &path,
                    libc::O_PATH | libc::O_CLOEXEC,
                    libc::RESOLVE_IN_ROOT,
                )
            } else {
                unix_list::openat2(
                    cwd.as_fd(),
                    &path,
                    libc::O_PATH | libc::O_CLOEXEC,
                    libc::RESOLVE_NO_MAGICLINKS,
                )
            };
            let target = match target {
                Ok(t) => t,
                Err(e) => return Reply::Unresolved(errno_of(&e)),
            };
            let id = match Identity::of_fd(target.as_fd()) {
                Ok(id) => id,
                Err(e) => return Reply::Failed(errno_of(&e)),
            };
            if !job.req.allowed.contains(&id) {
                return Reply::NotListed(id);
            }
            // The pinned inode, and nothing a path could be swapped for.
            let via = format!("/proc/self/fd/{}", target.as_raw_fd());
            match connect_raw(job.sock.as_fd(), &sockaddr_un(via.as_bytes())) {
                Ok(()) => Reply::Connected,
                Err(e) => Reply::Failed(errno_of(&e)),
            }
        }
        (Kind::UnixPath, None) => Reply::Failed(libc::EINVAL),
    }
}

/// A `sockaddr_un` for a path name (with its NUL), as bytes.
fn sockaddr_un(path: &[u8]) -> Vec<u8> {
    let mut v = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(path);
    v.push(0);
    v
}

fn connect_raw(sock: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    // SAFETY: connect with our own buffer of `addr.len()` bytes.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_from_the_command_line() {
        let args: Vec<OsString> = ["65534", "65534", "65534,27"].map(OsString::from).to_vec();
        let ids = parse_ids(&args).unwrap();
        assert_eq!(
            (ids.uid, ids.gid, ids.groups),
            (65534, 65534, vec![65534, 27])
        );
        let none: Vec<OsString> = ["1", "1", ""].map(OsString::from).to_vec();
        assert!(parse_ids(&none).unwrap().groups.is_empty());
        assert!(parse_ids(&args[..2]).is_err());
        let bad: Vec<OsString> = ["x", "1", "1"].map(OsString::from).to_vec();
        assert!(parse_ids(&bad).is_err());
    }
}
