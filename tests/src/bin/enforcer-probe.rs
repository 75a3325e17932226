//! A small program the end-to-end tests run inside `enforcer launch` to try
//! every way out of the sandbox. Each action prints one line, `ok ...` or
//! `err <errno> <text>`, and exits 0 on success, 1 on failure, 2 on bad usage.

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    mem::{size_of, zeroed},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, RawFd},
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(action) = args.first() else {
        eprintln!("usage: enforcer-probe ACTION [ARGS...]");
        std::process::exit(2);
    };
    let rest = &args[1..];
    let result = match action.as_str() {
        "tcp" => tcp(arg(rest, 0)),
        "tcp-peer" => tcp_peer(arg(rest, 0)),
        "tcp-echo" => tcp_echo(arg(rest, 0), arg(rest, 1)),
        "udp-sendto" => udp_sendto(arg(rest, 0)),
        "udp-connect" => udp_connect(arg(rest, 0)),
        "udp-sendmmsg" => udp_sendmmsg(arg(rest, 0)),
        "dns-udp" => dns_udp(arg(rest, 0), arg(rest, 1)),
        "dns-tcp" => dns_tcp(arg(rest, 0), arg(rest, 1)),
        "tfo" => tfo(arg(rest, 0)),
        "ping" => ping(arg(rest, 0)),
        "raw" => raw(arg(rest, 0)),
        "packet" => packet(arg(rest, 0)),
        "vsock" => family_socket(libc::AF_VSOCK, libc::SOCK_STREAM),
        "netlink-other" => netlink(libc::NETLINK_SOCK_DIAG),
        "netlink-route" => netlink(libc::NETLINK_ROUTE),
        "unix-socket" => family_socket(libc::AF_UNIX, libc::SOCK_STREAM),
        "unix-connect" => unix_connect(arg(rest, 0)),
        "userns" => userns(),
        "tiocsti" => tiocsti(),
        "tioclinux" => tioclinux(),
        "type-into-tty" => type_into_tty(arg(rest, 0)),
        "ipoptions" => ipoptions(),
        "bind" => bind(arg(rest, 0)),
        "listen" => listen(arg(rest, 0), arg(rest, 1)),
        "listen-autobind" => listen_autobind(arg(rest, 0)),
        "grandchild" => grandchild(rest),
        "loop-tcp" => loop_tcp(arg(rest, 0), arg(rest, 1)),
        "sleep" => sleep(arg(rest, 0)),
        "connect-bench" => connect_bench(arg(rest, 0), arg(rest, 1)),
        "dns-bench" => dns_bench(arg(rest, 0), arg(rest, 1), arg(rest, 2), arg(rest, 3)),
        "dns-flood" => dns_flood(arg(rest, 0), arg(rest, 1), arg(rest, 2), arg(rest, 3)),
        "now" => Ok(format!(
            "now {}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )),
        // Run isolation (issue 11): see `mod isolation` at the end.
        a if a.starts_with("iso-") => isolation::run(a, rest),
        other => {
            unix_attack(other, rest).unwrap_or_else(|| Err(format!("usage unknown action {other}")))
        }
    };
    match result {
        Ok(msg) => {
            println!("ok {msg}");
            std::process::exit(0);
        }
        Err(msg) => {
            println!("err {msg}");
            std::process::exit(if msg.starts_with("usage") { 2 } else { 1 });
        }
    }
}

fn arg(rest: &[String], i: usize) -> &str {
    rest.get(i).map_or("", String::as_str)
}

fn errno_text(e: &std::io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::EAGAIN) => "EAGAIN",
        Some(libc::EISCONN) => "EISCONN",
        Some(libc::ENOTCONN) => "ENOTCONN",
        Some(libc::EBADF) => "EBADF",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ELOOP) => "ELOOP",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(n) => return format!("errno{n} {e}"),
        None => "other",
    };
    format!("{name} {e}")
}

fn last_err() -> String {
    errno_text(&std::io::Error::last_os_error())
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("usage bad address {s:?}"))
}

/// Connects and sends a marker; reports whether a reply came back.
fn tcp(target: &str) -> Result<String, String> {
    let a = addr(target)?;
    let mut s =
        TcpStream::connect_timeout(&a, Duration::from_secs(3)).map_err(|e| errno_text(&e))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    s.write_all(b"escape-attempt\n")
        .map_err(|e| errno_text(&e))?;
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Err(String::from("closed connection closed without reply")),
        Ok(n) => Ok(format!(
            "reply {}",
            String::from_utf8_lossy(&buf[..n]).trim()
        )),
        Err(e) => Err(errno_text(&e)),
    }
}

/// Connects, prints what getpeername() says, then exchanges a line.
fn tcp_peer(target: &str) -> Result<String, String> {
    let a = addr(target)?;
    let s = TcpStream::connect_timeout(&a, Duration::from_secs(3)).map_err(|e| errno_text(&e))?;
    let peer = s.peer_addr().map_err(|e| errno_text(&e))?;
    Ok(format!("peer {peer}"))
}

/// Connects, sends ARG, and prints the reply.
fn tcp_echo(target: &str, text: &str) -> Result<String, String> {
    let a = addr(target)?;
    let mut s =
        TcpStream::connect_timeout(&a, Duration::from_secs(5)).map_err(|e| errno_text(&e))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let peer = s.peer_addr().map_err(|e| errno_text(&e))?;
    s.write_all(format!("{text}\n").as_bytes())
        .map_err(|e| errno_text(&e))?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).map_err(|e| errno_text(&e))?;
    if n == 0 {
        return Err(String::from("closed connection closed without reply"));
    }
    Ok(format!(
        "peer {peer} reply {}",
        String::from_utf8_lossy(&buf[..n]).trim()
    ))
}

fn udp_bind_for(a: &SocketAddr) -> Result<UdpSocket, String> {
    let local = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    UdpSocket::bind(local).map_err(|e| errno_text(&e))
}

/// An unbound UDP socket of the target's family (no bind hook involved).
fn udp_unbound(a: &SocketAddr) -> Result<RawFd, String> {
    let family = if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    raw_socket(family, libc::SOCK_DGRAM, 0)
}

fn udp_sendto(target: &str) -> Result<String, String> {
    let a = addr(target)?;
    let fd = udp_unbound(&a)?;
    let (ss, len) = sockaddr_of(&a);
    let data = b"escape-attempt";
    // SAFETY: sendto with a valid buffer and address.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if n < 0 {
        return Err(last_err());
    }
    Ok(String::from("sent"))
}

fn udp_connect(target: &str) -> Result<String, String> {
    let a = addr(target)?;
    let fd = udp_unbound(&a)?;
    let (ss, len) = sockaddr_of(&a);
    // SAFETY: connect and send on our own socket.
    unsafe {
        if libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) != 0 {
            return Err(last_err());
        }
        let data = b"escape-attempt";
        if libc::send(fd, data.as_ptr().cast(), data.len(), 0) < 0 {
            return Err(last_err());
        }
    }
    Ok(String::from("sent"))
}

fn sockaddr_of(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; we fill the right variant.
    unsafe {
        let mut ss: libc::sockaddr_storage = zeroed();
        match a {
            SocketAddr::V4(v4) => {
                let sin = &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                (ss, size_of::<libc::sockaddr_in>() as u32)
            }
            SocketAddr::V6(v6) => {
                let sin6 = &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6);
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                (ss, size_of::<libc::sockaddr_in6>() as u32)
            }
        }
    }
}

fn udp_sendmmsg(target: &str) -> Result<String, String> {
    let a = addr(target)?;
    let fd = udp_unbound(&a)?;
    let (mut ss, len) = sockaddr_of(&a);
    let mut payload = *b"escape-attempt";
    // SAFETY: the mmsghdr array and everything it points to live on this stack frame.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        let mut msgs: [libc::mmsghdr; 2] = zeroed();
        for m in &mut msgs {
            m.msg_hdr.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen = len;
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let n = libc::sendmmsg(fd, msgs.as_mut_ptr(), 2, 0);
        if n < 0 {
            return Err(last_err());
        }
        Ok(format!("sent {n}"))
    }
}

/// A DNS query for NAME (default leak.example.) type A.
fn dns_query(name: &str) -> Vec<u8> {
    let name = if name.is_empty() {
        "leak.example."
    } else {
        name
    };
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn rcode(resp: &[u8]) -> Result<String, String> {
    if resp.len() < 12 || resp[0..2] != [0x12, 0x34] {
        return Err(String::from("garbage bad DNS reply"));
    }
    let ancount = u16::from_be_bytes([resp[6], resp[7]]);
    Ok(format!("rcode {} answers {ancount}", resp[3] & 0x0f))
}

fn dns_udp(server: &str, name: &str) -> Result<String, String> {
    let a = addr(server)?;
    let s = udp_bind_for(&a)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| errno_text(&e))?;
    s.send_to(&dns_query(name), a).map_err(|e| errno_text(&e))?;
    let mut buf = [0u8; 1500];
    let (n, from) = s.recv_from(&mut buf).map_err(|e| errno_text(&e))?;
    Ok(format!("from {from} {}", rcode(&buf[..n])?))
}

fn dns_tcp(server: &str, name: &str) -> Result<String, String> {
    let a = addr(server)?;
    let mut s =
        TcpStream::connect_timeout(&a, Duration::from_secs(3)).map_err(|e| errno_text(&e))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| errno_text(&e))?;
    let q = dns_query(name);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).map_err(|e| errno_text(&e))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| errno_text(&e))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).map_err(|e| errno_text(&e))?;
    rcode(&buf)
}

fn raw_socket(family: i32, ty: i32, proto: i32) -> Result<RawFd, String> {
    // SAFETY: socket(2).
    let fd = unsafe { libc::socket(family, ty, proto) };
    if fd < 0 { Err(last_err()) } else { Ok(fd) }
}

fn tfo(target: &str) -> Result<String, String> {
    let a = addr(target)?;
    let family = if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = raw_socket(family, libc::SOCK_STREAM, 0)?;
    let (ss, len) = sockaddr_of(&a);
    let data = b"escape-attempt-in-syn";
    // SAFETY: sendto with a valid buffer and address.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if n < 0 {
        return Err(last_err());
    }
    Ok(format!("sent {n}"))
}

fn ping(target: &str) -> Result<String, String> {
    let ip: std::net::Ipv4Addr = target.parse().map_err(|_| String::from("usage bad ip"))?;
    let fd = raw_socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)?;
    send_icmp(fd, ip)
}

fn raw(target: &str) -> Result<String, String> {
    let ip: std::net::Ipv4Addr = target.parse().map_err(|_| String::from("usage bad ip"))?;
    let fd = raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    send_icmp(fd, ip)
}

fn send_icmp(fd: RawFd, ip: std::net::Ipv4Addr) -> Result<String, String> {
    let echo = [8u8, 0, 0xf7, 0xfe, 0, 1, 0, 0];
    let (ss, len) = sockaddr_of(&SocketAddr::from((ip, 0)));
    // SAFETY: sendto with a valid buffer and address.
    let n = unsafe {
        libc::sendto(
            fd,
            echo.as_ptr().cast(),
            echo.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if n < 0 {
        return Err(last_err());
    }
    Ok(format!("sent {n}"))
}

/// Sends a broadcast Ethernet frame carrying an IPv4 UDP packet out of IFNAME.
fn packet(ifname: &str) -> Result<String, String> {
    let fd = raw_socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        i32::from((libc::ETH_P_ALL as u16).to_be()),
    )?;
    let c = CString::new(ifname).map_err(|_| String::from("usage bad ifname"))?;
    // SAFETY: if_nametoindex on a C string; sockaddr_ll filled for sendto.
    unsafe {
        let index = libc::if_nametoindex(c.as_ptr());
        if index == 0 {
            return Err(last_err());
        }
        let mut frame = [0u8; 60];
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame[14] = 0x45;
        let mut sll: libc::sockaddr_ll = zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        if n < 0 {
            return Err(last_err());
        }
        Ok(format!("sent {n}"))
    }
}

fn family_socket(family: i32, ty: i32) -> Result<String, String> {
    let fd = raw_socket(family, ty, 0)?;
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    Ok(String::from("created"))
}

fn netlink(proto: i32) -> Result<String, String> {
    let fd = raw_socket(libc::AF_NETLINK, libc::SOCK_RAW, proto)?;
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    Ok(String::from("created"))
}

fn unix_connect(path: &str) -> Result<String, String> {
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| errno_text(&e))?;
    let _ = s.write_all(b"hello\n");
    Ok(String::from("connected"))
}

fn userns() -> Result<String, String> {
    // SAFETY: unshare(2).
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(last_err());
    }
    Ok(String::from("unshared"))
}

/// Types a character into a terminal of our own that we made our
/// controlling terminal: the kernel allows that (legacy_tiocsti), so only
/// the seccomp filter can refuse it.
fn tiocsti() -> Result<String, String> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty into two ints; the rest are optional and null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!("setup openpty {}", last_err()));
    }
    // SAFETY: setsid and ioctls on descriptors we own.
    unsafe {
        if libc::setsid() < 0 {
            return Err(format!("setup setsid {}", last_err()));
        }
        if libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0 {
            return Err(format!("setup TIOCSCTTY {}", last_err()));
        }
        let c = b'x';
        if libc::ioctl(slave, libc::TIOCSTI, &c) != 0 {
            return Err(last_err());
        }
    }
    Ok(String::from("typed"))
}

/// Types `text` into our controlling terminal, as an agent trying to
/// answer a prompt would.
fn type_into_tty(text: &str) -> Result<String, String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| format!("setup /dev/tty {}", errno_text(&e)))?;
    for b in text.bytes().chain([b'\r']) {
        // SAFETY: TIOCSTI reads one byte.
        if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSTI, &b) } != 0 {
            return Err(last_err());
        }
    }
    Ok(String::from("typed"))
}

fn tioclinux() -> Result<String, String> {
    let mut sub = [0u8; 2];
    // SAFETY: an ioctl on stdin with a small buffer.
    if unsafe { libc::ioctl(0, libc::TIOCLINUX, sub.as_mut_ptr()) } != 0 {
        return Err(last_err());
    }
    Ok(String::from("done"))
}

fn ipoptions() -> Result<String, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| errno_text(&e))?;
    // A loose-source-route option (type 131), padded.
    let opt = [131u8, 7, 4, 10, 0, 0, 1, 0];
    // SAFETY: setsockopt with a valid buffer.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            opt.as_ptr().cast(),
            opt.len() as u32,
        )
    };
    if rc != 0 {
        return Err(last_err());
    }
    Ok(String::from("set"))
}

fn bind(target: &str) -> Result<String, String> {
    let a = addr(target)?;
    let l = TcpListener::bind(a).map_err(|e| errno_text(&e))?;
    Ok(format!(
        "bound {}",
        l.local_addr().map_err(|e| errno_text(&e))?
    ))
}

/// Listens on ADDR for SECS seconds; reports how many connections arrived.
fn listen(target: &str, secs: &str) -> Result<String, String> {
    let a = addr(target)?;
    let secs: u64 = secs.parse().unwrap_or(3);
    let l = TcpListener::bind(a).map_err(|e| errno_text(&e))?;
    let local = l.local_addr().map_err(|e| errno_text(&e))?;
    println!("listening {local}");
    let _ = std::io::stdout().flush();
    l.set_nonblocking(true).map_err(|e| errno_text(&e))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut accepted = 0;
    while std::time::Instant::now() < deadline {
        if l.accept().is_ok() {
            accepted += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if accepted > 0 {
        return Err(format!("accepted {accepted}"));
    }
    Ok(format!("accepted 0 on {local}"))
}

/// listen() on a socket that was never bound: the kernel binds it to the
/// wildcard address without calling any bind hook. Waits SECS seconds.
fn listen_autobind(secs: &str) -> Result<String, String> {
    let secs: u64 = secs.parse().unwrap_or(3);
    let fd = raw_socket(libc::AF_INET, libc::SOCK_STREAM, 0)?;
    // SAFETY: listen/getsockname on our own socket.
    unsafe {
        if libc::listen(fd, 16) != 0 {
            return Err(last_err());
        }
        let mut sin: libc::sockaddr_in = zeroed();
        let mut len = size_of::<libc::sockaddr_in>() as u32;
        libc::getsockname(fd, (&mut sin as *mut libc::sockaddr_in).cast(), &mut len);
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        println!("listening {ip}:{}", u16::from_be(sin.sin_port));
        let _ = std::io::stdout().flush();
        libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut accepted = 0;
        while std::time::Instant::now() < deadline {
            if libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) >= 0 {
                accepted += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if accepted > 0 {
            return Err(format!("accepted {accepted}"));
        }
    }
    Ok(String::from("accepted 0"))
}

/// Double-forks; the grandchild (reparented away from us) runs `tcp ADDR`
/// and appends its result to FILE.
fn grandchild(rest: &[String]) -> Result<String, String> {
    let target = arg(rest, 0).to_string();
    let file = arg(rest, 1).to_string();
    // SAFETY: fork in a single-threaded program.
    unsafe {
        match libc::fork() {
            -1 => return Err(last_err()),
            0 => {
                libc::setsid();
                match libc::fork() {
                    0 => {
                        std::thread::sleep(Duration::from_millis(300));
                        let r = tcp(&target);
                        let line = match r {
                            Ok(m) => format!("ok {m}\n"),
                            Err(m) => format!("err {m}\n"),
                        };
                        if let Ok(mut f) = std::fs::OpenOptions::new()
                            .append(true)
                            .create(true)
                            .open(&file)
                        {
                            let _ = f.write_all(line.as_bytes());
                        }
                        // Linger, so the test can check we are killed with the run.
                        std::thread::sleep(Duration::from_secs(30));
                        libc::_exit(0);
                    }
                    _ => libc::_exit(0),
                }
            }
            pid => {
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    Ok(String::from("forked"))
}

/// Tries to connect to ADDR every 50 ms forever, appending each result to FILE.
fn loop_tcp(target: &str, file: &str) -> Result<String, String> {
    let a = addr(target)?;
    loop {
        let line = match TcpStream::connect_timeout(&a, Duration::from_millis(500)) {
            Ok(mut s) => {
                let _ = s.write_all(b"escape-attempt\n");
                let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                let mut buf = [0u8; 32];
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        format!("reply {}\n", String::from_utf8_lossy(&buf[..n]).trim())
                    }
                    Ok(_) => String::from("closed\n"),
                    Err(e) => format!("err {}\n", errno_text(&e)),
                }
            }
            Err(e) => format!("err {}\n", errno_text(&e)),
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
        {
            let _ = f.write_all(line.as_bytes());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sleep(secs: &str) -> Result<String, String> {
    let secs: u64 = secs
        .parse()
        .map_err(|_| String::from("usage bad seconds"))?;
    std::thread::sleep(Duration::from_secs(secs));
    Ok(String::from("slept"))
}

/// connect()+close() to ADDR N times (after a warm-up); prints ns per operation.
/// `threads` clients each sending `n` queries for `name` to `server`, one
/// at a time (UDP, each waits for its answer): the total rate, and the
/// answer's rcode (all answers must agree).
fn dns_bench(server: &str, name: &str, n: &str, threads: &str) -> Result<String, String> {
    let a = addr(server)?;
    let n: u32 = n.parse().map_err(|_| String::from("usage bad count"))?;
    let threads: u32 = threads.parse().unwrap_or(1).max(1);
    let client = || -> Result<String, String> {
        let s = udp_bind_for(&a)?;
        s.connect(a).map_err(|e| errno_text(&e))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| errno_text(&e))?;
        let q = dns_query(name);
        let mut buf = [0u8; 1500];
        let mut last = String::new();
        for i in 0..n + 50 {
            s.send(&q).map_err(|e| errno_text(&e))?;
            let got = s.recv(&mut buf).map_err(|e| errno_text(&e))?;
            let code = rcode(&buf[..got])?;
            if i > 0 && code != last {
                return Err(format!("answers changed: {last} then {code}"));
            }
            last = code;
        }
        Ok(last)
    };
    let started = std::time::Instant::now();
    let mut code = String::new();
    std::thread::scope(|scope| -> Result<(), String> {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(client)).collect();
        for h in handles {
            code = h.join().map_err(|_| String::from("a client panicked"))??;
        }
        Ok(())
    })?;
    let total = f64::from(n + 50) * f64::from(threads);
    Ok(format!(
        "qps {:.0} {code}",
        total / started.elapsed().as_secs_f64()
    ))
}

/// A query for `name` (type A) with this id.
fn dns_query_id(name: &str, id: u16) -> Vec<u8> {
    let mut q = dns_query(name);
    q[..2].copy_from_slice(&id.to_be_bytes());
    q
}

/// `dns-flood SERVER ALLOWED RATE SECONDS`: for SECONDS, sends RATE queries
/// per second for distinct names (none allowed: `f<N>-<pid>.flood.test`)
/// without waiting for answers, and meanwhile looks up ALLOWED every 100 ms,
/// one query at a time, giving each 1 s (no retry). Prints `phase start`
/// and `phase end` lines around the flood (a bench samples enforcer's memory
/// there), then what was sent and answered and how the allowed lookups fared.
fn dns_flood(server: &str, allowed: &str, rate: &str, seconds: &str) -> Result<String, String> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    let a = addr(server)?;
    let rate: u64 = rate.parse().map_err(|_| String::from("usage bad rate"))?;
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| String::from("usage bad seconds"))?;
    let flood = udp_bind_for(&a)?;
    flood.connect(a).map_err(|e| errno_text(&e))?;
    flood
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| errno_text(&e))?;
    let receiver = flood.try_clone().map_err(|e| errno_text(&e))?;
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    println!("phase start");
    let started = std::time::Instant::now();
    let rx = {
        let (done, answered) = (Arc::clone(&done), Arc::clone(&answered));
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                match receiver.recv(&mut buf) {
                    Ok(_) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if done.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
        })
    };
    let tx = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let pid = std::process::id();
            let mut sent: u64 = 0;
            let t0 = std::time::Instant::now();
            let total = rate * seconds;
            while sent < total {
                // Paced: as many as the elapsed time allows, then a short nap.
                let due = (t0.elapsed().as_micros() as u64 * rate / 1_000_000).min(total);
                while sent < due {
                    let q = dns_query_id(&format!("f{sent}-{pid}.flood.test"), sent as u16);
                    let _ = flood.send(&q);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            done.store(true, Ordering::Relaxed);
            sent
        })
    };
    let probe = udp_bind_for(&a)?;
    probe.connect(a).map_err(|e| errno_text(&e))?;
    let mut latencies = Vec::new();
    let mut tries = 0u32;
    let mut id: u16 = 0x4000;
    std::thread::sleep(Duration::from_millis(200));
    while !done.load(Ordering::Relaxed) {
        tries += 1;
        id = id.wrapping_add(1);
        let q = dns_query_id(allowed, id);
        let t = std::time::Instant::now();
        probe.send(&q).map_err(|e| errno_text(&e))?;
        let mut buf = [0u8; 1500];
        loop {
            let left = Duration::from_secs(1).saturating_sub(t.elapsed());
            if left.is_zero() {
                break;
            }
            probe
                .set_read_timeout(Some(left))
                .map_err(|e| errno_text(&e))?;
            match probe.recv(&mut buf) {
                // An answer to this query, with an address.
                Ok(n) if n >= 12 && buf[..2] == id.to_be_bytes() => {
                    if buf[3] & 0x0f == 0 && buf[6..8] != [0, 0] {
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
    }
    let sent = tx.join().map_err(|_| String::from("the sender panicked"))?;
    let flood_s = started.elapsed().as_secs_f64();
    println!("phase end");
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    let _ = rx.join();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(format!(
        "flood sent {sent} in {flood_s:.1}s answered {} allowed {}/{tries} p50_ms {:.2} p99_ms {:.2} max_ms {:.2}",
        answered.load(Ordering::Relaxed),
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    ))
}

fn connect_bench(target: &str, n: &str) -> Result<String, String> {
    let a = addr(target)?;
    let n: u32 = n.parse().map_err(|_| String::from("usage bad count"))?;
    for _ in 0..100 {
        drop(TcpStream::connect(a).map_err(|e| errno_text(&e))?);
    }
    let t = std::time::Instant::now();
    for _ in 0..n {
        drop(TcpStream::connect(a).map_err(|e| errno_text(&e))?);
    }
    Ok(format!(
        "ns_per_op {}",
        t.elapsed().as_nanos() / u128::from(n.max(1))
    ))
}

// ---------------------------------------------------------------------------
// Run isolation (issue 11). A victim that holds a secret in its environment
// and in memory and keeps a socket open, and an attacker that tries every way
// a process of the same user can reach into another one. Kept apart from the
// network probes above.
// ---------------------------------------------------------------------------
mod isolation {
    use std::{
        io::{Read as _, Write as _},
        os::{
            fd::{AsRawFd as _, RawFd},
            unix::fs::OpenOptionsExt as _,
        },
        time::Duration,
    };

    use super::{arg, errno_text, last_err};

    pub fn run(action: &str, rest: &[String]) -> Result<String, String> {
        match action {
            "iso-victim" => victim(arg(rest, 0), arg(rest, 1)),
            "iso-attack" => attack(rest),
            "iso-own-child" => own_child(),
            "iso-shm-hold" => shm_hold(arg(rest, 0), arg(rest, 1)),
            "iso-shm-read" => shm_read(arg(rest, 0), arg(rest, 1)),
            "iso-key-hold" => key_hold(arg(rest, 0), arg(rest, 1), arg(rest, 2)),
            "iso-key-read" => key_read(arg(rest, 0), arg(rest, 1)),
            "iso-raise-core" => raise_core(arg(rest, 0)),
            other => Err(format!("usage unknown action {other}")),
        }
    }

    /// `iso-victim VAR DONE_FILE`: keeps the value of $VAR in memory, in a
    /// private deleted file it holds open, and a TCP connection open (to
    /// $HTTP_PROXY when set, else to a loopback listener of its own), prints `ready pid=.. fd=.. addr=.. len=..
    /// secret=..` (for the test to know what to look for),
    /// waits until DONE_FILE exists, then checks that nothing was done to
    /// it (no tracer, socket, environment and memory as they were).
    fn victim(var: &str, done: &str) -> Result<String, String> {
        let secret = std::env::var(var).map_err(|_| format!("usage ${var} is not set"))?;
        let held: Vec<u8> = secret.clone().into_bytes();
        let (_listener, stream) = match std::env::var("HTTP_PROXY")
            .ok()
            .and_then(|p| p.strip_prefix("http://").map(String::from))
        {
            Some(proxy) => {
                let a: std::net::SocketAddr = proxy
                    .trim_end_matches('/')
                    .parse()
                    .map_err(|_| format!("usage bad HTTP_PROXY {proxy}"))?;
                (
                    None,
                    std::net::TcpStream::connect(a).map_err(|e| errno_text(&e))?,
                )
            }
            None => {
                let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| errno_text(&e))?;
                let a = l.local_addr().map_err(|e| errno_text(&e))?;
                (
                    Some(l),
                    std::net::TcpStream::connect(a).map_err(|e| errno_text(&e))?,
                )
            }
        };
        let fd = stream.as_raw_fd();
        // A private file with the secret, reachable only through our fd.
        let held_path = format!("{done}.held");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&held_path)
            .map_err(|e| errno_text(&e))?;
        (&file)
            .write_all(secret.as_bytes())
            .map_err(|e| errno_text(&e))?;
        std::fs::remove_file(&held_path).map_err(|e| errno_text(&e))?;
        println!(
            "ready pid={} fd={fd} file={} addr={:#x} len={} secret={secret}",
            std::process::id(),
            file.as_raw_fd(),
            held.as_ptr() as usize,
            held.len()
        );
        let _ = std::io::stdout().flush();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !std::path::Path::new(done).exists() {
            if std::time::Instant::now() > deadline {
                return Err(String::from("timed out waiting for the done file"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = std::fs::read_to_string("/proc/self/status").map_err(|e| errno_text(&e))?;
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .map(str::trim)
            .unwrap_or("?")
            .to_string();
        // SAFETY: fcntl on a descriptor we own.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        let env_same = std::env::var(var).ok().as_deref() == Some(secret.as_str());
        let mem_same = held == secret.as_bytes();
        if tracer == "0" && open && env_same && mem_same {
            Ok(String::from("victim intact"))
        } else {
            Err(format!(
                "victim disturbed tracer={tracer} socket_open={open} env_same={env_same} \
                 mem_same={mem_same}"
            ))
        }
    }

    fn field<'a>(rest: &'a [String], key: &str) -> Result<&'a str, String> {
        rest.iter()
            .find_map(|a| a.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .ok_or_else(|| format!("usage missing {key}=..."))
    }

    fn syscall_result(r: libc::c_long) -> Result<libc::c_long, String> {
        if r < 0 { Err(last_err()) } else { Ok(r) }
    }

    /// `iso-attack pid=P fd=N file=F addr=A len=L marker=M`: every way into
    /// process P (N: a socket, F: a file only it can reach), one line each (`attack NAME refused ...` or `attack NAME GOT ...`);
    /// fails if any got through. SIGKILL comes last.
    fn attack(rest: &[String]) -> Result<String, String> {
        let pid: i32 = field(rest, "pid")?.parse().map_err(|_| "usage bad pid")?;
        let fd: i32 = field(rest, "fd")?.parse().map_err(|_| "usage bad fd")?;
        let file: i32 = field(rest, "file")?.parse().map_err(|_| "usage bad file")?;
        let addr = usize::from_str_radix(field(rest, "addr")?.trim_start_matches("0x"), 16)
            .map_err(|_| "usage bad addr")?;
        let len: usize = field(rest, "len")?.parse().map_err(|_| "usage bad len")?;
        let marker = field(rest, "marker")?.as_bytes().to_vec();
        let contains = |hay: &[u8]| hay.windows(marker.len()).any(|w| w == marker.as_slice());
        let proc_ = |what: &str| format!("/proc/{pid}/{what}");
        let mut got = Vec::new();
        let mut report = |name: &str, r: Result<String, String>| {
            match r {
                Ok(detail) => {
                    println!("attack {name} GOT {detail}");
                    got.push(name.to_string());
                }
                Err(e) => println!("attack {name} refused {e}"),
            }
            let _ = std::io::stdout().flush();
        };
        let read = |path: String| {
            std::fs::read(&path)
                .map(|b| format!("{} bytes, secret inside: {}", b.len(), contains(&b)))
                .map_err(|e| errno_text(&e))
        };
        let link = |path: String| {
            std::fs::read_link(&path)
                .map(|l| l.display().to_string())
                .map_err(|e| errno_text(&e))
        };
        report("environ", read(proc_("environ")));
        report("task-environ", read(proc_(&format!("task/{pid}/environ"))));
        report("cmdline-free-of-secret", {
            // Readable by design (as for any user); it must not hold the secret.
            match std::fs::read(proc_("cmdline")) {
                Ok(b) if contains(&b) => Ok(String::from("secret in cmdline")),
                Ok(_) => Err(String::from("no secret")),
                Err(e) => Err(errno_text(&e)),
            }
        });
        report(
            "mem",
            std::fs::File::open(proc_("mem"))
                .map_err(|e| errno_text(&e))
                .map(|f| {
                    use std::os::unix::fs::FileExt as _;
                    let mut buf = vec![0u8; len];
                    match f.read_at(&mut buf, addr as u64) {
                        Ok(_) => format!("opened, secret read: {}", contains(&buf)),
                        Err(e) => format!("opened, read {}", errno_text(&e)),
                    }
                }),
        );
        report("maps", read(proc_("maps")));
        report("auxv", read(proc_("auxv")));
        report("fd-link", link(proc_(&format!("fd/{fd}"))));
        report("fdinfo", read(proc_(&format!("fdinfo/{fd}"))));
        report(
            "fd-open",
            std::fs::File::open(proc_(&format!("fd/{file}")))
                .and_then(|mut f| {
                    let mut b = Vec::new();
                    f.read_to_end(&mut b).map(|_| b)
                })
                .map(|b| format!("reopened its private file, secret inside: {}", contains(&b)))
                .map_err(|e| errno_text(&e)),
        );
        report("cwd", link(proc_("cwd")));
        report("root", link(proc_("root")));
        report("exe", link(proc_("exe")));
        // SAFETY: process_vm_* with iovecs over our own buffer; the remote
        // side is checked by the kernel.
        report("process_vm_readv", unsafe {
            let mut buf = vec![0u8; len];
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: len,
            };
            let remote = libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            };
            syscall_result(libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) as libc::c_long)
                .map(|n| format!("{n} bytes, secret read: {}", contains(&buf)))
        });
        // SAFETY: as above; writes the victim's own bytes back if it can.
        report("process_vm_writev", unsafe {
            let mut buf = marker.clone();
            buf.resize(len, 0);
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: len.min(marker.len()),
            };
            let remote = libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len.min(marker.len()),
            };
            syscall_result(libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) as libc::c_long)
                .map(|n| format!("wrote {n} bytes"))
        });
        // SAFETY: raw pidfd system calls; descriptors we get are closed.
        report("pidfd_getfd", unsafe {
            syscall_result(libc::syscall(libc::SYS_pidfd_open, pid, 0)).and_then(|pidfd| {
                let r = syscall_result(libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0));
                libc::close(pidfd as RawFd);
                r.map(|stolen| {
                    let l = std::fs::read_link(format!("/proc/self/fd/{stolen}"))
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    libc::close(stolen as RawFd);
                    format!("took fd {fd}: {l}")
                })
            })
        });
        // SAFETY: kcmp compares two processes' file tables; no memory is passed.
        report("kcmp", unsafe {
            syscall_result(libc::syscall(
                libc::SYS_kcmp,
                std::process::id(),
                pid,
                2, // KCMP_FILES
                0,
                0,
            ))
            .map(|r| format!("compared: {r}"))
        });
        // SAFETY: perf_event_open with a zeroed attr of the size we pass; a
        // descriptor we get is closed. Sampling another process reads its
        // registers and user stack.
        report("perf_event_open", unsafe {
            let mut attr = [0u64; 16];
            // type PERF_TYPE_SOFTWARE (1), size 128; config CPU_CLOCK (0);
            // flags: disabled, exclude_kernel, exclude_hv.
            attr[0] = 1 | (128 << 32);
            attr[5] = 1 | (1 << 5) | (1 << 6);
            syscall_result(libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                pid,
                -1,
                -1,
                0,
            ))
            .map(|fd| {
                libc::close(fd as RawFd);
                String::from("opened a perf event on it")
            })
        });
        // SAFETY: ptrace on the victim; if it lets us in we let go at once.
        report("ptrace-attach", unsafe {
            syscall_result(libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0)).map(|_| {
                let mut st = 0;
                libc::waitpid(pid, &mut st, libc::__WALL);
                libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                String::from("attached")
            })
        });
        // SAFETY: as above.
        report("ptrace-seize", unsafe {
            syscall_result(libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0)).map(|_| {
                let mut st = 0;
                libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0);
                libc::waitpid(pid, &mut st, libc::__WALL);
                libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                String::from("seized")
            })
        });
        // SAFETY: signal 0 only checks permission.
        report("kill-0", unsafe {
            syscall_result(libc::kill(pid, 0) as libc::c_long).map(|_| String::from("may signal"))
        });
        // SAFETY: pidfd_send_signal with signal 0: a permission check.
        report("pidfd_send_signal-0", unsafe {
            syscall_result(libc::syscall(libc::SYS_pidfd_open, pid, 0)).and_then(|pidfd| {
                let r = syscall_result(libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    0,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ));
                libc::close(pidfd as RawFd);
                r.map(|_| String::from("may signal"))
            })
        });
        // SAFETY: the real thing, last.
        report("kill-SIGKILL", unsafe {
            syscall_result(libc::kill(pid, libc::SIGKILL) as libc::c_long)
                .map(|_| String::from("killed"))
        });
        if got.is_empty() {
            Ok(String::from("every attack refused"))
        } else {
            Err(format!("got through: {}", got.join(" ")))
        }
    }

    /// `iso-own-child`: what a debugger or a supervisor does to its own
    /// child (read its environment and memory, trace it, signal it) must
    /// keep working inside a run.
    fn own_child() -> Result<String, String> {
        let marker = b"own-child-marker";
        // SAFETY: fork in a single-threaded program; the child only sleeps.
        let child = unsafe { libc::fork() };
        if child < 0 {
            return Err(last_err());
        }
        if child == 0 {
            std::thread::sleep(Duration::from_secs(30));
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(0) };
        }
        let mut failed = Vec::new();
        let mut check = |name: &str, ok: Result<(), String>| match ok {
            Ok(()) => println!("own-child {name} ok"),
            Err(e) => {
                println!("own-child {name} failed {e}");
                failed.push(name.to_string());
            }
        };
        check(
            "environ",
            std::fs::read(format!("/proc/{child}/environ"))
                .map(drop)
                .map_err(|e| errno_text(&e)),
        );
        // SAFETY: reading our own marker from the child's copy of our memory.
        check("process_vm_readv", unsafe {
            let mut buf = [0u8; 16];
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let remote = libc::iovec {
                iov_base: marker.as_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            syscall_result(libc::process_vm_readv(child, &local, 1, &remote, 1, 0) as libc::c_long)
                .and_then(|_| {
                    if &buf == marker {
                        Ok(())
                    } else {
                        Err(String::from("wrong bytes"))
                    }
                })
        });
        // SAFETY: tracing our own child, then letting it go.
        check("ptrace-attach", unsafe {
            syscall_result(libc::ptrace(libc::PTRACE_ATTACH, child, 0, 0)).map(|_| {
                let mut st = 0;
                libc::waitpid(child, &mut st, libc::__WALL);
                libc::ptrace(libc::PTRACE_DETACH, child, 0, 0);
            })
        });
        // SAFETY: signalling our own child.
        check("kill-SIGTERM", unsafe {
            syscall_result(libc::kill(child, libc::SIGTERM) as libc::c_long).map(drop)
        });
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, &mut st, 0) };
        check(
            "terminated",
            if libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGTERM {
                Ok(())
            } else {
                Err(format!("status {st:#x}"))
            },
        );
        if failed.is_empty() {
            Ok(String::from("own child reachable"))
        } else {
            Err(format!("own child unreachable: {}", failed.join(" ")))
        }
    }

    fn wait_for(done: &str) -> Result<(), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !std::path::Path::new(done).exists() {
            if std::time::Instant::now() > deadline {
                return Err(String::from("timed out waiting for the done file"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `iso-shm-hold VAR DONE_FILE`: puts $VAR in a System V shared memory
    /// segment only its user may read (0600), prints `ready shm=ID`, and
    /// removes the segment once DONE_FILE exists.
    fn shm_hold(var: &str, done: &str) -> Result<String, String> {
        let secret = std::env::var(var).map_err(|_| format!("usage ${var} is not set"))?;
        // SAFETY: a new private segment, attached, written within its size,
        // detached and removed.
        unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600);
            if id < 0 {
                return Err(last_err());
            }
            let p = libc::shmat(id, std::ptr::null(), 0);
            if p as isize == -1 {
                return Err(last_err());
            }
            std::ptr::copy_nonoverlapping(secret.as_ptr(), p.cast::<u8>(), secret.len().min(4096));
            println!("ready shm={id}");
            let _ = std::io::stdout().flush();
            let waited = wait_for(done);
            libc::shmdt(p);
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            waited.map(|()| String::from("shm removed"))
        }
    }

    /// `iso-shm-read ID MARKER`: attaches segment ID (and reports whether
    /// /proc/sysvipc/shm lists it).
    fn shm_read(id: &str, marker: &str) -> Result<String, String> {
        let id: i32 = id.parse().map_err(|_| "usage bad id")?;
        let listed = std::fs::read_to_string("/proc/sysvipc/shm")
            .map(|t| {
                t.lines()
                    .skip(1)
                    .any(|l| l.split_whitespace().nth(1) == Some(&id.to_string()))
            })
            .unwrap_or(false);
        // SAFETY: attach read-only, read within the segment's 4096 bytes, detach.
        unsafe {
            let p = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
            if p as isize == -1 {
                let e = last_err();
                let listed = if listed { "listed" } else { "not listed" };
                return Err(format!("{listed}, not attached: {e}"));
            }
            let bytes = std::slice::from_raw_parts(p.cast::<u8>(), marker.len());
            let got = bytes == marker.as_bytes();
            libc::shmdt(p);
            if got {
                Ok(String::from("GOT the secret from the segment"))
            } else {
                Ok(String::from("GOT attached, other bytes"))
            }
        }
    }

    const KEY_SPEC_USER_KEYRING: i32 = -4;
    const KEYCTL_INVALIDATE: i32 = 21;
    const KEYCTL_SEARCH: i32 = 10;
    const KEYCTL_READ: i32 = 11;

    /// `iso-key-hold DESC VAR DONE_FILE`: adds $VAR as a `user` key named
    /// DESC to its user keyring, prints `ready key=ID`, and invalidates it
    /// once DONE_FILE exists.
    fn key_hold(desc: &str, var: &str, done: &str) -> Result<String, String> {
        let secret = std::env::var(var).map_err(|_| format!("usage ${var} is not set"))?;
        let desc_c = std::ffi::CString::new(desc).map_err(|_| "usage bad description")?;
        // SAFETY: add_key with valid strings and payload.
        let id = unsafe {
            libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                desc_c.as_ptr(),
                secret.as_ptr(),
                secret.len(),
                KEY_SPEC_USER_KEYRING,
            )
        };
        if id < 0 {
            return Err(last_err());
        }
        println!("ready key={id}");
        let _ = std::io::stdout().flush();
        let waited = wait_for(done);
        // SAFETY: invalidating our own key.
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, id) };
        waited.map(|()| String::from("key invalidated"))
    }

    /// `iso-key-read DESC MARKER`: searches its user keyring for DESC and
    /// reads the key.
    fn key_read(desc: &str, marker: &str) -> Result<String, String> {
        let desc_c = std::ffi::CString::new(desc).map_err(|_| "usage bad description")?;
        // SAFETY: keyctl search and read into a buffer of the size we pass.
        unsafe {
            let id = syscall_result(libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_SEARCH,
                KEY_SPEC_USER_KEYRING,
                c"user".as_ptr(),
                desc_c.as_ptr(),
                0,
            ))?;
            let mut buf = [0u8; 256];
            let n = syscall_result(libc::syscall(
                libc::SYS_keyctl,
                KEYCTL_READ,
                id,
                buf.as_mut_ptr(),
                buf.len(),
            ))?;
            let got = &buf[..(n as usize).min(buf.len())];
            Ok(format!(
                "GOT key {id}, secret: {}",
                got == marker.as_bytes()
            ))
        }
    }

    /// `iso-raise-core PID`: raises PID's core dump limit to unlimited, the
    /// first step to making it dump its memory into a file of the user's.
    fn raise_core(pid: &str) -> Result<String, String> {
        let pid: i32 = pid.parse().map_err(|_| "usage bad pid")?;
        let unlimited = libc::rlimit64 {
            rlim_cur: libc::RLIM64_INFINITY,
            rlim_max: libc::RLIM64_INFINITY,
        };
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 with pointers to live structs.
        let r = unsafe { libc::prlimit64(pid, libc::RLIMIT_CORE, &unlimited, &mut old) };
        syscall_result(libc::c_long::from(r)).map(|_| {
            format!(
                "GOT core limit of {pid} raised from {}/{}",
                old.rlim_cur, old.rlim_max
            )
        })
    }
}

// ---------------------------------------------------------------------------
// Unix-socket attacks (issue 11): symlinks planted at and above listed paths,
// the run's own control socket, relative paths, threads, datagrams, full
// backlogs. A target written `@name` is an abstract socket; `{run}` in a path
// becomes the run's id (ENFORCER_RUN_ID).
// ---------------------------------------------------------------------------

/// The unix-socket actions, or None when `action` is not one of them.
fn unix_attack(action: &str, rest: &[String]) -> Option<Result<String, String>> {
    Some(match action {
        // Connects (stream), sends MESSAGE (default `hello`), prints the reply line.
        "unix-talk" => unix_talk(arg(rest, 0), arg(rest, 1)),
        "unix-talk-thread" => {
            let (target, msg) = (arg(rest, 0).to_string(), arg(rest, 1).to_string());
            std::thread::spawn(move || unix_talk(&target, &msg))
                .join()
                .unwrap_or_else(|_| Err(String::from("the thread panicked")))
        }
        "unix-talk-from" => unix_talk_from(arg(rest, 0), arg(rest, 1)),
        "unix-plant-symlink" => {
            unix_plant_symlink(arg(rest, 0), arg(rest, 1), arg(rest, 2), arg(rest, 3))
        }
        "unix-swap-parent" => unix_swap_parent(arg(rest, 0), arg(rest, 1), arg(rest, 2)),
        "unix-dgram-pair" => unix_dgram_pair(arg(rest, 0), arg(rest, 1)),
        "unix-dgram-socket" => unix_dgram_socket(arg(rest, 0), arg(rest, 1)),
        "unix-stream-pair" => unix_stream_pair(arg(rest, 0), arg(rest, 1)),
        "unix-backlog" => unix_backlog(arg(rest, 0), arg(rest, 1)),
        "unix-talk-after" => unix_talk_after(arg(rest, 0), arg(rest, 1)),
        "unix-connector-takeover" => unix_connector_takeover(),
        "unix-kill-connector" => unix_kill_connector(arg(rest, 0)),
        "unix-signal-storm" => unix_signal_storm(arg(rest, 0), arg(rest, 1)),
        "unix-wait-then-talk" => unix_wait_then_talk(arg(rest, 0), arg(rest, 1), arg(rest, 2)),
        _ => return None,
    })
}

/// A `sockaddr_un` for `target` and its length.
fn sun_addr(target: &str) -> Result<(libc::sockaddr_un, u32), String> {
    let run = std::env::var("ENFORCER_RUN_ID").unwrap_or_default();
    let target = target.replace("{run}", &run);
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (name, lead) = match target.strip_prefix('@') {
        Some(n) => (n.as_bytes(), 1),
        None => (target.as_bytes(), 0),
    };
    if name.is_empty() || lead + name.len() >= a.sun_path.len() {
        return Err(format!("usage bad unix address {target:?}"));
    }
    for (i, b) in name.iter().enumerate() {
        a.sun_path[lead + i] = *b as libc::c_char;
    }
    // Path names count their NUL; abstract names are exactly their bytes.
    let len = 2 + lead + name.len() + (1 - lead);
    Ok((a, len as u32))
}

fn sun_connect(fd: RawFd, target: &str) -> Result<(), String> {
    let (a, len) = sun_addr(target)?;
    // SAFETY: connect with a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) };
    if rc != 0 { Err(last_err()) } else { Ok(()) }
}

fn sun_sendto(fd: RawFd, data: &[u8], target: &str) -> Result<isize, String> {
    let (a, len) = sun_addr(target)?;
    // SAFETY: sendto with our buffer and a valid sockaddr_un.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL,
            (&a as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if n < 0 { Err(last_err()) } else { Ok(n) }
}

fn close_fd(fd: RawFd) {
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
}

/// A connected stream socket to `target`.
fn unix_stream_to(target: &str) -> Result<RawFd, String> {
    let fd = raw_socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)?;
    if let Err(e) = sun_connect(fd, target) {
        close_fd(fd);
        return Err(e);
    }
    Ok(fd)
}

fn unix_talk(target: &str, message: &str) -> Result<String, String> {
    let fd = unix_stream_to(target)?;
    // SAFETY: we own fd; File closes it.
    let mut s = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let message = if message.is_empty() { "hello" } else { message };
    s.write_all(format!("{message}\n").as_bytes())
        .map_err(|e| errno_text(&e))?;
    let tv = libc::timeval {
        tv_sec: 3,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    while !reply.contains(&b'\n') && reply.len() < 4096 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    Ok(format!(
        "connected reply {}",
        String::from_utf8_lossy(&reply).trim()
    ))
}

fn unix_talk_from(dir: &str, relative: &str) -> Result<String, String> {
    std::env::set_current_dir(dir).map_err(|e| format!("setup chdir {}", errno_text(&e)))?;
    unix_talk(relative, "")
}

/// Makes LINK a symlink to TARGET (replacing whatever is there), then talks to PATH.
fn unix_plant_symlink(link: &str, target: &str, path: &str, msg: &str) -> Result<String, String> {
    let run = std::env::var("ENFORCER_RUN_ID").unwrap_or_default();
    let target = target.replace("{run}", &run);
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(&target, link)
        .map_err(|e| format!("setup symlink {}", errno_text(&e)))?;
    unix_talk(path, msg)
}

/// Moves directory DIR aside, puts a symlink to TARGET in its place, then talks to PATH.
fn unix_swap_parent(dir: &str, target: &str, path: &str) -> Result<String, String> {
    std::fs::rename(dir, format!("{dir}.old"))
        .map_err(|e| format!("setup rename {}", errno_text(&e)))?;
    std::os::unix::fs::symlink(target, dir)
        .map_err(|e| format!("setup symlink {}", errno_text(&e)))?;
    unix_talk(path, "")
}

/// socketpair(AF_UNIX, SOCK_DGRAM), then `sendto` TARGET or `connect` + send.
fn unix_dgram_pair(mode: &str, target: &str) -> Result<String, String> {
    let mut fds = [0; 2];
    // SAFETY: socketpair into a two-element array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) } != 0 {
        return Err(last_err());
    }
    let r = match mode {
        "sendto" => sun_sendto(fds[0], b"escape-attempt", target).map(|n| format!("sent {n}")),
        "connect" => sun_connect(fds[0], target).and_then(|()| {
            // SAFETY: send on our own socket.
            let n = unsafe { libc::send(fds[0], b"escape-attempt".as_ptr().cast(), 14, 0) };
            if n < 0 {
                Err(last_err())
            } else {
                Ok(format!("connected sent {n}"))
            }
        }),
        _ => Err(String::from("usage unix-dgram-pair sendto|connect TARGET")),
    };
    close_fd(fds[0]);
    close_fd(fds[1]);
    r
}

/// socket(AF_UNIX, SOCK_DGRAM or SOCK_RAW), then sendto TARGET.
fn unix_dgram_socket(ty: &str, target: &str) -> Result<String, String> {
    let ty = match ty {
        "dgram" => libc::SOCK_DGRAM,
        // The kernel makes AF_UNIX SOCK_RAW a datagram socket.
        "raw" => libc::SOCK_RAW,
        _ => return Err(String::from("usage unix-dgram-socket dgram|raw TARGET")),
    };
    let fd = raw_socket(libc::AF_UNIX, ty | libc::SOCK_NONBLOCK, 0)?;
    let r = sun_sendto(fd, b"escape-attempt", target).map(|n| format!("sent {n}"));
    close_fd(fd);
    r
}

/// A stream or seqpacket socketpair: it must carry data between its ends,
/// and neither connect() nor sendto() may point it anywhere else.
fn unix_stream_pair(ty: &str, target: &str) -> Result<String, String> {
    let ty = match ty {
        "stream" => libc::SOCK_STREAM,
        "seqpacket" => libc::SOCK_SEQPACKET,
        _ => {
            return Err(String::from(
                "usage unix-stream-pair stream|seqpacket TARGET",
            ));
        }
    };
    let mut fds = [0; 2];
    // SAFETY: socketpair into a two-element array.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0
    {
        return Err(last_err());
    }
    let read_peer = |fd: RawFd| -> String {
        let mut buf = [0u8; 64];
        // SAFETY: non-blocking read into our buffer.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            String::new()
        } else {
            String::from_utf8_lossy(&buf[..n as usize]).into_owned()
        }
    };
    // SAFETY: write on our own socket.
    unsafe { libc::write(fds[0], b"ping".as_ptr().cast(), 4) };
    let works = read_peer(fds[1]) == "ping";
    let connect = match sun_connect(fds[0], target) {
        Ok(()) => String::from("connected"),
        Err(e) => e.split_whitespace().next().unwrap_or("").to_string(),
    };
    let sendto = match sun_sendto(fds[0], b"escape-attempt", target) {
        Ok(_) if read_peer(fds[1]) == "escape-attempt" => String::from("went-to-the-pair"),
        Ok(_) => String::from("sent-elsewhere"),
        Err(e) => e.split_whitespace().next().unwrap_or("").to_string(),
    };
    close_fd(fds[0]);
    close_fd(fds[1]);
    if !works {
        return Err(String::from("the pair does not carry data"));
    }
    Ok(format!("pair-works connect={connect} sendto={sendto}"))
}

/// Connects to FULL (a listener with a backlog of 0 that never accepts),
/// forks a child whose second connect to FULL blocks, then connects to
/// OTHER: that must not wait for the child's connect.
fn unix_backlog(full: &str, other: &str) -> Result<String, String> {
    let first = unix_stream_to(full).map_err(|e| format!("setup first connect {e}"))?;
    // SAFETY: fork while this program is single-threaded; the child only
    // makes system calls and _exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(last_err());
    }
    if child == 0 {
        let _ = unix_stream_to(full);
        // SAFETY: leaving the forked child.
        unsafe { libc::_exit(0) };
    }
    std::thread::sleep(Duration::from_millis(500));
    let (tx, rx) = std::sync::mpsc::channel();
    let other = other.to_string();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let r = unix_talk(&other, "");
        let _ = tx.send((r, started.elapsed()));
    });
    let r = rx.recv_timeout(Duration::from_secs(5));
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    close_fd(first);
    match r {
        Ok((r, took)) => r.map(|m| format!("{m} after {} ms", took.as_millis())),
        Err(_) => Err(String::from(
            "blocked: the other connect did not finish within 5 s",
        )),
    }
}

/// Talks to PATH, waits (up to 20 s) for FILE to exist, talks again.
fn unix_talk_after(path: &str, file: &str) -> Result<String, String> {
    let first = unix_talk(path, "")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(file).exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!("setup {file} never appeared"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = unix_talk(path, "")?;
    Ok(format!("first {first}; second {second}"))
}

/// Pids of processes named `agent-connect` in our cgroup (our run's connector).
fn connector_pids() -> Vec<i32> {
    let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "agent-connect")
                && std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c == mine)
        })
        .collect()
}

/// Tries every way the agent's uid could take the connector over: ptrace,
/// its memory, its environment, its descriptors.
fn unix_connector_takeover() -> Result<String, String> {
    let pids = connector_pids();
    let Some(&pid) = pids.first() else {
        return Err(String::from("setup no connector found"));
    };
    let mut took = Vec::new();
    let mut seen = Vec::new();
    // SAFETY: ptrace(PTRACE_SEIZE) on another process; detached below on success.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
    if r == 0 {
        took.push("ptrace");
        // SAFETY: detach what we attached.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    } else {
        seen.push(format!("ptrace={}", short_err()));
    }
    for what in ["mem", "environ", "fd/3"] {
        match std::fs::File::open(format!("/proc/{pid}/{what}")) {
            Ok(_) => took.push(what),
            Err(e) => seen.push(format!("{what}={}", short(&errno_text(&e)))),
        }
    }
    // SAFETY: pidfd_open and pidfd_getfd; we close what we get.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            seen.push(format!("pidfd={}", short_err()));
        } else {
            let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, 3, 0);
            if fd >= 0 {
                took.push("pidfd_getfd");
                libc::close(fd as i32);
            } else {
                seen.push(format!("getfd={}", short_err()));
            }
            libc::close(pidfd as i32);
        }
    }
    if took.is_empty() {
        Ok(format!("untouched {}", seen.join(" ")))
    } else {
        Err(format!("took over the connector: {}", took.join(", ")))
    }
}

fn short(text: &str) -> String {
    text.split_whitespace().next().unwrap_or("").to_string()
}

fn short_err() -> String {
    short(&last_err())
}

/// Kills the run's connector, then talks to PATH.
fn unix_kill_connector(path: &str) -> Result<String, String> {
    let pids = connector_pids();
    if pids.is_empty() {
        return Err(String::from("setup no connector found"));
    }
    for pid in &pids {
        // SAFETY: kill(2).
        if unsafe { libc::kill(*pid, libc::SIGKILL) } != 0 {
            return Err(format!("setup kill {}", last_err()));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    unix_talk(path, "")
}

extern "C" fn on_sigurg(_: libc::c_int) {}

/// N connects to PATH while another thread sends this one SIGURG nonstop
/// (as Go's scheduler does, with an SA_RESTART handler): every connect must
/// succeed once, not fail half-done.
fn unix_signal_storm(path: &str, n: &str) -> Result<String, String> {
    let n: u32 = n.parse().map_err(|_| String::from("usage bad count"))?;
    // SAFETY: installing a handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = zeroed();
        sa.sa_sigaction = on_sigurg as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGURG, &sa, std::ptr::null_mut());
    }
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
    let pid = std::process::id() as libc::pid_t;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: tgkill to our own main thread.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, me, libc::SIGURG) };
                sent += 1;
                std::thread::sleep(Duration::from_micros(20));
            }
            sent
        })
    };
    let mut failures: std::collections::BTreeMap<String, u32> = Default::default();
    for _ in 0..n {
        match unix_stream_to(path) {
            Ok(fd) => close_fd(fd),
            Err(e) => *failures.entry(short(&e)).or_default() += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = storm.join().unwrap_or(0);
    if failures.is_empty() {
        Ok(format!("{n} connected under {sent} signals"))
    } else {
        Err(format!("failed {failures:?} under {sent} signals"))
    }
}

/// Waits (up to 20 s) for FILE to exist, then talks to PATH with MESSAGE.
fn unix_wait_then_talk(file: &str, path: &str, msg: &str) -> Result<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(file).exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!("setup {file} never appeared"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unix_talk(path, msg)
}
