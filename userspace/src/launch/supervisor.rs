//! Answers the seccomp filter's notifications. Refusals (socket families,
//! unix sockets the policy does not allow, unix datagram sockets, user
//! namespaces, terminal injection) are answered with EPERM and reported.
//!
//! When the policy lists unix sockets, every connect() is supervised, off
//! the notification loop: a bounded pool of worker threads (a connect past
//! [`MAX_IN_FLIGHT`] gets EAGAIN at once) each takes enforcer's own
//! duplicate of the calling thread's socket (pidfd_getfd on a PIDFD_THREAD
//! pidfd, so any thread of the agent works) and its own copy of the address,
//! checks that the notification is still live after reading the agent's
//! memory, decides, and hands the connect to the run's connector (see
//! [`super::connector`]), which performs it with the agent's credentials;
//! the worker then answers the notification. What is checked is what is
//! used: never SECCOMP_USER_NOTIF_FLAG_CONTINUE (a sibling thread could
//! dup2 another socket onto the fd or rewrite the address after the check).
//!
//! Deciding a unix path: enforcer resolves every listed path without
//! symlinks (see [`super::unix_list`]), holds those inodes open until the
//! connect is done and drops enforcer's own sockets from the result; the
//! connector must land on one of those identities when it resolves the
//! agent's `sun_path` as the agent, from the agent's root and cwd.
//! Abstract names must match a listed one exactly.

use std::{
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
};

use enforcer_common::Reason;

use super::{
    connector::{self, Connector, Kind, Reply, Request},
    unix_list::{self, Identity, UnixAllowlist},
};
use crate::kernel::events::KernelEvent;

const NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
/// pidfd_open(2) flag: a pidfd for this thread, not its thread group (6.9+).
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;
/// Supervised connects of one run in progress at once.
pub const MAX_IN_FLIGHT: usize = 32;

/// Why a unix connect was refused, for the audit log.
const UNLISTED: &str = "unix socket not listed in the policy";
const OWN: &str = "unix socket is one of enforcer's own: never reachable by the agent";
const MOVED: &str = "a symlink stands at or above the listed unix socket path";
const NO_CONNECTOR: &str = "unix connector unavailable: connect refused";

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SeccompData {
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// Where refusals go.
pub type Report = Arc<dyn Fn(KernelEvent) + Send + Sync>;

/// What supervised connects need: the list and the run's connector.
pub struct Connects {
    pub list: UnixAllowlist,
    pub connector: Connector,
}

/// Runs until the listener reports that no process is left or `stop` becomes readable.
pub fn serve(listener: OwnedFd, stop: OwnedFd, connects: Option<Arc<Connects>>, report: Report) {
    let listener = Arc::new(listener);
    let mut pool = connects.map(|c| Pool::new(Arc::clone(&listener), c, Arc::clone(&report)));
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                return;
            }
            continue;
        }
        let mut notif = Notif::default();
        // SAFETY: NOTIF_RECV fills a zeroed seccomp_notif.
        if unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_RECV, &mut notif) } != 0 {
            continue;
        }
        if i64::from(notif.data.nr) == libc::SYS_connect {
            let resp = match pool.as_mut() {
                Some(p) => match p.submit(notif) {
                    Ok(()) => continue,
                    Err(n) => {
                        tracing::warn!(
                            "{MAX_IN_FLIGHT} supervised connects in progress: EAGAIN for pid {}",
                            n.pid
                        );
                        deny(n.id, libc::EAGAIN)
                    }
                },
                // Connects are only supervised with a connector.
                None => deny(notif.id, libc::EPERM),
            };
            send(&listener, &resp);
            continue;
        }
        let resp = handle(&notif, report.as_ref());
        send(&listener, &resp);
    }
}

fn send(listener: &OwnedFd, resp: &NotifResp) {
    // SAFETY: NOTIF_SEND reads a seccomp_notif_resp; ENOENT (the caller died) is fine.
    unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_SEND, resp) };
}

/// Worker threads for supervised connects, started as needed up to
/// [`MAX_IN_FLIGHT`]; they end when the pool is dropped.
struct Pool {
    jobs: mpsc::Sender<Notif>,
    queue: Arc<Mutex<mpsc::Receiver<Notif>>>,
    in_flight: Arc<AtomicUsize>,
    workers: usize,
    listener: Arc<OwnedFd>,
    connects: Arc<Connects>,
    report: Report,
}

impl Pool {
    fn new(listener: Arc<OwnedFd>, connects: Arc<Connects>, report: Report) -> Self {
        let (jobs, queue) = mpsc::channel();
        Self {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            workers: 0,
            listener,
            connects,
            report,
        }
    }

    /// Queues a connect, or gives it back when the pool is at its bound.
    fn submit(&mut self, notif: Notif) -> Result<(), Notif> {
        if self.in_flight.load(Ordering::SeqCst) >= MAX_IN_FLIGHT {
            return Err(notif);
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        // Every job in flight has a worker of its own.
        if now > self.workers && self.spawn_worker().is_ok() {
            self.workers += 1;
        }
        if self.workers == 0 || self.jobs.send(notif).is_err() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(notif);
        }
        Ok(())
    }

    fn spawn_worker(&self) -> io::Result<()> {
        let queue = Arc::clone(&self.queue);
        let in_flight = Arc::clone(&self.in_flight);
        let listener = Arc::clone(&self.listener);
        let connects = Arc::clone(&self.connects);
        let report = Arc::clone(&self.report);
        std::thread::Builder::new()
            .name("connect".into())
            .spawn(move || {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(notif) = next else { return };
                    let resp = supervise_connect(&listener, &notif, &connects, report.as_ref());
                    send(&listener, &resp);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .map(drop)
    }
}

fn deny(id: u64, errno: i32) -> NotifResp {
    NotifResp {
        id,
        val: 0,
        error: -errno,
        flags: 0,
    }
}

fn allow(id: u64) -> NotifResp {
    NotifResp {
        id,
        val: 0,
        error: 0,
        flags: 0,
    }
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

fn uid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

fn event(reason: Reason, notif: &Notif, family: u16, sock_type: u32, protocol: u32) -> KernelEvent {
    KernelEvent {
        reason: reason.as_str(),
        reason_code: reason as u32,
        pid: notif.pid,
        uid: uid_of(notif.pid),
        comm: comm_of(notif.pid),
        family: family_name(family),
        sock_type,
        protocol,
        addr: None,
        port: 0,
        path: None,
        cgroup: 0,
    }
}

fn family_name(f: u16) -> &'static str {
    match f {
        1 => "unix",
        2 => "inet",
        10 => "inet6",
        16 => "netlink",
        17 => "packet",
        40 => "vsock",
        44 => "xdp",
        _ => "other",
    }
}

/// Everything but connect: refused and reported.
fn handle(notif: &Notif, report: &(dyn Fn(KernelEvent) + Send + Sync)) -> NotifResp {
    let nr = i64::from(notif.data.nr);
    let args = notif.data.args;
    if nr == libc::SYS_socket || nr == libc::SYS_socketpair {
        let family = args[0] as u16;
        let reason = if family == 1 {
            Reason::UnixPathRefused
        } else {
            Reason::SocketFamilyRefused
        };
        report(event(reason, notif, family, args[1] as u32, args[2] as u32));
        return deny(notif.id, libc::EPERM);
    }
    if nr == libc::SYS_unshare || nr == libc::SYS_clone {
        report(event(Reason::UserNamespaceRefused, notif, 0, 0, 0));
        return deny(notif.id, libc::EPERM);
    }
    if nr == libc::SYS_ioctl {
        report(event(Reason::TerminalInjectionRefused, notif, 0, 0, 0));
        return deny(notif.id, libc::EPERM);
    }
    deny(notif.id, libc::ENOSYS)
}

/// What a unix address names.
#[derive(Debug, PartialEq, Eq)]
enum UnixTarget<'a> {
    Path(&'a [u8]),
    /// Without the leading NUL.
    Abstract(&'a [u8]),
}

/// The target of a `sockaddr_un`, or None when the kernel reaches nothing
/// with it (another family: EINVAL, or AF_UNSPEC: a datagram disconnect;
/// too short: EINVAL).
fn unix_target(addr: &[u8]) -> Option<UnixTarget<'_>> {
    let family = u16::from_ne_bytes([*addr.first()?, *addr.get(1)?]);
    if family != libc::AF_UNIX as u16 || addr.len() <= 2 {
        return None;
    }
    match addr[2] {
        0 => Some(UnixTarget::Abstract(&addr[3..])),
        _ => connector::path_name(addr).map(UnixTarget::Path),
    }
}

/// The agent's connect, decided here and performed by the connector.
fn supervise_connect(
    listener: &OwnedFd,
    notif: &Notif,
    connects: &Connects,
    report: &(dyn Fn(KernelEvent) + Send + Sync),
) -> NotifResp {
    let tid = notif.pid;
    let fd = notif.data.args[0] as RawFd;
    let addr_ptr = notif.data.args[1];
    // The kernel takes the length as an int and refuses more than a
    // sockaddr_storage.
    let len = notif.data.args[2] as u32 as i32;
    let Ok(len) = usize::try_from(len) else {
        return deny(notif.id, libc::EINVAL);
    };
    if len > connector::ADDR_MAX {
        return deny(notif.id, libc::EINVAL);
    }
    let sock = match take_fd(tid, fd) {
        Ok(s) => s,
        Err(e) => return deny(notif.id, e.raw_os_error().unwrap_or(libc::EBADF)),
    };
    let mut addr = vec![0u8; len];
    if read_memory(tid, addr_ptr, &mut addr).is_err() {
        return deny(notif.id, libc::EFAULT);
    }
    let domain = match socket_domain(&sock) {
        Ok(d) => d,
        Err(e) => return deny(notif.id, e.raw_os_error().unwrap_or(libc::ENOTSOCK)),
    };
    let target = if domain == libc::AF_UNIX {
        // As unix_validate_addr(): the connector's own (shorter) address
        // must not make a connect work that the kernel would refuse.
        if len > std::mem::size_of::<libc::sockaddr_un>() {
            return deny(notif.id, libc::EINVAL);
        }
        unix_target(&addr)
    } else {
        None
    };
    // The calling thread's view of the file system, for a path.
    let dirs = match target {
        Some(UnixTarget::Path(_)) => match (
            open_dir(&format!("/proc/{tid}/root")),
            open_dir(&format!("/proc/{tid}/cwd")),
        ) {
            (Ok(root), Ok(cwd)) => Some((root, cwd)),
            _ => return deny(notif.id, libc::ESRCH),
        },
        _ => None,
    };
    // The tid could have been reused between RECV and now: make sure the
    // notification still refers to the same waiting thread, so the socket,
    // the address and the directories are all its own.
    if !still_valid(listener, notif.id) {
        return deny(notif.id, libc::ESRCH);
    }
    let still_wanted = || still_valid(listener, notif.id);
    let run = |req: &Request<'_>| connects.connector.run(req, &still_wanted);
    match (target, dirs) {
        (Some(UnixTarget::Abstract(name)), _) => {
            if !connects.list.allows_abstract(name) {
                return refuse(notif, report, UNLISTED, unix_list::printable(&addr[2..]));
            }
            let req = Request {
                kind: Kind::Plain,
                addr: &addr,
                allowed: &[],
                sock: sock.as_fd(),
                dirs: None,
            };
            answer(notif, report, run(&req), || {
                unix_list::printable(&addr[2..])
            })
        }
        (Some(UnixTarget::Path(path)), Some((root, cwd))) => {
            // Held until the connect is done: the listed inodes stay pinned.
            let pinned = connects.list.identities();
            let listed: Vec<Result<Identity, i32>> = pinned
                .iter()
                .map(|r| r.as_ref().map(|(id, _)| *id).map_err(|e| *e))
                .collect();
            let own = unix_list::own_sockets();
            let allowed: Vec<Identity> = listed
                .iter()
                .filter_map(|r| r.ok())
                .filter(|id| !own.contains(id))
                .collect();
            let shown = shown_path(path, &cwd);
            // The listed entry the agent's text names, if any.
            let named = connects
                .list
                .listed_as_written(path)
                .or_else(|| connects.list.listed_as_written(shown.as_bytes()))
                .and_then(|i| listed.get(i).copied());
            let symlinked = matches!(named, Some(Err(e)) if e == libc::ELOOP || e == libc::ENOTDIR);
            let req = Request {
                kind: Kind::UnixPath,
                addr: &addr,
                allowed: &allowed,
                sock: sock.as_fd(),
                dirs: Some((root.as_fd(), cwd.as_fd())),
            };
            match run(&req) {
                Ok(Some(Reply::NotListed(id))) => {
                    let why = if own.contains(&id) {
                        OWN
                    } else if symlinked {
                        MOVED
                    } else {
                        UNLISTED
                    };
                    refuse(notif, report, why, shown)
                }
                // The agent's own resolution failed where a listed socket
                // is (or is not, yet): the kernel's answer, as it would be.
                Ok(Some(Reply::Unresolved(errno)))
                    if matches!(named, Some(Ok(_))) || named == Some(Err(libc::ENOENT)) =>
                {
                    deny(notif.id, errno)
                }
                Ok(Some(Reply::Unresolved(_))) => refuse(
                    notif,
                    report,
                    if symlinked { MOVED } else { UNLISTED },
                    shown,
                ),
                other => answer(notif, report, other, || shown.clone()),
            }
        }
        _ => {
            let req = Request {
                kind: Kind::Plain,
                addr: &addr,
                allowed: &[],
                sock: sock.as_fd(),
                dirs: None,
            };
            answer(notif, report, run(&req), || {
                family_name(domain as u16).into()
            })
        }
    }
}

/// The notification's answer for what the connector did.
fn answer(
    notif: &Notif,
    report: &(dyn Fn(KernelEvent) + Send + Sync),
    done: Result<Option<Reply>, connector::ConnectorError>,
    what: impl FnOnce() -> String,
) -> NotifResp {
    match done {
        Ok(Some(Reply::Connected)) => allow(notif.id),
        Ok(Some(Reply::Failed(errno) | Reply::Unresolved(errno))) => deny(notif.id, errno),
        Ok(Some(Reply::NotListed(_))) => refuse(notif, report, UNLISTED, what()),
        // The caller is gone; nobody reads this answer.
        Ok(None) => deny(notif.id, libc::EINTR),
        Err(e) => {
            tracing::warn!("supervised connect: {e}");
            refuse(notif, report, NO_CONNECTOR, what())
        }
    }
}

fn refuse(
    notif: &Notif,
    report: &(dyn Fn(KernelEvent) + Send + Sync),
    why: &'static str,
    path: String,
) -> NotifResp {
    let mut e = event(Reason::UnixPathRefused, notif, 1, 0, 0);
    e.reason = why;
    e.path = Some(path);
    report(e);
    deny(notif.id, libc::EPERM)
}

/// A path for the report: a relative one joined to the directory it was
/// resolved from.
fn shown_path(path: &[u8], cwd: &OwnedFd) -> String {
    if path.first() == Some(&b'/') {
        return unix_list::printable(path);
    }
    match std::fs::read_link(format!("/proc/self/fd/{}", cwd.as_raw_fd())) {
        Ok(dir) => unix_list::printable(dir.join(unix_list::path_of(path)).as_os_str().as_bytes()),
        Err(_) => unix_list::printable(path),
    }
}

fn still_valid(listener: &OwnedFd, id: u64) -> bool {
    let mut id = id;
    // SAFETY: NOTIF_ID_VALID reads a u64.
    unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_ID_VALID, &mut id) == 0 }
}

/// pidfd_getfd on the calling thread: a duplicate of its fd (same open file
/// description), from that thread's own descriptor table.
fn take_fd(tid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; we own the returned descriptors.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, PIDFD_THREAD);
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as RawFd);
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(dup as RawFd))
    }
}

fn open_dir(path: &str) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(PathBuf::from(path))?;
    Ok(OwnedFd::from(f))
}

fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    if buf.is_empty() {
        return Ok(());
    }
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    mem.read_exact_at(buf, addr)
}

fn socket_domain(sock: &OwnedFd) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut v as *mut libc::c_int).cast(),
            &mut l,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sun(body: &[u8]) -> Vec<u8> {
        let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(body);
        a
    }

    #[test]
    fn unix_targets_are_paths_up_to_nul_or_abstract_names_of_their_length() {
        assert_eq!(
            unix_target(&sun(b"/run/x.sock\0garbage")),
            Some(UnixTarget::Path(b"/run/x.sock"))
        );
        assert_eq!(
            unix_target(&sun(b"rel.sock")),
            Some(UnixTarget::Path(b"rel.sock"))
        );
        assert_eq!(
            unix_target(&sun(b"\0name")),
            Some(UnixTarget::Abstract(b"name"))
        );
        // Trailing NULs are part of an abstract name.
        assert_eq!(
            unix_target(&sun(b"\0name\0\0")),
            Some(UnixTarget::Abstract(b"name\0\0"))
        );
        assert_eq!(unix_list::printable(b"\0name"), "@name");
    }

    #[test]
    fn addresses_the_kernel_refuses_reach_nothing() {
        assert_eq!(unix_target(&sun(b"")), None, "no path: EINVAL");
        assert_eq!(unix_target(&[1]), None);
        assert_eq!(unix_target(&[]), None);
        let mut unspec = vec![0u8, 0];
        unspec.extend_from_slice(b"/run/x.sock");
        assert_eq!(unix_target(&unspec), None, "AF_UNSPEC");
        let mut inet = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        inet.extend_from_slice(b"/run/x.sock");
        assert_eq!(unix_target(&inet), None);
    }
}
