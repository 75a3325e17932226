//! Answers the seccomp filter's notifications. Refusals (socket families,
//! unix sockets the policy does not allow, user namespaces) are answered with
//! EPERM and recorded. When the policy lists unix sockets, every connect() is
//! supervised: the enforcer takes its own copy of the agent's socket and
//! address and performs the connect itself, so what is checked is what is
//! used (no time-of-check/time-of-use gap, no SECCOMP_USER_NOTIF_FLAG_CONTINUE).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::Arc,
};

use enforcer_common::Reason;

use crate::kernel::events::KernelEvent;

const NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;

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

/// The unix socket paths the policy lists, as raw `sun_path` bytes
/// (abstract names start with NUL).
#[derive(Debug, Clone, Default)]
pub struct UnixAllowlist {
    paths: Vec<Vec<u8>>,
}

impl UnixAllowlist {
    /// From policy strings: absolute paths, or `@name` for abstract sockets.
    pub fn from_policy(entries: &[String]) -> Self {
        let paths = entries
            .iter()
            .map(|e| match e.strip_prefix('@') {
                Some(name) => {
                    let mut v = vec![0u8];
                    v.extend_from_slice(name.as_bytes());
                    v
                }
                None => e.as_bytes().to_vec(),
            })
            .collect();
        Self { paths }
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    fn allows(&self, path: &[u8]) -> bool {
        self.paths.iter().any(|p| p.as_slice() == path)
    }
}

/// The path in a `sockaddr_un` of `len` bytes: up to the first NUL for path
/// names, the whole length for abstract names.
fn sun_path(addr: &[u8]) -> Vec<u8> {
    let path = addr.get(2..).unwrap_or_default();
    if path.first() == Some(&0) {
        return path.to_vec();
    }
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    path[..end].to_vec()
}

fn printable_path(path: &[u8]) -> String {
    match path.first() {
        Some(0) => format!("@{}", String::from_utf8_lossy(&path[1..])),
        _ => String::from_utf8_lossy(path).into_owned(),
    }
}

/// Runs until the listener reports that no process is left or `stop` becomes readable.
pub fn serve(
    listener: OwnedFd,
    stop: OwnedFd,
    unix: Arc<UnixAllowlist>,
    mut report: impl FnMut(KernelEvent) + Send + 'static,
) {
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
        let resp = handle(&listener, &notif, &unix, &mut report);
        // SAFETY: NOTIF_SEND reads a seccomp_notif_resp; ENOENT (the caller died) is fine.
        unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_SEND, &resp) };
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

fn handle(
    listener: &OwnedFd,
    notif: &Notif,
    unix: &UnixAllowlist,
    report: &mut impl FnMut(KernelEvent),
) -> NotifResp {
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
    if nr == libc::SYS_connect {
        return supervise_connect(listener, notif, unix, report);
    }
    if nr == libc::SYS_ioctl {
        report(event(Reason::TerminalInjectionRefused, notif, 0, 0, 0));
        return deny(notif.id, libc::EPERM);
    }
    deny(notif.id, libc::ENOSYS)
}

/// Performs the agent's connect() on our own duplicate of its socket, with
/// our own copy of its address, after checking unix paths against the list.
fn supervise_connect(
    listener: &OwnedFd,
    notif: &Notif,
    unix: &UnixAllowlist,
    report: &mut impl FnMut(KernelEvent),
) -> NotifResp {
    let fd = notif.data.args[0] as RawFd;
    let addr_ptr = notif.data.args[1];
    let len = (notif.data.args[2] as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    let Ok(sock) = take_fd(notif.pid, fd) else {
        return deny(notif.id, libc::EBADF);
    };
    let mut addr = vec![0u8; len];
    if read_memory(notif.pid, addr_ptr, &mut addr).is_err() {
        return deny(notif.id, libc::EFAULT);
    }
    // The pid could have been reused between RECV and now: make sure the
    // notification still refers to the same waiting task.
    let mut id = notif.id;
    // SAFETY: NOTIF_ID_VALID reads a u64.
    if unsafe { libc::ioctl(listener.as_raw_fd(), NOTIF_ID_VALID, &mut id) } != 0 {
        return deny(notif.id, libc::ESRCH);
    }
    let domain = socket_domain(&sock).unwrap_or(-1);
    if domain == libc::AF_UNIX {
        let path = sun_path(&addr);
        if !unix.allows(&path) {
            let mut e = event(Reason::UnixPathRefused, notif, 1, 0, 0);
            e.path = Some(printable_path(&path));
            report(e);
            return deny(notif.id, libc::EPERM);
        }
    }
    // SAFETY: connect on a socket we own a reference to, with our own buffer.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            addr.as_ptr().cast(),
            len as libc::socklen_t,
        )
    };
    if rc == 0 {
        NotifResp {
            id: notif.id,
            val: 0,
            error: 0,
            flags: 0,
        }
    } else {
        deny(
            notif.id,
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

/// pidfd_getfd: a duplicate of another process's fd (same open file description).
fn take_fd(pid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; we own the returned descriptors.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
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

fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
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

    #[test]
    fn sun_paths_stop_at_nul_and_abstract_names_keep_their_length() {
        let mut a = vec![1u8, 0];
        a.extend_from_slice(b"/run/x.sock\0garbage");
        assert_eq!(sun_path(&a), b"/run/x.sock");
        let mut b = vec![1u8, 0, 0];
        b.extend_from_slice(b"name");
        assert_eq!(sun_path(&b), b"\0name");
        assert_eq!(printable_path(&sun_path(&b)), "@name");
    }

    #[test]
    fn allowlist_matches_exact_paths_only() {
        let l = UnixAllowlist::from_policy(&["/run/a.sock".into(), "@bus".into()]);
        assert!(l.allows(b"/run/a.sock"));
        assert!(l.allows(b"\0bus"));
        assert!(!l.allows(b"/run/a.sock2"));
        assert!(!l.allows(b"/run//a.sock"));
        assert!(!l.allows(b"bus"));
    }
}
