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

use std::{
    ffi::{CString, OsString},
    io::{self, IoSlice, IoSliceMut},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use super::{
    target_user::TargetUser,
    unix_list::{self, Identity},
};

/// The hidden first argument that makes `enforcer` the connector.
pub const ARG: &str = "__unix-connector";
/// The channel's descriptor in the connector.
const CONTROL_FD: RawFd = 3;
/// Jobs one connector runs at once (enforcer sends far fewer; this bounds
/// threads left behind by connects whose caller was killed).
const MAX_JOBS: usize = 256;
/// The connector's name in `ps` and in the kernel's refusal reports.
const COMM: &[u8] = b"agent-connect\0";
/// Longest socket address a job carries (`sockaddr_storage`).
pub const ADDR_MAX: usize = 128;
/// Identities one job may carry.
pub const MAX_IDS: usize = 1024;

const MAGIC: [u8; 4] = *b"ENC1";
const HEADER: usize = 4 + 1 + 1 + 2 + ADDR_MAX + 4;
const REPLY: usize = 24;
const READY: u8 = b'R';
/// Followed by a message: the connector could not start.
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

/// What the connector does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// connect() to the address as given (inet, abstract unix names, and
    /// unix addresses the kernel itself refuses or treats as a disconnect).
    Plain = 0,
    /// Resolve the `sun_path` as the agent, check its identity, connect
    /// through the pinned inode.
    UnixPath = 1,
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

/// What the connector did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Connected,
    /// connect() failed with this errno.
    Failed(i32),
    /// The path resolved to a socket that is not among the allowed.
    NotListed(Identity),
    /// The path did not resolve (errno), as the agent.
    Unresolved(i32),
}

/// Enforcer's handle on a running connector. Dropping it kills the connector.
#[derive(Debug)]
pub struct Connector {
    control: OwnedFd,
    pidfd: OwnedFd,
}

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

        let mut pidfd: RawFd = -1;
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP | CLONE_PIDFD,
            pidfd: (&mut pidfd as *mut RawFd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: cgroup.as_raw_fd() as u64,
            ..Default::default()
        };
        // SAFETY: clone3 with a valid clone_args; the child branch never returns.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if ret == 0 {
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
        if ret < 0 {
            return Err(ConnectorError::Spawn(io::Error::last_os_error()));
        }
        let pid = ret as libc::pid_t;
        // SAFETY: CLONE_PIDFD stored a new descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
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

/// A job's bytes: magic, kind, address, allowed identities. None when the
/// address or the list is too long.
pub fn encode_request(kind: Kind, addr: &[u8], allowed: &[Identity]) -> Option<Vec<u8>> {
    if addr.len() > ADDR_MAX || allowed.len() > MAX_IDS {
        return None;
    }
    let mut v = Vec::with_capacity(HEADER + 16 * allowed.len());
    v.extend_from_slice(&MAGIC);
    v.push(kind as u8);
    v.push(0);
    v.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    let mut padded = [0u8; ADDR_MAX];
    padded[..addr.len()].copy_from_slice(addr);
    v.extend_from_slice(&padded);
    v.extend_from_slice(&(allowed.len() as u32).to_le_bytes());
    for id in allowed {
        v.extend_from_slice(&id.dev.to_le_bytes());
        v.extend_from_slice(&id.ino.to_le_bytes());
    }
    Some(v)
}

/// A decoded job (without its descriptors).
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub kind: Kind,
    pub addr: Vec<u8>,
    pub allowed: Vec<Identity>,
}

pub fn decode_request(b: &[u8]) -> Option<Decoded> {
    if b.len() < HEADER || b[..4] != MAGIC {
        return None;
    }
    let kind = match b[4] {
        0 => Kind::Plain,
        1 => Kind::UnixPath,
        _ => return None,
    };
    let addr_len = usize::from(u16::from_le_bytes([b[6], b[7]]));
    if addr_len > ADDR_MAX {
        return None;
    }
    let addr = b[8..8 + addr_len].to_vec();
    let n = u32::from_le_bytes(b[HEADER - 4..HEADER].try_into().ok()?) as usize;
    if n > MAX_IDS || b.len() != HEADER + 16 * n {
        return None;
    }
    let allowed = b[HEADER..]
        .chunks_exact(16)
        .map(|c| {
            let dev = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
            let ino = u64::from_le_bytes(c[8..].try_into().unwrap_or_default());
            Identity { dev, ino }
        })
        .collect();
    Some(Decoded {
        kind,
        addr,
        allowed,
    })
}

pub fn encode_reply(r: Reply) -> [u8; REPLY] {
    let (status, errno, id) = match r {
        Reply::Connected => (0u8, 0, Identity { dev: 0, ino: 0 }),
        Reply::Failed(e) => (1, e, Identity { dev: 0, ino: 0 }),
        Reply::NotListed(id) => (2, 0, id),
        Reply::Unresolved(e) => (3, e, Identity { dev: 0, ino: 0 }),
    };
    let mut b = [0u8; REPLY];
    b[0] = status;
    b[4..8].copy_from_slice(&errno.to_le_bytes());
    b[8..16].copy_from_slice(&id.dev.to_le_bytes());
    b[16..24].copy_from_slice(&id.ino.to_le_bytes());
    b
}

pub fn decode_reply(b: &[u8]) -> Option<Reply> {
    if b.len() != REPLY {
        return None;
    }
    let errno = i32::from_le_bytes(b[4..8].try_into().ok()?);
    let id = Identity {
        dev: u64::from_le_bytes(b[8..16].try_into().ok()?),
        ino: u64::from_le_bytes(b[16..24].try_into().ok()?),
    };
    match b[0] {
        0 => Some(Reply::Connected),
        1 if errno > 0 => Some(Reply::Failed(errno)),
        2 => Some(Reply::NotListed(id)),
        3 if errno > 0 => Some(Reply::Unresolved(errno)),
        _ => None,
    }
}

// --- The connector process itself. ---

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

/// The path name in a `sockaddr_un` (up to its NUL), unless it is abstract or empty.
pub fn path_name(addr: &[u8]) -> Option<&[u8]> {
    let p = addr.get(2..)?;
    if p.first().is_none_or(|&b| b == 0) {
        return None;
    }
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    Some(&p[..end])
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
    fn jobs_round_trip() {
        let ids = [Identity { dev: 1, ino: 2 }, Identity { dev: 3, ino: 4 }];
        let addr = b"\x01\x00/run/x.sock\x00";
        let b = encode_request(Kind::UnixPath, addr, &ids).unwrap();
        let d = decode_request(&b).unwrap();
        assert_eq!(d.kind, Kind::UnixPath);
        assert_eq!(d.addr, addr);
        assert_eq!(d.allowed, ids);
        let b = encode_request(Kind::Plain, &[2, 0, 1, 2, 3, 4], &[]).unwrap();
        assert_eq!(decode_request(&b).unwrap().kind, Kind::Plain);
    }

    #[test]
    fn malformed_jobs_are_refused() {
        assert!(encode_request(Kind::Plain, &[0; ADDR_MAX + 1], &[]).is_none());
        let b = encode_request(Kind::Plain, b"ab", &[Identity { dev: 1, ino: 1 }]).unwrap();
        assert!(decode_request(&b[..b.len() - 1]).is_none(), "short");
        let mut bad = b.clone();
        bad[0] = b'X';
        assert!(decode_request(&bad).is_none(), "magic");
        let mut bad = b.clone();
        bad[4] = 7;
        assert!(decode_request(&bad).is_none(), "kind");
        let mut bad = b.clone();
        bad[6] = 200;
        assert!(decode_request(&bad).is_none(), "address length");
        let mut bad = b;
        bad.extend_from_slice(&[0; 16]);
        assert!(decode_request(&bad).is_none(), "count and length disagree");
        assert!(decode_request(&[]).is_none());
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Connected,
            Reply::Failed(libc::EACCES),
            Reply::NotListed(Identity { dev: 9, ino: 10 }),
            Reply::Unresolved(libc::ENOENT),
        ] {
            assert_eq!(decode_reply(&encode_reply(r)), Some(r));
        }
        let mut b = encode_reply(Reply::Failed(0));
        assert_eq!(decode_reply(&b), None, "a failure needs an errno");
        b[0] = 9;
        assert_eq!(decode_reply(&b), None);
        assert_eq!(decode_reply(&b[..3]), None);
    }

    #[test]
    fn path_names_stop_at_nul_and_abstract_names_have_none() {
        assert_eq!(path_name(b"\x01\x00/a.sock\x00junk"), Some(&b"/a.sock"[..]));
        assert_eq!(path_name(b"\x01\x00rel"), Some(&b"rel"[..]));
        assert_eq!(path_name(b"\x01\x00\x00name"), None);
        assert_eq!(path_name(b"\x01\x00"), None);
        assert_eq!(path_name(b"\x01"), None);
    }

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
        assert_eq!(groups_arg(&[1, 2]), OsString::from("1,2"));
    }
}
